//! SunSpec register maps for storage inverters: discovery, the common model (1), inverter models
//! (101–103), the storage model (124) and the meter models (201–204 and 211–214), decoded and
//! encoded without I/O. The async Modbus TCP
//! client, `SunSpecClient`, is behind the `modbus` feature.
//!
//! References: *SunSpec Information Model Specification* 1.9 (base register 40000 holding "SunS",
//! then a chain of `ID, L, L registers` blocks ending with ID 0xFFFF; scale factors `sunssf` are
//! powers of ten; 0x8000 / 0xFFFF mark unimplemented points), *SunSpec Inverter Models* (model
//! 103: W at offset 12, W_SF 13, DCV 27, DCV_SF 28, TmpCab 31, Tmp_SF 35, St 36), *SunSpec Storage
//! Model* 124 (WChaMax 0, StorCtl_Mod 3, ChaState 6, InBatV 8, ChaSt 9, OutWRte 10, InWRte 11,
//! InOutWRte_WinTms 12, InOutWRte_RvrtTms 13, WChaMax_SF 16, ChaState_SF 20, InBatV_SF 22,
//! InOutWRte_SF 23; offsets count from the first register after `ID, L`), *SunSpec Meter Models*
//! 201–204 (integer + scale factor, L = 105: W at offset 16, W_SF 20) and 211–214 (IEEE 754
//! float32 in two registers, high word first, NaN when not implemented; L = 124: W at offset 26).
//!
//! **Setpoint convention** (the one Fronius, SMA and most hybrid inverters follow): StorCtl_Mod = 3
//! enables both limits; InWRte is the charge limit and OutWRte the discharge limit, in percent of
//! WChaMax; a negative value of one forces the opposite direction. Charging at `p` writes
//! `InWRte = p`, `OutWRte = −p`; discharging at `p` writes `OutWRte = p`, `InWRte = −p`; idle writes
//! both 0. InOutWRte_RvrtTms makes the inverter revert to its default after that many seconds
//! without a new write, so a dead agent cannot leave the battery running.
//!
//! ```
//! use core::time::Duration;
//! use grid_core::Power;
//! use grid_hal::sunspec::StorageModel;
//! // WChaMax 5000 W (SF 0), rates with SF −2 (0.01 % steps).
//! let mut regs = [0u16; 24];
//! regs[0] = 5000;
//! regs[23] = (-2i16) as u16;
//! let storage = StorageModel::decode(&regs)?;
//! let cmd = storage.command(Power::from_kw(3.0)?, Duration::from_secs(60))?;
//! assert_eq!(cmd.rates, [(-6000i16) as u16, 6000, 0, 60]); // OutWRte −60 %, InWRte 60 %, RvrtTms 60 s
//! assert_eq!(cmd.stor_ctl_mod, 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "modbus")]
mod client;
#[cfg(feature = "modbus")]
pub use client::{SunSpecClient, SunSpecConfig};

use crate::error::{ErrorKind, HalError};
use core::time::Duration;
use grid_core::Power;

/// "SunS" as two registers.
pub const MARKER: [u16; 2] = [0x5375, 0x6E53];
/// Where devices put the marker, in the order to probe (holding register addresses, 0-based).
pub const BASE_ADDRESSES: [u16; 3] = [40000, 0, 50000];
/// The common model's id.
pub const COMMON_MODEL: u16 = 1;
/// The single/split/three-phase inverter models' ids (same layout for the points read here).
pub const INVERTER_MODELS: [u16; 3] = [101, 102, 103];
/// The basic storage controls model's id.
pub const STORAGE_MODEL: u16 = 124;
/// The meter models' ids: single-phase, split-phase, wye and delta three-phase, first with
/// integer + scale factor points (201–204), then with float points (211–214); within each group
/// the layout is the same for the points read here.
pub const METER_MODELS: [u16; 8] = [201, 202, 203, 204, 211, 212, 213, 214];
/// The id that ends the model chain.
pub const END_MODEL: u16 = 0xFFFF;

/// Register offsets in model 124 (from the first register after `ID, L`).
pub mod storage {
    /// WChaMax, uint16, W × 10^WChaMax_SF.
    pub const W_CHA_MAX: usize = 0;
    /// StorCtl_Mod, bitfield16: bit 0 charge limit active, bit 1 discharge limit active.
    pub const STOR_CTL_MOD: usize = 3;
    /// ChaState, uint16, % × 10^ChaState_SF.
    pub const CHA_STATE: usize = 6;
    /// InBatV, uint16, V × 10^InBatV_SF.
    pub const IN_BAT_V: usize = 8;
    /// ChaSt, enum16: 1 off, 2 empty, 3 discharging, 4 charging, 5 full, 6 holding, 7 testing.
    pub const CHA_ST: usize = 9;
    /// OutWRte, int16, % of WChaMax × 10^InOutWRte_SF.
    pub const OUT_W_RTE: usize = 10;
    /// InWRte, int16, % of WChaMax × 10^InOutWRte_SF.
    pub const IN_W_RTE: usize = 11;
    /// InOutWRte_RvrtTms, uint16, s.
    pub const RVRT_TMS: usize = 13;
    /// WChaMax_SF.
    pub const W_CHA_MAX_SF: usize = 16;
    /// ChaState_SF.
    pub const CHA_STATE_SF: usize = 20;
    /// InBatV_SF.
    pub const IN_BAT_V_SF: usize = 22;
    /// InOutWRte_SF.
    pub const IN_OUT_W_RTE_SF: usize = 23;
    /// The model's length L.
    pub const LENGTH: usize = 24;
}

/// Register offsets in models 101–103 (from the first register after `ID, L`).
pub mod inverter {
    /// W, int16, AC power W × 10^W_SF (positive = the inverter delivers to the grid).
    pub const W: usize = 12;
    /// W_SF.
    pub const W_SF: usize = 13;
    /// DCV, uint16, V × 10^DCV_SF.
    pub const DCV: usize = 27;
    /// DCV_SF.
    pub const DCV_SF: usize = 28;
    /// TmpCab, int16, °C × 10^Tmp_SF.
    pub const TMP_CAB: usize = 31;
    /// Tmp_SF.
    pub const TMP_SF: usize = 35;
    /// St, enum16 operating state (7 = FAULT).
    pub const ST: usize = 36;
    /// The model's length L.
    pub const LENGTH: usize = 50;
}

/// Register offsets in models 201–204 (from the first register after `ID, L`).
pub mod meter {
    /// W, int16, total real power W × 10^W_SF (see [`super::MeterModel::w`] for the sign).
    pub const W: usize = 16;
    /// W_SF.
    pub const W_SF: usize = 20;
    /// The model's length L.
    pub const LENGTH: usize = 105;
}

/// Register offsets in the float meter models 211–214 (from the first register after `ID, L`).
pub mod meter_float {
    /// W, float32 (two registers, high word first), total real power in W (see
    /// [`super::MeterModel::w`] for the sign).
    pub const W: usize = 26;
    /// The model's length L.
    pub const LENGTH: usize = 124;
}

/// SunSpec errors: a device that does not speak SunSpec as expected, a bad setpoint, or (with the
/// `modbus` feature) the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No "SunS" marker at any base address.
    #[error("no SunSpec marker at registers 40000, 0 or 50000")]
    NotSunSpec,
    /// The device lacks a model this driver needs.
    #[error("SunSpec model {0} not present")]
    MissingModel(u16),
    /// A model block is shorter than its layout.
    #[error("SunSpec model {id} has {length} registers, expected at least {expected}")]
    ShortModel {
        /// Model id.
        id: u16,
        /// Registers present.
        length: usize,
        /// Registers needed.
        expected: usize,
    },
    /// A point this driver needs reads "not implemented".
    #[error("SunSpec point {0} not implemented by the device")]
    NotImplemented(&'static str),
    /// The setpoint cannot be expressed (beyond WChaMax, a zero WChaMax, a zero reversion time).
    #[error("setpoint {power_kw} kW not representable: {reason}")]
    InvalidSetpoint {
        /// The requested power (kW, positive = charging).
        power_kw: f64,
        /// Why.
        reason: &'static str,
    },
    /// The TCP connection failed.
    #[cfg(feature = "modbus")]
    #[error("Modbus TCP I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A Modbus protocol or transport error.
    #[cfg(feature = "modbus")]
    #[error("Modbus: {0}")]
    Modbus(#[from] tokio_modbus::Error),
    /// The device answered with a Modbus exception.
    #[cfg(feature = "modbus")]
    #[error("Modbus exception: {0:?}")]
    Exception(tokio_modbus::ExceptionCode),
    /// No answer within the configured timeout.
    #[cfg(feature = "modbus")]
    #[error("Modbus request timed out")]
    Timeout,
}

impl HalError for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::NotSunSpec | Error::MissingModel(_) | Error::NotImplemented(_) => {
                ErrorKind::Unsupported
            }
            Error::ShortModel { .. } => ErrorKind::Integrity,
            Error::InvalidSetpoint { .. } => ErrorKind::InvalidInput,
            #[cfg(feature = "modbus")]
            Error::Io(_) | Error::Modbus(_) => ErrorKind::Bus,
            #[cfg(feature = "modbus")]
            Error::Exception(_) => ErrorKind::Device,
            #[cfg(feature = "modbus")]
            Error::Timeout => ErrorKind::Timeout,
        }
    }
}

/// Where a model sits in the register map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelHeader {
    /// Model id.
    pub id: u16,
    /// Address of the model's first data register (after `ID, L`).
    pub address: u16,
    /// Number of data registers L.
    pub length: u16,
}

/// `raw × 10^sf`, or `None` when the point or the scale factor is unimplemented (`raw_na`).
pub fn scaled(raw: f64, raw_na: bool, sf: u16) -> Option<f64> {
    if raw_na || sf == 0x8000 {
        return None;
    }
    Some(raw * 10f64.powi(i32::from(sf as i16)))
}

fn uint16(regs: &[u16], value: usize, sf: usize) -> Option<f64> {
    scaled(f64::from(regs[value]), regs[value] == 0xFFFF, regs[sf])
}

/// A float32 point in two registers (high word first); NaN (and ±inf) read as not implemented.
fn float32(regs: &[u16], at: usize) -> Option<f64> {
    let bits = (u32::from(regs[at]) << 16) | u32::from(regs[at + 1]);
    let v = f64::from(f32::from_bits(bits));
    v.is_finite().then_some(v)
}

fn int16(regs: &[u16], value: usize, sf: usize) -> Option<f64> {
    scaled(
        f64::from(regs[value] as i16),
        regs[value] == 0x8000,
        regs[sf],
    )
}

/// Decodes a SunSpec string (two ASCII characters per register, high byte first, NUL padded).
pub fn decode_string(regs: &[u16]) -> String {
    let bytes: Vec<u8> = regs
        .iter()
        .flat_map(|r| r.to_be_bytes())
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

fn need(id: u16, regs: &[u16], expected: usize) -> Result<(), Error> {
    if regs.len() < expected {
        return Err(Error::ShortModel {
            id,
            length: regs.len(),
            expected,
        });
    }
    Ok(())
}

/// The common model (1): who the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonModel {
    /// Mn, manufacturer.
    pub manufacturer: String,
    /// Md, model.
    pub model: String,
    /// Opt, options.
    pub options: String,
    /// Vr, version.
    pub version: String,
    /// SN, serial number.
    pub serial_number: String,
    /// DA, Modbus device address.
    pub device_address: u16,
}

impl CommonModel {
    /// Decodes the model's data registers (L = 65 or 66).
    pub fn decode(regs: &[u16]) -> Result<Self, Error> {
        need(COMMON_MODEL, regs, 65)?;
        Ok(Self {
            manufacturer: decode_string(&regs[0..16]),
            model: decode_string(&regs[16..32]),
            options: decode_string(&regs[32..40]),
            version: decode_string(&regs[40..48]),
            serial_number: decode_string(&regs[48..64]),
            device_address: regs[64],
        })
    }
}

/// The points of an inverter model (101–103) the battery state needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InverterModel {
    /// AC power in W (positive = delivered to the grid, i.e. the battery discharging).
    pub w: Option<f64>,
    /// DC voltage in V.
    pub dc_v: Option<f64>,
    /// Cabinet temperature in °C.
    pub cabinet_temperature_c: Option<f64>,
    /// Operating state (7 = fault).
    pub state: u16,
}

impl InverterModel {
    /// Decodes the model's data registers (L = 50).
    pub fn decode(regs: &[u16]) -> Result<Self, Error> {
        need(103, regs, inverter::LENGTH)?;
        Ok(Self {
            w: int16(regs, inverter::W, inverter::W_SF),
            dc_v: uint16(regs, inverter::DCV, inverter::DCV_SF),
            cabinet_temperature_c: int16(regs, inverter::TMP_CAB, inverter::TMP_SF),
            state: regs[inverter::ST],
        })
    }
}

/// The points of a meter model (201–204) the agent needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterModel {
    /// Total real power in W, as the meter reports it. A meter at the grid connection point
    /// normally reports import (power drawn from the grid) positive, but vendors differ (some
    /// report export positive), so the user of the reading says which (the agent's
    /// `meter.sunspec_export_positive`).
    pub w: Option<f64>,
}

impl MeterModel {
    /// Decodes the data registers of an integer meter model (201–204, L = 105).
    pub fn decode(regs: &[u16]) -> Result<Self, Error> {
        need(203, regs, meter::LENGTH)?;
        Ok(Self {
            w: int16(regs, meter::W, meter::W_SF),
        })
    }

    /// Decodes the data registers of meter model `id`: integer (201–204) or float (211–214).
    /// Fails with [`Error::MissingModel`] for any other id.
    ///
    /// ```
    /// use grid_hal::sunspec::MeterModel;
    /// let mut regs = [0u16; 124];
    /// let bits = (-1234.5f32).to_bits();
    /// (regs[26], regs[27]) = ((bits >> 16) as u16, bits as u16);
    /// assert_eq!(MeterModel::decode_model(213, &regs)?.w, Some(-1234.5));
    /// # Ok::<(), grid_hal::sunspec::Error>(())
    /// ```
    pub fn decode_model(id: u16, regs: &[u16]) -> Result<Self, Error> {
        match id {
            201..=204 => Self::decode(regs),
            211..=214 => {
                need(id, regs, meter_float::LENGTH)?;
                Ok(Self {
                    w: float32(regs, meter_float::W),
                })
            }
            _ => Err(Error::MissingModel(id)),
        }
    }
}

/// The storage model (124) as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StorageModel {
    /// WChaMax, the setpoint base, in W.
    pub w_cha_max: Option<f64>,
    /// StorCtl_Mod bits.
    pub stor_ctl_mod: u16,
    /// ChaState, percent.
    pub charge_state_pct: Option<f64>,
    /// InBatV, battery voltage in V.
    pub battery_v: Option<f64>,
    /// ChaSt, charge status enum.
    pub charge_status: u16,
    /// OutWRte, percent of WChaMax.
    pub out_w_rte_pct: Option<f64>,
    /// InWRte, percent of WChaMax.
    pub in_w_rte_pct: Option<f64>,
    /// InOutWRte_RvrtTms, s.
    pub revert_s: u16,
    /// InOutWRte_SF, the rates' scale factor.
    pub rate_sf: i16,
}

/// The registers one setpoint writes to model 124.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageCommand {
    /// OutWRte, InWRte, InOutWRte_WinTms (0: at once), InOutWRte_RvrtTms: four consecutive
    /// registers from offset 10.
    pub rates: [u16; 4],
    /// StorCtl_Mod (offset 3).
    pub stor_ctl_mod: u16,
}

impl StorageModel {
    /// Decodes the model's data registers (L = 24).
    pub fn decode(regs: &[u16]) -> Result<Self, Error> {
        use storage::*;
        need(STORAGE_MODEL, regs, LENGTH)?;
        Ok(Self {
            w_cha_max: uint16(regs, W_CHA_MAX, W_CHA_MAX_SF),
            stor_ctl_mod: regs[STOR_CTL_MOD],
            charge_state_pct: uint16(regs, CHA_STATE, CHA_STATE_SF),
            battery_v: uint16(regs, IN_BAT_V, IN_BAT_V_SF),
            charge_status: regs[CHA_ST],
            out_w_rte_pct: int16(regs, OUT_W_RTE, IN_OUT_W_RTE_SF),
            in_w_rte_pct: int16(regs, IN_W_RTE, IN_OUT_W_RTE_SF),
            revert_s: regs[RVRT_TMS],
            rate_sf: regs[IN_OUT_W_RTE_SF] as i16,
        })
    }

    /// The registers that command `power` (kW, positive = charging) with reversion after `revert`
    /// (whole seconds, 1 to 65535). Errors if WChaMax is unknown or zero, or `|power|` exceeds it.
    pub fn command(&self, power: Power, revert: Duration) -> Result<StorageCommand, Error> {
        let power_kw = power.kw();
        let invalid = |reason| Error::InvalidSetpoint { power_kw, reason };
        let max_w = self
            .w_cha_max
            .filter(|w| *w > 0.0)
            .ok_or_else(|| invalid("WChaMax unknown or zero"))?;
        let revert_s = revert.as_secs();
        if !(1..=65535).contains(&revert_s) {
            return Err(invalid("the reversion time must be 1 to 65535 s"));
        }
        if self.rate_sf as u16 == 0x8000 {
            return Err(Error::NotImplemented("InOutWRte_SF"));
        }
        let pct = power_kw * 1000.0 / max_w * 100.0;
        if pct.abs() > 100.0 + 1e-9 {
            return Err(invalid("beyond WChaMax"));
        }
        let raw = (pct.clamp(-100.0, 100.0) / 10f64.powi(i32::from(self.rate_sf))).round();
        if raw.abs() > f64::from(i16::MAX) {
            return Err(invalid("InOutWRte_SF too fine for this rate"));
        }
        let raw = raw as i16;
        // InWRte = +p, OutWRte = −p: charging; the signs flip for discharging, 0/0 is idle.
        let (out_rte, in_rte) = (raw.wrapping_neg(), raw);
        Ok(StorageCommand {
            rates: [out_rte as u16, in_rte as u16, 0, revert_s as u16],
            stor_ctl_mod: 0b11,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_regs() -> [u16; 24] {
        let mut r = [0u16; 24];
        r[storage::W_CHA_MAX] = 500; // × 10^1 = 5000 W
        r[storage::W_CHA_MAX_SF] = 1;
        r[storage::CHA_STATE] = 6543;
        r[storage::CHA_STATE_SF] = (-2i16) as u16;
        r[storage::IN_BAT_V] = 0xFFFF; // not implemented
        r[storage::CHA_ST] = 4;
        r[storage::OUT_W_RTE] = 0x8000; // not implemented
        r[storage::IN_W_RTE] = 250;
        r[storage::IN_OUT_W_RTE_SF] = (-1i16) as u16;
        r
    }

    #[test]
    fn decodes_scale_factors_and_unimplemented_points() {
        let s = StorageModel::decode(&storage_regs()).unwrap();
        assert_eq!(s.w_cha_max, Some(5000.0));
        assert!((s.charge_state_pct.unwrap() - 65.43).abs() < 1e-9);
        assert_eq!(s.battery_v, None);
        assert_eq!(s.out_w_rte_pct, None);
        assert_eq!(s.in_w_rte_pct, Some(25.0));
        assert_eq!(s.charge_status, 4);
        assert!(matches!(
            StorageModel::decode(&[0; 10]),
            Err(Error::ShortModel {
                id: 124,
                length: 10,
                expected: 24
            })
        ));
    }

    #[test]
    fn encodes_charge_discharge_and_idle() {
        let s = StorageModel::decode(&storage_regs()).unwrap();
        let rv = Duration::from_secs(90);
        let c = s.command(Power::from_kw(2.5).unwrap(), rv).unwrap();
        assert_eq!(c.rates, [(-500i16) as u16, 500, 0, 90]); // 50.0 % in 0.1 % steps
        let c = s.command(Power::from_kw(-5.0).unwrap(), rv).unwrap();
        assert_eq!(c.rates, [1000, (-1000i16) as u16, 0, 90]);
        let c = s.command(Power::ZERO, rv).unwrap();
        assert_eq!(c.rates, [0, 0, 0, 90]);
        let e = s.command(Power::from_kw(5.1).unwrap(), rv).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(s.command(Power::ZERO, Duration::ZERO).is_err());
        let mut no_max = storage_regs();
        no_max[storage::W_CHA_MAX] = 0;
        assert!(
            StorageModel::decode(&no_max)
                .unwrap()
                .command(Power::ZERO, rv)
                .is_err()
        );
    }

    #[test]
    fn decodes_the_meter_power() {
        let mut r = [0u16; meter::LENGTH];
        r[meter::W] = (-1234i16) as u16;
        r[meter::W_SF] = 1;
        assert_eq!(MeterModel::decode(&r).unwrap().w, Some(-12340.0));
        r[meter::W] = 0x8000;
        assert_eq!(MeterModel::decode(&r).unwrap().w, None);
        assert!(matches!(
            MeterModel::decode(&r[..50]),
            Err(Error::ShortModel { .. })
        ));
        assert_eq!(MeterModel::decode_model(201, &r).unwrap().w, None);
    }

    #[test]
    fn decodes_the_float_meter_power() {
        let mut r = [0u16; meter_float::LENGTH];
        let mut put = |v: f32| {
            let bits = v.to_bits();
            r[meter_float::W] = (bits >> 16) as u16;
            r[meter_float::W + 1] = bits as u16;
            MeterModel::decode_model(213, &r).unwrap().w
        };
        assert_eq!(put(3210.25), Some(3210.25));
        assert_eq!(put(-0.5), Some(-0.5));
        assert_eq!(put(f32::NAN), None); // 0x7FC00000: not implemented
        assert_eq!(put(f32::INFINITY), None);
        for id in [211, 212, 214] {
            assert_eq!(MeterModel::decode_model(id, &r).unwrap().w, None);
        }
        assert!(matches!(
            MeterModel::decode_model(212, &r[..27]),
            Err(Error::ShortModel {
                id: 212,
                expected: 124,
                ..
            })
        ));
        // A model that is not a meter is refused.
        assert!(matches!(
            MeterModel::decode_model(160, &r),
            Err(Error::MissingModel(160))
        ));
    }

    #[test]
    fn decodes_common_model_strings() {
        let mut r = vec![0u16; 66];
        r[0] = u16::from_be_bytes(*b"gr");
        r[1] = u16::from_be_bytes(*b"id");
        r[48] = u16::from_be_bytes(*b"S1");
        r[64] = 1;
        let c = CommonModel::decode(&r).unwrap();
        assert_eq!(
            (
                c.manufacturer.as_str(),
                c.serial_number.as_str(),
                c.model.as_str()
            ),
            ("grid", "S1", "")
        );
        assert_eq!(c.device_address, 1);
    }
}
