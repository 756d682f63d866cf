//! Our solvers against clarabel on the identical LP, in the same run: the single-site fixtures a/b/c (exact DP via
//! `DefaultSolver`) and the fleets d_N100 / d_N1000 (structured interior-point method), plus d_N10000 ours only
//! (read from `../shared/opt/instances/` when present; skipped with a note otherwise).
//!
//! `cargo bench -p grid-benches --bench solver`
//!
//! Criterion measures our solvers and clarabel on a/b/c/N100. Clarabel on N=1000 takes tens of seconds per solve,
//! so it is timed once (median of two runs) in the summary instead of by criterion. The summary printed first is
//! the table in docs/benchmarks.md: median wall time of each side, the ratio and the target.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

#[path = "../../grid-optimize/tests/common/clarabel_ref.rs"]
mod clarabel_ref;

use criterion::{Criterion, criterion_group, criterion_main};
use grid_optimize::battopt::parse_instance;
use grid_optimize::solver::DefaultSolver;
use grid_optimize::{FleetProblem, Solver};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn load(path: &str) -> Option<FleetProblem> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse_instance(&text).expect("the instance parses"))
}

fn fixture(name: &str) -> FleetProblem {
    let path = format!(
        "{}/../grid-optimize/tests/fixtures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    load(&path).expect("the fixture is in the repository")
}

fn shared(name: &str) -> Option<FleetProblem> {
    load(&format!(
        "{}/../../shared/opt/instances/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn median_time(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.2} s", s)
    }
}

/// The cases: (name, problem, our runs, clarabel runs, target).
fn cases() -> Vec<(&'static str, FleetProblem, usize, usize, &'static str)> {
    let mut v = vec![
        (
            "a_arbitrage_T96",
            fixture("a_arbitrage_T96"),
            200,
            20,
            "≤ 20 µs, ≥ 90×",
        ),
        (
            "b_home_pv_demand_T96",
            fixture("b_home_pv_demand_T96"),
            200,
            20,
            "≤ 80 µs, ≥ 25×",
        ),
        (
            "c_week_T672",
            fixture("c_week_T672"),
            50,
            5,
            "≤ 250 µs, ≥ 100×",
        ),
        (
            "d_fleet_N100_T96",
            fixture("d_fleet_N100_T96"),
            15,
            3,
            "≤ 20 ms, ≥ 50×",
        ),
    ];
    match shared("d_fleet_N1000_T96") {
        Some(p) => v.push(("d_fleet_N1000_T96", p, 7, 2, "≤ 150 ms, ≥ 100×")),
        None => eprintln!(
            "note: ../shared/opt/instances/d_fleet_N1000_T96.json not found: N=1000 skipped"
        ),
    }
    match shared("d_fleet_N10000_T96") {
        Some(p) => v.push(("d_fleet_N10000_T96", p, 3, 0, "≤ 2 s")),
        None => eprintln!(
            "note: ../shared/opt/instances/d_fleet_N10000_T96.json not found: N=10000 skipped"
        ),
    }
    v
}

fn summary(cases: &[(&'static str, FleetProblem, usize, usize, &'static str)]) {
    let solver = DefaultSolver::default();
    println!(
        "| instance | ours | clarabel | ratio | target | ours: method, iterations, objective vs clarabel |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, problem, runs, clarabel_runs, target) in cases {
        let sol = solver.solve(problem).expect("valid instance");
        assert!(sol.is_optimal(), "{name}: {:?}", sol.status);
        let ours = median_time(*runs, || {
            black_box(solver.solve(black_box(problem)).expect("valid").objective);
        });
        let (theirs, ratio, agree) = if *clarabel_runs > 0 {
            let model = clarabel_ref::build(problem);
            let mut obj = 0.0;
            let t = median_time(*clarabel_runs, || {
                obj = clarabel_ref::solve_model(&model).objective
            });
            let rel = (sol.objective - obj).abs() / obj.abs().max(1.0);
            (
                fmt(t),
                format!("{:.0}×", t.as_secs_f64() / ours.as_secs_f64()),
                format!("rel. diff {rel:.1e}"),
            )
        } else {
            let gap = sol.diagnostics.duality_gap / sol.objective.abs().max(1.0);
            let viol = problem.max_violation(&sol);
            (
                "—".into(),
                "—".into(),
                format!("rel. gap {gap:.1e}, max violation {viol:.1e}"),
            )
        };
        println!(
            "| {name} | {} | {theirs} | {ratio} | {target} | {}, {} it., {agree} |",
            fmt(ours),
            sol.diagnostics.method,
            sol.diagnostics.iterations
        );
    }
}

fn bench(c: &mut Criterion) {
    let cases = cases();
    summary(&cases);
    let solver = DefaultSolver::default();
    let mut group = c.benchmark_group("solver");
    for (name, problem, _, clarabel_runs, _) in &cases {
        let slow = problem.sites.len() >= 100;
        if slow {
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(if problem.sites.len() >= 10_000 {
                20
            } else {
                5
            }));
        } else {
            group.sample_size(50);
            group.measurement_time(Duration::from_secs(2));
        }
        group.bench_function(format!("{name}/ours"), |b| {
            b.iter(|| black_box(solver.solve(black_box(problem)).expect("valid").objective))
        });
        // Clarabel by criterion only where one solve is well under a second.
        if *clarabel_runs > 0 && problem.sites.len() <= 100 {
            let model = clarabel_ref::build(problem);
            group.bench_function(format!("{name}/clarabel"), |b| {
                b.iter(|| black_box(clarabel_ref::solve_model(black_box(&model)).objective))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
