//! Time in the scheduling model: UTC instants, slot lengths and the [`Horizon`] a schedule,
//! a price series or a forecast is defined on.

use crate::error::{Error, Result};
pub use jiff::Timestamp;
use jiff::{SignedDuration, ToSpan};

/// The length of one slot of a horizon, in whole seconds.
///
/// A slot length divides a day (60 s, 300 s, 900 s, 1800 s, 3600 s, ...), so slots aligned to the
/// slot length are also aligned to UTC midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "u32", into = "u32"))]
pub struct SlotLength(u32);

impl SlotLength {
    /// One minute.
    pub const MINUTE: Self = Self(60);
    /// Five minutes.
    pub const FIVE_MINUTES: Self = Self(300);
    /// A quarter hour (the European market slot).
    pub const QUARTER_HOUR: Self = Self(900);
    /// Half an hour.
    pub const HALF_HOUR: Self = Self(1800);
    /// One hour.
    pub const HOUR: Self = Self(3600);

    /// Builds a slot length from seconds; it must be positive and divide 86,400.
    pub fn from_seconds(seconds: u32) -> Result<Self> {
        if seconds == 0 || 86_400 % seconds != 0 {
            return Err(Error::OutOfRange {
                field: "slot_seconds",
                value: f64::from(seconds),
                expected: "a positive divisor of 86400 seconds",
            });
        }
        Ok(Self(seconds))
    }

    /// The length in seconds.
    pub const fn seconds(self) -> u32 {
        self.0
    }

    /// The length in hours (the factor turning kW into kWh per slot).
    pub fn hours(self) -> f64 {
        f64::from(self.0) / 3600.0
    }

    /// The length in minutes.
    pub fn minutes(self) -> f64 {
        f64::from(self.0) / 60.0
    }

    /// The length as a signed duration.
    pub fn duration(self) -> SignedDuration {
        SignedDuration::from_secs(i64::from(self.0))
    }
}

impl TryFrom<u32> for SlotLength {
    type Error = Error;
    fn try_from(seconds: u32) -> Result<Self> {
        Self::from_seconds(seconds)
    }
}

impl From<SlotLength> for u32 {
    fn from(value: SlotLength) -> u32 {
        value.0
    }
}

/// The most slots a horizon may have (a year of one-minute slots).
pub const MAX_SLOTS: usize = 527_040;

/// A run of equal slots: `start`, `start + slot`, ..., `start + len * slot` (the end, exclusive).
///
/// The start is aligned to the slot length (a multiple of it since the Unix epoch, hence to UTC
/// midnight), so horizons with the same slot length always line up.
///
/// ```
/// use grid_core::{Horizon, SlotLength, Timestamp};
/// let start: Timestamp = "2026-11-27T00:00:00Z".parse()?;
/// let day = Horizon::new(start, SlotLength::QUARTER_HOUR, 96)?;
/// assert_eq!(day.end().to_string(), "2026-11-28T00:00:00Z");
/// assert_eq!(day.slot_at("2026-11-27T06:20:00Z".parse()?), Some(25));
/// let (morning, rest) = day.split_at(48)?;
/// assert_eq!(morning.join(&rest)?, day);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(try_from = "HorizonParts", into = "HorizonParts")
)]
pub struct Horizon {
    start: Timestamp,
    slot: SlotLength,
    len: usize,
}

/// The plain fields of a [`Horizon`], as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HorizonParts {
    /// The first slot's start (UTC).
    pub start: Timestamp,
    /// The slot length in seconds.
    pub slot_seconds: u32,
    /// The number of slots.
    pub slots: usize,
}

impl TryFrom<HorizonParts> for Horizon {
    type Error = Error;
    fn try_from(parts: HorizonParts) -> Result<Self> {
        Horizon::new(
            parts.start,
            SlotLength::from_seconds(parts.slot_seconds)?,
            parts.slots,
        )
    }
}

impl From<Horizon> for HorizonParts {
    fn from(h: Horizon) -> Self {
        HorizonParts {
            start: h.start,
            slot_seconds: h.slot.seconds(),
            slots: h.len,
        }
    }
}

impl Horizon {
    /// Builds a horizon of `len` slots (1 ..= [`MAX_SLOTS`]) starting at `start`, which must be
    /// aligned to the slot length.
    pub fn new(start: Timestamp, slot: SlotLength, len: usize) -> Result<Self> {
        if len == 0 || len > MAX_SLOTS {
            return Err(Error::OutOfRange {
                field: "horizon.slots",
                value: len as f64,
                expected: "1 ..= 527040 slots",
            });
        }
        if !is_aligned(start, slot) {
            return Err(Error::Inconsistent {
                field: "horizon.start",
                reason: format!(
                    "{start} is not aligned to the slot length of {} s",
                    slot.seconds()
                ),
            });
        }
        let h = Self { start, slot, len };
        // Reject horizons whose end is not representable.
        h.checked_offset(len)?;
        Ok(h)
    }

    /// The horizon of `len` slots whose first slot contains `instant` (its start is `instant`
    /// rounded down to the slot length).
    pub fn containing(instant: Timestamp, slot: SlotLength, len: usize) -> Result<Self> {
        Self::new(floor_to_slot(instant, slot)?, slot, len)
    }

    /// The start of the first slot.
    pub const fn start(&self) -> Timestamp {
        self.start
    }

    /// The end of the last slot (exclusive).
    pub fn end(&self) -> Timestamp {
        // Checked in `new`.
        self.offset(self.len)
    }

    /// The slot length.
    pub const fn slot_length(&self) -> SlotLength {
        self.slot
    }

    /// The number of slots.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Always false: a horizon has at least one slot.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// The total duration.
    pub fn duration(&self) -> SignedDuration {
        SignedDuration::from_secs(i64::from(self.slot.seconds()) * self.len as i64)
    }

    /// The start of slot `index`, or `None` past the end.
    pub fn slot_start(&self, index: usize) -> Option<Timestamp> {
        (index < self.len).then(|| self.offset(index))
    }

    /// The slot containing `instant`, or `None` outside the horizon.
    pub fn slot_at(&self, instant: Timestamp) -> Option<usize> {
        let since = instant.as_second() - self.start.as_second();
        let since = if instant.subsec_nanosecond() < 0 {
            since - 1
        } else {
            since
        };
        if since < 0 {
            return None;
        }
        let index = usize::try_from(since / i64::from(self.slot.seconds())).ok()?;
        (index < self.len).then_some(index)
    }

    /// Whether `instant` lies in `[start, end)`.
    pub fn contains(&self, instant: Timestamp) -> bool {
        self.slot_at(instant).is_some()
    }

    /// Iterates over `(index, slot start)`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (usize, Timestamp)> + '_ {
        (0..self.len).map(move |i| (i, self.offset(i)))
    }

    /// Splits into `[0, at)` and `[at, len)`; both parts must be non-empty.
    pub fn split_at(&self, at: usize) -> Result<(Horizon, Horizon)> {
        if at == 0 || at >= self.len {
            return Err(Error::OutOfRange {
                field: "horizon.split_at",
                value: at as f64,
                expected: "an index strictly inside the horizon",
            });
        }
        Ok((
            Horizon {
                start: self.start,
                slot: self.slot,
                len: at,
            },
            Horizon {
                start: self.offset(at),
                slot: self.slot,
                len: self.len - at,
            },
        ))
    }

    /// Joins this horizon with `next`, which must have the same slot length and start where this
    /// one ends.
    pub fn join(&self, next: &Horizon) -> Result<Horizon> {
        if self.slot != next.slot {
            return Err(Error::Inconsistent {
                field: "horizon.slot_seconds",
                reason: format!(
                    "cannot join horizons with slots of {} s and {} s",
                    self.slot.seconds(),
                    next.slot.seconds()
                ),
            });
        }
        if self.end() != next.start {
            return Err(Error::Inconsistent {
                field: "horizon.start",
                reason: format!(
                    "the second horizon starts at {} but the first ends at {}",
                    next.start,
                    self.end()
                ),
            });
        }
        Horizon::new(self.start, self.slot, self.len + next.len)
    }

    /// The sub-horizon of slots `[from, from + len)`.
    pub fn window(&self, from: usize, len: usize) -> Result<Horizon> {
        if len == 0 || from.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::OutOfRange {
                field: "horizon.window",
                value: len as f64,
                expected: "a non-empty window inside the horizon",
            });
        }
        Ok(Horizon {
            start: self.offset(from),
            slot: self.slot,
            len,
        })
    }

    fn checked_offset(&self, slots: usize) -> Result<Timestamp> {
        let secs = i64::from(self.slot.seconds())
            .checked_mul(slots as i64)
            .ok_or(Error::TimeOutOfRange { field: "horizon" })?;
        self.start
            .checked_add(secs.seconds())
            .map_err(|_| Error::TimeOutOfRange { field: "horizon" })
    }

    fn offset(&self, slots: usize) -> Timestamp {
        // Every offset up to `len` was checked in `new`, and the horizon is immutable.
        self.checked_offset(slots).unwrap_or(self.start)
    }
}

/// Whether `instant` is a whole multiple of the slot length since the Unix epoch.
pub fn is_aligned(instant: Timestamp, slot: SlotLength) -> bool {
    instant.subsec_nanosecond() == 0
        && instant.as_second().rem_euclid(i64::from(slot.seconds())) == 0
}

/// `instant` rounded down to a multiple of the slot length.
pub fn floor_to_slot(instant: Timestamp, slot: SlotLength) -> Result<Timestamp> {
    let s = i64::from(slot.seconds());
    let mut secs = instant.as_second();
    if instant.subsec_nanosecond() < 0 {
        secs -= 1;
    }
    Timestamp::from_second(secs - secs.rem_euclid(s))
        .map_err(|_| Error::TimeOutOfRange { field: "instant" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn slot_lengths_divide_a_day() {
        assert!(SlotLength::from_seconds(0).is_err());
        assert!(SlotLength::from_seconds(7).is_err());
        assert_eq!(SlotLength::from_seconds(900).unwrap().hours(), 0.25);
    }

    #[test]
    fn horizon_maps_slots_and_instants_both_ways() {
        let h = Horizon::new(ts("2026-03-29T00:00:00Z"), SlotLength::HOUR, 24).unwrap();
        for (i, start) in h.iter() {
            assert_eq!(h.slot_at(start), Some(i));
            assert_eq!(h.slot_start(i), Some(start));
        }
        assert_eq!(h.slot_at(ts("2026-03-28T23:59:59Z")), None);
        assert_eq!(h.slot_at(h.end()), None);
        assert_eq!(h.slot_start(24), None);
    }

    #[test]
    fn misaligned_or_empty_horizons_are_rejected() {
        assert!(Horizon::new(ts("2026-01-01T00:07:00Z"), SlotLength::QUARTER_HOUR, 4).is_err());
        assert!(Horizon::new(ts("2026-01-01T00:00:00Z"), SlotLength::QUARTER_HOUR, 0).is_err());
        let h =
            Horizon::containing(ts("2026-01-01T00:07:00Z"), SlotLength::QUARTER_HOUR, 4).unwrap();
        assert_eq!(h.start(), ts("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn split_and_join_are_inverse() {
        let h = Horizon::new(ts("2026-01-01T00:00:00Z"), SlotLength::QUARTER_HOUR, 96).unwrap();
        let (a, b) = h.split_at(10).unwrap();
        assert_eq!(a.len() + b.len(), 96);
        assert_eq!(a.join(&b).unwrap(), h);
        assert!(b.join(&a).is_err());
        assert!(h.split_at(0).is_err());
        assert_eq!(h.window(4, 4).unwrap().start(), ts("2026-01-01T01:00:00Z"));
        assert!(h.window(95, 2).is_err());
    }
}
