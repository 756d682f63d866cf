//! Conversions between grid-core's model and the optimiser: building a [`FleetProblem`] from
//! [`grid_core::Site`]s (with their tariffs, forecasts, batteries) on a [`Horizon`], optionally under a
//! [`grid_core::FeederEnvelope`], and turning a solved [`SiteSolution`] into a [`grid_core::Schedule`].
//!
//! The optimiser prices every site with one shared price series and handles one battery per site; sites whose
//! tariffs give different prices on the horizon, or with several batteries, are rejected with
//! [`Error::Unsupported`] (solve them as separate problems). Battery ramp limits and temperature windows are
//! not part of the model: check the resulting schedule with [`grid_core::Schedule::validate`].
//!
//! ```
//! use grid_core::{
//!     BatterySpec, DemandCharge, DeviceId, Energy, GridConnection, Horizon, PricePerKwh, ScheduleId,
//!     ScheduleVersion, Site, SiteBattery, SiteId, SiteParts, SlotLength, Tariff,
//! };
//! use grid_optimize::{FleetProblem, Solver};
//! use grid_optimize::solver::DefaultSolver;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let horizon = Horizon::new("2026-11-27T00:00:00Z".parse()?, SlotLength::HOUR, 24)?;
//! let spec = BatterySpec::new(grid_core::BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0))?;
//! let site = Site::new(SiteParts {
//!     id: SiteId::new("home-1")?,
//!     grid: GridConnection::new(11.0, 5.0)?,
//!     load: None,
//!     pv: None,
//!     tariff: Tariff::Flat {
//!         import: PricePerKwh::from_per_kwh(0.30)?,
//!         export: PricePerKwh::from_per_kwh(0.08)?,
//!     },
//!     demand_charge: DemandCharge::NONE,
//!     batteries: vec![SiteBattery::new(DeviceId::new("bat-1")?, spec.clone(), Energy::from_kwh(5.0)?, None)?],
//! })?;
//! let problem = FleetProblem::from_sites("day", &horizon, &[site.clone()], None)?;
//! let solution = DefaultSolver::default().solve(&problem)?;
//! let schedule = solution.sites[0].to_schedule(
//!     ScheduleId::new("home-1.day")?,
//!     site.battery().device.clone(),
//!     ScheduleVersion(1),
//!     horizon,
//!     Energy::from_kwh(5.0)?,
//!     horizon.start(),
//! )?;
//! assert_eq!(schedule.setpoints().len(), 24);
//! // The plan respects the battery's envelope as grid-core checks it.
//! assert!(schedule.validate(&spec, Energy::from_kwh(5.0)?).is_ok());
//! # Ok(()) }
//! ```

use grid_core::{
    DeviceId, Energy, FeederEnvelope, Horizon, Power, Schedule, ScheduleId, ScheduleParts,
    ScheduleVersion, Site, SocTrajectory, Timestamp,
};

use crate::error::{Error, Result};
use crate::problem::{BatteryParams, FeederLimit, FleetProblem, SiteProblem};
use crate::solution::SiteSolution;

impl FleetProblem {
    /// Builds the problem for `sites` on `horizon`, under `feeder` if given.
    ///
    /// Load and PV forecasts (zero when absent) and prices are taken on the horizon's slots (a coarser series
    /// is repeated into finer slots). Every site's tariff must give the same prices on the horizon, each site
    /// must have exactly one battery, and a feeder must be on the same horizon and list exactly these sites.
    /// The result is validated ([`FleetProblem::validate`]).
    pub fn from_sites(
        name: impl Into<String>,
        horizon: &Horizon,
        sites: &[Site],
        feeder: Option<&FeederEnvelope>,
    ) -> Result<FleetProblem> {
        let first = sites
            .first()
            .ok_or_else(|| Error::invalid("sites", "at least one site is required"))?;
        let prices = first.tariff().prices_on(horizon)?;
        let import_price: Vec<f64> = prices.import.values().iter().map(|p| p.per_kwh()).collect();
        let export_price: Vec<f64> = prices.export.values().iter().map(|p| p.per_kwh()).collect();
        let t = horizon.len();
        let mut out = Vec::with_capacity(sites.len());
        for (i, site) in sites.iter().enumerate() {
            if i > 0 {
                let p = site.tariff().prices_on(horizon)?;
                let same = |a: &[grid_core::PricePerKwh], b: &[f64]| {
                    a.iter()
                        .zip(b)
                        .all(|(x, y)| (x.per_kwh() - y).abs() <= 1e-12 * (1.0 + y.abs()))
                };
                if !same(p.import.values(), &import_price)
                    || !same(p.export.values(), &export_price)
                {
                    return Err(Error::Unsupported(format!(
                        "sites[{i}] ({}): its tariff gives other prices than sites[0] ({}) on this horizon; \
                         the problem shares one price series, so solve such sites separately",
                        site.id(),
                        first.id()
                    )));
                }
            }
            if site.batteries().len() != 1 {
                return Err(Error::Unsupported(format!(
                    "sites[{i}] ({}): {} batteries; the optimiser handles one battery per site",
                    site.id(),
                    site.batteries().len()
                )));
            }
            let series = |s: Option<&grid_core::SlotSeries<Power>>,
                          field: &'static str|
             -> Result<Vec<f64>> {
                match s {
                    Some(s) => Ok(s
                        .on(field, horizon)?
                        .values()
                        .iter()
                        .map(|p| p.kw())
                        .collect()),
                    None => Ok(vec![0.0; t]),
                }
            };
            let bat = site.battery();
            let spec = &bat.spec;
            out.push(SiteProblem {
                id: site.id().as_str().to_string(),
                load: series(site.load(), "site.load")?,
                pv: series(site.pv(), "site.pv")?,
                grid_import_max: site.grid().import_limit.kw(),
                grid_export_max: site.grid().export_limit.kw(),
                demand_charge: site.demand_charge().value(),
                battery: BatteryParams {
                    e_min: spec.min_energy().kwh(),
                    e_max: spec.max_energy().kwh(),
                    e0: bat.initial_energy.kwh(),
                    e_final_min: bat.min_final_energy.map(|e| e.kwh()),
                    p_ch_max: spec.max_charge().kw(),
                    p_dis_max: spec.max_discharge().kw(),
                    eta_ch: spec.charge_efficiency().fraction(),
                    eta_dis: spec.discharge_efficiency().fraction(),
                    deg_cost: spec.degradation_cost().per_kwh(),
                },
                power_bounds: None,
                wear_quadratic: 0.0,
            });
        }
        let feeder = match feeder {
            None => None,
            Some(f) => {
                if f.horizon() != horizon {
                    return Err(Error::invalid(
                        "feeder.horizon",
                        format!(
                            "the envelope covers {} slots of {} s from {}, the problem {} slots of {} s from {}",
                            f.horizon().len(),
                            f.horizon().slot_length().seconds(),
                            f.horizon().start(),
                            t,
                            horizon.slot_length().seconds(),
                            horizon.start()
                        ),
                    ));
                }
                let listed = f.sites();
                let mismatch =
                    listed.len() != sites.len() || sites.iter().any(|s| !listed.contains(s.id()));
                if mismatch {
                    return Err(Error::invalid(
                        "feeder.sites",
                        format!(
                            "the envelope {} must list exactly the problem's sites",
                            f.id()
                        ),
                    ));
                }
                Some(FeederLimit {
                    import_limit: f.limits().iter().map(|l| l.import.kw()).collect(),
                    export_limit: f.limits().iter().map(|l| l.export.kw()).collect(),
                })
            }
        };
        let problem = FleetProblem {
            name: name.into(),
            dt: horizon.slot_length().hours(),
            import_price,
            export_price,
            sites: out,
            feeder,
            tracking: None,
        };
        problem.validate()?;
        Ok(problem)
    }
}

impl SiteSolution {
    /// This site's plan as a grid-core [`Schedule`]: one setpoint per slot, the net battery power
    /// `charge - discharge` (kW, positive = charging), with the solver's SoC trajectory from `initial` as the
    /// expected trajectory. Valid from `created_at` to the horizon's end.
    pub fn to_schedule(
        &self,
        id: ScheduleId,
        device: DeviceId,
        version: ScheduleVersion,
        horizon: Horizon,
        initial: Energy,
        created_at: Timestamp,
    ) -> Result<Schedule> {
        let t = horizon.len();
        if !self.has_len(t) {
            return Err(Error::invalid(
                "solution",
                format!(
                    "schedule of {} slots for a horizon of {t}",
                    self.charge.len()
                ),
            ));
        }
        let setpoints = (0..t)
            .map(|k| Power::from_kw(self.battery_power(k)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // The solver's trajectory is exact (it also covers simultaneous charge and discharge, which a net
        // setpoint cannot express); rounding below zero is cut off.
        let end_of_slot = self
            .soc_end
            .iter()
            .map(|&e| Energy::from_kwh(e.max(0.0)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Schedule::new(ScheduleParts {
            id,
            device,
            version,
            horizon,
            setpoints,
            expected: SocTrajectory {
                initial,
                end_of_slot,
            },
            created_at,
            expires_at: horizon.end(),
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Solver;
    use crate::solver::{DefaultSolver, Method};
    use grid_core::{
        BatterySpec, DemandCharge, FeederId, GridConnection, PricePerKwh, PriceSeries, SiteBattery,
        SiteId, SiteParts, SlotLength, SlotSeries, Tariff,
    };

    fn horizon() -> Horizon {
        Horizon::new(
            "2026-11-27T00:00:00Z".parse().expect("timestamp"),
            SlotLength::QUARTER_HOUR,
            8,
        )
        .expect("horizon")
    }

    fn site(id: &str, tariff: Tariff, batteries: usize) -> Site {
        let spec = BatterySpec::new(grid_core::BatteryParams::with_soc_window(
            10.0, 0.1, 0.9, 4.0,
        ))
        .expect("spec");
        let hourly = Horizon::new(
            "2026-11-27T00:00:00Z".parse().expect("timestamp"),
            SlotLength::HOUR,
            2,
        )
        .expect("horizon");
        let load = SlotSeries::new(
            "load",
            hourly,
            vec![
                Power::from_kw(1.0).expect("kw"),
                Power::from_kw(3.0).expect("kw"),
            ],
        )
        .expect("series");
        Site::new(SiteParts {
            id: SiteId::new(id).expect("id"),
            grid: GridConnection::new(11.0, 5.0).expect("grid"),
            load: Some(load),
            pv: None,
            tariff,
            demand_charge: DemandCharge::per_kw(0.2).expect("charge"),
            batteries: (0..batteries)
                .map(|b| {
                    SiteBattery::new(
                        DeviceId::new(format!("{id}-bat{b}")).expect("id"),
                        spec.clone(),
                        Energy::from_kwh(5.0).expect("kwh"),
                        Some(Energy::from_kwh(4.0).expect("kwh")),
                    )
                    .expect("battery")
                })
                .collect(),
        })
        .expect("site")
    }

    fn dynamic() -> Tariff {
        let imp: Vec<f64> = (0..8).map(|k| 0.1 + 0.05 * k as f64).collect();
        Tariff::Dynamic(PriceSeries::new(horizon(), &imp, &[0.05; 8]).expect("prices"))
    }

    #[test]
    fn builds_a_problem_from_grid_core_sites() {
        let sites = [site("a", dynamic(), 1), site("b", dynamic(), 1)];
        let p = FleetProblem::from_sites("x", &horizon(), &sites, None).expect("builds");
        assert_eq!(p.slots(), 8);
        assert_eq!(p.dt, 0.25);
        assert_eq!(p.sites[1].id, "b");
        // The hourly load is repeated into quarter hours.
        assert_eq!(p.sites[0].load, [1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]);
        assert_eq!(p.sites[0].pv, [0.0; 8]);
        assert_eq!(p.sites[0].battery.e_min, 1.0);
        assert_eq!(p.sites[0].battery.e_max, 9.0);
        assert_eq!(p.sites[0].battery.e_final_min, Some(4.0));
        assert_eq!(p.sites[0].demand_charge, 0.2);
        assert!((p.import_price[3] - 0.25).abs() < 1e-12);
        let sol = DefaultSolver::default().solve(&p).expect("solves");
        assert!(sol.is_optimal());
        assert!(p.max_violation(&sol) < 1e-9);
    }

    #[test]
    fn rejects_what_the_model_cannot_express() {
        let flat = Tariff::Flat {
            import: PricePerKwh::from_per_kwh(0.3).expect("price"),
            export: PricePerKwh::from_per_kwh(0.0).expect("price"),
        };
        let mixed = [site("a", dynamic(), 1), site("b", flat, 1)];
        assert!(matches!(
            FleetProblem::from_sites("x", &horizon(), &mixed, None),
            Err(Error::Unsupported(_))
        ));
        let two = [site("a", dynamic(), 2)];
        assert!(matches!(
            FleetProblem::from_sites("x", &horizon(), &two, None),
            Err(Error::Unsupported(_))
        ));
        assert!(FleetProblem::from_sites("x", &horizon(), &[], None).is_err());
    }

    #[test]
    fn feeder_envelope_becomes_the_feeder_limit() {
        let sites = [site("a", dynamic(), 1), site("b", dynamic(), 1)];
        let limits = vec![
            grid_core::FeederLimit {
                import: Power::from_kw(3.0).expect("kw"),
                export: Power::from_kw(2.0).expect("kw"),
            };
            8
        ];
        let ids = vec![SiteId::new("b").expect("id"), SiteId::new("a").expect("id")];
        let env = FeederEnvelope::new(
            FeederId::new("f1").expect("id"),
            ids,
            horizon(),
            limits.clone(),
        )
        .expect("envelope");
        let p = FleetProblem::from_sites("x", &horizon(), &sites, Some(&env)).expect("builds");
        let f = p.feeder.as_ref().expect("feeder");
        assert_eq!(f.import_limit, [3.0; 8]);
        assert_eq!(f.export_limit, [2.0; 8]);
        assert_eq!(DefaultSolver::default().method(&p), Method::InteriorPoint);
        let other = FeederEnvelope::new(
            FeederId::new("f2").expect("id"),
            vec![SiteId::new("a").expect("id")],
            horizon(),
            limits,
        )
        .expect("envelope");
        let err = FleetProblem::from_sites("x", &horizon(), &sites, Some(&other))
            .expect_err("site list differs");
        assert_eq!(err.field(), Some("feeder.sites"));
    }

    #[test]
    fn a_solution_becomes_a_valid_schedule() {
        let sites = [site("a", dynamic(), 1)];
        let h = horizon();
        let p = FleetProblem::from_sites("x", &h, &sites, None).expect("builds");
        let sol = DefaultSolver::default().solve(&p).expect("solves");
        let initial = Energy::from_kwh(5.0).expect("kwh");
        let schedule = sol.sites[0]
            .to_schedule(
                ScheduleId::new("s").expect("id"),
                sites[0].battery().device.clone(),
                ScheduleVersion(1),
                h,
                initial,
                h.start(),
            )
            .expect("schedule");
        let trajectory = schedule
            .validate(&sites[0].battery().spec, initial)
            .expect("within the envelope");
        for (a, b) in trajectory
            .end_of_slot
            .iter()
            .zip(&schedule.expected().end_of_slot)
        {
            assert!((a.kwh() - b.kwh()).abs() < 1e-9);
        }
        let short = Horizon::new(h.start(), SlotLength::QUARTER_HOUR, 4).expect("horizon");
        assert!(
            sol.sites[0]
                .to_schedule(
                    ScheduleId::new("s").expect("id"),
                    sites[0].battery().device.clone(),
                    ScheduleVersion(1),
                    short,
                    initial,
                    h.start()
                )
                .is_err()
        );
    }
}
