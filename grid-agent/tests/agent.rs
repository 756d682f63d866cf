//! End-to-end tests of the agent over MQTT: a test plays the server against agents running
//! in-process (with a manual clock) or as the built binary. Each test runs against the embedded
//! rumqttd by default and against the broker in `MQTT_URL` as an ignored `live` variant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use grid_agent::config::FallbackMode;
use grid_agent::hardware::{GridMeter, SimSiteMeter};
use grid_agent::shell::{Clock, ManualClock, SystemClock};
use grid_agent::store::StoreLocation;
use grid_core::{ExecutionState, Timestamp};
use grid_hal::{BatteryState, ErrorKind, SimSite, SiteConfig};
use grid_proto::topic::TopicKind;
use grid_proto::v1::*;
use grid_proto::{Codec, signature};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

macro_rules! both {
    ($embedded:ident, $live:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            $body(BrokerKind::Embedded).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "live: needs MQTT_URL (run by .ci/run)"]
        async fn $live() {
            $body(BrokerKind::Live).await
        }
    };
}

const T: Duration = Duration::from_secs(10);

fn t0() -> Timestamp {
    "2026-11-27T00:00:00Z".parse().unwrap()
}

fn secs(s: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs(s)
}

fn states_for(acks: &[Ack], id: &MessageId) -> Vec<ExecutionState> {
    acks.iter()
        .filter(|a| a.ref_id.as_ref() == Some(id))
        .map(|a| a.state)
        .collect()
}

/// Advances the manual clock by `total` in `step`s, letting the agent tick after each.
async fn run_clock(clock: &ManualClock, total: Duration, step: Duration) {
    let mut done = Duration::ZERO;
    while done < total {
        clock.advance(step);
        done += step;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

async fn schedule_executes_slot_by_slot(kind: BrokerKind) {
    let broker = broker(kind);
    let device = device_id("exec");
    let clock = Arc::new(ManualClock::new(t0() + secs(1)));
    let mut server = TestServer::connect(broker, &device).await;
    let mut setup = AgentSetup::new(device.clone(), broker, clock.clone());
    setup.telemetry_interval = Duration::from_secs(600);
    let agent = setup.start().await;
    let hello = server
        .next_of(BodyKind::Hello, T)
        .await
        .expect("hello on connect");
    let Body::Hello(h) = hello.body else {
        unreachable!()
    };
    assert!(h.schedules.is_empty());

    let id = server.next_id();
    server
        .publish(&schedule_msg(
            id.clone(),
            &device,
            "day",
            1,
            t0(),
            60,
            &[2.0, -1.0, 0.5],
            t0(),
            0,
        ))
        .await;
    let acks = server.ack_until(&id, ExecutionState::Executing, T).await;
    // The horizon has started: accepted and started at once, answered `executing` alone.
    assert_eq!(states_for(&acks, &id), [ExecutionState::Executing]);
    let accepted = &acks[0];
    assert_eq!(accepted.schedule.as_ref().unwrap().version.0, 1);
    wait_for("slot 0 at 2 kW", T, || {
        (agent.applied_kw() - 2.0).abs() < 1e-9
    })
    .await;

    // Walk through the slots on the simulated clock, in 5 s steps.
    run_clock(&clock, Duration::from_secs(59), Duration::from_secs(5)).await;
    wait_for("slot 1 at -1 kW", T, || {
        (agent.applied_kw() + 1.0).abs() < 1e-9
    })
    .await;
    run_clock(&clock, Duration::from_secs(60), Duration::from_secs(5)).await;
    wait_for("slot 2 at 0.5 kW", T, || {
        (agent.applied_kw() - 0.5).abs() < 1e-9
    })
    .await;
    run_clock(&clock, Duration::from_secs(60), Duration::from_secs(5)).await;
    let acks = server.ack_until(&id, ExecutionState::Completed, T).await;
    assert_eq!(states_for(&acks, &id), [ExecutionState::Completed]);
    wait_for("idle after the end", T, || agent.applied_kw() == 0.0).await;

    // Plan-vs-actual arrives with the telemetry flushed at shutdown.
    agent.stop().await;
    let tel = server
        .next_of(BodyKind::Telemetry, T)
        .await
        .expect("telemetry flushed at stop");
    let Body::Telemetry(tel) = tel.body else {
        unreachable!()
    };
    assert!(!tel.samples.is_empty());
    let plan: Vec<_> = tel.plan.iter().map(|r| (r.slot, r.planned_kw)).collect();
    assert_eq!(plan, [(0, 2.0), (1, -1.0), (2, 0.5)], "{:#?}", tel.plan);
    for r in &tel.plan {
        let planned_kwh = r.planned_kw / 60.0;
        assert!((r.deviation_kwh - (r.delivered_kwh - planned_kwh)).abs() < 1e-12);
        // The first slot starts one second late (the clock started at 00:00:01).
        assert!(
            r.deviation_kwh.abs() <= 0.1 * planned_kwh.abs() + 1e-3,
            "{r:?}"
        );
    }
}
both!(
    schedule_executes_slot_by_slot_embedded,
    schedule_executes_slot_by_slot_live,
    schedule_executes_slot_by_slot
);

async fn duplicates_execute_once_and_old_versions_are_superseded(kind: BrokerKind) {
    let broker = broker(kind);
    let device = device_id("dup");
    let clock = Arc::new(ManualClock::new(t0() + secs(1)));
    let mut server = TestServer::connect(broker, &device).await;
    let agent = AgentSetup::new(device.clone(), broker, clock.clone())
        .start()
        .await;
    server.next_of(BodyKind::Hello, T).await.expect("hello");

    let v2 = server.next_id();
    let msg = schedule_msg(
        v2.clone(),
        &device,
        "day",
        2,
        t0(),
        60,
        &[1.0, 1.0],
        t0(),
        0,
    );
    server.publish(&msg).await;
    server.publish(&msg).await; // a duplicate delivery (same message id)
    server.ack_until(&v2, ExecutionState::Executing, T).await;
    let v1 = server.next_id();
    server
        .publish(&schedule_msg(
            v1.clone(),
            &device,
            "day",
            1,
            t0(),
            60,
            &[-3.0, -3.0],
            t0(),
            0,
        ))
        .await;
    let same = server.next_id();
    server
        .publish(&schedule_msg(
            same.clone(),
            &device,
            "day",
            2,
            t0(),
            60,
            &[-2.0, -2.0],
            t0(),
            0,
        ))
        .await;
    // The version it holds, under another message id: answered with its current state.
    let rest = server.ack_until(&same, ExecutionState::Executing, T).await;
    let old = rest
        .iter()
        .find(|a| a.ref_id.as_ref() == Some(&v1))
        .expect("an ack for the older version");
    assert_eq!(old.state, ExecutionState::Superseded);
    assert_eq!(old.reason, Some(ReasonCode::Superseded));
    assert_eq!(old.schedule.as_ref().unwrap().version.0, 1);
    let later = server.drain(Duration::from_millis(700)).await;
    let all: Vec<Ack> = rest
        .into_iter()
        .chain(later.into_iter().filter_map(|e| match e.body {
            Body::Ack(a) => Some(a),
            _ => None,
        }))
        .collect();
    // The duplicate is answered with the current state at most; never accepted or started again.
    assert!(
        states_for(&all, &v2)
            .iter()
            .all(|s| *s == ExecutionState::Executing),
        "the duplicate was accepted again: {all:#?}"
    );
    assert_eq!(agent.applied_kw(), 1.0, "the newer version keeps running");
    let m = agent.metrics().engine;
    assert_eq!((m.schedules_accepted, m.schedules_started), (1, 1));

    // A newer version supersedes the running one.
    let v3 = server.next_id();
    server
        .publish(&schedule_msg(
            v3.clone(),
            &device,
            "day",
            3,
            t0(),
            60,
            &[0.5, 0.5],
            t0(),
            0,
        ))
        .await;
    let acks = server.ack_until(&v3, ExecutionState::Executing, T).await;
    let sup = acks
        .iter()
        .find(|a| a.ref_id.as_ref() == Some(&v2))
        .expect("v2 superseded");
    assert_eq!(sup.state, ExecutionState::Superseded);
    wait_for("v3 applied", T, || agent.applied_kw() == 0.5).await;
    agent.stop().await;
}
both!(
    duplicates_execute_once_and_old_versions_are_superseded_embedded,
    duplicates_execute_once_and_old_versions_are_superseded_live,
    duplicates_execute_once_and_old_versions_are_superseded
);

async fn bad_payloads_are_rejected_with_a_reason(kind: BrokerKind) {
    let broker = broker(kind);
    let device = device_id("bad");
    let clock = Arc::new(ManualClock::new(t0() + secs(1)));
    let key = signature::SigningKey::from_bytes(&[7u8; 32]);
    let wrong_key = signature::SigningKey::from_bytes(&[8u8; 32]);
    let mut server = TestServer::connect(broker, &device).await;
    let mut setup = AgentSetup::new(device.clone(), broker, clock.clone());
    setup.verifying_key = Some(key.verifying_key());
    let agent = setup.start().await;
    server.next_of(BodyKind::Hello, T).await.expect("hello");
    let mut expect = Vec::new();

    // Malformed: the body is not a schedule.
    let m = format!(
        r#"{{"v":1,"id":"bad-malformed","device":"{device}","sent_at":"2026-11-27T00:00:00Z","kind":"schedule_assign","body":{{"nope":1}}}}"#
    );
    server
        .publish_raw(TopicKind::Schedule, m.into_bytes())
        .await;
    expect.push(("bad-malformed", ReasonCode::Malformed));
    // Oversized.
    let big = format!(
        r#"{{"v":1,"id":"bad-oversized","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    server
        .publish_raw(TopicKind::Schedule, big.into_bytes())
        .await;
    expect.push(("bad-oversized", ReasonCode::TooLarge));
    // Wrong device (a well-formed, signed message for another device on our topic).
    let mut other = schedule_msg(
        MessageId::new("bad-device").unwrap(),
        &grid_core::DeviceId::new("someone-else").unwrap(),
        "x",
        1,
        t0(),
        60,
        &[1.0],
        t0(),
        0,
    );
    signature::sign(&mut other, &key).unwrap();
    server
        .publish_raw(TopicKind::Schedule, Codec::Json.encode(&other).unwrap())
        .await;
    expect.push(("bad-device", ReasonCode::WrongDevice));
    // Signed with the wrong key, and not signed at all.
    let mut forged = schedule_msg(
        MessageId::new("bad-sig").unwrap(),
        &device,
        "x",
        1,
        t0(),
        60,
        &[1.0],
        t0(),
        0,
    );
    signature::sign(&mut forged, &wrong_key).unwrap();
    server.publish(&forged).await;
    expect.push(("bad-sig", ReasonCode::BadSignature));
    let unsigned = schedule_msg(
        MessageId::new("bad-unsigned").unwrap(),
        &device,
        "x",
        1,
        t0(),
        60,
        &[1.0],
        t0(),
        0,
    );
    server.publish(&unsigned).await;
    expect.push(("bad-unsigned", ReasonCode::BadSignature));
    // Breaks the battery's limits (8 kW on a 5 kW battery).
    let mut too_strong = schedule_msg(
        MessageId::new("bad-limits").unwrap(),
        &device,
        "y",
        1,
        t0(),
        60,
        &[4.0],
        t0(),
        0,
    );
    if let Body::ScheduleAssign(a) = &mut too_strong.body {
        a.setpoints_kw = vec![8.0];
        a.expected_kwh = vec![5.0 + 8.0 * 0.95 / 60.0];
    }
    signature::sign(&mut too_strong, &key).unwrap();
    server.publish(&too_strong).await;
    expect.push(("bad-limits", ReasonCode::InvalidSchedule));
    // Expired on arrival.
    let mut late = schedule_msg(
        MessageId::new("bad-expired").unwrap(),
        &device,
        "z",
        1,
        t0() - secs(600),
        60,
        &[1.0],
        t0() - secs(600),
        0,
    );
    signature::sign(&mut late, &key).unwrap();
    server.publish(&late).await;

    for (id, reason) in &expect {
        let id = MessageId::new(*id).unwrap();
        let acks = server.ack_until(&id, ExecutionState::Rejected, T).await;
        let a = acks.last().unwrap();
        assert_eq!(a.reason, Some(*reason), "{id}: {a:?}");
        assert!(
            a.detail.as_deref().is_some_and(|d| !d.is_empty()),
            "{id}: no detail"
        );
    }
    let acks = server
        .ack_until(
            &MessageId::new("bad-expired").unwrap(),
            ExecutionState::Expired,
            T,
        )
        .await;
    assert_eq!(acks.last().unwrap().reason, Some(ReasonCode::Expired));
    // Nothing was executed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(agent.applied_kw(), 0.0);
    let m = agent.metrics().engine;
    assert_eq!(m.schedules_accepted, 0);
    assert_eq!(m.rejected, 6);

    // A correctly signed schedule is accepted.
    let mut good = schedule_msg(
        server.next_id(),
        &device,
        "ok",
        1,
        t0(),
        60,
        &[1.5],
        t0(),
        0,
    );
    signature::sign(&mut good, &key).unwrap();
    server.publish(&good).await;
    server
        .ack_until(&good.id, ExecutionState::Executing, T)
        .await;
    wait_for("signed schedule applied", T, || agent.applied_kw() == 1.5).await;
    agent.stop().await;
}
both!(
    bad_payloads_are_rejected_with_a_reason_embedded,
    bad_payloads_are_rejected_with_a_reason_live,
    bad_payloads_are_rejected_with_a_reason
);

/// The current minute and a schedule of `n` one-minute slots from it, on the real clock.
fn now_schedule(
    server: &mut TestServer,
    device: &grid_core::DeviceId,
    kw: f64,
    n: usize,
    reversion_s: u32,
) -> Envelope {
    let now = Timestamp::now();
    let start = grid_core::time::floor_to_slot(now, grid_core::SlotLength::MINUTE).unwrap();
    schedule_msg(
        server.next_id(),
        device,
        "live",
        1,
        start,
        60,
        &vec![kw; n],
        now,
        reversion_s,
    )
}

async fn comms_loss_falls_back_within_the_timeout(kind: BrokerKind) {
    let upstream = broker(kind);
    let proxy = Proxy::start(upstream).await;
    let device = device_id("loss");
    let mut server = TestServer::connect(upstream, &device).await;
    let agent = AgentSetup::new(device.clone(), proxy.addr, Arc::new(SystemClock))
        .start()
        .await;
    server.next_of(BodyKind::Hello, T).await.expect("hello");
    let msg = now_schedule(&mut server, &device, 1.5, 5, 2);
    server.publish(&msg).await;
    server
        .ack_until(&msg.id, ExecutionState::Executing, T)
        .await;
    wait_for("schedule applied", T, || agent.applied_kw() == 1.5).await;

    proxy.cut();
    let cut = Instant::now();
    wait_for("fallback to idle", Duration::from_secs(6), || {
        agent.applied_kw() == 0.0
    })
    .await;
    let took = cut.elapsed();
    // Measured from the last contact, which is up to one tick (50 ms) before the cut.
    assert!(
        took >= Duration::from_millis(1900),
        "fell back before the 2 s timeout: {took:?}"
    );
    assert!(
        took <= Duration::from_secs(3),
        "fallback took {took:?}, more than timeout + 1 s"
    );
    wait_for("fallback reported", T, || {
        agent.metrics().engine.fallback_active
    })
    .await;

    proxy.restore();
    wait_for(
        "the schedule resumes after reconnect",
        Duration::from_secs(10),
        || agent.applied_kw() == 1.5,
    )
    .await;
    agent.stop().await;
}
both!(
    comms_loss_falls_back_within_the_timeout_embedded,
    comms_loss_falls_back_within_the_timeout_live,
    comms_loss_falls_back_within_the_timeout
);

/// A private Mosquitto on its own port, with persistence, that can be restarted.
struct PrivateMosquitto {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateMosquitto {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = temp_dir("mosquitto");
        // Mosquitto started as root drops to the `mosquitto` user, which must be able to write
        // its database here: without it every restart loses the sessions (only logged), and
        // the test would pass or fail on which client reconnects first.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nset_tcp_nodelay true\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut m = Self {
            port,
            dir,
            child: None,
        };
        m.spawn();
        m
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn spawn(&mut self) {
        // /usr/sbin is not on every PATH.
        let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto must be installed for the live broker-restart test");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private mosquitto did not start");
    }

    /// SIGTERM (Mosquitto saves its sessions), wait, start again.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
        // The point of the restart is a broker that keeps the sessions: fail here, clearly,
        // rather than later on a lost message.
        let db = self.dir.join("mosquitto.db");
        assert!(
            db.exists(),
            "the private Mosquitto did not save its sessions to {}",
            db.display()
        );
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn broker_restart_mid_schedule(kind: BrokerKind) {
    // Embedded: the agent reaches rumqttd through a proxy that is cut and restored (the broker
    // keeps the session). Live: a private Mosquitto that is really stopped and started again.
    let live = matches!(kind, BrokerKind::Live);
    // Live, the test server reaches the broker through a proxy of its own, so that it can be
    // kept away until the agent has handed its offline ack to the restarted broker: the ack
    // must then come from the server's persisted session, whichever client reconnects first.
    let (mut mosquitto, proxy, server_proxy, agent_broker, server_broker) = if live {
        broker(BrokerKind::Live); // fail if the CI broker is down, as every live test does
        let m = PrivateMosquitto::start();
        let a = m.addr();
        let sp = Proxy::start(a).await;
        let s = sp.addr;
        (Some(m), None, Some(sp), a, s)
    } else {
        let up = broker(kind);
        let p = Proxy::start(up).await;
        let a = p.addr;
        (None, Some(p), None, a, up)
    };
    let device = device_id("restart");
    let clock = Arc::new(ManualClock::new(t0() + secs(1)));
    // Live: the server's session (subscription, queued acks) must survive the restart too.
    let mut server = TestServer::connect_with(server_broker, &device, live).await;
    let agent = AgentSetup::new(device.clone(), agent_broker, clock.clone())
        .start()
        .await;
    server.next_of(BodyKind::Hello, T).await.expect("hello");
    let id = server.next_id();
    server
        .publish(&schedule_msg(
            id.clone(),
            &device,
            "day",
            1,
            t0(),
            60,
            &[1.0, -2.0, 3.0],
            t0(),
            0,
        ))
        .await;
    server.ack_until(&id, ExecutionState::Executing, T).await;
    wait_for("slot 0", T, || agent.applied_kw() == 1.0).await;

    // The broker goes away mid-schedule; execution continues offline.
    if let Some(p) = &proxy {
        p.cut();
    }
    if let Some(sp) = &server_proxy {
        sp.cut();
    }
    if let Some(m) = mosquitto.as_mut() {
        m.stop();
    }
    wait_for("disconnect noticed", T, || {
        !agent.metrics().engine.connected
    })
    .await;
    run_clock(&clock, Duration::from_secs(60), Duration::from_secs(10)).await;
    wait_for("slot 1 while offline", T, || agent.applied_kw() == -2.0).await;
    run_clock(&clock, Duration::from_secs(60), Duration::from_secs(10)).await;
    wait_for("slot 2 while offline", T, || agent.applied_kw() == 3.0).await;
    run_clock(&clock, Duration::from_secs(60), Duration::from_secs(10)).await;
    wait_for("completed offline", T, || agent.applied_kw() == 0.0).await;
    wait_for("the completed ack waits in the outbox", T, || {
        agent.metrics().outbox_len >= 1
    })
    .await;

    if let Some(p) = &proxy {
        p.restore();
    }
    if let Some(m) = mosquitto.as_mut() {
        m.spawn();
    }
    if let Some(sp) = &server_proxy {
        // The broker has taken the ack (its PUBACK emptied the outbox) while the server is
        // still away; only then may the server come back.
        wait_for("the outbox flushed to the restarted broker", 3 * T, || {
            let m = agent.metrics();
            m.connects >= 2 && m.outbox_len == 0
        })
        .await;
        sp.restore();
    }
    // The ack produced offline arrives after the reconnect, and a new hello. (Generous: under a
    // loaded CI machine the restarted broker, the agent's and the test server's reconnects and
    // the outbox flush queue up behind other live tests.)
    let acks = server
        .ack_until(&id, ExecutionState::Completed, Duration::from_secs(45))
        .await;
    assert_eq!(
        states_for(&acks, &id).last(),
        Some(&ExecutionState::Completed)
    );
    wait_for("outbox drained", T, || agent.metrics().outbox_len == 0).await;
    assert!(agent.metrics().connects >= 2);
    agent.stop().await;
}
both!(
    broker_restart_mid_schedule_embedded,
    broker_restart_mid_schedule_live,
    broker_restart_mid_schedule
);

async fn corrupt_store_enters_safe_mode_then_recovers(kind: BrokerKind) {
    let broker = broker(kind);
    let device = device_id("corrupt");
    let dir = temp_dir("corrupt");
    let db = dir.join("agent.db");
    std::fs::write(
        &db,
        b"this is not a SQLite database, it is an SD card that lost a page".repeat(100),
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(t0() + secs(1)));
    let mut server = TestServer::connect(broker, &device).await;
    let mut setup = AgentSetup::new(device.clone(), broker, clock.clone());
    setup.location = StoreLocation::File(db.clone());
    let agent = setup.start().await;
    let hello = server
        .next_of(BodyKind::Hello, T)
        .await
        .expect("hello in safe mode");
    let Body::Hello(h) = hello.body else {
        unreachable!()
    };
    assert!(
        h.schedules.is_empty(),
        "safe mode asks for everything: {h:?}"
    );
    wait_for("safe mode", T, || agent.metrics().engine.safe_mode).await;
    assert_eq!(agent.applied_kw(), 0.0);
    let moved: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "the corrupt file is kept aside");

    // Recovery: the server resends, the agent accepts and runs it, and the new store works.
    let id = server.next_id();
    server
        .publish(&schedule_msg(
            id.clone(),
            &device,
            "day",
            1,
            t0(),
            60,
            &[2.5],
            t0(),
            0,
        ))
        .await;
    server.ack_until(&id, ExecutionState::Executing, T).await;
    wait_for("recovered", T, || {
        agent.applied_kw() == 2.5 && !agent.metrics().engine.safe_mode
    })
    .await;
    agent.stop().await;
    let (store, report) = grid_agent::Store::open(&StoreLocation::File(db), device.as_str(), 10)
        .await
        .unwrap();
    assert!(report.moved_corrupt_file_to.is_none());
    assert_eq!(store.load().await.unwrap().schedules.len(), 1);
}
both!(
    corrupt_store_enters_safe_mode_then_recovers_embedded,
    corrupt_store_enters_safe_mode_then_recovers_live,
    corrupt_store_enters_safe_mode_then_recovers
);

/// A simulated site's meter whose link can be cut (a meter that stops answering).
#[derive(Debug)]
struct CuttableMeter {
    inner: SimSiteMeter,
    up: Arc<AtomicBool>,
}

impl GridMeter for CuttableMeter {
    fn read(
        &mut self,
        now: Timestamp,
        battery: Option<&BatteryState>,
    ) -> Result<grid_core::Power, ErrorKind> {
        if self.up.load(Ordering::SeqCst) {
            self.inner.read(now, battery)
        } else {
            Err(ErrorKind::Timeout)
        }
    }
}

/// The true grid import (kW) of the simulated site now: its load and PV, and the power the
/// simulated battery really delivered in its last step.
fn true_import(agent: &InProcess, site: &SimSite, now: Timestamp) -> (f64, f64, f64) {
    let mut hw = agent.hardware.lock().unwrap();
    let sim = hw.sim_mut().unwrap();
    let battery = sim.power();
    (
        site.grid_import(now, battery).kw(),
        battery.kw(),
        sim.soc().fraction(),
    )
}

async fn self_consumption_covers_the_net_load(kind: BrokerKind) {
    let broker = broker(kind);
    let device = device_id("selfcons");
    // An evening: no PV, the house draws about 1.3-1.8 kW. The battery starts at 25 % with its
    // floor at 10 % of 10 kWh, so it can cover roughly an hour.
    let start: Timestamp = "2026-11-27T18:30:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let site = SimSite::new(SiteConfig {
        seed: 11,
        load_noise_kw: 0.05,
        ..SiteConfig::default()
    })
    .unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let mut server = TestServer::connect(broker, &device).await;
    let mut setup = AgentSetup::new(device.clone(), broker, clock.clone());
    setup.fallback = FallbackMode::SelfConsumption;
    setup.initial_soc = 0.25;
    setup.meter_max_age = Duration::from_secs(60);
    setup.meter = Some(Box::new(CuttableMeter {
        inner: SimSiteMeter(site.clone()),
        up: up.clone(),
    }));
    let agent = setup.start().await;
    server.next_of(BodyKind::Hello, T).await.expect("hello");
    let step = Duration::from_secs(30);

    // 1. No schedule: the battery covers the house, the grid import stays near zero.
    run_clock(&clock, step * 2, step).await;
    let (mut import_sum, mut load_sum, mut n) = (0.0, 0.0, 0);
    for _ in 0..20 {
        run_clock(&clock, step, step).await;
        let now = clock.now();
        let (import, battery, _) = true_import(&agent, &site, now);
        assert!(battery < 0.0, "discharging to cover the load: {battery}");
        import_sum += import.abs();
        load_sum += site.load(now).kw();
        n += 1;
    }
    let (mean_import, mean_load) = (import_sum / n as f64, load_sum / n as f64);
    assert!(mean_load > 1.0, "an evening load: {mean_load}");
    assert!(
        mean_import < 0.1,
        "mean |grid import| {mean_import:.3} kW with a {mean_load:.3} kW load"
    );
    let m = agent.metrics().engine;
    assert!(m.fallback_active && !m.meter_missing, "{m:?}");
    assert!(m.grid_import_kw.is_some_and(|g| g.abs() < 0.3), "{m:?}");

    // 2. The meter stops answering: after meter_max_age the battery idles, and says so.
    up.store(false, Ordering::SeqCst);
    run_clock(&clock, step * 3, step).await;
    wait_for("idle without a meter", T, || {
        agent.applied_kw() == 0.0 && agent.metrics().engine.meter_missing
    })
    .await;
    // It answers again: followed again.
    up.store(true, Ordering::SeqCst);
    run_clock(&clock, step, step).await;
    wait_for("following the meter again", T, || {
        agent.applied_kw() < -0.5 && !agent.metrics().engine.meter_missing
    })
    .await;

    // 3. Until the SoC floor: the safety layer stops the discharge there although the fallback
    // still asks for it, and the house imports its load again.
    let floor = spec().min_energy().kwh() / spec().capacity().kwh();
    let mut min_soc: f64 = 1.0;
    let mut stopped_for = 0;
    for _ in 0..360 {
        run_clock(&clock, step, step).await;
        let (_, battery, soc) = true_import(&agent, &site, clock.now());
        min_soc = min_soc.min(soc);
        if battery > -0.05 {
            stopped_for += 1;
            if stopped_for >= 6 {
                break;
            }
        } else {
            stopped_for = 0;
        }
    }
    assert!(stopped_for >= 6, "never reached the floor (SoC {min_soc})");
    assert!(
        min_soc >= floor - 0.005,
        "SoC {min_soc} went below the floor {floor}"
    );
    assert!(min_soc <= floor + 0.03, "stopped early at SoC {min_soc}");
    let now = clock.now();
    let (import, _, _) = true_import(&agent, &site, now);
    assert!(
        (import - site.load(now).kw()).abs() < 0.1,
        "at the floor the house imports its load: {import}"
    );
    let m = agent.metrics();
    assert!(m.engine.setpoint_kw < -0.5, "still requested: {m:?}");
    assert!(m.applied_kw > -0.05, "refused by the safety layer: {m:?}");
    agent.stop().await;
}
both!(
    self_consumption_covers_the_net_load_embedded,
    self_consumption_covers_the_net_load_live,
    self_consumption_covers_the_net_load
);

async fn self_consumption_without_a_meter_idles(kind: BrokerKind) {
    let broker = broker(kind);
    let device = device_id("nometer");
    let clock = Arc::new(ManualClock::new("2026-11-27T19:00:00Z".parse().unwrap()));
    let mut server = TestServer::connect(broker, &device).await;
    let mut setup = AgentSetup::new(device.clone(), broker, clock.clone());
    setup.fallback = FallbackMode::SelfConsumption;
    let agent = setup.start().await;
    server.next_of(BodyKind::Hello, T).await.expect("hello");
    run_clock(&clock, Duration::from_secs(30), Duration::from_secs(10)).await;
    wait_for("meter_missing", T, || agent.metrics().engine.meter_missing).await;
    let m = agent.metrics();
    assert!(m.engine.fallback_active);
    assert_eq!(m.engine.grid_import_kw, None);
    assert_eq!(agent.applied_kw(), 0.0);
    agent.stop().await;
}
both!(
    self_consumption_without_a_meter_idles_embedded,
    self_consumption_without_a_meter_idles_live,
    self_consumption_without_a_meter_idles
);

/// Ids of every uplink message received within `window`.
async fn uplink_ids(server: &mut TestServer, window: Duration) -> Vec<String> {
    server
        .drain(window)
        .await
        .iter()
        .map(|e| e.id.to_string())
        .collect()
}

async fn uplink_ids_stay_unique_across_a_corrupt_store_reset(kind: BrokerKind) {
    let broker = broker(kind);
    let device = device_id("ids");
    let dir = temp_dir("ids");
    let db = dir.join("agent.db");
    let clock = Arc::new(ManualClock::new(t0() + secs(1)));
    let mut server = TestServer::connect(broker, &device).await;
    let mut ids = Vec::new();
    for run in 0..2 {
        let mut setup = AgentSetup::new(device.clone(), broker, clock.clone());
        setup.location = StoreLocation::File(db.clone());
        let agent = setup.start().await;
        let id = server.next_id();
        let msg = schedule_msg(
            id.clone(),
            &device,
            "day",
            run + 1,
            t0(),
            60,
            &[1.0, 1.0],
            t0(),
            0,
        );
        let hello = server.next_of(BodyKind::Hello, T).await.expect("hello");
        let mut run_ids = vec![hello.id.to_string()];
        server.publish(&msg).await;
        loop {
            let env = server.next_of(BodyKind::Ack, T).await.expect("acks");
            run_ids.push(env.id.to_string());
            if matches!(&env.body, Body::Ack(a)
                if a.ref_id.as_ref() == Some(&id) && a.state == ExecutionState::Executing)
            {
                break;
            }
        }
        agent.stop().await;
        run_ids.extend(uplink_ids(&mut server, Duration::from_millis(500)).await);
        ids.push(run_ids);
        if run == 0 {
            // The SD card loses a page: the next start moves the file aside (safe mode).
            std::fs::write(&db, b"not a database any more".repeat(200)).unwrap();
            for ext in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(dir.join(format!("agent.db{ext}")));
            }
        }
    }
    let first: std::collections::BTreeSet<_> = ids[0].iter().collect();
    let reused: Vec<_> = ids[1].iter().filter(|i| first.contains(i)).collect();
    assert!(
        reused.is_empty(),
        "the server would drop these as duplicates: {reused:?}\n{ids:#?}"
    );
}
both!(
    uplink_ids_stay_unique_across_a_corrupt_store_reset_embedded,
    uplink_ids_stay_unique_across_a_corrupt_store_reset_live,
    uplink_ids_stay_unique_across_a_corrupt_store_reset
);

// ---- the binary ----

struct Child {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

fn spawn_agent(config: &std::path::Path, pause_ms: Option<u64>) -> Child {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_grid-agent"));
    cmd.arg("--config")
        .arg(config)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    if let Some(ms) = pause_ms {
        cmd.env("GRID_TEST_AGENT_PAUSE_AFTER_RECEIVE_MS", ms.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    Child { child, lines }
}

impl Child {
    fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?} within {timeout:?}"),
            }
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

fn write_config(
    dir: &std::path::Path,
    device: &grid_core::DeviceId,
    broker: std::net::SocketAddr,
) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "device_id = \"{device}\"\n[mqtt]\nurl = \"mqtt://{broker}\"\nkeepalive_s = 5\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n\
             [agent]\nstore_path = \"{}\"\ntick_interval_ms = 100\ntelemetry_interval_s = 5\nlog_format = \"json\"\n",
            dir.join("agent.db").display()
        ),
    )
    .unwrap();
    path
}

async fn kill9_between_receive_and_ack_loses_nothing(kind: BrokerKind) {
    let broker = broker(kind);
    let device = device_id("kill9");
    let dir = temp_dir("kill9");
    let config = write_config(&dir, &device, broker);
    let mut server = TestServer::connect(broker, &device).await;

    // 1. Killed after receiving the schedule, before committing or acknowledging it.
    let child = spawn_agent(&config, Some(60_000));
    server
        .next_of(BodyKind::Hello, T)
        .await
        .expect("hello from the binary");
    let msg = now_schedule(&mut server, &device, 1.0, 5, 0);
    server.publish(&msg).await;
    let child = tokio::task::spawn_blocking(move || {
        child.wait_line("paused after receive", T);
        child
    })
    .await
    .unwrap();
    child.kill9();
    let early = server.drain(Duration::from_millis(300)).await;
    assert!(
        early.iter().all(|e| e.kind() != BodyKind::Ack),
        "acked before the commit: {early:#?}"
    );

    // 2. Restarted: the broker redelivers; accepted and executed exactly once (one `executing`
    //    ack: the horizon has started, so acceptance and start are one step).
    let child = spawn_agent(&config, None);
    let acks = server
        .ack_until(&msg.id, ExecutionState::Executing, Duration::from_secs(20))
        .await;
    assert_eq!(states_for(&acks, &msg.id), [ExecutionState::Executing]);
    let more = server.drain(Duration::from_millis(1500)).await;
    let dup: Vec<_> = more
        .iter()
        .filter_map(|e| match &e.body {
            Body::Ack(a) if a.ref_id.as_ref() == Some(&msg.id) => Some(a.state),
            _ => None,
        })
        .collect();
    assert!(dup.is_empty(), "acked twice: {dup:?}");
    let started: Vec<String> = child
        .lines
        .try_iter()
        .filter(|l| l.contains("executing schedule"))
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");

    // 3. Killed while executing, restarted: resumes from the store, nothing applied twice.
    child.kill9();
    let child = spawn_agent(&config, None);
    let hello = server
        .next_of(BodyKind::Hello, Duration::from_secs(20))
        .await
        .expect("hello after restart");
    let Body::Hello(h) = hello.body else {
        unreachable!()
    };
    assert_eq!(
        h.schedules.len(),
        1,
        "the executing schedule survived kill -9: {h:?}"
    );
    assert!(h.last_message_ids.contains(&msg.id));
    // After a restart the agent repeats the state it holds (`executing`), never `accepted`, and
    // does not start the schedule again.
    let more = server.drain(Duration::from_millis(1500)).await;
    let not_executing = |envs: &[Envelope]| {
        envs.iter()
            .filter_map(|e| match &e.body {
                Body::Ack(a)
                    if a.ref_id.as_ref() == Some(&msg.id)
                        && a.state != ExecutionState::Executing =>
                {
                    Some(a.state)
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(not_executing(&more).is_empty(), "{more:#?}");
    // The server resending the same message is a duplicate, not a second execution.
    server.publish(&msg).await;
    let again = server.drain(Duration::from_millis(1000)).await;
    assert!(not_executing(&again).is_empty(), "{again:#?}");
    let restarted: Vec<String> = child
        .lines
        .try_iter()
        .filter(|l| l.contains("executing schedule"))
        .collect();
    assert!(
        restarted.is_empty(),
        "started again after kill -9: {restarted:?}"
    );

    // 4. SIGTERM: clean shutdown with exit code 0 and an offline status.
    let pid = child.child.id();
    let mut child = child;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let status_msg = server
        .next_of(BodyKind::Status, T)
        .await
        .expect("offline status");
    let Body::Status(s) = status_msg.body else {
        unreachable!()
    };
    assert!(!s.online);
}
both!(
    kill9_between_receive_and_ack_loses_nothing_embedded,
    kill9_between_receive_and_ack_loses_nothing_live,
    kill9_between_receive_and_ack_loses_nothing
);

#[test]
fn check_config_names_the_key_and_exits_non_zero() {
    let dir = temp_dir("check");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[mqtt]\nurl = \"http://nope\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grid-agent"))
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.url"), "{err}");

    let good = dir.join("good.toml");
    std::fs::write(&good, "device_id = \"bat-9\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grid-agent"))
        .arg("--check-config")
        .arg(&good)
        .env("GRID_AGENT_AGENT_TICK_INTERVAL_MS", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GRID_AGENT_AGENT_TICK_INTERVAL_MS"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grid-agent"))
        .arg("--check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Self-consumption needs a grid meter: the key to fix is named; the environment can fix it.
    let selfcons = dir.join("selfcons.toml");
    std::fs::write(&selfcons, "[agent]\nfallback = \"self-consumption\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grid-agent"))
        .arg("--check-config")
        .arg(&selfcons)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("meter.source"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grid-agent"))
        .arg("--check-config")
        .arg(&selfcons)
        .env("GRID_AGENT_METER_SOURCE", "sim")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grid-agent"))
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        grid_agent::config::DEFAULT_CONFIG
    );
}
