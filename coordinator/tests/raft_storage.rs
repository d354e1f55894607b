//! The redb log and state machine store: openraft's own storage conformance suite, and what
//! survives closing and reopening the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use airlock_coordinator::model::{
    Command, Endpoints, Region, Response, RuntimeVersion, TaskId, Tenant, Tier,
};
use airlock_coordinator::raft::storage::{self, LogStore, StateMachineStore};
use airlock_coordinator::raft::{Peer, TypeConfig};
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageError,
};
use tempfile::TempDir;

struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, state_machine, _closed) = storage::open(dir.path()).unwrap();
        Ok((dir, log, state_machine))
    }
}

#[test]
fn the_redb_store_passes_openraft_storage_suite() {
    Suite::test_all(RedbStoreBuilder).unwrap();
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

fn commands() -> Vec<Command> {
    let region = Region("eu".into());
    let tier = Tier("small".into());
    vec![
        Command::AddTask {
            id: TaskId("t1".into()),
            region: region.clone(),
            tier: tier.clone(),
            version: RuntimeVersion("v1".into()),
            driver_handle: "pid-1".into(),
            now_ms: 0,
            lease_ms: 60_000,
        },
        Command::TaskReady {
            id: TaskId("t1".into()),
            endpoints: Endpoints {
                quic: Some("127.0.0.1:4433".into()),
                websocket: None,
                fingerprint: "ab".into(),
            },
            now_ms: 10,
            lease_ms: 60_000,
        },
        Command::Claim {
            document: "doc".into(),
            region: region.clone(),
            tier,
            now_ms: 20,
            tenant: Tenant("acme".into()),
        },
        Command::SetEgressIps {
            region,
            tenants: BTreeMap::from([(
                Tenant("acme".into()),
                vec!["203.0.113.10".parse().unwrap()],
            )]),
            now_ms: 30,
        },
    ]
}

/// Everything applied, and the log, are there after the file is closed and opened again; and
/// a snapshot installed elsewhere reproduces the state.
#[tokio::test]
async fn state_log_and_snapshot_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let membership = Entry::<TypeConfig> {
        log_id: log_id(1),
        payload: EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([1])],
            std::collections::BTreeMap::from([(
                1,
                Peer {
                    addr: "127.0.0.1:1".into(),
                },
            )]),
        )),
    };
    let entries: Vec<Entry<TypeConfig>> = std::iter::once(membership)
        .chain(
            commands()
                .into_iter()
                .enumerate()
                .map(|(i, c)| entry(i as u64 + 2, c)),
        )
        .collect();
    let state_before;
    {
        let (mut log, mut sm, closed) = storage::open(dir.path()).unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        let responses = sm.apply(entries.clone()).await.unwrap();
        assert!(
            matches!(responses[3], Response::Claimed { fresh: true, .. }),
            "{responses:?}"
        );
        state_before = sm.read(|s| s.clone());
        drop((log, sm));
        closed.wait().await;
    }
    let (mut log, mut sm, _closed) = storage::open(dir.path()).unwrap();
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(5)));
    assert_eq!(membership.log_id(), &Some(log_id(1)));
    assert_eq!(sm.read(|s| s.clone()), state_before);
    assert_eq!(sm.read(|s| s.allocation("doc").map(|a| a.epoch)), Some(4));
    assert_eq!(
        sm.read(|s| s.allocation("doc").map(|a| a.tenant.clone())),
        Some(Tenant("acme".into()))
    );
    assert_eq!(
        sm.read(|s| s.egress_ips().map(|e| e.updated_ms)),
        Some(30),
        "the egress IP sets are on disk"
    );
    let back = log.try_get_log_entries(1..6).await.unwrap();
    assert_eq!(back.len(), 5);
    assert_eq!(back[4].log_id, log_id(5));

    // A snapshot of it installed on an empty store gives the same state.
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let (log2, mut sm2, closed2) = storage::open(other.path()).unwrap();
    sm2.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(sm2.read(|s| s.clone()), state_before);
    assert!(
        sm2.read(|s| s.egress_ips().is_some()),
        "the snapshot carries the egress IP sets"
    );
    drop((log2, sm2));
    closed2.wait().await;
    let (_log2, mut sm2, _closed2) = storage::open(other.path()).unwrap();
    assert_eq!(
        sm2.read(|s| s.clone()),
        state_before,
        "installed state is on disk"
    );
    assert_eq!(sm2.applied_state().await.unwrap().0, Some(log_id(5)));
}
