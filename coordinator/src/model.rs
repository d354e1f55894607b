//! The coordinator's vocabulary: tasks of the warm pool, allocations of documents to tasks (each
//! under a tenant), pool targets, the region's egress IP sets, and the commands that change them
//! through the Raft log.
//!
//! Everything here is plain data (serde), shared by the replicated state machine
//! ([`crate::state`]), the pool controller ([`crate::pool`]), the drivers ([`crate::driver`]) and
//! the HTTP API. Time is always passed in as Unix milliseconds chosen by the leader when it
//! proposes a command, so applying the log is deterministic on every replica.
//!
//! What is written into the Raft log and snapshots must keep decoding what an earlier version
//! wrote (rolling upgrades): a field added later carries `#[serde(default)]`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A kernel task: one `airlock node` process (or Nomad allocation) with its jail and kernel.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct TaskId(pub String);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A region: one Raft group of coordinators and the tasks they manage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Region(pub String);

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use airlock_protocol::ids::{BadTenant, Tenant};

/// The region's static egress IP sets: the addresses the egress gateway binds each tenant's
/// outbound connections to, published (`GET /v1/egress-ips`) so users can allow-list them.
/// A tenant without an entry has no static addresses published.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EgressIpSets {
    pub region: Region,
    /// Tenant → its addresses, sorted and without duplicates.
    pub tenants: BTreeMap<Tenant, Vec<IpAddr>>,
    /// When an operator last set them (Unix ms, the proposer's clock).
    pub updated_ms: u64,
}

/// Why egress IP sets cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEgressIps {
    #[error(transparent)]
    Tenant(#[from] BadTenant),
    #[error(
        "{ip} is {why}: it cannot be an egress address of tenant {tenant} (no socket can use it \
         as its source)"
    )]
    Address {
        tenant: Tenant,
        ip: IpAddr,
        why: &'static str,
    },
}

impl EgressIpSets {
    /// Checked and normalized sets: every tenant name valid, every address one a socket can
    /// bind; addresses sorted without duplicates; tenants without addresses left out (absent
    /// means "no static IPs published").
    pub fn new(
        region: Region,
        tenants: BTreeMap<Tenant, Vec<IpAddr>>,
        updated_ms: u64,
    ) -> Result<EgressIpSets, BadEgressIps> {
        let mut sets = BTreeMap::new();
        for (tenant, mut addresses) in tenants {
            Tenant::parse(tenant.as_str())?;
            if let Some((ip, why)) = addresses
                .iter()
                .find_map(|ip| unbindable_egress_ip(ip).map(|why| (*ip, why)))
            {
                return Err(BadEgressIps::Address { tenant, ip, why });
            }
            addresses.sort();
            addresses.dedup();
            if !addresses.is_empty() {
                sets.insert(tenant, addresses);
            }
        }
        Ok(EgressIpSets {
            region,
            tenants: sets,
            updated_ms,
        })
    }
}

/// Why an address cannot be in an egress IP set: no socket can use it as its source address.
/// (Private and loopback addresses are allowed, for regions on a private network or one machine.)
pub fn unbindable_egress_ip(ip: &IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast")
    } else {
        None
    }
}

/// A task's size: the jail's limits (`small`, `standard`, `large`; see the node's `Tier`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Tier(pub String);

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The version of the runtime a task runs (the `airlock` build, or the Nomad job's image).
/// Claims prefer the pool's current version; older warm tasks are drained.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct RuntimeVersion(pub String);

impl fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where clients reach a task, as the node reported when it became warm.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `host:port` of the QUIC endpoint, if any.
    pub quic: Option<String>,
    /// `ws://host:port/v1/doc`, if any.
    pub websocket: Option<String>,
    /// SHA-256 of the node's QUIC certificate, for clients to pin.
    pub fingerprint: String,
}

/// Where a task is in its life. A task serves at most one document, ever.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// The driver started it; its kernel is not ready yet.
    Starting,
    /// Ready and unclaimed: the warm pool.
    Warm,
    /// Serving `document` since the claim at `epoch`.
    Claimed { document: String, epoch: u64 },
    /// Being retired (an old runtime version, an excess warm task, a released document): no
    /// claim will take it; the driver stops it.
    Draining { reason: String },
    /// Gone: its lease ran out, its process ended, or it failed to start.
    Dead { reason: String },
}

/// One task as the coordinators know it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: TaskId,
    pub region: Region,
    pub tier: Tier,
    pub version: RuntimeVersion,
    pub state: TaskState,
    /// Set once the node reported ready.
    pub endpoints: Option<Endpoints>,
    /// The driver's handle for it (a process id, a Nomad dispatched job id).
    pub driver_handle: String,
    /// When the driver started it (Unix ms).
    pub started_at_ms: u64,
    /// When it became warm (Unix ms), for the pool's estimate of start time.
    pub warm_at_ms: Option<u64>,
    /// The task is presumed dead after this instant (Unix ms) without a heartbeat.
    pub lease_until_ms: u64,
}

/// A document served by a task since the claim at `epoch` (the Raft log index of that claim).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub document: String,
    pub task: TaskId,
    pub epoch: u64,
    /// When it was claimed (Unix ms).
    pub claimed_at_ms: u64,
    /// Whose document it is; a claim under another tenant is refused while it is allocated.
    #[serde(default)]
    pub tenant: Tenant,
}

/// How many warm tasks to keep for one (region, tier).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PoolTarget {
    /// Never fewer warm (or starting) tasks than this.
    pub floor: u32,
    /// Never more tasks (warm, starting and draining) than this.
    pub ceiling: u32,
    /// Desired warm = max(floor, claim rate × start time × buffer), capped by the ceiling.
    pub buffer_factor: f64,
    /// The runtime version new tasks get; warm tasks of other versions are drained.
    pub version: RuntimeVersion,
}

/// A change to the replicated state. Proposed by a coordinator, applied by every replica in log
/// order. `now_ms` is the proposer's clock.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// The driver started a task.
    AddTask {
        id: TaskId,
        region: Region,
        tier: Tier,
        version: RuntimeVersion,
        driver_handle: String,
        now_ms: u64,
        lease_ms: u64,
    },
    /// The task's node is ready to serve: it joins the warm pool.
    TaskReady {
        id: TaskId,
        endpoints: Endpoints,
        now_ms: u64,
        lease_ms: u64,
    },
    /// The task's node is alive: its lease runs until `now_ms + lease_ms`.
    Heartbeat {
        id: TaskId,
        now_ms: u64,
        lease_ms: u64,
    },
    /// Serve `document` for `tenant`: the task already serving it (if it is that tenant's), or
    /// a warm task taken now with the epoch of this log entry.
    Claim {
        document: String,
        region: Region,
        tier: Tier,
        now_ms: u64,
        /// Entries written before tenants existed decode to [`Tenant::DEFAULT`].
        #[serde(default)]
        tenant: Tenant,
    },
    /// The document is no longer served (idle, or its node stopped): its task drains.
    Release { document: String, epoch: u64 },
    /// Tasks whose lease ran out by `now_ms` are dead; their documents are unallocated, so the
    /// next claim takes a new task with a higher epoch (the store fences the old one out).
    ExpireLeases { now_ms: u64 },
    /// The driver reports the task gone or failed to start.
    MarkDead { id: TaskId, reason: String },
    /// Stop giving the task out; the driver stops it.
    Drain { id: TaskId, reason: String },
    /// The driver stopped the task; forget it.
    RemoveTask { id: TaskId },
    SetPoolTarget {
        region: Region,
        tier: Tier,
        target: PoolTarget,
    },
    /// The key capability tokens are signed with (PKCS#8 DER of an ed25519 key). Set once, by the
    /// first leader; later attempts are ignored so every coordinator signs with the same key.
    SetSigningKey { pkcs8_der: Vec<u8> },
    /// Replace the region's static egress IP sets (tenant → addresses) as a whole.
    SetEgressIps {
        region: Region,
        tenants: BTreeMap<Tenant, Vec<IpAddr>>,
        now_ms: u64,
    },
}

/// The result of applying a [`Command`].
// `Claimed` is the common answer on the hot path; boxing its task would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    /// The claim's answer: the allocation and the task serving it. `fresh` when this claim
    /// took a new task (the node must be told), false when the document was already served.
    Claimed {
        allocation: Allocation,
        task: Task,
        fresh: bool,
    },
    /// No warm task of that region and tier: the caller waits for the pool or answers 503.
    NoWarmTask,
    /// The document is served under another tenant; nothing changed.
    TenantMismatch {
        document: String,
        /// The tenant it is allocated under.
        allocated: Tenant,
    },
    /// Leases ran out: these tasks died and these documents lost their task.
    Expired {
        tasks: Vec<TaskId>,
        documents: Vec<String>,
    },
    /// The command named a task or document the state does not have, or is stale (a release
    /// of an older epoch); nothing changed.
    Rejected {
        reason: String,
    },
}
