//! Many agents in one process (the fleet demo's shape): one shared SQLite pool, one accelerated
//! clock, each agent with its own MQTT connection and simulated battery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use grid_agent::shell::{Clock, ScaledClock};
use grid_agent::store::{Store, StoreLocation};
use grid_core::{ExecutionState, Timestamp};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_agents_share_one_process_one_store_and_one_fast_clock() {
    let broker = broker(BrokerKind::Embedded);
    let (seed, _) = Store::open(&StoreLocation::Memory, "seed", 10)
        .await
        .unwrap();
    let pool = seed.pool().expect("a SQLite store").clone();
    let start: Timestamp = "2026-11-27T00:00:00Z".parse().unwrap();
    // One simulated minute per real second.
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(start, 60.0));
    let n = 12;
    let mut fleet = Vec::new();
    for i in 0..n {
        let device = device_id(&format!("fleet{i}"));
        let mut server = TestServer::connect(broker, &device).await;
        let mut setup = AgentSetup::new(device.clone(), broker, clock.clone());
        setup.shared_store = Some(Store::shared(pool.clone(), device.as_str(), 100));
        let agent = setup.start().await;
        server
            .next_of(grid_proto::v1::BodyKind::Hello, Duration::from_secs(10))
            .await
            .expect("hello");
        let kw = 0.5 + i as f64 * 0.25;
        let msg = schedule_msg(
            server.next_id(),
            &device,
            "fleet",
            1,
            start,
            60,
            &[kw, -kw, 0.0],
            start,
            0,
        );
        server.publish(&msg).await;
        fleet.push((server, agent, msg, kw));
    }
    for (server, agent, msg, kw) in &mut fleet {
        let acks = server
            .ack_until(&msg.id, ExecutionState::Completed, Duration::from_secs(20))
            .await;
        let states: Vec<_> = acks
            .iter()
            .filter(|a| a.ref_id.as_ref() == Some(&msg.id))
            .map(|a| a.state)
            .collect();
        // Started on arrival: `executing` (acceptance implied), then `completed`.
        assert_eq!(
            states,
            [ExecutionState::Executing, ExecutionState::Completed]
        );
        assert_eq!(agent.applied_kw(), 0.0, "idle after the end ({kw} kW plan)");
    }
    // Every agent's rows live in the one shared database.
    let devices: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT device) FROM schedules")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(devices, n);
    for (_, agent, _, _) in fleet {
        agent.stop().await;
    }
}
