//! Energy cost of a day and the two baselines the demo compares against: doing nothing, and a
//! greedy rule (charge in the cheapest hours, discharge into the load in the dearest).

use crate::scenario::{DT_HOURS, Home, Scenario};

/// Energy cost in EUR of a net-import series (kW per slot, positive = import).
pub fn energy_cost(import_price: &[f64], export_price: &[f64], net_kw: &[f64]) -> f64 {
    net_kw
        .iter()
        .zip(import_price.iter().zip(export_price))
        .map(|(&n, (&ip, &ep))| DT_HOURS * if n >= 0.0 { ip * n } else { ep * n })
        .sum()
}

/// The battery's power per slot under the greedy rule (kW, positive = charging): charge at full
/// power in the quarter of slots with the lowest import price, discharge to cover the net load in
/// the quarter with the highest, idle otherwise; the SoC window is respected.
pub fn greedy_battery_kw(home: &Home, import_price: &[f64]) -> Vec<f64> {
    let n = import_price.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| import_price[a].total_cmp(&import_price[b]));
    let quarter = n / 4;
    let cheap: Vec<bool> = {
        let mut v = vec![false; n];
        order[..quarter].iter().for_each(|&i| v[i] = true);
        v
    };
    let dear: Vec<bool> = {
        let mut v = vec![false; n];
        order[n - quarter..].iter().for_each(|&i| v[i] = true);
        v
    };
    let p = home.spec.params();
    let (eta_c, eta_d) = (p.charge_efficiency, p.discharge_efficiency);
    let mut e = home.initial_energy.kwh();
    let mut out = Vec::with_capacity(n);
    for t in 0..n {
        let want = if cheap[t] {
            p.max_charge_kw
        } else if dear[t] {
            let net = home.load_kw[t] - home.pv_kw[t];
            -(net.max(0.0)).min(p.max_discharge_kw)
        } else {
            0.0
        };
        let power = if want >= 0.0 {
            want.min((p.max_energy_kwh - e).max(0.0) / (eta_c * DT_HOURS))
        } else {
            want.max(-(e - p.min_energy_kwh).max(0.0) * eta_d / DT_HOURS)
        };
        e += if power >= 0.0 {
            power * eta_c * DT_HOURS
        } else {
            power / eta_d * DT_HOURS
        };
        out.push(power);
    }
    out
}

/// The fleet's cost with every battery idle.
pub fn do_nothing_cost(s: &Scenario) -> f64 {
    s.homes
        .iter()
        .map(|h| energy_cost(&s.import_price, &s.export_price, &h.base_net_kw()))
        .sum()
}

/// The fleet's cost with every battery following the greedy rule, and the rule's feeder peak.
pub fn greedy_cost(s: &Scenario) -> (f64, f64) {
    let mut fleet = vec![0.0; s.import_price.len()];
    let mut cost = 0.0;
    for h in &s.homes {
        let bat = greedy_battery_kw(h, &s.import_price);
        let net: Vec<f64> = h
            .base_net_kw()
            .iter()
            .zip(&bat)
            .map(|(b, p)| b + p)
            .collect();
        cost += energy_cost(&s.import_price, &s.export_price, &net);
        fleet.iter_mut().zip(&net).for_each(|(f, n)| *f += n);
    }
    (cost, fleet.iter().cloned().fold(f64::MIN, f64::max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    #[test]
    fn greedy_respects_the_soc_window_and_charges_when_cheap() {
        let s = Scenario::generate(8, 3, "2026-07-06T00:00:00Z".parse().unwrap(), 0.8).unwrap();
        for h in &s.homes {
            let bat = greedy_battery_kw(h, &s.import_price);
            let p = h.spec.params();
            let mut e = h.initial_energy.kwh();
            for &x in &bat {
                assert!(x <= p.max_charge_kw + 1e-9 && -x <= p.max_discharge_kw + 1e-9);
                e += if x >= 0.0 {
                    x * p.charge_efficiency
                } else {
                    x / p.discharge_efficiency
                } * DT_HOURS;
                assert!(e >= p.min_energy_kwh - 1e-9 && e <= p.max_energy_kwh + 1e-9);
            }
            assert!(bat.iter().any(|&x| x > 0.0), "greedy never charges");
        }
    }

    #[test]
    fn energy_cost_prices_import_and_export_separately() {
        let c = energy_cost(&[0.4, 0.4], &[0.1, 0.1], &[4.0, -4.0]);
        assert!((c - (0.25 * 0.4 * 4.0 - 0.25 * 0.1 * 4.0)).abs() < 1e-12);
    }
}
