//! A contactor (or relay) that connects the battery to the inverter, driven by one GPIO output
//! through embedded-hal's `OutputPin`.
//!
//! The driver opens the contactor when it is created, so a restart never leaves the battery
//! connected by accident.
//!
//! ```
//! use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
//! use grid_hal::{Contactor, contactor::{ActiveLevel, GpioContactor}};
//! let pin = Mock::new(&[Transaction::set(State::Low), Transaction::set(State::High)]);
//! let mut k = GpioContactor::new(pin, ActiveLevel::High).unwrap();
//! k.close().unwrap();
//! assert!(k.is_closed());
//! k.release().done();
//! ```

use crate::error::{ErrorKind, HalError};
use embedded_hal::digital::OutputPin;

/// Which pin level closes the contactor (relay boards are often active-low).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActiveLevel {
    /// A high pin closes the contactor.
    #[default]
    High,
    /// A low pin closes the contactor.
    Low,
}

/// Error of the GPIO contactor: the pin's own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error<E>(pub E);

impl<E: embedded_hal::digital::Error> HalError for Error<E> {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Bus
    }
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GPIO error: {:?}", self.0)
    }
}

impl<E: core::fmt::Debug> std::error::Error for Error<E> {}

/// A contactor on one GPIO output; owns the pin until [`GpioContactor::release`].
#[derive(Debug)]
pub struct GpioContactor<P> {
    pin: P,
    level: ActiveLevel,
    closed: bool,
}

impl<P: OutputPin> GpioContactor<P> {
    /// Takes the pin and drives it to the open (inactive) level.
    pub fn new(pin: P, level: ActiveLevel) -> Result<Self, Error<P::Error>> {
        let mut c = Self {
            pin,
            level,
            closed: true,
        };
        crate::Contactor::open(&mut c)?;
        Ok(c)
    }

    /// Gives the pin back (in whatever state it is).
    pub fn release(self) -> P {
        self.pin
    }

    fn drive(&mut self, closed: bool) -> Result<(), Error<P::Error>> {
        let high = closed == (self.level == ActiveLevel::High);
        if high {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        }
        .map_err(Error)?;
        self.closed = closed;
        Ok(())
    }
}

impl<P: OutputPin> crate::ErrorType for GpioContactor<P> {
    type Error = Error<P::Error>;
}

impl<P: OutputPin> crate::Contactor for GpioContactor<P> {
    fn close(&mut self) -> Result<(), Self::Error> {
        self.drive(true)
    }

    fn open(&mut self) -> Result<(), Self::Error> {
        self.drive(false)
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Contactor;
    use embedded_hal_mock::eh1::MockError;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    #[test]
    fn active_low_board_drives_inverted_levels() {
        let pin = Mock::new(&[
            Transaction::set(State::High), // opened at start
            Transaction::set(State::Low),  // close
            Transaction::set(State::High), // open
        ]);
        let mut k = GpioContactor::new(pin, ActiveLevel::Low).unwrap();
        assert!(!k.is_closed());
        k.close().unwrap();
        assert!(k.is_closed());
        k.open().unwrap();
        assert!(!k.is_closed());
        k.release().done();
    }

    #[test]
    fn a_failed_write_keeps_the_last_known_state() {
        let pin = Mock::new(&[
            Transaction::set(State::Low),
            Transaction::set(State::High).with_error(MockError::Io(std::io::ErrorKind::BrokenPipe)),
        ]);
        let mut k = GpioContactor::new(pin, ActiveLevel::High).unwrap();
        let err = k.close().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bus);
        assert!(!k.is_closed());
        k.release().done();
    }
}
