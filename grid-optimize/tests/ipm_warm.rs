//! Warm starts of the interior-point method: after a changed initial SoC, a changed price and load forecast, and a
//! horizon roll through the MPC helper, the warm re-solve reaches the cold solve's optimum (1e-6 relative, every
//! constraint within 1e-6). The iteration counts of both are printed (`--nocapture`); the measured figures are in
//! docs/benchmarks.md.
#![cfg(feature = "serde")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::battopt::parse_instance;
use grid_optimize::ipm::InteriorPointSolver;
use grid_optimize::mpc::{MpcController, Tail};
use grid_optimize::{FleetProblem, FleetSolution, Solver, TrackingTarget};

fn fixture(name: &str) -> FleetProblem {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    parse_instance(&text).expect("fixture parses")
}

/// Solves `problem` cold and warm (from `previous`), checks both against each other and returns the iteration
/// counts `(cold, warm)`.
fn compare(what: &str, problem: &FleetProblem, previous: &FleetSolution) -> (usize, usize) {
    let solver = InteriorPointSolver::default();
    let cold = solver.solve(problem).expect("solves");
    let warm = solver.solve_warm(problem, Some(previous)).expect("solves");
    assert!(cold.is_optimal(), "{what}: cold {:?}", cold.status);
    assert!(warm.is_optimal(), "{what}: warm {:?}", warm.status);
    assert!(!cold.diagnostics.warm_started);
    assert!(warm.diagnostics.warm_started, "{what}: warm start not used");
    let rel = (warm.objective - cold.objective).abs() / cold.objective.abs().max(1.0);
    let violation = problem.max_violation(&warm);
    eprintln!(
        "{what}: cold {} iterations, warm {} iterations; objective {:.10} vs {:.10} (rel {rel:.1e}), \
         warm violation {violation:.1e}",
        cold.diagnostics.iterations, warm.diagnostics.iterations, cold.objective, warm.objective
    );
    assert!(
        rel <= 1e-6,
        "{what}: warm {} vs cold {}",
        warm.objective,
        cold.objective
    );
    assert!(violation <= 1e-6, "{what}: warm violation {violation}");
    assert!(
        warm.diagnostics.duality_gap <= 1e-6 * warm.objective.abs().max(1.0),
        "{what}: gap {}",
        warm.diagnostics.duality_gap
    );
    (cold.diagnostics.iterations, warm.diagnostics.iterations)
}

/// Asserts that the warm starts needed fewer iterations in total than the cold solves of the same problems.
fn fewer_in_total(counts: &[(usize, usize)]) {
    let (cold, warm) = counts.iter().fold((0, 0), |(c, w), &(a, b)| (c + a, w + b));
    eprintln!("total: cold {cold} iterations, warm {warm}");
    assert!(warm < cold, "warm {warm} iterations vs cold {cold}");
}

/// Every third site's SoC moves by a tenth of its window (up or down, clamped).
fn change_soc(problem: &mut FleetProblem) {
    for (i, s) in problem.sites.iter_mut().enumerate().step_by(3) {
        let b = &mut s.battery;
        let delta = 0.1 * (b.e_max - b.e_min) * if i % 2 == 0 { 1.0 } else { -1.0 };
        b.e0 = (b.e0 + delta).clamp(b.e_min, b.e_max);
    }
}

/// A forecast update: prices ±5 % in a wave, every site's load +5 % in the second half of the day.
fn change_forecast(problem: &mut FleetProblem) {
    let t = problem.slots();
    for (k, p) in problem.import_price.iter_mut().enumerate() {
        *p *= 1.0 + 0.05 * (k as f64 * std::f64::consts::TAU / t as f64).sin();
    }
    for s in &mut problem.sites {
        for l in &mut s.load[t / 2..] {
            *l *= 1.05;
        }
    }
}

fn soc_and_forecast(problem: FleetProblem, name: &str) -> Vec<(usize, usize)> {
    let first = InteriorPointSolver::default()
        .solve(&problem)
        .expect("solves");
    let mut soc = problem.clone();
    change_soc(&mut soc);
    let mut forecast = problem.clone();
    change_forecast(&mut forecast);
    vec![
        compare(&format!("{name} changed SoC"), &soc, &first),
        compare(&format!("{name} changed forecast"), &forecast, &first),
        compare(&format!("{name} same problem"), &problem, &first),
    ]
}

#[test]
fn warm_matches_cold_after_soc_and_forecast_changes_n10() {
    fewer_in_total(&soc_and_forecast(fixture("d_fleet_N10_T96"), "N10"));
}

/// The quadratic extensions and demand charges: every site wears, every other site pays a demand charge, and the
/// fleet tracks a setpoint.
#[test]
fn warm_matches_cold_with_wear_tracking_and_demand_charges() {
    let mut problem = fixture("d_fleet_N10_T96");
    for (i, s) in problem.sites.iter_mut().enumerate() {
        s.wear_quadratic = 0.01;
        if i % 2 == 0 {
            s.demand_charge = 0.05;
        }
    }
    let t = problem.slots();
    problem.tracking = Some(TrackingTarget {
        setpoint_kw: (0..t)
            .map(|k| 5.0 * (k as f64 * std::f64::consts::TAU / t as f64).cos())
            .collect(),
        weight: 0.01,
    });
    fewer_in_total(&soc_and_forecast(problem, "N10 extensions"));
}

#[test]
fn warm_matches_cold_after_soc_and_forecast_changes_n100() {
    fewer_in_total(&soc_and_forecast(fixture("d_fleet_N100_T96"), "N100"));
}

/// Rolls an MPC horizon forward an hour at a time (4 slots, new data repeating the last slot), with measured SoCs
/// that differ from the plan; every warm re-solve matches a cold solve of the same horizon.
fn mpc_roll(name: &str, steps: usize) -> Vec<(usize, usize)> {
    let problem = fixture(name);
    let mut mpc = MpcController::new(InteriorPointSolver::default(), problem).expect("valid");
    mpc.solve().expect("solves");
    let mut counts = Vec::new();
    for step in 0..steps {
        let tail = Tail::repeat_last(mpc.problem(), 4);
        mpc.roll(4, &tail).expect("valid tail");
        // The measurement differs from the plan's prediction at a few sites.
        for i in (step % 5..mpc.problem().sites.len()).step_by(5) {
            let b = &mpc.problem().sites[i].battery;
            let soc = b.e0 + 0.03 * (b.e_max - b.e_min);
            mpc.set_soc(i, soc).expect("finite");
        }
        let warm_start = mpc.warm_start().expect("previous plan");
        assert!(warm_start.warm_point.is_some());
        counts.push(compare(
            &format!("{name} roll {}", step + 1),
            mpc.problem(),
            &warm_start,
        ));
        let plan = mpc.solve().expect("solves");
        assert!(plan.is_optimal());
        assert!(plan.diagnostics.warm_started);
    }
    counts
}

#[test]
fn warm_matches_cold_through_mpc_rolls_n10() {
    fewer_in_total(&mpc_roll("d_fleet_N10_T96", 4));
}

#[test]
fn warm_matches_cold_through_mpc_rolls_n100() {
    fewer_in_total(&mpc_roll("d_fleet_N100_T96", 3));
}

#[test]
fn a_start_of_another_shape_is_ignored() {
    let n10 = fixture("d_fleet_N10_T96");
    let n100 = fixture("d_fleet_N100_T96");
    let solver = InteriorPointSolver::default();
    let other = solver.solve(&n10).expect("solves");
    let sol = solver.solve_warm(&n100, Some(&other)).expect("solves");
    assert!(sol.is_optimal());
    assert!(!sol.diagnostics.warm_started);
}
