-- A device's newest schedule (device status: ORDER BY created_ms DESC, version DESC LIMIT 1) is
-- read from this index instead of sorting every schedule the device ever had.
CREATE INDEX schedules_device_created ON schedules (device_id, created_ms, version);
