//! grid-sim: the fleet demo and the load tool. It wires the reference server, simulated agents
//! and simulated batteries together in one process, on real price, load and PV data.

pub mod baseline;
pub mod demo;
pub mod fleet;
pub mod http;
pub mod load;
pub mod observer;
pub mod report;
pub mod scenario;
