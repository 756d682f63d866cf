//! The fleet demo at CI size, end to end: the server, real agents on simulated batteries, one
//! optimised day on a fast clock, and the summary's promises (every schedule acked, no setpoint
//! outside a battery's envelope, cheaper than doing nothing, the feeder limit kept).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use clap::Parser;
use grid_sim::demo::{DemoArgs, run};
use grid_sim::report::Report;

fn assert_summary(r: &Report, devices: usize) {
    let json = serde_json::to_string_pretty(r).unwrap();
    assert_eq!(r.devices, devices, "{json}");
    assert_eq!(r.schedules_published, devices, "{json}");
    assert_eq!(r.schedules_acked, devices, "every schedule acked: {json}");
    assert_eq!(r.schedules_rejected, 0, "{json}");
    assert_eq!(r.safety_violations, 0, "{json}");
    assert!(
        r.cost_grid < r.cost_do_nothing,
        "grid must beat doing nothing: {json}"
    );
    assert!(
        r.feeder_peak_kw <= r.feeder_limit_kw * 1.05 + 0.5,
        "the feeder limit is kept (within the simulation's noise): {json}"
    );
    assert!(
        r.feeder_peak_kw < r.feeder_peak_do_nothing_kw,
        "the fleet's peak is lowered: {json}"
    );
    assert!(
        r.delivery_latency_ms.p99 >= r.delivery_latency_ms.p50,
        "{json}"
    );
    assert!(
        r.delivery_latency_ms.p50 > 0.0,
        "latencies measured: {json}"
    );
}

/// Embedded defaults (SQLite, the server's in-process rumqttd): what a fresh clone runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_embedded_defaults_acks_everything_safely_and_saves_money() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        // RUST_LOG=grid_server=info,grid_agent=info shows both sides of the day.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let args = DemoArgs::new(20, 7_200.0);
    let report = run(args).await.expect("the demo runs");
    assert_summary(&report, 20);
}

/// The CI-sized demo against the real PostgreSQL (`DATABASE_URL`) and Mosquitto (`MQTT_URL`),
/// then a smaller one on the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs DATABASE_URL (PostgreSQL) and MQTT_URL (Mosquitto)"]
async fn demo_on_postgres_and_mosquitto_acks_everything_safely_and_saves_money() {
    let mut args = DemoArgs::new(50, 7_200.0);
    args.database_url =
        Some(std::env::var("DATABASE_URL").expect("DATABASE_URL must name a PostgreSQL server"));
    args.mqtt_url = Some(std::env::var("MQTT_URL").expect("MQTT_URL must name an MQTT broker"));
    let dir = std::env::temp_dir().join(format!("grid-demo-live-{}", std::process::id()));
    let path = dir.join("report.json");
    std::fs::create_dir_all(&dir).unwrap();
    args.report = Some(path.clone());
    let report = run(args).await.expect("the demo runs");
    assert!(report.backend.contains("PostgreSQL"), "{}", report.backend);
    assert_summary(&report, 50);
    // The JSON report carries the documented keys with the same numbers.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["schedules_acked"], 50);
    assert_eq!(json["safety_violations"], 0);
    assert!(json["delivery_latency_ms"]["p99"].is_number());
    std::fs::remove_dir_all(&dir).ok();

    // Run again on the same database, which now holds the first run's devices and schedules:
    // the devices are taken over, and the summary counts this run's schedules only.
    let mut again = DemoArgs::new(10, 7_200.0);
    again.database_url = Some(std::env::var("DATABASE_URL").unwrap());
    again.mqtt_url = Some(std::env::var("MQTT_URL").unwrap());
    let report = run(again)
        .await
        .expect("the demo runs again on the same database");
    assert_summary(&report, 10);
}

/// `DemoArgs::new` is what the command line gives with no options.
#[test]
fn the_command_lines_defaults_are_the_documented_ones() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }
    let parsed = Cli::try_parse_from(["grid-sim"]).unwrap().demo;
    let expected = DemoArgs::new(200, 720.0);
    assert_eq!(parsed.devices, 200);
    assert_eq!(parsed.speed, 720.0);
    assert_eq!(
        (
            parsed.seed,
            parsed.feeder_fraction,
            parsed.listen,
            parsed.serve
        ),
        (
            expected.seed,
            expected.feeder_fraction,
            expected.listen,
            expected.serve
        )
    );
    let bad = Cli::try_parse_from(["grid-sim", "--devices", "many"]);
    assert!(bad.is_err());
}
