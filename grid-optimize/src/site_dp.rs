//! The exact single-site solver: a dynamic program over the state of charge whose cost functions are convex and
//! piecewise linear, stored as slope-sorted segment lists ("slope trick").
//!
//! # The method
//!
//! For one site the linear program of [`crate::problem`] couples the slots only through the state of charge (SoC).
//! Write `x[t] = s[t] - s[t-1]` for the energy stored in slot `t`. Everything else in the slot (charge `c`,
//! discharge `d`, grid import `gp` and export `gm`) can be optimised for a given `x`, which yields the slot's
//! cost `h_t(x)`: the minimum of a linear program over a polytope, projected onto one coordinate. Such a
//! function is **convex and piecewise linear** (at most a handful of pieces here), so it is fully described by
//! its left end `xl` and a list of `(length, slope)` segments with increasing slopes.
//!
//! The cheapest cost of reaching SoC `s` at the end of slot `t` is then
//!
//! ```text
//! F_t(s) = min_x F_{t-1}(s - x) + h_t(x)       restricted to e_min ≤ s ≤ e_max,    F_{-1} = {e0 ↦ 0}
//! ```
//!
//! The minimum over `x` is an *infimal convolution*. For convex piecewise-linear functions it is exact and cheap:
//! the left ends add and the segment lists merge by slope (the epigraph of the result is the Minkowski sum).
//! The SoC window then cuts the merged list from the left (segments forced in) and from the right (segments no
//! longer storable). Finally `s[T-1]` is the point where `F_{T-1}`'s slope turns non-negative, moved up to
//! `e_final_min` if needed. The whole pass is `O(T·K·log K)` for `K` segments in the list (bounded by the SoC
//! window, typically a few dozen), with no allocation inside the loop.
//!
//! **Recovering the schedule** does not need the intermediate functions. Every segment carries the slot it came
//! from. A segment cut off on the left is energy that slot must store; a segment cut off on the right is energy it
//! never stores; of the final list, the prefix up to `s[T-1]` is stored. Summing per slot gives every `x[t]`,
//! and any such choice keeps every intermediate SoC inside the window (it is between the list's ends at that
//! time), while its cost is exactly `F_{T-1}(s[T-1])`. From `x[t]` the slot's `(c, d, gp, gm)` follow in closed
//! form.
//!
//! **The slot cost `h_t`.** With `a = eta_ch·dt`, `b = dt/eta_dis`, net battery power `p = c - d` and
//! `x = a·c - b·d`, the grid cost of the net import `L + p` (`L = load - pv`) is convex piecewise linear with
//! slopes `dt·min(pi, pe)` and `dt·max(pi, pe)` (when export pays more than import, importing and exporting at
//! once up to the limits is the cheaper split, which moves the kink to `U - E`). Without simultaneous charge and
//! discharge, `x ≥ 0` costs the grid slope plus `dt·deg` per `a`, `x < 0` the grid slope minus `dt·deg` per `b`.
//! Charging and discharging at once (which the LP allows) burns `(b - a)` kWh per kW at a throughput cost; it is
//! used only when the grid slope is below `-κ = -dt·deg·(a+b)/(b-a)` (deeply negative prices) or when PV above
//! the export limit must be absorbed. The fast path covers the usual case in closed form (at most four segments);
//! otherwise `h_t` is evaluated at every candidate breakpoint (the images of the vertices of the slot's
//! polytope), which is exact because `h_t` is linear between them.
//!
//! **Demand charge.** With a peak cap `P` on the grid import, the optimum `V(P)` of the remaining LP is convex in
//! `P`, and so is `f(P) = V(P) + demand_charge·P`. A subgradient of `V` comes from the DP's duals: the marginal
//! value of stored energy `λ_t` follows from the thresholds at which the window cut segments
//! (`λ_t = max(ℓ_t, min(r_t, λ_{t+1}))`), and each slot's share is the derivative of
//! `min_x h_t(x; P) - λ_t·x` in `P`. The search runs in three steps:
//!
//! 1. solve without a cap: its peak `P_free` bounds the optimal cap from above (beyond it `f` rises at the
//!    demand charge);
//! 2. find the lowest feasible cap exactly. Only the upper end of the reachable SoC interval depends on `P`, it
//!    is concave and nondecreasing in `P`, so Newton's method on the smallest SoC margin, from the left, reaches
//!    the boundary in a few O(T) sweeps without a DP pass. Often (a large demand charge) the optimum is right
//!    there: one pass confirms a non-negative subgradient, and the site is solved in two passes;
//! 3. otherwise a one-dimensional cutting-plane (Kelley) method between a point with a negative and one with a
//!    positive subgradient: it jumps to the intersection of the two supporting lines, which for a
//!    piecewise-linear function lands on the optimal breakpoint after a few steps, and stops when the function
//!    value there meets the lower bound.
//!
//! Every pass is certified by its Lagrangian bound ([`SiteDp::duality_gap`]); a pass whose duals do not close
//! the gap (which the tests have not produced since tolerances became relative) gets its subgradient from a
//! secant instead, so a wrong cutting plane cannot end the search early.
//!
//! **Tolerances** are relative to the site's magnitudes (its largest power, energy and cost per horizon), so the
//! same problem written in other units is solved the same way.
//!
//! ```
//! use grid_optimize::{BatteryParams, FleetProblem, SiteProblem, Solver};
//! use grid_optimize::site_dp::SiteDpSolver;
//!
//! # fn main() -> grid_optimize::Result<()> {
//! let t = 4;
//! let site = SiteProblem {
//!     id: "home".into(),
//!     load: vec![1.0; t],
//!     pv: vec![0.0; t],
//!     grid_import_max: 10.0,
//!     grid_export_max: 10.0,
//!     demand_charge: 0.0,
//!     battery: BatteryParams {
//!         e_min: 0.0, e_max: 4.0, e0: 0.0, e_final_min: None,
//!         p_ch_max: 2.0, p_dis_max: 2.0, eta_ch: 1.0, eta_dis: 1.0, deg_cost: 0.0,
//!     },
//!     power_bounds: None,
//!     wear_quadratic: 0.0,
//! };
//! let problem = FleetProblem {
//!     name: "cheap night, dear evening".into(),
//!     dt: 1.0,
//!     import_price: vec![0.10, 0.10, 0.40, 0.40],
//!     export_price: vec![0.0; t],
//!     sites: vec![site],
//!     feeder: None,
//!     tracking: None,
//! };
//! let solution = SiteDpSolver::default().solve(&problem)?;
//! assert!(solution.is_optimal());
//! // Buy the dear hours' 2 kWh in the cheap hours (2 kW each at 0.10 EUR/kWh), then run on the battery.
//! assert!((solution.objective - 0.4).abs() < 1e-12);
//! assert_eq!(solution.sites[0].discharge[2..], [1.0, 1.0]);
//! assert!(problem.max_violation(&solution) < 1e-9);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::problem::{FleetProblem, SiteProblem};
use crate::solution::{Diagnostics, FleetSolution, SiteSolution, SolveStatus};
use crate::solver::Solver;
use std::time::Instant;

/// Energy tolerance (kWh) below which window cuts are ignored, relative to `1 + e_max`. Without it, rounding
/// left by summing segment lengths (~1e-16 relative) would make a cut that ends exactly on a segment boundary
/// nibble at the next segment, and report that segment's slope as the marginal value of energy.
const E_TOL: f64 = 1e-12;
/// Power tolerance for per-slot feasibility checks, relative to the slot's power magnitudes.
const P_TOL: f64 = 1e-11;
/// Most segments a slot cost function can have (generic path: at most 16 candidate breakpoints).
const MAX_SLOT_SEGS: usize = 20;

/// One piece of a convex piecewise-linear function of SoC, tagged with the slot whose cost it belongs to.
#[derive(Debug, Clone, Copy)]
struct Seg {
    len: f64,
    slope: f64,
    slot: u32,
}

/// A slope-sorted segment list that is cut at both ends and grows in the middle: a contiguous buffer with free
/// room on both sides, so cuts are index moves, searches run on one slice, and an insertion shifts the shorter
/// side.
#[derive(Debug, Default)]
struct SegList {
    buf: Vec<Seg>,
    start: usize,
    end: usize,
}

impl SegList {
    const EMPTY: Seg = Seg {
        len: 0.0,
        slope: 0.0,
        slot: 0,
    };

    fn clear(&mut self) {
        if self.buf.len() < 64 {
            self.buf.resize(64, Self::EMPTY);
        }
        self.start = self.buf.len() / 2;
        self.end = self.start;
    }

    #[inline]
    fn as_slice(&self) -> &[Seg] {
        &self.buf[self.start..self.end]
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Inserts after every segment of equal or lower slope.
    fn insert_sorted(&mut self, seg: Seg) {
        let idx = self.start + self.as_slice().partition_point(|s| s.slope <= seg.slope);
        let left = idx - self.start;
        let right = self.end - idx;
        if (left <= right && self.start > 0) || self.end == self.buf.len() {
            if self.start == 0 {
                self.recenter();
                return self.insert_sorted(seg);
            }
            self.buf.copy_within(self.start..idx, self.start - 1);
            self.start -= 1;
            self.buf[idx - 1] = seg;
        } else {
            self.buf.copy_within(idx..self.end, idx + 1);
            self.end += 1;
            self.buf[idx] = seg;
        }
    }

    /// Moves the contents to the middle of a buffer at least four times their size.
    fn recenter(&mut self) {
        let n = self.end - self.start;
        let want = (4 * n).max(64);
        if self.buf.len() < want {
            self.buf.resize(want, Self::EMPTY);
        }
        let new_start = (self.buf.len() - n) / 2;
        self.buf.copy_within(self.start..self.end, new_start);
        self.start = new_start;
        self.end = new_start + n;
    }

    #[inline]
    fn front_mut(&mut self) -> Option<&mut Seg> {
        if self.is_empty() {
            None
        } else {
            Some(&mut self.buf[self.start])
        }
    }

    #[inline]
    fn back_mut(&mut self) -> Option<&mut Seg> {
        if self.is_empty() {
            None
        } else {
            Some(&mut self.buf[self.end - 1])
        }
    }

    #[inline]
    fn pop_front(&mut self) {
        if !self.is_empty() {
            self.start += 1;
        }
    }

    #[inline]
    fn pop_back(&mut self) {
        if !self.is_empty() {
            self.end -= 1;
        }
    }
}

/// The data of one slot that the cost function depends on.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Net load `load - pv`, kW.
    l: f64,
    /// Import limit in force (`min(grid_import_max, P)`), kW.
    u: f64,
    /// Export limit, kW.
    e: f64,
    /// Charge and discharge limits, kW.
    c: f64,
    d: f64,
    /// Grid cost slopes per kW of net import (currency per kW·slot): `dt·min(pi, pe)` and `dt·max(pi, pe)`.
    g1: f64,
    g2: f64,
    /// Import price at least the export price: the grid cost's kink is at zero net import.
    kink_at_zero: bool,
    /// `eta_ch·dt` and `dt/eta_dis`.
    a: f64,
    b: f64,
    /// `dt·deg_cost`.
    delta: f64,
    /// `dt·import_price` and `dt·export_price`.
    pi_dt: f64,
    pe_dt: f64,
    /// `1/a`, `1/b`.
    inv_a: f64,
    inv_b: f64,
    /// `κ = delta·(a+b)/(b-a)` (infinite when loss-free).
    kappa: f64,
    /// `1/(b-a)` (infinite when loss-free).
    inv_loss: f64,
    /// Simultaneous charge and discharge can only serve feasibility, never cost (see [`Slot::build`]).
    simple: bool,
}

/// A slot's cost as a function of stored energy: `xl` and increasing-slope segments.
#[derive(Debug, Clone, Copy)]
struct SlotFn {
    xl: f64,
    xr: f64,
    n: usize,
    segs: [(f64, f64); MAX_SLOT_SEGS],
}

impl Default for SlotFn {
    fn default() -> Self {
        SlotFn {
            xl: 0.0,
            xr: 0.0,
            n: 0,
            segs: [(0.0, 0.0); MAX_SLOT_SEGS],
        }
    }
}

impl SlotFn {
    fn push(&mut self, len: f64, slope: f64) {
        if len <= 0.0 {
            return;
        }
        if self.n > 0 && self.segs[self.n - 1].1 == slope {
            self.segs[self.n - 1].0 += len;
        } else if self.n < MAX_SLOT_SEGS {
            self.segs[self.n] = (len, slope);
            self.n += 1;
        }
    }

    fn segs(&self) -> &[(f64, f64)] {
        &self.segs[..self.n]
    }
}

/// Why one slot admits no battery power at all.
enum SlotInfeasible {
    LoadAboveImport,
    SurplusAboveExport,
}

/// `x` for which the loss-free power `p` is reached (`x = a·p` charging, `b·p` discharging).
#[inline]
fn pmin_inv(a: f64, b: f64, v: f64) -> f64 {
    if v >= 0.0 { a * v } else { b * v }
}

impl Slot {
    #[inline]
    fn p_low(&self) -> f64 {
        -self.e - self.l
    }
    #[inline]
    fn p_high(&self) -> f64 {
        self.u - self.l
    }
    /// Kink of the grid cost in terms of battery power.
    #[inline]
    fn beta(&self) -> f64 {
        if self.kink_at_zero {
            -self.l
        } else {
            self.u - self.e - self.l
        }
    }
    #[inline]
    fn lossless(&self) -> bool {
        self.b <= self.a
    }
    /// Throughput cost of raising `p` at fixed `x` by burning energy in simultaneous charge and discharge.
    #[inline]
    fn kappa(&self) -> f64 {
        self.kappa
    }
    /// Whether simultaneous charge and discharge can only serve feasibility, never cost.
    #[inline]
    fn simple(&self) -> bool {
        self.simple
    }

    /// Grid cost of net import `n` (kW), currency per slot (up to a constant per slot that cancels).
    #[inline]
    fn grid_cost(&self, n: f64) -> f64 {
        if self.kink_at_zero {
            if n >= 0.0 { self.g2 * n } else { self.g1 * n }
        } else {
            let k = self.u - self.e;
            if n <= k {
                self.g1 * n
            } else {
                self.g1 * k + self.g2 * (n - k)
            }
        }
    }

    /// Rounding tolerance on battery power in this slot (kW).
    #[inline]
    fn p_tol(&self) -> f64 {
        P_TOL * (self.l.abs() + self.u + self.e + self.c + self.d)
    }

    fn check(&self) -> std::result::Result<(), SlotInfeasible> {
        let tol = self.p_tol();
        if self.p_high() < -self.d - tol {
            return Err(SlotInfeasible::LoadAboveImport);
        }
        if self.p_low() > self.c + tol {
            return Err(SlotInfeasible::SurplusAboveExport);
        }
        Ok(())
    }

    /// Battery power for stored energy `x`: the cheapest feasible `p`.
    #[inline]
    fn p_of_x(&self, x: f64) -> f64 {
        let (a, b) = (self.a, self.b);
        let pmin = if x >= 0.0 {
            x * self.inv_a
        } else {
            x * self.inv_b
        };
        if self.lossless() {
            return pmin;
        }
        let lo = pmin.max(self.p_low());
        if self.simple() {
            return lo;
        }
        let hi = ((x + self.c * (b - a)) / b)
            .min((x + self.d * (b - a)) / a)
            .min(self.p_high());
        let pstar = self.pstar();
        pstar.min(hi).max(lo)
    }

    /// Minimiser of `φ(p) + κ·p` when it is not at the lower end (generic path only).
    #[inline]
    fn pstar(&self) -> f64 {
        if self.g2 + self.kappa() < 0.0 {
            self.p_high()
        } else {
            self.beta()
        }
    }

    /// Cost of storing `x` (generic formula, valid for `a < b` and `x` in the domain).
    fn h_generic(&self, x: f64) -> f64 {
        let p = self.p_of_x(x);
        self.grid_cost(self.l + p) + self.kappa * p - 2.0 * self.delta * x * self.inv_loss
    }

    /// Builds the slot cost function into `out`.
    fn build(&self, out: &mut SlotFn) -> std::result::Result<(), SlotInfeasible> {
        self.check()?;
        out.n = 0;
        if self.simple() {
            self.build_simple(out);
        } else {
            self.build_generic(out);
        }
        Ok(())
    }

    fn build_simple(&self, out: &mut SlotFn) {
        let (a, b, delta) = (self.a, self.b, self.delta);
        let (pl, pu) = (self.p_low().min(self.c), self.p_high().max(-self.d));
        let xa_l = (-b * self.d).max(pmin_inv(a, b, pl));
        let xa_r = (a * self.c).min(pmin_inv(a, b, pu)).max(xa_l);
        out.xl = xa_l;
        out.xr = xa_r;
        // Region B: exporting is capped, so discharging further than the cap needs simultaneous charging.
        if !self.lossless() && pl > -self.d {
            let xb = (b * pl - self.c * (b - a)).max(a * pl - self.d * (b - a));
            if xb < xa_l {
                out.xl = xb;
                out.push(xa_l - xb, -2.0 * delta * self.inv_loss);
            }
        }
        let xbeta = pmin_inv(a, b, self.beta());
        let mut pts = [xa_l, 0.0, 0.0, xa_r];
        let mut np = 1;
        let (k1, k2) = if xbeta < 0.0 {
            (xbeta, 0.0)
        } else {
            (0.0, xbeta)
        };
        for k in [k1, k2] {
            if k > pts[np - 1] && k < xa_r {
                pts[np] = k;
                np += 1;
            }
        }
        pts[np] = xa_r;
        np += 1;
        for w in pts[..np].windows(2) {
            let (x0, x1) = (w[0], w[1]);
            if x1 <= x0 {
                continue;
            }
            // Breakpoints split at 0 and at xbeta, so the whole piece lies on one side of each.
            let mid = 0.5 * (x0 + x1);
            let g = if mid < xbeta { self.g1 } else { self.g2 };
            let slope = if mid > 0.0 {
                (g + delta) * self.inv_a
            } else {
                (g - delta) * self.inv_b
            };
            out.push(x1 - x0, slope);
        }
    }

    fn build_generic(&self, out: &mut SlotFn) {
        let (a, b) = (self.a, self.b);
        let (pl, pu) = (self.p_low(), self.p_high());
        let (c, d) = (self.c, self.d);
        let values = [pl, pu, self.pstar(), self.beta()];
        let mut cand = [0.0f64; 16];
        let mut n = 0;
        cand[n] = 0.0;
        n += 1;
        for v in values {
            cand[n] = pmin_inv(a, b, v);
            cand[n + 1] = b * v - c * (b - a);
            cand[n + 2] = a * v - d * (b - a);
            n += 3;
        }
        cand[n] = a * c;
        cand[n + 1] = -b * d;
        cand[n + 2] = a * c - b * d;
        n += 3;
        let cand = &mut cand[..n];
        cand.sort_unstable_by(f64::total_cmp);
        let ptol = self.p_tol();
        let feasible = |x: f64| {
            let pmin = if x >= 0.0 { x / a } else { x / b };
            let lo = pmin.max(pl);
            let hi = ((x + c * (b - a)) / b).min((x + d * (b - a)) / a).min(pu);
            let tol = E_TOL * (1.0 + a * c + b * d);
            x >= -b * d - tol && x <= a * c + tol && lo <= hi + ptol
        };
        let mut first = None;
        let mut last = None;
        for (i, &x) in cand.iter().enumerate() {
            if feasible(x) {
                if first.is_none() {
                    first = Some(i);
                }
                last = Some(i);
            }
        }
        let (Some(i0), Some(i1)) = (first, last) else {
            // The check() above guarantees a feasible p; keep an empty function at the loss-free point.
            let x = pmin_inv(a, b, pl.max(-d).min(pu.min(c)));
            out.xl = x;
            out.xr = x;
            return;
        };
        out.xl = cand[i0];
        out.xr = cand[i1];
        let mut x_prev = cand[i0];
        let mut h_prev = self.h_generic(x_prev);
        for &x in &cand[i0 + 1..=i1] {
            if x - x_prev <= 1e-13 * (a * c + b * d + x.abs()) {
                continue;
            }
            let h = self.h_generic(x);
            out.push(x - x_prev, (h - h_prev) / (x - x_prev));
            x_prev = x;
            h_prev = h;
        }
        out.xr = x_prev;
    }

    /// `(c, d, gp, gm)` for stored energy `x`.
    fn recover(&self, x: f64) -> (f64, f64, f64, f64) {
        let (a, b) = (self.a, self.b);
        let pmin = if x >= 0.0 {
            x * self.inv_a
        } else {
            x * self.inv_b
        };
        let p = self.p_of_x(x);
        let (c, d) = if self.lossless() || p <= pmin {
            if x >= 0.0 {
                (x * self.inv_a, 0.0)
            } else {
                (0.0, -x * self.inv_b)
            }
        } else {
            (
                ((b * p - x) * self.inv_loss).max(0.0),
                ((a * p - x) * self.inv_loss).max(0.0),
            )
        };
        // Sums of segment lengths leave crumbs of ~1e-16 kW; a schedule reads better without them.
        let snap = |v: f64, hi: f64| if v < 1e-12 { 0.0 } else { v.min(hi) };
        let (c, d) = (snap(c, self.c), snap(d, self.d));
        let n = self.l + c - d;
        let (gp, gm) = if self.kink_at_zero {
            // `load - pv` leaves the same crumbs when they (nearly) cancel.
            let n = if n.abs() < 1e-12 { 0.0 } else { n };
            (n.max(0.0), (-n).max(0.0))
        } else {
            let gm = self.e.min(self.u - n).max(0.0);
            (n + gm, gm)
        };
        (c, d, gp.max(0.0), gm)
    }

    /// Cost of the slot's flows: grid plus degradation (currency).
    #[inline]
    fn flow_cost(&self, f: (f64, f64, f64, f64)) -> f64 {
        self.pi_dt * f.2 - self.pe_dt * f.3 + self.delta * (f.0 + f.1)
    }
}

/// The best cap found so far in the demand-charge search.
struct Best {
    cap: f64,
    f: f64,
    inner_gap: f64,
}

/// Result of one DP pass.
enum Pass {
    Feasible,
    Infeasible(String),
}

/// Reusable workspace of the single-site DP: solving many sites (or re-solving in MPC) with one `SiteDp`
/// allocates nothing after the first solve of the largest horizon.
#[derive(Debug, Default)]
pub struct SiteDp {
    list: SegList,
    /// Segments of every slot's cost function from the last pass (`seg_off[k]..seg_off[k+1]`).
    seg_cache: Vec<(f64, f64)>,
    seg_off: Vec<usize>,
    slots: Vec<Slot>,
    xl: Vec<f64>,
    xr: Vec<f64>,
    x: Vec<f64>,
    best_x: Vec<f64>,
    /// Scratch copy of `x` for finite differences.
    fd_x: Vec<f64>,
    /// Typical power (kW), energy (kWh) and cost (currency) of the site being solved, for relative tolerances.
    power_scale: f64,
    energy_scale: f64,
    cost_scale: f64,
    cut_lo: Vec<f64>,
    cut_hi: Vec<f64>,
    lam: Vec<f64>,
    lam_final: f64,
    gap: f64,
    /// DP passes in the last solve (one, or the number of demand-charge cap evaluations).
    passes: usize,
}

/// Formats a number for a message: up to three decimals, trailing zeros trimmed (`9.0`, `7.425`, `12`).
fn fmt_num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0');
    let s = s
        .strip_suffix('.')
        .map_or_else(|| s.to_string(), |t| format!("{t}.0"));
    if s == "-0.0" { "0.0".into() } else { s }
}

impl SiteDp {
    /// A fresh workspace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Solves one site of a problem whose prices are `import_price` / `export_price` (length T) with slot length
    /// `dt`. The site must be valid ([`FleetProblem::validate`]); quadratic wear is not handled here (it returns
    /// [`Error::Unsupported`]). `Ok(Err(reason))` means infeasible.
    pub fn solve_site(
        &mut self,
        dt: f64,
        import_price: &[f64],
        export_price: &[f64],
        site: &SiteProblem,
    ) -> Result<std::result::Result<SiteSolution, String>> {
        if site.wear_quadratic != 0.0 {
            return Err(Error::Unsupported(format!(
                "site {}: the exact DP handles linear costs only (wear_quadratic = {})",
                site.id, site.wear_quadratic
            )));
        }
        let t = import_price.len();
        if export_price.len() != t || site.load.len() != t || site.pv.len() != t {
            return Err(Error::invalid("sites", "vectors of different lengths"));
        }
        if t > u32::MAX as usize {
            return Err(Error::Unsupported("horizon longer than 2^32 slots".into()));
        }
        self.passes = 0;
        self.gap = f64::INFINITY;
        self.resize(t);
        self.fill_slots(dt, import_price, export_price, site);
        if site.demand_charge > 0.0 {
            self.solve_with_demand_charge(site)
        } else {
            match self.pass(site, site.grid_import_max) {
                Pass::Feasible => {
                    let (sol, cost) = self.recover(site);
                    self.gap = self.dual_gap(site, cost);
                    Ok(Ok(sol))
                }
                Pass::Infeasible(r) => Ok(Err(r)),
            }
        }
    }

    /// DP passes made by the last solve.
    pub fn passes(&self) -> usize {
        self.passes
    }

    /// Duality gap of the last solve (currency): its cost minus a Lagrangian lower bound built from the DP's
    /// marginal energy values (plus, with a demand charge, the cap search's remaining gap). Zero up to rounding
    /// for an optimal solve; infinite after an infeasible one.
    pub fn duality_gap(&self) -> f64 {
        self.gap
    }

    fn resize(&mut self, t: usize) {
        for v in [
            &mut self.xl,
            &mut self.xr,
            &mut self.x,
            &mut self.best_x,
            &mut self.cut_lo,
            &mut self.cut_hi,
            &mut self.lam,
        ] {
            v.clear();
            v.resize(t, 0.0);
        }
        self.slots.clear();
        self.slots.reserve(t);
    }

    fn fill_slots(&mut self, dt: f64, ip: &[f64], ep: &[f64], site: &SiteProblem) {
        let bat = &site.battery;
        let a = bat.eta_ch * dt;
        let b = dt / bat.eta_dis;
        let u = site.grid_import_max;
        let delta = dt * bat.deg_cost;
        let lossless = b <= a;
        let (kappa, inv_loss) = if lossless {
            (f64::INFINITY, f64::INFINITY)
        } else {
            (delta * (a + b) / (b - a), 1.0 / (b - a))
        };
        self.slots.clear();
        for k in 0..ip.len() {
            let (pi, pe) = (ip[k], ep[k]);
            let g1 = dt * pi.min(pe);
            self.slots.push(Slot {
                l: site.load[k] - site.pv[k],
                u,
                e: site.grid_export_max,
                c: site.charge_max(k),
                d: site.discharge_max(k),
                g1,
                g2: dt * pi.max(pe),
                kink_at_zero: pi >= pe,
                a,
                b,
                delta,
                pi_dt: dt * pi,
                pe_dt: dt * pe,
                inv_a: 1.0 / a,
                inv_b: 1.0 / b,
                kappa,
                inv_loss,
                simple: lossless || g1 + kappa >= 0.0,
            });
        }
        // Magnitudes for relative tolerances, so that the same problem in other units behaves the same.
        let (mut power, mut energy, mut cost) = (
            site.grid_import_max.max(site.grid_export_max),
            bat.e_max,
            0.0,
        );
        for s in &self.slots {
            let p = s.l.abs() + s.c + s.d;
            power = power.max(p);
            energy = energy.max(a * s.c + b * s.d);
            cost += (s.pi_dt.abs().max(s.pe_dt.abs()) + delta) * p;
        }
        self.power_scale = power.max(f64::MIN_POSITIVE);
        self.energy_scale = energy.max(f64::MIN_POSITIVE);
        self.cost_scale = (cost + site.demand_charge * power).max(f64::MIN_POSITIVE);
    }

    /// One forward DP pass with import cap `cap`; fills `x`, the cut thresholds and `lam`.
    fn pass(&mut self, site: &SiteProblem, cap: f64) -> Pass {
        self.passes += 1;
        let u = site.grid_import_max.min(cap);
        for s in &mut self.slots {
            s.u = u;
        }
        let bat = &site.battery;
        let (e_min, e_max) = (bat.e_min, bat.e_max);
        let etol = E_TOL * self.energy_scale;
        let id = &site.id;
        self.list.clear();
        let mut left = bat.e0;
        let mut total = 0.0f64;
        let mut f = SlotFn::default();
        self.seg_cache.clear();
        self.seg_off.clear();
        for k in 0..self.slots.len() {
            let slot = self.slots[k];
            if let Err(why) = slot.build(&mut f) {
                return Pass::Infeasible(slot_reason(
                    id,
                    k,
                    &slot,
                    why,
                    cap < site.grid_import_max,
                ));
            }
            self.xl[k] = f.xl;
            self.xr[k] = f.xr;
            self.x[k] = f.xl;
            left += f.xl;
            self.seg_off.push(self.seg_cache.len());
            self.seg_cache.extend_from_slice(f.segs());
            for &(len, slope) in f.segs() {
                let seg = Seg {
                    len,
                    slope,
                    slot: k as u32,
                };
                self.list.insert_sorted(seg);
                total += len;
            }
            // Cut from the left: energy the window forces into storage.
            let mut lo_thr = f64::NEG_INFINITY;
            if left < e_min - etol {
                let mut need = e_min - left;
                while need > etol {
                    let Some(front) = self.list.front_mut() else {
                        let reach = left;
                        return Pass::Infeasible(format!(
                            "{id} slot {k}: state of charge cannot be kept at or above e_min {} kWh: at most {} kWh \
                             reachable by the end of slot {k}",
                            fmt_num(e_min),
                            fmt_num(reach)
                        ));
                    };
                    lo_thr = front.slope;
                    if front.len <= need {
                        need -= front.len;
                        left += front.len;
                        total -= front.len;
                        self.x[front.slot as usize] += front.len;
                        self.list.pop_front();
                    } else {
                        front.len -= need;
                        left += need;
                        total -= need;
                        self.x[front.slot as usize] += need;
                        need = 0.0;
                    }
                }
                if self.list.is_empty() {
                    total = 0.0;
                }
                left = e_min;
            }
            // Cut from the right: energy that cannot be stored any more.
            let mut hi_thr = f64::INFINITY;
            if left + total > e_max + etol {
                if left > e_max + etol {
                    return Pass::Infeasible(format!(
                        "{id} slot {k}: state of charge cannot be kept at or below e_max {} kWh: at least {} kWh \
                         by the end of slot {k}",
                        fmt_num(e_max),
                        fmt_num(left)
                    ));
                }
                let mut excess = left + total - e_max;
                while excess > etol {
                    let Some(back) = self.list.back_mut() else {
                        break;
                    };
                    hi_thr = back.slope;
                    if back.len <= excess {
                        excess -= back.len;
                        total -= back.len;
                        self.list.pop_back();
                    } else {
                        back.len -= excess;
                        total -= excess;
                        excess = 0.0;
                    }
                }
                if self.list.is_empty() {
                    total = 0.0;
                }
            }
            self.cut_lo[k] = lo_thr;
            self.cut_hi[k] = hi_thr;
        }
        self.seg_off.push(self.seg_cache.len());
        // The final SoC: include segments while they lower the cost, then up to e_final_min.
        let t = self.slots.len();
        let right = left + total;
        let target_min = bat.e_final_min.unwrap_or(f64::NEG_INFINITY);
        if target_min > right + etol {
            let last = t.saturating_sub(1);
            return Pass::Infeasible(format!(
                "{id}: terminal SoC {} kWh unreachable: at most {} kWh by slot {last}",
                fmt_num(target_min),
                fmt_num(right)
            ));
        }
        let mut s = left;
        let mut lam_final = 0.0f64;
        for seg in self.list.as_slice() {
            if seg.slope < 0.0 {
                self.x[seg.slot as usize] += seg.len;
                s += seg.len;
            } else if s < target_min - etol {
                let take = seg.len.min(target_min - s);
                self.x[seg.slot as usize] += take;
                s += take;
                lam_final = seg.slope;
            } else {
                break;
            }
        }
        self.lam_final = lam_final;
        let mut lam = lam_final;
        for k in (0..t).rev() {
            lam = self.cut_lo[k].max(self.cut_hi[k].min(lam));
            self.lam[k] = lam;
        }
        Pass::Feasible
    }

    /// Cost of the current `x` (grid plus degradation, no demand charge) and its peak import.
    fn cost_of_x(&self) -> (f64, f64) {
        let mut cost = 0.0;
        let mut peak: f64 = 0.0;
        for (k, slot) in self.slots.iter().enumerate() {
            let x = self.x[k].clamp(self.xl[k], self.xr[k]);
            let fl = slot.recover(x);
            cost += slot.flow_cost(fl);
            peak = peak.max(fl.2);
        }
        (cost, peak)
    }

    /// Right derivative of the DP optimum in the import cap, from the duals `lam` of the last pass.
    fn cap_derivative(&self, cap: f64, imax: f64) -> f64 {
        if cap >= imax {
            return 0.0;
        }
        let mut dv = 0.0;
        let mut f0 = SlotFn::default();
        let mut f1 = SlotFn::default();
        for (k, slot) in self.slots.iter().enumerate() {
            let lam = self.lam[k];
            if slot.kink_at_zero && slot.simple() {
                let pu = slot.p_high();
                let xr_u = pmin_inv(slot.a, slot.b, pu);
                if xr_u >= slot.a * slot.c {
                    continue;
                }
                let (k_x, sigma) = if pu >= 0.0 {
                    (slot.a, (slot.g2 + slot.delta) * slot.inv_a)
                } else {
                    (slot.b, (slot.g2 - slot.delta) * slot.inv_b)
                };
                dv -= (lam - sigma).max(0.0) * k_x;
            } else {
                // Finite difference of the slot's Lagrangian value; exact unless a kink lies within eps.
                let eps = 1e-7 * self.power_scale;
                let mut up = *slot;
                up.u = (slot.u + eps).min(imax);
                let eps = up.u - slot.u;
                if eps <= 0.0 {
                    continue;
                }
                let w0 = match slot.build(&mut f0) {
                    Ok(()) => lagrangian_min(slot, f0.xl, f0.segs(), lam),
                    Err(_) => continue,
                };
                let w1 = match up.build(&mut f1) {
                    Ok(()) => lagrangian_min(&up, f1.xl, f1.segs(), lam),
                    Err(_) => continue,
                };
                dv += (w1 - w0) / eps;
            }
        }
        dv
    }

    fn solve_with_demand_charge(
        &mut self,
        site: &SiteProblem,
    ) -> Result<std::result::Result<SiteSolution, String>> {
        let imax = site.grid_import_max;
        let dc = site.demand_charge;
        // Without a cap: infeasible here means infeasible for every cap.
        if let Pass::Infeasible(r) = self.pass(site, imax) {
            return Ok(Err(r));
        }
        let (v_free, peak_free) = self.cost_of_x();
        // For P ≥ peak_free the cap is slack: f(P) = v_free + dc·P, slope dc.
        let mut best = Best {
            cap: peak_free,
            f: v_free + dc * peak_free,
            inner_gap: self.dual_gap(site, v_free),
        };
        self.keep_best();
        let mut r_pt = (peak_free, best.f, dc);
        // No cap below what each slot alone needs is feasible.
        let mut p_floor: f64 = 0.0;
        for k in 0..self.slots.len() {
            p_floor = p_floor.max(site.load[k] - site.pv[k] - site.discharge_max(k));
        }
        if p_floor >= peak_free {
            self.gap = best.inner_gap;
            return Ok(Ok(self.recover_best(site, best.cap)));
        }
        let scale = self.power_scale;
        // The lowest feasible cap, exactly (Newton on a concave piecewise-linear margin), then a point there.
        let mut p_low = self.min_feasible_cap(site, p_floor.max(0.0), peak_free);
        let mut at_low = None;
        for _ in 0..8 {
            if let Some(v) = self.eval_cap(site, p_low, dc) {
                at_low = Some(v);
                break;
            }
            // Rounding put the cap a hair below the boundary.
            p_low = (p_low + 1e-12 * scale).min(peak_free);
        }
        let Some((f_low, g_low, gap_low)) = at_low else {
            self.gap = best.inner_gap;
            return Ok(Ok(self.recover_best(site, best.cap)));
        };
        if f_low <= best.f {
            best = Best {
                cap: p_low,
                f: f_low,
                inner_gap: gap_low,
            };
            self.keep_best();
        }
        // Lower bound on min f from the cutting planes (no cap below p_low is feasible).
        let mut lower = f_low;
        if g_low < 0.0 {
            let mut l_pt = (p_low, f_low, g_low);
            // Kelley's cutting planes in one dimension: exact on a piecewise-linear convex function.
            for _ in 0..200 {
                let (pl, fl, gl) = l_pt;
                let (pr, fr, gr) = r_pt;
                // The two supporting lines meet at `p`; their value there bounds min f from below.
                let mut p = (fr - fl + gl * pl - gr * pr) / (gl - gr);
                if !(p > pl && p < pr) {
                    p = 0.5 * (pl + pr);
                }
                lower = (fl + gl * (p - pl)).max(fr + gr * (p - pr)).min(best.f);
                if pr - pl <= 1e-13 * scale {
                    break;
                }
                let Some((fv, g, gap)) = self.eval_cap(site, p, dc) else {
                    // Cannot happen between two feasible caps (convexity); stop with the best so far.
                    break;
                };
                if fv < best.f {
                    best = Best {
                        cap: p,
                        f: fv,
                        inner_gap: gap,
                    };
                    self.keep_best();
                }
                if fv - lower <= 1e-13 * self.cost_scale || g == 0.0 {
                    lower = lower.min(fv);
                    break;
                }
                if g < 0.0 {
                    l_pt = (p, fv, g);
                } else {
                    r_pt = (p, fv, g);
                }
            }
        }
        self.gap = best.inner_gap + (best.f - lower).max(0.0);
        Ok(Ok(self.recover_best(site, best.cap)))
    }

    fn keep_best(&mut self) {
        self.best_x.copy_from_slice(&self.x);
    }

    /// Primal cost `primal` of the last pass minus the Lagrangian lower bound from its duals `lam`.
    ///
    /// Relaxing `s[t] = s[t-1] + x[t]` with multipliers `λ_t` (and `λ_T = 0`) gives the bound
    /// `Σ_t min_x (h_t(x) - λ_t·x) + Σ_t min_{s ∈ window_t} (λ_t - λ_{t+1})·s - λ_0·e0`, valid for any `λ`.
    fn dual_gap(&self, site: &SiteProblem, primal: f64) -> f64 {
        let bat = &site.battery;
        let t = self.slots.len();
        if self.seg_off.len() != t + 1 {
            return f64::INFINITY;
        }
        let mut bound = 0.0;
        for (k, slot) in self.slots.iter().enumerate() {
            let lam = self.lam[k];
            let segs = &self.seg_cache[self.seg_off[k]..self.seg_off[k + 1]];
            bound += lagrangian_min(slot, self.xl[k], segs, lam);
            let next = if k + 1 < t { self.lam[k + 1] } else { 0.0 };
            let coef = lam - next;
            let lo = if k + 1 == t {
                bat.e_min.max(bat.e_final_min.unwrap_or(bat.e_min))
            } else {
                bat.e_min
            };
            bound += if coef >= 0.0 {
                coef * lo
            } else {
                coef * bat.e_max
            };
        }
        if t > 0 {
            bound -= self.lam[0] * bat.e0;
        }
        primal - bound
    }

    /// The lowest import cap in `[lo, hi]` for which the site is feasible (`hi` if none below is).
    ///
    /// Only the upper end of the reachable SoC interval depends on the cap; it is concave and nondecreasing in
    /// the cap, so the smallest margin over all slots (`hi[t-1] + xr[t] - e_min`, and `hi[T-1] - e_final_min`) is
    /// too, and Newton's method from the left with right derivatives reaches its root exactly in a few steps
    /// without overshooting. Uses the P-independent data of the last pass (`slots`).
    fn min_feasible_cap(&self, site: &SiteProblem, lo: f64, hi: f64) -> f64 {
        let bat = &site.battery;
        let imax = site.grid_import_max;
        let margin = |cap: f64| -> (f64, f64) {
            let u = imax.min(cap);
            let (mut h, mut dh) = (bat.e0, 0.0f64);
            let (mut m, mut dm) = (f64::INFINITY, 0.0f64);
            for s in &self.slots {
                let pu = u - s.l;
                let xu = pmin_inv(s.a, s.b, pu);
                let (xr, dxr) = if xu < s.a * s.c {
                    (
                        xu,
                        if cap >= imax {
                            0.0
                        } else if pu >= 0.0 {
                            s.a
                        } else {
                            s.b
                        },
                    )
                } else {
                    (s.a * s.c, 0.0)
                };
                let y = h + xr;
                let dy = dh + dxr;
                let mg = y - bat.e_min;
                if mg < m || (mg == m && dy < dm) {
                    m = mg;
                    dm = dy;
                }
                if y < bat.e_max {
                    h = y;
                    dh = dy;
                } else {
                    h = bat.e_max;
                    dh = 0.0;
                }
            }
            if let Some(ef) = bat.e_final_min {
                let mg = h - ef;
                if mg < m || (mg == m && dh < dm) {
                    m = mg;
                    dm = dh;
                }
            }
            (m, dm)
        };
        let mut p = lo;
        for _ in 0..200 {
            let (m, dm) = margin(p);
            if m >= -0.1 * E_TOL * self.energy_scale {
                return p;
            }
            if dm <= 0.0 {
                break;
            }
            let next = p - m / dm;
            if next <= p || next >= hi || next.is_nan() {
                break;
            }
            p = next;
        }
        // Should not happen (the margin is concave and feasible at `hi`): bisect as a safeguard.
        let (mut a, mut b) = (p, hi);
        for _ in 0..100 {
            let mid = 0.5 * (a + b);
            if margin(mid).0 >= -0.1 * E_TOL * self.energy_scale {
                b = mid
            } else {
                a = mid
            }
            if b - a <= 1e-13 * self.power_scale {
                break;
            }
        }
        b
    }

    /// Runs a pass with cap `p`; returns `f(p)`, a subgradient and the inner duality gap, or `None` when
    /// infeasible.
    fn eval_cap(&mut self, site: &SiteProblem, p: f64, dc: f64) -> Option<(f64, f64, f64)> {
        match self.pass(site, p) {
            Pass::Infeasible(_) => None,
            Pass::Feasible => {
                let (v, _) = self.cost_of_x();
                let gap = self.dual_gap(site, v);
                let f = v + dc * p;
                if gap.abs() <= 1e-10 * self.cost_scale {
                    return Some((f, dc + self.cap_derivative(p, site.grid_import_max), gap));
                }
                // The duals do not certify this point, so their subgradient cannot be trusted either: use the
                // secant to a slightly higher cap (valid as a cutting plane outside that tiny interval).
                let x = std::mem::take(&mut self.x);
                self.fd_x.clone_from(&x);
                self.x = x;
                let eps = 1e-7 * self.power_scale;
                let up = match self.pass(site, p + eps) {
                    Pass::Feasible => Some(self.cost_of_x().0 + dc * (p + eps)),
                    Pass::Infeasible(_) => None,
                };
                self.x.clone_from(&self.fd_x);
                // Restore the slots' cap for the caller (only `u` depends on it).
                let u = site.grid_import_max.min(p);
                for s in &mut self.slots {
                    s.u = u;
                }
                let g = up.map_or(dc, |fu| (fu - f) / eps);
                Some((f, g, gap))
            }
        }
    }

    fn recover_best(&mut self, site: &SiteProblem, cap: f64) -> SiteSolution {
        std::mem::swap(&mut self.x, &mut self.best_x);
        // Slots depend on the cap only through `u`.
        let u = site.grid_import_max.min(cap);
        for s in &mut self.slots {
            s.u = u;
        }
        // Domains for clamping are those of the best cap; rebuild them.
        let mut f = SlotFn::default();
        for k in 0..self.slots.len() {
            if self.slots[k].build(&mut f).is_ok() {
                self.xl[k] = f.xl;
                self.xr[k] = f.xr;
            }
        }
        let (sol, _) = self.recover(site);
        std::mem::swap(&mut self.x, &mut self.best_x);
        sol
    }

    /// Turns `x` into a schedule; SoC is recomputed from charge and discharge.
    /// Also returns the schedule's cost without the demand charge.
    fn recover(&self, site: &SiteProblem) -> (SiteSolution, f64) {
        let t = self.slots.len();
        let mut sol = SiteSolution::zeros(site.id.clone(), t);
        let mut s = site.battery.e0;
        let mut max_gp: f64 = 0.0;
        let mut cost = 0.0;
        for (k, slot) in self.slots.iter().enumerate() {
            let x = self.x[k].clamp(self.xl[k], self.xr[k]);
            let flows = slot.recover(x);
            cost += slot.flow_cost(flows);
            let (c, d, gp, gm) = flows;
            sol.charge[k] = c;
            sol.discharge[k] = d;
            sol.grid_import[k] = gp;
            sol.grid_export[k] = gm;
            s += slot.a * c - slot.b * d;
            sol.soc_end[k] = s;
            max_gp = max_gp.max(gp);
        }
        if site.demand_charge > 0.0 {
            // The tightest cap the schedule allows; the objective charges exactly this peak.
            sol.peak_import = Some(max_gp);
        }
        (sol, cost)
    }
}

/// `min_x h(x) - lam·x` for a built slot function (true cost, including the price of the flows at `xl`).
fn lagrangian_min(slot: &Slot, xl: f64, segs: &[(f64, f64)], lam: f64) -> f64 {
    let mut v = -lam * xl;
    let mut best = v;
    for &(len, slope) in segs {
        v += (slope - lam) * len;
        best = best.min(v);
    }
    best + slot.flow_cost(slot.recover(xl))
}

fn slot_reason(id: &str, k: usize, slot: &Slot, why: SlotInfeasible, capped: bool) -> String {
    match why {
        SlotInfeasible::LoadAboveImport => format!(
            "{id} slot {k}: net load {} kW exceeds grid import {} kW{} + battery discharge {} kW",
            fmt_num(slot.l),
            fmt_num(slot.u),
            if capped { " (peak cap)" } else { "" },
            fmt_num(slot.d)
        ),
        SlotInfeasible::SurplusAboveExport => format!(
            "{id} slot {k}: PV surplus {} kW exceeds grid export {} kW + battery charge {} kW",
            fmt_num(-slot.l),
            fmt_num(slot.e),
            fmt_num(slot.c)
        ),
    }
}

thread_local! {
    /// The DP workspace of this thread, reused by [`SiteDpSolver`].
    static WORKSPACE: std::cell::RefCell<SiteDp> = std::cell::RefCell::new(SiteDp::new());
}

/// The exact DP as a [`Solver`]: handles any problem without a feeder, tracking or quadratic terms, solving each
/// site independently (they share nothing else).
#[derive(Debug, Clone, Default)]
pub struct SiteDpSolver {}

impl SiteDpSolver {
    /// Whether this solver handles `problem`'s shape (no feeder, no tracking, no quadratic wear).
    pub fn supports(problem: &FleetProblem) -> bool {
        problem.feeder.is_none() && problem.is_linear()
    }
}

impl SiteDpSolver {
    /// Sites per problem from which the sites are solved in parallel (rayon), one workspace per thread.
    pub const PARALLEL_FROM: usize = 32;

    /// Solves a problem that has passed [`FleetProblem::validate`] and [`SiteDpSolver::supports`].
    pub(crate) fn solve_validated(&self, problem: &FleetProblem) -> Result<FleetSolution> {
        use rayon::prelude::*;
        let start = Instant::now();
        let one = |dp: &mut SiteDp,
                   site: &SiteProblem|
         -> Result<(std::result::Result<SiteSolution, String>, usize, f64)> {
            let r = dp.solve_site(
                problem.dt,
                &problem.import_price,
                &problem.export_price,
                site,
            )?;
            Ok((r, dp.passes(), dp.duality_gap()))
        };
        // One workspace per thread, kept between solves: no allocation once warm.
        let with_workspace = |site: &SiteProblem| {
            WORKSPACE.with(|ws| match ws.try_borrow_mut() {
                Ok(mut dp) => one(&mut dp, site),
                Err(_) => one(&mut SiteDp::new(), site),
            })
        };
        let results: Vec<_> = if problem.sites.len() >= Self::PARALLEL_FROM {
            problem
                .sites
                .par_iter()
                .map(with_workspace)
                .collect::<Result<Vec<_>>>()?
        } else {
            problem
                .sites
                .iter()
                .map(with_workspace)
                .collect::<Result<Vec<_>>>()?
        };
        let mut sites = Vec::with_capacity(results.len());
        let (mut passes, mut gap) = (0, 0.0);
        for (r, n, g) in results {
            passes += n;
            match r {
                Ok(s) => {
                    gap += g;
                    sites.push(s);
                }
                Err(reason) => {
                    let diagnostics = Diagnostics {
                        method: "site-dp".into(),
                        iterations: passes,
                        solve_seconds: start.elapsed().as_secs_f64(),
                        ..Diagnostics::default()
                    };
                    return Ok(FleetSolution::infeasible(reason, diagnostics));
                }
            }
        }
        let mut solution = FleetSolution {
            status: SolveStatus::Optimal,
            objective: 0.0,
            sites,
            diagnostics: Diagnostics {
                method: "site-dp".into(),
                iterations: passes,
                duality_gap: gap,
                ..Diagnostics::default()
            },
            warm_point: None,
        };
        solution.objective = problem.objective(&solution);
        solution.diagnostics.primal_residual = problem.max_violation(&solution);
        solution.diagnostics.solve_seconds = start.elapsed().as_secs_f64();
        Ok(solution)
    }
}

impl Solver for SiteDpSolver {
    fn solve(&self, problem: &FleetProblem) -> Result<FleetSolution> {
        problem.validate()?;
        if !Self::supports(problem) {
            return Err(Error::Unsupported(
                "the site DP handles problems without feeder, tracking or quadratic terms".into(),
            ));
        }
        self.solve_validated(problem)
    }
}
