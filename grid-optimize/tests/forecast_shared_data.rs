//! The backtest table of docs/forecasting.md on /work/shared/data (ignored: that directory is not shipped).
//!
//! Run with `cargo test --release -p grid-optimize --test forecast_shared_data -- --ignored --nocapture`;
//! `FORECAST_CASE=<substring>` runs only the matching cases.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::forecast::SeriesKind;
use grid_optimize::forecast::backtest::{BacktestConfig, run};
use std::path::Path;

const DIR: &str = "/work/shared/data";

#[allow(clippy::type_complexity)]
const CASES: &[(
    &str,
    &str,
    &str,
    &str,
    SeriesKind,
    Option<(f64, f64)>,
    Option<&str>,
)] = &[
    (
        "price_de",
        "price_da_de_2015_hourly.csv",
        "value_EUR_per_MWh",
        "2015-11-05",
        SeriesKind::Price,
        None,
        Some("DE"),
    ),
    (
        "H0-A",
        "load_simbench_2016_15min.csv",
        "H0-A_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "H0-B",
        "load_simbench_2016_15min.csv",
        "H0-B_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "H0-C",
        "load_simbench_2016_15min.csv",
        "H0-C_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "H0-G",
        "load_simbench_2016_15min.csv",
        "H0-G_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "H0-H",
        "load_simbench_2016_15min.csv",
        "H0-H_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "H0-L",
        "load_simbench_2016_15min.csv",
        "H0-L_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "G0-A",
        "load_simbench_2016_15min.csv",
        "G0-A_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "G0-M",
        "load_simbench_2016_15min.csv",
        "G0-M_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "G1-A",
        "load_simbench_2016_15min.csv",
        "G1-A_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "G1-B",
        "load_simbench_2016_15min.csv",
        "G1-B_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "G1-C",
        "load_simbench_2016_15min.csv",
        "G1-C_pload",
        "2016-11-05",
        SeriesKind::Load,
        None,
        Some("DE"),
    ),
    (
        "gb_demand",
        "load_national_gb_taylor_2000_30min.csv",
        "value_MW",
        "2000-07-03",
        SeriesKind::Load,
        None,
        Some("GB"),
    ),
    (
        "pvdaq50",
        "pv_ac_power_nrel_pvdaq50_2011_2012_15min.csv",
        "value_W",
        "2012-11-06",
        SeriesKind::Pv,
        Some((39.74, -105.18)),
        Some("US"),
    ),
    (
        "pvdaq50_noloc",
        "pv_ac_power_nrel_pvdaq50_2011_2012_15min.csv",
        "value_W",
        "2012-11-06",
        SeriesKind::Pv,
        None,
        None,
    ),
    (
        "PV1",
        "pv_simbench_2016_15min.csv",
        "PV1",
        "2016-11-05",
        SeriesKind::Pv,
        None,
        None,
    ),
    (
        "PV3",
        "pv_simbench_2016_15min.csv",
        "PV3",
        "2016-11-05",
        SeriesKind::Pv,
        None,
        None,
    ),
    (
        "PV5",
        "pv_simbench_2016_15min.csv",
        "PV5",
        "2016-11-05",
        SeriesKind::Pv,
        None,
        None,
    ),
    (
        "PV8",
        "pv_simbench_2016_15min.csv",
        "PV8",
        "2016-11-05",
        SeriesKind::Pv,
        None,
        None,
    ),
    (
        "PV1_loc",
        "pv_simbench_2016_15min.csv",
        "PV1",
        "2016-11-05",
        SeriesKind::Pv,
        Some((51.0, 10.0)),
        Some("DE"),
    ),
];

#[test]
#[ignore = "needs /work/shared/data"]
fn backtest_table() {
    if !Path::new(DIR).exists() {
        return;
    }
    let only = std::env::var("FORECAST_CASE").unwrap_or_default();
    println!(
        "| case | model | n | MAE | naive_1d | naive_7d | gain vs better naive | coverage | train+test s |"
    );
    for (name, file, col, from, kind, loc, country) in CASES {
        if !only.is_empty() && !only.split(',').any(|o| name.contains(o)) {
            continue;
        }
        let cfg = BacktestConfig {
            input: Path::new(DIR).join(file),
            column: col.to_string(),
            test_from: from.to_string(),
            test_to: None,
            kind: *kind,
            latitude: loc.map(|l| l.0),
            longitude: loc.map(|l| l.1),
            country: country.map(String::from),
        };
        let t = std::time::Instant::now();
        let r = run(&cfg).unwrap();
        let best = r.baselines.naive_1d.mae.min(r.baselines.naive_7d.mae);
        let cands = r
            .model_artifact
            .as_ref()
            .map(|m| m.metadata.metrics.candidates.clone())
            .unwrap_or_default();
        println!(
            "| {name} | {} | {} | {:.4} | {:.4} | {:.4} | {:.1} % | {:.1} % | {:.1} | {:?}",
            r.model,
            r.n_test,
            r.mae,
            r.baselines.naive_1d.mae,
            r.baselines.naive_7d.mae,
            100.0 * (1.0 - r.mae / best),
            100.0 * r.coverage_p10_p90,
            t.elapsed().as_secs_f64(),
            cands
        );
        if let Some(m) = &r.model_artifact {
            let v = &m.metadata.metrics;
            println!(
                "    validation: mae {:.4} cov {:.3} p10 {:.4} p90 {:.4}; intervals {:?} lower {:.4?} upper {:.4?}",
                v.model.mae,
                v.coverage_p10_p90,
                v.pinball_p10,
                v.pinball_p90,
                m.intervals.scale,
                &m.intervals.lower[..6],
                &m.intervals.upper[..6]
            );
        }
    }
}
