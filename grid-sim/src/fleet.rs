//! The simulated fleet: one real grid-agent (engine, shell, MQTT connection, SQLite store) per
//! home, each driving a `SimBattery` through the agent's safety layer. A recorder between the
//! safety layer and the simulator checks every setpoint against the battery's envelope (the
//! demo's independent safety check) and integrates the power the battery really delivered.

use crate::scenario::{DT_HOURS, Home, SLOTS};
use anyhow::{Context, Result};
use grid_agent::EngineConfig;
use grid_agent::config::{BrokerAddress, FallbackMode};
use grid_agent::hardware::{Battery, Hardware};
use grid_agent::metrics::{MetricsSnapshot, SharedMetrics};
use grid_agent::shell::{Agent, AgentOptions, Clock, MqttSettings, run_agent_with_metrics};
use grid_agent::store::{OpenReport, Store, StoreLocation};
use grid_core::{BatterySpec, Power, Soc};
use grid_hal::{
    BatteryController, BatteryMonitor, BatteryState, ErrorKind, HalError, SimBattery, SimConfig,
};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Slack when judging a setpoint against the envelope (kW, kWh).
const EPS: f64 = 1e-6;

/// What the recorder saw of one battery.
#[derive(Debug, Clone)]
pub struct BatteryLog {
    /// Setpoints that reached the battery outside its envelope.
    pub violations: u64,
    /// Energy delivered per slot of the demo day (kWh at the battery's AC side, positive =
    /// charging).
    pub delivered_kwh: Vec<f64>,
    /// Simulated seconds since the start of the day.
    pub elapsed_s: f64,
    /// The last setpoint that reached the battery (kW).
    pub last_setpoint_kw: f64,
}

impl Default for BatteryLog {
    fn default() -> Self {
        Self {
            violations: 0,
            delivered_kwh: vec![0.0; SLOTS],
            elapsed_s: 0.0,
            last_setpoint_kw: 0.0,
        }
    }
}

/// A `SimBattery` that records what reaches it.
struct RecordingBattery {
    sim: SimBattery,
    spec: BatterySpec,
    log: Arc<Mutex<BatteryLog>>,
}

impl RecordingBattery {
    /// Whether `p` (kW) is outside the envelope given the battery's true stored energy.
    fn outside_envelope(&self, p: f64) -> bool {
        let e = self.sim.energy().kwh();
        p > self.spec.max_charge().kw() + EPS
            || -p > self.spec.max_discharge().kw() + EPS
            || (p > EPS && e >= self.spec.max_energy().kwh() + EPS)
            || (p < -EPS && e <= self.spec.min_energy().kwh() - EPS)
    }
}

impl Battery for RecordingBattery {
    fn read_state(&mut self) -> std::result::Result<BatteryState, ErrorKind> {
        BatteryMonitor::read_state(&mut self.sim).map_err(|e| e.kind())
    }

    fn set_power(&mut self, power: Power) -> std::result::Result<(), ErrorKind> {
        let outside = self.outside_envelope(power.kw());
        if let Ok(mut log) = self.log.lock() {
            if outside {
                log.violations += 1;
            }
            log.last_setpoint_kw = power.kw();
        }
        BatteryController::set_power(&mut self.sim, power).map_err(|e| e.kind())
    }

    fn advance(&mut self, dt: Duration) {
        // Integrate in steps of at most a minute so the slot split stays exact enough.
        let mut left = dt.as_secs_f64();
        while left > 0.0 {
            let step = left.min(60.0);
            let p = self.sim.power().kw();
            if let Ok(mut log) = self.log.lock() {
                let slot = (log.elapsed_s / (DT_HOURS * 3600.0)) as usize;
                if slot < SLOTS {
                    log.delivered_kwh[slot] += p * step / 3600.0;
                }
                log.elapsed_s += step;
            }
            self.sim.step(Duration::from_secs_f64(step));
            left -= step;
        }
    }

    fn as_sim_mut(&mut self) -> Option<&mut SimBattery> {
        Some(&mut self.sim)
    }
}

/// One running simulated home.
pub struct SimAgent {
    /// The home it simulates.
    pub device: String,
    /// The recorder's log.
    pub log: Arc<Mutex<BatteryLog>>,
    /// The agent's counters.
    pub metrics: SharedMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<grid_agent::Result<()>>>,
}

impl SimAgent {
    /// Asks the agent to stop (battery idle, flush, disconnect) and waits for it.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(joined) => joined
                    .context("agent task panicked")?
                    .context("agent failed")?,
                Err(_) => anyhow::bail!("agent {} did not stop within 10 s", self.device),
            }
        }
        Ok(())
    }

    /// A copy of the agent's counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.metrics.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// How the simulated agents reach the broker and keep time.
pub struct FleetSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The shared clock (accelerated).
    pub clock: Arc<dyn Clock>,
    /// Real time between agent ticks.
    pub tick_interval: Duration,
    /// Simulated time between telemetry batches.
    pub telemetry_interval: Duration,
    /// Reversion timeout (simulated time).
    pub reversion_timeout: Duration,
    /// Directory for the agents' shared SQLite file.
    pub store_dir: std::path::PathBuf,
}

/// Starts one agent per home, all sharing one SQLite file (each with its own rows), connecting
/// with a jittered delay so the broker's listen queue is not flooded.
pub async fn start_agents(homes: &[Home], settings: &FleetSettings) -> Result<Vec<SimAgent>> {
    let db = settings.store_dir.join("agents.db");
    let first = homes.first().context("no homes")?;
    let (seed_store, _) = Store::open(
        &StoreLocation::File(db.clone()),
        first.device.as_str(),
        10_000,
    )
    .await
    .with_context(|| format!("opening the agents' store {}", db.display()))?;
    let pool = seed_store
        .pool()
        .context("a SQLite file store has a pool")?
        .clone();
    let mut agents = Vec::with_capacity(homes.len());
    for home in homes {
        agents.push(start_one(home, settings, pool.clone()).await?);
    }
    Ok(agents)
}

async fn start_one(home: &Home, s: &FleetSettings, pool: sqlx::SqlitePool) -> Result<SimAgent> {
    let device = home.device.to_string();
    let log = Arc::new(Mutex::new(BatteryLog::default()));
    let capacity = home.spec.capacity().kwh();
    let sim = SimBattery::new(
        home.spec.clone(),
        SimConfig {
            seed: home.seed,
            initial_soc: Soc::from_fraction(
                (home.initial_energy.kwh() / capacity).clamp(0.0, 1.0),
            )?,
            ..SimConfig::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("simulated battery for {device}: {e}"))?;
    let battery = RecordingBattery {
        sim,
        spec: home.spec.clone(),
        log: log.clone(),
    };
    let hardware = Hardware::new(Box::new(battery), &home.spec, s.reversion_timeout)
        .map_err(|e| anyhow::anyhow!("safety layer for {device}: {e}"))?;
    let engine = EngineConfig {
        fallback: FallbackMode::Idle,
        reversion_timeout: s.reversion_timeout,
        telemetry_interval: s.telemetry_interval,
        ..EngineConfig::new(home.device.clone(), home.spec.clone())
    };
    let options = AgentOptions {
        engine,
        mqtt: MqttSettings {
            broker: BrokerAddress {
                tls: false,
                host: s.host.clone(),
                port: s.port,
            },
            client_id: format!("grid-sim-{device}"),
            ca_file: None,
            client_auth: None,
            credentials: None,
            keepalive: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            jitter_first_connect: true,
        },
        tick_interval: s.tick_interval,
        metrics_listen: None,
        pause_after_receive: None,
    };
    let agent = Agent {
        options,
        store: Store::shared(pool, &device, 10_000),
        open_report: OpenReport::default(),
        hardware: Arc::new(Mutex::new(hardware)),
        clock: s.clock.clone(),
    };
    let metrics: SharedMetrics = Arc::new(Mutex::new(MetricsSnapshot::default()));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run_agent_with_metrics(agent, metrics.clone(), stop_rx));
    Ok(SimAgent {
        device,
        log,
        metrics,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// Creates the directory for the agents' store.
pub fn prepare_store_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
