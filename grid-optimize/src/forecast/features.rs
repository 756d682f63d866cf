//! Feature engineering for day-ahead forecasts: calendar, lags, rolling statistics and clear-sky PV features.
//!
//! [`FeatureConfig::day_features`] computes the features of every slot of UTC day `D` from `history`,
//! the series strictly before `D` (its last element is the last slot of `D - 1`). It can only index into
//! that slice, so no value of `D` or later can reach a feature: the protocol holds by construction.
//! Missing lag values are imputed (from the mean of the same slot over the previous week, else from the
//! training profile of that slot) and flagged in `*_missing` features.

use crate::forecast::calendar::{self, Country};
use crate::forecast::solar::{self, Location};
use std::sync::OnceLock;

/// What the series measures; decides the sign constraints and the PV features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum SeriesKind {
    /// Electric load (power drawn, kW or per-unit; positive = importing from the grid).
    #[default]
    Load,
    /// PV generation (power produced, never negative).
    Pv,
    /// A market price (may be negative).
    Price,
}

impl std::str::FromStr for SeriesKind {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "load" => Ok(Self::Load),
            "pv" => Ok(Self::Pv),
            "price" => Ok(Self::Price),
            o => Err(crate::error::Error::invalid(
                "kind",
                format!("unknown kind `{o}` (load, pv or price)"),
            )),
        }
    }
}

/// Number of equal blocks the previous day is summarised in (`prev_block_*` features).
pub const PREV_DAY_BLOCKS: usize = 24;

/// What the features of a series are computed from.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FeatureConfig {
    /// Slots per UTC day.
    pub slots_per_day: usize,
    /// Slot length in seconds.
    pub step_seconds: i64,
    /// What the series measures.
    pub kind: SeriesKind,
    /// Holiday calendar, if any.
    pub country: Option<Country>,
    /// Site location for the clear-sky PV features, if any.
    pub location: Option<Location>,
}

/// The lag days used as features.
pub const LAGS: [usize; 5] = [1, 2, 3, 7, 14];

/// Days of history [`FeatureConfig::day_features`] reads (the longest look-back, `mean_same_weekday4`).
const WINDOW_DAYS: usize = 28;

/// The time-of-day features of slot `s` of `spd`: `tod` and the sine and cosine of its first three harmonics.
fn tod_features(s: usize, spd: usize) -> [f64; 7] {
    let tod = s as f64 / spd as f64;
    let a = 2.0 * std::f64::consts::PI * tod;
    [
        tod,
        a.sin(),
        a.cos(),
        (2.0 * a).sin(),
        (2.0 * a).cos(),
        (3.0 * a).sin(),
        (3.0 * a).cos(),
    ]
}

/// [`tod_features`] of every slot for the usual slot counts (hourly, half-hourly, 15 and 5 minutes), computed
/// once per process: they depend on nothing else, and their six sines and cosines per slot were a tenth of a
/// forecast's time.
static TOD_TABLES: [(usize, OnceLock<Vec<[f64; 7]>>); 4] = [
    (24, OnceLock::new()),
    (48, OnceLock::new()),
    (96, OnceLock::new()),
    (288, OnceLock::new()),
];

/// Adds to `sum[s]` the values `v[start + o + s]`, one by one, over the `starts` in order and, for each, the
/// offsets `o` in `0..width` in order; for every slot `s` of `sum`. Eight slots at a time, so the running
/// sums stay in registers.
fn window_sums(v: &[f64], starts: &[usize], width: usize, sum: &mut [f64]) {
    const LANES: usize = 8;
    let whole = sum.len() / LANES * LANES;
    let (chunks, rest) = sum.split_at_mut(whole);
    for (s0, out) in (0..whole)
        .step_by(LANES)
        .zip(chunks.chunks_exact_mut(LANES))
    {
        let mut acc = [0.0; LANES];
        acc.copy_from_slice(out);
        for &st in starts {
            for vs in v[st + s0..st + s0 + width + LANES - 1].array_windows::<LANES>() {
                for l in 0..LANES {
                    acc[l] += vs[l];
                }
            }
        }
        out.copy_from_slice(&acc);
    }
    for (s, out) in (whole..).zip(rest) {
        let mut acc = *out;
        for &st in starts {
            for x in &v[st + s..st + s + width] {
                acc += x;
            }
        }
        *out = acc;
    }
}

/// Splits the first `n` values off `rest`.
fn carve<'a>(rest: &mut &'a mut [f64], n: usize) -> &'a mut [f64] {
    let (a, b) = std::mem::take(rest).split_at_mut(n);
    *rest = b;
    a
}

impl FeatureConfig {
    /// Half-width (in slots) of the window the `*_smooth` features average over.
    fn smooth_halfwidth(&self) -> usize {
        (self.slots_per_day / 48).max(1)
    }

    /// Whether the clear-sky features are present.
    fn has_solar(&self) -> bool {
        self.location.is_some()
    }

    /// The names of the features, in column order.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = [
            "tod",
            "tod_sin1",
            "tod_cos1",
            "tod_sin2",
            "tod_cos2",
            "tod_sin3",
            "tod_cos3",
            "weekday",
            "is_weekend",
            "is_holiday",
            "is_eve",
            "is_offday",
            "prev_is_offday",
            "lag7_is_offday",
            "doy_sin",
            "doy_cos",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        n.extend((0..7).map(|d| format!("dow_{d}")));
        for l in LAGS {
            n.push(format!("lag{l}"));
        }
        for l in LAGS {
            n.push(format!("lag{l}_missing"));
        }
        n.extend(
            [
                "lag1_smooth",
                "lag7_smooth",
                "mean7",
                "mean7_smooth",
                "mean_same_weekday4",
                "mean_same_daytype14",
                "max14",
                "prev_mean",
                "prev_max",
                "prev_min",
                "prev_last",
                "prev_last4h_mean",
                "prev8_mean",
                "vol7",
                "vol7_day",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if self.has_solar() {
            n.extend(
                [
                    "clear_sky_ghi",
                    "clear_sky_x_prev_index",
                    "clear_sky_x_week_index",
                ]
                .map(String::from),
            );
        }
        n.extend((0..PREV_DAY_BLOCKS).map(|b| format!("prev_block_{b:02}")));
        n
    }

    /// Number of features per slot.
    pub fn n_features(&self) -> usize {
        16 + 7 + 2 * LAGS.len() + 15 + if self.has_solar() { 3 } else { 0 } + PREV_DAY_BLOCKS
    }

    /// Columns of the features that vary within a day (everything except the `prev_block_*` summary),
    /// used by models that do not fit one set of coefficients per time of day.
    pub fn slot_columns(&self) -> Vec<usize> {
        (0..self.n_features() - PREV_DAY_BLOCKS).collect()
    }

    /// Whether `day` is an off day (weekend or, with a calendar, a public holiday or Christmas/New Year's Eve).
    fn is_offday(&self, day: i64) -> bool {
        calendar::weekday(day) >= 5
            || self
                .country
                .is_some_and(|c| calendar::is_holiday(c, day) || calendar::is_special_eve(day))
    }

    /// Computes the features of every slot of `day` into `out` (row-major, `slots_per_day × n_features`).
    ///
    /// `history` is the series strictly before `day`, with a whole number of days; `profile` holds one
    /// fallback value per slot (e.g. the training mean of that time of day) for imputing gaps. Only the last
    /// 29 days of `history` are read (the longest look-back is `mean_same_weekday4`, 28 days), and nothing is
    /// allocated once `out` has grown to size.
    pub fn day_features(&self, history: &[f64], day: i64, profile: &[f64], out: &mut Vec<f64>) {
        self.day_features_in(history, day, profile, out);
        out.truncate(self.slots_per_day * self.n_features());
    }

    /// [`FeatureConfig::day_features`] into the start of `buf`, returning the rows; the rest of `buf` holds
    /// work arrays, so a `buf` kept across calls is not even re-initialised.
    pub fn day_features_in<'a>(
        &self,
        history: &[f64],
        day: i64,
        profile: &[f64],
        buf: &'a mut Vec<f64>,
    ) -> &'a [f64] {
        let spd = self.slots_per_day;
        let nf = self.n_features();
        let h = history.len();
        debug_assert_eq!(h % spd, 0, "history must hold whole days");
        let w = self.smooth_halfwidth();
        let vw = (spd / 12).max(1);
        // The last `WINDOW_DAYS` days of history with `w` slots of margin on each side (`hist`), and the
        // week's day-over-day changes with `vw` slots of margin on each side of each day (`change`), each
        // with a presence count (1 or 0) per value. A missing value (absent, not finite, or not before
        // `day`) is +0.0 with count 0: the sums below start at +0.0, a running sum that starts at +0.0 is
        // never -0.0, and adding +0.0 leaves any other sum unchanged, so each sum equals the reference's sum
        // over the present values, term by term in the same order. The sums run over eight slots at once,
        // in registers (`window_sums`).
        let hist_len = WINDOW_DAYS * spd + 2 * w;
        let change_len = 7 * (spd + 2 * vw);
        // Per-slot sums and counts: mean7, lag1_smooth, lag7_smooth, mean7_smooth, mean_same_weekday4,
        // mean_same_daytype14, vol7; and max14 with its count.
        const SUMS: usize = 7;
        // Every row value and every work array element is written below, so a `buf` kept across calls is not
        // re-initialised.
        buf.resize(
            spd * nf + 2 * hist_len + 2 * change_len + 2 * (SUMS + 1) * spd,
            0.0,
        );
        let (rows, mut rest) = buf.split_at_mut(spd * nf);
        let hist = carve(&mut rest, hist_len);
        let hist_n = carve(&mut rest, hist_len);
        let change = carve(&mut rest, change_len);
        let change_n = carve(&mut rest, change_len);
        let mut sums = [(); SUMS].map(|_| (carve(&mut rest, spd), carve(&mut rest, spd)));
        let max14 = carve(&mut rest, spd);
        let max14_n = carve(&mut rest, spd);
        // Value at slot `s` (may be outside 0..spd) of `k` days back; None if absent, missing or not before `day`.
        let at = |k: usize, s: isize| -> Option<f64> {
            let j = h as isize - (k * spd) as isize + s;
            if j < 0 || j >= h as isize {
                return None;
            }
            let v = history[j as usize];
            v.is_finite().then_some(v)
        };
        // `hist[at_index(k, s)]` is `at(k, s)`, for `k` in 1..=WINDOW_DAYS and `s` in -w..spd + w.
        let at_index = |k: usize, s: isize| ((WINDOW_DAYS - k) * spd + w) as isize + s;
        // `hist[i]` is `history[i - skip]`, or missing outside `history`.
        let skip = (WINDOW_DAYS * spd + w).saturating_sub(h);
        let src = &history[h.saturating_sub(WINDOW_DAYS * spd + w)..];
        let end = (skip + src.len()).min(hist_len);
        for a in [&mut *hist, &mut *hist_n] {
            a[..skip].fill(0.0);
            a[end..].fill(0.0);
        }
        // Copied as they are, counting the finite values (a float comparison, false for NaN, so the loop
        // runs on two values at once); only if some are not, copied again value by value.
        let mut finite = 0usize;
        for (v, x) in hist[skip..end].iter_mut().zip(src) {
            *v = *x;
            finite += usize::from(x.abs() < f64::INFINITY);
        }
        let mut present = 0usize;
        if finite == src.len() && src.len() == end - skip {
            hist_n[skip..end].fill(1.0);
            present = src.len();
        } else {
            for ((v, n), x) in hist[skip..end]
                .iter_mut()
                .zip(hist_n[skip..end].iter_mut())
                .zip(src)
            {
                let ok = x.abs() < f64::INFINITY;
                *v = if ok { *x } else { 0.0 };
                *n = if ok { 1.0 } else { 0.0 };
                present += usize::from(ok);
            }
        }
        // Whether no value of `hist` is missing but the last `w` (slots of `day` itself, never present): then
        // the windows' counts are known without summing.
        let hist_full = skip == 0 && end + w == hist_len && present == end;
        /// Mean of the values, or `None` if there are none (summed in order, as `Iterator::sum`).
        fn mean(vals: impl Iterator<Item = f64>) -> Option<f64> {
            let (mut sum, mut n) = (-0.0, 0usize);
            for v in vals {
                sum += v;
                n += 1;
            }
            (n > 0).then(|| sum / n as f64)
        }
        let profile_mean = mean(profile.iter().copied().filter(|v| v.is_finite())).unwrap_or(0.0);
        let prof = |s: usize| {
            profile
                .get(s)
                .copied()
                .filter(|v| v.is_finite())
                .unwrap_or(profile_mean)
        };

        // Day-level values.
        let wd = calendar::weekday(day);
        let doy = calendar::day_of_year(day) as f64;
        let is_hol = self.country.is_some_and(|c| calendar::is_holiday(c, day));
        let is_eve = calendar::is_special_eve(day);
        let off_today = self.is_offday(day);
        let off_prev = self.is_offday(day - 1);
        let off_lag7 = self.is_offday(day - 7);
        let mut same_type = [0usize; 14];
        let mut n_same = 0;
        for k in 1..=14 {
            if self.is_offday(day - k as i64) == off_today {
                same_type[n_same] = k;
                n_same += 1;
            }
        }
        let same_type = &same_type[..n_same];
        // The present values of slots `slots` of `k` days back (`k` in 1..=WINDOW_DAYS), in slot order: the
        // values `at(k, s)` gives for `s` in `slots`.
        let present_values = |k: usize, slots: std::ops::Range<usize>| {
            let a = at_index(k, 0) as usize;
            let r = a + slots.start..a + slots.end;
            hist[r.clone()]
                .iter()
                .zip(&hist_n[r])
                .filter(|(_, n)| **n > 0.0)
                .map(|(v, _)| *v)
        };
        let prev_values = || present_values(1, 0..spd);
        let (prev_mean, prev_max, prev_min) = match mean(prev_values()) {
            None => (profile_mean, profile_mean, profile_mean),
            Some(m) => (
                m,
                prev_values().fold(f64::MIN, f64::max),
                prev_values().fold(f64::MAX, f64::min),
            ),
        };
        let prev_last = prev_values().next_back().unwrap_or(prev_mean);
        let last4h = (spd / 6).max(1);
        let prev_last4h = {
            let (c, half) = ((spd - 1 - last4h / 2) as isize, (last4h / 2) as isize);
            let (mut sum, mut n) = (0.0, 0usize);
            for v in (c - half..=c + half).filter_map(|s| at(1, s)) {
                sum += v;
                n += 1;
            }
            if n > 0 { sum / n as f64 } else { prev_mean }
        };
        let prev8_mean = mean(present_values(8, 0..spd)).unwrap_or(prev_mean);
        // Day-over-day absolute changes over the last week: a volatility scale for the intervals.
        let day_stride = spd + 2 * vw;
        let mut changes = 0usize;
        for k in 1..=7 {
            let a = at_index(k, 0) as usize;
            let b = at_index(k + 1, 0) as usize;
            let o = (k - 1) * day_stride;
            let (c, cn) = (
                &mut change[o..o + day_stride],
                &mut change_n[o..o + day_stride],
            );
            // The margins are missing.
            for a in [&mut *c, &mut *cn] {
                a[..vw].fill(0.0);
                a[vw + spd..].fill(0.0);
            }
            let (c, cn) = (&mut c[vw..vw + spd], &mut cn[vw..vw + spd]);
            let (va, vb) = (&hist[a..a + spd], &hist[b..b + spd]);
            let (na, nb) = (&hist_n[a..a + spd], &hist_n[b..b + spd]);
            for s in 0..spd {
                let d = (va[s] - vb[s]).abs();
                // Not finite if the difference overflows: the reference skips it. (`&`, not `&&`: no branches.)
                let ok = (na[s] * nb[s] > 0.0) & (d < f64::INFINITY);
                c[s] = if ok { d } else { 0.0 };
                cn[s] = if ok { 1.0 } else { 0.0 };
                changes += usize::from(ok);
            }
        }
        let changes_full = changes == 7 * spd;
        let vol_day = mean(
            change
                .chunks_exact(day_stride)
                .zip(change_n.chunks_exact(day_stride))
                .flat_map(|(v, n)| v[vw..vw + spd].iter().zip(&n[vw..vw + spd]))
                .filter(|(_, n)| **n > 0.0)
                .map(|(v, _)| *v),
        )
        .unwrap_or(0.0);
        // Per-slot window sums, in the reference's order: days, then offsets within the window.
        let windows: [(&[usize], usize); SUMS - 1] = [
            (&[1, 2, 3, 4, 5, 6, 7], 0),
            (&[1], w),
            (&[7], w),
            (&[1, 2, 3, 4, 5, 6, 7], w),
            (&[7, 14, 21, 28], w),
            (same_type, w),
        ];
        // Adds to `sum` the window sums of `v` over `days` (at most 14) with half-width `half`.
        let add_days = |v: &[f64], days: &[usize], half: usize, sum: &mut [f64]| {
            let mut starts = [0usize; 14];
            for (st, &k) in starts.iter_mut().zip(days) {
                *st = at_index(k, 0) as usize - half;
            }
            window_sums(v, &starts[..days.len().min(14)], 2 * half + 1, sum);
        };
        for ((days, half), (_, n)) in windows.iter().zip(sums.iter_mut()) {
            if hist_full {
                // Only day 1's slots past the day's end are missing.
                let with_day1 = days.contains(&1);
                for (s, n) in n.iter_mut().enumerate() {
                    let cut = if with_day1 {
                        (s + half + 1).saturating_sub(spd)
                    } else {
                        0
                    };
                    *n = (days.len() * (2 * half + 1) - cut) as f64;
                }
            } else {
                n.fill(0.0);
                add_days(hist_n, days, *half, n);
            }
        }
        // The sums are taken day by day, so a window whose days start with another's continues from that
        // one's sums: `mean7_smooth` from `lag1_smooth`, `mean_same_weekday4` from `lag7_smooth`, and
        // `mean_same_daytype14` shares the days `1..=p` it starts with with `mean7_smooth`.
        const WEEK: [usize; 7] = [1, 2, 3, 4, 5, 6, 7];
        let p = same_type
            .iter()
            .zip(WEEK)
            .take_while(|(k, d)| **k == *d)
            .count();
        let [
            (mean7, _),
            (lag1_smooth, _),
            (lag7_smooth, _),
            (mean7_smooth, _),
            (weekday4, _),
            (daytype14, _),
            (vol7, vol7_n),
        ] = &mut sums;
        mean7.fill(0.0);
        add_days(hist, &WEEK, 0, mean7);
        lag1_smooth.fill(0.0);
        add_days(hist, &[1], w, lag1_smooth);
        lag7_smooth.fill(0.0);
        add_days(hist, &[7], w, lag7_smooth);
        weekday4.copy_from_slice(lag7_smooth);
        add_days(hist, &[14, 21, 28], w, weekday4);
        if p >= 1 {
            daytype14.copy_from_slice(lag1_smooth);
            add_days(hist, &WEEK[1..p], w, daytype14);
            mean7_smooth.copy_from_slice(daytype14);
            add_days(hist, &WEEK[p..], w, mean7_smooth);
            add_days(hist, &same_type[p..], w, daytype14);
        } else {
            mean7_smooth.copy_from_slice(lag1_smooth);
            add_days(hist, &WEEK[1..], w, mean7_smooth);
            daytype14.fill(0.0);
            add_days(hist, same_type, w, daytype14);
        }
        {
            let mut starts = [0usize; 7];
            for (k, st) in starts.iter_mut().enumerate() {
                *st = k * day_stride;
            }
            vol7.fill(0.0);
            window_sums(change, &starts, 2 * vw + 1, vol7);
            if changes_full {
                // Each day's changes at slots `s - vw..=s + vw` within the day.
                for (s, n) in vol7_n.iter_mut().enumerate() {
                    *n = (7 * ((s + vw).min(spd - 1) + 1 - s.saturating_sub(vw))) as f64;
                }
            } else {
                vol7_n.fill(0.0);
                window_sums(change_n, &starts, 2 * vw + 1, vol7_n);
            }
        }
        max14.fill(f64::NEG_INFINITY);
        max14_n.fill(if hist_full { 14.0 } else { 0.0 });
        for k in (1..=14).filter(|_| hist_full) {
            let base = at_index(k, 0) as usize;
            for (m, v) in max14.iter_mut().zip(&hist[base..base + spd]) {
                *m = m.max(*v);
            }
        }
        for k in (1..=14).filter(|_| !hist_full) {
            let base = at_index(k, 0) as usize;
            let (v, c) = (&hist[base..base + spd], &hist_n[base..base + spd]);
            for (((m, n), v), c) in max14.iter_mut().zip(max14_n.iter_mut()).zip(v).zip(c) {
                // `max(-inf)` leaves `m` as it is: no branch.
                *m = m.max(if *c > 0.0 { *v } else { f64::NEG_INFINITY });
                *n += c;
            }
        }
        let block = spd.div_ceil(PREV_DAY_BLOCKS).max(1);
        let mut blocks = [0.0; PREV_DAY_BLOCKS];
        for (b, v) in blocks.iter_mut().enumerate() {
            let lo = (b * spd / PREV_DAY_BLOCKS).min(spd - 1);
            *v = mean(present_values(1, lo..(lo + block).min(spd))).unwrap_or(prev_mean);
        }
        // Clear-sky index of the previous day and week, for PV.
        let (prev_index, week_index) = self.clear_sky_indices(day, &at);
        let ya = 2.0 * std::f64::consts::PI * doy / 365.25;
        let (ya_sin, ya_cos) = (ya.sin(), ya.cos());

        let tod_table = TOD_TABLES
            .iter()
            .find(|(n, _)| *n == spd)
            .map(|(_, t)| t.get_or_init(|| (0..spd).map(|s| tod_features(s, spd)).collect()));
        let window_mean = |i: usize, s: usize| {
            let (sum, n) = (&sums[i].0, &sums[i].1);
            (n[s] > 0.0).then(|| sum[s] / n[s])
        };
        // The values every row of the day shares, in column order.
        let day_values: [f64; 16] = [
            f64::from(wd),
            f64::from(u8::from(wd >= 5)),
            f64::from(u8::from(is_hol)),
            f64::from(u8::from(is_eve)),
            f64::from(u8::from(off_today)),
            f64::from(u8::from(off_prev)),
            f64::from(u8::from(off_lag7)),
            ya_sin,
            ya_cos,
            f64::from(u8::from(wd == 0)),
            f64::from(u8::from(wd == 1)),
            f64::from(u8::from(wd == 2)),
            f64::from(u8::from(wd == 3)),
            f64::from(u8::from(wd == 4)),
            f64::from(u8::from(wd == 5)),
            f64::from(u8::from(wd == 6)),
        ];
        // The lag days' values and presence counts.
        let lag_days: [(&[f64], &[f64]); 5] = LAGS.map(|k| {
            let a = at_index(k, 0) as usize;
            (&hist[a..a + spd], &hist_n[a..a + spd])
        });
        // Whole blocks of each row are copied, rather than written value by value.
        for (s, row) in rows.chunks_exact_mut(nf).enumerate() {
            let (tod, row) = row.split_at_mut(7);
            tod.copy_from_slice(&tod_table.map_or_else(|| tod_features(s, spd), |t| t[s]));
            let (day_part, row) = row.split_at_mut(day_values.len());
            day_part.copy_from_slice(&day_values);
            let fallback = window_mean(0, s).unwrap_or_else(|| prof(s));
            let lags: [Option<f64>; 5] = std::array::from_fn(|i| {
                let (v, n) = lag_days[i];
                (n[s] > 0.0).then_some(v[s])
            });
            let lag1 = lags[0].unwrap_or(fallback);
            let lag7 = lags[3].unwrap_or(fallback);
            let slot_values: [f64; 25] = [
                lag1,
                lags[1].unwrap_or(fallback),
                lags[2].unwrap_or(fallback),
                lag7,
                lags[4].unwrap_or(fallback),
                f64::from(u8::from(lags[0].is_none())),
                f64::from(u8::from(lags[1].is_none())),
                f64::from(u8::from(lags[2].is_none())),
                f64::from(u8::from(lags[3].is_none())),
                f64::from(u8::from(lags[4].is_none())),
                window_mean(1, s).unwrap_or(lag1),
                window_mean(2, s).unwrap_or(lag7),
                fallback,
                window_mean(3, s).unwrap_or(fallback),
                window_mean(4, s).unwrap_or(fallback),
                window_mean(5, s).unwrap_or(fallback),
                if max14_n[s] > 0.0 { max14[s] } else { fallback },
                prev_mean,
                prev_max,
                prev_min,
                prev_last,
                prev_last4h,
                prev8_mean,
                window_mean(6, s).unwrap_or(vol_day),
                vol_day,
            ];
            let (slot_part, row) = row.split_at_mut(slot_values.len());
            slot_part.copy_from_slice(&slot_values);
            let row = if self.has_solar() {
                let cs = self.clear_sky_at(day, s);
                let (solar, row) = row.split_at_mut(3);
                solar.copy_from_slice(&[cs, cs * prev_index, cs * week_index]);
                row
            } else {
                row
            };
            row.copy_from_slice(&blocks);
        }
        &buf[..spd * nf]
    }

    /// The straightforward implementation [`FeatureConfig::day_features`] must agree with (to reassociation).
    ///
    /// `history` is the series strictly before `day`, with a whole number of days; `profile` holds one
    /// fallback value per slot (e.g. the training mean of that time of day) for imputing gaps.
    /// Clear-sky GHI at the middle of slot `s` of UTC day `day` (days since the epoch); 0 without a
    /// location.
    fn clear_sky_at(&self, day: i64, s: usize) -> f64 {
        let step = self.step_seconds;
        self.location.map_or(0.0, |loc| {
            solar::clear_sky_ghi(loc, day * 86_400 + s as i64 * step + step / 2)
        })
    }

    /// The clear-sky index (measured energy over clear-sky energy) of the previous day and of the
    /// previous week, for PV; `(0, 0)` without a location. `at(k, s)` is slot `s` of `k` days
    /// before `day`.
    fn clear_sky_indices(&self, day: i64, at: &impl Fn(usize, isize) -> Option<f64>) -> (f64, f64) {
        if !self.has_solar() {
            return (0.0, 0.0);
        }
        let spd = self.slots_per_day;
        let index_over = |days: std::ops::RangeInclusive<usize>| -> f64 {
            let (mut e, mut c) = (0.0, 0.0);
            for k in days {
                for s in 0..spd {
                    if let Some(v) = at(k, s as isize) {
                        e += v;
                        c += self.clear_sky_at(day - k as i64, s);
                    }
                }
            }
            if c > 0.0 { e / c } else { 0.0 }
        };
        (index_over(1..=1), index_over(1..=7))
    }

    #[cfg(test)]
    pub(crate) fn day_features_reference(
        &self,
        history: &[f64],
        day: i64,
        profile: &[f64],
        out: &mut Vec<f64>,
    ) {
        let spd = self.slots_per_day;
        let nf = self.n_features();
        let h = history.len();
        debug_assert_eq!(h % spd, 0, "history must hold whole days");
        out.clear();
        out.resize(spd * nf, 0.0);
        let w = self.smooth_halfwidth() as isize;
        // Value at slot `s` (may be outside 0..spd) of `k` days back; None if absent, missing or not before `day`.
        let at = |k: usize, s: isize| -> Option<f64> {
            let j = h as isize - (k * spd) as isize + s;
            if j < 0 || j >= h as isize {
                return None;
            }
            let v = history[j as usize];
            v.is_finite().then_some(v)
        };
        let mean_over =
            |days: &mut dyn Iterator<Item = usize>, s: isize, half: isize| -> Option<f64> {
                let (mut sum, mut n) = (0.0, 0usize);
                for k in days {
                    for ds in -half..=half {
                        if let Some(v) = at(k, s + ds) {
                            sum += v;
                            n += 1;
                        }
                    }
                }
                (n > 0).then(|| sum / n as f64)
            };
        let profile_mean = {
            let p: Vec<f64> = profile.iter().copied().filter(|v| v.is_finite()).collect();
            if p.is_empty() {
                0.0
            } else {
                p.iter().sum::<f64>() / p.len() as f64
            }
        };
        let prof = |s: usize| {
            profile
                .get(s)
                .copied()
                .filter(|v| v.is_finite())
                .unwrap_or(profile_mean)
        };

        // Day-level values.
        let wd = calendar::weekday(day);
        let doy = calendar::day_of_year(day) as f64;
        let is_hol = self.country.is_some_and(|c| calendar::is_holiday(c, day));
        let is_eve = calendar::is_special_eve(day);
        let off_today = self.is_offday(day);
        let off_prev = self.is_offday(day - 1);
        let off_lag7 = self.is_offday(day - 7);
        let same_type: Vec<usize> = (1..=14)
            .filter(|&k| self.is_offday(day - k as i64) == off_today)
            .collect();
        let prev: Vec<f64> = (0..spd).filter_map(|s| at(1, s as isize)).collect();
        let (prev_mean, prev_max, prev_min) = if prev.is_empty() {
            (profile_mean, profile_mean, profile_mean)
        } else {
            (
                prev.iter().sum::<f64>() / prev.len() as f64,
                prev.iter().copied().fold(f64::MIN, f64::max),
                prev.iter().copied().fold(f64::MAX, f64::min),
            )
        };
        let prev_last = (0..spd)
            .rev()
            .find_map(|s| at(1, s as isize))
            .unwrap_or(prev_mean);
        let last4h = (spd / 6).max(1);
        let prev_last4h = mean_over(
            &mut std::iter::once(1),
            (spd - 1 - last4h / 2) as isize,
            (last4h / 2) as isize,
        )
        .unwrap_or(prev_mean);
        let prev8: Vec<f64> = (0..spd).filter_map(|s| at(8, s as isize)).collect();
        let prev8_mean = if prev8.is_empty() {
            prev_mean
        } else {
            prev8.iter().sum::<f64>() / prev8.len() as f64
        };
        // Day-over-day absolute changes over the last week: a volatility scale for the intervals.
        let absdiff: Vec<f64> = (1..=7)
            .flat_map(|k| (0..spd).map(move |s| (k, s)))
            .map(|(k, s)| match (at(k, s as isize), at(k + 1, s as isize)) {
                (Some(a), Some(b)) => (a - b).abs(),
                _ => f64::NAN,
            })
            .collect();
        let vol_day = {
            let v: Vec<f64> = absdiff.iter().copied().filter(|v| v.is_finite()).collect();
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let vw = (spd / 12).max(1) as isize;
        let block = spd.div_ceil(PREV_DAY_BLOCKS).max(1);
        let blocks: Vec<f64> = (0..PREV_DAY_BLOCKS)
            .map(|b| {
                let lo = (b * spd / PREV_DAY_BLOCKS).min(spd - 1);
                let vals: Vec<f64> = (lo..(lo + block).min(spd))
                    .filter_map(|s| at(1, s as isize))
                    .collect();
                if vals.is_empty() {
                    prev_mean
                } else {
                    vals.iter().sum::<f64>() / vals.len() as f64
                }
            })
            .collect();
        // Clear-sky index of the previous day and week, for PV.
        let (prev_index, week_index) = self.clear_sky_indices(day, &at);

        for s in 0..spd {
            let row = &mut out[s * nf..(s + 1) * nf];
            let si = s as isize;
            let mut c = 0;
            let mut put = |v: f64| {
                row[c] = v;
                c += 1;
            };
            let tod = s as f64 / spd as f64;
            let a = 2.0 * std::f64::consts::PI * tod;
            put(tod);
            put(a.sin());
            put(a.cos());
            put((2.0 * a).sin());
            put((2.0 * a).cos());
            put((3.0 * a).sin());
            put((3.0 * a).cos());
            put(f64::from(wd));
            put(f64::from(u8::from(wd >= 5)));
            put(f64::from(u8::from(is_hol)));
            put(f64::from(u8::from(is_eve)));
            put(f64::from(u8::from(off_today)));
            put(f64::from(u8::from(off_prev)));
            put(f64::from(u8::from(off_lag7)));
            let ya = 2.0 * std::f64::consts::PI * doy / 365.25;
            put(ya.sin());
            put(ya.cos());
            for d in 0..7 {
                put(f64::from(u8::from(wd == d)));
            }
            let mean7 = mean_over(&mut (1..=7), si, 0);
            let fallback = mean7.unwrap_or_else(|| prof(s));
            let lags: [Option<f64>; 5] = LAGS.map(|k| at(k, si));
            for l in lags {
                put(l.unwrap_or(fallback));
            }
            for l in lags {
                put(f64::from(u8::from(l.is_none())));
            }
            let lag1 = lags[0].unwrap_or(fallback);
            let lag7 = lags[3].unwrap_or(fallback);
            put(mean_over(&mut std::iter::once(1), si, w).unwrap_or(lag1));
            put(mean_over(&mut std::iter::once(7), si, w).unwrap_or(lag7));
            put(fallback);
            put(mean_over(&mut (1..=7), si, w).unwrap_or(fallback));
            put(mean_over(&mut [7usize, 14, 21, 28].into_iter(), si, w).unwrap_or(fallback));
            put(mean_over(&mut same_type.iter().copied(), si, w).unwrap_or(fallback));
            let max14 = (1..=14).filter_map(|k| at(k, si)).reduce(f64::max);
            put(max14.unwrap_or(fallback));
            put(prev_mean);
            put(prev_max);
            put(prev_min);
            put(prev_last);
            put(prev_last4h);
            put(prev8_mean);
            let (mut vs, mut vn) = (0.0, 0usize);
            for k in 0..7 {
                for ds in -vw..=vw {
                    let t = si + ds;
                    if t >= 0 && (t as usize) < spd {
                        let v = absdiff[k * spd + t as usize];
                        if v.is_finite() {
                            vs += v;
                            vn += 1;
                        }
                    }
                }
            }
            put(if vn > 0 { vs / vn as f64 } else { vol_day });
            put(vol_day);
            if self.has_solar() {
                let cs = self.clear_sky_at(day, s);
                put(cs);
                put(cs * prev_index);
                put(cs * week_index);
            }
            for b in &blocks {
                put(*b);
            }
            debug_assert_eq!(c, nf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(spd: usize) -> FeatureConfig {
        FeatureConfig {
            slots_per_day: spd,
            step_seconds: 86_400 / spd as i64,
            kind: SeriesKind::Load,
            country: Some(Country::De),
            location: Some(Location {
                latitude_deg: 50.0,
                longitude_deg: 10.0,
            }),
        }
    }

    #[test]
    fn names_match_count_and_lags_read_the_right_days() {
        let c = cfg(24);
        assert_eq!(c.names().len(), c.n_features());
        let names = c.names();
        let col = |n: &str| names.iter().position(|x| x == n).unwrap();
        // history: 20 days, day k back has value 1000 + k at every slot.
        let hist: Vec<f64> = (0..20)
            .flat_map(|d| vec![1000.0 + (20 - d) as f64; 24])
            .collect();
        let mut out = Vec::new();
        c.day_features(&hist, 16_000, &[0.0; 24], &mut out);
        let nf = c.n_features();
        for s in 0..24 {
            let r = &out[s * nf..(s + 1) * nf];
            assert_eq!(r[col("lag1")], 1001.0);
            assert_eq!(r[col("lag7")], 1007.0);
            assert_eq!(r[col("lag14")], 1014.0);
            assert_eq!(r[col("lag1_missing")], 0.0);
            assert_eq!(r[col("prev_max")], 1001.0);
            assert_eq!(r[col("max14")], 1014.0);
        }
    }

    #[test]
    fn gaps_are_imputed_and_flagged() {
        let c = cfg(24);
        let names = c.names();
        let col = |n: &str| names.iter().position(|x| x == n).unwrap();
        let mut hist = vec![5.0; 24 * 3];
        hist[24 * 2 + 3] = f64::NAN; // day D-1, slot 3
        let mut out = Vec::new();
        c.day_features(&hist, 16_000, &[7.0; 24], &mut out);
        let r = &out[3 * c.n_features()..4 * c.n_features()];
        assert_eq!(r[col("lag1_missing")], 1.0);
        assert_eq!(r[col("lag1")], 5.0); // mean of the same slot over the week
        assert_eq!(r[col("lag7_missing")], 1.0);
        assert!(out.iter().all(|v| v.is_finite()));
        // No history at all: everything falls back to the profile.
        c.day_features(&[], 16_000, &[7.0; 24], &mut out);
        assert!(out.iter().all(|v| v.is_finite()));
        assert_eq!(out[col("lag1")], 7.0);
    }

    #[test]
    fn fast_features_equal_the_reference_implementation() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut fast, mut slow) = (Vec::new(), Vec::new());
        for spd in [24, 96] {
            for (country, location) in [(None, None), (Some(Country::De), cfg(spd).location)] {
                let c = FeatureConfig {
                    country,
                    location,
                    ..cfg(spd)
                };
                // Without gaps in 29 days or more, the window counts are not summed (a separate path).
                for (days, gaps) in [
                    (0usize, true),
                    (1, true),
                    (3, true),
                    (9, true),
                    (20, true),
                    (40, true),
                    (29, false),
                    (40, false),
                ] {
                    let mut hist: Vec<f64> = (0..days * spd)
                        .map(|i| 1.0 + ((i % spd) as f64 / 7.0).sin() + rand())
                        .collect();
                    // Gaps: single values and a whole day.
                    for (i, v) in hist.iter_mut().enumerate() {
                        if gaps && (rand() < 0.05 || (days > 5 && i / spd == days - 3)) {
                            *v = f64::NAN;
                        }
                    }
                    let profile: Vec<f64> = (0..spd)
                        .map(|s| if s == 3 { f64::NAN } else { rand() })
                        .collect();
                    for day in [16_000, 16_001, 16_795, 16_799] {
                        c.day_features(&hist, day, &profile, &mut fast);
                        c.day_features_reference(&hist, day, &profile, &mut slow);
                        assert_eq!(fast.len(), slow.len());
                        for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                            // Bit for bit: training reads these features too, and a model trained on slightly
                            // different values can split differently.
                            assert!(
                                a.to_bits() == b.to_bits(),
                                "spd {spd}, {days} days (gaps: {gaps}), day {day}, column {}: {a} != {b}",
                                c.names()[i % c.n_features()]
                            );
                        }
                    }
                }
            }
        }
    }
}
