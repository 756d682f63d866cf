-- Kept in step with the PostgreSQL migration of the same name: when the device last reported its
-- schedule in force (a status report or an `executing` / terminal ack), so the newer report wins.
ALTER TABLE devices ADD COLUMN reported_schedule_ms BIGINT;
