//! The agent's local SQLite store (sqlx, WAL, migrations): schedules by version, grid-proto's
//! inbox state (processed message ids, held versions), the active command, the outbox of acks and
//! buffered telemetry, and counters.
//!
//! Every row carries the device id, so one file (or one in-memory database) can hold many agents:
//! the fleet demo runs hundreds of agents in one process on one shared pool
//! ([`Store::migrate`] once, then [`Store::shared`] per agent).
//!
//! For simulated fleets of thousands of agents in one process, [`StoreLocation::Volatile`] keeps
//! one device's tables in plain collections instead (same operations and ordering, each call
//! atomic, nothing survives the process): SQLite's per-statement round trip to its worker thread
//! is what such a fleet spends most of its CPU on.
//!
//! [`Store::open`] checks the file's integrity first; a corrupt file (or one that is not a
//! database at all) is renamed aside with a timestamp and a fresh store is created, so a damaged
//! SD card never makes the agent crash-loop. The caller learns about it in [`OpenReport`] and
//! enters safe mode.

use crate::error::{Error, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod volatile;

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file (created if missing; WAL journal).
    File(PathBuf),
    /// A private in-memory SQLite database (lost when the store is dropped).
    Memory,
    /// No SQLite: the tables in plain collections of this process, for simulated fleets (see
    /// the [module docs](self)). Clones of the store share them; nothing survives the process.
    Volatile,
}

/// What [`Store::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The file was corrupt (or not a database) and was moved here; the store is new and empty.
    pub moved_corrupt_file_to: Option<PathBuf>,
    /// Why the file was judged corrupt.
    pub corruption: Option<String>,
}

/// One stored schedule version (the history of versions and their states; the inbox state is
/// what the agent resumes from).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    /// The schedule id.
    pub schedule_id: String,
    /// The version.
    pub version: u64,
    /// The correlation id of the message that carried it.
    pub correlation_id: Option<String>,
    /// The lifecycle state (grid-core's `ExecutionState::as_str`).
    pub state: String,
    /// The `schedule_assign` body as JSON.
    pub assign: Vec<u8>,
}

/// One change the engine asks the store to make; a [`crate::Action::Persist`] holds several,
/// committed in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Inserts (or replaces) a schedule version.
    PutSchedule(ScheduleRecord),
    /// Changes a stored schedule's state.
    SetScheduleState {
        /// The schedule id.
        schedule_id: String,
        /// The version.
        version: u64,
        /// The new state.
        state: String,
    },
    /// Replaces the persisted state of grid-proto's `Inbox` (JSON).
    SetInboxState(String),
    /// Stores (or clears) the active command, as JSON.
    SetCommand(Option<String>),
}

/// What a store holds for one device at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Schedule versions in a non-terminal state (accepted, executing), oldest first.
    pub schedules: Vec<ScheduleRecord>,
    /// The inbox state's JSON, if any.
    pub inbox_state: Option<String>,
    /// The active command's JSON, if any.
    pub command: Option<String>,
    /// Telemetry messages dropped from the outbox so far.
    pub telemetry_dropped: u64,
}

/// What sits in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A lifecycle ack (never dropped).
    Ack,
    /// A telemetry batch (bounded; the oldest are dropped first).
    Telemetry,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Ack => "ack",
            OutboxKind::Telemetry => "telemetry",
        }
    }
}

/// A message waiting for the broker's PUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id (the order of sending).
    pub id: i64,
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The local store of one agent (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    device: String,
    telemetry_max: u32,
    /// Whether [`Store::close`] closes the pool (not when it is shared with other agents).
    owns_pool: bool,
}

/// Where a [`Store`]'s tables live.
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Volatile(volatile::Volatile),
}

impl Store {
    /// Opens (creating if needed) the store at `location` for `device`, with at most
    /// `telemetry_max` buffered telemetry messages. Checks a file's integrity first and moves a
    /// corrupt file aside (see [`OpenReport`]).
    pub async fn open(
        location: &StoreLocation,
        device: &str,
        telemetry_max: u32,
    ) -> Result<(Store, OpenReport)> {
        let mut report = OpenReport::default();
        let pool = match location {
            StoreLocation::Volatile => {
                let store = Store {
                    backend: Backend::Volatile(volatile::Volatile::default()),
                    device: device.to_string(),
                    telemetry_max: telemetry_max.max(1),
                    owns_pool: true,
                };
                return Ok((store, report));
            }
            StoreLocation::Memory => memory_pool().await?,
            StoreLocation::File(path) => match open_checked(path).await {
                Ok(pool) => pool,
                Err(reason) => {
                    let moved = move_aside(path)?;
                    report.moved_corrupt_file_to = Some(moved);
                    report.corruption = Some(reason);
                    file_pool(path).await?
                }
            },
        };
        Self::migrate(&pool).await?;
        let mut store = Self::shared(pool, device, telemetry_max);
        store.owns_pool = true;
        Ok((store, report))
    }

    /// Applies the migrations to `pool` (idempotent; run once before sharing a pool).
    pub async fn migrate(pool: &SqlitePool) -> Result<()> {
        sqlx::migrate!("./migrations").run(pool).await?;
        Ok(())
    }

    /// A store for `device` on an already migrated pool shared with other agents;
    /// [`Store::close`] leaves the pool open.
    pub fn shared(pool: SqlitePool, device: &str, telemetry_max: u32) -> Store {
        Store {
            backend: Backend::Sqlite(pool),
            device: device.to_string(),
            telemetry_max: telemetry_max.max(1),
            owns_pool: false,
        }
    }

    /// The SQLite pool (to share it with more agents); `None` for a
    /// [`StoreLocation::Volatile`] store.
    pub fn pool(&self) -> Option<&SqlitePool> {
        match &self.backend {
            Backend::Sqlite(pool) => Some(pool),
            Backend::Volatile(_) => None,
        }
    }

    /// Everything the engine needs to resume.
    pub async fn load(&self) -> Result<Snapshot> {
        let pool = match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Volatile(v) => return Ok(v.load()),
        };
        let d = self.device.as_str();
        let rows = sqlx::query(
            "SELECT schedule_id, version, correlation_id, state, assign FROM schedules
             WHERE device = ? AND state IN ('accepted', 'executing') ORDER BY rowid",
        )
        .bind(d)
        .fetch_all(pool)
        .await?;
        let mut schedules = Vec::with_capacity(rows.len());
        for r in rows {
            schedules.push(ScheduleRecord {
                schedule_id: r.try_get(0)?,
                version: to_u64(r.try_get::<i64, _>(1)?)?,
                correlation_id: r.try_get(2)?,
                state: r.try_get(3)?,
                assign: r.try_get(4)?,
            });
        }
        let inbox_state: Option<String> =
            sqlx::query_scalar("SELECT state FROM inbox_state WHERE device = ?")
                .bind(d)
                .fetch_optional(pool)
                .await?;
        let command: Option<String> =
            sqlx::query_scalar("SELECT record FROM active_command WHERE device = ?")
                .bind(d)
                .fetch_optional(pool)
                .await?;
        Ok(Snapshot {
            schedules,
            inbox_state,
            command,
            telemetry_dropped: self.counter("telemetry_dropped").await?,
        })
    }

    /// Commits `ops` in one transaction.
    pub async fn apply(&self, ops: &[StoreOp]) -> Result<()> {
        let pool = match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Volatile(v) => return v.apply(ops),
        };
        let mut tx = pool.begin().await?;
        for op in ops {
            self.apply_one(&mut tx, op).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn apply_one(&self, tx: &mut SqliteConnection, op: &StoreOp) -> Result<()> {
        let d = self.device.as_str();
        match op {
            StoreOp::PutSchedule(r) => {
                sqlx::query(
                    "INSERT OR REPLACE INTO schedules
                     (device, schedule_id, version, correlation_id, state, assign)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(d)
                .bind(&r.schedule_id)
                .bind(to_i64(r.version)?)
                .bind(&r.correlation_id)
                .bind(&r.state)
                .bind(&r.assign)
                .execute(&mut *tx)
                .await?;
                // Keep a short history: older finished versions of this schedule go.
                sqlx::query(
                    "DELETE FROM schedules WHERE device = ? AND schedule_id = ? AND version < ?
                     AND state NOT IN ('accepted', 'executing')",
                )
                .bind(d)
                .bind(&r.schedule_id)
                .bind(to_i64(r.version)?)
                .execute(&mut *tx)
                .await?;
            }
            StoreOp::SetScheduleState {
                schedule_id,
                version,
                state,
            } => {
                sqlx::query(
                    "UPDATE schedules SET state = ? WHERE device = ? AND schedule_id = ? AND version = ?",
                )
                .bind(state)
                .bind(d)
                .bind(schedule_id)
                .bind(to_i64(*version)?)
                .execute(&mut *tx)
                .await?;
            }
            StoreOp::SetInboxState(json) => {
                sqlx::query("INSERT OR REPLACE INTO inbox_state (device, state) VALUES (?, ?)")
                    .bind(d)
                    .bind(json)
                    .execute(&mut *tx)
                    .await?;
            }
            StoreOp::SetCommand(Some(record)) => {
                sqlx::query("INSERT OR REPLACE INTO active_command (device, record) VALUES (?, ?)")
                    .bind(d)
                    .bind(record)
                    .execute(&mut *tx)
                    .await?;
            }
            StoreOp::SetCommand(None) => {
                sqlx::query("DELETE FROM active_command WHERE device = ?")
                    .bind(d)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// Appends a message to the outbox. Beyond the telemetry bound the oldest telemetry rows are
    /// dropped (acks never are); returns the row id and how many were dropped.
    pub async fn outbox_push(
        &self,
        kind: OutboxKind,
        topic: &str,
        payload: &[u8],
    ) -> Result<(i64, u64)> {
        let pool = match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Volatile(v) => {
                return Ok(v.outbox_push(kind, topic, payload, self.telemetry_max));
            }
        };
        let d = self.device.as_str();
        let mut tx = pool.begin().await?;
        let id =
            sqlx::query("INSERT INTO outbox (device, kind, topic, payload) VALUES (?, ?, ?, ?)")
                .bind(d)
                .bind(kind.as_str())
                .bind(topic)
                .bind(payload)
                .execute(&mut *tx)
                .await?
                .last_insert_rowid();
        let mut dropped = 0;
        if kind == OutboxKind::Telemetry {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE device = ? AND kind = 'telemetry'",
            )
            .bind(d)
            .fetch_one(&mut *tx)
            .await?;
            let excess = n - i64::from(self.telemetry_max);
            if excess > 0 {
                let r = sqlx::query(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE device = ?
                     AND kind = 'telemetry' ORDER BY id LIMIT ?)",
                )
                .bind(d)
                .bind(excess)
                .execute(&mut *tx)
                .await?;
                dropped = r.rows_affected();
                sqlx::query(
                    "INSERT INTO counters (device, name, value) VALUES (?, 'telemetry_dropped', ?)
                     ON CONFLICT (device, name) DO UPDATE SET value = value + excluded.value",
                )
                .bind(d)
                .bind(to_i64(dropped)?)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok((id, dropped))
    }

    /// The oldest `limit` outbox rows, in sending order.
    pub async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let pool = match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Volatile(v) => return Ok(v.outbox_pending(limit)),
        };
        let rows = sqlx::query(
            "SELECT id, topic, payload FROM outbox WHERE device = ? ORDER BY id LIMIT ?",
        )
        .bind(&self.device)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get(0)?,
                    topic: r.try_get(1)?,
                    payload: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Whether the outbox still holds the row `id` (it may have been dropped as telemetry overflow).
    pub async fn outbox_contains(&self, id: i64) -> Result<bool> {
        let pool = match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Volatile(v) => return Ok(v.outbox_contains(id)),
        };
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE id = ? AND device = ?")
            .bind(id)
            .bind(&self.device)
            .fetch_one(pool)
            .await?;
        Ok(n > 0)
    }

    /// Removes an outbox row once the broker acknowledged it.
    pub async fn outbox_remove(&self, id: i64) -> Result<()> {
        let pool = match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Volatile(v) => {
                v.outbox_remove(id);
                return Ok(());
            }
        };
        sqlx::query("DELETE FROM outbox WHERE id = ? AND device = ?")
            .bind(id)
            .bind(&self.device)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// The number of rows in the outbox.
    pub async fn outbox_len(&self) -> Result<u64> {
        let pool = match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Volatile(v) => return Ok(v.outbox_len()),
        };
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE device = ?")
            .bind(&self.device)
            .fetch_one(pool)
            .await?;
        to_u64(n)
    }

    /// A counter's value (0 if never set).
    pub async fn counter(&self, name: &str) -> Result<u64> {
        let pool = match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Volatile(v) => return Ok(v.counter(name)),
        };
        let v: Option<i64> =
            sqlx::query_scalar("SELECT value FROM counters WHERE device = ? AND name = ?")
                .bind(&self.device)
                .bind(name)
                .fetch_optional(pool)
                .await?;
        to_u64(v.unwrap_or(0))
    }

    /// Closes the pool (checkpointing the WAL), unless it is shared ([`Store::shared`]).
    pub async fn close(&self) {
        if let (true, Backend::Sqlite(pool)) = (self.owns_pool, &self.backend) {
            pool.close().await;
        }
    }
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::CorruptRow(format!("{v} does not fit a SQLite integer")))
}

fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::CorruptRow(format!("negative value {v}")))
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit survives a power cut (the point of committing before the PUBACK).
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .statement_cache_capacity(32)
}

async fn file_pool(path: &Path) -> Result<SqlitePool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // One connection: the agent is one task, and one connection keeps the footprint small.
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options(path))
        .await?)
}

async fn memory_pool() -> Result<SqlitePool> {
    // An in-memory database lives as long as its one connection: never let it go.
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(SqliteConnectOptions::new().in_memory(true))
        .await?)
}

/// Opens `path` and runs `PRAGMA quick_check`; `Err(reason)` when the file is corrupt or not a
/// database. I/O errors that are not corruption (permissions, a missing directory) are also
/// reported as `Err` only when the file exists and cannot be read as a database.
async fn open_checked(path: &Path) -> std::result::Result<SqlitePool, String> {
    let pool = file_pool(path).await.map_err(|e| e.to_string())?;
    let check: std::result::Result<Vec<String>, sqlx::Error> =
        sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&pool)
            .await;
    match check {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(pool),
        Ok(rows) => {
            pool.close().await;
            Err(format!("quick_check: {}", rows.join("; ")))
        }
        Err(e) => {
            pool.close().await;
            Err(e.to_string())
        }
    }
}

/// Renames `path` (and its -wal/-shm files) to `path.corrupt-<unix seconds>`.
fn move_aside(path: &Path) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".corrupt-{stamp}"));
    let target = PathBuf::from(target);
    if path.exists() {
        std::fs::rename(path, &target)?;
    }
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            let mut dest = target.as_os_str().to_owned();
            dest.push(suffix);
            std::fs::rename(&side, PathBuf::from(dest))?;
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, version: u64, state: &str) -> ScheduleRecord {
        ScheduleRecord {
            schedule_id: id.into(),
            version,
            correlation_id: Some("corr-1".into()),
            state: state.into(),
            assign: b"{}".to_vec(),
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("grid-agent-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("agent.db")
    }

    #[tokio::test]
    async fn schedules_seen_ids_and_commands_survive_a_reopen() {
        let path = temp_path("reopen");
        let loc = StoreLocation::File(path.clone());
        let (store, report) = Store::open(&loc, "bat-1", 10).await.unwrap();
        assert_eq!(report, OpenReport::default());
        store
            .apply(&[
                StoreOp::PutSchedule(record("s", 1, "accepted")),
                StoreOp::SetInboxState("{\"a\":1}".into()),
                StoreOp::SetCommand(Some("{\"x\":1}".into())),
            ])
            .await
            .unwrap();
        store
            .apply(&[
                StoreOp::SetScheduleState {
                    schedule_id: "s".into(),
                    version: 1,
                    state: "superseded".into(),
                },
                StoreOp::PutSchedule(record("s", 2, "executing")),
                StoreOp::SetInboxState("{\"a\":2}".into()),
            ])
            .await
            .unwrap();
        store.close().await;
        let (store, _) = Store::open(&loc, "bat-1", 10).await.unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.schedules, vec![record("s", 2, "executing")]);
        assert_eq!(snap.inbox_state.as_deref(), Some("{\"a\":2}"));
        assert_eq!(snap.command.as_deref(), Some("{\"x\":1}"));
        // Another device on the same file sees nothing of bat-1.
        let pool = store.pool().expect("a SQLite store").clone();
        let other = Store::shared(pool, "bat-2", 10);
        assert_eq!(other.load().await.unwrap(), Snapshot::default());
    }

    #[tokio::test]
    async fn telemetry_is_bounded_oldest_first_and_acks_are_never_dropped() {
        for location in [StoreLocation::Memory, StoreLocation::Volatile] {
            telemetry_bound(&location).await;
        }
    }

    async fn telemetry_bound(location: &StoreLocation) {
        let (store, _) = Store::open(location, "bat-1", 3).await.unwrap();
        store
            .outbox_push(OutboxKind::Ack, "a", b"ack-0")
            .await
            .unwrap();
        let mut dropped = 0;
        for i in 0..5 {
            let (_, d) = store
                .outbox_push(OutboxKind::Telemetry, "t", format!("t-{i}").as_bytes())
                .await
                .unwrap();
            dropped += d;
        }
        assert_eq!(dropped, 2);
        assert_eq!(store.counter("telemetry_dropped").await.unwrap(), 2);
        let rows = store.outbox_pending(10).await.unwrap();
        let payloads: Vec<_> = rows.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(
            payloads,
            vec![
                b"ack-0".to_vec(),
                b"t-2".to_vec(),
                b"t-3".to_vec(),
                b"t-4".to_vec()
            ]
        );
        store.outbox_remove(rows[0].id).await.unwrap();
        assert!(!store.outbox_contains(rows[0].id).await.unwrap());
        assert_eq!(store.outbox_len().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_moved_aside_and_replaced() {
        let path = temp_path("corrupt");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let (store, report) = Store::open(&StoreLocation::File(path.clone()), "bat-1", 3)
            .await
            .unwrap();
        let moved = report.moved_corrupt_file_to.expect("moved aside");
        assert!(moved.exists());
        assert!(report.corruption.is_some());
        assert_eq!(std::fs::read(&moved).unwrap(), vec![0x42u8; 8192]);
        assert_eq!(store.load().await.unwrap(), Snapshot::default());
        store
            .apply(&[StoreOp::SetInboxState("{}".into())])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_damaged_page_is_detected() {
        let path = temp_path("damaged");
        let loc = StoreLocation::File(path.clone());
        {
            let (store, _) = Store::open(&loc, "bat-1", 3).await.unwrap();
            for i in 0..200 {
                store
                    .apply(&[StoreOp::PutSchedule(record(
                        &format!("s{i}"),
                        1,
                        "accepted",
                    ))])
                    .await
                    .unwrap();
            }
            store.close().await;
        }
        // Scribble over the middle of the file, past the header.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8192, "{}", bytes.len());
        for b in &mut bytes[4096..8192] {
            *b = 0xff;
        }
        std::fs::write(&path, bytes).unwrap();
        let (_store, report) = Store::open(&loc, "bat-1", 3).await.unwrap();
        assert!(report.moved_corrupt_file_to.is_some(), "{report:?}");
    }

    /// One store operation of the equivalence test.
    #[derive(Debug, Clone)]
    enum Call {
        Apply(Vec<StoreOp>),
        Push(bool, u8),
        /// Removes the outbox row at this position among the pending ones.
        Remove(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = StoreOp> {
        use proptest::prelude::*;
        let id = prop::sample::select(vec!["a", "b"]);
        let state = prop::sample::select(vec!["accepted", "executing", "completed", "superseded"]);
        prop_oneof![
            (id.clone(), 1u64..4, state.clone())
                .prop_map(|(i, v, s)| StoreOp::PutSchedule(record(i, v, s))),
            (id, 1u64..4, state).prop_map(|(i, v, s)| StoreOp::SetScheduleState {
                schedule_id: i.into(),
                version: v,
                state: s.into(),
            }),
            (0u8..3).prop_map(|n| StoreOp::SetInboxState(format!("{{\"n\":{n}}}"))),
            proptest::option::of(0u8..3)
                .prop_map(|n| StoreOp::SetCommand(n.map(|n| format!("{{\"c\":{n}}}")))),
        ]
    }

    fn call() -> impl proptest::strategy::Strategy<Value = Call> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(op(), 1..4).prop_map(Call::Apply),
            (any::<bool>(), any::<u8>()).prop_map(|(ack, n)| Call::Push(ack, n)),
            (0usize..4).prop_map(Call::Remove),
        ]
    }

    /// What a store shows from outside (outbox ids differ between backends: SQLite's are
    /// shared by every device on the database; their order is what counts).
    async fn observed(store: &Store) -> (Snapshot, Vec<(String, Vec<u8>)>, u64, u64) {
        let pending = store.outbox_pending(100).await.unwrap();
        (
            store.load().await.unwrap(),
            pending.into_iter().map(|r| (r.topic, r.payload)).collect(),
            store.outbox_len().await.unwrap(),
            store.counter("telemetry_dropped").await.unwrap(),
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The volatile backend behaves as the SQLite one on any sequence of operations.
        #[test]
        fn the_volatile_backend_matches_sqlite(calls in proptest::collection::vec(call(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (sqlite, _) = Store::open(&StoreLocation::Memory, "bat-1", 3).await.unwrap();
                let (volatile, _) = Store::open(&StoreLocation::Volatile, "bat-1", 3).await.unwrap();
                for call in &calls {
                    for store in [&sqlite, &volatile] {
                        match call {
                            Call::Apply(ops) => store.apply(ops).await.unwrap(),
                            Call::Push(ack, n) => {
                                let kind = if *ack { OutboxKind::Ack } else { OutboxKind::Telemetry };
                                store.outbox_push(kind, "t", &[*n]).await.unwrap();
                            }
                            Call::Remove(at) => {
                                let pending = store.outbox_pending(100).await.unwrap();
                                if let Some(row) = pending.get(*at) {
                                    store.outbox_remove(row.id).await.unwrap();
                                    assert!(!store.outbox_contains(row.id).await.unwrap());
                                }
                            }
                        }
                    }
                    assert_eq!(observed(&sqlite).await, observed(&volatile).await, "after {call:?}");
                }
            });
        }
    }
}
