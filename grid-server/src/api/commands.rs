//! Immediate commands with ack tracking: send to a device, list a device's, get one with its state.

use super::devices::load_device;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiJson, ApiQuery, Caller, RequestId};
use super::schedules::parse_state;
use super::types::{CommandBody, CommandRequest, PageBody};
use super::{AppState, check_cursor, now, page_limit};
use crate::auth::Role;
use crate::store::{CommandFilter, NewCommand};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use grid_core::{Command, Power, ScheduleId};
use serde::Deserialize;
use std::time::Duration;
use utoipa::IntoParams;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/devices/{id}/commands",
            get(list_commands).post(send_command),
        )
        .route("/commands/{id}", get(get_command))
}

/// How long a command without its own duration stays valid.
const DEFAULT_COMMAND_VALIDITY: Duration = Duration::from_secs(300);

/// A fresh command id: `cmd-` and 128 random bits in hex.
pub(super) fn command_id() -> ApiResult<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut id = String::with_capacity(36);
    id.push_str("cmd-");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

/// Sends an immediate command to a device (operator); its state follows the device's acks.
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", tag = "commands",
    params(("id" = String, Path, description = "Device id")),
    request_body = CommandRequest,
    responses((status = 201, body = CommandBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn send_command(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(rid): RequestId,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CommandRequest>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Operator)?;
    let (command, validity) = match body {
        CommandRequest::SetPower {
            power_kw,
            duration_s,
        } => {
            let power = Power::from_kw(power_kw)
                .map_err(|_| ApiError::invalid("power_kw", "not finite"))?;
            let duration = Duration::from_secs(duration_s);
            let command = Command::set_power(power, duration)
                .map_err(|e| ApiError::invalid("duration_s", e.to_string()))?;
            (command, duration)
        }
        CommandRequest::Idle => (Command::Idle, DEFAULT_COMMAND_VALIDITY),
        CommandRequest::CancelSchedule { schedule } => (
            Command::CancelSchedule {
                schedule: schedule
                    .parse::<ScheduleId>()
                    .map_err(|e| ApiError::invalid("schedule", e.to_string()))?,
            },
            DEFAULT_COMMAND_VALIDITY,
        ),
    };
    let device = load_device(&state, &caller, &id).await?;
    if let Command::SetPower { power, .. } = &command {
        // The agent's safety layer clamps too, but a request beyond the spec is a client error.
        let (max_c, max_d) = (
            device.spec.max_charge().kw(),
            device.spec.max_discharge().kw(),
        );
        if power.kw() > max_c + grid_core::TOLERANCE || -power.kw() > max_d + grid_core::TOLERANCE {
            return Err(ApiError::invalid(
                "power_kw",
                format!("outside the device's limits [-{max_d}, {max_c}] kW"),
            ));
        }
    }
    let t = now();
    let expires_at = t
        .checked_add(jiff::SignedDuration::try_from(validity).unwrap_or(jiff::SignedDuration::ZERO))
        .map_err(|e| ApiError::invalid("duration_s", e.to_string()))?;
    let new = NewCommand {
        id: command_id()?,
        device: device.id.clone(),
        command,
        correlation_id: (!rid.is_empty()).then(|| rid.clone()),
        expires_at,
    };
    let record = state.store.create_command(&new, t).await?;
    if let Err(e) = state
        .dispatch
        .send_command(Some(&device), &record, &rid)
        .await
    {
        tracing::warn!(error = %e, command = %record.id, "publish deferred");
    }
    let location = format!("/api/v1/commands/{}", record.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(CommandBody::from(record)),
    ))
}

/// Filters and paging of a device's commands (newest first).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CommandListQuery {
    /// Only this state.
    pub state: Option<String>,
    /// The previous page's `next_cursor`.
    pub after: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
}

/// A device's commands, newest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands", tag = "commands",
    params(("id" = String, Path, description = "Device id"), CommandListQuery),
    responses((status = 200, body = PageBody<CommandBody>), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_commands(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CommandListQuery>,
) -> ApiResult<Json<PageBody<CommandBody>>> {
    let device = load_device(&state, &caller, &id).await?;
    let filter = CommandFilter {
        device: Some(device.id),
        state: q.state.as_deref().map(parse_state).transpose()?,
        after: check_cursor(q.after)?,
        limit: page_limit(&state.http, q.limit)?,
    };
    let page = state.store.list_commands(&filter).await?;
    Ok(Json(PageBody {
        items: page.items.into_iter().map(CommandBody::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One command with its ack state.
#[utoipa::path(get, path = "/api/v1/commands/{id}", tag = "commands",
    params(("id" = String, Path, description = "Command id")),
    responses((status = 200, body = CommandBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_command(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<CommandBody>> {
    if id.len() > 128 {
        return Err(ApiError::not_found("command", ""));
    }
    let record = state.store.get_command(&id).await?;
    if caller.tenant().is_some() {
        load_device(&state, &caller, record.device.as_str()).await?;
    }
    Ok(Json(record.into()))
}
