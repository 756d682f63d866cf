//! The async SunSpec Modbus TCP client (feature `modbus`), built on tokio-modbus.
//!
//! It is async because the agent is a tokio application: blocking a runtime thread on a slow
//! inverter would stall MQTT and the scheduler. The safety layer's sans-IO core,
//! [`crate::SafetyGuard`], works with it directly:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use core::time::Duration;
//! use grid_core::{BatteryParams, BatterySpec, Power};
//! use grid_hal::{HalError, SafetyConfig, SafetyGuard, sunspec::{SunSpecClient, SunSpecConfig}};
//! let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0))?;
//! let mut inverter = SunSpecClient::connect("192.168.1.50:502".parse()?, SunSpecConfig::default()).await?;
//! let mut guard = SafetyGuard::new(&spec, SafetyConfig::for_spec(&spec))?;
//! let start = tokio::time::Instant::now();
//! guard.request(start.elapsed(), Power::from_kw(3.0)?);
//! loop {
//!     let reading = inverter.read_state().await;
//!     let decision = guard.decide(start.elapsed(), reading.as_ref().map_err(|e| e.kind()));
//!     inverter.set_power(decision.power, Duration::from_secs(30)).await?;
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//! }
//! # }
//! ```

use super::{
    BASE_ADDRESSES, COMMON_MODEL, CommonModel, END_MODEL, Error, INVERTER_MODELS, InverterModel,
    MARKER, METER_MODELS, MeterModel, ModelHeader, STORAGE_MODEL, StorageModel, storage,
};
use crate::traits::BatteryState;
use core::time::Duration;
use grid_core::{Alarms, Power, Soc, Temperature};
use std::net::SocketAddr;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

/// Connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SunSpecConfig {
    /// Modbus unit id (slave address) of the inverter; 1 is the usual default, some use 126.
    pub unit_id: u8,
    /// Timeout of each request (and of the connect).
    pub timeout: Duration,
}

impl Default for SunSpecConfig {
    fn default() -> Self {
        Self {
            unit_id: 1,
            timeout: Duration::from_secs(3),
        }
    }
}

/// Largest number of registers one Modbus read may return.
const MAX_READ: u16 = 125;
/// Upper bound on the models walked, so a corrupt chain cannot loop for ever.
const MAX_MODELS: usize = 64;

/// A connected SunSpec storage inverter.
pub struct SunSpecClient {
    ctx: Context,
    timeout: Duration,
    /// The inverter's unit id.
    unit_id: u8,
    base: u16,
    models: Vec<ModelHeader>,
    common: CommonModel,
    storage: ModelHeader,
    inverter: Option<ModelHeader>,
    /// The meter model and the unit id that serves it.
    meter: Option<(u8, ModelHeader)>,
}

impl SunSpecClient {
    /// Connects, finds the SunSpec base address, walks the model chain and reads the common model.
    /// Fails with [`Error::MissingModel`] if there is no storage model (124).
    pub async fn connect(addr: SocketAddr, config: SunSpecConfig) -> Result<Self, Error> {
        let ctx = tokio::time::timeout(
            config.timeout,
            tokio_modbus::client::tcp::connect_slave(addr, Slave(config.unit_id)),
        )
        .await
        .map_err(|_| Error::Timeout)??;
        let mut this = Self {
            ctx,
            timeout: config.timeout,
            unit_id: config.unit_id,
            base: 0,
            models: Vec::new(),
            common: CommonModel::decode(&[0; 66])?,
            storage: ModelHeader {
                id: 0,
                address: 0,
                length: 0,
            },
            inverter: None,
            meter: None,
        };
        this.discover().await?;
        Ok(this)
    }

    async fn read(&mut self, address: u16, count: u16) -> Result<Vec<u16>, Error> {
        let mut out = Vec::with_capacity(usize::from(count));
        let mut at = address;
        let end = u32::from(address) + u32::from(count);
        while u32::from(at) < end {
            let n = (end - u32::from(at)).min(u32::from(MAX_READ)) as u16;
            let words = tokio::time::timeout(self.timeout, self.ctx.read_holding_registers(at, n))
                .await
                .map_err(|_| Error::Timeout)???;
            out.extend_from_slice(&words);
            at = at.wrapping_add(n);
        }
        Ok(out)
    }

    async fn write(&mut self, address: u16, words: &[u16]) -> Result<(), Error> {
        tokio::time::timeout(
            self.timeout,
            self.ctx.write_multiple_registers(address, words),
        )
        .await
        .map_err(|_| Error::Timeout)???;
        Ok(())
    }

    async fn discover(&mut self) -> Result<(), Error> {
        (self.base, self.models) = self.walk_chain().await?;
        let find = |ids: &[u16]| self.models.iter().find(|m| ids.contains(&m.id)).copied();
        let common = find(&[COMMON_MODEL]).ok_or(Error::MissingModel(COMMON_MODEL))?;
        self.storage = find(&[STORAGE_MODEL]).ok_or(Error::MissingModel(STORAGE_MODEL))?;
        self.inverter = find(&INVERTER_MODELS);
        self.meter = find(&METER_MODELS).map(|m| (self.unit_id, m));
        let regs = self.read(common.address, common.length).await?;
        self.common = CommonModel::decode(&regs)?;
        Ok(())
    }

    /// Finds the base address of the unit addressed now and walks its model chain.
    async fn walk_chain(&mut self) -> Result<(u16, Vec<ModelHeader>), Error> {
        let mut base = None;
        for candidate in BASE_ADDRESSES {
            match self.read(candidate, 2).await {
                Ok(words) if words == MARKER => {
                    base = Some(candidate);
                    break;
                }
                Ok(_) | Err(Error::Exception(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let base = base.ok_or(Error::NotSunSpec)?;
        let mut models = Vec::new();
        let mut at = base + 2;
        for _ in 0..MAX_MODELS {
            let header = self.read(at, 2).await?;
            let (id, length) = (header[0], header[1]);
            if id == END_MODEL {
                break;
            }
            models.push(ModelHeader {
                id,
                address: at + 2,
                length,
            });
            at = at.checked_add(2 + length).ok_or(Error::ShortModel {
                id,
                length: usize::from(length),
                expected: 0,
            })?;
        }
        Ok((base, models))
    }

    /// Uses the meter at Modbus unit `unit_id` behind the same connection (e.g. a grid meter that
    /// a Fronius inverter serves at unit 240) instead of a meter model in the inverter's own
    /// chain. It must carry its own SunSpec chain with a meter model (201–204 or 211–214);
    /// otherwise this fails with [`Error::MissingModel`] (203) and the client keeps the meter
    /// it had.
    pub async fn use_meter_at(&mut self, unit_id: u8) -> Result<(), Error> {
        self.ctx.set_slave(Slave(unit_id));
        let walked = self.walk_chain().await;
        self.ctx.set_slave(Slave(self.unit_id));
        let (_, models) = walked?;
        let meter = models
            .iter()
            .find(|m| METER_MODELS.contains(&m.id))
            .copied()
            .ok_or(Error::MissingModel(203))?;
        self.meter = Some((unit_id, meter));
        Ok(())
    }

    /// [`Self::read`] from unit `unit_id`; the inverter is addressed again afterwards, whatever
    /// the outcome.
    async fn read_at(&mut self, unit_id: u8, address: u16, count: u16) -> Result<Vec<u16>, Error> {
        if unit_id == self.unit_id {
            return self.read(address, count).await;
        }
        self.ctx.set_slave(Slave(unit_id));
        let out = self.read(address, count).await;
        self.ctx.set_slave(Slave(self.unit_id));
        out
    }

    /// The SunSpec base address found (40000, 0 or 50000).
    pub fn base_address(&self) -> u16 {
        self.base
    }

    /// Every model in the chain.
    pub fn models(&self) -> &[ModelHeader] {
        &self.models
    }

    /// The common model read at connect.
    pub fn common(&self) -> &CommonModel {
        &self.common
    }

    /// Reads the storage model (124).
    pub async fn read_storage(&mut self) -> Result<StorageModel, Error> {
        let m = self.storage;
        let regs = self.read(m.address, m.length).await?;
        StorageModel::decode(&regs)
    }

    /// Reads the inverter model (101–103), if the device has one.
    pub async fn read_inverter(&mut self) -> Result<Option<InverterModel>, Error> {
        let Some(m) = self.inverter else {
            return Ok(None);
        };
        let regs = self.read(m.address, m.length).await?;
        InverterModel::decode(&regs).map(Some)
    }

    /// Reads the meter model (201–204 or 211–214), if there is one: in the inverter's own chain
    /// (hybrid inverters with a grid meter attached often list it after their own models) or at
    /// the unit given to [`Self::use_meter_at`].
    pub async fn read_meter(&mut self) -> Result<Option<MeterModel>, Error> {
        let Some((unit, m)) = self.meter else {
            return Ok(None);
        };
        let regs = self.read_at(unit, m.address, m.length).await?;
        MeterModel::decode_model(m.id, &regs).map(Some)
    }

    /// The meter model used and the unit id serving it, if any.
    pub fn meter_model(&self) -> Option<(u8, ModelHeader)> {
        self.meter
    }

    /// Reads the battery state: SoC from ChaState; voltage from InBatV (else the inverter's DCV);
    /// power from the inverter's AC W with the sign turned (delivering to the grid = discharging);
    /// temperature from TmpCab; alarms from ChaSt (empty/full) and the inverter's fault state.
    /// Fails with [`Error::MissingModel`] / [`Error::NotImplemented`] when the device lacks a point.
    pub async fn read_state(&mut self) -> Result<BatteryState, Error> {
        let s = self.read_storage().await?;
        let inv = self
            .read_inverter()
            .await?
            .ok_or(Error::MissingModel(103))?;
        let soc_pct = s
            .charge_state_pct
            .ok_or(Error::NotImplemented("ChaState"))?;
        let soc = Soc::from_percent(soc_pct.clamp(0.0, 100.0))
            .map_err(|_| Error::NotImplemented("ChaState"))?;
        let voltage_v = s
            .battery_v
            .or(inv.dc_v)
            .ok_or(Error::NotImplemented("InBatV"))?;
        let w = inv.w.ok_or(Error::NotImplemented("W"))?;
        let power = Power::from_kw(-w / 1000.0).map_err(|_| Error::NotImplemented("W"))?;
        let t = inv
            .cabinet_temperature_c
            .ok_or(Error::NotImplemented("TmpCab"))?;
        let temperature =
            Temperature::from_celsius(t).map_err(|_| Error::NotImplemented("TmpCab"))?;
        let mut alarms = Alarms::NONE;
        match s.charge_status {
            2 => alarms.insert(Alarms::FULLY_DISCHARGED),
            5 => alarms.insert(Alarms::FULLY_CHARGED),
            _ => {}
        }
        if inv.state == 7 {
            alarms.insert(Alarms::FAULT);
        }
        let current_a = if voltage_v > 0.0 {
            power.kw() * 1000.0 / voltage_v
        } else {
            0.0
        };
        Ok(BatteryState {
            soc,
            voltage_v,
            current_a,
            power,
            temperature,
            alarms,
        })
    }

    /// Commands `power` (kW, positive = charging) with the inverter reverting to its default
    /// after `revert` without a new command. Writes RvrtTms and the rates first, then StorCtl_Mod.
    pub async fn set_power(&mut self, power: Power, revert: Duration) -> Result<(), Error> {
        let storage = self.read_storage().await?;
        let cmd = storage.command(power, revert)?;
        self.write_command(cmd).await
    }

    /// Like [`Self::set_power`], but a power beyond ±WChaMax is clamped to it (the inverter cannot
    /// deliver more) instead of refused. Returns the power written (kW, positive = charging).
    pub async fn set_power_clamped(
        &mut self,
        power: Power,
        revert: Duration,
    ) -> Result<Power, Error> {
        let storage = self.read_storage().await?;
        let written = match storage.w_cha_max.filter(|w| *w > 0.0) {
            Some(max_w) => {
                let max_kw = max_w / 1000.0;
                Power::from_kw(power.kw().clamp(-max_kw, max_kw)).unwrap_or(Power::ZERO)
            }
            None => power,
        };
        let cmd = storage.command(written, revert)?;
        self.write_command(cmd).await?;
        Ok(written)
    }

    async fn write_command(&mut self, cmd: super::StorageCommand) -> Result<(), Error> {
        let base = self.storage.address;
        self.write(base + storage::OUT_W_RTE as u16, &cmd.rates)
            .await?;
        self.write(base + storage::STOR_CTL_MOD as u16, &[cmd.stor_ctl_mod])
            .await
    }

    /// Commands idle (both rates 0) with the given reversion time.
    pub async fn idle(&mut self, revert: Duration) -> Result<(), Error> {
        self.set_power(Power::ZERO, revert).await
    }

    /// Hands control back to the inverter's own logic (StorCtl_Mod = 0).
    pub async fn release_control(&mut self) -> Result<(), Error> {
        self.write(self.storage.address + storage::STOR_CTL_MOD as u16, &[0])
            .await
    }
}

impl core::fmt::Debug for SunSpecClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SunSpecClient")
            .field("base", &self.base)
            .field("models", &self.models)
            .field("common", &self.common)
            .finish_non_exhaustive()
    }
}

impl From<ExceptionCode> for Error {
    fn from(e: ExceptionCode) -> Self {
        Error::Exception(e)
    }
}
