//! The one API error type: every failure becomes an RFC 7807 problem body with a machine-readable
//! `code` and, for bad input, the offending `field`. Internal details are logged, never returned.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 7807 problem document (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`about:blank` or `urn:grid:problem:<code>`).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type (the HTTP reason phrase).
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// Machine-readable code, stable across releases (e.g. `not_found`, `invalid_field`).
    pub code: String,
    /// The offending input field (JSON path or query parameter), when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Limits a schedule breaks (code `schedule_violations`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<ViolationBody>>,
}

/// One broken limit of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ViolationBody {
    /// The slot index.
    pub slot: usize,
    /// Which limit: `charge_power`, `discharge_power`, `max_energy`, `min_energy`, `ramp`,
    /// `initial_energy`.
    pub kind: String,
    /// The limit (kW or kWh).
    pub limit: f64,
    /// The value the schedule reaches.
    pub actual: f64,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No, or no valid, bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid token, but the role is too low or the object belongs to another tenant (403).
    #[error("{0}")]
    Forbidden(String),
    /// The object does not exist (404).
    #[error("{resource} {id:?} not found")]
    NotFound {
        /// Kind of object.
        resource: &'static str,
        /// Its id as given.
        id: String,
    },
    /// The object exists already or changed concurrently (409).
    #[error("{0}")]
    Conflict(String),
    /// A malformed request: bad JSON, bad query string (400).
    #[error("{detail}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Offending field, if known.
        field: Option<String>,
        /// Human message.
        detail: String,
    },
    /// Well-formed input that breaks a rule (422).
    #[error("{detail}")]
    Invalid {
        /// Machine-readable code.
        code: &'static str,
        /// Offending field.
        field: Option<String>,
        /// Human message.
        detail: String,
    },
    /// A schedule breaks its device's limits (422, with the violations).
    #[error("schedule violates {} limit(s)", .0.len())]
    ScheduleViolations(Vec<ViolationBody>),
    /// The body is larger than the limit (413).
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body is not JSON / CSV as the route expects (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A dependency (store, broker) is unavailable (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500); the message is logged, the client sees a generic text.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Result` with [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A 422 naming `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::Invalid {
            code: "invalid_field",
            field: Some(field.into()),
            detail: detail.into(),
        }
    }

    /// A 404 for `resource` `id`.
    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        ApiError::NotFound {
            resource,
            id: id.into(),
        }
    }

    /// A 403 for a role below `needed`.
    pub fn role(needed: crate::auth::Role) -> Self {
        ApiError::Forbidden(format!("this action needs the {} role", needed.as_str()))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } | ApiError::ScheduleViolations(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadRequest { code, .. } | ApiError::Invalid { code, .. } => code,
            ApiError::ScheduleViolations(_) => "schedule_violations",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The problem document sent to the client.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let code = self.code();
        let (field, violations) = match self {
            ApiError::BadRequest { field, .. } | ApiError::Invalid { field, .. } => {
                (field.clone(), None)
            }
            ApiError::ScheduleViolations(v) => (Some("setpoints_kw".into()), Some(v.clone())),
            _ => (None, None),
        };
        let detail = match self {
            ApiError::Internal(_) => "internal error; see the server log".to_owned(),
            other => other.to_string(),
        };
        Problem {
            type_uri: format!("urn:grid:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
            field,
            violations,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(msg) => tracing::error!(error = %msg, "internal error"),
            ApiError::Unavailable(msg) => tracing::warn!(error = %msg, "dependency unavailable"),
            _ => {}
        }
        let status = self.status();
        let mut response = (status, Json(self.problem())).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"grid\""),
            );
        }
        response
    }
}

impl From<grid_core::Error> for ApiError {
    fn from(e: grid_core::Error) -> Self {
        let field = match &e {
            grid_core::Error::NotFinite { field, .. }
            | grid_core::Error::OutOfRange { field, .. }
            | grid_core::Error::InvalidId { field, .. }
            | grid_core::Error::LengthMismatch { field, .. }
            | grid_core::Error::Inconsistent { field, .. }
            | grid_core::Error::UnknownTimeZone { field, .. }
            | grid_core::Error::TimeOutOfRange { field } => Some((*field).to_owned()),
            _ => None,
        };
        ApiError::Invalid {
            code: "invalid_field",
            field,
            detail: e.to_string(),
        }
    }
}

impl From<grid_core::Violations> for ApiError {
    fn from(v: grid_core::Violations) -> Self {
        ApiError::ScheduleViolations(
            v.0.iter()
                .map(|v| ViolationBody {
                    slot: v.slot,
                    kind: violation_kind(v.kind).to_owned(),
                    limit: v.limit,
                    actual: v.actual,
                })
                .collect(),
        )
    }
}

fn violation_kind(kind: grid_core::ViolationKind) -> &'static str {
    use grid_core::ViolationKind::*;
    match kind {
        ChargePower => "charge_power",
        DischargePower => "discharge_power",
        MaxEnergy => "max_energy",
        MinEnergy => "min_energy",
        Ramp => "ramp",
        InitialEnergy => "initial_energy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak() {
        let p = ApiError::Internal("password=hunter2 at db.internal:5432".into()).problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("hunter2"));
        assert_eq!(p.code, "internal");
    }

    #[test]
    fn core_errors_name_their_field() {
        let e: ApiError = grid_core::Power::from_kw(f64::NAN).unwrap_err().into();
        let p = e.problem();
        assert_eq!(p.status, 422);
        assert!(p.field.is_some(), "{p:?}");
    }
}
