//! `/metrics` after a real delivery: a schedule published over the embedded broker and accepted
//! by a device feeds the delivery-latency histogram. Its own test binary, so the process-wide
//! metrics recorder sees no other test's deliveries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

#[path = "common/api_support.rs"]
mod api_support;

#[path = "common/store_support.rs"]
mod support;

#[path = "common/mqtt_support.rs"]
mod mqtt_support;

use api_support::{TestApp, site_and_device};
use grid_core::{DeviceId, ExecutionState, SlotLength, Timestamp};
use grid_server::auth::Role;
use mqtt_support::{FakeDevice, eventually};
use std::time::Duration;

/// The value of an unlabelled sample `name` in a Prometheus exposition, if present.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// Both ways a device takes a schedule are one observation each: `accepted`, and `executing`
/// alone (a device that accepts and starts a schedule in one step). One test, as the metrics
/// recorder is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_schedule_feeds_the_delivery_latency_histogram() {
    delivery_latency_observed(ExecutionState::Accepted).await;
    delivery_latency_observed(ExecutionState::Executing).await;
}

async fn delivery_latency_observed(answer: ExecutionState) {
    let app = TestApp::sqlite().await;
    let admin = app.token(Role::Admin);
    site_and_device(&app, &admin, "site-m", "bat-m", None).await;
    let metrics = app.json("GET", "/metrics", None, None).await.text();
    let count_before = sample(&metrics, "grid_delivery_latency_seconds_count").unwrap_or(0.0);
    let sum_before = sample(&metrics, "grid_delivery_latency_seconds_sum").unwrap_or(0.0);

    let port = app.config.mqtt.listen.port();
    let device = FakeDevice::connect("127.0.0.1", port, &DeviceId::new("bat-m").unwrap()).await;
    let agent = device.auto_ack_schedules_with(answer);
    let start = grid_core::time::floor_to_slot(Timestamp::now(), SlotLength::HOUR).unwrap();
    let r = app
        .json(
            "POST",
            "/api/v1/schedules",
            Some(&admin),
            Some(serde_json::json!({
                "id": "sched-m", "device": "bat-m", "start": start.to_string(),
                "slot_seconds": 3600, "setpoints_kw": vec![1.0; 4], "initial_energy_kwh": 5.0,
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let accepted = eventually(Duration::from_secs(10), || async {
        let r = app
            .json("GET", "/api/v1/schedules/sched-m", Some(&admin), None)
            .await;
        r.json()["state"] == answer.as_str()
    })
    .await;
    assert!(accepted, "the device accepted its schedule");
    let record = app
        .json("GET", "/api/v1/schedules/sched-m", Some(&admin), None)
        .await
        .json();

    let metrics = app.json("GET", "/metrics", None, None).await.text();
    let count = sample(&metrics, "grid_delivery_latency_seconds_count");
    assert_eq!(
        count,
        Some(count_before + 1.0),
        "one acceptance observed:\n{metrics}"
    );
    // The observation is the store record's first send → answer.
    let at = |k: &str| -> Timestamp { record[k].as_str().unwrap().parse().unwrap() };
    let expected =
        (at("answered_at").as_millisecond() - at("first_sent_at").as_millisecond()) as f64 / 1000.0;
    let sum = sample(&metrics, "grid_delivery_latency_seconds_sum").unwrap() - sum_before;
    assert!(
        (sum - expected).abs() <= 0.002,
        "latency {sum} s, the record says {expected} s ({record})"
    );
    assert_eq!(
        sample(&metrics, "grid_delivery_latency_seconds_bucket{le=\"10\"}"),
        Some(count_before + 1.0),
        "{metrics}"
    );
    agent.abort();
    app.shutdown().await;
}
