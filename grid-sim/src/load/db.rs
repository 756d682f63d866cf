//! The benchmark's own PostgreSQL database (created fresh, dropped at the end) and the read-only
//! queries that check what the server recorded (its `acks`, `schedules` and `devices` tables).

use anyhow::{Context, Result, bail};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Row};

/// A database created for one run.
pub struct BenchDb {
    admin_url: String,
    /// Its name.
    pub name: String,
    /// Its URL (the admin URL with the database name replaced).
    pub url: String,
}

/// `url` with its database name replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> Result<String> {
    let scheme_end = url.find("://").context("DATABASE_URL has no scheme")? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    if !(base.starts_with("postgres://") || base.starts_with("postgresql://")) {
        bail!(
            "the load benchmark needs PostgreSQL: DATABASE_URL must be postgres://… (got {base})"
        );
    }
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    Ok(format!("{host_part}/{name}{query}"))
}

impl BenchDb {
    /// Creates `grid_load_<pid>_<millis>_<run>` on the server of `admin_url`. With `async_commit`,
    /// the database does not wait for the WAL flush at commit (`synchronous_commit = off`: a
    /// profiling switch, not a production setting).
    pub async fn create(admin_url: &str, async_commit: bool) -> Result<Self> {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // A counter too: two runs in one process (the load smoke tests run in parallel) may
        // start in the same millisecond.
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("grid_load_{}_{}_{run}", std::process::id(), millis);
        let url = with_database(admin_url, &name)?;
        let mut conn = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin_url} (is it running?)"))?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        if async_commit {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "ALTER DATABASE {name} SET synchronous_commit = off"
            )))
            .execute(&mut conn)
            .await
            .context("setting synchronous_commit")?;
        }
        let _ = conn.close().await;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// Drops the database (terminating leftover connections).
    pub async fn drop_db(&self) -> Result<()> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        let _ = conn.close().await;
        Ok(())
    }

    /// A small pool for the benchmark's own checks.
    pub async fn pool(&self) -> Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await?)
    }
}

/// Benchmark schedules whose lifecycle the server has recorded as accepted (or later: executing,
/// completed).
pub async fn schedules_accepted(pool: &PgPool, prefix: &str) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM schedules WHERE schedule_id LIKE $1 AND state IN ('accepted', 'executing', 'completed')",
    )
    .bind(format!("{prefix}%"))
    .fetch_one(pool)
    .await?;
    Ok(row.try_get("n")?)
}

/// Per schedule: first send and answer times (ms since the epoch) as the server recorded them.
pub async fn schedule_times(
    pool: &PgPool,
    prefix: &str,
) -> Result<Vec<(Option<i64>, Option<i64>)>> {
    let rows =
        sqlx::query("SELECT first_sent_ms, answered_ms FROM schedules WHERE schedule_id LIKE $1")
            .bind(format!("{prefix}%"))
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("first_sent_ms")?, r.try_get("answered_ms")?)))
        .collect()
}

/// The acks that record a device's acceptance of a schedule: `accepted`, or `executing` /
/// `completed` for a version the device answered without an `accepted` (it started on arrival).
const ACCEPTANCE_ACK: &str = "(a.state = 'accepted' OR (a.state IN ('executing', 'completed') AND NOT EXISTS \
     (SELECT 1 FROM acks b WHERE b.target_kind = 'schedule' AND b.target_id = a.target_id \
      AND b.target_version = a.target_version AND b.state = 'accepted')))";

/// Per device: the first time (ms since the epoch) the server sent the schedule, the agent's
/// acceptance ack's envelope time, and the server's receipt time of it (`ACCEPTANCE_ACK`).
pub async fn accept_times(pool: &PgPool, prefix: &str) -> Result<Vec<(Option<i64>, i64, i64)>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT s.first_sent_ms AS sent, MIN(a.sent_ms) AS acked, MIN(a.received_ms) AS received \
         FROM acks a JOIN schedules s ON s.schedule_id = a.target_id AND s.version = a.target_version \
         WHERE a.target_kind = 'schedule' AND {ACCEPTANCE_ACK} AND a.target_id LIKE $1 \
         GROUP BY a.device_id, s.first_sent_ms"
    )))
    .bind(format!("{prefix}%"))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("sent")?,
                r.try_get("acked")?,
                r.try_get("received")?,
            ))
        })
        .collect()
}

/// Acceptance acks (`ACCEPTANCE_ACK`) for schedules with the prefix: (rows, distinct devices).
pub async fn acceptance_acks(pool: &PgPool, prefix: &str) -> Result<(i64, i64)> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n, COUNT(DISTINCT a.device_id) AS d FROM acks a \
         WHERE a.target_kind = 'schedule' AND {ACCEPTANCE_ACK} AND a.target_id LIKE $1"
    )))
    .bind(format!("{prefix}%"))
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("n")?, row.try_get("d")?))
}

/// Acks with `state` for schedules with the prefix: (rows, distinct devices).
pub async fn ack_rows(pool: &PgPool, prefix: &str, state: &str) -> Result<(i64, i64)> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COUNT(DISTINCT device_id) AS d FROM acks WHERE target_kind = 'schedule' AND state = $1 AND target_id LIKE $2",
    )
    .bind(state)
    .bind(format!("{prefix}%"))
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("n")?, row.try_get("d")?))
}

/// Schedules with the prefix per lifecycle state.
pub async fn schedule_states(pool: &PgPool, prefix: &str) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT state, COUNT(*) AS n FROM schedules WHERE schedule_id LIKE $1 GROUP BY state ORDER BY state",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
        .collect()
}

/// Devices whose status the server recorded at or after `since_ms` (a Hello or Status handled).
pub async fn devices_seen_since(pool: &PgPool, since_ms: i64) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE status_ms >= $1")
        .bind(since_ms)
        .fetch_one(pool)
        .await?;
    Ok(row.try_get("n")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "y").unwrap(),
            "postgres://u:p@h/y?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "z").unwrap(),
            "postgres://h:5432/z"
        );
        assert!(with_database("sqlite://grid.db", "z").is_err());
    }
}
