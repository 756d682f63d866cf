//! The backtest protocol behind `grid-opt forecast backtest`: train before `test_from`, forecast each test
//! day from the data strictly before it, and score the model and the seasonal-naive baselines on one set.
//!
//! The scored set is every slot of the test days whose actual value and whose values 1 day and 7 days
//! earlier are all present, so every method is compared on exactly the same points.

use crate::error::{Error, Result};
use crate::forecast::calendar::Country;
use crate::forecast::features::SeriesKind;
use crate::forecast::metrics;
use crate::forecast::model::{
    DayForecast, ForecastModel, IntervalTracker, PointMetrics, TrainConfig, train,
};
use crate::forecast::series::{Series, format_day, parse_csv, parse_day};
use crate::forecast::solar::Location;
use std::path::PathBuf;

/// What to backtest, as given on the command line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BacktestConfig {
    /// CSV file in the project's format.
    pub input: PathBuf,
    /// Column name (full header or the part after `__`).
    pub column: String,
    /// First test day, `YYYY-MM-DD` (UTC).
    pub test_from: String,
    /// Last test day, inclusive; `None` = the last full day in the file.
    pub test_to: Option<String>,
    /// What the series measures.
    pub kind: SeriesKind,
    /// Latitude in degrees (with `longitude`, enables the clear-sky features).
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    pub longitude: Option<f64>,
    /// Holiday calendar, e.g. `DE`.
    pub country: Option<String>,
}

/// The seasonal-naive baselines.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Baselines {
    /// Same slot one day earlier.
    pub naive_1d: PointMetrics,
    /// Same slot seven days earlier.
    pub naive_7d: PointMetrics,
}

/// The result printed by the CLI (its JSON shape is fixed; `model_artifact` and `test_days` are not printed).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BacktestReport {
    /// The chosen model.
    pub model: String,
    /// Mean absolute error of P50.
    pub mae: f64,
    /// Root mean squared error of P50.
    pub rmse: f64,
    /// Symmetric MAPE of P50, percent.
    pub smape: f64,
    /// Number of scored test points.
    pub n_test: usize,
    /// Mean pinball loss of P10.
    pub pinball_p10: f64,
    /// Mean pinball loss of P90.
    pub pinball_p90: f64,
    /// Share of scored points inside P10–P90.
    pub coverage_p10_p90: f64,
    /// Baselines on the same points.
    pub baselines: Baselines,
    /// The trained model.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub model_artifact: Option<Box<ForecastModel>>,
    /// The test days' forecasts, one per day (days since the epoch).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub test_days: Vec<(i64, DayForecast)>,
}

/// Parsed and checked options of a backtest on an in-memory series.
#[derive(Debug, Clone, PartialEq)]
pub struct BacktestOptions {
    /// First test day (days since the epoch).
    pub test_from: i64,
    /// Last test day, inclusive.
    pub test_to: i64,
    /// Training options (its `train_end_day` is `test_from`).
    pub train: TrainConfig,
}

/// Reads the file and runs [`run_on_series`]; progress goes to `progress`.
///
/// # Errors
/// [`Error::InvalidInput`] naming `input`, `column`, `test_from`, `test_to`, `latitude`, `longitude` or
/// `country` for a missing file or column, bad dates or options, or too little training data.
pub fn run_with_progress(
    cfg: &BacktestConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<BacktestReport> {
    let text = std::fs::read_to_string(&cfg.input).map_err(|e| {
        Error::invalid("input", format!("cannot read {}: {e}", cfg.input.display()))
    })?;
    let series = parse_csv(&text, &cfg.column)?;
    let opts = options(cfg, &series)?;
    run_on_series(&series, &opts, progress)
}

/// [`run_with_progress`] without progress output.
///
/// # Errors
/// As [`run_with_progress`].
pub fn run(cfg: &BacktestConfig) -> Result<BacktestReport> {
    run_with_progress(cfg, &mut |_| {})
}

/// Checks the command-line options against the series.
///
/// # Errors
/// As [`run_with_progress`].
pub fn options(cfg: &BacktestConfig, series: &Series) -> Result<BacktestOptions> {
    let test_from = parse_day(&cfg.test_from, "test_from")?;
    let last = series.last_full_day();
    let test_to = match &cfg.test_to {
        Some(t) => parse_day(t, "test_to")?,
        None => last,
    };
    if test_to < test_from {
        return Err(Error::invalid(
            "test_to",
            format!(
                "{} is before test_from {}",
                format_day(test_to),
                format_day(test_from)
            ),
        ));
    }
    if test_to > last {
        return Err(Error::invalid(
            "test_to",
            format!(
                "{} is after the last full day in the file ({})",
                format_day(test_to),
                format_day(last)
            ),
        ));
    }
    if test_from <= series.first_day {
        return Err(Error::invalid(
            "test_from",
            format!(
                "{} leaves no training data (the file starts {})",
                format_day(test_from),
                format_day(series.first_day)
            ),
        ));
    }
    let location = match (cfg.latitude, cfg.longitude) {
        (Some(la), Some(lo)) => Some(Location::new(la, lo)?),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::invalid(
                "longitude",
                "given latitude without longitude",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "latitude",
                "given longitude without latitude",
            ));
        }
    };
    let country = cfg
        .country
        .as_deref()
        .map(str::parse::<Country>)
        .transpose()?;
    Ok(BacktestOptions {
        test_from,
        test_to,
        train: TrainConfig {
            kind: cfg.kind,
            country,
            location,
            train_end_day: test_from,
            validation_days: None,
        },
    })
}

/// Trains on the data before `opts.test_from`, forecasts every test day from the data strictly before it,
/// and scores the model and the baselines on the common set.
///
/// # Errors
/// [`Error::InvalidInput`] naming `test_from` for too little training data, or `test_to` if no test point
/// can be scored.
pub fn run_on_series(
    series: &Series,
    opts: &BacktestOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BacktestReport> {
    let mut tc = opts.train.clone();
    tc.train_end_day = opts.test_from;
    let t0 = std::time::Instant::now();
    let model = train(series, &tc, progress)?;
    progress(&format!(
        "trained {} in {:.2} s",
        model.metadata.model_kind,
        t0.elapsed().as_secs_f64()
    ));
    let (mut y, mut f, mut lo, mut hi, mut n1, mut n7) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut days = Vec::new();
    let mut tracker = IntervalTracker::new(&model);
    for d in opts.test_from..=opts.test_to {
        let raw = model.forecast_day(series.history_before(d), d);
        let mut fc = raw.clone();
        tracker.adjust(&model, &mut fc);
        // The day's actuals become known only after its forecast: they update the tracker for later days.
        if let Some(actual) = series.day(d) {
            tracker.observe(&raw, actual);
        }
        let (Some(actual), Some(d1), Some(d7)) =
            (series.day(d), series.day(d - 1), series.day(d - 7))
        else {
            days.push((d, fc));
            continue;
        };
        for s in 0..actual.len() {
            if actual[s].is_finite() && d1[s].is_finite() && d7[s].is_finite() {
                y.push(actual[s]);
                f.push(fc.p50[s]);
                lo.push(fc.p10[s]);
                hi.push(fc.p90[s]);
                n1.push(d1[s]);
                n7.push(d7[s]);
            }
        }
        days.push((d, fc));
    }
    if y.is_empty() {
        return Err(Error::invalid(
            "test_to",
            "no test slot has its value and the values 1 and 7 days earlier",
        ));
    }
    let pm = PointMetrics::of(&y, &f);
    Ok(BacktestReport {
        model: model.metadata.model_kind.clone(),
        mae: pm.mae,
        rmse: pm.rmse,
        smape: pm.smape,
        n_test: y.len(),
        pinball_p10: metrics::mean_pinball(0.1, &y, &lo),
        pinball_p90: metrics::mean_pinball(0.9, &y, &hi),
        coverage_p10_p90: metrics::coverage(&y, &lo, &hi),
        baselines: Baselines {
            naive_1d: PointMetrics::of(&y, &n1),
            naive_7d: PointMetrics::of(&y, &n7),
        },
        model_artifact: Some(Box::new(model)),
        test_days: days,
    })
}
