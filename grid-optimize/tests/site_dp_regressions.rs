//! Instances on which the site DP once went wrong, kept as regression tests (found by the property tests).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::site_dp::SiteDpSolver;
use grid_optimize::{BatteryParams, FleetProblem, PowerBounds, SiteProblem, Solver};

/// Demand charge, export paid more than import in some slots, and a terminal SoC reached exactly at a segment
/// boundary: rounding used to report the next segment's slope as the terminal energy value, which gave a wrong
/// subgradient in the peak-cap search and stopped it at 4.9646 kW instead of 5.0 kW. Optimum by HiGHS 1.16.
#[test]
fn demand_charge_with_export_above_import() {
    let problem = FleetProblem {
        name: "regression_dc_export_above_import".into(),
        dt: 1.0,
        import_price: vec![
            0.05328768944363994,
            0.0,
            0.08353383089527612,
            0.4928260323846106,
            0.08475711856396383,
            0.3837187435639941,
            0.0,
            -0.0163827244186475,
            0.0,
        ],
        export_price: vec![
            0.18254031403807278,
            0.0,
            0.0613638920364773,
            0.0,
            0.25426112617074376,
            0.17795316377641637,
            -0.010453578139911842,
            0.12316064803699427,
            0.12487165634866233,
        ],
        sites: vec![SiteProblem {
            id: "site0".into(),
            load: vec![
                0.0,
                0.0,
                0.0,
                4.887725278921931,
                0.026191607982371044,
                1.0730776550283287,
                3.6136925598975034,
                2.680744494566429,
                0.1599169363792115,
            ],
            pv: vec![
                1.2083751475659583,
                6.423665232039636,
                3.164943519024865,
                2.181431913293749,
                1.8959017658455477,
                5.2470303273979555,
                7.35333247589032,
                5.21012201325295,
                7.176121089943625,
            ],
            grid_import_max: 11.80040533629198,
            grid_export_max: 7.528760624808778,
            demand_charge: 0.279601666946992,
            battery: BatteryParams {
                e_min: 0.21849207373536508,
                e_max: 7.454296217051351,
                e0: 1.0805335192757477,
                e_final_min: Some(1.58209548353747),
                p_ch_max: 1.635984026463229,
                p_dis_max: 3.5490205986682355,
                eta_ch: 0.95,
                eta_dis: 0.9,
                deg_cost: 0.03,
            },
            power_bounds: None,
            wear_quadratic: 0.0,
        }],
        feeder: None,
        tracking: None,
    };
    let solution = SiteDpSolver::default().solve(&problem).expect("valid");
    assert!(solution.is_optimal());
    let reference = -3.510684321700223;
    let objective = problem.objective(&solution);
    assert!(
        (objective - reference).abs() <= 1e-9,
        "{objective} vs {reference}"
    );
    assert!(problem.max_violation(&solution) <= 1e-9);
    assert!(solution.diagnostics.duality_gap.abs() <= 1e-9);
}

/// Demand charge in milli-units (prices, powers and energies all ×1e-3): the peak-cap search used tolerances
/// that were absolute, not relative to the problem's magnitudes, and stopped 3e-8 (relative) short.
#[test]
fn demand_charge_in_tiny_units() {
    let problem = FleetProblem {
        name: "regression_tiny_units".into(),
        dt: 1.0,
        import_price: vec![
            0.0,
            0.0,
            0.0,
            0.0,
            0.27698644963975944,
            0.0,
            0.0,
            -0.010371235847305997,
            0.0,
            0.0,
            0.0765508871138319,
            0.19711804680074974,
            0.0,
            0.27693972174821846,
        ],
        export_price: vec![
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ],
        sites: vec![SiteProblem {
            id: "site0".into(),
            load: vec![
                0.0,
                0.0,
                0.0,
                5.936312679555348,
                1.7779115982023412,
                0.0,
                0.0,
                4.423009138580326,
                0.0,
                5.34878690756501,
                0.0,
                0.0,
                0.0,
                1.2162803209242925,
            ],
            pv: vec![
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
            grid_import_max: 11.725267278936254,
            grid_export_max: 0.0,
            demand_charge: 0.7622435681327427,
            battery: BatteryParams {
                e_min: 0.0,
                e_max: 5.342710244849395,
                e0: 3.115275315504689,
                e_final_min: Some(4.475073668194642),
                p_ch_max: 0.7784232316518915,
                p_dis_max: 3.97806943608704,
                eta_ch: 1.0,
                eta_dis: 1.0,
                deg_cost: 0.0,
            },
            power_bounds: Some(PowerBounds {
                charge_max: vec![
                    0.9243532976447603,
                    0.0,
                    0.6118445169352533,
                    0.0,
                    0.0,
                    0.45134882550232686,
                    0.5546303369855069,
                    0.8290037850914579,
                    0.7852494313929665,
                    0.0,
                    0.0,
                    0.04186876465785212,
                    0.008705051956529458,
                    0.0,
                ],
                discharge_max: vec![
                    0.0,
                    0.0,
                    0.0,
                    3.2066419583133747,
                    1.7524110885701893,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    2.601020505618039,
                    0.0,
                    0.0,
                    0.0,
                    3.4465588866777694,
                ],
            }),
            wear_quadratic: 0.0,
        }],
        feeder: None,
        tracking: None,
    };
    let base = SiteDpSolver::default().solve(&problem).expect("valid");
    let k = 1e-3;
    let mut tiny = problem.clone();
    tiny.import_price
        .iter_mut()
        .chain(tiny.export_price.iter_mut())
        .for_each(|x| *x *= k);
    let s = &mut tiny.sites[0];
    s.load
        .iter_mut()
        .chain(s.pv.iter_mut())
        .for_each(|x| *x *= k);
    s.grid_import_max *= k;
    s.grid_export_max *= k;
    s.demand_charge *= k;
    let b = &mut s.battery;
    for v in [
        &mut b.e_min,
        &mut b.e_max,
        &mut b.e0,
        &mut b.p_ch_max,
        &mut b.p_dis_max,
    ] {
        *v *= k;
    }
    b.e_final_min = b.e_final_min.map(|e| e * k);
    b.deg_cost *= k;
    if let Some(pb) = &mut s.power_bounds {
        pb.charge_max
            .iter_mut()
            .chain(pb.discharge_max.iter_mut())
            .for_each(|x| *x *= k);
    }
    let small = SiteDpSolver::default().solve(&tiny).expect("valid");
    let (expect, got) = (problem.objective(&base) * k * k, tiny.objective(&small));
    assert!(
        (got - expect).abs() <= 1e-12 * expect.abs(),
        "{got} vs {expect}"
    );
    assert!(tiny.max_violation(&small) <= 1e-12);
}
