-- When the device last reported its schedule in force (arrival time at the server, the clock of
-- `status_ms`): a status report's `active`, or an `executing` ack (and the terminal ack that ends
-- that schedule). Statuses and acks are handled apart, possibly out of order; each changes the
-- reported schedule only if it is no older than the report recorded. NULL: nothing reported
-- since this column was added.
ALTER TABLE devices ADD COLUMN reported_schedule_ms BIGINT;
