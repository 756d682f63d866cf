//! The hardware traits: a battery monitor and controller, a power meter and a contactor, in
//! embedded-hal's blocking style (`&mut self`, an associated error with a [`kind`](crate::HalError::kind)).

use crate::error::{ErrorType, HalError};
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

/// Adapts any device so that its error is the bare [`ErrorKind`](crate::ErrorKind), which lets the
/// agent pick a driver from its configuration at run time and hold it as
/// `Box<dyn BatteryController<Error = ErrorKind>>` (a [`crate::SafeBattery`] accepts that box).
#[derive(Debug, Clone, PartialEq)]
pub struct KindErrors<T>(pub T);

impl<T: ErrorType> ErrorType for KindErrors<T> {
    type Error = crate::ErrorKind;
}

impl<T: BatteryMonitor> BatteryMonitor for KindErrors<T> {
    fn read_state(&mut self) -> Result<BatteryState, crate::ErrorKind> {
        self.0.read_state().map_err(|e| e.kind())
    }
}

impl<T: BatteryController> BatteryController for KindErrors<T> {
    fn set_power(&mut self, power: Power) -> Result<(), crate::ErrorKind> {
        self.0.set_power(power).map_err(|e| e.kind())
    }

    fn idle(&mut self) -> Result<(), crate::ErrorKind> {
        self.0.idle().map_err(|e| e.kind())
    }
}

impl<T: PowerMeter> PowerMeter for KindErrors<T> {
    fn read_power(&mut self) -> Result<MeterReading, crate::ErrorKind> {
        self.0.read_power().map_err(|e| e.kind())
    }
}

impl<T: Contactor> Contactor for KindErrors<T> {
    fn close(&mut self) -> Result<(), crate::ErrorKind> {
        self.0.close().map_err(|e| e.kind())
    }

    fn open(&mut self) -> Result<(), crate::ErrorKind> {
        self.0.open().map_err(|e| e.kind())
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl<T: ErrorType + ?Sized> ErrorType for Box<T> {
    type Error = T::Error;
}

impl<T: BatteryMonitor + ?Sized> BatteryMonitor for Box<T> {
    fn read_state(&mut self) -> Result<BatteryState, Self::Error> {
        T::read_state(self)
    }
}

impl<T: BatteryController + ?Sized> BatteryController for Box<T> {
    fn set_power(&mut self, power: Power) -> Result<(), Self::Error> {
        T::set_power(self, power)
    }

    fn idle(&mut self) -> Result<(), Self::Error> {
        T::idle(self)
    }
}

impl<T: PowerMeter + ?Sized> PowerMeter for Box<T> {
    fn read_power(&mut self) -> Result<MeterReading, Self::Error> {
        T::read_power(self)
    }
}

impl<T: Contactor + ?Sized> Contactor for Box<T> {
    fn close(&mut self) -> Result<(), Self::Error> {
        T::close(self)
    }

    fn open(&mut self) -> Result<(), Self::Error> {
        T::open(self)
    }

    fn is_closed(&self) -> bool {
        T::is_closed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Fault, SafeBattery, SafetyConfig, SafetyEvent, SimBattery, SimConfig};
    use core::time::Duration;
    use grid_core::{BatteryParams, BatterySpec};

    #[test]
    fn a_boxed_driver_chosen_at_run_time_runs_behind_the_safety_layer() {
        let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)).unwrap();
        let driver = "sim";
        let battery: Box<dyn BatteryController<Error = ErrorKind>> = match driver {
            "sim" => Box::new(KindErrors(
                SimBattery::new(spec.clone(), SimConfig::default()).unwrap(),
            )),
            _ => unreachable!(),
        };
        let mut safe = SafeBattery::new(battery, &spec, SafetyConfig::for_spec(&spec)).unwrap();
        let r = safe.command(Duration::from_secs(1), Power::from_kw(2.0).unwrap());
        assert_eq!(r.applied.kw(), 2.0);
        assert!((r.state.unwrap().soc.fraction() - 0.5).abs() < 0.02);

        let mut sim = KindErrors(SimBattery::new(spec, SimConfig::default()).unwrap());
        sim.0.inject(Fault::BusErrors { probability: 1.0 }).unwrap();
        assert_eq!(sim.read_state(), Err(ErrorKind::Bus));
        let _ = SafetyEvent::ImplausibleReading;
    }
}
