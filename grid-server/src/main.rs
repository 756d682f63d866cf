//! The `grid-server` binary: parse the command line, then serve, mint a token or print the
//! default configuration. All the work is in the library.

use clap::Parser as _;
use grid_server::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
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
            let token = grid_server::server::mint_token(&config, &subject, role, tenant.as_deref(), ttl)?;
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
