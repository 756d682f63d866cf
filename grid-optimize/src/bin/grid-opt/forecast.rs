//! `grid-opt forecast ...`: command-line front end of the forecasting module (backtests on CSV series).

use clap::{Args, Subcommand};
use grid_optimize::forecast::SeriesKind;
use grid_optimize::forecast::backtest::{self, BacktestConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Forecasting commands.
#[derive(Debug, Subcommand)]
pub enum ForecastCommand {
    /// Train before --test-from, forecast each test day from the data strictly before it, print JSON scores.
    Backtest(BacktestArgs),
}

/// Options of `grid-opt forecast backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// CSV file: `timestamp_utc,value_<unit>[__<name>],...` (hourly, half-hourly or 15-minute).
    #[arg(long)]
    input: PathBuf,
    /// Column: the full header name (`value_pu__H0-A_pload`) or the part after `__` (`H0-A_pload`).
    #[arg(long)]
    column: String,
    /// First test day, YYYY-MM-DD (UTC).
    #[arg(long)]
    test_from: String,
    /// Last test day, YYYY-MM-DD, inclusive (default: the last full day in the file).
    #[arg(long)]
    test_to: Option<String>,
    /// What the series measures: load, pv or price.
    #[arg(long, default_value = "load")]
    kind: String,
    /// Latitude in degrees (PV sun-position features; needs --longitude).
    #[arg(long, allow_hyphen_values = true)]
    latitude: Option<f64>,
    /// Longitude in degrees, east positive (needs --latitude).
    #[arg(long, allow_hyphen_values = true)]
    longitude: Option<f64>,
    /// Country of the holiday calendar: DE, GB, US, FR or NL.
    #[arg(long)]
    country: Option<String>,
}

/// Runs a forecast command; exit code 2 on bad input, 1 on an internal failure.
pub fn run(cmd: ForecastCommand) -> ExitCode {
    match cmd {
        ForecastCommand::Backtest(args) => backtest_cmd(args),
    }
}

fn backtest_cmd(a: BacktestArgs) -> ExitCode {
    let kind: SeriesKind = match a.kind.parse() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = BacktestConfig {
        input: a.input,
        column: a.column,
        test_from: a.test_from,
        test_to: a.test_to,
        kind,
        latitude: a.latitude,
        longitude: a.longitude,
        country: a.country,
    };
    let report = match backtest::run_with_progress(&cfg, &mut |m| eprintln!("forecast: {m}")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match serde_json::to_string(&report) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot encode the report: {e}");
            ExitCode::from(1)
        }
    }
}
