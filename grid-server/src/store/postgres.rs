//! The PostgreSQL [`Store`] (production): a connection pool, the migrations
//! in `migrations/postgres`, and the SQL shared with SQLite (`sql_store.rs`, `sql_series.rs`).
//!
//! # Checked queries
//!
//! Every statically known statement is checked at compile time against the PostgreSQL schema by
//! `sqlx::query!` / `sqlx::query_scalar!`: the SQL parses, its tables and columns exist, it takes
//! as many parameters as it is given, and each bind's Rust type encodes the parameter's SQL type.
//! The checks read the committed offline data in `grid-server/.sqlx/`, never a live database:
//! `grid-server/sqlx.toml` points the macros at `GRID_SQLX_PREPARE_URL` instead of
//! `DATABASE_URL`, and only `scripts/sqlx-prepare` sets it (see docs/ARCHITECTURE.md, "Checked
//! SQL").
//!
//! One copy of each SQL text serves both backends: the shared code writes every statement as
//! `sql!`, `sql_exec!` or `sql_scalar!` with the literal and its bind values, and each backend
//! defines those macros before including the shared files. Here:
//!
//! * `sql_exec!` (statements without result columns) *is* `sqlx::query!`: the checked query runs.
//! * `sql!` and `sql_scalar!` (statements with result columns) compile `sqlx::query!` /
//!   `sqlx::query_scalar!` in a branch that never runs, and run `sqlx::query` /
//!   `sqlx::query_scalar` with the same literal and the same bind expressions. The checked
//!   macro's anonymous record type cannot feed the row helpers shared with SQLite (they decode
//!   `Row`s by column name), so the runtime query executes; since one macro invocation supplies
//!   both, what runs is exactly what was checked. The row decoding itself (column names and
//!   result types) is covered by the conformance suite, not by the macros.
//!
//! SQLite defines the same three macros as plain runtime queries (`sqlite.rs`): the offline data
//! is keyed by the SQL text, so one crate cannot hold checked data for the same text against two
//! databases. `tests/store_conformance.rs` runs every store operation on both backends.
//!
//! Fixed texts run with `sqlx::query`, unchecked (the conformance suite covers them): the
//! multi-row statements of the ack and delivery paths, defined below and called by the shared
//! code (SQLite builds `VALUES` lists for the same functions instead). Each binds one array per
//! column (`UNNEST($1::text[], …)`, `= ANY($1)`), so one text serves every batch size and
//! PostgreSQL parses and plans it once per connection: the schedule-target read
//! (`schedule_states`, `command_states`), the ack insert (`insert_acks`) and the lifecycle
//! updates (`update_lifecycle_states`) of `record_acks`; the sent marks of `record_schedule_sends`
//! (`mark_schedules_sent`); the outbox reads of `outbox_load_many` and `record_acks_and_save`
//! (`outbox_rows`, `outbox_rows_locked`, the latter `FOR UPDATE SKIP LOCKED`), the outbox
//! update and insert of `outbox_save_many` (`update_outbox_rows`, `insert_outbox_rows`) and the
//! device update of `record_statuses` (`update_device_statuses`).
//! The macros cannot check them against both backends from one text, and SQLite has no arrays.
//!
//! Built at run time with [`sqlx::QueryBuilder`], hence unchecked on both backends (the
//! conformance suite covers them): the multi-row `INSERT … VALUES (…), (…)` of `put_prices`,
//! `put_series` and `insert_telemetry`; the `IN (…)` list of `get_devices`; the
//! optional filters of `list_sites`, `list_devices`, `list_schedules`, `list_commands`,
//! `list_models` and `delivery_stats` and the scope-dependent join of `telemetry_buckets`.

use crate::store::{Backend, StoreResult};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;

type Db = sqlx::Postgres;
type This = PostgresStore;
const BACKEND: Backend = Backend::Postgres;
const BEGIN: &str = "BEGIN";

/// A statement without result columns, checked at compile time; the checked query runs.
macro_rules! sql_exec {
    ($sql:literal $(, $arg:expr)* $(,)?) => {
        ::sqlx::query!($sql $(, $arg)*)
    };
}

/// A statement with result rows, checked at compile time; runs as a runtime query with the
/// same text and binds, so the shared row helpers can decode its rows by column name.
macro_rules! sql {
    ($sql:literal $(, $arg:expr)* $(,)?) => {{
        // Type-checks only: never runs.
        if false {
            let _ = ::sqlx::query!($sql $(, $arg)*);
        }
        ::sqlx::query($sql) $(.bind($arg))*
    }};
}

/// A statement with one result column, checked at compile time like `sql!`.
macro_rules! sql_scalar {
    ($sql:literal $(, $arg:expr)* $(,)?) => {{
        // Type-checks only: never runs.
        if false {
            let _ = ::sqlx::query_scalar!($sql $(, $arg)*);
        }
        ::sqlx::query_scalar($sql) $(.bind($arg))*
    }};
}

/// The acks of one target in arrival order (the `seq` column).
macro_rules! acks_by_target {
    ($kind:expr, $id:expr, $version:expr) => {
        sql!(
            "SELECT * FROM acks WHERE target_kind = $1 AND target_id = $2 \
             AND target_version = $3 ORDER BY seq",
            $kind,
            $id,
            $version
        )
    };
}

/// The most rows one multi-row statement of the shared code takes: any number (array binds).
const ROWS_PER_STATEMENT: Option<usize> = None;

/// How long a pooled connection may sit idle before it is pinged again before use.
const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The planner's cost of a page fetched out of order, for this store's sessions, unless the
/// connection's options (`?options=-c random_page_cost=…` in the URL, or `PGOPTIONS`) set one.
///
/// PostgreSQL's default (4) prices an index lookup as four sequential page reads, which is right
/// for a spinning disk and wrong for the tables this server works on: the devices, their delivery
/// states and the open schedules are read on every publish and ack, so they are in memory. With
/// the default the planner joined a batch of a few hundred acks to `schedules` by hashing the
/// whole table (a sequential scan per batch, a cost that grows with the table) instead of looking
/// each row up: the schedules' send marks took 149 ms per 10,000 instead of 41 ms. 1.1 is the
/// usual figure for SSDs and cached data.
pub const RANDOM_PAGE_COST: &str = "1.1";

/// `options` with [`RANDOM_PAGE_COST`] added unless they set `random_page_cost` themselves.
fn with_planner_defaults(options: PgConnectOptions) -> PgConnectOptions {
    if options
        .get_options()
        .is_some_and(|o| o.contains("random_page_cost"))
    {
        options
    } else {
        options.options([("random_page_cost", RANDOM_PAGE_COST)])
    }
}

/// The schema migrations, applied by [`PostgresStore::connect`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) with up to `max_connections`
    /// connections and applies the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?, max_connections).await
    }

    /// Connects with explicit options (e.g. a `search_path` for an isolated test schema) and
    /// applies the migrations.
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(10))
            // sqlx pings every connection it hands out (a round trip) and again when it takes
            // one back. The ping on release already proves a pooled connection alive, so only
            // one that sat idle long enough for the server or the network to drop it is pinged
            // again before use: under load a statement on the pool costs two round trips
            // instead of three.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(with_planner_defaults(options))
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

// --- multi-row statements (see the module doc; SQLite's are in `sqlite.rs`) ------------------
//
// An `UPDATE … FROM UNNEST(…)` also restricts its table by `key = ANY(the key array)`: the join
// alone left the planner a choice between an index lookup per unnested row and a hash join over a
// sequential scan of the whole table, and before the table had statistics (a fresh database, a
// bulk registration) it chose the scan: each batch read every page of `devices` or `outbox`.
// The array condition gives it a bitmap index scan of just the rows named. (`schedules`, keyed
// by two columns, is planned no better with it.)

/// Every `(schedule_id, version)` target's `schedule_id`, `version`, `state` and `device_id`.
async fn schedule_states(conn: &mut Conn, keys: &[(String, i64)]) -> StoreResult<Vec<DbRow>> {
    let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    let versions: Vec<i64> = keys.iter().map(|(_, v)| *v).collect();
    Ok(sqlx::query(
        "SELECT s.schedule_id, s.version, s.state, s.device_id FROM schedules s \
         JOIN UNNEST($1::text[], $2::bigint[]) AS v(id, ver) \
         ON s.schedule_id = v.id AND s.version = v.ver",
    )
    .bind(ids)
    .bind(versions)
    .fetch_all(conn)
    .await?)
}

/// Every command's `id`, `state` and `device_id`.
async fn command_states(conn: &mut Conn, ids: &[&str]) -> StoreResult<Vec<DbRow>> {
    Ok(
        sqlx::query("SELECT id, state, device_id FROM commands WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(conn)
            .await?,
    )
}

/// Inserts acks in the given order (their `seq`); returns the `device_id` and `message_id` of
/// each row inserted (a known message id is skipped).
async fn insert_acks(conn: &mut Conn, rows: &[AckRow<'_>]) -> StoreResult<Vec<DbRow>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query(
        "INSERT INTO acks (message_id, device_id, target_kind, target_id, target_version, \
         state, reason_code, reason, sent_ms, received_ms) \
         SELECT m, d, k, t, v, st, rc, r, sent, recv FROM UNNEST($1::text[], \
         $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], \
         $8::bigint[], $9::bigint[], $10::text[]) \
         WITH ORDINALITY AS a(m, d, t, v, st, rc, r, sent, recv, k, n) \
         ORDER BY n ON CONFLICT (device_id, message_id) DO NOTHING \
         RETURNING device_id, message_id",
    )
    .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.device_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.target_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.target_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reason_code).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reason).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.sent_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.received_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.target_kind).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?)
}

/// Applies lifecycle moves to schedules or commands still in their `original` state; returns
/// the key of each row moved (`schedule_id` and `version`, or `id`).
async fn update_lifecycle_states(
    conn: &mut Conn,
    table: LifecycleTable,
    rows: &[LifecycleMove<'_>],
) -> StoreResult<Vec<DbRow>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let sql = match table {
        LifecycleTable::Schedules => {
            "UPDATE schedules SET state = v.st, reason = COALESCE(v.reason, schedules.reason), \
             updated_ms = v.updated, answered_ms = COALESCE(schedules.answered_ms, v.answered) \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
             $6::bigint[], $7::text[]) AS v(id, ver, st, reason, updated, answered, original) \
             WHERE schedules.schedule_id = v.id AND schedules.version = v.ver \
             AND schedules.state = v.original RETURNING schedules.schedule_id, schedules.version"
        }
        LifecycleTable::Commands => {
            "UPDATE commands SET state = v.st, reason = COALESCE(v.reason, commands.reason), \
             updated_ms = v.updated, answered_ms = COALESCE(commands.answered_ms, v.answered) \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
             $6::bigint[], $7::text[]) AS v(id, ver, st, reason, updated, answered, original) \
             WHERE commands.id = v.id AND commands.id = ANY($1::text[]) \
             AND commands.state = v.original RETURNING commands.id"
        }
    };
    Ok(sqlx::query(sql)
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.state).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.reason).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.answered_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.original).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?)
}

/// Applies what acks said about devices' schedules in force (each device at most once, in device
/// order) where no newer report is recorded.
async fn report_schedules_in_force(conn: &mut Conn, rows: &[InForceRow<'_>]) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE devices SET reported_schedule_id = v.sid, reported_schedule_version = v.sver, \
         reported_schedule_ms = v.at \
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], \
         $6::bigint[]) AS v(id, at, sid, sver, gid, gver) \
         WHERE devices.id = v.id AND devices.id = ANY($1::text[]) \
         AND (devices.reported_schedule_ms IS NULL OR devices.reported_schedule_ms <= v.at) \
         AND (v.gid IS NULL OR (devices.reported_schedule_id = v.gid \
         AND devices.reported_schedule_version = v.gver))",
    )
    .bind(rows.iter().map(|r| r.device).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at_ms).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.schedule.map(|s| s.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.schedule.map(|s| s.1))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.only_if.map(|s| s.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.only_if.map(|s| s.1))
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies status reports (each device at most once) to devices with no newer status; returns
/// the `id` of each device updated.
async fn update_device_statuses(
    conn: &mut Conn,
    rows: &[StatusRow<'_>],
) -> StoreResult<Vec<DbRow>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query(
        "UPDATE devices SET online = v.online, status_ms = v.at, \
         agent_version = CASE WHEN v.online THEN v.agent ELSE devices.agent_version END, \
         firmware_version = CASE WHEN v.online THEN v.firmware ELSE devices.firmware_version END, \
         capabilities_json = CASE WHEN v.online THEN v.caps ELSE devices.capabilities_json END, \
         clock_offset_ms = CASE WHEN v.online THEN v.clock ELSE devices.clock_offset_ms END, \
         reported_schedule_id = CASE WHEN v.online AND (devices.reported_schedule_ms IS NULL \
         OR devices.reported_schedule_ms <= v.at) THEN v.sid ELSE devices.reported_schedule_id END, \
         reported_schedule_version = CASE WHEN v.online AND (devices.reported_schedule_ms IS NULL \
         OR devices.reported_schedule_ms <= v.at) THEN v.sver \
         ELSE devices.reported_schedule_version END, \
         reported_schedule_ms = CASE WHEN v.online AND (devices.reported_schedule_ms IS NULL \
         OR devices.reported_schedule_ms <= v.at) THEN v.at ELSE devices.reported_schedule_ms END \
         FROM UNNEST($1::text[], $2::bool[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
         $7::bigint[], $8::text[], $9::bigint[]) \
         AS v(id, online, at, agent, firmware, caps, clock, sid, sver) \
         WHERE devices.id = v.id AND devices.id = ANY($1::text[]) \
         AND (devices.status_ms IS NULL OR devices.status_ms <= v.at) \
         RETURNING devices.id",
    )
    .bind(rows.iter().map(|r| r.device.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.online).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.agent_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.firmware_version).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.capabilities_json.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.clock_offset_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.schedule_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.schedule_version).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?)
}

/// Marks the `(schedule_id, version)` schedules still queued or delivered as sent at `at_ms`;
/// returns how many were.
async fn mark_schedules_sent(
    conn: &mut Conn,
    keys: &[(&str, i64)],
    at_ms: i64,
) -> StoreResult<u64> {
    let ids: Vec<&str> = keys.iter().map(|(id, _)| *id).collect();
    let versions: Vec<i64> = keys.iter().map(|(_, v)| *v).collect();
    Ok(sqlx::query(
        "UPDATE schedules SET state = 'delivered', updated_ms = $1, \
         first_sent_ms = COALESCE(first_sent_ms, $1), last_sent_ms = $1, \
         attempts = attempts + 1 FROM UNNEST($2::text[], $3::bigint[]) AS v(id, ver) \
         WHERE schedules.schedule_id = v.id AND schedules.version = v.ver \
         AND schedules.state IN ('queued', 'delivered')",
    )
    .bind(at_ms)
    .bind(ids)
    .bind(versions)
    .execute(conn)
    .await?
    .rows_affected())
}

/// The outbox rows of the given devices.
async fn outbox_rows(conn: &mut Conn, devices: &[&str]) -> StoreResult<Vec<DbRow>> {
    Ok(
        sqlx::query("SELECT * FROM outbox WHERE device_id = ANY($1)")
            .bind(devices)
            .fetch_all(conn)
            .await?,
    )
}

/// The outbox rows of the given devices (`devices` sorted, without repeats), by device id, locked
/// until the transaction ends; a row another transaction holds locked is skipped. A row whose
/// state is the one `known` gives for its device (same index) comes without its messages and
/// with `messages_omitted` set (the messages are not even decompressed).
async fn outbox_rows_locked(
    conn: &mut Conn,
    devices: &[&str],
    known: &[Option<&str>],
) -> StoreResult<Vec<DbRow>> {
    Ok(sqlx::query(
        "SELECT o.device_id, o.state_json, o.next_wakeup_ms, o.revision, o.updated_ms, \
         CASE WHEN o.messages_json IS NOT NULL AND o.state_json = k.known THEN NULL \
         ELSE o.messages_json END AS messages_json, \
         COALESCE(o.messages_json IS NOT NULL AND o.state_json = k.known, FALSE) \
         AS messages_omitted \
         FROM outbox o JOIN UNNEST($1::text[], $2::text[]) AS k(dev, known) \
         ON o.device_id = k.dev WHERE o.device_id = ANY($1::text[]) \
         ORDER BY o.device_id FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(devices)
    .bind(known)
    .fetch_all(conn)
    .await?)
}

/// Saves delivery states over the rows still at the expected revision (clearing any claim);
/// returns the `device_id` and new `revision` of each row saved.
async fn update_outbox_rows(
    conn: &mut Conn,
    rows: &[OutboxUpdate<'_>],
    now_ms: i64,
) -> StoreResult<Vec<DbRow>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query(
        "UPDATE outbox SET state_json = v.st, next_wakeup_ms = v.wake, \
         messages_json = COALESCE(v.msgs, outbox.messages_json), \
         revision = outbox.revision + 1, claimed_by = NULL, claimed_until_ms = NULL, \
         updated_ms = $1 FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::bigint[], \
         $6::text[]) AS v(dev, st, wake, rev, msgs) \
         WHERE outbox.device_id = v.dev AND outbox.revision = v.rev \
         AND outbox.device_id = ANY($2::text[]) \
         RETURNING outbox.device_id, outbox.revision",
    )
    .bind(now_ms)
    .bind(rows.iter().map(|r| r.device_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state_json).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.next_wakeup_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.revision).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.messages_json).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?)
}

/// Inserts new delivery state rows (revision 1); returns the `device_id` of each row inserted
/// (a device that has one already is skipped).
async fn insert_outbox_rows(
    conn: &mut Conn,
    rows: &[OutboxInsert<'_>],
    now_ms: i64,
) -> StoreResult<Vec<DbRow>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query(
        "INSERT INTO outbox (device_id, state_json, messages_json, next_wakeup_ms, revision, \
         updated_ms) SELECT dev, st, msgs, wake, 1, $1 FROM UNNEST($2::text[], $3::text[], \
         $4::text[], $5::bigint[]) AS v(dev, st, msgs, wake) \
         ON CONFLICT (device_id) DO NOTHING RETURNING device_id",
    )
    .bind(now_ms)
    .bind(rows.iter().map(|r| r.device_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state_json).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.messages_json).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.next_wakeup_ms).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?)
}

include!("sql_series.rs");
include!("sql_store.rs");
