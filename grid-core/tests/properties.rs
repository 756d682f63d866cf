//! Property tests of the scheduling model: validated schedules stay in the envelope, resampling
//! conserves energy, the lifecycle never leaves a terminal state, and serde round-trips.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use grid_core::*;
use proptest::prelude::*;

fn start() -> Timestamp {
    "2026-11-27T00:00:00Z".parse().unwrap()
}

prop_compose! {
    fn battery()(cap in 1.0f64..100.0, lo in 0.0f64..0.4, span in 0.2f64..0.6,
                 ch in 0.5f64..20.0, dis in 0.5f64..20.0, eta_c in 0.7f64..1.0, eta_d in 0.7f64..1.0,
                 ramp in prop::option::of(0.01f64..5.0))
        -> BatterySpec {
        BatterySpec::new(BatteryParams {
            capacity_kwh: cap,
            min_energy_kwh: cap * lo,
            max_energy_kwh: cap * (lo + span),
            max_charge_kw: ch,
            max_discharge_kw: dis,
            charge_efficiency: eta_c,
            discharge_efficiency: eta_d,
            degradation_cost_per_kwh: 0.0,
            ramp_limit_kw_per_min: ramp,
            min_temperature_c: None,
            max_temperature_c: None,
        }).unwrap()
    }
}

fn slot_length() -> impl Strategy<Value = SlotLength> {
    prop::sample::select(vec![60u32, 300, 900, 1800, 3600])
        .prop_map(|s| SlotLength::from_seconds(s).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) Whatever `validate` accepts stays inside the SoC and power envelope when an independent
    /// step-by-step simulation (in small sub-steps) replays it.
    #[test]
    fn accepted_schedules_stay_inside_the_envelope(
        spec in battery(),
        slot in slot_length(),
        init_frac in 0.0f64..1.0,
        raw in prop::collection::vec(-1.2f64..1.2, 1..48),
    ) {
        let lo = spec.min_energy().kwh();
        let hi = spec.max_energy().kwh();
        let initial = Energy::from_kwh(lo + (hi - lo) * init_frac).unwrap();
        // Scale so that some schedules are feasible and others are not.
        let setpoints: Vec<Power> = raw.iter().map(|&x| {
            let p = if x >= 0.0 { x * spec.max_charge().kw() } else { x * spec.max_discharge().kw() };
            Power::from_kw(p).unwrap()
        }).collect();
        let horizon = Horizon::new(start(), slot, setpoints.len()).unwrap();
        let schedule = Schedule::planned(ScheduleId::new("s").unwrap(), DeviceId::new("d").unwrap(),
            ScheduleVersion(1), horizon, setpoints.clone(), &spec, initial, start()).unwrap();
        if let Ok(trajectory) = schedule.validate(&spec, initial) {
            let eta_c = spec.charge_efficiency().fraction();
            let eta_d = spec.discharge_efficiency().fraction();
            let sub = 10;
            let dt = slot.hours() / f64::from(sub);
            let mut e = initial.kwh();
            let mut prev: Option<f64> = None;
            for (i, p) in setpoints.iter().enumerate() {
                let p = p.kw();
                prop_assert!(p <= spec.max_charge().kw() + TOLERANCE);
                prop_assert!(-p <= spec.max_discharge().kw() + TOLERANCE);
                if let (Some(r), Some(q)) = (spec.ramp_limit_kw_per_min(), prev) {
                    prop_assert!((p - q).abs() <= r * slot.minutes() + TOLERANCE);
                }
                prev = Some(p);
                for _ in 0..sub {
                    e += if p >= 0.0 { p * eta_c * dt } else { p / eta_d * dt };
                    // Linear within a slot: the sub-steps never leave the window either.
                    prop_assert!(e >= lo - 2.0 * TOLERANCE && e <= hi + 2.0 * TOLERANCE,
                        "slot {i}: {e} outside [{lo}, {hi}]");
                }
                prop_assert!((e - trajectory.end_of_slot[i].kwh()).abs() < 1e-9);
            }
        }
    }

    /// (b) Resampling to a coarser or finer slot length conserves the energy exchanged.
    #[test]
    fn resampling_conserves_energy(
        raw in prop::collection::vec(-5.0f64..5.0, 1..24),
        factor_up in prop::sample::select(vec![1u32, 2, 3, 4]),
        coarser in any::<bool>(),
    ) {
        let spec = BatterySpec::new(BatteryParams::with_soc_window(1000.0, 0.0, 1.0, 10.0)).unwrap();
        // Base slot 15 min; the horizon has a length that divides into the target slots.
        let base = SlotLength::QUARTER_HOUR;
        let n = raw.len() * 4;
        let setpoints: Vec<Power> = (0..n).map(|i| Power::from_kw(raw[i / 4] + (i % 4) as f64 * 0.3).unwrap()).collect();
        let horizon = Horizon::new(start(), base, n).unwrap();
        let s = Schedule::planned(ScheduleId::new("s").unwrap(), DeviceId::new("d").unwrap(),
            ScheduleVersion(1), horizon, setpoints, &spec, Energy::from_kwh(500.0).unwrap(), start()).unwrap();
        let target = if coarser { SlotLength::HOUR } else {
            SlotLength::from_seconds(900 / [1, 3, 5, 15][factor_up as usize - 1]).unwrap()
        };
        let r = s.resample(target).unwrap();
        prop_assert!((r.net_energy().kwh() - s.net_energy().kwh()).abs() < 1e-9);
        prop_assert_eq!(r.horizon().end(), s.horizon().end());
        prop_assert!((r.expected().final_energy().kwh() - s.expected().final_energy().kwh()).abs() < 1e-9);
        // Going back to the original slot length from a finer one is exact.
        if !coarser {
            let back = r.resample(base).unwrap();
            for (a, b) in back.setpoints().iter().zip(s.setpoints()) {
                prop_assert!((a.kw() - b.kw()).abs() < 1e-9);
            }
        }
    }

    /// (c) Whatever the event sequence, once terminal the state never changes, and every step is
    /// either a valid transition or an error that leaves the state unchanged.
    #[test]
    fn lifecycle_never_leaves_a_terminal_state(events in prop::collection::vec(0usize..9, 0..40)) {
        let mut state = ExecutionState::Queued;
        let mut terminal: Option<ExecutionState> = None;
        for e in events {
            let event = LifecycleEvent::ALL[e];
            match state.apply(event) {
                Ok(next) => {
                    prop_assert!(terminal.is_none(), "{state:?} --{event:?}--> {next:?} after terminal");
                    state = next;
                }
                Err(Error::InvalidTransition { from, .. }) => prop_assert_eq!(from, state),
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
            if state.is_terminal() {
                if let Some(t) = terminal { prop_assert_eq!(t, state); }
                terminal = Some(state);
            }
        }
    }
}

#[cfg(feature = "serde")]
mod serde_round_trips {
    use super::*;

    proptest! {
        /// (d) Schedules, specs and telemetry survive a JSON round trip unchanged.
        #[test]
        fn schedule_round_trips(
            spec in battery(),
            raw in prop::collection::vec(-3.0f64..3.0, 1..30),
            version in any::<u64>(),
        ) {
            let setpoints: Vec<Power> = raw.iter().map(|&p| Power::from_kw(p).unwrap()).collect();
            let horizon = Horizon::new(start(), SlotLength::QUARTER_HOUR, setpoints.len()).unwrap();
            let s = Schedule::planned(ScheduleId::new("sched-1").unwrap(), DeviceId::new("dev.1").unwrap(),
                ScheduleVersion(version), horizon, setpoints, &spec, spec.min_energy(), start()).unwrap();
            let json = serde_json::to_string(&s).unwrap();
            let back: Schedule = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &s);
            let spec_json = serde_json::to_string(&spec).unwrap();
            let spec_back: BatterySpec = serde_json::from_str(&spec_json).unwrap();
            prop_assert_eq!(spec_back, spec);
        }

        #[test]
        fn telemetry_and_lifecycle_round_trip(soc in 0.0f64..1.0, p in -10.0f64..10.0, bits in any::<u32>(), s in 0usize..10) {
            let sample = TelemetrySample {
                at: start(), soc: Soc::from_fraction(soc).unwrap(), power: Power::from_kw(p).unwrap(),
                voltage_v: 48.0, current_a: 10.0, temperature: Temperature::from_celsius(25.0).unwrap(),
                alarms: Alarms(bits),
            };
            let back: TelemetrySample = serde_json::from_str(&serde_json::to_string(&sample).unwrap()).unwrap();
            prop_assert_eq!(back, sample);
            let state = ExecutionState::ALL[s];
            let back: ExecutionState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
            prop_assert_eq!(back, state);
        }
    }

    #[test]
    fn deserialization_validates_like_the_constructors() {
        assert!(serde_json::from_str::<Soc>("1.5").is_err());
        assert!(serde_json::from_str::<DeviceId>("\"a/b\"").is_err());
        let err = serde_json::from_str::<BatterySpec>(
            r#"{"capacity_kwh":10,"min_energy_kwh":5,"max_energy_kwh":4,"max_charge_kw":3,
                "max_discharge_kw":3,"charge_efficiency":0.9,"discharge_efficiency":0.9}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("battery.min_energy_kwh"), "{err}");
        let misaligned = r#"{"start":"2026-01-01T00:07:00Z","slot_seconds":900,"slots":4}"#;
        assert!(serde_json::from_str::<Horizon>(misaligned).is_err());
    }
}
