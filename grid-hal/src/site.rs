//! A simulated site around a battery: household load and rooftop PV, deterministic (seeded), so a
//! grid meter can be simulated where there is none (the agent's self-consumption fallback with the
//! `sim` driver, tests, the fleet demo).
//!
//! The grid connection point reads `import = load − pv + battery` (kW; import positive, battery
//! positive = charging): what a meter at the site's connection to the grid measures when the
//! battery sits behind it.
//!
//! Load and PV are pure functions of the instant and the seed, so readings do not depend on how
//! often or in which order they are taken:
//! * **Load**: a base load, a morning bump (07:30, σ = 1 h) and an evening bump (19:00, σ = 1.5 h),
//!   plus zero-mean noise drawn once per minute, never below zero.
//! * **PV**: `pv_peak · sin(π · (h − 6) / 12)` between 06:00 and 18:00, times a cloud factor
//!   `1 − cloudiness · u` drawn once per 10 minutes (`u` uniform in `[0, 1)`).
//!
//! Hours are UTC hours of day (a simulated site lives in UTC).
//!
//! ```
//! use grid_core::{Power, Timestamp};
//! use grid_hal::site::{SimSite, SiteConfig};
//! let site = SimSite::new(SiteConfig { seed: 7, ..SiteConfig::default() })?;
//! let night: Timestamp = "2026-11-27T02:00:00Z".parse()?;
//! assert_eq!(site.pv(night), Power::ZERO);
//! // At night the house imports its load; a battery discharging by that much zeroes the meter.
//! let load = site.load(night);
//! assert!(load.kw() > 0.0);
//! let import = site.grid_import(night, Power::from_kw(-load.kw())?);
//! assert!(import.kw().abs() < 1e-12);
//! // Same seed, same instant, same numbers.
//! assert_eq!(SimSite::new(SiteConfig { seed: 7, ..SiteConfig::default() })?.load(night), load);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{Result, check_range};
use crate::sim::SplitMix64;
use grid_core::{Power, Timestamp};

/// The site's parameters. Powers in kW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiteConfig {
    /// Seed of the load noise and the clouds.
    pub seed: u64,
    /// Load that is always there (fridge, standby), kW ≥ 0.
    pub base_load_kw: f64,
    /// Height of the morning bump at 07:30, kW ≥ 0.
    pub morning_peak_kw: f64,
    /// Height of the evening bump at 19:00, kW ≥ 0.
    pub evening_peak_kw: f64,
    /// Standard deviation of the per-minute load noise, kW ≥ 0.
    pub load_noise_kw: f64,
    /// PV output at solar noon under a clear sky, kW ≥ 0 (0 = no PV).
    pub pv_peak_kw: f64,
    /// How much clouds can take away from the PV output, in `[0, 1]`.
    pub cloudiness: f64,
}

impl Default for SiteConfig {
    /// A household of about 10 kWh a day with a 4 kWp roof, seed 0.
    fn default() -> Self {
        Self {
            seed: 0,
            base_load_kw: 0.3,
            morning_peak_kw: 0.8,
            evening_peak_kw: 1.5,
            load_noise_kw: 0.1,
            pv_peak_kw: 4.0,
            cloudiness: 0.3,
        }
    }
}

/// A simulated site (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct SimSite {
    config: SiteConfig,
}

const MAX_KW: f64 = 1e6;

impl SimSite {
    /// A site with `config`; every power must be finite and ≥ 0, `cloudiness` in `[0, 1]`.
    pub fn new(config: SiteConfig) -> Result<Self> {
        check_range(
            "site.base_load_kw",
            config.base_load_kw,
            0.0,
            MAX_KW,
            ">= 0 kW",
        )?;
        check_range(
            "site.morning_peak_kw",
            config.morning_peak_kw,
            0.0,
            MAX_KW,
            ">= 0 kW",
        )?;
        check_range(
            "site.evening_peak_kw",
            config.evening_peak_kw,
            0.0,
            MAX_KW,
            ">= 0 kW",
        )?;
        check_range(
            "site.load_noise_kw",
            config.load_noise_kw,
            0.0,
            MAX_KW,
            ">= 0 kW",
        )?;
        check_range("site.pv_peak_kw", config.pv_peak_kw, 0.0, MAX_KW, ">= 0 kW")?;
        check_range("site.cloudiness", config.cloudiness, 0.0, 1.0, "in [0, 1]")?;
        Ok(Self { config })
    }

    /// The parameters.
    pub fn config(&self) -> &SiteConfig {
        &self.config
    }

    /// A generator for (`stream`, `index`): the same inputs always give the same numbers.
    fn dice(&self, stream: u64, index: i64) -> SplitMix64 {
        let mut g = SplitMix64::new(
            self.config.seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (index as u64),
        );
        // Decorrelate neighbouring indices.
        g.next_u64();
        g
    }

    /// The household load at `at` (kW ≥ 0).
    pub fn load(&self, at: Timestamp) -> Power {
        let c = &self.config;
        let h = hour_of_day(at);
        let bump = |centre: f64, sigma: f64| {
            let d = (h - centre).abs().min(24.0 - (h - centre).abs());
            (-0.5 * (d / sigma).powi(2)).exp()
        };
        let noise = self.dice(1, at.as_second().div_euclid(60)).next_normal() * c.load_noise_kw;
        let kw = c.base_load_kw
            + c.morning_peak_kw * bump(7.5, 1.0)
            + c.evening_peak_kw * bump(19.0, 1.5)
            + noise;
        Power::from_kw(kw.max(0.0)).unwrap_or(Power::ZERO)
    }

    /// The PV production at `at` (kW ≥ 0).
    pub fn pv(&self, at: Timestamp) -> Power {
        let c = &self.config;
        let h = hour_of_day(at);
        if !(6.0..18.0).contains(&h) || c.pv_peak_kw == 0.0 {
            return Power::ZERO;
        }
        let sun = (core::f64::consts::PI * (h - 6.0) / 12.0).sin().max(0.0);
        let clouds = 1.0 - c.cloudiness * self.dice(2, at.as_second().div_euclid(600)).next_f64();
        Power::from_kw(c.pv_peak_kw * sun * clouds).unwrap_or(Power::ZERO)
    }

    /// Load minus PV at `at` (kW; negative = the site has a surplus to export).
    pub fn net_load(&self, at: Timestamp) -> Power {
        Power::from_kw(self.load(at).kw() - self.pv(at).kw()).unwrap_or(Power::ZERO)
    }

    /// What a meter at the grid connection point reads at `at` with the battery at `battery`
    /// (kW, positive = charging): `load − pv + battery`, positive = importing from the grid.
    pub fn grid_import(&self, at: Timestamp, battery: Power) -> Power {
        Power::from_kw(self.net_load(at).kw() + battery.kw()).unwrap_or(Power::ZERO)
    }
}

/// The UTC hour of day of `at` as a fraction, in `[0, 24)`.
fn hour_of_day(at: Timestamp) -> f64 {
    let ms = at.as_millisecond().rem_euclid(86_400_000);
    ms as f64 / 3_600_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn pv_follows_the_sun_and_the_load_has_its_evening_peak() {
        let site = SimSite::new(SiteConfig {
            cloudiness: 0.0,
            load_noise_kw: 0.0,
            ..SiteConfig::default()
        })
        .unwrap();
        assert_eq!(site.pv(at("2026-11-27T05:59:00Z")), Power::ZERO);
        assert!((site.pv(at("2026-11-27T12:00:00Z")).kw() - 4.0).abs() < 1e-9);
        assert_eq!(site.pv(at("2026-11-27T18:00:00Z")), Power::ZERO);
        let evening = site.load(at("2026-11-27T19:00:00Z")).kw();
        let night = site.load(at("2026-11-27T03:00:00Z")).kw();
        assert!((evening - (0.3 + 1.5)).abs() < 0.01, "{evening}");
        assert!((night - 0.3).abs() < 0.01, "{night}");
        // Noon: a surplus; evening: a deficit.
        assert!(site.net_load(at("2026-11-27T12:00:00Z")).kw() < -2.0);
        assert!(site.net_load(at("2026-11-27T19:00:00Z")).kw() > 1.0);
    }

    #[test]
    fn readings_are_seeded_and_independent_of_call_order() {
        let a = SimSite::new(SiteConfig::default()).unwrap();
        let b = SimSite::new(SiteConfig::default()).unwrap();
        let c = SimSite::new(SiteConfig {
            seed: 1,
            ..SiteConfig::default()
        })
        .unwrap();
        let times: Vec<Timestamp> = (0..200)
            .map(|i| Timestamp::from_second(1_795_000_000 + i * 431).unwrap())
            .collect();
        let fwd: Vec<_> = times.iter().map(|t| (a.load(*t), a.pv(*t))).collect();
        let back: Vec<_> = times.iter().rev().map(|t| (b.load(*t), b.pv(*t))).collect();
        assert!(fwd.iter().eq(back.iter().rev()));
        assert!(times.iter().any(|t| c.load(*t) != a.load(*t)));
        for t in &times {
            assert!(a.load(*t).kw() >= 0.0 && a.pv(*t).kw() >= 0.0);
            let batt = Power::from_kw(1.25).unwrap();
            let want = a.load(*t).kw() - a.pv(*t).kw() + 1.25;
            assert!((a.grid_import(*t, batt).kw() - want).abs() < 1e-12);
        }
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let e = SimSite::new(SiteConfig {
            cloudiness: 1.5,
            ..SiteConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("site.cloudiness"), "{e}");
        assert!(
            SimSite::new(SiteConfig {
                pv_peak_kw: f64::NAN,
                ..SiteConfig::default()
            })
            .is_err()
        );
    }
}
