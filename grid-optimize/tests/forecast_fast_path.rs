//! Guards the forecast values against speed work on `forecast_day_into` (features, trees, ridge, intervals).
//!
//! Small models are trained on the shipped data slices (`data/`) and their day-ahead forecasts are compared,
//! to 1e-9 relative, with values saved from the straightforward implementation (before the fast path) in
//! `tests/fixtures/forecast_fast_path.txt`. Regenerate with `FORECAST_FAST_PATH_WRITE=1` only when a forecast
//! is *meant* to change.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::forecast::SeriesKind;
use grid_optimize::forecast::model::{
    DayForecast, ForecastModel, ForecastScratch, PredictScratch, TrainConfig, train,
};
use grid_optimize::forecast::series::{Series, parse_csv};
use grid_optimize::forecast::solar::Location;
use std::fmt::Write as _;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/forecast_fast_path.txt"
);

fn slice(file: &str, column: &str) -> Series {
    let path = format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("the shipped data slice exists");
    parse_csv(&text, column).expect("the slice parses")
}

/// `(case, model kind, day, forecast)` for every case: a model trained on the first 56 or 80 days, then the
/// forecasts of the next 5 days (each from the full history before it, so later days also see data the
/// model was not trained on).
fn forecasts() -> Vec<(String, String, i64, DayForecast)> {
    let mut all = Vec::new();
    for (name, s, model, end) in models() {
        let (mut scratch, mut out) = (ForecastScratch::default(), DayForecast::default());
        for day in end..end + 5 {
            model.forecast_day_into(s.history_before(day), day, &mut scratch, &mut out);
            all.push((
                name.to_string(),
                model.metadata.model_kind.clone(),
                day,
                out.clone(),
            ));
        }
    }
    all
}

/// `(case, series, model, first test day)` for every case: a model trained on the first 56 or 80 days.
fn models() -> Vec<(&'static str, Series, ForecastModel, i64)> {
    let cases = [
        (
            "load",
            slice("load_simbench_h0a_g0a_2016_q4_15min.csv", "H0-A_pload"),
            SeriesKind::Load,
            None,
            56,
        ),
        (
            "load_g0",
            slice("load_simbench_h0a_g0a_2016_q4_15min.csv", "G0-A_pload"),
            SeriesKind::Load,
            None,
            80,
        ),
        (
            "pv",
            slice("pv_ac_power_nrel_pvdaq50_2012_q4_15min.csv", "value_W"),
            SeriesKind::Pv,
            Some(Location {
                latitude_deg: 39.74,
                longitude_deg: -105.18,
            }),
            56,
        ),
    ];
    let mut all = Vec::new();
    for (name, s, kind, location, train_days) in cases {
        let end = s.first_day + train_days;
        let cfg = TrainConfig {
            kind,
            country: Some("DE".parse().expect("known country")),
            location,
            train_end_day: end,
            validation_days: Some(14),
        };
        let model = train(&s, &cfg, &mut |_| {}).expect("trains");
        all.push((name, s, model, end));
    }
    all
}

fn render(all: &[(String, String, i64, DayForecast)]) -> String {
    let mut t = String::new();
    for (name, kind, day, f) in all {
        for (q, v) in [
            ("p10", &f.p10),
            ("p50", &f.p50),
            ("p90", &f.p90),
            ("scale", &f.scale),
        ] {
            let vals: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
            writeln!(t, "{name} {kind} {day} {q} {}", vals.join(" ")).unwrap();
        }
    }
    t
}

#[test]
fn forecasts_equal_the_reference_values() {
    let got = render(&forecasts());
    if std::env::var_os("FORECAST_FAST_PATH_WRITE").is_some() {
        std::fs::write(FIXTURE, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(FIXTURE).expect("fixture exists");
    let (got, want): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    assert_eq!(got.len(), want.len(), "number of forecast lines");
    for (g, w) in got.iter().zip(&want) {
        let (g, w): (Vec<&str>, Vec<&str>) = (g.split(' ').collect(), w.split(' ').collect());
        assert_eq!(g[..4], w[..4], "case, model, day and quantile");
        assert_eq!(g.len(), w.len(), "{:?}: slots", &w[..4]);
        for (s, (a, b)) in g[4..].iter().zip(&w[4..]).enumerate() {
            let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
            let tol = 1e-9 * b.abs().max(1e-12);
            assert!(
                (a - b).abs() <= tol,
                "{:?} slot {s}: {a} != reference {b}",
                &w[..4]
            );
        }
    }
}

/// The batch evaluation `forecast_day_into` uses (bit-sliced trees, interleaved ridge rows, ensemble) gives
/// exactly the straightforward one: `Predictor::predict` row by row (trees walked node by node), on the same
/// feature rows (whose fast computation equals the reference implementation bit for bit, a unit test of
/// `features.rs`).
#[test]
fn batch_predictions_equal_row_by_row_ones_bit_for_bit() {
    let mut kinds = Vec::new();
    for (name, s, model, end) in models() {
        kinds.push(model.metadata.model_kind.clone());
        let (nf, spd) = (model.features.n_features(), model.features.slots_per_day);
        let (mut rows, mut scratch) = (Vec::new(), PredictScratch::default());
        for day in end..end + 5 {
            model
                .features
                .day_features(s.history_before(day), day, &model.profile, &mut rows);
            let mut batch = vec![0.0; spd];
            model
                .predictor
                .predict_batch(&rows, nf, &mut batch, &mut scratch);
            for (slot, b) in batch.iter().enumerate() {
                let want = model.predictor.predict(&rows[slot * nf..(slot + 1) * nf]);
                assert_eq!(b.to_bits(), want.to_bits(), "{name} day {day} slot {slot}");
            }
        }
    }
    // The cases cover trees, ridge and an ensemble of both.
    assert!(kinds.iter().any(|k| k == "gbt_abs"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k.starts_with("ensemble(")),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k.starts_with("ridge")), "{kinds:?}");
}
