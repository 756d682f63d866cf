//! The PostgreSQL [`Store`] (production): a connection pool, the migrations
//! in `migrations/postgres`, and the SQL shared with SQLite (`sql_store.rs`).

use crate::store::{Backend, StoreResult};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;

type Db = sqlx::Postgres;
type This = PostgresStore;
const BACKEND: Backend = Backend::Postgres;
const BEGIN: &str = "BEGIN";
const ACKS_BY_TARGET: &str = "SELECT * FROM acks WHERE target_kind = $1 AND target_id = $2 \
     AND target_version = $3 ORDER BY seq";

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
