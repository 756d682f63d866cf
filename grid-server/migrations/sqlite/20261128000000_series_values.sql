-- Measured series (issue #9): load and PV actuals that forecast models train on and are
-- monitored against. One row per slot; gaps are simply absent.
CREATE TABLE series_points (
    series        TEXT NOT NULL,
    start_ms      BIGINT NOT NULL,
    slot_seconds  INTEGER NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series, start_ms)
);
