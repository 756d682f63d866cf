//! Forecast serving (issue #9): trains `grid_optimize::forecast` models on stored series, keeps
//! them as versioned artefacts in the [`Store`], forecasts a UTC day from the active version and
//! monitors the error of past forecasts once their actual values arrive.
//!
//! A model reads one *source*: a measured series (`series_points`, e.g. a site's load or PV in
//! kW) or the import price of a stored price series. Its stored metadata is the artefact's
//! [`ModelMetadata`] plus the source and a `monitoring` record (the interval tracker, the
//! per-day errors); the artefact is the JSON of the [`ForecastModel`].

use crate::store::{ModelInfo, ModelRecord, Store, StoreError};
use grid_core::Timestamp;
use grid_optimize::forecast::model::{IntervalTracker, ModelMetadata};
use grid_optimize::forecast::series::{SECONDS_PER_DAY, Series, format_day};
use grid_optimize::forecast::{DayForecast, ForecastModel, SeriesKind};
use serde::{Deserialize, Serialize};

/// Days of history a day-ahead forecast reads (the features look back at most 28 days).
pub const HISTORY_DAYS: i64 = 35;
/// The most days a training window may span.
pub const MAX_TRAINING_DAYS: i64 = 400;
/// The most past days one upload of actual values evaluates per model.
pub const MAX_EVALUATED_DAYS: usize = 31;
/// The most per-day errors a model's metadata keeps (oldest dropped first).
pub const MONITORING_HISTORY: usize = 366;

/// What a forecast-serving step can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The forecaster refused the input (too little data, bad options), naming the field.
    #[error(transparent)]
    Forecast(#[from] grid_optimize::Error),
    /// A stored artefact or its metadata cannot be read.
    #[error("model {model}: {reason}")]
    Corrupt {
        /// `name vN`.
        model: String,
        /// Why.
        reason: String,
    },
}

/// `Result` with [`ForecastError`].
pub type ForecastResult<T> = Result<T, ForecastError>;

/// Where a model's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A measured series (`PUT /api/v1/series/{name}`).
    Series,
    /// The import price of a price series (`PUT /api/v1/prices/{name}`).
    Prices,
}

/// A model's source: kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Measured series or prices.
    pub kind: SourceKind,
    /// The series name.
    pub series: String,
}

/// One monitored day: the error of the forecast made for it (from the data before it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayError {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Mean absolute error of P50 over the day's measured slots (series unit).
    pub mae: f64,
    /// Share of those slots inside P10–P90.
    pub coverage_p10_p90: f64,
    /// Measured slots.
    pub n: usize,
}

/// Model monitoring state kept in the model's metadata.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Monitoring {
    /// The online interval adaptation (updated once per newly evaluated day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracker: Option<IntervalTracker>,
    /// Per-day errors, oldest first.
    #[serde(default)]
    pub days: Vec<DayError>,
    /// Mean of the per-day MAEs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae_mean: Option<f64>,
}

/// The metadata stored with a model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMetadata {
    /// What the model reads.
    pub source: Source,
    /// The slot length of its series (s).
    pub slot_seconds: u32,
    /// The forecaster's own metadata (model kind, features, training window, validation metrics).
    pub forecast: ModelMetadata,
    /// Error tracking.
    #[serde(default)]
    pub monitoring: Monitoring,
}

impl StoredMetadata {
    /// Reads the metadata of a stored model.
    ///
    /// # Errors
    /// [`ForecastError::Corrupt`] when it is not a forecast model's metadata.
    pub fn of(info: &ModelInfo) -> ForecastResult<Self> {
        serde_json::from_value(info.metadata.clone()).map_err(|e| ForecastError::Corrupt {
            model: format!("{} v{}", info.name, info.version),
            reason: format!("metadata: {e}"),
        })
    }
}

/// Decodes a stored artefact.
///
/// # Errors
/// [`ForecastError::Corrupt`] when the bytes are not a [`ForecastModel`].
pub fn decode_model(record: &ModelRecord) -> ForecastResult<ForecastModel> {
    let corrupt = |reason: String| ForecastError::Corrupt {
        model: format!("{} v{}", record.info.name, record.info.version),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&record.artefact).map_err(|e| corrupt(format!("artefact: {e}")))?;
    let format = value["metadata"]["format_version"].as_u64();
    if format
        != Some(u64::from(
            grid_optimize::forecast::model::MODEL_FORMAT_VERSION,
        ))
    {
        return Err(corrupt(format!(
            "artefact format {}, this server reads format {}: train the model again",
            format.map_or_else(|| "unknown".to_owned(), |f| f.to_string()),
            grid_optimize::forecast::model::MODEL_FORMAT_VERSION
        )));
    }
    serde_json::from_value(value).map_err(|e| corrupt(format!("artefact: {e}")))
}

/// The UTC day (days since the epoch) of an instant.
pub fn day_of(t: Timestamp) -> i64 {
    t.as_second().div_euclid(SECONDS_PER_DAY)
}

/// 00:00 UTC of a day.
pub fn day_start(day: i64) -> ForecastResult<Timestamp> {
    Timestamp::from_second(day * SECONDS_PER_DAY)
        .map_err(|e| grid_optimize::Error::invalid("day", e.to_string()).into())
}

/// `(start, slot_seconds, value)` of the stored slots of a source in `[from, to)`.
async fn points(
    store: &dyn Store,
    source: &Source,
    from: Timestamp,
    to: Timestamp,
) -> ForecastResult<Vec<(i64, i64, f64)>> {
    Ok(match source.kind {
        SourceKind::Series => store
            .series_points(&source.series, from, to)
            .await?
            .into_iter()
            .map(|p| (p.start.as_second(), i64::from(p.slot_seconds), p.value))
            .collect(),
        SourceKind::Prices => store
            .prices(&source.series, from, to)
            .await?
            .into_iter()
            .map(|p| (p.start.as_second(), i64::from(p.slot_seconds), p.import))
            .collect(),
    })
}

/// Puts stored slots on a day-aligned grid of `step` seconds from `first_day` over `days` days
/// (NaN where nothing is stored): a stored slot at least as long as `step` fills every grid slot
/// it covers, shorter ones are averaged into the grid slot they start in.
pub fn to_grid(pts: &[(i64, i64, f64)], first_day: i64, days: i64, step: i64) -> Vec<f64> {
    let spd = SECONDS_PER_DAY / step.max(1);
    let n = usize::try_from(days * spd).unwrap_or(0);
    let (mut sum, mut cnt) = (vec![0.0; n], vec![0u32; n]);
    let origin = first_day * SECONDS_PER_DAY;
    for &(start, len, v) in pts {
        if !v.is_finite() {
            continue;
        }
        let first = (start - origin).div_euclid(step);
        let last = if len >= step {
            (start + len - origin - 1).div_euclid(step)
        } else {
            first
        };
        for i in first.max(0)..=last {
            if let Some(k) = usize::try_from(i).ok().filter(|k| *k < n) {
                sum[k] += v;
                cnt[k] += 1;
            }
        }
    }
    sum.iter()
        .zip(&cnt)
        .map(|(s, c)| if *c > 0 { s / f64::from(*c) } else { f64::NAN })
        .collect()
}

/// Loads a source as a grid [`Series`] over whole days `[first_day, end_day)`.
///
/// `step` is the grid's slot length; `None` takes the most common stored slot length.
///
/// # Errors
/// [`ForecastError::Forecast`] naming `series` when nothing is stored in the window.
pub async fn load_series(
    store: &dyn Store,
    source: &Source,
    first_day: i64,
    end_day: i64,
    step: Option<i64>,
) -> ForecastResult<Series> {
    let pts = points(store, source, day_start(first_day)?, day_start(end_day)?).await?;
    let step = match step {
        Some(s) => s,
        None => {
            let mut counts: Vec<(i64, usize)> = Vec::new();
            for p in &pts {
                match counts.iter_mut().find(|(l, _)| *l == p.1) {
                    Some(c) => c.1 += 1,
                    None => counts.push((p.1, 1)),
                }
            }
            counts
                .iter()
                .max_by_key(|(l, n)| (*n, -l))
                .map(|(l, _)| *l)
                .ok_or_else(|| {
                    grid_optimize::Error::invalid(
                        "series",
                        format!(
                            "no stored values of {} between {} and {}",
                            source.series,
                            format_day(first_day),
                            format_day(end_day - 1)
                        ),
                    )
                })?
        }
    };
    let values = to_grid(&pts, first_day, end_day - first_day, step);
    Ok(Series::from_values(
        source.series.clone(),
        first_day,
        step,
        values,
    )?)
}

/// A forecast of one day from a stored model version.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedForecast {
    /// The model used.
    pub info: ModelInfo,
    /// Its metadata.
    pub metadata: StoredMetadata,
    /// The day (days since the epoch).
    pub day: i64,
    /// P10/P50/P90 per slot, intervals adapted by the model's tracker.
    pub forecast: DayForecast,
    /// The forecast before the tracker's adaptation (what monitoring scores).
    pub raw: DayForecast,
    /// The tracker's stretch factor applied to the intervals.
    pub interval_factor: f64,
}

/// Forecasts `day` with a stored model from the data of its source strictly before `day`.
///
/// # Errors
/// Store failures; [`ForecastError::Corrupt`] for an unreadable artefact.
pub async fn forecast_day(
    store: &dyn Store,
    record: &ModelRecord,
    day: i64,
) -> ForecastResult<ServedForecast> {
    let metadata = StoredMetadata::of(&record.info)?;
    let model = decode_model(record)?;
    let step = model.features.step_seconds;
    // The protocol: only data strictly before `day` is read.
    let history = load_series(store, &metadata.source, day - HISTORY_DAYS, day, Some(step)).await?;
    let raw = model.forecast_day(&history.values, day);
    let tracker = metadata
        .monitoring
        .tracker
        .clone()
        .unwrap_or_else(|| IntervalTracker::new(&model));
    let mut forecast = raw.clone();
    tracker.adjust(&model, &mut forecast);
    Ok(ServedForecast {
        info: record.info.clone(),
        metadata,
        day,
        forecast,
        raw,
        interval_factor: tracker.factor(),
    })
}

/// The result of scoring one model on one day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: u64,
    /// The day's error.
    #[serde(flatten)]
    pub error: DayError,
}

/// Model monitoring: scores every active model reading `source` on the days of `[from, to)` that
/// lie after its training window and whose actual values are stored (at least half the slots),
/// records each day's MAE in the model's metadata and in `/metrics`, and advances its interval
/// tracker for days not seen before. Returns the evaluations.
///
/// # Errors
/// Store failures; unreadable artefacts are skipped (logged).
pub async fn monitor(
    store: &dyn Store,
    source: &Source,
    from: Timestamp,
    to: Timestamp,
) -> ForecastResult<Vec<Evaluation>> {
    let models = store
        .list_models(&crate::store::ModelFilter {
            active_only: true,
            ..Default::default()
        })
        .await?;
    let mut out = Vec::new();
    for info in models {
        let Ok(mut meta) = StoredMetadata::of(&info) else {
            continue;
        };
        if meta.source != *source {
            continue;
        }
        let record = store.get_model(&info.name, Some(info.version)).await?;
        let model = match decode_model(&record) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "model monitoring skips an unreadable model");
                continue;
            }
        };
        let trained_to =
            grid_optimize::forecast::series::parse_day(&meta.forecast.training_to, "training_to")
                .unwrap_or(i64::MIN);
        let first = day_of(from).max(trained_to + 1);
        let last = day_of(
            to.checked_sub(jiff::SignedDuration::from_secs(1))
                .unwrap_or(to),
        );
        let days: Vec<i64> = (first..=last).collect();
        let days = &days[days.len().saturating_sub(MAX_EVALUATED_DAYS)..];
        let step = model.features.step_seconds;
        let mut changed = false;
        for &day in days {
            let actual = load_series(store, source, day, day + 1, Some(step)).await?;
            let present = actual.values.iter().filter(|v| v.is_finite()).count();
            if present * 2 < actual.values.len() {
                continue;
            }
            let served = forecast_day(store, &record, day).await?;
            let (mut abs, mut inside, mut n) = (0.0, 0usize, 0usize);
            for (i, a) in actual.values.iter().enumerate() {
                if a.is_finite() {
                    abs += (a - served.raw.p50[i]).abs();
                    n += 1;
                    if served.forecast.p10[i] <= *a && *a <= served.forecast.p90[i] {
                        inside += 1;
                    }
                }
            }
            let error = DayError {
                day: format_day(day),
                mae: abs / n.max(1) as f64,
                coverage_p10_p90: inside as f64 / n.max(1) as f64,
                n,
            };
            let mon = &mut meta.monitoring;
            match mon.days.iter_mut().find(|d| d.day == error.day) {
                Some(existing) => *existing = error.clone(),
                None => {
                    let mut tracker = mon
                        .tracker
                        .clone()
                        .unwrap_or_else(|| IntervalTracker::new(&model));
                    tracker.observe(&served.raw, &actual.values);
                    mon.tracker = Some(tracker);
                    mon.days.push(error.clone());
                    mon.days.sort_by(|a, b| a.day.cmp(&b.day));
                    let excess = mon.days.len().saturating_sub(MONITORING_HISTORY);
                    mon.days.drain(..excess);
                }
            }
            mon.mae_mean =
                Some(mon.days.iter().map(|d| d.mae).sum::<f64>() / mon.days.len().max(1) as f64);
            crate::metrics::forecast_error(&info.name, info.version, &error, mon.mae_mean);
            changed = true;
            out.push(Evaluation {
                model: info.name.clone(),
                version: info.version,
                error,
            });
        }
        if changed {
            let value = serde_json::to_value(&meta).map_err(|e| ForecastError::Corrupt {
                model: format!("{} v{}", info.name, info.version),
                reason: e.to_string(),
            })?;
            store
                .update_model_metadata(&info.name, info.version, &value)
                .await?;
        }
    }
    Ok(out)
}

/// The P50 forecast of a stored model over a horizon of `slots` slots of `slot_seconds` from
/// `start`: each slot gets the mean of the model slots starting inside it, or, when model slots
/// are longer, the model slot it lies in. Each UTC day is forecast from the data before it.
///
/// # Errors
/// As [`forecast_day`].
pub async fn horizon_p50(
    store: &dyn Store,
    record: &ModelRecord,
    start: Timestamp,
    slot_seconds: u32,
    slots: usize,
) -> ForecastResult<Vec<f64>> {
    let len = i64::from(slot_seconds);
    let t0 = start.as_second();
    let mut days: Vec<(i64, DayForecast, i64)> = Vec::new();
    let mut out = Vec::with_capacity(slots);
    for i in 0..slots {
        let (a, b) = (t0 + i as i64 * len, t0 + (i as i64 + 1) * len);
        let (mut sum, mut n) = (0.0, 0usize);
        let mut t = a;
        loop {
            let day = t.div_euclid(SECONDS_PER_DAY);
            if !days.iter().any(|(d, _, _)| *d == day) {
                let served = forecast_day(store, record, day).await?;
                let step = SECONDS_PER_DAY / served.forecast.p50.len().max(1) as i64;
                days.push((day, served.forecast, step));
            }
            let Some((_, f, step)) = days.iter().find(|(d, _, _)| *d == day) else {
                break;
            };
            let k = usize::try_from((t - day * SECONDS_PER_DAY) / step).unwrap_or(0);
            if let Some(v) = f.p50.get(k) {
                sum += v;
                n += 1;
            }
            // The next model slot start inside [a, b), if any.
            let next = (t.div_euclid(*step) + 1) * step;
            if next >= b {
                break;
            }
            t = next;
        }
        out.push(if n > 0 { sum / n as f64 } else { 0.0 });
    }
    Ok(out)
}

/// What the kind of a stored model is called (the store's `kind` column).
pub fn kind_name(kind: SeriesKind) -> &'static str {
    match kind {
        SeriesKind::Load => "load",
        SeriesKind::Pv => "pv",
        SeriesKind::Price => "price",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_fills_long_slots_and_averages_short_ones() {
        // Hourly values on a 30-minute grid, and 15-minute values on an hourly grid.
        let day = 20_000;
        let o = day * SECONDS_PER_DAY;
        let g = to_grid(&[(o, 3600, 2.0), (o + 7200, 3600, 4.0)], day, 1, 1800);
        assert_eq!(g.len(), 48);
        assert_eq!(&g[..2], &[2.0, 2.0]);
        assert!(g[2].is_nan() && g[3].is_nan());
        assert_eq!(&g[4..6], &[4.0, 4.0]);
        let g = to_grid(&[(o, 900, 1.0), (o + 900, 900, 3.0)], day, 1, 3600);
        assert_eq!(g[0], 2.0);
        // Out-of-window slots are ignored.
        let g = to_grid(
            &[(o - 3600, 3600, 9.0), (o + 86_400, 3600, 9.0)],
            day,
            1,
            3600,
        );
        assert!(g.iter().all(|v| v.is_nan()));
    }
}
