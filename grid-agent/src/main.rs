//! The `grid-agent` daemon: parses arguments and configuration, sets up logging, opens the store
//! and the hardware, and runs the shell until SIGTERM or Ctrl-C.

use anyhow::{Context, bail};
use grid_agent::config::{Config, DEFAULT_CONFIG, LogFormat};
use grid_agent::hardware::Hardware;
use grid_agent::shell::{self, Agent, AgentOptions, SystemClock};
use grid_agent::store::{Store, StoreLocation};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEFAULT_PATH: &str = "/etc/grid-agent/config.toml";

/// Test hook (not a configuration key): pause this many ms after receiving a downlink message.
const PAUSE_HOOK: &str = "GRID_TEST_AGENT_PAUSE_AFTER_RECEIVE_MS";

const USAGE: &str = "usage: grid-agent [--config PATH] | --check-config PATH | --print-default-config

  --config PATH            run the agent with this configuration (default /etc/grid-agent/config.toml)
  --check-config PATH      validate the file (plus GRID_AGENT_* variables) and exit
  --print-default-config   print the documented default configuration and exit

Every key can be overridden with GRID_AGENT_<SECTION>_<KEY>, e.g. GRID_AGENT_MQTT_URL.";

enum Mode {
    Run(PathBuf),
    Check(PathBuf),
    PrintDefault,
}

fn parse_args() -> anyhow::Result<Mode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let mut mode = Mode::Run(PathBuf::from(DEFAULT_PATH));
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => mode = Mode::Run(it.next().context("--config needs a PATH")?.into()),
            "--check-config" => {
                mode = Mode::Check(it.next().context("--check-config needs a PATH")?.into())
            }
            "--print-default-config" => mode = Mode::PrintDefault,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("grid-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(mode)
}

fn load(path: &PathBuf) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    Ok(Config::load(Some(&text), std::env::vars())?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let config = match parse_args()? {
        Mode::PrintDefault => {
            print!("{DEFAULT_CONFIG}");
            return Ok(());
        }
        Mode::Check(path) => match load(&path) {
            Ok(c) => {
                println!(
                    "{}: ok (device {}, driver {})",
                    path.display(),
                    c.device_id,
                    c.hardware.driver.as_str()
                );
                return Ok(());
            }
            Err(e) => {
                eprintln!("{}: {e:#}", path.display());
                std::process::exit(2);
            }
        },
        Mode::Run(path) => load(&path)?,
    };
    init_logging(config.agent.log_format);
    // One thread: the agent is one task; this keeps RSS and idle CPU low on a Pi.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut options = AgentOptions::from_config(&config)?;
    options.pause_after_receive = std::env::var(PAUSE_HOOK)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let location = StoreLocation::File(config.agent.store_path.clone());
    let (store, open_report) = Store::open(
        &location,
        &config.device_id,
        config.agent.telemetry_buffer_max,
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the store {}",
            config.agent.store_path.display()
        )
    })?;
    let hardware = Hardware::from_config(&config)?;
    let agent = Agent {
        options,
        store,
        open_report,
        hardware: Arc::new(Mutex::new(hardware)),
        clock: Arc::new(SystemClock),
    };
    tracing::info!(device = %config.device_id, broker = %config.mqtt.url, driver = config.hardware.driver.as_str(), "grid-agent starting");
    shell::run_agent(agent, shutdown_signal()).await?;
    tracing::info!("grid-agent stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
