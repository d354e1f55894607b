//! Coordinators in one process on loopback, with real mutual TLS between them: proposals and
//! linearizable reads through any member, failover after the leader stops (measured), a
//! stopped member restarted from its data directory catching up, a late learner catching up
//! from a snapshot, and peers with a certificate from another CA refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_coordinator::model::{
    Command, Endpoints, PoolTarget, Region, Response, RuntimeVersion, TaskId, Tenant, Tier,
};
use airlock_coordinator::raft::tls::{ClusterCa, TlsMaterial};
use airlock_coordinator::raft::{
    ClusterStatus, ProposeError, RaftConfig, RaftHandle, Role, StateEvent,
};
use tempfile::TempDir;

/// The failover budget of DESIGN.md §8 (leader killed → claims succeed again).
const FAILOVER_BUDGET: Duration = Duration::from_millis(1_500);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn tls(ca: &ClusterCa, id: u64) -> TlsMaterial {
    ca.issue(&format!("coordinator-{id}"), &["127.0.0.1", "localhost"])
        .unwrap()
}

fn config(id: u64, dir: &Path, addr: SocketAddr, tls: TlsMaterial) -> RaftConfig {
    RaftConfig::new(id, dir.to_path_buf(), addr, tls)
}

async fn start(id: u64, dir: &Path, addr: SocketAddr, ca: &ClusterCa) -> RaftHandle {
    RaftHandle::start(config(id, dir, addr, tls(ca, id)))
        .await
        .unwrap()
}

/// Waits (on status changes, not by sleeping) until `check` holds for `node`'s status.
async fn wait_for(
    node: &RaftHandle,
    what: &str,
    check: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let mut watch = node.watch_status();
    let wait = async {
        let mut status = watch.current();
        while !check(&status) {
            status = watch.changed().await.expect("member stopped");
        }
        status
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "node {}: timed out waiting for {what}: {:?}",
                node.id(),
                node.status()
            )
        })
}

fn region() -> Region {
    Region("eu".into())
}

fn tier() -> Tier {
    Tier("small".into())
}

fn add_task(id: &str, now_ms: u64) -> Command {
    Command::AddTask {
        id: TaskId(id.into()),
        region: region(),
        tier: tier(),
        version: RuntimeVersion("v1".into()),
        driver_handle: format!("pid-{id}"),
        now_ms,
        lease_ms: 600_000,
    }
}

fn ready(id: &str, now_ms: u64) -> Command {
    Command::TaskReady {
        id: TaskId(id.into()),
        endpoints: Endpoints {
            quic: Some(format!("127.0.0.1:{}", 4000 + id.len())),
            websocket: None,
            fingerprint: "00".into(),
        },
        now_ms,
        lease_ms: 600_000,
    }
}

fn claim(document: &str, now_ms: u64) -> Command {
    Command::Claim {
        document: document.into(),
        region: region(),
        tier: tier(),
        now_ms,
        tenant: Tenant::default(),
    }
}

struct Member {
    id: u64,
    dir: TempDir,
    addr: SocketAddr,
    handle: RaftHandle,
}

/// Three members, initialized, with a leader.
async fn three(ca: &ClusterCa) -> Vec<Member> {
    let mut members = Vec::new();
    for id in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let handle = start(id, dir.path(), loopback(), ca).await;
        members.push(Member {
            id,
            addr: handle.local_addr(),
            dir,
            handle,
        });
    }
    let all: BTreeMap<u64, String> = members.iter().map(|m| (m.id, m.addr.to_string())).collect();
    members[0].handle.initialize(all.clone()).await.unwrap();
    // Initializing twice is harmless (a restarted `airlock dev` does it every time).
    members[0].handle.initialize(all).await.unwrap();
    for m in &members {
        wait_for(&m.handle, "a leader", |s| s.leader.is_some()).await;
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_propose_anywhere_fail_over_and_rejoin() {
    let ca = ClusterCa::generate("airlock test cluster").unwrap();
    let mut members = three(&ca).await;
    let leader = members[0].handle.leader().unwrap();
    let follower = members
        .iter()
        .find(|m| m.id != leader)
        .unwrap()
        .handle
        .clone();
    assert_eq!(follower.status().voters.len(), 3);

    // Writes through every member, followers included.
    for (i, m) in members.iter().enumerate() {
        let id = format!("t{i}");
        assert_eq!(
            m.handle.propose(add_task(&id, 1)).await.unwrap(),
            Response::Ok
        );
        assert_eq!(m.handle.propose(ready(&id, 2)).await.unwrap(), Response::Ok);
    }
    let target = Command::SetPoolTarget {
        region: region(),
        tier: tier(),
        target: PoolTarget {
            floor: 1,
            ceiling: 10,
            buffer_factor: 1.0,
            version: RuntimeVersion("v1".into()),
        },
    };
    assert_eq!(follower.propose(target).await.unwrap(), Response::Ok);

    // Every replica sees a claim as it is applied.
    let mut events: Vec<_> = members.iter().map(|m| m.handle.subscribe()).collect();
    let Response::Claimed {
        allocation, fresh, ..
    } = follower.propose(claim("doc-a", 3)).await.unwrap()
    else {
        panic!("the claim found no warm task");
    };
    assert!(fresh);
    for rx in &mut events {
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let StateEvent::Applied {
                    command, response, ..
                } = rx.recv().await.unwrap()
                    && let Command::Claim { document, .. } = &*command
                {
                    return (document.clone(), response);
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(seen.0, "doc-a");
        assert!(matches!(*seen.1, Response::Claimed { fresh: true, .. }));
    }
    // A linearizable read on any member sees the claim at once.
    for m in &members {
        let epoch = m
            .handle
            .linearizable_read(|s| s.allocation("doc-a").map(|a| a.epoch))
            .await
            .unwrap();
        assert_eq!(epoch, Some(allocation.epoch), "member {}", m.id);
    }
    // A second claim of the same document through another member returns the same task.
    let Response::Claimed {
        allocation: again,
        fresh,
        ..
    } = members[2].handle.propose(claim("doc-a", 4)).await.unwrap()
    else {
        panic!("no claim");
    };
    assert!(!fresh);
    assert_eq!(again, allocation);

    // Stop the leader; a survivor's proposals succeed again within the budget.
    let old = members.iter().position(|m| m.id == leader).unwrap();
    let survivor = members[(old + 1) % 3].handle.clone();
    let started = Instant::now();
    members[old].handle.shutdown().await;
    let stopped = started.elapsed();
    let response = survivor
        .propose(add_task("after-failover", 5))
        .await
        .unwrap();
    let failover = started.elapsed();
    assert_eq!(response, Response::Ok);
    let new_leader = survivor.leader().unwrap();
    assert_ne!(new_leader, leader);
    println!(
        "failover: leader {leader} stopped (shutdown took {stopped:?}); a proposal through {} \
         succeeded {failover:?} after the stop began (new leader {new_leader}; budget {FAILOVER_BUDGET:?})",
        survivor.id()
    );
    assert!(failover < FAILOVER_BUDGET, "failover took {failover:?}");
    // Claims keep their epochs across the change of leader.
    let Response::Claimed {
        allocation: after,
        fresh,
        ..
    } = survivor.propose(claim("doc-a", 6)).await.unwrap()
    else {
        panic!("no claim");
    };
    assert!(!fresh);
    assert_eq!(after, allocation);
    let Response::Claimed {
        allocation: other,
        fresh: true,
        ..
    } = survivor.propose(claim("doc-b", 7)).await.unwrap()
    else {
        panic!("no claim for doc-b");
    };
    assert!(other.epoch > allocation.epoch);

    // The old leader restarts from its data directory, on its old address, and catches up.
    let m = &mut members[old];
    m.handle = start(m.id, m.dir.path(), m.addr, &ca).await;
    let target_index = survivor.status().last_applied_index;
    let status = wait_for(&m.handle, "catching up", |s| {
        s.last_applied_index >= target_index && s.leader.is_some()
    })
    .await;
    assert_eq!(status.role, Role::Follower);
    assert!(
        m.handle
            .read(|s| s.task(&TaskId("after-failover".into())).is_some())
    );
    assert_eq!(
        m.handle.read(|s| s.allocation("doc-b").map(|a| a.epoch)),
        Some(other.epoch)
    );
    // And it serves proposals again, forwarding them to the new leader.
    assert_eq!(
        m.handle.propose(add_task("after-rejoin", 8)).await.unwrap(),
        Response::Ok
    );
    for m in &members {
        let has = m
            .handle
            .linearizable_read(|s| s.task(&TaskId("after-rejoin".into())).is_some())
            .await
            .unwrap();
        assert!(has, "member {}", m.id);
    }
    for m in &members {
        m.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_added_late_catches_up_from_a_snapshot() {
    let ca = ClusterCa::generate("airlock test cluster").unwrap();
    let dir1 = tempfile::tempdir().unwrap();
    let mut config1 = config(1, dir1.path(), loopback(), tls(&ca, 1));
    config1.snapshot_every = 20;
    config1.logs_kept_after_snapshot = 0;
    let one = RaftHandle::start(config1).await.unwrap();
    one.initialize(BTreeMap::from([(1, one.local_addr().to_string())]))
        .await
        .unwrap();
    wait_for(&one, "leadership", |s| s.role == Role::Leader).await;
    for i in 0..60 {
        assert_eq!(
            one.propose(add_task(&format!("t{i}"), i)).await.unwrap(),
            Response::Ok
        );
    }
    // The log up to the snapshot is gone, so a new member can only start from the snapshot.
    let status = wait_for(&one, "a snapshot", |s| s.snapshot_index >= Some(40)).await;
    println!(
        "leader snapshot at {:?}, log at {:?}",
        status.snapshot_index, status.last_log_index
    );

    let dir2 = tempfile::tempdir().unwrap();
    let two = start(2, dir2.path(), loopback(), &ca).await;
    let mut events = two.subscribe();
    one.add_learner(2, two.local_addr().to_string())
        .await
        .unwrap();
    let learned = wait_for(&two, "the snapshot", |s| s.snapshot_index.is_some()).await;
    assert_eq!(learned.role, Role::Learner);
    let replaced = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let StateEvent::Replaced { index } = events.recv().await.unwrap() {
                return index;
            }
        }
    })
    .await
    .unwrap();
    assert!(replaced >= 40, "installed a snapshot up to {replaced}");
    let applied = one.status().last_applied_index;
    wait_for(&two, "the rest of the log", |s| {
        s.last_applied_index >= applied
    })
    .await;
    assert_eq!(two.read(|s| s.tasks().count()), 60);
    assert_eq!(two.read(|s| s.clone()), one.read(|s| s.clone()));

    // Promoted to voter, it takes proposals (forwarded to the leader).
    one.change_membership(BTreeSet::from([1, 2])).await.unwrap();
    wait_for(&two, "voting", |s| s.voters.len() == 2).await;
    assert_eq!(
        two.propose(add_task("t-late", 100)).await.unwrap(),
        Response::Ok
    );
    assert!(
        two.linearizable_read(|s| s.task(&TaskId("t-late".into())).is_some())
            .await
            .unwrap()
    );
    one.shutdown().await;
    two.shutdown().await;
}

/// A client configuration for poking at a member's listener by hand.
fn raw_client(trust: &TlsMaterial, identity: Option<&TlsMaterial>) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in &trust.ca_certs {
        roots.add(ca.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_a_certificate_from_another_ca_are_refused() {
    let ca = ClusterCa::generate("airlock test cluster").unwrap();
    let rogue_ca = ClusterCa::generate("someone else").unwrap();
    let dir1 = tempfile::tempdir().unwrap();
    let mut config1 = config(1, dir1.path(), loopback(), tls(&ca, 1));
    config1.timing.propose_timeout = Duration::from_secs(2);
    let one = RaftHandle::start(config1).await.unwrap();
    one.initialize(BTreeMap::from([(1, one.local_addr().to_string())]))
        .await
        .unwrap();
    wait_for(&one, "leadership", |s| s.role == Role::Leader).await;
    let url = format!("https://{}/raft/forward", one.local_addr());
    let body = serde_json::json!({"op": "read_index"});
    let member = tls(&ca, 9);
    let rogue = rogue_ca.issue("coordinator-9", &["127.0.0.1"]).unwrap();

    // A member of the cluster gets through (the control case).
    let ok = raw_client(&member, Some(&member))
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success());
    assert!(ok.text().await.unwrap().contains("read_index"));
    // A certificate from another CA, or none, is refused during the handshake.
    for (who, client) in [
        (
            "another CA's certificate",
            raw_client(&member, Some(&rogue)),
        ),
        ("no certificate", raw_client(&member, None)),
    ] {
        let refused = client.post(&url).json(&body).send().await;
        assert!(refused.is_err(), "{who} got through: {refused:?}");
    }
    // And the member will not talk to a server with another CA's certificate: a rogue
    // coordinator added as a learner never receives the log.
    let dir2 = tempfile::tempdir().unwrap();
    let rogue_member = RaftHandle::start(config(2, dir2.path(), loopback(), rogue))
        .await
        .unwrap();
    let joined = one
        .add_learner(2, rogue_member.local_addr().to_string())
        .await;
    assert!(
        matches!(
            joined,
            Err(ProposeError::Indeterminate { .. } | ProposeError::NoLeader { .. })
        ),
        "{joined:?}"
    );
    assert_eq!(rogue_member.read(|s| s.tasks().count()), 0);
    assert_eq!(rogue_member.status().last_applied_index, None);
    one.shutdown().await;
    rogue_member.shutdown().await;
}
