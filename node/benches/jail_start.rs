//! Kernel start time with and without the jail, from the same run: `KernelBridge::start` until
//! the kernel answers, 10 starts each (alternating, so both see the same machine), median and p90.
//!
//! Target: the jail adds at most 30 ms. Needs root (the jail's preflight).
//! Run with `cargo bench -p airlock-node --bench jail_start`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_node::jail::{JailConfig, preflight};
use airlock_node::kernel::{KernelBridge, KernelConfig, Progress, PythonSource, ensure_python};

const STARTS: usize = 10;

async fn start_once(config: KernelConfig) -> Duration {
    let started = Instant::now();
    let (bridge, _events) = KernelBridge::start(config).await.expect("kernel started");
    let elapsed = started.elapsed();
    bridge.shutdown().await;
    elapsed
}

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p90 = samples[(samples.len() * 9).div_ceil(10) - 1];
    println!(
        "{name:>10}: median {:>7.1} ms   p90 {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms",
        median.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
    median
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let host = match preflight() {
        Ok(host) => host,
        Err(error) => {
            println!("skipping the jail start benchmark: {error}");
            return;
        }
    };
    let python: PathBuf = match std::env::var_os("AIRLOCK_PYTHON") {
        Some(python) => python.into(),
        None => ensure_python(&PythonSource::default_managed().unwrap(), Progress::Auto)
            .await
            .unwrap(),
    };
    let runtime_dir = tempfile::tempdir().unwrap();
    let jail = JailConfig {
        cgroup_parent: format!("airlock-bench-{}", std::process::id()),
        ..JailConfig::default()
    };
    // One warm-up of each, so file caches are as warm for both.
    start_once(KernelConfig::new(
        python.clone(),
        runtime_dir.path().to_owned(),
    ))
    .await;
    start_once(KernelConfig::jailed(
        python.clone(),
        runtime_dir.path().to_owned(),
        jail.clone(),
    ))
    .await;
    let mut plain = Vec::new();
    let mut jailed = Vec::new();
    for _ in 0..STARTS {
        plain.push(
            start_once(KernelConfig::new(
                python.clone(),
                runtime_dir.path().to_owned(),
            ))
            .await,
        );
        jailed.push(
            start_once(KernelConfig::jailed(
                python.clone(),
                runtime_dir.path().to_owned(),
                jail.clone(),
            ))
            .await,
        );
    }
    println!(
        "kernel start (KernelBridge::start until ready), {STARTS} each, {:?} cgroups:",
        host.cgroup
    );
    let plain = summary("no jail", plain);
    let jailed = summary("jail", jailed);
    let added = jailed.as_secs_f64() - plain.as_secs_f64();
    println!(
        "   the jail adds {:.1} ms at the median (target: at most 30 ms)",
        added * 1e3
    );
    for parent in host.cgroup_parents(&jail.cgroup_parent) {
        let _ = std::fs::remove_dir(parent);
    }
}
