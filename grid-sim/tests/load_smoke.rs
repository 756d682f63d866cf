//! The scale benchmark at CI size: 50 real agents against the real PostgreSQL (`DATABASE_URL`)
//! and a Mosquitto the benchmark starts itself with the project's tuned configuration. Fails
//! (does not skip) when either service is missing.

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
    let p = &s["publish"];
    assert_eq!(p["accepted_devices"], 50, "{s:#}");
    assert_eq!(p["publish_errors"], 0, "{s:#}");
    assert!(p["all_accepted_recorded_s"].as_f64().is_some_and(|t| t < 30.0), "{s:#}");
    assert!(p["accepted_recorded_ms"]["p99"].as_f64().is_some(), "{s:#}");
    let e = &s["executions"];
    assert_eq!((e["lost"].as_u64(), e["duplicated"].as_u64()), (Some(0), Some(0)), "{s:#}");
    assert_eq!(e["agents_started_once"], 50, "{s:#}");
    let storms = s["reconnect_storms"].as_array().expect("two storms ran");
    assert_eq!(storms.len(), 2);
    for storm in storms {
        assert!(storm["all_hellos_recorded_s"].as_f64().is_some(), "{s:#}");
    }
    // The API test runs when wrk is installed; otherwise it says how to install it.
    let api = &s["api"];
    assert!(
        api["p99_ms"].as_f64().is_some() || api["skipped"].as_str().is_some_and(|m| m.contains("apt-get install")),
        "{s:#}"
    );
    if api["p99_ms"].is_number() {
        assert_eq!(api["http_errors"], 0, "{s:#}");
    }
}
