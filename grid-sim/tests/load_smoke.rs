//! The scale benchmark at CI size: 50 real agents against the real PostgreSQL (`DATABASE_URL`)
//! and a Mosquitto the benchmark starts itself with the project's tuned configuration. Fails
//! (does not skip) when either service is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_sim::load::worker::AgentStore;
use grid_sim::load::{LoadArgs, bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs DATABASE_URL (PostgreSQL) and the mosquitto binary"]
async fn fifty_devices_are_accepted_recorded_and_executed_once() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL must name a PostgreSQL server");
    let mut args = LoadArgs::new(50, &url);
    // The test binary is not grid-sim: run the agents in this process.
    args.agent_procs = Some(0);
    args.jitter_ms = 300;
    args.tick_ms = 1000;
    args.api_rate = 200;
    args.api_seconds = 2;
    let s = bench(&args).await.expect("the benchmark runs");
    assert_eq!(s["agent_store"], "volatile", "the default: {s:#}");
    every_device_accepted_and_executed_once(&s, 50);
    let p = &s["publish"];
    assert_eq!(p["publish_errors"], 0, "{s:#}");
    assert!(
        p["all_accepted_recorded_s"]
            .as_f64()
            .is_some_and(|t| t < 30.0),
        "{s:#}"
    );
    assert!(p["accepted_recorded_ms"]["p99"].as_f64().is_some(), "{s:#}");
    // The bare-MQTT reference ran on the same broker: every client answered in each round, and
    // the publish figure is given as a multiple of it.
    let r = &s["reference"];
    assert_eq!(r["clients"], 50, "{s:#}");
    let rounds = r["rounds_all_answered_s"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 3, "{s:#}");
    assert!(
        rounds.iter().all(|t| t.as_f64().is_some_and(|t| t > 0.0)),
        "{s:#}"
    );
    assert!(
        p["ratio_to_bare_mqtt"].as_f64().is_some_and(|x| x > 0.0),
        "{s:#}"
    );
    let storms = s["reconnect_storms"].as_array().expect("two storms ran");
    assert_eq!(storms.len(), 2);
    for storm in storms {
        assert!(storm["all_hellos_recorded_s"].as_f64().is_some(), "{s:#}");
    }
    // The API test runs when wrk is installed; otherwise it says how to install it.
    let api = &s["api"];
    assert!(
        api["p99_ms"].as_f64().is_some()
            || api["skipped"]
                .as_str()
                .is_some_and(|m| m.contains("apt-get install")),
        "{s:#}"
    );
    if api["p99_ms"].is_number() {
        assert_eq!(api["http_errors"], 0, "{s:#}");
    }
}

/// The same publish with the real agent's SQLite store (in-memory shards) instead of the
/// volatile one: every device accepted, recorded and executed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs DATABASE_URL (PostgreSQL) and the mosquitto binary"]
async fn agents_on_sqlite_stores_are_accepted_recorded_and_executed_once() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL must name a PostgreSQL server");
    let mut args = LoadArgs::new(50, &url);
    args.agent_procs = Some(0);
    args.agent_store = AgentStore::Sqlite;
    args.shards = 2;
    args.jitter_ms = 300;
    args.tick_ms = 1000;
    args.skip_storm = true;
    args.skip_api = true;
    args.skip_reference = true;
    let s = bench(&args).await.expect("the benchmark runs");
    assert_eq!(s["agent_store"], "sqlite", "{s:#}");
    assert!(s["reference"].is_null(), "skipped: {s:#}");
    every_device_accepted_and_executed_once(&s, 50);
}

/// Every device's acceptance is recorded (schedules and acks table) and every agent started its
/// schedule exactly once.
fn every_device_accepted_and_executed_once(s: &serde_json::Value, n: u64) {
    let p = &s["publish"];
    assert_eq!(p["schedules_recorded_accepted"], n, "{s:#}");
    assert_eq!(p["accepted_devices"], n, "acks table: {s:#}");
    let e = &s["executions"];
    assert_eq!(
        (e["lost"].as_u64(), e["duplicated"].as_u64()),
        (Some(0), Some(0)),
        "{s:#}"
    );
    assert_eq!(e["agents_started_once"], n, "{s:#}");
}

/// The benchmark at any size with in-process agents (`GRID_LOAD_DEVICES`, default 1000), printing
/// the table: `cargo test --release -p grid-sim --test load_smoke -- --ignored --nocapture sized`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "live: needs DATABASE_URL (PostgreSQL) and the mosquitto binary; a benchmark, not a check"]
async fn sized_run_prints_the_table() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL must name a PostgreSQL server");
    let n = std::env::var("GRID_LOAD_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut args = LoadArgs::new(n, &url);
    args.agent_procs = Some(0);
    args.skip_api = std::env::var("GRID_LOAD_SKIP_API").is_ok();
    args.skip_storm = std::env::var("GRID_LOAD_SKIP_STORM").is_ok();
    let s = bench(&args).await.expect("the benchmark runs");
    println!("{}", serde_json::to_string_pretty(&s).unwrap());
    println!("{}", grid_sim::load::table(&s));
    assert!(
        s["publish"]["schedules_recorded_accepted"]
            .as_i64()
            .is_some()
    );
}
