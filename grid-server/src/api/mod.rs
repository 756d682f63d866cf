//! The REST API: an axum router over the [`Store`] and a [`Dispatch`] (the MQTT transport), with
//! bearer-token auth, RFC 7807 errors, request ids, metrics and a generated OpenAPI document.
//!
//! Every route under `/api/v1` needs a valid bearer token: the auth middleware runs before any
//! extractor, so an unauthenticated request gets 401 before its input is looked at. `/healthz`,
//! `/readyz`, `/metrics`, `/openapi.json` and `/docs` are public.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn grid_server::store::Store>,
//! #               dispatch: std::sync::Arc<dyn grid_server::api::Dispatch>) {
//! use grid_server::{api, auth::Authenticator, config::Config};
//! let config = Config::default();
//! let auth = Authenticator::hs256(&config.auth, b"0123456789abcdef0123456789abcdef");
//! let app = api::router(api::AppState::new(store, dispatch, auth, config.http.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

pub mod analytics;
pub mod commands;
pub mod devices;
pub mod error;
pub mod extract;
pub mod forecasts;
pub mod health;
pub mod openapi;
pub mod optimize;
pub mod schedules;
pub mod sites;
pub mod telemetry;
pub mod types;

use crate::auth::{AuthError, Authenticator};
use crate::config::HttpConfig;
use crate::store::{CommandRecord, DeviceRecord, ScheduleRecord, Store, StoreError};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use error::ApiError;
use std::sync::Arc;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The seam between the API and the MQTT transport: publishing what the API stored.
///
/// The transport persists each delivery in the store's outbox before publishing, so a failed
/// publish is retried later; an `Err` here only means "not published yet".
#[async_trait::async_trait]
pub trait Dispatch: Send + Sync + 'static {
    /// Publishes a stored schedule to its device, tagging the message with `correlation_id`.
    /// `device` is the device's record if the caller has just read it (the dispatcher then
    /// need not read it again).
    async fn distribute(
        &self,
        device: Option<&DeviceRecord>,
        schedule: &ScheduleRecord,
        correlation_id: &str,
    ) -> Result<(), String>;

    /// Publishes a stored command to its device (`device` as for [`Dispatch::distribute`]).
    async fn send_command(
        &self,
        device: Option<&DeviceRecord>,
        command: &CommandRecord,
        correlation_id: &str,
    ) -> Result<(), String>;

    /// Whether the broker connection is up (for `/readyz`).
    fn broker_healthy(&self) -> bool;

    /// Monotonic counters for `/metrics`: (metric name, `kind` label, value).
    fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }
}

/// What every handler shares.
pub struct AppInner {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The transport.
    pub dispatch: Arc<dyn Dispatch>,
    /// Token verification.
    pub auth: Authenticator,
    /// Limits.
    pub http: HttpConfig,
}

/// The router's state (cheap to clone).
#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

impl AppState {
    /// Bundles the parts.
    pub fn new(
        store: Arc<dyn Store>,
        dispatch: Arc<dyn Dispatch>,
        auth: Authenticator,
        http: HttpConfig,
    ) -> Self {
        Self(Arc::new(AppInner {
            store,
            dispatch,
            auth,
            http,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the whole router: the authenticated `/api/v1` routes and the public ones, with request
/// ids, tracing, metrics and the body limit.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(devices::routes())
        .merge(sites::routes())
        .merge(schedules::routes())
        .merge(commands::routes())
        .merge(telemetry::routes())
        .merge(optimize::routes())
        .merge(analytics::routes())
        .merge(forecasts::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth))
        .route_layer(middleware::from_fn(crate::metrics::track_http));
    let public = health::routes()
        .merge(openapi::routes())
        .route_layer(middleware::from_fn(crate::metrics::track_http));
    let limit = state.http.body_limit_bytes;
    Router::new()
        .nest("/api/v1", api)
        .merge(public)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(limit))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(&X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!("http", method = %req.method(), uri = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID.clone(),
            MakeRequestUuid,
        ))
        .with_state(state)
}

async fn fallback() -> ApiError {
    ApiError::not_found("route", "")
}

/// Auth middleware: verifies the bearer token and stores the [`crate::auth::Principal`] in the
/// request, or answers 401 before anything else looks at the request.
async fn require_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        return ApiError::Unauthorized(AuthError::Missing.to_string()).into_response();
    };
    match state.auth.verify(token) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => {
            tracing::debug!(error = %e, "token refused");
            // One message for every kind of bad token: no oracle for forgers.
            ApiError::Unauthorized("invalid or expired bearer token".into()).into_response()
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, key } => ApiError::NotFound {
                resource: entity,
                id: key,
            },
            StoreError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            StoreError::Invalid { field, reason } => ApiError::Invalid {
                code: "invalid_field",
                field: Some(field.to_owned()),
                detail: format!("{field}: {reason}"),
            },
            e if e.is_backend() => ApiError::Unavailable(format!("store: {e}")),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// Page-size handling shared by the list routes: the default when absent, 422 above the maximum.
pub fn page_limit(http: &HttpConfig, limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(http.default_page_size),
        Some(0) => Err(ApiError::invalid("limit", "limit must be at least 1")),
        Some(n) if n > http.max_page_size => Err(ApiError::invalid(
            "limit",
            format!("limit must be at most {}", http.max_page_size),
        )),
        Some(n) => Ok(n),
    }
}

/// Checks an opaque cursor's shape before it reaches the store.
pub fn check_cursor(after: Option<String>) -> Result<Option<String>, ApiError> {
    match after {
        Some(c)
            if c.is_empty()
                || c.len() > 256
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:=~".contains(&b)) =>
        {
            Err(ApiError::invalid("after", "malformed cursor"))
        }
        other => Ok(other),
    }
}

/// Parses a path id with grid-core's rules; a malformed id cannot exist, so it is a 404.
pub fn path_id<T: std::str::FromStr>(resource: &'static str, raw: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(resource, raw.chars().take(80).collect::<String>()))
}

/// The current instant.
pub fn now() -> grid_core::Timestamp {
    grid_core::Timestamp::now()
}
