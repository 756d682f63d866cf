//! The exact single-site DP on the single-site fixtures (a: arbitrage day, b: home with PV, EV and a demand
//! charge, c: a week), two ways: the hot path (`SiteDp::solve_site` with a reused workspace, no allocation) and
//! the full `DefaultSolver::solve` path (validation, dispatch, allocation of the solution, objective, residual
//! check and duality-gap certificate). The fixtures are read from `grid-optimize/tests/fixtures/`.
//!
//! `cargo bench -p grid-benches --bench site_dp`
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use criterion::{Criterion, criterion_group, criterion_main};
use grid_optimize::battopt::parse_instance;
use grid_optimize::site_dp::SiteDp;
use grid_optimize::solver::DefaultSolver;
use grid_optimize::{FleetProblem, Solver};
use std::hint::black_box;
use std::time::Duration;

fn fixture(name: &str) -> FleetProblem {
    let path = format!(
        "{}/../grid-optimize/tests/fixtures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("the fixture is in the repository");
    parse_instance(&text).expect("the fixture parses")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("site_dp");
    group.measurement_time(Duration::from_secs(3));
    for name in ["a_arbitrage_T96", "b_home_pv_demand_T96", "c_week_T672"] {
        let problem = fixture(name);
        let site = &problem.sites[0];
        let mut dp = SiteDp::new();
        group.bench_function(format!("{name}/workspace"), |b| {
            b.iter(|| {
                let r = dp
                    .solve_site(
                        problem.dt,
                        &problem.import_price,
                        &problem.export_price,
                        black_box(site),
                    )
                    .expect("linear site");
                black_box(r.is_ok())
            })
        });
        let solver = DefaultSolver::default();
        group.bench_function(format!("{name}/default_solver"), |b| {
            b.iter(|| black_box(solver.solve(black_box(&problem)).expect("valid").objective))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
