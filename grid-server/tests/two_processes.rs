//! Two real `grid-server serve` processes sharing one PostgreSQL database and one Mosquitto
//! broker; one is SIGKILLed in the middle of a fleet's distribution and no acceptance is lost
//! (issue #7's `.ci/run` test). The in-process variant, which stops a transport gracefully, is
//! `two_replicas_one_stopped_mid_distribution` in `mqtt_transport.rs`.
//!
//! Live only: reads `DATABASE_URL` (PostgreSQL; the test works in a fresh schema of it) and
//! `MQTT_URL`, and fails when they are unset or unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

#[path = "common/store_support.rs"]
mod support;

#[path = "common/mqtt_support.rs"]
mod mqtt_support;

use grid_core::{ExecutionState, SlotLength, Timestamp};
use grid_proto::v1::Body;
use grid_server::mqtt::MqttUrl;
use mqtt_support::{FakeDevice, eventually, free_port, live_mqtt_url};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{live_database_url, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Devices (one schedule each).
const N: usize = 50;
/// Process A is killed once it has answered this many schedule creations (more are in flight).
const KILL_AFTER: usize = N / 2;
/// Schedule creations in flight at once.
const CONCURRENCY: usize = 4;
/// How long a device takes to accept a schedule (so acks are still under way at the kill).
const ACK_DELAY: Duration = Duration::from_millis(300);
/// The HS256 key both processes share.
const SECRET: &str = "two-processes-secret-0123456789-abcdef";

/// One `grid-server serve` child process; killed on drop.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `grid-server serve` on a free port and waits until `/readyz` says ready.
    async fn start(
        name: &'static str,
        database_url: &str,
        mqtt_url: &str,
        dir: &Path,
        group: &str,
    ) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = server_command(database_url, mqtt_url, group)
            .args(["serve", "--listen", &addr.to_string()])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut process = Self { child, addr, log };
        let ready = eventually(Duration::from_secs(30), || async {
            matches!(
                request(addr, "GET", "/readyz", None, None).await,
                Ok((200, _))
            )
        })
        .await;
        if !ready {
            let status = process.child.try_wait().unwrap();
            panic!(
                "server {name} not ready within 30 s (exit: {status:?}):\n{}",
                process.log_text()
            );
        }
        process
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with the shared settings: same database, broker, share group and token key, short retry
/// backoff and claim lease so a takeover happens within seconds.
fn server_command(database_url: &str, mqtt_url: &str, share_group: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_grid-server"));
    c.env_remove("GRID_CONFIG")
        .env("DATABASE_URL", database_url)
        .env("MQTT_URL", mqtt_url)
        // Our own group: other servers on the same broker must not take our acks (nor we theirs).
        .env("GRID_MQTT_SHARE_GROUP", share_group)
        .env("GRID_JWT_SECRET", SECRET)
        .env("GRID_MQTT_CLAIM_LEASE_MS", "2000")
        .env("GRID_MQTT_RETRY_INTERVAL_MS", "100")
        .env("GRID_MQTT_RETRY_BACKOFF_BASE_MS", "1000")
        .env("GRID_MQTT_RETRY_BACKOFF_MAX_MS", "2000")
        .env("GRID_LOG", "info")
        .stdin(Stdio::null());
    c
}

/// One HTTP/1.1 request on a fresh connection: `(status, body)`, or the I/O error (a killed
/// server refuses or resets the connection).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            head.push_str(&format!("authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("truncated response: {text:?}")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line: {head:?}")))?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(20), io)
        .await
        .map_err(|_| std::io::Error::other("request timed out"))?
}

/// A JSON request that must succeed with `want`.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
    want: u16,
) -> Value {
    let (status, text) = request(addr, method, path, Some(token), body.as_ref())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_eq!(status, want, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// What the fake devices saw.
#[derive(Default)]
struct Observed {
    /// Schedule messages received per device (first sends and resends).
    received: HashMap<String, usize>,
    /// Anything a device should never have received.
    violations: Vec<String>,
}

/// Plays a device that accepts its schedule after [`ACK_DELAY`]; a resent schedule gets the same
/// ack again (same message id: the agent's at-least-once retransmission of its answer).
fn accept_after_delay(
    mut device: FakeDevice,
    own_schedule: String,
    observed: Arc<Mutex<Observed>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut answers: HashMap<(String, u64), grid_proto::v1::Envelope> = HashMap::new();
        while let Some(msg) = device.recv(Duration::from_secs(3600)).await {
            let Body::ScheduleAssign(assign) = &msg.body else {
                continue;
            };
            {
                let mut o = observed.lock().unwrap();
                *o.received.entry(device.id.to_string()).or_default() += 1;
                if msg.device != device.id || assign.schedule_id.as_str() != own_schedule {
                    o.violations.push(format!(
                        "{} received schedule {} addressed to {}",
                        device.id, assign.schedule_id, msg.device
                    ));
                    continue;
                }
            }
            let key = (assign.schedule_id.to_string(), assign.version.0);
            let ack = answers
                .entry(key)
                .or_insert_with(|| device.ack_for(&msg, ExecutionState::Accepted))
                .clone();
            tokio::time::sleep(ACK_DELAY).await;
            device.send(&ack).await;
        }
    })
}

/// The body creating device `i`'s schedule: version 1, hourly over a day from the current hour.
fn schedule_body(prefix: &str, i: usize) -> Value {
    let start = grid_core::time::floor_to_slot(Timestamp::now(), SlotLength::HOUR).unwrap();
    let mut setpoints = vec![0.0; 24];
    setpoints[0] = 1.0;
    setpoints[1] = 1.0;
    json!({
        "id": format!("{prefix}-s{i}"),
        "device": format!("{prefix}-d{i}"),
        "version": 1,
        "start": start.to_string(),
        "slot_seconds": 3600,
        "setpoints_kw": setpoints,
        "initial_energy_kwh": 5.0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "live: needs DATABASE_URL and MQTT_URL (run by .ci/run)"]
async fn two_server_processes_one_killed_mid_distribution_lose_no_ack() {
    let began = Instant::now();
    let db_url = live_database_url();
    let mqtt_url = live_mqtt_url();
    let mqtt = MqttUrl::parse(&mqtt_url).unwrap();

    // A fresh schema for this run; both processes reach it through `search_path`.
    let schema = unique("grid_2p");
    let admin = sqlx::PgPool::connect(&db_url)
        .await
        .unwrap_or_else(|e| panic!("live test: PostgreSQL at {db_url} unreachable: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if db_url.contains('?') { '&' } else { '?' };
    let server_db = format!("{db_url}{sep}options=-csearch_path%3D{schema}");
    let dir = std::env::temp_dir().join(unique("grid-2p"));
    std::fs::create_dir_all(&dir).unwrap();

    // A first (it runs the migrations), then B.
    let group = unique("g");
    let mut a = ServerProcess::start("a", &server_db, &mqtt_url, &dir, &group).await;
    let b = ServerProcess::start("b", &server_db, &mqtt_url, &dir, &group).await;
    let out = server_command(&server_db, &mqtt_url, &group)
        .args(["token", "--role", "admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    // N devices registered through A, each played by a client that accepts after a delay.
    let prefix = unique("tp").replace('_', "-");
    let site = format!("{prefix}-site");
    call(
        a.addr,
        "PUT",
        &format!("/api/v1/sites/{site}"),
        &token,
        Some(json!({"import_limit_kw": 17.0, "export_limit_kw": 11.0})),
        200,
    )
    .await;
    let spec = json!({
        "capacity_kwh": 10.0, "min_energy_kwh": 1.0, "max_energy_kwh": 9.0,
        "max_charge_kw": 5.0, "max_discharge_kw": 5.0,
        "charge_efficiency": 0.95, "discharge_efficiency": 0.95
    });
    let observed = Arc::new(Mutex::new(Observed::default()));
    let mut agents = Vec::new();
    for i in 0..N {
        let id = format!("{prefix}-d{i}");
        call(
            a.addr,
            "POST",
            "/api/v1/devices",
            &token,
            Some(json!({"id": id, "site": site, "spec": spec})),
            201,
        )
        .await;
        let device = FakeDevice::connect(
            &mqtt.host,
            mqtt.port,
            &grid_core::DeviceId::new(&id).unwrap(),
        )
        .await;
        agents.push(accept_after_delay(
            device,
            format!("{prefix}-s{i}"),
            observed.clone(),
        ));
    }
    let setup = began.elapsed();

    // Create and distribute the schedules through A, a few at a time; kill A (SIGKILL) once it
    // has answered half of them, with more in flight and acks under way. A client whose request
    // to A failed sends the same body to B: 201, or 409 when A stored it before dying.
    let mut by_a = 0usize;
    let mut by_b = 0usize;
    let mut conflicts = Vec::new();
    let mut killed_at = None;
    let mut open_at_kill = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    let (a_addr, b_addr) = (a.addr, b.addr);
    for i in 0..N {
        let token = token.clone();
        let body = schedule_body(&prefix, i);
        tasks.spawn(async move {
            match request(
                a_addr,
                "POST",
                "/api/v1/schedules",
                Some(&token),
                Some(&body),
            )
            .await
            {
                Ok((201, _)) => return (i, 'a', 201),
                Ok((status, text)) if status < 500 => panic!("A answered {status}: {text}"),
                _ => {}
            }
            let (status, text) = request(
                b_addr,
                "POST",
                "/api/v1/schedules",
                Some(&token),
                Some(&body),
            )
            .await
            .unwrap();
            assert!(
                status == 201 || status == 409,
                "B answered {status}: {text}"
            );
            (i, 'b', status)
        });
        while tasks.len() >= CONCURRENCY {
            let done = tasks.join_next().await.unwrap().unwrap();
            tally(done, &mut by_a, &mut by_b, &mut conflicts);
            if by_a >= KILL_AFTER && killed_at.is_none() {
                a.child.kill().unwrap();
                a.child.wait().unwrap();
                killed_at = Some(began.elapsed());
                // It really is mid-distribution: stored schedules are not accepted yet.
                let open: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {schema}.schedules WHERE state <> 'accepted'"
                )))
                .fetch_one(&admin)
                .await
                .unwrap();
                open_at_kill = open as usize;
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally(done.unwrap(), &mut by_a, &mut by_b, &mut conflicts);
    }
    assert!(killed_at.is_some(), "A was killed");
    assert!(
        open_at_kill > 0,
        "every stored schedule was already accepted when A died"
    );

    // Every schedule ends accepted, in the store ...
    let all_accepted = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.schedules WHERE state = 'accepted'"
        )))
        .fetch_one(&admin)
        .await
        .unwrap();
        n as usize == N
    })
    .await;
    let states: Vec<(String, String, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT schedule_id, state, attempts FROM {schema}.schedules ORDER BY schedule_id"
    )))
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(
        all_accepted,
        "not every schedule was accepted within 30 s after the kill: {:?}\n--- B's log (tail):\n{}",
        states
            .iter()
            .filter(|(_, s, _)| s != "accepted")
            .collect::<Vec<_>>(),
        tail(&b.log_text(), 40)
    );
    assert_eq!(states.len(), N, "one schedule version per device");
    let settled = began.elapsed();

    // ... and through B's API, with exactly one accepted ack each.
    for i in 0..N {
        let id = format!("{prefix}-s{i}");
        let v = call(
            b.addr,
            "GET",
            &format!("/api/v1/schedules/{id}/versions/1"),
            &token,
            None,
            200,
        )
        .await;
        assert_eq!(v["state"], "accepted", "{v}");
        assert_eq!(v["device"], format!("{prefix}-d{i}"), "{v}");
        let acks = call(
            b.addr,
            "GET",
            &format!("/api/v1/schedules/{id}/versions/1/acks"),
            &token,
            None,
            200,
        )
        .await;
        let acks = acks.as_array().unwrap();
        assert_eq!(acks.len(), 1, "{id}: {acks:?}");
        assert_eq!(acks[0]["state"], "accepted", "{id}: {acks:?}");
    }

    // The acks table: one accepted ack per schedule version, from that schedule's device, and
    // nothing else.
    let acks: Vec<(String, String, i64, String, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT a.device_id, a.target_id, a.target_version, a.state, count(*) \
             FROM {schema}.acks a GROUP BY 1, 2, 3, 4 ORDER BY 2"
        )))
        .fetch_all(&admin)
        .await
        .unwrap();
    assert_eq!(acks.len(), N, "{acks:?}");
    for (device, target, version, state, count) in &acks {
        let i = target
            .strip_prefix(&format!("{prefix}-s"))
            .unwrap_or_else(|| panic!("foreign ack target {target}"));
        assert_eq!(device, &format!("{prefix}-d{i}"), "ack for {target}");
        assert_eq!((*version, state.as_str(), *count), (1, "accepted", 1));
    }

    // No device ever received another device's schedule, and each got its own.
    let resent: usize = {
        let o = observed.lock().unwrap();
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        assert_eq!(o.received.len(), N, "every device received its schedule");
        o.received.values().map(|n| n - 1).sum()
    };

    for h in agents {
        h.abort();
    }
    drop(b);
    drop(a);
    println!(
        "two processes: {N} devices, setup {setup:.1?}; A answered {by_a}, B {by_b} \
         (+{} already stored by A), A killed at {:.1?} with {open_at_kill} stored schedules unaccepted; \
         all accepted at {settled:.1?} ({resent} resends received); total {:.1?}",
        conflicts.len(),
        killed_at.unwrap(),
        began.elapsed()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tally(
    (i, by, status): (usize, char, u16),
    by_a: &mut usize,
    by_b: &mut usize,
    conflicts: &mut Vec<usize>,
) {
    match (by, status) {
        ('a', _) => *by_a += 1,
        (_, 201) => *by_b += 1,
        _ => conflicts.push(i),
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
