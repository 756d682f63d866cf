//! The SQLite [`Store`] (the embedded default): a WAL-mode database file
//! created if missing, the migrations in `migrations/sqlite`, and the SQL shared with PostgreSQL
//! (`sql_store.rs`). Write transactions start with `BEGIN IMMEDIATE`, so concurrent writers wait
//! on the busy timeout instead of failing on lock upgrade.

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

include!("sql_series.rs");
include!("sql_store.rs");
