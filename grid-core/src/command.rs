//! Immediate commands an operator or the server sends to a device, outside of schedules.

use crate::error::{Error, Result};
use crate::ids::{ScheduleId, ScheduleVersion};
use crate::units::Power;
use std::time::Duration;

/// The longest a `SetPower` command may hold a setpoint (24 h).
pub const MAX_COMMAND_DURATION: Duration = Duration::from_secs(86_400);

/// What a device is told to do now.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
pub enum Command {
    /// Apply the stored schedule with this id and version.
    ApplySchedule {
        /// The schedule.
        schedule: ScheduleId,
        /// Its version.
        version: ScheduleVersion,
    },
    /// Hold `power` (kW, positive = charging) for `duration`, then fall back.
    SetPower {
        /// The setpoint (still clamped by the device's safety layer).
        power: Power,
        /// How long to hold it.
        duration: Duration,
    },
    /// Stop charging and discharging now.
    Idle,
    /// Stop executing the schedule with this id (any version).
    CancelSchedule {
        /// The schedule to cancel.
        schedule: ScheduleId,
    },
}

impl Command {
    /// A `SetPower` command, checking the duration is in `(0, 24 h]`.
    pub fn set_power(power: Power, duration: Duration) -> Result<Self> {
        if duration.is_zero() || duration > MAX_COMMAND_DURATION {
            return Err(Error::OutOfRange {
                field: "command.duration_s",
                value: duration.as_secs_f64(),
                expected: "a duration in (0, 86400] seconds",
            });
        }
        Ok(Command::SetPower { power, duration })
    }
}
