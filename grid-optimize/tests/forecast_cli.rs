//! `grid-opt forecast backtest` end to end on the shipped data slices: the JSON shape, the numbers and the
//! exit code 2 with a clear message for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use std::process::{Command, Output};

fn data(file: &str) -> String {
    format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn grid_opt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grid-opt"))
        .args(args)
        .output()
        .expect("run grid-opt")
}

fn backtest(extra: &[&str]) -> Output {
    let mut args = vec!["forecast", "backtest"];
    args.extend_from_slice(extra);
    grid_opt(&args)
}

#[test]
fn household_backtest_prints_the_exact_json_shape() {
    let input = data("load_simbench_h0a_g0a_2016_q4_15min.csv");
    let out = backtest(&[
        "--input",
        &input,
        "--column",
        "H0-A_pload",
        "--test-from",
        "2016-12-03",
        "--test-to",
        "2016-12-30",
        "--country",
        "DE",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "model",
        "mae",
        "rmse",
        "smape",
        "n_test",
        "pinball_p10",
        "pinball_p90",
        "coverage_p10_p90",
        "baselines",
    ];
    expected.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, expected);
    for b in ["naive_1d", "naive_7d"] {
        let mut k: Vec<&str> = v["baselines"][b]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        assert_eq!(k, ["mae", "rmse", "smape"]);
    }
    assert_eq!(v["n_test"], 28 * 96);
    let mae = v["mae"].as_f64().unwrap();
    let best = v["baselines"]["naive_1d"]["mae"]
        .as_f64()
        .unwrap()
        .min(v["baselines"]["naive_7d"]["mae"].as_f64().unwrap());
    assert!(mae < 0.9 * best, "{mae} vs {best}");
    assert!(v["model"].as_str().is_some_and(|m| !m.is_empty()));
    // The full header name works too and gives the same result.
    let out2 = backtest(&[
        "--input",
        &input,
        "--column",
        "value_pu__H0-A_pload",
        "--test-from",
        "2016-12-03",
        "--test-to",
        "2016-12-30",
        "--country",
        "DE",
    ]);
    assert_eq!(out2.stdout, out.stdout);
}

#[test]
fn price_and_pv_backtests_run_with_default_test_to() {
    let out = backtest(&[
        "--input",
        &data("price_da_de_2015_q4_hourly.csv"),
        "--column",
        "value_EUR_per_MWh",
        "--test-from",
        "2015-12-03",
        "--kind",
        "price",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 2015-12-03 .. 2015-12-30 (the file ends 2015-12-31T22:00Z, so the 31st is not a full day).
    assert_eq!(v["n_test"], 28 * 24);
    let out = backtest(&[
        "--input",
        &data("pv_ac_power_nrel_pvdaq50_2012_q4_15min.csv"),
        "--column",
        "value_W",
        "--test-from",
        "2012-12-04",
        "--kind",
        "pv",
        "--latitude",
        "39.74",
        "--longitude",
        "-105.18",
        "--country",
        "US",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["n_test"].as_u64().unwrap() > 20 * 96);
    assert!(v["mae"].as_f64().unwrap() >= 0.0);
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let input = data("load_simbench_h0a_g0a_2016_q4_15min.csv");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--input",
                "/nonexistent/x.csv",
                "--column",
                "a",
                "--test-from",
                "2016-12-01",
            ],
            "input",
        ),
        (
            &[
                "--input",
                &input,
                "--column",
                "H9-Z_pload",
                "--test-from",
                "2016-12-01",
            ],
            "column",
        ),
        (
            &[
                "--input",
                &input,
                "--column",
                "H0-A_pload",
                "--test-from",
                "2016-13-01",
            ],
            "test_from",
        ),
        (
            &[
                "--input",
                &input,
                "--column",
                "H0-A_pload",
                "--test-from",
                "2016-12-10",
                "--test-to",
                "2016-12-01",
            ],
            "test_to",
        ),
        (
            &[
                "--input",
                &input,
                "--column",
                "H0-A_pload",
                "--test-from",
                "2016-10-12",
            ],
            "too little training data",
        ),
        (
            &[
                "--input",
                &input,
                "--column",
                "H0-A_pload",
                "--test-from",
                "2016-12-01",
                "--kind",
                "wind",
            ],
            "kind",
        ),
        (
            &[
                "--input",
                &input,
                "--column",
                "H0-A_pload",
                "--test-from",
                "2016-12-01",
                "--country",
                "XX",
            ],
            "country",
        ),
        (
            &[
                "--input",
                &input,
                "--column",
                "H0-A_pload",
                "--test-from",
                "2016-12-01",
                "--latitude",
                "50",
            ],
            "longitude",
        ),
    ];
    for (args, needle) in cases {
        let out = backtest(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}
