//! HTTP tests of forecast serving (issue #9) through the router on SQLite: measured series
//! upload (JSON and CSV), model training from stored series, prices or a posted CSV, versions
//! (list, get, activate), day-ahead forecasts from the active version, model monitoring (per-day
//! MAE in the metadata and in `/metrics`), the optimiser using the active load and PV forecasts,
//! and the auth and problem responses of these routes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

#[path = "common/api_support.rs"]
mod api_support;

use api_support::*;
use grid_server::auth::Role;
use serde_json::{Value, json};

const DAY: i64 = 86_400;

/// Today's UTC day (days since the epoch).
fn today() -> i64 {
    jiff::Timestamp::now().as_second().div_euclid(DAY)
}

fn ts(day: i64) -> String {
    jiff::Timestamp::from_second(day * DAY).unwrap().to_string()
}

fn date(day: i64) -> String {
    ts(day)[..10].to_owned()
}

/// An hourly household-like load (kW): a daily cycle, higher on weekends, deterministic noise.
fn load_kw(i: i64) -> f64 {
    let (h, d) = (i.rem_euclid(24), i.div_euclid(24));
    let weekend = if (d + 3).rem_euclid(7) >= 5 { 0.3 } else { 0.0 };
    let cycle = 0.6 * ((h as f64 - 6.0) / 24.0 * std::f64::consts::TAU).sin();
    1.2 + cycle + weekend + 0.2 * ((i.rem_euclid(9973) * 7919 % 101) as f64 / 101.0)
}

/// An hourly PV profile (kW): a bell between 06:00 and 18:00 UTC, cloudier on some days.
fn pv_kw(i: i64) -> f64 {
    let (h, d) = (i.rem_euclid(24), i.div_euclid(24));
    let sun = ((h as f64 - 6.0) / 12.0 * std::f64::consts::PI)
        .sin()
        .max(0.0);
    let clouds = 0.6 + 0.4 * ((d.rem_euclid(97) * 31 % 7) as f64 / 7.0);
    if (6..=18).contains(&h) {
        3.0 * sun * clouds
    } else {
        0.0
    }
}

/// JSON body of an hourly series over days `[first, end)`.
fn hourly(first: i64, end: i64, f: fn(i64) -> f64) -> Value {
    let values: Vec<f64> = (first * 24..end * 24).map(f).collect();
    json!({"start": ts(first), "slot_seconds": 3600, "values": values})
}

async fn put_series(app: &TestApp, token: &str, name: &str, body: Value) -> Value {
    let r = app
        .json(
            "PUT",
            &format!("/api/v1/series/{name}"),
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn train(app: &TestApp, token: &str, body: Value) -> Value {
    let r = app
        .json("POST", "/api/v1/models", Some(token), Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_trained_versioned_activated_and_serve_forecasts() {
    let app = TestApp::sqlite().await;
    let (admin, op, viewer) = (
        app.token(Role::Admin),
        app.token(Role::Operator),
        app.token(Role::Viewer),
    );
    site_and_device(&app, &admin, "home-1", "bat-1", None).await;
    let t = today();
    let up = put_series(&app, &op, "home-1.load", hourly(t - 42, t, load_kw)).await;
    assert_eq!(up["slots"], 42 * 24);
    assert_eq!(up["evaluations"], json!([]));

    // Viewers cannot train; bad input is a 422 naming the field.
    let body = json!({"name": "home-1.load", "series": "home-1.load", "site": "home-1",
        "country": "DE"});
    let r = app
        .json("POST", "/api/v1/models", Some(&viewer), Some(body.clone()))
        .await;
    r.problem(403, "forbidden");
    let mut bad = body.clone();
    bad["kind"] = "wind".into();
    let v = app
        .json("POST", "/api/v1/models", Some(&op), Some(bad))
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "kind");
    let mut bad = body.clone();
    bad["site"] = "nowhere".into();
    let v = app
        .json("POST", "/api/v1/models", Some(&op), Some(bad))
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "site");
    let mut bad = body.clone();
    bad["series"] = "empty-series".into();
    app.json("POST", "/api/v1/models", Some(&op), Some(bad))
        .await
        .problem(422, "invalid_field");

    // Version 1 (inactive), version 2 (active).
    let v1 = train(&app, &op, body.clone()).await;
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["active"], false);
    assert_eq!(v1["kind"], "load");
    assert_eq!(v1["site"], "home-1");
    let meta = &v1["metadata"];
    assert_eq!(
        meta["source"],
        json!({"kind": "series", "series": "home-1.load"})
    );
    assert_eq!(meta["slot_seconds"], 3600);
    assert_eq!(meta["forecast"]["training_to"], date(t - 1));
    assert!(meta["forecast"]["model_kind"].as_str().unwrap().len() > 2);
    assert!(
        meta["forecast"]["metrics"]["model"]["mae"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let r = app
        .json(
            "GET",
            "/api/v1/models/home-1.load/forecast?day=2030-01-01",
            Some(&viewer),
            None,
        )
        .await;
    r.problem(404, "not_found");
    let mut b2 = body.clone();
    b2["activate"] = true.into();
    let v2 = train(&app, &op, b2).await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["active"], true);

    let list = app
        .json(
            "GET",
            "/api/v1/models?name=home-1.load",
            Some(&viewer),
            None,
        )
        .await
        .json();
    let actives: Vec<bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["active"].as_bool().unwrap())
        .collect();
    assert_eq!(actives, [false, true]);
    let newest = app
        .json("GET", "/api/v1/models/home-1.load", Some(&viewer), None)
        .await
        .json();
    assert_eq!(newest["version"], 2);
    let versions = app
        .json(
            "GET",
            "/api/v1/models/home-1.load/versions",
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    let one = app
        .json(
            "GET",
            "/api/v1/models/home-1.load/versions/1",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["version"], 1);
    app.json(
        "GET",
        "/api/v1/models/home-1.load/versions/9",
        Some(&viewer),
        None,
    )
    .await
    .problem(404, "not_found");
    app.json("GET", "/api/v1/models/nope/versions/x", Some(&viewer), None)
        .await
        .problem(404, "not_found");
    let active_only = app
        .json(
            "GET",
            "/api/v1/models?active=true&kind=load",
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(active_only.as_array().unwrap().len(), 1);
    app.json("GET", "/api/v1/models?colour=red", Some(&viewer), None)
        .await
        .problem(422, "invalid_query");

    // Activation: operators only; version 1 becomes the only active one.
    app.json(
        "POST",
        "/api/v1/models/home-1.load/versions/1/activate",
        Some(&viewer),
        None,
    )
    .await
    .problem(403, "forbidden");
    let a = app
        .json(
            "POST",
            "/api/v1/models/home-1.load/versions/1/activate",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["active"], true);
    let list = app
        .json(
            "GET",
            "/api/v1/models?name=home-1.load&active=true",
            Some(&viewer),
            None,
        )
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["version"], 1);

    // Today's forecast from the active version: 24 hourly slots, ordered quantiles, close to
    // the synthetic load.
    let f = app
        .json(
            "GET",
            &format!("/api/v1/models/home-1.load/forecast?day={}", date(t)),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(f.status, 200, "{}", f.text());
    let f = f.json();
    assert_eq!(f["version"], 1);
    assert_eq!(f["kind"], "load");
    assert_eq!(f["slot_seconds"], 3600);
    assert_eq!(f["start"], ts(t));
    let (p10, p50, p90) = (
        f["p10"].as_array().unwrap(),
        f["p50"].as_array().unwrap(),
        f["p90"].as_array().unwrap(),
    );
    assert_eq!(p50.len(), 24);
    let mut abs = 0.0;
    for h in 0..24 {
        let (lo, mid, hi) = (
            p10[h].as_f64().unwrap(),
            p50[h].as_f64().unwrap(),
            p90[h].as_f64().unwrap(),
        );
        assert!(lo <= mid && mid <= hi, "slot {h}: {lo} {mid} {hi}");
        abs += (mid - load_kw(t * 24 + h as i64)).abs();
    }
    assert!(abs / 24.0 < 0.25, "forecast MAE {}", abs / 24.0);
    // A named version, bad days, unknown models.
    let f1 = app
        .json(
            "GET",
            &format!(
                "/api/v1/models/home-1.load/forecast?day={}&version=2",
                date(t)
            ),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(f1.json()["version"], 2);
    let v = app
        .json(
            "GET",
            "/api/v1/models/home-1.load/forecast?day=tomorrow",
            Some(&viewer),
            None,
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "day");
    app.json(
        "GET",
        "/api/v1/models/home-1.load/forecast",
        Some(&viewer),
        None,
    )
    .await
    .problem(422, "invalid_query");
    app.json(
        "GET",
        "/api/v1/models/ghost/forecast?day=2030-01-01",
        Some(&viewer),
        None,
    )
    .await
    .problem(404, "not_found");

    // Another tenant's token sees neither the model nor its forecasts.
    let other = app.tenant_token(Role::Operator, "acme");
    app.json("GET", "/api/v1/models/home-1.load", Some(&other), None)
        .await
        .problem(403, "forbidden");
    let mine = app
        .json("GET", "/api/v1/models", Some(&other), None)
        .await
        .json();
    assert_eq!(mine, json!([]));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_records_forecast_error_when_actuals_arrive() {
    let app = TestApp::sqlite().await;
    let op = app.token(Role::Operator);
    let t = today();
    // Train on data up to 3 days ago; the last two days arrive later.
    put_series(&app, &op, "mon.load", hourly(t - 40, t - 2, load_kw)).await;
    let m = train(
        &app,
        &op,
        json!({"name": "mon.load", "series": "mon.load", "activate": true,
               "train_to": date(t - 3)}),
    )
    .await;
    assert_eq!(m["metadata"]["forecast"]["training_to"], date(t - 3));
    // Day t-3 was a training day: uploading it again scores nothing; t-2 and t-1 are scored.
    let up = put_series(&app, &op, "mon.load", hourly(t - 3, t, load_kw)).await;
    let ev = up["evaluations"].as_array().unwrap();
    let days: Vec<&str> = ev.iter().map(|e| e["day"].as_str().unwrap()).collect();
    assert_eq!(days, [date(t - 2), date(t - 1)]);
    for e in ev {
        assert_eq!(e["model"], "mon.load");
        assert_eq!(e["version"], 1);
        assert_eq!(e["n"], 24);
        let mae = e["mae"].as_f64().unwrap();
        assert!(mae > 0.0 && mae < 0.4, "{e}");
        let cov = e["coverage_p10_p90"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&cov));
    }
    let model = app
        .json("GET", "/api/v1/models/mon.load", Some(&op), None)
        .await
        .json();
    let mon = &model["metadata"]["monitoring"];
    assert_eq!(mon["days"].as_array().unwrap().len(), 2);
    assert!(mon["mae_mean"].as_f64().unwrap() > 0.0);
    assert!(mon["tracker"]["recent_abs_z"].as_f64().is_some());
    // The same upload again re-scores the same days without duplicating them.
    put_series(&app, &op, "mon.load", hourly(t - 1, t, load_kw)).await;
    let model = app
        .json("GET", "/api/v1/models/mon.load", Some(&op), None)
        .await
        .json();
    assert_eq!(
        model["metadata"]["monitoring"]["days"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let metrics = app.json("GET", "/metrics", None, None).await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("grid_forecast_mae{") && l.contains("model=\"mon.load\""))
        .unwrap_or_else(|| panic!("no grid_forecast_mae for mon.load in\n{metrics}"));
    assert!(line.contains("version=\"1\""), "{line}");
    assert!(metrics.contains("grid_forecast_days_evaluated_total{model=\"mon.load\"}"));
    assert!(metrics.contains("grid_forecast_mae_mean{"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_train_on_a_posted_csv_and_on_stored_prices() {
    let app = TestApp::sqlite().await;
    let op = app.token(Role::Operator);
    let t = today();
    let mut csv = String::from("timestamp_utc,value_kW\n");
    for i in (t - 30) * 24..t * 24 {
        // One gap: an empty cell is a missing value, not a zero.
        let v = if i == (t - 10) * 24 + 5 {
            String::new()
        } else {
            format!("{:.4}", load_kw(i))
        };
        csv.push_str(&format!(
            "{},{v}\n",
            jiff::Timestamp::from_second(i * 3600).unwrap()
        ));
    }
    let m = train(
        &app,
        &op,
        json!({"name": "csv.load", "series": "csv.load", "csv": csv, "activate": true}),
    )
    .await;
    assert_eq!(m["version"], 1);
    // The posted values were stored (the gap too: 30 * 24 - 1 slots).
    let pts = app
        .json(
            "GET",
            &format!("/api/v1/series/csv.load?from={}&to={}", ts(t - 30), ts(t)),
            Some(&op),
            None,
        )
        .await
        .json();
    assert_eq!(pts.as_array().unwrap().len(), 30 * 24 - 1);
    let names = app
        .json("GET", "/api/v1/series", Some(&op), None)
        .await
        .json();
    assert_eq!(names, json!(["csv.load"]));
    // A CSV upload to the series route works too; a bad cell names its line.
    let r = app
        .call(raw(
            "PUT",
            "/api/v1/series/csv.load",
            Some(&op),
            "text/csv",
            b"timestamp_utc,value_kW\n2020-01-01T00:00:00Z,1\n2020-01-01T01:00:00Z,x\n".to_vec(),
        ))
        .await;
    let v = r.problem(422, "invalid_field");
    assert!(v["field"].as_str().unwrap().starts_with("csv"), "{v}");
    let r = app
        .call(raw(
            "PUT",
            "/api/v1/series/csv.load",
            Some(&op),
            "text/plain",
            b"1".to_vec(),
        ))
        .await;
    r.problem(415, "unsupported_media_type");
    let v = app
        .json(
            "PUT",
            "/api/v1/series/csv.load",
            Some(&op),
            Some(json!({"start": ts(t), "slot_seconds": 7000, "values": [1.0]})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "slot_seconds");

    // Prices: 21 days of hourly import prices, a price model on them, its forecast.
    let import: Vec<f64> = (0..21 * 24)
        .map(|i| 0.2 + 0.1 * ((i % 24) as f64 / 24.0 * std::f64::consts::TAU).sin())
        .collect();
    let r = app
        .json(
            "PUT",
            "/api/v1/prices/DE-LU",
            Some(&op),
            Some(json!({"start": ts(t - 21), "slot_seconds": 3600, "import": import})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let p = train(
        &app,
        &op,
        json!({"name": "de.price", "series": "DE-LU", "source": "prices", "activate": true}),
    )
    .await;
    assert_eq!(p["kind"], "price");
    assert_eq!(p["metadata"]["source"]["kind"], "prices");
    let f = app
        .json(
            "GET",
            &format!("/api/v1/models/de.price/forecast?day={}", date(t)),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(f.status, 200, "{}", f.text());
    let p50 = f.json()["p50"].as_array().unwrap().clone();
    assert_eq!(p50.len(), 24);
    assert!((p50[6].as_f64().unwrap() - 0.3).abs() < 0.05, "{p50:?}");
    // Posting values for a price model is refused.
    let v = app
        .json(
            "POST",
            "/api/v1/models",
            Some(&op),
            Some(json!({"name": "x", "series": "DE-LU", "source": "prices",
                        "data": {"start": ts(t), "slot_seconds": 3600, "values": [1.0]}})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(v["field"], "source");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimisation_uses_the_active_load_and_pv_forecasts() {
    let app = TestApp::sqlite().await;
    let (admin, op) = (app.token(Role::Admin), app.token(Role::Operator));
    site_and_device(&app, &admin, "home-2", "bat-2", None).await;
    let t = today();
    put_series(&app, &op, "home-2.load", hourly(t - 35, t, load_kw)).await;
    put_series(&app, &op, "home-2.pv", hourly(t - 35, t, pv_kw)).await;
    // Prices for tomorrow.
    let import: Vec<f64> = (0..24).map(|h| if h < 12 { 0.1 } else { 0.4 }).collect();
    let r = app
        .json(
            "PUT",
            "/api/v1/prices/tariff-2",
            Some(&op),
            Some(json!({"start": ts(t + 1), "slot_seconds": 3600, "import": import})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let opt = json!({"sites": ["home-2"], "start": ts(t + 1), "slot_seconds": 3600,
        "slots": 24, "price_series": "tariff-2"});

    // Without models the load and PV are zero: the grid flow is the battery's.
    let r = app
        .json("POST", "/api/v1/optimize", Some(&op), Some(opt.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &r.json()["devices"][0];
    assert!(d.get("load_forecast").is_none());
    for (g, s) in d["grid_kw"]
        .as_array()
        .unwrap()
        .iter()
        .zip(d["setpoints_kw"].as_array().unwrap())
    {
        assert!((g.as_f64().unwrap() - s.as_f64().unwrap()).abs() < 1e-3);
    }

    // An inactive model is ignored; active ones are used.
    train(
        &app,
        &op,
        json!({"name": "home-2.load", "series": "home-2.load", "site": "home-2", "activate": true}),
    )
    .await;
    train(
        &app,
        &op,
        json!({"name": "home-2.pv", "series": "home-2.pv", "site": "home-2", "kind": "pv",
               "activate": true}),
    )
    .await;
    let forecast = |name: &'static str| {
        let app = &app;
        let op = op.clone();
        async move {
            let f = app
                .json(
                    "GET",
                    &format!("/api/v1/models/{name}/forecast?day={}", date(t + 1)),
                    Some(&op),
                    None,
                )
                .await;
            assert_eq!(f.status, 200, "{}", f.text());
            f.json()["p50"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect::<Vec<f64>>()
        }
    };
    let load = forecast("home-2.load").await;
    let pv = forecast("home-2.pv").await;
    assert!(pv[12] > 0.5 && pv[0] == 0.0, "{pv:?}");
    let r = app
        .json("POST", "/api/v1/optimize", Some(&op), Some(opt.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &r.json()["devices"][0];
    assert_eq!(d["load_forecast"], "home-2.load v1");
    assert_eq!(d["pv_forecast"], "home-2.pv v1");
    // Grid flow = load - PV + battery power, slot by slot.
    let (grid, set) = (
        d["grid_kw"].as_array().unwrap(),
        d["setpoints_kw"].as_array().unwrap(),
    );
    for h in 0..24 {
        let net = grid[h].as_f64().unwrap() - set[h].as_f64().unwrap();
        assert!(
            (net - (load[h] - pv[h])).abs() < 1e-3,
            "slot {h}: grid - battery {net}, load - pv {}",
            load[h] - pv[h]
        );
    }
    // 30-minute slots take the forecast of the hour they lie in.
    let mut half = opt.clone();
    half["slot_seconds"] = 1800.into();
    half["slots"] = 48.into();
    let r = app
        .json("POST", "/api/v1/optimize", Some(&op), Some(half))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &r.json()["devices"][0];
    let (grid, set) = (
        d["grid_kw"].as_array().unwrap(),
        d["setpoints_kw"].as_array().unwrap(),
    );
    for i in 0..48 {
        let net = grid[i].as_f64().unwrap() - set[i].as_f64().unwrap();
        assert!((net - (load[i / 2] - pv[i / 2])).abs() < 1e-3, "slot {i}");
    }
    app.shutdown().await;
}
