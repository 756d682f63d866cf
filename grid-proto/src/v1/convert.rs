//! Explicit conversions between the wire types and grid-core's model.

use super::{Command, CommandAction, Sample, ScheduleAssign, WireHorizon};
use crate::error::{Error, Result};
use grid_core::{
    Alarms, DeviceId, Energy, Horizon, Power, Schedule, ScheduleParts, SlotLength, Soc,
    SocTrajectory, TelemetrySample, Temperature, Timestamp,
};
use std::time::Duration;

impl WireHorizon {
    /// The wire form of a horizon.
    pub fn from_core(h: &Horizon) -> Self {
        Self {
            start: h.start(),
            slot_s: h.slot_length().seconds(),
            // Horizons carried on the wire are checked against MAX_SLOTS when encoded.
            slots: u32::try_from(h.len()).unwrap_or(u32::MAX),
        }
    }

    /// The horizon, checked by grid-core (slot length divides a day, start aligned, 1.. slots).
    pub fn to_core(&self) -> Result<Horizon> {
        Ok(Horizon::new(
            self.start,
            SlotLength::from_seconds(self.slot_s)?,
            self.slots as usize,
        )?)
    }
}

impl ScheduleAssign {
    /// The wire form of a grid-core schedule; it stays valid until the schedule expires. The
    /// device reverts to idle after `reversion_timeout` without news from the server (whole
    /// seconds; zero = never).
    ///
    /// ```
    /// use grid_core::*;
    /// use grid_proto::v1::ScheduleAssign;
    /// let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0))?;
    /// let horizon = Horizon::new("2026-11-27T00:00:00Z".parse()?, SlotLength::HOUR, 2)?;
    /// let setpoints = vec![Power::from_kw(2.0)?, Power::from_kw(-1.5)?];
    /// let schedule = Schedule::planned(ScheduleId::new("s-1")?, DeviceId::new("bat-1")?,
    ///     ScheduleVersion(3), horizon, setpoints, &spec, Energy::from_kwh(5.0)?, horizon.start())?;
    /// let wire = ScheduleAssign::from_schedule(&schedule, std::time::Duration::from_secs(900));
    /// assert_eq!(wire.setpoints_kw, [2.0, -1.5]);
    /// let back = wire.to_schedule(schedule.device(), schedule.created_at())?;
    /// assert_eq!(back, schedule);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_schedule(schedule: &Schedule, reversion_timeout: Duration) -> Self {
        Self {
            schedule_id: schedule.id().clone(),
            version: schedule.version(),
            horizon: WireHorizon::from_core(schedule.horizon()),
            setpoints_kw: schedule.setpoints().iter().map(|p| p.kw()).collect(),
            initial_kwh: schedule.expected().initial.kwh(),
            expected_kwh: schedule
                .expected()
                .end_of_slot
                .iter()
                .map(|e| e.kwh())
                .collect(),
            valid_until: schedule.expires_at(),
            reversion_timeout_s: u32::try_from(reversion_timeout.as_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The horizon as grid-core's type.
    pub fn core_horizon(&self) -> Result<Horizon> {
        self.horizon.to_core()
    }

    /// The grid-core schedule for `device`, created at `created_at` (use the envelope's
    /// `sent_at`). grid-core checks the consistency again.
    pub fn to_schedule(&self, device: &DeviceId, created_at: Timestamp) -> Result<Schedule> {
        let setpoints = self
            .setpoints_kw
            .iter()
            .map(|&kw| Power::named("body.setpoints_kw", kw))
            .collect::<grid_core::Result<Vec<_>>>()?;
        let end_of_slot = self
            .expected_kwh
            .iter()
            .map(|&kwh| Energy::named("body.expected_kwh", kwh))
            .collect::<grid_core::Result<Vec<_>>>()?;
        Ok(Schedule::new(ScheduleParts {
            id: self.schedule_id.clone(),
            device: device.clone(),
            version: self.version,
            horizon: self.core_horizon()?,
            setpoints,
            expected: SocTrajectory {
                initial: Energy::named("body.initial_kwh", self.initial_kwh)?,
                end_of_slot,
            },
            created_at,
            expires_at: self.valid_until,
        })?)
    }

    /// The setpoint in force at `instant` in kW (positive = charging), or `None` outside the
    /// horizon or at/after `valid_until`.
    pub fn setpoint_at(&self, instant: Timestamp) -> Option<f64> {
        if instant >= self.valid_until {
            return None;
        }
        let h = self.core_horizon().ok()?;
        h.slot_at(instant)
            .and_then(|i| self.setpoints_kw.get(i).copied())
    }
}

impl Command {
    /// The wire form of a grid-core command, valid until `valid_until`. grid-core's
    /// `ApplySchedule` has no wire form in v1 (schedules travel as `schedule_assign`).
    pub fn from_core(command: &grid_core::Command, valid_until: Timestamp) -> Result<Self> {
        let action = match command {
            grid_core::Command::SetPower { power, duration } => CommandAction::SetPower {
                power_kw: power.kw(),
                duration_s: u32::try_from(duration.as_secs())
                    .map_err(|_| Error::invalid("body.action.duration_s", "longer than 86400 s"))?,
            },
            grid_core::Command::Idle => CommandAction::Idle,
            grid_core::Command::CancelSchedule { schedule } => CommandAction::CancelSchedule {
                schedule_id: schedule.clone(),
            },
            grid_core::Command::ApplySchedule { .. } => {
                return Err(Error::invalid(
                    "body.action",
                    "apply_schedule has no v1 wire form; send a schedule_assign",
                ));
            }
        };
        Ok(Self {
            valid_until,
            action,
        })
    }

    /// The grid-core command.
    pub fn to_core(&self) -> Result<grid_core::Command> {
        Ok(match &self.action {
            CommandAction::SetPower {
                power_kw,
                duration_s,
            } => grid_core::Command::set_power(
                Power::named("body.action.power_kw", *power_kw)?,
                Duration::from_secs(u64::from(*duration_s)),
            )?,
            CommandAction::Idle => grid_core::Command::Idle,
            CommandAction::CancelSchedule { schedule_id } => grid_core::Command::CancelSchedule {
                schedule: schedule_id.clone(),
            },
        })
    }
}

impl Sample {
    /// The wire form of a measurement.
    pub fn from_core(s: &TelemetrySample) -> Self {
        Self {
            at: s.at,
            soc: s.soc.fraction(),
            power_kw: s.power.kw(),
            voltage_v: s.voltage_v,
            current_a: s.current_a,
            temperature_c: s.temperature.celsius(),
            alarms: s.alarms.0,
        }
    }

    /// The grid-core measurement.
    pub fn to_core(&self) -> Result<TelemetrySample> {
        Ok(TelemetrySample {
            at: self.at,
            soc: Soc::named("soc", self.soc)?,
            power: Power::named("power_kw", self.power_kw)?,
            voltage_v: super::bodies::finite(|| "voltage_v".into(), self.voltage_v)?,
            current_a: super::bodies::finite(|| "current_a".into(), self.current_a)?,
            temperature: Temperature::named("temperature_c", self.temperature_c)?,
            alarms: Alarms(self.alarms),
        })
    }
}
