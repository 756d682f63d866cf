//! # grid-core: the scheduling model of grid
//!
//! Pure types and functions, no I/O: units ([`Power`], [`Energy`], [`Soc`], ...), identifiers,
//! time ([`Horizon`]), battery specifications ([`BatterySpec`]), sites and feeder envelopes,
//! tariffs and price series, [`Schedule`]s with validation and resampling, commands, the execution
//! lifecycle ([`ExecutionState`]) and telemetry.
//!
//! **Sign convention:** a positive power charges the battery or imports from the grid; a negative
//! power discharges the battery or exports to the grid. Energy is in kWh, power in kW, prices per
//! kWh, instants in UTC.
//!
//! Every constructor validates its input and returns an [`Error`] that names the offending field,
//! so values of these types are always consistent. With the `serde` feature, deserialization
//! validates the same way.
//!
//! ```
//! use grid_core::*;
//! let spec = BatterySpec::new(BatteryParams::with_soc_window(13.5, 0.1, 0.9, 5.0))?;
//! let horizon = Horizon::new("2026-11-27T00:00:00Z".parse()?, SlotLength::QUARTER_HOUR, 96)?;
//! let setpoints = vec![Power::from_kw(2.0)?; 96];
//! let initial = Energy::from_kwh(2.0)?;
//! let schedule = Schedule::planned(ScheduleId::new("day-1")?, DeviceId::new("bat-7")?,
//!     ScheduleVersion(1), horizon, setpoints, &spec, initial, horizon.start())?;
//! // Charging 2 kW all day overflows the 12.15 kWh top of the window:
//! let err = schedule.validate(&spec, initial).unwrap_err();
//! assert_eq!(err.0[0].kind, ViolationKind::MaxEnergy);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod battery;
mod command;
mod error;
mod ids;
mod lifecycle;
mod schedule;
mod site;
mod tariff;
mod telemetry;
pub mod time;
mod units;

pub use battery::{BatteryParams, BatterySpec, TemperatureWindow};
pub use command::{Command, MAX_COMMAND_DURATION};
pub use error::{Error, Result};
pub use ids::{DeviceId, FeederId, MAX_ID_LEN, ScheduleId, ScheduleVersion, SiteId};
pub use lifecycle::{ExecutionState, LifecycleEvent};
pub use schedule::{
    Schedule, ScheduleParts, SocTrajectory, TOLERANCE, Violation, ViolationKind, Violations,
};
pub use site::{FeederEnvelope, FeederLimit, GridConnection, Site, SiteBattery, SiteParts};
pub use tariff::{
    DemandCharge, PriceSeries, SlotSeries, Tariff, TimeOfUseTariff, TouWindow, Weekdays,
};
pub use telemetry::{Alarms, TelemetrySample};
pub use time::{Horizon, HorizonParts, SlotLength, Timestamp};
pub use units::{Efficiency, Energy, Power, PricePerKwh, Soc, Temperature};
