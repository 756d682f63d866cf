//! Error handling in the embedded-hal style: every driver has its own error type, and each one
//! reports a portable [`ErrorKind`] so generic code (the agent, [`crate::SafeBattery`]) can react
//! without knowing the driver. [`Error`] is the crate's own error for bad configuration.

use core::convert::Infallible;
use core::fmt::Debug;

/// What went wrong, in terms generic code can act on (retry, go idle, raise an alarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The bus or link failed (I2C NACK or arbitration loss, TCP reset, Modbus framing). Often transient.
    Bus,
    /// The device did not answer in time.
    Timeout,
    /// The answer arrived but is corrupt: an SMBus PEC mismatch, a wrong identification register.
    Integrity,
    /// The device answered but refused or reported a fault (a Modbus exception, a BMS fault).
    Device,
    /// A reading is implausible or stale (a stuck or out-of-range sensor).
    Sensor,
    /// The request itself is invalid (a setpoint that is not finite or outside the device's range).
    InvalidInput,
    /// The device does not offer this function (a missing SunSpec model).
    Unsupported,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Whether retrying the same operation later may succeed (bus, timeout and integrity errors).
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Bus | Self::Timeout | Self::Integrity)
    }
}

impl core::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Self::Bus => "bus error",
            Self::Timeout => "timeout",
            Self::Integrity => "corrupt answer",
            Self::Device => "device fault",
            Self::Sensor => "implausible sensor reading",
            Self::InvalidInput => "invalid request",
            Self::Unsupported => "unsupported",
            Self::Other => "other error",
        };
        f.write_str(s)
    }
}

/// A hardware error that can say what kind of failure it is (embedded-hal's `Error` pattern).
pub trait HalError: Debug {
    /// The portable kind of this error.
    fn kind(&self) -> ErrorKind;
}

impl HalError for ErrorKind {
    fn kind(&self) -> ErrorKind {
        *self
    }
}

impl HalError for Infallible {
    fn kind(&self) -> ErrorKind {
        match *self {}
    }
}

/// Types that have an associated hardware error type (embedded-hal's `ErrorType` pattern).
pub trait ErrorType {
    /// The error this device returns.
    type Error: HalError;
}

impl<T: ErrorType + ?Sized> ErrorType for &mut T {
    type Error = T::Error;
}

/// Maps an embedded-hal I2C error kind to ours.
pub(crate) fn i2c_kind(kind: embedded_hal::i2c::ErrorKind) -> ErrorKind {
    use embedded_hal::i2c::ErrorKind as K;
    match kind {
        K::Bus | K::ArbitrationLoss | K::NoAcknowledge(_) | K::Overrun => ErrorKind::Bus,
        _ => ErrorKind::Other,
    }
}

/// The crate's error for configuration and construction problems (bad parameters), naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or not finite.
    #[error("invalid configuration `{field}` = {value}: expected {expected}")]
    InvalidConfig {
        /// The offending field, e.g. `sim.initial_soc`.
        field: &'static str,
        /// The value given.
        value: f64,
        /// What was expected, e.g. `in [0, 1]`.
        expected: &'static str,
    },
    /// A domain value from grid-core was rejected.
    #[error(transparent)]
    Core(#[from] grid_core::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Checks that `value` is finite and within `[lo, hi]`.
pub(crate) fn check_range(
    field: &'static str,
    value: f64,
    lo: f64,
    hi: f64,
    expected: &'static str,
) -> Result<f64> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(value)
    } else {
        Err(Error::InvalidConfig {
            field,
            value,
            expected,
        })
    }
}

impl HalError for Error {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}
