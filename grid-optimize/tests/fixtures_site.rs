//! The single-site fixtures (HiGHS references) reproduced by the exact DP, to 1e-6 relative.
#![cfg(feature = "serde")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::Solver;
use grid_optimize::battopt::parse_instance;
use grid_optimize::site_dp::SiteDpSolver;

fn fixture(name: &str) -> (String, f64) {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    let v: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    let reference = v["reference"]["objective"]
        .as_f64()
        .expect("fixture has a reference objective");
    (text, reference)
}

fn check(name: &str) {
    let (text, reference) = fixture(name);
    let problem = parse_instance(&text).expect("fixture parses");
    let solution = SiteDpSolver::default().solve(&problem).expect("solves");
    assert!(solution.is_optimal(), "{name}: {:?}", solution.status);
    let objective = problem.objective(&solution);
    let violation = problem.max_violation(&solution);
    let rel = (objective - reference).abs() / reference.abs().max(1.0);
    eprintln!(
        "{name}: objective {objective:.12} reference {reference:.12} rel {rel:.2e} violation {violation:.2e}"
    );
    assert!(
        rel <= 1e-6,
        "{name}: objective {objective} vs reference {reference}"
    );
    assert!(violation <= 1e-6, "{name}: max violation {violation}");
}

#[test]
fn a_arbitrage_t96() {
    check("a_arbitrage_T96");
}

#[test]
fn b_home_pv_demand_t96() {
    check("b_home_pv_demand_T96");
}

#[test]
fn c_week_t672() {
    check("c_week_T672");
}
