//! A simulated battery: a deterministic (seeded) physical model with fault injection, for the
//! agent's tests and the fleet demo.
//!
//! The model, per [`SimBattery::step`] of `dt`:
//! * **Power**: the commanded setpoint (kW, positive = charging) clamped to the spec's limits, tapered
//!   linearly to zero over the last `taper_soc` of the SoC window at either end (a BMS's
//!   constant-voltage phase), and to the energy left in the window for this step.
//! * **Energy**: charging stores `η_ch·p·dt`, discharging removes `|p|·dt/η_dis` (grid-core's
//!   [`BatterySpec::energy_after`] convention), then self-discharge removes a fixed fraction per day.
//! * **Temperature**: first order, `dT/dt = (T_ambient + R_th·P_loss − T) / τ`, where `P_loss` is the
//!   conversion loss in kW; integrated exactly for the step (`1 − e^{−dt/τ}`).
//! * **Sensors** (on [`BatteryMonitor::read_state`]): the true state plus zero-mean noise, a voltage
//!   from a linear open-circuit curve and an internal resistance, alarm flags.
//!
//! Time is an input: nothing here reads a clock, so the same seed and the same calls give the same
//! numbers. The random numbers come from a SplitMix64 generator owned by each battery.
//!
//! ```
//! use core::time::Duration;
//! use grid_core::{BatteryParams, BatterySpec, Power, Soc};
//! use grid_hal::{BatteryController, BatteryMonitor, SimBattery, SimConfig};
//! let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0))?;
//! let mut bat = SimBattery::new(spec, SimConfig { seed: 7, initial_soc: Soc::from_fraction(0.5)?, ..SimConfig::default() })?;
//! bat.set_power(Power::from_kw(2.0)?).unwrap();
//! for _ in 0..3600 {
//!     bat.step(Duration::from_secs(1));
//! }
//! // One hour at 2 kW with 95 % charge efficiency stores 1.9 kWh (minus a little self-discharge).
//! assert!((bat.energy().kwh() - 6.9).abs() < 0.01);
//! let reading = bat.read_state().unwrap();
//! assert!((reading.soc.fraction() - 0.69).abs() < 0.02);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{ErrorKind, HalError, check_range};
use crate::traits::{BatteryController, BatteryMonitor, BatteryState};
use core::time::Duration;
use grid_core::{Alarms, BatterySpec, Energy, Power, Soc, Temperature};

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast generator with a 64-bit state, good enough
/// for sensor noise and fault dice, and stable across platforms and versions of this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An approximately standard normal number (Irwin–Hall: the sum of four uniforms, centred and
    /// scaled to unit variance; bounded by ±3.46, which suits sensor noise).
    pub fn next_normal(&mut self) -> f64 {
        let s = self.next_f64() + self.next_f64() + self.next_f64() + self.next_f64();
        (s - 2.0) * 3.0f64.sqrt()
    }
}

/// Standard deviations of the sensor noise added to each reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorNoise {
    /// SoC noise, as a fraction (0.002 = 0.2 percentage points).
    pub soc: f64,
    /// Power noise in kW.
    pub power_kw: f64,
    /// Voltage noise in V.
    pub voltage_v: f64,
    /// Temperature noise in °C.
    pub temperature_c: f64,
}

impl SensorNoise {
    /// No noise at all (exact readings).
    pub const NONE: Self = Self {
        soc: 0.0,
        power_kw: 0.0,
        voltage_v: 0.0,
        temperature_c: 0.0,
    };
}

impl Default for SensorNoise {
    fn default() -> Self {
        Self {
            soc: 0.002,
            power_kw: 0.01,
            voltage_v: 0.05,
            temperature_c: 0.1,
        }
    }
}

/// Simulator parameters besides the [`BatterySpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Seed of the battery's random generator (noise, bus-error dice).
    pub seed: u64,
    /// State of charge at start (clamped into the spec's window).
    pub initial_soc: Soc,
    /// Ambient temperature.
    pub ambient: Temperature,
    /// Pack temperature at start (`None` = ambient).
    pub initial_temperature: Option<Temperature>,
    /// Thermal time constant τ in s (> 0).
    pub thermal_time_constant_s: f64,
    /// Steady-state temperature rise per kW of conversion loss, in K/kW (≥ 0).
    pub thermal_resistance_k_per_kw: f64,
    /// Fraction of the stored energy lost per day when idle, in `[0, 1)`.
    pub self_discharge_per_day: f64,
    /// Width of the taper band at each end of the SoC window, as a SoC fraction, in `[0, 0.5]`
    /// (0 = no taper).
    pub taper_soc: f64,
    /// Open-circuit pack voltage at 0 % SoC, V.
    pub voltage_empty_v: f64,
    /// Open-circuit pack voltage at 100 % SoC, V.
    pub voltage_full_v: f64,
    /// Internal resistance of the pack in Ω.
    pub internal_resistance_ohm: f64,
    /// Sensor noise.
    pub noise: SensorNoise,
}

impl Default for SimConfig {
    /// A 48 V-class home battery at 20 °C, half full, seed 0.
    fn default() -> Self {
        Self {
            seed: 0,
            initial_soc: Soc::from_fraction(0.5).unwrap_or(Soc::EMPTY),
            ambient: Temperature::from_celsius(20.0).unwrap_or(Temperature::ZERO),
            initial_temperature: None,
            thermal_time_constant_s: 3600.0,
            thermal_resistance_k_per_kw: 30.0,
            self_discharge_per_day: 0.001,
            taper_soc: 0.05,
            voltage_empty_v: 46.0,
            voltage_full_v: 54.0,
            internal_resistance_ohm: 0.02,
            noise: SensorNoise::default(),
        }
    }
}

/// A fault to inject into a [`SimBattery`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Every read and write fails with this probability (in `[0, 1]`) with [`SimError::Bus`].
    BusErrors {
        /// Probability per operation.
        probability: f64,
    },
    /// The sensors freeze: every read returns the reading taken when the fault was injected.
    StuckSensor,
    /// A cooling failure: the pack jumps to `temperature` and a heat source holds it there.
    OverTemperature {
        /// The temperature the pack is held at.
        temperature: Temperature,
    },
    /// A sudden, permanent loss of this fraction (in `[0, 1)`) of the capacity and of the stored
    /// energy (a cell string dropping out); the SoC stays, the kWh behind it shrink.
    CapacityLoss {
        /// Fraction lost.
        fraction: f64,
    },
}

/// Errors the simulated hardware returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// An injected bus error.
    #[error("simulated bus error")]
    Bus,
}

impl HalError for SimError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Bus
    }
}

/// A simulated battery. See the [module documentation](self) for the model.
#[derive(Debug, Clone)]
pub struct SimBattery {
    spec: BatterySpec,
    config: SimConfig,
    // Hot state as plain numbers so `step` is a few dozen flops.
    capacity_kwh: f64,
    min_kwh: f64,
    max_kwh: f64,
    max_charge_kw: f64,
    max_discharge_kw: f64,
    eta_ch: f64,
    eta_dis: f64,
    taper_kwh: f64,
    energy_kwh: f64,
    temperature_c: f64,
    ambient_c: f64,
    setpoint_kw: f64,
    power_kw: f64,
    self_discharge_per_s: f64,
    // exp(-dt/τ) for the last dt, cached because the fleet steps with a constant dt.
    cached_dt_s: f64,
    cached_decay: f64,
    rng: SplitMix64,
    bus_error_probability: f64,
    stuck: Option<BatteryState>,
    overheat_c: Option<f64>,
}

impl SimBattery {
    /// A simulated battery of `spec`; the error names the bad [`SimConfig`] field.
    pub fn new(spec: BatterySpec, config: SimConfig) -> crate::Result<Self> {
        check_range(
            "sim.thermal_time_constant_s",
            config.thermal_time_constant_s,
            1e-3,
            1e9,
            "> 0 s",
        )?;
        check_range(
            "sim.thermal_resistance_k_per_kw",
            config.thermal_resistance_k_per_kw,
            0.0,
            1e6,
            ">= 0 K/kW",
        )?;
        check_range(
            "sim.self_discharge_per_day",
            config.self_discharge_per_day,
            0.0,
            0.999_999,
            "in [0, 1)",
        )?;
        check_range("sim.taper_soc", config.taper_soc, 0.0, 0.5, "in [0, 0.5]")?;
        check_range(
            "sim.voltage_empty_v",
            config.voltage_empty_v,
            1e-3,
            1e5,
            "> 0 V",
        )?;
        check_range(
            "sim.voltage_full_v",
            config.voltage_full_v,
            config.voltage_empty_v,
            1e5,
            ">= sim.voltage_empty_v",
        )?;
        check_range(
            "sim.internal_resistance_ohm",
            config.internal_resistance_ohm,
            0.0,
            1e3,
            ">= 0 Ω",
        )?;
        for (field, v) in [
            ("sim.noise.soc", config.noise.soc),
            ("sim.noise.power_kw", config.noise.power_kw),
            ("sim.noise.voltage_v", config.noise.voltage_v),
            ("sim.noise.temperature_c", config.noise.temperature_c),
        ] {
            check_range(field, v, 0.0, 1e6, ">= 0")?;
        }
        let capacity_kwh = spec.capacity().kwh();
        let min_kwh = spec.min_energy().kwh();
        let max_kwh = spec.max_energy().kwh();
        let energy_kwh = config
            .initial_soc
            .energy(spec.capacity())
            .kwh()
            .clamp(min_kwh, max_kwh);
        let temperature_c = config
            .initial_temperature
            .unwrap_or(config.ambient)
            .celsius();
        // Per-second fraction such that a day compounds to `self_discharge_per_day`.
        let self_discharge_per_s = -(1.0 - config.self_discharge_per_day).ln() / 86_400.0;
        Ok(Self {
            capacity_kwh,
            min_kwh,
            max_kwh,
            max_charge_kw: spec.max_charge().kw(),
            max_discharge_kw: spec.max_discharge().kw(),
            eta_ch: spec.charge_efficiency().fraction(),
            eta_dis: spec.discharge_efficiency().fraction(),
            taper_kwh: config.taper_soc * capacity_kwh,
            energy_kwh,
            temperature_c,
            ambient_c: config.ambient.celsius(),
            setpoint_kw: 0.0,
            power_kw: 0.0,
            self_discharge_per_s,
            cached_dt_s: f64::NAN,
            cached_decay: 1.0,
            rng: SplitMix64::new(config.seed),
            bus_error_probability: 0.0,
            stuck: None,
            overheat_c: None,
            spec,
            config,
        })
    }

    /// Advances the model by `dt` with the current setpoint.
    pub fn step(&mut self, dt: Duration) {
        let dt_s = dt.as_secs_f64();
        if dt_s <= 0.0 {
            return;
        }
        let dt_h = dt_s / 3600.0;
        let e = self.energy_kwh;
        // Taper: the limit falls linearly to zero across the band next to each window edge.
        let (ch_taper, dis_taper) = if self.taper_kwh > 0.0 {
            (
                ((self.max_kwh - e) / self.taper_kwh).clamp(0.0, 1.0),
                ((e - self.min_kwh) / self.taper_kwh).clamp(0.0, 1.0),
            )
        } else {
            (1.0, 1.0)
        };
        // Never overshoot the window within one step.
        let ch_room = ((self.max_kwh - e) / (self.eta_ch * dt_h)).max(0.0);
        let dis_room = ((e - self.min_kwh) * self.eta_dis / dt_h).max(0.0);
        let hi = (self.max_charge_kw * ch_taper).min(ch_room);
        let lo = -(self.max_discharge_kw * dis_taper).min(dis_room);
        let p = self.setpoint_kw.clamp(lo, hi);
        let (stored, loss_kw) = if p >= 0.0 {
            (p * self.eta_ch, p * (1.0 - self.eta_ch))
        } else {
            (p / self.eta_dis, -p * (1.0 / self.eta_dis - 1.0))
        };
        let mut e = e + stored * dt_h;
        e -= e * self.self_discharge_per_s * dt_s;
        self.energy_kwh = e.clamp(0.0, self.capacity_kwh);
        self.power_kw = p;

        if dt_s != self.cached_dt_s {
            self.cached_dt_s = dt_s;
            self.cached_decay = (-dt_s / self.config.thermal_time_constant_s).exp();
        }
        let target = match self.overheat_c {
            Some(t) => t,
            None => self.ambient_c + self.config.thermal_resistance_k_per_kw * loss_kw,
        };
        self.temperature_c = target + (self.temperature_c - target) * self.cached_decay;
    }

    /// Injects a fault; the error names a bad parameter.
    pub fn inject(&mut self, fault: Fault) -> crate::Result<()> {
        match fault {
            Fault::BusErrors { probability } => {
                self.bus_error_probability =
                    check_range("fault.probability", probability, 0.0, 1.0, "in [0, 1]")?;
            }
            Fault::StuckSensor => self.stuck = Some(self.measure()),
            Fault::OverTemperature { temperature } => {
                self.overheat_c = Some(temperature.celsius());
                self.temperature_c = temperature.celsius();
            }
            Fault::CapacityLoss { fraction } => {
                let keep =
                    1.0 - check_range("fault.fraction", fraction, 0.0, 0.999_999, "in [0, 1)")?;
                self.capacity_kwh *= keep;
                self.min_kwh *= keep;
                self.max_kwh *= keep;
                self.taper_kwh *= keep;
                self.energy_kwh *= keep;
            }
        }
        Ok(())
    }

    /// Clears the transient faults (bus errors, stuck sensor, over-temperature); a capacity loss
    /// is permanent. The pack then cools towards ambient.
    pub fn clear_faults(&mut self) {
        self.bus_error_probability = 0.0;
        self.stuck = None;
        self.overheat_c = None;
    }

    /// Sets the ambient temperature (weather).
    pub fn set_ambient(&mut self, ambient: Temperature) {
        self.ambient_c = ambient.celsius();
    }

    /// The spec the battery was built with (its capacity before any injected loss).
    pub fn spec(&self) -> &BatterySpec {
        &self.spec
    }

    /// The true stored energy.
    pub fn energy(&self) -> Energy {
        Energy::from_kwh(self.energy_kwh).unwrap_or(Energy::ZERO)
    }

    /// The true capacity (after any injected loss).
    pub fn capacity(&self) -> Energy {
        Energy::from_kwh(self.capacity_kwh).unwrap_or(Energy::ZERO)
    }

    /// The true state of charge.
    pub fn soc(&self) -> Soc {
        Soc::of(self.energy(), self.capacity())
    }

    /// The true pack temperature.
    pub fn temperature(&self) -> Temperature {
        Temperature::from_celsius(self.temperature_c).unwrap_or(Temperature::ZERO)
    }

    /// The power actually flowing in the last step, kW (positive = charging).
    pub fn power(&self) -> Power {
        Power::from_kw(self.power_kw).unwrap_or(Power::ZERO)
    }

    /// The last commanded setpoint, kW (positive = charging).
    pub fn setpoint(&self) -> Power {
        Power::from_kw(self.setpoint_kw).unwrap_or(Power::ZERO)
    }

    fn bus_fails(&mut self) -> bool {
        self.bus_error_probability > 0.0 && self.rng.next_f64() < self.bus_error_probability
    }

    /// A noisy reading of the true state.
    fn measure(&mut self) -> BatteryState {
        let n = self.config.noise;
        let true_soc = if self.capacity_kwh > 0.0 {
            self.energy_kwh / self.capacity_kwh
        } else {
            0.0
        };
        let soc = (true_soc + n.soc * self.rng.next_normal()).clamp(0.0, 1.0);
        let power_kw = self.power_kw + n.power_kw * self.rng.next_normal();
        let ocv = self.config.voltage_empty_v
            + (self.config.voltage_full_v - self.config.voltage_empty_v) * true_soc;
        // Terminal voltage with the internal resistance: V = OCV + I·R with I = P/V (one fixed-point pass).
        let current_a = power_kw * 1000.0 / ocv;
        let voltage_v = ocv
            + current_a * self.config.internal_resistance_ohm
            + n.voltage_v * self.rng.next_normal();
        let temperature_c = self.temperature_c + n.temperature_c * self.rng.next_normal();
        let mut alarms = Alarms::NONE;
        if let Some(w) = self.spec.temperature_window() {
            if temperature_c > w.max.celsius() {
                alarms.insert(Alarms::OVER_TEMPERATURE);
            }
            if temperature_c < w.min.celsius() {
                alarms.insert(Alarms::UNDER_TEMPERATURE);
            }
        }
        let eps = 1e-6 * self.capacity_kwh.max(1e-9);
        if self.energy_kwh >= self.max_kwh - eps {
            alarms.insert(Alarms::FULLY_CHARGED);
        }
        if self.energy_kwh <= self.min_kwh + eps {
            alarms.insert(Alarms::FULLY_DISCHARGED);
        }
        BatteryState {
            soc: Soc::from_fraction(soc).unwrap_or(Soc::EMPTY),
            voltage_v,
            current_a,
            power: Power::from_kw(power_kw).unwrap_or(Power::ZERO),
            temperature: Temperature::from_celsius(temperature_c).unwrap_or(Temperature::ZERO),
            alarms,
        }
    }
}

impl crate::ErrorType for SimBattery {
    type Error = SimError;
}

impl BatteryMonitor for SimBattery {
    fn read_state(&mut self) -> Result<BatteryState, SimError> {
        if self.bus_fails() {
            return Err(SimError::Bus);
        }
        if let Some(s) = self.stuck {
            return Ok(s);
        }
        Ok(self.measure())
    }
}

impl BatteryController for SimBattery {
    /// Stores the setpoint (kW, positive = charging); the next [`SimBattery::step`]s apply it
    /// within the spec's limits, as a BMS would.
    fn set_power(&mut self, power: Power) -> Result<(), SimError> {
        if self.bus_fails() {
            return Err(SimError::Bus);
        }
        self.setpoint_kw = power.kw();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grid_core::BatteryParams;

    const S: Duration = Duration::from_secs(1);

    fn spec() -> BatterySpec {
        BatterySpec::new(BatteryParams {
            min_temperature_c: Some(-10.0),
            max_temperature_c: Some(50.0),
            ..BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)
        })
        .unwrap()
    }

    fn quiet(soc: f64) -> SimConfig {
        SimConfig {
            initial_soc: Soc::from_fraction(soc).unwrap(),
            noise: SensorNoise::NONE,
            self_discharge_per_day: 0.0,
            ..SimConfig::default()
        }
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Reference values of SplitMix64 seeded with 0 (as in Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(1);
        let xs: Vec<f64> = (0..10_000).map(|_| r.next_normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }

    #[test]
    fn energy_follows_the_efficiencies() {
        let mut b = SimBattery::new(spec(), quiet(0.5)).unwrap();
        b.set_power(Power::from_kw(2.0).unwrap()).unwrap();
        for _ in 0..1800 {
            b.step(S);
        }
        assert!((b.energy().kwh() - (5.0 + 2.0 * 0.5 * 0.95)).abs() < 1e-9);
        b.set_power(Power::from_kw(-2.0).unwrap()).unwrap();
        for _ in 0..1800 {
            b.step(S);
        }
        assert!((b.energy().kwh() - (5.95 - 1.0 / 0.95)).abs() < 1e-9);
        assert_eq!(b.power().kw(), -2.0);
    }

    #[test]
    fn power_limits_and_taper_keep_the_window() {
        let mut b = SimBattery::new(spec(), quiet(0.8)).unwrap();
        b.set_power(Power::from_kw(50.0).unwrap()).unwrap();
        b.step(S);
        assert_eq!(b.power().kw(), 5.0, "clamped to max charge");
        for _ in 0..6 * 3600 {
            b.step(S);
        }
        assert!(b.energy().kwh() <= 9.0 + 1e-9);
        assert!(
            b.energy().kwh() > 8.95,
            "tapers into the top of the window: {}",
            b.energy().kwh()
        );
        assert!(b.power().kw() < 0.1, "taper near full: {}", b.power().kw());
        b.set_power(Power::from_kw(-50.0).unwrap()).unwrap();
        for _ in 0..12 * 3600 {
            b.step(S);
            assert!(b.energy().kwh() >= 1.0 - 1e-9);
        }
        assert!(b.energy().kwh() < 1.05);
        // The taper at 1.5 % SoC above the bottom: 0.3 of the 5 kW limit.
        let mut b = SimBattery::new(spec(), quiet(0.115)).unwrap();
        b.set_power(Power::from_kw(-5.0).unwrap()).unwrap();
        b.step(Duration::from_millis(1));
        assert!((b.power().kw() + 1.5).abs() < 1e-3, "{}", b.power().kw());
    }

    #[test]
    fn temperature_rises_with_losses_and_relaxes_to_ambient() {
        let mut b = SimBattery::new(spec(), quiet(0.2)).unwrap();
        b.set_power(Power::from_kw(5.0).unwrap()).unwrap();
        for _ in 0..3600 {
            b.step(S);
        }
        // Loss 0.25 kW × 30 K/kW = 7.5 K steady rise; after one τ: 7.5·(1 − 1/e) = 4.74 K.
        let rise = b.temperature().celsius() - 20.0;
        assert!(
            (rise - 7.5 * (1.0 - (-1.0f64).exp())).abs() < 1e-6,
            "{rise}"
        );
        b.set_power(Power::ZERO).unwrap();
        for _ in 0..5 * 3600 {
            b.step(S);
        }
        assert!((b.temperature().celsius() - 20.0).abs() < 0.05);
    }

    #[test]
    fn self_discharge_compounds_per_day() {
        let mut b = SimBattery::new(
            spec(),
            SimConfig {
                self_discharge_per_day: 0.01,
                ..quiet(0.5)
            },
        )
        .unwrap();
        for _ in 0..24 {
            b.step(Duration::from_secs(3600));
        }
        assert!(
            (b.energy().kwh() - 5.0 * 0.99).abs() < 1e-3,
            "{}",
            b.energy().kwh()
        );
    }

    #[test]
    fn same_seed_same_readings_other_seed_other_readings() {
        let run = |seed| {
            let mut b = SimBattery::new(
                spec(),
                SimConfig {
                    seed,
                    ..SimConfig::default()
                },
            )
            .unwrap();
            b.set_power(Power::from_kw(1.0).unwrap()).unwrap();
            (0..100)
                .map(|_| {
                    b.step(S);
                    b.read_state().unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let r = run(3);
        assert!(
            r.iter()
                .all(|s| (s.soc.fraction() - 0.5).abs() < 0.02 && (s.power.kw() - 1.0).abs() < 0.1)
        );
    }

    #[test]
    fn injected_faults() {
        let mut b = SimBattery::new(spec(), SimConfig::default()).unwrap();
        b.inject(Fault::BusErrors { probability: 1.0 }).unwrap();
        assert_eq!(b.read_state(), Err(SimError::Bus));
        assert_eq!(b.set_power(Power::ZERO).unwrap_err().kind(), ErrorKind::Bus);
        b.inject(Fault::BusErrors { probability: 0.3 }).unwrap();
        let fails = (0..10_000).filter(|_| b.read_state().is_err()).count();
        assert!((2700..3300).contains(&fails), "{fails}");
        assert!(b.inject(Fault::BusErrors { probability: 1.5 }).is_err());
        b.clear_faults();

        b.inject(Fault::StuckSensor).unwrap();
        let frozen = b.read_state().unwrap();
        b.set_power(Power::from_kw(5.0).unwrap()).unwrap();
        for _ in 0..600 {
            b.step(S);
        }
        assert_eq!(b.read_state().unwrap(), frozen);
        b.clear_faults();
        assert_ne!(b.read_state().unwrap(), frozen);

        b.inject(Fault::OverTemperature {
            temperature: Temperature::from_celsius(70.0).unwrap(),
        })
        .unwrap();
        for _ in 0..600 {
            b.step(S);
        }
        let s = b.read_state().unwrap();
        assert!(s.alarms.contains(Alarms::OVER_TEMPERATURE) && s.alarms.is_critical());
        assert!((b.temperature().celsius() - 70.0).abs() < 1e-9);

        let soc = b.soc().fraction();
        b.inject(Fault::CapacityLoss { fraction: 0.25 }).unwrap();
        assert!((b.capacity().kwh() - 7.5).abs() < 1e-12);
        assert!((b.soc().fraction() - soc).abs() < 1e-12);
        assert!(matches!(
            b.inject(Fault::CapacityLoss { fraction: 1.0 }),
            Err(crate::Error::InvalidConfig {
                field: "fault.fraction",
                ..
            })
        ));
    }

    #[test]
    fn bad_config_names_the_field() {
        let err = SimBattery::new(
            spec(),
            SimConfig {
                thermal_time_constant_s: 0.0,
                ..SimConfig::default()
            },
        )
        .unwrap_err();
        assert!(matches!(
            err,
            crate::Error::InvalidConfig {
                field: "sim.thermal_time_constant_s",
                ..
            }
        ));
        let err = SimBattery::new(
            spec(),
            SimConfig {
                noise: SensorNoise {
                    soc: f64::NAN,
                    ..SensorNoise::NONE
                },
                ..SimConfig::default()
            },
        )
        .unwrap_err();
        assert!(matches!(
            err,
            crate::Error::InvalidConfig {
                field: "sim.noise.soc",
                ..
            }
        ));
    }
}
