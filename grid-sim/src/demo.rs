//! The fleet demo: a server on embedded defaults (or on PostgreSQL / an external broker when
//! `DATABASE_URL` / `MQTT_URL` are set), N real agents on simulated batteries, one optimised day
//! on an accelerated clock, and a summary against two baselines.

use crate::baseline::{do_nothing_cost, energy_cost, greedy_cost};
use crate::fleet::{FleetSettings, SimAgent, start_agents};
use crate::http::ApiClient;
use crate::observer::Observer;
use crate::report::{Latency, Report};
use crate::scenario::{DT_HOURS, SLOTS, Scenario, fleet_net};
use anyhow::{Context, Result, bail};
use grid_agent::shell::{Clock, ScaledClock};
use grid_core::{ExecutionState, SlotLength, Timestamp};
use grid_optimize::{Solver, solver::DefaultSolver};
use grid_server::auth::Role;
use grid_server::config::Config as ServerConfig;
use serde_json::json;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `grid-sim demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of simulated homes (each a real agent with its own MQTT connection).
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Clock speed-up: 720 runs the simulated day in two minutes.
    #[arg(long, default_value_t = 720.0)]
    pub speed: f64,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Keep the server running at the end so the API can be explored (Ctrl-C stops it).
    #[arg(long)]
    pub serve: bool,
    /// Where the API listens with `--serve` (otherwise an ephemeral port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seed of the generated fleet.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Feeder limits as a fraction of the fleet's do-nothing peaks.
    #[arg(long, default_value_t = 0.8)]
    pub feeder_fraction: f64,
    /// Directory for the demo's SQLite files (default: a new temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The server's database: `postgres://…` (default: a SQLite file in the work directory).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// An external MQTT broker, `mqtt://host:port` (default: the server's embedded rumqttd).
    #[arg(long, env = "MQTT_URL")]
    pub mqtt_url: Option<String>,
}

impl DemoArgs {
    /// The command's defaults for `devices` homes at `speed`× on embedded SQLite and rumqttd
    /// (what `grid-sim demo --devices N --speed X` runs without `DATABASE_URL` / `MQTT_URL`).
    pub fn new(devices: usize, speed: f64) -> Self {
        Self {
            devices,
            speed,
            report: None,
            serve: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            seed: 2026,
            feeder_fraction: 0.8,
            work_dir: None,
            database_url: None,
            mqtt_url: None,
        }
    }
}

/// Runs the demo and returns its report.
pub async fn run(args: DemoArgs) -> Result<Report> {
    if args.devices == 0 || args.devices > 5_000 {
        bail!("--devices must be between 1 and 5000 (the load tool covers larger fleets)");
    }
    if !(args.speed.is_finite() && (1.0..=100_000.0).contains(&args.speed)) {
        bail!("--speed must be between 1 and 100000");
    }
    let wall = Instant::now();
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "grid-sim-demo-{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond()
        )),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;

    // The simulated day is tomorrow (UTC): schedules are made day-ahead, as in production.
    let now = Timestamp::now();
    let start = grid_core::time::floor_to_slot(now, SlotLength::from_seconds(86_400)?)?
        .checked_add(jiff::SignedDuration::from_hours(24))?;
    let scenario = Scenario::generate(args.devices, args.seed, start, args.feeder_fraction)?;
    eprintln!(
        "grid-sim demo: {} homes, day {} (prices EPEX DE 6 Jul 2015, SimBench household and PV profiles of 4 Jul 2016)",
        args.devices,
        start.strftime("%Y-%m-%d")
    );

    // 1. The server.
    let (server, backend, (mqtt_host, mqtt_port)) = start_server(&args, &work_dir).await?;
    let token = server
        .auth
        .mint(
            "grid-sim",
            Role::Admin,
            None,
            Some(Duration::from_secs(7 * 86_400)),
        )
        .context("minting the demo's token")?;
    let api = ApiClient::new(server.local_addr, token.clone());
    eprintln!("server: http://{} ({backend})", server.local_addr);

    // 2. Sites and devices through the REST API.
    api.ok(
        "PUT",
        "/api/v1/feeders/feeder-demo",
        Some(&json!({"name": "demo feeder"})),
    )
    .await?;
    let progress = Progress::new("registering", scenario.homes.len());
    for (i, home) in scenario.homes.iter().enumerate() {
        api.ok(
            "PUT",
            &format!("/api/v1/sites/{}", home.site),
            Some(&json!({
                "name": format!("home {i}"),
                "feeder": "feeder-demo",
                "import_limit_kw": home.grid_import_max,
                "export_limit_kw": home.grid_export_max,
            })),
        )
        .await?;
        let p = home.spec.params();
        let spec = json!({
            "capacity_kwh": p.capacity_kwh,
            "min_energy_kwh": p.min_energy_kwh,
            "max_energy_kwh": p.max_energy_kwh,
            "max_charge_kw": p.max_charge_kw,
            "max_discharge_kw": p.max_discharge_kw,
            "charge_efficiency": p.charge_efficiency,
            "discharge_efficiency": p.discharge_efficiency,
            "degradation_cost_per_kwh": p.degradation_cost_per_kwh,
            "min_temperature_c": p.min_temperature_c,
            "max_temperature_c": p.max_temperature_c,
        });
        let created = api
            .call(
                "POST",
                "/api/v1/devices",
                Some(&json!({
                    "id": home.device.as_str(),
                    "site": home.site,
                    "label": home.system,
                    "spec": spec,
                })),
            )
            .await?;
        match created.status {
            200..=299 => {}
            // Registered by an earlier run on this database: this run's site, label and spec.
            409 => {
                api.ok(
                    "PATCH",
                    &format!("/api/v1/devices/{}", home.device),
                    Some(&json!({ "site": home.site, "label": home.system, "spec": spec })),
                )
                .await
                .with_context(|| {
                    format!("updating {}, registered by an earlier run", home.device)
                })?;
            }
            status => bail!(
                "POST /api/v1/devices ({}) answered {status}: {}",
                home.device,
                created.body
            ),
        }
        progress.set(i + 1);
    }
    progress.done();

    // 3. The optimiser, for the whole fleet under the feeder envelope.
    let problem = scenario.problem();
    let solve_started = Instant::now();
    let solution = DefaultSolver::default()
        .solve(&problem)
        .context("the optimiser refused the demo's problem")?;
    let optimiser_ms = solve_started.elapsed().as_secs_f64() * 1000.0;
    if !solution.is_optimal() {
        bail!(
            "the optimiser found no plan: {} (try a larger --feeder-fraction)",
            solution.status.as_str()
        );
    }
    eprintln!(
        "optimiser: {} homes × {SLOTS} slots in {optimiser_ms:.1} ms ({}), objective {:.2} EUR",
        args.devices, solution.diagnostics.method, solution.objective
    );

    // 4. The agents, and an independent observer on the broker.
    let observer = Observer::start(&mqtt_host, mqtt_port).await?;
    // The clock stands at the day's start until every schedule is out, so a large fleet's
    // connect and publish phase does not eat into the simulated day.
    let clock = Arc::new(DayClock::new(start, args.speed));
    let settings = FleetSettings {
        host: mqtt_host.clone(),
        port: mqtt_port,
        clock: clock.clone(),
        // About ten ticks per 15-minute slot of simulated time, within 20–250 ms of real time.
        tick_interval: Duration::from_secs_f64((90.0 / args.speed).clamp(0.02, 0.25)),
        telemetry_interval: Duration::from_secs(900),
        reversion_timeout: Duration::from_secs(3600),
        store_dir: work_dir.clone(),
    };
    let mut agents = start_agents(&scenario.homes, &settings).await?;
    wait_connected(&agents, Duration::from_secs(60)).await?;

    // 5. Publish one schedule per device through the API.
    // This run's schedules are the ones created from here on (the database may hold earlier
    // runs').
    let publish_started = grid_core::Timestamp::now();
    let progress = Progress::new("publishing", scenario.homes.len());
    let mut published = 0usize;
    for (i, (home, site)) in scenario.homes.iter().zip(&solution.sites).enumerate() {
        let setpoints: Vec<f64> = (0..SLOTS).map(|t| site.battery_power(t)).collect();
        api.ok(
            "POST",
            "/api/v1/schedules",
            Some(&json!({
                "id": format!("day-{}-{}", start.strftime("%Y%m%d"), home.device),
                "device": home.device.as_str(),
                "start": start.to_string(),
                "slot_seconds": 900,
                "setpoints_kw": setpoints,
                "initial_energy_kwh": home.initial_energy.kwh(),
            })),
        )
        .await
        .with_context(|| format!("publishing the schedule of {}", home.device))?;
        published += 1;
        progress.set(i + 1);
    }
    progress.done();
    let acks = wait_acked(
        &api,
        publish_started,
        published,
        Duration::from_secs(30 + published as u64 / 10),
    )
    .await?;
    if acks.rejected > 0 {
        eprintln!(
            "warning: {} device(s) rejected their schedule (see GET /api/v1/schedules?state=rejected)",
            acks.rejected
        );
    }

    // 6. Run the day.
    clock.release();
    let end = start.checked_add(jiff::SignedDuration::from_hours(24))?;
    let day_real = Duration::from_secs_f64(86_400.0 / args.speed);
    eprintln!(
        "simulating the day: {:.0} s of wall time at {}×",
        day_real.as_secs_f64(),
        args.speed
    );
    let bar = Progress::new("day", SLOTS);
    loop {
        let t = clock.now();
        let slot = ((t.as_second() - start.as_second()).max(0) / 900) as usize;
        let (accepted, executing) = {
            let seen = observer
                .seen
                .lock()
                .map_err(|_| anyhow::anyhow!("observer poisoned"))?;
            (seen.accepted.len(), seen.count(ExecutionState::Executing))
        };
        let fleet_kw: f64 = agents.iter().map(|a| a.snapshot().applied_kw).sum();
        let online = agents
            .iter()
            .filter(|a| a.snapshot().engine.connected)
            .count();
        bar.status(
            slot.min(SLOTS),
            &format!(
                "{} | online {online}/{} | accepted {accepted} executing {executing} | fleet battery {fleet_kw:+.1} kW",
                t.strftime("%H:%M"),
                agents.len()
            ),
        );
        if t >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.done();

    // 7. Summarise.
    let acks = schedule_states(&api, publish_started).await?;
    let report = summarise(
        &acks,
        &args,
        &scenario,
        &solution,
        &agents,
        &observer,
        published,
        optimiser_ms,
        &backend,
        wall,
    )?;
    for a in agents.iter_mut() {
        a.stop().await?;
    }
    observer.stop().await;
    println!("{}", report.table());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if args.serve {
        eprintln!(
            "\nThe API stays up at http://{}  (OpenAPI: /openapi.json, docs: /docs). Ctrl-C stops it.\nToken (admin, 7 days):\n{token}\n",
            server.local_addr
        );
        tokio::signal::ctrl_c().await.ok();
    }
    server.shutdown().await.context("stopping the server")?;
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    Ok(report)
}

async fn start_server(
    args: &DemoArgs,
    work_dir: &std::path::Path,
) -> Result<(grid_server::server::RunningServer, String, (String, u16))> {
    let mut config = ServerConfig::default();
    config.http.listen = if args.serve {
        args.listen
    } else {
        "127.0.0.1:0".parse()?
    };
    config.http.max_page_size = config.http.max_page_size.max(1000);
    let db = args.database_url.clone().filter(|u| !u.is_empty());
    let mqtt = args.mqtt_url.clone().filter(|u| !u.is_empty());
    config.database.url = match &db {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", work_dir.join("grid-demo.db").display()),
    };
    config.auth.key_file = Some(work_dir.join("grid-demo.jwt-key"));
    config.mqtt.url = mqtt.clone().unwrap_or_default();
    let broker = match &mqtt {
        Some(url) => {
            let (_tls, host, port) = grid_server::config::parse_mqtt_url(url)
                .map_err(|e| anyhow::anyhow!("MQTT_URL: {e}"))?;
            (host, port)
        }
        None => {
            config.mqtt.listen = free_local_port()?;
            (
                config.mqtt.listen.ip().to_string(),
                config.mqtt.listen.port(),
            )
        }
    };
    let backend = format!(
        "{} + {}",
        if db.is_some() { "PostgreSQL" } else { "SQLite" },
        if mqtt.is_some() {
            "MQTT broker"
        } else {
            "embedded rumqttd"
        }
    );
    let server = grid_server::server::serve(config)
        .await
        .context("starting the server")?;
    Ok((server, backend, broker))
}

fn free_local_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

async fn wait_connected(agents: &[SimAgent], timeout: Duration) -> Result<()> {
    let bar = Progress::new("connecting", agents.len());
    let deadline = Instant::now() + timeout;
    loop {
        let online = agents
            .iter()
            .filter(|a| a.snapshot().engine.connected)
            .count();
        bar.set(online);
        if online == agents.len() {
            bar.done();
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {online} of {} agents connected within {timeout:?}",
                agents.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the server's records say the devices answered their schedules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AckCount {
    /// Accepted (and possibly executing or completed since).
    accepted: usize,
    /// Refused by the device.
    rejected: usize,
    /// No answer yet.
    waiting: usize,
}

/// Counts the lifecycle states of the schedules created since `since` as the server recorded
/// them (every page).
async fn schedule_states(api: &ApiClient, since: grid_core::Timestamp) -> Result<AckCount> {
    let mut count = AckCount::default();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(c) => format!("/api/v1/schedules?limit=500&created_from={since}&after={c}"),
            None => format!("/api/v1/schedules?limit=500&created_from={since}"),
        };
        let page = api.ok("GET", &path, None).await?;
        let items = page["items"]
            .as_array()
            .context("the schedule list has no items")?;
        for item in items {
            match item["state"].as_str().unwrap_or_default() {
                "accepted" | "executing" | "completed" => count.accepted += 1,
                "rejected" => count.rejected += 1,
                _ => count.waiting += 1,
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => return Ok(count),
        }
    }
}

/// Waits until every published schedule is answered (accepted or rejected), with a progress bar.
async fn wait_acked(
    api: &ApiClient,
    since: grid_core::Timestamp,
    published: usize,
    timeout: Duration,
) -> Result<AckCount> {
    let bar = Progress::new("acking", published);
    let deadline = Instant::now() + timeout;
    loop {
        let count = schedule_states(api, since).await?;
        bar.status(
            count.accepted + count.rejected,
            &format!("accepted {} rejected {}", count.accepted, count.rejected),
        );
        if count.accepted + count.rejected >= published {
            bar.done();
            return Ok(count);
        }
        if Instant::now() > deadline {
            bar.done();
            eprintln!(
                "warning: {} schedule(s) still unanswered after {timeout:?}; the day starts anyway",
                count.waiting
            );
            return Ok(count);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    acks: &AckCount,
    args: &DemoArgs,
    s: &Scenario,
    solution: &grid_optimize::FleetSolution,
    agents: &[SimAgent],
    observer: &Observer,
    published: usize,
    optimiser_ms: f64,
    backend: &str,
    wall: Instant,
) -> Result<Report> {
    let mut violations = 0u64;
    let mut interventions = 0u64;
    let mut cost_grid = 0.0;
    let mut plan_vs_actual = 0.0;
    let mut nets = Vec::with_capacity(agents.len());
    for ((agent, home), site) in agents.iter().zip(&s.homes).zip(&solution.sites) {
        let log = agent
            .log
            .lock()
            .map_err(|_| anyhow::anyhow!("battery log poisoned"))?
            .clone();
        violations += log.violations;
        interventions += agent.snapshot().safety_events;
        let net: Vec<f64> = home
            .base_net_kw()
            .iter()
            .zip(&log.delivered_kwh)
            .map(|(b, e)| b + e / DT_HOURS)
            .collect();
        cost_grid += energy_cost(&s.import_price, &s.export_price, &net);
        plan_vs_actual += (0..SLOTS)
            .map(|t| (site.battery_power(t) * DT_HOURS - log.delivered_kwh[t]).abs())
            .sum::<f64>();
        nets.push(net);
    }
    let fleet = fleet_net(nets.into_iter());
    let (cost_greedy, greedy_peak) = greedy_cost(s);
    let base_peak = fleet_net(s.homes.iter().map(|h| h.base_net_kw()))
        .into_iter()
        .fold(f64::MIN, f64::max);
    let seen = observer
        .seen
        .lock()
        .map_err(|_| anyhow::anyhow!("observer poisoned"))?;
    let mut latencies = seen.latencies_ms();
    Ok(Report {
        devices: s.homes.len(),
        schedules_published: published,
        schedules_acked: acks.accepted,
        schedules_rejected: acks.rejected,
        safety_violations: violations,
        safety_interventions: interventions,
        cost_grid,
        cost_do_nothing: do_nothing_cost(s),
        cost_greedy,
        feeder_peak_kw: fleet.iter().cloned().fold(f64::MIN, f64::max),
        feeder_limit_kw: s.feeder_import_kw,
        feeder_peak_do_nothing_kw: base_peak,
        feeder_peak_greedy_kw: greedy_peak,
        delivery_latency_ms: Latency::of(&mut latencies),
        plan_vs_actual_kwh: plan_vs_actual,
        optimiser_objective: solution.objective,
        optimiser_ms,
        simulated_hours: 24.0,
        speed: args.speed,
        wall_seconds: wall.elapsed().as_secs_f64(),
        backend: backend.to_string(),
    })
}

/// The demo's clock: it stands at the start of the day until [`DayClock::release`], then runs
/// `speed` times faster than real time.
struct DayClock {
    start: Timestamp,
    speed: f64,
    running: std::sync::OnceLock<ScaledClock>,
}

impl DayClock {
    fn new(start: Timestamp, speed: f64) -> Self {
        Self {
            start,
            speed,
            running: std::sync::OnceLock::new(),
        }
    }

    /// Starts the day now.
    fn release(&self) {
        let _ = self.running.set(ScaledClock::new(self.start, self.speed));
    }
}

impl Clock for DayClock {
    fn now(&self) -> Timestamp {
        self.running.get().map_or(self.start, Clock::now)
    }
}

/// A one-line progress bar with a status text, on stderr. On a terminal it redraws in place;
/// otherwise (CI logs, pipes) it writes a plain line at most every five seconds and at the end.
struct Progress {
    label: &'static str,
    total: usize,
    terminal: bool,
    last: std::sync::Mutex<(usize, String, Option<Instant>)>,
}

impl Progress {
    fn new(label: &'static str, total: usize) -> Self {
        use std::io::IsTerminal as _;
        Self {
            label,
            total,
            terminal: std::io::stderr().is_terminal(),
            last: std::sync::Mutex::new((0, String::new(), None)),
        }
    }

    fn set(&self, n: usize) {
        self.status(n, "");
    }

    fn status(&self, n: usize, text: &str) {
        if self.terminal {
            let width = 30;
            let filled = (n * width)
                .checked_div(self.total)
                .map_or(width, |f| f.min(width));
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{:<11} [{}{}] {n}/{} {text}",
                self.label,
                "█".repeat(filled),
                "·".repeat(width - filled),
                self.total
            );
            let _ = err.flush();
            return;
        }
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let due = last
            .2
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(5));
        *last = (n, text.to_owned(), last.2);
        if due {
            last.2 = Some(Instant::now());
            eprintln!("{} {n}/{} {text}", self.label, self.total);
        }
    }

    fn done(&self) {
        if self.terminal {
            let _ = writeln!(std::io::stderr());
        } else if let Ok(last) = self.last.lock() {
            eprintln!("{} {}/{} {} (done)", self.label, last.0, self.total, last.1);
        }
    }
}
