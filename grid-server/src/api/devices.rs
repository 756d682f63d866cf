//! Device routes: register, list (filters, cursor pagination), get, update, decommission, live
//! status.

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::types::{DeviceBody, DeviceStatusBody, PageBody, RegisterDevice, UpdateDevice};
use super::{AppState, check_cursor, now, page_limit, path_id};
use crate::auth::Role;
use crate::store::{DeviceFilter, DeviceUpdate, NewDevice};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use grid_core::{BatterySpec, DeviceId, SiteId};
use serde::Deserialize;
use utoipa::IntoParams;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/devices", get(list_devices).post(register_device))
        .route(
            "/devices/{id}",
            get(get_device)
                .patch(update_device)
                .delete(decommission_device),
        )
        .route("/devices/{id}/status", get(device_status))
}

/// Sort orders a device list may ask for (the only whitelisted column is the id).
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
pub enum DeviceSort {
    /// By id, ascending.
    #[serde(rename = "id")]
    Id,
}

/// Filters and paging of `GET /devices`; unknown parameters are refused (422).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceListQuery {
    /// Only devices of this site.
    pub site: Option<String>,
    /// Only devices whose last status was online (true) or not (false).
    pub online: Option<bool>,
    /// Include decommissioned devices.
    pub include_decommissioned: Option<bool>,
    /// Only this tenant's devices (tenant-bound tokens only see their own).
    pub tenant: Option<String>,
    /// Sort order: `id` (the default and only choice).
    pub sort: Option<DeviceSort>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
}

/// The tenant a list is confined to: the caller's, or (for fleet-wide callers) the one asked for.
pub(super) fn list_tenant(caller: &Caller, asked: Option<String>) -> ApiResult<Option<String>> {
    if let Some(t) = &asked {
        check_tenant_name(t)?;
    }
    match (caller.tenant(), asked) {
        (Some(mine), Some(asked)) if mine != asked => Err(ApiError::Forbidden(
            "the token is bound to another tenant".into(),
        )),
        (Some(mine), _) => Ok(Some(mine.to_owned())),
        (None, asked) => Ok(asked),
    }
}

/// Tenant names follow the id rules.
pub(super) fn check_tenant_name(t: &str) -> ApiResult<()> {
    SiteId::new(t)
        .map(|_| ())
        .map_err(|_| ApiError::invalid("tenant", "invalid tenant name"))
}

/// Parses a body id, naming the field.
pub(super) fn body_id<T: std::str::FromStr<Err = grid_core::Error>>(
    field: &'static str,
    raw: &str,
) -> ApiResult<T> {
    raw.parse::<T>()
        .map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// Lists devices.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    params(DeviceListQuery),
    responses((status = 200, body = PageBody<DeviceBody>),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DeviceListQuery>,
) -> ApiResult<Json<PageBody<DeviceBody>>> {
    let filter = DeviceFilter {
        tenant: list_tenant(&caller, q.tenant)?,
        site: q.site.as_deref().map(|s| body_id("site", s)).transpose()?,
        online: q.online,
        include_decommissioned: q.include_decommissioned.unwrap_or(false),
        after: check_cursor(q.after)?,
        limit: page_limit(&state.http, q.limit)?,
    };
    let page = state.store.list_devices(&filter).await?;
    Ok(Json(PageBody {
        items: page.items.into_iter().map(DeviceBody::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Registers a device at a site (admin).
#[utoipa::path(post, path = "/api/v1/devices", tag = "devices",
    request_body = RegisterDevice,
    responses((status = 201, body = DeviceBody),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn register_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RegisterDevice>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Admin)?;
    let id: DeviceId = body_id("id", &body.id)?;
    let site_id: SiteId = body_id("site", &body.site)?;
    let spec = spec_from(body.spec)?;
    if let Some(label) = &body.label {
        check_label(label)?;
    }
    let site = state.store.get_site(&site_id).await?;
    caller.check_tenant(Some(&site.tenant))?;
    let new = NewDevice {
        id,
        tenant: site.tenant,
        site: site_id,
        spec,
        label: body.label,
        codec: body.codec.into(),
    };
    let record = state.store.register_device(&new, now()).await?;
    let location = format!("/api/v1/devices/{}", record.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(DeviceBody::from(record)),
    ))
}

/// Builds a spec, naming the field under `spec.`.
pub(super) fn spec_from(body: super::types::BatterySpecBody) -> ApiResult<BatterySpec> {
    BatterySpec::new(body.into()).map_err(|e| {
        let p = ApiError::from(e);
        match p {
            ApiError::Invalid {
                code,
                field,
                detail,
            } => ApiError::Invalid {
                code,
                field: field.map(|f| format!("spec.{}", f.trim_start_matches("battery."))),
                detail,
            },
            other => other,
        }
    })
}

fn check_label(label: &str) -> ApiResult<()> {
    if label.chars().count() > 200 || label.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "label",
            "at most 200 characters, no control characters",
        ));
    }
    Ok(())
}

/// Loads a device and checks the caller may see it.
pub(super) async fn load_device(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> ApiResult<crate::store::DeviceRecord> {
    let id: DeviceId = path_id("device", raw)?;
    let device = state.store.get_device(&id).await?;
    caller.check_tenant(Some(&device.tenant))?;
    Ok(device)
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceBody),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceBody>> {
    Ok(Json(load_device(&state, &caller, &id).await?.into()))
}

/// Changes a device's site, spec, label or codec (admin).
#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    request_body = UpdateDevice,
    responses((status = 200, body = DeviceBody),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn update_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateDevice>,
) -> ApiResult<Json<DeviceBody>> {
    caller.require(Role::Admin)?;
    let device = load_device(&state, &caller, &id).await?;
    let site = match &body.site {
        Some(s) => {
            let site_id: SiteId = body_id("site", s)?;
            let site = state.store.get_site(&site_id).await?;
            caller.check_tenant(Some(&site.tenant))?;
            if site.tenant != device.tenant {
                return Err(ApiError::invalid(
                    "site",
                    "a device cannot move to another tenant's site",
                ));
            }
            Some(site_id)
        }
        None => None,
    };
    if let Some(Some(label)) = &body.label {
        check_label(label)?;
    }
    let update = DeviceUpdate {
        site,
        spec: body.spec.map(spec_from).transpose()?,
        label: body.label,
        codec: body.codec.map(Into::into),
    };
    let record = state
        .store
        .update_device(&device.id, &update, now())
        .await?;
    Ok(Json(record.into()))
}

/// Decommissions a device (admin): it keeps its history, gets nothing new. Idempotent.
#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceBody),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn decommission_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceBody>> {
    caller.require(Role::Admin)?;
    let device = load_device(&state, &caller, &id).await?;
    let record = state.store.decommission_device(&device.id, now()).await?;
    Ok(Json(record.into()))
}

/// A device's live status: online, versions, reported and newest schedule, last telemetry.
#[utoipa::path(get, path = "/api/v1/devices/{id}/status", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceStatusBody),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn device_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceStatusBody>> {
    // Fleet-wide callers skip the ownership lookup: one store call on the hot path.
    let device_id: DeviceId = if caller.tenant().is_some() {
        load_device(&state, &caller, &id).await?.id
    } else {
        path_id("device", &id)?
    };
    let status = state.store.device_status(&device_id).await?;
    Ok(Json(status.into()))
}
