//! A load worker: a slice of the simulated fleet (real grid-agent engines and shells, each with its
//! own MQTT connection, a `SimBattery` behind the agent's safety layer and a volatile store, or
//! one on a shared in-memory SQLite shard: [`AgentStore`]), driven by JSON lines so the
//! orchestrator can run it in a child process (to spread file descriptors and measure agent CPU
//! apart from the server) or in-process.

use anyhow::{Context, Result};
use grid_agent::EngineConfig;
use grid_agent::config::{BrokerAddress, FallbackMode};
use grid_agent::hardware::Hardware;
use grid_agent::metrics::{MetricsSnapshot, SharedMetrics};
use grid_agent::shell::{Agent, AgentOptions, MqttSettings, SystemClock, run_agent_with_metrics};
use grid_agent::store::{OpenReport, Store, StoreLocation};
use grid_core::{BatteryParams, BatterySpec, DeviceId, Soc};
use grid_hal::{SimBattery, SimConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Initial state of charge of every simulated battery (fraction).
pub const INITIAL_SOC: f64 = 0.5;

/// What one worker runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Index of the first device (devices are `load-NNNNN`).
    pub first: usize,
    /// How many devices.
    pub count: usize,
    /// Where the agents' stores live.
    pub store: AgentStore,
    /// In-memory SQLite shards the agents' stores are spread over ([`AgentStore::Sqlite`]).
    pub shards: usize,
    /// Bound of the agents' random connect and first reconnect delay (ms); 0 = no jitter.
    pub reconnect_min_ms: u64,
    /// Real time between agent ticks (ms).
    pub tick_ms: u64,
    /// Time between telemetry batches (s).
    pub telemetry_s: u64,
    /// What the worker runs (default: agents).
    #[serde(default)]
    pub role: WorkerRole,
}

/// What a worker runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    /// Simulated agents (the fleet).
    #[default]
    Agents,
    /// Bare MQTT clients that answer every message and store nothing (the reference:
    /// [`crate::load::reference`]).
    BareMqtt,
}

/// Where the simulated agents keep their stores. Either way every agent goes through the same
/// engine and commits before it acks; only the storage differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AgentStore {
    /// One volatile store per agent (grid-agent's `StoreLocation::Volatile`: no SQLite, so no
    /// round trip to a SQLite worker thread per statement).
    Volatile,
    /// The real agent's SQLite store, on in-memory databases shared by many agents (shards).
    Sqlite,
}

impl AgentStore {
    /// The name the CLI and the summary use.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStore::Volatile => "volatile",
            AgentStore::Sqlite => "sqlite",
        }
    }
}

/// A request from the orchestrator (one JSON line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Connection counts.
    Status,
    /// Remember every agent's connect count now (before a reconnect storm).
    Mark,
    /// Per-agent counters, as histograms.
    Metrics,
    /// Stop every agent and start it again (same stores) with a new reconnect jitter bound.
    Restart {
        /// The new bound (ms); 0 = no jitter.
        reconnect_min_ms: u64,
    },
    /// Stop every agent and exit.
    Stop,
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Agents running.
    pub agents: usize,
    /// Agents that have connected at least once since they started.
    pub connected_once: usize,
    /// Agents that connected again since the last [`Request::Mark`].
    pub reconnected_since_mark: usize,
}

/// The answer to [`Request::Metrics`]: how many agents have each counter value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Schedules accepted per agent (as a decimal string: JSON keys) → number of agents.
    pub accepted: BTreeMap<String, usize>,
    /// Schedule versions started per agent → number of agents.
    pub started: BTreeMap<String, usize>,
    /// Downlink messages rejected per agent → number of agents.
    pub rejected: BTreeMap<String, usize>,
    /// Sum of downlink messages received.
    pub messages_received: u64,
    /// Sum of acks produced.
    pub acks: u64,
    /// Sum of safety-layer interventions.
    pub safety_events: u64,
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Connection counts.
    Status(Status),
    /// Counters.
    Metrics(Metrics),
    /// Done (mark, restart, stop).
    Ok,
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// The device id of benchmark device `i`.
pub fn device_name(i: usize) -> String {
    format!("load-{i:05}")
}

/// The battery of benchmark device `i` (varied a little so the fleet is not uniform).
pub fn bench_spec(i: usize) -> Result<BatterySpec> {
    let capacity = 8.0 + (i % 5) as f64;
    Ok(BatterySpec::new(BatteryParams {
        capacity_kwh: capacity,
        min_energy_kwh: 0.1 * capacity,
        max_energy_kwh: 0.95 * capacity,
        max_charge_kw: 4.0,
        max_discharge_kw: 4.0,
        charge_efficiency: 0.95,
        discharge_efficiency: 0.95,
        degradation_cost_per_kwh: 0.02,
        ramp_limit_kw_per_min: None,
        min_temperature_c: Some(-10.0),
        max_temperature_c: Some(50.0),
    })?)
}

struct Running {
    metrics: SharedMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<grid_agent::Result<()>>,
}

struct Fleet {
    spec: WorkerSpec,
    /// Each agent's store (by index in the slice), kept across restarts.
    stores: Vec<Store>,
    agents: Vec<Running>,
    marks: Vec<u64>,
}

impl Fleet {
    async fn open(spec: WorkerSpec) -> Result<Self> {
        let mut pools = Vec::new();
        if spec.store == AgentStore::Sqlite {
            for _ in 0..spec.shards.max(1) {
                let (store, _) = Store::open(&StoreLocation::Memory, "shard", 100)
                    .await
                    .context("opening an in-memory agent store shard")?;
                pools.push(
                    store
                        .pool()
                        .context("an in-memory SQLite store has a pool")?
                        .clone(),
                );
            }
        }
        let mut stores = Vec::with_capacity(spec.count);
        for k in 0..spec.count {
            let name = device_name(spec.first + k);
            let store = match spec.store {
                AgentStore::Sqlite => Store::shared(pools[k % pools.len()].clone(), &name, 100),
                AgentStore::Volatile => Store::open(&StoreLocation::Volatile, &name, 100).await?.0,
            };
            stores.push(store);
        }
        Ok(Self {
            spec,
            stores,
            agents: Vec::new(),
            marks: Vec::new(),
        })
    }

    fn start_all(&mut self) -> Result<()> {
        for k in 0..self.spec.count {
            let agent = self.start_one(k)?;
            self.agents.push(agent);
        }
        self.marks = vec![0; self.agents.len()];
        Ok(())
    }

    fn start_one(&self, k: usize) -> Result<Running> {
        let s = &self.spec;
        let i = s.first + k;
        let name = device_name(i);
        let device = DeviceId::new(name.clone())?;
        let spec = bench_spec(i)?;
        let sim = SimBattery::new(
            spec.clone(),
            SimConfig {
                seed: i as u64,
                initial_soc: Soc::from_fraction(INITIAL_SOC)?,
                ..SimConfig::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("simulated battery for {name}: {e}"))?;
        let reversion = Duration::from_secs(3600);
        let hardware = Hardware::new(Box::new(sim), &spec, reversion)
            .map_err(|e| anyhow::anyhow!("safety layer for {name}: {e}"))?;
        let engine = EngineConfig {
            fallback: FallbackMode::Idle,
            reversion_timeout: reversion,
            telemetry_interval: Duration::from_secs(s.telemetry_s.max(1)),
            ..EngineConfig::new(device, spec)
        };
        let jitter = Duration::from_millis(s.reconnect_min_ms);
        let options = AgentOptions {
            engine,
            mqtt: MqttSettings {
                broker: BrokerAddress {
                    tls: false,
                    host: s.host.clone(),
                    port: s.port,
                },
                client_id: format!("grid-sim-{name}"),
                ca_file: None,
                client_auth: None,
                credentials: None,
                keepalive: Duration::from_secs(60),
                reconnect_min: jitter,
                reconnect_max: Duration::from_secs(5).max(jitter),
                jitter_first_connect: s.reconnect_min_ms > 0,
            },
            tick_interval: Duration::from_millis(s.tick_ms.max(10)),
            metrics_listen: None,
            pause_after_receive: None,
        };
        let store = self
            .stores
            .get(k)
            .with_context(|| format!("no store for agent {name}"))?
            .clone();
        let agent = Agent {
            options,
            store,
            open_report: OpenReport::default(),
            hardware: Arc::new(Mutex::new(hardware)),
            clock: Arc::new(SystemClock),
        };
        let metrics: SharedMetrics = Arc::new(Mutex::new(MetricsSnapshot::default()));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_agent_with_metrics(agent, metrics.clone(), rx));
        Ok(Running {
            metrics,
            stop: Some(tx),
            task,
        })
    }

    async fn stop_all(&mut self) {
        let mut set = JoinSet::new();
        for mut a in self.agents.drain(..) {
            if let Some(tx) = a.stop.take() {
                let _ = tx.send(());
            }
            set.spawn(async move {
                if tokio::time::timeout(Duration::from_secs(10), &mut a.task)
                    .await
                    .is_err()
                {
                    a.task.abort();
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    fn snapshots(&self) -> Vec<MetricsSnapshot> {
        self.agents
            .iter()
            .map(|a| a.metrics.lock().map(|m| m.clone()).unwrap_or_default())
            .collect()
    }

    fn status(&self) -> Status {
        let snaps = self.snapshots();
        Status {
            agents: snaps.len(),
            connected_once: snaps.iter().filter(|m| m.connects >= 1).count(),
            reconnected_since_mark: snaps
                .iter()
                .zip(&self.marks)
                .filter(|(m, mark)| m.connects > **mark)
                .count(),
        }
    }

    fn metrics(&self) -> Metrics {
        let mut out = Metrics::default();
        for m in self.snapshots() {
            *out.accepted
                .entry(m.engine.schedules_accepted.to_string())
                .or_default() += 1;
            *out.started
                .entry(m.engine.schedules_started.to_string())
                .or_default() += 1;
            *out.rejected
                .entry(m.engine.rejected.to_string())
                .or_default() += 1;
            out.messages_received += m.engine.messages_received;
            out.acks += m.engine.acks;
            out.safety_events += m.safety_events;
        }
        out
    }
}

/// Runs a worker: starts its agents, then answers requests (one JSON line each) until
/// [`Request::Stop`] or the end of `input`.
pub async fn serve<R, W>(spec: WorkerSpec, input: R, output: W) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if spec.role == WorkerRole::BareMqtt {
        return crate::load::reference::serve(spec, input, output).await;
    }
    let mut fleet = Fleet::open(spec).await?;
    fleet.start_all()?;
    let mut requests = Requests::new(input, output);
    while let Some(request) = requests.next().await? {
        let (reply, stop) = match request {
            Request::Status => (Reply::Status(fleet.status()), false),
            Request::Mark => {
                fleet.marks = fleet.snapshots().iter().map(|m| m.connects).collect();
                (Reply::Ok, false)
            }
            Request::Metrics => (Reply::Metrics(fleet.metrics()), false),
            Request::Restart { reconnect_min_ms } => {
                fleet.stop_all().await;
                fleet.spec.reconnect_min_ms = reconnect_min_ms;
                match fleet.start_all() {
                    Ok(()) => (Reply::Ok, false),
                    Err(e) => (
                        Reply::Error {
                            message: format!("{e:#}"),
                        },
                        false,
                    ),
                }
            }
            Request::Stop => {
                fleet.stop_all().await;
                (Reply::Ok, true)
            }
        };
        requests.reply(&reply).await?;
        if stop {
            return Ok(());
        }
    }
    fleet.stop_all().await;
    Ok(())
}

/// A worker's side of the request channel: requests read from `input` (one JSON line each), replies
/// written to `output` (one JSON line each).
pub(crate) struct Requests<R, W> {
    lines: tokio::io::Lines<BufReader<R>>,
    output: W,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Requests<R, W> {
    /// The channel over `input` and `output`.
    pub(crate) fn new(input: R, output: W) -> Self {
        Self {
            lines: BufReader::new(input).lines(),
            output,
        }
    }

    /// The next request, or `None` when `input` ends. A line that is not a request is answered
    /// with [`Reply::Error`] here and skipped.
    pub(crate) async fn next(&mut self) -> Result<Option<Request>> {
        while let Some(line) = self.lines.next_line().await? {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => return Ok(Some(request)),
                Err(e) => {
                    let message = format!("bad request {line:?}: {e}");
                    self.reply(&Reply::Error { message }).await?;
                }
            }
        }
        Ok(None)
    }

    /// Writes one reply.
    pub(crate) async fn reply(&mut self, reply: &Reply) -> Result<()> {
        let mut text = serde_json::to_string(reply)?;
        text.push('\n');
        self.output.write_all(text.as_bytes()).await?;
        self.output.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_as_json_lines() {
        let r = Request::Restart {
            reconnect_min_ms: 0,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"cmd":"restart","reconnect_min_ms":0}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let mut m = Metrics::default();
        m.started.insert("1".into(), 10);
        let back: Reply =
            serde_json::from_str(&serde_json::to_string(&Reply::Metrics(m.clone())).unwrap())
                .unwrap();
        assert_eq!(back, Reply::Metrics(m));
    }

    #[test]
    fn bench_specs_are_valid_and_varied() {
        let a = bench_spec(0).unwrap();
        let b = bench_spec(1).unwrap();
        assert!(a.capacity().kwh() < b.capacity().kwh());
        assert_eq!(device_name(42), "load-00042");
    }
}
