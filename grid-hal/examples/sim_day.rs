//! A simulated day of one battery behind the safety layer: a naive schedule (charge at night,
//! discharge in the evening), an over-temperature fault at noon and a silent controller in the
//! afternoon, with every safety intervention printed. Run with
//! `cargo run -p grid-hal --example sim_day`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use core::time::Duration;
use grid_core::{BatteryParams, BatterySpec, Power, Soc, Temperature};
use grid_hal::{Fault, SafeBattery, SafetyConfig, SafetyEvent, SimBattery, SimConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = BatterySpec::new(BatteryParams {
        ramp_limit_kw_per_min: Some(30.0),
        max_temperature_c: Some(45.0),
        min_temperature_c: Some(0.0),
        ..BatteryParams::with_soc_window(13.5, 0.1, 0.9, 5.0)
    })?;
    let sim = SimBattery::new(
        spec.clone(),
        SimConfig {
            seed: 1,
            initial_soc: Soc::from_fraction(0.3)?,
            ..SimConfig::default()
        },
    )?;
    let mut battery = SafeBattery::new(sim, &spec, SafetyConfig::for_spec(&spec))?;
    // Print each kind of intervention when it starts, not on every second it lasts.
    let mut previous: Vec<String> = Vec::new();
    for second in 0..86_400u64 {
        let now = Duration::from_secs(second);
        let hour = second / 3600;
        if second == 12 * 3600 {
            battery.inner_mut().inject(Fault::OverTemperature {
                temperature: Temperature::from_celsius(50.0)?,
            })?;
        }
        if second == 13 * 3600 {
            battery.inner_mut().clear_faults();
        }
        // The controller goes silent between 14:00 and 16:00: the watchdog takes over.
        let report = if (14..16).contains(&hour) {
            battery.tick(now)
        } else {
            let kw = match hour {
                0..=5 => 4.0,
                17..=21 => -4.0,
                _ => 0.5,
            };
            battery.command(now, Power::from_kw(kw)?)
        };
        let kinds: Vec<String> = report.events.iter().map(kind).collect();
        for (e, kind) in report.events.iter().zip(&kinds) {
            if !previous.contains(kind) {
                println!(
                    "{:02}:{:02}:{:02} {:?}",
                    hour,
                    second / 60 % 60,
                    second % 60,
                    e
                );
            }
        }
        previous = kinds;
        battery.inner_mut().step(Duration::from_secs(1));
        if second % 3600 == 3599 {
            let b = battery.inner();
            println!(
                "{:02}:59:59 SoC {:5.1} %  power {:5.2} kW  temperature {:4.1} °C",
                hour,
                b.soc().percent(),
                b.power().kw(),
                b.temperature().celsius()
            );
        }
    }
    Ok(())
}

/// The kind of an event, with the reason for a limit (the values change every second).
fn kind(e: &SafetyEvent) -> String {
    match e {
        SafetyEvent::Limited { reason, .. } => format!("{:?}", core::mem::discriminant(reason)),
        other => format!("{:?}", core::mem::discriminant(other)),
    }
}
