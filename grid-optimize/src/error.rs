//! The crate's error type: invalid input (naming the offending field) and unsupported problem shapes.
//!
//! An infeasible problem is *not* an error: it is [`crate::SolveStatus::Infeasible`] with a reason.

/// Errors of grid-optimize.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field of the input is missing, not finite, out of range or of the wrong length.
    ///
    /// `field` is a path such as `sites[0].battery.e_max` or `import_price[17]`.
    #[error("invalid input: {field}: {reason}")]
    InvalidInput {
        /// Path of the offending field, e.g. `sites[0].battery.e_max`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The input document is not well-formed (e.g. not JSON, or an unknown schema).
    #[error("malformed input: {0}")]
    Malformed(String),
    /// The problem has a shape the chosen solver does not handle (e.g. a fleet given to the single-site DP).
    #[error("unsupported problem: {0}")]
    Unsupported(String),
    /// A grid-core value could not be built or converted (e.g. a forecast that does not cover the horizon).
    #[error(transparent)]
    Core(#[from] grid_core::Error),
}

impl Error {
    /// Builds [`Error::InvalidInput`] from a field path and a reason.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The offending field's path, when the error names one.
    pub fn field(&self) -> Option<&str> {
        use grid_core::Error as Core;
        match self {
            Error::InvalidInput { field, .. } => Some(field),
            Error::Core(
                Core::NotFinite { field, .. }
                | Core::OutOfRange { field, .. }
                | Core::InvalidId { field, .. }
                | Core::LengthMismatch { field, .. }
                | Core::Inconsistent { field, .. }
                | Core::UnknownTimeZone { field, .. }
                | Core::TimeOutOfRange { field, .. },
            ) => Some(field),
            _ => None,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
