//! Cost of the battery simulator at fleet scale: 10,000 `SimBattery`s advanced by one 1 s step.
//! The budget is 5 % of one core, i.e. < 50 ms per simulated second for the whole fleet.
//!
//! `step_10k` is the physics alone; `step_read_10k` adds one noisy `read_state` per battery (what an
//! agent does every second); `safe_tick_10k` runs each battery behind a `SafeBattery` (read,
//! decide, write) and then steps it, the full per-second loop of the fleet demo.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use core::time::Duration;
use criterion::{Criterion, criterion_group, criterion_main};
use grid_core::{BatteryParams, BatterySpec, Power, Soc};
use grid_hal::{
    BatteryController, BatteryMonitor, SafeBattery, SafetyConfig, SimBattery, SimConfig,
};
use std::hint::black_box;

const FLEET: usize = 10_000;
const DT: Duration = Duration::from_secs(1);

fn fleet() -> (BatterySpec, Vec<SimBattery>) {
    let spec =
        BatterySpec::new(BatteryParams::with_soc_window(13.5, 0.1, 0.9, 5.0)).expect("valid spec");
    let bats = (0..FLEET)
        .map(|i| {
            let cfg = SimConfig {
                seed: i as u64,
                initial_soc: Soc::from_fraction(0.2 + 0.6 * (i as f64 / FLEET as f64))
                    .expect("in [0, 1]"),
                ..SimConfig::default()
            };
            let mut b = SimBattery::new(spec.clone(), cfg).expect("valid config");
            let kw = if i % 2 == 0 { 3.0 } else { -2.0 };
            b.set_power(Power::from_kw(kw).expect("finite"))
                .expect("no faults injected");
            b
        })
        .collect();
    (spec, bats)
}

fn bench(c: &mut Criterion) {
    let (spec, mut bats) = fleet();
    c.bench_function("sim_battery/step_10k", |b| {
        b.iter(|| {
            for bat in bats.iter_mut() {
                bat.step(black_box(DT));
            }
        })
    });

    c.bench_function("sim_battery/step_read_10k", |b| {
        b.iter(|| {
            for bat in bats.iter_mut() {
                bat.step(DT);
                black_box(bat.read_state().ok());
            }
        })
    });

    let (_, fresh) = fleet();
    let mut safe: Vec<SafeBattery<SimBattery>> = fresh
        .into_iter()
        .map(|b| SafeBattery::new(b, &spec, SafetyConfig::for_spec(&spec)).expect("valid config"))
        .collect();
    let mut now = Duration::ZERO;
    c.bench_function("sim_battery/safe_tick_10k", |b| {
        b.iter(|| {
            now += DT;
            for (i, bat) in safe.iter_mut().enumerate() {
                let kw = if i % 2 == 0 { 3.0 } else { -2.0 };
                black_box(bat.command(now, Power::from_kw(kw).expect("finite")));
                bat.inner_mut().step(DT);
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
