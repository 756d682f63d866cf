//! grid-server: the reference fleet server (REST API with OpenAPI, PostgreSQL or SQLite storage,
//! MQTT transport, authentication and metrics).

pub mod mqtt;
pub mod store;

// --- HTTP half (helper server-api) ---
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod forecasting;
pub mod metrics;
pub mod process;
pub mod server;
