//! Day-ahead forecasting of load, PV and prices: features, models, quantiles, baselines and the backtest.
//!
//! The protocol is fixed so results compare: the forecast for UTC day `D` (all its slots) is computed from
//! the data strictly before `D` only ([`features::FeatureConfig::day_features`] receives that prefix and
//! nothing else); models are trained on the data before the test period only, and the model is chosen on
//! a validation block that also lies before it. Gaps are imputed and flagged, never dropped silently.
//!
//! Pieces:
//! - [`series`]: the CSV format, a day-aligned grid with `NaN` gaps;
//! - [`calendar`]: weekdays, Easter and the public holidays of DE, GB, US, FR and NL;
//! - [`solar`]: clear-sky sun position and irradiance for PV;
//! - [`features`]: time of day, weekday/weekend/holiday, day of year, lags of 1, 2, 3, 7 and 14 days,
//!   rolling means and maxima of the previous day(s), the previous day's hourly profile, clear-sky features;
//! - [`ridge`] (ridge regression, penalty tuned with argmin) and [`gbt`] (gradient-boosted trees with
//!   squared or absolute loss);
//! - [`model`]: candidate selection, P10/P90 calibration by pinball loss, the serialisable
//!   [`model::ForecastModel`] artefact;
//! - [`backtest`]: the evaluation behind `grid-opt forecast backtest`, with the seasonal-naive baselines.
//!
//! ```
//! use grid_optimize::forecast::{backtest::{run_on_series, BacktestOptions}, model::TrainConfig};
//! use grid_optimize::forecast::{series::Series, SeriesKind};
//! // Ten weeks of an hourly load with a daily and a weekly cycle plus deterministic noise.
//! let v: Vec<f64> = (0..70 * 24)
//!     .map(|i| {
//!         let (h, d) = (i % 24, i / 24);
//!         let weekend = if (d + 3) % 7 >= 5 { 0.5 } else { 0.0 };
//!         2.0 + ((h as f64) / 24.0 * 6.28).sin() + weekend + 0.3 * ((i * 7919 % 101) as f64 / 101.0)
//!     })
//!     .collect();
//! let s = Series::from_values("demo", 0, 3600, v).unwrap();
//! let opts = BacktestOptions {
//!     test_from: 56,
//!     test_to: 69,
//!     train: TrainConfig { kind: SeriesKind::Load, country: None, location: None,
//!         train_end_day: 56, validation_days: None },
//! };
//! let r = run_on_series(&s, &opts, &mut |_| {}).unwrap();
//! assert_eq!(r.n_test, 14 * 24);
//! assert!(r.mae < r.baselines.naive_1d.mae.min(r.baselines.naive_7d.mae));
//! ```

pub mod backtest;
pub mod calendar;
pub mod features;
pub mod gbt;
pub mod metrics;
pub mod model;
pub mod ridge;
pub mod series;
pub mod solar;

pub use features::SeriesKind;
pub use model::{DayForecast, ForecastModel};
