//! Calendar arithmetic on UTC days (days since 1970-01-01) and national public-holiday calendars.
//!
//! Holidays are the fixed-date and Easter-based public holidays of each country (with the weekend
//! substitution rules of GB and the US); regional holidays are not included.

use crate::error::{Error, Result};

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Weekday of a day since the epoch: 0 = Monday … 6 = Sunday.
pub fn weekday(day: i64) -> u32 {
    // 1970-01-01 was a Thursday (3).
    (day + 3).rem_euclid(7) as u32
}

/// Day of the year, 0-based.
pub fn day_of_year(day: i64) -> u32 {
    let (y, _, _) = civil_from_days(day);
    (day - days_from_civil(y, 1, 1)) as u32
}

/// Easter Sunday (Gregorian, anonymous algorithm) as days since the epoch.
pub fn easter_sunday(year: i64) -> i64 {
    let a = year % 19;
    let b = year / 100;
    let c = year % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    days_from_civil(year, month as u32, day as u32)
}

/// A country whose national public holidays the forecaster knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Country {
    /// Germany (nationwide holidays).
    De,
    /// Great Britain (England & Wales bank holidays).
    Gb,
    /// United States (federal holidays, observed dates).
    Us,
    /// France.
    Fr,
    /// The Netherlands.
    Nl,
}

impl std::str::FromStr for Country {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "DE" => Ok(Self::De),
            "GB" | "UK" => Ok(Self::Gb),
            "US" => Ok(Self::Us),
            "FR" => Ok(Self::Fr),
            "NL" => Ok(Self::Nl),
            other => Err(Error::invalid(
                "country",
                format!("unknown country `{other}` (known: DE, GB, US, FR, NL)"),
            )),
        }
    }
}

/// The `n`-th (1-based) given weekday of a month, or the last one when `n == 0`.
fn nth_weekday(year: i64, month: u32, wd: u32, n: u32) -> i64 {
    if n == 0 {
        let next_first = if month == 12 {
            days_from_civil(year + 1, 1, 1)
        } else {
            days_from_civil(year, month + 1, 1)
        };
        let last = next_first - 1;
        last - i64::from((weekday(last) + 7 - wd) % 7)
    } else {
        let first = days_from_civil(year, month, 1);
        first + i64::from((wd + 7 - weekday(first)) % 7) + 7 * i64::from(n - 1)
    }
}

/// GB rule: a holiday on a weekend moves to the next free weekday.
fn push_substitute(days: &mut Vec<i64>, day: i64) {
    let mut d = day;
    while weekday(d) >= 5 || days.contains(&d) {
        d += 1;
    }
    if d != day {
        days.push(day);
    }
    days.push(d);
}

/// US rule: Saturday → Friday before, Sunday → Monday after (both the date and the observed day count).
fn push_observed_us(days: &mut Vec<i64>, day: i64) {
    days.push(day);
    match weekday(day) {
        5 => days.push(day - 1),
        6 => days.push(day + 1),
        _ => {}
    }
}

/// The public holidays of `country` in `year`, as days since the epoch (sorted, unique).
pub fn holidays(country: Country, year: i64) -> Vec<i64> {
    let e = easter_sunday(year);
    let ymd = |m, d| days_from_civil(year, m, d);
    let mut v = Vec::with_capacity(16);
    match country {
        Country::De => v.extend([
            ymd(1, 1),
            e - 2,
            e + 1,
            ymd(5, 1),
            e + 39,
            e + 50,
            ymd(10, 3),
            ymd(12, 25),
            ymd(12, 26),
        ]),
        Country::Fr => v.extend([
            ymd(1, 1),
            e + 1,
            ymd(5, 1),
            ymd(5, 8),
            e + 39,
            e + 50,
            ymd(7, 14),
            ymd(8, 15),
            ymd(11, 1),
            ymd(11, 11),
            ymd(12, 25),
        ]),
        Country::Nl => {
            let kings = if year >= 2014 {
                let d = ymd(4, 27);
                if weekday(d) == 6 { d - 1 } else { d }
            } else {
                let d = ymd(4, 30);
                if weekday(d) == 6 { d - 1 } else { d }
            };
            v.extend([
                ymd(1, 1),
                e - 2,
                e,
                e + 1,
                kings,
                ymd(5, 5),
                e + 39,
                e + 49,
                e + 50,
                ymd(12, 25),
                ymd(12, 26),
            ]);
        }
        Country::Gb => {
            push_substitute(&mut v, ymd(1, 1));
            v.extend([e - 2, e + 1]);
            v.push(nth_weekday(year, 5, 0, 1)); // early May
            v.push(nth_weekday(year, 5, 0, 0)); // spring
            v.push(nth_weekday(year, 8, 0, 0)); // summer
            push_substitute(&mut v, ymd(12, 25));
            push_substitute(&mut v, ymd(12, 26));
        }
        Country::Us => {
            push_observed_us(&mut v, ymd(1, 1));
            v.push(nth_weekday(year, 1, 0, 3));
            v.push(nth_weekday(year, 2, 0, 3));
            v.push(nth_weekday(year, 5, 0, 0));
            if year >= 2021 {
                push_observed_us(&mut v, ymd(6, 19));
            }
            push_observed_us(&mut v, ymd(7, 4));
            v.push(nth_weekday(year, 9, 0, 1));
            v.push(nth_weekday(year, 10, 0, 2));
            push_observed_us(&mut v, ymd(11, 11));
            v.push(nth_weekday(year, 11, 3, 4));
            push_observed_us(&mut v, ymd(12, 25));
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Whether `day` is a public holiday of `country`.
pub fn is_holiday(country: Country, day: i64) -> bool {
    let (y, _, _) = civil_from_days(day);
    holidays(country, y).binary_search(&day).is_ok()
}

/// Christmas Eve and New Year's Eve: not public holidays, but days with holiday-like demand in most of Europe.
pub fn is_special_eve(day: i64) -> bool {
    let (_, m, d) = civil_from_days(day);
    m == 12 && (d == 24 || d == 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(weekday(days_from_civil(2024, 1, 1)), 0); // a Monday
        assert_eq!(civil_from_days(easter_sunday(2016)), (2016, 3, 27));
        assert_eq!(civil_from_days(easter_sunday(2015)), (2015, 4, 5));
        assert_eq!(civil_from_days(easter_sunday(2000)), (2000, 4, 23));
        let d = |y, m, dd| days_from_civil(y, m, dd);
        assert!(is_holiday(Country::De, d(2016, 10, 3)));
        assert!(is_holiday(Country::De, d(2016, 5, 5))); // Ascension 2016
        assert!(!is_holiday(Country::De, d(2016, 7, 14)));
        assert!(is_holiday(Country::Fr, d(2016, 7, 14)));
        assert!(is_holiday(Country::Gb, d(2000, 8, 28))); // summer bank holiday 2000
        assert!(is_holiday(Country::Gb, d(2016, 12, 27))); // Christmas on a Sunday → substitute
        assert!(is_holiday(Country::Us, d(2015, 11, 26))); // Thanksgiving
        assert!(is_holiday(Country::Us, d(2015, 7, 3))); // July 4th on a Saturday, observed Friday
        assert!(is_holiday(Country::Nl, d(2016, 4, 27)));
        assert!(is_special_eve(d(2016, 12, 24)));
        assert_eq!("gb".parse::<Country>().unwrap(), Country::Gb);
        assert!("XX".parse::<Country>().is_err());
    }

    proptest! {
        #[test]
        fn civil_round_trip(z in -100_000i64..100_000) {
            let (y, m, d) = civil_from_days(z);
            prop_assert_eq!(days_from_civil(y, m, d), z);
        }

        #[test]
        fn easter_is_a_sunday_in_spring(y in 1900i64..2200) {
            let e = easter_sunday(y);
            prop_assert_eq!(weekday(e), 6);
            let (_, m, d) = civil_from_days(e);
            prop_assert!((m == 3 && d >= 22) || (m == 4 && d <= 25));
        }
    }
}
