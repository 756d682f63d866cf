//! The server side delivery engine: [`DeliveryTracker`] follows every schedule version and
//! command sent to one device through grid-core's lifecycle ([`ExecutionState`]), resends what
//! is not acknowledged with exponential backoff and equal jitter, gives up at `valid_until`,
//! supersedes older versions and answers a device's `hello` with exactly what it is missing.
//! A lifecycle ack lost on the way (the server, or its subscription, was away when the device
//! sent it) is recovered by asking the device again with the same message, which it answers with
//! its current state: on [`DeliveryTracker::resync`] for every delivery whose next report is
//! overdue (the server calls it whenever its subscription is new), and for one the device
//! acknowledged before the tracker concludes on its own that it ended
//! ([`TrackerConfig::confirm_window_ms`]).
//!
//! It is sans-IO: every method takes the current time and returns [`Action`]s (messages to
//! publish, state changes to record). Its state ([`TrackerState`]) is serde-serialisable, so the
//! server persists it after every call (an outbox) and restores it after a restart; it can be
//! saved in two parts ([`DetachedState`] and [`TrackedMessages`]) so that an ack, which changes a
//! few bytes, does not rewrite the messages.
//!
//! ```
//! use grid_proto::{tracker::*, v1::*};
//! use grid_core::{DeviceId, ExecutionState, ScheduleId, ScheduleVersion, Timestamp};
//! let device = DeviceId::new("bat-1")?;
//! let now: Timestamp = "2026-11-27T00:00:00Z".parse()?;
//! let mut tracker = DeliveryTracker::new(device.clone(), TrackerConfig::default(), 42);
//! let command = Envelope::new(MessageId::new("c-1")?, device.clone(), now,
//!     Body::Command(Command { valid_until: "2026-11-27T00:05:00Z".parse()?, action: CommandAction::Idle }));
//! let actions = tracker.command(now, command)?;
//! assert!(matches!(&actions[0], Action::Send(m) if m.id.as_str() == "c-1"));
//! // No ack: it is sent again later, never after valid_until.
//! let later = tracker.next_wakeup().unwrap();
//! assert!(tracker.poll(later).iter().any(|a| matches!(a, Action::Send(_))));
//! // The device acks; a duplicate ack changes nothing.
//! let ack = Envelope::new(MessageId::new("a-1")?, device, later,
//!     Body::Ack(Ack::for_message(MessageId::new("c-1")?, ExecutionState::Completed)));
//! assert_eq!(tracker.on_ack(later, &ack).len(), 1);
//! assert!(tracker.on_ack(later, &ack).is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::v1::{Ack, Body, Envelope, Hello, MessageId, ReasonCode, ScheduleRef};
use grid_core::{DeviceId, ExecutionState, LifecycleEvent, ScheduleVersion, Timestamp};
use jiff::SignedDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the tracker retries and when it gives up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackerConfig {
    /// The backoff before the first resend (doubled for each further attempt), in milliseconds.
    pub backoff_base_ms: u64,
    /// The cap on the backoff, in milliseconds.
    pub backoff_max_ms: u64,
    /// How long after a delivery's execution deadline (its `valid_until`, plus the hold
    /// duration for `set_power`) the tracker waits for the device's final report before it
    /// records the execution as completed.
    pub completion_grace_ms: u64,
    /// How many finished deliveries are kept, without their messages (oldest forgotten first).
    pub max_finished: usize,
    /// Before the tracker concludes on its own that a delivery the device acknowledged ended
    /// (an `accepted` one at its `valid_until` expires, an `executing` one past its deadline and
    /// grace is recorded as completed), it asks the device once by sending the message again and
    /// waits this long for the answer, in milliseconds: the device's own `executing`,
    /// `completed` or `failed` ack may have been lost while the server was away.
    #[serde(default = "default_confirm_window_ms")]
    pub confirm_window_ms: u64,
}

fn default_confirm_window_ms() -> u64 {
    30_000
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            backoff_base_ms: 5_000,
            backoff_max_ms: 300_000,
            completion_grace_ms: 600_000,
            max_finished: 64,
            confirm_window_ms: default_confirm_window_ms(),
        }
    }
}

/// What a delivery is: a version of a schedule, or one command message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeliveryKey {
    /// A schedule version.
    Schedule(ScheduleRef),
    /// A command, by message id.
    Command {
        /// The command's message id.
        id: MessageId,
    },
}

/// The message kept for resending; serialised as its JSON wire form.
#[derive(Debug, Clone, PartialEq)]
struct Stored(Envelope);

impl Serialize for Stored {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let bytes = Codec::Json
            .encode_unbounded(&self.0)
            .map_err(serde::ser::Error::custom)?;
        let text = String::from_utf8(bytes).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Stored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Codec::Json
            .decode_unbounded(text.as_bytes())
            .map(Stored)
            .map_err(serde::de::Error::custom)
    }
}

/// One tracked delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// What it is.
    pub key: DeliveryKey,
    /// Where it stands.
    pub state: ExecutionState,
    /// How often it was sent.
    pub attempts: u32,
    /// When it is sent again if no ack arrives (only while `queued` or `delivered`).
    pub next_attempt_at: Option<Timestamp>,
    /// Its `valid_until`: not started by then, it expires.
    pub valid_until: Timestamp,
    /// When it can no longer be running on the device.
    pub execution_deadline: Timestamp,
    /// When the device was last asked where it stands ([`DeliveryTracker::resync`], or the
    /// question before the tracker concludes on its own; see [`TrackerConfig::confirm_window_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_at: Option<Timestamp>,
    /// The message (re)sent for it; dropped once the delivery is finished (never sent again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<Stored>,
}

impl Delivery {
    /// The message (re)sent for it, while it is not finished (a finished delivery keeps only
    /// its key and state).
    pub fn message(&self) -> Option<&Envelope> {
        self.message.as_ref().map(|m| &m.0)
    }

    /// The message's id, while the delivery keeps its message.
    fn message_id(&self) -> Option<&MessageId> {
        self.message.as_ref().map(|m| &m.0.id)
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, and most actions are sends
pub enum Action {
    /// Publish this message at QoS 1 on its topic ([`crate::topic::Topic::for_envelope`]) in the
    /// device's codec ([`DeliveryTracker::codec`]).
    Send(Envelope),
    /// A delivery changed state: record it (e.g. in the database).
    StateChanged {
        /// Which delivery.
        key: DeliveryKey,
        /// The state before.
        from: ExecutionState,
        /// The state now.
        to: ExecutionState,
        /// The device's reason, or the tracker's (`expired`, `superseded`, `cancelled`).
        reason: Option<ReasonCode>,
        /// The device's detail text, or the tracker's explanation.
        detail: Option<String>,
    },
}

/// The persistent state of a [`DeliveryTracker`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackerState {
    /// The device.
    pub device: DeviceId,
    /// The codec the device asked for in its last hello.
    pub codec: Codec,
    /// The jitter generator's state (SplitMix64).
    rng: u64,
    /// Deliveries, oldest first.
    deliveries: Vec<Delivery>,
    /// The newest version ever tracked per schedule id.
    latest: BTreeMap<grid_core::ScheduleId, ScheduleVersion>,
}

/// A [`TrackerState`] without its messages: the part that changes on every ack and resend (a few
/// hundred bytes), saved apart from the messages (often kilobytes each), which only change when a
/// delivery is added or finishes. [`TrackerState::detached`] and [`TrackerState::messages`] take
/// a state apart; [`TrackerState::attach`] puts it together again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetachedState {
    device: DeviceId,
    codec: Codec,
    rng: u64,
    deliveries: Vec<DetachedDelivery>,
    latest: BTreeMap<grid_core::ScheduleId, ScheduleVersion>,
}

/// A [`Delivery`] with its message replaced by the message's id (none once finished).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DetachedDelivery {
    key: DeliveryKey,
    state: ExecutionState,
    attempts: u32,
    next_attempt_at: Option<Timestamp>,
    valid_until: Timestamp,
    execution_deadline: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asked_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<MessageId>,
}

/// The messages of a [`TrackerState`], one per unfinished delivery in the deliveries' order
/// (each serialised as its JSON wire form, like inside a whole state). Lists saved before
/// finished deliveries dropped their messages hold one per delivery; [`TrackerState::attach`]
/// takes both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrackedMessages(Vec<Stored>);

impl TrackedMessages {
    /// How many messages there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl DetachedState {
    /// The device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The ids of the messages the state names, in order: those [`TrackerState::attach`]
    /// takes (the unfinished deliveries', and in a state saved before finished deliveries
    /// dropped their messages, theirs too). Messages never change once tracked, so two detached
    /// states with the same ids take the same messages.
    pub fn message_ids(&self) -> impl Iterator<Item = &MessageId> {
        self.deliveries.iter().filter_map(|d| d.message_id.as_ref())
    }
}

impl TrackerState {
    /// The state without its messages (see [`DetachedState`]).
    pub fn detached(&self) -> DetachedState {
        DetachedState {
            device: self.device.clone(),
            codec: self.codec,
            rng: self.rng,
            deliveries: self
                .deliveries
                .iter()
                .map(|d| DetachedDelivery {
                    key: d.key.clone(),
                    state: d.state,
                    attempts: d.attempts,
                    next_attempt_at: d.next_attempt_at,
                    valid_until: d.valid_until,
                    execution_deadline: d.execution_deadline,
                    asked_at: d.asked_at,
                    message_id: d.message_id().cloned(),
                })
                .collect(),
            latest: self.latest.clone(),
        }
    }

    /// The ids of the tracked messages, in the deliveries' order (what
    /// [`DetachedState::message_ids`] of [`TrackerState::detached`] gives).
    pub fn message_ids(&self) -> impl Iterator<Item = &MessageId> {
        self.deliveries.iter().filter_map(Delivery::message_id)
    }

    /// The messages kept for resending, one per unfinished delivery (see [`DetachedState`]).
    pub fn messages(&self) -> TrackedMessages {
        TrackedMessages(
            self.deliveries
                .iter()
                .filter_map(|d| d.message.clone())
                .collect(),
        )
    }

    /// Puts a detached state and its messages together again. [`Error::Engine`] when the
    /// messages are not the ones the state names (one missing or left over, or another id at a
    /// place). A list saved with the messages of finished deliveries too is taken, and those
    /// messages dropped.
    pub fn attach(detached: DetachedState, messages: TrackedMessages) -> Result<Self> {
        let device = detached.device;
        let wrong =
            |what: String| Error::Engine(format!("the saved delivery state of {device} {what}"));
        let mut messages = messages.0.into_iter().peekable();
        let mut deliveries = Vec::with_capacity(detached.deliveries.len());
        for d in detached.deliveries {
            let finished = d.state.is_terminal();
            let message = match &d.message_id {
                // An old list may still hold a finished delivery's message: skip it.
                Some(id) if finished => {
                    if messages.peek().is_some_and(|m| &m.0.id == id) {
                        messages.next();
                    }
                    None
                }
                Some(id) => match messages.next() {
                    Some(m) if &m.0.id == id => Some(m),
                    Some(m) => {
                        return Err(wrong(format!(
                            "names message {id} where {} was saved",
                            m.0.id
                        )));
                    }
                    None => return Err(wrong(format!("names message {id}, which was not saved"))),
                },
                None if finished => None,
                None => return Err(wrong("has an unfinished delivery without a message".into())),
            };
            deliveries.push(Delivery {
                key: d.key,
                state: d.state,
                attempts: d.attempts,
                next_attempt_at: d.next_attempt_at,
                valid_until: d.valid_until,
                execution_deadline: d.execution_deadline,
                asked_at: d.asked_at,
                message,
            });
        }
        if let Some(m) = messages.next() {
            return Err(wrong(format!(
                "names no message {}, which was saved",
                m.0.id
            )));
        }
        Ok(Self {
            device,
            codec: detached.codec,
            rng: detached.rng,
            deliveries,
            latest: detached.latest,
        })
    }
}

/// The server's delivery engine for one device (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryTracker {
    config: TrackerConfig,
    state: TrackerState,
}

fn add_ms(t: Timestamp, ms: u64) -> Timestamp {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    t.checked_add(SignedDuration::from_millis(ms))
        .unwrap_or(Timestamp::MAX)
}

fn event_for(state: ExecutionState) -> Option<LifecycleEvent> {
    use ExecutionState as S;
    use LifecycleEvent as E;
    Some(match state {
        S::Accepted => E::Accept,
        S::Rejected => E::Reject,
        S::Executing => E::Start,
        S::Completed => E::Complete,
        S::Failed => E::Fail,
        S::Expired => E::Expire,
        S::Superseded => E::Supersede,
        S::Cancelled => E::Cancel,
        S::Queued | S::Delivered => return None,
    })
}

impl DeliveryTracker {
    /// An empty tracker for `device`; `seed` seeds the jitter (use a random value per device).
    pub fn new(device: DeviceId, config: TrackerConfig, seed: u64) -> Self {
        Self {
            config,
            state: TrackerState {
                device,
                codec: Codec::Json,
                rng: seed,
                deliveries: Vec::new(),
                latest: BTreeMap::new(),
            },
        }
    }

    /// A tracker continuing from a saved state.
    pub fn restore(config: TrackerConfig, state: TrackerState) -> Self {
        Self { config, state }
    }

    /// The state to persist.
    pub fn state(&self) -> &TrackerState {
        &self.state
    }

    /// The state, consuming the tracker (to keep it without a copy once it is persisted).
    pub fn into_state(self) -> TrackerState {
        self.state
    }

    /// The device.
    pub fn device(&self) -> &DeviceId {
        &self.state.device
    }

    /// The codec to encode this device's messages in.
    pub fn codec(&self) -> Codec {
        self.state.codec
    }

    /// Every tracked delivery, oldest first.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.state.deliveries
    }

    /// The state of one delivery, if tracked.
    pub fn state_of(&self, key: &DeliveryKey) -> Option<ExecutionState> {
        self.state
            .deliveries
            .iter()
            .find(|d| &d.key == key)
            .map(|d| d.state)
    }

    /// The earliest instant at which [`DeliveryTracker::poll`] has something to do.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.state
            .deliveries
            .iter()
            .filter(|d| !d.state.is_terminal())
            .flat_map(|d| [d.next_attempt_at, Some(self.end_step_at(d))])
            .flatten()
            .min()
    }

    /// When the tracker next acts on its own on `d` (not a resend): a delivery the device never
    /// acknowledged expires at its `valid_until`; one it acknowledged is asked about at its end
    /// (`valid_until`, or the execution deadline plus grace once executing) and concluded a
    /// confirmation window after the question.
    fn end_step_at(&self, d: &Delivery) -> Timestamp {
        let end = self.end_of(d);
        match d.asked_at {
            Some(asked) if Self::confirmable(d.state) && asked >= end => {
                add_ms(asked, self.config.confirm_window_ms)
            }
            _ => end,
        }
    }

    /// When `d` ends if the device says nothing more.
    fn end_of(&self, d: &Delivery) -> Timestamp {
        if d.state == ExecutionState::Executing {
            add_ms(d.execution_deadline, self.config.completion_grace_ms)
        } else {
            d.valid_until
        }
    }

    /// Whether the device acknowledged `state`, so that it is asked before the tracker concludes.
    fn confirmable(state: ExecutionState) -> bool {
        matches!(state, ExecutionState::Accepted | ExecutionState::Executing)
    }

    /// Tracks a new schedule version (a `schedule_assign` message for this device, signed if the
    /// fleet signs) and sends it. Older versions of the same schedule still in flight are
    /// superseded; a version at or below one already tracked is [`Error::StaleVersion`].
    pub fn assign(&mut self, now: Timestamp, message: Envelope) -> Result<Vec<Action>> {
        self.check_device(&message)?;
        let Body::ScheduleAssign(body) = &message.body else {
            return Err(Error::Engine(format!(
                "assign takes a schedule_assign, not a {}",
                message.kind()
            )));
        };
        let r = body.schedule_ref();
        if let Some(&latest) = self.state.latest.get(&r.schedule_id)
            && r.version <= latest
        {
            return Err(Error::StaleVersion {
                schedule: r.schedule_id.to_string(),
                version: r.version.0,
                latest: latest.0,
            });
        }
        let mut actions = Vec::new();
        for i in 0..self.state.deliveries.len() {
            let same = matches!(&self.state.deliveries[i].key,
                DeliveryKey::Schedule(old) if old.schedule_id == r.schedule_id);
            if same {
                self.transition(
                    i,
                    LifecycleEvent::Supersede,
                    Some(ReasonCode::Superseded),
                    Some(format!("replaced by version {}", r.version.0)),
                    &mut actions,
                );
            }
        }
        self.state.latest.insert(r.schedule_id.clone(), r.version);
        let valid_until = body.valid_until;
        self.push(
            now,
            DeliveryKey::Schedule(r),
            valid_until,
            valid_until,
            message,
        );
        actions.extend(self.poll(now));
        Ok(actions)
    }

    /// Tracks a new command message for this device and sends it. A `cancel_schedule` command
    /// also cancels every delivery of that schedule still in flight.
    pub fn command(&mut self, now: Timestamp, message: Envelope) -> Result<Vec<Action>> {
        self.check_device(&message)?;
        let Body::Command(body) = &message.body else {
            return Err(Error::Engine(format!(
                "command takes a command, not a {}",
                message.kind()
            )));
        };
        let key = DeliveryKey::Command {
            id: message.id.clone(),
        };
        if self.state_of(&key).is_some() {
            return Err(Error::Engine(format!(
                "command {} is already tracked",
                message.id
            )));
        }
        let mut actions = Vec::new();
        if let crate::v1::CommandAction::CancelSchedule { schedule_id } = &body.action {
            for i in 0..self.state.deliveries.len() {
                let hit = matches!(&self.state.deliveries[i].key,
                    DeliveryKey::Schedule(r) if &r.schedule_id == schedule_id);
                if hit {
                    self.transition(
                        i,
                        LifecycleEvent::Cancel,
                        Some(ReasonCode::Cancelled),
                        Some(format!("cancelled by command {}", message.id)),
                        &mut actions,
                    );
                }
            }
        }
        let (valid_until, deadline) = (body.valid_until, body.execution_deadline());
        self.push(now, key, valid_until, deadline, message);
        actions.extend(self.poll(now));
        Ok(actions)
    }

    /// Applies an ack from the device. Duplicate, late or reordered acks that the lifecycle
    /// does not allow are ignored, so this is idempotent; acks for unknown deliveries too.
    pub fn on_ack(&mut self, _now: Timestamp, message: &Envelope) -> Vec<Action> {
        let mut actions = Vec::new();
        let Body::Ack(ack) = &message.body else {
            return actions;
        };
        if message.device != self.state.device {
            return actions;
        }
        let Some(i) = self.find_for_ack(ack) else {
            return actions;
        };
        if let Some(event) = event_for(ack.state) {
            self.transition(i, event, ack.reason, ack.detail.clone(), &mut actions);
        }
        actions
    }

    fn find_for_ack(&self, ack: &Ack) -> Option<usize> {
        self.state.deliveries.iter().position(|d| match &d.key {
            // A device that could not read the schedule (bad signature, malformed) only knows
            // the message id.
            DeliveryKey::Schedule(r) => match &ack.schedule {
                Some(s) => s == r,
                None => ack.ref_id.is_some() && ack.ref_id.as_ref() == d.message_id(),
            },
            DeliveryKey::Command { id } => {
                ack.schedule.is_none() && ack.ref_id.as_ref() == Some(id)
            }
        })
    }

    /// Handles the device's `hello`: records its codec, marks what it holds as accepted, and
    /// resends at once exactly the deliveries in flight that it does not hold.
    pub fn on_hello(&mut self, now: Timestamp, message: &Envelope) -> Vec<Action> {
        let mut actions = Vec::new();
        let Body::Hello(hello) = &message.body else {
            return actions;
        };
        if message.device != self.state.device {
            return actions;
        }
        self.state.codec = hello.codec;
        for i in 0..self.state.deliveries.len() {
            let d = &self.state.deliveries[i];
            if d.state.is_terminal() {
                continue;
            }
            match held(hello, &d.key) {
                Held::Same => {
                    if matches!(d.state, ExecutionState::Queued | ExecutionState::Delivered) {
                        self.transition(i, LifecycleEvent::Accept, None, None, &mut actions);
                    }
                }
                Held::Newer => self.transition(
                    i,
                    LifecycleEvent::Supersede,
                    Some(ReasonCode::Superseded),
                    Some("the device holds a newer version".into()),
                    &mut actions,
                ),
                Held::Missing => {
                    if now < d.valid_until || d.state == ExecutionState::Executing {
                        self.send(i, now, &mut actions);
                    }
                }
            }
        }
        actions.extend(self.poll(now));
        actions
    }

    /// Asks the device again about every delivery whose next step it should have reported by
    /// `now` without the report having arrived (the server, or its subscription, was away when
    /// the device sent it): an `accepted` schedule whose horizon has started (or an `accepted`
    /// command), and an `executing` delivery whose execution deadline has passed, each by more
    /// than [`TrackerConfig::confirm_window_ms`] (a report sent a moment ago may still be on
    /// its way). It sends their
    /// stored messages again; the device answers a message it has seen, and a schedule version it
    /// holds or has finished, with its current state, so a lost `executing`, `completed` or
    /// `failed` ack arrives again. Resend timers are not touched and nothing changes state here
    /// (apart from what [`DeliveryTracker::poll`] does at `now`). The server calls it whenever
    /// its subscription is new. A `failed` ack lost before the deadline is recovered by the
    /// question before the tracker concludes (see [`TrackerConfig::confirm_window_ms`]).
    ///
    /// ```
    /// use grid_proto::{tracker::*, v1::*};
    /// use grid_core::{DeviceId, ExecutionState, Timestamp};
    /// let device = DeviceId::new("bat-1")?;
    /// let now: Timestamp = "2026-11-27T00:00:00Z".parse()?;
    /// let mut tracker = DeliveryTracker::new(device.clone(), TrackerConfig::default(), 1);
    /// let command = Envelope::new(MessageId::new("c-1")?, device.clone(), now,
    ///     Body::Command(Command { valid_until: "2026-11-27T00:05:00Z".parse()?, action: CommandAction::Idle }));
    /// tracker.command(now, command)?;
    /// let ack = Envelope::new(MessageId::new("a-1")?, device, now,
    ///     Body::Ack(Ack::for_message(MessageId::new("c-1")?, ExecutionState::Executing)));
    /// tracker.on_ack(now, &ack);
    /// // Executing until 00:05: nothing overdue yet.
    /// assert!(tracker.resync(now).is_empty());
    /// // Past its deadline (and the 30 s confirmation window) without a final report: asked
    /// // again (same message).
    /// let later: Timestamp = "2026-11-27T00:05:31Z".parse()?;
    /// assert!(matches!(&tracker.resync(later)[..], [Action::Send(m)] if m.id.as_str() == "c-1"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resync(&mut self, now: Timestamp) -> Vec<Action> {
        let mut actions = Vec::new();
        let slack = self.config.confirm_window_ms;
        for d in &mut self.state.deliveries {
            if Self::overdue(d, now, slack)
                && let Some(message) = &d.message
            {
                actions.push(Action::Send(message.0.clone()));
                d.asked_at = Some(now);
            }
        }
        actions.extend(self.poll(now));
        actions
    }

    /// Whether [`DeliveryTracker::resync`] at `now` would ask the device anything.
    pub fn needs_resync(&self, now: Timestamp) -> bool {
        let slack = self.config.confirm_window_ms;
        self.state
            .deliveries
            .iter()
            .any(|d| Self::overdue(d, now, slack))
    }

    /// Whether the device should have reported `d`'s next step more than `slack_ms` before
    /// `now`.
    fn overdue(d: &Delivery, now: Timestamp, slack_ms: u64) -> bool {
        let due = match d.state {
            ExecutionState::Accepted => match d.message() {
                Some(Envelope {
                    body: Body::ScheduleAssign(a),
                    ..
                }) => a.horizon.start,
                // A command runs (or completes) as soon as it is accepted.
                Some(m) => m.sent_at,
                None => return false,
            },
            ExecutionState::Executing => d.execution_deadline,
            _ => return false,
        };
        add_ms(due, slack_ms) <= now
    }

    /// Advances time: expires what was not acknowledged by its `valid_until`, asks the device
    /// about what it acknowledged once that ends (see [`TrackerConfig::confirm_window_ms`]) and,
    /// without an answer, expires what was not started and records executions past their
    /// deadline (plus grace) as completed; resends what is due.
    pub fn poll(&mut self, now: Timestamp) -> Vec<Action> {
        use ExecutionState as S;
        let mut actions = Vec::new();
        for i in 0..self.state.deliveries.len() {
            let d = &self.state.deliveries[i];
            let end = self.end_of(d);
            match d.state {
                S::Queued | S::Delivered if now >= d.valid_until => {
                    self.transition(
                        i,
                        LifecycleEvent::Expire,
                        Some(ReasonCode::Expired),
                        Some("not started before valid_until".into()),
                        &mut actions,
                    );
                }
                S::Accepted | S::Executing if now >= end => {
                    let asked = d.asked_at.filter(|&asked| asked >= end);
                    match asked {
                        None => {
                            let d = &mut self.state.deliveries[i];
                            d.asked_at = Some(now);
                            if let Some(message) = &d.message {
                                actions.push(Action::Send(message.0.clone()));
                            }
                        }
                        Some(asked) if now >= add_ms(asked, self.config.confirm_window_ms) => {
                            let (event, reason, detail) = if d.state == S::Accepted {
                                (
                                    LifecycleEvent::Expire,
                                    Some(ReasonCode::Expired),
                                    "not started before valid_until (the device did not answer)",
                                )
                            } else {
                                (
                                    LifecycleEvent::Complete,
                                    None,
                                    "assumed: no final report from the device",
                                )
                            };
                            self.transition(i, event, reason, Some(detail.into()), &mut actions);
                        }
                        Some(_) => {}
                    }
                }
                S::Queued | S::Delivered if d.next_attempt_at.is_none_or(|t| t <= now) => {
                    self.send(i, now, &mut actions);
                }
                _ => {}
            }
        }
        self.prune();
        actions
    }

    fn check_device(&self, message: &Envelope) -> Result<()> {
        if message.device != self.state.device {
            return Err(Error::WrongDevice {
                topic: self.state.device.to_string(),
                envelope: message.device.to_string(),
            });
        }
        message.validate()
    }

    fn push(
        &mut self,
        now: Timestamp,
        key: DeliveryKey,
        valid_until: Timestamp,
        execution_deadline: Timestamp,
        message: Envelope,
    ) {
        self.state.deliveries.push(Delivery {
            key,
            state: ExecutionState::Queued,
            attempts: 0,
            next_attempt_at: Some(now),
            valid_until,
            execution_deadline,
            asked_at: None,
            message: Some(Stored(message)),
        });
    }

    fn send(&mut self, i: usize, now: Timestamp, actions: &mut Vec<Action>) {
        let attempts = self.state.deliveries[i].attempts.saturating_add(1);
        let delay = self.backoff_ms(attempts);
        let d = &mut self.state.deliveries[i];
        d.attempts = attempts;
        d.next_attempt_at = Some(add_ms(now, delay));
        if let Some(message) = &d.message {
            actions.push(Action::Send(message.0.clone()));
        }
        if matches!(d.state, ExecutionState::Queued) {
            self.transition(i, LifecycleEvent::Deliver, None, None, actions);
        }
    }

    /// Equal jitter: uniform in [cap/2, cap] milliseconds, cap = min(max, base · 2^(attempts−1)).
    /// The jitter spreads a fleet's resends after an outage; the floor of half the cap gives
    /// every device at least that long to answer. (Full jitter, down to base/10, resent ≈ 9 % of
    /// a 10,000-device publish within 2 s while the acks were merely queued, adding load exactly
    /// when the system was busiest.)
    fn backoff_ms(&mut self, attempts: u32) -> u64 {
        let base = self.config.backoff_base_ms.max(1);
        let cap = base
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(40))
            .min(self.config.backoff_max_ms.max(base));
        let floor = cap.div_ceil(2).max(1);
        floor + self.next_random() % (cap - floor + 1)
    }

    fn next_random(&mut self) -> u64 {
        // SplitMix64: tiny, seedable, and good enough for jitter.
        self.state.rng = self.state.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn transition(
        &mut self,
        i: usize,
        event: LifecycleEvent,
        reason: Option<ReasonCode>,
        detail: Option<String>,
        actions: &mut Vec<Action>,
    ) {
        let d = &mut self.state.deliveries[i];
        let from = d.state;
        let Ok(to) = from.apply(event) else {
            return;
        };
        if to == from {
            return;
        }
        d.state = to;
        if !matches!(to, ExecutionState::Queued | ExecutionState::Delivered) {
            d.next_attempt_at = None;
        }
        if to.is_terminal() {
            // Never sent again: its key and state are enough for late acks.
            d.message = None;
        }
        actions.push(Action::StateChanged {
            key: d.key.clone(),
            from,
            to,
            reason,
            detail,
        });
    }

    fn prune(&mut self) {
        let finished = self
            .state
            .deliveries
            .iter()
            .filter(|d| d.state.is_terminal())
            .count();
        let mut excess = finished.saturating_sub(self.config.max_finished);
        self.state.deliveries.retain(|d| {
            if excess > 0 && d.state.is_terminal() {
                excess -= 1;
                false
            } else {
                true
            }
        });
        // Keep the newest version of the schedules still tracked, and of at most 256 others.
        if self.state.latest.len() > 256 {
            let live: Vec<_> = self
                .state
                .deliveries
                .iter()
                .filter_map(|d| match &d.key {
                    DeliveryKey::Schedule(r) => Some(r.schedule_id.clone()),
                    DeliveryKey::Command { .. } => None,
                })
                .collect();
            let mut others = self.state.latest.len();
            self.state.latest.retain(|id, _| {
                if others > 256 && !live.contains(id) {
                    others -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

enum Held {
    Same,
    Newer,
    Missing,
}

fn held(hello: &Hello, key: &DeliveryKey) -> Held {
    match key {
        DeliveryKey::Schedule(r) => {
            match hello
                .schedules
                .iter()
                .find(|s| s.schedule_id == r.schedule_id)
            {
                Some(s) if s.version == r.version => Held::Same,
                Some(s) if s.version > r.version => Held::Newer,
                _ => Held::Missing,
            }
        }
        DeliveryKey::Command { id } => {
            if hello.last_message_ids.contains(id) {
                Held::Same
            } else {
                Held::Missing
            }
        }
    }
}
