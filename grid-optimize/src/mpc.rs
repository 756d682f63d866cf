//! Model-predictive control: keep a horizon, roll it forward as time passes, feed in SoC measurements and
//! forecast updates, and re-solve warm-started from the previous plan.
//!
//! The controller owns the current [`FleetProblem`]. Each control period:
//!
//! 1. [`MpcController::roll`] drops the slots that have passed and appends the new slots' data (a [`Tail`]).
//!    Each site's initial SoC moves to what the previous plan expected at that point;
//! 2. [`MpcController::set_soc`] replaces it with the measurement, [`MpcController::set_site_forecast`] /
//!    [`MpcController::set_prices`] replace forecasts that changed;
//! 3. [`MpcController::solve`] re-solves. The previous solution, shifted by the slots rolled since, is handed to
//!    the solver as a warm start ([`Solver::solve_warm`]): the interior-point method restarts from the iterate
//!    the previous solution keeps ([`crate::ipm::WarmPoint`], shifted with the horizon), which saves 25–45 % of its
//!    iterations on the fleet fixtures; the exact DP needs none and ignores it.
//!    [`MpcController::first_slot_power`] is the command to send now.
//!
//! A demand charge is applied to the peak inside the horizon only; a peak already reached earlier in the billing
//! period is not known to the problem.
//!
//! ```
//! use grid_optimize::mpc::{MpcController, SiteTail, Tail};
//! use grid_optimize::solver::DefaultSolver;
//! use grid_optimize::{BatteryParams, FleetProblem, SiteProblem};
//!
//! # fn main() -> grid_optimize::Result<()> {
//! let t = 8;
//! let problem = FleetProblem {
//!     name: "rolling".into(),
//!     dt: 1.0,
//!     import_price: vec![0.1, 0.1, 0.3, 0.3, 0.1, 0.1, 0.3, 0.3],
//!     export_price: vec![0.0; t],
//!     sites: vec![SiteProblem {
//!         id: "home".into(),
//!         load: vec![1.0; t],
//!         pv: vec![0.0; t],
//!         grid_import_max: 10.0,
//!         grid_export_max: 10.0,
//!         demand_charge: 0.0,
//!         battery: BatteryParams {
//!             e_min: 0.0, e_max: 4.0, e0: 1.0, e_final_min: None,
//!             p_ch_max: 2.0, p_dis_max: 2.0, eta_ch: 1.0, eta_dis: 1.0, deg_cost: 0.0,
//!         },
//!         power_bounds: None,
//!         wear_quadratic: 0.0,
//!     }],
//!     feeder: None,
//!     tracking: None,
//! };
//! let mut mpc = MpcController::new(DefaultSolver::default(), problem)?;
//! mpc.solve()?;
//! let now = mpc.first_slot_power().expect("solved");
//! assert!(now[0] > 0.0); // charge in the cheap hour
//! // One hour later: the battery reports 2.5 kWh, and a new hour enters the horizon.
//! mpc.roll(1, &Tail::repeat_last(mpc.problem(), 1))?;
//! mpc.set_soc(0, 2.5)?;
//! let plan = mpc.solve()?;
//! assert!(plan.is_optimal());
//! assert_eq!(mpc.problem().sites[0].battery.e0, 2.5);
//! # let _ = SiteTail::default();
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::problem::{FeederLimit, FleetProblem, PowerBounds};
use crate::solution::{FleetSolution, SiteSolution};
use crate::solver::Solver;

/// Data of one site for the slots entering the horizon (each vector has one value per new slot).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteTail {
    /// Load forecast, kW (positive = consumption).
    pub load: Vec<f64>,
    /// PV forecast, kW (positive = generation).
    pub pv: Vec<f64>,
    /// Per-slot charge limits, kW, when the site has [`PowerBounds`] (otherwise ignored).
    pub charge_max: Option<Vec<f64>>,
    /// Per-slot discharge limits, kW, when the site has [`PowerBounds`] (otherwise ignored).
    pub discharge_max: Option<Vec<f64>>,
}

/// Data for the slots entering the horizon when it rolls forward.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tail {
    /// Import prices of the new slots, per kWh.
    pub import_price: Vec<f64>,
    /// Export prices of the new slots, per kWh.
    pub export_price: Vec<f64>,
    /// One entry per site, in the problem's order.
    pub sites: Vec<SiteTail>,
    /// Feeder envelope of the new slots (required when the problem has a feeder).
    pub feeder: Option<FeederLimit>,
    /// Tracking setpoints of the new slots, kW (required when the problem tracks a setpoint).
    pub setpoint_kw: Option<Vec<f64>>,
}

impl Tail {
    /// A tail of `slots` slots that repeats each series' last value: a placeholder when no new forecast is
    /// available (e.g. in tests, or to keep the horizon length while waiting for the next day-ahead prices).
    pub fn repeat_last(problem: &FleetProblem, slots: usize) -> Tail {
        let rep = |v: &[f64]| vec![v.last().copied().unwrap_or(0.0); slots];
        Tail {
            import_price: rep(&problem.import_price),
            export_price: rep(&problem.export_price),
            sites: problem
                .sites
                .iter()
                .map(|s| SiteTail {
                    load: rep(&s.load),
                    pv: rep(&s.pv),
                    charge_max: s.power_bounds.as_ref().map(|b| rep(&b.charge_max)),
                    discharge_max: s.power_bounds.as_ref().map(|b| rep(&b.discharge_max)),
                })
                .collect(),
            feeder: problem.feeder.as_ref().map(|f| FeederLimit {
                import_limit: rep(&f.import_limit),
                export_limit: rep(&f.export_limit),
            }),
            setpoint_kw: problem.tracking.as_ref().map(|t| rep(&t.setpoint_kw)),
        }
    }
}

/// A receding-horizon controller around any [`Solver`].
#[derive(Debug, Clone)]
pub struct MpcController<S: Solver> {
    solver: S,
    problem: FleetProblem,
    solution: Option<FleetSolution>,
    /// Slots rolled since `solution` was computed.
    shifted: usize,
}

/// Drops the first `k` values of `v` and appends `tail`.
fn roll_vec(v: &mut Vec<f64>, k: usize, tail: &[f64]) {
    v.drain(..k.min(v.len()));
    v.extend_from_slice(tail);
}

/// Checks that a tail series has `k` finite values.
fn tail_series(field: &str, v: &[f64], k: usize) -> Result<()> {
    if v.len() != k {
        return Err(Error::invalid(
            field,
            format!("expected {k} values (one per new slot), got {}", v.len()),
        ));
    }
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::invalid(
            format!("{field}[{i}]"),
            "must be a finite number",
        )),
        None => Ok(()),
    }
}

impl<S: Solver> MpcController<S> {
    /// A controller for `problem` (validated here), not yet solved.
    pub fn new(solver: S, problem: FleetProblem) -> Result<Self> {
        problem.validate()?;
        Ok(MpcController {
            solver,
            problem,
            solution: None,
            shifted: 0,
        })
    }

    /// The current horizon's problem.
    pub fn problem(&self) -> &FleetProblem {
        &self.problem
    }

    /// The latest solution, if any (computed before any rolls since: see [`MpcController::solve`]).
    pub fn solution(&self) -> Option<&FleetSolution> {
        self.solution.as_ref()
    }

    /// The solver.
    pub fn solver(&self) -> &S {
        &self.solver
    }

    /// Sets the measured state of charge of site `site` (kWh) as the horizon's starting SoC.
    ///
    /// A measurement slightly outside the battery's window (sensor noise) is clamped into it; a non-finite one is
    /// rejected.
    pub fn set_soc(&mut self, site: usize, soc_kwh: f64) -> Result<()> {
        let field = format!("sites[{site}].battery.e0");
        let s = self
            .problem
            .sites
            .get_mut(site)
            .ok_or_else(|| Error::invalid(field.clone(), "no such site"))?;
        if !soc_kwh.is_finite() {
            return Err(Error::invalid(
                field,
                format!("measured SoC must be finite, got {soc_kwh}"),
            ));
        }
        s.battery.e0 = soc_kwh.clamp(s.battery.e_min, s.battery.e_max);
        Ok(())
    }

    /// Replaces site `site`'s load and PV forecasts over the current horizon (kW, one value per slot).
    pub fn set_site_forecast(&mut self, site: usize, load: Vec<f64>, pv: Vec<f64>) -> Result<()> {
        let t = self.problem.slots();
        tail_series(&format!("sites[{site}].load"), &load, t)?;
        tail_series(&format!("sites[{site}].pv"), &pv, t)?;
        let s = self
            .problem
            .sites
            .get_mut(site)
            .ok_or_else(|| Error::invalid(format!("sites[{site}]"), "no such site"))?;
        s.load = load;
        s.pv = pv;
        Ok(())
    }

    /// Replaces the prices over the current horizon (per kWh, one value per slot).
    pub fn set_prices(&mut self, import_price: Vec<f64>, export_price: Vec<f64>) -> Result<()> {
        let t = self.problem.slots();
        tail_series("import_price", &import_price, t)?;
        tail_series("export_price", &export_price, t)?;
        self.problem.import_price = import_price;
        self.problem.export_price = export_price;
        Ok(())
    }

    /// Rolls the horizon forward by `slots` slots (`1 ≤ slots ≤ T`): drops the slots that have passed and appends
    /// `tail`. Each site's starting SoC becomes the previous plan's SoC at that point, when there is a plan;
    /// measure and [`MpcController::set_soc`] to correct it. On error nothing changes.
    pub fn roll(&mut self, slots: usize, tail: &Tail) -> Result<()> {
        let t = self.problem.slots();
        if slots == 0 || slots > t {
            return Err(Error::invalid(
                "slots",
                format!("must be between 1 and the horizon length {t}, got {slots}"),
            ));
        }
        let k = slots;
        tail_series("tail.import_price", &tail.import_price, k)?;
        tail_series("tail.export_price", &tail.export_price, k)?;
        if tail.sites.len() != self.problem.sites.len() {
            return Err(Error::invalid(
                "tail.sites",
                format!(
                    "expected {} sites, got {}",
                    self.problem.sites.len(),
                    tail.sites.len()
                ),
            ));
        }
        for (i, (st, site)) in tail.sites.iter().zip(&self.problem.sites).enumerate() {
            tail_series(&format!("tail.sites[{i}].load"), &st.load, k)?;
            tail_series(&format!("tail.sites[{i}].pv"), &st.pv, k)?;
            if site.power_bounds.is_some() {
                let (Some(cm), Some(dm)) = (&st.charge_max, &st.discharge_max) else {
                    return Err(Error::invalid(
                        format!("tail.sites[{i}].charge_max"),
                        "the site has per-slot power bounds: the new slots need them too",
                    ));
                };
                tail_series(&format!("tail.sites[{i}].charge_max"), cm, k)?;
                tail_series(&format!("tail.sites[{i}].discharge_max"), dm, k)?;
            }
        }
        if self.problem.feeder.is_some() {
            let f = tail.feeder.as_ref().ok_or_else(|| {
                Error::invalid(
                    "tail.feeder",
                    "the problem has a feeder envelope: the new slots need it too",
                )
            })?;
            tail_series("tail.feeder.import_limit", &f.import_limit, k)?;
            tail_series("tail.feeder.export_limit", &f.export_limit, k)?;
        }
        if self.problem.tracking.is_some() {
            let sp = tail.setpoint_kw.as_ref().ok_or_else(|| {
                Error::invalid(
                    "tail.setpoint_kw",
                    "the problem tracks a setpoint: the new slots need one too",
                )
            })?;
            tail_series("tail.setpoint_kw", sp, k)?;
        }
        // Validated: apply.
        let planned: Option<Vec<f64>> = self.solution.as_ref().and_then(|sol| {
            let idx = self.shifted + k;
            (sol.is_usable() && sol.sites.len() == self.problem.sites.len())
                .then(|| {
                    sol.sites
                        .iter()
                        .map(|s| s.soc_end.get(idx - 1).copied())
                        .collect::<Option<Vec<f64>>>()
                })
                .flatten()
        });
        let p = &mut self.problem;
        roll_vec(&mut p.import_price, k, &tail.import_price);
        roll_vec(&mut p.export_price, k, &tail.export_price);
        for (i, (site, st)) in p.sites.iter_mut().zip(&tail.sites).enumerate() {
            roll_vec(&mut site.load, k, &st.load);
            roll_vec(&mut site.pv, k, &st.pv);
            if let Some(PowerBounds {
                charge_max,
                discharge_max,
            }) = &mut site.power_bounds
            {
                roll_vec(charge_max, k, st.charge_max.as_deref().unwrap_or_default());
                roll_vec(
                    discharge_max,
                    k,
                    st.discharge_max.as_deref().unwrap_or_default(),
                );
            }
            if let Some(e) = planned.as_ref().map(|v| v[i]) {
                site.battery.e0 = e.clamp(site.battery.e_min, site.battery.e_max);
            }
        }
        if let (Some(f), Some(tf)) = (&mut p.feeder, &tail.feeder) {
            roll_vec(&mut f.import_limit, k, &tf.import_limit);
            roll_vec(&mut f.export_limit, k, &tf.export_limit);
        }
        if let (Some(tr), Some(sp)) = (&mut p.tracking, &tail.setpoint_kw) {
            roll_vec(&mut tr.setpoint_kw, k, sp);
        }
        self.shifted += k;
        Ok(())
    }

    /// The previous solution shifted to the current horizon (its tail repeats the last slot), if there is one.
    pub fn warm_start(&self) -> Option<FleetSolution> {
        let sol = self.solution.as_ref()?;
        let t = self.problem.slots();
        if !sol.is_usable() || sol.sites.len() != self.problem.sites.len() || self.shifted >= t {
            return None;
        }
        let k = self.shifted;
        let shift = |v: &[f64]| -> Vec<f64> {
            let mut out: Vec<f64> = v.iter().skip(k).copied().collect();
            let last = out.last().copied().unwrap_or(0.0);
            out.resize(t, last);
            out
        };
        let sites = sol
            .sites
            .iter()
            .map(|s| SiteSolution {
                id: s.id.clone(),
                charge: shift(&s.charge),
                discharge: shift(&s.discharge),
                grid_import: shift(&s.grid_import),
                grid_export: shift(&s.grid_export),
                soc_end: shift(&s.soc_end),
                peak_import: s.peak_import,
            })
            .collect();
        Some(FleetSolution {
            status: sol.status.clone(),
            objective: sol.objective,
            sites,
            diagnostics: sol.diagnostics.clone(),
            warm_point: sol
                .warm_point
                .as_ref()
                .map(|w| std::sync::Arc::new(w.shifted(k))),
        })
    }

    /// Solves the current horizon, warm-started from the previous solution shifted by the slots rolled since.
    pub fn solve(&mut self) -> Result<&FleetSolution> {
        let warm = self.warm_start();
        let solution = self.solver.solve_warm(&self.problem, warm.as_ref())?;
        self.shifted = 0;
        Ok(self.solution.insert(solution))
    }

    /// Net battery power per site for the first slot of the latest plan, kW (positive = charging), or `None`
    /// when there is no usable plan for the current horizon (not solved, infeasible, or rolled since).
    pub fn first_slot_power(&self) -> Option<Vec<f64>> {
        let sol = self.solution.as_ref()?;
        if !sol.is_usable() || self.shifted != 0 {
            return None;
        }
        sol.sites
            .iter()
            .map(|s| {
                s.charge
                    .first()
                    .zip(s.discharge.first())
                    .map(|(c, d)| c - d)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::{BatteryParams, SiteProblem};
    use crate::solver::DefaultSolver;

    fn problem(t: usize) -> FleetProblem {
        FleetProblem {
            name: "mpc".into(),
            dt: 1.0,
            import_price: (0..t).map(|k| if k % 4 < 2 { 0.1 } else { 0.3 }).collect(),
            export_price: vec![0.02; t],
            sites: vec![SiteProblem {
                id: "a".into(),
                load: vec![1.0; t],
                pv: vec![0.0; t],
                grid_import_max: 10.0,
                grid_export_max: 10.0,
                demand_charge: 0.0,
                battery: BatteryParams {
                    e_min: 0.5,
                    e_max: 4.0,
                    e0: 1.0,
                    e_final_min: None,
                    p_ch_max: 2.0,
                    p_dis_max: 2.0,
                    eta_ch: 0.95,
                    eta_dis: 0.95,
                    deg_cost: 0.01,
                },
                power_bounds: None,
                wear_quadratic: 0.0,
            }],
            feeder: None,
            tracking: None,
        }
    }

    #[test]
    fn roll_shifts_series_and_carries_the_planned_soc() {
        let mut mpc = MpcController::new(DefaultSolver::default(), problem(8)).expect("valid");
        let planned = mpc.solve().expect("solves").sites[0].soc_end[1];
        let before = mpc.problem().import_price.clone();
        let mut tail = Tail::repeat_last(mpc.problem(), 2);
        tail.import_price = vec![0.5, 0.6];
        mpc.roll(2, &tail).expect("valid tail");
        assert_eq!(mpc.problem().import_price[..6], before[2..]);
        assert_eq!(mpc.problem().import_price[6..], [0.5, 0.6]);
        assert_eq!(mpc.problem().slots(), 8);
        assert!((mpc.problem().sites[0].battery.e0 - planned).abs() < 1e-12);
        // Rolled since the solve: no command until re-solved, but a shifted warm start.
        assert!(mpc.first_slot_power().is_none());
        let warm = mpc.warm_start().expect("previous plan");
        assert_eq!(warm.sites[0].soc_end.len(), 8);
        assert!(
            (warm.sites[0].soc_end[0] - mpc.solution().expect("kept").sites[0].soc_end[2]).abs()
                < 1e-12
        );
        mpc.set_soc(0, 3.0).expect("finite");
        let sol = mpc.solve().expect("solves");
        assert!(sol.is_optimal());
        assert!(mpc.problem().max_violation(mpc.solution().expect("solved")) < 1e-9);
        assert_eq!(mpc.problem().sites[0].battery.e0, 3.0);
    }

    #[test]
    fn bad_updates_change_nothing() {
        let mut mpc = MpcController::new(DefaultSolver::default(), problem(8)).expect("valid");
        let before = mpc.problem().clone();
        let mut tail = Tail::repeat_last(mpc.problem(), 2);
        tail.sites[0].load = vec![1.0];
        let err = mpc.roll(2, &tail).expect_err("short tail");
        assert_eq!(err.field(), Some("tail.sites[0].load"));
        tail.sites[0].load = vec![1.0, f64::NAN];
        assert_eq!(
            mpc.roll(2, &tail).expect_err("NaN").field(),
            Some("tail.sites[0].load[1]")
        );
        assert!(mpc.roll(0, &tail).is_err());
        assert!(mpc.set_soc(0, f64::NAN).is_err());
        assert!(mpc.set_soc(3, 1.0).is_err());
        assert_eq!(mpc.problem(), &before);
        // Noise just outside the window is clamped.
        mpc.set_soc(0, 4.0000001).expect("clamped");
        assert_eq!(mpc.problem().sites[0].battery.e0, 4.0);
    }

    #[test]
    fn rolling_through_a_week_stays_feasible() {
        let mut mpc = MpcController::new(DefaultSolver::default(), problem(24)).expect("valid");
        for step in 0..48 {
            let sol = mpc.solve().expect("solves");
            assert!(sol.is_optimal(), "step {step}: {:?}", sol.status);
            let p = mpc.first_slot_power().expect("plan")[0];
            assert!((-2.0..=2.0).contains(&p));
            let tail = Tail::repeat_last(mpc.problem(), 1);
            mpc.roll(1, &tail).expect("valid");
        }
    }
}
