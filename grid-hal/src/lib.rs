//! grid-hal: battery hardware traits in the embedded-hal style, drivers, a simulated battery and the
//! safety layer that keeps every setpoint inside the battery's envelope.
//!
//! **Sign convention:** a positive power charges the battery or imports from the grid; a negative
//! power discharges the battery or exports. Power in kW, energy in kWh.
//!
//! * Traits: [`BatteryMonitor`] / [`BatteryController`], [`PowerMeter`], [`Contactor`]; every
//!   driver error reports an [`ErrorKind`] through [`HalError::kind`].
//! * Drivers: [`sbs`] (Smart Battery over SMBus with PEC), [`ina226`] (power monitor),
//!   [`contactor`] (GPIO), [`sunspec`] (SunSpec register maps; the async Modbus TCP client behind
//!   the `modbus` feature) and `rpi` (rppal adapters behind the `rpi` feature).
//! * [`SimBattery`]: a deterministic physical model with fault injection; [`SimSite`]: household
//!   load and PV around it, for a simulated grid meter.
//! * [`SafeBattery`]: the safety layer (limits, SoC window, temperature, ramp, watchdog).
//!
//! Generic code reacts to any driver's errors through their kind:
//!
//! ```
//! use core::time::Duration;
//! use grid_core::{BatteryParams, BatterySpec, Power};
//! use grid_hal::*;
//!
//! /// Reads a battery, retrying transient failures once.
//! fn read<B: BatteryMonitor>(battery: &mut B) -> Result<BatteryState, ErrorKind> {
//!     match battery.read_state() {
//!         Err(e) if e.kind().is_transient() => battery.read_state().map_err(|e| e.kind()),
//!         other => other.map_err(|e| e.kind()),
//!     }
//! }
//!
//! let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0))?;
//! let mut sim = SimBattery::new(spec.clone(), SimConfig { seed: 42, ..SimConfig::default() })?;
//! sim.inject(Fault::BusErrors { probability: 1.0 })?;
//! assert_eq!(read(&mut sim), Err(ErrorKind::Bus));
//! sim.clear_faults();
//!
//! // Behind the safety layer, a sensor error means idle, and the event says why.
//! let mut battery = SafeBattery::new(sim, &spec, SafetyConfig::for_spec(&spec))?;
//! battery.inner_mut().inject(Fault::BusErrors { probability: 1.0 })?;
//! let report = battery.command(Duration::from_secs(1), Power::from_kw(3.0)?);
//! assert_eq!(report.applied, Power::ZERO);
//! assert_eq!(report.events[0], SafetyEvent::SensorError { kind: ErrorKind::Bus });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod contactor;
mod error;
pub mod ina226;
#[cfg(feature = "rpi")]
pub mod rpi;
pub mod safety;
pub mod sbs;
pub mod sim;
pub mod site;
pub mod sunspec;
mod traits;

pub use error::{Error, ErrorKind, ErrorType, HalError, Result};
pub use safety::{LimitReason, SafeBattery, SafetyConfig, SafetyEvent, SafetyGuard, TickReport};
pub use sim::{Fault, SimBattery, SimConfig};
pub use site::{SimSite, SiteConfig};
pub use traits::{
    BatteryController, BatteryMonitor, BatteryState, Contactor, KindErrors, MeterReading,
    PowerMeter,
};
