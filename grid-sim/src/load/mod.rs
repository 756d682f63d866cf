//! The scale benchmark (`grid-sim load`): the reference server against a fresh PostgreSQL database
//! and the benchmark's own Mosquitto (the project's tuned configuration on a free port), N
//! simulated agents (real grid-agent engines and shells, ack after commit, volatile stores by
//! default, `--agent-store sqlite` for the real agent's SQLite store) in worker processes, one
//! day's schedule published to every device, and the measurements of issue #8: time until every
//! device's acceptance is recorded (p50/p99/max), acks in PostgreSQL, lost or duplicated
//! executions, server/broker/PostgreSQL/agent CPU and memory, a reconnect storm with jitter on and
//! off, and an API load test with wrk. Before the fleet starts, the same broker and worker split
//! measure a bare-MQTT fan-out with nothing stored ([`reference`](mod@reference)); the publish
//! figure is also given as a multiple of it (`publish.ratio_to_bare_mqtt`), which does not move
//! with the machine's speed as the seconds do.
//!
//! ```text
//! cargo run --release -p grid-sim -- load --devices 10000
//! ```
//!
//! Devices are registered through the server's `Store` (not the REST API: registration is set-up,
//! not what is measured); schedules are stored through the `Store` too and published through the
//! server's batch path, `TransportHandle::distribute_many` (the delivery trackers' outbox, then MQTT).

pub mod api;
pub mod broker;
pub mod db;
pub mod procstat;
pub mod reference;
pub mod worker;

use anyhow::{Context, Result, bail};
use grid_core::{
    Alarms, DemandCharge, DeviceId, Energy, GridConnection, Horizon, Power, Schedule, ScheduleId,
    ScheduleVersion, SiteId, SlotLength, Soc, TelemetrySample, Temperature, Timestamp,
};
use grid_server::auth::Role;
use grid_server::config::Config;
use grid_server::server::RunningServer;
use grid_server::store::{NewDevice, NewSchedule, PayloadCodec, SiteRecord, Store};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use worker::{Reply, Request, WorkerRole, WorkerSpec};

/// Prefix of the benchmark schedules' ids (`load-NNNNN-day`).
const SCHEDULE_PREFIX: &str = "load-";
/// Slots of the published day (15 minutes each).
const SLOTS: usize = 96;
/// Rounds of the bare-MQTT reference (the median is its figure).
const REFERENCE_ROUNDS: usize = 3;
/// The bare-MQTT reference's clients connect spread over this long (ms), so their connects do not
/// overflow the broker's listen queue.
const REFERENCE_CONNECT_SPREAD_MS: u64 = 1000;

/// Options of `grid-sim load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Simulated devices (agents).
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// PostgreSQL server to create the benchmark's database on (a fresh database is created and
    /// dropped at the end).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// The Mosquitto executable.
    #[arg(long, default_value = "mosquitto")]
    pub mosquitto: String,
    /// Worker processes for the agents (0 = in this process); default: 1 per 8,000 devices.
    #[arg(long)]
    pub agent_procs: Option<usize>,
    /// Where the agents keep their stores: `volatile` (no SQLite; the issue allows simulated
    /// agents an in-memory store) or `sqlite` (the real agent's store, on in-memory SQLite shards).
    #[arg(long, value_enum, default_value_t = worker::AgentStore::Volatile)]
    pub agent_store: worker::AgentStore,
    /// In-memory SQLite shards per worker for the agents' stores (`--agent-store sqlite`).
    #[arg(long, default_value_t = 8)]
    pub shards: usize,
    /// Bound of the agents' random connect / first reconnect delay (ms) ("jitter on").
    #[arg(long, default_value_t = 2000)]
    pub jitter_ms: u64,
    /// Real time between agent ticks (ms).
    #[arg(long, default_value_t = 5000)]
    pub tick_ms: u64,
    /// Time between agent telemetry batches (s).
    #[arg(long, default_value_t = 3600)]
    pub telemetry_s: u64,
    /// Concurrent `distribute_many` calls when publishing.
    #[arg(long, default_value_t = 4)]
    pub publish_concurrency: usize,
    /// Schedules per `distribute_many` call (1 = one `distribute` call per schedule, the REST
    /// API's path).
    #[arg(long, default_value_t = 500)]
    pub publish_batch: usize,
    /// The server's store pool size.
    #[arg(long, default_value_t = 16)]
    pub db_pool: u32,
    /// Profiling switch: the benchmark database commits without waiting for the WAL flush
    /// (`synchronous_commit = off`). Not a production setting; off by default.
    #[arg(long)]
    pub pg_async_commit: bool,
    /// Skip the bare-MQTT reference (the same broker and process split, nothing stored: the
    /// publish figure's yardstick, see `reference`).
    #[arg(long)]
    pub skip_reference: bool,
    /// Skip the reconnect storms.
    #[arg(long)]
    pub skip_storm: bool,
    /// Skip the API load test.
    #[arg(long)]
    pub skip_api: bool,
    /// API load test rate (requests/s).
    #[arg(long, default_value_t = 2000)]
    pub api_rate: u32,
    /// API load test duration (s).
    #[arg(long, default_value_t = 20)]
    pub api_seconds: u64,
    /// Write the JSON summary here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run as an agent worker with this JSON spec (started by the benchmark itself).
    #[arg(long, hide = true)]
    pub worker_spec: Option<String>,
    /// Internal: the executable to start workers from (default: this one).
    #[arg(long, hide = true)]
    pub worker_exe: Option<PathBuf>,
}

impl LoadArgs {
    /// Defaults for `devices` devices (what the CLI gives without flags).
    pub fn new(devices: usize, database_url: &str) -> Self {
        Self {
            devices,
            database_url: database_url.to_owned(),
            mosquitto: "mosquitto".into(),
            agent_procs: None,
            agent_store: worker::AgentStore::Volatile,
            shards: 8,
            jitter_ms: 2000,
            tick_ms: 5000,
            telemetry_s: 3600,
            publish_concurrency: 4,
            publish_batch: 500,
            db_pool: 16,
            pg_async_commit: false,
            skip_reference: false,
            skip_storm: false,
            skip_api: false,
            api_rate: 2000,
            api_seconds: 20,
            json: None,
            worker_spec: None,
            worker_exe: None,
        }
    }
}

/// Runs the benchmark (or, with the hidden `--worker-spec`, one agent worker) and prints the
/// summary as JSON and as a table.
pub async fn run(args: LoadArgs) -> Result<()> {
    if let Some(spec) = &args.worker_spec {
        let spec: WorkerSpec = serde_json::from_str(spec).context("--worker-spec")?;
        return worker::serve(spec, tokio::io::stdin(), tokio::io::stdout()).await;
    }
    let summary = bench(&args).await?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!();
    print!("{}", table(&summary));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the whole benchmark and returns the JSON summary (services started and cleaned up).
pub async fn bench(args: &LoadArgs) -> Result<Value> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let port = broker::free_port()?;
    // One directory per run, not per process: two benchmarks in one process (the load smoke
    // tests run in parallel) shared the broker's config file, so one broker listened on the
    // other's port and the other run waited for a broker that never came.
    let dir = std::env::temp_dir().join(format!("grid-load-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut mosquitto = broker::Broker::start(&args.mosquitto, &dir, port).await?;
    let result = async {
        let reference = if args.skip_reference {
            Value::Null
        } else {
            bench_reference(args, &mosquitto)
                .await
                .context("the bare-MQTT reference")?
        };
        let database = db::BenchDb::create(&args.database_url, args.pg_async_commit).await?;
        let result = bench_with(args, &dir, &mut mosquitto, &database).await;
        if let Err(e) = database.drop_db().await {
            eprintln!("warning: could not drop {}: {e:#}", database.name);
        }
        result.map(|summary| with_reference(summary, reference))
    }
    .await;
    let _ = mosquitto.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Adds the bare-MQTT reference to the summary, and the publish figure as a multiple of it.
fn with_reference(mut summary: Value, reference: Value) -> Value {
    let fleet = summary["publish"]["all_accepted_recorded_s"].as_f64();
    let bare = reference["all_answered_s"].as_f64();
    if let (Some(fleet), Some(bare)) = (fleet, bare)
        && bare > 0.0
    {
        summary["publish"]["ratio_to_bare_mqtt"] = json!((fleet / bare * 100.0).round() / 100.0);
    }
    summary["reference"] = reference;
    summary
}

/// The executable worker processes run (none: workers run in this process).
fn worker_exe(args: &LoadArgs, procs: usize) -> Result<Option<PathBuf>> {
    Ok(match (&args.worker_exe, procs) {
        (_, 0) => None,
        (Some(e), _) => Some(e.clone()),
        (None, _) => Some(std::env::current_exe().context("locating grid-sim")?),
    })
}

/// Worker processes for `n` devices: `--agent-procs`, or one per 8,000 devices.
fn worker_procs(args: &LoadArgs) -> usize {
    args.agent_procs.unwrap_or(args.devices.div_ceil(8000))
}

/// Starts `role` workers for devices `0..n`, split like the fleet.
async fn start_workers(
    args: &LoadArgs,
    port: u16,
    role: WorkerRole,
    jitter_ms: u64,
) -> Result<Fleet> {
    let n = args.devices;
    let procs = worker_procs(args);
    let exe = worker_exe(args, procs)?;
    let parts = procs.max(1);
    let mut workers = Vec::new();
    for p in 0..parts {
        let first = p * n / parts;
        let last = (p + 1) * n / parts;
        let spec = WorkerSpec {
            host: "127.0.0.1".into(),
            port,
            first,
            count: last - first,
            store: args.agent_store,
            shards: args.shards,
            reconnect_min_ms: jitter_ms,
            tick_ms: args.tick_ms,
            telemetry_s: args.telemetry_s,
            role,
        };
        workers.push(Worker::start(&spec, exe.as_ref()).await?);
    }
    Ok(Fleet(workers))
}

/// The bare-MQTT reference ([`reference`](mod@reference)) on the benchmark's broker: N bare
/// clients in the fleet's worker split, a 2 KB QoS 1 message to each, until every answer is back.
async fn bench_reference(args: &LoadArgs, mosquitto: &broker::Broker) -> Result<Value> {
    let n = args.devices;
    progress(&format!(
        "bare-MQTT reference: {n} clients, a {} B message to each, until every answer is back",
        reference::MESSAGE_BYTES
    ));
    let mut hub = reference::Hub::connect("127.0.0.1", mosquitto.port).await?;
    let t = Instant::now();
    let mut clients = start_workers(
        args,
        mosquitto.port,
        WorkerRole::BareMqtt,
        REFERENCE_CONNECT_SPREAD_MS,
    )
    .await?;
    let outcome = async {
        let (subscribed, _) = clients
            .wait_for(t, Duration::from_secs(120), |s| s.connected_once >= n)
            .await
            .context("waiting for every bare client to subscribe")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Several rounds, the median reported: one round is short enough for the machine's
        // moment-to-moment speed to move it by a third.
        let mut rounds = Vec::new();
        let mut usage = Value::Null;
        for round in 0..REFERENCE_ROUNDS {
            let before = Probe::take(mosquitto.pid(), &clients.pids());
            rounds.push(hub.fan_out(n, Duration::from_secs(60)).await?);
            if round == 0 {
                usage = Probe::take(mosquitto.pid(), &clients.pids()).since(&before);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut answered: Vec<f64> = rounds.iter().map(|r| secs(r.all_answered)).collect();
        let mut calls: Vec<f64> = rounds.iter().map(|r| secs(r.publish_calls)).collect();
        let in_order = answered.clone();
        answered.sort_by(f64::total_cmp);
        calls.sort_by(f64::total_cmp);
        let duplicates: usize = rounds.iter().map(|r| r.duplicates).sum();
        let late: usize = rounds.iter().map(|r| r.late).sum();
        Ok::<_, anyhow::Error>(json!({
            "clients": n,
            "message_bytes": reference::MESSAGE_BYTES,
            "answer_bytes": reference::ANSWER_BYTES,
            "subscribe_all_s": secs(subscribed),
            "all_answered_s": answered[answered.len() / 2],
            "rounds_all_answered_s": in_order,
            "publish_calls_s": calls[calls.len() / 2],
            "duplicates": duplicates,
            "late_answers": late,
            "usage_first_round": {
                "wall_s": usage["wall_s"],
                "broker": usage["broker"],
                "clients": usage["agents"],
                "hub_process": usage["server"],
            },
        }))
    }
    .await;
    for w in clients.0 {
        w.stop().await;
    }
    hub.close().await;
    outcome
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Nearest-rank percentiles of `v` (sorted in place): p50, p99, max.
fn percentiles(v: &mut [f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[(((p / 100.0) * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    json!({ "p50": at(50.0), "p99": at(99.0), "max": v[v.len() - 1], "n": v.len() })
}

/// Worker processes (or in-process workers) and their request channels.
struct Worker {
    write: Box<dyn AsyncWrite + Unpin + Send>,
    read: Lines<BufReader<Box<dyn AsyncRead + Unpin + Send>>>,
    child: Option<tokio::process::Child>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Worker {
    async fn start(spec: &WorkerSpec, exe: Option<&PathBuf>) -> Result<Self> {
        let text = serde_json::to_string(spec)?;
        match exe {
            Some(exe) => {
                let mut child = tokio::process::Command::new(exe)
                    .arg("load")
                    .arg("--worker-spec")
                    .arg(&text)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting the agent worker {}", exe.display()))?;
                let write: Box<dyn AsyncWrite + Unpin + Send> =
                    Box::new(child.stdin.take().context("worker stdin")?);
                let read: Box<dyn AsyncRead + Unpin + Send> =
                    Box::new(child.stdout.take().context("worker stdout")?);
                Ok(Self {
                    write,
                    read: BufReader::new(read).lines(),
                    child: Some(child),
                    task: None,
                })
            }
            None => {
                let (orch_w, worker_r) = tokio::io::duplex(1 << 16);
                let (worker_w, orch_r) = tokio::io::duplex(1 << 16);
                let task = tokio::spawn(worker::serve(spec.clone(), worker_r, worker_w));
                let read: Box<dyn AsyncRead + Unpin + Send> = Box::new(orch_r);
                Ok(Self {
                    write: Box::new(orch_w),
                    read: BufReader::new(read).lines(),
                    child: None,
                    task: Some(task),
                })
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    async fn ask(&mut self, request: &Request) -> Result<Reply> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        self.write
            .write_all(line.as_bytes())
            .await
            .context("writing to a worker")?;
        self.write.flush().await?;
        let answer = tokio::time::timeout(Duration::from_secs(120), self.read.next_line())
            .await
            .context("a worker did not answer within 120 s")??
            .context("a worker exited")?;
        let reply: Reply = serde_json::from_str(&answer)
            .with_context(|| format!("bad worker answer {answer:?}"))?;
        if let Reply::Error { message } = &reply {
            bail!("worker: {message}");
        }
        Ok(reply)
    }

    async fn stop(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(30), self.ask(&Request::Stop)).await;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

struct Fleet(Vec<Worker>);

impl Fleet {
    async fn status(&mut self) -> Result<worker::Status> {
        let mut total = worker::Status::default();
        for w in &mut self.0 {
            if let Reply::Status(s) = w.ask(&Request::Status).await? {
                total.agents += s.agents;
                total.connected_once += s.connected_once;
                total.reconnected_since_mark += s.reconnected_since_mark;
            }
        }
        Ok(total)
    }

    async fn all(&mut self, request: &Request) -> Result<()> {
        for w in &mut self.0 {
            w.ask(request).await?;
        }
        Ok(())
    }

    async fn metrics(&mut self) -> Result<worker::Metrics> {
        let mut total = worker::Metrics::default();
        for w in &mut self.0 {
            if let Reply::Metrics(m) = w.ask(&Request::Metrics).await? {
                for (map, add) in [
                    (&mut total.accepted, m.accepted),
                    (&mut total.started, m.started),
                    (&mut total.rejected, m.rejected),
                ] {
                    for (k, v) in add {
                        *map.entry(k).or_default() += v;
                    }
                }
                total.messages_received += m.messages_received;
                total.acks += m.acks;
                total.safety_events += m.safety_events;
            }
        }
        Ok(total)
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().filter_map(Worker::pid).collect()
    }

    /// Polls until `done(status)` or the timeout; the elapsed time since `since`.
    async fn wait_for(
        &mut self,
        since: Instant,
        timeout: Duration,
        done: impl Fn(&worker::Status) -> bool,
    ) -> Result<(Duration, worker::Status)> {
        loop {
            let s = self.status().await?;
            if done(&s) {
                return Ok((since.elapsed(), s));
            }
            if since.elapsed() > timeout {
                bail!("timed out after {timeout:?}: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// CPU and memory of the parts, between two readings.
struct Probe {
    at: Instant,
    server: procstat::Usage,
    broker: procstat::Usage,
    postgres: procstat::Usage,
    agents: procstat::Usage,
}

impl Probe {
    fn take(broker: Option<u32>, workers: &[u32]) -> Self {
        let mut agents = procstat::Usage::default();
        for pid in workers {
            if let Some(u) = procstat::read(*pid) {
                agents.cpu_s += u.cpu_s;
                agents.rss_mb += u.rss_mb;
                agents.peak_rss_mb += u.peak_rss_mb;
            }
        }
        Self {
            at: Instant::now(),
            server: procstat::read(std::process::id()).unwrap_or_default(),
            broker: broker.and_then(procstat::read).unwrap_or_default(),
            postgres: procstat::read_by_name("postgres"),
            agents,
        }
    }

    /// CPU used since `before` (seconds and % of one core) and memory now.
    fn since(&self, before: &Probe) -> Value {
        let wall = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let part = |a: &procstat::Usage, b: &procstat::Usage| {
            let cpu = a.cpu_s - b.cpu_s;
            json!({
                "cpu_s": (cpu * 100.0).round() / 100.0,
                "cpu_pct": (cpu / wall * 1000.0).round() / 10.0,
                "rss_mb": a.rss_mb.round(),
                "peak_rss_mb": a.peak_rss_mb.round(),
            })
        };
        json!({
            "wall_s": secs(self.at.duration_since(before.at)),
            "server": part(&self.server, &before.server),
            "broker": part(&self.broker, &before.broker),
            "postgres": part(&self.postgres, &before.postgres),
            "agents": part(&self.agents, &before.agents),
        })
    }
}

fn server_config(database_url: &str, pool: u32, mqtt_port: u16) -> Result<Config> {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse()?;
    config.database.url = database_url.to_owned();
    config.database.max_connections = pool;
    config.mqtt.url = format!("mqtt://127.0.0.1:{mqtt_port}");
    let mut secret = [0u8; 32];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = (now_ms() as u64).rotate_left(i as u32) as u8 ^ (i as u8).wrapping_mul(151);
    }
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    config.auth.secret = Some(hex);
    config.validate()?;
    Ok(config)
}

fn bench_schedule(i: usize, start: Timestamp, now: Timestamp) -> Result<Schedule> {
    let spec = worker::bench_spec(i)?;
    let setpoints = (0..SLOTS)
        .map(|s| {
            let kw = match s {
                0..=3 => 1.0,
                40..=43 => -1.0,
                _ => 0.0,
            };
            Power::from_kw(kw)
        })
        .collect::<grid_core::Result<Vec<_>>>()?;
    let initial = Energy::from_kwh(spec.capacity().kwh() * worker::INITIAL_SOC)?;
    Ok(Schedule::planned(
        ScheduleId::new(format!("{}-day", worker::device_name(i)))?,
        DeviceId::new(worker::device_name(i))?,
        ScheduleVersion(1),
        Horizon::new(start, SlotLength::from_seconds(900)?, SLOTS)?,
        setpoints,
        &spec,
        initial,
        now,
    )?)
}

/// Runs `f(i)` for `0..n` with at most `concurrency` at once; returns the failures.
async fn for_all<F, Fut>(n: usize, concurrency: usize, f: F) -> Vec<String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut errors = Vec::new();
    for i in 0..n {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let fut = f(i);
        set.spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        });
        while let Some(done) = set.try_join_next() {
            if let Ok(Err(e)) = done {
                errors.push(format!("{e:#}"));
            }
        }
    }
    while let Some(done) = set.join_next().await {
        if let Ok(Err(e)) = done {
            errors.push(format!("{e:#}"));
        }
    }
    errors
}

async fn bench_with(
    args: &LoadArgs,
    dir: &std::path::Path,
    mosquitto: &mut broker::Broker,
    database: &db::BenchDb,
) -> Result<Value> {
    let t_setup = Instant::now();
    let server =
        grid_server::server::serve(server_config(&database.url, args.db_pool, mosquitto.port)?)
            .await
            .context("starting the server")?;
    let result = bench_server(args, dir, mosquitto, database, &server).await;
    let _ = server.shutdown().await;
    let mut summary = result?;
    summary["total_s"] = json!(secs(t_setup.elapsed()));
    Ok(summary)
}

async fn bench_server(
    args: &LoadArgs,
    dir: &std::path::Path,
    mosquitto: &mut broker::Broker,
    database: &db::BenchDb,
    server: &RunningServer,
) -> Result<Value> {
    let n = args.devices;
    let store: Arc<dyn Store> = server.store.clone();
    let pg = database.pool().await?;
    let mut summary = json!({
        "devices": n,
        "machine": { "cpus": std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0),
                      "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim() },
        "broker": "mosquitto (deploy/mosquitto/mosquitto-local.conf)",
        "database": if args.pg_async_commit { "postgresql (fresh database, synchronous_commit = off)" } else { "postgresql (fresh database, default synchronous_commit)" },
        "store_pool": args.db_pool,
    });

    // --- Registration (through the Store) -------------------------------------------------
    progress(&format!("registering {n} devices"));
    let t = Instant::now();
    let now = Timestamp::now();
    let site = SiteId::new("load-site")?;
    store
        .upsert_site(
            &SiteRecord {
                id: site.clone(),
                tenant: "load".into(),
                name: Some("grid-sim load benchmark".into()),
                feeder: None,
                grid: GridConnection::new(100_000.0, 100_000.0)?,
                demand_charge: DemandCharge::NONE,
                tariff: None,
                price_series: None,
                created_at: now,
                updated_at: now,
            },
            now,
        )
        .await?;
    let errors = for_all(n, 32, |i| {
        let store = store.clone();
        let site = site.clone();
        async move {
            let device = NewDevice {
                id: DeviceId::new(worker::device_name(i))?,
                tenant: "load".into(),
                site,
                spec: worker::bench_spec(i)?,
                label: None,
                codec: PayloadCodec::Json,
            };
            store.register_device(&device, Timestamp::now()).await?;
            Ok(())
        }
    })
    .await;
    if let Some(e) = errors.first() {
        bail!("registering devices: {} failures, first: {e}", errors.len());
    }
    summary["setup"] = json!({ "register_s": secs(t.elapsed()) });

    // --- Agents -----------------------------------------------------------------------------
    let procs = worker_procs(args);
    progress(&format!(
        "starting {n} agents ({} stores, {} worker process(es)), waiting for every connect and hello",
        args.agent_store.as_str(),
        procs
    ));
    let t = Instant::now();
    let hello_from = now_ms();
    let mut fleet = start_workers(args, mosquitto.port, WorkerRole::Agents, args.jitter_ms).await?;
    let outcome = bench_fleet(
        args,
        dir,
        mosquitto,
        server,
        &pg,
        &mut fleet,
        &mut summary,
        t,
        hello_from,
    )
    .await;
    for w in fleet.0 {
        w.stop().await;
    }
    pg.close().await;
    outcome?;
    summary["agent_processes"] = json!(procs);
    summary["agent_store"] = json!(args.agent_store.as_str());
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn bench_fleet(
    args: &LoadArgs,
    dir: &std::path::Path,
    mosquitto: &mut broker::Broker,
    server: &RunningServer,
    pg: &sqlx::PgPool,
    fleet: &mut Fleet,
    summary: &mut Value,
    t_agents: Instant,
    hello_from: i64,
) -> Result<()> {
    let n = args.devices;
    let store = server.store.clone();
    let (connected, _) = fleet
        .wait_for(t_agents, Duration::from_secs(300), |s| {
            s.connected_once >= n
        })
        .await
        .context("waiting for every agent to connect")?;
    let hellos = wait_pg(
        pg,
        t_agents,
        Duration::from_secs(120),
        n as i64,
        PgCount::SeenSince(hello_from),
        || true,
    )
    .await
    .context("waiting for the server to record every agent's hello")?;
    summary["setup"]["connect_all_s"] = json!(secs(connected));
    summary["setup"]["hello_recorded_all_s"] = json!(secs(hellos));
    summary["setup"]["connect_jitter_ms"] = json!(args.jitter_ms);

    // --- Stage one day's schedule per device (stored, not yet published) ----------------------
    let now = Timestamp::now();
    let start = grid_core::time::floor_to_slot(now, SlotLength::from_seconds(900)?)?;
    let t = Instant::now();
    let schedules: Vec<Schedule> = (0..n)
        .map(|i| bench_schedule(i, start, now))
        .collect::<Result<_>>()?;
    let schedules = Arc::new(schedules);
    let errors = for_all(n, 32, |i| {
        let store = store.clone();
        let schedules = schedules.clone();
        async move {
            let new = NewSchedule {
                schedule: schedules[i].clone(),
                correlation_id: None,
            };
            store.create_schedule(&new, Timestamp::now()).await?;
            Ok(())
        }
    })
    .await;
    if let Some(e) = errors.first() {
        bail!("storing schedules: {} failures, first: {e}", errors.len());
    }
    summary["setup"]["store_schedules_s"] = json!(secs(t.elapsed()));
    // Table statistics, as a running server's database has them: autovacuum analyzes a table
    // within a minute of its first 10 % of changes, but this database is seconds old, and
    // without statistics the planner costs the publish's joins as if every table were empty.
    sqlx::query("ANALYZE")
        .execute(pg)
        .await
        .context("analyzing the benchmark database")?;
    // Let the connect-time traffic settle so the publish is measured alone.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // --- Publish -----------------------------------------------------------------------------
    let broker_pid = mosquitto.pid();
    let before = Probe::take(broker_pid, &fleet.pids());
    let t0_ms = now_ms();
    // The instant lets a broker-side probe (`mosquitto_sub -F %U`) line its times up with ours.
    progress(&format!(
        "publishing {n} schedules at {t0_ms} (Unix ms), waiting until every acceptance is recorded"
    ));
    let t0 = Instant::now();
    let transport = server.transport.clone();
    let batch = args.publish_batch.max(1);
    let publish_errors = for_all(n.div_ceil(batch), args.publish_concurrency, |b| {
        let transport = transport.clone();
        let schedules = schedules.clone();
        async move {
            let chunk = &schedules[b * batch..((b + 1) * batch).min(schedules.len())];
            if let [one] = chunk {
                transport.distribute(one, None).await?;
                return Ok(());
            }
            let refs: Vec<(&Schedule, Option<&str>)> = chunk.iter().map(|s| (s, None)).collect();
            let failed: Vec<String> = transport
                .distribute_many(&refs)
                .await
                .into_iter()
                .filter_map(|r| r.err().map(|e| e.to_string()))
                .collect();
            if let Some(first) = failed.first() {
                bail!(
                    "{} of {} schedules not distributed, first: {first}",
                    failed.len(),
                    chunk.len()
                );
            }
            Ok(())
        }
    })
    .await;
    let publish_calls = t0.elapsed();
    // The server counts an acceptance after its commit, so the PostgreSQL count cannot reach `n`
    // before the counter does: PostgreSQL is asked (a scan of the schedules) only then.
    let recorded = wait_pg(
        pg,
        t0,
        Duration::from_secs(120),
        n as i64,
        PgCount::Accepted,
        || transport.stats().acceptances >= n as u64,
    )
    .await;
    let after = Probe::take(broker_pid, &fleet.pids());
    let mut sent = Vec::new();
    let mut agent_ack = Vec::new();
    let mut received = Vec::new();
    for (s, a, r) in db::accept_times(pg, SCHEDULE_PREFIX).await? {
        if let Some(s) = s {
            sent.push((s - t0_ms) as f64);
        }
        agent_ack.push((a - t0_ms) as f64);
        received.push((r - t0_ms) as f64);
    }
    let (accepted_rows, accepted_devices) = db::acceptance_acks(pg, SCHEDULE_PREFIX).await?;
    let mut answered = Vec::new();
    let mut first_send = Vec::new();
    for (s, a) in db::schedule_times(pg, SCHEDULE_PREFIX).await? {
        if let Some(s) = s {
            first_send.push((s - t0_ms) as f64);
        }
        if let Some(a) = a {
            answered.push((a - t0_ms) as f64);
        }
    }
    let schedules_accepted = db::schedules_accepted(pg, SCHEDULE_PREFIX).await?;
    summary["publish"] = json!({
        "publish_calls_s": secs(publish_calls),
        "publish_errors": publish_errors.len(),
        "first_publish_error": publish_errors.first(),
        "all_accepted_recorded_s": recorded.as_ref().ok().map(|d| secs(*d)),
        "not_recorded_error": recorded.as_ref().err().map(|e| format!("{e:#}")),
        "accepted_recorded_ms": percentiles(&mut answered),
        "schedules_first_send_ms": percentiles(&mut first_send),
        "schedules_recorded_accepted": schedules_accepted,
        "ack_rows_accepted_recorded_ms": percentiles(&mut received),
        "agent_ack_sent_ms": percentiles(&mut agent_ack),
        "server_first_send_ms": percentiles(&mut sent),
        "accepted_ack_rows": accepted_rows,
        "accepted_devices": accepted_devices,
        "usage": after.since(&before),
        "transport": format!("{:?}", server.transport.stats()),
    });

    // --- Executions (agents' counters; they refresh on the agents' tick) ----------------------
    progress("counting executions (one agent tick)");
    tokio::time::sleep(Duration::from_millis(args.tick_ms + 1500)).await;
    let metrics = fleet.metrics().await?;
    let started_once = metrics.started.get("1").copied().unwrap_or(0);
    let lost = metrics.started.get("0").copied().unwrap_or(0);
    let duplicated: usize = metrics
        .started
        .iter()
        .filter(|(k, _)| k.parse::<u64>().map_or(true, |c| c > 1))
        .map(|(_, v)| *v)
        .sum();
    let (exec_rows, exec_devices) = db::ack_rows(pg, SCHEDULE_PREFIX, "executing").await?;
    summary["executions"] = json!({
        "agents_started_once": started_once,
        "lost": lost,
        "duplicated": duplicated,
        "started_histogram": metrics.started,
        "accepted_histogram": metrics.accepted,
        "rejected_histogram": metrics.rejected,
        "agent_acks": metrics.acks,
        "safety_events": metrics.safety_events,
        "executing_ack_rows": exec_rows,
        "executing_devices": exec_devices,
        "schedule_states": db::schedule_states(pg, SCHEDULE_PREFIX).await?,
    });

    // --- Reconnect storms ---------------------------------------------------------------------
    if !args.skip_storm {
        progress("reconnect storm with jitter, then without");
        let mut storms = Vec::new();
        storms.push(storm(args.jitter_ms, mosquitto, pg, fleet, n).await?);
        // Restart the agents without jitter (their stores survive), then storm again.
        let t = Instant::now();
        let from = now_ms();
        fleet
            .all(&Request::Restart {
                reconnect_min_ms: 0,
            })
            .await?;
        let (connected, _) = fleet
            .wait_for(t, Duration::from_secs(300), |s| s.connected_once >= n)
            .await
            .context("agents reconnecting after a restart without jitter")?;
        let hellos = wait_pg(
            pg,
            t,
            Duration::from_secs(120),
            n as i64,
            PgCount::SeenSince(from),
            || true,
        )
        .await?;
        summary["setup"]["restart_without_jitter_connect_all_s"] = json!(secs(connected));
        summary["setup"]["restart_without_jitter_hello_recorded_all_s"] = json!(secs(hellos));
        tokio::time::sleep(Duration::from_secs(2)).await;
        storms.push(storm(0, mosquitto, pg, fleet, n).await?);
        summary["reconnect_storms"] = json!(storms);
    }

    // --- API load test ------------------------------------------------------------------------
    if !args.skip_api {
        progress(&format!(
            "API load: {} requests/s for {} s",
            args.api_rate, args.api_seconds
        ));
        summary["api"] = match api_test(args, dir, server, start, mosquitto.pid(), fleet).await {
            Ok(v) => v,
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
    }
    Ok(())
}

/// One line of progress on stderr (the summary goes to stdout).
fn progress(what: &str) {
    eprintln!("grid-sim load: {what}");
}

/// What [`wait_pg`] counts.
#[derive(Debug, Clone, Copy)]
enum PgCount {
    /// Devices whose status was recorded at or after this instant (ms).
    SeenSince(i64),
    /// Benchmark schedules whose lifecycle is recorded as accepted or later.
    Accepted,
}

/// Polls the count every 10 ms until it reaches `target`; the time since `since`. While
/// `ready()` says the target cannot have been reached yet, the polls are 500 ms apart: each is a
/// scan that grows with the fleet, a load on the PostgreSQL being measured.
async fn wait_pg(
    pg: &sqlx::PgPool,
    since: Instant,
    timeout: Duration,
    target: i64,
    what: PgCount,
    ready: impl Fn() -> bool,
) -> Result<Duration> {
    loop {
        let c = match what {
            PgCount::SeenSince(ms) => db::devices_seen_since(pg, ms).await?,
            PgCount::Accepted => db::schedules_accepted(pg, SCHEDULE_PREFIX).await?,
        };
        if c >= target {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            bail!("only {c} of {target} after {timeout:?}");
        }
        let slow = Instant::now() + Duration::from_millis(500);
        tokio::time::sleep(Duration::from_millis(10)).await;
        while !ready() && Instant::now() < slow {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Kills the broker (every connection drops at once), starts it again and measures the time until
/// every agent has reconnected and the server has recorded every agent's hello.
async fn storm(
    jitter_ms: u64,
    mosquitto: &mut broker::Broker,
    pg: &sqlx::PgPool,
    fleet: &mut Fleet,
    n: usize,
) -> Result<Value> {
    fleet.all(&Request::Mark).await?;
    let before = Probe::take(mosquitto.pid(), &fleet.pids());
    let t_kill = Instant::now();
    let kill_ms = now_ms();
    mosquitto.kill().await?;
    // A moment for every client to notice the loss before the broker is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    mosquitto.restart().await?;
    let t_up = Instant::now();
    let (reconnected, _) = fleet
        .wait_for(t_up, Duration::from_secs(300), |s| {
            s.reconnected_since_mark >= n
        })
        .await
        .context("waiting for every agent to reconnect")?;
    let hellos = wait_pg(
        pg,
        t_up,
        Duration::from_secs(300),
        n as i64,
        PgCount::SeenSince(kill_ms),
        || true,
    )
    .await
    .context("waiting for the server to record every hello after the storm")?;
    let after = Probe::take(mosquitto.pid(), &fleet.pids());
    Ok(json!({
        "jitter_ms": jitter_ms,
        "broker_down_s": secs(t_up.duration_since(t_kill)),
        "all_reconnected_s": secs(reconnected),
        "all_hellos_recorded_s": secs(hellos),
        "usage": after.since(&before),
    }))
}

async fn api_test(
    args: &LoadArgs,
    dir: &std::path::Path,
    server: &RunningServer,
    start: Timestamp,
    broker_pid: Option<u32>,
    fleet: &Fleet,
) -> Result<Value> {
    if !api::wrk_available() {
        return Ok(json!({ "skipped": format!("wrk is not installed ({})", api::INSTALL_HINT) }));
    }
    // A day of 15-minute telemetry for the devices the API test addresses.
    let addressed = args.devices.min(500);
    let store = server.store.clone();
    let mut batch = Vec::new();
    for i in 0..addressed {
        let device = DeviceId::new(worker::device_name(i))?;
        for s in 0..SLOTS {
            let at = start.checked_add(jiff::SignedDuration::from_secs(900 * s as i64))?;
            batch.push((
                device.clone(),
                TelemetrySample {
                    at,
                    soc: Soc::from_fraction(0.5)?,
                    power: Power::from_kw(0.0)?,
                    voltage_v: 51.2,
                    current_a: 0.0,
                    temperature: Temperature::from_celsius(25.0)?,
                    alarms: Alarms::NONE,
                },
            ));
        }
    }
    for chunk in batch.chunks(5000) {
        store.insert_telemetry(chunk).await?;
    }
    let token = server.auth.mint(
        "grid-sim-load",
        Role::Operator,
        None,
        Some(Duration::from_secs(3600)),
    )?;
    let end = start.checked_add(jiff::SignedDuration::from_hours(24))?;
    let workload = api::Workload {
        addr: server.local_addr,
        token,
        devices: (0..addressed)
            .map(|i| {
                (
                    worker::device_name(i),
                    format!("{}-day", worker::device_name(i)),
                )
            })
            .collect(),
        telemetry_from: start.to_string(),
        telemetry_to: end.to_string(),
        schedule_start: start.to_string(),
    };
    let delay_ms = api::calibrate(&workload, dir, args.api_rate).await?;
    let before = Probe::take(broker_pid, &fleet.pids());
    let metrics_before = grid_server::metrics::handle().render();
    let result = api::run_wrk(
        &workload,
        dir,
        api::CONNECTIONS,
        Duration::from_secs(args.api_seconds),
        delay_ms,
    )
    .await?;
    let after = Probe::take(broker_pid, &fleet.pids());
    let mut v = serde_json::to_value(&result)?;
    v["target_rate"] = json!(args.api_rate);
    v["mix"] = json!(
        "30% device status, 25% schedule status, 25% telemetry range (1 day, hourly buckets), 10% schedule creation (published), 10% set-power commands"
    );
    v["usage"] = after.since(&before);
    v["server_routes"] =
        api::route_latencies(&metrics_before, &grid_server::metrics::handle().render());
    Ok(v)
}

/// The human-readable table of a summary.
pub fn table(s: &Value) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<48} {v}\n"));
    let f = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let pct = |v: &Value| {
        if v.is_null() {
            "-".to_owned()
        } else {
            format!(
                "p50 {} / p99 {} / max {} ms",
                f(&v["p50"]),
                f(&v["p99"]),
                f(&v["max"])
            )
        }
    };
    row("devices", f(&s["devices"]));
    row("agent processes", f(&s["agent_processes"]));
    row(
        "register (store)",
        format!("{} s", f(&s["setup"]["register_s"])),
    );
    row(
        "connect all (jittered)",
        format!("{} s", f(&s["setup"]["connect_all_s"])),
    );
    row(
        "publish: distribute calls done",
        format!("{} s", f(&s["publish"]["publish_calls_s"])),
    );
    row(
        "publish: all accepted + recorded",
        format!("{} s", f(&s["publish"]["all_accepted_recorded_s"])),
    );
    row(
        "bare-MQTT reference: all answered",
        format!("{} s", f(&s["reference"]["all_answered_s"])),
    );
    row(
        "  publish / bare-MQTT reference",
        format!("{} x", f(&s["publish"]["ratio_to_bare_mqtt"])),
    );
    row(
        "  accepted ack recorded (from publish)",
        pct(&s["publish"]["accepted_recorded_ms"]),
    );
    row(
        "  agent ack sent (from publish)",
        pct(&s["publish"]["agent_ack_sent_ms"]),
    );
    row(
        "  server first send (from publish)",
        pct(&s["publish"]["server_first_send_ms"]),
    );
    row(
        "acks recorded in PostgreSQL (devices)",
        f(&s["publish"]["accepted_devices"]),
    );
    row(
        "executions lost / duplicated",
        format!(
            "{} / {}",
            f(&s["executions"]["lost"]),
            f(&s["executions"]["duplicated"])
        ),
    );
    let u = &s["publish"]["usage"];
    for part in ["server", "broker", "postgres", "agents"] {
        row(
            &format!("  {part} during publish"),
            format!(
                "{} % CPU, {} MB RSS (peak {})",
                f(&u[part]["cpu_pct"]),
                f(&u[part]["rss_mb"]),
                f(&u[part]["peak_rss_mb"])
            ),
        );
    }
    if let Some(storms) = s["reconnect_storms"].as_array() {
        for st in storms {
            row(
                &format!("reconnect storm, jitter {} ms", f(&st["jitter_ms"])),
                format!(
                    "all reconnected {} s, all hellos recorded {} s",
                    f(&st["all_reconnected_s"]),
                    f(&st["all_hellos_recorded_s"])
                ),
            );
        }
    }
    let a = &s["api"];
    if !a.is_null() {
        row(
            "API mixed load",
            format!(
                "{} req/s: p50 {} / p95 {} / p99 {} ms, {} errors {}",
                f(&a["rate"]),
                f(&a["p50_ms"]),
                f(&a["p95_ms"]),
                f(&a["p99_ms"]),
                f(&a["http_errors"]),
                a["errors_by_status"]
            ),
        );
        if let Some(routes) = a["server_routes"].as_object() {
            for (route, r) in routes {
                row(
                    &format!("  server: {route}"),
                    format!(
                        "{} requests, mean {} ms, {} % over 10 ms, {} % over 25 ms",
                        f(&r["requests"]),
                        f(&r["mean_ms"]),
                        f(&r["over_10ms_pct"]),
                        f(&r["over_25ms_pct"])
                    ),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&mut v);
        assert_eq!(
            (p["p50"].as_f64(), p["p99"].as_f64(), p["max"].as_f64()),
            (Some(50.0), Some(99.0), Some(100.0))
        );
        assert!(percentiles(&mut []).is_null());
    }

    #[test]
    fn bench_schedules_are_valid_days() {
        let start: Timestamp = "2026-11-27T00:00:00Z".parse().unwrap();
        let s = bench_schedule(7, start, start).unwrap();
        assert_eq!(s.horizon().len(), SLOTS);
        assert_eq!(s.device().as_str(), "load-00007");
    }
}
