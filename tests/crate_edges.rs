//! The crate graph follows the picture (DESIGN §2, "what never imports what"): read from
//! `cargo metadata`, every workspace crate's normal dependencies, followed transitively, must
//! avoid the crates it may not build on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crate → the crates it must never depend on, directly or through another.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "airlock-protocol",
        &[
            "airlock-client",
            "airlock-node",
            "airlock-coordinator",
            "airlock-egress",
            "airlock-chaos",
            "airlock",
            // No runtime at all: the wire types do no IO.
            "tokio",
        ],
    ),
    ("airlock-node", &["airlock-coordinator", "airlock-egress"]),
    ("airlock-coordinator", &["airlock-node"]),
    (
        "airlock-client",
        &[
            "airlock-node",
            "airlock-coordinator",
            "airlock-egress",
            // Claiming a document compiles no consensus, no store and no server framework.
            "openraft",
            "redb",
            "axum",
        ],
    ),
];

/// Package name → the names of its normal (not dev) dependencies, for the whole graph.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().unwrap() {
        let from = names[node["id"].as_str().unwrap()].to_owned();
        let deps = graph.entry(from).or_default();
        for dep in node["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if normal {
                deps.insert(names[dep["pkg"].as_str().unwrap()].to_owned());
            }
        }
    }
    graph
}

/// Every crate `from` builds on, with the path by which it gets there.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::from([(from.to_owned(), from.to_owned())]);
    let mut todo = vec![from.to_owned()];
    while let Some(crate_name) = todo.pop() {
        let path = seen[&crate_name].clone();
        for dep in graph.get(&crate_name).into_iter().flatten() {
            if !seen.contains_key(dep) {
                seen.insert(dep.clone(), format!("{path} → {dep}"));
                todo.push(dep.clone());
            }
        }
    }
    seen.remove(from);
    seen
}

#[test]
fn no_crate_builds_on_what_it_must_not() {
    let graph = normal_dependencies();
    let mut violations = Vec::new();
    for (from, forbidden) in FORBIDDEN {
        assert!(graph.contains_key(*from), "{from} is not in the workspace");
        let reached = reachable(&graph, from);
        for crate_name in *forbidden {
            if let Some(path) = reached.get(*crate_name) {
                violations.push(format!("{from} must not build on {crate_name}: {path}"));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_check_sees_real_edges() {
    // The checker itself can fail: edges that do exist are found, with their path.
    let graph = normal_dependencies();
    let from_node = reachable(&graph, "airlock-node");
    assert!(from_node.contains_key("airlock-protocol"));
    assert!(from_node.contains_key("airlock-client"));
    let from_coordinator = reachable(&graph, "airlock-coordinator");
    assert!(from_coordinator["openraft"].starts_with("airlock-coordinator → openraft"));
}
