//! Telemetry: what a device measures and reports about its battery.

use crate::time::Timestamp;
use crate::units::{Power, Soc, Temperature};

/// A set of battery alarm flags (a bit mask; unknown bits are kept as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Alarms(pub u32);

impl Alarms {
    /// No alarm.
    pub const NONE: Self = Self(0);
    /// Cell or pack temperature too high.
    pub const OVER_TEMPERATURE: Self = Self(1 << 0);
    /// Temperature too low to operate.
    pub const UNDER_TEMPERATURE: Self = Self(1 << 1);
    /// Voltage too high (over-charged).
    pub const OVER_VOLTAGE: Self = Self(1 << 2);
    /// Voltage too low (over-discharged).
    pub const UNDER_VOLTAGE: Self = Self(1 << 3);
    /// Current above the rated limit.
    pub const OVER_CURRENT: Self = Self(1 << 4);
    /// The battery reports itself fully charged.
    pub const FULLY_CHARGED: Self = Self(1 << 5);
    /// The battery reports itself fully discharged.
    pub const FULLY_DISCHARGED: Self = Self(1 << 6);
    /// Communication with the battery failed.
    pub const COMMUNICATION: Self = Self(1 << 7);
    /// The sensor readings look stuck or implausible.
    pub const SENSOR: Self = Self(1 << 8);
    /// Any other fault the battery reports.
    pub const FAULT: Self = Self(1 << 9);

    const NAMES: [(Alarms, &'static str); 10] = [
        (Self::OVER_TEMPERATURE, "over_temperature"),
        (Self::UNDER_TEMPERATURE, "under_temperature"),
        (Self::OVER_VOLTAGE, "over_voltage"),
        (Self::UNDER_VOLTAGE, "under_voltage"),
        (Self::OVER_CURRENT, "over_current"),
        (Self::FULLY_CHARGED, "fully_charged"),
        (Self::FULLY_DISCHARGED, "fully_discharged"),
        (Self::COMMUNICATION, "communication"),
        (Self::SENSOR, "sensor"),
        (Self::FAULT, "fault"),
    ];

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Alarms) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: Alarms) {
        self.0 |= other.0;
    }

    /// The union of two sets.
    pub fn union(self, other: Alarms) -> Alarms {
        Alarms(self.0 | other.0)
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether a flag that forbids operating the battery is set (temperature, voltage, current,
    /// fault); "fully charged/discharged" and communication warnings do not count.
    pub fn is_critical(self) -> bool {
        self.0
            & (Self::OVER_TEMPERATURE.0
                | Self::UNDER_TEMPERATURE.0
                | Self::OVER_VOLTAGE.0
                | Self::UNDER_VOLTAGE.0
                | Self::OVER_CURRENT.0
                | Self::FAULT.0)
            != 0
    }

    /// The names of the known flags that are set.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(a, _)| self.contains(*a))
            .map(|(_, n)| n)
    }
}

/// One measurement of a battery.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TelemetrySample {
    /// When it was measured (UTC).
    pub at: Timestamp,
    /// State of charge.
    pub soc: Soc,
    /// Battery power (kW, positive = charging).
    pub power: Power,
    /// Pack voltage in volts.
    pub voltage_v: f64,
    /// Pack current in amperes (positive = charging).
    pub current_a: f64,
    /// Pack temperature.
    pub temperature: Temperature,
    /// Alarm flags.
    pub alarms: Alarms,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_sets() {
        let mut a = Alarms::NONE;
        assert!(a.is_empty() && !a.is_critical());
        a.insert(Alarms::FULLY_CHARGED);
        assert!(!a.is_critical());
        a.insert(Alarms::OVER_TEMPERATURE);
        assert!(a.is_critical());
        assert_eq!(
            a.names().collect::<Vec<_>>(),
            ["over_temperature", "fully_charged"]
        );
    }
}
