//! Regular time series on a UTC-day-aligned grid, loaded from the project's CSV format, gaps kept as NaN.
//!
//! The CSV format (see `data/README.md`): a header `timestamp_utc,value_<unit>[__<name>],...`, one row per
//! interval start in ISO-8601 UTC, empty cells where the source has a gap. Rows may also be missing
//! entirely; both kinds of gap become `NaN` on the grid, so nothing is dropped silently.

use crate::error::{Error, Result};
use jiff::Timestamp;

/// Seconds in a UTC day.
pub const SECONDS_PER_DAY: i64 = 86_400;

/// A regular series whose grid starts at 00:00 UTC of its first day; `values.len()` is a whole number of days.
///
/// Missing values are `NaN`. Slot `s` of day `d` (counted from [`Series::first_day`]) is
/// `values[d * slots_per_day + s]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name of the column the series came from.
    pub name: String,
    /// First day of the grid, as days since 1970-01-01 (UTC).
    pub first_day: i64,
    /// Slot length in seconds (divides a day).
    pub step_seconds: i64,
    /// Values on the grid; `NaN` marks a gap.
    pub values: Vec<f64>,
    /// Timestamp (seconds since the epoch) of the first row present in the source.
    pub first_timestamp: i64,
    /// Timestamp (seconds since the epoch) of the last row present in the source.
    pub last_timestamp: i64,
}

impl Series {
    /// Builds a series from values that start at 00:00 UTC of `first_day`, padding the end with gaps to a whole day.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `step_seconds` does not divide a day or there are no values.
    pub fn from_values(
        name: impl Into<String>,
        first_day: i64,
        step_seconds: i64,
        mut values: Vec<f64>,
    ) -> Result<Self> {
        if step_seconds <= 0 || SECONDS_PER_DAY % step_seconds != 0 {
            return Err(Error::invalid(
                "step_seconds",
                format!("{step_seconds} s does not divide a day"),
            ));
        }
        if values.is_empty() {
            return Err(Error::invalid("values", "no values"));
        }
        let spd = (SECONDS_PER_DAY / step_seconds) as usize;
        let n = values.len();
        let first_timestamp = first_day * SECONDS_PER_DAY;
        let last_timestamp = first_timestamp + (n as i64 - 1) * step_seconds;
        values.resize(n.div_ceil(spd) * spd, f64::NAN);
        Ok(Self {
            name: name.into(),
            first_day,
            step_seconds,
            values,
            first_timestamp,
            last_timestamp,
        })
    }

    /// Number of slots in a day.
    pub fn slots_per_day(&self) -> usize {
        (SECONDS_PER_DAY / self.step_seconds) as usize
    }

    /// Number of days on the grid.
    pub fn n_days(&self) -> usize {
        self.values.len() / self.slots_per_day()
    }

    /// Last day (days since the epoch) whose every slot lies within the span of the source rows.
    pub fn last_full_day(&self) -> i64 {
        let end = self.last_timestamp + self.step_seconds; // exclusive end of the last interval
        end.div_euclid(SECONDS_PER_DAY) - 1
    }

    /// The values of day `day` (days since the epoch), or `None` outside the grid.
    pub fn day(&self, day: i64) -> Option<&[f64]> {
        let spd = self.slots_per_day();
        let d = usize::try_from(day - self.first_day).ok()?;
        self.values.get(d * spd..(d + 1) * spd)
    }

    /// Everything strictly before day `day`: the only data a forecast for `day` may see.
    pub fn history_before(&self, day: i64) -> &[f64] {
        let spd = self.slots_per_day() as i64;
        let end = ((day - self.first_day) * spd).clamp(0, self.values.len() as i64) as usize;
        &self.values[..end]
    }
}

/// Finds the index of `column` among the CSV header fields: the full name (`value_pu__H0-A_pload`), the
/// part after `__` (`H0-A_pload`), or, for a single-series file, `value` / its unit name.
fn find_column(header: &[&str], column: &str) -> Result<usize> {
    let column = column.trim();
    if let Some(i) = header.iter().position(|h| h.trim() == column) {
        return Ok(i);
    }
    let by_suffix: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.trim().rsplit_once("__").is_some_and(|(_, s)| s == column))
        .map(|(i, _)| i)
        .collect();
    match by_suffix.as_slice() {
        [i] => Ok(*i),
        [] => Err(Error::invalid(
            "column",
            format!(
                "no column `{column}`; the file has: {}",
                header.get(1..).unwrap_or_default().join(", ")
            ),
        )),
        _ => Err(Error::invalid(
            "column",
            format!("`{column}` is ambiguous; give the full header name"),
        )),
    }
}

/// Parses one timestamp cell into seconds since the epoch.
fn parse_timestamp(cell: &str, line: usize) -> Result<i64> {
    let cell = cell.trim();
    cell.parse::<Timestamp>()
        .map(|t| t.as_second())
        .or_else(|_| {
            // Tolerate a missing zone designator: the format says UTC.
            format!("{cell}Z")
                .parse::<Timestamp>()
                .map(|t| t.as_second())
        })
        .map_err(|e| {
            Error::invalid(
                format!("timestamp_utc (line {line})"),
                format!("`{cell}`: {e}"),
            )
        })
}

/// Parses the project's CSV format and returns the series of `column` on a day-aligned grid.
///
/// The slot length is the most common spacing between consecutive rows; it must divide a day.
/// Empty cells, `NaN` and missing rows become gaps (`NaN`).
///
/// # Errors
/// [`Error::InvalidInput`] naming the column or line for a missing column, an unparsable timestamp or
/// value, rows off the grid, or fewer than two rows.
///
/// # Example
/// ```
/// use grid_optimize::forecast::series::parse_csv;
/// let csv = "timestamp_utc,value_kW__a\n2024-01-01T00:00:00Z,1.5\n2024-01-01T12:00:00Z,\n";
/// let s = parse_csv(csv, "a").unwrap();
/// assert_eq!(s.slots_per_day(), 2);
/// assert_eq!(s.values[0], 1.5);
/// assert!(s.values[1].is_nan());
/// ```
pub fn parse_csv(text: &str, column: &str) -> Result<Series> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header_line) = lines
        .next()
        .ok_or_else(|| Error::invalid("input", "empty file"))?;
    let header: Vec<&str> = header_line.split(',').collect();
    if header.first().map(|h| h.trim()) != Some("timestamp_utc") {
        return Err(Error::invalid(
            "input",
            "the first column must be `timestamp_utc`",
        ));
    }
    let col = find_column(&header, column)?;
    if col == 0 {
        return Err(Error::invalid(
            "column",
            "`timestamp_utc` is not a value column",
        ));
    }
    let full_name = header[col].trim().to_string();
    let mut rows: Vec<(i64, f64)> = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        let mut cells = line.split(',');
        let ts = parse_timestamp(cells.next().unwrap_or_default(), line_no)?;
        let cell = cells.nth(col - 1).unwrap_or("").trim();
        let v = if cell.is_empty() {
            f64::NAN
        } else {
            cell.parse::<f64>().map_err(|e| {
                Error::invalid(
                    format!("{full_name} (line {line_no})"),
                    format!("`{cell}`: {e}"),
                )
            })?
        };
        // Infinite values are treated like gaps: they are not measurements.
        rows.push((ts, if v.is_finite() { v } else { f64::NAN }));
    }
    if rows.len() < 2 {
        return Err(Error::invalid("input", "fewer than two data rows"));
    }
    rows.sort_by_key(|r| r.0);
    let step = most_common_step(&rows)?;
    let first_ts = rows[0].0;
    let last_ts = rows[rows.len() - 1].0;
    let first_day = first_ts.div_euclid(SECONDS_PER_DAY);
    let last_day = last_ts.div_euclid(SECONDS_PER_DAY);
    let spd = (SECONDS_PER_DAY / step) as usize;
    let n_days = usize::try_from(last_day - first_day + 1)
        .map_err(|_| Error::invalid("timestamp_utc", "timestamps out of order"))?;
    let mut values = vec![f64::NAN; n_days * spd];
    for &(ts, v) in &rows {
        let off = ts - first_day * SECONDS_PER_DAY;
        if off % step != 0 {
            return Err(Error::invalid(
                "timestamp_utc",
                format!("timestamp {ts} is not on the {step}-second grid"),
            ));
        }
        values[(off / step) as usize] = v;
    }
    Ok(Series {
        name: full_name,
        first_day,
        step_seconds: step,
        values,
        first_timestamp: first_ts,
        last_timestamp: last_ts,
    })
}

fn most_common_step(rows: &[(i64, f64)]) -> Result<i64> {
    let mut counts: Vec<(i64, usize)> = Vec::new();
    for w in rows.windows(2).take(10_000) {
        let d = w[1].0 - w[0].0;
        if d <= 0 {
            continue;
        }
        match counts.iter_mut().find(|(s, _)| *s == d) {
            Some(c) => c.1 += 1,
            None => counts.push((d, 1)),
        }
    }
    let step = counts
        .iter()
        .max_by_key(|c| (c.1, -c.0))
        .map(|c| c.0)
        .ok_or_else(|| Error::invalid("timestamp_utc", "duplicate timestamps only"))?;
    if SECONDS_PER_DAY % step != 0 {
        return Err(Error::invalid(
            "timestamp_utc",
            format!("the slot length {step} s does not divide a day"),
        ));
    }
    Ok(step)
}

/// Days since the epoch of a `YYYY-MM-DD` date.
///
/// # Errors
/// [`Error::InvalidInput`] naming `field` if the text is not a valid date.
pub fn parse_day(text: &str, field: &str) -> Result<i64> {
    let date: jiff::civil::Date = text
        .trim()
        .parse()
        .map_err(|e| Error::invalid(field, format!("`{text}` is not a YYYY-MM-DD date: {e}")))?;
    Ok(crate::forecast::calendar::days_from_civil(
        i64::from(date.year()),
        date.month() as u32,
        date.day() as u32,
    ))
}

/// `YYYY-MM-DD` of a day since the epoch.
pub fn format_day(day: i64) -> String {
    let (y, m, d) = crate::forecast::calendar::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_missing_rows_become_nan() {
        let csv = "timestamp_utc,value_W\n\
                   2020-01-01T00:00:00Z,1\n\
                   2020-01-01T06:00:00Z,\n\
                   2020-01-01T18:00:00Z,4\n\
                   2020-01-02T00:00:00Z,5\n";
        let s = parse_csv(csv, "value_W").unwrap();
        assert_eq!(s.step_seconds, 6 * 3600);
        assert_eq!(s.n_days(), 2);
        assert_eq!(s.values[0], 1.0);
        assert!(s.values[1].is_nan());
        assert!(s.values[2].is_nan()); // missing row
        assert_eq!(s.values[3], 4.0);
        assert_eq!(s.values[4], 5.0);
        assert_eq!(s.last_full_day(), s.first_day);
    }

    #[test]
    fn column_by_suffix_and_errors() {
        let csv = "timestamp_utc,value_pu__H0-A_pload,value_pu__H0-B_pload\n\
                   2020-01-01T00:00:00Z,1,2\n2020-01-01T12:00:00Z,3,4\n";
        assert_eq!(parse_csv(csv, "H0-B_pload").unwrap().values[1], 4.0);
        assert_eq!(
            parse_csv(csv, "value_pu__H0-A_pload").unwrap().values[1],
            3.0
        );
        let e = parse_csv(csv, "nope").unwrap_err();
        assert_eq!(e.field(), Some("column"));
        let e = parse_csv("timestamp_utc,value_W\nyesterday,1\nx,2\n", "value_W").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn history_before_excludes_the_day() {
        let s = Series::from_values("x", 100, 43_200, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.history_before(101), &[1.0, 2.0]);
        assert_eq!(s.history_before(100), &[] as &[f64]);
        assert_eq!(s.history_before(500).len(), 4);
        assert_eq!(parse_day("1970-01-11", "d").unwrap(), 10);
        assert_eq!(format_day(10), "1970-01-11");
        assert!(parse_day("2020-13-01", "test_from").is_err());
    }
}
