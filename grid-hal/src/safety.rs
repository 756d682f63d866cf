//! The safety layer: whatever a schedule or an operator asks, the setpoint that reaches the
//! hardware stays inside the battery's envelope.
//!
//! [`SafetyGuard`] is the sans-IO core: it takes `(now, reading)` and the latest request and
//! returns the power to apply plus a typed [`SafetyEvent`] for every intervention. [`SafeBattery`]
//! is the thin blocking shell around any [`BatteryController`]; an async driver (SunSpec Modbus)
//! uses the guard directly.
//!
//! Rules, applied on every tick:
//! 1. **Watchdog**: if no request arrived within `watchdog_timeout` (or none ever did), the target
//!    becomes `fallback` (idle by default), as SunSpec's `InOutWRte_RvrtTms` and IEEE 2030.5's
//!    default control do.
//! 2. **Sensor errors**: a failed or implausible reading (non-finite voltage or current, or the same
//!    reading `stale_after` times in a row while power flows) forces idle.
//! 3. **Envelope** from the latest reading: the spec's power limits; no charging at or above
//!    `max_soc − soc_margin` (or when the battery reports itself fully charged), no discharging at or
//!    below `min_soc + soc_margin` (or fully discharged), each with a hysteresis of `soc_hysteresis`
//!    so a noisy SoC reading at the limit cannot make the setpoint chatter; outside the temperature window or with a
//!    critical alarm, idle; within `derate_band_c` below the maximum temperature the limits fall
//!    linearly to zero.
//! 4. **Ramp**: the power may move at most `ramp_kw_per_s · dt` away from the last applied value,
//!    except towards zero, which is always allowed at once (stopping is never rate limited).
//!
//! Time is an input (`now` is a [`Duration`] since any fixed monotonic origin), so the behaviour is
//! deterministic and testable.
//!
//! ```
//! use core::time::Duration;
//! use grid_core::{BatteryParams, BatterySpec, Power, Soc};
//! use grid_hal::{SafeBattery, SafetyConfig, SafetyEvent, SimBattery, SimConfig};
//! let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0))?;
//! let sim = SimBattery::new(spec.clone(), SimConfig::default())?;
//! let config = SafetyConfig { watchdog_timeout: Duration::from_secs(30), ..SafetyConfig::for_spec(&spec) };
//! let mut bat = SafeBattery::new(sim, &spec, config)?;
//! // A schedule asks for 8 kW: the 5 kW rating wins, and the event says so.
//! let t = Duration::from_secs(100);
//! let report = bat.command(t, Power::from_kw(8.0)?);
//! assert_eq!(report.applied.kw(), 5.0);
//! assert!(report.events.iter().any(|e| matches!(e, SafetyEvent::Limited { .. })));
//! // Nothing new for more than 30 s: the watchdog reverts to idle.
//! let report = bat.tick(t + Duration::from_secs(31));
//! assert_eq!(report.applied, Power::ZERO);
//! assert!(report.events.iter().any(|e| matches!(e, SafetyEvent::WatchdogExpired { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{ErrorKind, HalError, check_range};
use crate::traits::{BatteryController, BatteryState};
use core::time::Duration;
use grid_core::{Alarms, BatterySpec, Power, Soc, Temperature};

/// Safety parameters on top of the [`BatterySpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafetyConfig {
    /// SoC margin kept inside the spec's window, as a fraction in `[0, 0.5)` (0.02 = 2 points).
    pub soc_margin: f64,
    /// Once charging (discharging) stopped at the SoC limit, it resumes only when the SoC read is
    /// this far inside the limit again, as a fraction in `[0, 0.5)` (0.01 = 1 point; choose it
    /// above the SoC sensor's noise).
    pub soc_hysteresis: f64,
    /// Lowest temperature at which the battery may run; below it, idle.
    pub min_temperature: Temperature,
    /// Highest temperature at which the battery may run; at or above it, idle (cut-off).
    pub max_temperature: Temperature,
    /// Width in K of the derating band below `max_temperature` (0 = no derating, cut-off only).
    pub derate_band_c: f64,
    /// Largest change of power in kW per second away from zero (`None` = unlimited).
    pub ramp_kw_per_s: Option<f64>,
    /// How long a request stays valid; after that the watchdog applies `fallback`.
    pub watchdog_timeout: Duration,
    /// The setpoint the watchdog reverts to (kW, positive = charging; idle by default). It is
    /// itself subject to the envelope.
    pub fallback: Power,
    /// Treat this many identical consecutive readings while power flows as a stuck sensor
    /// (`None` = off; noisy sensors never repeat exactly, integer registers of an idle pack may).
    pub stale_after: Option<u32>,
}

impl SafetyConfig {
    /// Defaults for `spec`: 2 % SoC margin, the spec's temperature window (else 0–45 °C), a 10 K
    /// derating band, the spec's ramp limit, a 60 s watchdog reverting to idle.
    pub fn for_spec(spec: &BatterySpec) -> Self {
        let c = |v: f64| Temperature::from_celsius(v).unwrap_or(Temperature::ZERO);
        let (min_temperature, max_temperature) = match spec.temperature_window() {
            Some(w) => (w.min, w.max),
            None => (c(0.0), c(45.0)),
        };
        Self {
            soc_margin: 0.02,
            soc_hysteresis: 0.01,
            min_temperature,
            max_temperature,
            derate_band_c: 10.0,
            ramp_kw_per_s: spec.ramp_limit_kw_per_min().map(|r| r / 60.0),
            watchdog_timeout: Duration::from_secs(60),
            fallback: Power::ZERO,
            stale_after: None,
        }
    }
}

/// Which side of the envelope bound the setpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitReason {
    /// The spec's charge or discharge rating.
    PowerRating,
    /// The SoC window (with margin), or the battery reporting itself full or empty.
    SocWindow {
        /// The SoC read.
        soc: Soc,
    },
    /// Derating near the maximum temperature.
    TemperatureDerating {
        /// The temperature read.
        temperature: Temperature,
    },
    /// Outside the temperature window.
    TemperatureCutoff {
        /// The temperature read.
        temperature: Temperature,
    },
    /// A critical alarm from the battery.
    Alarm {
        /// The alarm flags read.
        alarms: Alarms,
    },
}

/// One intervention of the safety layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SafetyEvent {
    /// No request within the timeout: the fallback setpoint applies. Reported once per expiry.
    WatchdogExpired {
        /// Time since the last request (`None`: there never was one).
        since_last_request: Option<Duration>,
    },
    /// The state could not be read: idle.
    SensorError {
        /// What kind of failure.
        kind: ErrorKind,
    },
    /// The reading is implausible (non-finite numbers or stuck): idle.
    ImplausibleReading,
    /// The target was cut to the envelope.
    Limited {
        /// Why.
        reason: LimitReason,
        /// The target before the cut (kW, positive = charging).
        requested: Power,
        /// The limit applied (kW, positive = charging).
        limit: Power,
    },
    /// The ramp-rate limit held the setpoint back.
    RampLimited {
        /// The target inside the envelope (kW, positive = charging).
        target: Power,
        /// What was applied this tick (kW, positive = charging).
        applied: Power,
    },
    /// Sending the setpoint to the hardware failed.
    WriteFailed {
        /// What kind of failure.
        kind: ErrorKind,
    },
}

/// The result of one decision of the [`SafetyGuard`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The power to send to the hardware (kW, positive = charging).
    pub power: Power,
    /// The lowest and highest power the envelope allowed this tick (kW; always `lo ≤ 0 ≤ hi`).
    pub envelope: (Power, Power),
    /// Every intervention.
    pub events: Vec<SafetyEvent>,
}

/// The sans-IO safety core. Feed it requests with [`SafetyGuard::request`] and one reading per
/// tick with [`SafetyGuard::decide`]; send [`Decision::power`] to the hardware.
#[derive(Debug, Clone)]
pub struct SafetyGuard {
    config: SafetyConfig,
    max_charge_kw: f64,
    max_discharge_kw: f64,
    min_soc: f64,
    max_soc: f64,
    last_request: Option<(Power, Duration)>,
    watchdog_expired: bool,
    last_tick: Option<Duration>,
    last_applied_kw: f64,
    last_reading: Option<BatteryState>,
    same_readings: u32,
    charge_blocked: bool,
    discharge_blocked: bool,
}

impl SafetyGuard {
    /// A guard for `spec`; the error names a bad [`SafetyConfig`] field.
    pub fn new(spec: &BatterySpec, config: SafetyConfig) -> crate::Result<Self> {
        check_range(
            "safety.soc_margin",
            config.soc_margin,
            0.0,
            0.499_999,
            "in [0, 0.5)",
        )?;
        check_range(
            "safety.soc_hysteresis",
            config.soc_hysteresis,
            0.0,
            0.499_999,
            "in [0, 0.5)",
        )?;
        check_range(
            "safety.derate_band_c",
            config.derate_band_c,
            0.0,
            1e3,
            "in [0, 1000] K",
        )?;
        check_range(
            "safety.max_temperature",
            config.max_temperature.celsius(),
            config.min_temperature.celsius(),
            f64::MAX,
            ">= safety.min_temperature",
        )?;
        if let Some(r) = config.ramp_kw_per_s {
            check_range(
                "safety.ramp_kw_per_s",
                r,
                f64::MIN_POSITIVE,
                f64::MAX,
                "> 0 kW/s",
            )?;
        }
        if config.watchdog_timeout.is_zero() {
            return Err(crate::Error::InvalidConfig {
                field: "safety.watchdog_timeout",
                value: 0.0,
                expected: "> 0 s",
            });
        }
        if config.stale_after == Some(0) {
            return Err(crate::Error::InvalidConfig {
                field: "safety.stale_after",
                value: 0.0,
                expected: ">= 1 or None",
            });
        }
        Ok(Self {
            config,
            max_charge_kw: spec.max_charge().kw(),
            max_discharge_kw: spec.max_discharge().kw(),
            min_soc: spec.min_soc().fraction(),
            max_soc: spec.max_soc().fraction(),
            last_request: None,
            watchdog_expired: false,
            last_tick: None,
            last_applied_kw: 0.0,
            last_reading: None,
            same_readings: 0,
            charge_blocked: false,
            discharge_blocked: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SafetyConfig {
        &self.config
    }

    /// Records a requested setpoint (kW, positive = charging) at `now`; it stays valid for the
    /// watchdog timeout.
    pub fn request(&mut self, now: Duration, power: Power) {
        self.last_request = Some((power, now));
        self.watchdog_expired = false;
    }

    /// The last requested setpoint and when it arrived.
    pub fn last_request(&self) -> Option<(Power, Duration)> {
        self.last_request
    }

    /// The power last decided (kW, positive = charging).
    pub fn last_applied(&self) -> Power {
        Power::from_kw(self.last_applied_kw).unwrap_or(Power::ZERO)
    }

    /// Decides the power for this tick from the latest reading (or its error kind).
    pub fn decide(&mut self, now: Duration, reading: Result<&BatteryState, ErrorKind>) -> Decision {
        let mut events = Vec::new();
        let dt_s = match self.last_tick {
            Some(prev) => now.saturating_sub(prev).as_secs_f64(),
            None => 0.0,
        };
        self.last_tick = Some(self.last_tick.map_or(now, |prev| prev.max(now)));

        // 1. Watchdog.
        let target = match self.last_request {
            Some((p, at)) if now.saturating_sub(at) <= self.config.watchdog_timeout => p,
            other => {
                if !self.watchdog_expired {
                    self.watchdog_expired = true;
                    events.push(SafetyEvent::WatchdogExpired {
                        since_last_request: other.map(|(_, at)| now.saturating_sub(at)),
                    });
                }
                self.config.fallback
            }
        };

        // 2 and 3. Envelope from the reading.
        let (lo, hi, lo_reason, hi_reason) = match reading {
            Err(kind) => {
                events.push(SafetyEvent::SensorError { kind });
                self.last_reading = None;
                (0.0, 0.0, None, None)
            }
            Ok(s) if !s.is_finite() || self.stale(s) => {
                events.push(SafetyEvent::ImplausibleReading);
                (0.0, 0.0, None, None)
            }
            Ok(s) => {
                let (lo, hi, lo_r, hi_r) = self.envelope(s);
                (lo, hi, Some(lo_r), Some(hi_r))
            }
        };
        let t = target.kw();
        let in_envelope = t.clamp(lo, hi);
        let binding = if t > hi {
            hi_reason.map(|r| (r, hi))
        } else if t < lo {
            lo_reason.map(|r| (r, lo))
        } else {
            None
        };
        if let Some((reason, limit)) = binding {
            events.push(SafetyEvent::Limited {
                reason,
                requested: target,
                limit: kw(limit),
            });
        }

        // 4. Ramp: the band around the last value, widened to include every value between it and 0.
        let last = self.last_applied_kw;
        let (r_lo, r_hi) = match self.config.ramp_kw_per_s {
            Some(r) => (
                last.min(0.0).min(last - r * dt_s),
                last.max(0.0).max(last + r * dt_s),
            ),
            None => (f64::NEG_INFINITY, f64::INFINITY),
        };
        // Both bands contain 0, so the intersection is never empty.
        let applied = in_envelope.clamp(lo.max(r_lo), hi.min(r_hi)) + 0.0;
        if applied != in_envelope {
            events.push(SafetyEvent::RampLimited {
                target: kw(in_envelope),
                applied: kw(applied),
            });
        }
        self.last_applied_kw = applied;
        Decision {
            power: kw(applied),
            envelope: (kw(lo), kw(hi)),
            events,
        }
    }

    /// Whether `s` repeats the previous reading for the `stale_after`-th time while power flows.
    fn stale(&mut self, s: &BatteryState) -> bool {
        let Some(limit) = self.config.stale_after else {
            return false;
        };
        if self.last_reading.as_ref() == Some(s) && self.last_applied_kw != 0.0 {
            self.same_readings = self.same_readings.saturating_add(1);
        } else {
            self.same_readings = 0;
        }
        self.last_reading = Some(*s);
        self.same_readings >= limit
    }

    /// The lowest and highest allowed power (kW) and the reason binding each side.
    fn envelope(&mut self, s: &BatteryState) -> (f64, f64, LimitReason, LimitReason) {
        let c = self.config;
        let temp = s.temperature.celsius();
        let mut hi = (self.max_charge_kw, LimitReason::PowerRating);
        let mut lo = (self.max_discharge_kw, LimitReason::PowerRating); // as a magnitude here
        let cut = |side: &mut (f64, LimitReason), limit: f64, reason: LimitReason| {
            if limit < side.0 {
                *side = (limit.max(0.0), reason);
            }
        };
        if temp >= c.max_temperature.celsius() || temp < c.min_temperature.celsius() {
            let reason = LimitReason::TemperatureCutoff {
                temperature: s.temperature,
            };
            cut(&mut hi, 0.0, reason);
            cut(&mut lo, 0.0, reason);
        } else if c.derate_band_c > 0.0 && temp > c.max_temperature.celsius() - c.derate_band_c {
            let factor = (c.max_temperature.celsius() - temp) / c.derate_band_c;
            let reason = LimitReason::TemperatureDerating {
                temperature: s.temperature,
            };
            cut(&mut hi, self.max_charge_kw * factor, reason);
            cut(&mut lo, self.max_discharge_kw * factor, reason);
        }
        if s.alarms.is_critical() {
            let reason = LimitReason::Alarm { alarms: s.alarms };
            cut(&mut hi, 0.0, reason);
            cut(&mut lo, 0.0, reason);
        }
        let soc = s.soc.fraction();
        let top = self.max_soc - c.soc_margin;
        if soc >= top || s.alarms.contains(Alarms::FULLY_CHARGED) {
            self.charge_blocked = true;
        } else if soc < top - c.soc_hysteresis {
            self.charge_blocked = false;
        }
        let bottom = self.min_soc + c.soc_margin;
        if soc <= bottom || s.alarms.contains(Alarms::FULLY_DISCHARGED) {
            self.discharge_blocked = true;
        } else if soc > bottom + c.soc_hysteresis {
            self.discharge_blocked = false;
        }
        if self.charge_blocked {
            cut(&mut hi, 0.0, LimitReason::SocWindow { soc: s.soc });
        }
        if self.discharge_blocked {
            cut(&mut lo, 0.0, LimitReason::SocWindow { soc: s.soc });
        }
        // `+ 0.0` turns −0.0 into 0.0 so events and telemetry never show "-0".
        (-lo.0 + 0.0, hi.0, lo.1, hi.1)
    }
}

fn kw(v: f64) -> Power {
    // Every value here is a clamp of finite inputs; zero is the safe fallback regardless.
    Power::from_kw(v).unwrap_or(Power::ZERO)
}

/// What one [`SafeBattery::tick`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TickReport {
    /// The setpoint sent to the hardware (kW, positive = charging).
    pub applied: Power,
    /// The reading this decision used (`None` if it failed).
    pub state: Option<BatteryState>,
    /// Every intervention, including a failed write.
    pub events: Vec<SafetyEvent>,
}

/// A [`BatteryController`] behind a [`SafetyGuard`]: the only way to reach the hardware is a
/// setpoint the guard approved. Call [`SafeBattery::tick`] periodically (e.g. every second) so the
/// watchdog and the envelope follow the battery; [`SafeBattery::command`] records a request and
/// ticks at once.
#[derive(Debug)]
pub struct SafeBattery<B> {
    inner: B,
    guard: SafetyGuard,
}

impl<B: BatteryController> SafeBattery<B> {
    /// Wraps `inner`; no I/O happens until the first tick. The error names a bad config field.
    pub fn new(inner: B, spec: &BatterySpec, config: SafetyConfig) -> crate::Result<Self> {
        Ok(Self {
            inner,
            guard: SafetyGuard::new(spec, config)?,
        })
    }

    /// Records a requested setpoint (kW, positive = charging) and ticks.
    pub fn command(&mut self, now: Duration, power: Power) -> TickReport {
        self.guard.request(now, power);
        self.tick(now)
    }

    /// Reads the battery, decides and writes the setpoint.
    pub fn tick(&mut self, now: Duration) -> TickReport {
        let reading = self.inner.read_state();
        let decision = self
            .guard
            .decide(now, reading.as_ref().map_err(|e| e.kind()));
        let mut events = decision.events;
        if let Err(e) = self.inner.set_power(decision.power) {
            events.push(SafetyEvent::WriteFailed { kind: e.kind() });
        }
        TickReport {
            applied: decision.power,
            state: reading.ok(),
            events,
        }
    }

    /// The guard (configuration, last request, last applied power).
    pub fn guard(&self) -> &SafetyGuard {
        &self.guard
    }

    /// The wrapped battery, read-only (e.g. a simulator's true state).
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped battery, mutably: for a simulator's `step` or fault injection. Commands sent
    /// through it bypass the guard.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Unwraps the battery.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BatteryMonitor;
    use crate::sim::{Fault, SimBattery, SimConfig};
    use grid_core::BatteryParams;

    fn spec() -> BatterySpec {
        BatterySpec::new(BatteryParams {
            min_temperature_c: Some(0.0),
            max_temperature_c: Some(50.0),
            ramp_limit_kw_per_min: Some(60.0),
            ..BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)
        })
        .unwrap()
    }

    fn state(soc: f64, temp: f64) -> BatteryState {
        BatteryState {
            soc: Soc::from_fraction(soc).unwrap(),
            voltage_v: 50.0,
            current_a: 0.0,
            power: Power::ZERO,
            temperature: Temperature::from_celsius(temp).unwrap(),
            alarms: Alarms::NONE,
        }
    }

    fn p(kw: f64) -> Power {
        Power::from_kw(kw).unwrap()
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn ramp_limits_increases_but_not_stops() {
        let mut g = SafetyGuard::new(&spec(), SafetyConfig::for_spec(&spec())).unwrap();
        assert_eq!(g.config().ramp_kw_per_s, Some(1.0));
        g.request(s(0), p(5.0));
        assert_eq!(g.decide(s(0), Ok(&state(0.5, 20.0))).power, Power::ZERO);
        let d = g.decide(s(2), Ok(&state(0.5, 20.0)));
        assert_eq!(d.power, p(2.0));
        assert_eq!(
            d.events,
            vec![SafetyEvent::RampLimited {
                target: p(5.0),
                applied: p(2.0)
            }]
        );
        g.request(s(2), p(-5.0));
        // Reversing: straight to zero is free, then 1 kW/s away from it.
        assert_eq!(g.decide(s(3), Ok(&state(0.5, 20.0))).power, Power::ZERO);
        assert_eq!(g.decide(s(5), Ok(&state(0.5, 20.0))).power, p(-2.0));
        g.request(s(5), Power::ZERO);
        assert_eq!(g.decide(s(5), Ok(&state(0.5, 20.0))).power, Power::ZERO);
    }

    #[test]
    fn soc_window_with_margin_and_full_flags() {
        let cfg = SafetyConfig {
            ramp_kw_per_s: None,
            ..SafetyConfig::for_spec(&spec())
        };
        let mut g = SafetyGuard::new(&spec(), cfg).unwrap();
        g.request(s(0), p(3.0));
        let d = g.decide(s(0), Ok(&state(0.885, 20.0)));
        assert_eq!(d.power, Power::ZERO);
        assert!(matches!(
            d.events[..],
            [SafetyEvent::Limited {
                reason: LimitReason::SocWindow { .. },
                ..
            }]
        ));
        // Hysteresis: blocked until the SoC is 1 point inside the limit again.
        assert_eq!(g.decide(s(1), Ok(&state(0.875, 20.0))).power, Power::ZERO);
        assert_eq!(g.decide(s(1), Ok(&state(0.871, 20.0))).power, Power::ZERO);
        assert_eq!(g.decide(s(1), Ok(&state(0.869, 20.0))).power, p(3.0));
        assert_eq!(g.decide(s(1), Ok(&state(0.875, 20.0))).power, p(3.0));
        let mut full = state(0.5, 20.0);
        full.alarms = Alarms::FULLY_CHARGED;
        assert_eq!(g.decide(s(2), Ok(&full)).power, Power::ZERO);
        g.request(s(3), p(-3.0));
        assert_eq!(
            g.decide(s(3), Ok(&full)).power,
            p(-3.0),
            "full only stops charging"
        );
        assert_eq!(g.decide(s(4), Ok(&state(0.115, 20.0))).power, Power::ZERO);
        assert_eq!(g.decide(s(5), Ok(&state(0.125, 20.0))).power, Power::ZERO);
        assert_eq!(g.decide(s(5), Ok(&state(0.131, 20.0))).power, p(-3.0));
    }

    #[test]
    fn temperature_derating_cutoff_and_alarms() {
        let cfg = SafetyConfig {
            ramp_kw_per_s: None,
            ..SafetyConfig::for_spec(&spec())
        };
        let mut g = SafetyGuard::new(&spec(), cfg).unwrap();
        g.request(s(0), p(-5.0));
        let d = g.decide(s(0), Ok(&state(0.5, 45.0)));
        assert_eq!(d.power, p(-2.5), "halfway into the 10 K band");
        assert!(matches!(
            d.events[..],
            [SafetyEvent::Limited {
                reason: LimitReason::TemperatureDerating { .. },
                ..
            }]
        ));
        assert_eq!(g.decide(s(1), Ok(&state(0.5, 50.0))).power, Power::ZERO);
        assert_eq!(g.decide(s(2), Ok(&state(0.5, -1.0))).power, Power::ZERO);
        assert_eq!(g.decide(s(3), Ok(&state(0.5, 20.0))).power, p(-5.0));
        let mut alarm = state(0.5, 20.0);
        alarm.alarms = Alarms::OVER_CURRENT;
        let d = g.decide(s(4), Ok(&alarm));
        assert_eq!(d.power, Power::ZERO);
        assert!(matches!(
            d.events[..],
            [SafetyEvent::Limited {
                reason: LimitReason::Alarm { .. },
                ..
            }]
        ));
    }

    #[test]
    fn sensor_errors_and_stuck_readings_force_idle() {
        let cfg = SafetyConfig {
            ramp_kw_per_s: None,
            stale_after: Some(3),
            ..SafetyConfig::for_spec(&spec())
        };
        let mut g = SafetyGuard::new(&spec(), cfg).unwrap();
        g.request(s(0), p(2.0));
        let d = g.decide(s(0), Err(ErrorKind::Bus));
        assert_eq!(d.power, Power::ZERO);
        assert_eq!(
            d.events,
            vec![SafetyEvent::SensorError {
                kind: ErrorKind::Bus
            }]
        );
        let mut nan = state(0.5, 20.0);
        nan.voltage_v = f64::NAN;
        assert_eq!(g.decide(s(1), Ok(&nan)).power, Power::ZERO);
        let same = state(0.5, 20.0);
        for t in 2..5 {
            assert_eq!(g.decide(s(t), Ok(&same)).power, p(2.0), "t={t}");
        }
        let d = g.decide(s(5), Ok(&same));
        assert_eq!(
            (d.power, &d.events[..]),
            (Power::ZERO, &[SafetyEvent::ImplausibleReading][..])
        );
    }

    #[test]
    fn watchdog_reverts_to_the_configured_fallback_once_per_expiry() {
        let cfg = SafetyConfig {
            ramp_kw_per_s: None,
            watchdog_timeout: s(10),
            fallback: p(-1.0),
            ..SafetyConfig::for_spec(&spec())
        };
        let mut g = SafetyGuard::new(&spec(), cfg).unwrap();
        let d = g.decide(s(0), Ok(&state(0.5, 20.0)));
        assert_eq!(d.power, p(-1.0));
        assert_eq!(
            d.events,
            vec![SafetyEvent::WatchdogExpired {
                since_last_request: None
            }]
        );
        g.request(s(1), p(4.0));
        assert_eq!(
            g.decide(s(11), Ok(&state(0.5, 20.0))).power,
            p(4.0),
            "exactly at the timeout still valid"
        );
        let d = g.decide(s(12), Ok(&state(0.5, 20.0)));
        assert_eq!(d.power, p(-1.0));
        assert_eq!(
            d.events,
            vec![SafetyEvent::WatchdogExpired {
                since_last_request: Some(s(11))
            }]
        );
        assert!(g.decide(s(13), Ok(&state(0.5, 20.0))).events.is_empty());
        // The fallback obeys the envelope too.
        assert_eq!(g.decide(s(14), Ok(&state(0.11, 20.0))).power, Power::ZERO);
    }

    #[test]
    fn bad_config_names_the_field() {
        let base = SafetyConfig::for_spec(&spec());
        let e = SafetyGuard::new(
            &spec(),
            SafetyConfig {
                soc_margin: 0.6,
                ..base
            },
        )
        .unwrap_err();
        assert!(matches!(
            e,
            crate::Error::InvalidConfig {
                field: "safety.soc_margin",
                ..
            }
        ));
        let e = SafetyGuard::new(
            &spec(),
            SafetyConfig {
                watchdog_timeout: Duration::ZERO,
                ..base
            },
        )
        .unwrap_err();
        assert!(matches!(
            e,
            crate::Error::InvalidConfig {
                field: "safety.watchdog_timeout",
                ..
            }
        ));
        let e = SafetyGuard::new(
            &spec(),
            SafetyConfig {
                ramp_kw_per_s: Some(f64::NAN),
                ..base
            },
        )
        .unwrap_err();
        assert!(matches!(
            e,
            crate::Error::InvalidConfig {
                field: "safety.ramp_kw_per_s",
                ..
            }
        ));
    }

    #[test]
    fn safe_battery_stops_an_overheating_simulated_battery() {
        let sim = SimBattery::new(spec(), SimConfig::default()).unwrap();
        let mut bat = SafeBattery::new(sim, &spec(), SafetyConfig::for_spec(&spec())).unwrap();
        for t in 0..30 {
            let r = bat.command(s(t), p(4.0));
            assert!(
                r.events
                    .iter()
                    .all(|e| matches!(e, SafetyEvent::RampLimited { .. })),
                "{:?}",
                r.events
            );
            bat.inner_mut().step(s(1));
        }
        assert!((bat.inner().power().kw() - 4.0).abs() < 1e-9);
        bat.inner_mut()
            .inject(Fault::OverTemperature {
                temperature: Temperature::from_celsius(60.0).unwrap(),
            })
            .unwrap();
        let r = bat.command(s(30), p(4.0));
        assert_eq!(r.applied, Power::ZERO);
        bat.inner_mut().step(s(1));
        assert_eq!(bat.inner().power(), Power::ZERO);
        bat.inner_mut().clear_faults();
        bat.inner_mut()
            .inject(Fault::BusErrors { probability: 1.0 })
            .unwrap();
        let r = bat.command(s(31), p(4.0));
        assert_eq!(
            r.events,
            vec![
                SafetyEvent::SensorError {
                    kind: ErrorKind::Bus
                },
                SafetyEvent::WriteFailed {
                    kind: ErrorKind::Bus
                },
            ]
        );
        assert!(bat.inner_mut().read_state().is_err());
    }
}
