//! Schedule routes: create (validated against the device's spec: 422 with the violations), list,
//! get, cancel, supersede, and the per-device delivery status (state and acks).

use super::devices::{body_id, list_tenant, load_device};
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiJson, ApiQuery, Caller, RequestId};
use super::types::{CreateSchedule, PageBody, ScheduleBody, SupersedeSchedule};
use super::{AppState, check_cursor, now, page_limit, path_id};
use crate::auth::Role;
use crate::store::{
    AckRecord, AckTarget, DeviceRecord, NewCommand, NewSchedule, ScheduleFilter, ScheduleRecord,
    StoreError,
};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use grid_core::{
    Command, Energy, ExecutionState, Horizon, Power, Schedule, ScheduleId, ScheduleVersion,
    SlotLength, Timestamp,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/schedules", get(list_schedules).post(create_schedule))
        .route("/schedules/{id}", get(get_schedule))
        .route("/schedules/{id}/cancel", post(cancel_schedule))
        .route("/schedules/{id}/supersede", post(supersede_schedule))
        .route("/schedules/{id}/versions/{version}", get(get_version))
        .route("/schedules/{id}/versions/{version}/acks", get(list_acks))
}

/// Builds, validates and stores a schedule version, then publishes it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn store_schedule(
    state: &AppState,
    device: &DeviceRecord,
    id: ScheduleId,
    version: ScheduleVersion,
    start: Timestamp,
    slot_seconds: u32,
    setpoints_kw: &[f64],
    initial_energy_kwh: Option<f64>,
    distribute: bool,
    correlation_id: &str,
) -> ApiResult<ScheduleRecord> {
    let slot = SlotLength::from_seconds(slot_seconds)
        .map_err(|e| ApiError::invalid("slot_seconds", e.to_string()))?;
    let horizon = Horizon::new(start, slot, setpoints_kw.len()).map_err(|e| {
        let field = if setpoints_kw.is_empty() {
            "setpoints_kw"
        } else {
            "start"
        };
        ApiError::invalid(field, e.to_string())
    })?;
    let setpoints = setpoints_kw
        .iter()
        .enumerate()
        .map(|(i, &kw)| {
            Power::from_kw(kw)
                .map_err(|_| ApiError::invalid(format!("setpoints_kw[{i}]"), "not finite"))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let initial = match initial_energy_kwh {
        Some(kwh) => Energy::from_kwh(kwh)
            .ok()
            .filter(|e| e.kwh() >= 0.0 && e.kwh() <= device.spec.capacity().kwh())
            .ok_or_else(|| {
                ApiError::invalid(
                    "initial_energy_kwh",
                    format!(
                        "must be finite and within [0, {}] kWh",
                        device.spec.capacity().kwh()
                    ),
                )
            })?,
        None => {
            let sample = state
                .store
                .last_telemetry(&device.id)
                .await?
                .ok_or_else(|| {
                    ApiError::invalid(
                        "initial_energy_kwh",
                        "the device has sent no telemetry yet: give initial_energy_kwh",
                    )
                })?;
            sample.soc.energy(device.spec.capacity())
        }
    };
    let created = now();
    let schedule = Schedule::planned(
        id,
        device.id.clone(),
        version,
        horizon,
        setpoints,
        &device.spec,
        initial,
        created,
    )
    .map_err(|e| match e {
        grid_core::Error::Inconsistent {
            field: "schedule.expires_at",
            ..
        } => ApiError::invalid("start", "the horizon has already ended"),
        e => e.into(),
    })?;
    schedule.validate(&device.spec, initial)?;
    let new = NewSchedule {
        schedule,
        correlation_id: (!correlation_id.is_empty()).then(|| correlation_id.to_owned()),
    };
    let record = state.store.create_schedule(&new, created).await?;
    if distribute
        && let Err(e) = state
            .dispatch
            .distribute(Some(device), &record, correlation_id)
            .await
    {
        // Stored and in the outbox: the transport retries.
        tracing::warn!(error = %e, schedule = %record.schedule.id(), "publish deferred");
    }
    Ok(record)
}

fn created(record: &ScheduleRecord) -> impl IntoResponse + use<> {
    let location = format!(
        "/api/v1/schedules/{}/versions/{}",
        record.schedule.id(),
        record.schedule.version().0
    );
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(ScheduleBody::from_record(record, true)),
    )
}

/// Creates a schedule for a device and publishes it (operator). The setpoints are simulated from
/// the initial energy and checked against the device's spec: 422 `schedule_violations` lists
/// every broken limit.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules",
    request_body = CreateSchedule,
    responses((status = 201, body = ScheduleBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_schedule(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(rid): RequestId,
    ApiJson(body): ApiJson<CreateSchedule>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Operator)?;
    let id: ScheduleId = body_id("id", &body.id)?;
    let device_id: grid_core::DeviceId = body_id("device", &body.device)?;
    let device = state
        .store
        .get_device(&device_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => {
                ApiError::invalid("device", format!("unknown device {device_id}"))
            }
            e => e.into(),
        })?;
    caller.check_tenant(Some(&device.tenant))?;
    let version = match body.version {
        Some(0) => return Err(ApiError::invalid("version", "versions start at 1")),
        Some(v) => ScheduleVersion(v),
        None => match state.store.get_schedule(&id, None).await {
            Ok(latest) => latest.schedule.version().next(),
            Err(StoreError::NotFound { .. }) => ScheduleVersion(1),
            Err(e) => return Err(e.into()),
        },
    };
    let record = store_schedule(
        &state,
        &device,
        id,
        version,
        body.start,
        body.slot_seconds,
        &body.setpoints_kw,
        body.initial_energy_kwh,
        body.distribute,
        &rid,
    )
    .await?;
    Ok(created(&record))
}

/// Filters and paging of `GET /schedules` (newest first).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ScheduleListQuery {
    /// Only this device's schedules.
    pub device: Option<String>,
    /// Only the versions of this schedule id.
    pub id: Option<String>,
    /// Only this state (`queued`, `delivered`, `accepted`, `rejected`, `executing`, `completed`,
    /// `failed`, `expired`, `superseded`, `cancelled`).
    pub state: Option<String>,
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Created at or after.
    #[param(value_type = Option<String>, format = DateTime)]
    pub created_from: Option<Timestamp>,
    /// Created before.
    #[param(value_type = Option<String>, format = DateTime)]
    pub created_to: Option<Timestamp>,
    /// The previous page's `next_cursor`.
    pub after: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
}

/// Lists schedules, newest first (setpoint arrays omitted; get one for them).
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", params(ScheduleListQuery),
    responses((status = 200, body = PageBody<ScheduleBody>), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_schedules(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ScheduleListQuery>,
) -> ApiResult<Json<PageBody<ScheduleBody>>> {
    let filter = ScheduleFilter {
        device: q
            .device
            .as_deref()
            .map(|d| body_id("device", d))
            .transpose()?,
        id: q.id.as_deref().map(|d| body_id("id", d)).transpose()?,
        state: q.state.as_deref().map(parse_state).transpose()?,
        tenant: list_tenant(&caller, q.tenant)?,
        created_from: q.created_from,
        created_to: q.created_to,
        after: check_cursor(q.after)?,
        limit: page_limit(&state.http, q.limit)?,
    };
    let page = state.store.list_schedules(&filter).await?;
    Ok(Json(PageBody {
        items: page
            .items
            .iter()
            .map(|r| ScheduleBody::from_record(r, false))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Parses a lifecycle state name.
pub(super) fn parse_state(s: &str) -> ApiResult<ExecutionState> {
    ExecutionState::parse(s).ok_or_else(|| ApiError::invalid("state", "unknown state"))
}

async fn load_schedule(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    version: Option<ScheduleVersion>,
) -> ApiResult<ScheduleRecord> {
    let id: ScheduleId = path_id("schedule", raw)?;
    let record = state.store.get_schedule(&id, version).await?;
    if caller.tenant().is_some() {
        load_device(state, caller, record.schedule.device().as_str()).await?;
    }
    Ok(record)
}

/// The newest version of a schedule, with its delivery state.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 200, body = ScheduleBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleBody>> {
    let r = load_schedule(&state, &caller, &id, None).await?;
    Ok(Json(ScheduleBody::from_record(&r, true)))
}

fn parse_version(raw: &str) -> ApiResult<ScheduleVersion> {
    raw.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .map(ScheduleVersion)
        .ok_or_else(|| {
            ApiError::not_found("schedule version", raw.chars().take(20).collect::<String>())
        })
}

/// One version of a schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{id}/versions/{version}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"),
        ("version" = u64, Path, description = "Version")),
    responses((status = 200, body = ScheduleBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<Json<ScheduleBody>> {
    let version = parse_version(&version)?;
    let r = load_schedule(&state, &caller, &id, Some(version)).await?;
    Ok(Json(ScheduleBody::from_record(&r, true)))
}

/// An acknowledgement as the device sent it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AckBody {
    /// The ack message id.
    pub message_id: String,
    /// The state the device reported.
    pub state: String,
    /// Machine-readable reason (rejections, failures).
    pub reason_code: Option<String>,
    /// Human-readable reason.
    pub reason: Option<String>,
    /// Sent by the device at.
    #[schema(value_type = String, format = DateTime)]
    pub sent_at: Timestamp,
    /// Received by the server at.
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Timestamp,
}

impl From<AckRecord> for AckBody {
    fn from(a: AckRecord) -> Self {
        AckBody {
            message_id: a.message_id,
            state: a.state.as_str().to_owned(),
            reason_code: a.reason_code,
            reason: a.reason,
            sent_at: a.sent_at,
            received_at: a.received_at,
        }
    }
}

/// The acks a device sent for one schedule version, in arrival order.
#[utoipa::path(get, path = "/api/v1/schedules/{id}/versions/{version}/acks", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"),
        ("version" = u64, Path, description = "Version")),
    responses((status = 200, body = [AckBody]), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_acks(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<Json<Vec<AckBody>>> {
    let version = parse_version(&version)?;
    let r = load_schedule(&state, &caller, &id, Some(version)).await?;
    let acks = state
        .store
        .list_acks(&AckTarget::Schedule {
            id: r.schedule.id().clone(),
            version,
        })
        .await?;
    Ok(Json(acks.into_iter().map(AckBody::from).collect()))
}

/// Why a schedule is cancelled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Recorded with the cancellation.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Cancels the newest non-terminal version of a schedule (operator); a device that already has
/// it is told to stop with a `cancel_schedule` command.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/cancel", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = CancelBody,
    responses((status = 200, body = ScheduleBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn cancel_schedule(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(rid): RequestId,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<Json<ScheduleBody>> {
    caller.require(Role::Operator)?;
    // The body is optional: none, or `{"reason": "..."}`.
    let bytes = super::extract::body_bytes(req, &()).await?;
    let reason = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        super::extract::parse_json::<CancelBody>(&bytes)?.reason
    };
    if let Some(r) = &reason
        && r.len() > 500
    {
        return Err(ApiError::invalid("reason", "at most 500 bytes"));
    }
    let before = load_schedule(&state, &caller, &id, None).await?;
    let t = now();
    let record = state
        .store
        .cancel_schedule(before.schedule.id(), t, reason.as_deref())
        .await?;
    let device_has_it = !matches!(before.state, ExecutionState::Queued) || before.attempts > 0;
    if device_has_it {
        let command = NewCommand {
            id: super::commands::command_id()?,
            device: record.schedule.device().clone(),
            command: Command::CancelSchedule {
                schedule: record.schedule.id().clone(),
            },
            correlation_id: (!rid.is_empty()).then(|| rid.clone()),
            expires_at: record.schedule.expires_at().max(t),
        };
        match state.store.create_command(&command, t).await {
            Ok(c) => {
                if let Err(e) = state.dispatch.send_command(None, &c, &rid).await {
                    tracing::warn!(error = %e, "cancel command publish deferred");
                }
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(ScheduleBody::from_record(&record, true)))
}

/// Replaces a schedule with a new version (operator): same id and device, version + 1; the old
/// version becomes `superseded` and the new one is published.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/supersede", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = SupersedeSchedule,
    responses((status = 201, body = ScheduleBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn supersede_schedule(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(rid): RequestId,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SupersedeSchedule>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Operator)?;
    let id: ScheduleId = path_id("schedule", &id)?;
    let current = state.store.get_schedule(&id, None).await?;
    let device = state.store.get_device(current.schedule.device()).await?;
    caller.check_tenant(Some(&device.tenant))?;
    let record = store_schedule(
        &state,
        &device,
        id,
        current.schedule.version().next(),
        body.start.unwrap_or(current.schedule.horizon().start()),
        body.slot_seconds
            .unwrap_or(current.schedule.horizon().slot_length().seconds()),
        &body.setpoints_kw,
        body.initial_energy_kwh,
        true,
        &rid,
    )
    .await?;
    Ok(created(&record))
}
