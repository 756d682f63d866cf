//! One site inside the interior-point method: its variables, constraint rows, and the O(T) factorisation and
//! solve of its block of the normal equations (local 2×2 eliminations plus a stable scalar Riccati chain).
//!
//! Variables of one site, stored kind-major (`kind * T + t`): charge `c`, discharge `d`, grid import `gp`, grid
//! export `gm`, state of charge `s`, and with a demand charge the peak slack `u` and the peak `P` (last entry).
//! Rows: balance `gp - gm - c + d = load - pv`, dynamics `s_t - s_{t-1} - a·c + b·d = [t = 0]·e0`
//! (`a = eta_ch·dt`, `b = dt/eta_dis`), and with a demand charge the peak rows `gp + u - P = 0`.

// Numerical kernels index several parallel arrays by the same slot number.
#![allow(clippy::needless_range_loop)]

use crate::problem::{FleetProblem, SiteProblem};

/// Variable kinds (offsets in units of T).
pub(crate) const C: usize = 0;
pub(crate) const D: usize = 1;
pub(crate) const GP: usize = 2;
pub(crate) const GM: usize = 3;
pub(crate) const S: usize = 4;
pub(crate) const U: usize = 5;

/// Dual regularisation added to the diagonal of every row of the normal equations. The step then satisfies
/// `A dx = −r_p − DUAL_REG·dv`, a perturbation that vanishes with the multiplier step; in exchange the local 2×2
/// blocks stay invertible when a slot's balance and peak rows both reduce to the same free variable (`gp` at the
/// peak), whose near-singularity would otherwise be repaired only by the peak border, with cancellation.
pub(crate) const DUAL_REG: f64 = 1e-7;

/// Bounds narrower than this are widened to it so that a strictly interior point exists (kW or kWh).
pub(crate) const MIN_WIDTH: f64 = 1e-7;

/// The static data of one site: bounds, costs and row right-hand sides.
#[derive(Debug, Clone)]
pub(crate) struct SiteModel {
    pub t: usize,
    /// kWh stored per kW of charge over one slot.
    pub a: f64,
    /// kWh removed per kW of discharge over one slot.
    pub b: f64,
    pub demand: bool,
    pub nv: usize,
    pub nr: usize,
    pub lo: Vec<f64>,
    pub hi: Vec<f64>,
    pub q: Vec<f64>,
    /// Quadratic cost coefficient on `c` and `d` (the objective holds `½·quad·(c² + d²)`).
    pub quad: f64,
    /// `load - pv` per slot, kW.
    pub net: Vec<f64>,
    pub e0: f64,
}

impl SiteModel {
    pub(crate) fn new(problem: &FleetProblem, site: &SiteProblem) -> Self {
        let t = problem.slots();
        let dt = problem.dt;
        let bat = &site.battery;
        let demand = site.demand_charge > 0.0;
        let nv = if demand { 6 * t + 1 } else { 5 * t };
        let nr = if demand { 3 * t } else { 2 * t };
        let mut lo = vec![0.0; nv];
        let mut hi = vec![0.0; nv];
        let mut q = vec![0.0; nv];
        for k in 0..t {
            hi[C * t + k] = site.charge_max(k);
            hi[D * t + k] = site.discharge_max(k);
            hi[GP * t + k] = site.grid_import_max;
            hi[GM * t + k] = site.grid_export_max;
            lo[S * t + k] = bat.e_min;
            hi[S * t + k] = bat.e_max;
            q[C * t + k] = dt * bat.deg_cost;
            q[D * t + k] = dt * bat.deg_cost;
            q[GP * t + k] = dt * problem.import_price[k];
            q[GM * t + k] = -dt * problem.export_price[k];
            if demand {
                hi[U * t + k] = site.grid_import_max;
            }
        }
        if let Some(ef) = bat.e_final_min {
            lo[S * t + t - 1] = lo[S * t + t - 1].max(ef);
        }
        if demand {
            hi[6 * t] = site.grid_import_max;
            q[6 * t] = site.demand_charge;
        }
        for j in 0..nv {
            if hi[j] - lo[j] < MIN_WIDTH {
                hi[j] = lo[j] + MIN_WIDTH;
            }
        }
        let net = (0..t).map(|k| site.load[k] - site.pv[k]).collect();
        SiteModel {
            t,
            a: bat.eta_ch * dt,
            b: dt / bat.eta_dis,
            demand,
            nv,
            nr,
            lo,
            hi,
            q,
            quad: 2.0 * dt * site.wear_quadratic,
            net,
            e0: bat.e0,
        }
    }

    /// Diagonal of the objective's Hessian at variable `j`.
    #[inline]
    pub(crate) fn qdiag(&self, j: usize) -> f64 {
        if j < 2 * self.t { self.quad } else { 0.0 }
    }

    /// `out = A x` (the rows' left-hand sides, without the right-hand side).
    pub(crate) fn apply_a(&self, x: &[f64], out: &mut [f64]) {
        let t = self.t;
        for k in 0..t {
            let (c, d, gp, gm, s) = (x[k], x[t + k], x[2 * t + k], x[3 * t + k], x[4 * t + k]);
            let sprev = if k > 0 { x[4 * t + k - 1] } else { 0.0 };
            out[k] = gp - gm - c + d;
            out[t + k] = s - sprev - self.a * c + self.b * d;
            if self.demand {
                out[2 * t + k] = gp + x[5 * t + k] - x[6 * t];
            }
        }
    }

    /// Right-hand side of row `r`.
    #[inline]
    pub(crate) fn rhs(&self, r: usize) -> f64 {
        let t = self.t;
        if r < t {
            self.net[r]
        } else if r == t {
            self.e0
        } else {
            0.0
        }
    }

    /// `out = Aᵀ v + Ayᵀ y` where `y` holds the multipliers of the fleet coupling rows `Σ (c - d) - z`.
    pub(crate) fn apply_at(&self, v: &[f64], y: Option<&[f64]>, out: &mut [f64]) {
        let t = self.t;
        let mut psum = 0.0;
        for k in 0..t {
            let vb = v[k];
            let vn = v[t + k];
            let yk = y.map_or(0.0, |y| y[k]);
            out[k] = -vb - self.a * vn + yk;
            out[t + k] = vb + self.b * vn - yk;
            out[2 * t + k] = vb;
            out[3 * t + k] = -vb;
            out[4 * t + k] = vn - if k + 1 < t { v[t + k + 1] } else { 0.0 };
            if self.demand {
                let vp = v[2 * t + k];
                out[2 * t + k] += vp;
                out[5 * t + k] = vp;
                psum += vp;
            }
        }
        if self.demand {
            out[6 * t] = -psum;
        }
    }
}

/// Factorisation of one site's block `M0 = A W Aᵀ` of the normal equations (plus the peak border).
#[derive(Debug, Clone, Default)]
pub(crate) struct SiteFactor {
    einv_bb: Vec<f64>,
    einv_bp: Vec<f64>,
    einv_pp: Vec<f64>,
    mbn: Vec<f64>,
    piv: Vec<f64>,
    rho: Vec<f64>,
    /// Coupling of the fleet row to the balance row / the dynamics row of each slot.
    pub cyb: Vec<f64>,
    pub cyn: Vec<f64>,
    kappa: Vec<f64>,
    h: Vec<f64>,
    jinv: Vec<f64>,
    /// `M0⁻¹ p` for the peak column `p` (−1 on the peak rows), and `D_P + pᵀ M0⁻¹ p`.
    qvec: Vec<f64>,
    denom: f64,
}

impl SiteFactor {
    pub(crate) fn new(m: &SiteModel) -> Self {
        let t = m.t;
        let z = || vec![0.0; t];
        SiteFactor {
            einv_bb: z(),
            einv_bp: if m.demand { z() } else { Vec::new() },
            einv_pp: if m.demand { z() } else { Vec::new() },
            mbn: z(),
            piv: z(),
            rho: z(),
            cyb: z(),
            cyn: z(),
            kappa: z(),
            h: z(),
            jinv: z(),
            qvec: if m.demand {
                vec![0.0; m.nr]
            } else {
                Vec::new()
            },
            denom: 1.0,
        }
    }

    /// Factorises for the inverse barrier-Hessian diagonal `w` (one entry per variable).
    pub(crate) fn factor(&mut self, m: &SiteModel, w: &[f64]) {
        let t = m.t;
        let (a, b) = (m.a, m.b);
        let ab2 = (a - b) * (a - b);
        // Only sites with a peak border need the dual regularisation (see DUAL_REG).
        let reg = if m.demand { DUAL_REG } else { 0.0 };
        let mut g = vec![0.0; t];
        for k in 0..t {
            let (wc, wd, wgp, wgm) = (w[k], w[t + k], w[2 * t + k], w[3 * t + k]);
            let x = if m.demand {
                let wu = w[5 * t + k];
                let mbb = wc + wd + wgp + wgm + reg;
                let mpp = wgp + wu + reg;
                let det = (wc + wd + wgm + reg) * mpp + wgp * (wu + reg);
                self.einv_bb[k] = mpp / det;
                self.einv_bp[k] = -wgp / det;
                self.einv_pp[k] = mbb / det;
                wgm + reg + wgp * (wu + reg) / mpp
            } else {
                self.einv_bb[k] = 1.0 / (wc + wd + wgp + wgm + reg);
                wgm + wgp + reg
            };
            let wb = wc + wd + x;
            let mbn = a * wc + b * wd;
            self.mbn[k] = mbn;
            g[k] = (ab2 * wc * wd + (a * a * wc + b * b * wd) * x) / wb + reg;
            self.kappa[k] = -mbn * x / wb;
            self.h[k] = (wc + wd) * x / wb;
            self.cyb[k] = -(wc + wd);
            self.cyn[k] = -mbn;
        }
        // Scalar Riccati chain in the dynamics multipliers, written in series form so that no large numbers cancel.
        let mut e_prev = 0.0;
        for k in 0..t {
            let ws = w[4 * t + k];
            let mut e = g[k];
            if k > 0 {
                let wsp = w[4 * t + k - 1];
                let den = e_prev + wsp;
                if den > 0.0 {
                    e += wsp * e_prev / den;
                }
            }
            let piv = (e + ws).max(1e-300);
            self.piv[k] = piv;
            self.rho[k] = if k + 1 < t { ws / piv } else { 0.0 };
            e_prev = e;
        }
        let mut next = 0.0;
        for k in (0..t).rev() {
            let r = self.rho[k];
            let v = 1.0 / self.piv[k] + r * r * next;
            self.jinv[k] = v;
            next = v;
        }
        if m.demand {
            let mut qv = std::mem::take(&mut self.qvec);
            qv.iter_mut().for_each(|v| *v = 0.0);
            qv[2 * t..3 * t].iter_mut().for_each(|v| *v = -1.0);
            self.solve0(m, &mut qv);
            let pq: f64 = -qv[2 * t..3 * t].iter().sum::<f64>();
            self.qvec = qv;
            self.denom = 1.0 / w[6 * t] + pq;
        }
    }

    /// `r ← M0⁻¹ r` without the peak border.
    fn solve0(&self, m: &SiteModel, r: &mut [f64]) {
        let t = m.t;
        for k in 0..t {
            let rb = r[k];
            let (xb, xp) = if m.demand {
                let rp = r[2 * t + k];
                (
                    self.einv_bb[k] * rb + self.einv_bp[k] * rp,
                    self.einv_bp[k] * rb + self.einv_pp[k] * rp,
                )
            } else {
                (self.einv_bb[k] * rb, 0.0)
            };
            r[k] = xb;
            if m.demand {
                r[2 * t + k] = xp;
            }
            r[t + k] -= self.mbn[k] * xb;
        }
        let nu = &mut r[t..2 * t];
        for k in 1..t {
            nu[k] += self.rho[k - 1] * nu[k - 1];
        }
        nu[t - 1] /= self.piv[t - 1];
        for k in (0..t - 1).rev() {
            nu[k] = nu[k] / self.piv[k] + self.rho[k] * nu[k + 1];
        }
        for k in 0..t {
            let s = r[t + k] * self.mbn[k];
            r[k] -= s * self.einv_bb[k];
            if m.demand {
                r[2 * t + k] -= s * self.einv_bp[k];
            }
        }
    }

    /// Solves the site's bordered system `M0 dv + p dP = r`, `pᵀ dv − D_P dP = −ρ_P` in place (`r ← dv`) and
    /// returns `dP` (0 without a demand charge). Keeping `P` as a border avoids multiplying by `1/D_P`, which is
    /// huge while the peak is strictly inside its bounds.
    pub(crate) fn solve(&self, m: &SiteModel, r: &mut [f64], rho_p: f64) -> f64 {
        self.solve0(m, r);
        if m.demand {
            let t = m.t;
            let px: f64 = -r[2 * t..3 * t].iter().sum::<f64>();
            let dp = (px + rho_p) / self.denom;
            for (ri, qi) in r.iter_mut().zip(&self.qvec) {
                *ri -= dp * qi;
            }
            dp
        } else {
            0.0
        }
    }

    /// Adds this site's term `diag(h) − (κκᵀ)∘J⁻¹ + m mᵀ/denom` to the lower triangle of the fleet Schur
    /// complement `s` (row-major T×T). `buf` is scratch of length T.
    pub(crate) fn add_schur(&self, m: &SiteModel, s: &mut [f64], buf: &mut [f64]) {
        let t = m.t;
        let kmax = self.kappa.iter().fold(0.0_f64, |acc, v| acc.max(v.abs()));
        let cut = 1e-24 * kmax;
        let mut lo = 0;
        for tp in 0..t {
            if tp > 0 {
                let r = self.rho[tp - 1];
                for v in &mut buf[lo.min(tp - 1)..tp - 1] {
                    let x = *v * r;
                    *v = if x.abs() < cut { 0.0 } else { x };
                }
                buf[tp - 1] = self.kappa[tp - 1] * r;
                while lo < tp && buf[lo].abs() < cut {
                    lo += 1;
                }
            }
            let coef = self.kappa[tp] * self.jinv[tp];
            let row = &mut s[tp * t..tp * t + tp];
            for (sv, bv) in row[lo..].iter_mut().zip(&buf[lo..tp]) {
                *sv -= bv * coef;
            }
            s[tp * t + tp] += self.h[tp] - self.kappa[tp] * coef;
        }
        if m.demand {
            for k in 0..t {
                buf[k] = self.cyb[k] * self.qvec[k] + self.cyn[k] * self.qvec[t + k];
            }
            let inv = 1.0 / self.denom;
            for tp in 0..t {
                let c = buf[tp] * inv;
                let row = &mut s[tp * t..tp * t + tp + 1];
                for (sv, bv) in row.iter_mut().zip(&buf[..=tp]) {
                    *sv += bv * c;
                }
            }
        }
    }

    /// `out[k] += (M_ys u)_k`: the coupling rows applied to a site-row vector `u`.
    pub(crate) fn add_mys(&self, m: &SiteModel, u: &[f64], out: &mut [f64]) {
        let t = m.t;
        for k in 0..t {
            out[k] += self.cyb[k] * u[k] + self.cyn[k] * u[t + k];
        }
    }

    /// `r −= M_sy y`: removes the coupling multipliers' share from a site right-hand side.
    pub(crate) fn sub_msy(&self, m: &SiteModel, y: &[f64], r: &mut [f64]) {
        let t = m.t;
        for k in 0..t {
            r[k] -= self.cyb[k] * y[k];
            r[t + k] -= self.cyn[k] * y[k];
        }
    }
}
