//! The API's request and response bodies (with OpenAPI schemas), converted explicitly to and from
//! the store's records and grid-core's types, so the HTTP format can stay stable as those evolve.
//!
//! Power is in kW, positive = charging the battery / importing from the grid; energy in kWh;
//! instants are RFC 3339 UTC strings.

use crate::store::{
    CommandRecord, DeviceRecord, DeviceStatus, FeederRecord, PayloadCodec, ScheduleRecord,
    SiteRecord, TelemetryBucket,
};
use grid_core::{BatteryParams, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageBody<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A battery's parameters (kWh, kW magnitudes, fractions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatterySpecBody {
    /// Nominal capacity (kWh, > 0).
    pub capacity_kwh: f64,
    /// Lowest energy a schedule may reach (kWh).
    pub min_energy_kwh: f64,
    /// Highest energy a schedule may reach (kWh, ≤ capacity).
    pub max_energy_kwh: f64,
    /// Largest charging power (kW magnitude).
    pub max_charge_kw: f64,
    /// Largest discharging power (kW magnitude).
    pub max_discharge_kw: f64,
    /// Fraction of charging energy stored, (0, 1].
    pub charge_efficiency: f64,
    /// Fraction of stored energy delivered when discharging, (0, 1].
    pub discharge_efficiency: f64,
    /// Wear cost per kWh of throughput (≥ 0).
    #[serde(default)]
    pub degradation_cost_per_kwh: f64,
    /// Largest power change per minute (kW/min), if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_limit_kw_per_min: Option<f64>,
    /// Lowest operating temperature (°C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_temperature_c: Option<f64>,
    /// Highest operating temperature (°C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temperature_c: Option<f64>,
}

impl From<BatterySpecBody> for BatteryParams {
    fn from(b: BatterySpecBody) -> Self {
        BatteryParams {
            capacity_kwh: b.capacity_kwh,
            min_energy_kwh: b.min_energy_kwh,
            max_energy_kwh: b.max_energy_kwh,
            max_charge_kw: b.max_charge_kw,
            max_discharge_kw: b.max_discharge_kw,
            charge_efficiency: b.charge_efficiency,
            discharge_efficiency: b.discharge_efficiency,
            degradation_cost_per_kwh: b.degradation_cost_per_kwh,
            ramp_limit_kw_per_min: b.ramp_limit_kw_per_min,
            min_temperature_c: b.min_temperature_c,
            max_temperature_c: b.max_temperature_c,
        }
    }
}

impl From<&BatteryParams> for BatterySpecBody {
    fn from(p: &BatteryParams) -> Self {
        BatterySpecBody {
            capacity_kwh: p.capacity_kwh,
            min_energy_kwh: p.min_energy_kwh,
            max_energy_kwh: p.max_energy_kwh,
            max_charge_kw: p.max_charge_kw,
            max_discharge_kw: p.max_discharge_kw,
            charge_efficiency: p.charge_efficiency,
            discharge_efficiency: p.discharge_efficiency,
            degradation_cost_per_kwh: p.degradation_cost_per_kwh,
            ramp_limit_kw_per_min: p.ramp_limit_kw_per_min,
            min_temperature_c: p.min_temperature_c,
            max_temperature_c: p.max_temperature_c,
        }
    }
}

/// The payload codec a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodecBody {
    /// JSON.
    #[default]
    Json,
    /// CBOR.
    Cbor,
}

impl From<CodecBody> for PayloadCodec {
    fn from(c: CodecBody) -> Self {
        match c {
            CodecBody::Json => PayloadCodec::Json,
            CodecBody::Cbor => PayloadCodec::Cbor,
        }
    }
}

impl From<PayloadCodec> for CodecBody {
    fn from(c: PayloadCodec) -> Self {
        match c {
            PayloadCodec::Json => CodecBody::Json,
            PayloadCodec::Cbor => CodecBody::Cbor,
        }
    }
}

/// Registering a device.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// The device id (1–64 of `A-Z a-z 0-9 . _ -`).
    pub id: String,
    /// The site it belongs to (must exist; the device gets the site's tenant).
    pub site: String,
    /// Its battery.
    pub spec: BatterySpecBody,
    /// A label.
    #[serde(default)]
    pub label: Option<String>,
    /// Its codec (default json).
    #[serde(default)]
    pub codec: CodecBody,
}

/// Changing a device; absent fields stay as they are, `"label": null` clears the label.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDevice {
    /// Move to this site.
    #[serde(default)]
    pub site: Option<String>,
    /// Replace the battery spec.
    #[serde(default)]
    pub spec: Option<BatterySpecBody>,
    /// Set or (with null) clear the label.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub label: Option<Option<String>>,
    /// Switch codec.
    #[serde(default)]
    pub codec: Option<CodecBody>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A registered device.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceBody {
    /// Id.
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Site.
    pub site: String,
    /// Battery.
    pub spec: BatterySpecBody,
    /// Label.
    pub label: Option<String>,
    /// Codec.
    pub codec: CodecBody,
    /// Registered at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last changed at.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Decommissioned at (absent while active).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub decommissioned_at: Option<Timestamp>,
}

impl From<DeviceRecord> for DeviceBody {
    fn from(d: DeviceRecord) -> Self {
        DeviceBody {
            id: d.id.to_string(),
            tenant: d.tenant,
            site: d.site.to_string(),
            spec: d.spec.params().into(),
            label: d.label,
            codec: d.codec.into(),
            created_at: d.created_at,
            updated_at: d.updated_at,
            decommissioned_at: d.decommissioned_at,
        }
    }
}

/// A telemetry sample.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SampleBody {
    /// When measured.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// State of charge (fraction 0..=1).
    pub soc: f64,
    /// Battery power (kW, positive = charging).
    pub power_kw: f64,
    /// Pack voltage (V).
    pub voltage_v: f64,
    /// Pack current (A, positive = charging).
    pub current_a: f64,
    /// Temperature (°C).
    pub temperature_c: f64,
    /// Alarm names.
    pub alarms: Vec<String>,
}

impl From<&grid_core::TelemetrySample> for SampleBody {
    fn from(s: &grid_core::TelemetrySample) -> Self {
        SampleBody {
            at: s.at,
            soc: f64::from(s.soc),
            power_kw: s.power.kw(),
            voltage_v: s.voltage_v,
            current_a: s.current_a,
            temperature_c: s.temperature.celsius(),
            alarms: s.alarms.names().map(str::to_owned).collect(),
        }
    }
}

/// A schedule reference with its state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleStateBody {
    /// Schedule id.
    pub id: String,
    /// Version.
    pub version: u64,
    /// Lifecycle state (`queued`, `delivered`, `accepted`, `executing`, `completed`, ...).
    pub state: Option<String>,
}

/// A device's live status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceStatusBody {
    /// Device id.
    pub device: String,
    /// Whether its last status said online.
    pub online: bool,
    /// When that status was sent.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub status_at: Option<Timestamp>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Firmware version.
    pub firmware_version: Option<String>,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Device clock minus server clock (ms).
    pub clock_offset_ms: Option<i64>,
    /// The schedule the device reports executing (by its last status, or by a later `executing`
    /// ack; none once that schedule's terminal ack arrived).
    pub reported_schedule: Option<ScheduleStateBody>,
    /// The newest schedule the server holds for it.
    pub latest_schedule: Option<ScheduleStateBody>,
    /// The newest telemetry sample.
    pub last_telemetry: Option<SampleBody>,
}

impl From<DeviceStatus> for DeviceStatusBody {
    fn from(s: DeviceStatus) -> Self {
        DeviceStatusBody {
            device: s.device.to_string(),
            online: s.online,
            status_at: s.status_at,
            agent_version: s.agent_version,
            firmware_version: s.firmware_version,
            capabilities: s.capabilities,
            clock_offset_ms: s.clock_offset_ms,
            reported_schedule: s.reported_schedule.map(|r| ScheduleStateBody {
                id: r.id.to_string(),
                version: r.version.0,
                state: None,
            }),
            latest_schedule: s.latest_schedule.map(|r| ScheduleStateBody {
                id: r.id.to_string(),
                version: r.version.0,
                state: Some(r.state.as_str().to_owned()),
            }),
            last_telemetry: s.last_telemetry.as_ref().map(SampleBody::from),
        }
    }
}

/// A site (create or replace with `PUT /sites/{id}`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSite {
    /// A name.
    #[serde(default)]
    pub name: Option<String>,
    /// The feeder it hangs off.
    #[serde(default)]
    pub feeder: Option<String>,
    /// Largest grid import (kW magnitude).
    pub import_limit_kw: f64,
    /// Largest grid export (kW magnitude).
    pub export_limit_kw: f64,
    /// Demand charge per kW of peak import.
    #[serde(default)]
    pub demand_charge_per_kw: f64,
    /// The tariff: `{"kind":"flat","import":0.3,"export":0.08}`, `{"kind":"dynamic",...}` or
    /// `{"kind":"time_of_use",...}` (grid-core's format).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tariff: Option<grid_core::Tariff>,
    /// The stored price series the optimiser uses for this site.
    #[serde(default)]
    pub price_series: Option<String>,
    /// The owning tenant (only fleet-wide tokens may choose; default: the caller's or `default`).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A stored site.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SiteBody {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Name.
    pub name: Option<String>,
    /// Feeder.
    pub feeder: Option<String>,
    /// Largest grid import (kW).
    pub import_limit_kw: f64,
    /// Largest grid export (kW magnitude).
    pub export_limit_kw: f64,
    /// Demand charge per kW.
    pub demand_charge_per_kw: f64,
    /// Tariff (grid-core's format).
    #[schema(value_type = Option<Object>)]
    pub tariff: Option<grid_core::Tariff>,
    /// Price series name.
    pub price_series: Option<String>,
    /// Created at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Updated at.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<SiteRecord> for SiteBody {
    fn from(s: SiteRecord) -> Self {
        SiteBody {
            id: s.id.to_string(),
            tenant: s.tenant,
            name: s.name,
            feeder: s.feeder.map(|f| f.to_string()),
            import_limit_kw: s.grid.import_limit.kw(),
            export_limit_kw: s.grid.export_limit.kw(),
            demand_charge_per_kw: f64::from(s.demand_charge),
            tariff: s.tariff,
            price_series: s.price_series,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A feeder (create or replace with `PUT /feeders/{id}`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutFeeder {
    /// A name.
    #[serde(default)]
    pub name: Option<String>,
    /// Owning tenant (fleet-wide tokens only).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A feeder envelope: per-slot limits on the summed net import of its sites (kW; import
/// positive, export as a magnitude).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeBody {
    /// The sites it covers.
    pub sites: Vec<String>,
    /// First slot start (UTC).
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Slot length (s).
    pub slot_seconds: u32,
    /// Import limit per slot (kW).
    pub import_limit_kw: Vec<f64>,
    /// Export limit per slot (kW magnitude).
    pub export_limit_kw: Vec<f64>,
}

/// A stored feeder.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeederBody {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Name.
    pub name: Option<String>,
    /// Its envelope.
    pub envelope: Option<EnvelopeBody>,
    /// Created at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Updated at.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<FeederRecord> for FeederBody {
    fn from(f: FeederRecord) -> Self {
        FeederBody {
            id: f.id.to_string(),
            tenant: f.tenant,
            name: f.name,
            envelope: f.envelope.map(|e| EnvelopeBody {
                sites: e.sites().iter().map(ToString::to_string).collect(),
                start: e.horizon().start(),
                slot_seconds: e.horizon().slot_length().seconds(),
                import_limit_kw: e.limits().iter().map(|l| l.import.kw()).collect(),
                export_limit_kw: e.limits().iter().map(|l| l.export.kw()).collect(),
            }),
            created_at: f.created_at,
            updated_at: f.updated_at,
        }
    }
}

/// Creating a schedule: setpoints for one device over a horizon.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Schedule id (versions share it).
    pub id: String,
    /// Target device.
    pub device: String,
    /// Version; default: one above the newest stored version of this id (1 for a new id).
    #[serde(default)]
    pub version: Option<u64>,
    /// First slot start (UTC).
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Slot length (s; divides a day).
    pub slot_seconds: u32,
    /// Setpoints per slot (kW, positive = charging).
    pub setpoints_kw: Vec<f64>,
    /// Stored energy at the start (kWh); default: from the device's last telemetry SoC.
    #[serde(default)]
    pub initial_energy_kwh: Option<f64>,
    /// Publish to the device now (default true).
    #[serde(default = "yes")]
    pub distribute: bool,
}

fn yes() -> bool {
    true
}

/// Superseding a schedule: new setpoints under the same id, next version.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupersedeSchedule {
    /// First slot start; default: the current version's.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start: Option<Timestamp>,
    /// Slot length; default: the current version's.
    #[serde(default)]
    pub slot_seconds: Option<u32>,
    /// Setpoints per slot (kW, positive = charging).
    pub setpoints_kw: Vec<f64>,
    /// Stored energy at the start (kWh); default: from the last telemetry SoC.
    #[serde(default)]
    pub initial_energy_kwh: Option<f64>,
}

/// A schedule with its delivery status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleBody {
    /// Id.
    pub id: String,
    /// Version.
    pub version: u64,
    /// Device.
    pub device: String,
    /// Lifecycle state.
    pub state: String,
    /// Reason of the last rejection / failure / cancellation.
    pub reason: Option<String>,
    /// First slot start.
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Slot length (s).
    pub slot_seconds: u32,
    /// Setpoints (kW, positive = charging).
    pub setpoints_kw: Vec<f64>,
    /// Expected stored energy at the end of each slot (kWh).
    pub expected_energy_kwh: Vec<f64>,
    /// Expires at.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// Correlation id of the creating request.
    pub correlation_id: Option<String>,
    /// Stored at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// State changed at.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// First published at.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub first_sent_at: Option<Timestamp>,
    /// Publications.
    pub attempts: u32,
    /// First device answer at.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub answered_at: Option<Timestamp>,
}

impl ScheduleBody {
    /// Converts a record; `with_series` = false leaves the per-slot arrays empty (lists).
    pub fn from_record(r: &ScheduleRecord, with_series: bool) -> Self {
        let s = &r.schedule;
        ScheduleBody {
            id: s.id().to_string(),
            version: s.version().0,
            device: s.device().to_string(),
            state: r.state.as_str().to_owned(),
            reason: r.reason.clone(),
            start: s.horizon().start(),
            slot_seconds: s.horizon().slot_length().seconds(),
            setpoints_kw: if with_series {
                s.setpoints().iter().map(|p| p.kw()).collect()
            } else {
                Vec::new()
            },
            expected_energy_kwh: if with_series {
                s.expected().end_of_slot.iter().map(|e| e.kwh()).collect()
            } else {
                Vec::new()
            },
            expires_at: s.expires_at(),
            correlation_id: r.correlation_id.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            first_sent_at: r.first_sent_at,
            attempts: r.attempts,
            answered_at: r.answered_at,
        }
    }
}

/// An immediate command.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandRequest {
    /// Hold a power (kW, positive = charging) for a duration.
    SetPower {
        /// Power (kW).
        power_kw: f64,
        /// Duration (s, 1..=86400).
        duration_s: u64,
    },
    /// Stop charging and discharging.
    Idle,
    /// Stop a schedule.
    CancelSchedule {
        /// Its id.
        schedule: String,
    },
}

/// A command with its ack state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandBody {
    /// Command id.
    pub id: String,
    /// Device.
    pub device: String,
    /// What it asks (grid-core's command format).
    #[schema(value_type = Object)]
    pub command: grid_core::Command,
    /// Lifecycle state.
    pub state: String,
    /// Reason of a rejection / failure.
    pub reason: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Expires at.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// Stored at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// First published.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub first_sent_at: Option<Timestamp>,
    /// Publications.
    pub attempts: u32,
    /// First answer.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub answered_at: Option<Timestamp>,
}

impl From<CommandRecord> for CommandBody {
    fn from(c: CommandRecord) -> Self {
        CommandBody {
            id: c.id,
            device: c.device.to_string(),
            command: c.command,
            state: c.state.as_str().to_owned(),
            reason: c.reason,
            correlation_id: c.correlation_id,
            expires_at: c.expires_at,
            created_at: c.created_at,
            first_sent_at: c.first_sent_at,
            attempts: c.attempts,
            answered_at: c.answered_at,
        }
    }
}

/// One bucket of downsampled telemetry (powers summed over devices, SoC averaged).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BucketBody {
    /// Bucket start.
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Devices with samples.
    pub devices: u64,
    /// Samples.
    pub samples: u64,
    /// Mean SoC (fraction).
    pub soc_mean: f64,
    /// Min SoC.
    pub soc_min: f64,
    /// Max SoC.
    pub soc_max: f64,
    /// Summed mean power (kW, positive = charging).
    pub power_kw: f64,
    /// Summed mean charging power (kW).
    pub charge_kw: f64,
    /// Summed mean discharging power (kW magnitude).
    pub discharge_kw: f64,
    /// Highest temperature (°C).
    pub temperature_max_c: f64,
    /// Samples with a critical alarm.
    pub critical_alarm_samples: u64,
}

impl From<&TelemetryBucket> for BucketBody {
    fn from(b: &TelemetryBucket) -> Self {
        BucketBody {
            start: b.start,
            devices: b.devices,
            samples: b.samples,
            soc_mean: b.soc_mean,
            soc_min: b.soc_min,
            soc_max: b.soc_max,
            power_kw: b.power_kw,
            charge_kw: b.charge_kw,
            discharge_kw: b.discharge_kw,
            temperature_max_c: b.temperature_max_c,
            critical_alarm_samples: b.critical_alarm_samples,
        }
    }
}

/// One stored price slot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PricePointBody {
    /// Slot start.
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Import price per kWh.
    pub import: f64,
    /// Export price per kWh.
    pub export: f64,
}

/// A price series upload (JSON form; CSV has the columns `timestamp_utc,import,export`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceUpload {
    /// First slot start.
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Slot length (s).
    pub slot_seconds: u32,
    /// Import price per slot.
    pub import: Vec<f64>,
    /// Export price per slot (default: zeros).
    #[serde(default)]
    pub export: Option<Vec<f64>>,
}

/// How many slots an upload stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PriceUploadResult {
    /// Series name.
    pub series: String,
    /// Slots written.
    pub slots: u64,
}
