//! Property tests of the safety layer: for any sequence of requested setpoints, sensor readings and
//! errors, the setpoint sent to the hardware stays inside the envelope and the watchdog fires in time.
//!
//! 10,000 cases by default; the long run is
//! `PROPTEST_CASES=1000000 cargo test -p grid-hal --release safety`.

// Helpers outside #[test] fns: an invalid generated spec is a test failure.
#![allow(clippy::unwrap_used)]

use core::time::Duration;
use grid_core::{Alarms, BatteryParams, BatterySpec, Power, Soc, Temperature};
use grid_hal::{
    BatteryController, BatteryMonitor, BatteryState, ErrorKind, ErrorType, SafeBattery,
    SafetyConfig, SafetyEvent,
};
use proptest::prelude::*;

const EPS: f64 = 1e-9;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Hardware whose readings the test scripts, recording every setpoint written.
struct Scripted {
    next: Result<BatteryState, ErrorKind>,
    written: Vec<Power>,
    write_fails: bool,
}

impl ErrorType for Scripted {
    type Error = ErrorKind;
}

impl BatteryMonitor for Scripted {
    fn read_state(&mut self) -> Result<BatteryState, ErrorKind> {
        self.next
    }
}

impl BatteryController for Scripted {
    fn set_power(&mut self, power: Power) -> Result<(), ErrorKind> {
        self.written.push(power);
        if self.write_fails {
            Err(ErrorKind::Bus)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    advance_ms: u64,
    request_kw: Option<f64>,
    reading: Result<BatteryState, ErrorKind>,
    write_fails: bool,
}

#[derive(Debug, Clone)]
struct Case {
    params: BatteryParams,
    soc_margin: f64,
    soc_hysteresis: f64,
    derate_band_c: f64,
    ramp_kw_per_s: Option<f64>,
    watchdog_s: u64,
    steps: Vec<Step>,
}

fn reading() -> impl Strategy<Value = Result<BatteryState, ErrorKind>> {
    let state = (
        0.0..=1.0f64,
        -30.0..80.0f64,
        any::<u32>(),
        prop::bool::weighted(0.03),
        -60.0..60.0f64,
    )
        .prop_map(|(soc, t, alarm_bits, nan, kw)| {
            // Mostly no alarm; sometimes one of grid-core's ten flags.
            let alarms = if alarm_bits % 4 == 0 {
                Alarms(1 << (alarm_bits / 4 % 10))
            } else {
                Alarms::NONE
            };
            BatteryState {
                soc: Soc::from_fraction(soc).unwrap(),
                voltage_v: if nan { f64::NAN } else { 50.0 },
                current_a: kw * 20.0,
                power: Power::from_kw(kw).unwrap(),
                temperature: Temperature::from_celsius(t).unwrap(),
                alarms,
            }
        });
    prop_oneof![
        10 => state.prop_map(Ok),
        1 => prop_oneof![Just(ErrorKind::Bus), Just(ErrorKind::Timeout), Just(ErrorKind::Integrity)].prop_map(Err),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![3 => 0..3_000u64, 1 => 0..200_000u64],
        prop::option::weighted(0.5, -60.0..60.0f64),
        reading(),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(advance_ms, request_kw, reading, write_fails)| Step {
            advance_ms,
            request_kw,
            reading,
            write_fails,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            1.0..50.0f64,
            0.0..0.4f64,
            0.6..=1.0f64,
            0.0..20.0f64,
            0.0..20.0f64,
        ),
        prop::option::of((-25.0..5.0f64, 30.0..70.0f64)),
        (
            0.0..0.1f64,
            0.0..0.05f64,
            0.0..20.0f64,
            prop::option::of(0.01..10.0f64),
            1..300u64,
        ),
        prop::collection::vec(step(), 1..40),
    )
        .prop_map(
            |(
                (cap, min_soc, max_soc, ch, dis),
                temps,
                (soc_margin, soc_hysteresis, derate_band_c, ramp, watchdog_s),
                steps,
            )| {
                let mut params = BatteryParams::with_soc_window(cap, min_soc, max_soc, 0.0);
                params.max_charge_kw = ch;
                params.max_discharge_kw = dis;
                params.min_temperature_c = temps.map(|t| t.0);
                params.max_temperature_c = temps.map(|t| t.1);
                Case {
                    params,
                    soc_margin,
                    soc_hysteresis,
                    derate_band_c,
                    ramp_kw_per_s: ramp,
                    watchdog_s,
                    steps,
                }
            },
        )
}

/// The SoC latches the safety layer keeps (charging / discharging stopped at the limit until the SoC
/// is `soc_hysteresis` inside it again), tracked independently of the implementation.
#[derive(Default)]
struct Latches {
    charge_blocked: bool,
    discharge_blocked: bool,
}

/// The envelope computed independently of the implementation: `(lo, hi)` in kW.
fn oracle_envelope(
    spec: &BatterySpec,
    cfg: &SafetyConfig,
    latches: &mut Latches,
    r: &Result<BatteryState, ErrorKind>,
) -> (f64, f64) {
    let Ok(s) = r else { return (0.0, 0.0) };
    if !s.voltage_v.is_finite() || !s.current_a.is_finite() {
        return (0.0, 0.0);
    }
    let soc = s.soc.fraction();
    let top = spec.max_soc().fraction() - cfg.soc_margin;
    let bottom = spec.min_soc().fraction() + cfg.soc_margin;
    if soc >= top || s.alarms.contains(Alarms::FULLY_CHARGED) {
        latches.charge_blocked = true;
    } else if soc < top - cfg.soc_hysteresis {
        latches.charge_blocked = false;
    }
    if soc <= bottom || s.alarms.contains(Alarms::FULLY_DISCHARGED) {
        latches.discharge_blocked = true;
    } else if soc > bottom + cfg.soc_hysteresis {
        latches.discharge_blocked = false;
    }
    if s.alarms.is_critical() {
        return (0.0, 0.0);
    }
    let t = s.temperature.celsius();
    let (tmin, tmax) = (cfg.min_temperature.celsius(), cfg.max_temperature.celsius());
    if t < tmin || t >= tmax {
        return (0.0, 0.0);
    }
    let factor = if cfg.derate_band_c > 0.0 {
        ((tmax - t) / cfg.derate_band_c).min(1.0)
    } else {
        1.0
    };
    let mut hi = spec.max_charge().kw() * factor;
    let mut lo = -spec.max_discharge().kw() * factor;
    // The hard limits hold whatever the latches say.
    if soc >= top || latches.charge_blocked {
        hi = 0.0;
    }
    if soc <= bottom || latches.discharge_blocked {
        lo = 0.0;
    }
    (lo, hi)
}

fn run(c: &Case) -> Result<(), TestCaseError> {
    let spec = BatterySpec::new(c.params).unwrap();
    let cfg = SafetyConfig {
        soc_margin: c.soc_margin,
        soc_hysteresis: c.soc_hysteresis,
        derate_band_c: c.derate_band_c,
        ramp_kw_per_s: c.ramp_kw_per_s,
        watchdog_timeout: Duration::from_secs(c.watchdog_s),
        ..SafetyConfig::for_spec(&spec)
    };
    let hw = Scripted {
        next: Err(ErrorKind::Bus),
        written: Vec::new(),
        write_fails: false,
    };
    let mut bat = SafeBattery::new(hw, &spec, cfg).unwrap();
    let mut now = Duration::from_secs(1_000);
    let mut prev = 0.0f64;
    let mut prev_now: Option<Duration> = None;
    let mut last_request: Option<(f64, Duration)> = None;
    let mut expired_reported = false;
    let mut latches = Latches::default();
    for st in &c.steps {
        now += Duration::from_millis(st.advance_ms);
        bat.inner_mut().next = st.reading;
        bat.inner_mut().write_fails = st.write_fails;
        let report = match st.request_kw {
            Some(kw) => {
                last_request = Some((kw, now));
                expired_reported = false;
                bat.command(now, Power::from_kw(kw).unwrap())
            }
            None => bat.tick(now),
        };
        let applied = report.applied.kw();
        // What reached the hardware is exactly what the guard approved, once per tick.
        prop_assert_eq!(bat.inner().written.last().copied(), Some(report.applied));

        // Envelope.
        let (lo, hi) = oracle_envelope(&spec, &cfg, &mut latches, &st.reading);
        prop_assert!(
            applied >= lo - EPS && applied <= hi + EPS,
            "applied {} outside [{}, {}]",
            applied,
            lo,
            hi
        );

        // Ramp: at most r·dt away from the previous value, unless moving towards zero.
        if let Some(r) = c.ramp_kw_per_s {
            let dt = prev_now.map_or(0.0, |p| now.saturating_sub(p).as_secs_f64());
            let towards_zero = applied * prev >= 0.0 && applied.abs() <= prev.abs() + EPS;
            prop_assert!(
                towards_zero || (applied - prev).abs() <= r * dt + 1e-6,
                "ramp: {} -> {} in {} s at {} kW/s",
                prev,
                applied,
                dt,
                r
            );
        }

        // Watchdog: with no valid request, the fallback (idle) applies, reported once per expiry.
        let valid = last_request.filter(|(_, at)| now.saturating_sub(*at) <= cfg.watchdog_timeout);
        let fired = report
            .events
            .iter()
            .any(|e| matches!(e, SafetyEvent::WatchdogExpired { .. }));
        match valid {
            None => {
                prop_assert_eq!(applied, 0.0, "watchdog expired but {} kW applied", applied);
                prop_assert_eq!(fired, !expired_reported, "watchdog event once per expiry");
                expired_reported = true;
            }
            Some((req, _)) => {
                prop_assert!(!fired);
                // Liveness: without a ramp limit, a valid request is applied, cut only to the envelope.
                if c.ramp_kw_per_s.is_none() {
                    prop_assert!(
                        (applied - req.clamp(lo, hi)).abs() <= EPS,
                        "wanted {} in [{}, {}], got {}",
                        req,
                        lo,
                        hi,
                        applied
                    );
                }
            }
        }

        // Every intervention is reported.
        if st.reading.is_err() {
            let reported = report
                .events
                .iter()
                .any(|e| matches!(e, SafetyEvent::SensorError { .. }));
            prop_assert!(reported, "sensor error not reported");
        }
        if st.write_fails {
            let reported = report.events.iter().any(|e| {
                matches!(
                    e,
                    SafetyEvent::WriteFailed {
                        kind: ErrorKind::Bus
                    }
                )
            });
            prop_assert!(reported, "write failure not reported");
        }
        if let Some((req, _)) = valid.filter(|(req, _)| (applied - req).abs() > EPS) {
            prop_assert!(
                !report.events.is_empty(),
                "silent intervention: wanted {}, applied {}",
                req,
                applied
            );
        }
        prev = applied;
        prev_now = Some(now);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn safety_setpoints_stay_in_the_envelope_and_the_watchdog_fires(c in case()) {
        run(&c)?;
    }
}
