//! Schedule validation and resampling against hand-computed cases.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use grid_core::*;

fn spec(ramp: Option<f64>) -> BatterySpec {
    BatterySpec::new(BatteryParams {
        ramp_limit_kw_per_min: ramp,
        ..BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)
    })
    .unwrap()
}

fn schedule(kws: &[f64], slot: SlotLength, spec: &BatterySpec, initial: f64) -> Schedule {
    let horizon = Horizon::new("2026-11-27T00:00:00Z".parse().unwrap(), slot, kws.len()).unwrap();
    let setpoints = kws.iter().map(|&k| Power::from_kw(k).unwrap()).collect();
    Schedule::planned(
        ScheduleId::new("s").unwrap(),
        DeviceId::new("d").unwrap(),
        ScheduleVersion(3),
        horizon,
        setpoints,
        spec,
        Energy::from_kwh(initial).unwrap(),
        horizon.start(),
    )
    .unwrap()
}

#[test]
fn violations_name_slot_limit_and_excess() {
    let spec = spec(None);
    // 1 h slots from 8.5 kWh: charging 1 kW stores 0.95 kWh -> 9.45 > 9.0 at slot 0.
    let s = schedule(&[1.0, -6.0, -5.0, -5.0], SlotLength::HOUR, &spec, 8.5);
    let v = s
        .validate(&spec, Energy::from_kwh(8.5).unwrap())
        .unwrap_err()
        .0;
    assert_eq!(v[0].slot, 0);
    assert_eq!(v[0].kind, ViolationKind::MaxEnergy);
    assert!((v[0].excess() - 0.45).abs() < 1e-9);
    assert_eq!(v[1].slot, 1);
    assert_eq!(v[1].kind, ViolationKind::DischargePower);
    assert!((v[1].excess() - 1.0).abs() < 1e-9);
    assert!(
        v.iter()
            .any(|x| x.kind == ViolationKind::MinEnergy && x.slot == 2)
    );
    assert!(
        v[0].to_string()
            .starts_with("slot 0: stored energy above the maximum")
    );
}

#[test]
fn ramp_limit_is_per_slot_length() {
    // 0.1 kW/min over 15 min allows 1.5 kW steps.
    let spec = spec(Some(0.1));
    let ok = schedule(&[0.0, 1.5, 0.0], SlotLength::QUARTER_HOUR, &spec, 5.0);
    assert!(ok.validate(&spec, Energy::from_kwh(5.0).unwrap()).is_ok());
    let bad = schedule(&[0.0, 1.6, 0.0], SlotLength::QUARTER_HOUR, &spec, 5.0);
    let v = bad
        .validate(&spec, Energy::from_kwh(5.0).unwrap())
        .unwrap_err()
        .0;
    assert_eq!(v.len(), 2);
    assert!(v.iter().all(|x| x.kind == ViolationKind::Ramp));
}

#[test]
fn initial_energy_outside_the_window_is_a_violation() {
    let spec = spec(None);
    let s = schedule(&[0.0], SlotLength::HOUR, &spec, 0.5);
    let v = s
        .validate(&spec, Energy::from_kwh(0.5).unwrap())
        .unwrap_err()
        .0;
    assert_eq!(v[0].kind, ViolationKind::InitialEnergy);
}

#[test]
fn schedule_parts_are_checked() {
    let spec = spec(None);
    let s = schedule(&[1.0, 2.0], SlotLength::HOUR, &spec, 5.0);
    let mut parts = s.parts().clone();
    parts.setpoints.pop();
    assert!(matches!(
        Schedule::new(parts),
        Err(Error::LengthMismatch {
            field: "schedule.setpoints",
            expected: 2,
            actual: 1
        })
    ));
    let mut parts = s.parts().clone();
    parts.expires_at = parts.created_at;
    assert!(Schedule::new(parts).is_err());
}

#[test]
fn setpoint_lookup_and_expiry() {
    let spec = spec(None);
    let s = schedule(&[1.0, 2.0], SlotLength::HOUR, &spec, 5.0);
    let t = |x: &str| x.parse::<Timestamp>().unwrap();
    assert_eq!(s.setpoint_at(t("2026-11-27T01:30:00Z")).unwrap().kw(), 2.0);
    assert_eq!(s.setpoint_at(t("2026-11-27T02:00:00Z")), None);
    assert!(s.is_live(t("2026-11-27T01:59:59Z")));
    let mid = s
        .expected()
        .at(s.horizon(), t("2026-11-27T00:30:00Z"))
        .unwrap();
    assert!((mid.kwh() - (5.0 + 0.5 * 0.95)).abs() < 1e-9);
}

#[test]
fn resampling_rejects_incompatible_lengths() {
    let spec = spec(None);
    let s = schedule(&[1.0, 2.0, 3.0], SlotLength::QUARTER_HOUR, &spec, 5.0);
    // 45 minutes cannot be cut into whole hours.
    assert!(s.resample(SlotLength::HOUR).is_err());
    let fine = s.resample(SlotLength::FIVE_MINUTES).unwrap();
    assert_eq!(fine.horizon().len(), 9);
    assert!((fine.net_energy().kwh() - s.net_energy().kwh()).abs() < 1e-12);
}
