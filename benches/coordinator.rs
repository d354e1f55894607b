//! Coordinator benchmarks (DESIGN.md §8), beside the Jupyter peers measured in the same run:
//!
//! 1. **Claim → first execute result, warm pool**: a single-member region with the local driver
//!    and jailed `airlock node` tasks; each round waits until the pool has settled (floor warm, no
//!    kernel starting: on this one machine a starting kernel would take the cores the claim
//!    needs), claims a new document over HTTP, connects over QUIC with the returned token, and
//!    runs `1 + 1`. Peers: a bare ipykernel's cold start and
//!    Kernel Gateway's create → first result.
//! 2. **Claims per second through three coordinators**: three members (Raft with mutual TLS, each
//!    with its HTTP API) on loopback; many concurrent HTTP clients claim new documents through all
//!    three. The warm tasks are registered straight into the replicated state (no kernels): a
//!    claim's cost is HTTP, the Raft round and the state machine, which is what is measured.
//! 3. **Pool refill after a burst of 50 claims**: the region of (1) with a floor of 5; 50
//!    documents are claimed at once; the time until every claim is answered and until the pool is
//!    back at its floor.
//!
//! `cargo bench --bench coordinator` (root: the tasks are jailed). `AIRLOCK_BENCH_QUICK=1` runs
//! smaller rounds; `AIRLOCK_BENCH_SKIP_PEERS=1` skips the peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_client::coordinator::ApiClient;
use airlock_client::{Client, Target, Trust};
use airlock_coordinator::api::{ApiRole, ApiToken};
use airlock_coordinator::cluster::{self, ProcessConfig};
use airlock_coordinator::driver::local::{LocalDriver, LocalDriverConfig, NodeCommand};
use airlock_coordinator::model::{
    Command, Endpoints, PoolTarget, Region, RuntimeVersion, TaskId, Tier,
};
use airlock_coordinator::pool::PoolConfig;
use airlock_coordinator::raft::RaftConfig;
use airlock_coordinator::raft::tls::ClusterCa;
use airlock_coordinator::service::{Consensus, CoordinatorConfig};
use airlock_protocol::token::Role;
use support::peer::peer_number;

const TOKEN: &str = "bench-operator-token-000000000000";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    run().await
}

fn quick() -> bool {
    std::env::var_os("AIRLOCK_BENCH_QUICK").is_some()
}

fn progress(message: &str) {
    eprintln!("coordinator bench: {message}");
}

async fn run() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let python = match std::env::var_os("AIRLOCK_PYTHON") {
        Some(python) => python.into(),
        None => {
            airlock_node::kernel::ensure_python(
                &airlock_node::kernel::PythonSource::default_managed()?,
                airlock_node::kernel::Progress::Auto,
            )
            .await?
        }
    };
    let rounds = if quick() { 10 } else { 40 };
    progress(&format!("claim → first result, {rounds} rounds"));
    let (first_results, refill) = warm_pool_figures(&python, rounds).await?;
    let claims = if quick() { 2_000 } else { 10_000 };
    progress(&format!(
        "claims per second through three coordinators, {claims} claims"
    ));
    let throughput = claims_per_second(claims).await?;
    let peer = if std::env::var_os("AIRLOCK_BENCH_SKIP_PEERS").is_some() {
        Err("skipped (AIRLOCK_BENCH_SKIP_PEERS)".to_owned())
    } else {
        support::peer::run(progress).await
    };

    println!();
    println!("coordinator, one region on this machine (2 cores)");
    println!(
        "  claim -> first execute result, settled warm pool  p50 {:>7.1} ms   p99 {:>7.1} ms   (n={}; target p50 <= 25 ms: {})",
        first_results.p(50.0),
        first_results.p(99.0),
        first_results.0.len(),
        if first_results.p(50.0) <= 25.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    match &peer {
        Ok(peer) => {
            let figure = |path: &[&str]| {
                peer_number(peer, path).map_or("?".to_owned(), |v| format!("{v:.0} ms"))
            };
            println!(
                "  peer: bare ipykernel cold start {}; Kernel Gateway create -> first result {}",
                figure(&["raw_cold_start_ms", "median"]),
                figure(&["kg_create_ms", "median"])
            );
        }
        Err(why) => println!("  peer: not measured: {why}"),
    }
    println!(
        "  claims through three coordinators: {:.0}/s ({} claims in {:.2} s, {} in flight; target >= 5,000/s: {})",
        throughput.rate,
        throughput.claims,
        throughput.seconds,
        throughput.in_flight,
        if throughput.rate >= 5_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  peer: Nomad places ~1,500-3,750 allocations/s on large clusters (published; not measured here)"
    );
    println!(
        "  burst of {} claims with a floor of {}: all answered in {:.1} s; pool back at its floor {:.1} s after the burst",
        refill.burst,
        refill.floor,
        refill.answered.as_secs_f64(),
        refill.refilled.as_secs_f64()
    );
    Ok(())
}

/// Sorted milliseconds.
struct Samples(Vec<f64>);

impl Samples {
    fn new(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        Samples(samples)
    }

    fn p(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

struct Refill {
    burst: usize,
    floor: u32,
    answered: Duration,
    refilled: Duration,
}

/// A single-member region with jailed tasks: claim → first result rounds, then the burst.
async fn warm_pool_figures(
    python: &std::path::Path,
    rounds: usize,
) -> anyhow::Result<(Samples, Refill)> {
    let dir = tempfile::tempdir()?;
    let runtime = tempfile::Builder::new().prefix("al-bench-").tempdir()?;
    let ca = ClusterCa::generate("bench")?;
    let floor = 5;
    let mut coordinator = CoordinatorConfig::local(
        "bench",
        dir.path().join("store").display().to_string(),
        String::new(),
    );
    coordinator.pools = vec![(
        Tier("standard".into()),
        PoolTarget {
            floor,
            ceiling: 64,
            buffer_factor: 2.0,
            version: RuntimeVersion(env!("CARGO_PKG_VERSION").into()),
        },
    )];
    coordinator.claim_wait = Duration::from_secs(300);
    coordinator.extra_node_args = vec!["--python".into(), python.display().to_string()];
    let mut driver = LocalDriverConfig::new(
        NodeCommand::AirlockNode {
            binary: env!("CARGO_BIN_EXE_airlock").into(),
        },
        runtime.path().to_owned(),
        dir.path().join("logs"),
    );
    driver.stop_grace = Duration::from_secs(2);
    let pool = PoolConfig {
        max_concurrent_starts: 64,
        ..PoolConfig::default()
    };
    let running = cluster::start(
        ProcessConfig {
            raft: RaftConfig::new(
                1,
                dir.path().join("raft"),
                ([127, 0, 0, 1], 0).into(),
                ca.issue("c1", &["127.0.0.1"])?,
            ),
            api_listen: ([127, 0, 0, 1], 0).into(),
            initialize: Some(BTreeMap::from([(1, String::new())])),
            coordinator,
            pool,
            tokens: vec![ApiToken {
                token: TOKEN.into(),
                role: ApiRole::Operator,
            }],
        },
        Some(Arc::new(LocalDriver::new(driver))),
        None,
    )
    .await?;
    let api = ApiClient::new(&format!("http://{}", running.api_addr), TOKEN)?;
    let warm = |running: &cluster::RunningCoordinator<LocalDriver>| {
        running
            .coordinator
            .read(|state| state.counts().values().map(|c| c.warm).sum::<u32>())
    };
    let wait_warm = |at_least: u32| {
        let running = &running;
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while warm(running) < at_least {
                assert!(Instant::now() < deadline, "the pool did not warm up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_warm(floor).await;
    let mut samples = Vec::with_capacity(rounds);
    let starting = |running: &cluster::RunningCoordinator<LocalDriver>| {
        running
            .coordinator
            .read(|state| state.counts().values().map(|c| c.starting).sum::<u32>())
    };
    for round in 0..rounds {
        // Each round starts from a settled pool: the floor warm and no kernel starting. On one
        // 2-core machine a kernel starting beside the claim would measure the kernel's start,
        // which a cluster runs on other machines.
        wait_warm(floor).await;
        while starting(&running) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let session = api
            .claim(&format!("first-{round}"), "bench", Role::Editor)
            .await?;
        let target = Target::Quic {
            addr: session.quic.as_deref().unwrap().parse()?,
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(session.fingerprint.clone()),
        };
        let mut client = Client::connect(&target, &session.token).await?;
        client.run("1 + 1", |_| {}).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        client.close().await;
    }

    // The burst.
    wait_warm(floor).await;
    let burst = if quick() { 15 } else { 50 };
    progress(&format!("burst of {burst} claims"));
    let started = Instant::now();
    let claims: Vec<_> = (0..burst)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                api.claim(&format!("burst-{i}"), "bench", Role::Editor)
                    .await
            })
        })
        .collect();
    for claim in claims {
        claim.await??;
    }
    let answered = started.elapsed();
    wait_warm(floor).await;
    let refilled = started.elapsed();
    running.shutdown().await;
    Ok((
        Samples::new(samples),
        Refill {
            burst,
            floor,
            answered,
            refilled,
        },
    ))
}

struct Throughput {
    rate: f64,
    claims: usize,
    seconds: f64,
    in_flight: usize,
}

/// Three members; `claims` synthetic warm tasks; concurrent claims through all three APIs.
async fn claims_per_second(claims: usize) -> anyhow::Result<Throughput> {
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::generate("bench")?;
    let raft_ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let members: BTreeMap<u64, String> = raft_ports
        .iter()
        .enumerate()
        .map(|(i, port)| (i as u64 + 1, format!("127.0.0.1:{port}")))
        .collect();
    let mut coordinators = Vec::new();
    for (i, port) in raft_ports.iter().enumerate() {
        let id = i as u64 + 1;
        let mut coordinator = CoordinatorConfig::local(
            "bench",
            dir.path().join("store").display().to_string(),
            String::new(),
        );
        coordinator.pools = Vec::new();
        let running = cluster::start::<LocalDriver>(
            ProcessConfig {
                raft: RaftConfig::new(
                    id,
                    dir.path().join(format!("raft-{id}")),
                    ([127, 0, 0, 1], *port).into(),
                    ca.issue(&format!("c{id}"), &["127.0.0.1"])?,
                ),
                api_listen: ([127, 0, 0, 1], 0).into(),
                initialize: (id == 1).then(|| members.clone()),
                coordinator,
                pool: PoolConfig::default(),
                tokens: vec![ApiToken {
                    token: TOKEN.into(),
                    role: ApiRole::Operator,
                }],
            },
            None,
            None,
        )
        .await?;
        coordinators.push(running);
    }
    // Wait for a leader and its signing key.
    let deadline = Instant::now() + Duration::from_secs(30);
    while coordinators[0]
        .coordinator
        .read(|state| state.signing_key().is_none())
    {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress("registering the synthetic warm tasks");
    let leader = coordinators
        .iter()
        .find(|c| c.coordinator.consensus().is_leader())
        .unwrap_or(&coordinators[0]);
    let consensus = leader.coordinator.consensus().clone();
    let now = airlock_coordinator::service::now_ms();
    let region = Region("bench".into());
    let tier = Tier("standard".into());
    // In batches, so the seeding does not swamp the leader (it is not what is measured).
    for batch in (0..claims).collect::<Vec<_>>().chunks(256) {
        let registering: Vec<_> = batch
            .iter()
            .map(|&i| {
                let consensus = consensus.clone();
                let (region, tier) = (region.clone(), tier.clone());
                tokio::spawn(async move {
                    let id = TaskId(format!("synthetic-{i}"));
                    consensus
                        .propose(Command::AddTask {
                            id: id.clone(),
                            region,
                            tier,
                            version: RuntimeVersion("bench".into()),
                            driver_handle: format!("none-{i}"),
                            now_ms: now,
                            lease_ms: 3_600_000,
                        })
                        .await?;
                    consensus
                        .propose(Command::TaskReady {
                            id,
                            endpoints: Endpoints {
                                quic: Some("127.0.0.1:9".into()),
                                websocket: None,
                                fingerprint: "00".into(),
                            },
                            now_ms: now,
                            lease_ms: 3_600_000,
                        })
                        .await
                })
            })
            .collect();
        for task in registering {
            task.await??;
        }
    }
    progress("claiming");
    let apis: Vec<ApiClient> = coordinators
        .iter()
        .map(|c| ApiClient::new(&format!("http://{}", c.api_addr), TOKEN).unwrap())
        .collect();
    let in_flight = 96;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let api = apis[w % apis.len()].clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= claims {
                        return Ok::<_, anyhow::Error>(());
                    }
                    api.claim(&format!("doc-{i}"), "bench", Role::Editor)
                        .await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    for running in coordinators {
        running.shutdown().await;
    }
    Ok(Throughput {
        rate: claims as f64 / seconds,
        claims,
        seconds,
        in_flight,
    })
}
