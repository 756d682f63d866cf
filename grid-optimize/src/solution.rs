//! What a solver returns: per-site schedules, SoC trajectories and grid flows, the objective, a status and
//! diagnostics (iterations, residuals, duality gap, the feeder's shadow prices).

use std::sync::Arc;

use crate::ipm::WarmPoint;

/// Outcome of a solve. Infeasibility is a status with a human-readable reason, never an error or a panic.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SolveStatus {
    /// The schedule is optimal (within the solver's tolerances).
    Optimal,
    /// No schedule satisfies the constraints. `reason` names the constraint family, the site and the slot where
    /// known, e.g. `site0: terminal SoC 9.0 kWh unreachable: at most 7.4 kWh by slot 95`.
    Infeasible {
        /// Human-readable explanation.
        reason: String,
    },
    /// The solver stopped at its iteration or time limit; the solution holds the best point so far.
    IterationLimit,
}

impl SolveStatus {
    /// The status word of `battopt-solution/1`: `optimal`, `infeasible` or `iteration_limit`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SolveStatus::Optimal => "optimal",
            SolveStatus::Infeasible { .. } => "infeasible",
            SolveStatus::IterationLimit => "iteration_limit",
        }
    }
}

/// The schedule of one site. Powers in kW (positive magnitudes; `charge` charges the battery, `grid_import`
/// imports from the grid), SoC in kWh at the END of each slot. All vectors have length T.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SiteSolution {
    /// The site's id, copied from the problem.
    pub id: String,
    /// Charge power per slot, kW (≥ 0).
    pub charge: Vec<f64>,
    /// Discharge power per slot, kW (≥ 0, a magnitude).
    pub discharge: Vec<f64>,
    /// Grid import per slot, kW (≥ 0).
    pub grid_import: Vec<f64>,
    /// Grid export per slot, kW (≥ 0, a magnitude).
    pub grid_export: Vec<f64>,
    /// State of charge at the end of each slot, kWh.
    pub soc_end: Vec<f64>,
    /// The peak-import cap `P` in kW when the site has a demand charge, else `None`.
    pub peak_import: Option<f64>,
}

impl SiteSolution {
    /// An all-zero schedule of `t` slots for site `id` (SoC left at zero; fill it before use).
    pub fn zeros(id: impl Into<String>, t: usize) -> Self {
        SiteSolution {
            id: id.into(),
            charge: vec![0.0; t],
            discharge: vec![0.0; t],
            grid_import: vec![0.0; t],
            grid_export: vec![0.0; t],
            soc_end: vec![0.0; t],
            peak_import: None,
        }
    }

    /// Whether every vector has length `t`.
    pub fn has_len(&self, t: usize) -> bool {
        self.charge.len() == t
            && self.discharge.len() == t
            && self.grid_import.len() == t
            && self.grid_export.len() == t
            && self.soc_end.len() == t
    }

    /// Net battery power in slot `t`, kW (positive = charging): `charge - discharge`.
    pub fn battery_power(&self, t: usize) -> f64 {
        self.charge[t] - self.discharge[t]
    }

    /// Net grid import in slot `t`, kW (positive = import): `grid_import - grid_export`.
    pub fn net_import(&self, t: usize) -> f64 {
        self.grid_import[t] - self.grid_export[t]
    }
}

/// Solver diagnostics. Fields a method does not produce are zero / `None`.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Diagnostics {
    /// Which method produced the solution, e.g. `site-dp` or `ipm`.
    pub method: String,
    /// Iterations (IPM iterations; demand-charge cap evaluations for the DP).
    pub iterations: usize,
    /// Largest primal residual (constraint violation) of the returned point, kW or kWh.
    pub primal_residual: f64,
    /// Largest dual residual (stationarity violation), currency units.
    pub dual_residual: f64,
    /// Duality gap (primal objective minus dual objective), currency; 0 for exact methods.
    pub duality_gap: f64,
    /// Shadow price of the feeder envelope per slot, currency per kWh: the objective's decrease per kWh of extra
    /// allowed import (positive, import limit binding) or of extra allowed export (negative, export limit binding)
    /// in that slot. `None` when the problem has no feeder or the method does not compute it.
    pub feeder_shadow_price: Option<Vec<f64>>,
    /// Wall-clock time spent in the solver, seconds.
    pub solve_seconds: f64,
    /// Whether the solve started from a warm start's point (the interior-point method, when handed a previous
    /// solution of a problem with the same shape); `false` for cold starts and the DP.
    #[cfg_attr(feature = "serde", serde(default))]
    pub warm_started: bool,
}

/// A solved (or proven infeasible) problem.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FleetSolution {
    /// Optimal, infeasible (with a reason) or stopped at the iteration limit.
    pub status: SolveStatus,
    /// Objective value, currency; `f64::INFINITY` when infeasible.
    pub objective: f64,
    /// One schedule per site, in the problem's order (empty when infeasible).
    pub sites: Vec<SiteSolution>,
    /// Iterations, residuals, duality gap, feeder shadow prices, time.
    pub diagnostics: Diagnostics,
    /// The interior-point iterate to warm-start the next solve from (see [`crate::Solver::solve_warm`]); `None`
    /// for methods that need no warm start (the exact DP) and for infeasible results. Not serialized.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub warm_point: Option<Arc<WarmPoint>>,
}

impl FleetSolution {
    /// An infeasible result with `reason` and no schedule.
    pub fn infeasible(reason: impl Into<String>, diagnostics: Diagnostics) -> Self {
        FleetSolution {
            status: SolveStatus::Infeasible {
                reason: reason.into(),
            },
            objective: f64::INFINITY,
            sites: Vec::new(),
            diagnostics,
            warm_point: None,
        }
    }

    /// Whether the status is [`SolveStatus::Optimal`].
    pub fn is_optimal(&self) -> bool {
        matches!(self.status, SolveStatus::Optimal)
    }

    /// Whether the solution carries a schedule (optimal, or the best point at the iteration limit).
    pub fn is_usable(&self) -> bool {
        !matches!(self.status, SolveStatus::Infeasible { .. }) && !self.sites.is_empty()
    }
}
