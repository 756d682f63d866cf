//! The forecasting protocol on the shipped data slices: no test-period value can reach training or a forecast
//! of an earlier day, gaps are survived, and the forecaster beats the seasonal-naive baselines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::forecast::backtest::{BacktestOptions, run_on_series};
use grid_optimize::forecast::model::{TrainConfig, train};
use grid_optimize::forecast::series::{Series, parse_csv, parse_day};
use grid_optimize::forecast::{ForecastModel, SeriesKind};
use proptest::prelude::*;
use std::sync::OnceLock;

fn data(file: &str) -> String {
    let path = format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn household() -> &'static Series {
    static S: OnceLock<Series> = OnceLock::new();
    S.get_or_init(|| {
        parse_csv(
            &data("load_simbench_h0a_g0a_2016_q4_15min.csv"),
            "H0-A_pload",
        )
        .expect("the shipped slice parses")
    })
}

const TEST_FROM: &str = "2016-12-03";

fn config(test_from: i64) -> TrainConfig {
    TrainConfig {
        kind: SeriesKind::Load,
        country: Some("DE".parse().expect("DE is a known country")),
        location: None,
        train_end_day: test_from,
        validation_days: None,
    }
}

fn trained() -> &'static ForecastModel {
    static M: OnceLock<ForecastModel> = OnceLock::new();
    M.get_or_init(|| {
        let d = parse_day(TEST_FROM, "t").expect("a valid date");
        train(household(), &config(d), &mut |_| {}).expect("trains on the shipped slice")
    })
}

/// Replaces every value from day `from` on with `poison`.
fn poisoned(s: &Series, from: i64, poison: f64) -> Series {
    let mut p = s.clone();
    let cut = ((from - s.first_day) as usize * s.slots_per_day()).min(p.values.len());
    for v in &mut p.values[cut..] {
        *v = poison;
    }
    p
}

#[test]
fn test_period_values_cannot_reach_training() {
    let d = parse_day(TEST_FROM, "t").unwrap();
    let clean = trained();
    for poison in [1e12, f64::NAN, -1e12] {
        let p = poisoned(household(), d, poison);
        let m = train(&p, &config(d), &mut |_| {}).unwrap();
        assert_eq!(&m, clean, "poison {poison} changed the trained model");
    }
    // Sanity check that the comparison can fail: poisoning one day *before* the test period changes the model.
    let p = poisoned(household(), d - 1, 1e12);
    let m = train(&p, &config(d), &mut |_| {}).unwrap();
    assert_ne!(&m, clean);
}

#[test]
fn forecasts_use_only_days_before_the_forecast_day() {
    let m = trained();
    let s = household();
    let d0 = parse_day(TEST_FROM, "t").unwrap();
    for d in [d0, d0 + 5, d0 + 20] {
        let clean = m.forecast_day(s.history_before(d), d);
        for poison in [1e12, f64::NAN] {
            let p = poisoned(s, d, poison);
            assert_eq!(m.forecast_day(p.history_before(d), d), clean);
        }
        assert!(clean.p50.iter().all(|v| v.is_finite()));
        assert_eq!(clean.p50.len(), 96);
    }
}

#[test]
fn backtest_beats_the_naive_baselines_on_the_shipped_household_slice() {
    let s = household();
    let from = parse_day(TEST_FROM, "t").unwrap();
    let opts = BacktestOptions {
        test_from: from,
        test_to: s.last_full_day(),
        train: config(from),
    };
    let r = run_on_series(s, &opts, &mut |_| {}).unwrap();
    assert_eq!(r.n_test, 28 * 96);
    let best = r.baselines.naive_1d.mae.min(r.baselines.naive_7d.mae);
    assert!(r.mae < 0.9 * best, "mae {} vs naive {best}", r.mae);
    assert!(
        (0.6..=0.95).contains(&r.coverage_p10_p90),
        "coverage {}",
        r.coverage_p10_p90
    );
    for (_, f) in &r.test_days {
        assert!(
            f.p10
                .iter()
                .zip(&f.p50)
                .zip(&f.p90)
                .all(|((a, b), c)| a <= b && b <= c)
        );
    }
}

#[test]
fn gaps_in_training_data_are_survived_not_dropped() {
    // Knock out every 7th value and a whole day before the test period: training still works and every test
    // slot still gets a finite forecast.
    let mut s = household().clone();
    for (i, v) in s.values.iter_mut().enumerate() {
        if i % 7 == 3 {
            *v = f64::NAN;
        }
    }
    let d = parse_day(TEST_FROM, "t").unwrap();
    let spd = s.slots_per_day();
    let day = (d - 3 - s.first_day) as usize;
    s.values[day * spd..(day + 1) * spd].fill(f64::NAN);
    let m = train(&s, &config(d), &mut |_| {}).unwrap();
    let f = m.forecast_day(s.history_before(d), d);
    assert!(
        f.p50
            .iter()
            .chain(&f.p10)
            .chain(&f.p90)
            .all(|v| v.is_finite())
    );
}

#[test]
fn too_little_training_data_is_a_named_error() {
    let s = household();
    let e = train(s, &config(s.first_day + 5), &mut |_| {}).unwrap_err();
    assert_eq!(e.field(), Some("test_from"));
}

#[cfg(feature = "serde")]
#[test]
fn the_model_artefact_round_trips_through_json() {
    let m = trained();
    let json = serde_json::to_string(m).unwrap();
    let back: ForecastModel = serde_json::from_str(&json).unwrap();
    let d = parse_day(TEST_FROM, "t").unwrap();
    assert_eq!(
        back.forecast_day(household().history_before(d), d),
        m.forecast_day(household().history_before(d), d)
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in [
        "model_kind",
        "format_version",
        "features",
        "training_from",
        "training_to",
        "metrics",
    ] {
        assert!(v["metadata"].get(key).is_some(), "metadata lacks {key}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any change to the values at or after day `D` (here: random poison at random places) leaves the
    /// forecast of `D` unchanged.
    #[test]
    fn poison_at_or_after_the_day_never_changes_its_forecast(
        offset in 0i64..28,
        seeds in proptest::collection::vec((0usize..1_000_000, prop_oneof![Just(f64::NAN), Just(1e15), Just(-3.0)]), 1..40),
    ) {
        let m = trained();
        let s = household();
        let d = parse_day(TEST_FROM, "t").unwrap() + offset;
        let clean = m.forecast_day(s.history_before(d), d);
        let mut p = s.clone();
        let cut = (d - s.first_day) as usize * s.slots_per_day();
        let tail = p.values.len() - cut;
        for (i, v) in seeds {
            p.values[cut + i % tail] = v;
        }
        prop_assert_eq!(m.forecast_day(p.history_before(d), d), clean);
    }
}
