//! The architecture invariants of docs/ARCHITECTURE.md, checked against `cargo metadata`: no crate
//! of the workspace takes a forbidden normal dependency with its default features, directly or
//! through another workspace crate.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Crate → the packages it must never depend on (normal dependencies, default features).
/// Keep in step with the "Architecture Invariant" lines of docs/ARCHITECTURE.md.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "grid-core",
        &[
            "tokio",
            "sqlx",
            "rumqttc",
            "rumqttd",
            "axum",
            "hyper",
            "embedded-hal",
            "rppal",
            "tokio-modbus",
            "grid-optimize",
            "grid-proto",
            "grid-hal",
            "grid-server",
            "grid-agent",
            "grid-sim",
        ],
    ),
    (
        "grid-optimize",
        &[
            "tokio",
            "sqlx",
            "rumqttc",
            "rumqttd",
            "axum",
            "hyper",
            "grid-proto",
            "grid-hal",
            "grid-server",
            "grid-agent",
            "grid-sim",
        ],
    ),
    (
        "grid-proto",
        &[
            "tokio",
            "sqlx",
            "rumqttc",
            "rumqttd",
            "axum",
            "hyper",
            "grid-hal",
            "grid-server",
            "grid-agent",
            "grid-sim",
        ],
    ),
    (
        "grid-hal",
        &[
            "serde",
            "sqlx",
            "tokio",
            "tokio-modbus",
            "rppal",
            "rumqttc",
            "axum",
            "grid-proto",
            "grid-server",
            "grid-agent",
            "grid-sim",
        ],
    ),
    (
        "grid-agent",
        &["grid-server", "grid-optimize", "axum", "grid-sim"],
    ),
    ("grid-server", &["grid-hal", "grid-agent", "grid-sim"]),
];

/// Crates that nothing else in the workspace may depend on.
const TOP_OF_GRAPH: &[&str] = &["grid-sim", "grid-benches"];

struct Package {
    /// Normal dependencies active with default features: package name.
    deps: BTreeSet<String>,
}

fn metadata() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// The normal dependencies a package has with its default features.
fn default_deps(pkg: &Value) -> BTreeSet<String> {
    let features: BTreeMap<String, Vec<String>> = pkg["features"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let items = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    (k.clone(), items)
                })
                .collect()
        })
        .unwrap_or_default();
    // Close the set of enabled features and optional dependencies from "default".
    let mut enabled_features = BTreeSet::new();
    let mut enabled_optional = BTreeSet::new();
    let mut todo = vec!["default".to_string()];
    while let Some(f) = todo.pop() {
        if !enabled_features.insert(f.clone()) {
            continue;
        }
        for item in features.get(&f).into_iter().flatten() {
            if let Some(dep) = item.strip_prefix("dep:") {
                enabled_optional.insert(dep.to_string());
            } else if let Some((dep, _)) = item.split_once('/') {
                if !dep.ends_with('?') {
                    enabled_optional.insert(dep.to_string());
                }
            } else if features.contains_key(item) {
                todo.push(item.clone());
            } else {
                enabled_optional.insert(item.clone());
            }
        }
    }
    pkg["dependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["kind"].is_null())
        .filter(|d| {
            let key = d["rename"]
                .as_str()
                .or(d["name"].as_str())
                .unwrap_or_default();
            !d["optional"].as_bool().unwrap_or(false) || enabled_optional.contains(key)
        })
        .filter_map(|d| d["name"].as_str().map(String::from))
        .collect()
}

fn workspace() -> BTreeMap<String, Package> {
    let meta = metadata();
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("name").to_string();
            (
                name,
                Package {
                    deps: default_deps(p),
                },
            )
        })
        .collect()
}

/// The dependencies of `name` and of every workspace crate it reaches.
fn reachable(ws: &BTreeMap<String, Package>, name: &str) -> BTreeMap<String, String> {
    let mut via = BTreeMap::new();
    let mut todo = vec![name.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(p) = ws.get(&n) {
            for d in &p.deps {
                via.entry(d.clone()).or_insert_with(|| n.clone());
                if ws.contains_key(d) {
                    todo.push(d.clone());
                }
            }
        }
    }
    via
}

#[test]
fn no_crate_takes_a_forbidden_dependency() {
    let ws = workspace();
    let mut broken = Vec::new();
    for (krate, forbidden) in FORBIDDEN {
        assert!(ws.contains_key(*krate), "{krate} is not a workspace member");
        let deps = reachable(&ws, krate);
        for f in *forbidden {
            if let Some(via) = deps.get(*f) {
                broken.push(format!("{krate} depends on {f} (through {via})"));
            }
        }
    }
    for (name, pkg) in &ws {
        for top in TOP_OF_GRAPH {
            if pkg.deps.contains(*top) {
                broken.push(format!(
                    "{name} depends on {top}, which must stay at the top of the graph"
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "architecture invariants broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_optional_dependencies_enabled_by_default() {
    let pkg = serde_json::json!({
        "features": {"default": ["net"], "net": ["dep:tokio", "serde?/std"], "extra": ["dep:sqlx"]},
        "dependencies": [
            {"name": "tokio", "kind": null, "optional": true, "rename": null},
            {"name": "sqlx", "kind": null, "optional": true, "rename": null},
            {"name": "serde", "kind": null, "optional": true, "rename": null},
            {"name": "proptest", "kind": "dev", "optional": false, "rename": null},
            {"name": "thiserror", "kind": null, "optional": false, "rename": null}
        ]
    });
    let deps = default_deps(&pkg);
    assert_eq!(
        deps.into_iter().collect::<Vec<_>>(),
        vec!["thiserror".to_string(), "tokio".to_string()]
    );
}

#[test]
fn architecture_doc_states_every_invariant() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ARCHITECTURE.md"),
    )
    .expect("docs/ARCHITECTURE.md exists");
    for (krate, forbidden) in FORBIDDEN {
        let line = doc
            .lines()
            .find(|l| l.starts_with(&format!("**Architecture Invariant:** `{krate}`")))
            .unwrap_or_else(|| panic!("no Architecture Invariant line for {krate}"));
        for f in *forbidden {
            assert!(
                line.contains(&format!("`{f}`")),
                "the invariant line of {krate} does not name {f}"
            );
        }
    }
}
