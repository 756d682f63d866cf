-- grid-server schema, SQLite. Instants are BIGINT milliseconds since the Unix epoch (UTC), the
-- same as in the SQLite schema, so both backends run the same queries.

CREATE TABLE sites (
    id                    TEXT PRIMARY KEY,
    tenant                TEXT NOT NULL,
    name                  TEXT,
    feeder_id             TEXT,
    import_limit_kw       DOUBLE PRECISION NOT NULL,
    export_limit_kw       DOUBLE PRECISION NOT NULL,
    demand_charge_per_kw  DOUBLE PRECISION NOT NULL,
    tariff_json           TEXT,
    price_series          TEXT,
    created_ms            BIGINT NOT NULL,
    updated_ms            BIGINT NOT NULL
);
CREATE INDEX sites_tenant ON sites (tenant, id);
CREATE INDEX sites_feeder ON sites (feeder_id);

CREATE TABLE feeders (
    id             TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL,
    name           TEXT,
    envelope_json  TEXT,
    created_ms     BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL
);

CREATE TABLE price_points (
    series        TEXT NOT NULL,
    start_ms      BIGINT NOT NULL,
    slot_seconds  INTEGER NOT NULL,
    import_price  DOUBLE PRECISION NOT NULL,
    export_price  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series, start_ms)
);

CREATE TABLE devices (
    id                        TEXT PRIMARY KEY,
    tenant                    TEXT NOT NULL,
    site_id                   TEXT NOT NULL REFERENCES sites (id),
    label                     TEXT,
    spec_json                 TEXT NOT NULL,
    codec                     TEXT NOT NULL,
    created_ms                BIGINT NOT NULL,
    updated_ms                BIGINT NOT NULL,
    decommissioned_ms         BIGINT,
    online                    BOOLEAN NOT NULL DEFAULT FALSE,
    status_ms                 BIGINT,
    agent_version             TEXT,
    firmware_version          TEXT,
    capabilities_json         TEXT,
    clock_offset_ms           BIGINT,
    reported_schedule_id      TEXT,
    reported_schedule_version BIGINT
);
CREATE INDEX devices_tenant ON devices (tenant, id);
CREATE INDEX devices_site ON devices (site_id, id);

CREATE TABLE schedules (
    schedule_id     TEXT NOT NULL,
    version         BIGINT NOT NULL,
    device_id       TEXT NOT NULL REFERENCES devices (id),
    parts_json      TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT,
    correlation_id  TEXT,
    expires_ms      BIGINT NOT NULL,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    first_sent_ms   BIGINT,
    last_sent_ms    BIGINT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    answered_ms     BIGINT,
    PRIMARY KEY (schedule_id, version)
);
CREATE INDEX schedules_device ON schedules (device_id, version);
CREATE INDEX schedules_created ON schedules (created_ms, schedule_id, version);
CREATE INDEX schedules_state ON schedules (state);

CREATE TABLE commands (
    id              TEXT PRIMARY KEY,
    device_id       TEXT NOT NULL REFERENCES devices (id),
    command_json    TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT,
    correlation_id  TEXT,
    expires_ms      BIGINT NOT NULL,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    first_sent_ms   BIGINT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    answered_ms     BIGINT
);
CREATE INDEX commands_device ON commands (device_id, created_ms);
CREATE INDEX commands_created ON commands (created_ms, id);

CREATE TABLE acks (
    -- Uplink message ids are unique per device only (agents number them u1, u2, ...).
    message_id      TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    target_kind     TEXT NOT NULL,
    target_id       TEXT NOT NULL,
    target_version  BIGINT NOT NULL,
    state           TEXT NOT NULL,
    reason_code     TEXT,
    reason          TEXT,
    sent_ms         BIGINT NOT NULL,
    received_ms     BIGINT NOT NULL,
    PRIMARY KEY (device_id, message_id)
);
CREATE INDEX acks_target ON acks (target_kind, target_id, target_version);

CREATE TABLE telemetry (
    device_id      TEXT NOT NULL,
    at_ms          BIGINT NOT NULL,
    soc            DOUBLE PRECISION NOT NULL,
    power_kw       DOUBLE PRECISION NOT NULL,
    voltage_v      DOUBLE PRECISION NOT NULL,
    current_a      DOUBLE PRECISION NOT NULL,
    temperature_c  DOUBLE PRECISION NOT NULL,
    alarms         BIGINT NOT NULL,
    PRIMARY KEY (device_id, at_ms)
);
CREATE INDEX telemetry_at ON telemetry (at_ms);

-- One row per device: its delivery tracker's state (grid-proto TrackerState, JSON).
CREATE TABLE outbox (
    device_id         TEXT PRIMARY KEY,
    state_json        TEXT NOT NULL,
    next_wakeup_ms    BIGINT,
    revision          BIGINT NOT NULL,
    updated_ms        BIGINT NOT NULL,
    claimed_by        TEXT,
    claimed_until_ms  BIGINT
);
CREATE INDEX outbox_due ON outbox (next_wakeup_ms);

CREATE TABLE models (
    name           TEXT NOT NULL,
    version        BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    site_id        TEXT,
    metadata_json  TEXT NOT NULL,
    artefact       BLOB NOT NULL,
    active         BOOLEAN NOT NULL,
    created_ms     BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
