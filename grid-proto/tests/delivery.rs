//! State-machine property tests of the delivery engines: a server [`DeliveryTracker`] and an
//! agent [`Inbox`] talk through a lossy network that drops, duplicates and reorders messages,
//! both sides restart from their persisted state, and both clocks jump (also backwards).
//!
//! Invariants checked after every step:
//! * no accepted schedule version is started (executed) twice on the agent;
//! * for each schedule id, the agent never starts a version older than one it started before;
//! * at every server poll, a delivery whose `valid_until` has passed is terminal, or executing
//!   and still within its execution deadline plus the completion grace, or one the device
//!   acknowledged that the tracker asked about at (or after) its end and whose confirmation
//!   window is still open;
//! * at the end, once the clocks pass every deadline (and the confirmation window, over a
//!   lossless network), every delivery is terminal on both sides.
//!
//! The server also resyncs at random ([`DeliveryTracker::resync`]), as it does whenever its
//! subscription is new.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use grid_core::{DeviceId, ExecutionState, ScheduleId, ScheduleVersion, Timestamp};
use grid_proto::inbox::{DetachedInboxState, Inbox, InboxAction, InboxConfig, InboxState};
use grid_proto::topic::Topic;
use grid_proto::tracker::{Action, DeliveryTracker, TrackerConfig, TrackerState};
use grid_proto::v1::*;
use grid_proto::{Codec, signature};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const T0: i64 = 1_795_000_000 / 900 * 900;
const GRACE_MS: u64 = 600_000;
const CONFIRM_MS: u64 = 30_000;

#[derive(Debug, Clone)]
enum Op {
    Assign { sid: u8, start_off: i64, slots: u32 },
    Command { kind: u8, sid: u8, secs: u32 },
    ServerPoll,
    ServerResync,
    AgentPoll,
    DeliverDown { idx: usize, dup: bool },
    DeliverUp { idx: usize, dup: bool },
    DropDown { idx: usize },
    DropUp { idx: usize },
    Advance { secs: i64 },
    JumpServer { secs: i64 },
    JumpAgent { secs: i64 },
    RestartServer,
    RestartAgent,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3, 0i64..6, 1u32..8).prop_map(|(sid, start_off, slots)| Op::Assign { sid, start_off, slots }),
        1 => (0u8..3, 0u8..3, 60u32..1800).prop_map(|(kind, sid, secs)| Op::Command { kind, sid, secs }),
        2 => Just(Op::ServerPoll),
        1 => Just(Op::ServerResync),
        2 => Just(Op::AgentPoll),
        5 => (any::<usize>(), any::<bool>()).prop_map(|(idx, dup)| Op::DeliverDown { idx, dup }),
        5 => (any::<usize>(), any::<bool>()).prop_map(|(idx, dup)| Op::DeliverUp { idx, dup }),
        1 => any::<usize>().prop_map(|idx| Op::DropDown { idx }),
        1 => any::<usize>().prop_map(|idx| Op::DropUp { idx }),
        3 => (0i64..1200).prop_map(|secs| Op::Advance { secs }),
        1 => (-900i64..3600).prop_map(|secs| Op::JumpServer { secs }),
        1 => (-900i64..3600).prop_map(|secs| Op::JumpAgent { secs }),
        1 => Just(Op::RestartServer),
        1 => Just(Op::RestartAgent),
    ]
}

struct World {
    device: DeviceId,
    key: signature::SigningKey,
    tracker: DeliveryTracker,
    inbox: Inbox,
    inbox_config: InboxConfig,
    server_now: i64,
    agent_now: i64,
    down: Vec<(String, Vec<u8>)>,
    up: Vec<Vec<u8>>,
    versions: BTreeMap<u8, u64>,
    next_id: u64,
    started: BTreeSet<(String, u64)>,
    newest_started: BTreeMap<String, u64>,
    deadlines: Vec<Timestamp>,
    /// Every schedule body sent, as the agent stores them apart from its inbox state.
    bodies: BTreeMap<(String, u64), ScheduleAssign>,
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

impl World {
    fn new(codec: Codec, seed: u64) -> Self {
        let device = DeviceId::new("bat-1").unwrap();
        let key = signature::SigningKey::from_bytes(&[5; 32]);
        let inbox_config = InboxConfig {
            verifying_key: Some(key.verifying_key()),
            dedup_capacity: 64,
            codec,
            ..InboxConfig::default()
        };
        Self {
            tracker: DeliveryTracker::new(
                device.clone(),
                TrackerConfig {
                    completion_grace_ms: GRACE_MS,
                    confirm_window_ms: CONFIRM_MS,
                    ..TrackerConfig::default()
                },
                seed,
            ),
            inbox: Inbox::new(device.clone(), inbox_config.clone()),
            inbox_config,
            device,
            key,
            server_now: T0,
            agent_now: T0,
            down: Vec::new(),
            up: Vec::new(),
            versions: BTreeMap::new(),
            next_id: 0,
            started: BTreeSet::new(),
            newest_started: BTreeMap::new(),
            deadlines: Vec::new(),
            bodies: BTreeMap::new(),
        }
    }

    fn id(&mut self, prefix: &str) -> MessageId {
        self.next_id += 1;
        MessageId::new(format!("{prefix}{}", self.next_id)).unwrap()
    }

    fn server_actions(&mut self, actions: Vec<Action>) {
        for a in actions {
            if let Action::Send(msg) = a {
                let topic = Topic::for_envelope(&msg).to_string();
                let bytes = self.tracker.codec().encode(&msg).unwrap();
                self.down.push((topic, bytes));
            }
        }
    }

    fn agent_actions(&mut self, actions: Vec<InboxAction>) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                InboxAction::Send(msg) => {
                    self.up.push(self.inbox_config.codec.encode(&msg).unwrap());
                }
                InboxAction::Start(r) => {
                    let key = (r.schedule_id.to_string(), r.version.0);
                    prop_assert!(self.started.insert(key.clone()), "started twice: {key:?}");
                    let newest = self.newest_started.entry(key.0.clone()).or_insert(0);
                    prop_assert!(
                        r.version.0 > *newest,
                        "older version {} started after {}",
                        r.version.0,
                        newest
                    );
                    *newest = r.version.0;
                }
                InboxAction::Discarded(e) => {
                    prop_assert!(false, "a valid message was discarded: {e}")
                }
                InboxAction::Store(_) | InboxAction::Stop(..) | InboxAction::Run(..) => {}
            }
        }
        Ok(())
    }

    fn check_server_deadlines(&self) -> Result<(), TestCaseError> {
        let now = at(self.server_now);
        let ms = |t: Timestamp, ms: u64| {
            t.checked_add(jiff::SignedDuration::from_millis(ms as i64))
                .unwrap()
        };
        for d in self.tracker.deliveries() {
            if now >= d.valid_until && !d.state.is_terminal() {
                let end = match d.state {
                    ExecutionState::Executing => ms(d.execution_deadline, GRACE_MS),
                    ExecutionState::Accepted => d.valid_until,
                    other => {
                        prop_assert!(false, "{:?} {:?} past valid_until", d.key, other);
                        unreachable!()
                    }
                };
                if now >= end {
                    // Asked at or after its end, and the answer may still come.
                    let asked = d.asked_at.filter(|&a| a >= end);
                    prop_assert!(
                        asked.is_some_and(|a| now < ms(a, CONFIRM_MS)),
                        "{:?} {:?} past its end (asked {:?})",
                        d.key,
                        d.state,
                        d.asked_at
                    );
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Assign {
                sid,
                start_off,
                slots,
            } => {
                let version = self.versions.entry(sid).or_insert(0);
                *version += 1;
                let version = *version;
                let start = self.server_now / 900 * 900 + start_off * 900;
                let end = start + i64::from(slots) * 900;
                let assign = ScheduleAssign {
                    schedule_id: ScheduleId::new(format!("s{sid}")).unwrap(),
                    version: ScheduleVersion(version),
                    horizon: WireHorizon {
                        start: at(start),
                        slot_s: 900,
                        slots,
                    },
                    setpoints_kw: vec![1.0; slots as usize],
                    initial_kwh: 5.0,
                    expected_kwh: vec![5.0; slots as usize],
                    valid_until: at(end),
                    reversion_timeout_s: 0,
                };
                self.deadlines.push(at(end));
                self.bodies
                    .insert((format!("s{sid}"), version), assign.clone());
                let id = self.id("m");
                let mut msg = Envelope::new(
                    id,
                    self.device.clone(),
                    at(self.server_now),
                    Body::ScheduleAssign(assign),
                );
                signature::sign(&mut msg, &self.key).unwrap();
                let actions = self.tracker.assign(at(self.server_now), msg).unwrap();
                self.server_actions(actions);
            }
            Op::Command { kind, sid, secs } => {
                let action = match kind {
                    0 => CommandAction::SetPower {
                        power_kw: -2.0,
                        duration_s: secs,
                    },
                    1 => CommandAction::Idle,
                    _ => CommandAction::CancelSchedule {
                        schedule_id: ScheduleId::new(format!("s{sid}")).unwrap(),
                    },
                };
                let valid_until = at(self.server_now + 300);
                let id = self.id("c");
                let body = Command {
                    valid_until,
                    action,
                };
                self.deadlines.push(body.execution_deadline());
                let mut msg = Envelope::new(
                    id,
                    self.device.clone(),
                    at(self.server_now),
                    Body::Command(body),
                );
                signature::sign(&mut msg, &self.key).unwrap();
                let actions = self.tracker.command(at(self.server_now), msg).unwrap();
                self.server_actions(actions);
            }
            Op::ServerPoll => {
                let actions = self.tracker.poll(at(self.server_now));
                self.server_actions(actions);
                self.check_server_deadlines()?;
            }
            Op::ServerResync => {
                let actions = self.tracker.resync(at(self.server_now));
                self.server_actions(actions);
                self.check_server_deadlines()?;
            }
            Op::AgentPoll => {
                let actions = self.inbox.poll(at(self.agent_now));
                self.agent_actions(actions)?;
            }
            Op::DeliverDown { idx, dup } => {
                if !self.down.is_empty() {
                    let i = idx % self.down.len();
                    let (topic, bytes) = if dup {
                        self.down[i].clone()
                    } else {
                        self.down.remove(i)
                    };
                    let actions = self.inbox.on_message(at(self.agent_now), &topic, &bytes);
                    self.agent_actions(actions)?;
                }
            }
            Op::DeliverUp { idx, dup } => {
                if !self.up.is_empty() {
                    let i = idx % self.up.len();
                    let bytes = if dup {
                        self.up[i].clone()
                    } else {
                        self.up.remove(i)
                    };
                    let msg = grid_proto::decode(&bytes).unwrap();
                    let now = at(self.server_now);
                    let actions = match msg.body {
                        Body::Ack(_) => self.tracker.on_ack(now, &msg),
                        Body::Hello(_) => self.tracker.on_hello(now, &msg),
                        _ => Vec::new(),
                    };
                    self.server_actions(actions);
                }
            }
            Op::DropDown { idx } => {
                if !self.down.is_empty() {
                    let i = idx % self.down.len();
                    self.down.remove(i);
                }
            }
            Op::DropUp { idx } => {
                if !self.up.is_empty() {
                    let i = idx % self.up.len();
                    self.up.remove(i);
                }
            }
            Op::Advance { secs } => {
                self.server_now += secs;
                self.agent_now += secs;
            }
            Op::JumpServer { secs } => self.server_now = (self.server_now + secs).max(T0),
            Op::JumpAgent { secs } => self.agent_now = (self.agent_now + secs).max(T0),
            Op::RestartServer => {
                let saved = serde_json::to_string(self.tracker.state()).unwrap();
                let state: TrackerState = serde_json::from_str(&saved).unwrap();
                self.tracker = DeliveryTracker::restore(
                    TrackerConfig {
                        completion_grace_ms: GRACE_MS,
                        confirm_window_ms: CONFIRM_MS,
                        ..TrackerConfig::default()
                    },
                    state,
                );
            }
            Op::RestartAgent => {
                // Saved as the agent saves it: the detached state, the bodies apart.
                let saved = serde_json::to_string(&self.inbox.state().detached()).unwrap();
                let detached: DetachedInboxState = serde_json::from_str(&saved).unwrap();
                let bodies = &self.bodies;
                let state = InboxState::attach(detached, |r| {
                    bodies
                        .get(&(r.schedule_id.to_string(), r.version.0))
                        .cloned()
                })
                .unwrap();
                prop_assert_eq!(&state, self.inbox.state());
                self.inbox = Inbox::restore(self.device.clone(), self.inbox_config.clone(), state);
                let actions = self.inbox.on_connect(at(self.agent_now));
                self.agent_actions(actions)?;
            }
        }
        Ok(())
    }

    /// Lets both clocks pass every deadline, with a lossless network, and checks everything
    /// ended.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        let last = self.deadlines.iter().max().map_or(T0, |t| t.as_second());
        let end = last + (GRACE_MS / 1000) as i64 + 1;
        self.server_now = self.server_now.max(end);
        self.agent_now = self.agent_now.max(end);
        let a = self.inbox.poll(at(self.agent_now));
        self.agent_actions(a)?;
        let s = self.tracker.poll(at(self.server_now));
        self.server_actions(s);
        // The tracker asked about what the device acknowledged; its answers arrive in the window.
        deliver_all(self)?;
        self.server_now += (CONFIRM_MS / 1000) as i64;
        let s = self.tracker.poll(at(self.server_now));
        self.server_actions(s);
        for d in self.tracker.deliveries() {
            prop_assert!(
                d.state.is_terminal(),
                "{:?} still {:?} after every deadline",
                d.key,
                d.state
            );
        }
        prop_assert_eq!(
            self.inbox.held().count(),
            0,
            "the agent still holds schedules"
        );
        prop_assert!(self.inbox.active(at(self.agent_now)).is_none());
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn engines_keep_their_promises_under_loss_duplication_reordering_restarts_and_clock_jumps(
        ops in prop::collection::vec(op(), 1..120),
        cbor in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut w = World::new(if cbor { Codec::Cbor } else { Codec::Json }, seed);
        let connect = w.inbox.on_connect(at(w.agent_now));
        w.agent_actions(connect)?;
        for op in ops {
            w.step(op)?;
        }
        w.finish()?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// With a perfect network and no clock trouble, the server learns every outcome from the
    /// device: nothing is merely assumed.
    #[test]
    fn on_a_perfect_network_the_server_learns_the_device_outcome(
        assigns in prop::collection::vec((0u8..3, 0i64..4, 1u32..6, 0i64..1800), 1..12),
    ) {
        let mut w = World::new(Codec::Json, 1);
        for (sid, start_off, slots, wait) in assigns {
            w.step(Op::Assign { sid, start_off, slots })?;
            deliver_all(&mut w)?;
            w.step(Op::Advance { secs: wait })?;
            w.step(Op::AgentPoll)?;
            deliver_all(&mut w)?;
            w.step(Op::ServerPoll)?;
        }
        let end = w.deadlines.iter().max().unwrap().as_second();
        w.agent_now = end;
        w.step(Op::AgentPoll)?;
        deliver_all(&mut w)?;
        w.server_now = end;
        w.step(Op::ServerPoll)?;
        for d in w.tracker.deliveries() {
            prop_assert!(d.state.is_terminal(), "{:?}: {:?}", d.key, d.state);
            prop_assert!(d.state != ExecutionState::Expired || d.attempts >= 1);
        }
        // Every version the agent started is recorded as completed or superseded by the server.
        for (id, v) in &w.started {
            let key = grid_proto::tracker::DeliveryKey::Schedule(ScheduleRef {
                schedule_id: ScheduleId::new(id.clone()).unwrap(),
                version: ScheduleVersion(*v),
            });
            let state = w.tracker.state_of(&key).unwrap();
            prop_assert!(matches!(state, ExecutionState::Completed | ExecutionState::Superseded), "{key:?}: {state:?}");
        }
    }
}

fn deliver_all(w: &mut World) -> Result<(), TestCaseError> {
    for _ in 0..10 {
        if w.down.is_empty() && w.up.is_empty() {
            break;
        }
        while !w.down.is_empty() {
            w.step(Op::DeliverDown { idx: 0, dup: false })?;
        }
        while !w.up.is_empty() {
            w.step(Op::DeliverUp { idx: 0, dup: false })?;
        }
    }
    Ok(())
}
