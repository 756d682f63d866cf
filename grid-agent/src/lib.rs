//! # grid-agent: the reference daemon that runs on each Raspberry Pi next to one battery
//!
//! It executes schedules through grid-hal's safety layer, acknowledges every lifecycle step,
//! reports telemetry with plan-vs-actual per slot, and keeps the battery safe when the cloud,
//! the broker or the network is gone.
//!
//! * [`engine`]: the sans-IO [`Engine`]: `(now, event) -> Vec<Action>`; every decision lives here.
//! * [`store`]: the local SQLite [`Store`] (schedules by version, ack outbox, bounded telemetry
//!   buffer, integrity check with safe mode).
//! * [`shell`]: the thin tokio shell: MQTT (rumqttc, manual acks after commit), the store and
//!   the hardware; [`shell::run_agent`] runs one agent with an injected [`shell::Clock`], store
//!   and battery, so many agents can run in one process (the fleet demo).
//! * [`config`]: the typed [`Config`] with its documented default TOML and env overrides.
//! * [`hardware`]: drivers behind one object-safe trait, wrapped in grid-hal's `SafeBattery`.
//!
//! **Sign convention:** a positive power (kW) charges the battery or imports from the grid;
//! negative discharges it or exports. Energy in kWh, instants in UTC.
#![warn(missing_docs)]

pub mod config;
pub mod engine;
mod error;
pub mod hardware;
pub mod metrics;
pub mod shell;
pub mod store;

pub use config::Config;
pub use engine::{Action, Engine, EngineConfig, Event};
pub use error::{Error, Result};
pub use store::Store;
