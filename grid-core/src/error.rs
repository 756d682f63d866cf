//! The one error type of grid-core: every constructor that can reject input returns it.

use crate::lifecycle::{ExecutionState, LifecycleEvent};

/// Why a value of the scheduling model could not be built or changed.
///
/// Every variant names the offending field, so the message can be shown to a user as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A number was NaN or infinite.
    #[error("{field}: {value} is not a finite number")]
    NotFinite {
        /// The field that was rejected.
        field: &'static str,
        /// The value that was given.
        value: f64,
    },
    /// A number was outside the range the field allows.
    #[error("{field}: {value} is out of range (expected {expected})")]
    OutOfRange {
        /// The field that was rejected.
        field: &'static str,
        /// The value that was given.
        value: f64,
        /// The allowed range, in words.
        expected: &'static str,
    },
    /// An identifier was empty, too long or held characters that are not allowed.
    #[error("{field}: invalid identifier {value:?}: {reason}")]
    InvalidId {
        /// The field that was rejected.
        field: &'static str,
        /// The identifier that was given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A series or list did not have the length the horizon requires.
    #[error("{field}: has {actual} slots, expected {expected}")]
    LengthMismatch {
        /// The field that was rejected.
        field: &'static str,
        /// The required length.
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
    /// Two values that must agree (horizons, devices, slot lengths) do not.
    #[error("{field}: {reason}")]
    Inconsistent {
        /// The field that was rejected.
        field: &'static str,
        /// What does not agree.
        reason: String,
    },
    /// A time zone name is not in the time zone database.
    #[error("{field}: unknown time zone {name:?}")]
    UnknownTimeZone {
        /// The field that was rejected.
        field: &'static str,
        /// The name that was given.
        name: String,
    },
    /// A time computation left the range of representable instants.
    #[error("{field}: time out of range")]
    TimeOutOfRange {
        /// The field whose computation overflowed.
        field: &'static str,
    },
    /// The execution lifecycle does not allow this event in this state.
    #[error("lifecycle: {event:?} is not allowed in state {from:?}")]
    InvalidTransition {
        /// The state the execution was in.
        from: ExecutionState,
        /// The event that was refused.
        event: LifecycleEvent,
    },
}

/// `Result` with grid-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Rejects NaN and infinities, naming the field.
pub(crate) fn finite(field: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::NotFinite { field, value })
    }
}

/// Rejects NaN, infinities and negative numbers, naming the field.
pub(crate) fn non_negative(field: &'static str, value: f64) -> Result<f64> {
    let value = finite(field, value)?;
    if value >= 0.0 {
        Ok(value)
    } else {
        Err(Error::OutOfRange {
            field,
            value,
            expected: ">= 0",
        })
    }
}
