//! grid-optimize: convex optimisation of battery schedules for one site and for whole fleets under a
//! shared feeder envelope, behind a `Solver` trait, plus day-ahead forecasting of load, PV and price.
//! The `grid-opt` command-line tool lives behind the `cli` feature.

#[cfg(feature = "serde")]
pub mod battopt;
pub mod convert;
pub mod error;
pub mod forecast;
pub mod ipm;
pub mod mpc;
pub mod problem;
pub mod site_dp;
pub mod solution;
pub mod solver;

pub use error::{Error, Result};
pub use problem::{
    BatteryParams, FeederLimit, FleetProblem, PowerBounds, SiteProblem, TrackingTarget,
};
pub use solution::{Diagnostics, FleetSolution, SiteSolution, SolveStatus};
pub use solver::Solver;
