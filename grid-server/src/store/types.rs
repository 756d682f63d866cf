//! The records the [`Store`](super::Store) reads and writes: devices, sites, feeders, prices,
//! schedules with their delivery state, commands, acks, telemetry, the delivery outbox and
//! forecast model artefacts.
//!
//! Instants are UTC ([`Timestamp`]); the databases keep them as integer milliseconds since the
//! Unix epoch, so sub-millisecond parts of telemetry instants are dropped on write (schedules keep
//! theirs: they are stored whole). Power is in kW, positive = charging the battery / importing from
//! the grid.

use grid_core::{
    BatterySpec, Command, DemandCharge, DeviceId, ExecutionState, FeederEnvelope, FeederId,
    GridConnection, Schedule, ScheduleId, ScheduleVersion, SiteId, Tariff, TelemetrySample,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use super::error::{StoreError, StoreResult};

/// The largest page any list query returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// The most telemetry buckets one downsampling query may produce.
pub const MAX_BUCKETS: i64 = 20_000;

/// The most raw telemetry samples one query returns.
pub const MAX_TELEMETRY_SAMPLES: u32 = 100_000;

/// The tenant objects belong to when none is given.
pub const DEFAULT_TENANT: &str = "default";

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// PostgreSQL (production).
    Postgres,
    /// SQLite (the embedded default).
    Sqlite,
}

/// Connection pool figures, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Open connections.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The pool's upper bound.
    pub max: u32,
}

/// One page of a list, with the cursor that fetches the next one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Pass this as `after` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Checks a page size: 1 ..= [`MAX_PAGE_LIMIT`].
pub fn check_limit(limit: u32) -> StoreResult<u32> {
    if limit == 0 || limit > MAX_PAGE_LIMIT {
        return Err(StoreError::Invalid {
            field: "limit",
            reason: format!("must be in 1..={MAX_PAGE_LIMIT}, got {limit}"),
        });
    }
    Ok(limit)
}

/// The payload encoding a device speaks (grid-proto's codecs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadCodec {
    /// UTF-8 JSON (the default).
    #[default]
    Json,
    /// CBOR, the compact binary codec.
    Cbor,
}

impl PayloadCodec {
    /// The stable name (as in the database).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Cbor => "cbor",
        }
    }

    /// Parses [`PayloadCodec::as_str`]'s names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "cbor" => Some(Self::Cbor),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sites, feeders, prices
// ---------------------------------------------------------------------------------------------

/// A site: a grid connection point grouping devices, with its limits, tariff and feeder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// Identity.
    pub id: SiteId,
    /// The tenant owning the site (and its devices).
    pub tenant: String,
    /// A human-readable name.
    pub name: Option<String>,
    /// The feeder the site hangs off, if known.
    pub feeder: Option<FeederId>,
    /// Grid connection limits (kW magnitudes).
    pub grid: GridConnection,
    /// Charge on the peak import per kW.
    pub demand_charge: DemandCharge,
    /// How the site's energy is priced, if set.
    pub tariff: Option<Tariff>,
    /// The name of the stored price series (see [`Store::put_prices`](super::Store::put_prices))
    /// the optimiser should use for this site, if any.
    pub price_series: Option<String>,
    /// When the site was first stored (set by the store).
    pub created_at: Timestamp,
    /// When it last changed (set by the store).
    pub updated_at: Timestamp,
}

/// Filters and paging for [`Store::list_sites`](super::Store::list_sites). Sites are ordered by id.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SiteFilter {
    /// Only this tenant's sites.
    pub tenant: Option<String>,
    /// Only sites on this feeder.
    pub feeder: Option<FeederId>,
    /// The cursor from the previous page.
    pub after: Option<String>,
    /// Page size (1 ..= [`MAX_PAGE_LIMIT`]).
    pub limit: u32,
}

/// A feeder: a group of sites sharing a grid envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeederRecord {
    /// Identity.
    pub id: FeederId,
    /// The owning tenant.
    pub tenant: String,
    /// A human-readable name.
    pub name: Option<String>,
    /// The per-slot limits on the feeder's summed net import (kW, positive = import), if set.
    pub envelope: Option<FeederEnvelope>,
    /// When first stored (set by the store).
    pub created_at: Timestamp,
    /// When it last changed (set by the store).
    pub updated_at: Timestamp,
}

/// One slot of a stored price series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PricePoint {
    /// The slot's start (UTC).
    pub start: Timestamp,
    /// The slot length in seconds.
    pub slot_seconds: u32,
    /// Price per imported kWh.
    pub import: f64,
    /// Price per exported kWh.
    pub export: f64,
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

/// What registering a device needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDevice {
    /// The device's identity (its MQTT client identity and topic segment).
    pub id: DeviceId,
    /// The tenant owning it.
    pub tenant: String,
    /// The site it belongs to (must exist).
    pub site: SiteId,
    /// The battery it drives.
    pub spec: BatterySpec,
    /// A human-readable label.
    pub label: Option<String>,
    /// The payload codec it speaks.
    pub codec: PayloadCodec,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Identity.
    pub id: DeviceId,
    /// The owning tenant.
    pub tenant: String,
    /// Its site.
    pub site: SiteId,
    /// Its battery.
    pub spec: BatterySpec,
    /// A human-readable label.
    pub label: Option<String>,
    /// The payload codec it speaks.
    pub codec: PayloadCodec,
    /// When registered.
    pub created_at: Timestamp,
    /// When last changed.
    pub updated_at: Timestamp,
    /// When decommissioned; a decommissioned device gets no schedules or commands.
    pub decommissioned_at: Option<Timestamp>,
}

/// A change to a device; `None` fields stay as they are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceUpdate {
    /// Move it to this site (must exist).
    pub site: Option<SiteId>,
    /// Replace its battery spec.
    pub spec: Option<BatterySpec>,
    /// Set (`Some(Some(..))`) or clear (`Some(None)`) the label.
    pub label: Option<Option<String>>,
    /// Switch its codec.
    pub codec: Option<PayloadCodec>,
}

/// Filters and paging for [`Store::list_devices`](super::Store::list_devices). Devices are ordered
/// by id; the cursor is the last id of the previous page.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceFilter {
    /// Only this tenant's devices.
    pub tenant: Option<String>,
    /// Only devices at this site.
    pub site: Option<SiteId>,
    /// Only devices whose last status was online (`true`) or not (`false`).
    pub online: Option<bool>,
    /// Include decommissioned devices (excluded by default).
    pub include_decommissioned: bool,
    /// The cursor from the previous page.
    pub after: Option<String>,
    /// Page size (1 ..= [`MAX_PAGE_LIMIT`]).
    pub limit: u32,
}

/// A schedule reference: id and version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScheduleRef {
    /// The schedule.
    pub id: ScheduleId,
    /// Its version.
    pub version: ScheduleVersion,
}

/// A device's `Status` message, as the transport hands it to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The reporting device.
    pub device: DeviceId,
    /// Online (`true`) or offline (`false`, also the last will).
    pub online: bool,
    /// When the device sent it (reports older than the stored one are ignored).
    pub at: Timestamp,
    /// The agent software version.
    pub agent_version: Option<String>,
    /// The battery / inverter firmware version.
    pub firmware_version: Option<String>,
    /// The schedule the device says it is executing.
    pub active_schedule: Option<ScheduleRef>,
    /// What the device can do (free-form capability names).
    pub capabilities: Vec<String>,
    /// The device clock minus the server clock, in milliseconds, if measured.
    pub clock_offset_ms: Option<i64>,
}

/// A schedule as the server sees it: reference and delivery state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStateRef {
    /// The schedule.
    pub id: ScheduleId,
    /// Its version.
    pub version: ScheduleVersion,
    /// Its delivery / execution state.
    pub state: ExecutionState,
}

/// A device's live status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device.
    pub device: DeviceId,
    /// Whether its last status said online.
    pub online: bool,
    /// When that status was sent; `None` if it never reported.
    pub status_at: Option<Timestamp>,
    /// Agent version from the last status.
    pub agent_version: Option<String>,
    /// Firmware version from the last status.
    pub firmware_version: Option<String>,
    /// Capabilities from the last status.
    pub capabilities: Vec<String>,
    /// Clock offset from the last status (ms).
    pub clock_offset_ms: Option<i64>,
    /// The schedule the device reported as active: by its last status, or by an `executing` ack
    /// that arrived later (and no longer once that schedule's terminal ack arrived).
    pub reported_schedule: Option<ScheduleRef>,
    /// The newest schedule version the server holds for the device, with its state.
    pub latest_schedule: Option<ScheduleStateRef>,
    /// The newest telemetry sample.
    pub last_telemetry: Option<TelemetrySample>,
}

// ---------------------------------------------------------------------------------------------
// Schedules and commands
// ---------------------------------------------------------------------------------------------

/// A schedule to store. Its version must be above every stored version of the same schedule id;
/// older non-terminal versions become `superseded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSchedule {
    /// The schedule (validated against the device's spec by the caller).
    pub schedule: Schedule,
    /// The correlation id of the request that made it.
    pub correlation_id: Option<String>,
}

/// A stored schedule with its delivery status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// The schedule itself.
    pub schedule: Schedule,
    /// Its lifecycle state on the device.
    pub state: ExecutionState,
    /// The reason given with the last rejection, failure or cancellation.
    pub reason: Option<String>,
    /// The correlation id of the request that made it.
    pub correlation_id: Option<String>,
    /// When it was stored.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// When it was first published.
    pub first_sent_at: Option<Timestamp>,
    /// When it was last published.
    pub last_sent_at: Option<Timestamp>,
    /// How many times it was published.
    pub attempts: u32,
    /// When the device first answered (accepted, rejected or started it).
    pub answered_at: Option<Timestamp>,
}

impl ScheduleRecord {
    /// The schedule's id and version.
    pub fn reference(&self) -> ScheduleRef {
        ScheduleRef {
            id: self.schedule.id().clone(),
            version: self.schedule.version(),
        }
    }
}

/// Filters and paging for [`Store::list_schedules`](super::Store::list_schedules). Newest first
/// (by creation time, then id and version); the cursor is opaque.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ScheduleFilter {
    /// Only this device's schedules.
    pub device: Option<DeviceId>,
    /// Only the versions of this schedule id.
    pub id: Option<ScheduleId>,
    /// Only schedules in this state.
    pub state: Option<ExecutionState>,
    /// Only devices of this tenant.
    pub tenant: Option<String>,
    /// Only schedules created at or after this instant.
    pub created_from: Option<Timestamp>,
    /// Only schedules created before this instant.
    pub created_to: Option<Timestamp>,
    /// The cursor from the previous page.
    pub after: Option<String>,
    /// Page size (1 ..= [`MAX_PAGE_LIMIT`]).
    pub limit: u32,
}

/// An immediate command to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCommand {
    /// The command's id (unique; the message id it is published with is derived from it).
    pub id: String,
    /// The target device.
    pub device: DeviceId,
    /// What to do.
    pub command: Command,
    /// The correlation id of the request that made it.
    pub correlation_id: Option<String>,
    /// After this instant the device must not apply it.
    pub expires_at: Timestamp,
}

/// A stored command with its ack state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Its id.
    pub id: String,
    /// The target device.
    pub device: DeviceId,
    /// What to do.
    pub command: Command,
    /// Its lifecycle state on the device.
    pub state: ExecutionState,
    /// The reason given with a rejection or failure.
    pub reason: Option<String>,
    /// The correlation id of the request that made it.
    pub correlation_id: Option<String>,
    /// Its validity.
    pub expires_at: Timestamp,
    /// When stored.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// When first published.
    pub first_sent_at: Option<Timestamp>,
    /// How many times it was published.
    pub attempts: u32,
    /// When the device first answered.
    pub answered_at: Option<Timestamp>,
}

/// Filters and paging for [`Store::list_commands`](super::Store::list_commands); newest first.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CommandFilter {
    /// Only this device's commands.
    pub device: Option<DeviceId>,
    /// Only commands in this state.
    pub state: Option<ExecutionState>,
    /// The cursor from the previous page.
    pub after: Option<String>,
    /// Page size (1 ..= [`MAX_PAGE_LIMIT`]).
    pub limit: u32,
}

// ---------------------------------------------------------------------------------------------
// Acks
// ---------------------------------------------------------------------------------------------

/// What an ack refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AckTarget {
    /// A schedule version.
    Schedule {
        /// The schedule.
        id: ScheduleId,
        /// Its version.
        version: ScheduleVersion,
    },
    /// A command.
    Command {
        /// The command id.
        id: String,
    },
}

/// A device's acknowledgement, as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckRecord {
    /// The ack message's own id (duplicates of it are ignored).
    pub message_id: String,
    /// The acking device.
    pub device: DeviceId,
    /// What it acknowledges.
    pub target: AckTarget,
    /// The lifecycle state the device reports.
    pub state: ExecutionState,
    /// A machine-readable reason code on rejection or failure.
    pub reason_code: Option<String>,
    /// A human-readable reason.
    pub reason: Option<String>,
    /// When the device sent it.
    pub sent_at: Timestamp,
    /// When the server received it.
    pub received_at: Timestamp,
}

/// What recording an ack did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AckOutcome {
    /// The target moved to `state`.
    Applied {
        /// The target's state before.
        from: ExecutionState,
        /// The target's state now.
        state: ExecutionState,
    },
    /// The same ack (same message id, or the same state again) was already recorded: nothing
    /// changed.
    Duplicate {
        /// The target's current state.
        state: ExecutionState,
    },
    /// The ack does not move the target (e.g. `accepted` after `completed`, or anything after a
    /// terminal state); it is kept for the record, the state is unchanged.
    Ignored {
        /// The target's current state.
        state: ExecutionState,
    },
}

// ---------------------------------------------------------------------------------------------
// Telemetry
// ---------------------------------------------------------------------------------------------

/// A raw telemetry range query: samples of one device in `[from, to)`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryQuery {
    /// The device.
    pub device: DeviceId,
    /// Start (inclusive).
    pub from: Timestamp,
    /// End (exclusive).
    pub to: Timestamp,
    /// At most this many samples (1 ..= [`MAX_TELEMETRY_SAMPLES`]).
    pub limit: u32,
}

/// Whose telemetry a downsampling query aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum TelemetryScope {
    /// One device.
    Device(DeviceId),
    /// Every device of a site.
    Site(SiteId),
    /// Every device of a tenant.
    Tenant(String),
    /// Every device.
    Fleet,
}

/// A downsampling query: telemetry in `[from, to)` grouped into buckets of `bucket_seconds`,
/// aligned to the Unix epoch (so to UTC midnight for lengths dividing a day).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketQuery {
    /// Whose samples.
    pub scope: TelemetryScope,
    /// Start (inclusive).
    pub from: Timestamp,
    /// End (exclusive).
    pub to: Timestamp,
    /// Bucket length in seconds (> 0; at most [`MAX_BUCKETS`] buckets).
    pub bucket_seconds: u32,
}

/// One bucket of downsampled telemetry. Each device's samples are first averaged within the
/// bucket; the power figures then add those device averages up (so for a site or the fleet they
/// are the group's total power), the SoC figures average them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBucket {
    /// The bucket's start (UTC).
    pub start: Timestamp,
    /// Devices with samples in the bucket.
    pub devices: u64,
    /// Samples in the bucket.
    pub samples: u64,
    /// Mean state of charge (fraction 0..=1) across devices.
    pub soc_mean: f64,
    /// Lowest sampled state of charge.
    pub soc_min: f64,
    /// Highest sampled state of charge.
    pub soc_max: f64,
    /// Summed mean power (kW, positive = charging).
    pub power_kw: f64,
    /// Summed mean charging power (kW, ≥ 0): each sample's positive part.
    pub charge_kw: f64,
    /// Summed mean discharging power (kW, ≥ 0 as a magnitude): each sample's negative part.
    pub discharge_kw: f64,
    /// Lowest sampled power of any one device (kW).
    pub power_min_kw: f64,
    /// Highest sampled power of any one device (kW).
    pub power_max_kw: f64,
    /// Highest sampled temperature (°C).
    pub temperature_max_c: f64,
    /// Samples carrying a critical alarm (grid-core `Alarms::is_critical`).
    pub critical_alarm_samples: u64,
}

// ---------------------------------------------------------------------------------------------
// Outbox
// ---------------------------------------------------------------------------------------------

/// The persisted delivery state of one device: grid-proto's `TrackerState` (the device's
/// `DeliveryTracker`, with every pending message) as opaque JSON, so a restarted server, or
/// another replica, resumes its retries. Saves are optimistic: each carries the revision it read.
///
/// The state is saved in two parts (grid-proto's `DetachedState` in `state`, its
/// `TrackedMessages` in `messages`) so that an ack rewrites a few hundred bytes instead of every
/// message; a record saved before that split has the whole state in `state` and no `messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The device.
    pub device: DeviceId,
    /// The serialized tracker state: without its messages when `messages` is set, whole when not.
    pub state: String,
    /// The serialized messages of the state, if saved apart from it (and read: see
    /// `messages_omitted`).
    #[serde(default)]
    pub messages: Option<String>,
    /// The messages are saved apart but were not read: the stored `state` is exactly the one
    /// the reader said it holds ([`OutboxRead::known_state`]), so the reader holds its messages
    /// too (message ids are random and never reused, and a tracked message never changes).
    /// Only [`Store::record_acks_and_save`](super::Store::record_acks_and_save) omits them.
    #[serde(default)]
    pub messages_omitted: bool,
    /// When the tracker next needs a poll (a resend or an expiry); `None` when idle.
    pub next_wakeup_at: Option<Timestamp>,
    /// Incremented by every save; pass it back to [`Store::outbox_save`](super::Store::outbox_save).
    pub revision: u64,
    /// When last saved.
    pub updated_at: Timestamp,
}

impl OutboxRecord {
    /// Whether the messages are saved apart from `state` (read or omitted), i.e. `state` is a
    /// detached state; false for a record saved whole, before the split.
    pub fn messages_apart(&self) -> bool {
        self.messages.is_some() || self.messages_omitted
    }
}

/// A device whose delivery state [`Store::record_acks_and_save`](super::Store::record_acks_and_save)
/// reads, with the detached state the reader already holds for it, if any: when the stored state
/// is byte for byte that one, the record comes back without its messages (kilobytes of schedule
/// JSON each) and [`OutboxRecord::messages_omitted`] set.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRead {
    /// The device.
    pub device: DeviceId,
    /// The detached state (as [`OutboxRecord::state`]) the reader holds, with its messages.
    pub known_state: Option<String>,
}

/// One device's delivery state to save with [`Store::outbox_save`](super::Store::outbox_save) or
/// [`Store::outbox_save_many`](super::Store::outbox_save_many).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxWrite {
    /// The device.
    pub device: DeviceId,
    /// The serialized tracker state (see [`OutboxRecord::state`]).
    pub state: String,
    /// The serialized messages: `Some` replaces the saved ones, `None` keeps them (none for a new
    /// record). Messages never change while their deliveries are tracked, so an ack that only
    /// moves a delivery passes `None`.
    pub messages: Option<String>,
    /// When the tracker next needs a poll; `None` when idle.
    pub next_wakeup_at: Option<Timestamp>,
    /// The revision it was read at (`None`: only if none is stored).
    pub expected_revision: Option<u64>,
}

/// What [`Store::record_acks_and_save`](super::Store::record_acks_and_save) did.
#[derive(Debug)]
pub struct AckBatchResult {
    /// Each ack's outcome, in order (as [`Store::record_acks`](super::Store::record_acks)).
    pub acks: Vec<StoreResult<AckOutcome>>,
    /// Each write's result, in order (as
    /// [`Store::outbox_save_many`](super::Store::outbox_save_many)).
    pub saved: Vec<StoreResult<u64>>,
}

// ---------------------------------------------------------------------------------------------
// Forecast models
// ---------------------------------------------------------------------------------------------

/// A forecast model artefact to store (issue #9): opaque bytes plus JSON metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewModel {
    /// The model's name (e.g. `load/site-7`); versions are numbered per name from 1.
    pub name: String,
    /// The model family (e.g. `ridge-load`, `pv-clear-sky`).
    pub kind: String,
    /// The site it forecasts for, if any.
    pub site: Option<SiteId>,
    /// Free-form metadata (training window, metrics, features, ...).
    pub metadata: serde_json::Value,
    /// The serialized model.
    pub artefact: Vec<u8>,
    /// Make this version the active one of its name.
    pub activate: bool,
}

/// A stored model's description (without its artefact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's name.
    pub name: String,
    /// Its version (1, 2, ... per name).
    pub version: u64,
    /// The model family.
    pub kind: String,
    /// The site it forecasts for, if any.
    pub site: Option<SiteId>,
    /// Free-form metadata.
    pub metadata: serde_json::Value,
    /// Whether this is the active version of its name.
    pub active: bool,
    /// The artefact's size in bytes.
    pub artefact_len: u64,
    /// When stored.
    pub created_at: Timestamp,
}

/// A stored model with its artefact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Its description.
    pub info: ModelInfo,
    /// The serialized model.
    pub artefact: Vec<u8>,
}

/// Filters for [`Store::list_models`](super::Store::list_models).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelFilter {
    /// Only this name's versions.
    pub name: Option<String>,
    /// Only this family.
    pub kind: Option<String>,
    /// Only models of this site.
    pub site: Option<SiteId>,
    /// Only active versions.
    pub active_only: bool,
}

// ---------------------------------------------------------------------------------------------
// Analytics
// ---------------------------------------------------------------------------------------------

/// Which schedules delivery statistics cover: created in `[from, to)`, optionally one device or
/// one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryQuery {
    /// Only this device.
    pub device: Option<DeviceId>,
    /// Only this tenant's devices.
    pub tenant: Option<String>,
    /// Created at or after.
    pub from: Timestamp,
    /// Created before.
    pub to: Timestamp,
}

/// Delivery success and latency over a set of schedules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStats {
    /// Schedules counted.
    pub total: u64,
    /// How many are in each state (states with zero omitted), in lifecycle order.
    pub by_state: Vec<(ExecutionState, u64)>,
    /// Schedules the device took (accepted, executing or completed).
    pub accepted: u64,
    /// `accepted / (total - still queued or delivered)`; `None` when nothing was answered.
    pub success_rate: Option<f64>,
    /// First publication → first answer, median (ms).
    pub latency_p50_ms: Option<f64>,
    /// First publication → first answer, 99th percentile (ms).
    pub latency_p99_ms: Option<f64>,
    /// First publication → first answer, worst (ms).
    pub latency_max_ms: Option<f64>,
}

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

pub(crate) fn from_ms(field: &'static str, v: i64) -> StoreResult<Timestamp> {
    Timestamp::from_millisecond(v).map_err(|e| StoreError::Corrupt {
        what: field,
        reason: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Measured series (issue #9; appended for an easy merge)
// ---------------------------------------------------------------------------------------------

/// One stored slot of a measured series (a site's load or PV power, kW).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// The slot's start (UTC).
    pub start: Timestamp,
    /// The slot's length in seconds.
    pub slot_seconds: u32,
    /// The measured value (kW for load and PV: load positive = consumption, PV positive =
    /// generation).
    pub value: f64,
}
