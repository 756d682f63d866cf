//! The hardware traits: a battery monitor and controller, a power meter and a contactor, in
//! embedded-hal's blocking style (`&mut self`, an associated error with a [`kind`](crate::HalError::kind)).

use crate::error::ErrorType;
use grid_core::{Alarms, Power, Soc, TelemetrySample, Temperature, time::Timestamp};

/// One reading of a battery's state. The same fields as grid-core's [`TelemetrySample`] minus the
/// timestamp, because drivers have no clock: the caller stamps it with [`BatteryState::at`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatteryState {
    /// State of charge.
    pub soc: Soc,
    /// Pack voltage in V.
    pub voltage_v: f64,
    /// Pack current in A (positive = charging).
    pub current_a: f64,
    /// Battery power in kW (positive = charging, negative = discharging).
    pub power: Power,
    /// Pack temperature.
    pub temperature: Temperature,
    /// Alarm flags.
    pub alarms: Alarms,
}

impl BatteryState {
    /// The telemetry sample of this reading taken at `at` (UTC).
    pub fn at(self, at: Timestamp) -> TelemetrySample {
        TelemetrySample {
            at,
            soc: self.soc,
            power: self.power,
            voltage_v: self.voltage_v,
            current_a: self.current_a,
            temperature: self.temperature,
            alarms: self.alarms,
        }
    }

    /// Whether every number is finite (grid-core's types guarantee it for SoC, power and
    /// temperature; voltage and current are plain floats).
    pub fn is_finite(&self) -> bool {
        self.voltage_v.is_finite() && self.current_a.is_finite()
    }
}

/// Something that can read a battery's state (a BMS, a fuel gauge, an inverter's battery model).
pub trait BatteryMonitor: ErrorType {
    /// Reads SoC, voltage, current, power, temperature and alarm flags.
    fn read_state(&mut self) -> Result<BatteryState, Self::Error>;
}

/// A battery whose power can be commanded (through its inverter or charger).
///
/// Implementations apply the setpoint as given, clamped only by what the hardware itself does;
/// wrap them in [`crate::SafeBattery`] to enforce the battery's envelope.
pub trait BatteryController: BatteryMonitor {
    /// Commands a power setpoint in kW (positive = charge, negative = discharge).
    fn set_power(&mut self, power: Power) -> Result<(), Self::Error>;

    /// Stops charging and discharging (a zero setpoint).
    fn idle(&mut self) -> Result<(), Self::Error> {
        self.set_power(Power::ZERO)
    }
}

impl<T: BatteryMonitor + ?Sized> BatteryMonitor for &mut T {
    fn read_state(&mut self) -> Result<BatteryState, Self::Error> {
        T::read_state(self)
    }
}

impl<T: BatteryController + ?Sized> BatteryController for &mut T {
    fn set_power(&mut self, power: Power) -> Result<(), Self::Error> {
        T::set_power(self, power)
    }

    fn idle(&mut self) -> Result<(), Self::Error> {
        T::idle(self)
    }
}

/// One power-meter reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterReading {
    /// Power in kW through the metering point (positive = importing from the grid / into the
    /// battery, negative = exporting).
    pub power: Power,
    /// Voltage in V.
    pub voltage_v: f64,
    /// Current in A (same sign as the power).
    pub current_a: f64,
}

impl MeterReading {
    /// A reading from raw numbers; a non-finite power (impossible from a 16-bit register) reads as zero.
    pub(crate) fn from_raw(power_kw: f64, voltage_v: f64, current_a: f64) -> Self {
        Self {
            power: Power::from_kw(power_kw).unwrap_or(Power::ZERO),
            voltage_v,
            current_a,
        }
    }
}

/// A power meter: a site's grid connection point (import/export) or a battery's DC side.
pub trait PowerMeter: ErrorType {
    /// Reads power (positive = import), voltage and current.
    fn read_power(&mut self) -> Result<MeterReading, Self::Error>;
}

/// A contactor or enable line that connects the battery.
pub trait Contactor: ErrorType {
    /// Closes the contactor (connects the battery).
    fn close(&mut self) -> Result<(), Self::Error>;
    /// Opens the contactor (disconnects the battery).
    fn open(&mut self) -> Result<(), Self::Error>;
    /// Whether the contactor was last commanded closed successfully.
    fn is_closed(&self) -> bool;
}
