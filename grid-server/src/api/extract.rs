//! Request extractors whose every rejection is an [`ApiError`] problem body naming the field:
//! JSON bodies, query strings, the authenticated caller and the request id.

use super::error::ApiError;
use crate::auth::{Principal, Role};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A JSON body; errors name the JSON path of the offending field.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct.split(';').next().unwrap_or_default().trim();
                ct == "application/json" || ct.ends_with("+json")
            });
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Reads the whole body within the configured limit (413 above it).
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    match Bytes::from_request(req, state).await {
        Ok(b) => Ok(b),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::PayloadTooLarge(0))
        }
        Err(rejection) => Err(ApiError::BadRequest {
            code: "unreadable_body",
            field: None,
            detail: rejection.body_text(),
        }),
    }
}

/// The request's media type: the `Content-Type` without parameters, lower-case (empty when
/// absent or not ASCII).
pub fn media_type(req: &Request) -> String {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Parses JSON, naming the path of the field that failed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => {
            de.end().map_err(|e| ApiError::BadRequest {
                code: "invalid_json",
                field: None,
                detail: format!("trailing characters after the JSON value: {e}"),
            })?;
            Ok(v)
        }
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let field = (path != ".").then_some(path);
            if inner.is_data() {
                Err(ApiError::Invalid {
                    code: "invalid_field",
                    field,
                    detail: inner.to_string(),
                })
            } else {
                Err(ApiError::BadRequest {
                    code: "invalid_json",
                    field,
                    detail: inner.to_string(),
                })
            }
        }
    }
}

/// A query string; errors name the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                ApiError::Invalid {
                    code: "invalid_query",
                    field: (path != ".").then_some(path),
                    detail: err.into_inner().to_string(),
                }
            })
    }
}

/// The authenticated caller, put into the request by the auth middleware.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Fails with 403 unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.has(role) {
            Ok(())
        } else {
            Err(ApiError::role(role))
        }
    }

    /// Fails with 403 unless the caller may see objects of `tenant`.
    pub fn check_tenant(&self, tenant: Option<&str>) -> Result<(), ApiError> {
        if self.0.can_access(tenant) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "the object belongs to another tenant".into(),
            ))
        }
    }

    /// The tenant new objects get: the caller's.
    pub fn tenant(&self) -> Option<&str> {
        self.0.tenant.as_deref()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))
    }
}

/// The request id (`x-request-id`, generated when the client sent none); it becomes the
/// correlation id of the MQTT messages the request causes.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(
            parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(128).collect())
                .unwrap_or_default(),
        ))
    }
}
