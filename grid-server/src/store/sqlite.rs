//! The SQLite [`Store`] (the embedded default): a WAL-mode database file
//! created if missing, the migrations in `migrations/sqlite`, and the SQL shared with PostgreSQL
//! (`sql_store.rs`). Write transactions start with `BEGIN IMMEDIATE`, so concurrent writers wait
//! on the busy timeout instead of failing on lock upgrade.
//!
//! SQLite binds no arrays: the multi-row statements the shared code calls (PostgreSQL's take one
//! array per column, see the `postgres` module doc) are built here with [`sqlx::QueryBuilder`]
//! as `VALUES (…), (…)` and `IN (…)` lists, in chunks under SQLite's bind limit.

use crate::store::{Backend, StoreResult};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;

type Db = sqlx::Sqlite;
type This = SqliteStore;
const BACKEND: Backend = Backend::Sqlite;
const BEGIN: &str = "BEGIN IMMEDIATE";

// The statement macros of the shared SQL (see the `postgres` module for the PostgreSQL ones,
// which are checked at compile time). Here all three are runtime queries: the conformance suite
// runs every statement against SQLite.

/// A statement without result columns.
macro_rules! sql_exec {
    ($sql:literal $(, $arg:expr)* $(,)?) => {
        ::sqlx::query($sql) $(.bind($arg))*
    };
}

/// A statement with result rows.
macro_rules! sql {
    ($sql:literal $(, $arg:expr)* $(,)?) => {
        ::sqlx::query($sql) $(.bind($arg))*
    };
}

/// A statement with one result column.
macro_rules! sql_scalar {
    ($sql:literal $(, $arg:expr)* $(,)?) => {
        ::sqlx::query_scalar($sql) $(.bind($arg))*
    };
}

/// The acks of one target in arrival order (SQLite's `rowid`).
macro_rules! acks_by_target {
    ($kind:expr, $id:expr, $version:expr) => {
        sql!(
            "SELECT * FROM acks WHERE target_kind = $1 AND target_id = $2 \
             AND target_version = $3 ORDER BY rowid",
            $kind,
            $id,
            $version
        )
    };
}

/// The schema migrations, applied by [`SqliteStore::connect`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A [`Store`] on an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH` or `sqlite:PATH`) in WAL
    /// mode with up to `max_connections` connections, and applies the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

// --- multi-row statements (see the module doc; PostgreSQL's are in `postgres.rs`) -------------

/// The most rows one multi-row statement carries (at most 10 binds a row: under SQLite's
/// 32,766 binds).
const BATCH_ROWS: usize = 500;
/// The most rows one multi-row statement of the shared code takes (one chunk of `VALUES`).
const ROWS_PER_STATEMENT: Option<usize> = Some(BATCH_ROWS);

/// Every `(schedule_id, version)` target's `schedule_id`, `version`, `state` and `device_id`.
async fn schedule_states(conn: &mut Conn, keys: &[(String, i64)]) -> StoreResult<Vec<DbRow>> {
    let mut rows = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Db>::new(
            "SELECT s.schedule_id, s.version, s.state, s.device_id FROM schedules s JOIN (VALUES ",
        );
        for (n, (id, v)) in chunk.iter().enumerate() {
            if n > 0 {
                q.push(", ");
            }
            q.push("(")
                .push_bind(id.clone())
                .push(", CAST(")
                .push_bind(*v)
                .push(" AS BIGINT))");
        }
        q.push(") AS v ON s.schedule_id = v.column1 AND s.version = v.column2");
        rows.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// Every command's `id`, `state` and `device_id`.
async fn command_states(conn: &mut Conn, ids: &[&str]) -> StoreResult<Vec<DbRow>> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH_ROWS) {
        let mut q =
            QueryBuilder::<Db>::new("SELECT id, state, device_id FROM commands WHERE id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind((*id).to_owned());
        }
        q.push(")");
        rows.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// Inserts acks in the given order (their `rowid`); returns the `device_id` and `message_id` of
/// each row inserted (a known message id is skipped).
async fn insert_acks(conn: &mut Conn, rows: &[AckRow<'_>]) -> StoreResult<Vec<DbRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Db>::new(
            "INSERT INTO acks (message_id, device_id, target_kind, target_id, target_version, \
             state, reason_code, reason, sent_ms, received_ms) ",
        );
        q.push_values(chunk, |mut b, a| {
            b.push_bind(a.message_id.to_owned())
                .push_bind(a.device_id.to_owned())
                .push_bind(a.target_kind)
                .push_bind(a.target_id.to_owned())
                .push_bind(a.target_version)
                .push_bind(a.state)
                .push_bind(a.reason_code.map(str::to_owned))
                .push_bind(a.reason.map(str::to_owned))
                .push_bind(a.sent_ms)
                .push_bind(a.received_ms);
        });
        q.push(" ON CONFLICT (device_id, message_id) DO NOTHING RETURNING device_id, message_id");
        out.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Applies lifecycle moves to schedules or commands still in their `original` state; returns
/// the key of each row moved (`schedule_id` and `version`, or `id`).
async fn update_lifecycle_states(
    conn: &mut Conn,
    table: LifecycleTable,
    rows: &[LifecycleMove<'_>],
) -> StoreResult<Vec<DbRow>> {
    let (head, tail) = match table {
        LifecycleTable::Schedules => (
            "UPDATE schedules SET state = v.column3, reason = COALESCE(v.column4, reason), \
             updated_ms = v.column5, answered_ms = COALESCE(answered_ms, v.column6) FROM (VALUES ",
            ") AS v WHERE schedules.schedule_id = v.column1 AND schedules.version = v.column2 \
             AND schedules.state = v.column7 RETURNING schedules.schedule_id, schedules.version",
        ),
        LifecycleTable::Commands => (
            "UPDATE commands SET state = v.column3, reason = COALESCE(v.column4, reason), \
             updated_ms = v.column5, answered_ms = COALESCE(answered_ms, v.column6) FROM (VALUES ",
            ") AS v WHERE commands.id = v.column1 AND commands.state = v.column7 \
             RETURNING commands.id",
        ),
    };
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Db>::new(head);
        for (n, r) in chunk.iter().enumerate() {
            if n > 0 {
                q.push(", ");
            }
            q.push("(")
                .push_bind(r.id.to_owned())
                .push(", CAST(")
                .push_bind(r.version)
                .push(" AS BIGINT), ")
                .push_bind(r.state)
                .push(", ")
                .push_bind(r.reason.map(str::to_owned))
                .push(", CAST(")
                .push_bind(r.updated_ms)
                .push(" AS BIGINT), CAST(")
                .push_bind(r.answered_ms)
                .push(" AS BIGINT), ")
                .push_bind(r.original)
                .push(")");
        }
        q.push(tail);
        out.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Applies status reports (each device at most once) to devices with no newer status; returns
/// the `id` of each device updated.
async fn update_device_statuses(
    conn: &mut Conn,
    rows: &[StatusRow<'_>],
) -> StoreResult<Vec<DbRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Db>::new(
            "UPDATE devices SET online = v.column2, status_ms = v.column3, \
             agent_version = CASE WHEN v.column2 THEN v.column4 ELSE agent_version END, \
             firmware_version = CASE WHEN v.column2 THEN v.column5 ELSE firmware_version END, \
             capabilities_json = CASE WHEN v.column2 THEN v.column6 ELSE capabilities_json END, \
             clock_offset_ms = CASE WHEN v.column2 THEN v.column7 ELSE clock_offset_ms END, \
             reported_schedule_id = CASE WHEN v.column2 AND (reported_schedule_ms IS NULL \
             OR reported_schedule_ms <= v.column3) THEN v.column8 ELSE reported_schedule_id END, \
             reported_schedule_version = CASE WHEN v.column2 AND (reported_schedule_ms IS NULL \
             OR reported_schedule_ms <= v.column3) THEN v.column9 \
             ELSE reported_schedule_version END, \
             reported_schedule_ms = CASE WHEN v.column2 AND (reported_schedule_ms IS NULL \
             OR reported_schedule_ms <= v.column3) THEN v.column3 ELSE reported_schedule_ms END \
             FROM (VALUES ",
        );
        for (n, r) in chunk.iter().enumerate() {
            if n > 0 {
                q.push(", ");
            }
            q.push("(")
                .push_bind(r.device.as_str().to_owned())
                .push(", ")
                .push_bind(r.online)
                .push(", CAST(")
                .push_bind(r.at_ms)
                .push(" AS BIGINT), ")
                .push_bind(r.agent_version.map(str::to_owned))
                .push(", ")
                .push_bind(r.firmware_version.map(str::to_owned))
                .push(", ")
                .push_bind(r.capabilities_json.clone())
                .push(", CAST(")
                .push_bind(r.clock_offset_ms)
                .push(" AS BIGINT), ")
                .push_bind(r.schedule_id.map(str::to_owned))
                .push(", CAST(")
                .push_bind(r.schedule_version)
                .push(" AS BIGINT))");
        }
        q.push(
            ") AS v WHERE devices.id = v.column1 \
             AND (devices.status_ms IS NULL OR devices.status_ms <= v.column3) \
             RETURNING devices.id",
        );
        out.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Applies what acks said about devices' schedules in force (each device at most once, in device
/// order) where no newer report is recorded.
async fn report_schedules_in_force(conn: &mut Conn, rows: &[InForceRow<'_>]) -> StoreResult<()> {
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Db>::new(
            "UPDATE devices SET reported_schedule_id = v.column3, \
             reported_schedule_version = v.column4, reported_schedule_ms = v.column2 \
             FROM (VALUES ",
        );
        for (n, r) in chunk.iter().enumerate() {
            if n > 0 {
                q.push(", ");
            }
            q.push("(")
                .push_bind(r.device.to_owned())
                .push(", CAST(")
                .push_bind(r.at_ms)
                .push(" AS BIGINT), ")
                .push_bind(r.schedule.map(|s| s.0.to_owned()))
                .push(", CAST(")
                .push_bind(r.schedule.map(|s| s.1))
                .push(" AS BIGINT), ")
                .push_bind(r.only_if.map(|s| s.0.to_owned()))
                .push(", CAST(")
                .push_bind(r.only_if.map(|s| s.1))
                .push(" AS BIGINT))");
        }
        q.push(
            ") AS v WHERE devices.id = v.column1 \
             AND (devices.reported_schedule_ms IS NULL OR devices.reported_schedule_ms <= v.column2) \
             AND (v.column5 IS NULL OR (devices.reported_schedule_id = v.column5 \
             AND devices.reported_schedule_version = v.column6))",
        );
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Marks the `(schedule_id, version)` schedules still queued or delivered as sent at `at_ms`;
/// returns how many were.
async fn mark_schedules_sent(
    conn: &mut Conn,
    keys: &[(&str, i64)],
    at_ms: i64,
) -> StoreResult<u64> {
    let mut n = 0;
    // SQLite ≥ 3.33 takes UPDATE … FROM and names VALUES columns column1, column2, ….
    for chunk in keys.chunks(BATCH_ROWS) {
        let mut q =
            QueryBuilder::<Db>::new("UPDATE schedules SET state = 'delivered', updated_ms = ");
        q.push_bind(at_ms)
            .push(", first_sent_ms = COALESCE(first_sent_ms, ")
            .push_bind(at_ms)
            .push("), last_sent_ms = ")
            .push_bind(at_ms)
            .push(", attempts = attempts + 1 FROM (VALUES ");
        for (i, (id, v)) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.push("(")
                .push_bind((*id).to_owned())
                .push(", CAST(")
                .push_bind(*v)
                .push(" AS BIGINT))");
        }
        q.push(
            ") AS v WHERE schedules.schedule_id = v.column1 AND schedules.version = v.column2 \
             AND schedules.state IN ('queued', 'delivered')",
        );
        n += q.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

/// The outbox rows of the given devices.
async fn outbox_rows(conn: &mut Conn, devices: &[&str]) -> StoreResult<Vec<DbRow>> {
    let mut rows = Vec::with_capacity(devices.len());
    for chunk in devices.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Db>::new("SELECT * FROM outbox WHERE device_id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind((*id).to_owned());
        }
        q.push(") ORDER BY device_id");
        rows.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// The outbox rows of the given devices (`devices` sorted, without repeats), by device id. A row
/// whose state is the one `known` gives for its device (same index) comes without its messages
/// and with `messages_omitted` set. SQLite has no row locks and needs none: the caller's
/// `BEGIN IMMEDIATE` holds the database until it ends.
async fn outbox_rows_locked(
    conn: &mut Conn,
    devices: &[&str],
    known: &[Option<&str>],
) -> StoreResult<Vec<DbRow>> {
    let mut rows = Vec::with_capacity(devices.len());
    for (ids, states) in devices.chunks(BATCH_ROWS).zip(known.chunks(BATCH_ROWS)) {
        let mut q = QueryBuilder::<Db>::new(
            "SELECT o.device_id, o.state_json, o.next_wakeup_ms, o.revision, o.updated_ms, \
             CASE WHEN o.messages_json IS NOT NULL AND o.state_json = k.column2 THEN NULL \
             ELSE o.messages_json END AS messages_json, \
             COALESCE(o.messages_json IS NOT NULL AND o.state_json = k.column2, FALSE) \
             AS messages_omitted FROM outbox o JOIN (VALUES ",
        );
        for (k, (device, state)) in ids.iter().zip(states).enumerate() {
            if k > 0 {
                q.push(", ");
            }
            q.push("(")
                .push_bind((*device).to_owned())
                .push(", ")
                .push_bind(state.map(str::to_owned))
                .push(")");
        }
        q.push(") AS k ON o.device_id = k.column1 ORDER BY o.device_id");
        rows.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// Saves delivery states over the rows still at the expected revision (clearing any claim);
/// returns the `device_id` and new `revision` of each row saved.
async fn update_outbox_rows(
    conn: &mut Conn,
    rows: &[OutboxUpdate<'_>],
    now_ms: i64,
) -> StoreResult<Vec<DbRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Db>::new(
            "UPDATE outbox SET state_json = v.column2, next_wakeup_ms = v.column3, \
             messages_json = COALESCE(v.column5, outbox.messages_json), \
             revision = revision + 1, claimed_by = NULL, claimed_until_ms = NULL, updated_ms = ",
        );
        q.push_bind(now_ms).push(" FROM (VALUES ");
        for (k, r) in chunk.iter().enumerate() {
            if k > 0 {
                q.push(", ");
            }
            q.push("(")
                .push_bind(r.device_id.to_owned())
                .push(", ")
                .push_bind(r.state_json.to_owned())
                .push(", CAST(")
                .push_bind(r.next_wakeup_ms)
                .push(" AS BIGINT), CAST(")
                .push_bind(r.revision)
                .push(" AS BIGINT), CAST(")
                .push_bind(r.messages_json.map(str::to_owned))
                .push(" AS TEXT))");
        }
        q.push(
            ") AS v WHERE outbox.device_id = v.column1 AND outbox.revision = v.column4 \
             RETURNING outbox.device_id, outbox.revision",
        );
        out.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Inserts new delivery state rows (revision 1); returns the `device_id` of each row inserted
/// (a device that has one already is skipped).
async fn insert_outbox_rows(
    conn: &mut Conn,
    rows: &[OutboxInsert<'_>],
    now_ms: i64,
) -> StoreResult<Vec<DbRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Db>::new(
            "INSERT INTO outbox (device_id, state_json, messages_json, next_wakeup_ms, \
             revision, updated_ms) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.device_id.to_owned())
                .push_bind(r.state_json.to_owned())
                .push_bind(r.messages_json.map(str::to_owned))
                .push_bind(r.next_wakeup_ms)
                .push_bind(1_i64)
                .push_bind(now_ms);
        });
        q.push(" ON CONFLICT (device_id) DO NOTHING RETURNING device_id");
        out.extend(q.build().fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

include!("sql_series.rs");
include!("sql_store.rs");
