//! TLS client certificates end to end: a private Mosquitto runs the shipped `mosquitto.conf` and
//! `grid.acl` (deploy/mosquitto) with certificates from the shipped `gen-certs.sh`; the server's
//! transport and the real agent connect with their own certificates, a schedule goes out and is
//! accepted; a device holding another device's certificate reaches none of its topics, and a
//! client without a certificate is refused.
//!
//! Live: needs the `mosquitto` and `openssl` binaries (and `sh`); the tests fail, never skip,
//! when they are missing. The stores are SQLite files, so no PostgreSQL is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

#[path = "common/store_support.rs"]
mod support;

#[path = "common/mqtt_support.rs"]
mod mqtt_support;

use grid_core::*;
use grid_proto::Codec;
use grid_proto::v1::{Ack, Body};
use grid_server::mqtt::*;
use grid_server::store::*;
use mqtt_support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(10);
/// How long a message the broker would deliver has to show up before we call it dropped.
const QUIET: Duration = Duration::from_secs(2);

/// A throw-away PKI made by `deploy/mosquitto/gen-certs.sh`: the CA, the broker's certificate
/// (SAN localhost and 127.0.0.1), `grid-server` and one certificate per device.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate(devices: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("grid-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/gen-certs.sh");
        let out = Command::new("sh")
            .arg(&script)
            .arg(&dir)
            .arg("localhost")
            .args(devices)
            .output()
            .unwrap_or_else(|e| panic!("live test: cannot run sh {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "live test: gen-certs.sh failed (is openssl installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Mosquitto started as root drops to the `mosquitto` user before it reads its files.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "key") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        Self { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The certificate and key of `name` (a device id or `grid-server`).
    fn identity(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// A rumqttc TLS transport trusting the CA, presenting `identity`'s certificate if given.
    fn transport(&self, identity: Option<&str>) -> rumqttc::Transport {
        install_crypto_provider();
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        let client = identity.map(|name| {
            let (cert, key) = self.identity(name);
            (read(cert), read(key))
        });
        rumqttc::Transport::tls(read(self.ca()), client, None)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Mosquitto on a free loopback port, running the shipped production config with only
/// the paths, the listener address and persistence changed. Killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Mosquitto {
    fn start(pki: &Pki) -> Self {
        let shipped = include_str!("../../deploy/mosquitto/mosquitto.conf");
        let acl = pki.dir.join("grid.acl");
        std::fs::write(&acl, include_str!("../../deploy/mosquitto/grid.acl")).unwrap();
        let port = free_port();
        let dir = pki.dir.display().to_string();
        let conf: String = shipped
            .lines()
            .map(|line| {
                if line.starts_with("listener ") {
                    format!("listener {port} 127.0.0.1")
                } else if line == "persistence true" {
                    "persistence false".to_owned()
                } else {
                    line.replace("/etc/mosquitto/grid.acl", &acl.display().to_string())
                        .replace("/etc/mosquitto/certs", &dir)
                }
            })
            .map(|line| line + "\n")
            .collect();
        for needed in [
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            &format!("acl_file {}", acl.display()),
            &format!("listener {port} 127.0.0.1"),
        ] {
            assert!(conf.contains(needed), "derived config lacks `{needed}`");
        }
        let conf_path = pki.dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = pki.dir.join("mosquitto.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("live test: cannot start mosquitto (installed?): {e}"));
        let mut broker = Self { child, port, log };
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("mosquitto exited with {status}: {}", broker.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto not listening on {port}: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A site and the devices `ids` in a fresh SQLite store.
async fn store_with(ids: &[&str]) -> TempSqlite {
    let db = TempSqlite::new().await;
    let now = Timestamp::now();
    db.store
        .upsert_site(&site_record("tls-site", DEFAULT_TENANT), now)
        .await
        .unwrap();
    for id in ids {
        db.store
            .register_device(&new_device(id, "tls-site"), now)
            .await
            .unwrap();
    }
    db
}

/// The server's transport on `mqtts://127.0.0.1:{port}` with the `grid-server` certificate and
/// the default share group (the one grid.acl allows). Resends are slow so they do not blur what
/// the broker delivered.
async fn server(
    broker: &Mosquitto,
    pki: &Pki,
    db: &TempSqlite,
) -> (TransportHandle, tokio::task::JoinHandle<()>) {
    let url = MqttUrl::parse(&format!("mqtts://127.0.0.1:{}", broker.port)).unwrap();
    let mut config = TransportConfig::new(BrokerConfig::External(url));
    config.tls = Some(TlsFiles {
        ca: pki.ca(),
        client: Some(pki.identity("grid-server")),
    });
    config.tracker.backoff_base_ms = 60_000;
    config.tracker.backoff_max_ms = 60_000;
    let (t, task) = Transport::start(config, db.store.clone()).await.unwrap();
    assert!(
        t.wait_ready(WAIT).await,
        "server connected and subscribed over TLS: {}",
        broker.log()
    );
    (t, task)
}

async fn acks_of(db: &TempSqlite, schedule: &Schedule) -> Vec<AckRecord> {
    db.store
        .list_acks(&AckTarget::Schedule {
            id: schedule.id().clone(),
            version: schedule.version(),
        })
        .await
        .unwrap()
}

/// The server and the real agent (grid-agent's shell, sim battery, SQLite file) connect with
/// their own certificates; a schedule is distributed, the agent accepts it and applies its first
/// slot, and the server records `accepted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs the mosquitto and openssl binaries (run by .ci/run)"]
async fn server_and_agent_exchange_a_schedule_over_mutual_tls() {
    use grid_agent::engine::EngineConfig;
    use grid_agent::hardware::Hardware;
    use grid_agent::shell::{Agent, AgentOptions, MqttSettings, SystemClock, run_agent};

    let pki = Pki::generate(&["bat-1"]);
    let broker = Mosquitto::start(&pki);
    let db = store_with(&["bat-1"]).await;
    let (t, task) = server(&broker, &pki, &db).await;

    let device = DeviceId::new("bat-1").unwrap();
    let agent_db = pki.dir.join("agent.db");
    let (store, open_report) = grid_agent::store::Store::open(
        &grid_agent::store::StoreLocation::File(agent_db),
        device.as_str(),
        100,
    )
    .await
    .unwrap();
    let reversion = Duration::from_secs(300);
    let hardware = std::sync::Arc::new(std::sync::Mutex::new(
        Hardware::sim(&spec(), 7, 0.5, reversion).unwrap(),
    ));
    let agent = Agent {
        options: AgentOptions {
            engine: EngineConfig {
                reversion_timeout: reversion,
                telemetry_interval: Duration::from_secs(600),
                ..EngineConfig::new(device.clone(), spec())
            },
            mqtt: MqttSettings {
                // By name this time: the broker certificate's DNS SAN (the server used its IP SAN).
                broker: grid_agent::config::BrokerAddress {
                    tls: true,
                    host: "localhost".into(),
                    port: broker.port,
                },
                client_id: "grid-agent-bat-1".into(),
                ca_file: Some(pki.ca()),
                client_auth: Some(pki.identity("bat-1")),
                credentials: None,
                keepalive: Duration::from_secs(5),
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_millis(400),
                jitter_first_connect: false,
            },
            tick_interval: Duration::from_millis(50),
            metrics_listen: None,
            pause_after_receive: None,
        },
        store,
        open_report,
        hardware: hardware.clone(),
        clock: std::sync::Arc::new(SystemClock),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(run_agent(agent, stopped));

    // The agent's hello crossing the broker means it is connected and subscribed.
    assert!(
        eventually(WAIT, || async { t.stats().messages_in >= 1 }).await,
        "the agent's hello reached the server over TLS: {}",
        broker.log()
    );
    let rec = db
        .store
        .create_schedule(&live_schedule("tls-s1", &device, 1), Timestamp::now())
        .await
        .unwrap();
    // The hello's handling may still be running: it assigns the device's queued schedules, so
    // it can take this one first. Either way the schedule is tracked and sent (what follows
    // checks that the agent got it).
    let outcome = t.distribute(&rec.schedule, Some("req-tls")).await.unwrap();
    assert!(
        matches!(
            outcome,
            DistributeOutcome::Published | DistributeOutcome::AlreadyTracked
        ),
        "{outcome:?}"
    );
    assert!(
        eventually(WAIT, || async {
            acks_of(&db, &rec.schedule).await.iter().any(|a| {
                // The horizon has started: accepted and started at once, acked `executing`.
                matches!(
                    a.state,
                    ExecutionState::Accepted | ExecutionState::Executing
                ) && a.device == device
            })
        })
        .await,
        "the server recorded the agent's acceptance: {:?} / {}",
        acks_of(&db, &rec.schedule).await,
        broker.log()
    );
    let state = db
        .store
        .get_schedule(rec.schedule.id(), None)
        .await
        .unwrap()
        .state;
    assert!(
        matches!(state, ExecutionState::Accepted | ExecutionState::Executing),
        "{state:?}"
    );
    // The first slot (1 kW, charging) reached the battery.
    assert!(
        eventually(WAIT, || async {
            (hardware.lock().unwrap().applied().kw() - 1.0).abs() < 1e-9
        })
        .await,
        "slot 0 applied"
    );
    assert_eq!(t.stats().refused, 0);

    let _ = stop.send(());
    tokio::time::timeout(WAIT, agent_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    t.shutdown();
    task.await.unwrap();
}

/// A client holding bat-2's certificate but claiming to be bat-1 neither receives bat-1's
/// downlink (direct or wildcard subscription) nor gets a forged ack or schedule through on
/// bat-1's topics; the same ack sent by the real bat-1 is recorded. A client without a
/// certificate does not get a CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs the mosquitto and openssl binaries (run by .ci/run)"]
async fn acl_confines_a_borrowed_certificate_and_no_certificate_is_refused() {
    let pki = Pki::generate(&["bat-1", "bat-2"]);
    let broker = Mosquitto::start(&pki);
    let db = store_with(&["bat-1", "bat-2"]).await;
    let (t, task) = server(&broker, &pki, &db).await;
    let bat1 = DeviceId::new("bat-1").unwrap();

    // The real bat-1, and an impostor with bat-2's certificate subscribing to bat-1's downlink
    // (and, to be sure, to everything).
    let mut victim = FakeDevice::connect_with(
        "127.0.0.1",
        broker.port,
        &bat1,
        Some(pki.transport(Some("bat-1"))),
    )
    .await;
    let mut impostor = FakeDevice::connect_with(
        "127.0.0.1",
        broker.port,
        &bat1,
        Some(pki.transport(Some("bat-2"))),
    )
    .await;
    impostor
        .client
        .subscribe("grid/v1/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rec = db
        .store
        .create_schedule(&live_schedule("tls-s2", &bat1, 1), Timestamp::now())
        .await
        .unwrap();
    t.distribute(&rec.schedule, None).await.unwrap();
    let msg = victim.recv(WAIT).await.expect("bat-1 gets its schedule");
    assert!(matches!(msg.body, Body::ScheduleAssign(_)));
    assert_eq!(
        impostor.recv_raw(QUIET).await.map(|(topic, _)| topic),
        None,
        "bat-2's certificate must not read bat-1's downlink"
    );

    // Forgeries on bat-1's topics: a perfectly valid `accepted` ack, and a schedule.
    let before = t.stats();
    let Body::ScheduleAssign(body) = &msg.body else {
        unreachable!()
    };
    let ack = impostor.envelope(Body::Ack(Ack::for_schedule(
        body.schedule_ref(),
        Some(msg.id.clone()),
        ExecutionState::Accepted,
    )));
    impostor.send(&ack).await;
    impostor
        .send_raw(
            "grid/v1/bat-1/down/schedule",
            Codec::Json.encode(&msg).unwrap(),
        )
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        t.stats().messages_in,
        before.messages_in,
        "the forged ack never reached the server"
    );
    assert!(acks_of(&db, &rec.schedule).await.is_empty());
    assert_eq!(
        victim
            .recv_raw(Duration::from_millis(500))
            .await
            .map(|(topic, _)| topic),
        None,
        "the forged schedule never reached bat-1"
    );

    // The very same ack from the real bat-1 goes through: only the certificate differed.
    victim.send(&ack).await;
    assert!(
        eventually(WAIT, || async {
            acks_of(&db, &rec.schedule)
                .await
                .iter()
                .any(|a| a.state == ExecutionState::Accepted)
        })
        .await,
        "bat-1's own ack is recorded"
    );

    // No certificate: the TLS handshake fails, no CONNACK.
    let mut options = rumqttc::MqttOptions::new("no-cert", "127.0.0.1", broker.port);
    options.set_transport(pki.transport(None));
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => break Ok(c),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        }
    })
    .await
    .expect("the broker answered the certificate-less client within 10 s");
    // Refused by the TLS handshake itself (a CertificateRequired alert), not by a CONNACK code
    // after an anonymous MQTT connect.
    match outcome {
        Ok(connack) => panic!("a client without a certificate was accepted: {connack:?}"),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            panic!("refused only at the MQTT level ({code:?}), not by the TLS handshake")
        }
        Err(e) => assert!(
            format!("{e:?}").contains("Certificate"),
            "expected a certificate alert, got {e:?}"
        ),
    }

    t.shutdown();
    task.await.unwrap();
}
