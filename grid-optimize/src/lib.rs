//! grid-optimize: convex optimisation of battery schedules for one site and for whole fleets under a
//! shared feeder envelope, behind a `Solver` trait, plus day-ahead forecasting of load, PV and price.
//! The `grid-opt` command-line tool lives behind the `cli` feature.
