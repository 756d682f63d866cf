//! The typed error of the storage layer; the API maps it to HTTP (404, 409, 422, 500/503).

/// What a [`Store`](super::Store) operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The named object does not exist.
    #[error("{entity} {key} not found")]
    NotFound {
        /// The kind of object (`device`, `site`, `schedule`, ...).
        entity: &'static str,
        /// Its key.
        key: String,
    },
    /// The write collides with what is stored (a unique key, an older version, a terminal state).
    #[error("{entity} {key}: conflict: {reason}")]
    Conflict {
        /// The kind of object.
        entity: &'static str,
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The input is unusable; `field` names the offending field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A stored value could not be decoded (a bug or a hand-edited database).
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The database URL is not one the server understands.
    #[error("unsupported database URL {0:?}: expected postgres://... or sqlite://PATH")]
    UnsupportedUrl(String),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub(crate) fn not_found(entity: &'static str, key: impl std::fmt::Display) -> Self {
        Self::NotFound {
            entity,
            key: key.to_string(),
        }
    }

    pub(crate) fn conflict(
        entity: &'static str,
        key: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::Conflict {
            entity,
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            what,
            reason: reason.to_string(),
        }
    }

    /// Whether the database itself failed (as opposed to the request): worth a retry or a 503.
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::Migrate(_))
    }
}

/// The result of a store operation.
pub type StoreResult<T> = std::result::Result<T, StoreError>;
