//! Smart Battery (SBS 1.1) driver over SMBus/I2C, with SMBus packet error checking (PEC) on every read.
//!
//! References: *Smart Battery Data Specification, Revision 1.1* (SBS-IF, 1998), section 5.1 for
//! the command codes and units; *System Management Bus Specification 2.0*, section 4.2 (Read Word
//! protocol) and 5.4.7 / 7.4 (PEC: CRC-8, polynomial x⁸ + x² + x + 1 = 0x07, initial value 0,
//! computed over every byte of the transaction including the address bytes).
//!
//! ```
//! use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
//! use grid_hal::sbs::{SmartBattery, command};
//! // RelativeStateOfCharge (0x0D) = 87 %, PEC 0x54 over [0x16, 0x0D, 0x17, 0x57, 0x00].
//! let i2c = Mock::new(&[Transaction::write_read(0x0B, vec![command::RELATIVE_STATE_OF_CHARGE], vec![0x57, 0x00, 0x54])]);
//! let mut battery = SmartBattery::new(i2c);
//! assert_eq!(battery.relative_state_of_charge().unwrap(), 87);
//! battery.release().done();
//! ```

use crate::error::{ErrorKind, HalError, i2c_kind};
use embedded_hal::i2c::I2c;
use grid_core::{Alarms, Power, Soc, Temperature};

/// The SMBus address every smart battery answers on (SBS 1.1 section 3: 0x16 as the 8-bit write address).
pub const DEFAULT_ADDRESS: u8 = 0x0B;

/// SBS 1.1 command codes (section 5.1) read by this driver.
pub mod command {
    /// Temperature, unsigned, 0.1 K (5.1.8).
    pub const TEMPERATURE: u8 = 0x08;
    /// Voltage, unsigned, mV (5.1.9).
    pub const VOLTAGE: u8 = 0x09;
    /// Current, signed, mA, positive = charging (5.1.10).
    pub const CURRENT: u8 = 0x0A;
    /// RelativeStateOfCharge, unsigned, percent of FullChargeCapacity (5.1.13).
    pub const RELATIVE_STATE_OF_CHARGE: u8 = 0x0D;
    /// RemainingCapacity, unsigned, mAh (or 10 mWh when BatteryMode.CAPACITY_MODE is set) (5.1.15).
    pub const REMAINING_CAPACITY: u8 = 0x0F;
    /// FullChargeCapacity, unsigned, mAh (or 10 mWh) (5.1.16).
    pub const FULL_CHARGE_CAPACITY: u8 = 0x10;
    /// BatteryStatus, bit flags (5.1.21).
    pub const BATTERY_STATUS: u8 = 0x16;
}

/// CRC-8 as SMBus PEC computes it: polynomial 0x07, initial value 0, no reflection, no final XOR
/// (the CRC-8/SMBUS catalogue entry; check value 0xF4 for `b"123456789"`).
pub fn pec(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |mut crc, &b| {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// The BatteryStatus word (SBS 1.1 section 5.1.21): alarm bits, status bits and an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatteryStatus(pub u16);

impl BatteryStatus {
    /// OVER_CHARGED_ALARM: charging must stop.
    pub const OVER_CHARGED_ALARM: u16 = 0x8000;
    /// TERMINATE_CHARGE_ALARM: charging must stop (e.g. over-voltage, full).
    pub const TERMINATE_CHARGE_ALARM: u16 = 0x4000;
    /// OVER_TEMP_ALARM: temperature above the battery's limit.
    pub const OVER_TEMP_ALARM: u16 = 0x1000;
    /// TERMINATE_DISCHARGE_ALARM: discharging must stop (depleted or cell under-voltage).
    pub const TERMINATE_DISCHARGE_ALARM: u16 = 0x0800;
    /// REMAINING_CAPACITY_ALARM: below the RemainingCapacityAlarm threshold.
    pub const REMAINING_CAPACITY_ALARM: u16 = 0x0200;
    /// REMAINING_TIME_ALARM: below the RemainingTimeAlarm threshold.
    pub const REMAINING_TIME_ALARM: u16 = 0x0100;
    /// INITIALIZED: the gauge is calibrated.
    pub const INITIALIZED: u16 = 0x0080;
    /// DISCHARGING: the battery is not charging.
    pub const DISCHARGING: u16 = 0x0040;
    /// FULLY_CHARGED.
    pub const FULLY_CHARGED: u16 = 0x0020;
    /// FULLY_DISCHARGED.
    pub const FULLY_DISCHARGED: u16 = 0x0010;

    /// Whether all bits of `mask` are set.
    pub fn has(self, mask: u16) -> bool {
        self.0 & mask == mask
    }

    /// The error code of the last command (low nibble; 0 = OK).
    pub fn error_code(self) -> u8 {
        (self.0 & 0x000F) as u8
    }
}

/// One full reading of the pack, in the units the SBS specification defines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SbsReading {
    /// RelativeStateOfCharge, percent.
    pub relative_soc_percent: u16,
    /// RemainingCapacity, mAh (assuming BatteryMode.CAPACITY_MODE = 0, the power-on default).
    pub remaining_capacity_mah: u16,
    /// FullChargeCapacity, mAh.
    pub full_charge_capacity_mah: u16,
    /// Voltage, mV.
    pub voltage_mv: u16,
    /// Current, mA; positive = charging.
    pub current_ma: i16,
    /// Temperature, 0.1 K.
    pub temperature_dk: u16,
    /// BatteryStatus.
    pub status: BatteryStatus,
}

impl SbsReading {
    /// The temperature in °C.
    pub fn temperature_c(&self) -> f64 {
        f64::from(self.temperature_dk) / 10.0 - 273.15
    }

    /// Pack voltage in V.
    pub fn voltage_v(&self) -> f64 {
        f64::from(self.voltage_mv) / 1000.0
    }

    /// Pack current in A; positive = charging.
    pub fn current_a(&self) -> f64 {
        f64::from(self.current_ma) / 1000.0
    }

    /// Power into the pack in kW (positive = charging), the product of voltage and current.
    pub fn power_kw(&self) -> f64 {
        self.voltage_v() * self.current_a() / 1000.0
    }
}

/// Driver configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SbsConfig {
    /// 7-bit SMBus address (default 0x0B).
    pub address: u8,
    /// How many times a read is repeated after a PEC mismatch or a bus error (default 2).
    pub retries: u8,
}

impl Default for SbsConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS,
            retries: 2,
        }
    }
}

/// Errors of the SBS driver, generic over the I2C bus error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus failed on the last attempt.
    I2c(E),
    /// Every attempt returned a PEC that does not match the data.
    Pec {
        /// The SBS command that was read.
        command: u8,
        /// The PEC computed over the transaction.
        computed: u8,
        /// The PEC byte the battery sent.
        received: u8,
    },
    /// A value outside its defined range (RelativeStateOfCharge above 100 %).
    Implausible {
        /// The SBS command that was read.
        command: u8,
        /// The raw word.
        value: u16,
    },
}

impl<E: embedded_hal::i2c::Error> HalError for Error<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::I2c(e) => i2c_kind(e.kind()),
            Error::Pec { .. } => ErrorKind::Integrity,
            Error::Implausible { .. } => ErrorKind::Sensor,
        }
    }
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "SMBus error: {e:?}"),
            Error::Pec {
                command,
                computed,
                received,
            } => write!(
                f,
                "SMBus PEC mismatch on command {command:#04x}: computed {computed:#04x}, received {received:#04x}"
            ),
            Error::Implausible { command, value } => {
                write!(f, "implausible value {value} for command {command:#04x}")
            }
        }
    }
}

impl<E: core::fmt::Debug> std::error::Error for Error<E> {}

/// A smart battery on an SMBus, owning the bus until [`SmartBattery::release`].
#[derive(Debug)]
pub struct SmartBattery<I2C> {
    i2c: I2C,
    config: SbsConfig,
}

impl<I2C: I2c> SmartBattery<I2C> {
    /// A driver on the default address 0x0B with 2 retries.
    pub fn new(i2c: I2C) -> Self {
        Self::with_config(i2c, SbsConfig::default())
    }

    /// A driver with an explicit configuration.
    pub fn with_config(i2c: I2C, config: SbsConfig) -> Self {
        Self { i2c, config }
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// SMBus Read Word with PEC: write `command`, repeated start, read low byte, high byte, PEC.
    /// Repeats up to `retries` times on a PEC mismatch or a bus error.
    pub fn read_word(&mut self, command: u8) -> Result<u16, Error<I2C::Error>> {
        let write_addr = self.config.address << 1;
        let read_addr = write_addr | 1;
        let mut last = None;
        for _ in 0..=self.config.retries {
            let mut buf = [0u8; 3];
            match self
                .i2c
                .write_read(self.config.address, &[command], &mut buf)
            {
                Err(e) => last = Some(Error::I2c(e)),
                Ok(()) => {
                    let computed = pec(&[write_addr, command, read_addr, buf[0], buf[1]]);
                    if computed == buf[2] {
                        return Ok(u16::from_le_bytes([buf[0], buf[1]]));
                    }
                    last = Some(Error::Pec {
                        command,
                        computed,
                        received: buf[2],
                    });
                }
            }
        }
        // `retries + 1 >= 1` attempts ran, so `last` is set; the fallback keeps this panic-free.
        Err(last.unwrap_or(Error::Pec {
            command,
            computed: 0,
            received: 0,
        }))
    }

    /// RelativeStateOfCharge in percent (0x0D).
    pub fn relative_state_of_charge(&mut self) -> Result<u16, Error<I2C::Error>> {
        self.read_word(command::RELATIVE_STATE_OF_CHARGE)
    }

    /// RemainingCapacity in mAh (0x0F).
    pub fn remaining_capacity(&mut self) -> Result<u16, Error<I2C::Error>> {
        self.read_word(command::REMAINING_CAPACITY)
    }

    /// FullChargeCapacity in mAh (0x10).
    pub fn full_charge_capacity(&mut self) -> Result<u16, Error<I2C::Error>> {
        self.read_word(command::FULL_CHARGE_CAPACITY)
    }

    /// Voltage in mV (0x09).
    pub fn voltage(&mut self) -> Result<u16, Error<I2C::Error>> {
        self.read_word(command::VOLTAGE)
    }

    /// Current in mA, positive = charging (0x0A, two's complement).
    pub fn current(&mut self) -> Result<i16, Error<I2C::Error>> {
        self.read_word(command::CURRENT).map(|w| w as i16)
    }

    /// Temperature in 0.1 K (0x08).
    pub fn temperature(&mut self) -> Result<u16, Error<I2C::Error>> {
        self.read_word(command::TEMPERATURE)
    }

    /// BatteryStatus (0x16).
    pub fn battery_status(&mut self) -> Result<BatteryStatus, Error<I2C::Error>> {
        self.read_word(command::BATTERY_STATUS).map(BatteryStatus)
    }

    /// Reads every quantity, in the order RSOC, RemainingCapacity, FullChargeCapacity, Voltage,
    /// Current, Temperature, BatteryStatus.
    pub fn read_all(&mut self) -> Result<SbsReading, Error<I2C::Error>> {
        Ok(SbsReading {
            relative_soc_percent: self.relative_state_of_charge()?,
            remaining_capacity_mah: self.remaining_capacity()?,
            full_charge_capacity_mah: self.full_charge_capacity()?,
            voltage_mv: self.voltage()?,
            current_ma: self.current()?,
            temperature_dk: self.temperature()?,
            status: self.battery_status()?,
        })
    }
}

impl SbsReading {
    /// The alarm flags grid-core knows, from BatteryStatus: OVER_CHARGED → over-voltage,
    /// TERMINATE_CHARGE or FULLY_CHARGED → fully charged (charging must stop), OVER_TEMP →
    /// over-temperature, TERMINATE_DISCHARGE or FULLY_DISCHARGED → fully discharged.
    pub fn alarms(&self) -> Alarms {
        let s = self.status;
        let mut a = Alarms::NONE;
        let map = [
            (BatteryStatus::OVER_CHARGED_ALARM, Alarms::OVER_VOLTAGE),
            (BatteryStatus::TERMINATE_CHARGE_ALARM, Alarms::FULLY_CHARGED),
            (BatteryStatus::FULLY_CHARGED, Alarms::FULLY_CHARGED),
            (BatteryStatus::OVER_TEMP_ALARM, Alarms::OVER_TEMPERATURE),
            (
                BatteryStatus::TERMINATE_DISCHARGE_ALARM,
                Alarms::FULLY_DISCHARGED,
            ),
            (BatteryStatus::FULLY_DISCHARGED, Alarms::FULLY_DISCHARGED),
        ];
        for (bit, alarm) in map {
            if s.has(bit) {
                a.insert(alarm);
            }
        }
        a
    }
}

impl<I2C: I2c> crate::ErrorType for SmartBattery<I2C> {
    type Error = Error<I2C::Error>;
}

impl<I2C: I2c> crate::BatteryMonitor for SmartBattery<I2C> {
    /// Reads the pack with [`SmartBattery::read_all`]; SoC is RelativeStateOfCharge.
    fn read_state(&mut self) -> Result<crate::BatteryState, Self::Error> {
        let r = self.read_all()?;
        let soc = Soc::from_percent(f64::from(r.relative_soc_percent)).map_err(|_| {
            Error::Implausible {
                command: command::RELATIVE_STATE_OF_CHARGE,
                value: r.relative_soc_percent,
            }
        })?;
        Ok(crate::BatteryState {
            soc,
            voltage_v: r.voltage_v(),
            current_a: r.current_a(),
            // Finite by construction: products of 16-bit integers.
            power: Power::from_kw(r.power_kw()).unwrap_or(Power::ZERO),
            temperature: Temperature::from_celsius(r.temperature_c()).unwrap_or(Temperature::ZERO),
            alarms: r.alarms(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::ErrorKind as I2cKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    const A: u8 = DEFAULT_ADDRESS;

    /// A full read of a 4S Li-ion pack. The PEC bytes were computed independently (Python,
    /// CRC-8/SMBUS over address-write, command, address-read, low, high).
    fn full_read() -> Vec<Transaction> {
        vec![
            Transaction::write_read(A, vec![0x0D], vec![0x57, 0x00, 0x54]), // 87 %
            Transaction::write_read(A, vec![0x0F], vec![0xFE, 0x10, 0xAD]), // 4350 mAh
            Transaction::write_read(A, vec![0x10], vec![0x88, 0x13, 0xCD]), // 5000 mAh
            Transaction::write_read(A, vec![0x09], vec![0x88, 0x40, 0xB2]), // 16520 mV
            Transaction::write_read(A, vec![0x0A], vec![0x24, 0xFA, 0x43]), // -1500 mA
            Transaction::write_read(A, vec![0x08], vec![0xA6, 0x0B, 0x2A]), // 2982 dK = 25.05 °C
            Transaction::write_read(A, vec![0x16], vec![0xC0, 0x00, 0x33]), // INITIALIZED|DISCHARGING
        ]
    }

    #[test]
    fn pec_matches_the_crc8_smbus_check_value() {
        assert_eq!(pec(b"123456789"), 0xF4);
        assert_eq!(pec(&[]), 0);
    }

    #[test]
    fn reads_every_quantity_with_pec() {
        let mut bat = SmartBattery::new(Mock::new(&full_read()));
        let r = bat.read_all().unwrap();
        assert_eq!(r.relative_soc_percent, 87);
        assert_eq!(r.remaining_capacity_mah, 4350);
        assert_eq!(r.full_charge_capacity_mah, 5000);
        assert_eq!(r.voltage_mv, 16520);
        assert_eq!(r.current_ma, -1500);
        assert!((r.temperature_c() - 25.05).abs() < 1e-9);
        assert!((r.power_kw() - (-0.02478)).abs() < 1e-9);
        assert!(
            r.status
                .has(BatteryStatus::INITIALIZED | BatteryStatus::DISCHARGING)
        );
        assert!(!r.status.has(BatteryStatus::OVER_TEMP_ALARM));
        assert_eq!(r.status.error_code(), 0);
        bat.release().done();
    }

    #[test]
    fn read_state_maps_units_and_alarms() {
        use crate::BatteryMonitor;
        let mut bat = SmartBattery::new(Mock::new(&full_read()));
        let s = bat.read_state().unwrap();
        assert_eq!(s.soc.percent(), 87.0);
        assert!((s.voltage_v - 16.52).abs() < 1e-12);
        assert!((s.current_a + 1.5).abs() < 1e-12);
        assert!((s.power.kw() + 0.02478).abs() < 1e-12);
        assert!((s.temperature.celsius() - 25.05).abs() < 1e-9);
        assert!(s.alarms.is_empty());
        bat.release().done();

        let r = SbsReading {
            status: BatteryStatus(0x9000 | 0x0010),
            ..bat_reading()
        };
        assert!(
            r.alarms().contains(
                Alarms::OVER_VOLTAGE
                    .union(Alarms::OVER_TEMPERATURE)
                    .union(Alarms::FULLY_DISCHARGED)
            )
        );
        assert!(!r.alarms().contains(Alarms::FULLY_CHARGED));
    }

    fn bat_reading() -> SbsReading {
        SbsReading {
            relative_soc_percent: 50,
            remaining_capacity_mah: 2500,
            full_charge_capacity_mah: 5000,
            voltage_mv: 15000,
            current_ma: 0,
            temperature_dk: 2981,
            status: BatteryStatus(0),
        }
    }

    #[test]
    fn soc_above_100_percent_is_a_sensor_error() {
        use crate::BatteryMonitor;
        let mut t = full_read();
        t[0] = Transaction::write_read(
            A,
            vec![0x0D],
            vec![0x65, 0x00, pec(&[0x16, 0x0D, 0x17, 0x65, 0x00])],
        ); // 101 %
        let mut bat = SmartBattery::new(Mock::new(&t));
        let err = bat.read_state().unwrap_err();
        assert_eq!(
            err,
            Error::Implausible {
                command: 0x0D,
                value: 101
            }
        );
        assert_eq!(err.kind(), ErrorKind::Sensor);
        bat.release().done();
    }

    #[test]
    fn retries_after_a_pec_mismatch() {
        let mut bat = SmartBattery::new(Mock::new(&[
            Transaction::write_read(A, vec![0x09], vec![0x88, 0x40, 0xB3]), // corrupted PEC
            Transaction::write_read(A, vec![0x09], vec![0x88, 0x40, 0xB2]),
        ]));
        assert_eq!(bat.voltage().unwrap(), 16520);
        bat.release().done();
    }

    #[test]
    fn gives_up_after_the_configured_retries() {
        let bad = Transaction::write_read(A, vec![0x0D], vec![0x57, 0x01, 0x54]); // data flipped in transit
        let mut bat = SmartBattery::with_config(
            Mock::new(&[bad.clone(), bad]),
            SbsConfig {
                address: A,
                retries: 1,
            },
        );
        let err = bat.relative_state_of_charge().unwrap_err();
        assert_eq!(
            err,
            Error::Pec {
                command: 0x0D,
                computed: pec(&[0x16, 0x0D, 0x17, 0x57, 0x01]),
                received: 0x54
            }
        );
        assert_eq!(err.kind(), ErrorKind::Integrity);
        bat.release().done();
    }

    #[test]
    fn bus_errors_are_retried_then_reported_as_bus() {
        let nack = Transaction::write_read(A, vec![0x16], vec![0, 0, 0]).with_error(
            I2cKind::NoAcknowledge(embedded_hal::i2c::NoAcknowledgeSource::Address),
        );
        let mut bat = SmartBattery::new(Mock::new(&[nack.clone(), nack.clone(), nack]));
        let err = bat.battery_status().unwrap_err();
        assert!(matches!(err, Error::I2c(_)));
        assert_eq!(err.kind(), ErrorKind::Bus);
        bat.release().done();

        let mut bat = SmartBattery::new(Mock::new(&[
            Transaction::write_read(A, vec![0x16], vec![0, 0, 0]).with_error(I2cKind::Bus),
            Transaction::write_read(
                A,
                vec![0x16],
                vec![0x00, 0x18, pec(&[0x16, 0x16, 0x17, 0x00, 0x18])],
            ),
        ]));
        let s = bat.battery_status().unwrap();
        assert!(s.has(BatteryStatus::OVER_TEMP_ALARM | BatteryStatus::TERMINATE_DISCHARGE_ALARM));
        bat.release().done();
    }
}
