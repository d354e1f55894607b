//! Property tests of the replicated state machine: random command sequences (over small sets of
//! task ids, documents, pools and tenants, so they collide often) never let a document map to two
//! tasks or a task serve two documents, a document's epochs only grow, and a claim under another
//! tenant than the document's allocation changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use airlock_coordinator::model::{
    Command, Endpoints, PoolTarget, Region, Response, RuntimeVersion, TaskId, TaskState, Tenant,
    Tier,
};
use airlock_coordinator::state::State;
use proptest::prelude::*;

/// One step, abstract: turned into a [`Command`] against the current state (so a release can
/// name the epoch a document is really served at, or a stale one).
#[derive(Debug, Clone)]
enum Op {
    Add {
        task: u8,
        pool: u8,
        version: u8,
    },
    Ready {
        task: u8,
    },
    Heartbeat {
        task: u8,
        lease_ms: u64,
    },
    Claim {
        document: u8,
        pool: u8,
        tenant: u8,
    },
    Release {
        document: u8,
        current_epoch: bool,
    },
    Expire,
    MarkDead {
        task: u8,
    },
    Drain {
        task: u8,
    },
    Remove {
        task: u8,
    },
    Target {
        pool: u8,
        version: u8,
    },
    Tick {
        ms: u64,
    },
    /// Egress IP sets: tenant → the last octets of its addresses (0 is unspecified: rejected).
    EgressIps {
        sets: Vec<(u8, Vec<u8>)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..8u8, 0..2u8, 0..2u8).prop_map(|(task, pool, version)| Op::Add { task, pool, version }),
        3 => (0..8u8).prop_map(|task| Op::Ready { task }),
        2 => (0..8u8, 0..3_000u64).prop_map(|(task, lease_ms)| Op::Heartbeat { task, lease_ms }),
        5 => (0..6u8, 0..2u8, 0..2u8).prop_map(|(document, pool, tenant)| Op::Claim { document, pool, tenant }),
        2 => (0..6u8, any::<bool>()).prop_map(|(document, current_epoch)| Op::Release { document, current_epoch }),
        1 => Just(Op::Expire),
        1 => (0..8u8).prop_map(|task| Op::MarkDead { task }),
        1 => (0..8u8).prop_map(|task| Op::Drain { task }),
        1 => (0..8u8).prop_map(|task| Op::Remove { task }),
        1 => (0..2u8, 0..2u8).prop_map(|(pool, version)| Op::Target { pool, version }),
        2 => (0..2_000u64).prop_map(|ms| Op::Tick { ms }),
        1 => prop::collection::vec((0..3u8, prop::collection::vec(0..4u8, 0..3)), 0..3)
            .prop_map(|sets| Op::EgressIps { sets }),
    ]
}

fn pool(n: u8) -> (Region, Tier) {
    (
        Region("eu".into()),
        Tier(if n == 0 { "small" } else { "large" }.into()),
    )
}

fn task_id(n: u8) -> TaskId {
    TaskId(format!("t{n}"))
}

fn document(n: u8) -> String {
    format!("doc-{n}")
}

fn to_command(op: &Op, state: &State, now_ms: &mut u64) -> Option<Command> {
    let now = *now_ms;
    Some(match *op {
        Op::Add {
            task,
            pool: p,
            version,
        } => {
            let (region, tier) = pool(p);
            Command::AddTask {
                id: task_id(task),
                region,
                tier,
                version: RuntimeVersion(format!("v{version}")),
                driver_handle: format!("h{task}"),
                now_ms: now,
                lease_ms: 2_000,
            }
        }
        Op::Ready { task } => Command::TaskReady {
            id: task_id(task),
            endpoints: Endpoints {
                quic: Some(format!("t{task}:1")),
                websocket: None,
                fingerprint: String::new(),
            },
            now_ms: now,
            lease_ms: 2_000,
        },
        Op::Heartbeat { task, lease_ms } => Command::Heartbeat {
            id: task_id(task),
            now_ms: now,
            lease_ms,
        },
        Op::Claim {
            document: d,
            pool: p,
            tenant,
        } => {
            let (region, tier) = pool(p);
            Command::Claim {
                document: document(d),
                region,
                tier,
                now_ms: now,
                tenant: Tenant(format!("tenant-{tenant}")),
            }
        }
        Op::Release {
            document: d,
            current_epoch,
        } => {
            let epoch = match state.allocation(&document(d)) {
                Some(a) if current_epoch => a.epoch,
                Some(a) => a.epoch.saturating_sub(1),
                None => 1,
            };
            Command::Release {
                document: document(d),
                epoch,
            }
        }
        Op::Expire => Command::ExpireLeases { now_ms: now },
        Op::MarkDead { task } => Command::MarkDead {
            id: task_id(task),
            reason: "gone".into(),
        },
        Op::Drain { task } => Command::Drain {
            id: task_id(task),
            reason: "drain".into(),
        },
        Op::Remove { task } => Command::RemoveTask { id: task_id(task) },
        Op::Target { pool: p, version } => {
            let (region, tier) = pool(p);
            Command::SetPoolTarget {
                region,
                tier,
                target: PoolTarget {
                    floor: 1,
                    ceiling: 8,
                    buffer_factor: 1.0,
                    version: RuntimeVersion(format!("v{version}")),
                },
            }
        }
        Op::EgressIps { ref sets } => Command::SetEgressIps {
            region: Region("eu".into()),
            tenants: sets
                .iter()
                .map(|(tenant, octets)| {
                    (
                        Tenant(format!("tenant-{tenant}")),
                        octets
                            .iter()
                            .map(|&o| match o {
                                0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                                o => IpAddr::V4(Ipv4Addr::new(203, 0, 113, o)),
                            })
                            .collect(),
                    )
                })
                .collect(),
            now_ms: now,
        },
        Op::Tick { ms } => {
            *now_ms += ms;
            return None;
        }
    })
}

/// What the history must satisfy, observed after every step.
#[derive(Default)]
struct Observer {
    /// Documents each task (this incarnation of its id) was ever claimed for.
    served: BTreeMap<TaskId, BTreeSet<String>>,
    /// The highest epoch each document was ever served at.
    epochs: BTreeMap<String, u64>,
}

impl Observer {
    fn check(&mut self, index: u64, command: &Command, response: &Response, state: &State) {
        let violations = state.violations();
        assert!(violations.is_empty(), "after {command:?}: {violations:?}");

        if let (Command::AddTask { id, .. }, Response::Ok) = (command, response) {
            // A new task under an id the driver reused after `RemoveTask`.
            self.served.remove(id);
        }
        if let (Command::Claim { tenant, .. }, Response::Claimed { allocation, .. }) =
            (command, response)
        {
            assert_eq!(
                &allocation.tenant, tenant,
                "a claim is answered with its own tenant's allocation"
            );
        }
        if let Response::Claimed {
            allocation,
            task,
            fresh,
        } = response
        {
            assert_eq!(allocation.task, task.id);
            if *fresh {
                assert_eq!(
                    allocation.epoch, index,
                    "a fresh claim's epoch is its log index"
                );
            } else {
                assert!(allocation.epoch < index);
            }
        }

        let mut by_document: BTreeMap<&str, Vec<&TaskId>> = BTreeMap::new();
        for task in state.tasks() {
            if let TaskState::Claimed { document, epoch } = &task.state {
                by_document.entry(document).or_default().push(&task.id);
                let served = self.served.entry(task.id.clone()).or_default();
                served.insert(document.clone());
                assert_eq!(served.len(), 1, "{} served {served:?}", task.id);
                assert_eq!(state.allocation(document).map(|a| a.epoch), Some(*epoch));
            }
        }
        for (document, tasks) in by_document {
            assert_eq!(tasks.len(), 1, "{document} is served by {tasks:?}");
        }
        for allocation in state.allocations() {
            let last = self.epochs.entry(allocation.document.clone()).or_insert(0);
            assert!(
                allocation.epoch >= *last,
                "{}'s epoch went from {last} to {}",
                allocation.document,
                allocation.epoch
            );
            *last = allocation.epoch;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_histories_keep_one_task_per_document_and_growing_epochs(
        ops in prop::collection::vec(op(), 1..200)
    ) {
        let mut state = State::new();
        let mut replica = State::new();
        let mut observer = Observer::default();
        let mut now_ms = 0;
        let mut index = 0;
        let mut log = Vec::new();
        for op in &ops {
            let Some(command) = to_command(op, &state, &mut now_ms) else { continue };
            index += 1;
            let before = state.clone();
            let response = state.apply(index, command.clone());
            if let Response::TenantMismatch { document, allocated } = &response {
                prop_assert_eq!(&state, &before, "a refused claim changed the state");
                prop_assert_eq!(state.allocation(document).map(|a| &a.tenant), Some(allocated));
            }
            observer.check(index, &command, &response, &state);
            // Determinism: another replica applying the same entry answers the same.
            prop_assert_eq!(&replica.apply(index, command.clone()), &response);
            log.push(command);
        }
        prop_assert_eq!(&state, &replica);
        // A snapshot of it (serde) is the same state, and goes on the same way.
        let mut restored: State = serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap();
        prop_assert_eq!(&restored, &state);
        prop_assert!(restored.violations().is_empty());
        for (i, command) in log.iter().enumerate() {
            let i = index + 1 + i as u64;
            prop_assert_eq!(restored.apply(i, command.clone()), state.apply(i, command.clone()));
        }
        prop_assert_eq!(&restored, &state);
    }
}
