//! Smoke test of the live services `.ci/run` provides: PostgreSQL answers a query and Mosquitto
//! carries a publish/subscribe round trip. Run with `cargo test -- --ignored` and `DATABASE_URL`
//! / `MQTT_URL` exported; a missing or unreachable service fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set for the live tests (see .ci/run)"))
}

#[tokio::test]
#[ignore = "live: needs DATABASE_URL (run by .ci/run)"]
async fn postgres_answers_a_query() {
    use sqlx::Connection;
    let url = env("DATABASE_URL");
    assert!(
        url.starts_with("postgres"),
        "DATABASE_URL must be a postgres:// URL, got {url}"
    );
    let mut conn = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&url))
        .await
        .expect("PostgreSQL did not answer within 10 s")
        .expect("PostgreSQL connection failed");
    let (sum, version): (i32, String) = sqlx::query_as("SELECT 40 + 2, version()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(sum, 42);
    assert!(version.starts_with("PostgreSQL"), "{version}");
}

#[tokio::test]
#[ignore = "live: needs MQTT_URL (run by .ci/run)"]
async fn mqtt_broker_round_trips_a_message() {
    let url = env("MQTT_URL");
    let rest = url
        .strip_prefix("mqtt://")
        .unwrap_or_else(|| panic!("MQTT_URL must be mqtt://host:port, got {url}"));
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .expect("host:port");
    let port: u16 = port.parse().expect("numeric port");
    let client_id = format!("grid-smoke-{}", std::process::id());
    let mut opts = MqttOptions::new(client_id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let topic = format!("grid/smoke/{client_id}");
    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let payload = b"hello from grid".to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut published = false;
    loop {
        let event = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("no round trip within 10 s")
            .expect("MQTT connection failed");
        match event {
            Event::Incoming(Packet::SubAck(_)) if !published => {
                client
                    .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .unwrap();
                published = true;
            }
            Event::Incoming(Packet::Publish(p)) => {
                assert_eq!(p.topic, topic);
                assert_eq!(p.payload.as_ref(), payload.as_slice());
                break;
            }
            _ => {}
        }
    }
    client.disconnect().await.ok();
}
