//! Every fixture through [`DefaultSolver`] (the DP for the single sites, the interior-point method for the
//! fleets under their feeder envelope): HiGHS's optimum to 1e-6 relative, every constraint to 1e-6.
#![cfg(feature = "serde")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::Solver;
use grid_optimize::battopt::parse_instance;
use grid_optimize::solver::{DefaultSolver, Method};

fn check(name: &str, method: Method) {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    let v: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    let reference = v["reference"]["objective"]
        .as_f64()
        .expect("fixture has a reference objective");
    let problem = parse_instance(&text).expect("fixture parses");
    let solver = DefaultSolver::default();
    assert_eq!(solver.method(&problem), method, "{name}");
    let solution = solver.solve(&problem).expect("solves");
    assert!(solution.is_optimal(), "{name}: {:?}", solution.status);
    let objective = problem.objective(&solution);
    let violation = problem.max_violation(&solution);
    let rel = (objective - reference).abs() / reference.abs().max(1.0);
    eprintln!(
        "{name}: {method:?} objective {objective:.12} reference {reference:.12} rel {rel:.2e} violation {violation:.2e}"
    );
    assert!(
        rel <= 1e-6,
        "{name}: objective {objective} vs reference {reference}"
    );
    assert!(violation <= 1e-6, "{name}: max violation {violation}");
}

#[test]
fn single_sites_use_the_dp() {
    for name in ["a_arbitrage_T96", "b_home_pv_demand_T96", "c_week_T672"] {
        check(name, Method::SiteDp);
    }
}

#[test]
fn fleets_under_a_feeder_use_the_interior_point_method() {
    for name in ["d_fleet_N10_T96", "d_fleet_N100_T96"] {
        check(name, Method::InteriorPoint);
    }
}
