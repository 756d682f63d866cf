-- grid-agent local store: schedules by version, grid-proto's inbox state (processed message ids,
-- held versions), the active command, the outbox (acks and buffered telemetry waiting for the
-- broker's PUBACK) and counters. Every table is keyed by device, so many in-process agents (the
-- fleet demo) can share one database.
CREATE TABLE schedules (
    device         TEXT    NOT NULL,
    schedule_id    TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    correlation_id TEXT,
    state          TEXT    NOT NULL,
    -- The schedule_assign body as JSON.
    assign         BLOB    NOT NULL,
    PRIMARY KEY (device, schedule_id, version)
);

CREATE TABLE inbox_state (
    device TEXT PRIMARY KEY,
    state  TEXT NOT NULL
);

CREATE TABLE active_command (
    device TEXT PRIMARY KEY,
    record TEXT NOT NULL
);

CREATE TABLE outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    device  TEXT    NOT NULL,
    kind    TEXT    NOT NULL CHECK (kind IN ('ack', 'telemetry')),
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL
);
CREATE INDEX outbox_device_kind ON outbox (device, kind, id);

CREATE TABLE counters (
    device TEXT    NOT NULL,
    name   TEXT    NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (device, name)
);
