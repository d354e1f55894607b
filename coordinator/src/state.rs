//! The replicated state machine: tasks, allocations of documents to tasks, pool targets, the
//! key capability tokens are signed with, and the region's static egress IP sets. It changes only through [`State::apply`], which every
//! coordinator calls with the same commands in the same (Raft log) order.
//!
//! A sans-IO core: no clock (time comes in the command, chosen by its proposer), no randomness,
//! no IO. Applying the same log to two empty states gives equal states, which is what lets Raft
//! replicate it; [`crate::raft`] persists it and replays the log into it.
//!
//! # Rules
//! - **Claim.** A document allocated to a task (which is then `Claimed` for it) gets that task
//!   back (`fresh: false`). Otherwise the claim takes a `Warm` task of the claim's region and
//!   tier — one of the pool target's current runtime version if there is one, else any; among
//!   those the longest warm (`warm_at_ms`, then id) — and marks it `Claimed` with the epoch of
//!   this log index (`fresh: true`). Epochs are log indexes, so a document's epochs only grow.
//!   A warm task whose lease ran out by the claim's `now_ms` is not handed out. No warm task:
//!   [`Response::NoWarmTask`]; the claim never waits here.
//! - **Tenants.** An allocation records the claim's tenant. A claim of an allocated document
//!   under another tenant changes nothing and answers [`Response::TenantMismatch`]; once the
//!   document is unallocated (released, its task dead) any tenant may claim it.
//! - **Egress IP sets.** `SetEgressIps` replaces the region's sets as a whole (addresses sorted,
//!   duplicates dropped, tenants with no address left out); a bad tenant name or an address no
//!   socket can bind is rejected.
//! - **One document per task, ever.** A claimed task leaves `Claimed` only for `Draining` (its
//!   document released) or `Dead`; no rule moves a task back to `Warm`. Task ids come from the
//!   driver and must never be reused (a second `AddTask` of a known id is rejected).
//! - **Leases.** `ExpireLeases { now_ms }` kills every live task whose lease ended before
//!   `now_ms` and unallocates its document; `MarkDead` does the same for one task. The next
//!   claim of such a document takes a new task with a higher epoch, and the document store
//!   fences the old owner out.
//! - A command that names something unknown, or a stale epoch, changes nothing and answers
//!   [`Response::Rejected`].
//!
//! What it does not do: decide how many tasks to run (the pool controller), talk to drivers or
//! nodes, or read the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{
    Allocation, Command, EgressIpSets, Endpoints, PoolTarget, Region, Response, RuntimeVersion,
    Task, TaskId, TaskState, Tenant, Tier,
};

/// A warm pool's key: tasks, targets and counts are kept per (region, tier).
pub type PoolKey = (Region, Tier);

/// Tasks of one (region, tier) by state, for the pool controller, `airlock status` and metrics.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub starting: u32,
    pub warm: u32,
    pub claimed: u32,
    pub draining: u32,
    pub dead: u32,
}

/// The keys [`State::apply`] changed since the last [`State::take_changes`]: what a persistent
/// store has to rewrite. A key listed here whose value is gone from the state was removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub tasks: BTreeSet<TaskId>,
    pub documents: BTreeSet<String>,
    pub targets: BTreeSet<PoolKey>,
    pub signing_key: bool,
    pub egress_ips: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.documents.is_empty()
            && self.targets.is_empty()
            && !self.signing_key
            && !self.egress_ips
    }
}

/// The replicated state of one region. See the module docs for the rules.
///
/// Serializes (for Raft snapshots) to its plain parts; the derived indexes are rebuilt on load.
#[derive(Clone, Default)]
pub struct State {
    tasks: BTreeMap<TaskId, Task>,
    /// Document → the task serving it. Always mirrors the tasks in `TaskState::Claimed`.
    allocations: BTreeMap<String, Allocation>,
    targets: BTreeMap<PoolKey, PoolTarget>,
    /// PKCS#8 DER of the ed25519 key capability tokens are signed with.
    signing_key: Option<Vec<u8>>,
    /// The region's static egress IP sets, once an operator set them.
    egress_ips: Option<EgressIpSets>,
    /// Derived index: the warm tasks of each pool by (warm since, id), so a claim does not scan
    /// every task (most tasks are claimed ones, one per open document).
    warm: BTreeMap<PoolKey, BTreeSet<(u64, TaskId)>>,
    /// Keys changed since the last `take_changes`; bounded by the number of keys ever touched.
    changes: Changes,
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// A state from its parts, as a store kept them. Rebuilds the derived indexes; does not
    /// check the parts against each other (see [`State::violations`]).
    pub fn from_parts(
        tasks: impl IntoIterator<Item = Task>,
        allocations: impl IntoIterator<Item = Allocation>,
        targets: impl IntoIterator<Item = (PoolKey, PoolTarget)>,
        signing_key: Option<Vec<u8>>,
        egress_ips: Option<EgressIpSets>,
    ) -> State {
        let mut state = State {
            tasks: tasks.into_iter().map(|t| (t.id.clone(), t)).collect(),
            allocations: allocations
                .into_iter()
                .map(|a| (a.document.clone(), a))
                .collect(),
            targets: targets.into_iter().collect(),
            signing_key,
            egress_ips,
            warm: BTreeMap::new(),
            changes: Changes::default(),
        };
        let warm: Vec<(PoolKey, (u64, TaskId))> = state
            .tasks
            .values()
            .filter_map(|t| warm_entry(t).map(|e| (pool_of(t), e)))
            .collect();
        for (key, entry) in warm {
            state.warm.entry(key).or_default().insert(entry);
        }
        state
    }

    // --- Reads -----------------------------------------------------------------------------

    pub fn task(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// Every task, by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// The warm tasks of one pool, in the order claims take them when versions do not matter.
    pub fn warm_tasks(&self, region: &Region, tier: &Tier) -> impl Iterator<Item = &Task> {
        self.warm
            .get(&(region.clone(), tier.clone()))
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.tasks.get(id))
    }

    /// The task serving `document`, with its epoch.
    pub fn allocation(&self, document: &str) -> Option<&Allocation> {
        self.allocations.get(document)
    }

    /// Every allocation, by document.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    pub fn target(&self, region: &Region, tier: &Tier) -> Option<&PoolTarget> {
        self.targets.get(&(region.clone(), tier.clone()))
    }

    /// Every pool target, by (region, tier).
    pub fn targets(&self) -> impl Iterator<Item = (&PoolKey, &PoolTarget)> {
        self.targets.iter()
    }

    /// Tasks by state for every pool that has tasks or a target.
    pub fn counts(&self) -> BTreeMap<PoolKey, TaskCounts> {
        let mut counts: BTreeMap<PoolKey, TaskCounts> = self
            .targets
            .keys()
            .map(|k| (k.clone(), TaskCounts::default()))
            .collect();
        for task in self.tasks.values() {
            let c = counts.entry(pool_of(task)).or_default();
            let slot = match task.state {
                TaskState::Starting => &mut c.starting,
                TaskState::Warm => &mut c.warm,
                TaskState::Claimed { .. } => &mut c.claimed,
                TaskState::Draining { .. } => &mut c.draining,
                TaskState::Dead { .. } => &mut c.dead,
            };
            *slot += 1;
        }
        counts
    }

    /// PKCS#8 DER of the token signing key, once the first leader set it.
    pub fn signing_key(&self) -> Option<&[u8]> {
        self.signing_key.as_deref()
    }

    /// The region's static egress IP sets, once an operator set them.
    pub fn egress_ips(&self) -> Option<&EgressIpSets> {
        self.egress_ips.as_ref()
    }

    /// The keys changed since the last call, for a store that persists the state key by key.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Every way the parts disagree with each other (empty when consistent): an allocation
    /// whose task is not claimed for that document at that epoch, a claimed task without its
    /// allocation, a stale warm index. For tests and for checking a loaded store.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (document, a) in &self.allocations {
            if *document != a.document {
                out.push(format!(
                    "allocation under {document:?} names {:?}",
                    a.document
                ));
            }
            match self.tasks.get(&a.task).map(|t| &t.state) {
                Some(TaskState::Claimed { document: d, epoch })
                    if d == document && *epoch == a.epoch => {}
                other => out.push(format!(
                    "{document:?} is allocated to {} at epoch {}, whose state is {other:?}",
                    a.task, a.epoch
                )),
            }
        }
        for task in self.tasks.values() {
            if let TaskState::Claimed { document, epoch } = &task.state {
                let ok = self
                    .allocations
                    .get(document)
                    .is_some_and(|a| a.task == task.id && a.epoch == *epoch);
                if !ok {
                    out.push(format!(
                        "{} is claimed for {document:?} without its allocation",
                        task.id
                    ));
                }
            }
        }
        let rebuilt = State::from_parts(self.tasks.values().cloned(), [], [], None, None);
        if rebuilt.warm != self.warm {
            out.push("the warm index differs from the warm tasks".to_string());
        }
        out
    }

    // --- The one way to change it ------------------------------------------------------------

    /// Applies the command of log entry `index`. Deterministic: the result depends only on the
    /// state, `index` and `command`.
    pub fn apply(&mut self, index: u64, command: Command) -> Response {
        match command {
            Command::AddTask {
                id,
                region,
                tier,
                version,
                driver_handle,
                now_ms,
                lease_ms,
            } => self.add_task(id, region, tier, version, driver_handle, now_ms, lease_ms),
            Command::TaskReady {
                id,
                endpoints,
                now_ms,
                lease_ms,
            } => self.task_ready(&id, endpoints, now_ms, lease_ms),
            Command::Heartbeat {
                id,
                now_ms,
                lease_ms,
            } => self.heartbeat(&id, now_ms, lease_ms),
            Command::Claim {
                document,
                region,
                tier,
                now_ms,
                tenant,
            } => self.claim(index, document, tenant, (region, tier), now_ms),
            Command::Release { document, epoch } => self.release(&document, epoch),
            Command::ExpireLeases { now_ms } => self.expire_leases(now_ms),
            Command::MarkDead { id, reason } => self.mark_dead(&id, reason),
            Command::Drain { id, reason } => self.drain(&id, reason),
            Command::RemoveTask { id } => self.remove_task(&id),
            Command::SetPoolTarget {
                region,
                tier,
                target,
            } => self.set_pool_target((region, tier), target),
            Command::SetSigningKey { pkcs8_der } => self.set_signing_key(pkcs8_der),
            Command::SetEgressIps {
                region,
                tenants,
                now_ms,
            } => self.set_egress_ips(region, tenants, now_ms),
        }
    }

    #[allow(clippy::too_many_arguments)] // the fields of `Command::AddTask`
    fn add_task(
        &mut self,
        id: TaskId,
        region: Region,
        tier: Tier,
        version: RuntimeVersion,
        driver_handle: String,
        now_ms: u64,
        lease_ms: u64,
    ) -> Response {
        if self.tasks.contains_key(&id) {
            return rejected(format!("task {id} already exists"));
        }
        let task = Task {
            id: id.clone(),
            region,
            tier,
            version,
            state: TaskState::Starting,
            endpoints: None,
            driver_handle,
            started_at_ms: now_ms,
            warm_at_ms: None,
            lease_until_ms: now_ms.saturating_add(lease_ms),
        };
        self.changes.tasks.insert(id.clone());
        self.tasks.insert(id, task);
        Response::Ok
    }

    fn task_ready(
        &mut self,
        id: &TaskId,
        endpoints: Endpoints,
        now_ms: u64,
        lease_ms: u64,
    ) -> Response {
        let Some(task) = self.tasks.get(id) else {
            return unknown_task(id);
        };
        match &task.state {
            TaskState::Starting => self.update_task(id, |t| {
                t.state = TaskState::Warm;
                t.endpoints = Some(endpoints);
                t.warm_at_ms = Some(now_ms);
                extend_lease(t, now_ms, lease_ms);
            }),
            // A repeated report (the node retried): refresh, keep its place in the pool.
            TaskState::Warm => self.update_task(id, |t| {
                t.endpoints = Some(endpoints);
                extend_lease(t, now_ms, lease_ms);
            }),
            other => {
                return rejected(format!(
                    "task {id} cannot become warm: it is {}",
                    state_name(other)
                ));
            }
        }
        Response::Ok
    }

    fn heartbeat(&mut self, id: &TaskId, now_ms: u64, lease_ms: u64) -> Response {
        let Some(task) = self.tasks.get(id) else {
            return unknown_task(id);
        };
        if let TaskState::Dead { reason } = &task.state {
            // The node must stop: its documents may already have a new owner.
            return rejected(format!("task {id} is dead: {reason}"));
        }
        self.update_task(id, |t| extend_lease(t, now_ms, lease_ms));
        Response::Ok
    }

    fn claim(
        &mut self,
        index: u64,
        document: String,
        tenant: Tenant,
        pool: PoolKey,
        now_ms: u64,
    ) -> Response {
        if let Some(allocation) = self.allocations.get(&document) {
            if allocation.tenant != tenant {
                return Response::TenantMismatch {
                    document,
                    allocated: allocation.tenant.clone(),
                };
            }
            // The allocation mirrors a claimed task (see `violations`); serve it again.
            if let Some(task) = self.tasks.get(&allocation.task) {
                return Response::Claimed {
                    allocation: allocation.clone(),
                    task: task.clone(),
                    fresh: false,
                };
            }
        }
        let Some(id) = self.pick_warm(&pool, now_ms) else {
            return Response::NoWarmTask;
        };
        self.update_task(&id, |t| {
            t.state = TaskState::Claimed {
                document: document.clone(),
                epoch: index,
            }
        });
        let allocation = Allocation {
            document: document.clone(),
            task: id.clone(),
            epoch: index,
            claimed_at_ms: now_ms,
            tenant,
        };
        self.changes.documents.insert(document.clone());
        self.allocations.insert(document, allocation.clone());
        match self.tasks.get(&id) {
            Some(task) => Response::Claimed {
                allocation,
                task: task.clone(),
                fresh: true,
            },
            // `pick_warm` returned an id of `self.tasks`, and `update_task` keeps it.
            None => unknown_task(&id),
        }
    }

    /// The warm task a claim takes: the target's version first, then longest warm, then id.
    fn pick_warm(&self, pool: &PoolKey, now_ms: u64) -> Option<TaskId> {
        let warm = self.warm.get(pool)?;
        let live = |id: &TaskId| self.tasks.get(id).filter(|t| t.lease_until_ms >= now_ms);
        let preferred = self.targets.get(pool).map(|t| &t.version);
        let current = preferred.and_then(|version| {
            warm.iter()
                .find(|(_, id)| live(id).is_some_and(|t| t.version == *version))
        });
        current
            .or_else(|| warm.iter().find(|(_, id)| live(id).is_some()))
            .map(|(_, id)| id.clone())
    }

    fn release(&mut self, document: &str, epoch: u64) -> Response {
        let Some(allocation) = self.allocations.get(document) else {
            return rejected(format!("document {document:?} is not allocated"));
        };
        if allocation.epoch != epoch {
            return rejected(format!(
                "release of {document:?} at epoch {epoch}, but it is served at epoch {}",
                allocation.epoch
            ));
        }
        let task = allocation.task.clone();
        self.unallocate(document);
        self.update_task(&task, |t| {
            t.state = TaskState::Draining {
                reason: "released".to_string(),
            }
        });
        Response::Ok
    }

    fn expire_leases(&mut self, now_ms: u64) -> Response {
        let expired: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| !matches!(t.state, TaskState::Dead { .. }) && t.lease_until_ms < now_ms)
            .map(|t| t.id.clone())
            .collect();
        let mut documents = Vec::new();
        for id in &expired {
            if let Some(document) = self.kill(id, "lease expired".to_string()) {
                documents.push(document);
            }
        }
        Response::Expired {
            tasks: expired,
            documents,
        }
    }

    fn mark_dead(&mut self, id: &TaskId, reason: String) -> Response {
        match self.tasks.get(id).map(|t| &t.state) {
            None => unknown_task(id),
            // Already dead: keep the first cause.
            Some(TaskState::Dead { .. }) => Response::Ok,
            Some(_) => {
                self.kill(id, reason);
                Response::Ok
            }
        }
    }

    fn drain(&mut self, id: &TaskId, reason: String) -> Response {
        match self.tasks.get(id).map(|t| &t.state) {
            None => unknown_task(id),
            Some(TaskState::Starting | TaskState::Warm) => {
                self.update_task(id, |t| t.state = TaskState::Draining { reason });
                Response::Ok
            }
            Some(TaskState::Draining { .. }) => Response::Ok,
            Some(TaskState::Claimed { document, .. }) => rejected(format!(
                "task {id} serves {document:?}: release the document to drain it"
            )),
            Some(TaskState::Dead { .. }) => rejected(format!("task {id} is dead")),
        }
    }

    fn remove_task(&mut self, id: &TaskId) -> Response {
        let Some(task) = self.tasks.get(id) else {
            return unknown_task(id);
        };
        if let TaskState::Claimed { document, .. } = &task.state {
            let document = document.clone();
            self.unallocate(&document);
        }
        if let Some(task) = self.tasks.remove(id) {
            self.unindex_warm(&task);
        }
        self.changes.tasks.insert(id.clone());
        Response::Ok
    }

    fn set_pool_target(&mut self, pool: PoolKey, target: PoolTarget) -> Response {
        if target.floor > target.ceiling {
            return rejected(format!(
                "pool target floor {} is above its ceiling {}",
                target.floor, target.ceiling
            ));
        }
        if !target.buffer_factor.is_finite() || target.buffer_factor < 0.0 {
            return rejected(format!(
                "pool target buffer factor {} is not a finite non-negative number",
                target.buffer_factor
            ));
        }
        self.changes.targets.insert(pool.clone());
        self.targets.insert(pool, target);
        Response::Ok
    }

    fn set_signing_key(&mut self, pkcs8_der: Vec<u8>) -> Response {
        if let Some(key) = &self.signing_key {
            return if *key == pkcs8_der {
                Response::Ok
            } else {
                rejected("the signing key is already set".to_string())
            };
        }
        if let Err(e) = SigningKey::from_pkcs8_der(&pkcs8_der) {
            return rejected(format!("not a PKCS#8 ed25519 key: {e}"));
        }
        self.signing_key = Some(pkcs8_der);
        self.changes.signing_key = true;
        Response::Ok
    }

    fn set_egress_ips(
        &mut self,
        region: Region,
        tenants: BTreeMap<Tenant, Vec<IpAddr>>,
        now_ms: u64,
    ) -> Response {
        match EgressIpSets::new(region, tenants, now_ms) {
            Ok(sets) => {
                self.egress_ips = Some(sets);
                self.changes.egress_ips = true;
                Response::Ok
            }
            Err(e) => rejected(e.to_string()),
        }
    }

    // --- Helpers that keep the derived index and the change set right -------------------------

    /// Changes one task, keeping the warm index and the change set in step.
    fn update_task(&mut self, id: &TaskId, change: impl FnOnce(&mut Task)) {
        let Some(mut task) = self.tasks.remove(id) else {
            return;
        };
        self.unindex_warm(&task);
        change(&mut task);
        if let Some(entry) = warm_entry(&task) {
            self.warm.entry(pool_of(&task)).or_default().insert(entry);
        }
        self.tasks.insert(id.clone(), task);
        self.changes.tasks.insert(id.clone());
    }

    fn unindex_warm(&mut self, task: &Task) {
        let pool = pool_of(task);
        if let Some(entry) = warm_entry(task)
            && let Some(set) = self.warm.get_mut(&pool)
        {
            set.remove(&entry);
            if set.is_empty() {
                self.warm.remove(&pool);
            }
        }
    }

    /// Marks a task dead; returns the document it no longer serves, if it served one.
    fn kill(&mut self, id: &TaskId, reason: String) -> Option<String> {
        let document = match &self.tasks.get(id)?.state {
            TaskState::Claimed { document, .. } => Some(document.clone()),
            _ => None,
        };
        if let Some(document) = &document {
            self.unallocate(document);
        }
        self.update_task(id, |t| t.state = TaskState::Dead { reason });
        document
    }

    fn unallocate(&mut self, document: &str) {
        if self.allocations.remove(document).is_some() {
            self.changes.documents.insert(document.to_string());
        }
    }
}

fn pool_of(task: &Task) -> PoolKey {
    (task.region.clone(), task.tier.clone())
}

fn warm_entry(task: &Task) -> Option<(u64, TaskId)> {
    matches!(task.state, TaskState::Warm).then(|| {
        (
            task.warm_at_ms.unwrap_or(task.started_at_ms),
            task.id.clone(),
        )
    })
}

/// Leases only move forward: a late heartbeat carrying an older clock does not shorten one.
fn extend_lease(task: &mut Task, now_ms: u64, lease_ms: u64) {
    task.lease_until_ms = task.lease_until_ms.max(now_ms.saturating_add(lease_ms));
}

/// The state's name, as counts, logs and metrics print it.
pub fn state_name(state: &TaskState) -> &'static str {
    match state {
        TaskState::Starting => "starting",
        TaskState::Warm => "warm",
        TaskState::Claimed { .. } => "claimed",
        TaskState::Draining { .. } => "draining",
        TaskState::Dead { .. } => "dead",
    }
}

fn rejected(reason: String) -> Response {
    Response::Rejected { reason }
}

fn unknown_task(id: &TaskId) -> Response {
    rejected(format!("no task {id}"))
}

impl PartialEq for State {
    /// Equal replicated content; the derived index and the change set do not count.
    fn eq(&self, other: &State) -> bool {
        self.tasks == other.tasks
            && self.allocations == other.allocations
            && self.targets == other.targets
            && self.signing_key == other.signing_key
            && self.egress_ips == other.egress_ips
    }
}

impl fmt::Debug for State {
    /// Leaves the signing key out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("tasks", &self.tasks)
            .field("allocations", &self.allocations)
            .field("targets", &self.targets)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<set>"))
            .field("egress_ips", &self.egress_ips)
            .finish()
    }
}

/// The serialized form: plain lists (JSON maps need string keys, and pools are pairs).
#[derive(Serialize)]
struct ImageRef<'a> {
    tasks: Vec<&'a Task>,
    allocations: Vec<&'a Allocation>,
    targets: Vec<TargetEntry<&'a Region, &'a Tier, &'a PoolTarget>>,
    signing_key: Option<&'a [u8]>,
    egress_ips: Option<&'a EgressIpSets>,
}

#[derive(Deserialize)]
struct Image {
    tasks: Vec<Task>,
    allocations: Vec<Allocation>,
    targets: Vec<TargetEntry<Region, Tier, PoolTarget>>,
    signing_key: Option<Vec<u8>>,
    /// Absent from snapshots of versions before egress IP sets.
    #[serde(default)]
    egress_ips: Option<EgressIpSets>,
}

#[derive(Serialize, Deserialize)]
struct TargetEntry<R, T, P> {
    region: R,
    tier: T,
    target: P,
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ImageRef {
            tasks: self.tasks.values().collect(),
            allocations: self.allocations.values().collect(),
            targets: self
                .targets
                .iter()
                .map(|((region, tier), target)| TargetEntry {
                    region,
                    tier,
                    target,
                })
                .collect(),
            signing_key: self.signing_key.as_deref(),
            egress_ips: self.egress_ips.as_ref(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<State, D::Error> {
        let image = Image::deserialize(deserializer)?;
        Ok(State::from_parts(
            image.tasks,
            image.allocations,
            image
                .targets
                .into_iter()
                .map(|e| ((e.region, e.tier), e.target)),
            image.signing_key,
            image.egress_ips,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> Region {
        Region("eu".into())
    }
    fn tier() -> Tier {
        Tier("small".into())
    }
    fn id(s: &str) -> TaskId {
        TaskId(s.into())
    }
    fn endpoints(s: &str) -> Endpoints {
        Endpoints {
            quic: Some(format!("{s}:4433")),
            websocket: None,
            fingerprint: "00".into(),
        }
    }
    fn add(state: &mut State, index: u64, task: &str, version: &str, now_ms: u64) -> Response {
        state.apply(
            index,
            Command::AddTask {
                id: id(task),
                region: region(),
                tier: tier(),
                version: RuntimeVersion(version.into()),
                driver_handle: format!("pid-{task}"),
                now_ms,
                lease_ms: 10_000,
            },
        )
    }
    fn ready(state: &mut State, index: u64, task: &str, now_ms: u64) -> Response {
        state.apply(
            index,
            Command::TaskReady {
                id: id(task),
                endpoints: endpoints(task),
                now_ms,
                lease_ms: 10_000,
            },
        )
    }
    fn warm(state: &mut State, index: u64, task: &str, version: &str, now_ms: u64) {
        assert_eq!(add(state, index, task, version, now_ms), Response::Ok);
        assert_eq!(ready(state, index, task, now_ms), Response::Ok);
    }
    fn claim(state: &mut State, index: u64, document: &str, now_ms: u64) -> Response {
        state.apply(
            index,
            Command::Claim {
                document: document.into(),
                region: region(),
                tier: tier(),
                now_ms,
                tenant: Tenant::default(),
            },
        )
    }
    fn claimed(response: Response) -> (Allocation, Task, bool) {
        match response {
            Response::Claimed {
                allocation,
                task,
                fresh,
            } => (allocation, task, fresh),
            other => panic!("expected a claim, got {other:?}"),
        }
    }
    fn target(version: &str) -> Command {
        Command::SetPoolTarget {
            region: region(),
            tier: tier(),
            target: PoolTarget {
                floor: 1,
                ceiling: 10,
                buffer_factor: 1.5,
                version: RuntimeVersion(version.into()),
            },
        }
    }

    #[test]
    fn a_task_starts_then_joins_the_warm_pool() {
        let mut s = State::new();
        assert_eq!(add(&mut s, 1, "a", "v1", 100), Response::Ok);
        assert_eq!(
            s.task(&id("a")).map(|t| &t.state),
            Some(&TaskState::Starting)
        );
        assert_eq!(s.task(&id("a")).map(|t| t.lease_until_ms), Some(10_100));
        assert_eq!(ready(&mut s, 2, "a", 200), Response::Ok);
        let a = s.task(&id("a")).cloned().unwrap();
        assert_eq!(a.state, TaskState::Warm);
        assert_eq!(a.warm_at_ms, Some(200));
        assert_eq!(a.endpoints, Some(endpoints("a")));
        assert_eq!(s.counts()[&(region(), tier())].warm, 1);
        assert!(matches!(
            add(&mut s, 3, "a", "v1", 300),
            Response::Rejected { .. }
        ));
    }

    #[test]
    fn a_claim_takes_a_warm_task_with_the_log_index_as_epoch() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 100);
        let (allocation, task, fresh) = claimed(claim(&mut s, 7, "doc", 500));
        assert!(fresh);
        assert_eq!(allocation.epoch, 7);
        assert_eq!(allocation.task, id("a"));
        assert_eq!(allocation.claimed_at_ms, 500);
        assert_eq!(
            task.state,
            TaskState::Claimed {
                document: "doc".into(),
                epoch: 7
            }
        );
        assert_eq!(s.allocation("doc"), Some(&allocation));
        assert!(s.violations().is_empty(), "{:?}", s.violations());
    }

    #[test]
    fn a_claim_of_a_served_document_returns_its_task() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 100);
        warm(&mut s, 2, "b", "v1", 100);
        let (first, _, _) = claimed(claim(&mut s, 3, "doc", 500));
        let (again, task, fresh) = claimed(claim(&mut s, 4, "doc", 600));
        assert!(!fresh);
        assert_eq!(again, first);
        assert_eq!(task.id, first.task);
        assert_eq!(
            s.counts()[&(region(), tier())].warm,
            1,
            "the second claim took nothing"
        );
    }

    #[test]
    fn an_empty_pool_answers_no_warm_task() {
        let mut s = State::new();
        assert_eq!(claim(&mut s, 1, "doc", 0), Response::NoWarmTask);
        assert_eq!(add(&mut s, 2, "a", "v1", 0), Response::Ok);
        assert_eq!(
            claim(&mut s, 3, "doc", 0),
            Response::NoWarmTask,
            "starting is not warm"
        );
        warm(&mut s, 4, "b", "v1", 0);
        let other_tier = Command::Claim {
            document: "doc".into(),
            region: region(),
            tier: Tier("large".into()),
            now_ms: 0,
            tenant: Tenant::default(),
        };
        assert_eq!(s.apply(5, other_tier), Response::NoWarmTask);
        assert!(s.allocation("doc").is_none());
    }

    #[test]
    fn claims_prefer_the_target_version_then_the_oldest_warm() {
        let mut s = State::new();
        warm(&mut s, 1, "old-1", "v1", 100);
        warm(&mut s, 2, "new-2", "v2", 300);
        warm(&mut s, 3, "new-1", "v2", 200);
        warm(&mut s, 4, "new-0", "v2", 200);
        assert_eq!(s.apply(5, target("v2")), Response::Ok);
        let order: Vec<TaskId> = (0..4)
            .map(|i| {
                claimed(claim(&mut s, 10 + i, &format!("doc-{i}"), 1_000))
                    .1
                    .id
            })
            .collect();
        // v2 first, oldest warm first, ties by id; then v1.
        assert_eq!(order, [id("new-0"), id("new-1"), id("new-2"), id("old-1")]);
    }

    #[test]
    fn without_a_target_the_oldest_warm_wins() {
        let mut s = State::new();
        warm(&mut s, 1, "b", "v2", 100);
        warm(&mut s, 2, "a", "v1", 50);
        assert_eq!(claimed(claim(&mut s, 3, "doc", 1_000)).1.id, id("a"));
    }

    #[test]
    fn a_warm_task_past_its_lease_is_not_handed_out() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0); // lease until 10_000
        assert_eq!(claim(&mut s, 2, "doc", 10_001), Response::NoWarmTask);
        assert_eq!(claimed(claim(&mut s, 3, "doc", 10_000)).1.id, id("a"));
    }

    #[test]
    fn release_drains_the_task_which_never_serves_again() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0);
        let (allocation, _, _) = claimed(claim(&mut s, 2, "doc", 10));
        assert!(matches!(
            s.apply(
                3,
                Command::Release {
                    document: "doc".into(),
                    epoch: 1
                }
            ),
            Response::Rejected { .. }
        ));
        assert_eq!(
            s.apply(
                4,
                Command::Release {
                    document: "doc".into(),
                    epoch: allocation.epoch
                }
            ),
            Response::Ok
        );
        assert!(matches!(
            s.task(&id("a")).unwrap().state,
            TaskState::Draining { .. }
        ));
        assert!(s.allocation("doc").is_none());
        // Neither the same document nor another gets it back.
        assert_eq!(claim(&mut s, 5, "doc", 20), Response::NoWarmTask);
        assert_eq!(claim(&mut s, 6, "other", 20), Response::NoWarmTask);
        assert!(matches!(
            ready(&mut s, 7, "a", 30),
            Response::Rejected { .. }
        ));
        assert!(matches!(
            s.apply(
                8,
                Command::Release {
                    document: "doc".into(),
                    epoch: allocation.epoch
                }
            ),
            Response::Rejected { .. }
        ));
    }

    #[test]
    fn expired_leases_kill_tasks_and_free_their_documents() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0);
        warm(&mut s, 2, "b", "v1", 0);
        warm(&mut s, 3, "c", "v1", 0);
        let (first, _, _) = claimed(claim(&mut s, 4, "doc", 10));
        assert_eq!(first.task, id("a"));
        // b keeps its lease alive; a and c miss theirs.
        let beat = Command::Heartbeat {
            id: id("b"),
            now_ms: 5_000,
            lease_ms: 10_000,
        };
        assert_eq!(s.apply(5, beat), Response::Ok);
        assert_eq!(
            s.apply(6, Command::ExpireLeases { now_ms: 10_000 }),
            Response::Expired {
                tasks: vec![],
                documents: vec![]
            },
            "the lease runs through its last millisecond"
        );
        assert_eq!(
            s.apply(7, Command::ExpireLeases { now_ms: 10_001 }),
            Response::Expired {
                tasks: vec![id("a"), id("c")],
                documents: vec!["doc".into()]
            }
        );
        assert!(matches!(
            s.task(&id("a")).unwrap().state,
            TaskState::Dead { .. }
        ));
        assert!(s.allocation("doc").is_none());
        // The next claim takes b with a higher epoch.
        let (second, task, fresh) = claimed(claim(&mut s, 8, "doc", 10_002));
        assert!(fresh);
        assert_eq!(task.id, id("b"));
        assert!(second.epoch > first.epoch);
        // A dead task's heartbeat is refused, so its node stops.
        let late = Command::Heartbeat {
            id: id("a"),
            now_ms: 10_003,
            lease_ms: 10_000,
        };
        assert!(matches!(s.apply(9, late), Response::Rejected { .. }));
        assert!(s.violations().is_empty(), "{:?}", s.violations());
    }

    #[test]
    fn heartbeats_never_shorten_a_lease() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 1_000); // lease until 11_000
        let stale = Command::Heartbeat {
            id: id("a"),
            now_ms: 500,
            lease_ms: 1_000,
        };
        assert_eq!(s.apply(2, stale), Response::Ok);
        assert_eq!(s.task(&id("a")).unwrap().lease_until_ms, 11_000);
        let unknown = Command::Heartbeat {
            id: id("x"),
            now_ms: 500,
            lease_ms: 1_000,
        };
        assert!(matches!(s.apply(3, unknown), Response::Rejected { .. }));
    }

    #[test]
    fn mark_dead_of_a_claimed_task_frees_its_document() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0);
        warm(&mut s, 2, "b", "v1", 0);
        let (first, _, _) = claimed(claim(&mut s, 3, "doc", 10));
        let dead = Command::MarkDead {
            id: first.task.clone(),
            reason: "exited 137".into(),
        };
        assert_eq!(s.apply(4, dead.clone()), Response::Ok);
        assert_eq!(s.apply(5, dead), Response::Ok, "idempotent");
        assert_eq!(
            s.task(&first.task).unwrap().state,
            TaskState::Dead {
                reason: "exited 137".into()
            }
        );
        assert!(s.allocation("doc").is_none());
        let (second, _, fresh) = claimed(claim(&mut s, 6, "doc", 20));
        assert!(fresh && second.epoch > first.epoch && second.task != first.task);
        let unknown = Command::MarkDead {
            id: id("x"),
            reason: String::new(),
        };
        assert!(matches!(s.apply(7, unknown), Response::Rejected { .. }));
    }

    #[test]
    fn drain_stops_giving_a_task_out_but_not_a_claimed_one() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0);
        warm(&mut s, 2, "b", "v1", 0);
        let drain_a = Command::Drain {
            id: id("a"),
            reason: "old version".into(),
        };
        assert_eq!(s.apply(3, drain_a), Response::Ok);
        let (allocation, _, _) = claimed(claim(&mut s, 4, "doc", 10));
        assert_eq!(allocation.task, id("b"));
        let drain_b = Command::Drain {
            id: id("b"),
            reason: "x".into(),
        };
        assert!(matches!(s.apply(5, drain_b), Response::Rejected { .. }));
        assert_eq!(claim(&mut s, 6, "other", 10), Response::NoWarmTask);
    }

    #[test]
    fn removing_a_task_forgets_it_and_its_allocation() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0);
        claimed(claim(&mut s, 2, "doc", 10));
        assert_eq!(
            s.apply(3, Command::RemoveTask { id: id("a") }),
            Response::Ok
        );
        assert!(s.task(&id("a")).is_none());
        assert!(s.allocation("doc").is_none());
        assert!(matches!(
            s.apply(4, Command::RemoveTask { id: id("a") }),
            Response::Rejected { .. }
        ));
        assert!(s.violations().is_empty());
    }

    #[test]
    fn pool_targets_are_validated() {
        let mut s = State::new();
        assert_eq!(s.apply(1, target("v1")), Response::Ok);
        assert_eq!(
            s.target(&region(), &tier()).unwrap().version,
            RuntimeVersion("v1".into())
        );
        assert_eq!(s.counts()[&(region(), tier())], TaskCounts::default());
        let bad = Command::SetPoolTarget {
            region: region(),
            tier: tier(),
            target: PoolTarget {
                floor: 5,
                ceiling: 1,
                buffer_factor: 1.0,
                version: RuntimeVersion("v2".into()),
            },
        };
        assert!(matches!(s.apply(2, bad), Response::Rejected { .. }));
        let nan = Command::SetPoolTarget {
            region: region(),
            tier: tier(),
            target: PoolTarget {
                floor: 1,
                ceiling: 1,
                buffer_factor: f64::NAN,
                version: RuntimeVersion("v2".into()),
            },
        };
        assert!(matches!(s.apply(3, nan), Response::Rejected { .. }));
        assert_eq!(
            s.target(&region(), &tier()).unwrap().version,
            RuntimeVersion("v1".into())
        );
    }

    #[test]
    fn the_signing_key_is_set_once() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let der = |seed: u8| {
            SigningKey::from_bytes(&[seed; 32])
                .to_pkcs8_der()
                .unwrap()
                .as_bytes()
                .to_vec()
        };
        let mut s = State::new();
        let garbage = Command::SetSigningKey {
            pkcs8_der: vec![1, 2, 3],
        };
        assert!(matches!(s.apply(1, garbage), Response::Rejected { .. }));
        assert_eq!(
            s.apply(2, Command::SetSigningKey { pkcs8_der: der(1) }),
            Response::Ok
        );
        assert_eq!(
            s.apply(3, Command::SetSigningKey { pkcs8_der: der(1) }),
            Response::Ok
        );
        assert!(matches!(
            s.apply(4, Command::SetSigningKey { pkcs8_der: der(2) }),
            Response::Rejected { .. }
        ));
        assert_eq!(s.signing_key(), Some(der(1).as_slice()));
        assert!(
            !format!("{s:?}").contains(&format!("{:?}", der(1))),
            "Debug hides the key"
        );
    }

    #[test]
    fn changes_name_every_touched_key() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0);
        s.apply(2, target("v1"));
        s.take_changes();
        claimed(claim(&mut s, 3, "doc", 10));
        let changes = s.take_changes();
        assert_eq!(changes.tasks, BTreeSet::from([id("a")]));
        assert_eq!(changes.documents, BTreeSet::from(["doc".to_string()]));
        assert!(changes.targets.is_empty() && !changes.signing_key && !changes.egress_ips);
        assert!(s.take_changes().is_empty());
    }

    #[test]
    fn serde_round_trip_keeps_everything_and_rebuilds_the_index() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0);
        warm(&mut s, 2, "b", "v1", 5);
        s.apply(3, target("v1"));
        claimed(claim(&mut s, 4, "doc", 10));
        let json = serde_json::to_vec(&s).unwrap();
        let mut back: State = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
        assert!(back.violations().is_empty());
        // The rebuilt index works: the other warm task is claimable.
        assert_eq!(claimed(claim(&mut back, 5, "doc-2", 20)).1.id, id("b"));
    }
    fn claim_for(state: &mut State, index: u64, document: &str, tenant: &str) -> Response {
        state.apply(
            index,
            Command::Claim {
                document: document.into(),
                region: region(),
                tier: tier(),
                now_ms: 10,
                tenant: Tenant(tenant.into()),
            },
        )
    }

    #[test]
    fn an_allocation_keeps_its_tenant_and_refuses_another() {
        let mut s = State::new();
        warm(&mut s, 1, "a", "v1", 0);
        warm(&mut s, 2, "b", "v1", 0);
        let (allocation, _, _) = claimed(claim_for(&mut s, 3, "doc", "acme"));
        assert_eq!(allocation.tenant, Tenant("acme".into()));
        s.take_changes();
        assert_eq!(
            claim_for(&mut s, 4, "doc", "globex"),
            Response::TenantMismatch {
                document: "doc".into(),
                allocated: Tenant("acme".into())
            }
        );
        assert!(s.take_changes().is_empty(), "the refusal changed nothing");
        assert_eq!(s.allocation("doc"), Some(&allocation));
        assert_eq!(s.counts()[&(region(), tier())].warm, 1);
        // The same tenant gets its task back.
        let (again, _, fresh) = claimed(claim_for(&mut s, 5, "doc", "acme"));
        assert!(!fresh && again == allocation);
        // Once released, another tenant may claim it (a new task, a higher epoch).
        let release = Command::Release {
            document: "doc".into(),
            epoch: allocation.epoch,
        };
        assert_eq!(s.apply(6, release), Response::Ok);
        let (other, _, fresh) = claimed(claim_for(&mut s, 7, "doc", "globex"));
        assert!(fresh && other.epoch > allocation.epoch);
        assert_eq!(other.tenant, Tenant("globex".into()));
        assert!(s.violations().is_empty(), "{:?}", s.violations());
    }

    #[test]
    fn entries_and_snapshots_from_before_tenants_decode_to_the_default_tenant() {
        let claim: Command = serde_json::from_str(
            r#"{"op":"claim","document":"doc","region":"eu","tier":"small","now_ms":5}"#,
        )
        .unwrap();
        assert!(matches!(claim, Command::Claim { ref tenant, .. } if tenant.as_str() == "default"));
        let allocation: Allocation =
            serde_json::from_str(r#"{"document":"doc","task":"a","epoch":3,"claimed_at_ms":5}"#)
                .unwrap();
        assert_eq!(allocation.tenant, Tenant::default());
        // A snapshot without egress IP sets.
        let old: State = serde_json::from_str(
            r#"{"tasks":[],"allocations":[],"targets":[],"signing_key":null}"#,
        )
        .unwrap();
        assert_eq!(old, State::new());
        assert!(old.egress_ips().is_none());
    }

    #[test]
    fn tenant_names_are_checked() {
        for good in ["default", "acme", "a", "team-7.eu_west", &"x".repeat(64)] {
            assert!(Tenant::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", "Acme", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn set_ips(state: &mut State, index: u64, sets: &[(&str, &[&str])], now_ms: u64) -> Response {
        state.apply(
            index,
            Command::SetEgressIps {
                region: region(),
                tenants: sets
                    .iter()
                    .map(|(tenant, ips)| {
                        (
                            Tenant((*tenant).into()),
                            ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                        )
                    })
                    .collect(),
                now_ms,
            },
        )
    }

    #[test]
    fn egress_ip_sets_are_replaced_whole_normalized_and_validated() {
        let mut s = State::new();
        assert!(s.egress_ips().is_none());
        let sets: &[(&str, &[&str])] = &[
            (
                "acme",
                &[
                    "203.0.113.11",
                    "2001:db8::1",
                    "203.0.113.10",
                    "203.0.113.11",
                ],
            ),
            ("empty", &[]),
        ];
        assert_eq!(set_ips(&mut s, 1, sets, 100), Response::Ok);
        assert!(s.take_changes().egress_ips);
        let published = s.egress_ips().unwrap();
        assert_eq!(published.region, region());
        assert_eq!(published.updated_ms, 100);
        let acme: Vec<IpAddr> = ["203.0.113.10", "203.0.113.11", "2001:db8::1"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        assert_eq!(
            published.tenants,
            BTreeMap::from([(Tenant("acme".into()), acme)]),
            "sorted, deduplicated, empty sets left out"
        );
        // Bad input changes nothing.
        for bad in [
            set_ips(&mut s, 2, &[("acme", &["0.0.0.0"])], 200),
            set_ips(&mut s, 3, &[("acme", &["224.0.0.1"])], 200),
            set_ips(&mut s, 4, &[("acme", &["255.255.255.255"])], 200),
            set_ips(&mut s, 5, &[("Not A Tenant", &["203.0.113.1"])], 200),
        ] {
            assert!(matches!(bad, Response::Rejected { .. }), "{bad:?}");
        }
        assert!(!s.take_changes().egress_ips);
        assert_eq!(s.egress_ips().unwrap().updated_ms, 100);
        // A new set replaces the old one as a whole.
        assert_eq!(
            set_ips(&mut s, 6, &[("globex", &["198.51.100.7"])], 300),
            Response::Ok
        );
        let published = s.egress_ips().unwrap();
        assert_eq!(published.tenants.len(), 1);
        assert!(published.tenants.contains_key(&Tenant("globex".into())));
        // They survive a snapshot.
        let back: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.egress_ips(), s.egress_ips());
    }
}
