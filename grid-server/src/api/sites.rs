//! Sites, feeders and prices: group devices into sites and sites under feeders, set feeder
//! envelopes and tariffs, upload price series as CSV or JSON.

use super::devices::{body_id, check_tenant_name, list_tenant};
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiQuery, Caller, body_bytes, media_type, parse_json};
use super::types::{
    EnvelopeBody, FeederBody, PageBody, PricePointBody, PriceUpload, PriceUploadResult, PutFeeder,
    PutSite, SiteBody,
};
use super::{AppState, check_cursor, now, page_limit, path_id};
use crate::auth::Role;
use crate::store::{DEFAULT_TENANT, FeederRecord, SiteFilter, SiteRecord, StoreError};
use axum::extract::{Path, Request, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use grid_core::{
    DemandCharge, FeederEnvelope, FeederId, FeederLimit, GridConnection, Horizon, Power,
    PriceSeries, SiteId, SlotLength, Timestamp,
};
use serde::Deserialize;
use utoipa::IntoParams;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/sites", get(list_sites))
        .route(
            "/sites/{id}",
            get(get_site).put(put_site).delete(delete_site),
        )
        .route("/sites/{id}/tariff", put(put_tariff))
        .route("/feeders", get(list_feeders))
        .route("/feeders/{id}", get(get_feeder).put(put_feeder))
        .route("/feeders/{id}/envelope", put(put_envelope))
        .route("/prices", get(list_price_series))
        .route("/prices/{series}", get(get_prices).put(put_prices))
}

/// Filters and paging of `GET /sites`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SiteListQuery {
    /// Only sites on this feeder.
    pub feeder: Option<String>,
    /// Only this tenant's sites.
    pub tenant: Option<String>,
    /// The previous page's `next_cursor`.
    pub after: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
}

/// Lists sites.
#[utoipa::path(get, path = "/api/v1/sites", tag = "sites", params(SiteListQuery),
    responses((status = 200, body = PageBody<SiteBody>), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_sites(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SiteListQuery>,
) -> ApiResult<Json<PageBody<SiteBody>>> {
    let filter = SiteFilter {
        tenant: list_tenant(&caller, q.tenant)?,
        feeder: q
            .feeder
            .as_deref()
            .map(|f| body_id("feeder", f))
            .transpose()?,
        after: check_cursor(q.after)?,
        limit: page_limit(&state.http, q.limit)?,
    };
    let page = state.store.list_sites(&filter).await?;
    Ok(Json(PageBody {
        items: page.items.into_iter().map(SiteBody::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn load_site(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<SiteRecord> {
    let id: SiteId = path_id("site", raw)?;
    let site = state.store.get_site(&id).await?;
    caller.check_tenant(Some(&site.tenant))?;
    Ok(site)
}

/// One site.
#[utoipa::path(get, path = "/api/v1/sites/{id}", tag = "sites",
    params(("id" = String, Path, description = "Site id")),
    responses((status = 200, body = SiteBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_site(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SiteBody>> {
    Ok(Json(load_site(&state, &caller, &id).await?.into()))
}

/// The tenant a new object gets: the caller's, or for fleet-wide callers the one named (or
/// `default`).
fn owning_tenant(caller: &Caller, asked: Option<String>) -> ApiResult<String> {
    if let Some(t) = &asked {
        check_tenant_name(t)?;
    }
    match (caller.tenant(), asked) {
        (Some(mine), Some(asked)) if mine != asked => Err(ApiError::Forbidden(
            "the token is bound to another tenant".into(),
        )),
        (Some(mine), _) => Ok(mine.to_owned()),
        (None, asked) => Ok(asked.unwrap_or_else(|| DEFAULT_TENANT.to_owned())),
    }
}

/// Creates or replaces a site (admin).
#[utoipa::path(put, path = "/api/v1/sites/{id}", tag = "sites",
    params(("id" = String, Path, description = "Site id")),
    request_body = PutSite,
    responses((status = 200, body = SiteBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_site(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    super::extract::ApiJson(body): super::extract::ApiJson<PutSite>,
) -> ApiResult<Json<SiteBody>> {
    caller.require(Role::Admin)?;
    let id: SiteId = body_id("id", &id)?;
    let tenant = owning_tenant(&caller, body.tenant)?;
    let grid = GridConnection::new(body.import_limit_kw, body.export_limit_kw).map_err(|e| {
        match ApiError::from(e) {
            ApiError::Invalid { detail, field, .. } => ApiError::Invalid {
                code: "invalid_field",
                field: field.map(|f| {
                    f.replace("grid.import_limit_kw", "import_limit_kw")
                        .replace("grid.export_limit_kw", "export_limit_kw")
                }),
                detail,
            },
            other => other,
        }
    })?;
    let demand_charge = DemandCharge::per_kw(body.demand_charge_per_kw)?;
    let feeder = body
        .feeder
        .as_deref()
        .map(|f| body_id::<FeederId>("feeder", f))
        .transpose()?;
    if let Some(series) = &body.price_series {
        check_series_name(series, "price_series")?;
    }
    match state.store.get_site(&id).await {
        Ok(existing) => {
            caller.check_tenant(Some(&existing.tenant))?;
            if existing.tenant != tenant {
                return Err(ApiError::Conflict("a site cannot change tenant".into()));
            }
        }
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(f) = &feeder {
        let feeder = state.store.get_feeder(f).await?;
        caller.check_tenant(Some(&feeder.tenant))?;
    }
    let t = now();
    let record = SiteRecord {
        id,
        tenant,
        name: body.name,
        feeder,
        grid,
        demand_charge,
        tariff: body.tariff,
        price_series: body.price_series,
        created_at: t,
        updated_at: t,
    };
    Ok(Json(state.store.upsert_site(&record, t).await?.into()))
}

/// Deletes a site without devices (admin).
#[utoipa::path(delete, path = "/api/v1/sites/{id}", tag = "sites",
    params(("id" = String, Path, description = "Site id")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_site(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    caller.require(Role::Admin)?;
    let site = load_site(&state, &caller, &id).await?;
    state.store.delete_site(&site.id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Sets a site's tariff (operator); the body is grid-core's tariff format, e.g.
/// `{"kind":"flat","import":0.30,"export":0.08}`.
#[utoipa::path(put, path = "/api/v1/sites/{id}/tariff", tag = "sites",
    params(("id" = String, Path, description = "Site id")),
    request_body(content = Object, description = "grid-core Tariff"),
    responses((status = 200, body = SiteBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_tariff(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    super::extract::ApiJson(tariff): super::extract::ApiJson<grid_core::Tariff>,
) -> ApiResult<Json<SiteBody>> {
    caller.require(Role::Operator)?;
    let mut site = load_site(&state, &caller, &id).await?;
    site.tariff = Some(tariff);
    let t = now();
    Ok(Json(state.store.upsert_site(&site, t).await?.into()))
}

/// Lists feeders (of the caller's tenant).
#[utoipa::path(get, path = "/api/v1/feeders", tag = "sites",
    responses((status = 200, body = [FeederBody]), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_feeders(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<FeederBody>>> {
    let feeders = state.store.list_feeders(caller.tenant()).await?;
    Ok(Json(feeders.into_iter().map(FeederBody::from).collect()))
}

async fn load_feeder(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<FeederRecord> {
    let id: FeederId = path_id("feeder", raw)?;
    let feeder = state.store.get_feeder(&id).await?;
    caller.check_tenant(Some(&feeder.tenant))?;
    Ok(feeder)
}

/// One feeder.
#[utoipa::path(get, path = "/api/v1/feeders/{id}", tag = "sites",
    params(("id" = String, Path, description = "Feeder id")),
    responses((status = 200, body = FeederBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_feeder(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<FeederBody>> {
    Ok(Json(load_feeder(&state, &caller, &id).await?.into()))
}

/// Creates or renames a feeder (admin); its envelope is kept.
#[utoipa::path(put, path = "/api/v1/feeders/{id}", tag = "sites",
    params(("id" = String, Path, description = "Feeder id")),
    request_body = PutFeeder,
    responses((status = 200, body = FeederBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_feeder(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    super::extract::ApiJson(body): super::extract::ApiJson<PutFeeder>,
) -> ApiResult<Json<FeederBody>> {
    caller.require(Role::Admin)?;
    let id: FeederId = body_id("id", &id)?;
    let tenant = owning_tenant(&caller, body.tenant)?;
    let envelope = match state.store.get_feeder(&id).await {
        Ok(existing) => {
            caller.check_tenant(Some(&existing.tenant))?;
            if existing.tenant != tenant {
                return Err(ApiError::Conflict("a feeder cannot change tenant".into()));
            }
            existing.envelope
        }
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let t = now();
    let record = FeederRecord {
        id,
        tenant,
        name: body.name,
        envelope,
        created_at: t,
        updated_at: t,
    };
    Ok(Json(state.store.upsert_feeder(&record, t).await?.into()))
}

/// Sets a feeder's envelope (operator): per-slot limits on its sites' summed net import.
#[utoipa::path(put, path = "/api/v1/feeders/{id}/envelope", tag = "sites",
    params(("id" = String, Path, description = "Feeder id")),
    request_body = EnvelopeBody,
    responses((status = 200, body = FeederBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_envelope(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    super::extract::ApiJson(body): super::extract::ApiJson<EnvelopeBody>,
) -> ApiResult<Json<FeederBody>> {
    caller.require(Role::Operator)?;
    let mut feeder = load_feeder(&state, &caller, &id).await?;
    if body.import_limit_kw.len() != body.export_limit_kw.len() {
        return Err(ApiError::invalid(
            "export_limit_kw",
            "must have as many slots as import_limit_kw",
        ));
    }
    let slot = SlotLength::from_seconds(body.slot_seconds)?;
    let horizon = Horizon::new(body.start, slot, body.import_limit_kw.len())?;
    let mut limits = Vec::with_capacity(body.import_limit_kw.len());
    for (i, (&imp, &exp)) in body
        .import_limit_kw
        .iter()
        .zip(&body.export_limit_kw)
        .enumerate()
    {
        let import = Power::from_kw(imp)
            .map_err(|_| ApiError::invalid(format!("import_limit_kw[{i}]"), "not finite"))?;
        let export = Power::from_kw(exp)
            .ok()
            .filter(|p| p.kw() >= 0.0)
            .ok_or_else(|| {
                ApiError::invalid(format!("export_limit_kw[{i}]"), "must be finite and >= 0")
            })?;
        limits.push(FeederLimit { import, export });
    }
    let mut sites = Vec::with_capacity(body.sites.len());
    for (i, s) in body.sites.iter().enumerate() {
        let id: SiteId = s
            .parse()
            .map_err(|_| ApiError::invalid(format!("sites[{i}]"), "invalid site id"))?;
        let site = state.store.get_site(&id).await.map_err(|e| match e {
            StoreError::NotFound { .. } => {
                ApiError::invalid(format!("sites[{i}]"), format!("unknown site {id}"))
            }
            e => e.into(),
        })?;
        caller.check_tenant(Some(&site.tenant))?;
        sites.push(id);
    }
    feeder.envelope = Some(FeederEnvelope::new(
        feeder.id.clone(),
        sites,
        horizon,
        limits,
    )?);
    let t = now();
    Ok(Json(state.store.upsert_feeder(&feeder, t).await?.into()))
}

pub(super) fn check_series_name(name: &str, field: &'static str) -> ApiResult<()> {
    // Series names follow the id rules (they may be a site id or a market area like `DE-LU`).
    SiteId::new(name)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(field, e.to_string().replace("site_id", field)))
}

/// The names of the stored price series.
#[utoipa::path(get, path = "/api/v1/prices", tag = "sites",
    responses((status = 200, body = [String]), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_price_series(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(state.store.list_price_series().await?))
}

/// A time range `[from, to)`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// Start (inclusive, RFC 3339 UTC).
    #[param(value_type = String, format = DateTime)]
    pub from: Timestamp,
    /// End (exclusive).
    #[param(value_type = String, format = DateTime)]
    pub to: Timestamp,
}

/// The stored slots of a price series in `[from, to)`.
#[utoipa::path(get, path = "/api/v1/prices/{series}", tag = "sites",
    params(("series" = String, Path, description = "Series name"), RangeQuery),
    responses((status = 200, body = [PricePointBody]), (status = 401, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_prices(
    State(state): State<AppState>,
    _caller: Caller,
    Path(series): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<Vec<PricePointBody>>> {
    check_series_name(&series, "series")?;
    check_range(q.from, q.to, 400)?;
    let points = state.store.prices(&series, q.from, q.to).await?;
    Ok(Json(
        points
            .into_iter()
            .map(|p| PricePointBody {
                start: p.start,
                import: p.import,
                export: p.export,
            })
            .collect(),
    ))
}

/// Checks `from < to` and a span of at most `max_days`.
pub(super) fn check_range(from: Timestamp, to: Timestamp, max_days: i64) -> ApiResult<()> {
    if from >= to {
        return Err(ApiError::invalid("to", "must be after `from`"));
    }
    if to.as_second() - from.as_second() > max_days * 86_400 {
        return Err(ApiError::invalid(
            "to",
            format!("the range may span at most {max_days} days"),
        ));
    }
    Ok(())
}

/// Uploads a price series (operator) as JSON ([`PriceUpload`]) or CSV (`Content-Type: text/csv`,
/// header `timestamp_utc,import[,export]`, evenly spaced rows). Slots already stored at the same
/// start are replaced.
#[utoipa::path(put, path = "/api/v1/prices/{series}", tag = "sites",
    params(("series" = String, Path, description = "Series name, e.g. a market area")),
    request_body(content(
        (PriceUpload = "application/json"),
        (String = "text/csv", example = "timestamp_utc,import,export\n2026-11-27T00:00:00Z,0.21,0.05\n2026-11-27T01:00:00Z,0.19,0.05\n")
    )),
    responses((status = 200, body = PriceUploadResult), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_prices(
    State(state): State<AppState>,
    caller: Caller,
    Path(series): Path<String>,
    req: Request,
) -> ApiResult<Json<PriceUploadResult>> {
    caller.require(Role::Operator)?;
    check_series_name(&series, "series")?;
    let content_type = media_type(&req);
    let bytes = body_bytes(req, &()).await?;
    let prices = match content_type.as_str() {
        "application/json" => {
            let upload: PriceUpload = parse_json(&bytes)?;
            let slot = SlotLength::from_seconds(upload.slot_seconds)?;
            let horizon = Horizon::new(upload.start, slot, upload.import.len())?;
            let export = upload
                .export
                .unwrap_or_else(|| vec![0.0; upload.import.len()]);
            PriceSeries::new(horizon, &upload.import, &export)?
        }
        "text/csv" => parse_price_csv(&bytes)?,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "expected application/json or text/csv".into(),
            ));
        }
    };
    let slots = state.store.put_prices(&series, &prices).await?;
    // Model monitoring: the new prices are the actual values of earlier price forecasts.
    let source = crate::forecasting::Source {
        kind: crate::forecasting::SourceKind::Prices,
        series: series.clone(),
    };
    let horizon = prices.horizon();
    if let Err(e) = crate::forecasting::monitor(
        state.store.as_ref(),
        &source,
        horizon.start(),
        horizon.end(),
    )
    .await
    {
        tracing::warn!(error = %e, series = %series, "price forecast monitoring failed");
    }
    Ok(Json(PriceUploadResult { series, slots }))
}

/// Parses `timestamp_utc,import[,export]` CSV into a price series (rows evenly spaced).
pub fn parse_price_csv(bytes: &[u8]) -> ApiResult<PriceSeries> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ApiError::invalid("csv", "the CSV is not UTF-8"))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header_line) = lines
        .next()
        .ok_or_else(|| ApiError::invalid("csv", "empty CSV"))?;
    let header: Vec<&str> = header_line.split(',').map(str::trim).collect();
    if header.first() != Some(&"timestamp_utc") || header.get(1) != Some(&"import") {
        return Err(ApiError::invalid(
            "csv",
            "the header must be timestamp_utc,import[,export]",
        ));
    }
    let has_export = header.get(2) == Some(&"export");
    let (mut times, mut import, mut export) = (Vec::new(), Vec::new(), Vec::new());
    for (n, line) in lines {
        let field = |col: &str| format!("csv line {} {col}", n + 1);
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let at: Timestamp = cols
            .first()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ApiError::invalid(field("timestamp_utc"), "not an RFC 3339 instant"))?;
        let num = |i: usize, name: &str| -> ApiResult<f64> {
            cols.get(i)
                .and_then(|c| c.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| ApiError::invalid(field(name), "not a finite number"))
        };
        times.push(at);
        import.push(num(1, "import")?);
        export.push(if has_export { num(2, "export")? } else { 0.0 });
    }
    let start = *times
        .first()
        .ok_or_else(|| ApiError::invalid("csv", "no data rows"))?;
    let step = match times.get(1) {
        Some(second) => second.as_second() - start.as_second(),
        None => 3600,
    };
    let slot = u32::try_from(step)
        .ok()
        .and_then(|s| SlotLength::from_seconds(s).ok())
        .ok_or_else(|| ApiError::invalid("csv line 3 timestamp_utc", "bad slot spacing"))?;
    for (i, t) in times.iter().enumerate() {
        if t.as_second() - start.as_second() != step * i as i64 {
            return Err(ApiError::invalid(
                format!("csv row {} timestamp_utc", i + 1),
                "rows must be evenly spaced without gaps",
            ));
        }
    }
    let horizon = Horizon::new(start, slot, times.len())?;
    Ok(PriceSeries::new(horizon, &import, &export)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_prices_parse_and_bad_rows_are_named() {
        let csv = b"timestamp_utc,import,export\n2026-11-27T00:00:00Z,0.2,0.05\n2026-11-27T01:00:00Z,0.3,0.05\n";
        let p = parse_price_csv(csv).unwrap();
        assert_eq!(p.horizon().len(), 2);
        assert_eq!(p.horizon().slot_length(), SlotLength::HOUR);
        let bad = b"timestamp_utc,import\n2026-11-27T00:00:00Z,NaN\n";
        let e = parse_price_csv(bad).unwrap_err().problem();
        assert_eq!(e.field.as_deref(), Some("csv line 2 import"));
        let gap = b"timestamp_utc,import\n2026-11-27T00:00:00Z,1\n2026-11-27T01:00:00Z,1\n2026-11-27T03:00:00Z,1\n";
        assert!(parse_price_csv(gap).is_err());
    }
}
