//! Forecasting speed: training on a year of 15-minute data, and one day-ahead forecast of a trained model.
//!
//! The year is built from the shipped SimBench household slice (`data/`), repeated to 365 days with a
//! deterministic perturbation, so the bench needs nothing outside the repository. The training bench times
//! the whole [`train`] call (features, five candidate models, selection, calibration, refit); the forecast
//! bench times `forecast_day_into` (features + model + intervals for the 96 slots of one day).
//!
//! For instruction counts (callgrind is repeatable where wall-clock times on a shared machine are not),
//! `FORECAST_DAY_AHEAD_RUNS=N` runs N forecasts of the bench's model instead of criterion; with
//! `FORECAST_MODEL_JSON=path` the trained model is read from `path` (written there if absent), so the
//! training is not run under the profiler. The difference between two runs is the cost of the forecasts:
//! `valgrind --tool=callgrind FORECAST_DAY_AHEAD_RUNS=1000 <bench binary>` and the same with 2000.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use criterion::{Criterion, criterion_group};
use grid_optimize::forecast::SeriesKind;
use grid_optimize::forecast::model::{
    DayForecast, ForecastModel, ForecastScratch, TrainConfig, train,
};
use grid_optimize::forecast::series::{Series, parse_csv};
use std::hint::black_box;
use std::time::Duration;

fn year_of_household_load() -> Series {
    let path = format!(
        "{}/../data/load_simbench_h0a_g0a_2016_q4_15min.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("the shipped data slice exists");
    let s = parse_csv(&text, "H0-A_pload").expect("the slice parses");
    let spd = s.slots_per_day();
    let days = s.n_days() - 1;
    let mut v = Vec::with_capacity(365 * spd);
    for d in 0..365 {
        let src = &s.values[(d % days) * spd..(d % days + 1) * spd];
        let season = 1.0 + 0.2 * ((d as f64) / 365.0 * std::f64::consts::TAU).cos();
        v.extend(src.iter().enumerate().map(|(i, x)| {
            x * season * (1.0 + 0.05 * (((d * 97 + i * 31) % 17) as f64 / 17.0 - 0.5))
        }));
    }
    Series::from_values("H0-A year", s.first_day - 365 + 84, s.step_seconds, v)
        .expect("valid series")
}

fn train_config(s: &Series) -> TrainConfig {
    TrainConfig {
        kind: SeriesKind::Load,
        country: Some("DE".parse().expect("known country")),
        location: None,
        train_end_day: s.first_day + 365,
        validation_days: None,
    }
}

/// `runs` forecasts of the bench's day, for instruction counts (see the top of the file).
fn count_runs(runs: usize) {
    let s = year_of_household_load();
    let cfg = train_config(&s);
    let end = cfg.train_end_day;
    let model: ForecastModel = match std::env::var_os("FORECAST_MODEL_JSON") {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(json) => serde_json::from_str(&json).expect("a saved model"),
            Err(_) => {
                let m = train(&s, &cfg, &mut |_| {}).expect("trains");
                std::fs::write(&path, serde_json::to_string(&m).expect("serialises"))
                    .expect("writable model path");
                m
            }
        },
        None => train(&s, &cfg, &mut |_| {}).expect("trains"),
    };
    let history = s.history_before(end);
    let mut scratch = ForecastScratch::default();
    let mut out = DayForecast::default();
    for _ in 0..runs {
        model.forecast_day_into(black_box(history), end, &mut scratch, &mut out);
        black_box(&out);
    }
    // Hashes of the forecasts' bit patterns, to check that a change keeps the forecasts identical: the bench's
    // day, and the 28 days up to it.
    let hash = |h: u64, f: &DayForecast| {
        [&f.p10, &f.p50, &f.p90, &f.scale]
            .into_iter()
            .flatten()
            .fold(h, |h, v| h.rotate_left(5) ^ v.to_bits())
    };
    let day = hash(0, &out);
    let days = (end - 27..=end).fold(0, |h, d| {
        model.forecast_day_into(s.history_before(d), d, &mut scratch, &mut out);
        hash(h, &out)
    });
    println!(
        "{runs} forecasts of {}, hash of P10/P50/P90/scale {day:016x}, of 28 days {days:016x}",
        model.metadata.model_kind
    );
}

fn bench(c: &mut Criterion) {
    let s = year_of_household_load();
    let cfg = train_config(&s);
    let end = cfg.train_end_day;
    let mut g = c.benchmark_group("forecast");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(60))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("train_one_year_15min", |b| {
        b.iter(|| black_box(train(&s, &cfg, &mut |_| {}).expect("trains")))
    });
    g.finish();

    let model = train(&s, &cfg, &mut |_| {}).expect("trains");
    let history = s.history_before(end);
    let mut scratch = ForecastScratch::default();
    let mut out = DayForecast::default();
    let mut g = c.benchmark_group("forecast");
    g.bench_function(
        format!("day_ahead_96_slots_{}", model.metadata.model_kind),
        |b| {
            b.iter(|| {
                model.forecast_day_into(black_box(history), end, &mut scratch, &mut out);
                black_box(&out);
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Some(runs) = std::env::var("FORECAST_DAY_AHEAD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        count_runs(runs);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
