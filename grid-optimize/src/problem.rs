//! The optimisation problem: a fleet of battery sites sharing one price signal and, optionally, a feeder envelope.
//!
//! Units and signs follow the workspace convention: power in kW (positive = charging the battery / importing from
//! the grid), energy in kWh, prices per kWh in the tariff's currency, `dt` in hours. A single site is a fleet of one.
//!
//! The model is the linear program of `battopt-instance/1` (see the crate docs), extended by two convex quadratic
//! terms ([`SiteProblem::wear_quadratic`], [`TrackingTarget`]) and per-slot battery power bounds ([`PowerBounds`]).
//! For site `i`, slot `t`:
//!
//! ```text
//! 0 ≤ c ≤ min(p_ch_max, charge_max[t]),  0 ≤ d ≤ min(p_dis_max, discharge_max[t])
//! 0 ≤ gp ≤ grid_import_max,  0 ≤ gm ≤ grid_export_max,  gp - gm = load - pv + c - d
//! s[t] = s[t-1] + eta_ch·dt·c - dt/eta_dis·d,  s[-1] = e0,  e_min ≤ s ≤ e_max,  s[T-1] ≥ e_final_min
//! gp ≤ P  (only when demand_charge > 0)
//! -export_limit[t] ≤ Σ_i (gp - gm) ≤ import_limit[t]  (feeder)
//! minimise Σ dt·(import_price·gp - export_price·gm) + dt·deg_cost·(c + d) + demand_charge·P
//!        + Σ dt·wear_quadratic·(c² + d²) + Σ_t dt·weight·(Σ_i (gp - gm) - setpoint[t])²
//! ```

use crate::error::{Error, Result};
use crate::solution::FleetSolution;

/// Battery parameters of one site (kWh, kW, fractions, currency per kWh).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BatteryParams {
    /// Lowest allowed state of charge, kWh (≥ 0).
    pub e_min: f64,
    /// Highest allowed state of charge (usable capacity), kWh (≥ `e_min`).
    pub e_max: f64,
    /// State of charge at the start of the horizon, kWh, within `[e_min, e_max]`.
    pub e0: f64,
    /// Lower bound on the state of charge at the end of the horizon, kWh, if any.
    pub e_final_min: Option<f64>,
    /// Maximum charge power, kW (≥ 0; charging is positive).
    pub p_ch_max: f64,
    /// Maximum discharge power, kW (≥ 0, given as a magnitude).
    pub p_dis_max: f64,
    /// Charge efficiency in (0, 1]: `eta_ch·dt·c` kWh are stored per slot of charging at `c` kW.
    pub eta_ch: f64,
    /// Discharge efficiency in (0, 1]: discharging `d` kW removes `dt·d/eta_dis` kWh.
    pub eta_dis: f64,
    /// Degradation cost per kWh of charge plus discharge throughput (≥ 0).
    pub deg_cost: f64,
}

/// Per-slot limits on battery power, applied on top of `p_ch_max` / `p_dis_max` (kW magnitudes, ≥ 0).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PowerBounds {
    /// Maximum charge power per slot, kW (length T, ≥ 0).
    pub charge_max: Vec<f64>,
    /// Maximum discharge power per slot, kW (length T, ≥ 0).
    pub discharge_max: Vec<f64>,
}

/// One site: its load, PV, grid connection, tariff extras and battery.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SiteProblem {
    /// The site's id (free text, e.g. `site0`).
    pub id: String,
    /// Household load per slot, kW (length T; positive = consumption).
    pub load: Vec<f64>,
    /// PV generation per slot, kW (length T; positive = generation; cannot be curtailed).
    pub pv: Vec<f64>,
    /// Grid import limit, kW (≥ 0).
    pub grid_import_max: f64,
    /// Grid export limit, kW (≥ 0, a magnitude).
    pub grid_export_max: f64,
    /// Demand charge per kW of the horizon's peak import (≥ 0; 0 = none).
    pub demand_charge: f64,
    /// The battery.
    pub battery: BatteryParams,
    /// Optional per-slot battery power limits.
    pub power_bounds: Option<PowerBounds>,
    /// Quadratic wear penalty, currency per kW²·h: adds `dt·wear_quadratic·(c² + d²)` per slot (≥ 0; 0 = none).
    pub wear_quadratic: f64,
}

/// The feeder envelope on the fleet's summed net import `Σ_i (gp_i - gm_i)` (kW, positive = import).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FeederLimit {
    /// Upper bound on the summed net import per slot, kW (length T).
    pub import_limit: Vec<f64>,
    /// Upper bound on the summed net export per slot, kW (length T; the constraint is `Σ net ≥ -export_limit`).
    pub export_limit: Vec<f64>,
}

/// Least-squares tracking of an aggregate setpoint for the fleet's summed net import (virtual power plant use).
///
/// Adds `dt·weight·(Σ_i (gp_i - gm_i) - setpoint_kw[t])²` per slot.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TrackingTarget {
    /// Setpoint for the summed net import per slot, kW (length T; positive = import).
    pub setpoint_kw: Vec<f64>,
    /// Weight, currency per kW²·h (≥ 0).
    pub weight: f64,
}

/// A whole problem: the horizon, prices shared by all sites, the sites, and the optional fleet couplings.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FleetProblem {
    /// Name of the instance (free text, may be empty).
    pub name: String,
    /// Slot length in hours (> 0).
    pub dt: f64,
    /// Import price per slot, currency per kWh (length T; may be negative).
    pub import_price: Vec<f64>,
    /// Export price per slot, currency per kWh (length T; may be negative).
    pub export_price: Vec<f64>,
    /// The sites (at least one).
    pub sites: Vec<SiteProblem>,
    /// Optional feeder envelope on the summed net import.
    pub feeder: Option<FeederLimit>,
    /// Optional aggregate setpoint tracking term.
    pub tracking: Option<TrackingTarget>,
}

/// What the solver must know about a problem's shape to pick a method.
impl FleetProblem {
    /// Number of slots T (the length of `import_price`).
    pub fn slots(&self) -> usize {
        self.import_price.len()
    }

    /// Whether the problem is a pure linear program (no wear or tracking term).
    pub fn is_linear(&self) -> bool {
        self.tracking.is_none() && self.sites.iter().all(|s| s.wear_quadratic == 0.0)
    }

    /// Checks every field: finite numbers, non-negative capacities and limits, `e_min ≤ e0 ≤ e_max`,
    /// efficiencies in (0, 1], vectors of length T. The error names the field, e.g. `sites[0].battery.e_max`.
    ///
    /// Conditions that make a *valid* problem infeasible (an unreachable terminal SoC, a load above what the grid
    /// and battery can supply, `e_final_min > e_max`) are not errors: solvers report them as a status.
    pub fn validate(&self) -> Result<()> {
        let t = self.slots();
        if t == 0 {
            return Err(Error::invalid(
                "import_price",
                "the horizon must have at least one slot",
            ));
        }
        positive("dt", self.dt)?;
        series("import_price", &self.import_price, t, Sign::Any)?;
        series("export_price", &self.export_price, t, Sign::Any)?;
        if self.sites.is_empty() {
            return Err(Error::invalid("sites", "at least one site is required"));
        }
        for (i, site) in self.sites.iter().enumerate() {
            site.validate_at(i, t)?;
        }
        if let Some(f) = &self.feeder {
            series("feeder.import_limit", &f.import_limit, t, Sign::Any)?;
            series("feeder.export_limit", &f.export_limit, t, Sign::Any)?;
            for k in 0..t {
                if f.import_limit[k] < -f.export_limit[k] {
                    return Err(Error::invalid(
                        format!("feeder.import_limit[{k}]"),
                        format!(
                            "import limit {} kW is below minus the export limit {} kW (empty envelope)",
                            f.import_limit[k], f.export_limit[k]
                        ),
                    ));
                }
            }
        }
        if let Some(tr) = &self.tracking {
            series("tracking.setpoint_kw", &tr.setpoint_kw, t, Sign::Any)?;
            nonneg("tracking.weight", tr.weight)?;
        }
        Ok(())
    }

    /// Objective of `solution` under this problem, recomputed from the schedule (currency).
    ///
    /// The peak import `P` of a site with a demand charge is taken as `max(0, max_t gp[t])`, the cheapest cap the
    /// schedule allows. Returns `f64::INFINITY` when the solution has the wrong number of sites or slots.
    pub fn objective(&self, solution: &FleetSolution) -> f64 {
        let t = self.slots();
        if solution.sites.len() != self.sites.len() || solution.sites.iter().any(|s| !s.has_len(t))
        {
            return f64::INFINITY;
        }
        let dt = self.dt;
        let mut total = 0.0;
        for (site, sol) in self.sites.iter().zip(&solution.sites) {
            total += site.objective(dt, &self.import_price, &self.export_price, sol);
        }
        if let Some(tr) = &self.tracking {
            for k in 0..t {
                let net: f64 = solution
                    .sites
                    .iter()
                    .map(|s| s.grid_import[k] - s.grid_export[k])
                    .sum();
                let e = net - tr.setpoint_kw[k];
                total += dt * tr.weight * e * e;
            }
        }
        total
    }

    /// Largest violation of any constraint by `solution`, in kW or kWh (0 for a feasible schedule).
    ///
    /// The state of charge is recomputed from `charge`/`discharge` and compared with both its bounds and the
    /// reported `soc_end`. Returns `f64::INFINITY` for the wrong number of sites or slots, or a non-finite value.
    pub fn max_violation(&self, solution: &FleetSolution) -> f64 {
        let t = self.slots();
        if solution.sites.len() != self.sites.len() || solution.sites.iter().any(|s| !s.has_len(t))
        {
            return f64::INFINITY;
        }
        let mut worst: f64 = 0.0;
        for (site, sol) in self.sites.iter().zip(&solution.sites) {
            worst = worst.max(site.max_violation(self.dt, sol));
        }
        if let Some(f) = &self.feeder {
            for k in 0..t {
                let net: f64 = solution
                    .sites
                    .iter()
                    .map(|s| s.grid_import[k] - s.grid_export[k])
                    .sum();
                worst = worst
                    .max(net - f.import_limit[k])
                    .max(-f.export_limit[k] - net);
            }
        }
        if worst.is_nan() { f64::INFINITY } else { worst }
    }
}

impl SiteProblem {
    /// Effective charge limit in slot `t`, kW: `min(p_ch_max, power_bounds.charge_max[t])`.
    #[inline]
    pub fn charge_max(&self, t: usize) -> f64 {
        match &self.power_bounds {
            Some(b) => self.battery.p_ch_max.min(b.charge_max[t]),
            None => self.battery.p_ch_max,
        }
    }

    /// Effective discharge limit in slot `t`, kW (magnitude): `min(p_dis_max, power_bounds.discharge_max[t])`.
    #[inline]
    pub fn discharge_max(&self, t: usize) -> f64 {
        match &self.power_bounds {
            Some(b) => self.battery.p_dis_max.min(b.discharge_max[t]),
            None => self.battery.p_dis_max,
        }
    }

    /// Checks this site as `sites[index]` of a problem with `t` slots.
    pub fn validate_at(&self, index: usize, t: usize) -> Result<()> {
        let p = |f: &'static str| SiteField(index, f);
        series(&p("load"), &self.load, t, Sign::Any)?;
        series(&p("pv"), &self.pv, t, Sign::Any)?;
        nonneg(&p("grid_import_max"), self.grid_import_max)?;
        nonneg(&p("grid_export_max"), self.grid_export_max)?;
        nonneg(&p("demand_charge"), self.demand_charge)?;
        nonneg(&p("wear_quadratic"), self.wear_quadratic)?;
        let b = &self.battery;
        nonneg(&p("battery.e_min"), b.e_min)?;
        nonneg(&p("battery.e_max"), b.e_max)?;
        if b.e_min > b.e_max {
            return Err(Error::invalid(
                p("battery.e_min").to_string(),
                format!("e_min {} kWh exceeds e_max {} kWh", b.e_min, b.e_max),
            ));
        }
        finite(&p("battery.e0"), b.e0)?;
        if b.e0 < b.e_min - 1e-9 || b.e0 > b.e_max + 1e-9 {
            return Err(Error::invalid(
                p("battery.e0").to_string(),
                format!(
                    "initial SoC {} kWh outside [e_min, e_max] = [{}, {}] kWh",
                    b.e0, b.e_min, b.e_max
                ),
            ));
        }
        if let Some(ef) = b.e_final_min {
            finite(&p("battery.e_final_min"), ef)?;
        }
        nonneg(&p("battery.p_ch_max"), b.p_ch_max)?;
        nonneg(&p("battery.p_dis_max"), b.p_dis_max)?;
        for (name, eta) in [("battery.eta_ch", b.eta_ch), ("battery.eta_dis", b.eta_dis)] {
            finite(&p(name), eta)?;
            if !(eta > 0.0 && eta <= 1.0) {
                return Err(Error::invalid(
                    p(name).to_string(),
                    format!("efficiency {eta} outside (0, 1]"),
                ));
            }
        }
        nonneg(&p("battery.deg_cost"), b.deg_cost)?;
        if let Some(pb) = &self.power_bounds {
            series(
                &p("power_bounds.charge_max"),
                &pb.charge_max,
                t,
                Sign::NonNegative,
            )?;
            series(
                &p("power_bounds.discharge_max"),
                &pb.discharge_max,
                t,
                Sign::NonNegative,
            )?;
        }
        Ok(())
    }

    /// This site's share of the objective for `sol` (without the fleet's tracking term).
    pub fn objective(
        &self,
        dt: f64,
        import_price: &[f64],
        export_price: &[f64],
        sol: &crate::SiteSolution,
    ) -> f64 {
        let b = &self.battery;
        let mut total = 0.0;
        let mut peak: f64 = 0.0;
        for k in 0..import_price.len() {
            let (c, d, gp, gm) = (
                sol.charge[k],
                sol.discharge[k],
                sol.grid_import[k],
                sol.grid_export[k],
            );
            total += dt * (import_price[k] * gp - export_price[k] * gm) + dt * b.deg_cost * (c + d);
            if self.wear_quadratic != 0.0 {
                total += dt * self.wear_quadratic * (c * c + d * d);
            }
            peak = peak.max(gp);
        }
        if self.demand_charge > 0.0 {
            total += self.demand_charge * peak;
        }
        total
    }

    /// Largest violation by `sol` of this site's own constraints (kW or kWh); SoC recomputed from c and d.
    pub fn max_violation(&self, dt: f64, sol: &crate::SiteSolution) -> f64 {
        let b = &self.battery;
        let mut worst: f64 = 0.0;
        let mut s = b.e0;
        let t = sol.charge.len();
        for k in 0..t {
            let (c, d, gp, gm) = (
                sol.charge[k],
                sol.discharge[k],
                sol.grid_import[k],
                sol.grid_export[k],
            );
            worst = worst
                .max(-c)
                .max(c - self.charge_max(k))
                .max(-d)
                .max(d - self.discharge_max(k))
                .max(-gp)
                .max(gp - self.grid_import_max)
                .max(-gm)
                .max(gm - self.grid_export_max)
                .max(((gp - gm) - (self.load[k] - self.pv[k] + c - d)).abs());
            s += b.eta_ch * dt * c - dt / b.eta_dis * d;
            worst = worst
                .max(b.e_min - s)
                .max(s - b.e_max)
                .max((s - sol.soc_end[k]).abs());
            if let (true, Some(p)) = (self.demand_charge > 0.0, sol.peak_import) {
                worst = worst.max(gp - p);
            }
        }
        if let (Some(ef), true) = (b.e_final_min, t > 0) {
            worst = worst.max(ef - s);
        }
        if worst.is_nan() { f64::INFINITY } else { worst }
    }
}

#[derive(Clone, Copy)]
enum Sign {
    Any,
    NonNegative,
}

/// `sites[i].name`, formatted only when an error needs it.
struct SiteField(usize, &'static str);

impl std::fmt::Display for SiteField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sites[{}].{}", self.0, self.1)
    }
}

fn finite(field: &(impl std::fmt::Display + ?Sized), v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(
            field.to_string(),
            format!("must be a finite number, got {v}"),
        ))
    }
}

fn nonneg(field: &(impl std::fmt::Display + ?Sized), v: f64) -> Result<()> {
    finite(field, v)?;
    if v < 0.0 {
        return Err(Error::invalid(
            field.to_string(),
            format!("must be non-negative, got {v}"),
        ));
    }
    Ok(())
}

fn positive(field: &(impl std::fmt::Display + ?Sized), v: f64) -> Result<()> {
    finite(field, v)?;
    if v <= 0.0 {
        return Err(Error::invalid(
            field.to_string(),
            format!("must be positive, got {v}"),
        ));
    }
    Ok(())
}

fn series(
    field: &(impl std::fmt::Display + ?Sized),
    v: &[f64],
    t: usize,
    sign: Sign,
) -> Result<()> {
    if v.len() != t {
        return Err(Error::invalid(
            field.to_string(),
            format!("expected {t} values (one per slot), got {}", v.len()),
        ));
    }
    let bad = |x: f64| match sign {
        Sign::Any => !x.is_finite(),
        Sign::NonNegative => !(x.is_finite() && x >= 0.0),
    };
    // Name the element only when there is one to name: formatting on the happy path would dominate.
    match v.iter().position(|&x| bad(x)) {
        None => Ok(()),
        Some(k) => match sign {
            Sign::Any => finite(&format!("{field}[{k}]"), v[k]),
            Sign::NonNegative => nonneg(&format!("{field}[{k}]"), v[k]),
        },
    }
}
