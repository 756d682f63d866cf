//! Tariffs and price series: dynamic per-slot prices, time-of-use tariffs expanded onto a horizon in
//! a named time zone (DST-correct), and the demand charge on the peak import.

use crate::error::{Error, Result, non_negative};
use crate::time::Horizon;
use crate::units::PricePerKwh;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;

/// A series of values, one per slot of a horizon.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotSeries<T> {
    horizon: Horizon,
    values: Vec<T>,
}

impl<T: Copy> SlotSeries<T> {
    /// Builds a series; `values` must have one entry per slot (the error names `field`).
    pub fn new(field: &'static str, horizon: Horizon, values: Vec<T>) -> Result<Self> {
        if values.len() != horizon.len() {
            return Err(Error::LengthMismatch {
                field,
                expected: horizon.len(),
                actual: values.len(),
            });
        }
        Ok(Self { horizon, values })
    }

    /// A series holding `value` in every slot.
    pub fn constant(horizon: Horizon, value: T) -> Self {
        Self {
            values: vec![value; horizon.len()],
            horizon,
        }
    }

    /// The horizon the series is defined on.
    pub fn horizon(&self) -> &Horizon {
        &self.horizon
    }

    /// The values, one per slot.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// The value of slot `index`.
    pub fn get(&self, index: usize) -> Option<T> {
        self.values.get(index).copied()
    }

    /// The value in force at `instant`, if it lies in the horizon.
    pub fn at(&self, instant: jiff::Timestamp) -> Option<T> {
        self.horizon.slot_at(instant).map(|i| self.values[i])
    }

    /// The values on `target`, which must have the same slot length or one that divides this
    /// series' slot length (values are piecewise constant), and lie inside this series' horizon.
    pub fn on(&self, field: &'static str, target: &Horizon) -> Result<Self> {
        let own = self.horizon.slot_length().seconds();
        let want = target.slot_length().seconds();
        if !own.is_multiple_of(want) {
            return Err(Error::Inconsistent {
                field,
                reason: format!("cannot take {want} s slots from a series of {own} s slots"),
            });
        }
        let mut values = Vec::with_capacity(target.len());
        for (_, start) in target.iter() {
            let v = self.at(start).ok_or_else(|| Error::Inconsistent {
                field,
                reason: format!(
                    "the series covers {} .. {} but {start} is requested",
                    self.horizon.start(),
                    self.horizon.end()
                ),
            })?;
            values.push(v);
        }
        Self::new(field, *target, values)
    }
}

/// Import and export prices per slot. Import is what the site pays per kWh taken from the grid,
/// export what it earns per kWh fed in.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PriceSeries {
    /// Price paid per imported kWh, per slot.
    pub import: SlotSeries<PricePerKwh>,
    /// Price earned per exported kWh, per slot.
    pub export: SlotSeries<PricePerKwh>,
}

impl PriceSeries {
    /// Builds the series from plain numbers; NaN, infinities and wrong lengths are rejected.
    pub fn new(horizon: Horizon, import: &[f64], export: &[f64]) -> Result<Self> {
        let conv = |field: &'static str, v: &[f64]| -> Result<SlotSeries<PricePerKwh>> {
            let values = v
                .iter()
                .map(|&p| PricePerKwh::named(field, p))
                .collect::<Result<Vec<_>>>()?;
            SlotSeries::new(field, horizon, values)
        };
        Ok(Self {
            import: conv("prices.import", import)?,
            export: conv("prices.export", export)?,
        })
    }

    /// The horizon of the series.
    pub fn horizon(&self) -> &Horizon {
        self.import.horizon()
    }

    /// The prices on another horizon inside this one (see [`SlotSeries::on`]).
    pub fn on(&self, target: &Horizon) -> Result<Self> {
        Ok(Self {
            import: self.import.on("prices.import", target)?,
            export: self.export.on("prices.export", target)?,
        })
    }
}

/// A set of weekdays, as a bit mask (bit 0 = Monday ... bit 6 = Sunday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Weekdays(u8);

impl Weekdays {
    /// Every day.
    pub const ALL: Self = Self(0x7f);
    /// Monday to Friday.
    pub const WORKDAYS: Self = Self(0x1f);
    /// Saturday and Sunday.
    pub const WEEKEND: Self = Self(0x60);

    /// Whether `day` is in the set.
    pub fn contains(self, day: Weekday) -> bool {
        let bit = day.to_monday_zero_offset();
        self.0 & (1 << bit) != 0
    }
}

impl Default for Weekdays {
    fn default() -> Self {
        Self::ALL
    }
}

/// One price window of a time-of-use tariff, in local wall-clock time.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TouWindow {
    /// Local start time (inclusive).
    pub start: Time,
    /// Local end time (exclusive); an end at or before the start wraps past midnight.
    pub end: Time,
    /// Days on which the window applies (by the local date of the slot's start).
    #[cfg_attr(feature = "serde", serde(default))]
    pub days: Weekdays,
    /// Import price inside the window.
    pub import: PricePerKwh,
    /// Export price inside the window.
    pub export: PricePerKwh,
}

impl TouWindow {
    fn contains(&self, local: Time, day: Weekday) -> bool {
        if !self.days.contains(day) {
            return false;
        }
        if self.start < self.end {
            local >= self.start && local < self.end
        } else {
            local >= self.start || local < self.end
        }
    }
}

/// A time-of-use tariff: prices by local time of day in a named time zone, the first matching
/// window wins, the default prices apply elsewhere.
///
/// ```
/// use grid_core::{Horizon, PricePerKwh, SlotLength, TimeOfUseTariff, TouWindow, Weekdays};
/// let p = |x| PricePerKwh::from_per_kwh(x);
/// let tariff = TimeOfUseTariff::new(
///     "Europe/Berlin",
///     p(0.30)?,
///     p(0.08)?,
///     vec![TouWindow { start: "00:00".parse()?, end: "06:00".parse()?, days: Weekdays::ALL,
///                      import: p(0.18)?, export: p(0.08)? }],
/// )?;
/// // 2026-03-29 is the spring DST change in Berlin: local 00:00 is 23:00 UTC the day before.
/// // The local day of 29 March has 23 hours.
/// let h = Horizon::new("2026-03-28T23:00:00Z".parse()?, SlotLength::HOUR, 23)?;
/// let prices = tariff.expand(&h)?;
/// // Local 00:00..06:00 is only 5 UTC hours that day (02:00 does not exist).
/// let cheap = prices.import.values().iter().filter(|x| x.per_kwh() == 0.18).count();
/// assert_eq!(cheap, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TimeOfUseTariff {
    time_zone: String,
    default_import: PricePerKwh,
    default_export: PricePerKwh,
    windows: Vec<TouWindow>,
}

impl TimeOfUseTariff {
    /// Builds a tariff; `time_zone` must be an IANA name known to the time zone database.
    pub fn new(
        time_zone: &str,
        default_import: PricePerKwh,
        default_export: PricePerKwh,
        windows: Vec<TouWindow>,
    ) -> Result<Self> {
        TimeZone::get(time_zone).map_err(|_| Error::UnknownTimeZone {
            field: "tariff.time_zone",
            name: time_zone.to_owned(),
        })?;
        Ok(Self {
            time_zone: time_zone.to_owned(),
            default_import,
            default_export,
            windows,
        })
    }

    /// The IANA time zone name.
    pub fn time_zone(&self) -> &str {
        &self.time_zone
    }

    /// The price windows, in priority order.
    pub fn windows(&self) -> &[TouWindow] {
        &self.windows
    }

    /// The prices on `horizon`: each slot gets the window in force at its start's local time.
    pub fn expand(&self, horizon: &Horizon) -> Result<PriceSeries> {
        let tz = TimeZone::get(&self.time_zone).map_err(|_| Error::UnknownTimeZone {
            field: "tariff.time_zone",
            name: self.time_zone.clone(),
        })?;
        let mut import = Vec::with_capacity(horizon.len());
        let mut export = Vec::with_capacity(horizon.len());
        for (_, start) in horizon.iter() {
            let local = tz.to_datetime(start);
            let window = self
                .windows
                .iter()
                .find(|w| w.contains(local.time(), local.weekday()));
            import.push(window.map_or(self.default_import, |w| w.import));
            export.push(window.map_or(self.default_export, |w| w.export));
        }
        Ok(PriceSeries {
            import: SlotSeries::new("tariff.import", *horizon, import)?,
            export: SlotSeries::new("tariff.export", *horizon, export)?,
        })
    }
}

/// How a site's energy is priced.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
pub enum Tariff {
    /// The same prices at all times.
    Flat {
        /// Price per imported kWh.
        import: PricePerKwh,
        /// Price per exported kWh.
        export: PricePerKwh,
    },
    /// Per-slot prices, e.g. a day-ahead market series.
    Dynamic(PriceSeries),
    /// Prices by local time of day.
    TimeOfUse(TimeOfUseTariff),
}

impl Tariff {
    /// The prices on `horizon`.
    pub fn prices_on(&self, horizon: &Horizon) -> Result<PriceSeries> {
        match self {
            Tariff::Flat { import, export } => Ok(PriceSeries {
                import: SlotSeries::constant(*horizon, *import),
                export: SlotSeries::constant(*horizon, *export),
            }),
            Tariff::Dynamic(series) => series.on(horizon),
            Tariff::TimeOfUse(tou) => tou.expand(horizon),
        }
    }
}

/// A charge per kW of the highest import over the billing horizon.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "f64", into = "f64"))]
pub struct DemandCharge(f64);

impl DemandCharge {
    /// No demand charge.
    pub const NONE: Self = Self(0.0);

    /// Builds a demand charge in currency per kW of peak import (≥ 0).
    pub fn per_kw(value: f64) -> Result<Self> {
        non_negative("demand_charge_per_kw", value).map(Self)
    }

    /// The charge per kW of peak import.
    pub const fn value(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for DemandCharge {
    type Error = Error;
    fn try_from(value: f64) -> Result<Self> {
        Self::per_kw(value)
    }
}

impl From<DemandCharge> for f64 {
    fn from(value: DemandCharge) -> f64 {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SlotLength;

    fn p(x: f64) -> PricePerKwh {
        PricePerKwh::from_per_kwh(x).unwrap()
    }

    #[test]
    fn tou_follows_local_time_across_autumn_dst() {
        // 2026-10-25: Berlin goes from UTC+2 to UTC+1; the local day has 25 hours.
        let tariff = TimeOfUseTariff::new(
            "Europe/Berlin",
            p(0.3),
            p(0.05),
            vec![TouWindow {
                start: "17:00".parse().unwrap(),
                end: "20:00".parse().unwrap(),
                days: Weekdays::ALL,
                import: p(0.5),
                export: p(0.05),
            }],
        )
        .unwrap();
        let h = Horizon::new(
            "2026-10-24T22:00:00Z".parse().unwrap(),
            SlotLength::HOUR,
            25,
        )
        .unwrap();
        let prices = tariff.expand(&h).unwrap();
        let peak: Vec<usize> = prices
            .import
            .values()
            .iter()
            .enumerate()
            .filter(|(_, x)| x.per_kwh() == 0.5)
            .map(|(i, _)| i)
            .collect();
        // Local 17:00 CET = 16:00 UTC, which is slot 18 from 22:00 UTC the day before.
        assert_eq!(peak, vec![18, 19, 20]);
    }

    #[test]
    fn wrapping_windows_and_weekdays() {
        let w = TouWindow {
            start: "22:00".parse().unwrap(),
            end: "06:00".parse().unwrap(),
            days: Weekdays::WORKDAYS,
            import: p(0.1),
            export: p(0.0),
        };
        assert!(w.contains("23:00".parse().unwrap(), Weekday::Monday));
        assert!(w.contains("05:59".parse().unwrap(), Weekday::Friday));
        assert!(!w.contains("06:00".parse().unwrap(), Weekday::Friday));
        assert!(!w.contains("23:00".parse().unwrap(), Weekday::Sunday));
    }

    #[test]
    fn unknown_time_zone_is_rejected() {
        let err = TimeOfUseTariff::new("Mars/Olympus", p(0.1), p(0.0), vec![]).unwrap_err();
        assert!(matches!(err, Error::UnknownTimeZone { .. }));
    }

    #[test]
    fn dynamic_prices_are_taken_onto_finer_horizons() {
        let hourly =
            Horizon::new("2026-01-01T00:00:00Z".parse().unwrap(), SlotLength::HOUR, 2).unwrap();
        let series = PriceSeries::new(hourly, &[0.1, 0.2], &[0.0, 0.0]).unwrap();
        let quarter = Horizon::new(
            "2026-01-01T00:30:00Z".parse().unwrap(),
            SlotLength::QUARTER_HOUR,
            4,
        )
        .unwrap();
        let fine = Tariff::Dynamic(series.clone()).prices_on(&quarter).unwrap();
        let v: Vec<f64> = fine.import.values().iter().map(|x| x.per_kwh()).collect();
        assert_eq!(v, vec![0.1, 0.1, 0.2, 0.2]);
        let outside =
            Horizon::new("2026-01-01T01:00:00Z".parse().unwrap(), SlotLength::HOUR, 2).unwrap();
        assert!(series.on(&outside).is_err());
        assert!(PriceSeries::new(hourly, &[0.1, f64::NAN], &[0.0, 0.0]).is_err());
        assert!(PriceSeries::new(hourly, &[0.1], &[0.0, 0.0]).is_err());
    }
}
