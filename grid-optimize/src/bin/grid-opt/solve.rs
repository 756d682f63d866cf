//! `grid-opt solve PATH.json`: solve a `battopt-instance/1` and print a `battopt-solution/1` on stdout.
//!
//! Exit status: 0 optimal, 1 infeasible, 2 invalid input (a message naming the field on stderr, nothing on
//! stdout), 3 stopped at the iteration limit (the best point so far is printed).

use clap::Args;
use grid_optimize::battopt;
use grid_optimize::solver::DefaultSolver;
use grid_optimize::{Error, SolveStatus, Solver};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Options of `grid-opt solve`.
#[derive(Debug, Args)]
pub struct SolveArgs {
    /// A `battopt-instance/1` JSON file (`-` reads standard input).
    pub path: PathBuf,
    /// Pretty-print the solution (indented JSON) instead of one compact line.
    #[arg(long)]
    pub pretty: bool,
}

/// Exit status for invalid input.
const EXIT_INVALID: u8 = 2;

/// Runs `grid-opt solve`.
pub fn run(args: SolveArgs) -> ExitCode {
    let shown = args.path.display().to_string();
    let text = if args.path.as_os_str() == "-" {
        let mut s = String::new();
        match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            Ok(_) => s,
            Err(e) => return invalid(&format!("cannot read standard input: {e}")),
        }
    } else {
        match std::fs::read_to_string(&args.path) {
            Ok(s) => s,
            Err(e) => return invalid(&format!("cannot read {shown}: {e}")),
        }
    };
    let problem = match battopt::parse_instance(&text) {
        Ok(p) => p,
        Err(e) => return invalid(&format!("{shown}: {e}")),
    };
    let solver = DefaultSolver::default();
    let start = Instant::now();
    let result = solver.solve(&problem);
    let solve_seconds = start.elapsed().as_secs_f64();
    let solution = match result {
        Ok(s) => s,
        Err(e @ Error::Unsupported(_)) => {
            eprintln!("grid-opt solve: {shown}: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
        Err(e) => return invalid(&format!("{shown}: {e}")),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written =
        battopt::write_solution(&mut out, &problem, &solution, solve_seconds, args.pretty)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush());
    if let Err(e) = written {
        eprintln!("grid-opt solve: cannot write the solution: {e}");
        return ExitCode::from(74);
    }
    match solution.status {
        SolveStatus::Optimal => ExitCode::SUCCESS,
        SolveStatus::Infeasible { reason } => {
            eprintln!("grid-opt solve: {shown}: infeasible: {reason}");
            ExitCode::from(1)
        }
        SolveStatus::IterationLimit => {
            eprintln!(
                "grid-opt solve: {shown}: stopped at the iteration limit; printed the best point so far"
            );
            ExitCode::from(3)
        }
    }
}

fn invalid(message: &str) -> ExitCode {
    eprintln!("grid-opt solve: {message}");
    ExitCode::from(EXIT_INVALID)
}
