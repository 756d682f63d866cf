//! The one error type of grid-agent.

/// Why the agent could not be configured, open its store or talk to its broker or hardware.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing or wrong; `key` names it (`mqtt.url`) or the environment
    /// variable that set it (`GRID_AGENT_MQTT_URL`).
    #[error("config key {key}: {reason}")]
    Config {
        /// The offending key or variable.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The local SQLite store failed.
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    /// A store migration failed.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The stored data could not be decoded (a bug or a hand-edited database).
    #[error("store: corrupt row: {0}")]
    CorruptRow(String),
    /// A wire message could not be encoded.
    #[error(transparent)]
    Proto(#[from] grid_proto::Error),
    /// The hardware could not be set up.
    #[error("hardware: {0}")]
    Hal(#[from] grid_hal::Error),
    /// The MQTT client failed.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// File or socket I/O failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with grid-agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
