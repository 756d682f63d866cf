//! The message bodies of protocol version 1 and their validation rules.

use super::MessageId;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::limits::*;
use grid_core::{ExecutionState, ScheduleId, ScheduleVersion, Timestamp};
use serde::{Deserialize, Serialize};

/// The largest schedule version accepted: 2^53 − 1, so JSON implementations that read numbers as
/// doubles keep it exact.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// The largest magnitude of a power (kW) or energy (kWh) on the wire: a sanity bound far above
/// any home battery.
pub const MAX_MAGNITUDE: f64 = 1.0e6;

pub(crate) fn finite(field: impl FnOnce() -> String, x: f64) -> Result<f64> {
    if !x.is_finite() {
        return Err(Error::NotFinite { field: field() });
    }
    if x.abs() > MAX_MAGNITUDE {
        return Err(Error::invalid(
            field(),
            format!("|{x}| exceeds {MAX_MAGNITUDE}"),
        ));
    }
    Ok(x)
}

fn count(field: &'static str, actual: usize, max: usize) -> Result<()> {
    if actual > max {
        Err(Error::TooLarge { field, actual, max })
    } else {
        Ok(())
    }
}

fn check_version(field: &str, v: ScheduleVersion) -> Result<()> {
    if v.0 == 0 || v.0 > MAX_VERSION {
        Err(Error::invalid(
            field,
            format!("{} is not in 1 ..= 2^53-1", v.0),
        ))
    } else {
        Ok(())
    }
}

fn check_text(field: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max || s.chars().any(char::is_control) {
        Err(Error::invalid(
            field,
            format!("must be at most {max} bytes without control characters"),
        ))
    } else {
        Ok(())
    }
}

fn check_capabilities(field: &str, caps: &[String]) -> Result<()> {
    count("body.capabilities", caps.len(), MAX_CAPABILITIES)?;
    for (i, c) in caps.iter().enumerate() {
        super::check_token(&format!("{field}[{i}]"), c, 64)?;
    }
    Ok(())
}

/// A schedule and the version of it, as acks, hellos and status messages refer to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScheduleRef {
    /// The schedule id.
    pub schedule_id: ScheduleId,
    /// The version (1 ..= 2^53 − 1).
    pub version: ScheduleVersion,
}

/// The slots a schedule is defined on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHorizon {
    /// The first slot's start (UTC), a multiple of the slot length since the Unix epoch.
    pub start: Timestamp,
    /// The slot length in seconds (a divisor of 86,400).
    pub slot_s: u32,
    /// The number of slots (1 ..= [`MAX_SLOTS`]).
    pub slots: u32,
}

/// `schedule_assign`: a schedule for the device to store and follow (server → device, signable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleAssign {
    /// The schedule id; versions of one id replace each other.
    pub schedule_id: ScheduleId,
    /// The version; a device only moves to higher versions of an id.
    pub version: ScheduleVersion,
    /// The slots.
    pub horizon: WireHorizon,
    /// Battery power per slot in kW (positive = charging, negative = discharging), one per slot.
    pub setpoints_kw: Vec<f64>,
    /// The stored energy (kWh) the planner expects at the horizon's start.
    pub initial_kwh: f64,
    /// The stored energy (kWh) the planner expects at the end of each slot, one per slot.
    pub expected_kwh: Vec<f64>,
    /// The schedule must not be applied at or after this instant (after `sent_at`, at most the
    /// horizon's end).
    pub valid_until: Timestamp,
    /// If the device hears nothing from the server for this many seconds while following the
    /// schedule, it stops following it and reverts to idle (0 = never).
    pub reversion_timeout_s: u32,
}

impl ScheduleAssign {
    /// This schedule as a reference.
    pub fn schedule_ref(&self) -> ScheduleRef {
        ScheduleRef {
            schedule_id: self.schedule_id.clone(),
            version: self.version,
        }
    }

    pub(crate) fn validate(&self, sent_at: Timestamp) -> Result<()> {
        check_version("body.version", self.version)?;
        count("body.horizon.slots", self.horizon.slots as usize, MAX_SLOTS)?;
        count("body.setpoints_kw", self.setpoints_kw.len(), MAX_SLOTS)?;
        count("body.expected_kwh", self.expected_kwh.len(), MAX_SLOTS)?;
        let horizon = self.core_horizon()?;
        for (field, list) in [
            ("body.setpoints_kw", &self.setpoints_kw),
            ("body.expected_kwh", &self.expected_kwh),
        ] {
            if list.len() != horizon.len() {
                return Err(Error::invalid(
                    field,
                    format!("has {} entries for {} slots", list.len(), horizon.len()),
                ));
            }
            for (i, &x) in list.iter().enumerate() {
                finite(|| format!("{field}[{i}]"), x)?;
            }
        }
        finite(|| "body.initial_kwh".into(), self.initial_kwh)?;
        if self.valid_until <= sent_at {
            return Err(Error::invalid(
                "body.valid_until",
                format!("{} is not after sent_at {sent_at}", self.valid_until),
            ));
        }
        if self.valid_until <= horizon.start() || self.valid_until > horizon.end() {
            return Err(Error::invalid(
                "body.valid_until",
                format!(
                    "{} is outside the horizon ({}, {}]",
                    self.valid_until,
                    horizon.start(),
                    horizon.end()
                ),
            ));
        }
        if self.reversion_timeout_s > MAX_REVERSION_TIMEOUT_S {
            return Err(Error::invalid(
                "body.reversion_timeout_s",
                format!(
                    "{} exceeds {MAX_REVERSION_TIMEOUT_S} s",
                    self.reversion_timeout_s
                ),
            ));
        }
        Ok(())
    }
}

/// `command`: something the device must do now (server → device, signable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The command must not be started at or after this instant (after `sent_at`).
    pub valid_until: Timestamp,
    /// What to do.
    pub action: CommandAction,
}

/// The action of a [`Command`]; the `type` field names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandAction {
    /// Hold `power_kw` (positive = charging) for `duration_s` seconds, then fall back to the schedule.
    SetPower {
        /// The setpoint in kW (positive = charging); the device's safety layer still clamps it.
        power_kw: f64,
        /// How long to hold it, 1 ..= 86,400 s.
        duration_s: u32,
    },
    /// Stop charging and discharging now (until the next schedule or command).
    Idle,
    /// Stop following the schedule with this id (any version) and forget it.
    CancelSchedule {
        /// The schedule to cancel.
        schedule_id: ScheduleId,
    },
}

impl Command {
    pub(crate) fn validate(&self, sent_at: Timestamp) -> Result<()> {
        if self.valid_until <= sent_at {
            return Err(Error::invalid(
                "body.valid_until",
                format!("{} is not after sent_at {sent_at}", self.valid_until),
            ));
        }
        if let CommandAction::SetPower {
            power_kw,
            duration_s,
        } = self.action
        {
            finite(|| "body.action.power_kw".into(), power_kw)?;
            if duration_s == 0 || duration_s > 86_400 {
                return Err(Error::invalid(
                    "body.action.duration_s",
                    format!("{duration_s} is not in 1 ..= 86400"),
                ));
            }
        }
        Ok(())
    }

    /// The instant after which the command can no longer be running on the device: its validity
    /// plus, for `set_power`, the hold duration.
    pub fn execution_deadline(&self) -> Timestamp {
        let hold = match self.action {
            CommandAction::SetPower { duration_s, .. } => i64::from(duration_s),
            _ => 0,
        };
        self.valid_until
            .checked_add(jiff::SignedDuration::from_secs(hold))
            .unwrap_or(self.valid_until)
    }
}

/// Why a device rejected or failed a schedule or command (the `reason` of an [`Ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The schedule breaks the battery's limits or is inconsistent.
    InvalidSchedule,
    /// Its validity ran out before it could be applied.
    Expired,
    /// A newer version (or a newer plan) replaced it.
    Superseded,
    /// The signature is missing or does not verify.
    BadSignature,
    /// The message names another device than the one that received it.
    WrongDevice,
    /// The message could not be decoded.
    Malformed,
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// The message exceeds a protocol limit.
    TooLarge,
    /// The safety layer refused or stopped the execution.
    SafetyLimit,
    /// An operator cancelled it.
    Cancelled,
    /// The device holds too many schedules to store another.
    Capacity,
    /// Anything else that went wrong on the device.
    Internal,
    /// A reason code this implementation does not know (from a later 1.x revision).
    #[serde(other)]
    Unknown,
}

impl ReasonCode {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSchedule => "invalid_schedule",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
            Self::BadSignature => "bad_signature",
            Self::WrongDevice => "wrong_device",
            Self::Malformed => "malformed",
            Self::UnsupportedVersion => "unsupported_version",
            Self::TooLarge => "too_large",
            Self::SafetyLimit => "safety_limit",
            Self::Cancelled => "cancelled",
            Self::Capacity => "capacity",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

/// `ack`: where a schedule or command stands on the device (device → server).
///
/// Acks travel at least once and may be reordered or repeated; the server applies them through
/// grid-core's lifecycle ([`ExecutionState::apply`]) and ignores those that would move a state
/// backwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The message acknowledged (a command, or the schedule message), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<MessageId>,
    /// The schedule and version the ack is about (for schedules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleRef>,
    /// The state the device reports (`accepted`, `rejected`, `executing`, `completed`,
    /// `failed`, `expired`, `superseded`, `cancelled`).
    pub state: ExecutionState,
    /// Why, for `rejected`, `failed`, `expired`, `superseded` and `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReasonCode>,
    /// Human-readable detail (at most 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Ack {
    /// An ack for a message (a command) without reason.
    pub fn for_message(ref_id: MessageId, state: ExecutionState) -> Self {
        Self {
            ref_id: Some(ref_id),
            schedule: None,
            state,
            reason: None,
            detail: None,
        }
    }

    /// An ack for a schedule version, optionally naming the message that carried it.
    pub fn for_schedule(
        schedule: ScheduleRef,
        ref_id: Option<MessageId>,
        state: ExecutionState,
    ) -> Self {
        Self {
            ref_id,
            schedule: Some(schedule),
            state,
            reason: None,
            detail: None,
        }
    }

    /// The same ack with a reason code and detail text.
    pub fn with_reason(mut self, reason: ReasonCode, detail: impl Into<String>) -> Self {
        self.reason = Some(reason);
        let mut detail: String = detail.into();
        if detail.len() > MAX_TEXT_LEN {
            let mut cut = MAX_TEXT_LEN;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        self.detail = Some(detail).filter(|d| !d.is_empty());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.ref_id.is_none() && self.schedule.is_none() {
            return Err(Error::invalid(
                "body",
                "an ack needs ref_id, schedule or both",
            ));
        }
        if let Some(s) = &self.schedule {
            check_version("body.schedule.version", s.version)?;
        }
        if matches!(
            self.state,
            ExecutionState::Queued | ExecutionState::Delivered
        ) {
            return Err(Error::invalid(
                "body.state",
                format!("a device never reports {}", self.state),
            ));
        }
        if matches!(
            self.state,
            ExecutionState::Rejected | ExecutionState::Failed
        ) && self.reason.is_none()
        {
            return Err(Error::invalid(
                "body.reason",
                format!("required when the state is {}", self.state),
            ));
        }
        if let Some(d) = &self.detail {
            check_text("body.detail", d, MAX_TEXT_LEN)?;
        }
        Ok(())
    }
}

/// One measurement in a [`Telemetry`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was measured (UTC).
    pub at: Timestamp,
    /// State of charge as a fraction in [0, 1].
    pub soc: f64,
    /// Battery power in kW (positive = charging).
    pub power_kw: f64,
    /// Pack voltage in volts.
    pub voltage_v: f64,
    /// Pack current in amperes (positive = charging).
    pub current_a: f64,
    /// Pack temperature in °C.
    pub temperature_c: f64,
    /// Alarm flags (grid-core's `Alarms` bit mask).
    pub alarms: u32,
}

/// How one slot of a schedule went: planned against delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotReport {
    /// The schedule followed.
    pub schedule: ScheduleRef,
    /// The slot index in the schedule's horizon.
    pub slot: u32,
    /// The planned setpoint in kW (positive = charging).
    pub planned_kw: f64,
    /// The energy actually moved in the slot in kWh (positive = into the battery).
    pub delivered_kwh: f64,
    /// `delivered_kwh` minus the planned energy (`planned_kw` × slot hours), in kWh.
    pub deviation_kwh: f64,
}

/// `telemetry`: a batch of measurements and plan-vs-actual reports (device → server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The measurements, oldest first (at most [`MAX_TELEMETRY_SAMPLES`]).
    pub samples: Vec<Sample>,
    /// Plan-vs-actual per finished slot (at most [`MAX_SLOT_REPORTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<SlotReport>,
    /// Samples the device dropped since its last batch (buffer overflow while offline).
    #[serde(default)]
    pub dropped_samples: u64,
}

impl Telemetry {
    pub(crate) fn validate(&self) -> Result<()> {
        count("body.samples", self.samples.len(), MAX_TELEMETRY_SAMPLES)?;
        count("body.plan", self.plan.len(), MAX_SLOT_REPORTS)?;
        for (i, s) in self.samples.iter().enumerate() {
            for (name, x) in [
                ("soc", s.soc),
                ("power_kw", s.power_kw),
                ("voltage_v", s.voltage_v),
                ("current_a", s.current_a),
                ("temperature_c", s.temperature_c),
            ] {
                finite(|| format!("body.samples[{i}].{name}"), x)?;
            }
            if !(0.0..=1.0).contains(&s.soc) {
                return Err(Error::invalid(
                    format!("body.samples[{i}].soc"),
                    format!("{} is not a fraction in [0, 1]", s.soc),
                ));
            }
            if s.temperature_c < -273.15 {
                return Err(Error::invalid(
                    format!("body.samples[{i}].temperature_c"),
                    "below absolute zero",
                ));
            }
        }
        for (i, r) in self.plan.iter().enumerate() {
            check_version(
                &format!("body.plan[{i}].schedule.version"),
                r.schedule.version,
            )?;
            if r.slot as usize >= MAX_SLOTS {
                return Err(Error::invalid(
                    format!("body.plan[{i}].slot"),
                    format!("{} is not below {MAX_SLOTS}", r.slot),
                ));
            }
            for (name, x) in [
                ("planned_kw", r.planned_kw),
                ("delivered_kwh", r.delivered_kwh),
                ("deviation_kwh", r.deviation_kwh),
            ] {
                finite(|| format!("body.plan[{i}].{name}"), x)?;
            }
        }
        Ok(())
    }
}

/// `status`: whether the device is online and what it runs (device → server; retained, and the
/// device's MQTT last will is an offline status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `false` in the last will (published by the broker when the device disappears).
    pub online: bool,
    /// The agent software version (at most 64 bytes).
    pub agent_version: String,
    /// The battery's firmware version, if known (at most 64 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// The schedule being followed now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ScheduleRef>,
    /// What the device supports (see [`crate::capability`]); unknown names are ignored.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The device clock minus the server clock in milliseconds, as last measured, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

impl Status {
    pub(crate) fn validate(&self) -> Result<()> {
        check_text("body.agent_version", &self.agent_version, 64)?;
        if let Some(f) = &self.firmware_version {
            check_text("body.firmware_version", f, 64)?;
        }
        if let Some(a) = &self.active {
            check_version("body.active.version", a.version)?;
        }
        check_capabilities("body.capabilities", &self.capabilities)
    }
}

/// `hello`: what the device holds, sent on every (re)connect so the server resends only what is
/// missing (device → server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent software version (at most 64 bytes).
    pub agent_version: String,
    /// Every schedule the device holds (accepted or executing), at the newest version it has
    /// (at most [`MAX_HELLO_SCHEDULES`]).
    #[serde(default)]
    pub schedules: Vec<ScheduleRef>,
    /// The ids of the last messages the device processed, newest last (at most
    /// [`MAX_HELLO_MESSAGE_IDS`]).
    #[serde(default)]
    pub last_message_ids: Vec<MessageId>,
    /// What the device supports (see [`crate::capability`]).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The codec the device wants its downlink messages in.
    #[serde(default)]
    pub codec: Codec,
}

impl Hello {
    pub(crate) fn validate(&self) -> Result<()> {
        check_text("body.agent_version", &self.agent_version, 64)?;
        count("body.schedules", self.schedules.len(), MAX_HELLO_SCHEDULES)?;
        count(
            "body.last_message_ids",
            self.last_message_ids.len(),
            MAX_HELLO_MESSAGE_IDS,
        )?;
        for (i, s) in self.schedules.iter().enumerate() {
            check_version(&format!("body.schedules[{i}].version"), s.version)?;
        }
        check_capabilities("body.capabilities", &self.capabilities)
    }
}
