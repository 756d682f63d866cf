//! The demo's summary: a table for people and a JSON document (`--report PATH`) for machines.

use serde::Serialize;
use std::fmt::Write as _;

/// Delivery latency percentiles, milliseconds from publish to the device's acceptance ack
/// (`accepted`, or `executing` for a schedule that started on arrival).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Latency {
    /// Percentiles of `samples` (nearest rank); zeros when there are none.
    pub fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i]
        };
        Self {
            p50: rank(0.50),
            p99: rank(0.99),
        }
    }
}

/// Everything the demo measured.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// Simulated devices.
    pub devices: usize,
    /// Schedules the server published.
    pub schedules_published: usize,
    /// Schedules the devices acknowledged as accepted (as recorded by the server: accepted,
    /// executing or completed at the end of the day).
    pub schedules_acked: usize,
    /// Schedules the devices refused (recorded as rejected by the server).
    pub schedules_rejected: usize,
    /// Setpoints that reached a battery outside its envelope (must be 0).
    pub safety_violations: u64,
    /// Times the safety layer changed or blocked a setpoint.
    pub safety_interventions: u64,
    /// Energy cost of the fleet over the day with grid's schedules, EUR (as simulated).
    pub cost_grid: f64,
    /// Energy cost with every battery idle, EUR.
    pub cost_do_nothing: f64,
    /// Energy cost with the greedy rule (charge in the cheapest hours), EUR.
    pub cost_greedy: f64,
    /// Highest summed net import of the fleet in any slot, kW (as simulated).
    pub feeder_peak_kw: f64,
    /// The feeder's import limit, kW.
    pub feeder_limit_kw: f64,
    /// Highest summed net import with every battery idle, kW.
    pub feeder_peak_do_nothing_kw: f64,
    /// Highest summed net import under the greedy rule, kW.
    pub feeder_peak_greedy_kw: f64,
    /// Publish-to-accepted latency.
    pub delivery_latency_ms: Latency,
    /// Σ over devices and slots of |planned − delivered| battery energy, kWh.
    pub plan_vs_actual_kwh: f64,
    /// The optimiser's objective for the fleet (EUR, including wear cost).
    pub optimiser_objective: f64,
    /// Time the optimiser took, milliseconds.
    pub optimiser_ms: f64,
    /// Simulated hours.
    pub simulated_hours: f64,
    /// Clock speed-up.
    pub speed: f64,
    /// Wall-clock seconds of the whole demo.
    pub wall_seconds: f64,
    /// Where the server stored data and which broker carried MQTT.
    pub backend: String,
}

impl Report {
    /// The summary table printed at the end of the demo.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let saving = |base: f64| {
            if base.abs() > 1e-9 {
                format!("{:+.1} %", 100.0 * (self.cost_grid - base) / base.abs())
            } else {
                "n/a".into()
            }
        };
        let _ = writeln!(
            s,
            "┌────────────────────────────────────────┬────────────────────────────┐"
        );
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "│ {k:<38} │ {v:>26} │");
        };
        row("devices", self.devices.to_string());
        row("backend", self.backend.clone());
        row("energy cost, grid", format!("{:.2} EUR", self.cost_grid));
        row(
            "energy cost, do nothing",
            format!(
                "{:.2} EUR ({})",
                self.cost_do_nothing,
                saving(self.cost_do_nothing)
            ),
        );
        row(
            "energy cost, greedy rule",
            format!("{:.2} EUR ({})", self.cost_greedy, saving(self.cost_greedy)),
        );
        row(
            "feeder peak / limit",
            format!(
                "{:.1} / {:.1} kW",
                self.feeder_peak_kw, self.feeder_limit_kw
            ),
        );
        row(
            "feeder peak, do nothing / greedy",
            format!(
                "{:.1} / {:.1} kW",
                self.feeder_peak_do_nothing_kw, self.feeder_peak_greedy_kw
            ),
        );
        row(
            "schedules published / acked / rejected",
            format!(
                "{} / {} / {}",
                self.schedules_published, self.schedules_acked, self.schedules_rejected
            ),
        );
        row(
            "delivery latency p50 / p99",
            format!(
                "{:.1} / {:.1} ms",
                self.delivery_latency_ms.p50, self.delivery_latency_ms.p99
            ),
        );
        row(
            "plan vs actual",
            format!("{:.3} kWh", self.plan_vs_actual_kwh),
        );
        row(
            "safety violations / interventions",
            format!("{} / {}", self.safety_violations, self.safety_interventions),
        );
        row(
            "optimiser",
            format!(
                "{:.1} ms, {:.2} EUR",
                self.optimiser_ms, self.optimiser_objective
            ),
        );
        row(
            "simulated / wall time",
            format!("{:.0} h / {:.1} s", self.simulated_hours, self.wall_seconds),
        );
        let _ = writeln!(
            s,
            "└────────────────────────────────────────┴────────────────────────────┘"
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&mut v);
        assert_eq!((l.p50, l.p99), (50.0, 99.0));
        assert_eq!(Latency::of(&mut []), Latency::default());
    }

    #[test]
    fn json_has_the_documented_keys() {
        let json = serde_json::to_value(Report::default()).unwrap();
        for key in [
            "devices",
            "schedules_published",
            "schedules_acked",
            "safety_violations",
            "safety_interventions",
            "cost_grid",
            "cost_do_nothing",
            "cost_greedy",
            "feeder_peak_kw",
            "feeder_limit_kw",
            "delivery_latency_ms",
            "plan_vs_actual_kwh",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert!(json["delivery_latency_ms"].get("p50").is_some());
    }
}
