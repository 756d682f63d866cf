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
//! that measures how much the complementarity can fall, then a corrector aiming at `σμ` with `σ = (μ_aff/μ)⁴`
//! (Mehrotra uses the cube; the fourth power saved 1–2 iterations on every fleet fixture) and the predictor's
//! second-order term. Steps stop at 99.5 % of the distance to the bounds.
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
//! `ρ_k ∈ [0, 1)`. It is accumulated in blocks of 16 rows: a running product (no exponent overflow) carries the
//! columns left of the block, and each row of the block receives them times one scalar (a vectorisable update);
//! entries are skipped once the product falls below 1e-24 (a full SoC or an empty battery decouples the slots
//! before and after it). Sites are processed in parallel (rayon), each thread adding into its own S. `S` is
//! factorised by dense Cholesky. A solve is then: one O(T) solve per site, a T×T triangular solve, one more O(T)
//! solve per site.
//!
//! # Four passes over the sites per iteration
//!
//! For a large fleet the site data (≈ 60 kB per site at T = 96) does not fit in cache, so the time goes into
//! reading it; the iteration is arranged so that each site is visited four times, each visit doing all the work
//! that the global quantities known at that point allow:
//!
//! 1. apply the previous step (`x`, `zl`, `zu`, `v`), residuals, `W`, the site factorisation, the site's Schur
//!    terms and the predictor's first solve (its share of the fleet right-hand side);
//! 2. (after the fleet's predictor step `dy`) the predictor's second solve, its step-length ratios and the two sums
//!    from which the complementarity after any step `(αp, αd)` follows: with `(x − l)·dzl = −(x − l)·zl − zl·dx`
//!    it is `(1 − αd)·comp + (αp − αd)·Σ dx (zl − zu) + αp αd·Σ dx (dzl − dzu)`, so no further pass is needed
//!    for Mehrotra's `σ`;
//! 3. the corrector's right-hand side and first solve;
//! 4. (after the fleet's corrector step) the second solve and the step-length ratios.
//!
//! The bound-multiplier steps are never stored: they are recomputed from `dx`, the predictor's `dx` and the
//! inverse slacks wherever needed. The iteration starts from the middle of each box with bound multipliers
//! `zl − zu = q` (plus the cost scale on both), which makes the initial dual residual zero.
//!
//! # Warm starts
//!
//! Every solution carries a [`WarmPoint`] ([`FleetSolution::warm_point`]): the first iterate whose complementarity
//! fell below [`Settings::warm_capture_gap`] (1e-2 relative) with residuals below 1e-6 — close to the optimum but
//! still well inside the bounds; the final iterate hugs the active bounds and would take tiny steps as soon as the
//! active set moves. [`Solver::solve_warm`] with such a solution (of a problem of the same shape) starts from it:
//!
//! 1. each value is moved inside its new bounds (a margin of 1e-3 of the box) and blended with the cold start,
//!    `x = 0.9·x_kept + 0.1·x_cold`, so that every slack is at least a tenth of the cold one;
//! 2. row multipliers are kept; bound multipliers are blended likewise (`0.99·z_kept + 0.01·z_cold`), raised to at
//!    least `μ_kept/slack`, and then moved (as little as possible, each kept above that floor) so that the dual
//!    residual of the *new* costs is zero — a changed price or SoC leaves only a primal residual to the iteration;
//! 3. the iteration is the same as from a cold start, so the optimum and its accuracy do not depend on the start.
//!
//! [`crate::mpc::MpcController`] shifts the point with the horizon ([`WarmPoint::shifted`]). Measured on the
//! fixtures (see docs/benchmarks.md and `tests/ipm_warm.rs`): 25–45 % fewer iterations after a changed SoC, a
//! forecast update or a roll of the horizon (N=100: 16–19 instead of 24–27; about 36 % fewer in total). Without the blend the same starts
//! needed *more* iterations than a cold start and a rolled N=100 horizon stalled, which is why it is there.
//!
//! # Termination and clean-up
//!
//! The method stops when the primal residual is below `primal_tolerance` (absolute, kW/kWh), the dual residual
//! below `dual_tolerance` (relative to the largest cost coefficient) and the complementarity gap below
//! `gap_tolerance` relative to the objective. The schedule is then *purified*: `c` and `d` are clamped to their
//! bounds, the SoC is recomputed from them by the dynamics, `gp`/`gm` are re-derived from the balance (keeping the
//! method's split), and `P` is the peak import. Because the iterates are strictly interior, the only violations
//! left are the tiny equality residuals, far below 1e-6. Infeasibility is reported with a reason naming the
//! constraint family, site and slot. When the iteration does not converge (its primal residual stalls, or the
//! iteration limit is reached) an exact per-site reachability check (see `feasibility`) names the infeasible site
//! constraint; if it finds none, a stalled fleet is reported by the fleet row with the largest residual. The check
//! runs only then, so that feasible problems do not pay for it.
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
mod warm;

pub use warm::WarmPoint;

use std::sync::Arc;
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
    /// The iterate kept for warm starts ([`FleetSolution::warm_point`]) is the first whose complementarity is below
    /// this, relative to `1 + |objective|`, with residuals below `1e-6`: near the optimum but still well inside the
    /// bounds (the final iterate is too close to them to restart from).
    pub warm_capture_gap: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gap_tolerance: 1e-10,
            primal_tolerance: 1e-9,
            dual_tolerance: 1e-9,
            max_iterations: 100,
            threads: 0,
            warm_capture_gap: 1e-2,
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
        self.solve_warm(problem, None)
    }

    /// Solves `problem` starting from `warm_start`'s [`FleetSolution::warm_point`] when it has one of the right
    /// shape (same horizon length, sites, demand-charge sites and fleet coupling); otherwise from scratch. The
    /// optimum does not depend on the start; [`Diagnostics::warm_started`] says which start was used.
    fn solve_warm(
        &self,
        problem: &FleetProblem,
        warm_start: Option<&FleetSolution>,
    ) -> Result<FleetSolution> {
        problem.validate()?;
        let warm = warm_start.and_then(|s| s.warm_point.as_deref());
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
            Ok(pool.install(|| run(problem, &self.settings, warm)))
        } else {
            Ok(run(problem, &self.settings, warm))
        }
    }
}

/// Per-site iterate, the quantities of the current factorisation, the two directions and the factorisation.
///
/// Arrays of length `nv` are indexed like the site's variables (kind-major, see [`site`]), arrays of length `nr`
/// like its rows. Every per-variable pass over a site runs over these flat arrays, so it stays in cache and the
/// compiler can vectorise it.
struct SiteWork {
    x: Vec<f64>,
    zl: Vec<f64>,
    zu: Vec<f64>,
    v: Vec<f64>,
    /// `1/(x − l)`, `1/(u − x)` and the inverse barrier Hessian `w` at the current iterate.
    isl: Vec<f64>,
    isu: Vec<f64>,
    w: Vec<f64>,
    /// The right-hand side `ρ` of the current direction: the predictor's, overwritten by the corrector's.
    rho: Vec<f64>,
    /// The predictor's primal step (kept for the corrector's second-order term).
    dxa: Vec<f64>,
    /// The corrector's primal step, applied at the start of the next iteration.
    dx: Vec<f64>,
    rp: Vec<f64>,
    /// `−r_p − A W ρ` of the current direction (the site's right-hand side of the normal equations).
    rhs: Vec<f64>,
    /// Row multiplier step (after the second solve of the corrector: the step applied to `v`).
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

/// Which right-hand side a fleet direction uses.
#[derive(Clone, Copy)]
struct Mode {
    sigma_mu: f64,
    corrector: bool,
}

/// The step taken at the end of an iteration; the sites apply it at the start of the next residual pass, so that
/// their data is read once for both.
#[derive(Clone, Copy)]
struct Step {
    ap: f64,
    ad: f64,
    sigma_mu: f64,
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

/// Variable block view used by the fleet's per-variable kernels (its bounds may be infinite).
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

/// Steps still taken once complementarity is exhausted while the primal residual is above its tolerance.
const EXHAUSTED_EXTRA_STEPS: usize = 3;

/// The stronger floor used for sites with a demand charge, whose peak rows need it (with the dual regularisation)
/// to stay accurate; it costs some extra iterations, so other sites keep the light one.
const MIN_HESSIAN_PEAK: f64 = 1e-6;

/// Residual norms, complementarity and primal objective of the current iterate.
#[derive(Clone, Copy, Default)]
struct Resid {
    comp: f64,
    nb: usize,
    pres: f64,
    dres: f64,
    pobj: f64,
}

impl Resid {
    fn merge(self, b: Resid) -> Resid {
        Resid {
            comp: self.comp + b.comp,
            nb: self.nb + b.nb,
            pres: self.pres.max(b.pres),
            dres: self.dres.max(b.dres),
            pobj: self.pobj + b.pobj,
        }
    }
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

/// What the residual pass adds up over sites: residuals, `Σ_i (c − d)` per slot, the Schur complement's site
/// terms and the sites' share of the predictor's fleet right-hand side.
struct Pass1 {
    r: Resid,
    flow: Vec<f64>,
    schur: Vec<f64>,
    ty: Vec<f64>,
    buf: Vec<f64>,
}

impl Pass1 {
    fn new(t: usize, coupled: bool) -> Self {
        let n = if coupled { t } else { 0 };
        Pass1 {
            r: Resid::default(),
            flow: vec![0.0; n],
            schur: vec![0.0; n * n],
            ty: vec![0.0; n],
            buf: vec![0.0; t],
        }
    }

    fn merge(self, b: Pass1) -> Pass1 {
        Pass1 {
            r: self.r.merge(b.r),
            flow: add_vec(self.flow, b.flow),
            schur: add_vec(self.schur, b.schur),
            ty: add_vec(self.ty, b.ty),
            buf: self.buf,
        }
    }
}

/// The bound-multiplier steps `(dzl, dzu)` of the corrector for one site variable, from its inverse slacks, bound
/// multipliers, predictor step `dxa` and corrector step `dx` (the Newton equations of `(x − l)·zl = σμ` and
/// `(u − x)·zu = σμ` with Mehrotra's second-order term).
#[inline(always)]
fn corrector_dz(
    sigma_mu: f64,
    il: f64,
    iu: f64,
    zl: f64,
    zu: f64,
    dxa: f64,
    dx: f64,
) -> (f64, f64) {
    let (zsl, zsu) = (zl * il, zu * iu);
    let dzla = -zl - zsl * dxa;
    let dzua = -zu + zsu * dxa;
    (
        sigma_mu * il - zl - dxa * dzla * il - zsl * dx,
        sigma_mu * iu - zu + dxa * dzua * iu + zsu * dx,
    )
}

/// `a` or `b`, whichever is larger, written as a select so that loops using it vectorise (a NaN `b` is ignored).
#[inline(always)]
fn vmax(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

/// [`interior`] for finite bounds, as selects.
#[inline(always)]
fn interior_finite(x: f64, l: f64, u: f64) -> f64 {
    let eps = 1e-15 * (1.0 + x.abs());
    let x = if x < l + eps { l + eps } else { x };
    if x > u - eps { u - eps } else { x }
}

/// Applies the previous iteration's step to a site (row multipliers, variables, bound multipliers).
fn site_update(m: &SiteModel, s: &mut SiteWork, st: Step) {
    for (v, dv) in s.v.iter_mut().zip(&s.dv) {
        *v += st.ad * dv;
    }
    let n = m.nv;
    let (lo, hi) = (&m.lo[..n], &m.hi[..n]);
    let (isl, isu, dxa, dx) = (&s.isl[..n], &s.isu[..n], &s.dxa[..n], &s.dx[..n]);
    let (x, zl, zu) = (&mut s.x[..n], &mut s.zl[..n], &mut s.zu[..n]);
    for j in 0..n {
        let (dzl, dzu) = corrector_dz(st.sigma_mu, isl[j], isu[j], zl[j], zu[j], dxa[j], dx[j]);
        x[j] = interior_finite(x[j] + st.ap * dx[j], lo[j], hi[j]);
        zl[j] = vmax(zl[j] + st.ad * dzl, 1e-300);
        zu[j] = vmax(zu[j] + st.ad * dzu, 1e-300);
    }
}

/// Dual residual, complementarity and objective of the site variables in `range` (whose Hessian diagonal is `qd`),
/// and their inverse slacks, inverse barrier Hessian and predictor right-hand side `ρ = −(Qx + q − Aᵀv)`.
/// `s.rho` holds `Aᵀv` on entry.
fn site_residual_kernel(
    m: &SiteModel,
    s: &mut SiteWork,
    range: std::ops::Range<usize>,
    qd: f64,
    floor: f64,
    out: &mut Resid,
) {
    let (x, lo, hi, q) = (
        &s.x[range.clone()],
        &m.lo[range.clone()],
        &m.hi[range.clone()],
        &m.q[range.clone()],
    );
    let n = x.len();
    let (lo, hi, q) = (&lo[..n], &hi[..n], &q[..n]);
    let (zl, zu) = (&s.zl[range.clone()], &s.zu[range.clone()]);
    let (zl, zu) = (&zl[..n], &zu[..n]);
    let rho = &mut s.rho[range.clone()][..n];
    let isl = &mut s.isl[range.clone()][..n];
    let isu = &mut s.isu[range.clone()][..n];
    let w = &mut s.w[range][..n];
    let (mut comp, mut dres, mut pobj) = (0.0, 0.0_f64, 0.0);
    for j in 0..n {
        let xj = x[j];
        let (sl, su) = (xj - lo[j], hi[j] - xj);
        let (il, iu) = (1.0 / sl, 1.0 / su);
        let g = qd * xj + q[j] - rho[j];
        dres = vmax(dres, (g - zl[j] + zu[j]).abs());
        comp += sl * zl[j] + su * zu[j];
        pobj += (q[j] + 0.5 * qd * xj) * xj;
        isl[j] = il;
        isu[j] = iu;
        w[j] = 1.0 / vmax(qd + zl[j] * il + zu[j] * iu, floor);
        rho[j] = -g;
    }
    out.comp += comp;
    out.dres = out.dres.max(dres);
    out.pobj += pobj;
}

/// The residual pass of one site: applies the previous step, computes the residuals, factorises the site block,
/// adds the site's terms to the Schur complement and its share of the predictor's fleet right-hand side.
fn site_pass1(
    m: &SiteModel,
    s: &mut SiteWork,
    y: Option<&[f64]>,
    step: Option<Step>,
    acc: &mut Pass1,
) {
    let t = m.t;
    if let Some(st) = step {
        site_update(m, s, st);
    }
    m.apply_at(&s.v, y, &mut s.rho);
    let floor = if m.demand {
        MIN_HESSIAN_PEAK
    } else {
        MIN_HESSIAN
    };
    let mut r = Resid {
        nb: 2 * m.nv,
        ..Resid::default()
    };
    site_residual_kernel(m, s, 0..2 * t, m.quad, floor, &mut r);
    site_residual_kernel(m, s, 2 * t..m.nv, 0.0, floor, &mut r);
    m.apply_a(&s.x, &mut s.rp);
    s.rp[t] -= m.e0;
    for (rp, net) in s.rp[..t].iter_mut().zip(&m.net) {
        *rp -= net;
    }
    r.pres = s.rp.iter().fold(0.0_f64, |a, v| a.max(v.abs()));
    acc.r = acc.r.merge(r);
    let coupled = !acc.flow.is_empty();
    if coupled {
        let (c, d) = (&s.x[C * t..C * t + t], &s.x[D * t..D * t + t]);
        for k in 0..t {
            acc.flow[k] += c[k] - d[k];
        }
    }
    s.f.factor(m, &s.w);
    if coupled {
        s.f.add_schur(m, &mut acc.schur, &mut acc.buf);
    }
    first_solve(m, s, coupled.then_some(&mut acc.ty[..]));
}

/// Forms the site's right-hand side `−r_p − A W ρ` of the current direction (the peak's `ρ` goes into the border)
/// and, for a coupled fleet, adds the site's share `−B W ρ − B M⁻¹ (…)` to the fleet right-hand side `ty`.
fn first_solve(m: &SiteModel, s: &mut SiteWork, ty: Option<&mut [f64]>) {
    let t = m.t;
    if m.demand {
        s.rho_p = s.rho[6 * t];
    }
    m.apply_a_scaled(&s.w, &s.rho, &mut s.rhs);
    for (r, p) in s.rhs.iter_mut().zip(&s.rp) {
        *r = -p - *r;
    }
    if let Some(ty) = ty {
        let (wc, wd) = (&s.w[C * t..C * t + t], &s.w[D * t..D * t + t]);
        let (rc, rd) = (&s.rho[C * t..C * t + t], &s.rho[D * t..D * t + t]);
        for k in 0..t {
            ty[k] -= wc[k] * rc[k] - wd[k] * rd[k];
        }
        s.dv.copy_from_slice(&s.rhs);
        s.f.solve(m, &mut s.dv, s.rho_p);
        s.f.sub_mys(m, &s.dv, ty);
    }
}

/// The site's second solve of the current direction given the fleet multiplier step `dy`: the row multiplier
/// step into `s.dv` and the primal step `W (ρ + Aᵀ dv + B ᵀ dy)` into `dx_aff` (predictor) or `dx` (corrector).
fn second_solve(m: &SiteModel, s: &mut SiteWork, dy: Option<&[f64]>, corrector: bool) {
    s.dv.copy_from_slice(&s.rhs);
    if let Some(y) = dy {
        s.f.sub_msy(m, y, &mut s.dv);
    }
    let dp = s.f.solve(m, &mut s.dv, s.rho_p);
    let mut out = std::mem::take(if corrector { &mut s.dx } else { &mut s.dxa });
    m.apply_at(&s.dv, dy, &mut out);
    let n = m.nv;
    let (w, rho) = (&s.w[..n], &s.rho[..n]);
    for (j, o) in out[..n].iter_mut().enumerate() {
        *o = w[j] * (rho[j] + *o);
    }
    if m.demand {
        out[6 * m.t] = dp;
    }
    if corrector {
        s.dx = out;
    } else {
        s.dxa = out;
    }
}

/// What the predictor pass adds up over sites: the step-length ratios (`1/α` of the primal and dual steps) and the
/// two sums that give the complementarity after any step `(αp, αd)` (see [`run`]).
#[derive(Clone, Copy, Default)]
struct PredStats {
    ip: f64,
    id: f64,
    s2: f64,
    s3: f64,
}

impl PredStats {
    fn merge(self, b: PredStats) -> PredStats {
        PredStats {
            ip: self.ip.max(b.ip),
            id: self.id.max(b.id),
            s2: self.s2 + b.s2,
            s3: self.s3 + b.s3,
        }
    }
}

/// The predictor's second solve of one site and its step-length ratios and complementarity sums.
fn site_pass2(m: &SiteModel, s: &mut SiteWork, dy: Option<&[f64]>) -> PredStats {
    second_solve(m, s, dy, false);
    let n = m.nv;
    let (dxa, isl, isu, zl, zu) = (
        &s.dxa[..n],
        &s.isl[..n],
        &s.isu[..n],
        &s.zl[..n],
        &s.zu[..n],
    );
    let (mut ip, mut id, mut s2, mut s3) = (0.0_f64, 0.0_f64, 0.0, 0.0);
    for j in 0..n {
        let d = dxa[j];
        let (a, b) = (d * isl[j], d * isu[j]);
        ip = vmax(vmax(ip, -a), b);
        id = vmax(vmax(id, a), -b);
        // dzl = −zl·(1 + a), dzu = −zu·(1 − b).
        let dzl = -zl[j] * (1.0 + a);
        let dzu = -zu[j] * (1.0 - b);
        s2 += d * (zl[j] - zu[j]);
        s3 += d * (dzl - dzu);
    }
    PredStats {
        ip,
        id: 1.0 + id,
        s2,
        s3,
    }
}

/// The corrector's right-hand side `ρ ← ρ + σμ (1/(x−l) − 1/(u−x)) − dxa (dzla/(x−l) + dzua/(u−x))` and first
/// solve of one site.
fn site_pass3(m: &SiteModel, s: &mut SiteWork, sigma_mu: f64, ty: Option<&mut [f64]>) {
    let n = m.nv;
    let (dxa, isl, isu, zl, zu) = (
        &s.dxa[..n],
        &s.isl[..n],
        &s.isu[..n],
        &s.zl[..n],
        &s.zu[..n],
    );
    let rho = &mut s.rho[..n];
    for j in 0..n {
        let (il, iu, d) = (isl[j], isu[j], dxa[j]);
        let dzla = -zl[j] * (1.0 + d * il);
        let dzua = -zu[j] * (1.0 - d * iu);
        rho[j] += sigma_mu * (il - iu) - d * (dzla * il + dzua * iu);
    }
    first_solve(m, s, ty);
}

/// The corrector's second solve of one site and its step-length ratios.
fn site_pass4(m: &SiteModel, s: &mut SiteWork, dy: Option<&[f64]>, sigma_mu: f64) -> (f64, f64) {
    second_solve(m, s, dy, true);
    let n = m.nv;
    let (dxa, dx, isl, isu, zl, zu) = (
        &s.dxa[..n],
        &s.dx[..n],
        &s.isl[..n],
        &s.isu[..n],
        &s.zl[..n],
        &s.zu[..n],
    );
    let (mut ip, mut id) = (0.0_f64, 0.0_f64);
    for j in 0..n {
        let d = dx[j];
        ip = vmax(vmax(ip, -d * isl[j]), d * isu[j]);
        let (dzl, dzu) = corrector_dz(sigma_mu, isl[j], isu[j], zl[j], zu[j], dxa[j], d);
        id = vmax(vmax(id, -dzl / zl[j]), -dzu / zu[j]);
    }
    (ip, id)
}

/// Starting bound multipliers: `zl − zu = q` (the cost), so that the dual residual starts at zero for `v = 0`,
/// with `delta` added to both for centrality.
fn start_duals(m: &SiteModel, delta: f64) -> (Vec<f64>, Vec<f64>) {
    (
        m.q.iter().map(|q| delta + q.max(0.0)).collect(),
        m.q.iter().map(|q| delta + (-q).max(0.0)).collect(),
    )
}

fn run(problem: &FleetProblem, settings: &Settings, warm: Option<&WarmPoint>) -> FleetSolution {
    let start = Instant::now();
    let t = problem.slots();
    let n = problem.sites.len();
    let mut diag = Diagnostics {
        method: "ipm".into(),
        ..Diagnostics::default()
    };
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

    // Initial point: the middle of each box (capped for very wide boxes), bound multipliers from the costs.
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
            let (zl, zu) = start_duals(m, qscale);
            SiteWork {
                x,
                zl,
                zu,
                v: vec![0.0; m.nr],
                isl: vec![0.0; m.nv],
                isu: vec![0.0; m.nv],
                w: vec![0.0; m.nv],
                rho: vec![0.0; m.nv],
                dxa: vec![0.0; m.nv],
                dx: vec![0.0; m.nv],
                rp: vec![0.0; m.nr],
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
    if let Some(w) = warm.filter(|w| w.fits(t, &models, coupled)) {
        diag.warm_started = true;
        let y = w.fleet.as_ref().map(|f| f.y.as_slice());
        sites
            .par_iter_mut()
            .zip(models.par_iter())
            .zip(w.sites.par_iter())
            .for_each(|((s, m), p)| warm_site(m, s, p, y, w.mu));
        if let (Some(f), Some(p)) = (fleet.as_mut(), w.fleet.as_ref()) {
            warm_fleet(f, p, w.mu);
        }
    }
    let mut captured: Option<WarmPoint> = None;
    let threads = rayon::current_num_threads().max(1);
    let chunk = (n / (4 * threads)).max(1);
    let mut schur = vec![0.0; if coupled { t * t } else { 0 }];
    let mut iterations = 0;
    let mut converged = false;
    let mut stalled_infeasible = false;
    let mut exhausted_steps = 0usize;
    let mut pres_hist: Vec<f64> = Vec::new();
    let mut last = Resid::default();
    let is_qp = !problem.is_linear();
    let mut step: Option<Step> = None;

    for iter in 0..=settings.max_iterations {
        // --- the previous step, residuals, factorisation and the predictor's first solves, in one pass ---
        let yref = fleet.as_ref().map(|f| f.y.as_slice());
        let acc = sites
            .par_iter_mut()
            .zip(models.par_iter())
            .with_min_len(chunk)
            .fold(
                || Pass1::new(t, coupled),
                |mut acc, (s, m)| {
                    site_pass1(m, s, yref, step, &mut acc);
                    acc
                },
            )
            .reduce(|| Pass1::new(t, coupled), Pass1::merge);
        let mut r = acc.r;
        let site_comp = r.comp;
        if let Some(f) = fleet.as_mut() {
            for k in 0..t {
                let rp = acc.flow[k] - f.x[k] - f.rhs[k];
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
        last = r;
        let gap_scale = 1.0 + r.pobj.abs();
        if captured.is_none()
            && r.pres <= 1e-6
            && r.dres <= 1e-6 * (1.0 + qscale)
            && r.comp <= settings.warm_capture_gap * gap_scale
        {
            captured = Some(snapshot(t, mu, &sites, fleet.as_ref()));
        }
        if r.pres <= settings.primal_tolerance
            && r.dres <= settings.dual_tolerance * (1.0 + qscale)
            && r.comp <= settings.gap_tolerance * gap_scale
        {
            converged = true;
            break;
        }
        // Complementarity exhausted: further steps mostly fight round-off in the normal equations. Accept the point
        // if its residuals are within a hundred times the tolerances (the clean-up removes what is left). One thing
        // further steps do fix: with a demand charge, the dual regularisation leaves `DUAL_REG·dv` of primal
        // residual behind each step (up to a few 1e-6 after a large multiplier step), and the next step, whose
        // multiplier change is small, removes it; measured on random instances, one more step always sufficed
        // (0.3 % of them stopped here as an iteration limit after 8–14 iterations before). So a few more steps
        // are allowed before giving up.
        if r.comp <= 1e-4 * settings.gap_tolerance * gap_scale {
            converged = r.pres <= 100.0 * settings.primal_tolerance
                && r.dres <= 100.0 * settings.dual_tolerance * (1.0 + qscale);
            exhausted_steps += 1;
            if converged || exhausted_steps > EXHAUSTED_EXTRA_STEPS {
                break;
            }
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

        // --- factorisation of the fleet Schur complement, the predictor's fleet step ---
        let pred = Mode {
            sigma_mu: 0.0,
            corrector: false,
        };
        if let Some(f) = fleet.as_mut() {
            schur.copy_from_slice(&acc.schur);
            for k in 0..t {
                f.w[k] = inv_hess(f.x[k], f.lo[k], f.hi[k], f.zl[k], f.zu[k], f.quad);
                schur[k * t + k] += f.w[k];
            }
            dense::cholesky(&mut schur, t);
            fleet_direction(f, &acc.ty, &schur, pred);
        }

        // --- the predictor's site steps, step lengths and the complementarity it would reach ---
        let dyr = fleet.as_ref().map(|f| f.dy.as_slice());
        let ps = sites
            .par_iter_mut()
            .zip(models.par_iter())
            .with_min_len(chunk)
            .map(|(s, m)| site_pass2(m, s, dyr))
            .reduce(PredStats::default, PredStats::merge);
        let (mut ap, mut ad) = (1.0 / ps.ip.max(1.0), 1.0 / ps.id.max(1.0));
        if let Some(f) = fleet.as_ref() {
            let (p, d) = fleet_block(f).max_steps(&f.dx_aff, pred);
            ap = ap.min(p);
            ad = ad.min(d);
        }
        if is_qp {
            ap = ap.min(ad);
            ad = ap;
        }
        // Σ (sl + αp dx)(zl + αd dzl) + (su − αp dx)(zu + αd dzu) with sl·dzl = −sl·zl − zl·dx (and likewise
        // for the upper bound) expands to (1 − αd)·comp + (αp − αd)·s2 + αp·αd·s3.
        let comp_aff = (1.0 - ad) * site_comp
            + (ap - ad) * ps.s2
            + ap * ad * ps.s3
            + fleet
                .as_ref()
                .map_or(0.0, |f| fleet_block(f).comp_after(&f.dx_aff, pred, ap, ad));
        let mu_aff = comp_aff.max(0.0) / r.nb.max(1) as f64;
        // Mehrotra's heuristic with the exponent 4 instead of his 3: measured on the four fleet fixtures, 17/26/32/44
        // iterations (N = 10/100/1000/10,000) against 19/27/34/45. Small, and the count is not monotone in the
        // exponent (3.5 gave 30 on N=100), so this is a measured choice, not a principle.
        let sigma = if mu > 0.0 {
            (mu_aff / mu).clamp(0.0, 1.0).powi(4)
        } else {
            0.0
        };
        let sigma_mu = sigma * mu;

        // --- corrector ---
        let corr = Mode {
            sigma_mu,
            corrector: true,
        };
        let ty = sites
            .par_iter_mut()
            .zip(models.par_iter())
            .with_min_len(chunk)
            .fold(
                || vec![0.0; if coupled { t } else { 0 }],
                |mut ty, (s, m)| {
                    site_pass3(m, s, sigma_mu, coupled.then_some(&mut ty[..]));
                    ty
                },
            )
            .reduce(Vec::new, add_vec);
        if let Some(f) = fleet.as_mut() {
            fleet_direction(f, &ty, &schur, corr);
        }
        let dyr = fleet.as_ref().map(|f| f.dy.as_slice());
        let (ip, id) = sites
            .par_iter_mut()
            .zip(models.par_iter())
            .with_min_len(chunk)
            .map(|(s, m)| site_pass4(m, s, dyr, sigma_mu))
            .reduce(|| (0.0, 0.0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
        let (mut ap, mut ad) = (1.0 / ip.max(1.0), 1.0 / id.max(1.0));
        if let Some(f) = fleet.as_ref() {
            let (p, d) = fleet_block(f).max_steps(&f.dx, corr);
            ap = ap.min(p);
            ad = ad.min(d);
        }
        if is_qp {
            ap = ap.min(ad);
            ad = ap;
        }
        let tau = 0.995_f64.max(1.0 - 10.0 * mu / (1.0 + qscale));
        let (ap, ad) = ((tau * ap).min(1.0), (tau * ad).min(1.0));

        // --- update: the fleet now, the sites at the start of the next pass ---
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
        step = Some(Step { ap, ad, sigma_mu });
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
    // The exact per-site check names the reason of an infeasible problem. It runs only when the iteration did not
    // converge: a feasible problem (the usual case) does not pay for it (7 % of an N=100 solve).
    if !converged && let Some(reason) = feasibility::check(problem) {
        diag.solve_seconds = start.elapsed().as_secs_f64();
        return FleetSolution::infeasible(reason, diag);
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
    let mu = last.comp / last.nb.max(1) as f64;
    let warm_point = Some(Arc::new(
        captured.unwrap_or_else(|| snapshot(t, mu, &sites, fleet.as_ref())),
    ));
    let mut sol = FleetSolution {
        status: if converged {
            SolveStatus::Optimal
        } else {
            SolveStatus::IterationLimit
        },
        objective: 0.0,
        sites: out_sites,
        diagnostics: diag,
        warm_point,
    };
    sol.objective = problem.objective(&sol);
    sol.diagnostics.solve_seconds = start.elapsed().as_secs_f64();
    sol
}

/// Fraction of a variable's box kept between a kept warm-start value and the bounds.
const WARM_MARGIN: f64 = 1e-3;

/// A warm start blends the kept point with the cold start (the middle of each box): this much of the cold start's
/// primal values, so that every variable keeps a slack of at least a tenth of its half-width. A point near the
/// active bounds of the previous problem takes tiny steps once a changed SoC or forecast moves the active set
/// (measured: without the blend, a rolled N=100 horizon stalled).
const WARM_BLEND_PRIMAL: f64 = 0.1;

/// … and this much of the cold start's bound multipliers (a little centrality for the multipliers that the kept
/// point has driven to almost zero, without raising the complementarity to the cold start's level).
const WARM_BLEND_DUAL: f64 = 0.01;

/// A warm start's bound multipliers are raised so that every complementarity product is at least this fraction of
/// the kept point's average (centrality: a product near zero would cut the first steps short).
const WARM_CENTRE: f64 = 1.0;

/// Bound multipliers `(zl, zu)` of a warm start: the kept ones raised to the centrality floors `(fl, fu)`, then moved
/// so that `zl − zu = g` (zero dual residual for the new costs) changing them as little as possible — the side that
/// has to fall is lowered to its floor at most, the rest goes to the other side. A side without a floor (an infinite
/// bound) keeps a zero multiplier.
#[inline]
fn warm_duals(zl: f64, zu: f64, g: f64, fl: Option<f64>, fu: Option<f64>) -> (f64, f64) {
    let mut zl = fl.map_or(0.0, |f| zl.max(f));
    let mut zu = fu.map_or(0.0, |f| zu.max(f));
    let rd = g - zl + zu;
    if rd > 0.0 {
        let cut = fu.map_or(0.0, |f| rd.min(zu - f));
        zu -= cut;
        if fl.is_some() {
            zl += rd - cut;
        }
    } else {
        let cut = fl.map_or(0.0, |f| (-rd).min(zl - f));
        zl -= cut;
        if fu.is_some() {
            zu += -rd - cut;
        }
    }
    (zl, zu)
}

/// Starts a site from its share of a warm point: values moved inside the (possibly changed) bounds and blended with
/// the cold start (already in `s`), row multipliers as kept, bound multipliers blended likewise and re-centred with
/// zero dual residual (see [`warm_duals`]).
fn warm_site(m: &SiteModel, s: &mut SiteWork, p: &warm::SitePoint, y: Option<&[f64]>, mu: f64) {
    for (v, &pv) in s.v.iter_mut().zip(&p.v) {
        *v = f64::from(pv);
    }
    for j in 0..m.nv {
        let kept = warm::inside(f64::from(p.x[j]), m.lo[j], m.hi[j], WARM_MARGIN);
        s.x[j] = (1.0 - WARM_BLEND_PRIMAL) * kept + WARM_BLEND_PRIMAL * s.x[j];
    }
    m.apply_at(&s.v, y, &mut s.rho);
    let floor = WARM_CENTRE * mu;
    let lam = WARM_BLEND_DUAL;
    for j in 0..m.nv {
        let qd = if j < 2 * m.t { m.quad } else { 0.0 };
        let x = s.x[j];
        let g = qd * x + m.q[j] - s.rho[j];
        let (zl, zu) = warm_duals(
            (1.0 - lam) * f64::from(p.zl[j]) + lam * s.zl[j],
            (1.0 - lam) * f64::from(p.zu[j]) + lam * s.zu[j],
            g,
            Some(floor / (x - m.lo[j])),
            Some(floor / (m.hi[j] - x)),
        );
        s.zl[j] = zl;
        s.zu[j] = zu;
    }
}

/// Starts the fleet variables from a warm point, like [`warm_site`].
fn warm_fleet(f: &mut Fleet, p: &warm::FleetPoint, mu: f64) {
    let floor = WARM_CENTRE * mu;
    let lam = WARM_BLEND_DUAL;
    for k in 0..f.x.len() {
        let (l, u) = (f.lo[k], f.hi[k]);
        let kept = warm::inside(p.x[k], l, u, WARM_MARGIN);
        let x = (1.0 - WARM_BLEND_PRIMAL) * kept + WARM_BLEND_PRIMAL * f.x[k];
        f.x[k] = x;
        f.y[k] = p.y[k];
        let g = f.quad * x + f.q[k] + f.y[k];
        let (zl, zu) = warm_duals(
            (1.0 - lam) * p.zl[k] + lam * f.zl[k],
            (1.0 - lam) * p.zu[k] + lam * f.zu[k],
            g,
            l.is_finite().then(|| floor / (x - l)),
            u.is_finite().then(|| floor / (u - x)),
        );
        f.zl[k] = zl;
        f.zu[k] = zu;
    }
}

/// The current iterate as a [`WarmPoint`] (sites in single precision).
fn snapshot(t: usize, mu: f64, sites: &[SiteWork], fleet: Option<&Fleet>) -> WarmPoint {
    let single = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    WarmPoint {
        t,
        mu,
        sites: sites
            .par_iter()
            .map(|s| warm::SitePoint {
                x: single(&s.x),
                zl: single(&s.zl),
                zu: single(&s.zu),
                v: single(&s.v),
            })
            .collect(),
        fleet: fleet.map(|f| warm::FleetPoint {
            x: f.x.clone(),
            zl: f.zl.clone(),
            zu: f.zu.clone(),
            y: f.y.clone(),
        }),
    }
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

/// The fleet's part of a direction: given the sites' share `ty` of the right-hand side, solves the Schur
/// complement system for the fleet multiplier step `dy` and sets the step of `z`.
fn fleet_direction(f: &mut Fleet, ty: &[f64], schur: &[f64], mode: Mode) {
    let t = f.x.len();
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
    f.dy = b;
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
