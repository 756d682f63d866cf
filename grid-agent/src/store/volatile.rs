//! The store's volatile backend ([`StoreLocation::Volatile`](super::StoreLocation::Volatile)):
//! one device's tables as plain collections behind a mutex, for simulated fleets.
//!
//! It keeps the SQLite backend's observable behaviour — the same operations, the same ordering
//! (schedules in insertion order, a replaced version moving to the end like SQLite's `INSERT OR
//! REPLACE`; outbox rows by an increasing id), the same telemetry bound — and each call is
//! atomic, so the engine's commit-before-ack order is unchanged. What it saves is the cost of
//! SQLite's worker thread: every SQLite statement is a round trip to that thread, which
//! dominated the CPU of thousands of agents in one process. Nothing survives the process.
//! The module's tests check it against the SQLite backend on the same operations.

use super::{OutboxKind, OutboxRow, ScheduleRecord, Snapshot, StoreOp, to_i64};
use crate::error::Result;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// One device's tables.
#[derive(Debug, Default)]
struct Tables {
    /// Schedule versions in insertion order.
    schedules: Vec<ScheduleRecord>,
    inbox_state: Option<String>,
    command: Option<String>,
    /// Outbox rows by id (ids only grow, like SQLite's `AUTOINCREMENT`).
    outbox: BTreeMap<i64, (OutboxKind, String, Vec<u8>)>,
    last_outbox_id: i64,
    counters: HashMap<String, u64>,
}

/// A device's volatile tables; clones share them.
#[derive(Debug, Clone, Default)]
pub(super) struct Volatile {
    tables: Arc<Mutex<Tables>>,
}

impl Volatile {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while the lock was held left the tables as they were between two operations
        // (every operation validates before it changes anything): still consistent.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn load(&self) -> Snapshot {
        let t = self.tables();
        Snapshot {
            schedules: t
                .schedules
                .iter()
                .filter(|s| is_open(&s.state))
                .cloned()
                .collect(),
            inbox_state: t.inbox_state.clone(),
            command: t.command.clone(),
            telemetry_dropped: t.counters.get("telemetry_dropped").copied().unwrap_or(0),
        }
    }

    pub(super) fn apply(&self, ops: &[StoreOp]) -> Result<()> {
        // All or nothing: the only failure (a version beyond SQLite's integers) is checked first.
        for op in ops {
            match op {
                StoreOp::PutSchedule(r) => {
                    to_i64(r.version)?;
                }
                StoreOp::SetScheduleState { version, .. } => {
                    to_i64(*version)?;
                }
                StoreOp::SetInboxState(_) | StoreOp::SetCommand(_) => {}
            }
        }
        let mut t = self.tables();
        for op in ops {
            match op {
                StoreOp::PutSchedule(r) => {
                    t.schedules
                        .retain(|s| !(s.schedule_id == r.schedule_id && s.version == r.version));
                    t.schedules.push(r.clone());
                    // Keep a short history: older finished versions of this schedule go.
                    t.schedules.retain(|s| {
                        !(s.schedule_id == r.schedule_id
                            && s.version < r.version
                            && !is_open(&s.state))
                    });
                }
                StoreOp::SetScheduleState {
                    schedule_id,
                    version,
                    state,
                } => {
                    for s in t
                        .schedules
                        .iter_mut()
                        .filter(|s| s.schedule_id == *schedule_id && s.version == *version)
                    {
                        s.state.clone_from(state);
                    }
                }
                StoreOp::SetInboxState(json) => t.inbox_state = Some(json.clone()),
                StoreOp::SetCommand(record) => t.command.clone_from(record),
            }
        }
        Ok(())
    }

    pub(super) fn outbox_push(
        &self,
        kind: OutboxKind,
        topic: &str,
        payload: &[u8],
        telemetry_max: u32,
    ) -> (i64, u64) {
        let mut t = self.tables();
        t.last_outbox_id += 1;
        let id = t.last_outbox_id;
        t.outbox
            .insert(id, (kind, topic.to_string(), payload.to_vec()));
        let mut dropped = 0;
        if kind == OutboxKind::Telemetry {
            let telemetry: Vec<i64> = t
                .outbox
                .iter()
                .filter(|(_, (k, _, _))| *k == OutboxKind::Telemetry)
                .map(|(id, _)| *id)
                .collect();
            let excess = telemetry.len().saturating_sub(telemetry_max as usize);
            for old in &telemetry[..excess] {
                t.outbox.remove(old);
            }
            dropped = excess as u64;
            if dropped > 0 {
                *t.counters
                    .entry("telemetry_dropped".to_string())
                    .or_default() += dropped;
            }
        }
        (id, dropped)
    }

    pub(super) fn outbox_pending(&self, limit: i64) -> Vec<OutboxRow> {
        let take = usize::try_from(limit).unwrap_or(0);
        self.tables()
            .outbox
            .iter()
            .take(take)
            .map(|(id, (_, topic, payload))| OutboxRow {
                id: *id,
                topic: topic.clone(),
                payload: payload.clone(),
            })
            .collect()
    }

    pub(super) fn outbox_contains(&self, id: i64) -> bool {
        self.tables().outbox.contains_key(&id)
    }

    pub(super) fn outbox_remove(&self, id: i64) {
        self.tables().outbox.remove(&id);
    }

    pub(super) fn outbox_len(&self) -> u64 {
        self.tables().outbox.len() as u64
    }

    pub(super) fn counter(&self, name: &str) -> u64 {
        self.tables().counters.get(name).copied().unwrap_or(0)
    }
}

/// Whether a schedule version is still open (what `load` returns and history keeps).
fn is_open(state: &str) -> bool {
    matches!(state, "accepted" | "executing")
}
