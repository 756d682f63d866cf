//! `grid-opt`: the command-line front end of grid-optimize.
//!
//! `grid-opt solve PATH.json` solves a `battopt-instance/1` and prints a `battopt-solution/1`;
//! `grid-opt forecast backtest ...` evaluates the forecasters on a CSV series.

mod forecast;
mod solve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Battery schedule optimisation and forecasting tools.
#[derive(Debug, Parser)]
#[command(name = "grid-opt", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Solve a `battopt-instance/1` JSON file and print a `battopt-solution/1` JSON document.
    Solve(solve::SolveArgs),
    /// Forecasting tools.
    #[command(subcommand)]
    Forecast(forecast::ForecastCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Solve(args) => solve::run(args),
        Command::Forecast(cmd) => forecast::run(cmd),
    }
}
