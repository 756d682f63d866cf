//! A structured primal–dual interior-point method (Mehrotra predictor–corrector) for fleets of battery sites under
//! a shared feeder envelope, with the convex quadratic extensions (wear penalty, aggregate setpoint tracking).
//!
//! # The problem as the method sees it
//!
//! Every quantity becomes a variable with (finite) bounds `l ≤ x ≤ u`; the objective is `½ xᵀQx + qᵀx` with a
//! *diagonal* `Q`; everything else is a linear equality `A x = b`. Per site `i` and slot `t` the variables are
//! charge `c`, discharge `d`, grid import `gp`, grid export `gm`, state of charge `s` (kWh, end of slot), and for a
//! site with a demand charge a peak slack `u` and one peak `P` per site. The rows are
//!
//! ```text
//! balance   gp - gm - c + d            = load - pv
//! dynamics  s_t - s_{t-1} - a·c + b·d  = [t = 0]·e0          a = eta_ch·dt,  b = dt/eta_dis
//! peak      gp + u - P                 = 0                   (only with a demand charge; u ≥ 0 is the slack)
//! fleet     Σ_i (c - d) - z            = -Σ_i (load - pv)    (only with a feeder or a tracking term)
//! ```
//!
//! The fleet row is the feeder row `Σ_i (gp - gm) = z` minus the sites' balance rows: the same feasible set, but
//! the fleet row then touches only `c` and `d`, which makes the algebra below cancellation-free. `z_t` is the
//! fleet's net import, bounded by the envelope `[-export_limit, import_limit]`; tracking adds
//! `dt·weight·(z - setpoint)²` to its (diagonal) cost. Wear adds `dt·wear·(c² + d²)`.
//!
//! # One iteration
//!
//! With bound multipliers `zl, zu ≥ 0` and row multipliers `v`, the optimality conditions are
//! `Qx + q − Aᵀv − zl + zu = 0`, `Ax = b`, `(x − l)·zl = μ`, `(u − x)·zu = μ` with `μ → 0`. Newton's method on
//! them, after eliminating `dzl` and `dzu`, leaves
//!
//! ```text
//! D dx − Aᵀ dv = ρ        D = Q + zl/(x − l) + zu/(u − x)   (diagonal)
//!   A dx       = −r_p     →   (A D⁻¹ Aᵀ) dv = −r_p − A D⁻¹ ρ,   dx = D⁻¹ (ρ + Aᵀ dv).
//! ```
//!
//! Mehrotra's scheme solves this twice per iteration with one factorisation: a predictor (pure Newton, `μ = 0`)
//! that measures how much the complementarity can fall, then a corrector aiming at `σμ` with `σ = (μ_aff/μ)³` and
//! the predictor's second-order term. Steps stop at 99.5 % of the distance to the bounds.
//!
//! # The normal equations, exploiting the structure
//!
//! `M = A D⁻¹ Aᵀ` has one block per site plus the T fleet rows:
//!
//! ```text
//!     ┌ M_1              B_1ᵀ ┐
//! M = │      ⋱           ⋮    │      M_i: the site's rows (balance, dynamics, peak), 2T or 3T of them
//!     │          M_N     B_Nᵀ │      B_i: how the fleet rows touch site i (through c and d only)
//!     └ B_1  ⋯   B_N     M_yy ┘
//! ```
//!
//! *A site block in O(T).* In slot `t` the balance and peak rows touch only slot-`t` variables; they are
//! eliminated locally (a 2×2 solve). What remains is one multiplier per slot for the dynamics, linked to its
//! neighbours only through `s_t` (which appears in the dynamics rows `t` and `t+1`): a tridiagonal system — the
//! Riccati recursion of a one-state optimal-control problem. It is factorised in *series form*:
//! `e_t = g_t + w_{t−1} e_{t−1}/(e_{t−1} + w_{t−1})`, `pivot_t = e_t + w_t` with `w = 1/D_s`, so that huge
//! entries (an SoC strictly inside its bounds has a tiny barrier term) never cancel. The site's single peak `P`
//! touches every peak row; it is brought in as a bordered (Sherman–Morrison) correction written with `D_P` in the
//! denominator, which stays stable when `D_P → 0`. All local eliminations are written as sums and products of
//! positive terms.
//!
//! *The fleet in O(N·T²) + O(T³).* Eliminating every site leaves the T×T Schur complement
//! `S = M_yy − Σ_i B_i M_i⁻¹ B_iᵀ`. Because a site's chain has a single state, `B_i M_i⁻¹ B_iᵀ` is "diagonal plus
//! rank-one semiseparable": entry `(t, t')` is `κ_t κ_t' J⁻¹_{t't'} Π_{k=t}^{t'−1} ρ_k` with transfer ratios
//! `ρ_k ∈ [0, 1)`. It is accumulated column by column with a running product (no exponent overflow), skipping
//! entries once the product falls below 1e-24 (a full SoC or an empty battery decouples the slots before and after
//! it). Sites are processed in parallel (rayon), each thread adding into its own S. `S` is factorised by dense
//! Cholesky. A solve is then: one O(T) solve per site, a T×T triangular solve, one more O(T) solve per site.
//!
//! # Termination and clean-up
//!
//! The method stops when the primal residual is below `primal_tolerance` (absolute, kW/kWh), the dual residual
//! below `dual_tolerance` (relative to the largest cost coefficient) and the complementarity gap below
//! `gap_tolerance` relative to the objective. The schedule is then *purified*: `c` and `d` are clamped to their
//! bounds, the SoC is recomputed from them by the dynamics, `gp`/`gm` are re-derived from the balance (keeping the
//! method's split), and `P` is the peak import. Because the iterates are strictly interior, the only violations
//! left are the tiny equality residuals, far below 1e-6. Infeasibility is reported with a reason naming the
//! constraint family, site and slot: first by an exact per-site reachability check (see `feasibility`), then, for
//! fleets, if the method cannot drive the primal residual down, by the fleet row with the largest residual.
//!
//! # Example
//!
//! ```
//! use grid_optimize::ipm::InteriorPointSolver;
//! use grid_optimize::problem::{BatteryParams, FleetProblem, SiteProblem};
//! use grid_optimize::Solver;
//!
//! let t = 4;
//! let site = SiteProblem {
//!     id: "home".into(), load: vec![1.0; t], pv: vec![0.0; t],
//!     grid_import_max: 10.0, grid_export_max: 10.0, demand_charge: 0.0,
//!     battery: BatteryParams { e_min: 0.0, e_max: 4.0, e0: 2.0, e_final_min: None, p_ch_max: 2.0,
//!         p_dis_max: 2.0, eta_ch: 1.0, eta_dis: 1.0, deg_cost: 0.0 },
//!     power_bounds: None, wear_quadratic: 0.0,
//! };
//! let problem = FleetProblem { name: "demo".into(), dt: 1.0, import_price: vec![0.1, 0.1, 0.3, 0.3],
//!     export_price: vec![0.0; t], sites: vec![site], feeder: None, tracking: None };
//! let sol = InteriorPointSolver::default().solve(&problem).unwrap();
//! assert!(sol.is_optimal());
//! // Cheapest: cover the expensive slots' load (2 kWh) from the battery's 2 kWh.
//! assert!((sol.objective - 0.2).abs() < 1e-7);
//! ```

// Numerical kernels index several parallel arrays by the same variable or slot number.
#![allow(clippy::needless_range_loop)]

mod dense;
mod feasibility;
mod site;

use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::problem::FleetProblem;
use crate::solution::{Diagnostics, FleetSolution, SiteSolution, SolveStatus};
use crate::solver::Solver;
use site::{C, D, GM, SiteFactor, SiteModel};

/// Tolerances and limits of the [`InteriorPointSolver`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Stop when the complementarity gap is below this, relative to `1 + |objective|`.
    pub gap_tolerance: f64,
    /// Stop only when every equality residual is below this, in kW or kWh (absolute).
    pub primal_tolerance: f64,
    /// Stop only when the stationarity residual is below this, relative to `1 +` the largest cost coefficient.
    pub dual_tolerance: f64,
    /// Iteration limit; reaching it returns [`SolveStatus::IterationLimit`] with the last (cleaned) point.
    pub max_iterations: usize,
    /// Worker threads for the per-site work; 0 uses rayon's global pool.
    pub threads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gap_tolerance: 1e-10,
            primal_tolerance: 1e-9,
            dual_tolerance: 1e-9,
            max_iterations: 100,
            threads: 0,
        }
    }
}

/// The structured interior-point solver for fleets (any number of sites), the feeder envelope and the quadratic
/// extensions. See the [module documentation](self) for the method.
#[derive(Debug, Clone, Default)]
pub struct InteriorPointSolver {
    /// Tolerances, iteration limit and threads.
    pub settings: Settings,
}

impl InteriorPointSolver {
    /// A solver with the given settings.
    pub fn new(settings: Settings) -> Self {
        InteriorPointSolver { settings }
    }
}

impl Solver for InteriorPointSolver {
    fn solve(&self, problem: &FleetProblem) -> Result<FleetSolution> {
        problem.validate()?;
        if self.settings.threads > 0 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(self.settings.threads)
                .build()
                .map_err(|e| {
                    Error::Unsupported(format!(
                        "cannot start {} threads: {e}",
                        self.settings.threads
                    ))
                })?;
            Ok(pool.install(|| run(problem, &self.settings)))
        } else {
            Ok(run(problem, &self.settings))
        }
    }
}

/// Per-site iterate, work buffers and factorisation.
struct SiteWork {
    x: Vec<f64>,
    zl: Vec<f64>,
    zu: Vec<f64>,
    v: Vec<f64>,
    rd: Vec<f64>,
    rp: Vec<f64>,
    w: Vec<f64>,
    /// `1/(x − l)` and `1/(u − x)`, refreshed with the factorisation (site bounds are always finite).
    isl: Vec<f64>,
    isu: Vec<f64>,
    dx_aff: Vec<f64>,
    dx: Vec<f64>,
    tmp: Vec<f64>,
    rhs: Vec<f64>,
    dv: Vec<f64>,
    /// `ρ` of the peak variable (bordered, see [`SiteFactor::solve`]).
    rho_p: f64,
    f: SiteFactor,
}

/// The fleet variables `z` (net import per slot) and the fleet rows' multipliers `y`.
struct Fleet {
    lo: Vec<f64>,
    hi: Vec<f64>,
    q: Vec<f64>,
    quad: f64,
    constant: f64,
    rhs: Vec<f64>,
    x: Vec<f64>,
    zl: Vec<f64>,
    zu: Vec<f64>,
    y: Vec<f64>,
    rd: Vec<f64>,
    rp: Vec<f64>,
    w: Vec<f64>,
    dx_aff: Vec<f64>,
    dx: Vec<f64>,
    dy: Vec<f64>,
}

/// Which right-hand side a direction uses.
#[derive(Clone, Copy)]
struct Mode {
    sigma_mu: f64,
    corrector: bool,
}

/// Complementarity right-hand sides `(rl, ru)` of one variable.
#[inline]
#[allow(clippy::too_many_arguments)]
fn comp_rhs(
    x: f64,
    l: f64,
    u: f64,
    zl: f64,
    zu: f64,
    dxa: f64,
    mode: Mode,
) -> (f64, f64, f64, f64) {
    let (mut rl, mut ru, mut sl, mut su) = (0.0, 0.0, f64::INFINITY, f64::INFINITY);
    if l.is_finite() {
        sl = x - l;
        rl = mode.sigma_mu - sl * zl;
        if mode.corrector {
            let dzla = -zl * (1.0 + dxa / sl);
            rl -= dxa * dzla;
        }
    }
    if u.is_finite() {
        su = u - x;
        ru = mode.sigma_mu - su * zu;
        if mode.corrector {
            let dzua = -zu * (1.0 - dxa / su);
            ru += dxa * dzua;
        }
    }
    (rl, ru, sl, su)
}

/// Variable block view used by the generic per-variable kernels.
struct Block<'a> {
    x: &'a [f64],
    zl: &'a [f64],
    zu: &'a [f64],
    lo: &'a [f64],
    hi: &'a [f64],
    dx_aff: &'a [f64],
}

impl Block<'_> {
    #[inline]
    fn rl_ru(&self, j: usize, mode: Mode) -> (f64, f64, f64, f64) {
        comp_rhs(
            self.x[j],
            self.lo[j],
            self.hi[j],
            self.zl[j],
            self.zu[j],
            self.dx_aff[j],
            mode,
        )
    }

    /// `ρ_j = −rd_j + rl/(x − l) − ru/(u − x)`.
    fn rho(&self, rd: &[f64], mode: Mode, out: &mut [f64]) {
        for j in 0..self.x.len() {
            let (rl, ru, sl, su) = self.rl_ru(j, mode);
            let mut r = -rd[j];
            if sl.is_finite() {
                r += rl / sl;
            }
            if su.is_finite() {
                r -= ru / su;
            }
            out[j] = r;
        }
    }

    /// The bound-multiplier steps for the primal step `dx`.
    #[inline]
    fn dz(&self, j: usize, dx: f64, mode: Mode) -> (f64, f64) {
        let (rl, ru, sl, su) = self.rl_ru(j, mode);
        let dzl = if sl.is_finite() {
            (rl - self.zl[j] * dx) / sl
        } else {
            0.0
        };
        let dzu = if su.is_finite() {
            (ru + self.zu[j] * dx) / su
        } else {
            0.0
        };
        (dzl, dzu)
    }

    /// Largest primal and dual step lengths (≤ 1) that keep the iterate within its bounds.
    fn max_steps(&self, dx: &[f64], mode: Mode) -> (f64, f64) {
        let (mut ap, mut ad) = (1.0_f64, 1.0_f64);
        for j in 0..self.x.len() {
            let d = dx[j];
            let (l, u, x) = (self.lo[j], self.hi[j], self.x[j]);
            if d < 0.0 && l.is_finite() {
                ap = ap.min((x - l) / -d);
            } else if d > 0.0 && u.is_finite() {
                ap = ap.min((u - x) / d);
            }
            let (dzl, dzu) = self.dz(j, d, mode);
            if dzl < 0.0 {
                ad = ad.min(self.zl[j] / -dzl);
            }
            if dzu < 0.0 {
                ad = ad.min(self.zu[j] / -dzu);
            }
        }
        (ap, ad)
    }

    /// Complementarity after a step of lengths `(ap, ad)`.
    fn comp_after(&self, dx: &[f64], mode: Mode, ap: f64, ad: f64) -> f64 {
        let mut s = 0.0;
        for j in 0..self.x.len() {
            let d = dx[j];
            let (dzl, dzu) = self.dz(j, d, mode);
            if self.lo[j].is_finite() {
                s += (self.x[j] - self.lo[j] + ap * d) * (self.zl[j] + ad * dzl);
            }
            if self.hi[j].is_finite() {
                s += (self.hi[j] - self.x[j] - ap * d) * (self.zu[j] + ad * dzu);
            }
        }
        s
    }
}

/// Inverse barrier Hessian `1/(Q + zl/(x−l) + zu/(u−x))` of one variable.
#[inline]
fn inv_hess(x: f64, l: f64, u: f64, zl: f64, zu: f64, q: f64) -> f64 {
    let mut d = q;
    if l.is_finite() {
        d += zl / (x - l);
    }
    if u.is_finite() {
        d += zu / (u - x);
    }
    1.0 / d.max(MIN_HESSIAN)
}

/// Keeps `x` strictly inside `[l, u]` even when round-off would put it on a bound (which would divide by zero).
#[inline]
fn interior(x: f64, l: f64, u: f64) -> f64 {
    let eps = 1e-15 * (1.0 + x.abs());
    let x = if l.is_finite() { x.max(l + eps) } else { x };
    if u.is_finite() { x.min(u - eps) } else { x }
}

/// Floor on the barrier Hessian diagonal (a primal regularisation). It bounds `1/D`, which keeps the normal
/// equations accurate when a variable sits strictly inside its bounds at `μ → 0`; the equality rows are still
/// solved exactly, so only the dual residual sees the (self-correcting) perturbation `MIN_HESSIAN·dx`.
const MIN_HESSIAN: f64 = 1e-8;

/// The stronger floor used for sites with a demand charge, whose peak rows need it (with the dual regularisation)
/// to stay accurate; it costs some extra iterations, so other sites keep the light one.
const MIN_HESSIAN_PEAK: f64 = 1e-6;

/// Sums reduced over sites in the residual pass.
#[derive(Clone, Default)]
struct Resid {
    comp: f64,
    nb: usize,
    pres: f64,
    dres: f64,
    pobj: f64,
    /// Σ_i (c − d) per slot.
    flow: Vec<f64>,
}

fn merge_resid(mut a: Resid, b: Resid) -> Resid {
    a.comp += b.comp;
    a.nb += b.nb;
    a.pres = a.pres.max(b.pres);
    a.dres = a.dres.max(b.dres);
    a.pobj += b.pobj;
    if a.flow.is_empty() {
        a.flow = b.flow;
    } else {
        for (x, y) in a.flow.iter_mut().zip(&b.flow) {
            *x += y;
        }
    }
    a
}

fn add_vec(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    if a.is_empty() {
        return b;
    }
    for (x, y) in a.iter_mut().zip(&b) {
        *x += y;
    }
    a
}

fn run(problem: &FleetProblem, settings: &Settings) -> FleetSolution {
    let start = Instant::now();
    let t = problem.slots();
    let n = problem.sites.len();
    let mut diag = Diagnostics {
        method: "ipm".into(),
        ..Diagnostics::default()
    };
    if let Some(reason) = feasibility::check(problem) {
        diag.solve_seconds = start.elapsed().as_secs_f64();
        return FleetSolution::infeasible(reason, diag);
    }
    let models: Vec<SiteModel> = problem
        .sites
        .iter()
        .map(|s| SiteModel::new(problem, s))
        .collect();
    let coupled = problem.feeder.is_some() || problem.tracking.is_some();
    let qscale = models
        .iter()
        .flat_map(|m| m.q.iter())
        .fold(0.0_f64, |a, v| a.max(v.abs()))
        .max(1e-2);

    // Initial point: the middle of each box (capped for very wide boxes), bound multipliers at the cost scale.
    let mut sites: Vec<SiteWork> = models
        .iter()
        .map(|m| {
            let x: Vec<f64> = (0..m.nv)
                .map(|j| {
                    let (l, u) = (m.lo[j], m.hi[j]);
                    let half = 0.5 * (u - l);
                    l + half.min(50.0)
                })
                .collect();
            SiteWork {
                x,
                zl: vec![qscale; m.nv],
                zu: vec![qscale; m.nv],
                v: vec![0.0; m.nr],
                rd: vec![0.0; m.nv],
                rp: vec![0.0; m.nr],
                w: vec![0.0; m.nv],
                isl: vec![0.0; m.nv],
                isu: vec![0.0; m.nv],
                dx_aff: vec![0.0; m.nv],
                dx: vec![0.0; m.nv],
                tmp: vec![0.0; m.nv],
                rhs: vec![0.0; m.nr],
                dv: vec![0.0; m.nr],
                rho_p: 0.0,
                f: SiteFactor::new(m),
            }
        })
        .collect();
    let mut fleet = coupled.then(|| {
        let (lo, hi) = match &problem.feeder {
            Some(f) => {
                let lo: Vec<f64> = f.export_limit.iter().map(|e| -e).collect();
                let hi: Vec<f64> = (0..t)
                    .map(|k| f.import_limit[k].max(lo[k] + site::MIN_WIDTH))
                    .collect();
                (lo, hi)
            }
            None => (vec![f64::NEG_INFINITY; t], vec![f64::INFINITY; t]),
        };
        let (quad, q, constant) = match &problem.tracking {
            Some(tr) => {
                let wdt = tr.weight * problem.dt;
                (
                    2.0 * wdt,
                    tr.setpoint_kw.iter().map(|s| -2.0 * wdt * s).collect(),
                    tr.setpoint_kw.iter().map(|s| wdt * s * s).sum(),
                )
            }
            None => (0.0, vec![0.0; t], 0.0),
        };
        let rhs: Vec<f64> = (0..t)
            .map(|k| -models.iter().map(|m| m.net[k]).sum::<f64>())
            .collect();
        let x = (0..t)
            .map(|k| {
                let guess: f64 = sites
                    .iter()
                    .map(|s| s.x[C * t + k] - s.x[D * t + k])
                    .sum::<f64>()
                    - rhs[k];
                if lo[k].is_finite() && hi[k].is_finite() {
                    let m = 0.05 * (hi[k] - lo[k]);
                    guess.clamp(lo[k] + m, hi[k] - m)
                } else {
                    guess
                }
            })
            .collect();
        let zb = |b: &Vec<f64>| {
            b.iter()
                .map(|v| if v.is_finite() { qscale } else { 0.0 })
                .collect::<Vec<f64>>()
        };
        Fleet {
            zl: zb(&lo),
            zu: zb(&hi),
            lo,
            hi,
            q,
            quad,
            constant,
            rhs,
            x,
            y: vec![0.0; t],
            rd: vec![0.0; t],
            rp: vec![0.0; t],
            w: vec![0.0; t],
            dx_aff: vec![0.0; t],
            dx: vec![0.0; t],
            dy: vec![0.0; t],
        }
    });
    let threads = rayon::current_num_threads().max(1);
    let chunk = (n / (4 * threads)).max(1);
    let mut schur = vec![0.0; if coupled { t * t } else { 0 }];
    let mut iterations = 0;
    let mut converged = false;
    let mut stalled_infeasible = false;
    let mut pres_hist: Vec<f64> = Vec::new();
    let mut last = Resid::default();
    let is_qp = !problem.is_linear();

    for iter in 0..=settings.max_iterations {
        // --- residuals ---
        let yref = fleet.as_ref().map(|f| f.y.as_slice());
        // Residuals and the factorisation in one pass over the sites (the factorisation depends only on the
        // iterate); on the final iteration the factorisation is simply not used.
        let (mut r, acc, _) = sites
            .par_iter_mut()
            .zip(models.par_iter())
            .with_min_len(chunk)
            .fold(
                || {
                    (
                        Resid::default(),
                        vec![0.0; if coupled { t * t } else { 0 }],
                        vec![0.0; t],
                    )
                },
                |(acc_r, mut s_acc, mut buf), (s, m)| {
                    let mut out = Resid::default();
                    m.apply_at(&s.v, yref, &mut s.tmp);
                    for j in 0..m.nv {
                        let x = s.x[j];
                        let qd = m.qdiag(j);
                        let rd = qd * x + m.q[j] - s.tmp[j] - s.zl[j] + s.zu[j];
                        s.rd[j] = rd;
                        out.dres = out.dres.max(rd.abs());
                        out.comp += (x - m.lo[j]) * s.zl[j] + (m.hi[j] - x) * s.zu[j];
                        out.pobj += m.q[j] * x + 0.5 * qd * x * x;
                    }
                    out.nb = 2 * m.nv;
                    m.apply_a(&s.x, &mut s.rp);
                    for (rr, r) in s.rp.iter_mut().enumerate() {
                        *r -= m.rhs(rr);
                        out.pres = out.pres.max(r.abs());
                    }
                    if coupled {
                        out.flow = (0..m.t)
                            .map(|k| s.x[C * m.t + k] - s.x[D * m.t + k])
                            .collect();
                    }
                    for j in 0..m.nv {
                        let isl = 1.0 / (s.x[j] - m.lo[j]);
                        let isu = 1.0 / (m.hi[j] - s.x[j]);
                        s.isl[j] = isl;
                        s.isu[j] = isu;
                        let d = m.qdiag(j) + s.zl[j] * isl + s.zu[j] * isu;
                        s.w[j] = 1.0
                            / d.max(if m.demand {
                                MIN_HESSIAN_PEAK
                            } else {
                                MIN_HESSIAN
                            });
                    }
                    s.f.factor(m, &s.w);
                    if coupled {
                        s.f.add_schur(m, &mut s_acc, &mut buf);
                    }
                    (merge_resid(acc_r, out), s_acc, buf)
                },
            )
            .reduce(
                || (Resid::default(), Vec::new(), Vec::new()),
                |a, b| (merge_resid(a.0, b.0), add_vec(a.1, b.1), Vec::new()),
            );
        if let Some(f) = fleet.as_mut() {
            for k in 0..t {
                let rp = r.flow[k] - f.x[k] - f.rhs[k];
                f.rp[k] = rp;
                r.pres = r.pres.max(rp.abs());
                let x = f.x[k];
                let rd = f.quad * x + f.q[k] + f.y[k] - f.zl[k] + f.zu[k];
                f.rd[k] = rd;
                r.dres = r.dres.max(rd.abs());
                r.pobj += f.q[k] * x + 0.5 * f.quad * x * x;
                if f.lo[k].is_finite() {
                    r.comp += (x - f.lo[k]) * f.zl[k];
                    r.nb += 1;
                }
                if f.hi[k].is_finite() {
                    r.comp += (f.hi[k] - x) * f.zu[k];
                    r.nb += 1;
                }
            }
            r.pobj += f.constant;
        }
        let mu = r.comp / r.nb.max(1) as f64;
        last = r.clone();
        let gap_scale = 1.0 + r.pobj.abs();
        if r.pres <= settings.primal_tolerance
            && r.dres <= settings.dual_tolerance * (1.0 + qscale)
            && r.comp <= settings.gap_tolerance * gap_scale
        {
            converged = true;
            break;
        }
        // Complementarity exhausted: further steps only fight round-off in the normal equations. Accept the point if
        // its residuals are within a hundred times the tolerances (the clean-up removes what is left).
        if r.comp <= 1e-4 * settings.gap_tolerance * gap_scale {
            converged = r.pres <= 100.0 * settings.primal_tolerance
                && r.dres <= 100.0 * settings.dual_tolerance * (1.0 + qscale);
            break;
        }
        // A primal residual that stops shrinking while the iterations go on is the method's infeasibility signal.
        pres_hist.push(r.pres);
        if iter >= 25 && r.pres > 1e-6 && r.pres > 0.5 * pres_hist[iter - 10] {
            stalled_infeasible = true;
            break;
        }
        if iter == settings.max_iterations
            || !(r.pres.is_finite() && r.dres.is_finite() && mu.is_finite())
        {
            break;
        }
        iterations = iter + 1;

        // --- factorisation of the fleet Schur complement ---
        if let Some(f) = fleet.as_mut() {
            schur.copy_from_slice(&acc);
            for k in 0..t {
                f.w[k] = inv_hess(f.x[k], f.lo[k], f.hi[k], f.zl[k], f.zu[k], f.quad);
                schur[k * t + k] += f.w[k];
            }
            dense::cholesky(&mut schur, t);
        }

        // --- predictor ---
        let pred = Mode {
            sigma_mu: 0.0,
            corrector: false,
        };
        direction(&models, &mut sites, fleet.as_mut(), &schur, pred, chunk);
        let (ap, ad) = step_lengths(&models, &sites, fleet.as_ref(), pred, chunk, is_qp);
        let comp_aff = sites
            .par_iter()
            .zip(models.par_iter())
            .with_min_len(chunk)
            .map(|(s, m)| site_comp_after(m, s, &s.dx_aff, pred, ap, ad))
            .sum::<f64>()
            + fleet
                .as_ref()
                .map_or(0.0, |f| fleet_block(f).comp_after(&f.dx_aff, pred, ap, ad));
        let mu_aff = comp_aff / r.nb.max(1) as f64;
        let sigma = if mu > 0.0 {
            (mu_aff / mu).clamp(0.0, 1.0).powi(3)
        } else {
            0.0
        };

        // --- corrector ---
        let corr = Mode {
            sigma_mu: sigma * mu,
            corrector: true,
        };
        direction(&models, &mut sites, fleet.as_mut(), &schur, corr, chunk);
        let (ap, ad) = step_lengths(&models, &sites, fleet.as_ref(), corr, chunk, is_qp);
        let tau = 0.995_f64.max(1.0 - 10.0 * mu / (1.0 + qscale));
        let (ap, ad) = ((tau * ap).min(1.0), (tau * ad).min(1.0));

        // --- update ---
        sites
            .par_iter_mut()
            .zip(models.par_iter())
            .with_min_len(chunk)
            .for_each(|(s, m)| {
                for j in 0..m.nv {
                    let (dzl, dzu) = site_dz(m, s, j, s.dx[j], corr);
                    s.tmp[j] = dzl;
                    s.rd[j] = dzu;
                }
                for j in 0..m.nv {
                    s.x[j] = interior(s.x[j] + ap * s.dx[j], m.lo[j], m.hi[j]);
                    s.zl[j] = (s.zl[j] + ad * s.tmp[j]).max(1e-300);
                    s.zu[j] = (s.zu[j] + ad * s.rd[j]).max(1e-300);
                }
                for (v, dv) in s.v.iter_mut().zip(&s.dv) {
                    *v += ad * dv;
                }
            });
        if let Some(f) = fleet.as_mut() {
            for k in 0..t {
                let (dzl, dzu) = fleet_block(f).dz(k, f.dx[k], corr);
                f.x[k] = interior(f.x[k] + ap * f.dx[k], f.lo[k], f.hi[k]);
                if f.lo[k].is_finite() {
                    f.zl[k] = (f.zl[k] + ad * dzl).max(1e-300);
                }
                if f.hi[k].is_finite() {
                    f.zu[k] = (f.zu[k] + ad * dzu).max(1e-300);
                }
                f.y[k] += ad * f.dy[k];
            }
        }
    }

    // At the iteration limit, a point within a hundred times every tolerance is still reported as optimal: its
    // cleaned schedule is feasible and its gap certifies the objective far inside the 1e-6 accuracy asked for.
    if !converged && !stalled_infeasible {
        converged = last.pres <= 100.0 * settings.primal_tolerance
            && last.dres <= 100.0 * settings.dual_tolerance * (1.0 + qscale)
            && last.comp <= 100.0 * settings.gap_tolerance * (1.0 + last.pobj.abs());
    }
    diag.iterations = iterations;
    diag.primal_residual = last.pres;
    diag.dual_residual = last.dres;
    diag.duality_gap = last.comp;
    if let (Some(f), Some(_)) = (&fleet, &problem.feeder) {
        diag.feeder_shadow_price = Some((0..t).map(|k| (f.zu[k] - f.zl[k]) / problem.dt).collect());
    }
    if stalled_infeasible {
        diag.solve_seconds = start.elapsed().as_secs_f64();
        return FleetSolution::infeasible(
            infeasibility_reason(problem, fleet.as_ref(), &last),
            diag,
        );
    }
    let out_sites: Vec<SiteSolution> = problem
        .sites
        .iter()
        .zip(&models)
        .zip(&sites)
        .map(|((p, m), s)| purify(p, m, &s.x))
        .collect();
    let mut sol = FleetSolution {
        status: if converged {
            SolveStatus::Optimal
        } else {
            SolveStatus::IterationLimit
        },
        objective: 0.0,
        sites: out_sites,
        diagnostics: diag,
    };
    sol.objective = problem.objective(&sol);
    sol.diagnostics.solve_seconds = start.elapsed().as_secs_f64();
    sol
}

/// Complementarity right-hand sides `(rl, ru)` of site variable `j` (finite bounds, inverse slacks cached).
#[inline(always)]
fn site_rl_ru(m: &SiteModel, s: &SiteWork, j: usize, mode: Mode) -> (f64, f64) {
    let (x, zl, zu) = (s.x[j], s.zl[j], s.zu[j]);
    let (sl, su) = (x - m.lo[j], m.hi[j] - x);
    if mode.corrector {
        let dxa = s.dx_aff[j];
        let dzla = -zl * (1.0 + dxa * s.isl[j]);
        let dzua = -zu * (1.0 - dxa * s.isu[j]);
        (
            mode.sigma_mu - sl * zl - dxa * dzla,
            mode.sigma_mu - su * zu + dxa * dzua,
        )
    } else {
        (-sl * zl, -su * zu)
    }
}

/// `ρ = −rd + rl/(x − l) − ru/(u − x)` for every site variable.
fn site_rho(m: &SiteModel, s: &SiteWork, mode: Mode, out: &mut [f64]) {
    for (j, o) in out.iter_mut().enumerate().take(m.nv) {
        let (rl, ru) = site_rl_ru(m, s, j, mode);
        *o = -s.rd[j] + rl * s.isl[j] - ru * s.isu[j];
    }
}

/// Bound-multiplier steps of site variable `j` for the primal step `dx`.
#[inline(always)]
fn site_dz(m: &SiteModel, s: &SiteWork, j: usize, dx: f64, mode: Mode) -> (f64, f64) {
    let (rl, ru) = site_rl_ru(m, s, j, mode);
    (
        (rl - s.zl[j] * dx) * s.isl[j],
        (ru + s.zu[j] * dx) * s.isu[j],
    )
}

/// Largest primal and dual steps (≤ 1) for a site.
fn site_max_steps(m: &SiteModel, s: &SiteWork, dx: &[f64], mode: Mode) -> (f64, f64) {
    let (mut ip, mut id) = (1.0_f64, 1.0_f64);
    for j in 0..m.nv {
        let d = dx[j];
        ip = ip.max(-d * s.isl[j]).max(d * s.isu[j]);
        let (dzl, dzu) = site_dz(m, s, j, d, mode);
        id = id.max(-dzl / s.zl[j]).max(-dzu / s.zu[j]);
    }
    (1.0 / ip, 1.0 / id)
}

/// Complementarity of a site after a step of lengths `(ap, ad)`.
fn site_comp_after(m: &SiteModel, s: &SiteWork, dx: &[f64], mode: Mode, ap: f64, ad: f64) -> f64 {
    let mut c = 0.0;
    for j in 0..m.nv {
        let d = dx[j];
        let (dzl, dzu) = site_dz(m, s, j, d, mode);
        c += (s.x[j] - m.lo[j] + ap * d) * (s.zl[j] + ad * dzl)
            + (m.hi[j] - s.x[j] - ap * d) * (s.zu[j] + ad * dzu);
    }
    c
}

fn fleet_block(f: &Fleet) -> Block<'_> {
    Block {
        x: &f.x,
        zl: &f.zl,
        zu: &f.zu,
        lo: &f.lo,
        hi: &f.hi,
        dx_aff: &f.dx_aff,
    }
}

/// Computes the Newton direction for `mode` into `dx_aff` (predictor) or `dx` (corrector), with the row
/// multiplier steps in `dv` / `dy`.
fn direction(
    models: &[SiteModel],
    sites: &mut [SiteWork],
    fleet: Option<&mut Fleet>,
    schur: &[f64],
    mode: Mode,
    chunk: usize,
) {
    let t = models.first().map_or(0, |m| m.t);
    let coupled = fleet.is_some();
    // Pass 1: site right-hand sides, first site solves, and their share of the fleet right-hand side.
    let ty = sites
        .par_iter_mut()
        .zip(models.par_iter())
        .with_min_len(chunk)
        .fold(
            || vec![0.0; if coupled { t } else { 0 }],
            |mut acc, (s, m)| {
                let mut rho = std::mem::take(&mut s.tmp);
                site_rho(m, s, mode, &mut rho);
                if m.demand {
                    // The peak enters as a border, not through w·ρ.
                    s.rho_p = rho[6 * m.t];
                    rho[6 * m.t] = 0.0;
                }
                for j in 0..m.nv {
                    rho[j] *= s.w[j];
                }
                m.apply_a(&rho, &mut s.rhs);
                for (r, p) in s.rhs.iter_mut().zip(&s.rp) {
                    *r = -p - *r;
                }
                if coupled {
                    for k in 0..m.t {
                        acc[k] -= rho[C * m.t + k] - rho[D * m.t + k];
                    }
                    s.dv.copy_from_slice(&s.rhs);
                    s.f.solve(m, &mut s.dv, s.rho_p);
                    let mut neg = vec![0.0; m.t];
                    s.f.add_mys(m, &s.dv, &mut neg);
                    for k in 0..m.t {
                        acc[k] -= neg[k];
                    }
                }
                s.tmp = rho;
                acc
            },
        )
        .reduce(Vec::new, add_vec);
    // Fleet rows.
    let dy: Option<Vec<f64>> = fleet.map(|f| {
        let mut rho = vec![0.0; t];
        fleet_block(f).rho(&f.rd, mode, &mut rho);
        let mut b: Vec<f64> = (0..t).map(|k| ty[k] - f.rp[k] + f.w[k] * rho[k]).collect();
        dense::solve(schur, t, &mut b);
        let out = if mode.corrector {
            &mut f.dx
        } else {
            &mut f.dx_aff
        };
        for k in 0..t {
            out[k] = f.w[k] * (rho[k] - b[k]);
        }
        f.dy.copy_from_slice(&b);
        b
    });
    // Pass 2: final site solves and primal steps.
    let dyr = dy.as_deref();
    sites
        .par_iter_mut()
        .zip(models.par_iter())
        .with_min_len(chunk)
        .for_each(|(s, m)| {
            s.dv.copy_from_slice(&s.rhs);
            if let Some(y) = dyr {
                s.f.sub_msy(m, y, &mut s.dv);
            }
            let dp = s.f.solve(m, &mut s.dv, s.rho_p);
            let mut out = std::mem::take(if mode.corrector {
                &mut s.dx
            } else {
                &mut s.dx_aff
            });
            m.apply_at(&s.dv, dyr, &mut out);
            // tmp holds w·ρ from pass 1.
            for j in 0..m.nv {
                out[j] = s.tmp[j] + s.w[j] * out[j];
            }
            if m.demand {
                out[6 * m.t] = dp;
            }
            if mode.corrector {
                s.dx = out;
            } else {
                s.dx_aff = out;
            }
        });
}

/// Step lengths to the boundary for the current direction (equal for QPs).
fn step_lengths(
    models: &[SiteModel],
    sites: &[SiteWork],
    fleet: Option<&Fleet>,
    mode: Mode,
    chunk: usize,
    equal: bool,
) -> (f64, f64) {
    fn pick(s: &SiteWork, corrector: bool) -> &[f64] {
        if corrector { &s.dx } else { &s.dx_aff }
    }
    let (mut ap, mut ad) = sites
        .par_iter()
        .zip(models.par_iter())
        .with_min_len(chunk)
        .map(|(s, m)| site_max_steps(m, s, pick(s, mode.corrector), mode))
        .reduce(|| (1.0, 1.0), |a, b| (a.0.min(b.0), a.1.min(b.1)));
    if let Some(f) = fleet {
        let dx = if mode.corrector { &f.dx } else { &f.dx_aff };
        let (p, d) = fleet_block(f).max_steps(dx, mode);
        ap = ap.min(p);
        ad = ad.min(d);
    }
    if equal {
        let a = ap.min(ad);
        (a, a)
    } else {
        (ap, ad)
    }
}

/// Builds a feasible schedule from the final iterate: clamps the battery powers, recomputes the SoC by the
/// dynamics, re-derives grid import/export from the balance and sets the peak.
fn purify(p: &crate::problem::SiteProblem, m: &SiteModel, x: &[f64]) -> SiteSolution {
    let t = m.t;
    let mut sol = SiteSolution::zeros(p.id.clone(), t);
    let mut soc = m.e0;
    for k in 0..t {
        let c = x[C * t + k].clamp(0.0, p.charge_max(k));
        let d = x[D * t + k].clamp(0.0, p.discharge_max(k));
        soc += m.a * c - m.b * d;
        let net = m.net[k] + c - d;
        let mut gm = x[GM * t + k].clamp(0.0, p.grid_export_max);
        let mut gp = net + gm;
        if gp < 0.0 {
            gp = 0.0;
            gm = -net;
        } else if gp > p.grid_import_max {
            gp = p.grid_import_max;
            gm = gp - net;
        }
        sol.charge[k] = c;
        sol.discharge[k] = d;
        sol.grid_import[k] = gp;
        sol.grid_export[k] = gm;
        sol.soc_end[k] = soc;
    }
    if p.demand_charge > 0.0 {
        sol.peak_import = Some(sol.grid_import.iter().fold(0.0_f64, |a, &v| a.max(v)));
    }
    sol
}

/// A reason for a fleet the method could not make feasible: the fleet row (or site row) with the largest residual.
fn infeasibility_reason(problem: &FleetProblem, fleet: Option<&Fleet>, r: &Resid) -> String {
    if let (Some(f), Some(feeder)) = (fleet, &problem.feeder) {
        let (k, worst) = f.rp.iter().enumerate().fold((0, 0.0_f64), |acc, (k, v)| {
            if v.abs() > acc.1 { (k, v.abs()) } else { acc }
        });
        if worst > 0.0 {
            let net = f.x[k] + f.rp[k];
            let side = if net > feeder.import_limit[k] {
                "import"
            } else {
                "export"
            };
            return format!(
                "feeder {side} limit at slot {k} cannot be met together with the sites' other constraints \
                 (import limit {} kW, export limit {} kW; the interior-point method's closest point still needs \
                 {net:.3} kW there, residual {worst:.3e} kW)",
                feeder.import_limit[k], feeder.export_limit[k]
            );
        }
    }
    format!(
        "the constraints cannot all be met (the interior-point method's primal residual stays at {:.3e})",
        r.pres
    )
}
