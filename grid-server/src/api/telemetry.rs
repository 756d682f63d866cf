//! Telemetry queries: raw samples of a device, or time-bucketed downsampling of a device, a site,
//! a tenant or the fleet.

use super::AppState;
use super::devices::{body_id, list_tenant, load_device};
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiQuery, Caller};
use super::sites::check_range;
use super::types::{BucketBody, SampleBody};
use crate::store::{
    BucketQuery, MAX_BUCKETS, MAX_TELEMETRY_SAMPLES, TelemetryQuery, TelemetryScope,
};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use grid_core::{SiteId, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/devices/{id}/telemetry", get(device_telemetry))
        .route("/telemetry", get(group_telemetry))
}

/// The longest range one telemetry query may cover.
const MAX_RANGE_DAYS: i64 = 366;

/// A device telemetry query: raw samples, or buckets when `bucket_seconds` is given.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceTelemetryQuery {
    /// Start (inclusive).
    #[param(value_type = String, format = DateTime)]
    pub from: Timestamp,
    /// End (exclusive).
    #[param(value_type = String, format = DateTime)]
    pub to: Timestamp,
    /// Bucket length in seconds; absent = raw samples.
    pub bucket_seconds: Option<u32>,
    /// Raw samples: at most this many (default 1000, at most 100000).
    pub limit: Option<u32>,
}

/// Raw samples or buckets.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TelemetryBody {
    /// Raw samples, oldest first.
    Samples {
        /// The samples.
        samples: Vec<SampleBody>,
    },
    /// Buckets, oldest first (empty buckets omitted).
    Buckets {
        /// Bucket length (s).
        bucket_seconds: u32,
        /// The buckets.
        buckets: Vec<BucketBody>,
    },
}

fn check_buckets(from: Timestamp, to: Timestamp, bucket_seconds: u32) -> ApiResult<()> {
    if bucket_seconds == 0 {
        return Err(ApiError::invalid("bucket_seconds", "must be > 0"));
    }
    let n = (to.as_second() - from.as_second()) / i64::from(bucket_seconds);
    if n > MAX_BUCKETS {
        return Err(ApiError::invalid(
            "bucket_seconds",
            format!("the range holds {n} buckets; at most {MAX_BUCKETS}"),
        ));
    }
    Ok(())
}

/// A device's telemetry in `[from, to)`.
#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry", tag = "telemetry",
    params(("id" = String, Path, description = "Device id"), DeviceTelemetryQuery),
    responses((status = 200, body = TelemetryBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn device_telemetry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeviceTelemetryQuery>,
) -> ApiResult<Json<TelemetryBody>> {
    check_range(q.from, q.to, MAX_RANGE_DAYS)?;
    let device = if caller.tenant().is_some() {
        load_device(&state, &caller, &id).await?.id
    } else {
        super::path_id("device", &id)?
    };
    match q.bucket_seconds {
        Some(bucket_seconds) => {
            check_buckets(q.from, q.to, bucket_seconds)?;
            let buckets = state
                .store
                .telemetry_buckets(&BucketQuery {
                    scope: TelemetryScope::Device(device),
                    from: q.from,
                    to: q.to,
                    bucket_seconds,
                })
                .await?;
            Ok(Json(TelemetryBody::Buckets {
                bucket_seconds,
                buckets: buckets.iter().map(BucketBody::from).collect(),
            }))
        }
        None => {
            let limit = q.limit.unwrap_or(1000);
            if limit == 0 || limit > MAX_TELEMETRY_SAMPLES {
                return Err(ApiError::invalid(
                    "limit",
                    format!("must be in 1..={MAX_TELEMETRY_SAMPLES}"),
                ));
            }
            let samples = state
                .store
                .telemetry(&TelemetryQuery {
                    device,
                    from: q.from,
                    to: q.to,
                    limit,
                })
                .await?;
            Ok(Json(TelemetryBody::Samples {
                samples: samples.iter().map(SampleBody::from).collect(),
            }))
        }
    }
}

/// A group telemetry query: one of `site`, `tenant`, or neither (the fleet).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GroupTelemetryQuery {
    /// Aggregate this site's devices.
    pub site: Option<String>,
    /// Aggregate this tenant's devices.
    pub tenant: Option<String>,
    /// Start (inclusive).
    #[param(value_type = String, format = DateTime)]
    pub from: Timestamp,
    /// End (exclusive).
    #[param(value_type = String, format = DateTime)]
    pub to: Timestamp,
    /// Bucket length in seconds (required).
    pub bucket_seconds: u32,
}

/// Downsampled telemetry of a site, a tenant or the fleet (powers summed, SoC averaged).
#[utoipa::path(get, path = "/api/v1/telemetry", tag = "telemetry", params(GroupTelemetryQuery),
    responses((status = 200, body = TelemetryBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn group_telemetry(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<GroupTelemetryQuery>,
) -> ApiResult<Json<TelemetryBody>> {
    check_range(q.from, q.to, MAX_RANGE_DAYS)?;
    check_buckets(q.from, q.to, q.bucket_seconds)?;
    let scope = match (q.site, list_tenant(&caller, q.tenant)?) {
        (Some(site), _) => {
            let id: SiteId = body_id("site", &site)?;
            let record = state.store.get_site(&id).await?;
            caller.check_tenant(Some(&record.tenant))?;
            TelemetryScope::Site(id)
        }
        (None, Some(tenant)) => TelemetryScope::Tenant(tenant),
        (None, None) => TelemetryScope::Fleet,
    };
    let buckets = state
        .store
        .telemetry_buckets(&BucketQuery {
            scope,
            from: q.from,
            to: q.to,
            bucket_seconds: q.bucket_seconds,
        })
        .await?;
    Ok(Json(TelemetryBody::Buckets {
        bucket_seconds: q.bucket_seconds,
        buckets: buckets.iter().map(BucketBody::from).collect(),
    }))
}
