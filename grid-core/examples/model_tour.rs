//! A tour of the scheduling model: a battery, a time-of-use tariff, a naive charge-cheap /
//! discharge-expensive plan, its validation against the battery's envelope, and resampling.
//!
//! Run with `cargo run -p grid-core --example model_tour`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_core::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = BatterySpec::new(BatteryParams {
        degradation_cost_per_kwh: 0.02,
        ramp_limit_kw_per_min: Some(1.0),
        ..BatteryParams::with_soc_window(13.5, 0.1, 0.95, 5.0)
    })?;
    println!(
        "battery: {:.1} kWh usable ({} .. {}), ±{} / {}",
        (spec.max_energy() - spec.min_energy()).kwh(),
        spec.min_soc(),
        spec.max_soc(),
        spec.max_charge(),
        spec.max_discharge()
    );

    let p = PricePerKwh::from_per_kwh;
    let tariff = TimeOfUseTariff::new(
        "Europe/Berlin",
        p(0.32)?,
        p(0.08)?,
        vec![
            TouWindow {
                start: "00:00".parse()?,
                end: "06:00".parse()?,
                days: Weekdays::ALL,
                import: p(0.19)?,
                export: p(0.08)?,
            },
            TouWindow {
                start: "17:00".parse()?,
                end: "21:00".parse()?,
                days: Weekdays::WORKDAYS,
                import: p(0.45)?,
                export: p(0.08)?,
            },
        ],
    )?;
    // The local day in Berlin, in UTC slots of 15 minutes.
    let horizon = Horizon::new(
        "2026-11-26T23:00:00Z".parse()?,
        SlotLength::QUARTER_HOUR,
        96,
    )?;
    let prices = tariff.expand(&horizon)?;

    // Naive plan: charge at 3 kW when cheap, discharge at 4 kW in the evening peak.
    let setpoints: Vec<Power> = prices
        .import
        .values()
        .iter()
        .map(|price| match price.per_kwh() {
            x if x < 0.2 => Power::from_kw(3.0),
            x if x > 0.4 => Power::from_kw(-4.0),
            _ => Ok(Power::ZERO),
        })
        .collect::<Result<_, _>>()?;
    let initial = Energy::from_kwh(2.0)?;
    let schedule = Schedule::planned(
        ScheduleId::new("tour-1")?,
        DeviceId::new("home-battery-1")?,
        ScheduleVersion(1),
        horizon,
        setpoints,
        &spec,
        initial,
        horizon.start(),
    )?;

    match schedule.validate(&spec, initial) {
        Ok(trajectory) => println!(
            "plan accepted: ends at {:.2} kWh",
            trajectory.final_energy().kwh()
        ),
        Err(violations) => {
            println!("plan rejected with {} violation(s):", violations.0.len());
            for v in violations.0.iter().take(3) {
                println!("  {v}");
            }
        }
    }

    let cost: f64 = schedule
        .setpoints()
        .iter()
        .zip(prices.import.values())
        .map(|(p, price)| p.over_hours(horizon.slot_length().hours()).kwh() * price.per_kwh())
        .sum();
    println!("energy cost of the battery's own flows: {cost:.2} EUR");

    let hourly = schedule.resample(SlotLength::HOUR)?;
    println!(
        "resampled to {} hourly slots; net energy {:.3} kWh before, {:.3} kWh after",
        hourly.horizon().len(),
        schedule.net_energy().kwh(),
        hourly.net_energy().kwh()
    );

    let mut state = ExecutionState::Queued;
    for event in [
        LifecycleEvent::Deliver,
        LifecycleEvent::Accept,
        LifecycleEvent::Start,
        LifecycleEvent::Complete,
    ] {
        state = state.apply(event)?;
        print!("{state} ");
    }
    println!();
    Ok(())
}
