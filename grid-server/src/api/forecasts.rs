//! Forecast serving (issue #9): upload measured series (a site's load or PV), train versioned
//! day-ahead models on stored series or prices (or on a series posted with the request), list,
//! read and activate versions, forecast a UTC day (P10/P50/P90 per slot) from the active version.
//! Uploading actual values scores the active models on the days they cover (model monitoring, in
//! the model's metadata and in `/metrics`).

use super::devices::body_id;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiJson, ApiQuery, Caller, body_bytes, media_type, parse_json};
use super::sites::{RangeQuery, check_range, check_series_name};
use super::{AppState, now, path_id};
use crate::auth::Role;
use crate::forecasting::{
    self, Evaluation, ForecastError, MAX_TRAINING_DAYS, Source, SourceKind, StoredMetadata, day_of,
    day_start, kind_name,
};
use crate::store::{ModelFilter, ModelInfo, NewModel, StoreError};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use grid_core::{SiteId, Timestamp};
use grid_optimize::forecast::calendar::Country;
use grid_optimize::forecast::model::TrainConfig;
use grid_optimize::forecast::series::{SECONDS_PER_DAY, Series, format_day, parse_csv, parse_day};
use grid_optimize::forecast::solar::Location;
use grid_optimize::forecast::{ForecastModel, SeriesKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/series", get(list_series))
        .route("/series/{series}", get(get_series).put(put_series))
        .route("/models", get(list_models).post(train_model))
        .route("/models/{name}", get(get_model))
        .route("/models/{name}/versions", get(list_versions))
        .route("/models/{name}/versions/{version}", get(get_version))
        .route(
            "/models/{name}/versions/{version}/activate",
            post(activate_version),
        )
        .route("/models/{name}/forecast", get(forecast))
}

impl From<ForecastError> for ApiError {
    fn from(e: ForecastError) -> Self {
        match e {
            ForecastError::Store(e) => e.into(),
            ForecastError::Forecast(e) => forecast_input(e),
            e @ ForecastError::Corrupt { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<grid_optimize::Error> for ApiError {
    fn from(e: grid_optimize::Error) -> Self {
        forecast_input(e)
    }
}

/// A forecaster input error as a 422 naming its field.
fn forecast_input(e: grid_optimize::Error) -> ApiError {
    ApiError::Invalid {
        code: "invalid_field",
        field: e.field().map(str::to_owned),
        detail: e.to_string(),
    }
}

// --- measured series ---------------------------------------------------------------------------

/// A measured series as JSON: values `slot_seconds` apart from `start`; `null` is a gap.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesUpload {
    /// First slot start (UTC).
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Slot length (s), dividing a day.
    pub slot_seconds: u32,
    /// One value per slot (kW for load and PV: load positive = consumption, PV positive =
    /// generation); `null` = missing.
    pub values: Vec<Option<f64>>,
}

/// One model's error on one day, from model monitoring.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluationBody {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u64,
    /// The UTC day (`YYYY-MM-DD`).
    pub day: String,
    /// Mean absolute error of P50 over the day's measured slots.
    pub mae: f64,
    /// Share of the measured slots inside P10–P90.
    pub coverage_p10_p90: f64,
    /// Measured slots.
    pub n: usize,
}

impl From<Evaluation> for EvaluationBody {
    fn from(e: Evaluation) -> Self {
        Self {
            model: e.model,
            version: e.version,
            day: e.error.day,
            mae: e.error.mae,
            coverage_p10_p90: e.error.coverage_p10_p90,
            n: e.error.n,
        }
    }
}

/// The answer to a series upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesUploadResult {
    /// The series.
    pub series: String,
    /// Slots written.
    pub slots: u64,
    /// Active models of this series scored on the days the upload covers (after their training
    /// window).
    pub evaluations: Vec<EvaluationBody>,
}

/// One stored slot of a measured series.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPointBody {
    /// Slot start (UTC).
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Slot length (s).
    pub slot_seconds: u32,
    /// The value.
    pub value: f64,
}

/// A parsed upload: start, slot length, values (NaN = gap).
struct ParsedSeries {
    start: Timestamp,
    slot_seconds: u32,
    values: Vec<f64>,
}

fn parse_upload(upload: SeriesUpload) -> ApiResult<ParsedSeries> {
    if upload.slot_seconds == 0 || SECONDS_PER_DAY % i64::from(upload.slot_seconds) != 0 {
        return Err(ApiError::invalid(
            "slot_seconds",
            "must be positive and divide a day",
        ));
    }
    if upload.values.is_empty() {
        return Err(ApiError::invalid("values", "no values"));
    }
    if upload.start.as_second() % i64::from(upload.slot_seconds) != 0 {
        return Err(ApiError::invalid(
            "start",
            "must be a multiple of slot_seconds after 00:00 UTC",
        ));
    }
    Ok(ParsedSeries {
        start: upload.start,
        slot_seconds: upload.slot_seconds,
        values: upload
            .values
            .into_iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect(),
    })
}

/// Parses the project's CSV format (`timestamp_utc,<value column>`, empty cells = gaps).
fn parse_series_csv(text: &str, column: Option<&str>) -> ApiResult<ParsedSeries> {
    let header = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let second = header.split(',').nth(1).map(str::trim).unwrap_or("");
    let column = column.unwrap_or(second);
    let s: Series = parse_csv(text, column).map_err(|e| match e {
        grid_optimize::Error::InvalidInput { field, reason } => {
            ApiError::invalid(format!("csv {field}"), reason)
        }
        other => forecast_input(other),
    })?;
    let slot_seconds =
        u32::try_from(s.step_seconds).map_err(|_| ApiError::invalid("csv", "bad slot spacing"))?;
    Ok(ParsedSeries {
        start: day_start(s.first_day)?,
        slot_seconds,
        values: s.values,
    })
}

/// Stores a parsed series and scores the active models reading it.
async fn store_series(
    state: &AppState,
    series: &str,
    parsed: &ParsedSeries,
) -> ApiResult<(u64, Vec<Evaluation>)> {
    let slots = state
        .store
        .put_series(series, parsed.start, parsed.slot_seconds, &parsed.values)
        .await?;
    let end_s =
        parsed.start.as_second() + parsed.values.len() as i64 * i64::from(parsed.slot_seconds);
    let end =
        Timestamp::from_second(end_s).map_err(|e| ApiError::invalid("values", e.to_string()))?;
    let source = Source {
        kind: SourceKind::Series,
        series: series.to_owned(),
    };
    let evaluations =
        forecasting::monitor(state.store.as_ref(), &source, parsed.start, end).await?;
    Ok((slots, evaluations))
}

/// The names of the stored measured series.
#[utoipa::path(get, path = "/api/v1/series", tag = "forecasts",
    responses((status = 200, body = [String]), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_series(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(state.store.list_series().await?))
}

/// The stored slots of a measured series in `[from, to)`.
#[utoipa::path(get, path = "/api/v1/series/{series}", tag = "forecasts",
    params(("series" = String, Path, description = "Series name"), RangeQuery),
    responses((status = 200, body = [SeriesPointBody]), (status = 401, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_series(
    State(state): State<AppState>,
    _caller: Caller,
    Path(series): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<Vec<SeriesPointBody>>> {
    check_series_name(&series, "series")?;
    check_range(q.from, q.to, 400)?;
    let points = state.store.series_points(&series, q.from, q.to).await?;
    Ok(Json(
        points
            .into_iter()
            .map(|p| SeriesPointBody {
                start: p.start,
                slot_seconds: p.slot_seconds,
                value: p.value,
            })
            .collect(),
    ))
}

/// Uploads measured values (operator) as JSON ([`SeriesUpload`]) or CSV (`Content-Type:
/// text/csv`, `timestamp_utc,<value>`, empty cells = gaps); slots already stored at the same
/// start are replaced. The active models reading the series are then scored on every day the
/// upload covers after their training window (model monitoring).
#[utoipa::path(put, path = "/api/v1/series/{series}", tag = "forecasts",
    params(("series" = String, Path, description = "Series name, e.g. `home-1.load`")),
    request_body(content(
        (SeriesUpload = "application/json"),
        (String = "text/csv", example = "timestamp_utc,value_kW\n2026-11-27T00:00:00Z,0.41\n2026-11-27T00:15:00Z,0.38\n")
    )),
    responses((status = 200, body = SeriesUploadResult), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_series(
    State(state): State<AppState>,
    caller: Caller,
    Path(series): Path<String>,
    req: Request,
) -> ApiResult<Json<SeriesUploadResult>> {
    caller.require(Role::Operator)?;
    check_series_name(&series, "series")?;
    let content_type = media_type(&req);
    let bytes = body_bytes(req, &()).await?;
    let parsed = match content_type.as_str() {
        "application/json" => parse_upload(parse_json(&bytes)?)?,
        "text/csv" => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ApiError::invalid("csv", "the CSV is not UTF-8"))?;
            parse_series_csv(text, None)?
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "expected application/json or text/csv".into(),
            ));
        }
    };
    let (slots, evaluations) = store_series(&state, &series, &parsed).await?;
    Ok(Json(SeriesUploadResult {
        series,
        slots,
        evaluations: evaluations.into_iter().map(Into::into).collect(),
    }))
}

// --- models ------------------------------------------------------------------------------------

/// Where a model's data comes from.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceBody {
    /// A measured series (`/series/{name}`).
    #[default]
    Series,
    /// The import price of a price series (`/prices/{name}`).
    Prices,
}

/// A training request: which series, which window, which calendar and location.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// The model's name (id rules, e.g. `home-1.load`); versions are numbered per name.
    pub name: String,
    /// The series it reads (and forecasts).
    pub series: String,
    /// `series` (default) or `prices`.
    #[serde(default)]
    pub source: SourceBody,
    /// `load` (default for series), `pv` or `price` (default for prices).
    #[serde(default)]
    pub kind: Option<String>,
    /// The site it forecasts for; the optimiser uses the active `load` and `pv` models of a site.
    #[serde(default)]
    pub site: Option<String>,
    /// Holiday calendar: DE, GB, US, FR or NL.
    #[serde(default)]
    pub country: Option<String>,
    /// Latitude (degrees; with `longitude`, enables the clear-sky PV features).
    #[serde(default)]
    pub latitude: Option<f64>,
    /// Longitude (degrees).
    #[serde(default)]
    pub longitude: Option<f64>,
    /// First training day (`YYYY-MM-DD`, default: the first stored day, at most 400 days back).
    #[serde(default)]
    pub train_from: Option<String>,
    /// Last training day, inclusive (default: the last day with stored values).
    #[serde(default)]
    pub train_to: Option<String>,
    /// Validation block in days (default: a quarter of the training days, 7..=56).
    #[serde(default)]
    pub validation_days: Option<usize>,
    /// Make the new version the active one.
    #[serde(default)]
    pub activate: bool,
    /// Values to store under `series` before training (JSON form).
    #[serde(default)]
    pub data: Option<SeriesUpload>,
    /// Values to store under `series` before training, as CSV text (`timestamp_utc,...`).
    #[serde(default)]
    pub csv: Option<String>,
    /// The CSV column to read (default: the second).
    #[serde(default)]
    pub column: Option<String>,
}

/// A stored model version (without its artefact).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelBody {
    /// Name.
    pub name: String,
    /// Version (1, 2, ... per name).
    pub version: u64,
    /// What it forecasts: `load`, `pv` or `price`.
    pub kind: String,
    /// The site it forecasts for.
    pub site: Option<String>,
    /// Whether it is the active version of its name.
    pub active: bool,
    /// Artefact size (bytes).
    pub artefact_len: u64,
    /// When trained.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// `source`, `slot_seconds`, `forecast` (model kind, features, training window, validation
    /// metrics) and `monitoring` (per-day errors, `mae_mean`, interval tracker).
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

impl From<ModelInfo> for ModelBody {
    fn from(m: ModelInfo) -> Self {
        Self {
            name: m.name,
            version: m.version,
            kind: m.kind,
            site: m.site.map(|s| s.to_string()),
            active: m.active,
            artefact_len: m.artefact_len,
            created_at: m.created_at,
            metadata: m.metadata,
        }
    }
}

/// Fails with 403 unless the caller may see the model's site.
async fn check_model_access(state: &AppState, caller: &Caller, info: &ModelInfo) -> ApiResult<()> {
    if let Some(site) = &info.site {
        match state.store.get_site(site).await {
            Ok(s) => caller.check_tenant(Some(&s.tenant))?,
            // A deleted site leaves fleet-wide callers only.
            Err(StoreError::NotFound { .. }) => caller.check_tenant(None)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Trains a model version on a stored series or prices (operator); with `data` or `csv` the
/// values are first stored under `series`. Training reads only the window's data; the model is
/// chosen and its intervals calibrated on the days before `train_to` (see docs/forecasting.md).
#[utoipa::path(post, path = "/api/v1/models", tag = "forecasts",
    request_body = TrainRequest,
    responses((status = 201, body = ModelBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn train_model(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<TrainRequest>,
) -> ApiResult<(StatusCode, Json<ModelBody>)> {
    caller.require(Role::Operator)?;
    check_series_name(&req.name, "name")?;
    check_series_name(&req.series, "series")?;
    let source_kind = match req.source {
        SourceBody::Series => SourceKind::Series,
        SourceBody::Prices => SourceKind::Prices,
    };
    let kind: SeriesKind = match (&req.kind, &source_kind) {
        (Some(k), _) => k.parse().map_err(forecast_input)?,
        (None, SourceKind::Prices) => SeriesKind::Price,
        (None, SourceKind::Series) => SeriesKind::Load,
    };
    let country = req
        .country
        .as_deref()
        .map(str::parse::<Country>)
        .transpose()
        .map_err(forecast_input)?;
    let location = match (req.latitude, req.longitude) {
        (Some(la), Some(lo)) => Some(Location::new(la, lo).map_err(forecast_input)?),
        (None, None) => None,
        (Some(_), None) => return Err(ApiError::invalid("longitude", "given latitude alone")),
        (None, Some(_)) => return Err(ApiError::invalid("latitude", "given longitude alone")),
    };
    let site: Option<SiteId> = req
        .site
        .as_deref()
        .map(|s| body_id("site", s))
        .transpose()?;
    if let Some(id) = &site {
        let s = state.store.get_site(id).await.map_err(|e| match e {
            StoreError::NotFound { .. } => ApiError::invalid("site", format!("unknown site {id}")),
            e => e.into(),
        })?;
        caller.check_tenant(Some(&s.tenant))?;
    }
    let posted = match (req.data, &req.csv) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("csv", "give either data or csv")),
        (Some(d), None) => Some(parse_upload(d).map_err(|e| prefix_field(e, "data"))?),
        (None, Some(text)) => Some(parse_series_csv(text, req.column.as_deref())?),
        (None, None) => None,
    };
    if let Some(p) = &posted {
        if source_kind == SourceKind::Prices {
            return Err(ApiError::invalid(
                "source",
                "posted values are stored as a measured series: use source `series`",
            ));
        }
        store_series(&state, &req.series, p).await?;
    }
    let source = Source {
        kind: source_kind,
        series: req.series.clone(),
    };

    // The training window: [first, end) in days.
    let today = day_of(now());
    let end = match &req.train_to {
        Some(t) => parse_day(t, "train_to").map_err(forecast_input)? + 1,
        None => today + 1,
    };
    let start = match &req.train_from {
        Some(t) => parse_day(t, "train_from").map_err(forecast_input)?,
        None => end - MAX_TRAINING_DAYS,
    };
    if end <= start || end - start > MAX_TRAINING_DAYS {
        return Err(ApiError::invalid(
            "train_from",
            format!("the window must span 1..={MAX_TRAINING_DAYS} days"),
        ));
    }
    let series = forecasting::load_series(state.store.as_ref(), &source, start, end, None).await?;
    let series = trim(&series, req.train_to.is_none(), req.train_from.is_none())?;
    let end_day = series.first_day + series.n_days() as i64;
    let config = TrainConfig {
        kind,
        country,
        location,
        train_end_day: end_day,
        validation_days: req.validation_days,
    };
    let model: ForecastModel = tokio::task::spawn_blocking(move || {
        grid_optimize::forecast::model::train(&series, &config, &mut |_| {})
    })
    .await
    .map_err(|e| ApiError::Internal(format!("training task: {e}")))?
    .map_err(|e| match e {
        grid_optimize::Error::InvalidInput { field, reason } if field == "test_from" => {
            ApiError::invalid("train_to", reason)
        }
        other => forecast_input(other),
    })?;
    let metadata = StoredMetadata {
        source,
        slot_seconds: u32::try_from(model.features.step_seconds).unwrap_or(0),
        forecast: model.metadata.clone(),
        monitoring: Default::default(),
    };
    let new = NewModel {
        name: req.name,
        kind: kind_name(kind).to_owned(),
        site,
        metadata: serde_json::to_value(&metadata)
            .map_err(|e| ApiError::Internal(format!("model metadata: {e}")))?,
        artefact: serde_json::to_vec(&model)
            .map_err(|e| ApiError::Internal(format!("model artefact: {e}")))?,
        activate: req.activate,
    };
    let info = state.store.put_model(&new, now()).await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

fn prefix_field(e: ApiError, prefix: &str) -> ApiError {
    match e {
        ApiError::Invalid {
            code,
            field,
            detail,
        } => ApiError::Invalid {
            code,
            field: field.map(|f| format!("{prefix}.{f}")),
            detail,
        },
        other => other,
    }
}

/// Drops the days without any value at the ends of a default window (the data's own extent).
fn trim(series: &Series, end: bool, start: bool) -> ApiResult<Series> {
    let spd = series.slots_per_day();
    let has = |d: usize| {
        series.values[d * spd..(d + 1) * spd]
            .iter()
            .any(|v| v.is_finite())
    };
    let n = series.n_days();
    let first = if start {
        (0..n).find(|&d| has(d)).unwrap_or(n)
    } else {
        0
    };
    let last = if end {
        (0..n).rev().find(|&d| has(d)).map_or(0, |d| d + 1)
    } else {
        n
    };
    if last <= first {
        return Err(ApiError::invalid(
            "series",
            format!("no stored values of {} in the training window", series.name),
        ));
    }
    Ok(Series::from_values(
        series.name.clone(),
        series.first_day + first as i64,
        series.step_seconds,
        series.values[first * spd..last * spd].to_vec(),
    )?)
}

/// Filters of `GET /models`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ModelListQuery {
    /// Only this name's versions.
    pub name: Option<String>,
    /// Only this kind (`load`, `pv`, `price`).
    pub kind: Option<String>,
    /// Only models of this site.
    pub site: Option<String>,
    /// Only active versions.
    pub active: Option<bool>,
}

/// Lists model versions (without artefacts), by name then version.
#[utoipa::path(get, path = "/api/v1/models", tag = "forecasts", params(ModelListQuery),
    responses((status = 200, body = [ModelBody]), (status = 401, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_models(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ModelListQuery>,
) -> ApiResult<Json<Vec<ModelBody>>> {
    if let Some(n) = &q.name {
        check_series_name(n, "name")?;
    }
    let filter = ModelFilter {
        name: q.name,
        kind: q.kind,
        site: q.site.as_deref().map(|s| body_id("site", s)).transpose()?,
        active_only: q.active.unwrap_or(false),
    };
    let mut out = Vec::new();
    for info in state.store.list_models(&filter).await? {
        if caller.tenant().is_none() || check_model_access(&state, &caller, &info).await.is_ok() {
            out.push(info.into());
        }
    }
    Ok(Json(out))
}

async fn model_info(
    state: &AppState,
    caller: &Caller,
    name: &str,
    version: Option<u64>,
) -> ApiResult<ModelInfo> {
    check_series_name(name, "name").map_err(|_| ApiError::not_found("model", name))?;
    let info = state.store.get_model(name, version).await?.info;
    check_model_access(state, caller, &info).await?;
    Ok(info)
}

/// The newest version of a model.
#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "forecasts",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 200, body = ModelBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_model(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ModelBody>> {
    Ok(Json(model_info(&state, &caller, &name, None).await?.into()))
}

/// Every version of a model, oldest first.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions", tag = "forecasts",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 200, body = [ModelBody]), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<ModelBody>>> {
    let newest = model_info(&state, &caller, &name, None).await?;
    let versions = state
        .store
        .list_models(&ModelFilter {
            name: Some(newest.name),
            ..Default::default()
        })
        .await?;
    Ok(Json(versions.into_iter().map(Into::into).collect()))
}

/// One version of a model.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "forecasts",
    params(("name" = String, Path, description = "Model name"),
        ("version" = u64, Path, description = "Version")),
    responses((status = 200, body = ModelBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ModelBody>> {
    let v: u64 = path_id("model version", &version)?;
    Ok(Json(
        model_info(&state, &caller, &name, Some(v)).await?.into(),
    ))
}

/// Makes one version the active one of its name (operator): forecasts and the optimiser use it.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/activate", tag = "forecasts",
    params(("name" = String, Path, description = "Model name"),
        ("version" = u64, Path, description = "Version")),
    responses((status = 200, body = ModelBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn activate_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ModelBody>> {
    caller.require(Role::Operator)?;
    let v: u64 = path_id("model version", &version)?;
    let info = model_info(&state, &caller, &name, Some(v)).await?;
    Ok(Json(
        state.store.activate_model(&info.name, v).await?.into(),
    ))
}

/// Which day to forecast, and optionally which version (default: the active one).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForecastQuery {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// A version other than the active one.
    pub version: Option<u64>,
}

/// A day-ahead forecast: P10/P50/P90 per slot of one UTC day.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastBody {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u64,
    /// The chosen model family (e.g. `gbt_abs`).
    pub model_kind: String,
    /// What is forecast: `load`, `pv` or `price`.
    pub kind: String,
    /// The day (`YYYY-MM-DD`, UTC).
    pub day: String,
    /// First slot start (00:00 UTC of the day).
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Slot length (s).
    pub slot_seconds: u32,
    /// 10 % quantile per slot.
    pub p10: Vec<f64>,
    /// Median (point forecast) per slot.
    pub p50: Vec<f64>,
    /// 90 % quantile per slot.
    pub p90: Vec<f64>,
    /// How much monitoring stretched the intervals (1 = as calibrated).
    pub interval_factor: f64,
}

/// Forecasts every slot of a UTC day from the data stored strictly before it, with the active
/// version (or `version`).
#[utoipa::path(get, path = "/api/v1/models/{name}/forecast", tag = "forecasts",
    params(("name" = String, Path, description = "Model name"), ForecastQuery),
    responses((status = 200, body = ForecastBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn forecast(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ForecastQuery>,
) -> ApiResult<Json<ForecastBody>> {
    let day = parse_day(&q.day, "day").map_err(forecast_input)?;
    check_series_name(&name, "name").map_err(|_| ApiError::not_found("model", name.as_str()))?;
    let record = match q.version {
        Some(v) => state.store.get_model(&name, Some(v)).await?,
        None => state
            .store
            .active_model(&name)
            .await?
            .ok_or_else(|| ApiError::not_found("active model", name.as_str()))?,
    };
    check_model_access(&state, &caller, &record.info).await?;
    let served = forecasting::forecast_day(state.store.as_ref(), &record, day).await?;
    Ok(Json(ForecastBody {
        model: served.info.name,
        version: served.info.version,
        model_kind: served.metadata.forecast.model_kind,
        kind: served.info.kind,
        day: format_day(day),
        start: day_start(day)?,
        slot_seconds: served.metadata.slot_seconds,
        p10: served.forecast.p10,
        p50: served.forecast.p50,
        p90: served.forecast.p90,
        interval_factor: served.interval_factor,
    }))
}
