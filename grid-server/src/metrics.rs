//! Prometheus metrics: the process-wide recorder, the HTTP latency middleware and the names and
//! helpers the transport and store use, so every metric is defined in one place.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

/// HTTP request latency, seconds; labels `route` (the route template), `method`, `status`.
pub const HTTP_DURATION: &str = "grid_http_request_duration_seconds";
/// MQTT messages received; label `kind` (`ack`, `status`, `telemetry`, `hello`, ...).
pub const MQTT_IN: &str = "grid_mqtt_messages_in_total";
/// MQTT messages published; label `kind` (`schedule`, `command`, ...).
pub const MQTT_OUT: &str = "grid_mqtt_messages_out_total";
/// Time from a schedule's first publish to the device's acceptance, seconds.
pub const DELIVERY_LATENCY: &str = "grid_delivery_latency_seconds";
/// Acknowledgements received; label `outcome` (`accepted`, `rejected`, `completed`, ...).
pub const ACKS: &str = "grid_acks_total";
/// Store pool connections; label `state` (`idle`, `in_use`).
pub const STORE_POOL: &str = "grid_store_pool_connections";
/// Devices whose last status said online.
pub const DEVICES_ONLINE: &str = "grid_devices_online";
/// Forecast MAE of the newest monitored day; labels `model`, `version` (series unit).
pub const FORECAST_MAE: &str = "grid_forecast_mae";
/// Mean of a model version's monitored per-day MAEs; labels `model`, `version`.
pub const FORECAST_MAE_MEAN: &str = "grid_forecast_mae_mean";
/// P10–P90 coverage of the newest monitored day; labels `model`, `version`.
pub const FORECAST_COVERAGE: &str = "grid_forecast_coverage_p10_p90";
/// Forecast days scored against their actual values; label `model`.
pub const FORECAST_DAYS: &str = "grid_forecast_days_evaluated_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use (several routers in one test
/// process share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the bucket list is non-empty (constant)");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding application): then ours
        // only renders what it sees, which is still a valid (empty) exposition.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by route"
    );
    describe_counter!(MQTT_IN, "MQTT messages received by kind");
    describe_counter!(MQTT_OUT, "MQTT messages published by kind");
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "schedule publish to device acceptance"
    );
    describe_counter!(ACKS, "acknowledgements by outcome");
    describe_gauge!(STORE_POOL, "store pool connections by state");
    describe_gauge!(DEVICES_ONLINE, "devices whose last status said online");
    describe_gauge!(
        FORECAST_MAE,
        "forecast MAE of the newest monitored day by model version"
    );
    describe_gauge!(
        FORECAST_MAE_MEAN,
        "mean per-day forecast MAE by model version"
    );
    describe_gauge!(
        FORECAST_COVERAGE,
        "P10-P90 coverage of the newest monitored day by model version"
    );
    describe_counter!(FORECAST_DAYS, "forecast days scored against actual values");
}

/// Renders the exposition text.
pub fn render() -> String {
    let h = handle();
    h.run_upkeep();
    h.render()
}

/// Counts one MQTT message received.
pub fn mqtt_in(kind: &'static str) {
    metrics::counter!(MQTT_IN, "kind" => kind).increment(1);
}

/// Counts one MQTT message published.
pub fn mqtt_out(kind: &'static str) {
    metrics::counter!(MQTT_OUT, "kind" => kind).increment(1);
}

/// Records one acknowledgement and, for acceptances, the delivery latency.
pub fn ack(outcome: &'static str, latency_s: Option<f64>) {
    metrics::counter!(ACKS, "outcome" => outcome).increment(1);
    if let Some(s) = latency_s {
        metrics::histogram!(DELIVERY_LATENCY).record(s);
    }
}

/// Records one schedule's delivery latency: its first publish to the device's acceptance.
pub fn delivery_latency(seconds: f64) {
    metrics::histogram!(DELIVERY_LATENCY).record(seconds);
}

/// Sets the store pool gauges.
pub fn store_pool(idle: usize, in_use: usize) {
    metrics::gauge!(STORE_POOL, "state" => "idle").set(idle as f64);
    metrics::gauge!(STORE_POOL, "state" => "in_use").set(in_use as f64);
}

/// Sets the online-device gauge.
pub fn devices_online(n: u64) {
    metrics::gauge!(DEVICES_ONLINE).set(n as f64);
}

/// Records one monitored forecast day of a model version (model monitoring, issue #9).
pub fn forecast_error(
    model: &str,
    version: u64,
    day: &crate::forecasting::DayError,
    mae_mean: Option<f64>,
) {
    let labels = [
        ("model", model.to_owned()),
        ("version", version.to_string()),
    ];
    metrics::gauge!(FORECAST_MAE, &labels).set(day.mae);
    metrics::gauge!(FORECAST_COVERAGE, &labels).set(day.coverage_p10_p90);
    if let Some(m) = mae_mean {
        metrics::gauge!(FORECAST_MAE_MEAN, &labels).set(m);
    }
    metrics::counter!(FORECAST_DAYS, "model" => model.to_owned()).increment(1);
}

/// Middleware: records [`HTTP_DURATION`] by route template (never the raw path, so ids do not
/// explode the label set).
pub async fn track_http(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method, "status" => status)
        .record(start.elapsed().as_secs_f64());
    response
}
