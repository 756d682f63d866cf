//! Sites (a grid connection with its load, PV, tariff and batteries) and feeder envelopes (a group
//! of sites sharing per-slot limits on their summed net import).

use crate::battery::BatterySpec;
use crate::error::{Error, Result, non_negative};
use crate::ids::{DeviceId, FeederId, SiteId};
use crate::tariff::{DemandCharge, SlotSeries, Tariff};
use crate::time::Horizon;
use crate::units::{Energy, Power};

/// A battery at a site, with its state at the start of planning.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SiteBattery {
    /// The controller driving this battery.
    pub device: DeviceId,
    /// Its envelope.
    pub spec: BatterySpec,
    /// Stored energy at the start of the horizon.
    pub initial_energy: Energy,
    /// Lowest stored energy allowed at the end of the horizon, if any.
    pub min_final_energy: Option<Energy>,
}

impl SiteBattery {
    /// Builds the battery entry, checking that the initial and final energies lie in the window.
    pub fn new(
        device: DeviceId,
        spec: BatterySpec,
        initial_energy: Energy,
        min_final_energy: Option<Energy>,
    ) -> Result<Self> {
        spec.check_energy("battery.initial_energy_kwh", initial_energy)?;
        if let Some(e) = min_final_energy {
            spec.check_energy("battery.min_final_energy_kwh", e)?;
        }
        Ok(Self {
            device,
            spec,
            initial_energy,
            min_final_energy,
        })
    }
}

/// The limits of a site's grid connection, as magnitudes in kW.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GridConnection {
    /// Largest import (power drawn from the grid, positive direction).
    pub import_limit: Power,
    /// Largest export as a magnitude (power fed into the grid).
    pub export_limit: Power,
}

impl GridConnection {
    /// Builds the limits from magnitudes in kW (both ≥ 0).
    pub fn new(import_limit_kw: f64, export_limit_kw: f64) -> Result<Self> {
        Ok(Self {
            import_limit: Power::from_kw(non_negative("grid.import_limit_kw", import_limit_kw)?)?,
            export_limit: Power::from_kw(non_negative("grid.export_limit_kw", export_limit_kw)?)?,
        })
    }
}

/// The plain parts of a [`Site`]; [`Site::new`] checks them.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SiteParts {
    /// Identity.
    pub id: SiteId,
    /// Grid connection limits.
    pub grid: GridConnection,
    /// Expected consumption per slot (kW, ≥ 0), if known.
    pub load: Option<SlotSeries<Power>>,
    /// Expected PV generation per slot (kW as a magnitude, ≥ 0), if any.
    pub pv: Option<SlotSeries<Power>>,
    /// How energy is priced.
    pub tariff: Tariff,
    /// Charge on the horizon's peak import.
    pub demand_charge: DemandCharge,
    /// The site's batteries (the optimiser handles one per site today).
    pub batteries: Vec<SiteBattery>,
}

/// A grid connection point: its limits, load and PV forecasts, tariff and batteries.
///
/// Invariants: load and PV are non-negative and share a horizon; at least one battery; battery
/// devices are distinct.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "SiteParts", into = "SiteParts"))]
pub struct Site {
    parts: SiteParts,
}

impl Site {
    /// Checks the parts and builds the site.
    pub fn new(parts: SiteParts) -> Result<Self> {
        for (field, series) in [("site.load", &parts.load), ("site.pv", &parts.pv)] {
            if let Some(s) = series
                && let Some(bad) = s.values().iter().find(|p| p.kw() < 0.0)
            {
                return Err(Error::OutOfRange {
                    field,
                    value: bad.kw(),
                    expected: ">= 0 kW in every slot",
                });
            }
        }
        if let (Some(l), Some(p)) = (&parts.load, &parts.pv)
            && l.horizon() != p.horizon()
        {
            return Err(Error::Inconsistent {
                field: "site.pv",
                reason: "load and PV must be on the same horizon".into(),
            });
        }
        if parts.batteries.is_empty() {
            return Err(Error::LengthMismatch {
                field: "site.batteries",
                expected: 1,
                actual: 0,
            });
        }
        for (i, b) in parts.batteries.iter().enumerate() {
            if parts.batteries[..i].iter().any(|o| o.device == b.device) {
                return Err(Error::Inconsistent {
                    field: "site.batteries",
                    reason: format!("device {} appears twice", b.device),
                });
            }
        }
        Ok(Self { parts })
    }

    /// Identity.
    pub fn id(&self) -> &SiteId {
        &self.parts.id
    }

    /// Grid connection limits.
    pub fn grid(&self) -> GridConnection {
        self.parts.grid
    }

    /// Expected load, if known.
    pub fn load(&self) -> Option<&SlotSeries<Power>> {
        self.parts.load.as_ref()
    }

    /// Expected PV generation, if any.
    pub fn pv(&self) -> Option<&SlotSeries<Power>> {
        self.parts.pv.as_ref()
    }

    /// The tariff.
    pub fn tariff(&self) -> &Tariff {
        &self.parts.tariff
    }

    /// The demand charge.
    pub fn demand_charge(&self) -> DemandCharge {
        self.parts.demand_charge
    }

    /// The first (today: only) battery.
    pub fn battery(&self) -> &SiteBattery {
        &self.parts.batteries[0]
    }

    /// All batteries.
    pub fn batteries(&self) -> &[SiteBattery] {
        &self.parts.batteries
    }

    /// The parts the site was built from.
    pub fn parts(&self) -> &SiteParts {
        &self.parts
    }
}

impl TryFrom<SiteParts> for Site {
    type Error = Error;
    fn try_from(parts: SiteParts) -> Result<Self> {
        Site::new(parts)
    }
}

impl From<Site> for SiteParts {
    fn from(site: Site) -> Self {
        site.parts
    }
}

/// The limits on a feeder's summed net import in one slot:
/// `-export ≤ Σ_sites (import − export) ≤ import`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FeederLimit {
    /// Upper bound on the summed net import (kW).
    pub import: Power,
    /// Upper bound on the summed net export, as a magnitude (kW).
    pub export: Power,
}

/// A group of sites sharing per-slot limits on their summed net import (the fleet coupling the
/// optimiser honours).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FeederEnvelope {
    id: FeederId,
    sites: Vec<SiteId>,
    horizon: Horizon,
    limits: Vec<FeederLimit>,
}

impl FeederEnvelope {
    /// Builds the envelope; one limit per slot, each a non-empty interval, sites distinct.
    pub fn new(
        id: FeederId,
        sites: Vec<SiteId>,
        horizon: Horizon,
        limits: Vec<FeederLimit>,
    ) -> Result<Self> {
        if limits.len() != horizon.len() {
            return Err(Error::LengthMismatch {
                field: "feeder.limits",
                expected: horizon.len(),
                actual: limits.len(),
            });
        }
        if let Some(bad) = limits.iter().find(|l| l.import.kw() < -l.export.kw()) {
            return Err(Error::OutOfRange {
                field: "feeder.limits",
                value: bad.import.kw(),
                expected: "import limit >= -export limit in every slot",
            });
        }
        for (i, s) in sites.iter().enumerate() {
            if sites[..i].contains(s) {
                return Err(Error::Inconsistent {
                    field: "feeder.sites",
                    reason: format!("site {s} appears twice"),
                });
            }
        }
        Ok(Self {
            id,
            sites,
            horizon,
            limits,
        })
    }

    /// Identity.
    pub fn id(&self) -> &FeederId {
        &self.id
    }

    /// The sites on the feeder.
    pub fn sites(&self) -> &[SiteId] {
        &self.sites
    }

    /// The horizon of the limits.
    pub fn horizon(&self) -> &Horizon {
        &self.horizon
    }

    /// The limits, one per slot.
    pub fn limits(&self) -> &[FeederLimit] {
        &self.limits
    }
}
