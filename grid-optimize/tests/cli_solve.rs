//! `grid-opt solve` end to end: the built binary on fixtures and on broken or infeasible variants of them.
//! Exit 0 optimal (the printed schedule is re-checked here), 1 infeasible (with a reason), 2 invalid input
//! (a message naming the field on stderr, nothing on stdout).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

use grid_optimize::battopt::parse_instance;
use grid_optimize::{FleetSolution, SiteSolution, SolveStatus};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn fixture_text(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).expect("fixture exists")
}

fn fixture_value(name: &str) -> Value {
    serde_json::from_str(&fixture_text(name)).expect("fixture is JSON")
}

/// Runs `grid-opt solve -` with `input` on stdin.
fn solve_stdin(input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_grid-opt"))
        .args(["solve", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grid-opt runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("stdin accepts the instance");
    child.wait_with_output().expect("grid-opt finishes")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Rebuilds a [`FleetSolution`] from a printed `battopt-solution/1`.
fn parse_solution(doc: &Value) -> FleetSolution {
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    };
    let sites = doc["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| SiteSolution {
            id: s["id"].as_str().expect("id").to_string(),
            charge: floats(&s["charge"]),
            discharge: floats(&s["discharge"]),
            grid_import: floats(&s["grid_import"]),
            grid_export: floats(&s["grid_export"]),
            soc_end: floats(&s["soc_end"]),
            peak_import: s["peak_import"].as_f64(),
        })
        .collect();
    FleetSolution {
        status: SolveStatus::Optimal,
        objective: doc["objective"].as_f64().unwrap_or(f64::NAN),
        sites,
        diagnostics: Default::default(),
        warm_point: None,
    }
}

fn assert_optimal_fixture(name: &str) {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_grid-opt"))
        .args(["solve", &path])
        .output()
        .expect("grid-opt runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: stderr {}",
        stderr(&out)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["schema"], "battopt-solution/1");
    assert_eq!(doc["instance"], name);
    assert_eq!(doc["status"], "optimal");
    assert!(doc["reason"].is_null());
    assert!(doc["solve_seconds"].as_f64().expect("solve_seconds") >= 0.0);
    let reference = fixture_value(name)["reference"]["objective"]
        .as_f64()
        .expect("reference");
    let printed = doc["objective"].as_f64().expect("objective");
    assert!(
        (printed - reference).abs() <= 1e-6 * reference.abs().max(1.0),
        "{name}: {printed} vs {reference}"
    );
    // The printed schedule itself is feasible and has the printed objective.
    let problem = parse_instance(&fixture_text(name)).expect("fixture parses");
    let solution = parse_solution(&doc);
    assert!(
        problem.max_violation(&solution) <= 1e-6,
        "{name}: violation {}",
        problem.max_violation(&solution)
    );
    assert!((problem.objective(&solution) - printed).abs() <= 1e-9 * printed.abs().max(1.0));
}

#[test]
fn fixtures_print_optimal_solutions() {
    for name in [
        "a_arbitrage_T96",
        "b_home_pv_demand_T96",
        "c_week_T672",
        "d_fleet_N10_T96",
    ] {
        assert_optimal_fixture(name);
    }
}

#[test]
fn stdin_and_pretty_output() {
    let out = solve_stdin(&fixture_text("a_arbitrage_T96"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let path = format!(
        "{}/tests/fixtures/a_arbitrage_T96.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let pretty = Command::new(env!("CARGO_BIN_EXE_grid-opt"))
        .args(["solve", "--pretty", &path])
        .output()
        .expect("runs");
    assert_eq!(pretty.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&pretty.stdout).lines().count() > 100);
    let a: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let b: Value = serde_json::from_slice(&pretty.stdout).expect("JSON");
    assert_eq!(a["objective"], b["objective"]);
}

/// Exit 2, nothing on stdout, and stderr names `field`.
fn assert_invalid(input: &str, field: &str) {
    let out = solve_stdin(input);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2 for {field}; stderr: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "stdout must stay empty for invalid input"
    );
    assert!(err.contains(field), "stderr should name {field}: {err}");
}

fn mutated(f: impl FnOnce(&mut Value)) -> String {
    let mut v = fixture_value("a_arbitrage_T96");
    f(&mut v);
    v.to_string()
}

#[test]
fn nan_and_non_numbers_are_invalid() {
    // Python's json writes NaN as a bare token; JSON has no NaN, but the message still names the field.
    let text = mutated(|v| v["sites"][0]["battery"]["e_max"] = Value::from(123_456.789));
    let text = text.replace("123456.789", "NaN");
    assert_invalid(&text, "sites[0].battery.e_max");
    let text = mutated(|v| v["import_price"][17] = Value::from(0.5)).replacen("0.5", "Infinity", 1);
    assert!(text.contains("Infinity"));
    let out = solve_stdin(&text);
    assert_eq!(out.status.code(), Some(2));
    assert_invalid(
        &mutated(|v| v["sites"][0]["battery"]["eta_ch"] = Value::from("0.95")),
        "sites[0].battery.eta_ch",
    );
    assert_invalid(
        &mutated(|v| v["sites"][0]["grid_import_max"] = Value::Null),
        "sites[0].grid_import_max",
    );
    assert_invalid(
        &mutated(|v| v["export_price"][3] = Value::from("NaN")),
        "export_price[3]",
    );
}

#[test]
fn missing_fields_are_invalid() {
    assert_invalid(
        &mutated(|v| {
            v["sites"][0]["battery"]
                .as_object_mut()
                .expect("battery")
                .remove("p_ch_max");
        }),
        "sites[0].battery.p_ch_max",
    );
    assert_invalid(
        &mutated(|v| {
            v.as_object_mut().expect("root").remove("dt");
        }),
        "dt",
    );
    assert_invalid(
        &mutated(|v| {
            v["sites"][0].as_object_mut().expect("site").remove("load");
        }),
        "sites[0].load",
    );
}

#[test]
fn negative_capacities_and_bad_ranges_are_invalid() {
    assert_invalid(
        &mutated(|v| v["sites"][0]["battery"]["e_max"] = Value::from(-13.5)),
        "sites[0].battery.e_max",
    );
    assert_invalid(
        &mutated(|v| v["sites"][0]["battery"]["p_dis_max"] = Value::from(-1.0)),
        "sites[0].battery.p_dis_max",
    );
    assert_invalid(
        &mutated(|v| v["sites"][0]["grid_export_max"] = Value::from(-2.0)),
        "sites[0].grid_export_max",
    );
    assert_invalid(
        &mutated(|v| v["sites"][0]["battery"]["eta_dis"] = Value::from(1.2)),
        "sites[0].battery.eta_dis",
    );
    assert_invalid(
        &mutated(|v| v["sites"][0]["battery"]["e0"] = Value::from(20.0)),
        "sites[0].battery.e0",
    );
    assert_invalid(
        &mutated(|v| v["sites"][0]["battery"]["e_min"] = Value::from(14.0)),
        "sites[0].battery.e_min",
    );
    assert_invalid(&mutated(|v| v["dt"] = Value::from(0.0)), "dt");
}

#[test]
fn wrong_lengths_are_invalid() {
    assert_invalid(
        &mutated(|v| {
            v["import_price"].as_array_mut().expect("prices").pop();
        }),
        "import_price",
    );
    assert_invalid(
        &mutated(|v| v["sites"][0]["pv"] = Value::from(vec![1.0; 3])),
        "sites[0].pv",
    );
    assert_invalid(&mutated(|v| v["T"] = Value::from(95)), "import_price");
}

#[test]
fn malformed_or_missing_files_are_invalid() {
    let out = solve_stdin("{\"schema\": \"battopt-instance/1\", ");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_invalid(
        &mutated(|v| v["schema"] = Value::from("battopt-instance/9")),
        "schema",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_grid-opt"))
        .args(["solve", "/nonexistent/instance.json"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

/// Exit 1 with `"status": "infeasible"`, a null objective and a reason containing `needle`.
fn assert_infeasible(input: &str, needle: &str) {
    let out = solve_stdin(input);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(doc["status"], "infeasible");
    assert!(doc["objective"].is_null());
    let reason = doc["reason"].as_str().expect("reason");
    assert!(
        reason.contains(needle),
        "reason {reason:?} should mention {needle:?}"
    );
}

#[test]
fn infeasible_instances_exit_1_with_a_reason() {
    // The terminal SoC cannot be reached with a tiny charger.
    assert_infeasible(
        &mutated(|v| {
            v["sites"][0]["battery"]["e_final_min"] = Value::from(13.5);
            v["sites"][0]["battery"]["p_ch_max"] = Value::from(0.1);
        }),
        "terminal SoC",
    );
    // A load above the grid connection plus the battery in slot 17.
    assert_infeasible(
        &mutated(|v| {
            let mut load = vec![0.0; 96];
            load[17] = 30.0;
            v["sites"][0]["load"] = Value::from(load);
        }),
        "slot 17",
    );
    // PV above the export limit and the charger, with nowhere to go.
    assert_infeasible(
        &mutated(|v| {
            let mut pv = vec![0.0; 96];
            pv[40] = 40.0;
            v["sites"][0]["pv"] = Value::from(pv);
        }),
        "slot 40",
    );
}
