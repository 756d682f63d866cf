//! `grid-sim`: the fleet demo (`grid-sim demo`) and the scale benchmark (`grid-sim load`).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc rather than the system allocator, as the `grid-server` binary: the server and the
/// load tool's agent workers allocate per message (≈ 6 % less CPU in the scale benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// grid's fleet simulator: the demo and the load tool.
#[derive(Debug, Parser)]
#[command(name = "grid-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the fleet demo: server, simulated homes, one optimised day, a summary.
    Demo(grid_sim::demo::DemoArgs),
    /// Run the scale benchmark: Mosquitto, PostgreSQL, the server and N simulated agents.
    Load(grid_sim::load::LoadArgs),
}

fn main() -> ExitCode {
    // No transparent huge pages unless MIMALLOC_ALLOW_THP says so (grid_server::process); the
    // load tool's agent workers inherit it.
    let _ = grid_server::process::prefer_small_pages();
    let cli = Cli::parse();
    // Logs only when asked for (RUST_LOG=grid_server=info,…): the demo's own output is the summary.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => grid_sim::demo::run(args).await.map(|_| ()),
            Command::Load(args) => grid_sim::load::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
