//! The [`Solver`] trait and the [`DefaultSolver`] that picks an exact method for each problem.
//!
//! # Which method solves what
//!
//! | problem | method | why |
//! | --- | --- | --- |
//! | linear, no feeder, no tracking (one site, or sites that share nothing) | [`crate::site_dp::SiteDpSolver`] | each site is a one-state optimal-control LP whose cost-to-go is convex piecewise linear in the SoC: an exact dynamic program over slope-sorted segment lists, microseconds per site |
//! | a feeder envelope, aggregate tracking, or quadratic wear | [`crate::ipm::InteriorPointSolver`] | the coupling rows and quadratic terms break the DP's piecewise-linear structure; a Mehrotra predictor–corrector whose Newton steps are per-site banded solves plus a T×T Schur complement stays exact and fast |
//!
//! Both methods are exact: the DP is exact by construction (its duality gap is zero up to rounding, reported in
//! [`crate::Diagnostics::duality_gap`]); the interior-point method stops when residuals and gap are below its
//! tolerances, and the returned schedule is checked against every constraint.
//!
//! A single site with quadratic wear goes to the interior-point method too (it is a fleet of one there). Warm
//! starts ([`Solver::solve_warm`]) are passed on to the interior-point method, which restarts from the iterate the
//! previous solution keeps ([`crate::FleetSolution::warm_point`]); the DP needs none.

use crate::error::Result;
use crate::ipm::InteriorPointSolver;
use crate::problem::FleetProblem;
use crate::site_dp::SiteDpSolver;
use crate::solution::FleetSolution;

/// A method that solves a [`FleetProblem`].
///
/// `Err` is reserved for invalid input ([`crate::Error::InvalidInput`]) and problem shapes the method does not
/// handle ([`crate::Error::Unsupported`]); an infeasible problem is `Ok` with
/// [`crate::SolveStatus::Infeasible`].
pub trait Solver {
    /// Solves `problem` from scratch.
    fn solve(&self, problem: &FleetProblem) -> Result<FleetSolution>;

    /// Solves `problem`, using `warm_start` (typically the previous MPC solution, shifted) where the method can.
    /// The default ignores the warm start.
    fn solve_warm(
        &self,
        problem: &FleetProblem,
        warm_start: Option<&FleetSolution>,
    ) -> Result<FleetSolution> {
        let _ = warm_start;
        self.solve(problem)
    }
}

/// The method [`DefaultSolver`] uses for a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The exact dynamic program, per site ([`crate::site_dp`]).
    SiteDp,
    /// The structured interior-point method ([`crate::ipm`]).
    InteriorPoint,
}

impl Method {
    /// The method for `problem`: the DP whenever the sites are independent linear programs.
    pub fn for_problem(problem: &FleetProblem) -> Method {
        if SiteDpSolver::supports(problem) {
            Method::SiteDp
        } else {
            Method::InteriorPoint
        }
    }
}

/// The solver to use by default: validates the problem, then dispatches to the exact method that fits it
/// (see the [module docs](self)).
///
/// ```
/// use grid_optimize::{BatteryParams, FleetProblem, SiteProblem, Solver, SolveStatus};
/// use grid_optimize::solver::DefaultSolver;
///
/// # fn main() -> grid_optimize::Result<()> {
/// // A day in four 6-hour slots: a cheap night, a dear evening, PV at noon.
/// let problem = FleetProblem {
///     name: "home".into(),
///     dt: 6.0,
///     import_price: vec![0.10, 0.25, 0.20, 0.40],
///     export_price: vec![0.05, 0.05, 0.05, 0.05],
///     sites: vec![SiteProblem {
///         id: "home".into(),
///         load: vec![0.3, 0.5, 0.4, 0.9],
///         pv: vec![0.0, 1.2, 0.6, 0.0],
///         grid_import_max: 11.0,
///         grid_export_max: 5.0,
///         demand_charge: 0.0,
///         battery: BatteryParams {
///             e_min: 1.0, e_max: 10.0, e0: 5.0, e_final_min: Some(5.0),
///             p_ch_max: 3.0, p_dis_max: 3.0, eta_ch: 0.95, eta_dis: 0.95, deg_cost: 0.01,
///         },
///         power_bounds: None,
///         wear_quadratic: 0.0,
///     }],
///     feeder: None,
///     tracking: None,
/// };
/// let solution = DefaultSolver::default().solve(&problem)?;
/// assert_eq!(solution.status, SolveStatus::Optimal);
/// assert!(problem.max_violation(&solution) < 1e-9);
/// // Better than leaving the battery idle: 6 h·(0.3·0.10 − 0.7·0.05 − 0.2·0.05 + 0.9·0.40) = 2.07 EUR.
/// assert!(solution.objective < 2.07);
/// println!("cost {:.4} EUR, charge {:?}", solution.objective, solution.sites[0].charge);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct DefaultSolver {
    /// The exact DP, for problems whose sites are independent linear programs.
    pub site_dp: SiteDpSolver,
    /// The interior-point method, for everything else (its settings: tolerances, iteration limit, threads).
    pub ipm: InteriorPointSolver,
}

impl DefaultSolver {
    /// The method this solver would use for `problem`.
    pub fn method(&self, problem: &FleetProblem) -> Method {
        Method::for_problem(problem)
    }
}

impl Solver for DefaultSolver {
    fn solve(&self, problem: &FleetProblem) -> Result<FleetSolution> {
        self.solve_warm(problem, None)
    }

    fn solve_warm(
        &self,
        problem: &FleetProblem,
        warm_start: Option<&FleetSolution>,
    ) -> Result<FleetSolution> {
        problem.validate()?;
        match Method::for_problem(problem) {
            // The DP is exact and fast from scratch; a warm start has nothing to add.
            Method::SiteDp => self.site_dp.solve_validated(problem),
            Method::InteriorPoint => self.ipm.solve_warm(problem, warm_start),
        }
    }
}
