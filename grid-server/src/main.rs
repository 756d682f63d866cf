//! The `grid-server` binary: parse the command line, then serve, mint a token or print the
//! default configuration. All the work is in the library; errors end the process with one line.

use clap::Parser as _;
use grid_server::cli::{Cli, Command};
use std::process::ExitCode;

/// mimalloc rather than the system allocator (feature `mimalloc`, on by default): the server
/// allocates per message and per row, and glibc's malloc took a fifth of its CPU under load.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before the runtime starts: no transparent huge pages unless MIMALLOC_ALLOW_THP says so
    // (grid_server::process).
    let _ = grid_server::process::prefer_small_pages();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no "Caused by" chain: every error message already names its cause.
            eprintln!("grid-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", grid_server::config::DEFAULT_CONFIG_TOML);
        return Ok(());
    }
    let config = cli.config()?;
    match cli.command {
        Some(Command::Token {
            role,
            ttl,
            tenant,
            subject,
        }) => {
            let token =
                grid_server::server::mint_token(&config, &subject, role, tenant.as_deref(), ttl)?;
            println!("{token}");
            Ok(())
        }
        None | Some(Command::Serve) | Some(Command::PrintConfig) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(grid_server::server::run(config))?;
            Ok(())
        }
    }
}
