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
//! Built at run time with [`sqlx::QueryBuilder`], hence unchecked on both backends (the
//! conformance suite covers them): the multi-row `INSERT … VALUES (…), (…)` of `put_prices`,
//! `put_series`, `insert_telemetry`, the schedule acks of `record_acks` and the new rows of
//! `outbox_save_many`; the multi-row `UPDATE … FROM (VALUES …)` of `record_schedule_sends`,
//! `record_acks` and `outbox_save_many`, and the `JOIN (VALUES …)` read of `record_acks` (their
//! row counts vary per call); the `IN (…)` lists of `get_devices` and `outbox_load_many`; the
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

/// How long a pooled connection may sit idle before it is pinged again before use.
const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

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
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

include!("sql_series.rs");
include!("sql_store.rs");
