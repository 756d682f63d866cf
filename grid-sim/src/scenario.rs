//! The demo's fleet: homes built from the real load, PV, price and battery data shipped in
//! `grid-sim/data`, deterministic for a given seed.

use anyhow::{Context, Result, bail};
use grid_core::{BatteryParams, BatterySpec, DeviceId, Energy, Horizon, SlotLength, Timestamp};
use grid_optimize::{BatteryParams as OptBattery, FeederLimit, FleetProblem, SiteProblem};

const PRICES: &str = include_str!("../data/price_da_de_2015-07-05_2015-07-06_hourly.csv");
const LOADS: &str = include_str!("../data/load_simbench_2016-07-03_2016-07-04_15min.csv");
const PVS: &str = include_str!("../data/pv_simbench_2016-07-03_2016-07-04_15min.csv");
const BATTERIES: &str = include_str!("../data/battery_systems_bslib.csv");

/// Slots in the simulated day (15-minute slots).
pub const SLOTS: usize = 96;
/// Slot length in hours.
pub const DT_HOURS: f64 = 0.25;
/// Grid fees and taxes added to the day-ahead price for imports, EUR/kWh.
pub const IMPORT_FEES_EUR_PER_KWH: f64 = 0.15;

/// One column of a shipped CSV: its name (the part after `__`, or the unit) and its values.
#[derive(Debug, Clone)]
pub struct Column {
    /// Series name.
    pub name: String,
    /// Values, one per row (a gap is carried forward from the previous value).
    pub values: Vec<f64>,
}

/// Parses a CSV in the shared-data layout into named columns, filling gaps from the previous row.
pub fn parse_series(csv: &str) -> Result<(Vec<String>, Vec<Column>)> {
    let mut lines = csv.lines();
    let header = lines.next().context("empty CSV")?;
    let names: Vec<String> = header
        .split(',')
        .skip(1)
        .map(|h| h.split("__").nth(1).unwrap_or(h).to_string())
        .collect();
    let mut stamps = Vec::new();
    let mut cols: Vec<Column> = names
        .iter()
        .map(|n| Column {
            name: n.clone(),
            values: Vec::new(),
        })
        .collect();
    for (row, line) in lines.enumerate() {
        let mut cells = line.split(',');
        stamps.push(cells.next().unwrap_or_default().to_string());
        for col in cols.iter_mut() {
            let cell = cells.next().unwrap_or("").trim();
            let value = if cell.is_empty() {
                *col.values.last().unwrap_or(&0.0)
            } else {
                cell.parse::<f64>()
                    .with_context(|| format!("row {}: bad number {cell:?}", row + 2))?
            };
            col.values.push(value);
        }
    }
    Ok((stamps, cols))
}

/// A home battery system from the bslib table.
#[derive(Debug, Clone)]
pub struct BatterySystem {
    /// Manufacturer and model.
    pub name: String,
    /// Usable energy, kWh.
    pub usable_kwh: f64,
    /// Rated charge power, kW.
    pub charge_kw: f64,
    /// Rated discharge power, kW.
    pub discharge_kw: f64,
    /// Battery round-trip efficiency (fraction).
    pub round_trip: f64,
}

fn battery_systems() -> Result<Vec<BatterySystem>> {
    let mut lines = BATTERIES.lines();
    let header = split_csv(lines.next().context("empty battery table")?);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.starts_with(name))
            .with_context(|| format!("battery table has no column {name}"))
    };
    let (model, e, pin, pout, eta) = (
        col("Model (PE)")?,
        col("E_BAT_usable")?,
        col("P_AC2BAT_in [W]")?,
        col("P_BAT2AC_out [W]")?,
        col("eta_BAT")?,
    );
    let mut out = Vec::new();
    for line in lines {
        let cells = split_csv(line);
        let num = |i: usize| cells.get(i).and_then(|c| c.parse::<f64>().ok());
        if let (Some(e), Some(pin), Some(pout), Some(eta)) = (num(e), num(pin), num(pout), num(eta))
        {
            out.push(BatterySystem {
                name: cells.get(model).cloned().unwrap_or_default(),
                usable_kwh: e,
                charge_kw: pin / 1000.0,
                discharge_kw: pout / 1000.0,
                round_trip: if eta > 1.5 { eta / 100.0 } else { eta },
            });
        }
    }
    if out.is_empty() {
        bail!("battery table has no usable rows");
    }
    Ok(out)
}

/// Splits one CSV line, honouring double quotes.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// A small deterministic generator (SplitMix64) so a seed always gives the same fleet.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A uniform number in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// One home of the demo fleet.
#[derive(Debug, Clone)]
pub struct Home {
    /// The battery controller's id.
    pub device: DeviceId,
    /// The site's id.
    pub site: String,
    /// The battery.
    pub spec: BatterySpec,
    /// Stored energy at the start of the day.
    pub initial_energy: Energy,
    /// Expected and simulated household load per slot, kW.
    pub load_kw: Vec<f64>,
    /// PV generation per slot, kW.
    pub pv_kw: Vec<f64>,
    /// Grid connection limits, kW.
    pub grid_import_max: f64,
    /// Grid export limit, kW (magnitude).
    pub grid_export_max: f64,
    /// Name of the battery system it was modelled on.
    pub system: String,
    /// Seed of its simulated battery.
    pub seed: u64,
}

impl Home {
    /// Net import per slot with the battery doing nothing, kW.
    pub fn base_net_kw(&self) -> Vec<f64> {
        self.load_kw
            .iter()
            .zip(&self.pv_kw)
            .map(|(l, p)| l - p)
            .collect()
    }
}

/// The demo's fleet, prices and feeder envelope for one simulated day.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The simulated day (96 slots of 15 minutes).
    pub horizon: Horizon,
    /// Import price per slot, EUR/kWh (day-ahead price plus fees).
    pub import_price: Vec<f64>,
    /// Export price per slot, EUR/kWh (the day-ahead price).
    pub export_price: Vec<f64>,
    /// The homes.
    pub homes: Vec<Home>,
    /// Feeder limit on the summed net import, kW.
    pub feeder_import_kw: f64,
    /// Feeder limit on the summed net export, kW (magnitude).
    pub feeder_export_kw: f64,
}

impl Scenario {
    /// Builds a fleet of `devices` homes starting at `start` (a UTC midnight), with a feeder
    /// envelope at `feeder_fraction` of the fleet's do-nothing peaks.
    pub fn generate(
        devices: usize,
        seed: u64,
        start: Timestamp,
        feeder_fraction: f64,
    ) -> Result<Self> {
        if devices == 0 {
            bail!("--devices must be at least 1");
        }
        let horizon = Horizon::new(start, SlotLength::QUARTER_HOUR, SLOTS)?;
        let (_, prices) = parse_series(PRICES)?;
        let (_, loads) = parse_series(LOADS)?;
        let (_, pvs) = parse_series(PVS)?;
        let systems = battery_systems()?;
        // The second day of each slice is the demo day (Monday).
        let price_day: Vec<f64> = prices
            .first()
            .context("no price column")?
            .values
            .iter()
            .skip(24)
            .take(24)
            .copied()
            .collect();
        if price_day.len() != 24 {
            bail!("price slice must hold two days of hourly prices");
        }
        let export_price: Vec<f64> = (0..SLOTS).map(|t| price_day[t / 4] / 1000.0).collect();
        let import_price: Vec<f64> = export_price
            .iter()
            .map(|p| p + IMPORT_FEES_EUR_PER_KWH)
            .collect();
        let households: Vec<&Column> = loads.iter().filter(|c| c.name.starts_with("H0")).collect();
        if households.is_empty() || pvs.is_empty() {
            bail!("load or PV slice is empty");
        }
        let mut rng = Rng::new(seed);
        let mut homes = Vec::with_capacity(devices);
        for i in 0..devices {
            let profile = households[i % households.len()];
            let peak_kw = rng.uniform(3.0, 7.0);
            let load_kw: Vec<f64> = profile.values[SLOTS..2 * SLOTS]
                .iter()
                .map(|v| (v * peak_kw).max(0.0))
                .collect();
            let kwp = if rng.uniform(0.0, 1.0) < 0.25 {
                0.0
            } else {
                rng.uniform(3.0, 10.0)
            };
            let pv_profile = &pvs[i % pvs.len()];
            let pv_kw: Vec<f64> = pv_profile.values[SLOTS..2 * SLOTS]
                .iter()
                .map(|v| (v * kwp).max(0.0))
                .collect();
            let system = &systems[i % systems.len()];
            // Scale the measured system into the 5-20 kWh / 3-10 kW range of home batteries.
            let capacity = rng.uniform(5.0, 20.0);
            let power = (capacity * rng.uniform(0.35, 0.6)).clamp(3.0, 10.0);
            let eta = system.round_trip.clamp(0.8, 0.99).sqrt();
            let spec = BatterySpec::new(BatteryParams {
                capacity_kwh: capacity,
                min_energy_kwh: 0.1 * capacity,
                max_energy_kwh: 0.95 * capacity,
                max_charge_kw: power * (system.charge_kw / system.discharge_kw).clamp(0.7, 1.0),
                max_discharge_kw: power,
                charge_efficiency: eta,
                discharge_efficiency: eta,
                degradation_cost_per_kwh: 0.02,
                ramp_limit_kw_per_min: None,
                min_temperature_c: Some(-10.0),
                max_temperature_c: Some(50.0),
            })?;
            let initial = capacity * rng.uniform(0.2, 0.6);
            homes.push(Home {
                device: DeviceId::new(format!("home-{i:05}"))?,
                site: format!("site-{i:05}"),
                initial_energy: Energy::from_kwh(initial)?,
                spec,
                load_kw,
                pv_kw,
                grid_import_max: 30.0,
                grid_export_max: 20.0,
                system: system.name.clone(),
                seed: seed ^ (i as u64).wrapping_mul(0x9E37_79B9),
            });
        }
        let base = fleet_net(homes.iter().map(Home::base_net_kw));
        let peak_import = base.iter().cloned().fold(0.0f64, f64::max);
        let peak_export = base.iter().map(|x| -x).fold(0.0f64, f64::max);
        Ok(Self {
            horizon,
            import_price,
            export_price,
            homes,
            feeder_import_kw: (peak_import * feeder_fraction).max(1.0),
            feeder_export_kw: (peak_export * feeder_fraction).max(1.0),
        })
    }

    /// The optimisation problem for the whole fleet under the feeder envelope.
    pub fn problem(&self) -> FleetProblem {
        let sites = self
            .homes
            .iter()
            .map(|h| {
                let p = h.spec.params();
                SiteProblem {
                    id: h.device.to_string(),
                    load: h.load_kw.clone(),
                    pv: h.pv_kw.clone(),
                    grid_import_max: h.grid_import_max,
                    grid_export_max: h.grid_export_max,
                    demand_charge: 0.0,
                    battery: OptBattery {
                        e_min: p.min_energy_kwh,
                        e_max: p.max_energy_kwh,
                        e0: h.initial_energy.kwh(),
                        e_final_min: Some(h.initial_energy.kwh()),
                        p_ch_max: p.max_charge_kw,
                        p_dis_max: p.max_discharge_kw,
                        eta_ch: p.charge_efficiency,
                        eta_dis: p.discharge_efficiency,
                        deg_cost: p.degradation_cost_per_kwh,
                    },
                    power_bounds: None,
                    wear_quadratic: 0.0,
                }
            })
            .collect();
        FleetProblem {
            name: format!("grid-sim demo, {} homes", self.homes.len()),
            dt: DT_HOURS,
            import_price: self.import_price.clone(),
            export_price: self.export_price.clone(),
            sites,
            feeder: Some(FeederLimit {
                import_limit: vec![self.feeder_import_kw; SLOTS],
                export_limit: vec![self.feeder_export_kw; SLOTS],
            }),
            tracking: None,
        }
    }
}

/// The fleet's summed net import per slot.
pub fn fleet_net(nets: impl Iterator<Item = Vec<f64>>) -> Vec<f64> {
    let mut sum = vec![0.0; SLOTS];
    for net in nets {
        for (s, x) in sum.iter_mut().zip(net) {
            *s += x;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_is_deterministic_and_uses_the_shipped_data() {
        let start: Timestamp = "2026-07-06T00:00:00Z".parse().unwrap();
        let a = Scenario::generate(20, 7, start, 0.8).unwrap();
        let b = Scenario::generate(20, 7, start, 0.8).unwrap();
        assert_eq!(a.homes.len(), 20);
        assert_eq!(a.import_price, b.import_price);
        assert_eq!(a.homes[3].load_kw, b.homes[3].load_kw);
        assert!(
            a.import_price
                .iter()
                .all(|p| *p > IMPORT_FEES_EUR_PER_KWH - 0.1)
        );
        assert!(a.homes.iter().any(|h| h.pv_kw.iter().any(|p| *p > 0.5)));
        assert!(a.problem().validate().is_ok());
        assert!(Scenario::generate(0, 7, start, 0.8).is_err());
    }
}
