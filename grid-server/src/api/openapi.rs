//! The OpenAPI 3 document (generated from the handlers' annotations) at `/openapi.json`, and a
//! browsable reference at `/docs`.
//!
//! The docs page is a small static HTML file that loads the Scalar API reference viewer from a
//! CDN in the browser: nothing is downloaded at build time, so the server builds offline.

use super::AppState;
use super::error::{Problem, ViolationBody};
use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "grid-server API",
        description = "Fleet server for smart home batteries: devices, sites, feeders, prices, schedules, commands, telemetry, optimisation, analytics and day-ahead forecasts. Power in kW (positive = charging / importing), energy in kWh, instants in UTC (RFC 3339). Errors are RFC 7807 problem documents with a machine-readable `code` and the offending `field`.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        super::health::healthz, super::health::readyz, super::health::metrics,
        super::devices::list_devices, super::devices::register_device, super::devices::get_device,
        super::devices::update_device, super::devices::decommission_device, super::devices::device_status,
        super::sites::list_sites, super::sites::get_site, super::sites::put_site, super::sites::delete_site,
        super::sites::put_tariff, super::sites::list_feeders, super::sites::get_feeder,
        super::sites::put_feeder, super::sites::put_envelope, super::sites::list_price_series,
        super::sites::get_prices, super::sites::put_prices,
        super::schedules::create_schedule, super::schedules::list_schedules,
        super::schedules::get_schedule, super::schedules::get_version, super::schedules::list_acks,
        super::schedules::cancel_schedule, super::schedules::supersede_schedule,
        super::commands::send_command, super::commands::list_commands, super::commands::get_command,
        super::telemetry::device_telemetry, super::telemetry::group_telemetry,
        super::optimize::optimize,
        super::analytics::analytics,
        super::forecasts::list_series, super::forecasts::get_series, super::forecasts::put_series,
        super::forecasts::train_model, super::forecasts::list_models, super::forecasts::get_model,
        super::forecasts::list_versions, super::forecasts::get_version,
        super::forecasts::activate_version, super::forecasts::forecast,
    ),
    components(schemas(Problem, ViolationBody, crate::auth::Role)),
    modifiers(&BearerAuth),
    tags(
        (name = "devices", description = "Register, list, update, decommission; live status"),
        (name = "sites", description = "Sites, feeders and envelopes, tariffs, price series"),
        (name = "schedules", description = "Create (validated), list, cancel, supersede; delivery status"),
        (name = "commands", description = "Immediate commands with ack tracking"),
        (name = "telemetry", description = "Raw and downsampled telemetry"),
        (name = "optimisation", description = "Fleet optimisation: preview or publish"),
        (name = "analytics", description = "Energy, cost, plan-vs-actual, delivery; JSON or CSV"),
        (name = "forecasts", description = "Measured series, versioned day-ahead forecast models (train, list, activate), P10/P50/P90 forecasts, model monitoring"),
        (name = "health", description = "Liveness, readiness, metrics (no token)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT minted with `grid-server token --role viewer|operator|admin`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON text (built once).
pub fn openapi_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    })
}

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>grid-server API</title>
</head>
<body>
  <noscript>The interactive reference needs JavaScript; the raw document is at <a href="/openapi.json">/openapi.json</a>.</noscript>
  <script id="api-reference" data-url="/openapi.json"></script>
  <script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
</body>
</html>
"#;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}

async fn docs() -> Html<&'static str> {
    Html(DOCS_HTML)
}
