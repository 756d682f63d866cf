//! The agent side engine: [`Inbox`] takes every downlink message, checks it (codec, limits,
//! topic, signature), drops duplicates by message id, keeps only ever-newer versions of each
//! schedule, rejects expired ones, decides which schedule is in force, and produces the acks
//! to publish.
//!
//! Acks are sent at least once: a duplicate message is answered again with the current state,
//! and [`Inbox::on_connect`] repeats the state of everything held after a `hello`, so a lost ack
//! is repaired by the server's resend or by the next connect. The server applies acks
//! idempotently.
//!
//! **Which schedule is in force:** the device holds at most one version per schedule id. At any
//! instant the schedule in force is, among the held schedules whose horizon has started and whose
//! `valid_until` has not passed, the one with the latest horizon start (ties: the one accepted
//! last). When a schedule takes over, the one it replaces is superseded. Each held version starts
//! (`executing`) at most once, and an accepted version is never accepted again, even after a
//! restart from the persisted [`InboxState`]. A version that comes into force on arrival is
//! answered `executing` alone (it implies acceptance), not `accepted` then `executing`.
//!
//! ```
//! use grid_proto::{Codec, inbox::*, topic::Topic, v1::*};
//! use grid_core::{DeviceId, ExecutionState, ScheduleId, ScheduleVersion};
//! let device = DeviceId::new("bat-1")?;
//! let mut inbox = Inbox::new(device.clone(), InboxConfig::default());
//! let now = "2026-11-27T00:00:00Z".parse()?;
//! let assign = ScheduleAssign {
//!     schedule_id: ScheduleId::new("day")?, version: ScheduleVersion(1),
//!     horizon: WireHorizon { start: now, slot_s: 3600, slots: 2 },
//!     setpoints_kw: vec![2.0, -2.0], initial_kwh: 5.0, expected_kwh: vec![6.9, 4.8],
//!     valid_until: "2026-11-27T02:00:00Z".parse()?, reversion_timeout_s: 0,
//! };
//! let msg = Envelope::new(MessageId::new("m-1")?, device, now, Body::ScheduleAssign(assign));
//! let topic = Topic::for_envelope(&msg).to_string();
//! let actions = inbox.on_message(now, &topic, &Codec::Json.encode(&msg)?);
//! assert!(actions.iter().any(|a| matches!(a, InboxAction::Start(r) if r.version == ScheduleVersion(1))));
//! assert_eq!(inbox.active(now).map(|s| s.setpoints_kw[0]), Some(2.0));
//! // The same message again: no second start, just the ack repeated.
//! let again = inbox.on_message(now, &topic, &Codec::Json.encode(&msg)?);
//! assert!(again.iter().all(|a| matches!(a, InboxAction::Send(_))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::codec::{self, Codec};
use crate::error::Error;
use crate::limits::{MAX_HELLO_MESSAGE_IDS, MAX_HELLO_SCHEDULES};
use crate::topic::{Topic, TopicKind};
use crate::v1::{
    Ack, Body, Command, CommandAction, Envelope, Hello, MessageId, ReasonCode, ScheduleAssign,
    ScheduleRef, Status,
};
use ed25519_dalek::VerifyingKey;
use grid_core::{DeviceId, ExecutionState, ScheduleId, ScheduleVersion, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// How many schedule ids the inbox remembers the newest version of.
pub const MAX_REMEMBERED_IDS: usize = 1024;

/// How the inbox checks and answers messages.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxConfig {
    /// The server's public key. When set, schedules and commands must carry a valid signature.
    pub verifying_key: Option<VerifyingKey>,
    /// How many message ids are remembered for deduplication (and for re-acking duplicates).
    pub dedup_capacity: usize,
    /// How many finished schedule versions are remembered (to answer late duplicates).
    pub history_capacity: usize,
    /// The agent version reported in `hello` and `status`.
    pub agent_version: String,
    /// The capabilities reported in `hello` and `status`.
    pub capabilities: Vec<String>,
    /// The codec the device asks for (in `hello`) and sends in.
    pub codec: Codec,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            verifying_key: None,
            dedup_capacity: 512,
            history_capacity: 64,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: vec![
                crate::capability::CBOR.into(),
                crate::capability::PLAN_REPORT.into(),
            ],
            codec: Codec::Json,
        }
    }
}

/// What the agent must do.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, and most actions are sends
pub enum InboxAction {
    /// Publish this message at QoS 1 on its topic ([`Topic::for_envelope`]), in the configured
    /// codec.
    Send(Envelope),
    /// A schedule version was accepted: store it (it may start later).
    Store(ScheduleAssign),
    /// This schedule is now in force: follow its setpoints ([`Inbox::active`]). Emitted at most
    /// once per version.
    Start(ScheduleRef),
    /// Stop following (or forget) this schedule; it ended in this terminal state.
    Stop(ScheduleRef, ExecutionState),
    /// Run this command now (`set_power` holds until its duration ends; a newer command replaces
    /// it).
    Run(MessageId, Command),
    /// A message was dropped without an ack (it named no usable message id); for the log.
    Discarded(Error),
}

/// Where a remembered message id led, so a duplicate is answered the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Seen {
    Schedule(ScheduleRef),
    Command {
        state: ExecutionState,
        reason: Option<ReasonCode>,
    },
    Rejected {
        reason: ReasonCode,
        state: ExecutionState,
    },
}

/// A schedule the device holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct HeldSchedule {
    assign: ScheduleAssign,
    message_id: MessageId,
    state: ExecutionState,
    accepted_seq: u64,
}

/// The command running now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Running {
    id: MessageId,
    until: Timestamp,
}

/// The persistent state of an [`Inbox`]: save it after every call that returned actions
/// (before publishing the acks), restore it after a restart.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InboxState {
    seen: VecDeque<(MessageId, Seen)>,
    held: Vec<HeldSchedule>,
    history: VecDeque<(ScheduleRef, ExecutionState)>,
    latest: BTreeMap<ScheduleId, ScheduleVersion>,
    running: Option<Running>,
    last_contact: Option<Timestamp>,
    seq: u64,
}

/// An [`InboxState`] without the bodies of the held schedules, which the agent stores apart (as
/// schedule records) when it accepts them: what changes on every message and every start is
/// then a few hundred bytes, not a copy of every held schedule (kilobytes each).
/// [`InboxState::detached`] takes a state apart; [`InboxState::attach`] puts it together again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetachedInboxState {
    seen: VecDeque<(MessageId, Seen)>,
    held: Vec<DetachedHeld>,
    history: VecDeque<(ScheduleRef, ExecutionState)>,
    latest: BTreeMap<ScheduleId, ScheduleVersion>,
    running: Option<Running>,
    last_contact: Option<Timestamp>,
    seq: u64,
}

/// A [`HeldSchedule`] with its `schedule_assign` body replaced by its reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DetachedHeld {
    schedule: ScheduleRef,
    message_id: MessageId,
    state: ExecutionState,
    accepted_seq: u64,
}

impl DetachedInboxState {
    /// The held schedules whose bodies [`InboxState::attach`] needs.
    pub fn held(&self) -> impl Iterator<Item = &ScheduleRef> {
        self.held.iter().map(|h| &h.schedule)
    }
}

impl InboxState {
    /// The state without the held schedules' bodies (see [`DetachedInboxState`]).
    pub fn detached(&self) -> DetachedInboxState {
        DetachedInboxState {
            seen: self.seen.clone(),
            held: self
                .held
                .iter()
                .map(|h| DetachedHeld {
                    schedule: h.assign.schedule_ref(),
                    message_id: h.message_id.clone(),
                    state: h.state,
                    accepted_seq: h.accepted_seq,
                })
                .collect(),
            history: self.history.clone(),
            latest: self.latest.clone(),
            running: self.running.clone(),
            last_contact: self.last_contact,
            seq: self.seq,
        }
    }

    /// Puts a detached state together again with the bodies of its held schedules (`body`
    /// gives the stored `schedule_assign` of a reference). [`Error::Engine`] names the first
    /// held schedule without a body, or with a body for another schedule or version.
    pub fn attach(
        detached: DetachedInboxState,
        mut body: impl FnMut(&ScheduleRef) -> Option<ScheduleAssign>,
    ) -> Result<Self, Error> {
        let mut held = Vec::with_capacity(detached.held.len());
        for h in detached.held {
            let assign = body(&h.schedule)
                .filter(|a| a.schedule_ref() == h.schedule)
                .ok_or_else(|| {
                    Error::Engine(format!(
                        "the saved inbox state holds schedule {} {} but its body is not stored",
                        h.schedule.schedule_id, h.schedule.version
                    ))
                })?;
            held.push(HeldSchedule {
                assign,
                message_id: h.message_id,
                state: h.state,
                accepted_seq: h.accepted_seq,
            });
        }
        Ok(Self {
            seen: detached.seen,
            held,
            history: detached.history,
            latest: detached.latest,
            running: detached.running,
            last_contact: detached.last_contact,
            seq: detached.seq,
        })
    }
}

/// The agent's inbox (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Inbox {
    device: DeviceId,
    config: InboxConfig,
    state: InboxState,
}

impl Inbox {
    /// An empty inbox for `device`.
    pub fn new(device: DeviceId, config: InboxConfig) -> Self {
        Self::restore(device, config, InboxState::default())
    }

    /// An inbox continuing from a saved state.
    pub fn restore(device: DeviceId, config: InboxConfig, state: InboxState) -> Self {
        Self {
            device,
            config,
            state,
        }
    }

    /// The state to persist.
    pub fn state(&self) -> &InboxState {
        &self.state
    }

    /// The device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The schedule in force at `now`, unless the device has been without contact with the
    /// server for longer than its `reversion_timeout_s` (then the device reverts to idle).
    pub fn active(&self, now: Timestamp) -> Option<&ScheduleAssign> {
        let h = self
            .state
            .held
            .iter()
            .find(|h| h.state == ExecutionState::Executing)?;
        let timeout = h.assign.reversion_timeout_s;
        if timeout > 0 {
            let last = self.state.last_contact?;
            let limit = last
                .checked_add(jiff::SignedDuration::from_secs(i64::from(timeout)))
                .unwrap_or(Timestamp::MAX);
            if now >= limit {
                return None;
            }
        }
        Some(&h.assign).filter(|a| now < a.valid_until)
    }

    /// The command running at `now` (its message id), if any.
    pub fn running_command(&self, now: Timestamp) -> Option<&MessageId> {
        self.state
            .running
            .as_ref()
            .filter(|r| now < r.until)
            .map(|r| &r.id)
    }

    /// Every held schedule with its state.
    pub fn held(&self) -> impl Iterator<Item = (ScheduleRef, ExecutionState)> + '_ {
        self.state
            .held
            .iter()
            .map(|h| (h.assign.schedule_ref(), h.state))
    }

    /// Records contact with the server (the shell calls it on every broker round trip, e.g.
    /// a ping response), for the reversion timeout.
    pub fn touch(&mut self, now: Timestamp) {
        self.state.last_contact = Some(self.state.last_contact.map_or(now, |t| t.max(now)));
    }

    /// Call after every (re)connect: returns the `hello` to publish, followed by the current
    /// state of every held schedule (repairing acks lost before the connection dropped).
    pub fn on_connect(&mut self, now: Timestamp) -> Vec<InboxAction> {
        self.touch(now);
        let hello = Hello {
            agent_version: self.config.agent_version.clone(),
            schedules: self
                .state
                .held
                .iter()
                .rev()
                .take(MAX_HELLO_SCHEDULES)
                .map(|h| h.assign.schedule_ref())
                .collect(),
            last_message_ids: self
                .state
                .seen
                .iter()
                .rev()
                .take(MAX_HELLO_MESSAGE_IDS)
                .rev()
                .map(|(id, _)| id.clone())
                .collect(),
            capabilities: self.config.capabilities.clone(),
            codec: self.config.codec,
        };
        let mut out = vec![InboxAction::Send(self.envelope(now, Body::Hello(hello)))];
        let held: Vec<_> = self
            .state
            .held
            .iter()
            .map(|h| (h.assign.schedule_ref(), h.message_id.clone(), h.state))
            .collect();
        for (r, id, state) in held {
            let ack = Ack::for_schedule(r, Some(id), state);
            out.push(self.ack(now, ack));
        }
        out.extend(self.poll(now));
        out
    }

    /// The retained `status` message (the last will is the same with `online: false`, built
    /// at connect time).
    pub fn status(&self, now: Timestamp, online: bool, message_id: MessageId) -> Envelope {
        let status = Status {
            online,
            agent_version: self.config.agent_version.clone(),
            firmware_version: None,
            active: self.active(now).map(ScheduleAssign::schedule_ref),
            capabilities: self.config.capabilities.clone(),
            clock_offset_ms: None,
        };
        Envelope::new(message_id, self.device.clone(), now, Body::Status(status))
    }

    /// Handles one message received on `topic`.
    pub fn on_message(&mut self, now: Timestamp, topic: &str, payload: &[u8]) -> Vec<InboxAction> {
        let checked = self.check(topic, payload);
        self.on_checked(now, checked, payload)
    }

    /// The first half of [`Inbox::on_message`]: decodes `payload` and checks it against `topic`
    /// (limits, device, body kind) and the signature. A caller that needs the envelope (e.g. its
    /// correlation id) passes the result to [`Inbox::on_checked`] instead of decoding twice.
    pub fn check_message(&self, topic: &str, payload: &[u8]) -> crate::Result<Envelope> {
        self.check(topic, payload)
    }

    /// The second half of [`Inbox::on_message`]: handles what [`Inbox::check_message`] made of
    /// `payload` (a failure is answered `rejected` by message id when the id can be read).
    pub fn on_checked(
        &mut self,
        now: Timestamp,
        checked: crate::Result<Envelope>,
        payload: &[u8],
    ) -> Vec<InboxAction> {
        let envelope = match checked {
            Ok(envelope) => envelope,
            Err(error) => {
                let id = Codec::detect(payload).and_then(|c| c.peek_message_id(payload));
                return match id {
                    Some(id) => {
                        let reason = error.reason_code();
                        let ack = Ack::for_message(id, ExecutionState::Rejected)
                            .with_reason(reason, error.to_string());
                        vec![self.ack(now, ack)]
                    }
                    None => vec![InboxAction::Discarded(error)],
                };
            }
        };
        self.touch(now);
        self.on_envelope(now, envelope)
    }

    fn check(&self, topic: &str, payload: &[u8]) -> crate::Result<Envelope> {
        let topic = Topic::parse(topic)?;
        if !topic.kind.is_downlink() {
            return Err(Error::InvalidTopic {
                topic: topic.to_string(),
                reason: "not a downlink topic",
            });
        }
        if topic.device != self.device {
            return Err(Error::WrongDevice {
                topic: topic.device.to_string(),
                envelope: self.device.to_string(),
            });
        }
        let envelope = codec::decode(payload)?;
        topic.check(&envelope)?;
        if let Some(key) = &self.config.verifying_key {
            crate::signature::verify(&envelope, key)?;
        }
        Ok(envelope)
    }

    /// Handles a message that was already decoded and checked (topic, device and signature).
    pub fn on_envelope(&mut self, now: Timestamp, envelope: Envelope) -> Vec<InboxAction> {
        if envelope.device != self.device {
            return vec![InboxAction::Discarded(Error::WrongDevice {
                topic: self.device.to_string(),
                envelope: envelope.device.to_string(),
            })];
        }
        if let Some(seen) = self.seen(&envelope.id).cloned() {
            return self.reack(now, &envelope.id, &seen);
        }
        let mut out = Vec::new();
        let mut accepted = None;
        match envelope.body {
            Body::ScheduleAssign(assign) => {
                accepted = self.on_assign(now, envelope.id, assign, &mut out);
            }
            Body::Command(command) => self.on_command(now, envelope.id, command, &mut out),
            other => out.push(InboxAction::Discarded(Error::WrongTopic {
                kind: other.kind().as_str(),
                topic: TopicKind::Schedule.name().into(),
            })),
        }
        out.extend(self.poll(now));
        // A version accepted and started in this one step is answered `executing` alone (which
        // implies acceptance); otherwise with `accepted`, after whatever the step ended or started.
        if let Some((r, id)) = accepted
            && self.schedule_state(&r) == Some(ExecutionState::Accepted)
        {
            out.push(self.ack(
                now,
                Ack::for_schedule(r, Some(id), ExecutionState::Accepted),
            ));
        }
        out
    }

    /// Applies a `schedule_assign`; returns the version and message id when it was accepted
    /// (stored), whose `accepted` ack the caller sends unless the version started at once.
    fn on_assign(
        &mut self,
        now: Timestamp,
        id: MessageId,
        assign: ScheduleAssign,
        out: &mut Vec<InboxAction>,
    ) -> Option<(ScheduleRef, MessageId)> {
        let r = assign.schedule_ref();
        if let Some(&latest) = self.state.latest.get(&r.schedule_id)
            && r.version <= latest
        {
            {
                if r.version == latest {
                    // The version we have, sent again under another id: answer its state.
                    let state = self.schedule_state(&r).unwrap_or(ExecutionState::Accepted);
                    self.remember(id.clone(), Seen::Schedule(r.clone()));
                    let mut ack = Ack::for_schedule(r, Some(id), state);
                    if let Some(reason) = reason_for(state) {
                        ack = ack.with_reason(reason, "");
                    }
                    out.push(self.ack(now, ack));
                } else {
                    self.remember(id.clone(), Seen::Schedule(r.clone()));
                    let ack = Ack::for_schedule(r, Some(id), ExecutionState::Superseded)
                        .with_reason(
                            ReasonCode::Superseded,
                            format!("holds version {}", latest.0),
                        );
                    out.push(self.ack(now, ack));
                }
                return None;
            }
        }
        if now >= assign.valid_until {
            self.record_latest(&r);
            self.finish(r.clone(), ExecutionState::Expired);
            self.remember(id.clone(), Seen::Schedule(r.clone()));
            let ack = Ack::for_schedule(r, Some(id), ExecutionState::Expired)
                .with_reason(ReasonCode::Expired, "valid_until has passed");
            out.push(self.ack(now, ack));
            return None;
        }
        let replaces = self
            .state
            .held
            .iter()
            .position(|h| h.assign.schedule_id == r.schedule_id);
        if replaces.is_none() && self.state.held.len() >= MAX_HELLO_SCHEDULES {
            self.remember(
                id.clone(),
                Seen::Rejected {
                    reason: ReasonCode::Capacity,
                    state: ExecutionState::Rejected,
                },
            );
            let ack = Ack::for_schedule(r, Some(id), ExecutionState::Rejected)
                .with_reason(ReasonCode::Capacity, "the device holds too many schedules");
            out.push(self.ack(now, ack));
            return None;
        }
        if let Some(i) = replaces {
            let old = self.state.held.remove(i);
            self.end(
                now,
                old,
                ExecutionState::Superseded,
                Some(ReasonCode::Superseded),
                out,
            );
        }
        self.record_latest(&r);
        self.state.seq += 1;
        self.state.held.push(HeldSchedule {
            assign: assign.clone(),
            message_id: id.clone(),
            state: ExecutionState::Accepted,
            accepted_seq: self.state.seq,
        });
        self.remember(id.clone(), Seen::Schedule(r.clone()));
        out.push(InboxAction::Store(assign));
        Some((r, id))
    }

    fn on_command(
        &mut self,
        now: Timestamp,
        id: MessageId,
        command: Command,
        out: &mut Vec<InboxAction>,
    ) {
        if now >= command.valid_until {
            self.remember(
                id.clone(),
                Seen::Command {
                    state: ExecutionState::Expired,
                    reason: Some(ReasonCode::Expired),
                },
            );
            let ack = Ack::for_message(id, ExecutionState::Expired)
                .with_reason(ReasonCode::Expired, "valid_until has passed");
            out.push(self.ack(now, ack));
            return;
        }
        // A newer command replaces the one running.
        if let Some(prev) = self.state.running.take() {
            let ack = if now < prev.until {
                self.set_command_state(
                    &prev.id,
                    ExecutionState::Superseded,
                    Some(ReasonCode::Superseded),
                );
                Ack::for_message(prev.id, ExecutionState::Superseded)
                    .with_reason(ReasonCode::Superseded, format!("replaced by command {id}"))
            } else {
                self.set_command_state(&prev.id, ExecutionState::Completed, None);
                Ack::for_message(prev.id, ExecutionState::Completed)
            };
            out.push(self.ack(now, ack));
        }
        let state = match &command.action {
            CommandAction::SetPower { duration_s, .. } => {
                let until = now
                    .checked_add(jiff::SignedDuration::from_secs(i64::from(*duration_s)))
                    .unwrap_or(Timestamp::MAX);
                self.state.running = Some(Running {
                    id: id.clone(),
                    until,
                });
                ExecutionState::Executing
            }
            CommandAction::Idle => ExecutionState::Completed,
            CommandAction::CancelSchedule { schedule_id } => {
                if let Some(i) = self
                    .state
                    .held
                    .iter()
                    .position(|h| &h.assign.schedule_id == schedule_id)
                {
                    let old = self.state.held.remove(i);
                    self.end(
                        now,
                        old,
                        ExecutionState::Cancelled,
                        Some(ReasonCode::Cancelled),
                        out,
                    );
                }
                ExecutionState::Completed
            }
        };
        self.remember(
            id.clone(),
            Seen::Command {
                state,
                reason: None,
            },
        );
        out.push(InboxAction::Run(id.clone(), command));
        out.push(self.ack(now, Ack::for_message(id, state)));
    }

    /// Advances time: starts the schedule that comes into force, supersedes the one it
    /// replaces, completes schedules at their `valid_until`, expires those never started, and
    /// completes a `set_power` command at the end of its hold.
    pub fn poll(&mut self, now: Timestamp) -> Vec<InboxAction> {
        let mut out = Vec::new();
        // Finish what ran out.
        let mut i = 0;
        while i < self.state.held.len() {
            let h = &self.state.held[i];
            if now >= h.assign.valid_until {
                let to = if h.state == ExecutionState::Executing {
                    ExecutionState::Completed
                } else {
                    ExecutionState::Expired
                };
                let reason = (to == ExecutionState::Expired).then_some(ReasonCode::Expired);
                let old = self.state.held.remove(i);
                self.end(now, old, to, reason, &mut out);
            } else {
                i += 1;
            }
        }
        // The schedule in force: latest horizon start among the started ones, then latest accepted.
        let winner = self
            .state
            .held
            .iter()
            .enumerate()
            .filter(|(_, h)| h.assign.horizon.start <= now || h.state == ExecutionState::Executing)
            .max_by_key(|(_, h)| (h.assign.horizon.start, h.accepted_seq))
            .map(|(i, _)| i);
        if let Some(w) = winner {
            let key = (
                self.state.held[w].assign.horizon.start,
                self.state.held[w].accepted_seq,
            );
            // Everything started before the winner (or shadowed by it) is superseded.
            let mut i = 0;
            while i < self.state.held.len() {
                let h = &self.state.held[i];
                let older = (h.assign.horizon.start, h.accepted_seq) < key;
                let started = h.assign.horizon.start <= now || h.state == ExecutionState::Executing;
                if older && started {
                    let old = self.state.held.remove(i);
                    self.end(
                        now,
                        old,
                        ExecutionState::Superseded,
                        Some(ReasonCode::Superseded),
                        &mut out,
                    );
                } else {
                    i += 1;
                }
            }
            if let Some(h) = self
                .state
                .held
                .iter_mut()
                .find(|h| (h.assign.horizon.start, h.accepted_seq) == key)
                && h.state == ExecutionState::Accepted
            {
                {
                    h.state = ExecutionState::Executing;
                    let r = h.assign.schedule_ref();
                    let id = h.message_id.clone();
                    out.push(InboxAction::Start(r.clone()));
                    out.push(self.ack(
                        now,
                        Ack::for_schedule(r, Some(id), ExecutionState::Executing),
                    ));
                }
            }
        }
        if let Some(run) = self.state.running.clone()
            && now >= run.until
        {
            self.state.running = None;
            self.set_command_state(&run.id, ExecutionState::Completed, None);
            out.push(self.ack(now, Ack::for_message(run.id, ExecutionState::Completed)));
        }
        out
    }

    /// Reports that the executor failed to follow a held schedule (e.g. the safety layer
    /// stopped it): the schedule ends `failed` with this reason.
    pub fn fail(
        &mut self,
        now: Timestamp,
        schedule: &ScheduleRef,
        reason: ReasonCode,
        detail: &str,
    ) -> Vec<InboxAction> {
        let mut out = Vec::new();
        if let Some(i) = self
            .state
            .held
            .iter()
            .position(|h| &h.assign.schedule_ref() == schedule)
        {
            let old = self.state.held.remove(i);
            let r = old.assign.schedule_ref();
            let id = old.message_id.clone();
            self.finish(r.clone(), ExecutionState::Failed);
            out.push(InboxAction::Stop(r.clone(), ExecutionState::Failed));
            let ack =
                Ack::for_schedule(r, Some(id), ExecutionState::Failed).with_reason(reason, detail);
            out.push(self.ack(now, ack));
        }
        out
    }

    fn end(
        &mut self,
        now: Timestamp,
        old: HeldSchedule,
        to: ExecutionState,
        reason: Option<ReasonCode>,
        out: &mut Vec<InboxAction>,
    ) {
        let r = old.assign.schedule_ref();
        self.finish(r.clone(), to);
        out.push(InboxAction::Stop(r.clone(), to));
        let mut ack = Ack::for_schedule(r, Some(old.message_id), to);
        if let Some(reason) = reason {
            ack = ack.with_reason(reason, "");
        }
        out.push(self.ack(now, ack));
    }

    /// Remembers the newest version of a schedule id. The map keeps every held id and at most
    /// [`MAX_REMEMBERED_IDS`] in all, forgetting ids no longer held (alphabetically first);
    /// a server that uses a new id per plan (e.g. per day) stays far below the bound for years.
    fn record_latest(&mut self, r: &ScheduleRef) {
        self.state.latest.insert(r.schedule_id.clone(), r.version);
        while self.state.latest.len() > MAX_REMEMBERED_IDS {
            let held = &self.state.held;
            let Some(old) = self
                .state
                .latest
                .keys()
                .find(|id| {
                    *id != &r.schedule_id && !held.iter().any(|h| &h.assign.schedule_id == *id)
                })
                .cloned()
            else {
                break;
            };
            self.state.latest.remove(&old);
        }
    }

    fn finish(&mut self, r: ScheduleRef, state: ExecutionState) {
        self.state.history.push_back((r, state));
        while self.state.history.len() > self.config.history_capacity.max(1) {
            self.state.history.pop_front();
        }
    }

    fn schedule_state(&self, r: &ScheduleRef) -> Option<ExecutionState> {
        self.state
            .held
            .iter()
            .find(|h| &h.assign.schedule_ref() == r)
            .map(|h| h.state)
            .or_else(|| {
                self.state
                    .history
                    .iter()
                    .rev()
                    .find(|(h, _)| h == r)
                    .map(|(_, s)| *s)
            })
    }

    fn seen(&self, id: &MessageId) -> Option<&Seen> {
        self.state
            .seen
            .iter()
            .rev()
            .find(|(s, _)| s == id)
            .map(|(_, s)| s)
    }

    fn remember(&mut self, id: MessageId, seen: Seen) {
        self.state.seen.push_back((id, seen));
        while self.state.seen.len() > self.config.dedup_capacity.max(1) {
            self.state.seen.pop_front();
        }
    }

    fn set_command_state(
        &mut self,
        id: &MessageId,
        state: ExecutionState,
        reason: Option<ReasonCode>,
    ) {
        if let Some((_, seen)) = self.state.seen.iter_mut().rev().find(|(s, _)| s == id) {
            *seen = Seen::Command { state, reason };
        }
    }

    fn reack(&mut self, now: Timestamp, id: &MessageId, seen: &Seen) -> Vec<InboxAction> {
        let ack = match seen {
            Seen::Schedule(r) => {
                let latest = self.state.latest.get(&r.schedule_id).copied();
                let state = match self.schedule_state(r) {
                    Some(s) => s,
                    None if latest.is_some_and(|l| l > r.version) => ExecutionState::Superseded,
                    // Forgotten from the bounded history: it ended long ago.
                    None => ExecutionState::Expired,
                };
                let mut ack = Ack::for_schedule(r.clone(), Some(id.clone()), state);
                if let Some(reason) = reason_for(state) {
                    ack = ack.with_reason(reason, "");
                }
                ack
            }
            Seen::Command { state, reason } => {
                let mut ack = Ack::for_message(id.clone(), *state);
                if let Some(reason) = reason.or_else(|| reason_for(*state)) {
                    ack = ack.with_reason(reason, "");
                }
                ack
            }
            Seen::Rejected { reason, state } => {
                Ack::for_message(id.clone(), *state).with_reason(*reason, "")
            }
        };
        vec![self.ack(now, ack)]
    }

    fn ack(&mut self, now: Timestamp, ack: Ack) -> InboxAction {
        InboxAction::Send(self.envelope(now, Body::Ack(ack)))
    }

    fn envelope(&mut self, now: Timestamp, body: Body) -> Envelope {
        self.state.seq += 1;
        // "u" + a decimal counter: always a valid id; unique per device while the state persists.
        let id = MessageId::numbered("u", self.state.seq);
        Envelope::new(id, self.device.clone(), now, body)
    }
}

fn reason_for(state: ExecutionState) -> Option<ReasonCode> {
    match state {
        ExecutionState::Expired => Some(ReasonCode::Expired),
        ExecutionState::Superseded => Some(ReasonCode::Superseded),
        ExecutionState::Cancelled => Some(ReasonCode::Cancelled),
        ExecutionState::Rejected | ExecutionState::Failed => Some(ReasonCode::Internal),
        _ => None,
    }
}
