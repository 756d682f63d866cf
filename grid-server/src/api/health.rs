//! Public operational routes: liveness, readiness (store and broker) and Prometheus metrics.

use super::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Liveness and readiness answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// Store check (readiness only): `ok` or `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
    /// Broker check (readiness only): `ok` or `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<&'static str>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok",
        store: None,
        broker: None,
    })
}

/// The store answers and the broker connection is up (503 otherwise).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = HealthBody), (status = 503, body = HealthBody)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store_ok = match state.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unavailable");
            false
        }
    };
    let broker_ok = state.dispatch.broker_healthy();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let status = if store_ok && broker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(HealthBody {
            status: word(store_ok && broker_ok),
            store: Some(word(store_ok)),
            broker: Some(word(broker_ok)),
        }),
    )
}

/// Prometheus exposition: HTTP latency by route, MQTT in/out, delivery latency, ack outcomes,
/// store pool, devices online.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let pool = state.store.pool_stats();
    crate::metrics::store_pool(
        pool.idle as usize,
        pool.size.saturating_sub(pool.idle) as usize,
    );
    for (name, kind, value) in state.dispatch.counters() {
        metrics::counter!(name, "kind" => kind).absolute(value);
    }
    if let Ok(n) = state.store.count_online().await {
        crate::metrics::devices_online(n);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}
