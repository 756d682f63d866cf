//! The fixtures (HiGHS reference optima) reproduced by the structured interior-point method: the fleets
//! d_fleet_N10 and d_fleet_N100 under their binding feeder envelope, and the single sites a/b/c as a cross-check
//! of the exact DP. Objective within 1e-6 relative, every constraint within 1e-6 kW/kWh.
#![cfg(feature = "serde")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::Solver;
use grid_optimize::battopt::parse_instance;
use grid_optimize::ipm::{InteriorPointSolver, Settings};
use grid_optimize::{FleetProblem, FleetSolution};

fn fixture(name: &str) -> (FleetProblem, f64) {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    let v: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    let reference = v["reference"]["objective"]
        .as_f64()
        .expect("fixture has a reference objective");
    (parse_instance(&text).expect("fixture parses"), reference)
}

fn check(name: &str) -> (FleetProblem, FleetSolution) {
    let (problem, reference) = fixture(name);
    let solution = InteriorPointSolver::default()
        .solve(&problem)
        .expect("solves");
    assert!(solution.is_optimal(), "{name}: {:?}", solution.status);
    let objective = problem.objective(&solution);
    let violation = problem.max_violation(&solution);
    let rel = (objective - reference).abs() / reference.abs().max(1.0);
    let d = &solution.diagnostics;
    eprintln!(
        "{name}: objective {objective:.12} reference {reference:.12} rel {rel:.2e} violation {violation:.2e} \
         iterations {} gap {:.2e} pres {:.2e} dres {:.2e} {:.1} ms",
        d.iterations,
        d.duality_gap,
        d.primal_residual,
        d.dual_residual,
        d.solve_seconds * 1e3
    );
    assert!((solution.objective - objective).abs() <= 1e-9 * objective.abs().max(1.0));
    assert!(
        rel <= 1e-6,
        "{name}: objective {objective} vs reference {reference}"
    );
    assert!(violation <= 1e-6, "{name}: max violation {violation}");
    assert!(
        d.duality_gap <= 1e-6 * objective.abs().max(1.0),
        "{name}: gap {}",
        d.duality_gap
    );
    (problem, solution)
}

#[test]
fn d_fleet_n10() {
    let (problem, solution) = check("d_fleet_N10_T96");
    let prices = solution
        .diagnostics
        .feeder_shadow_price
        .as_ref()
        .expect("feeder shadow prices");
    assert_eq!(prices.len(), problem.slots());
    // The envelope binds in this fixture: some import-side and some export-side prices are clearly non-zero.
    assert!(
        prices.iter().any(|&p| p > 1e-4),
        "no import-side shadow price: {prices:?}"
    );
    assert!(
        prices.iter().any(|&p| p < -1e-4),
        "no export-side shadow price: {prices:?}"
    );
    // Where the feeder does not bind, its shadow price vanishes.
    let feeder = problem.feeder.as_ref().expect("fleet fixture has a feeder");
    for (k, price) in prices.iter().enumerate() {
        let net: f64 = solution.sites.iter().map(|s| s.net_import(k)).sum();
        if net < feeder.import_limit[k] - 1e-3 && net > -feeder.export_limit[k] + 1e-3 {
            assert!(
                price.abs() < 1e-6,
                "slot {k}: slack feeder but shadow price {price}"
            );
        }
    }
}

#[test]
fn d_fleet_n100() {
    check("d_fleet_N100_T96");
}

#[test]
fn d_fleet_n100_single_thread_matches() {
    let (problem, reference) = fixture("d_fleet_N100_T96");
    let solver = InteriorPointSolver::new(Settings {
        threads: 1,
        ..Settings::default()
    });
    let solution = solver.solve(&problem).expect("solves");
    let rel = (solution.objective - reference).abs() / reference.abs();
    assert!(
        rel <= 1e-6,
        "single-threaded objective {} vs {reference}",
        solution.objective
    );
}

#[test]
fn a_arbitrage_t96_cross_checks_the_dp() {
    check("a_arbitrage_T96");
}

#[test]
fn b_home_pv_demand_t96_cross_checks_the_dp() {
    let (_, solution) = check("b_home_pv_demand_T96");
    assert!(
        solution.sites[0].peak_import.is_some(),
        "demand-charge site reports its peak"
    );
}

#[test]
fn c_week_t672_cross_checks_the_dp() {
    check("c_week_T672");
}

#[test]
fn iteration_limit_returns_the_best_point() {
    let (problem, _) = fixture("d_fleet_N10_T96");
    let solver = InteriorPointSolver::new(Settings {
        max_iterations: 3,
        ..Settings::default()
    });
    let solution = solver.solve(&problem).expect("solves");
    assert_eq!(solution.status, grid_optimize::SolveStatus::IterationLimit);
    assert_eq!(solution.sites.len(), problem.sites.len());
    assert_eq!(solution.diagnostics.iterations, 3);
}

/// Solves a fleet from `../shared/opt/instances` (not copied into the repository: 1.3 MB / 13 MB): feasible,
/// duality gap closed, and the reference objective reproduced where the file carries one. Ignored by default (run
/// with `--ignored`, e.g. under `/usr/bin/time -v` for peak memory).
fn shared_fleet(name: &str) {
    let path = format!(
        "{}/../../shared/opt/instances/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("note: {path} not found; skipped");
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("instance is JSON");
    let reference = v["reference"]["objective"].as_f64();
    let problem = parse_instance(&text).expect("instance parses");
    let solution = InteriorPointSolver::default()
        .solve(&problem)
        .expect("solves");
    let violation = problem.max_violation(&solution);
    let d = &solution.diagnostics;
    eprintln!(
        "{name}: {:?} objective {:.9} reference {reference:?} violation {violation:.2e} iterations {} gap {:.2e} \
         pres {:.2e} dres {:.2e} {:.0} ms",
        solution.status,
        solution.objective,
        d.iterations,
        d.duality_gap,
        d.primal_residual,
        d.dual_residual,
        d.solve_seconds * 1e3
    );
    assert!(solution.is_optimal(), "{:?}", solution.status);
    assert!(violation <= 1e-6);
    assert!(d.duality_gap <= 1e-7 * solution.objective.abs().max(1.0));
    if let Some(r) = reference {
        assert!((solution.objective - r).abs() <= 1e-6 * r.abs().max(1.0));
    }
}

#[test]
#[ignore = "reads the 1.3 MB N=1000 instance from ../shared; run explicitly"]
fn d_fleet_n1000_from_shared() {
    shared_fleet("d_fleet_N1000_T96");
}

#[test]
#[ignore = "reads the 13 MB N=10000 instance from ../shared; run explicitly"]
fn d_fleet_n10000_from_shared() {
    shared_fleet("d_fleet_N10000_T96");
}

/// Single-threaded solve times of the fleet fixtures (median of a few solves), for profiling on a shared machine:
/// one thread makes the figure independent of how many cores other work leaves free.
/// `cargo test --release -p grid-optimize --features serde --test ipm_fixtures -- --ignored --nocapture timing`
#[test]
#[ignore = "timing, not a check; run explicitly in release"]
fn timing_single_thread() {
    let mut cases = vec![("d_fleet_N100_T96", fixture("d_fleet_N100_T96").0, 15)];
    let path = format!(
        "{}/../../shared/opt/instances/d_fleet_N1000_T96.json",
        env!("CARGO_MANIFEST_DIR")
    );
    if let Ok(text) = std::fs::read_to_string(&path) {
        cases.push(("d_fleet_N1000_T96", parse_instance(&text).unwrap(), 3));
    }
    let solver = InteriorPointSolver::new(Settings {
        threads: 1,
        ..Settings::default()
    });
    // Process CPU time in clock ticks (Linux /proc; 100 per second), robust to other work on the machine.
    let cpu_ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    for (name, problem, runs) in cases {
        let cpu0 = cpu_ticks();
        let mut times = Vec::new();
        let mut iterations = 0;
        for _ in 0..runs {
            let s = solver.solve(&problem).unwrap();
            assert!(s.is_optimal());
            iterations = s.diagnostics.iterations;
            times.push(s.diagnostics.solve_seconds);
        }
        let cpu = cpu0
            .zip(cpu_ticks())
            .map(|(a, b)| format!("{:.0} ms CPU", (b - a) as f64 * 10.0 / runs as f64));
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: {:.1} ms per solve on one thread (median wall of {runs}; {} per solve), {iterations} iterations",
            times[runs / 2] * 1e3,
            cpu.unwrap_or_else(|| "no /proc".into())
        );
    }
}
