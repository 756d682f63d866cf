//! The battery specification: the envelope every schedule and every setpoint must stay inside.

use crate::error::{Error, Result, non_negative};
use crate::units::{Efficiency, Energy, Power, PricePerKwh, Soc, Temperature};

/// The plain parameters of a battery, as a user or a configuration file gives them.
/// [`BatterySpec::new`] checks them.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct BatteryParams {
    /// Nominal capacity in kWh (the energy at 100 % state of charge).
    pub capacity_kwh: f64,
    /// Lowest energy a schedule may reach, in kWh (the bottom of the usable window).
    pub min_energy_kwh: f64,
    /// Highest energy a schedule may reach, in kWh (the top of the usable window).
    pub max_energy_kwh: f64,
    /// Largest charging power in kW (a magnitude, ≥ 0; applied as positive power).
    pub max_charge_kw: f64,
    /// Largest discharging power in kW (a magnitude, ≥ 0; applied as negative power).
    pub max_discharge_kw: f64,
    /// Fraction of the charging energy that is stored, in (0, 1].
    pub charge_efficiency: f64,
    /// Fraction of the stored energy that reaches the AC side when discharging, in (0, 1].
    pub discharge_efficiency: f64,
    /// Degradation cost per kWh of throughput (charge plus discharge), ≥ 0.
    #[cfg_attr(feature = "serde", serde(default))]
    pub degradation_cost_per_kwh: f64,
    /// Largest change of power in kW per minute, if the inverter limits ramps.
    #[cfg_attr(feature = "serde", serde(default))]
    pub ramp_limit_kw_per_min: Option<f64>,
    /// Lowest cell temperature at which the battery may operate, °C.
    #[cfg_attr(feature = "serde", serde(default))]
    pub min_temperature_c: Option<f64>,
    /// Highest cell temperature at which the battery may operate, °C.
    #[cfg_attr(feature = "serde", serde(default))]
    pub max_temperature_c: Option<f64>,
}

impl BatteryParams {
    /// Parameters for a battery of `capacity_kwh` usable between the SoC fractions `min_soc` and
    /// `max_soc`, with symmetric power `power_kw`, 95 % efficiency each way and no wear cost.
    pub fn with_soc_window(capacity_kwh: f64, min_soc: f64, max_soc: f64, power_kw: f64) -> Self {
        Self {
            capacity_kwh,
            min_energy_kwh: capacity_kwh * min_soc,
            max_energy_kwh: capacity_kwh * max_soc,
            max_charge_kw: power_kw,
            max_discharge_kw: power_kw,
            charge_efficiency: 0.95,
            discharge_efficiency: 0.95,
            degradation_cost_per_kwh: 0.0,
            ramp_limit_kw_per_min: None,
            min_temperature_c: None,
            max_temperature_c: None,
        }
    }
}

/// The temperature range in which a battery may operate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemperatureWindow {
    /// Lowest allowed temperature.
    pub min: Temperature,
    /// Highest allowed temperature.
    pub max: Temperature,
}

impl TemperatureWindow {
    /// Whether `t` lies inside the window (bounds included).
    pub fn contains(&self, t: Temperature) -> bool {
        t >= self.min && t <= self.max
    }
}

/// A validated battery specification.
///
/// Invariants: `0 ≤ min_energy ≤ max_energy ≤ capacity`, `capacity > 0`, power limits ≥ 0,
/// efficiencies in (0, 1], degradation cost ≥ 0, ramp limit > 0 when given, temperature window
/// non-empty when given.
///
/// ```
/// use grid_core::{BatteryParams, BatterySpec};
/// let spec = BatterySpec::new(BatteryParams::with_soc_window(13.5, 0.1, 0.9, 5.0))?;
/// assert_eq!(spec.max_energy().kwh(), 13.5 * 0.9);
/// assert!(BatterySpec::new(BatteryParams { max_charge_kw: f64::NAN, ..*spec.params() }).is_err());
/// # Ok::<(), grid_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(try_from = "BatteryParams", into = "BatteryParams")
)]
pub struct BatterySpec {
    params: BatteryParams,
    capacity: Energy,
    min_energy: Energy,
    max_energy: Energy,
    max_charge: Power,
    max_discharge: Power,
    charge_efficiency: Efficiency,
    discharge_efficiency: Efficiency,
    degradation_cost: PricePerKwh,
    temperature_window: Option<TemperatureWindow>,
}

impl BatterySpec {
    /// Checks `params` and builds the specification; the error names the first bad field.
    pub fn new(params: BatteryParams) -> Result<Self> {
        let capacity = non_negative("battery.capacity_kwh", params.capacity_kwh)?;
        if capacity <= 0.0 {
            return Err(Error::OutOfRange {
                field: "battery.capacity_kwh",
                value: capacity,
                expected: "> 0",
            });
        }
        let min = non_negative("battery.min_energy_kwh", params.min_energy_kwh)?;
        let max = non_negative("battery.max_energy_kwh", params.max_energy_kwh)?;
        if max > capacity * (1.0 + 1e-12) {
            return Err(Error::OutOfRange {
                field: "battery.max_energy_kwh",
                value: max,
                expected: "<= battery.capacity_kwh",
            });
        }
        if min > max {
            return Err(Error::OutOfRange {
                field: "battery.min_energy_kwh",
                value: min,
                expected: "<= battery.max_energy_kwh",
            });
        }
        let max_charge = non_negative("battery.max_charge_kw", params.max_charge_kw)?;
        let max_discharge = non_negative("battery.max_discharge_kw", params.max_discharge_kw)?;
        let charge_efficiency =
            Efficiency::named("battery.charge_efficiency", params.charge_efficiency)?;
        let discharge_efficiency =
            Efficiency::named("battery.discharge_efficiency", params.discharge_efficiency)?;
        let degradation_cost = non_negative(
            "battery.degradation_cost_per_kwh",
            params.degradation_cost_per_kwh,
        )?;
        if let Some(ramp) = params.ramp_limit_kw_per_min {
            let ramp = non_negative("battery.ramp_limit_kw_per_min", ramp)?;
            if ramp <= 0.0 {
                return Err(Error::OutOfRange {
                    field: "battery.ramp_limit_kw_per_min",
                    value: ramp,
                    expected: "> 0",
                });
            }
        }
        let min_t = params
            .min_temperature_c
            .map(|t| Temperature::named("battery.min_temperature_c", t))
            .transpose()?;
        let max_t = params
            .max_temperature_c
            .map(|t| Temperature::named("battery.max_temperature_c", t))
            .transpose()?;
        if let (Some(lo), Some(hi)) = (min_t, max_t)
            && lo >= hi
        {
            return Err(Error::OutOfRange {
                field: "battery.min_temperature_c",
                value: lo.celsius(),
                expected: "< battery.max_temperature_c",
            });
        }
        let temperature_window = match (min_t, max_t) {
            (None, None) => None,
            (lo, hi) => Some(TemperatureWindow {
                min: lo.unwrap_or(Temperature::MIN),
                max: hi.unwrap_or(Temperature::MAX),
            }),
        };
        Ok(Self {
            params,
            capacity: Energy::from_kwh(capacity)?,
            min_energy: Energy::from_kwh(min)?,
            max_energy: Energy::from_kwh(max)?,
            max_charge: Power::from_kw(max_charge)?,
            max_discharge: Power::from_kw(max_discharge)?,
            charge_efficiency,
            discharge_efficiency,
            degradation_cost: PricePerKwh::from_per_kwh(degradation_cost)?,
            temperature_window,
        })
    }

    /// The parameters this specification was built from.
    pub fn params(&self) -> &BatteryParams {
        &self.params
    }

    /// Nominal capacity (energy at 100 % SoC).
    pub fn capacity(&self) -> Energy {
        self.capacity
    }

    /// Bottom of the usable energy window.
    pub fn min_energy(&self) -> Energy {
        self.min_energy
    }

    /// Top of the usable energy window.
    pub fn max_energy(&self) -> Energy {
        self.max_energy
    }

    /// Bottom of the usable window as a state of charge.
    pub fn min_soc(&self) -> Soc {
        Soc::of(self.min_energy, self.capacity)
    }

    /// Top of the usable window as a state of charge.
    pub fn max_soc(&self) -> Soc {
        Soc::of(self.max_energy, self.capacity)
    }

    /// Largest charging power (positive).
    pub fn max_charge(&self) -> Power {
        self.max_charge
    }

    /// Largest discharging power as a magnitude (apply it as negative power).
    pub fn max_discharge(&self) -> Power {
        self.max_discharge
    }

    /// Charge efficiency.
    pub fn charge_efficiency(&self) -> Efficiency {
        self.charge_efficiency
    }

    /// Discharge efficiency.
    pub fn discharge_efficiency(&self) -> Efficiency {
        self.discharge_efficiency
    }

    /// Degradation cost per kWh of throughput.
    pub fn degradation_cost(&self) -> PricePerKwh {
        self.degradation_cost
    }

    /// Ramp limit in kW per minute, if any.
    pub fn ramp_limit_kw_per_min(&self) -> Option<f64> {
        self.params.ramp_limit_kw_per_min
    }

    /// The allowed operating temperatures, if the specification limits them (a missing bound is
    /// unbounded on that side).
    pub fn temperature_window(&self) -> Option<TemperatureWindow> {
        self.temperature_window
    }

    /// The energy after applying `power` for `hours` starting from `energy`, with the
    /// efficiencies: charging stores `η_ch·p·h`, discharging removes `|p|·h/η_dis`.
    pub fn energy_after(&self, energy: Energy, power: Power, hours: f64) -> Energy {
        let stored = power.charging().kw() * self.charge_efficiency.fraction()
            - power.discharging().kw() / self.discharge_efficiency.fraction();
        energy
            + Power::from_kw(stored)
                .unwrap_or(Power::ZERO)
                .over_hours(hours)
    }

    /// Checks that `energy` lies in the usable window, naming `field` otherwise.
    pub fn check_energy(&self, field: &'static str, energy: Energy) -> Result<()> {
        let e = energy.kwh();
        if e < self.min_energy.kwh() - crate::schedule::TOLERANCE
            || e > self.max_energy.kwh() + crate::schedule::TOLERANCE
        {
            return Err(Error::OutOfRange {
                field,
                value: e,
                expected: "inside the battery's usable energy window",
            });
        }
        Ok(())
    }
}

impl TryFrom<BatteryParams> for BatterySpec {
    type Error = Error;
    fn try_from(params: BatteryParams) -> Result<Self> {
        BatterySpec::new(params)
    }
}

impl From<BatterySpec> for BatteryParams {
    fn from(spec: BatterySpec) -> Self {
        spec.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> BatteryParams {
        BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)
    }

    #[test]
    fn invalid_parameters_name_the_field() {
        let cases: Vec<(BatteryParams, &str)> = vec![
            (
                BatteryParams {
                    capacity_kwh: 0.0,
                    ..params()
                },
                "battery.capacity_kwh",
            ),
            (
                BatteryParams {
                    min_energy_kwh: 9.5,
                    ..params()
                },
                "battery.min_energy_kwh",
            ),
            (
                BatteryParams {
                    max_energy_kwh: 11.0,
                    ..params()
                },
                "battery.max_energy_kwh",
            ),
            (
                BatteryParams {
                    max_charge_kw: -1.0,
                    ..params()
                },
                "battery.max_charge_kw",
            ),
            (
                BatteryParams {
                    max_discharge_kw: f64::NAN,
                    ..params()
                },
                "battery.max_discharge_kw",
            ),
            (
                BatteryParams {
                    charge_efficiency: 1.2,
                    ..params()
                },
                "battery.charge_efficiency",
            ),
            (
                BatteryParams {
                    discharge_efficiency: 0.0,
                    ..params()
                },
                "battery.discharge_efficiency",
            ),
            (
                BatteryParams {
                    ramp_limit_kw_per_min: Some(0.0),
                    ..params()
                },
                "battery.ramp_limit_kw_per_min",
            ),
            (
                BatteryParams {
                    min_temperature_c: Some(40.0),
                    max_temperature_c: Some(10.0),
                    ..params()
                },
                "battery.min_temperature_c",
            ),
        ];
        for (p, field) in cases {
            let err = BatterySpec::new(p).unwrap_err();
            assert!(
                err.to_string().starts_with(field),
                "{err} should name {field}"
            );
        }
    }

    #[test]
    fn efficiencies_apply_in_the_right_direction() {
        let spec = BatterySpec::new(params()).unwrap();
        let e0 = Energy::from_kwh(5.0).unwrap();
        let up = spec.energy_after(e0, Power::from_kw(4.0).unwrap(), 1.0);
        let down = spec.energy_after(e0, Power::from_kw(-4.0).unwrap(), 1.0);
        assert!((up.kwh() - (5.0 + 4.0 * 0.95)).abs() < 1e-12);
        assert!((down.kwh() - (5.0 - 4.0 / 0.95)).abs() < 1e-12);
        assert_eq!(spec.min_soc().fraction(), 0.1);
    }
}
