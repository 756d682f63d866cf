//! The [`Solver`] trait and the [`DefaultSolver`] that picks a method for each problem.

use crate::error::Result;
use crate::problem::FleetProblem;
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
    fn solve_warm(&self, problem: &FleetProblem, warm_start: Option<&FleetSolution>) -> Result<FleetSolution> {
        let _ = warm_start;
        self.solve(problem)
    }
}
