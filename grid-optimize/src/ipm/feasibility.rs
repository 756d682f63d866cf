//! Exact feasibility pre-check that names the constraint family, site and slot of an infeasible problem.
//!
//! For one site the check is exact: in each slot the feasible (charge, discharge) pairs form a polygon (power
//! bounds, grid limits through the balance), so the SoC increment of that slot ranges over an interval, and the
//! reachable SoC set is an interval propagated forward and intersected with `[e_min, e_max]`. For the feeder the
//! check is a necessary condition: per slot, the sites' smallest (largest) net import given the SoC intervals that
//! are both reachable and can still reach the terminal bound, summed over sites, must respect the envelope. What
//! this misses (infeasibility that only appears through the interplay of several slots across sites) is caught by
//! the interior-point method's primal residual.

use rayon::prelude::*;

use crate::problem::{FleetProblem, SiteProblem};

const EPS: f64 = 1e-9;

/// A line `alpha·c + beta·d = gamma` bounding the (charge, discharge) polygon of one slot.
type Line = (f64, f64, f64);

/// Min and max of `oc·c + od·d` over the polygon `{lines[2i] ≤ … ≤ lines[2i+1]}` given as pairs of parallel lines
/// (lower, upper). `None` if the polygon is empty.
fn polygon_range(pairs: &[(f64, f64, f64, f64)], oc: f64, od: f64) -> Option<(f64, f64)> {
    let mut lines: [Line; 8] = [(0.0, 0.0, 0.0); 8];
    let nl = 2 * pairs.len().min(4);
    for (i, &(al, be, lo, hi)) in pairs.iter().take(4).enumerate() {
        lines[2 * i] = (al, be, lo);
        lines[2 * i + 1] = (al, be, hi);
    }
    let lines = &lines[..nl];
    let inside = |c: f64, d: f64| {
        pairs.iter().all(|&(al, be, lo, hi)| {
            let v = al * c + be * d;
            let tol = EPS * (1.0 + lo.abs().max(hi.abs()));
            v >= lo - tol && v <= hi + tol
        })
    };
    let mut best: Option<(f64, f64)> = None;
    for i in 0..lines.len() {
        for j in i + 1..lines.len() {
            let (a1, b1, g1) = lines[i];
            let (a2, b2, g2) = lines[j];
            let det = a1 * b2 - a2 * b1;
            if det.abs() < 1e-14 {
                continue;
            }
            let c = (g1 * b2 - g2 * b1) / det;
            let d = (a1 * g2 - a2 * g1) / det;
            if inside(c, d) {
                let v = oc * c + od * d;
                best = Some(match best {
                    None => (v, v),
                    Some((lo, hi)) => (lo.min(v), hi.max(v)),
                });
            }
        }
    }
    best
}

/// Per-slot polygon constraints of a site: charge, discharge and the balance strip on `c - d`.
fn slot_pairs(site: &SiteProblem, k: usize) -> [(f64, f64, f64, f64); 3] {
    let net = site.load[k] - site.pv[k];
    [
        (1.0, 0.0, 0.0, site.charge_max(k)),
        (0.0, 1.0, 0.0, site.discharge_max(k)),
        (
            1.0,
            -1.0,
            -site.grid_export_max - net,
            site.grid_import_max - net,
        ),
    ]
}

/// The outcome of [`check_site`]: `Err` names what cannot be met; `Ok(Some((min, max)))` is the site's smallest and
/// largest net import per slot (with a feeder), `Ok(None)` a feasible site without a feeder.
type SiteCheck = std::result::Result<Option<(Vec<f64>, Vec<f64>)>, String>;

/// Returns a reason if the problem is certainly infeasible, `None` otherwise. Sites are checked in parallel; the
/// reason names the first infeasible site in the problem's order.
pub(crate) fn check(problem: &FleetProblem) -> Option<String> {
    let t = problem.slots();
    let per_site: Vec<SiteCheck> = problem
        .sites
        .par_iter()
        .with_min_len(16)
        .map(|site| check_site(problem, site))
        .collect();
    let mut fleet_min = vec![0.0; t];
    let mut fleet_max = vec![0.0; t];
    for r in per_site {
        if let Some((mn, mx)) = match r {
            Ok(v) => v,
            Err(reason) => return Some(reason),
        } {
            for k in 0..t {
                fleet_min[k] += mn[k];
                fleet_max[k] += mx[k];
            }
        }
    }
    if let Some(f) = &problem.feeder {
        for k in 0..t {
            let tol = EPS * (1.0 + fleet_min[k].abs().max(fleet_max[k].abs()));
            if fleet_min[k] > f.import_limit[k] + tol {
                return Some(format!(
                    "feeder import limit at slot {k} cannot be met: the sites' minimum net import is {:.6} kW > {} kW",
                    fleet_min[k], f.import_limit[k]
                ));
            }
            if fleet_max[k] < -f.export_limit[k] - tol {
                return Some(format!(
                    "feeder export limit at slot {k} cannot be met: the sites' minimum net export is {:.6} kW > {} kW",
                    -fleet_max[k], f.export_limit[k]
                ));
            }
        }
    }
    None
}

/// The exact reachability check of one site and, for a fleet with a feeder, the site's smallest and largest net
/// import per slot given the SoC it can reach; `Err` names what cannot be met.
fn check_site(problem: &FleetProblem, site: &SiteProblem) -> SiteCheck {
    let t = problem.slots();
    let dt = problem.dt;
    let bat = &site.battery;
    let (a, b) = (bat.eta_ch * dt, dt / bat.eta_dis);
    let mut delta = Vec::with_capacity(t);
    for k in 0..t {
        let pairs = slot_pairs(site, k);
        let net = site.load[k] - site.pv[k];
        if net - site.discharge_max(k) > site.grid_import_max + EPS * (1.0 + net.abs()) {
            return Err(format!(
                "site {}: balance at slot {k} cannot be met: load net of PV {net:.6} kW exceeds the grid import \
                 limit {} kW plus the battery's discharge limit {} kW",
                site.id,
                site.grid_import_max,
                site.discharge_max(k)
            ));
        }
        if -net - site.charge_max(k) > site.grid_export_max + EPS * (1.0 + net.abs()) {
            return Err(format!(
                "site {}: balance at slot {k} cannot be met: PV surplus {:.6} kW exceeds the grid export limit \
                 {} kW plus the battery's charge limit {} kW",
                site.id,
                -net,
                site.grid_export_max,
                site.charge_max(k)
            ));
        }
        match polygon_range(&pairs, a, -b) {
            Some(r) => delta.push(r),
            None => {
                return Err(format!(
                    "site {}: balance at slot {k} cannot be met with the grid and battery power limits",
                    site.id
                ));
            }
        }
    }
    // Forward reachable SoC intervals.
    let e_lo_final = bat.e_final_min.map_or(bat.e_min, |ef| ef.max(bat.e_min));
    let mut fwd = Vec::with_capacity(t);
    let (mut lo, mut hi) = (bat.e0, bat.e0);
    for (k, &(dmin, dmax)) in delta.iter().enumerate() {
        let (nlo, nhi) = (lo + dmin, hi + dmax);
        let tol = EPS * (1.0 + bat.e_max);
        if nhi < bat.e_min - tol {
            return Err(format!(
                "site {}: state of charge falls below e_min = {} kWh at slot {k}: even the most charging \
                 schedule reaches only {nhi:.6} kWh (the load forces discharge)",
                site.id, bat.e_min
            ));
        }
        if nlo > bat.e_max + tol {
            return Err(format!(
                "site {}: state of charge exceeds e_max = {} kWh at slot {k}: even the least charging schedule \
                 reaches {nlo:.6} kWh (the PV surplus forces charging)",
                site.id, bat.e_max
            ));
        }
        lo = nlo.max(bat.e_min);
        hi = nhi.min(bat.e_max);
        fwd.push((lo, hi));
    }
    if hi < e_lo_final - EPS * (1.0 + bat.e_max) {
        return Err(format!(
            "site {}: terminal state of charge e_final_min = {} kWh unreachable: at most {hi:.6} kWh by slot {}",
            site.id,
            e_lo_final,
            t - 1
        ));
    }
    if problem.feeder.is_none() {
        return Ok(None);
    }
    let mut fleet_min = vec![0.0; t];
    let mut fleet_max = vec![0.0; t];
    // Backward: SoC at the end of slot k from which the rest of the horizon stays feasible.
    let mut bwd = vec![(0.0, 0.0); t];
    let (mut blo, mut bhi) = (e_lo_final, bat.e_max);
    for k in (0..t).rev() {
        bwd[k] = (blo, bhi);
        let (dmin, dmax) = delta[k];
        blo = (blo - dmax).max(bat.e_min);
        bhi = (bhi - dmin).min(bat.e_max);
    }
    for k in 0..t {
        let (plo, phi) = if k == 0 {
            (bat.e0, bat.e0)
        } else {
            (
                fwd[k - 1].0.max(bwd[k - 1].0),
                fwd[k - 1].1.min(bwd[k - 1].1),
            )
        };
        let (clo, chi) = (fwd[k].0.max(bwd[k].0), fwd[k].1.min(bwd[k].1));
        let [p0, p1, p2] = slot_pairs(site, k);
        let pairs = [p0, p1, p2, (a, -b, clo - phi, chi - plo)];
        let net = site.load[k] - site.pv[k];
        let (mn, mx) = polygon_range(&pairs, 1.0, -1.0).unwrap_or_else(|| {
            // Numerically empty: fall back to the slot's polygon without the SoC restriction.
            polygon_range(&[p0, p1, p2], 1.0, -1.0).unwrap_or((0.0, 0.0))
        });
        fleet_min[k] = net + mn;
        fleet_max[k] = net + mx;
    }
    Ok(Some((fleet_min, fleet_max)))
}
