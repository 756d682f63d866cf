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

/// Rows of the fleet Schur complement updated together by [`SiteFactor::add_schur`].
const SCHUR_BLOCK: usize = 16;

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

    /// `out = A x` (the rows' left-hand sides, without the right-hand side).
    pub(crate) fn apply_a(&self, x: &[f64], out: &mut [f64]) {
        let t = self.t;
        let (c, d, gp, gm, s) = (
            &x[..t],
            &x[t..2 * t],
            &x[2 * t..3 * t],
            &x[3 * t..4 * t],
            &x[4 * t..5 * t],
        );
        let (ob, rest) = out.split_at_mut(t);
        let on = &mut rest[..t];
        for k in 0..t {
            ob[k] = gp[k] - gm[k] - c[k] + d[k];
            on[k] = s[k] - self.a * c[k] + self.b * d[k];
        }
        for k in 1..t {
            on[k] -= s[k - 1];
        }
        if self.demand {
            let (u, p) = (&x[5 * t..6 * t], x[6 * t]);
            let op = &mut out[2 * t..3 * t];
            for k in 0..t {
                op[k] = gp[k] + u[k] - p;
            }
        }
    }

    /// `out = A (w ∘ r)` without the peak column (the peak enters the site's system as a border).
    pub(crate) fn apply_a_scaled(&self, w: &[f64], r: &[f64], out: &mut [f64]) {
        let t = self.t;
        let kind = |k: usize| (&w[k * t..(k + 1) * t], &r[k * t..(k + 1) * t]);
        let ((wc, rc), (wd, rd), (wgp, rgp), (wgm, rgm), (ws, rs)) =
            (kind(C), kind(D), kind(GP), kind(GM), kind(S));
        let (ob, rest) = out.split_at_mut(t);
        let on = &mut rest[..t];
        for k in 0..t {
            let (c, d) = (wc[k] * rc[k], wd[k] * rd[k]);
            ob[k] = wgp[k] * rgp[k] - wgm[k] * rgm[k] - c + d;
            on[k] = ws[k] * rs[k] - self.a * c + self.b * d;
        }
        for k in 1..t {
            on[k] -= ws[k - 1] * rs[k - 1];
        }
        if self.demand {
            let (wu, ru) = kind(U);
            let op = &mut out[2 * t..3 * t];
            for k in 0..t {
                op[k] = wgp[k] * rgp[k] + wu[k] * ru[k];
            }
        }
    }

    /// `out = Aᵀ v + Ayᵀ y` where `y` holds the multipliers of the fleet coupling rows `Σ (c - d) - z`.
    pub(crate) fn apply_at(&self, v: &[f64], y: Option<&[f64]>, out: &mut [f64]) {
        let t = self.t;
        let (vb, vn) = (&v[..t], &v[t..2 * t]);
        let (oc, rest) = out.split_at_mut(t);
        let (od, rest) = rest.split_at_mut(t);
        let (ogp, rest) = rest.split_at_mut(t);
        let (ogm, rest) = rest.split_at_mut(t);
        let (os, rest) = rest.split_at_mut(t);
        match y {
            Some(y) => {
                let y = &y[..t];
                for k in 0..t {
                    oc[k] = -vb[k] - self.a * vn[k] + y[k];
                    od[k] = vb[k] + self.b * vn[k] - y[k];
                }
            }
            None => {
                for k in 0..t {
                    oc[k] = -vb[k] - self.a * vn[k];
                    od[k] = vb[k] + self.b * vn[k];
                }
            }
        }
        for k in 0..t {
            ogp[k] = vb[k];
            ogm[k] = -vb[k];
        }
        for k in 0..t - 1 {
            os[k] = vn[k] - vn[k + 1];
        }
        os[t - 1] = vn[t - 1];
        if self.demand {
            let vp = &v[2 * t..3 * t];
            let (ou, op) = rest.split_at_mut(t);
            let mut psum = 0.0;
            for k in 0..t {
                ogp[k] += vp[k];
                ou[k] = vp[k];
                psum += vp[k];
            }
            op[0] = -psum;
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
    /// Scratch: the chain's diagonal before elimination.
    g: Vec<f64>,
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
            g: z(),
        }
    }

    /// Factorises for the inverse barrier-Hessian diagonal `w` (one entry per variable).
    pub(crate) fn factor(&mut self, m: &SiteModel, w: &[f64]) {
        let t = m.t;
        let (a, b) = (m.a, m.b);
        let ab2 = (a - b) * (a - b);
        // Only sites with a peak border need the dual regularisation (see DUAL_REG).
        let reg = if m.demand { DUAL_REG } else { 0.0 };
        let mut g = std::mem::take(&mut self.g);
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
        self.g = g;
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
    ///
    /// Entry `(t', t)`, `t < t'`, of the semiseparable part is `κ_t κ_t' J⁻¹_{t't'} Π_{k=t}^{t'−1} ρ_k`. The rows
    /// are taken in blocks of [`SCHUR_BLOCK`] slots: `buf[t] = κ_t Π_{k=t}^{b0−1} ρ_k` holds the columns left of
    /// the block starting at `b0`, and a row `t'` of the block gets `buf` times one scalar (`κ_t' J⁻¹_{t't'}` times
    /// the transfer product from `b0` to `t'`), a vectorisable update; `buf` itself is rescaled once per block.
    /// Products that fall below 1e-24 of the largest `κ` are dropped (a full or empty battery decouples the slots).
    pub(crate) fn add_schur(&self, m: &SiteModel, s: &mut [f64], buf: &mut [f64]) {
        let t = m.t;
        let kmax = self.kappa.iter().fold(0.0_f64, |acc, v| acc.max(v.abs()));
        let cut = 1e-24 * kmax;
        // buf[..lo] are all dropped (zero).
        let mut lo = 0;
        let mut inner = [0.0; SCHUR_BLOCK];
        let mut b0 = 0;
        while b0 < t {
            let b1 = (b0 + SCHUR_BLOCK).min(t);
            // r = Π_{k=b0}^{t'−1} ρ_k; inner[i] = κ_{b0+i} Π_{k=b0+i}^{t'−1} ρ_k for the row t' in hand.
            let mut r = 1.0;
            for tp in b0..b1 {
                let nin = tp - b0;
                if nin > 0 {
                    let rk = self.rho[tp - 1];
                    r *= rk;
                    for v in &mut inner[..nin - 1] {
                        *v *= rk;
                    }
                    inner[nin - 1] = self.kappa[tp - 1] * rk;
                }
                let coef = self.kappa[tp] * self.jinv[tp];
                let row = &mut s[tp * t..tp * t + tp + 1];
                let c2 = coef * r;
                if lo < b0 && c2 != 0.0 {
                    for (sv, bv) in row[lo..b0].iter_mut().zip(&buf[lo..b0]) {
                        *sv -= bv * c2;
                    }
                }
                for (sv, iv) in row[b0..tp].iter_mut().zip(&inner[..nin]) {
                    *sv -= iv * coef;
                }
                row[tp] += self.h[tp] - self.kappa[tp] * coef;
            }
            if b1 < t {
                // Move buf to the next block start b1.
                let rl = self.rho[b1 - 1];
                let rr = r * rl;
                let drop = |x: f64| if x.abs() < cut { 0.0 } else { x };
                for v in &mut buf[lo..b0] {
                    *v = drop(*v * rr);
                }
                let nin = b1 - b0 - 1;
                for (bv, iv) in buf[b0..b0 + nin].iter_mut().zip(&inner[..nin]) {
                    *bv = drop(iv * rl);
                }
                buf[b1 - 1] = drop(self.kappa[b1 - 1] * rl);
                while lo < b1 && buf[lo] == 0.0 {
                    lo += 1;
                }
            }
            b0 = b1;
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

    /// `out[k] −= (M_ys u)_k`: the coupling rows applied to a site-row vector `u`, subtracted.
    pub(crate) fn sub_mys(&self, m: &SiteModel, u: &[f64], out: &mut [f64]) {
        let t = m.t;
        for k in 0..t {
            out[k] -= self.cyb[k] * u[k] + self.cyn[k] * u[t + k];
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
