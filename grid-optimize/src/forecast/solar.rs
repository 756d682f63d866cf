//! Clear-sky sun position and irradiance for the PV features (no weather input needed).
//!
//! The sun position uses the NOAA low-precision formulas (declination and equation of time from the
//! fractional year, accurate to a fraction of a degree); the clear-sky global horizontal irradiance is
//! Haurwitz's model, `GHI = 1098 cos z exp(-0.059 / cos z)` W/m², zero when the sun is below the horizon.

use crate::error::{Error, Result};
use crate::forecast::calendar::{civil_from_days, days_from_civil};
use std::f64::consts::PI;

/// A place on Earth, in degrees (north and east positive).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Location {
    /// Latitude in degrees, -90..=90 (north positive).
    pub latitude_deg: f64,
    /// Longitude in degrees, -180..=180 (east positive).
    pub longitude_deg: f64,
}

impl Location {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `latitude` or `longitude`.
    pub fn new(latitude_deg: f64, longitude_deg: f64) -> Result<Self> {
        if !(-90.0..=90.0).contains(&latitude_deg) {
            return Err(Error::invalid(
                "latitude",
                format!("{latitude_deg} is outside -90..90"),
            ));
        }
        if !(-180.0..=180.0).contains(&longitude_deg) {
            return Err(Error::invalid(
                "longitude",
                format!("{longitude_deg} is outside -180..180"),
            ));
        }
        Ok(Self {
            latitude_deg,
            longitude_deg,
        })
    }
}

/// Cosine of the solar zenith angle at `t` seconds since the epoch (negative when the sun is down).
pub fn cos_zenith(loc: Location, t: i64) -> f64 {
    let day = t.div_euclid(86_400);
    let sec = t.rem_euclid(86_400) as f64;
    let (y, _, _) = civil_from_days(day);
    let doy = (day - days_from_civil(y, 1, 1)) as f64;
    let year_len = if days_from_civil(y + 1, 1, 1) - days_from_civil(y, 1, 1) == 366 {
        366.0
    } else {
        365.0
    };
    let hour = sec / 3600.0;
    let g = 2.0 * PI / year_len * (doy + (hour - 12.0) / 24.0);
    let eqtime = 229.18
        * (0.000_075 + 0.001_868 * g.cos()
            - 0.032_077 * g.sin()
            - 0.014_615 * (2.0 * g).cos()
            - 0.040_849 * (2.0 * g).sin());
    let decl = 0.006_918 - 0.399_912 * g.cos() + 0.070_257 * g.sin() - 0.006_758 * (2.0 * g).cos()
        + 0.000_907 * (2.0 * g).sin()
        - 0.002_697 * (3.0 * g).cos()
        + 0.001_48 * (3.0 * g).sin();
    let true_solar_min = sec / 60.0 + eqtime + 4.0 * loc.longitude_deg;
    let ha = (true_solar_min / 4.0 - 180.0).to_radians();
    let lat = loc.latitude_deg.to_radians();
    lat.sin() * decl.sin() + lat.cos() * decl.cos() * ha.cos()
}

/// Haurwitz clear-sky global horizontal irradiance (W/m²) at `t` seconds since the epoch.
pub fn clear_sky_ghi(loc: Location, t: i64) -> f64 {
    let cz = cos_zenith(loc, t);
    if cz <= 0.0 {
        0.0
    } else {
        1098.0 * cz * (-0.059 / cz).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noon_is_bright_and_midnight_dark() {
        // Golden, Colorado: solar noon around 19:00 UTC.
        let loc = Location::new(39.74, -105.18).unwrap();
        let day = days_from_civil(2012, 6, 21) * 86_400;
        let noon = clear_sky_ghi(loc, day + 19 * 3600);
        assert!(noon > 900.0 && noon < 1100.0, "{noon}");
        assert_eq!(clear_sky_ghi(loc, day + 7 * 3600), 0.0);
        // Summer solstice: zenith ≈ latitude - 23.44°.
        let cz = cos_zenith(loc, day + 19 * 3600 + 5 * 60);
        assert!((cz.acos().to_degrees() - (39.74 - 23.44)).abs() < 1.5);
        assert!(Location::new(91.0, 0.0).is_err());
    }
}
