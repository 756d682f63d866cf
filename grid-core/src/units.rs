//! Physical and economic quantities as checked newtypes: power, energy, state of charge, prices and
//! temperature.
//!
//! **Sign convention (used everywhere in grid):** a positive [`Power`] charges the battery or imports
//! from the grid; a negative one discharges the battery or exports to the grid.
//!
//! Every constructor rejects NaN and infinities (and out-of-range values where the quantity has a
//! range) with an [`Error`] naming the field, so a value of these types is always usable in arithmetic.

use crate::error::{Error, Result, finite};
use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

macro_rules! signed_quantity {
    ($(#[$meta:meta])* $name:ident, $unit:literal, $accessor:ident, $ctor:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(try_from = "f64", into = "f64"))]
        pub struct $name(f64);

        impl $name {
            /// Zero.
            pub const ZERO: Self = Self(0.0);

            #[doc = concat!("Builds a value in ", $unit, "; rejects NaN and infinities.")]
            pub fn $ctor(value: f64) -> Result<Self> {
                Self::named($field, value)
            }

            #[doc = concat!("Builds a value in ", $unit, ", naming `field` in the error if it is not finite.")]
            pub fn named(field: &'static str, value: f64) -> Result<Self> {
                finite(field, value).map(Self)
            }

            #[doc = concat!("The value in ", $unit, ".")]
            pub const fn $accessor(self) -> f64 {
                self.0
            }

            /// The absolute value.
            pub fn abs(self) -> Self {
                Self(self.0.abs())
            }

            /// The smaller of two values.
            pub fn min(self, other: Self) -> Self {
                Self(self.0.min(other.0))
            }

            /// The larger of two values.
            pub fn max(self, other: Self) -> Self {
                Self(self.0.max(other.0))
            }

            /// Limits the value to `[lo, hi]` (`lo` wins if the bounds cross).
            pub fn clamp_to(self, lo: Self, hi: Self) -> Self {
                Self(self.0.min(hi.0).max(lo.0))
            }

            /// Multiplies by a finite factor; a non-finite product is rejected.
            pub fn scaled(self, factor: f64) -> Result<Self> {
                Self::named($field, self.0 * factor)
            }
        }

        impl TryFrom<f64> for $name {
            type Error = Error;
            fn try_from(value: f64) -> Result<Self> {
                Self::$ctor(value)
            }
        }

        impl From<$name> for f64 {
            fn from(value: $name) -> f64 {
                value.0
            }
        }

        impl Add for $name {
            type Output = Self;
            fn add(self, rhs: Self) -> Self {
                Self(self.0 + rhs.0)
            }
        }

        impl Sub for $name {
            type Output = Self;
            fn sub(self, rhs: Self) -> Self {
                Self(self.0 - rhs.0)
            }
        }

        impl AddAssign for $name {
            fn add_assign(&mut self, rhs: Self) {
                self.0 += rhs.0;
            }
        }

        impl SubAssign for $name {
            fn sub_assign(&mut self, rhs: Self) {
                self.0 -= rhs.0;
            }
        }

        impl Neg for $name {
            type Output = Self;
            fn neg(self) -> Self {
                Self(-self.0)
            }
        }

        impl std::iter::Sum for $name {
            fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
                Self(iter.map(|v| v.0).sum())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} {}", self.0, $unit)
            }
        }
    };
}

signed_quantity!(
    /// Electric power in kW. Positive = charging the battery / importing from the grid;
    /// negative = discharging / exporting.
    Power, "kW", kw, from_kw, "power_kw"
);

signed_quantity!(
    /// Electric energy in kWh (a stored amount, or a flow over a time span with the sign of
    /// [`Power`]).
    Energy, "kWh", kwh, from_kwh, "energy_kwh"
);

signed_quantity!(
    /// A price per kWh in the tariff's currency (may be negative: day-ahead prices sometimes are).
    PricePerKwh, "per kWh", per_kwh, from_per_kwh, "price_per_kwh"
);

signed_quantity!(
    /// A temperature in degrees Celsius.
    Temperature, "°C", celsius, from_celsius, "temperature_c"
);

impl Power {
    /// The energy this power moves over `hours` (sign kept: positive = into the battery / from the grid).
    pub fn over_hours(self, hours: f64) -> Energy {
        Energy(self.0 * hours)
    }

    /// The charging part (`max(p, 0)`), in kW.
    pub fn charging(self) -> Power {
        Power(self.0.max(0.0))
    }

    /// The discharging part as a non-negative magnitude (`max(-p, 0)`), in kW.
    pub fn discharging(self) -> Power {
        Power((-self.0).max(0.0))
    }
}

impl Temperature {
    /// The lowest temperature grid reasons about (absolute zero).
    pub const MIN: Self = Self(-273.15);
    /// A temperature above any battery's limit, used as "no upper bound".
    pub const MAX: Self = Self(1.0e6);
}

impl Energy {
    /// The constant power that moves this energy in `hours` (`hours` must be positive).
    pub fn per_hours(self, hours: f64) -> Power {
        Power(self.0 / hours)
    }
}

/// State of charge as a fraction of the battery's nominal capacity, in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "f64", into = "f64"))]
pub struct Soc(f64);

impl Soc {
    /// Empty.
    pub const EMPTY: Self = Self(0.0);
    /// Full.
    pub const FULL: Self = Self(1.0);

    /// Builds a state of charge from a fraction in `[0, 1]`.
    pub fn from_fraction(value: f64) -> Result<Self> {
        Self::named("soc", value)
    }

    /// Builds a state of charge from a fraction in `[0, 1]`, naming `field` in the error.
    pub fn named(field: &'static str, value: f64) -> Result<Self> {
        let value = finite(field, value)?;
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(Error::OutOfRange {
                field,
                value,
                expected: "a fraction in [0, 1]",
            })
        }
    }

    /// Builds a state of charge from a percentage in `[0, 100]`.
    pub fn from_percent(value: f64) -> Result<Self> {
        Self::named("soc_percent", value / 100.0)
    }

    /// The fraction in `[0, 1]`.
    pub const fn fraction(self) -> f64 {
        self.0
    }

    /// The percentage in `[0, 100]`.
    pub fn percent(self) -> f64 {
        self.0 * 100.0
    }

    /// The stored energy for a battery of `capacity`.
    pub fn energy(self, capacity: Energy) -> Energy {
        Energy(self.0 * capacity.kwh())
    }

    /// The state of charge of `energy` stored in a battery of `capacity` (clamped to `[0, 1]`).
    pub fn of(energy: Energy, capacity: Energy) -> Self {
        if capacity.kwh() <= 0.0 {
            return Self::EMPTY;
        }
        let fraction = energy.kwh() / capacity.kwh();
        if fraction.is_finite() {
            Self(fraction.clamp(0.0, 1.0))
        } else {
            Self::EMPTY
        }
    }
}

impl TryFrom<f64> for Soc {
    type Error = Error;
    fn try_from(value: f64) -> Result<Self> {
        Self::from_fraction(value)
    }
}

impl From<Soc> for f64 {
    fn from(value: Soc) -> f64 {
        value.0
    }
}

impl fmt::Display for Soc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} %", self.0 * 100.0)
    }
}

/// A conversion efficiency in `(0, 1]` (e.g. charge or discharge efficiency of a battery).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "f64", into = "f64"))]
pub struct Efficiency(f64);

impl Efficiency {
    /// A lossless conversion.
    pub const PERFECT: Self = Self(1.0);

    /// Builds an efficiency from a fraction in `(0, 1]`, naming `field` in the error.
    pub fn named(field: &'static str, value: f64) -> Result<Self> {
        let value = finite(field, value)?;
        if value > 0.0 && value <= 1.0 {
            Ok(Self(value))
        } else {
            Err(Error::OutOfRange {
                field,
                value,
                expected: "a fraction in (0, 1]",
            })
        }
    }

    /// The fraction in `(0, 1]`.
    pub const fn fraction(self) -> f64 {
        self.0
    }
}

impl Default for Efficiency {
    fn default() -> Self {
        Self::PERFECT
    }
}

impl TryFrom<f64> for Efficiency {
    type Error = Error;
    fn try_from(value: f64) -> Result<Self> {
        Self::named("efficiency", value)
    }
}

impl From<Efficiency> for f64 {
    fn from(value: Efficiency) -> f64 {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_reject_non_finite_values_naming_the_field() {
        assert_eq!(
            Power::from_kw(f64::NAN).unwrap_err().to_string(),
            "power_kw: NaN is not a finite number"
        );
        assert!(Energy::from_kwh(f64::INFINITY).is_err());
        assert!(matches!(
            Power::named("max_charge_kw", f64::NEG_INFINITY),
            Err(Error::NotFinite {
                field: "max_charge_kw",
                ..
            })
        ));
    }

    #[test]
    fn soc_and_efficiency_have_ranges() {
        assert!(Soc::from_fraction(1.01).is_err());
        assert!(Soc::from_fraction(-0.01).is_err());
        assert_eq!(Soc::from_percent(50.0).unwrap().fraction(), 0.5);
        assert!(Efficiency::named("eta", 0.0).is_err());
        assert!(Efficiency::named("eta", 1.0).is_ok());
    }

    #[test]
    fn power_splits_into_charge_and_discharge_parts() {
        let p = Power::from_kw(-3.0).unwrap();
        assert_eq!(p.charging(), Power::ZERO);
        assert_eq!(p.discharging().kw(), 3.0);
        assert_eq!(p.over_hours(0.5).kwh(), -1.5);
    }

    #[test]
    fn soc_converts_to_energy_and_back() {
        let cap = Energy::from_kwh(10.0).unwrap();
        let soc = Soc::from_fraction(0.25).unwrap();
        assert_eq!(soc.energy(cap).kwh(), 2.5);
        assert_eq!(Soc::of(Energy::from_kwh(2.5).unwrap(), cap), soc);
        assert_eq!(Soc::of(Energy::from_kwh(12.0).unwrap(), cap), Soc::FULL);
    }
}
