//! INA226 current/voltage/power monitor over I2C, used as a DC power meter on the battery or as a
//! site meter.
//!
//! Reference: Texas Instruments *INA226 High-Side or Low-Side Measurement, Bi-Directional Current
//! and Power Monitor with I2C Compatible Interface*, SBOS547A. Registers are 16 bits, most
//! significant byte first (section 7.5.4: a register pointer write, then the data). Register map
//! in section 7.6: 0x00 Configuration, 0x01 Shunt Voltage (2.5 µV/LSB, two's complement),
//! 0x02 Bus Voltage (1.25 mV/LSB), 0x03 Power (25 × Current_LSB), 0x04 Current (Current_LSB,
//! two's complement), 0x05 Calibration, 0xFE Manufacturer ID (0x5449, "TI"), 0xFF Die ID (0x2260).
//! Calibration (section 7.5.2, equations 1 and 2): `Current_LSB = Maximum Expected Current / 2^15`
//! and `CAL = 0.00512 / (Current_LSB × R_shunt)`.
//!
//! ```
//! use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
//! use grid_hal::ina226::{Ina226, Ina226Config};
//! // 2 mΩ shunt, 32.768 A full scale: Current_LSB = 1 mA, CAL = 2560 = 0x0A00.
//! let config = Ina226Config { shunt_ohms: 0.002, max_current_a: 32.768, ..Ina226Config::default() };
//! let i2c = Mock::new(&[
//!     Transaction::write_read(0x40, vec![0xFE], vec![0x54, 0x49]),
//!     Transaction::write_read(0x40, vec![0xFF], vec![0x22, 0x60]),
//!     Transaction::write(0x40, vec![0x00, 0x45, 0x27]),
//!     Transaction::write(0x40, vec![0x05, 0x0A, 0x00]),
//!     Transaction::write_read(0x40, vec![0x02], vec![0x25, 0x80]), // 9600 × 1.25 mV = 12 V
//! ]);
//! let mut meter = Ina226::new(i2c, config.validate()?);
//! meter.init().unwrap();
//! assert!((meter.bus_voltage_v().unwrap() - 12.0).abs() < 1e-9);
//! meter.release().done();
//! # Ok::<(), grid_hal::Error>(())
//! ```

use crate::error::{ErrorKind, HalError, check_range, i2c_kind};
use embedded_hal::i2c::I2c;

/// Address with A0 = A1 = GND (datasheet table 6-2).
pub const DEFAULT_ADDRESS: u8 = 0x40;

/// Register pointers (datasheet section 7.6).
pub mod register {
    /// Configuration.
    pub const CONFIGURATION: u8 = 0x00;
    /// Shunt voltage, 2.5 µV/LSB, signed.
    pub const SHUNT_VOLTAGE: u8 = 0x01;
    /// Bus voltage, 1.25 mV/LSB.
    pub const BUS_VOLTAGE: u8 = 0x02;
    /// Power, 25 × Current_LSB W/LSB.
    pub const POWER: u8 = 0x03;
    /// Current, Current_LSB A/LSB, signed.
    pub const CURRENT: u8 = 0x04;
    /// Calibration.
    pub const CALIBRATION: u8 = 0x05;
    /// Manufacturer ID, reads 0x5449.
    pub const MANUFACTURER_ID: u8 = 0xFE;
    /// Die ID, reads 0x2260.
    pub const DIE_ID: u8 = 0xFF;
}

/// Manufacturer ID value ("TI").
pub const MANUFACTURER_ID: u16 = 0x5449;
/// Die ID value.
pub const DIE_ID: u16 = 0x2260;

/// Number of samples averaged (configuration bits 11–9, datasheet table 7-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Averaging {
    /// 1 sample.
    N1,
    /// 4 samples.
    N4,
    /// 16 samples.
    #[default]
    N16,
    /// 64 samples.
    N64,
    /// 128 samples.
    N128,
    /// 256 samples.
    N256,
    /// 512 samples.
    N512,
    /// 1024 samples.
    N1024,
}

/// ADC conversion time (configuration bits 8–6 for the bus, 5–3 for the shunt; tables 7-4, 7-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConversionTime {
    /// 140 µs.
    Us140,
    /// 204 µs.
    Us204,
    /// 332 µs.
    Us332,
    /// 588 µs.
    Us588,
    /// 1.1 ms.
    #[default]
    Us1100,
    /// 2.116 ms.
    Us2116,
    /// 4.156 ms.
    Us4156,
    /// 8.244 ms.
    Us8244,
}

/// Driver configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ina226Config {
    /// 7-bit I2C address (0x40–0x4F depending on A0/A1).
    pub address: u8,
    /// Shunt resistance in Ω.
    pub shunt_ohms: f64,
    /// Largest current to measure in A (sets Current_LSB = max / 2^15).
    pub max_current_a: f64,
    /// Averaging.
    pub averaging: Averaging,
    /// Bus voltage conversion time.
    pub bus_conversion: ConversionTime,
    /// Shunt voltage conversion time.
    pub shunt_conversion: ConversionTime,
    /// Flip the sign of current and power, for a shunt wired the other way round. Without it a
    /// positive shunt voltage (current IN+ → IN−) reads as positive power (charging / importing).
    pub invert: bool,
}

impl Default for Ina226Config {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS,
            shunt_ohms: 0.002,
            max_current_a: 20.0,
            averaging: Averaging::default(),
            bus_conversion: ConversionTime::default(),
            shunt_conversion: ConversionTime::default(),
            invert: false,
        }
    }
}

impl Ina226Config {
    /// The configuration register: reserved bits 14–12 = 100, averaging, conversion times and
    /// MODE = 111 (shunt and bus, continuous). The defaults give 0x4527.
    pub fn configuration_word(&self) -> u16 {
        0x4000
            | (self.averaging as u16) << 9
            | (self.bus_conversion as u16) << 6
            | (self.shunt_conversion as u16) << 3
            | 0b111
    }

    /// The calibration register value (datasheet equation 1), rounded to the nearest integer.
    pub fn calibration(&self) -> crate::Result<u16> {
        let lsb = self.max_current_a / 32768.0;
        let cal = (0.00512 / (lsb * self.shunt_ohms)).round();
        check_range(
            "ina226.calibration",
            cal,
            1.0,
            32767.0,
            "1..=32767 (choose another shunt or max_current_a)",
        )?;
        Ok(cal as u16)
    }

    /// Checks the configuration and computes the calibration, before any bus is handed over.
    pub fn validate(self) -> crate::Result<ValidConfig> {
        check_range(
            "ina226.shunt_ohms",
            self.shunt_ohms,
            f64::MIN_POSITIVE,
            1.0e3,
            "> 0 Ω",
        )?;
        check_range(
            "ina226.max_current_a",
            self.max_current_a,
            f64::MIN_POSITIVE,
            1.0e6,
            "> 0 A",
        )?;
        let calibration = self.calibration()?;
        let current_lsb_a = 0.00512 / (f64::from(calibration) * self.shunt_ohms);
        Ok(ValidConfig {
            config: self,
            calibration,
            current_lsb_a,
        })
    }
}

/// A checked [`Ina226Config`] with its calibration (from [`Ina226Config::validate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidConfig {
    config: Ina226Config,
    calibration: u16,
    /// The current LSB in A implied by the rounded calibration.
    current_lsb_a: f64,
}

/// Errors of the INA226 driver, generic over the I2C bus error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// The identification registers do not read 0x5449 / 0x2260: not an INA226.
    WrongDevice {
        /// Manufacturer ID read.
        manufacturer: u16,
        /// Die ID read.
        die: u16,
    },
}

impl<E: embedded_hal::i2c::Error> HalError for Error<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::I2c(e) => i2c_kind(e.kind()),
            Error::WrongDevice { .. } => ErrorKind::Integrity,
        }
    }
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "I2C error: {e:?}"),
            Error::WrongDevice { manufacturer, die } => {
                write!(
                    f,
                    "not an INA226: manufacturer id {manufacturer:#06x}, die id {die:#06x}"
                )
            }
        }
    }
}

impl<E: core::fmt::Debug> std::error::Error for Error<E> {}

/// An INA226 owning its I2C bus until [`Ina226::release`].
#[derive(Debug)]
pub struct Ina226<I2C> {
    i2c: I2C,
    config: Ina226Config,
    calibration: u16,
    current_lsb_a: f64,
}

impl<I2C: I2c> Ina226<I2C> {
    /// Takes the bus (no traffic yet). Call [`Ina226::init`] before reading.
    pub fn new(i2c: I2C, config: ValidConfig) -> Self {
        let ValidConfig {
            config,
            calibration,
            current_lsb_a,
        } = config;
        Self {
            i2c,
            config,
            calibration,
            current_lsb_a,
        }
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// The calibration register value programmed by [`Ina226::init`].
    pub fn calibration(&self) -> u16 {
        self.calibration
    }

    /// The current LSB in A.
    pub fn current_lsb_a(&self) -> f64 {
        self.current_lsb_a
    }

    /// Verifies the identification registers, then writes the configuration and calibration.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        let manufacturer = self.read_register(register::MANUFACTURER_ID)?;
        let die = self.read_register(register::DIE_ID)?;
        if manufacturer != MANUFACTURER_ID || die != DIE_ID {
            return Err(Error::WrongDevice { manufacturer, die });
        }
        self.write_register(register::CONFIGURATION, self.config.configuration_word())?;
        self.write_register(register::CALIBRATION, self.calibration)
    }

    /// Reads a 16-bit register (pointer write, repeated start, MSB, LSB).
    pub fn read_register(&mut self, reg: u8) -> Result<u16, Error<I2C::Error>> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(self.config.address, &[reg], &mut buf)
            .map_err(Error::I2c)?;
        Ok(u16::from_be_bytes(buf))
    }

    /// Writes a 16-bit register (pointer, MSB, LSB).
    pub fn write_register(&mut self, reg: u8, value: u16) -> Result<(), Error<I2C::Error>> {
        let [hi, lo] = value.to_be_bytes();
        self.i2c
            .write(self.config.address, &[reg, hi, lo])
            .map_err(Error::I2c)
    }

    fn sign(&self) -> f64 {
        if self.config.invert { -1.0 } else { 1.0 }
    }

    /// Bus voltage in V (1.25 mV/LSB).
    pub fn bus_voltage_v(&mut self) -> Result<f64, Error<I2C::Error>> {
        Ok(f64::from(self.read_register(register::BUS_VOLTAGE)?) * 1.25e-3)
    }

    /// Shunt voltage in V (2.5 µV/LSB, signed; not affected by `invert`).
    pub fn shunt_voltage_v(&mut self) -> Result<f64, Error<I2C::Error>> {
        Ok(f64::from(self.read_register(register::SHUNT_VOLTAGE)? as i16) * 2.5e-6)
    }

    /// Current in A (signed; positive = charging / importing unless `invert`).
    pub fn current_a(&mut self) -> Result<f64, Error<I2C::Error>> {
        Ok(self.sign()
            * f64::from(self.read_register(register::CURRENT)? as i16)
            * self.current_lsb_a)
    }

    /// Power magnitude in W as the chip computes it (25 × Current_LSB per LSB; always ≥ 0).
    pub fn power_magnitude_w(&mut self) -> Result<f64, Error<I2C::Error>> {
        Ok(f64::from(self.read_register(register::POWER)?) * 25.0 * self.current_lsb_a)
    }

    /// Bus voltage, current and signed power in one go (the power register's magnitude with the
    /// current's sign, since the chip's power register is unsigned).
    pub fn read(&mut self) -> Result<crate::MeterReading, Error<I2C::Error>> {
        let voltage_v = self.bus_voltage_v()?;
        let current_a = self.current_a()?;
        let magnitude_w = self.power_magnitude_w()?;
        let power_kw = if current_a < 0.0 {
            -magnitude_w
        } else {
            magnitude_w
        } / 1000.0;
        Ok(crate::MeterReading::from_raw(
            power_kw, voltage_v, current_a,
        ))
    }
}

impl<I2C: I2c> crate::ErrorType for Ina226<I2C> {
    type Error = Error<I2C::Error>;
}

impl<I2C: I2c> crate::PowerMeter for Ina226<I2C> {
    fn read_power(&mut self) -> Result<crate::MeterReading, Self::Error> {
        self.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PowerMeter;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    const A: u8 = DEFAULT_ADDRESS;

    fn config() -> Ina226Config {
        Ina226Config {
            shunt_ohms: 0.002,
            max_current_a: 32.768,
            ..Ina226Config::default()
        }
    }

    fn init_transactions() -> Vec<Transaction> {
        vec![
            Transaction::write_read(A, vec![0xFE], vec![0x54, 0x49]),
            Transaction::write_read(A, vec![0xFF], vec![0x22, 0x60]),
            Transaction::write(A, vec![0x00, 0x45, 0x27]), // AVG=16, 1.1 ms, 1.1 ms, continuous
            Transaction::write(A, vec![0x05, 0x0A, 0x00]), // CAL = 0.00512/(1 mA × 2 mΩ) = 2560
        ]
    }

    #[test]
    fn configuration_word_and_calibration_follow_the_datasheet() {
        assert_eq!(Ina226Config::default().configuration_word(), 0x4527);
        let c = Ina226Config {
            averaging: Averaging::N1,
            bus_conversion: ConversionTime::Us140,
            shunt_conversion: ConversionTime::Us8244,
            ..config()
        };
        assert_eq!(c.configuration_word(), 0x4000 | 0b111 << 3 | 0b111);
        assert_eq!(config().calibration().unwrap(), 2560);
        // 20 A on 2 mΩ: Current_LSB = 610.35 µA, CAL = 4194.3 → 4194.
        assert_eq!(Ina226Config::default().calibration().unwrap(), 4194);
        // 0.1 mΩ and 1 A full scale would need CAL = 1.6 M: rejected, naming the field.
        let err = Ina226Config {
            shunt_ohms: 0.0001,
            max_current_a: 1.0,
            ..config()
        }
        .validate();
        assert!(matches!(
            err,
            Err(crate::Error::InvalidConfig {
                field: "ina226.calibration",
                ..
            })
        ));
        let err = Ina226Config {
            shunt_ohms: f64::NAN,
            ..config()
        }
        .validate();
        assert!(matches!(
            err,
            Err(crate::Error::InvalidConfig {
                field: "ina226.shunt_ohms",
                ..
            })
        ));
    }

    #[test]
    fn init_then_read_voltage_current_power() {
        let mut t = init_transactions();
        t.extend([
            Transaction::write_read(A, vec![0x02], vec![0x25, 0x80]), // 9600 → 12.000 V
            Transaction::write_read(A, vec![0x04], vec![0xEC, 0x78]), // -5000 → -5.000 A
            Transaction::write_read(A, vec![0x03], vec![0x09, 0x60]), // 2400 × 25 mW = 60 W
            Transaction::write_read(A, vec![0x01], vec![0xF0, 0x60]), // -4000 × 2.5 µV = -10 mV
        ]);
        let mut m = Ina226::new(Mock::new(&t), config().validate().unwrap());
        m.init().unwrap();
        let r = m.read_power().unwrap();
        assert!((r.voltage_v - 12.0).abs() < 1e-9);
        assert!((r.current_a + 5.0).abs() < 1e-9);
        assert!((r.power.kw() + 0.060).abs() < 1e-12, "{:?}", r.power);
        assert!((m.shunt_voltage_v().unwrap() + 0.010).abs() < 1e-12);
        m.release().done();
    }

    #[test]
    fn invert_flips_current_and_power() {
        let t = vec![
            Transaction::write_read(A, vec![0x02], vec![0x25, 0x80]),
            Transaction::write_read(A, vec![0x04], vec![0xEC, 0x78]),
            Transaction::write_read(A, vec![0x03], vec![0x09, 0x60]),
        ];
        let mut m = Ina226::new(
            Mock::new(&t),
            Ina226Config {
                invert: true,
                ..config()
            }
            .validate()
            .unwrap(),
        );
        let r = m.read().unwrap();
        assert!((r.power.kw() - 0.060).abs() < 1e-12);
        m.release().done();
    }

    #[test]
    fn rejects_a_device_that_is_not_an_ina226() {
        let t = vec![
            Transaction::write_read(A, vec![0xFE], vec![0x54, 0x49]),
            Transaction::write_read(A, vec![0xFF], vec![0x22, 0x70]), // an INA228-like die id
        ];
        let mut m = Ina226::new(Mock::new(&t), config().validate().unwrap());
        let err = m.init().unwrap_err();
        assert_eq!(
            err,
            Error::WrongDevice {
                manufacturer: 0x5449,
                die: 0x2270
            }
        );
        assert_eq!(err.kind(), ErrorKind::Integrity);
        m.release().done();
    }
}
