//! The thin tokio shell around the [`Engine`]: MQTT (rumqttc), the SQLite [`Store`] and the
//! [`Hardware`], driven by an injectable [`Clock`].
//!
//! * The MQTT event loop runs in its own task and reconnects with exponential backoff and full
//!   jitter; the session is persistent (`clean_session = false`), everything is QoS 1, the last
//!   will is a retained offline status, and deliveries are acknowledged manually: the PUBACK for a
//!   schedule goes out only after the engine's [`Action::Persist`] before it has committed, so a
//!   power cut between receive and commit makes the broker redeliver.
//! * Acks and telemetry go through the store's outbox and leave it only when the broker's PUBACK
//!   for them arrives; after a reconnect without a session, the outbox is sent again.
//! * [`run_agent`] takes everything as values (options, store, hardware, clock), so a test or the
//!   fleet demo can run many agents in one process without files or environment variables.
//!
//! ```no_run
//! # async fn demo() -> grid_agent::Result<()> {
//! use grid_agent::{Config, shell::{self, Agent, AgentOptions, SystemClock}, store::{Store, StoreLocation}};
//! use grid_agent::hardware::Hardware;
//! use std::sync::Arc;
//! let config = Config::load(Some("device_id = \"bat-7\""), std::iter::empty::<(String, String)>())?;
//! let (store, report) = Store::open(&StoreLocation::Memory, "bat-7", 100).await?;
//! let agent = Agent {
//!     options: AgentOptions::from_config(&config)?,
//!     store,
//!     open_report: report,
//!     hardware: Arc::new(std::sync::Mutex::new(Hardware::from_config(&config)?)),
//!     clock: Arc::new(SystemClock),
//! };
//! shell::run_agent(agent, tokio::signal::ctrl_c()).await?;
//! # Ok(()) }
//! ```

use crate::config::{BrokerAddress, Config};
use crate::engine::{Action, DeliveryTag, Engine, EngineConfig, Event, LogLevel};
use crate::error::{Error, Result};
use crate::hardware::Hardware;
use crate::metrics::{self, MetricsSnapshot, SharedMetrics};
use crate::store::{OpenReport, OutboxKind, Store};
use grid_core::{Power, Timestamp};
use rumqttc::{
    AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The agent's source of time (UTC). Inject a [`ManualClock`] in tests or a [`ScaledClock`] for
/// an accelerated simulation.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Mutex::new(start))
    }

    /// Moves the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        if let Ok(mut g) = self.0.lock() {
            *g = t;
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        if let Ok(mut g) = self.0.lock() {
            let step = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::ZERO);
            *g = g.checked_add(step).unwrap_or(*g);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.0.lock().map(|g| *g).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// A clock running `factor` times faster than real time from `start` (the fleet demo).
#[derive(Debug, Clone, Copy)]
pub struct ScaledClock {
    start: Timestamp,
    origin: std::time::Instant,
    factor: f64,
}

impl ScaledClock {
    /// Starts at `start`, now, running `factor` times real time (> 0).
    pub fn new(start: Timestamp, factor: f64) -> Self {
        Self {
            start,
            origin: std::time::Instant::now(),
            factor: if factor.is_finite() && factor > 0.0 {
                factor
            } else {
                1.0
            },
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        let real = self.origin.elapsed().as_secs_f64() * self.factor;
        let d = jiff::SignedDuration::try_from_secs_f64(real).unwrap_or(jiff::SignedDuration::ZERO);
        self.start.checked_add(d).unwrap_or(self.start)
    }
}

/// How to reach the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    /// Host, port, TLS.
    pub broker: BrokerAddress,
    /// Client id (stable: the session is persistent).
    pub client_id: String,
    /// CA certificate (PEM) for TLS; `None` = the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mTLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Keep-alive.
    pub keepalive: Duration,
    /// First reconnect delay bound.
    pub reconnect_min: Duration,
    /// Largest reconnect delay bound.
    pub reconnect_max: Duration,
    /// Wait a random time up to `reconnect_min` before the first connect (many agents at once).
    pub jitter_first_connect: bool,
}

/// Everything [`run_agent`] needs besides the store, the hardware and the clock.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// The broker.
    pub mqtt: MqttSettings,
    /// Real time between ticks (sampling, setpoint, lifecycle).
    pub tick_interval: Duration,
    /// Serve Prometheus metrics here.
    pub metrics_listen: Option<SocketAddr>,
    /// Test hook: wait this long after receiving a downlink message, before handling it (so a
    /// test can kill the process between receive and commit).
    pub pause_after_receive: Option<Duration>,
}

impl AgentOptions {
    /// Options from a validated [`Config`].
    pub fn from_config(config: &Config) -> Result<Self> {
        let device = config.device()?;
        let spec = config.battery_spec()?;
        let verifying_key = match config.signing_key()? {
            Some(bytes) => Some(
                grid_proto::signature::VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    Error::Config {
                        key: "agent.signing_public_key".into(),
                        reason: "not a valid Ed25519 public key".into(),
                    }
                })?,
            ),
            None => None,
        };
        let engine = EngineConfig {
            fallback: config.agent.fallback,
            meter_max_age: config.meter_max_age(),
            reversion_timeout: config.reversion_timeout(),
            telemetry_interval: Duration::from_secs(config.agent.telemetry_interval_s),
            verifying_key,
            max_payload_bytes: config.agent.max_payload_bytes,
            // EngineConfig::new draws a random message id prefix for this run.
            ..EngineConfig::new(device, spec)
        };
        let m = &config.mqtt;
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        let mqtt = MqttSettings {
            broker: config.broker()?,
            client_id: config.client_id(),
            ca_file: path(&m.ca_file),
            client_auth: path(&m.cert_file).zip(path(&m.key_file)),
            credentials: (!m.username.is_empty()).then(|| (m.username.clone(), m.password.clone())),
            keepalive: Duration::from_secs(m.keepalive_s),
            reconnect_min: Duration::from_millis(m.reconnect_min_ms),
            reconnect_max: Duration::from_millis(m.reconnect_max_ms),
            jitter_first_connect: false,
        };
        Ok(Self {
            engine,
            mqtt,
            tick_interval: Duration::from_millis(config.agent.tick_interval_ms),
            metrics_listen: config.metrics_addr()?,
            pause_after_receive: None,
        })
    }
}

/// One agent, ready to run.
pub struct Agent {
    /// Options.
    pub options: AgentOptions,
    /// The opened store (see [`Store::open`] / [`Store::shared`]).
    pub store: Store,
    /// What opening the store found (a corrupt file puts the agent in safe mode).
    pub open_report: OpenReport,
    /// The battery, shared so the caller can watch or step a simulator.
    pub hardware: Arc<Mutex<Hardware>>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

/// A small, seedable random source for jitter (no cryptographic use).
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn new(seed: &str) -> Self {
        let h = crate::engine::fnv1a(seed.as_bytes());
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self(h ^ t ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform duration in `[0, max]` (full jitter).
    fn upto(&mut self, max: Duration) -> Duration {
        let ms = max.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { self.next() % (ms + 1) })
    }
}

/// The backoff bound before attempt `attempt` (0-based): `min · 2^attempt`, at most `max`.
pub fn backoff_bound(min: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

enum Net {
    Connected { session_present: bool },
    Disconnected(String),
    Publish(Publish),
    PubAck(u16),
    OutgoingPublish(u16),
}

/// Runs the MQTT event loop, reconnecting with exponential backoff and full jitter.
async fn drive(mut eventloop: EventLoop, settings: MqttSettings, tx: mpsc::Sender<Net>) {
    let mut jitter = Jitter::new(&settings.client_id);
    if settings.jitter_first_connect {
        tokio::time::sleep(jitter.upto(settings.reconnect_min)).await;
    }
    let mut attempt: u32 = 0;
    loop {
        let msg = match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                attempt = 0;
                Net::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => Net::Publish(p),
            Ok(rumqttc::Event::Incoming(Packet::PubAck(a))) => Net::PubAck(a.pkid),
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                Net::OutgoingPublish(pkid)
            }
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if tx.send(Net::Disconnected(e.to_string())).await.is_err() {
                    return;
                }
                let bound = backoff_bound(settings.reconnect_min, settings.reconnect_max, attempt);
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(jitter.upto(bound)).await;
                continue;
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

fn mqtt_options(settings: &MqttSettings, will: Option<(String, Vec<u8>)>) -> Result<MqttOptions> {
    let b = &settings.broker;
    let mut o = MqttOptions::new(settings.client_id.clone(), b.host.clone(), b.port);
    o.set_keep_alive(settings.keepalive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(
            grid_proto::limits::MAX_PAYLOAD_BYTES * 4,
            grid_proto::limits::MAX_PAYLOAD_BYTES * 4,
        )
        .set_inflight(32)
        .set_request_channel_capacity(64);
    if let Some((topic, payload)) = will {
        o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
    }
    if let Some((u, p)) = &settings.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    if b.tls {
        // One crypto provider for the whole process (see FIELD-NOTES: two providers panic).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |key: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| Error::Config {
                key: key.into(),
                reason: format!("cannot read {}: {e}", p.display()),
            })
        };
        let client_auth = match &settings.client_auth {
            Some((cert, key)) => Some((read("mqtt.cert_file", cert)?, read("mqtt.key_file", key)?)),
            None => None,
        };
        let transport = match &settings.ca_file {
            Some(ca) => Transport::tls_with_config(TlsConfiguration::Simple {
                ca: read("mqtt.ca_file", ca)?,
                alpn: None,
                client_auth,
            }),
            // The default config has no client certificate: refuse rather than drop it.
            None if client_auth.is_some() => {
                return Err(Error::Config {
                    key: "mqtt.ca_file".into(),
                    reason: "a client certificate needs the broker's CA".into(),
                });
            }
            None => Transport::tls_with_default_config(),
        };
        o.set_transport(transport);
    }
    Ok(o)
}

/// Tracks which outbox rows are queued or in flight, by packet id.
#[derive(Default)]
struct Outflow {
    /// QoS 1 publishes handed to the client, in order, not yet given a packet id: the outbox row
    /// or `None` (hello, status).
    requested: VecDeque<Option<i64>>,
    /// Packet id → outbox row, until the PUBACK.
    inflight: HashMap<u16, Option<i64>>,
    /// Outbox rows queued or in flight.
    queued: BTreeSet<i64>,
}

const OUTFLOW_WINDOW: usize = 24;

struct Shell {
    engine: Engine,
    client: AsyncClient,
    store: Store,
    hardware: Arc<Mutex<Hardware>>,
    clock: Arc<dyn Clock>,
    metrics: SharedMetrics,
    outflow: Outflow,
    connected: bool,
    deliveries: HashMap<u64, Publish>,
    next_tag: u64,
    last_safety: String,
    /// The last grid-meter error logged (a change is logged once).
    last_meter_error: Option<grid_hal::ErrorKind>,
    pause_after_receive: Option<Duration>,
}

/// Runs one agent until `shutdown` completes, then sets the battery idle, flushes telemetry,
/// publishes the offline status and disconnects cleanly.
pub async fn run_agent(agent: Agent, shutdown: impl Future<Output = impl Sized>) -> Result<()> {
    let metrics: SharedMetrics = Arc::new(Mutex::new(MetricsSnapshot::default()));
    run_agent_with_metrics(agent, metrics, shutdown).await
}

/// [`run_agent`], publishing counters into `metrics` on every tick (for an embedding program).
pub async fn run_agent_with_metrics(
    agent: Agent,
    metrics: SharedMetrics,
    shutdown: impl Future<Output = impl Sized>,
) -> Result<()> {
    let Agent {
        options,
        store,
        open_report,
        hardware,
        clock,
    } = agent;
    let device = options.engine.device.to_string();
    let mut engine = Engine::new(options.engine.clone());
    let startup_logs = if let Some(moved) = &open_report.moved_corrupt_file_to {
        engine.enter_safe_mode();
        tracing::error!(
            device = %device,
            moved_to = %moved.display(),
            reason = open_report.corruption.as_deref().unwrap_or(""),
            "local store was corrupt: moved aside, safe mode (battery idle) until the server resends"
        );
        Vec::new()
    } else {
        let snapshot = store.load().await?;
        let n = snapshot.schedules.len();
        let logs = engine.restore(snapshot);
        tracing::info!(device = %device, schedules = n, "restored local store");
        logs
    };
    let now = clock.now();
    let will = engine.last_will(now);
    let mqtt = mqtt_options(&options.mqtt, will)?;
    let (client, eventloop) = AsyncClient::new(mqtt, 64);
    let mut net = eventloop;
    let mut nopts = net.network_options();
    nopts.set_tcp_nodelay(true);
    nopts.set_connection_timeout(10);
    net.set_network_options(nopts);
    let (tx, mut rx) = mpsc::channel(64);
    let net_task = tokio::spawn(drive(net, options.mqtt.clone(), tx));
    let metrics_task = match options.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(device = %device, %addr, "serving Prometheus metrics");
            Some(tokio::spawn(metrics::serve(
                listener,
                device.clone(),
                metrics.clone(),
            )))
        }
        None => None,
    };
    let mut shell = Shell {
        engine,
        client,
        store,
        hardware,
        clock,
        metrics,
        outflow: Outflow::default(),
        connected: false,
        deliveries: HashMap::new(),
        next_tag: 0,
        last_safety: String::new(),
        last_meter_error: None,
        pause_after_receive: options.pause_after_receive,
    };
    shell.run_actions(startup_logs).await?;
    let mut ticker = tokio::time::interval(options.tick_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            msg = rx.recv() => match msg {
                Some(m) => if let Err(e) = shell.on_net(m).await { break Err(e) },
                None => break Err(Error::Mqtt("the MQTT event loop stopped".into())),
            },
            _ = ticker.tick() => if let Err(e) = shell.tick().await { break Err(e) },
        }
    };
    let stop = shell.stop(&mut rx).await;
    net_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    shell.store.close().await;
    result.and(stop)
}

impl Shell {
    async fn tick(&mut self) -> Result<()> {
        let now = self.clock.now();
        // Sample first: the reading covers the interval that just ended, so it is credited to
        // the slot that was in force (plan-vs-actual), before the engine moves to the next one.
        let (report, meter) = match self.hardware.lock() {
            Ok(mut hw) => {
                let report = hw.tick(now);
                let meter = hw.read_meter(now, &report);
                (report, meter)
            }
            Err(_) => return Err(Error::Mqtt("hardware lock poisoned".into())),
        };
        self.note_safety(&report.events);
        if let Some(sample) = Hardware::sample(&report, now) {
            let actions = self.engine.handle(now, Event::Sample(sample));
            self.run_actions(actions).await?;
        }
        match meter {
            Some(Ok(grid)) => {
                if self.last_meter_error.take().is_some() {
                    tracing::info!(device = %self.engine.config().device, "grid meter readable again");
                }
                let actions = self.engine.handle(now, Event::GridMeter(grid));
                self.run_actions(actions).await?;
            }
            Some(Err(kind)) if self.last_meter_error != Some(kind) => {
                tracing::warn!(device = %self.engine.config().device, error = %kind, "grid meter not readable");
                self.last_meter_error = Some(kind);
            }
            Some(Err(_)) | None => {}
        }
        let actions = self.engine.handle(now, Event::Tick);
        self.run_actions(actions).await?;
        let outbox_len = self.store.outbox_len().await.unwrap_or(0);
        if let Ok(mut m) = self.metrics.lock() {
            m.engine = self.engine.metrics();
            m.outbox_len = outbox_len;
            m.applied_kw = report.applied.kw();
        }
        Ok(())
    }

    fn note_safety(&mut self, events: &[grid_hal::SafetyEvent]) {
        if events.is_empty() {
            self.last_safety.clear();
            return;
        }
        if let Ok(mut m) = self.metrics.lock() {
            m.safety_events += events.len() as u64;
        }
        // Log a change of interventions, not the same clamp every tick.
        let kinds: Vec<String> = events
            .iter()
            .map(|e| {
                format!("{e:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let key = kinds.join(",");
        if key != self.last_safety {
            tracing::warn!(device = %self.engine.config().device, events = ?events, "safety layer intervened");
            self.last_safety = key;
        }
    }

    async fn on_net(&mut self, msg: Net) -> Result<()> {
        let now = self.clock.now();
        match msg {
            Net::Connected { session_present } => {
                self.connected = true;
                if let Ok(mut m) = self.metrics.lock() {
                    m.connects += 1;
                }
                tracing::info!(device = %self.engine.config().device, session_present, "connected to the broker");
                // Subscribing again is harmless and covers a broker that lost the session.
                let sub = self.engine.subscription();
                if let Err(e) = self.client.try_subscribe(sub, QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "subscribe request failed");
                }
                if !session_present {
                    self.outflow = Outflow::default();
                }
                let actions = self.engine.handle(now, Event::Connected);
                self.run_actions(actions).await?;
                self.pump_outbox().await?;
            }
            Net::Disconnected(reason) => {
                if self.connected {
                    tracing::warn!(device = %self.engine.config().device, %reason, "disconnected from the broker");
                }
                self.connected = false;
                // Deliveries of the lost connection are redelivered by the broker.
                self.deliveries.clear();
                let actions = self.engine.handle(now, Event::Disconnected);
                self.run_actions(actions).await?;
            }
            Net::Publish(p) => {
                if let Some(pause) = self.pause_after_receive {
                    tracing::warn!(topic = %p.topic, pause_ms = pause.as_millis() as u64, "test hook: paused after receive");
                    tokio::time::sleep(pause).await;
                }
                self.next_tag += 1;
                let tag = DeliveryTag(self.next_tag);
                let topic = p.topic.clone();
                let payload = p.payload.clone();
                let delivery = if p.qos == QoS::AtMostOnce {
                    None
                } else {
                    self.deliveries.insert(tag.0, p);
                    Some(tag)
                };
                let actions = self.engine.handle(
                    now,
                    Event::Message {
                        topic: &topic,
                        payload: &payload[..],
                        delivery,
                    },
                );
                self.run_actions(actions).await?;
            }
            Net::OutgoingPublish(pkid) => {
                if pkid != 0
                    && !self.outflow.inflight.contains_key(&pkid)
                    && let Some(row) = self.outflow.requested.pop_front()
                {
                    self.outflow.inflight.insert(pkid, row);
                }
            }
            Net::PubAck(pkid) => {
                if let Some(Some(row)) = self.outflow.inflight.remove(&pkid) {
                    self.store.outbox_remove(row).await?;
                    self.outflow.queued.remove(&row);
                }
                self.pump_outbox().await?;
            }
        }
        Ok(())
    }

    /// Hands outbox rows to the client, oldest first, keeping a bounded window in flight.
    async fn pump_outbox(&mut self) -> Result<()> {
        if !self.connected || self.outflow.queued.len() >= OUTFLOW_WINDOW {
            return Ok(());
        }
        let rows = self
            .store
            .outbox_pending((OUTFLOW_WINDOW * 2) as i64)
            .await?;
        for row in rows {
            if self.outflow.queued.len() >= OUTFLOW_WINDOW {
                break;
            }
            if self.outflow.queued.contains(&row.id) {
                continue;
            }
            match self
                .client
                .try_publish(row.topic, QoS::AtLeastOnce, false, row.payload)
            {
                Ok(()) => {
                    self.outflow.requested.push_back(Some(row.id));
                    self.outflow.queued.insert(row.id);
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    async fn run_actions(&mut self, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::Persist(ops) => self.store.apply(&ops).await?,
                Action::AckDelivery(tag) => {
                    if let Some(p) = self.deliveries.remove(&tag.0)
                        && let Err(e) = self.client.try_ack(&p)
                    {
                        tracing::warn!(error = %e, "PUBACK not sent; the broker will redeliver");
                    }
                }
                Action::Publish(out) => match out.outbox {
                    Some(kind) => {
                        let (_, dropped) = self
                            .store
                            .outbox_push(kind, &out.topic, &out.payload)
                            .await?;
                        if dropped > 0 {
                            let a = self
                                .engine
                                .handle(self.clock.now(), Event::TelemetryDropped(dropped));
                            debug_assert!(a.is_empty());
                        }
                        if kind == OutboxKind::Ack || self.connected {
                            self.pump_outbox().await?;
                        }
                    }
                    None => {
                        if self.connected
                            && self
                                .client
                                .try_publish(out.topic, QoS::AtLeastOnce, out.retain, out.payload)
                                .is_ok()
                        {
                            self.outflow.requested.push_back(None);
                        }
                    }
                },
                Action::SetPower { power, source } => {
                    let now = self.clock.now();
                    let report = match self.hardware.lock() {
                        Ok(mut hw) => hw.command(now, power),
                        Err(_) => return Err(Error::Mqtt("hardware lock poisoned".into())),
                    };
                    tracing::debug!(requested_kw = power.kw(), applied_kw = report.applied.kw(), source = ?source, "setpoint");
                    self.note_safety(&report.events);
                }
                Action::Log {
                    level,
                    message,
                    correlation_id,
                } => {
                    let device = self.engine.config().device.as_str();
                    let corr = correlation_id.as_deref().unwrap_or("");
                    match level {
                        LogLevel::Info => {
                            tracing::info!(device, correlation_id = corr, "{message}")
                        }
                        LogLevel::Warn => {
                            tracing::warn!(device, correlation_id = corr, "{message}")
                        }
                        LogLevel::Error => {
                            tracing::error!(device, correlation_id = corr, "{message}")
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Battery idle, telemetry flushed, offline status, outbox drained (up to 3 s), disconnect.
    async fn stop(&mut self, rx: &mut mpsc::Receiver<Net>) -> Result<()> {
        let now = self.clock.now();
        tracing::info!(device = %self.engine.config().device, "shutting down: battery idle, flushing");
        if let Ok(mut hw) = self.hardware.lock() {
            hw.command(now, Power::ZERO);
        }
        let actions = self.engine.flush(now);
        let flushed = self.run_actions(actions).await;
        if self.connected {
            if let Some((topic, payload)) = self.engine.last_will(now) {
                let _ = self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, true, payload);
                self.outflow.requested.push_back(None);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while !(self.outflow.queued.is_empty() && self.outflow.inflight.is_empty()) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Net::PubAck(pkid))) => {
                        if let Some(Some(row)) = self.outflow.inflight.remove(&pkid) {
                            let _ = self.store.outbox_remove(row).await;
                            self.outflow.queued.remove(&row);
                        }
                    }
                    Ok(Some(Net::OutgoingPublish(pkid))) => {
                        if let Some(row) = self.outflow.requested.pop_front() {
                            self.outflow.inflight.insert(pkid, row);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = self.client.try_disconnect();
            // Let the event loop send the DISCONNECT.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(m) = rx.recv().await {
                    if matches!(m, Net::Disconnected(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_below_it() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(backoff_bound(min, max, 0), min);
        assert_eq!(backoff_bound(min, max, 3), Duration::from_secs(4));
        assert_eq!(backoff_bound(min, max, 30), max);
        let mut j = Jitter::new("x");
        let draws: Vec<_> = (0..1000).map(|_| j.upto(Duration::from_secs(4))).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(4)));
        // Full jitter: spread over the whole range, not bunched at the bound.
        assert!(draws.iter().any(|d| *d < Duration::from_secs(1)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(3)));
    }

    #[test]
    fn manual_and_scaled_clocks() {
        let t0: Timestamp = "2026-11-27T00:00:00Z".parse().unwrap();
        let c = ManualClock::new(t0);
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now(), "2026-11-27T00:01:30Z".parse().unwrap());
        let s = ScaledClock::new(t0, 1000.0);
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.now().duration_since(t0).as_secs_f64() >= 19.0);
    }
}
