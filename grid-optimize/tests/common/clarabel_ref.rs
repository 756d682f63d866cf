//! The clarabel formulation of the identical LP/QP built from a `FleetProblem`: the reference optimum for the
//! quadratic extensions (wear, tracking, per-slot power bounds) and the baseline of the solver benches.
//!
//! Variables per site: `c, d, gp, gm, s` (T each) and `P` with a demand charge; plus `z` (T, the fleet's net
//! import) when the problem has a tracking term. Equalities (zero cone): balance, SoC dynamics, and
//! `Σ (gp − gm) − z = 0` with tracking. Inequalities (non-negative cone, `A x ≤ b`): all bounds, the peak rows
//! `gp − P ≤ 0`, the terminal SoC and the feeder envelope. Shared by tests and benches through `#[path]`.
#![allow(dead_code)]

use clarabel::algebra::CscMatrix;
use clarabel::solver::{DefaultSettings, DefaultSolver, IPSolver, SolverStatus, SupportedConeT};
use grid_optimize::FleetProblem;

/// The result of a clarabel solve.
#[derive(Debug, Clone)]
pub struct ClarabelResult {
    /// The objective including the tracking term's constant (the same objective as `FleetProblem::objective`).
    pub objective: f64,
    /// clarabel's status, e.g. `Solved` or `PrimalInfeasible`.
    pub status: SolverStatus,
    /// Interior-point iterations.
    pub iterations: u32,
}

/// The problem in clarabel's form `min ½xᵀPx + qᵀx  s.t.  A x + s = b,  s ∈ K`.
pub struct ClarabelModel {
    p: CscMatrix<f64>,
    q: Vec<f64>,
    a: CscMatrix<f64>,
    b: Vec<f64>,
    cones: Vec<SupportedConeT<f64>>,
    constant: f64,
}

struct Rows {
    i: Vec<usize>,
    j: Vec<usize>,
    v: Vec<f64>,
    b: Vec<f64>,
}

impl Rows {
    fn row(&mut self, entries: &[(usize, f64)], rhs: f64) {
        let r = self.b.len();
        for &(j, v) in entries {
            self.i.push(r);
            self.j.push(j);
            self.v.push(v);
        }
        self.b.push(rhs);
    }
}

/// Builds the clarabel model of `problem`.
pub fn build(problem: &FleetProblem) -> ClarabelModel {
    let t = problem.slots();
    let dt = problem.dt;
    // Column layout.
    let mut base = Vec::with_capacity(problem.sites.len());
    let mut n = 0;
    for site in &problem.sites {
        base.push(n);
        n += 5 * t + usize::from(site.demand_charge > 0.0);
    }
    let z0 = n;
    if problem.tracking.is_some() {
        n += t;
    }
    let col = |i: usize, kind: usize, k: usize| base[i] + kind * t + k;
    let (c_, d_, gp_, gm_, s_) = (0, 1, 2, 3, 4);

    let mut q = vec![0.0; n];
    let mut pdiag = vec![0.0; n];
    let mut constant = 0.0;
    let mut eq = Rows {
        i: vec![],
        j: vec![],
        v: vec![],
        b: vec![],
    };
    let mut ineq = Rows {
        i: vec![],
        j: vec![],
        v: vec![],
        b: vec![],
    };
    for (i, site) in problem.sites.iter().enumerate() {
        let bat = &site.battery;
        let (a, b) = (bat.eta_ch * dt, dt / bat.eta_dis);
        let pcol = base[i] + 5 * t;
        for k in 0..t {
            let (c, d, gp, gm, s) = (
                col(i, c_, k),
                col(i, d_, k),
                col(i, gp_, k),
                col(i, gm_, k),
                col(i, s_, k),
            );
            q[c] = dt * bat.deg_cost;
            q[d] = dt * bat.deg_cost;
            q[gp] = dt * problem.import_price[k];
            q[gm] = -dt * problem.export_price[k];
            pdiag[c] = 2.0 * dt * site.wear_quadratic;
            pdiag[d] = 2.0 * dt * site.wear_quadratic;
            eq.row(
                &[(gp, 1.0), (gm, -1.0), (c, -1.0), (d, 1.0)],
                site.load[k] - site.pv[k],
            );
            let mut dynamics = vec![(s, 1.0), (c, -a), (d, b)];
            if k > 0 {
                dynamics.push((col(i, s_, k - 1), -1.0));
            }
            eq.row(&dynamics, if k == 0 { bat.e0 } else { 0.0 });
            for (j, hi) in [
                (c, site.charge_max(k)),
                (d, site.discharge_max(k)),
                (gp, site.grid_import_max),
                (gm, site.grid_export_max),
            ] {
                ineq.row(&[(j, 1.0)], hi);
                ineq.row(&[(j, -1.0)], 0.0);
            }
            ineq.row(&[(s, 1.0)], bat.e_max);
            let mut lo = bat.e_min;
            if let (true, Some(ef)) = (k + 1 == t, bat.e_final_min) {
                lo = lo.max(ef);
            }
            ineq.row(&[(s, -1.0)], -lo);
            if site.demand_charge > 0.0 {
                ineq.row(&[(gp, 1.0), (pcol, -1.0)], 0.0);
            }
        }
        if site.demand_charge > 0.0 {
            q[pcol] = site.demand_charge;
        }
    }
    let net_entries = |k: usize| -> Vec<(usize, f64)> {
        (0..problem.sites.len())
            .flat_map(|i| [(col(i, gp_, k), 1.0), (col(i, gm_, k), -1.0)])
            .collect()
    };
    if let Some(tr) = &problem.tracking {
        let wdt = tr.weight * dt;
        for k in 0..t {
            let mut e = net_entries(k);
            e.push((z0 + k, -1.0));
            eq.row(&e, 0.0);
            pdiag[z0 + k] = 2.0 * wdt;
            q[z0 + k] = -2.0 * wdt * tr.setpoint_kw[k];
            constant += wdt * tr.setpoint_kw[k] * tr.setpoint_kw[k];
        }
    }
    if let Some(f) = &problem.feeder {
        for k in 0..t {
            let e = net_entries(k);
            ineq.row(&e, f.import_limit[k]);
            let neg: Vec<(usize, f64)> = e.iter().map(|&(j, v)| (j, -v)).collect();
            ineq.row(&neg, f.export_limit[k]);
        }
    }
    let (meq, mineq) = (eq.b.len(), ineq.b.len());
    let mut ai = eq.i;
    let mut aj = eq.j;
    let mut av = eq.v;
    ai.extend(ineq.i.iter().map(|r| r + meq));
    aj.extend(ineq.j);
    av.extend(ineq.v);
    let mut b = eq.b;
    b.extend(ineq.b);
    let a = CscMatrix::new_from_triplets(meq + mineq, n, ai, aj, av);
    let (mut pi, mut pj, mut pv) = (vec![], vec![], vec![]);
    for (j, &v) in pdiag.iter().enumerate() {
        if v != 0.0 {
            pi.push(j);
            pj.push(j);
            pv.push(v);
        }
    }
    let p = CscMatrix::new_from_triplets(n, n, pi, pj, pv);
    ClarabelModel {
        p,
        q,
        a,
        b,
        cones: vec![
            SupportedConeT::ZeroConeT(meq),
            SupportedConeT::NonnegativeConeT(mineq),
        ],
        constant,
    }
}

/// Solves a built model with clarabel (tolerances 1e-9, quiet).
pub fn solve_model(model: &ClarabelModel) -> ClarabelResult {
    let settings = DefaultSettings::<f64> {
        verbose: false,
        tol_gap_abs: 1e-9,
        tol_gap_rel: 1e-9,
        tol_feas: 1e-9,
        ..Default::default()
    };
    let mut solver = DefaultSolver::new(
        &model.p,
        &model.q,
        &model.a,
        &model.b,
        &model.cones,
        settings,
    )
    .expect("clarabel accepts the model");
    solver.solve();
    ClarabelResult {
        objective: solver.solution.obj_val + model.constant,
        status: solver.solution.status,
        iterations: solver.solution.iterations,
    }
}

/// Builds and solves `problem` with clarabel.
pub fn solve(problem: &FleetProblem) -> ClarabelResult {
    solve_model(&build(problem))
}
