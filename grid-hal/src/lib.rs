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
//! * [`SimBattery`]: a deterministic physical model with fault injection.
//! * [`SafeBattery`]: the safety layer (limits, SoC window, temperature, ramp, watchdog).
#![warn(missing_docs)]

pub mod contactor;
mod error;
pub mod ina226;
#[cfg(feature = "rpi")]
pub mod rpi;
pub mod safety;
pub mod sbs;
pub mod sim;
pub mod sunspec;
mod traits;

pub use error::{Error, ErrorKind, ErrorType, HalError, Result};
pub use safety::{LimitReason, SafeBattery, SafetyConfig, SafetyEvent, SafetyGuard, TickReport};
pub use sim::{Fault, SimBattery, SimConfig};
pub use traits::{
    BatteryController, BatteryMonitor, BatteryState, Contactor, MeterReading, PowerMeter,
};
