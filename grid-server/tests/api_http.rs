//! HTTP tests of the REST API: through the router (`oneshot`) and against the real server on an
//! ephemeral port, on SQLite and the embedded broker. The auth matrix (no token, expired, forged,
//! `alg=none`, wrong audience or issuer, wrong role, other tenant), bad input (NaN, out of range,
//! unknown device, oversize bodies, injection strings in filters, unknown parameters, page limits:
//! always 4xx, never 500), and the main flows: sites, devices, prices, schedules (422 with the
//! violations), supersede, cancel, commands, telemetry, analytics, optimisation, OpenAPI.
//!
//! The ignored live test runs the main flow on PostgreSQL (`DATABASE_URL`) and Mosquitto
//! (`MQTT_URL`), as `.ci/run` does.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

#[path = "common/api_support.rs"]
mod api_support;

use api_support::*;
use base64::Engine as _;
use grid_server::auth::Role;
use serde_json::{Value, json};

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Every protected route with its correct method (and a body where it takes one).
fn protected_routes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GET", "/api/v1/devices"),
        ("POST", "/api/v1/devices"),
        ("GET", "/api/v1/devices/d1"),
        ("PATCH", "/api/v1/devices/d1"),
        ("DELETE", "/api/v1/devices/d1"),
        ("GET", "/api/v1/devices/d1/status"),
        ("GET", "/api/v1/devices/d1/telemetry"),
        ("GET", "/api/v1/devices/d1/commands"),
        ("POST", "/api/v1/devices/d1/commands"),
        ("GET", "/api/v1/commands/c1"),
        ("GET", "/api/v1/sites"),
        ("GET", "/api/v1/sites/s1"),
        ("PUT", "/api/v1/sites/s1"),
        ("DELETE", "/api/v1/sites/s1"),
        ("PUT", "/api/v1/sites/s1/tariff"),
        ("GET", "/api/v1/feeders"),
        ("GET", "/api/v1/feeders/f1"),
        ("PUT", "/api/v1/feeders/f1"),
        ("PUT", "/api/v1/feeders/f1/envelope"),
        ("GET", "/api/v1/prices"),
        ("GET", "/api/v1/prices/p1"),
        ("PUT", "/api/v1/prices/p1"),
        ("GET", "/api/v1/schedules"),
        ("POST", "/api/v1/schedules"),
        ("GET", "/api/v1/schedules/s1"),
        ("POST", "/api/v1/schedules/s1/cancel"),
        ("POST", "/api/v1/schedules/s1/supersede"),
        ("GET", "/api/v1/schedules/s1/versions/1"),
        ("GET", "/api/v1/schedules/s1/versions/1/acks"),
        ("GET", "/api/v1/telemetry"),
        ("POST", "/api/v1/optimize"),
        ("GET", "/api/v1/analytics"),
        ("GET", "/api/v1/series"),
        ("GET", "/api/v1/series/p1"),
        ("PUT", "/api/v1/series/p1"),
        ("GET", "/api/v1/models"),
        ("POST", "/api/v1/models"),
        ("GET", "/api/v1/models/m1"),
        ("GET", "/api/v1/models/m1/versions"),
        ("GET", "/api/v1/models/m1/versions/1"),
        ("POST", "/api/v1/models/m1/versions/1/activate"),
        ("GET", "/api/v1/models/m1/forecast"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_bad_tokens_get_401_before_any_validation() {
    let app = TestApp::sqlite().await;
    let mut expired = app.claims(Role::Admin);
    expired.exp = grid_server::auth::unix_now() - 3600;
    expired.iat = expired.exp - 600;
    let mut wrong_aud = app.claims(Role::Admin);
    wrong_aud.aud = "someone-else".into();
    let mut wrong_iss = app.claims(Role::Admin);
    wrong_iss.iss = "evil".into();
    let forged = grid_server::auth::Authenticator::hs256(&app.config.auth, &[42u8; 32])
        .mint("x", Role::Admin, None, None)
        .unwrap();
    let claims = serde_json::to_value(app.claims(Role::Admin)).unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    // A valid signature under HS256 but a header claiming HS512: algorithm confusion.
    let valid = app.token(Role::Admin);
    let mut parts: Vec<&str> = valid.split('.').collect();
    let hs512 = b64(&json!({"alg": "HS512", "typ": "JWT"}));
    parts[0] = &hs512;
    let other_alg = parts.join(".");
    let bad_tokens: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("expired", Some(app.sign(&expired))),
        ("wrong audience", Some(app.sign(&wrong_aud))),
        ("wrong issuer", Some(app.sign(&wrong_iss))),
        ("forged", Some(forged)),
        ("alg=none", Some(alg_none)),
        ("alg header swapped", Some(other_alg)),
        ("garbage", Some("not.a.jwt".into())),
    ];
    for (method, path) in protected_routes() {
        for (what, token) in &bad_tokens {
            // Garbage bodies and a bogus content type: auth must answer first.
            let r = app
                .call(raw(
                    method,
                    path,
                    token.as_deref(),
                    "text/plain",
                    b"{{{ NaN".to_vec(),
                ))
                .await;
            let v = r.problem(401, "unauthorized");
            assert!(
                r.headers.get("www-authenticate").is_some(),
                "{what} {method} {path}"
            );
            assert!(!v["detail"].as_str().unwrap().contains("Signature"), "{v}");
        }
    }
    // The public routes need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"] {
        let r = app.json("GET", path, None, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_tenants_get_403() {
    let app = TestApp::sqlite().await;
    let admin = app.token(Role::Admin);
    let viewer = app.token(Role::Viewer);
    let operator = app.token(Role::Operator);
    site_and_device(&app, &admin, "site-a", "dev-a", Some("acme")).await;
    site_and_device(&app, &admin, "site-b", "dev-b", Some("globex")).await;

    // Viewers read but do not write; operators do not register devices.
    assert_eq!(
        app.json("GET", "/api/v1/devices", Some(&viewer), None)
            .await
            .status,
        200
    );
    app.json(
        "POST",
        "/api/v1/devices",
        Some(&viewer),
        Some(json!({"id": "x", "site": "site-a", "spec": spec_json()})),
    )
    .await
    .problem(403, "forbidden");
    app.json(
        "POST",
        "/api/v1/devices",
        Some(&operator),
        Some(json!({"id": "x", "site": "site-a", "spec": spec_json()})),
    )
    .await
    .problem(403, "forbidden");
    app.json("DELETE", "/api/v1/devices/dev-a", Some(&operator), None)
        .await
        .problem(403, "forbidden");
    app.json(
        "POST",
        "/api/v1/devices/dev-a/commands",
        Some(&viewer),
        Some(json!({"kind": "idle"})),
    )
    .await
    .problem(403, "forbidden");

    // Tenant-bound tokens see their own objects only.
    let acme = app.tenant_token(Role::Operator, "acme");
    assert_eq!(
        app.json("GET", "/api/v1/devices/dev-a", Some(&acme), None)
            .await
            .status,
        200
    );
    app.json("GET", "/api/v1/devices/dev-b", Some(&acme), None)
        .await
        .problem(403, "forbidden");
    app.json("GET", "/api/v1/devices/dev-b/status", Some(&acme), None)
        .await
        .problem(403, "forbidden");
    app.json("GET", "/api/v1/sites/site-b", Some(&acme), None)
        .await
        .problem(403, "forbidden");
    app.json(
        "POST",
        "/api/v1/devices/dev-b/commands",
        Some(&acme),
        Some(json!({"kind": "idle"})),
    )
    .await
    .problem(403, "forbidden");
    app.json("GET", "/api/v1/devices?tenant=globex", Some(&acme), None)
        .await
        .problem(403, "forbidden");
    let list = app
        .json("GET", "/api/v1/devices", Some(&acme), None)
        .await
        .json();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-a"]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_4xx_naming_the_field_never_500() {
    let app = TestApp::sqlite().await;
    let admin = app.token(Role::Admin);
    site_and_device(&app, &admin, "site-1", "dev-1", None).await;

    // NaN is not JSON: 400.
    let r = app
        .call(raw(
            "POST",
            "/api/v1/devices",
            Some(&admin),
            "application/json",
            br#"{"id":"d2","site":"site-1","spec":{"capacity_kwh":NaN}}"#.to_vec(),
        ))
        .await;
    r.problem(400, "invalid_json");
    // Out of range: 422 naming the field.
    let mut spec = spec_json();
    spec["capacity_kwh"] = json!(-1.0);
    let v = app
        .json(
            "POST",
            "/api/v1/devices",
            Some(&admin),
            Some(json!({"id": "d2", "site": "site-1", "spec": spec})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "spec.capacity_kwh", "{v}");
    // A huge finite number for an efficiency.
    let mut spec = spec_json();
    spec["charge_efficiency"] = json!(1e308);
    let v = app
        .json(
            "POST",
            "/api/v1/devices",
            Some(&admin),
            Some(json!({"id": "d2", "site": "site-1", "spec": spec})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "spec.charge_efficiency", "{v}");
    // Wrong type names the JSON path.
    let v = app
        .json(
            "POST",
            "/api/v1/devices",
            Some(&admin),
            Some(json!({"id": "d2", "site": "site-1", "spec": {"capacity_kwh": "ten"}})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "spec.capacity_kwh", "{v}");
    // Unknown fields are refused.
    let v = app
        .json(
            "POST",
            "/api/v1/devices",
            Some(&admin),
            Some(json!({"id": "d2", "site": "site-1", "spec": spec_json(), "owner": "me"})),
        )
        .await
        .problem(422, "invalid_field");
    assert!(v["detail"].as_str().unwrap().contains("owner"), "{v}");
    // Bad ids.
    let v = app
        .json(
            "POST",
            "/api/v1/devices",
            Some(&admin),
            Some(json!({"id": "a/b#", "site": "site-1", "spec": spec_json()})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "id");
    // Unknown site on registration, duplicate device.
    app.json(
        "POST",
        "/api/v1/devices",
        Some(&admin),
        Some(json!({"id": "d3", "site": "nowhere", "spec": spec_json()})),
    )
    .await
    .problem(404, "not_found");
    app.json(
        "POST",
        "/api/v1/devices",
        Some(&admin),
        Some(json!({"id": "dev-1", "site": "site-1", "spec": spec_json()})),
    )
    .await
    .problem(409, "conflict");
    // Unknown device in a schedule.
    let v = app
        .json(
            "POST",
            "/api/v1/schedules",
            Some(&admin),
            Some(json!({
        "id": "s", "device": "ghost", "start": next_hour(), "slot_seconds": 3600,
        "setpoints_kw": [1.0], "initial_energy_kwh": 5.0})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "device");
    // Unknown device by path.
    app.json("GET", "/api/v1/devices/ghost", Some(&admin), None)
        .await
        .problem(404, "not_found");
    app.json(
        "GET",
        "/api/v1/devices/%27%3B%20DROP%20TABLE%20devices%3B--",
        Some(&admin),
        None,
    )
    .await
    .problem(404, "not_found");
    // Injection strings and unknown columns in filters.
    for q in [
        "site=%27%20OR%201%3D1%20--",
        "site=x%22%3B%20DROP%20TABLE%20devices",
        "tenant=%27%20OR%20%27a%27%3D%27a",
        "sort=name",
        "sort=id%3BDROP",
        "order_by=created_at",
        "limit=100000",
        "limit=0",
        "limit=-1",
        "online=maybe",
        "after=%27%20OR%201%3D1",
    ] {
        let r = app
            .json("GET", &format!("/api/v1/devices?{q}"), Some(&admin), None)
            .await;
        assert_eq!(r.status, 422, "{q}: {}", r.text());
        assert!(r.json()["field"].is_string(), "{q}: {}", r.text());
    }
    for q in ["state=bogus", "device=%27--", "created_from=yesterday"] {
        let r = app
            .json("GET", &format!("/api/v1/schedules?{q}"), Some(&admin), None)
            .await;
        assert_eq!(r.status, 422, "{q}: {}", r.text());
    }
    // Telemetry ranges.
    let r = app
        .json(
            "GET",
            "/api/v1/devices/dev-1/telemetry?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.json()["field"], "to");
    let r = app
        .json(
            "GET",
            "/api/v1/telemetry?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&bucket_seconds=60",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 422);
    let r = app
        .json(
            "GET",
            "/api/v1/telemetry?from=2026-01-01T00:00:00Z&to=2026-01-01T01:00:00Z&bucket_seconds=0",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.json()["field"], "bucket_seconds");
    // Oversize body: 413.
    let big = vec![b' '; 300 * 1024];
    app.call(raw(
        "POST",
        "/api/v1/devices",
        Some(&admin),
        "application/json",
        big,
    ))
    .await
    .problem(413, "payload_too_large");
    // Wrong content type: 415.
    app.call(raw(
        "POST",
        "/api/v1/devices",
        Some(&admin),
        "text/plain",
        b"{}".to_vec(),
    ))
    .await
    .problem(415, "unsupported_media_type");
    // Commands out of range.
    let v = app
        .json(
            "POST",
            "/api/v1/devices/dev-1/commands",
            Some(&admin),
            Some(json!({"kind": "set_power", "power_kw": 50.0, "duration_s": 60})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "power_kw");
    let v = app
        .json(
            "POST",
            "/api/v1/devices/dev-1/commands",
            Some(&admin),
            Some(json!({"kind": "set_power", "power_kw": 1.0, "duration_s": 0})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "duration_s");
    // Unknown route: 404 problem.
    app.json("GET", "/api/v1/nothing", Some(&admin), None)
        .await
        .problem(404, "not_found");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_sites_prices_schedules_commands_analytics() {
    let app = TestApp::sqlite().await;
    main_flow(&app).await;
    app.shutdown().await;
}

async fn main_flow(app: &TestApp) {
    let admin = app.token(Role::Admin);
    let operator = app.token(Role::Operator);
    let viewer = app.token(Role::Viewer);
    for i in 0..3 {
        site_and_device(app, &admin, &format!("site-{i}"), &format!("dev-{i}"), None).await;
    }
    // Cursor pagination over the devices.
    let mut seen = Vec::new();
    let mut url = "/api/v1/devices?limit=2&sort=id".to_owned();
    loop {
        let page = app.json("GET", &url, Some(&viewer), None).await.json();
        for d in page["items"].as_array().unwrap() {
            seen.push(d["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("/api/v1/devices?limit=2&after={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["dev-0", "dev-1", "dev-2"]);
    let page = app
        .json("GET", "/api/v1/devices?site=site-1", Some(&viewer), None)
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    // Update and live status.
    let r = app
        .json(
            "PATCH",
            "/api/v1/devices/dev-2",
            Some(&admin),
            Some(json!({"label": "garage"})),
        )
        .await;
    assert_eq!(r.json()["label"], "garage");
    let st = app
        .json("GET", "/api/v1/devices/dev-0/status", Some(&viewer), None)
        .await
        .json();
    assert_eq!(st["device"], "dev-0");
    assert_eq!(st["online"], false);

    // Prices as CSV and JSON.
    let start = next_hour();
    let start_s =
        jiff::Timestamp::from_second(start.parse::<jiff::Timestamp>().unwrap().as_second())
            .unwrap();
    let mut csv = String::from("timestamp_utc,import,export\n");
    for h in 0..24 {
        let t = jiff::Timestamp::from_second(start_s.as_second() + h * 3600).unwrap();
        let price = if h % 24 < 6 {
            0.10
        } else if h % 24 >= 17 {
            0.45
        } else {
            0.25
        };
        csv.push_str(&format!("{t},{price},0.05\n"));
    }
    let r = app
        .call(raw(
            "PUT",
            "/api/v1/prices/DE-LU",
            Some(&operator),
            "text/csv",
            csv.into_bytes(),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["slots"], 24);
    let r = app
        .json(
            "PUT",
            "/api/v1/prices/flat",
            Some(&operator),
            Some(json!({
        "start": start, "slot_seconds": 3600, "import": [0.3, 0.3]})),
        )
        .await;
    assert_eq!(r.json()["slots"], 2);
    let names = app
        .json("GET", "/api/v1/prices", Some(&viewer), None)
        .await
        .json();
    assert!(
        names.as_array().unwrap().iter().any(|n| n == "DE-LU"),
        "{names}"
    );
    let end = jiff::Timestamp::from_second(start_s.as_second() + 24 * 3600).unwrap();
    let pts = app
        .json(
            "GET",
            &format!("/api/v1/prices/DE-LU?from={start}&to={end}"),
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(pts.as_array().unwrap().len(), 24);
    // Tariff and price series on a site.
    let r = app
        .json(
            "PUT",
            "/api/v1/sites/site-0/tariff",
            Some(&operator),
            Some(json!({"kind": "flat", "import": 0.3, "export": 0.08})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tariff"]["kind"], "flat");

    // A schedule that breaks the spec: 422 with every violation.
    let r = app
        .json(
            "POST",
            "/api/v1/schedules",
            Some(&operator),
            Some(json!({
        "id": "day-0", "device": "dev-0", "start": start, "slot_seconds": 3600,
        "setpoints_kw": [6.0, 5.0, 5.0, 0.0], "initial_energy_kwh": 5.0})),
        )
        .await;
    let v = r.problem(422, "schedule_violations");
    let kinds: Vec<&str> = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"charge_power") && kinds.contains(&"max_energy"),
        "{v}"
    );
    // A valid one: 201, stored and handed to the transport.
    let r = app
        .call({
            let mut q = req(
                "POST",
                "/api/v1/schedules",
                Some(&operator),
                Some(json!({
            "id": "day-0", "device": "dev-0", "start": start, "slot_seconds": 3600,
            "setpoints_kw": [2.0, 1.0, -2.0, 0.0], "initial_energy_kwh": 5.0})),
            );
            q.headers_mut()
                .insert("x-request-id", "req-abc-123".parse().unwrap());
            q
        })
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.headers.get("x-request-id").unwrap(), "req-abc-123");
    let s = r.json();
    assert_eq!(s["version"], 1);
    assert_eq!(s["correlation_id"], "req-abc-123");
    assert_eq!(s["setpoints_kw"].as_array().unwrap().len(), 4);
    assert_eq!(
        r.headers.get("location").unwrap(),
        "/api/v1/schedules/day-0/versions/1"
    );
    // Supersede: version 2, version 1 superseded.
    let r = app
        .json(
            "POST",
            "/api/v1/schedules/day-0/supersede",
            Some(&operator),
            Some(json!({"setpoints_kw": [1.0, 1.0, 1.0, 1.0], "initial_energy_kwh": 5.0})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["version"], 2);
    let v1 = app
        .json(
            "GET",
            "/api/v1/schedules/day-0/versions/1",
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(v1["state"], "superseded");
    let latest = app
        .json("GET", "/api/v1/schedules/day-0", Some(&viewer), None)
        .await
        .json();
    assert_eq!(latest["version"], 2);
    let acks = app
        .json(
            "GET",
            "/api/v1/schedules/day-0/versions/2/acks",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(acks.status, 200);
    let list = app
        .json("GET", "/api/v1/schedules?device=dev-0", Some(&viewer), None)
        .await
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    // Cancel.
    let r = app
        .json(
            "POST",
            "/api/v1/schedules/day-0/cancel",
            Some(&operator),
            Some(json!({"reason": "test"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "cancelled");
    app.json(
        "POST",
        "/api/v1/schedules/day-0/cancel",
        Some(&operator),
        None,
    )
    .await
    .problem(409, "conflict");

    // Commands.
    let r = app
        .json(
            "POST",
            "/api/v1/devices/dev-1/commands",
            Some(&operator),
            Some(json!({"kind": "set_power", "power_kw": -2.5, "duration_s": 600})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let c = app
        .json(
            "GET",
            &format!("/api/v1/commands/{id}"),
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(c["device"], "dev-1");
    let list = app
        .json("GET", "/api/v1/devices/dev-1/commands", Some(&viewer), None)
        .await
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Telemetry queries (no samples yet: empty but well-formed).
    let t = app
        .json(
            "GET",
            &format!("/api/v1/devices/dev-0/telemetry?from={start}&to={end}&bucket_seconds=900"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["bucket_seconds"], 900);
    let t = app
        .json(
            "GET",
            &format!("/api/v1/telemetry?from={start}&to={end}&bucket_seconds=3600"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text());

    // Analytics as JSON and CSV.
    // Delivery statistics cover the schedules created in the range: start it before now.
    let earlier = jiff::Timestamp::from_second(start_s.as_second() - 7200).unwrap();
    let a = app
        .json(
            "GET",
            &format!("/api/v1/analytics?from={earlier}&to={end}&device=dev-0&price_series=DE-LU"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = a.json();
    assert_eq!(a["scope"], "device:dev-0");
    assert!(a["delivery"]["schedules"].as_u64().unwrap() >= 2, "{a}");
    let csv = app
        .json(
            "GET",
            &format!("/api/v1/analytics?from={start}&to={end}&format=csv"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.text().starts_with("start,charged_kwh,discharged_kwh"));

    // Feeder with an envelope, then optimise the two other sites under it (preview, then publish).
    let r = app
        .json(
            "PUT",
            "/api/v1/feeders/f-1",
            Some(&admin),
            Some(json!({"name": "north"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .json(
            "PUT",
            "/api/v1/feeders/f-1/envelope",
            Some(&operator),
            Some(json!({
        "sites": ["site-1", "site-2"], "start": start, "slot_seconds": 3600,
        "import_limit_kw": vec![20.0; 24], "export_limit_kw": vec![20.0; 24]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .json(
            "POST",
            "/api/v1/optimize",
            Some(&operator),
            Some(json!({
        "feeder": "f-1", "start": start, "slot_seconds": 3600, "slots": 24,
        "price_series": "DE-LU"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = r.json();
    assert_eq!(o["status"], "optimal", "{o}");
    assert_eq!(o["devices"].as_array().unwrap().len(), 2);
    let sp: Vec<f64> = o["devices"][0]["setpoints_kw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // No load on the sites: buying costs more than exporting earns, so the optimum sells the
    // stored energy above the window's floor ((5 - 1) kWh x 0.95 on the AC side) and never buys.
    assert!(
        sp.iter().all(|p| (-5.0 - 1e-6..=5.0 + 1e-6).contains(p)),
        "{sp:?}"
    );
    let sold: f64 = -sp.iter().sum::<f64>();
    assert!((sold - 3.8).abs() < 0.05, "{sold} {sp:?}");
    let r = app
        .json(
            "POST",
            "/api/v1/optimize",
            Some(&operator),
            Some(json!({
        "sites": ["site-1", "site-2"], "start": start, "slot_seconds": 3600, "slots": 24,
        "price_series": "DE-LU", "publish": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = r.json();
    assert_eq!(o["published"], true);
    let sched = app
        .json("GET", "/api/v1/schedules/opt-dev-1", Some(&viewer), None)
        .await
        .json();
    assert_eq!(sched["device"], "dev-1");
    // Missing prices: 422 naming price_series.
    let v = app
        .json(
            "POST",
            "/api/v1/optimize",
            Some(&operator),
            Some(json!({
        "sites": ["site-1"], "start": start, "slot_seconds": 3600, "slots": 48,
        "price_series": "DE-LU"})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "price_series");

    // Decommission.
    let r = app
        .json("DELETE", "/api/v1/devices/dev-2", Some(&admin), None)
        .await;
    assert!(r.json()["decommissioned_at"].is_string());
    let page = app
        .json("GET", "/api/v1/devices", Some(&viewer), None)
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_error_schema() {
    let app = TestApp::sqlite().await;
    let doc = app.json("GET", "/openapi.json", None, None).await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in protected_routes() {
        let templ = path
            .replace("/d1", "/{id}")
            .replace("/s1", "/{id}")
            .replace("/f1", "/{id}")
            .replace("/c1", "/{id}")
            .replace("/p1", "/{series}")
            .replace("/m1", "/{name}")
            .replace("/versions/1", "/versions/{version}");
        let op = &paths
            .get(&templ)
            .unwrap_or_else(|| panic!("{templ} missing from the OpenAPI document"))
            [method.to_lowercase()];
        assert!(op.is_object(), "{method} {templ} undocumented");
        assert!(
            op["responses"]["401"].is_object(),
            "{method} {templ} lacks its 401"
        );
        assert!(op["security"].is_array(), "{method} {templ} lacks security");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let html = app.json("GET", "/docs", None, None).await.text();
    assert!(html.contains("/openapi.json"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_on_an_ephemeral_port() {
    let app = TestApp::sqlite().await;
    let addr = app.server.local_addr;
    let (status, _, body) = http(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!((status, body.contains("ok")), (200, true));
    let (status, _, body) = http(addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let (status, head, _) = http(addr, "GET", "/api/v1/devices", &[], b"").await;
    assert_eq!(status, 401);
    assert!(head.to_ascii_lowercase().contains("x-request-id"), "{head}");
    let admin = app.token(Role::Admin);
    let auth = format!("Bearer {admin}");
    let (status, _, body) = http(
        addr,
        "PUT",
        "/api/v1/sites/s-real",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"{"import_limit_kw": 10, "export_limit_kw": 5}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, head, body) = http(
        addr,
        "GET",
        "/api/v1/sites/s-real",
        &[("authorization", &auth), ("x-request-id", "trace-me-42")],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("trace-me-42"), "{head}");
    // Metrics carry the route template, never raw ids.
    let (_, _, metrics) = http(addr, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains("grid_http_request_duration_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/api/v1/sites/{id}\""),
        "{metrics}"
    );
    assert!(metrics.contains("grid_store_pool_connections"), "{metrics}");
    app.shutdown().await;
}

#[test]
fn binary_help_token_and_clear_startup_errors() {
    let exe = env!("CARGO_BIN_EXE_grid-server");
    let out = std::process::Command::new(exe)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "GRID_LISTEN",
        "DATABASE_URL",
        "MQTT_URL",
        "GRID_MQTT_LISTEN",
        "GRID_JWT_SECRET",
    ] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
    // `token` with no key configured generates one beside the SQLite database; `serve` (here:
    // the library with the same configuration) accepts what it minted.
    let dir = std::env::temp_dir().join(unique("grid-token"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/grid.db", dir.display());
    let out = std::process::Command::new(exe)
        .args([
            "token",
            "--role",
            "operator",
            "--ttl",
            "10m",
            "--database-url",
            &db,
        ])
        .env_remove("GRID_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(dir.join("grid.db.jwt-key").exists());
    let mut config = grid_server::config::Config::default();
    config.database.url = db.clone();
    let auth = grid_server::auth::Authenticator::from_config(&config).unwrap();
    assert_eq!(auth.verify(&token).unwrap().role, Role::Operator);
    // A taken port is a one-line error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(exe)
        .args(["serve", "--listen", &addr, "--database-url", &db])
        .env_remove("GRID_JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.lines().count() <= 2,
        "{err}"
    );
    // A bad database URL too.
    let out = std::process::Command::new(exe)
        .args(["serve", "--database-url", "mysql://nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.url"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs DATABASE_URL (PostgreSQL) and MQTT_URL (Mosquitto), as .ci/run exports"]
async fn live_postgres_and_mosquitto_main_flow() {
    let app = TestApp::live().await;
    let r = app.json("GET", "/readyz", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    main_flow(&app).await;
    app.shutdown().await;
}
