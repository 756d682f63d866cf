//! rppal adapters (feature `rpi`), so the drivers run on a Raspberry Pi's I2C bus and GPIO pins.
//!
//! rppal's own embedded-hal `I2c::transaction` issues each operation as a separate transfer with a
//! STOP in between. SMBus Read Word (the SBS driver) and the INA226's register reads need a
//! *repeated start* between the command write and the read, and the SMBus PEC covers both halves,
//! so [`RpiI2c`] sends a write followed by a read as one `I2C_RDWR` transfer (rppal's
//! `write_read`). Builds on any Linux; opening the devices needs a Pi (off a Pi, [`RpiI2c::open`]
//! fails with "no such file" and [`output_pin`] with "unknown model").
//!
//! ```no_run
//! use grid_hal::{BatteryMonitor, rpi, sbs::SmartBattery};
//! let mut battery = SmartBattery::new(rpi::RpiI2c::open(1)?);
//! let state = battery.read_state()?;
//! let mut contactor = rpi::contactor(17, grid_hal::contactor::ActiveLevel::Low)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::contactor::{ActiveLevel, GpioContactor};
use crate::error::{ErrorKind, HalError};
use embedded_hal::i2c::{ErrorType, I2c, Operation, SevenBitAddress};

/// Errors opening the Pi's peripherals.
#[derive(Debug, thiserror::Error)]
pub enum RpiError {
    /// Opening `/dev/i2c-N` failed (I2C not enabled, no permission, not a Pi).
    #[error("I2C: {0}")]
    I2c(#[from] rppal::i2c::Error),
    /// Opening the GPIO failed (not a Pi, pin busy).
    #[error("GPIO: {0}")]
    Gpio(#[from] rppal::gpio::Error),
}

impl HalError for RpiError {
    fn kind(&self) -> ErrorKind {
        match self {
            RpiError::I2c(rppal::i2c::Error::UnknownModel)
            | RpiError::Gpio(rppal::gpio::Error::UnknownModel) => ErrorKind::Unsupported,
            RpiError::I2c(_) | RpiError::Gpio(_) => ErrorKind::Bus,
        }
    }
}

/// A Raspberry Pi I2C bus with repeated-start write-then-read transactions.
#[derive(Debug)]
pub struct RpiI2c(rppal::i2c::I2c);

impl RpiI2c {
    /// Opens `/dev/i2c-<bus>` (bus 1 is the header's pins 3/5 on every Pi since the model B rev 2).
    pub fn open(bus: u8) -> Result<Self, RpiError> {
        Ok(Self(rppal::i2c::I2c::with_bus(bus)?))
    }

    /// The rppal bus, e.g. to set the clock or timeout.
    pub fn into_inner(self) -> rppal::i2c::I2c {
        self.0
    }
}

impl ErrorType for RpiI2c {
    type Error = rppal::i2c::Error;
}

impl I2c<SevenBitAddress> for RpiI2c {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        self.0.set_slave_address(u16::from(address))?;
        match operations {
            [Operation::Write(w), Operation::Read(r)] => self.0.write_read(w, r),
            ops => {
                for op in ops {
                    match op {
                        Operation::Read(r) => {
                            self.0.read(r)?;
                        }
                        Operation::Write(w) => {
                            self.0.write(w)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Takes BCM GPIO `bcm` as an output, driven low at once.
///
/// rppal resets the pin to an input when the returned pin is dropped (e.g. on exit): give the
/// contactor's driver a pull resistor that holds it open when the pin floats.
pub fn output_pin(bcm: u8) -> Result<rppal::gpio::OutputPin, RpiError> {
    Ok(rppal::gpio::Gpio::new()?.get(bcm)?.into_output_low())
}

/// A [`GpioContactor`] on BCM GPIO `bcm`, opened at start.
pub fn contactor(
    bcm: u8,
    level: ActiveLevel,
) -> Result<GpioContactor<rppal::gpio::OutputPin>, RpiError> {
    let pin = output_pin(bcm)?;
    // rppal's OutputPin cannot fail to set a level (its error type is Infallible).
    match GpioContactor::new(pin, level) {
        Ok(c) => Ok(c),
        Err(crate::contactor::Error(never)) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine is not a Pi: opening fails with a typed error instead of panicking.
    #[test]
    fn opening_off_a_pi_fails_cleanly() {
        if std::path::Path::new("/dev/i2c-1").exists() {
            return; // on a real Pi the open may succeed
        }
        let err = RpiI2c::open(1).unwrap_err();
        assert!(matches!(err, RpiError::I2c(_)), "{err}");
        if std::fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry"))
        {
            return;
        }
        let err = output_pin(17).unwrap_err();
        assert!(matches!(err, RpiError::Gpio(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    }
}
