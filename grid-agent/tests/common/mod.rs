//! Shared harness of the agent's integration tests: a broker (embedded rumqttd, or the one in
//! `MQTT_URL`), a cuttable TCP proxy in front of it, a test "server" that speaks the protocol over
//! MQTT, and helpers to run agents in-process or as the built binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use grid_agent::config::FallbackMode;
use grid_agent::config::parse_broker_url;
use grid_agent::engine::EngineConfig;
use grid_agent::hardware::{GridMeter, Hardware};
use grid_agent::metrics::{MetricsSnapshot, SharedMetrics};
use grid_agent::shell::{self, Agent, AgentOptions, Clock, MqttSettings};
use grid_agent::store::{Store, StoreLocation};
use grid_core::{BatteryParams, BatterySpec, DeviceId, ExecutionState, Timestamp};
use grid_proto::v1::*;
use grid_proto::{Codec, topic::Topic, topic::TopicKind};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// The broker every test of one process shares.
pub enum BrokerKind {
    /// An embedded rumqttd started by the test process.
    Embedded,
    /// The broker named by `MQTT_URL` (live tests); unreachable = failure.
    Live,
}

static EMBEDDED: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();

/// The broker's address.
pub fn broker(kind: BrokerKind) -> SocketAddr {
    match kind {
        BrokerKind::Embedded => *EMBEDDED.get_or_init(start_rumqttd),
        BrokerKind::Live => {
            let url = std::env::var("MQTT_URL")
                .expect("live test: MQTT_URL must be set (run by .ci/run)");
            let b = parse_broker_url(&url).expect("MQTT_URL");
            let addr: SocketAddr = format!("{}:{}", b.host, b.port)
                .parse()
                .expect("MQTT_URL host must be an IP");
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("live test: broker {url} unreachable: {e}"));
            addr
        }
    }
}

fn start_rumqttd() -> SocketAddr {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(
            [(
                "v4".to_string(),
                rumqttd::ServerSettings {
                    name: "v4".into(),
                    listen: addr,
                    tls: None,
                    next_connection_delay_ms: 0,
                    connections: rumqttd::ConnectionSettings {
                        connection_timeout_ms: 5000,
                        max_payload_size: 1024 * 1024,
                        max_inflight_count: 100,
                        auth: None,
                        external_auth: None,
                        dynamic_filters: true,
                    },
                },
            )]
            .into(),
        ),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        let _ = broker.start();
    });
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return addr;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("embedded rumqttd did not start on {addr}");
}

/// A TCP proxy that can be cut (every connection dropped, new ones refused) and restored:
/// a broker outage as the agent sees it.
pub struct Proxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut rx = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {},
                        _ = tokio::io::copy(&mut sr, &mut cw) => {},
                        _ = async { while *rx.borrow() { if rx.changed().await.is_err() { break } } } => {},
                    }
                });
            }
        });
        Proxy { addr, up }
    }

    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    pub fn restore(&self) {
        let _ = self.up.send(true);
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A device id unique to this test run (tests share the live broker).
pub fn device_id(name: &str) -> DeviceId {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 100_000_000;
    DeviceId::new(format!("t-{name}-{}-{t}-{n}", std::process::id())).unwrap()
}

pub fn spec() -> BatterySpec {
    BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)).unwrap()
}

/// The protocol's server side, over MQTT.
pub struct TestServer {
    pub client: AsyncClient,
    pub device: DeviceId,
    rx: mpsc::UnboundedReceiver<(String, Envelope)>,
    seq: u64,
}

impl TestServer {
    pub async fn connect(broker: SocketAddr, device: &DeviceId) -> TestServer {
        Self::connect_with(broker, device, false).await
    }

    /// With `persistent`, the session (subscription and queued acks) survives a broker restart.
    pub async fn connect_with(
        broker: SocketAddr,
        device: &DeviceId,
        persistent: bool,
    ) -> TestServer {
        let id = format!("srv-{}", device);
        let mut o = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(!persistent)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 64);
        let mut net = el.network_options();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let sub_client = client.clone();
        let filter = format!("grid/v1/{device}/up/+");
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        // Clean session: subscribe on every (re)connect (from a task: the request
                        // queue may be full right after a reconnect, and this loop must keep
                        // polling for it to drain).
                        let c = sub_client.clone();
                        let f = filter.clone();
                        tokio::spawn(async move {
                            let _ = c.subscribe(f, QoS::AtLeastOnce).await;
                        });
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if let Ok(env) = grid_proto::decode(&p.payload) {
                            let _ = tx.send((p.topic.clone(), env));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .unwrap()
            .unwrap();
        TestServer {
            client,
            device: device.clone(),
            rx,
            seq: 0,
        }
    }

    pub fn next_id(&mut self) -> MessageId {
        self.seq += 1;
        MessageId::new(format!("srv-{}-{}", self.device, self.seq)).unwrap()
    }

    /// Publishes raw bytes on the device's downlink `kind` topic.
    pub async fn publish_raw(&self, kind: TopicKind, payload: Vec<u8>) {
        let topic = Topic::new(self.device.clone(), kind).to_string();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    pub async fn publish(&self, env: &Envelope) {
        let kind = TopicKind::for_body(env.kind());
        self.publish_raw(kind, Codec::Json.encode(env).unwrap())
            .await;
    }

    /// The next uplink message of `kind`, within `timeout`.
    pub async fn next_of(&mut self, kind: BodyKind, timeout: Duration) -> Option<Envelope> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, env) = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if env.kind() == kind {
                return Some(env);
            }
        }
    }

    /// The next ack, within `timeout`.
    pub async fn next_ack(&mut self, timeout: Duration) -> Option<Ack> {
        match self.next_of(BodyKind::Ack, timeout).await?.body {
            Body::Ack(a) => Some(a),
            _ => None,
        }
    }

    /// Acks until one in `state` for `ref_id` arrives (collecting all seen).
    pub async fn ack_until(
        &mut self,
        ref_id: &MessageId,
        state: ExecutionState,
        timeout: Duration,
    ) -> Vec<Ack> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(a) = self.next_ack(left).await else {
                panic!("no {state} ack for {ref_id} within {timeout:?}; got {seen:#?}");
            };
            let done = a.ref_id.as_ref() == Some(ref_id) && a.state == state;
            seen.push(a);
            if done {
                return seen;
            }
        }
    }

    /// Every uplink message received within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Envelope> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some((_, env))) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(env);
        }
        out
    }
}

/// A schedule message for `device`: one setpoint per slot from `start`.
#[allow(clippy::too_many_arguments)]
pub fn schedule_msg(
    id: MessageId,
    device: &DeviceId,
    schedule_id: &str,
    version: u64,
    start: Timestamp,
    slot_s: u32,
    setpoints_kw: &[f64],
    sent_at: Timestamp,
    reversion_timeout_s: u32,
) -> Envelope {
    let spec = spec();
    let horizon = grid_core::Horizon::new(
        start,
        grid_core::SlotLength::from_seconds(slot_s).unwrap(),
        setpoints_kw.len(),
    )
    .unwrap();
    let initial = grid_core::Energy::from_kwh(5.0).unwrap();
    let traj = grid_core::SocTrajectory::simulate(
        &spec,
        initial,
        &setpoints_kw
            .iter()
            .map(|&p| grid_core::Power::from_kw(p).unwrap())
            .collect::<Vec<_>>(),
        horizon.slot_length(),
    );
    let body = ScheduleAssign {
        schedule_id: grid_core::ScheduleId::new(schedule_id).unwrap(),
        version: grid_core::ScheduleVersion(version),
        horizon: WireHorizon {
            start,
            slot_s,
            slots: setpoints_kw.len() as u32,
        },
        setpoints_kw: setpoints_kw.to_vec(),
        initial_kwh: initial.kwh(),
        expected_kwh: traj.end_of_slot.iter().map(|e| e.kwh()).collect(),
        valid_until: horizon.end(),
        reversion_timeout_s,
    };
    Envelope::new(id, device.clone(), sent_at, Body::ScheduleAssign(body))
        .with_correlation_id(format!("corr-{schedule_id}-{version}"))
}

/// An agent running in this process.
pub struct InProcess {
    pub hardware: Arc<Mutex<Hardware>>,
    pub metrics: SharedMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<grid_agent::Result<()>>>,
}

impl InProcess {
    pub fn applied_kw(&self) -> f64 {
        self.hardware.lock().unwrap().applied().kw()
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.lock().unwrap().clone()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

pub struct AgentSetup {
    pub device: DeviceId,
    pub broker: SocketAddr,
    pub clock: Arc<dyn Clock>,
    pub location: StoreLocation,
    pub reversion_timeout: Duration,
    pub verifying_key: Option<grid_proto::signature::VerifyingKey>,
    pub telemetry_interval: Duration,
    /// A store on a shared pool (the fleet case) instead of opening `location`.
    pub shared_store: Option<Store>,
    /// The fallback mode.
    pub fallback: FallbackMode,
    /// A grid meter beside the simulated battery.
    pub meter: Option<Box<dyn GridMeter>>,
    /// How long a meter reading stays usable.
    pub meter_max_age: Duration,
    /// The simulated battery's state of charge at start.
    pub initial_soc: f64,
    /// The battery (default: a simulated one of [`spec`], seed 7, at `initial_soc`).
    pub hardware: Option<Hardware>,
}

impl AgentSetup {
    pub fn new(device: DeviceId, broker: SocketAddr, clock: Arc<dyn Clock>) -> Self {
        Self {
            device,
            broker,
            clock,
            location: StoreLocation::Memory,
            reversion_timeout: Duration::from_secs(300),
            verifying_key: None,
            telemetry_interval: Duration::from_secs(30),
            shared_store: None,
            fallback: FallbackMode::Idle,
            meter: None,
            meter_max_age: Duration::from_secs(10),
            initial_soc: 0.5,
            hardware: None,
        }
    }

    pub async fn start(self) -> InProcess {
        let (store, open_report) = match self.shared_store {
            Some(s) => (s, grid_agent::store::OpenReport::default()),
            None => Store::open(&self.location, self.device.as_str(), 100)
                .await
                .unwrap(),
        };
        // The message id prefix is the production default: random per run.
        let engine = EngineConfig {
            reversion_timeout: self.reversion_timeout,
            telemetry_interval: self.telemetry_interval,
            verifying_key: self.verifying_key,
            fallback: self.fallback,
            meter_max_age: self.meter_max_age,
            ..EngineConfig::new(self.device.clone(), spec())
        };
        let options = AgentOptions {
            engine,
            mqtt: MqttSettings {
                broker: parse_broker_url(&format!("mqtt://{}", self.broker)).unwrap(),
                client_id: format!("agent-{}", self.device),
                ca_file: None,
                client_auth: None,
                credentials: None,
                keepalive: Duration::from_secs(5),
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_millis(400),
                jitter_first_connect: false,
            },
            tick_interval: Duration::from_millis(50),
            metrics_listen: None,
            pause_after_receive: None,
        };
        let mut hardware = match self.hardware {
            Some(h) => h,
            None => Hardware::sim(&spec(), 7, self.initial_soc, self.reversion_timeout).unwrap(),
        };
        if let Some(meter) = self.meter {
            hardware = hardware.with_meter(meter);
        }
        let hardware = Arc::new(Mutex::new(hardware));
        let metrics: SharedMetrics = Arc::default();
        let agent = Agent {
            options,
            store,
            open_report,
            hardware: hardware.clone(),
            clock: self.clock,
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(shell::run_agent_with_metrics(
            agent,
            metrics.clone(),
            stop_rx,
        ));
        InProcess {
            hardware,
            metrics,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }
}

/// Waits until `f` holds (polling every 20 ms) or panics after `timeout` with `what`.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh temporary directory.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "grid-agent-it-{}-{name}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
