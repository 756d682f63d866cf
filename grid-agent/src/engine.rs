//! The sans-IO execution engine: `(now, event) -> Vec<Action>`.
//!
//! The engine owns every decision of the agent and does no I/O: the shell ([`crate::shell`])
//! feeds it MQTT messages, ticks, battery samples and connection changes, and carries out the
//! actions it returns **in order**: persist (an [`Action::Persist`] must be committed before the
//! next action runs, which is how an MQTT delivery is acknowledged only after the schedule is on
//! disk), acknowledge an MQTT delivery, publish, send a setpoint to the safety layer, log.
//!
//! Message handling is grid-proto's sans-IO [`Inbox`]: decoding with limits, the topic and device
//! check, signatures, deduplication by message id, supersession by version, expiry, and the
//! lifecycle acks (`accepted`, `executing`, `completed`, `superseded`, `expired`, `cancelled`,
//! `rejected` with a reason code). Its state is persisted after every change. On top of it the
//! engine adds what only the device can judge:
//! * a schedule is checked against the local [`BatterySpec`] from the measured state of charge
//!   (from the slot containing now) before it may run; an infeasible one is answered `rejected`
//!   with reason `invalid_schedule` and never executed;
//! * on every tick the setpoint in force is: an active command, else the schedule in force, else
//!   the fallback (idle or self-consumption). The fallback also applies when the clock is not
//!   trusted (before 2024) and when the broker has been unreachable for longer than the reversion
//!   timeout (the schedule's own `reversion_timeout_s`, or the configured one for commands). The
//!   setpoint is re-sent at least every third of the configured reversion timeout, so the
//!   hardware watchdog never fires while the agent is alive;
//! * telemetry samples are batched and sent every telemetry interval, with a plan-vs-actual
//!   report for every finished slot (planned setpoint, delivered energy, deviation).
//!
//! **Sign convention:** a positive power (kW) charges the battery, negative discharges it.
//!
//! ```
//! use grid_agent::engine::{Action, Engine, EngineConfig, Event};
//! use grid_core::{BatteryParams, BatterySpec, DeviceId, Timestamp};
//! let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0))?;
//! let mut engine = Engine::new(EngineConfig::new(DeviceId::new("bat-1")?, spec));
//! let now: Timestamp = "2026-11-27T00:00:00Z".parse()?;
//! let actions = engine.handle(now, Event::Connected);
//! // On every connect: a hello, then the retained online status.
//! let topics: Vec<_> = actions.iter().filter_map(|a| match a {
//!     Action::Publish(p) => Some(p.topic.as_str()), _ => None }).collect();
//! assert_eq!(topics, ["grid/v1/bat-1/up/hello", "grid/v1/bat-1/up/status"]);
//! // Nothing to follow: the fallback (idle) is applied at once.
//! assert!(actions.iter().any(|a| matches!(a, Action::SetPower { power, .. } if power.kw() == 0.0)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::config::FallbackMode;
use crate::store::{OutboxKind, ScheduleRecord, Snapshot, StoreOp};
use grid_core::{
    BatterySpec, DeviceId, ExecutionState, Power, Schedule, ScheduleParts, SocTrajectory,
    TelemetrySample, Timestamp,
};
use grid_proto::inbox::{DetachedInboxState, Inbox, InboxAction, InboxConfig, InboxState};
use grid_proto::signature::VerifyingKey;
use grid_proto::topic::{Topic, TopicKind};
use grid_proto::v1::{
    Ack, Body, CommandAction, Envelope, MessageId, ReasonCode, Sample, ScheduleAssign, ScheduleRef,
    SlotReport, Telemetry,
};
use grid_proto::{Codec, limits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Instants before this are treated as an unset clock (a Raspberry Pi without RTC boots in 1970).
pub const TRUSTED_CLOCK_FLOOR: &str = "2024-01-01T00:00:00Z";

/// The agent software version reported in `hello` and `status`.
pub const AGENT_VERSION: &str = concat!("grid-agent/", env!("CARGO_PKG_VERSION"));

/// The engine's configuration (no I/O, no environment).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This device.
    pub device: DeviceId,
    /// The battery's envelope, checked before a schedule may run.
    pub spec: BatterySpec,
    /// What to do when nothing valid covers now.
    pub fallback: FallbackMode,
    /// Broker silence after which commands stop, and the bound on re-sending the setpoint to the
    /// hardware (its watchdog uses the same timeout).
    pub reversion_timeout: Duration,
    /// How often a telemetry batch is sent.
    pub telemetry_interval: Duration,
    /// The key that must sign schedules and commands (`None` = no verification).
    pub verifying_key: Option<VerifyingKey>,
    /// Largest accepted payload in bytes (grid-proto's own limit applies as well).
    pub max_payload_bytes: usize,
    /// Prefix of the ids of every message this agent sends (acks, hello, status, telemetry): ids
    /// are `<prefix>-<n>`, `n` counting from 1 in each run. The server drops an uplink message
    /// whose id it has seen from this device before, so the prefix must differ in every run,
    /// including after the store was reset (corrupt file) and on a Pi whose clock is not set yet:
    /// [`EngineConfig::new`] draws a random one ([`random_message_id_prefix`]). A prefix too
    /// long or not a valid id is replaced by a hash of it.
    pub message_id_prefix: String,
    /// How far (as a fraction of capacity) the measured state of charge may differ from the
    /// plan's expected start and the schedule still be checked from the plan's own trajectory.
    /// Sensor noise and self-discharge make the two differ slightly on every real battery; a
    /// plan that rides the SoC limit exactly must not be rejected for a 0.2 % reading error.
    /// The safety layer still clamps every setpoint to the true limits. Beyond the tolerance
    /// the schedule is checked from the measured state and rejected if it cannot be followed.
    pub soc_tolerance: f64,
    /// A grid-meter reading (or battery sample) older than this is not used: the
    /// self-consumption fallback then idles, and says so ([`EngineMetrics::meter_missing`]).
    pub meter_max_age: Duration,
}

impl EngineConfig {
    /// Defaults: idle fallback, 300 s reversion timeout, 60 s telemetry, no signatures, a 2 %
    /// SoC tolerance, meter readings valid for 10 s, a random message id prefix.
    pub fn new(device: DeviceId, spec: BatterySpec) -> Self {
        Self {
            message_id_prefix: random_message_id_prefix(),
            device,
            spec,
            fallback: FallbackMode::Idle,
            reversion_timeout: Duration::from_secs(300),
            telemetry_interval: Duration::from_secs(60),
            verifying_key: None,
            max_payload_bytes: limits::MAX_PAYLOAD_BYTES,
            soc_tolerance: DEFAULT_SOC_TOLERANCE,
            meter_max_age: Duration::from_secs(10),
        }
    }
}

/// A fresh prefix for [`EngineConfig::message_id_prefix`]: `u` and 64 random bits in hex, from the
/// operating system's generator. Neither a persisted counter (lost with a corrupt store) nor the
/// boot time (a Pi without RTC boots in 1970 or at the last saved time) is unique across runs;
/// 64 random bits are, with a collision chance of about `runs² / 2^65`.
///
/// The one function of this module that asks the OS for something; the engine itself takes the
/// prefix as a value.
pub fn random_message_id_prefix() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS generator (never seen on Linux): mix the time and a per-process random hash key.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        bytes = h.finish().to_le_bytes();
    }
    format!("u{:016x}", u64::from_le_bytes(bytes))
}

/// The prefix the engine uses: `prefix` if `<prefix>-<any u64>` is a valid message id, else `h`
/// and a 64-bit FNV-1a hash of it (so a long device id in a caller's prefix cannot make every
/// uplink id invalid).
fn usable_prefix(prefix: &str) -> String {
    if MessageId::new(format!("{prefix}-{}", u64::MAX)).is_ok() {
        return prefix.to_string();
    }
    format!("h{:016x}", fnv1a(prefix.as_bytes()))
}

/// The 64-bit FNV-1a hash of `bytes` (stable across runs and platforms; no cryptographic use).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Default of [`EngineConfig::soc_tolerance`]: 2 % of capacity.
pub const DEFAULT_SOC_TOLERANCE: f64 = 0.02;

/// A handle on one MQTT delivery that must be acknowledged (PUBACK) by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryTag(pub u64);

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// A message arrived on `topic`.
    Message {
        /// The MQTT topic.
        topic: &'a str,
        /// The raw payload.
        payload: &'a [u8],
        /// The delivery to acknowledge once the message is handled (`None` for QoS 0).
        delivery: Option<DeliveryTag>,
    },
    /// Time passed: re-evaluate the setpoint, lifecycles and telemetry.
    Tick,
    /// A battery reading.
    Sample(TelemetrySample),
    /// A grid-meter reading taken at `now` for self-consumption (kW at the site's grid
    /// connection point, positive = importing from the grid). It is used for
    /// [`EngineConfig::meter_max_age`].
    GridMeter(Power),
    /// The MQTT session is up (after every (re)connect).
    Connected,
    /// The MQTT connection dropped.
    Disconnected,
    /// The store dropped this many buffered telemetry messages (bound reached while offline).
    TelemetryDropped(u64),
}

/// Why a setpoint was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetpointSource {
    /// A slot of a schedule.
    Schedule {
        /// The schedule.
        schedule: ScheduleRef,
        /// The slot index.
        slot: usize,
    },
    /// An immediate command (by message id).
    Command(String),
    /// The fallback, and why.
    Fallback(FallbackReason),
}

/// Why the fallback applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// No valid schedule or command covers now.
    NothingToFollow,
    /// The clock is not trusted yet.
    ClockUntrusted,
    /// The broker has been unreachable for longer than the reversion timeout.
    CommsLost,
    /// The store was corrupt and nothing has been received since.
    SafeMode,
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The topic.
    pub topic: String,
    /// The encoded envelope.
    pub payload: Vec<u8>,
    /// Whether the broker retains it (status).
    pub retain: bool,
    /// Whether it goes through the durable outbox (acks, telemetry) or is sent only when online
    /// (hello, status).
    pub outbox: Option<OutboxKind>,
}

/// Log levels of [`Action::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Normal operation.
    Info,
    /// Something was refused or degraded.
    Warn,
    /// Something failed.
    Error,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish a message (QoS 1).
    Publish(Outgoing),
    /// Commit these changes in one transaction before running the next action.
    Persist(Vec<StoreOp>),
    /// Acknowledge the MQTT delivery (PUBACK) now.
    AckDelivery(DeliveryTag),
    /// Request this setpoint (kW, positive = charging) from the safety layer.
    SetPower {
        /// The setpoint.
        power: Power,
        /// Why.
        source: SetpointSource,
    },
    /// Write a log line.
    Log {
        /// Level.
        level: LogLevel,
        /// The message.
        message: String,
        /// The correlation id of the schedule or command concerned.
        correlation_id: Option<String>,
    },
}

/// Counters for the metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineMetrics {
    /// Downlink messages received (including duplicates and rejected ones).
    pub messages_received: u64,
    /// Messages rejected (undecodable, refused by the inbox, or infeasible).
    pub rejected: u64,
    /// Schedules accepted and found feasible.
    pub schedules_accepted: u64,
    /// Schedule versions started.
    pub schedules_started: u64,
    /// Acks produced.
    pub acks: u64,
    /// Telemetry batches produced.
    pub telemetry_batches: u64,
    /// Telemetry messages dropped by the bounded buffer.
    pub telemetry_dropped: u64,
    /// The last requested setpoint in kW (positive = charging).
    pub setpoint_kw: f64,
    /// The last state of charge read, as a fraction.
    pub soc: Option<f64>,
    /// Whether the fallback applies now.
    pub fallback_active: bool,
    /// Whether the MQTT session is up.
    pub connected: bool,
    /// Whether the agent is in safe mode (store was corrupt; nothing received since).
    pub safe_mode: bool,
    /// The last grid-meter reading in kW (positive = importing from the grid).
    pub grid_import_kw: Option<f64>,
    /// Whether the self-consumption fallback applies but has no fresh grid-meter reading (or
    /// battery sample), so the battery idles instead.
    pub meter_missing: bool,
}

/// The command the engine follows, persisted as JSON (the inbox tracks only its id and end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CommandRecord {
    message_id: String,
    /// `None` = idle (until the next schedule or command).
    power_kw: Option<f64>,
    /// When a set-power command ends.
    until: Option<Timestamp>,
}

#[derive(Debug, Clone)]
struct SlotTrack {
    schedule: ScheduleRef,
    slot: usize,
    planned_kw: f64,
    slot_hours: f64,
    delivered_kwh: f64,
    last_at: Timestamp,
}

/// The sans-IO agent engine (see the [module docs](self)).
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    inbox: Inbox,
    command: Option<CommandRecord>,
    /// Schedules that failed the feasibility check: never followed.
    infeasible: BTreeSet<ScheduleRef>,
    /// The correlation id of each held schedule, for its logs and acks.
    correlations: BTreeMap<ScheduleRef, String>,
    connected: bool,
    disconnected_since: Option<Timestamp>,
    last_sample: Option<TelemetrySample>,
    grid_import: Option<(Power, Timestamp)>,
    /// Why self-consumption cannot follow the meter now (`None` = it can, or it does not apply).
    meter_problem: Option<&'static str>,
    /// The problem last logged, so a change is logged once.
    meter_problem_logged: Option<&'static str>,
    id_prefix: String,
    last_setpoint: Option<(Power, SetpointSource, Timestamp)>,
    samples: Vec<Sample>,
    plan: Vec<SlotReport>,
    dropped_pending: u64,
    last_telemetry: Option<Timestamp>,
    track: Option<SlotTrack>,
    seq: u64,
    last_status: Option<Timestamp>,
    /// The schedule in force as the server was last told it, by a status or by an `executing` or
    /// terminal ack: a changed setpoint source sends a status only when this differs from what
    /// is in force (a schedule's start is reported by its `executing` ack, not twice).
    reported_active: Option<ScheduleRef>,
    safe_mode: bool,
    metrics: EngineMetrics,
    trusted_floor: Timestamp,
}

fn inbox_config(config: &EngineConfig) -> InboxConfig {
    let mut caps = vec![
        grid_proto::capability::PLAN_REPORT.to_string(),
        grid_proto::capability::CBOR.to_string(),
    ];
    if config.verifying_key.is_some() {
        caps.push(grid_proto::capability::SIGNED.to_string());
    }
    InboxConfig {
        verifying_key: config.verifying_key,
        agent_version: AGENT_VERSION.into(),
        capabilities: caps,
        ..InboxConfig::default()
    }
}

impl Engine {
    /// A fresh engine holding nothing.
    pub fn new(config: EngineConfig) -> Self {
        let inbox = Inbox::new(config.device.clone(), inbox_config(&config));
        Self {
            id_prefix: usable_prefix(&config.message_id_prefix),
            meter_problem: None,
            meter_problem_logged: None,
            config,
            inbox,
            command: None,
            infeasible: BTreeSet::new(),
            correlations: BTreeMap::new(),
            connected: false,
            disconnected_since: None,
            last_sample: None,
            grid_import: None,
            last_setpoint: None,
            samples: Vec::new(),
            plan: Vec::new(),
            dropped_pending: 0,
            last_telemetry: None,
            track: None,
            seq: 0,
            last_status: None,
            reported_active: None,
            safe_mode: false,
            metrics: EngineMetrics::default(),
            trusted_floor: TRUSTED_CLOCK_FLOOR.parse().unwrap_or(Timestamp::UNIX_EPOCH),
        }
    }

    /// Resumes from what the store held (the inbox state and the command). Returns log actions
    /// for parts that could not be restored.
    pub fn restore(&mut self, snapshot: Snapshot) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(json) = snapshot.inbox_state {
            match restore_inbox_state(&json, &snapshot.schedules) {
                Ok(state) => {
                    self.inbox = Inbox::restore(
                        self.config.device.clone(),
                        inbox_config(&self.config),
                        state,
                    );
                }
                Err(e) => out.push(log(
                    LogLevel::Error,
                    format!("stored inbox state is unreadable: {e}"),
                    None,
                )),
            }
        }
        for r in snapshot.schedules {
            if let (Some(c), Ok(id)) = (r.correlation_id, grid_core::ScheduleId::new(r.schedule_id))
            {
                let key = ScheduleRef {
                    schedule_id: id,
                    version: grid_core::ScheduleVersion(r.version),
                };
                self.correlations.insert(key, c);
            }
        }
        if let Some(json) = snapshot.command {
            match serde_json::from_str(&json) {
                Ok(c) => self.command = Some(c),
                Err(e) => out.push(log(
                    LogLevel::Error,
                    format!("stored command is unreadable: {e}"),
                    None,
                )),
            }
        }
        self.dropped_pending = 0;
        self.metrics.telemetry_dropped = snapshot.telemetry_dropped;
        out
    }

    /// Enters safe mode (the store was corrupt and replaced): the fallback applies and `hello`
    /// reports nothing held, so the server resends the device's state. The first schedule or
    /// command received ends safe mode.
    pub fn enter_safe_mode(&mut self) {
        self.safe_mode = true;
    }

    /// Whether the engine is in safe mode.
    pub fn is_safe_mode(&self) -> bool {
        self.safe_mode
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters for the metrics endpoint.
    pub fn metrics(&self) -> EngineMetrics {
        let mut m = self.metrics.clone();
        m.connected = self.connected;
        m.safe_mode = self.safe_mode;
        m.soc = self.last_sample.map(|s| s.soc.fraction());
        m.grid_import_kw = self.grid_import.map(|(p, _)| p.kw());
        m.meter_missing = self.meter_problem.is_some();
        m
    }

    /// The schedules held (accepted or executing), with their states.
    pub fn held(&self) -> Vec<(ScheduleRef, ExecutionState)> {
        self.inbox.held().collect()
    }

    /// The MQTT last will: a retained offline status (topic, payload).
    pub fn last_will(&mut self, now: Timestamp) -> Option<(String, Vec<u8>)> {
        let id = self.next_id()?;
        let env = self.inbox.status(now, false, id);
        let payload = Codec::Json.encode(&env).ok()?;
        Some((Topic::for_envelope(&env).to_string(), payload))
    }

    /// The topic filter to subscribe to.
    pub fn subscription(&self) -> String {
        grid_proto::topic::agent_subscription(&self.config.device)
    }

    /// Handles one event at `now`; run the returned actions in order.
    pub fn handle(&mut self, now: Timestamp, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Message {
                topic,
                payload,
                delivery,
            } => {
                self.on_message(now, topic, payload, delivery, &mut out);
                self.on_tick(now, &mut out);
            }
            Event::Tick => self.on_tick(now, &mut out),
            Event::Sample(s) => self.on_sample(s),
            Event::GridMeter(p) => self.grid_import = Some((p, now)),
            Event::Connected => {
                self.connected = true;
                self.disconnected_since = None;
                let actions = self.inbox.on_connect(now);
                self.apply_inbox(now, actions, None, &mut out);
                self.status(now, &mut out);
                self.on_tick(now, &mut out);
            }
            Event::Disconnected => {
                if self.connected || self.disconnected_since.is_none() {
                    self.disconnected_since = Some(now);
                }
                self.connected = false;
            }
            Event::TelemetryDropped(n) => {
                self.dropped_pending += n;
                self.metrics.telemetry_dropped += n;
            }
        }
        out
    }

    // ---- messages ----

    fn on_message(
        &mut self,
        now: Timestamp,
        topic: &str,
        payload: &[u8],
        delivery: Option<DeliveryTag>,
        out: &mut Vec<Action>,
    ) {
        self.metrics.messages_received += 1;
        let max = self.config.max_payload_bytes.min(limits::MAX_PAYLOAD_BYTES);
        if payload.len() > max {
            // Rejected here so even an oversized message is answered by id.
            self.reject_oversized(now, payload, max, out);
            if let Some(tag) = delivery {
                out.push(Action::AckDelivery(tag));
            }
            return;
        }
        // Decoded once: the inbox takes the checked envelope.
        let checked = self.inbox.check_message(topic, payload);
        let correlation = match &checked {
            Ok(e) => e.correlation_id.clone(),
            // Refused (wrong topic, bad signature, ...): its correlation still labels the log.
            Err(_) => grid_proto::decode(payload)
                .ok()
                .and_then(|e| e.correlation_id),
        };
        let actions = self.inbox.on_checked(now, checked, payload);
        self.apply_inbox(now, actions, correlation, out);
        if let Some(tag) = delivery {
            // After the Persist above: the broker redelivers if we die before this.
            out.push(Action::AckDelivery(tag));
        }
    }

    fn reject_oversized(
        &mut self,
        now: Timestamp,
        payload: &[u8],
        max: usize,
        out: &mut Vec<Action>,
    ) {
        self.metrics.rejected += 1;
        let err = grid_proto::Error::TooLarge {
            field: "payload",
            actual: payload.len(),
            max,
        };
        let id = scan_message_id(payload);
        out.push(log(
            LogLevel::Warn,
            format!(
                "rejected message {}: {err}",
                id.as_ref().map_or("<no id>", |i| i.as_str())
            ),
            None,
        ));
        if let Some(id) = id {
            let ack = Ack::for_message(id, ExecutionState::Rejected)
                .with_reason(err.reason_code(), err.to_string());
            self.publish_ack(now, ack, out);
        }
    }

    /// Carries out the inbox's actions: persists its state first (one transaction, before the
    /// PUBACK and before any ack leaves), then publishes, starts and stops.
    fn apply_inbox(
        &mut self,
        now: Timestamp,
        actions: Vec<InboxAction>,
        correlation: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if actions.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        let mut rest = Vec::new();
        let mut newly_infeasible = Vec::new();
        for a in actions {
            match a {
                InboxAction::Store(assign) => {
                    let r = assign.schedule_ref();
                    match self.check_feasible(now, &assign) {
                        Ok(()) => {
                            self.metrics.schedules_accepted += 1;
                            self.safe_mode = false;
                            self.end_idle_command(&mut ops);
                            if let Some(c) = &correlation {
                                self.correlations.insert(r.clone(), c.clone());
                            }
                            ops.push(StoreOp::PutSchedule(ScheduleRecord {
                                schedule_id: r.schedule_id.to_string(),
                                version: r.version.0,
                                correlation_id: correlation.clone(),
                                state: ExecutionState::Accepted.as_str().into(),
                                assign: serde_json::to_vec(&assign).unwrap_or_default(),
                            }));
                            rest.push(log(
                                LogLevel::Info,
                                format!(
                                    "accepted schedule {} v{} ({} slots of {} s from {})",
                                    r.schedule_id,
                                    r.version,
                                    assign.horizon.slots,
                                    assign.horizon.slot_s,
                                    assign.horizon.start
                                ),
                                correlation.clone(),
                            ));
                        }
                        Err(detail) => {
                            self.infeasible.insert(r.clone());
                            newly_infeasible.push((r, detail));
                        }
                    }
                }
                InboxAction::Send(env) => {
                    if let Body::Ack(ack) = &env.body {
                        let about_infeasible = ack
                            .schedule
                            .as_ref()
                            .is_some_and(|r| self.infeasible.contains(r));
                        if about_infeasible
                            && matches!(
                                ack.state,
                                ExecutionState::Accepted | ExecutionState::Executing
                            )
                        {
                            continue; // it is answered `rejected` below instead
                        }
                        self.metrics.acks += 1;
                        self.note_reported(ack);
                        if ack.state == ExecutionState::Rejected {
                            self.metrics.rejected += 1;
                            rest.push(log(
                                LogLevel::Warn,
                                format!(
                                    "rejected message {}: {}",
                                    ack.ref_id.as_ref().map_or("?", |i| i.as_str()),
                                    ack.detail.as_deref().unwrap_or("")
                                ),
                                correlation.clone(),
                            ));
                        }
                    }
                    let corr = self
                        .correlation_of_env(&env)
                        .or_else(|| correlation.clone());
                    if let Some(p) = self.uplink(env, corr) {
                        rest.push(Action::Publish(p));
                    }
                }
                InboxAction::Start(r) => {
                    if self.infeasible.contains(&r) {
                        continue;
                    }
                    self.metrics.schedules_started += 1;
                    self.end_idle_command(&mut ops);
                    ops.push(StoreOp::SetScheduleState {
                        schedule_id: r.schedule_id.to_string(),
                        version: r.version.0,
                        state: ExecutionState::Executing.as_str().into(),
                    });
                    rest.push(log(
                        LogLevel::Info,
                        format!("executing schedule {} v{}", r.schedule_id, r.version),
                        self.correlations
                            .get(&r)
                            .cloned()
                            .or_else(|| correlation.clone()),
                    ));
                }
                InboxAction::Stop(r, state) => {
                    self.close_track_if(&r);
                    ops.push(StoreOp::SetScheduleState {
                        schedule_id: r.schedule_id.to_string(),
                        version: r.version.0,
                        state: state.as_str().into(),
                    });
                    if !self.infeasible.remove(&r) {
                        rest.push(log(
                            LogLevel::Info,
                            format!("schedule {} v{} {state}", r.schedule_id, r.version),
                            self.correlations.get(&r).cloned(),
                        ));
                    }
                }
                InboxAction::Run(id, cmd) => {
                    self.safe_mode = false;
                    self.run_command(now, &id, &cmd.action, &mut ops);
                    rest.push(log(
                        LogLevel::Info,
                        format!("running command {id}: {:?}", cmd.action),
                        correlation.clone(),
                    ));
                }
                InboxAction::Discarded(e) => {
                    self.metrics.rejected += 1;
                    rest.push(log(
                        LogLevel::Warn,
                        format!("discarded a message: {e}"),
                        None,
                    ));
                }
            }
        }
        // Infeasible schedules end at once; the device answers `rejected` (they never ran).
        for (r, detail) in newly_infeasible {
            let failed = self
                .inbox
                .fail(now, &r, ReasonCode::InvalidSchedule, &detail);
            self.metrics.rejected += 1;
            rest.push(log(
                LogLevel::Warn,
                format!(
                    "rejected schedule {} v{}: {detail}",
                    r.schedule_id, r.version
                ),
                correlation.clone(),
            ));
            for a in failed {
                match a {
                    InboxAction::Send(mut env) => {
                        if let Body::Ack(ack) = &mut env.body
                            && ack.state == ExecutionState::Failed
                        {
                            ack.state = ExecutionState::Rejected;
                        }
                        self.metrics.acks += 1;
                        if let Some(p) = self.uplink(env, correlation.clone()) {
                            rest.push(Action::Publish(p));
                        }
                    }
                    InboxAction::Stop(r, _) => {
                        self.infeasible.remove(&r);
                    }
                    _ => {}
                }
            }
        }
        let held: BTreeSet<ScheduleRef> = self.inbox.held().map(|(r, _)| r).collect();
        self.correlations.retain(|r, _| held.contains(r));
        // Without the held schedules' bodies: they are stored as schedule records when accepted.
        match serde_json::to_string(&self.inbox.state().detached()) {
            Ok(json) => ops.push(StoreOp::SetInboxState(json)),
            Err(e) => rest.push(log(
                LogLevel::Error,
                format!("cannot serialize the inbox state: {e}"),
                None,
            )),
        }
        out.push(Action::Persist(ops));
        out.extend(rest);
    }

    /// An idle command holds "until the next schedule or command".
    fn end_idle_command(&mut self, ops: &mut Vec<StoreOp>) {
        if self.command.as_ref().is_some_and(|c| c.power_kw.is_none()) {
            self.command = None;
            ops.push(StoreOp::SetCommand(None));
        }
    }

    /// The correlation id of the schedule an uplink ack is about.
    fn correlation_of_env(&self, env: &Envelope) -> Option<String> {
        match &env.body {
            Body::Ack(Ack {
                schedule: Some(r), ..
            }) => self.correlations.get(r).cloned(),
            _ => None,
        }
    }

    fn run_command(
        &mut self,
        now: Timestamp,
        id: &MessageId,
        action: &CommandAction,
        ops: &mut Vec<StoreOp>,
    ) {
        let record = match action {
            CommandAction::SetPower {
                power_kw,
                duration_s,
            } => Some(CommandRecord {
                message_id: id.to_string(),
                power_kw: Some(*power_kw),
                until: now
                    .checked_add(jiff::SignedDuration::from_secs(i64::from(*duration_s)))
                    .ok(),
            }),
            CommandAction::Idle => Some(CommandRecord {
                message_id: id.to_string(),
                power_kw: None,
                until: None,
            }),
            // The inbox already stopped the schedule; a running set-power command stays.
            CommandAction::CancelSchedule { .. } => return,
        };
        ops.push(StoreOp::SetCommand(
            record.as_ref().and_then(|r| serde_json::to_string(r).ok()),
        ));
        self.command = record;
    }

    /// Checks the part of `assign` from the slot containing now against the spec, starting from
    /// the measured energy when a sample is known and it differs from the planner's expectation
    /// by more than [`EngineConfig::soc_tolerance`] (else from the expectation).
    fn check_feasible(&self, now: Timestamp, assign: &ScheduleAssign) -> Result<(), String> {
        let schedule = assign
            .to_schedule(&self.config.device, now)
            .map_err(|e| e.to_string())?;
        let horizon = schedule.horizon();
        let from = horizon.slot_at(now).unwrap_or(0);
        let (sub, planned_initial) = if from == 0 {
            (schedule.clone(), schedule.expected().initial)
        } else {
            let window = horizon
                .window(from, horizon.len() - from)
                .map_err(|e| e.to_string())?;
            let initial = schedule.expected().start_of_slot(from);
            let end = window.end();
            let parts = ScheduleParts {
                horizon: window,
                setpoints: schedule.setpoints()[from..].to_vec(),
                expected: SocTrajectory {
                    initial,
                    end_of_slot: schedule.expected().end_of_slot[from..].to_vec(),
                },
                expires_at: schedule.expires_at().min(end),
                ..schedule.parts().clone()
            };
            (Schedule::new(parts).map_err(|e| e.to_string())?, initial)
        };
        let capacity = self.config.spec.capacity();
        let tolerance = capacity.kwh() * self.config.soc_tolerance.clamp(0.0, 1.0);
        let initial = match self.last_sample {
            Some(s) => {
                let measured = s.soc.energy(capacity);
                if (measured.kwh() - planned_initial.kwh()).abs() <= tolerance {
                    planned_initial
                } else {
                    measured
                }
            }
            None => planned_initial,
        };
        sub.validate(&self.config.spec, initial)
            .map(|_| ())
            .map_err(|v| {
                let first = v.0.first().map(|x| x.to_string()).unwrap_or_default();
                format!(
                    "{} violation(s) of the battery limits from {:.3} kWh; first: {first}",
                    v.0.len(),
                    initial.kwh()
                )
            })
    }

    // ---- time ----

    fn clock_trusted(&self, now: Timestamp) -> bool {
        now >= self.trusted_floor
    }

    fn comms_lost_for(&self, now: Timestamp) -> Option<Duration> {
        self.disconnected_since
            .map(|since| now.duration_since(since).unsigned_abs())
    }

    fn on_tick(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let trusted = self.clock_trusted(now);
        if trusted {
            if self.connected {
                // Contact with the broker is what the inbox's reversion timeout measures.
                self.inbox.touch(now);
            }
            let actions = self.inbox.poll(now);
            self.apply_inbox(now, actions, None, out);
            self.finish_command(now, out);
        }
        let (power, source) = self.choose(now, trusted);
        self.note_meter(out);
        self.track_slot(now, &source);
        let reapply = self.config.reversion_timeout / 3;
        let changed = match &self.last_setpoint {
            None => true,
            Some((p, s, at)) => {
                (p.kw() - power.kw()).abs() > 1e-9
                    || *s != source
                    || now.duration_since(*at).unsigned_abs() >= reapply
            }
        };
        if changed {
            let source_changed = self
                .last_setpoint
                .as_ref()
                .is_none_or(|(_, s, _)| *s != source);
            if source_changed {
                let message = match &source {
                    SetpointSource::Schedule { schedule, slot } => format!(
                        "following schedule {} v{} slot {slot}: {:.3} kW",
                        schedule.schedule_id,
                        schedule.version,
                        power.kw()
                    ),
                    SetpointSource::Command(id) => {
                        format!("following command {id}: {:.3} kW", power.kw())
                    }
                    SetpointSource::Fallback(r) => {
                        format!("fallback ({r:?}): {:.3} kW", power.kw())
                    }
                };
                let corr = match &source {
                    SetpointSource::Schedule { schedule, .. } => {
                        self.correlations.get(schedule).cloned()
                    }
                    _ => None,
                };
                out.push(log(LogLevel::Info, message, corr));
                let active = self.inbox.active(now).map(ScheduleAssign::schedule_ref);
                if active != self.reported_active {
                    self.status(now, out);
                }
            }
            self.metrics.setpoint_kw = power.kw();
            self.metrics.fallback_active = matches!(source, SetpointSource::Fallback(_));
            self.last_setpoint = Some((power, source.clone(), now));
            out.push(Action::SetPower { power, source });
        }
        self.maybe_telemetry(now, out);
    }

    /// A set-power command ended (the inbox acks `completed`): forget it.
    fn finish_command(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let ended = self
            .command
            .as_ref()
            .is_some_and(|c| c.until.is_some_and(|u| now >= u));
        if ended {
            self.command = None;
            out.push(Action::Persist(vec![StoreOp::SetCommand(None)]));
        }
    }

    /// The setpoint in force now.
    fn choose(&mut self, now: Timestamp, trusted: bool) -> (Power, SetpointSource) {
        self.meter_problem = None;
        if !trusted {
            return (
                self.fallback_power(now),
                SetpointSource::Fallback(FallbackReason::ClockUntrusted),
            );
        }
        let lost = self.comms_lost_for(now);
        let active = self.inbox.active(now).cloned();
        if let Some(c) = &self.command {
            let stale = lost.is_some_and(|d| d > self.config.reversion_timeout);
            if !stale {
                let p = c
                    .power_kw
                    .and_then(|kw| Power::from_kw(kw).ok())
                    .unwrap_or(Power::ZERO);
                return (p, SetpointSource::Command(c.message_id.clone()));
            }
        }
        if let Some(a) = active
            && !self.infeasible.contains(&a.schedule_ref())
            && let Some(kw) = a.setpoint_at(now)
        {
            let slot = a
                .core_horizon()
                .ok()
                .and_then(|h| h.slot_at(now))
                .unwrap_or(0);
            let p = Power::from_kw(kw).unwrap_or(Power::ZERO);
            return (
                p,
                SetpointSource::Schedule {
                    schedule: a.schedule_ref(),
                    slot,
                },
            );
        }
        let executing = self
            .inbox
            .held()
            .any(|(_, s)| s == ExecutionState::Executing);
        let reason = if executing && lost.is_some() {
            FallbackReason::CommsLost
        } else if self.safe_mode {
            FallbackReason::SafeMode
        } else {
            FallbackReason::NothingToFollow
        };
        (self.fallback_power(now), SetpointSource::Fallback(reason))
    }

    /// The fallback setpoint. Self-consumption moves the battery by minus the grid import, so the
    /// meter reads zero: with the battery at `b` (measured) and the meter at `g`, the house needs
    /// `g − b` from outside the battery, and the battery setpoint `b − g` cancels it (a surplus
    /// charges the battery, never the grid). The spec's limits bound it here; the safety layer
    /// adds the SoC window, ramp and temperature. Without a fresh meter reading and battery
    /// sample it idles and records why ([`EngineMetrics::meter_missing`], a log line).
    fn fallback_power(&mut self, now: Timestamp) -> Power {
        if self.config.fallback == FallbackMode::Idle {
            return Power::ZERO;
        }
        let fresh =
            |at: Timestamp| now.duration_since(at).unsigned_abs() <= self.config.meter_max_age;
        let (grid, sample) = match (self.grid_import, self.last_sample) {
            (None, _) => {
                self.meter_problem = Some("no grid-meter reading yet");
                return Power::ZERO;
            }
            (Some((_, at)), _) if !fresh(at) => {
                self.meter_problem = Some("the grid-meter reading is stale");
                return Power::ZERO;
            }
            (_, None) => {
                self.meter_problem = Some("no battery reading yet");
                return Power::ZERO;
            }
            (_, Some(s)) if !fresh(s.at) => {
                self.meter_problem = Some("the battery reading is stale");
                return Power::ZERO;
            }
            (Some((g, _)), Some(s)) => (g, s),
        };
        let spec = &self.config.spec;
        let target = (sample.power.kw() - grid.kw())
            .clamp(-spec.max_discharge().kw(), spec.max_charge().kw());
        Power::from_kw(target).unwrap_or(Power::ZERO)
    }

    /// Logs a change of the self-consumption meter problem (once per change, not every tick).
    fn note_meter(&mut self, out: &mut Vec<Action>) {
        if self.meter_problem == self.meter_problem_logged {
            return;
        }
        match (self.meter_problem, self.meter_problem_logged) {
            (Some(why), _) => out.push(log(
                LogLevel::Warn,
                format!("self-consumption fallback without a meter: {why}; battery idle"),
                None,
            )),
            (None, Some(_)) if self.config.fallback == FallbackMode::SelfConsumption => {
                out.push(log(
                    LogLevel::Info,
                    "self-consumption fallback: grid-meter readings are back".into(),
                    None,
                ));
            }
            (None, _) => {}
        }
        self.meter_problem_logged = self.meter_problem;
    }

    // ---- telemetry and plan-vs-actual ----

    fn on_sample(&mut self, s: TelemetrySample) {
        if let Some(t) = self.track.as_mut()
            && s.at > t.last_at
        {
            let hours = s.at.duration_since(t.last_at).as_secs_f64() / 3600.0;
            t.delivered_kwh += s.power.kw() * hours;
            t.last_at = s.at;
        }
        if self.samples.len() >= limits::MAX_TELEMETRY_SAMPLES {
            self.samples.remove(0);
            self.dropped_pending += 1;
        }
        self.samples.push(Sample::from_core(&s));
        self.last_sample = Some(s);
    }

    fn track_slot(&mut self, now: Timestamp, source: &SetpointSource) {
        let current = match source {
            SetpointSource::Schedule { schedule, slot } => Some((schedule.clone(), *slot)),
            _ => None,
        };
        let same = match (&self.track, &current) {
            (Some(t), Some((s, i))) => t.schedule == *s && t.slot == *i,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.close_track();
        if let Some((schedule, slot)) = current
            && let Some(a) = self.inbox.active(now)
        {
            self.track = Some(SlotTrack {
                planned_kw: a.setpoints_kw.get(slot).copied().unwrap_or(0.0),
                slot_hours: f64::from(a.horizon.slot_s) / 3600.0,
                schedule,
                slot,
                delivered_kwh: 0.0,
                last_at: now,
            });
        }
    }

    fn close_track_if(&mut self, sref: &ScheduleRef) {
        if self.track.as_ref().is_some_and(|t| t.schedule == *sref) {
            self.close_track();
        }
    }

    fn close_track(&mut self) {
        if let Some(t) = self.track.take() {
            if self.plan.len() >= limits::MAX_SLOT_REPORTS {
                self.plan.remove(0);
            }
            let planned_kwh = t.planned_kw * t.slot_hours;
            self.plan.push(SlotReport {
                schedule: t.schedule,
                slot: u32::try_from(t.slot).unwrap_or(u32::MAX),
                planned_kw: t.planned_kw,
                delivered_kwh: t.delivered_kwh,
                deviation_kwh: t.delivered_kwh - planned_kwh,
            });
        }
    }

    fn maybe_telemetry(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let due = match self.last_telemetry {
            None => {
                self.last_telemetry = Some(now);
                false
            }
            Some(t) => now.duration_since(t).unsigned_abs() >= self.config.telemetry_interval,
        };
        if !due || (self.samples.is_empty() && self.plan.is_empty()) {
            return;
        }
        self.last_telemetry = Some(now);
        let body = Body::Telemetry(Telemetry {
            samples: std::mem::take(&mut self.samples),
            plan: std::mem::take(&mut self.plan),
            dropped_samples: std::mem::take(&mut self.dropped_pending),
        });
        if let Some(id) = self.next_id() {
            let env = Envelope::new(id, self.config.device.clone(), now, body);
            if let Some(mut p) = encode(&env, None) {
                p.outbox = Some(OutboxKind::Telemetry);
                self.metrics.telemetry_batches += 1;
                out.push(Action::Publish(p));
            }
        }
    }

    /// Flushes the current telemetry batch now (shutdown), closing the slot being tracked.
    pub fn flush(&mut self, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        self.close_track();
        self.last_telemetry = Some(now - jiff::SignedDuration::from_secs(86_400 * 365));
        self.maybe_telemetry(now, &mut out);
        out
    }

    // ---- uplink ----

    fn status(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        // One status per instant: a connect and the first setpoint would otherwise send two.
        if !self.connected || self.last_status == Some(now) {
            return;
        }
        self.last_status = Some(now);
        let Some(id) = self.next_id() else { return };
        let env = self.inbox.status(now, true, id);
        if let Body::Status(st) = &env.body {
            self.reported_active.clone_from(&st.active);
        }
        if let Some(p) = encode(&env, None) {
            out.push(Action::Publish(p));
        }
    }

    /// Follows what an ack tells the server about the schedule in force: `executing` names it,
    /// a terminal state of that schedule ends it.
    fn note_reported(&mut self, ack: &Ack) {
        let Some(r) = &ack.schedule else { return };
        if ack.state == ExecutionState::Executing {
            self.reported_active = Some(r.clone());
        } else if ack.state.is_terminal() && self.reported_active.as_ref() == Some(r) {
            self.reported_active = None;
        }
    }

    fn publish_ack(&mut self, now: Timestamp, ack: Ack, out: &mut Vec<Action>) {
        let Some(id) = self.next_id() else { return };
        self.metrics.acks += 1;
        let env = Envelope::new(id, self.config.device.clone(), now, Body::Ack(ack));
        if let Some(p) = encode(&env, None) {
            out.push(Action::Publish(p));
        }
    }

    fn next_id(&mut self) -> Option<MessageId> {
        self.seq += 1;
        MessageId::new(format!("{}-{}", self.id_prefix, self.seq)).ok()
    }

    /// Encodes an uplink envelope from the inbox under this run's own id: the inbox numbers its
    /// messages from a counter kept in the store, which starts again after a corrupt store is
    /// replaced, and the server would drop the repeated ids as duplicates.
    fn uplink(&mut self, mut env: Envelope, correlation: Option<String>) -> Option<Outgoing> {
        env.id = self.next_id()?;
        encode(&env, correlation)
    }
}

/// Encodes an uplink envelope (JSON) with its topic; acks and telemetry go through the outbox.
fn encode(env: &Envelope, correlation: Option<String>) -> Option<Outgoing> {
    let mut env = env.clone();
    if env.correlation_id.is_none() {
        env.correlation_id = correlation;
    }
    let kind = TopicKind::for_body(env.kind());
    let payload = Codec::Json.encode(&env).ok()?;
    Some(Outgoing {
        topic: Topic::for_envelope(&env).to_string(),
        payload,
        retain: kind.retained(),
        outbox: match kind {
            TopicKind::Ack => Some(OutboxKind::Ack),
            TopicKind::Telemetry => Some(OutboxKind::Telemetry),
            _ => None,
        },
    })
}

/// The inbox state saved as `json`: detached (the held schedules' bodies taken from their
/// stored records), or else whole (as agents before the split saved it).
fn restore_inbox_state(json: &str, schedules: &[ScheduleRecord]) -> Result<InboxState, String> {
    let detached = match serde_json::from_str::<DetachedInboxState>(json) {
        Ok(detached) => detached,
        Err(e) => return serde_json::from_str(json).map_err(|_| e.to_string()),
    };
    InboxState::attach(detached, |r| {
        schedules
            .iter()
            .find(|s| s.schedule_id == r.schedule_id.as_str() && s.version == r.version.0)
            .and_then(|s| serde_json::from_slice(&s.assign).ok())
    })
    .map_err(|e| e.to_string())
}

fn log(level: LogLevel, message: String, correlation_id: Option<String>) -> Action {
    Action::Log {
        level,
        message,
        correlation_id,
    }
}

/// Finds `"id":"..."` near the start of a payload too large to decode, so even an oversized
/// message can be rejected by id.
fn scan_message_id(payload: &[u8]) -> Option<MessageId> {
    let head = &payload[..payload.len().min(512)];
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
    };
    let start = text.find("\"id\"")? + 4;
    let rest = text[start..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let end = rest.find('"')?;
    MessageId::new(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use grid_core::{BatteryParams, Soc, Temperature};

    const DEV: &str = "bat-1";

    fn t(s: i64) -> Timestamp {
        "2026-11-27T00:00:00Z".parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(s)
    }

    fn engine() -> Engine {
        let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)).unwrap();
        let mut c = EngineConfig::new(DeviceId::new(DEV).unwrap(), spec);
        c.reversion_timeout = Duration::from_secs(30);
        c.telemetry_interval = Duration::from_secs(60);
        Engine::new(c)
    }

    fn schedule(id: &str, sched: &str, version: u64, kw: &[f64], reversion_s: u32) -> Vec<u8> {
        let env = Envelope::new(
            MessageId::new(id).unwrap(),
            DeviceId::new(DEV).unwrap(),
            t(0),
            Body::ScheduleAssign(ScheduleAssign {
                schedule_id: grid_core::ScheduleId::new(sched).unwrap(),
                version: grid_core::ScheduleVersion(version),
                horizon: grid_proto::v1::WireHorizon {
                    start: t(0),
                    slot_s: 60,
                    slots: kw.len() as u32,
                },
                setpoints_kw: kw.to_vec(),
                initial_kwh: 5.0,
                expected_kwh: vec![5.0; kw.len()],
                valid_until: t(60 * kw.len() as i64),
                reversion_timeout_s: reversion_s,
            }),
        )
        .with_correlation_id("corr-9");
        Codec::Json.encode(&env).unwrap()
    }

    fn command(id: &str, action: CommandAction) -> Vec<u8> {
        let env = Envelope::new(
            MessageId::new(id).unwrap(),
            DeviceId::new(DEV).unwrap(),
            t(0),
            Body::Command(grid_proto::v1::Command {
                valid_until: t(3600),
                action,
            }),
        );
        Codec::Json.encode(&env).unwrap()
    }

    fn msg<'a>(kind: &str, payload: &'a [u8], tag: u64) -> Event<'a> {
        let topic: &'static str = if kind == "schedule" {
            "grid/v1/bat-1/down/schedule"
        } else {
            "grid/v1/bat-1/down/command"
        };
        Event::Message {
            topic,
            payload,
            delivery: Some(DeliveryTag(tag)),
        }
    }

    fn acks(actions: &[Action]) -> Vec<(Option<String>, ExecutionState, Option<ReasonCode>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(p) if p.topic.ends_with("/up/ack") => {
                    match grid_proto::decode(&p.payload).unwrap().body {
                        Body::Ack(a) => Some((a.ref_id.map(|r| r.to_string()), a.state, a.reason)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    /// The `active` of every status published, in order.
    fn statuses(actions: &[Action]) -> Vec<Option<String>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(p) if p.topic.ends_with("/up/status") => {
                    match grid_proto::decode(&p.payload).unwrap().body {
                        Body::Status(s) => Some(s.active.map(|r| r.schedule_id.to_string())),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    fn setpoint(actions: &[Action]) -> Option<f64> {
        actions.iter().rev().find_map(|a| match a {
            Action::SetPower { power, .. } => Some(power.kw()),
            _ => None,
        })
    }

    fn sample(at: Timestamp, soc: f64, kw: f64) -> TelemetrySample {
        TelemetrySample {
            at,
            soc: Soc::from_fraction(soc).unwrap(),
            power: Power::from_kw(kw).unwrap(),
            voltage_v: 50.0,
            current_a: 0.0,
            temperature: Temperature::from_celsius(20.0).unwrap(),
            alarms: grid_core::Alarms::NONE,
        }
    }

    #[test]
    fn accepts_persists_before_the_puback_then_executes_slot_by_slot() {
        let mut e = engine();
        let p = schedule("m1", "day", 1, &[2.0, -1.0], 0);
        let out = e.handle(t(1), msg("schedule", &p, 7));
        let persist = out.iter().position(|a| matches!(a, Action::Persist(ops) if ops.iter().any(|o| matches!(o, StoreOp::PutSchedule(_))))).unwrap();
        let puback = out
            .iter()
            .position(|a| *a == Action::AckDelivery(DeliveryTag(7)))
            .unwrap();
        assert!(persist < puback, "PUBACK only after the commit");
        // It started on arrival: `executing` alone (acceptance implied).
        assert_eq!(
            acks(&out),
            [(Some("m1".into()), ExecutionState::Executing, None)]
        );
        assert_eq!(setpoint(&out), Some(2.0));
        let ack_pos = out
            .iter()
            .position(|a| matches!(a, Action::Publish(p) if p.topic.ends_with("/up/ack")))
            .unwrap();
        assert!(persist < ack_pos, "no ack leaves before the commit");
        let out = e.handle(t(61), Event::Tick);
        assert_eq!(setpoint(&out), Some(-1.0));
        let out = e.handle(t(120), Event::Tick);
        assert_eq!(
            acks(&out),
            [(Some("m1".into()), ExecutionState::Completed, None)]
        );
        assert_eq!(setpoint(&out), Some(0.0));
        assert!(e.held().is_empty());
    }

    #[test]
    fn the_schedule_in_force_is_reported_by_its_acks_and_a_status_only_on_connect() {
        let mut e = engine();
        assert_eq!(statuses(&e.handle(t(0), Event::Connected)), [None]);
        let p = schedule("m1", "day", 1, &[2.0, -1.0, 0.5], 0);
        let out = e.handle(t(1), msg("schedule", &p, 1));
        // `executing` says the schedule came into force: no status repeats it.
        assert_eq!(
            acks(&out),
            [(Some("m1".into()), ExecutionState::Executing, None)]
        );
        assert_eq!(setpoint(&out), Some(2.0));
        assert!(statuses(&out).is_empty(), "{out:?}");
        // A new slot of the same schedule changes nothing the server is told.
        let out = e.handle(t(61), Event::Tick);
        assert_eq!(setpoint(&out), Some(-1.0));
        assert!(statuses(&out).is_empty());
        // A reconnect: the status names the schedule in force.
        e.handle(t(70), Event::Disconnected);
        assert_eq!(
            statuses(&e.handle(t(71), Event::Connected)),
            [Some("day".to_string())]
        );
        // Its end is the `completed` ack's to say.
        let out = e.handle(t(180), Event::Tick);
        assert_eq!(
            acks(&out),
            [(Some("m1".into()), ExecutionState::Completed, None)]
        );
        assert_eq!(setpoint(&out), Some(0.0));
        assert!(statuses(&out).is_empty());
    }

    #[test]
    fn duplicates_and_old_versions_do_not_execute_again() {
        let mut e = engine();
        let p2 = schedule("m2", "day", 2, &[1.0], 0);
        e.handle(t(1), msg("schedule", &p2, 1));
        let out = e.handle(t(2), msg("schedule", &p2, 2));
        // A duplicate is answered with the current state, never accepted or started again.
        assert_eq!(
            acks(&out),
            [(Some("m2".into()), ExecutionState::Executing, None)]
        );
        assert!(out.contains(&Action::AckDelivery(DeliveryTag(2))));
        assert_eq!(e.metrics().schedules_started, 1);
        assert_eq!(e.metrics().schedules_accepted, 1);
        let p1 = schedule("m3", "day", 1, &[-1.0], 0);
        let out = e.handle(t(3), msg("schedule", &p1, 3));
        assert_eq!(
            acks(&out),
            [(
                Some("m3".into()),
                ExecutionState::Superseded,
                Some(ReasonCode::Superseded)
            )]
        );
        let p3 = schedule("m4", "day", 3, &[0.5], 0);
        let out = e.handle(t(4), msg("schedule", &p3, 4));
        let a = acks(&out);
        assert_eq!(
            a[0],
            (
                Some("m2".into()),
                ExecutionState::Superseded,
                Some(ReasonCode::Superseded)
            )
        );
        assert_eq!(a[1], (Some("m4".into()), ExecutionState::Executing, None));
        assert_eq!(setpoint(&out), Some(0.5));
    }

    #[test]
    fn infeasible_from_the_measured_soc_is_rejected() {
        let mut e = engine();
        // Nearly full: 5 kW for a minute is fine from 50 %, not from 89 %.
        e.handle(t(0), Event::Sample(sample(t(0), 0.895, 0.0)));
        let p = schedule("m1", "day", 1, &[5.0, 5.0], 0);
        let out = e.handle(t(1), msg("schedule", &p, 1));
        assert_eq!(
            acks(&out),
            [(
                Some("m1".into()),
                ExecutionState::Rejected,
                Some(ReasonCode::InvalidSchedule)
            )]
        );
        assert_eq!(setpoint(&out), Some(0.0));
        assert!(e.held().is_empty());
    }

    /// A plan that charges to exactly the top of the window from its expected 5 kWh.
    fn plan_to_the_limit() -> Vec<f64> {
        let per_slot = 0.95 / 60.0; // kWh per kW in a 60 s slot, charging at 95 %
        let mut kw = vec![5.0; 50];
        kw.push((4.0 - 50.0 * 5.0 * per_slot) / per_slot);
        kw
    }

    #[test]
    fn a_reading_within_the_soc_tolerance_does_not_reject_a_plan_at_the_limit() {
        let mut e = engine();
        // 0.2 percentage points above the plan's 50 %: sensor noise, not a different battery.
        e.handle(t(0), Event::Sample(sample(t(0), 0.502, 0.0)));
        let out = e.handle(
            t(1),
            msg(
                "schedule",
                &schedule("m1", "day", 1, &plan_to_the_limit(), 0),
                1,
            ),
        );
        // It started on arrival: `executing` alone (acceptance implied).
        assert_eq!(
            acks(&out),
            [(Some("m1".into()), ExecutionState::Executing, None)]
        );
        assert_eq!(setpoint(&out), Some(5.0));
    }

    #[test]
    fn a_reading_beyond_the_soc_tolerance_checks_the_plan_from_the_measurement() {
        let mut e = engine();
        // 3 points above: the plan would overfill this battery, so it is refused.
        e.handle(t(0), Event::Sample(sample(t(0), 0.53, 0.0)));
        let out = e.handle(
            t(1),
            msg(
                "schedule",
                &schedule("m1", "day", 1, &plan_to_the_limit(), 0),
                1,
            ),
        );
        assert_eq!(
            acks(&out),
            [(
                Some("m1".into()),
                ExecutionState::Rejected,
                Some(ReasonCode::InvalidSchedule)
            )]
        );
        assert!(e.held().is_empty());
    }

    #[test]
    fn comms_loss_beyond_the_schedule_timeout_falls_back_and_resumes() {
        let mut e = engine();
        e.handle(t(0), Event::Connected);
        let p = schedule("m1", "day", 1, &[2.0, 2.0, 2.0], 10);
        e.handle(t(1), msg("schedule", &p, 1));
        e.handle(t(5), Event::Tick);
        e.handle(t(5), Event::Disconnected);
        assert_ne!(setpoint(&e.handle(t(14), Event::Tick)), Some(0.0)); // still following
        assert_eq!(e.metrics().setpoint_kw, 2.0);
        assert_eq!(setpoint(&e.handle(t(16), Event::Tick)), Some(0.0));
        assert!(e.metrics().fallback_active);
        let out = e.handle(t(20), Event::Connected);
        assert_eq!(setpoint(&out), Some(2.0));
    }

    #[test]
    fn untrusted_clock_means_fallback() {
        let mut e = engine();
        let out = e.handle("1970-01-01T00:05:00Z".parse().unwrap(), Event::Tick);
        assert_eq!(setpoint(&out), Some(0.0));
        assert!(e.metrics().fallback_active);
    }

    #[test]
    fn commands_set_power_then_fall_back_to_the_schedule_and_cancel() {
        let mut e = engine();
        e.handle(
            t(0),
            msg(
                "schedule",
                &schedule("s1", "day", 1, &[1.0, 1.0, 1.0], 0),
                1,
            ),
        );
        let c = command(
            "c1",
            CommandAction::SetPower {
                power_kw: -3.0,
                duration_s: 30,
            },
        );
        let out = e.handle(t(5), msg("command", &c, 2));
        assert_eq!(
            acks(&out),
            [(Some("c1".into()), ExecutionState::Executing, None)]
        );
        assert_eq!(setpoint(&out), Some(-3.0));
        let out = e.handle(t(36), Event::Tick);
        assert_eq!(
            acks(&out),
            [(Some("c1".into()), ExecutionState::Completed, None)]
        );
        assert_eq!(setpoint(&out), Some(1.0));
        let c = command(
            "c2",
            CommandAction::CancelSchedule {
                schedule_id: grid_core::ScheduleId::new("day").unwrap(),
            },
        );
        let out = e.handle(t(40), msg("command", &c, 3));
        let a = acks(&out);
        assert!(
            a.contains(&(
                Some("s1".into()),
                ExecutionState::Cancelled,
                Some(ReasonCode::Cancelled)
            )),
            "{a:?}"
        );
        assert_eq!(setpoint(&out), Some(0.0));
        let c = command("c3", CommandAction::Idle);
        let out = e.handle(t(41), msg("command", &c, 4));
        assert_eq!(
            acks(&out),
            [(Some("c3".into()), ExecutionState::Completed, None)]
        );
        assert_eq!(setpoint(&out), Some(0.0));
        // The idle command holds until the next schedule.
        e.handle(
            t(42),
            msg(
                "schedule",
                &schedule("s2", "night", 1, &[1.0, 1.0, 1.0], 0),
                5,
            ),
        );
        assert_eq!(setpoint(&e.handle(t(43), Event::Tick)).unwrap_or(1.0), 1.0);
        assert_eq!(e.metrics().setpoint_kw, 1.0);
    }

    #[test]
    fn telemetry_batches_samples_and_plan_vs_actual() {
        let mut e = engine();
        e.handle(t(0), Event::Tick);
        e.handle(
            t(0),
            msg("schedule", &schedule("s1", "day", 1, &[3.0, 3.0], 0), 1),
        );
        let mut out = Vec::new();
        for s in 1..=61 {
            out.extend(e.handle(t(s), Event::Sample(sample(t(s), 0.5, 3.0))));
            out.extend(e.handle(t(s), Event::Tick));
        }
        let tel = out
            .iter()
            .find_map(|a| match a {
                Action::Publish(p) if p.topic.ends_with("/up/telemetry") => {
                    match grid_proto::decode(&p.payload).unwrap().body {
                        Body::Telemetry(t) => Some(t),
                        _ => None,
                    }
                }
                _ => None,
            })
            .expect("telemetry after the interval");
        assert_eq!(tel.samples.len(), 60);
        assert_eq!(tel.plan.len(), 1);
        let r = &tel.plan[0];
        assert_eq!((r.slot, r.planned_kw), (0, 3.0));
        assert!((r.delivered_kwh - 0.05).abs() < 1e-9, "{r:?}");
        assert!(r.deviation_kwh.abs() < 1e-9);
    }

    #[test]
    fn malformed_and_foreign_messages_are_rejected_by_id() {
        let mut e = engine();
        let out = e.handle(
            t(0),
            msg(
                "schedule",
                br#"{"v":1,"id":"x1","kind":"schedule_assign"}"#,
                1,
            ),
        );
        assert_eq!(
            acks(&out),
            [(
                Some("x1".into()),
                ExecutionState::Rejected,
                Some(ReasonCode::Malformed)
            )]
        );
        let other = Event::Message {
            topic: "grid/v1/bat-2/down/schedule",
            payload: b"{}",
            delivery: Some(DeliveryTag(2)),
        };
        let out = e.handle(t(0), other);
        assert!(acks(&out).is_empty());
        assert!(out.contains(&Action::AckDelivery(DeliveryTag(2))));
        assert_eq!(
            scan_message_id(br#"{"v":1, "id" : "big-1","pad":"xxxx"#)
                .unwrap()
                .as_str(),
            "big-1"
        );
    }

    #[test]
    fn restores_from_the_persisted_inbox_state() {
        let mut e = engine();
        let p = schedule("m1", "day", 1, &[2.0, 2.0], 0);
        let out = e.handle(t(1), msg("schedule", &p, 1));
        let ops: Vec<&StoreOp> = out
            .iter()
            .filter_map(|a| match a {
                Action::Persist(ops) => Some(ops),
                _ => None,
            })
            .flatten()
            .collect();
        let state = ops
            .iter()
            .rev()
            .find_map(|o| match o {
                StoreOp::SetInboxState(s) => Some(s.clone()),
                _ => None,
            })
            .expect("inbox state persisted");
        // Saved without the schedule's body, which is stored as its record.
        assert!(!state.contains("setpoints_kw"), "{state}");
        let schedules: Vec<ScheduleRecord> = ops
            .iter()
            .filter_map(|o| match o {
                StoreOp::PutSchedule(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(schedules.len(), 1);
        // Without the record the state cannot be put together: logged, not guessed.
        let logs = engine().restore(Snapshot {
            inbox_state: Some(state.clone()),
            ..Snapshot::default()
        });
        assert_eq!(logs.len(), 1, "{logs:?}");
        // A whole state (as agents before the split saved it) still restores.
        let whole = serde_json::to_string(e.inbox.state()).unwrap();
        let logs = engine().restore(Snapshot {
            inbox_state: Some(whole),
            ..Snapshot::default()
        });
        assert!(logs.is_empty(), "{logs:?}");
        let mut e2 = engine();
        let logs = e2.restore(Snapshot {
            inbox_state: Some(state),
            schedules,
            ..Snapshot::default()
        });
        assert!(logs.is_empty(), "{logs:?}");
        assert_eq!(e2.inbox.state(), e.inbox.state());
        let out = e2.handle(t(2), Event::Tick);
        assert!(
            acks(&out).is_empty(),
            "no second executing ack after a restart"
        );
        assert_eq!(setpoint(&out), Some(2.0));
        let out = e2.handle(t(3), msg("schedule", &p, 2));
        assert_eq!(
            acks(&out),
            [(Some("m1".into()), ExecutionState::Executing, None)],
            "a redelivery is a duplicate"
        );
        assert_eq!(e2.metrics().schedules_started, 0);
    }

    fn uplink_ids(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(p) => Some(grid_proto::decode(&p.payload).unwrap().id.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn uplink_ids_do_not_repeat_after_the_store_is_reset() {
        // Run 1 accepts a schedule; the store is then lost (corrupt file replaced), so run 2
        // starts from an empty inbox state, as the shell does in safe mode.
        let mut ids = Vec::new();
        for _run in 0..2 {
            let mut e = engine();
            e.enter_safe_mode();
            let mut out = e.handle(t(0), Event::Connected);
            let p = schedule("m1", "day", 1, &[1.0], 0);
            out.extend(e.handle(t(1), msg("schedule", &p, 1)));
            out.extend(e.handle(t(2), msg("schedule", &p, 2))); // a duplicate: re-acked
            let run = uplink_ids(&out);
            assert!(run.len() >= 4, "{run:?}");
            ids.push(run);
        }
        let first: BTreeSet<_> = ids[0].iter().collect();
        let again: Vec<_> = ids[1].iter().filter(|i| first.contains(i)).collect();
        assert!(
            again.is_empty(),
            "ids of run 1 reused after the reset: {again:?}"
        );
        let all: Vec<_> = ids.concat();
        assert_eq!(
            all.iter().collect::<BTreeSet<_>>().len(),
            all.len(),
            "ids repeat within a run: {all:?}"
        );
    }

    #[test]
    fn a_long_device_id_still_gets_valid_uplink_ids() {
        let long = "d".repeat(64);
        let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)).unwrap();
        for prefix in [None, Some(format!("{long}-boot"))] {
            let mut c = EngineConfig::new(DeviceId::new(long.clone()).unwrap(), spec.clone());
            if let Some(p) = &prefix {
                c.message_id_prefix = p.clone();
            }
            let mut e = Engine::new(c);
            let out = e.handle(t(0), Event::Connected);
            // hello and the online status both leave, with valid, distinct ids.
            let ids = uplink_ids(&out);
            assert_eq!(ids.len(), 2, "{prefix:?}: {ids:?}");
            assert_ne!(ids[0], ids[1]);
            assert!(e.last_will(t(0)).is_some());
        }
    }

    fn self_consumption() -> Engine {
        let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)).unwrap();
        let mut c = EngineConfig::new(DeviceId::new(DEV).unwrap(), spec);
        c.fallback = FallbackMode::SelfConsumption;
        c.meter_max_age = Duration::from_secs(5);
        Engine::new(c)
    }

    fn meter(kw: f64) -> Event<'static> {
        Event::GridMeter(Power::from_kw(kw).unwrap())
    }

    fn warnings(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Log {
                    level: LogLevel::Warn,
                    message,
                    ..
                } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn self_consumption_drives_the_grid_meter_to_zero_within_the_limits() {
        let mut e = self_consumption();
        // Battery idle, the house imports 2.3 kW: discharge 2.3 kW.
        e.handle(t(0), Event::Sample(sample(t(0), 0.5, 0.0)));
        e.handle(t(0), meter(2.3));
        let out = e.handle(t(0), Event::Tick);
        assert!((setpoint(&out).unwrap() + 2.3).abs() < 1e-9, "{out:?}");
        assert!(!e.metrics().meter_missing);
        assert_eq!(e.metrics().grid_import_kw, Some(2.3));
        // Discharging 2.3 kW, the meter still shows 0.4 kW: 0.4 kW more.
        e.handle(t(1), Event::Sample(sample(t(1), 0.5, -2.3)));
        e.handle(t(1), meter(0.4));
        let out = e.handle(t(1), Event::Tick);
        assert!((setpoint(&out).unwrap() + 2.7).abs() < 1e-9);
        // A PV surplus (export 1.5 kW with the battery discharging 1 kW) charges 0.5 kW.
        e.handle(t(2), Event::Sample(sample(t(2), 0.5, -1.0)));
        e.handle(t(2), meter(-1.5));
        let out = e.handle(t(2), Event::Tick);
        assert!((setpoint(&out).unwrap() - 0.5).abs() < 1e-9);
        // Beyond the spec's limits: clamped to 5 kW discharge.
        e.handle(t(3), Event::Sample(sample(t(3), 0.5, 0.0)));
        e.handle(t(3), meter(9.0));
        let out = e.handle(t(3), Event::Tick);
        assert_eq!(setpoint(&out), Some(-5.0));
    }

    #[test]
    fn self_consumption_without_a_fresh_meter_reading_idles_and_says_so() {
        let mut e = self_consumption();
        e.handle(t(0), Event::Sample(sample(t(0), 0.5, 0.0)));
        let out = e.handle(t(0), Event::Tick);
        assert_eq!(setpoint(&out), Some(0.0));
        assert!(e.metrics().meter_missing);
        assert!(e.metrics().fallback_active);
        let w = warnings(&out);
        assert!(
            w.iter().any(|m| m.contains("no grid-meter reading")),
            "{w:?}"
        );
        // Logged once, not every tick.
        assert!(warnings(&e.handle(t(1), Event::Tick)).is_empty());
        // A reading arrives: followed.
        e.handle(t(2), Event::Sample(sample(t(2), 0.5, 0.0)));
        e.handle(t(2), meter(1.0));
        let out = e.handle(t(2), Event::Tick);
        assert_eq!(setpoint(&out), Some(-1.0));
        assert!(!e.metrics().meter_missing);
        // The meter goes silent: after meter_max_age (5 s) the battery idles again.
        for s in 3..=7 {
            e.handle(t(s), Event::Sample(sample(t(s), 0.5, -1.0)));
            let out = e.handle(t(s), Event::Tick);
            let m = e.metrics();
            assert!(
                !m.meter_missing && m.setpoint_kw < 0.0,
                "still fresh at {s} s: {out:?}"
            );
        }
        e.handle(t(8), Event::Sample(sample(t(8), 0.5, -1.0)));
        let out = e.handle(t(8), Event::Tick);
        assert_eq!(setpoint(&out), Some(0.0));
        assert!(e.metrics().meter_missing);
        assert!(
            warnings(&out).iter().any(|m| m.contains("stale")),
            "{out:?}"
        );
        // A schedule takes precedence over the fallback; the meter no longer matters.
        let p = schedule("m1", "day", 1, &[1.0], 0);
        let out = e.handle(t(9), msg("schedule", &p, 1));
        assert_eq!(setpoint(&out), Some(1.0));
        assert!(!e.metrics().meter_missing);
    }

    #[test]
    fn idle_fallback_ignores_the_meter() {
        let mut e = engine();
        e.handle(t(0), Event::Sample(sample(t(0), 0.5, 0.0)));
        e.handle(t(0), meter(3.0));
        let out = e.handle(t(0), Event::Tick);
        assert_eq!(setpoint(&out), Some(0.0));
        assert!(!e.metrics().meter_missing);
        assert!(warnings(&out).is_empty());
    }
}
