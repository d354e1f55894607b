//! The pool controller: how many warm tasks each (region, tier) should have, and which tasks to
//! start, retire, drain and stop to get there. A sans-IO core: no clock, no IO, no spawning.
//!
//! The leader's pool loop drives it:
//! - **inputs** (`record_*`): claims as they happen ([`record_claim`]), what became of the starts
//!   it asked for ([`record_task_started`], [`record_start_failure`]);
//! - **poll** ([`plan`]): given `now`, the tasks of the replicated state and the pool targets, the
//!   [`PoolAction`]s to take now;
//! - **getters** ([`status`], [`backoff`]): what `airlock status` and `/metrics` show, and
//!   [`publish_metrics`] to hand them to the `metrics` recorder.
//!
//! # What it decides
//! Desired warm tasks of a pool = `clamp(max(floor, ⌈claims/s × start time (s) × buffer⌉),
//! ceiling)`. The claim rate is counted over a sliding window ([`PoolConfig::claim_window_ms`]);
//! the start time is the mean of the last few `started_at_ms → warm_at_ms` of the pool's tasks
//! (a default until one became warm). Tasks starting (in the state, or asked for and not yet
//! there) count toward the desired number, so a plan made every tick does not start the same
//! missing task twice.
//!
//! - **Start** the missing ones with the target's runtime version, within the ceiling (warm,
//!   starting and draining tasks all count against it), at most
//!   [`PoolConfig::max_concurrent_starts`] at a time, and none while backing off.
//! - **Retire** warm tasks above the desired count, oldest first, once the desired count has stayed
//!   below them for [`PoolConfig::scale_down_delay_ms`] (a burst of claims does not make the pool
//!   churn). A claimed task is never retired, drained or counted: it serves its document.
//! - **Drain** tasks of another runtime version (a rolling upgrade): replacements start first, and
//!   old warm tasks drain only while the warm count stays at or above the desired count, i.e. as
//!   new ones become warm, so claims never find the pool below its floor. This needs one task of
//!   room under the ceiling; with none, old tasks are replaced one at a time, one below desired.
//!   Old-version tasks still starting drain at once (they are not warm yet).
//! - **Stop** tasks that are draining or dead: the driver ends them and the loop removes them.
//!   A drain or stop asked for is asked again only after [`PoolConfig::retry_ms`].
//!
//! # Back-off
//! A failed start — the driver's error ([`record_start_failure`]), or a task that died before it
//! was ever warm (seen in the state) — backs its pool off: no starts for 1 s, doubling with each
//! later failure up to 60 s. Failures while already backing off (the rest of a batch that failed
//! together) do not compound. When the back-off ends, one task starts as a probe; the first task
//! of the pool that becomes warm resets it. [`Backoff`] says until when and why.
//!
//! # What it does not do
//! It proposes nothing and calls no driver: the loop turns [`PoolAction::Retire`] and
//! [`PoolAction::Drain`] into [`Command::Drain`] (see [`PoolAction::command`]), starts tasks
//! through the [`Driver`](crate::driver::Driver) and proposes `AddTask`, stops them and proposes
//! `RemoveTask`. It does not decide leases (a task that never becomes warm dies when its lease
//! runs out, which it then counts as a failed start) nor which task a claim takes.
//!
//! [`record_claim`]: PoolController::record_claim
//! [`record_task_started`]: PoolController::record_task_started
//! [`record_start_failure`]: PoolController::record_start_failure
//! [`plan`]: PoolController::plan
//! [`status`]: PoolController::status
//! [`backoff`]: PoolController::backoff
//! [`publish_metrics`]: PoolController::publish_metrics

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;

use serde::Serialize;

use crate::model::{Command, PoolTarget, Region, RuntimeVersion, Task, TaskId, TaskState, Tier};

/// A pool: the tasks of one region and tier.
pub type PoolKey = (Region, Tier);

/// The controller's knobs. Pool targets (floor, ceiling, buffer, version) are replicated state;
/// these are per coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// How far back claims count toward a pool's claim rate.
    pub claim_window_ms: u64,
    /// The start time assumed until a task of the pool has become warm.
    pub default_start_time_ms: u64,
    /// How many recent start times the estimate averages.
    pub start_time_samples: usize,
    /// The first back-off after a failed start.
    pub backoff_initial_ms: u64,
    /// The longest back-off; each failure after one ends doubles it up to this.
    pub backoff_max_ms: u64,
    /// A start the loop never reported on (neither started nor failed) stops counting as
    /// starting after this long, so a lost report cannot stall the pool.
    pub start_report_timeout_ms: u64,
    /// A drain or stop asked for and not yet visible in the state is asked for again after this.
    pub retry_ms: u64,
    /// Warm tasks above the desired count are retired only after the desired count has stayed
    /// below them this long.
    pub scale_down_delay_ms: u64,
    /// At most this many tasks of one pool start at once (starting, or asked for and not yet in
    /// the state): one burst must not fork a hundred kernels on one machine at the same instant.
    pub max_concurrent_starts: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            claim_window_ms: 30_000,
            default_start_time_ms: 3_000,
            start_time_samples: 16,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            start_report_timeout_ms: 120_000,
            retry_ms: 30_000,
            scale_down_delay_ms: 60_000,
            max_concurrent_starts: 16,
        }
    }
}

/// What the controller wants done now.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolAction {
    /// Start `count` tasks of this pool with this runtime version. Report each outcome with
    /// [`PoolController::record_task_started`] or [`PoolController::record_start_failure`].
    Start {
        region: Region,
        tier: Tier,
        version: RuntimeVersion,
        count: u32,
    },
    /// A warm task above the desired count: propose [`Command::Drain`].
    Retire { task: TaskId, reason: String },
    /// A task of a runtime version the pool no longer wants: propose [`Command::Drain`].
    Drain { task: TaskId, reason: String },
    /// A draining or dead task: stop it through the driver, then propose
    /// [`Command::RemoveTask`].
    Stop { task: TaskId, driver_handle: String },
}

impl PoolAction {
    /// The command to propose for a retire or a drain (`None` for starts and stops, which go to
    /// the driver first).
    pub fn command(&self) -> Option<Command> {
        match self {
            PoolAction::Retire { task, reason } | PoolAction::Drain { task, reason } => {
                Some(Command::Drain {
                    id: task.clone(),
                    reason: reason.clone(),
                })
            }
            PoolAction::Start { .. } | PoolAction::Stop { .. } => None,
        }
    }
}

/// A pool backing off after failed starts: no starts before `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backoff {
    /// No task of the pool starts before this instant (Unix ms).
    pub until_ms: u64,
    /// The current delay; a failure after `until_ms` doubles it (up to the maximum).
    pub delay_ms: u64,
    /// Failed starts since a task of the pool last became warm.
    pub failures: u32,
    /// When the first of those failures happened (Unix ms).
    pub since_ms: u64,
    /// Why the last start failed, as the driver or the task's death said.
    pub reason: String,
}

impl Backoff {
    /// Whether starts are held back at `now_ms` (after that, one probe start at a time until a
    /// task becomes warm).
    pub fn is_active(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }
}

impl fmt::Display for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backing off until {} (Unix ms) after {} failed start{} because: {}",
            self.until_ms,
            self.failures,
            if self.failures == 1 { "" } else { "s" },
            self.reason
        )
    }
}

/// One pool as the last [`PoolController::plan`] saw it (`GET /v1/pool`, `airlock status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolStatus {
    pub region: Region,
    pub tier: Tier,
    /// The version new tasks get.
    pub version: RuntimeVersion,
    /// How many warm tasks the pool wants now.
    pub desired_warm: u32,
    /// Warm tasks of any version, not counting those being drained.
    pub warm: u32,
    /// Of `warm`, those of another version than `version` (an upgrade in progress).
    pub warm_old_version: u32,
    /// Starting in the state, or asked for and not in the state yet.
    pub starting: u32,
    pub claimed: u32,
    pub draining: u32,
    pub dead: u32,
    /// Claims per second over the claim window.
    pub claim_rate_per_s: f64,
    /// The start time the desired count assumes.
    pub start_time_ms: u64,
    /// Failed starts since the controller began.
    pub start_failures: u64,
    /// Set while the pool is backing off or probing after failures.
    pub backoff: Option<Backoff>,
}

/// The pool controller (see the module docs).
#[derive(Debug)]
pub struct PoolController {
    config: PoolConfig,
    pools: BTreeMap<PoolKey, PoolState>,
    /// Tasks whose start was already learned from (became warm, or died before that), so each
    /// counts once. Pruned to the tasks in the state.
    observed: HashMap<TaskId, Observed>,
    /// Drains and stops asked for, by task: not asked again before `retry_ms`. Pruned to the
    /// tasks in the state.
    requested: HashMap<TaskId, Requested>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    BecameWarm,
    FailedToStart,
}

#[derive(Debug, Clone, Copy)]
struct Requested {
    kind: RequestKind,
    at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    Drain,
    Stop,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Claims per second-long bucket: (Unix second, claims), oldest first.
    claims: VecDeque<(u64, u32)>,
    /// Recent start times (ms), oldest first.
    start_times: VecDeque<u64>,
    /// Starts asked for whose task is not in the state yet.
    pending: Vec<PendingStart>,
    backoff: Option<Backoff>,
    start_failures: u64,
    /// The highest desired count of the last `scale_down_delay_ms`, and when it was set.
    high_water: Option<(u32, u64)>,
    status: Option<PoolStatus>,
}

#[derive(Debug)]
struct PendingStart {
    since_ms: u64,
    /// Set once the loop reported the task started; cleared when it shows up in the state.
    task: Option<TaskId>,
}

/// One pool's tasks sorted by what the plan does with them.
#[derive(Default)]
struct Census<'a> {
    warm_new: Vec<&'a Task>,
    warm_old: Vec<&'a Task>,
    starting_new: u32,
    starting_old: Vec<&'a Task>,
    claimed: u32,
    draining: u32,
    dead: u32,
}

impl PoolController {
    pub fn new(config: PoolConfig) -> Self {
        PoolController {
            config,
            pools: BTreeMap::new(),
            observed: HashMap::new(),
            requested: HashMap::new(),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// A claim of the pool happened at `now_ms` (whether or not it found a warm task: both are
    /// demand).
    pub fn record_claim(&mut self, region: &Region, tier: &Tier, now_ms: u64) {
        let window = self.config.claim_window_ms;
        let pool = self.pool_mut(region, tier);
        let second = now_ms / 1000;
        match pool.claims.back_mut() {
            // A clock that stepped back still counts the claim, in the newest bucket.
            Some((last, count)) if *last >= second => *count = count.saturating_add(1),
            _ => pool.claims.push_back((second, 1)),
        }
        pool.prune_claims(now_ms, window);
    }

    /// A start the last plans asked for succeeded: `task` will appear in the state (once its
    /// `AddTask` is applied). Until then it counts as starting.
    pub fn record_task_started(&mut self, region: &Region, tier: &Tier, task: TaskId) {
        let pool = self.pool_mut(region, tier);
        if let Some(pending) = pool.pending.iter_mut().find(|p| p.task.is_none()) {
            pending.task = Some(task);
        }
    }

    /// A start the last plans asked for failed at `now_ms` (the driver's error): the pool backs
    /// off.
    pub fn record_start_failure(
        &mut self,
        region: &Region,
        tier: &Tier,
        now_ms: u64,
        reason: impl Into<String>,
    ) {
        let config = self.config.clone();
        let pool = self.pool_mut(region, tier);
        if let Some(i) = pool.pending.iter().position(|p| p.task.is_none()) {
            pool.pending.remove(i);
        }
        pool.fail(now_ms, reason.into(), &config);
    }

    /// The back-off of a pool, if it had failed starts since a task last became warm.
    pub fn backoff(&self, region: &Region, tier: &Tier) -> Option<&Backoff> {
        self.pools
            .get(&(region.clone(), tier.clone()))
            .and_then(|pool| pool.backoff.as_ref())
    }

    /// Every pool with a target as the last [`plan`](Self::plan) saw it, by region and tier.
    pub fn status(&self) -> impl Iterator<Item = &PoolStatus> {
        self.pools.values().filter_map(|pool| pool.status.as_ref())
    }

    /// One pool as the last [`plan`](Self::plan) saw it.
    pub fn pool_status(&self, region: &Region, tier: &Tier) -> Option<&PoolStatus> {
        self.pools
            .get(&(region.clone(), tier.clone()))
            .and_then(|pool| pool.status.as_ref())
    }

    /// What to do now, given every task of the replicated state and every pool target. Tasks of
    /// pools without a target are only stopped once draining or dead.
    pub fn plan<'a>(
        &mut self,
        now_ms: u64,
        tasks: impl IntoIterator<Item = &'a Task>,
        targets: impl IntoIterator<Item = (&'a PoolKey, &'a PoolTarget)>,
    ) -> Vec<PoolAction> {
        let tasks: Vec<&Task> = tasks.into_iter().collect();
        let present: HashSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
        self.observed.retain(|id, _| present.contains(id));
        let retry = self.config.retry_ms;
        self.requested
            .retain(|id, r| present.contains(id) && now_ms.saturating_sub(r.at_ms) < retry);
        for pool in self.pools.values_mut() {
            let timeout = self.config.start_report_timeout_ms;
            pool.pending.retain(|p| match &p.task {
                Some(id) if present.contains(id) => false,
                _ => now_ms.saturating_sub(p.since_ms) < timeout,
            });
        }
        self.observe(now_ms, &tasks);

        let mut actions = Vec::new();
        for task in &tasks {
            if matches!(
                task.state,
                TaskState::Draining { .. } | TaskState::Dead { .. }
            ) && self.request(&task.id, RequestKind::Stop, now_ms)
            {
                actions.push(PoolAction::Stop {
                    task: task.id.clone(),
                    driver_handle: task.driver_handle.clone(),
                });
            }
        }

        let mut by_pool: BTreeMap<PoolKey, Vec<&Task>> = BTreeMap::new();
        for task in &tasks {
            by_pool
                .entry((task.region.clone(), task.tier.clone()))
                .or_default()
                .push(task);
        }
        let mut with_target = HashSet::new();
        for (key, target) in targets {
            with_target.insert(key.clone());
            let pool_tasks = by_pool.remove(key).unwrap_or_default();
            self.plan_pool(now_ms, key, target, &pool_tasks, &mut actions);
        }
        for (key, pool) in &mut self.pools {
            if !with_target.contains(key) {
                pool.status = None;
            }
        }
        actions
    }

    /// Hands the last plan's view of every pool to the `metrics` recorder.
    pub fn publish_metrics(&self, now_ms: u64) {
        for s in self.status() {
            let labels = [("region", s.region.0.clone()), ("tier", s.tier.0.clone())];
            metrics::gauge!("airlock_pool_desired_warm", &labels).set(f64::from(s.desired_warm));
            for (state, n) in [
                ("warm", s.warm),
                ("starting", s.starting),
                ("claimed", s.claimed),
                ("draining", s.draining),
                ("dead", s.dead),
            ] {
                let mut labels = labels.to_vec();
                labels.push(("state", state.to_owned()));
                metrics::gauge!("airlock_pool_tasks", &labels).set(f64::from(n));
            }
            metrics::gauge!("airlock_pool_warm_old_version", &labels)
                .set(f64::from(s.warm_old_version));
            metrics::gauge!("airlock_pool_claim_rate_per_second", &labels).set(s.claim_rate_per_s);
            metrics::gauge!("airlock_pool_start_time_seconds", &labels)
                .set(s.start_time_ms as f64 / 1000.0);
            metrics::counter!("airlock_pool_start_failures_total", &labels)
                .absolute(s.start_failures);
            let (backing_off, remaining_ms) = match &s.backoff {
                Some(b) if b.is_active(now_ms) => (1.0, b.until_ms - now_ms),
                _ => (0.0, 0),
            };
            metrics::gauge!("airlock_pool_backing_off", &labels).set(backing_off);
            metrics::gauge!("airlock_pool_backoff_remaining_seconds", &labels)
                .set(remaining_ms as f64 / 1000.0);
        }
    }

    fn pool_mut(&mut self, region: &Region, tier: &Tier) -> &mut PoolState {
        self.pools
            .entry((region.clone(), tier.clone()))
            .or_default()
    }

    /// Learns from tasks seen for the first time in a telling state: a start time and a reset of
    /// the back-off from each that became warm, a failure from each that died before that.
    fn observe(&mut self, now_ms: u64, tasks: &[&Task]) {
        let config = self.config.clone();
        for task in tasks {
            if self.observed.contains_key(&task.id) {
                continue;
            }
            let pool = self
                .pools
                .entry((task.region.clone(), task.tier.clone()))
                .or_default();
            if let Some(warm_at) = task.warm_at_ms {
                self.observed.insert(task.id.clone(), Observed::BecameWarm);
                pool.start_times
                    .push_back(warm_at.saturating_sub(task.started_at_ms));
                while pool.start_times.len() > config.start_time_samples.max(1) {
                    pool.start_times.pop_front();
                }
                pool.backoff = None;
            } else if let TaskState::Dead { reason } = &task.state {
                self.observed
                    .insert(task.id.clone(), Observed::FailedToStart);
                pool.fail(
                    now_ms,
                    format!("task {} died before it was ready: {reason}", task.id),
                    &config,
                );
            }
        }
    }

    /// Whether to ask for `kind` on `task` now (not asked within the retry period); records it.
    fn request(&mut self, task: &TaskId, kind: RequestKind, now_ms: u64) -> bool {
        if self.requested.get(task).is_some_and(|r| r.kind == kind) {
            return false;
        }
        self.requested.insert(
            task.clone(),
            Requested {
                kind,
                at_ms: now_ms,
            },
        );
        true
    }

    fn drain_requested(&self, task: &TaskId) -> bool {
        self.requested
            .get(task)
            .is_some_and(|r| r.kind == RequestKind::Drain)
    }

    fn census<'a>(&self, target: &PoolTarget, tasks: &[&'a Task]) -> Census<'a> {
        let mut census = Census::default();
        for &task in tasks {
            let current = task.version == target.version;
            match &task.state {
                TaskState::Warm | TaskState::Starting if self.drain_requested(&task.id) => {
                    census.draining += 1;
                }
                TaskState::Warm if current => census.warm_new.push(task),
                TaskState::Warm => census.warm_old.push(task),
                TaskState::Starting if current => census.starting_new += 1,
                TaskState::Starting => census.starting_old.push(task),
                TaskState::Claimed { .. } => census.claimed += 1,
                TaskState::Draining { .. } => census.draining += 1,
                TaskState::Dead { .. } => census.dead += 1,
            }
        }
        let oldest_first =
            |a: &&Task, b: &&Task| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id));
        census.warm_new.sort_by(oldest_first);
        census.warm_old.sort_by(oldest_first);
        census.starting_old.sort_by(oldest_first);
        census
    }

    fn plan_pool(
        &mut self,
        now_ms: u64,
        key: &PoolKey,
        target: &PoolTarget,
        tasks: &[&Task],
        actions: &mut Vec<PoolAction>,
    ) {
        let census = self.census(target, tasks);
        let config = self.config.clone();
        let pool = self.pools.entry(key.clone()).or_default();
        pool.prune_claims(now_ms, config.claim_window_ms);
        let claim_rate = pool.claim_rate(config.claim_window_ms);
        let start_time_ms = pool.start_time_ms(config.default_start_time_ms);
        let desired = desired_warm(target, claim_rate, start_time_ms);
        let keep = pool
            .keep_level(now_ms, desired, config.scale_down_delay_ms)
            .min(target.ceiling)
            .max(desired);
        let pending = count(pool.pending.len());
        let backoff = pool.backoff.clone();

        let warm_new = count(census.warm_new.len());
        let warm_old = count(census.warm_old.len());
        let starting_old = count(census.starting_old.len());
        let starting = census.starting_new + pending;

        // Old-version warm tasks drain only down to the desired warm count, oldest first.
        let mut old_to_drain = warm_old.min((warm_new + warm_old).saturating_sub(desired));
        let supply = warm_new + starting;
        let wanted = desired.saturating_sub(supply);
        let total = warm_new + warm_old + starting + starting_old + census.draining;
        let headroom = target.ceiling.saturating_sub(total);
        // An upgrade with no room under the ceiling (and nothing on its way out or in) makes
        // room one old task at a time.
        if wanted > 0
            && headroom == 0
            && old_to_drain == 0
            && warm_old > 0
            && starting == 0
            && starting_old == 0
            && census.draining == 0
        {
            old_to_drain = 1;
        }
        // Excess warm tasks of the current version retire, oldest first.
        let retire = warm_new.saturating_sub(keep);

        let mut starts = wanted
            .min(headroom)
            .min(config.max_concurrent_starts.saturating_sub(starting));
        match &backoff {
            Some(b) if b.is_active(now_ms) => starts = 0,
            // Probing after a back-off: one start at a time until a task becomes warm.
            Some(_) => starts = starts.min(1u32.saturating_sub(starting)),
            None => {}
        }

        // Old-version tasks still starting are not warm: nothing to keep them for.
        let old = census
            .starting_old
            .iter()
            .chain(census.warm_old.iter().take(old_to_drain as usize));
        for &task in old {
            if self.request(&task.id, RequestKind::Drain, now_ms) {
                actions.push(PoolAction::Drain {
                    task: task.id.clone(),
                    reason: format!(
                        "runtime version {} replaced by {}",
                        task.version, target.version
                    ),
                });
            }
        }
        for &task in census.warm_new.iter().take(retire as usize) {
            if self.request(&task.id, RequestKind::Drain, now_ms) {
                actions.push(PoolAction::Retire {
                    task: task.id.clone(),
                    reason: format!(
                        "excess warm task: {warm_new} warm of version {}, {keep} wanted",
                        target.version
                    ),
                });
            }
        }

        let pool = self.pools.entry(key.clone()).or_default();
        if starts > 0 {
            pool.pending.extend((0..starts).map(|_| PendingStart {
                since_ms: now_ms,
                task: None,
            }));
            actions.push(PoolAction::Start {
                region: key.0.clone(),
                tier: key.1.clone(),
                version: target.version.clone(),
                count: starts,
            });
        }
        pool.status = Some(PoolStatus {
            region: key.0.clone(),
            tier: key.1.clone(),
            version: target.version.clone(),
            desired_warm: desired,
            warm: warm_new + warm_old - old_to_drain - retire,
            warm_old_version: warm_old - old_to_drain,
            starting: starting + starts,
            claimed: census.claimed,
            draining: census.draining + starting_old + old_to_drain + retire,
            dead: census.dead,
            claim_rate_per_s: claim_rate,
            start_time_ms,
            start_failures: pool.start_failures,
            backoff,
        });
    }
}

impl PoolState {
    fn prune_claims(&mut self, now_ms: u64, window_ms: u64) {
        let start = now_ms.saturating_sub(window_ms);
        while let Some(&(second, _)) = self.claims.front() {
            if (second + 1) * 1000 <= start {
                self.claims.pop_front();
            } else {
                break;
            }
        }
    }

    fn claim_rate(&self, window_ms: u64) -> f64 {
        let claims: u64 = self.claims.iter().map(|&(_, n)| u64::from(n)).sum();
        claims as f64 * 1000.0 / window_ms.max(1) as f64
    }

    fn start_time_ms(&self, default_ms: u64) -> u64 {
        if self.start_times.is_empty() {
            return default_ms;
        }
        let sum: u64 = self.start_times.iter().sum();
        sum.div_ceil(self.start_times.len() as u64)
    }

    /// The level warm tasks are kept at: the highest desired count of the last `delay_ms`.
    fn keep_level(&mut self, now_ms: u64, desired: u32, delay_ms: u64) -> u32 {
        match self.high_water {
            Some((level, at)) if level > desired && now_ms.saturating_sub(at) < delay_ms => level,
            _ => {
                self.high_water = Some((desired, now_ms));
                desired
            }
        }
    }

    fn fail(&mut self, now_ms: u64, reason: String, config: &PoolConfig) {
        self.start_failures += 1;
        match &mut self.backoff {
            // The rest of a batch that failed together: one failure's worth of back-off.
            Some(b) if b.is_active(now_ms) => {
                b.failures = b.failures.saturating_add(1);
                b.reason = reason;
            }
            Some(b) => {
                b.delay_ms = b.delay_ms.saturating_mul(2).min(config.backoff_max_ms);
                b.until_ms = now_ms.saturating_add(b.delay_ms);
                b.failures = b.failures.saturating_add(1);
                b.reason = reason;
            }
            None => {
                let delay_ms = config.backoff_initial_ms.min(config.backoff_max_ms);
                self.backoff = Some(Backoff {
                    until_ms: now_ms.saturating_add(delay_ms),
                    delay_ms,
                    failures: 1,
                    since_ms: now_ms,
                    reason,
                });
            }
        }
    }
}

/// `clamp(max(floor, ⌈rate × start time × buffer⌉), ceiling)`.
fn desired_warm(target: &PoolTarget, claims_per_s: f64, start_time_ms: u64) -> u32 {
    let demand = (claims_per_s * (start_time_ms as f64 / 1000.0) * target.buffer_factor).ceil();
    // NaN, a negative buffer or an absurd rate ask for nothing beyond the floor / the ceiling.
    let demand = if demand.is_finite() && demand > 0.0 {
        demand.min(f64::from(u32::MAX)) as u32
    } else {
        0
    };
    target.floor.max(demand).min(target.ceiling)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const START_MS: u64 = 2_000;

    fn key() -> PoolKey {
        (Region("eu".into()), Tier("small".into()))
    }

    fn target(floor: u32, ceiling: u32, version: &str) -> PoolTarget {
        PoolTarget {
            floor,
            ceiling,
            buffer_factor: 2.0,
            version: RuntimeVersion(version.into()),
        }
    }

    /// The replicated state and the loop, in miniature: applies the controller's actions the
    /// way the pool loop would, with tasks becoming warm `START_MS` after they start.
    struct Sim {
        ctl: PoolController,
        now: u64,
        tasks: Vec<Task>,
        targets: BTreeMap<PoolKey, PoolTarget>,
        next_id: u32,
        /// Every start fails (the driver is broken) while set.
        broken: Option<&'static str>,
    }

    impl Sim {
        fn new(config: PoolConfig, target: PoolTarget) -> Self {
            Sim {
                ctl: PoolController::new(config),
                now: 1_000_000,
                tasks: Vec::new(),
                targets: BTreeMap::from([(key(), target)]),
                next_id: 0,
                broken: None,
            }
        }

        fn plan(&mut self) -> Vec<PoolAction> {
            self.ctl.plan(self.now, &self.tasks, &self.targets)
        }

        /// One tick: plan, then carry out every action at once.
        fn tick(&mut self) -> Vec<PoolAction> {
            let actions = self.plan();
            for action in &actions {
                self.apply(action);
            }
            actions
        }

        fn apply(&mut self, action: &PoolAction) {
            match action {
                PoolAction::Start {
                    region,
                    tier,
                    version,
                    count,
                } => {
                    for _ in 0..*count {
                        if let Some(reason) = self.broken {
                            self.ctl
                                .record_start_failure(region, tier, self.now, reason);
                            continue;
                        }
                        self.next_id += 1;
                        let id = TaskId(format!("t{:03}", self.next_id));
                        self.ctl.record_task_started(region, tier, id.clone());
                        self.tasks.push(Task {
                            id: id.clone(),
                            region: region.clone(),
                            tier: tier.clone(),
                            version: version.clone(),
                            state: TaskState::Starting,
                            endpoints: None,
                            driver_handle: format!("h-{id}"),
                            started_at_ms: self.now,
                            warm_at_ms: None,
                            lease_until_ms: self.now + 60_000,
                        });
                    }
                }
                PoolAction::Retire { task, reason } | PoolAction::Drain { task, reason } => {
                    let t = self.task_mut(task);
                    assert!(
                        matches!(t.state, TaskState::Warm | TaskState::Starting),
                        "drained a task in state {:?}",
                        t.state
                    );
                    t.state = TaskState::Draining {
                        reason: reason.clone(),
                    };
                }
                PoolAction::Stop { task, .. } => self.tasks.retain(|t| &t.id != task),
            }
        }

        fn task_mut(&mut self, id: &TaskId) -> &mut Task {
            self.tasks.iter_mut().find(|t| &t.id == id).unwrap()
        }

        /// Moves the clock; tasks that have been starting for `START_MS` become warm.
        fn advance(&mut self, ms: u64) {
            self.now += ms;
            for t in &mut self.tasks {
                if t.state == TaskState::Starting && self.now >= t.started_at_ms + START_MS {
                    t.state = TaskState::Warm;
                    t.warm_at_ms = Some(t.started_at_ms + START_MS);
                }
            }
        }

        /// A claim takes the oldest warm task, preferring the target's version.
        fn claim(&mut self, document: &str) -> Option<TaskId> {
            let (region, tier) = key();
            self.ctl.record_claim(&region, &tier, self.now);
            let version = self.targets[&key()].version.clone();
            let pick = self
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Warm)
                .min_by_key(|t| (t.version != version, t.started_at_ms))?
                .id
                .clone();
            self.task_mut(&pick).state = TaskState::Claimed {
                document: document.into(),
                epoch: 1,
            };
            Some(pick)
        }

        fn count(&self, f: impl Fn(&Task) -> bool) -> u32 {
            self.tasks.iter().filter(|t| f(t)).count() as u32
        }

        fn warm(&self) -> u32 {
            self.count(|t| t.state == TaskState::Warm)
        }

        fn starts(actions: &[PoolAction]) -> u32 {
            actions
                .iter()
                .map(|a| match a {
                    PoolAction::Start { count, .. } => *count,
                    _ => 0,
                })
                .sum()
        }

        /// Ticks every 250 ms for `ms`, checking `invariant` after every tick.
        fn run_for(&mut self, ms: u64, mut invariant: impl FnMut(&Sim)) {
            let end = self.now + ms;
            while self.now < end {
                self.tick();
                invariant(self);
                self.advance(250);
            }
        }
    }

    #[test]
    fn the_floor_is_kept() {
        let mut sim = Sim::new(PoolConfig::default(), target(3, 10, "a"));
        let actions = sim.tick();
        assert_eq!(Sim::starts(&actions), 3, "{actions:?}");
        assert_eq!(sim.count(|t| t.state == TaskState::Starting), 3);
        // Starting tasks count toward the floor: nothing more while they start.
        assert_eq!(Sim::starts(&sim.tick()), 0);
        sim.advance(START_MS);
        assert_eq!(sim.warm(), 3);
        assert!(sim.tick().is_empty());
        // A claim takes one (and one claim in 30 s asks for no more than the floor).
        sim.claim("doc-1").unwrap();
        assert_eq!(Sim::starts(&sim.tick()), 1);
        sim.advance(START_MS);
        assert_eq!(sim.warm(), 3);
        let status = sim.ctl.pool_status(&key().0, &key().1).unwrap();
        assert_eq!(status.desired_warm, 3);
        assert_eq!(status.claimed, 1);
    }

    #[test]
    fn asked_for_starts_count_until_their_task_appears() {
        let mut sim = Sim::new(PoolConfig::default(), target(2, 10, "a"));
        // Plans without carrying them out: the first asks for two, the others wait for them.
        assert_eq!(Sim::starts(&sim.plan()), 2);
        assert_eq!(Sim::starts(&sim.plan()), 0);
        let (region, tier) = key();
        sim.ctl
            .record_task_started(&region, &tier, TaskId("x".into()));
        assert_eq!(Sim::starts(&sim.plan()), 0);
        // A start the loop never reported on stops counting after the report timeout; the one
        // reported started but never applied too.
        sim.now += PoolConfig::default().start_report_timeout_ms;
        assert_eq!(Sim::starts(&sim.plan()), 2);
    }

    #[test]
    fn a_burst_of_claims_raises_the_desired_count() {
        let mut sim = Sim::new(PoolConfig::default(), target(2, 100, "a"));
        sim.tick();
        sim.advance(START_MS);
        sim.tick();
        assert_eq!(sim.warm(), 2);
        for i in 0..30 {
            sim.claim(&format!("doc-{i}"));
        }
        // 30 claims in a 30 s window: 1/s × 2 s (the start time seen) × buffer 2 = 4.
        let actions = sim.tick();
        let status = sim.ctl.pool_status(&key().0, &key().1).unwrap().clone();
        assert_eq!(status.desired_warm, 4, "{status:?}");
        assert!((status.claim_rate_per_s - 1.0).abs() < 1e-9);
        assert_eq!(Sim::starts(&actions), 4);
        // Once the claims leave the window, the extra tasks retire, but only after the
        // scale-down delay.
        sim.advance(START_MS);
        sim.now += 31_000;
        assert!(sim.tick().is_empty(), "retired before the scale-down delay");
        assert_eq!(sim.warm(), 4);
        sim.now += PoolConfig::default().scale_down_delay_ms;
        let actions = sim.tick();
        let retired: Vec<_> = actions
            .iter()
            .filter(|a| matches!(a, PoolAction::Retire { .. }))
            .collect();
        assert_eq!(retired.len(), 2, "{actions:?}");
        assert_eq!(sim.warm(), 2);
    }

    #[test]
    fn the_start_time_estimate_comes_from_tasks_that_became_warm() {
        let mut sim = Sim::new(PoolConfig::default(), target(0, 100, "a"));
        sim.ctl.record_claim(&key().0, &key().1, sim.now);
        sim.tick();
        let status = sim.ctl.pool_status(&key().0, &key().1).unwrap();
        assert_eq!(status.start_time_ms, 3_000, "the default before any sample");
        sim.advance(START_MS);
        sim.tick();
        let status = sim.ctl.pool_status(&key().0, &key().1).unwrap();
        assert_eq!(status.start_time_ms, START_MS);
        // 60 claims / 30 s × 2 s × 2 = 8.
        for _ in 0..59 {
            sim.ctl.record_claim(&key().0, &key().1, sim.now);
        }
        sim.tick();
        let status = sim.ctl.pool_status(&key().0, &key().1).unwrap();
        assert_eq!(status.desired_warm, 8);
    }

    #[test]
    fn the_ceiling_is_respected() {
        let mut sim = Sim::new(PoolConfig::default(), target(2, 5, "a"));
        for _ in 0..1_000 {
            sim.ctl.record_claim(&key().0, &key().1, sim.now);
        }
        let actions = sim.tick();
        assert_eq!(Sim::starts(&actions), 5);
        assert_eq!(
            sim.ctl
                .pool_status(&key().0, &key().1)
                .unwrap()
                .desired_warm,
            5
        );
        // Draining tasks count against the ceiling: a retire frees room only once stopped.
        sim.advance(START_MS);
        let one = sim.tasks[0].id.clone();
        sim.task_mut(&one).state = TaskState::Draining {
            reason: "test".into(),
        };
        let actions = sim.plan();
        assert_eq!(Sim::starts(&actions), 0, "{actions:?}");
        assert!(actions.contains(&PoolAction::Stop {
            task: one.clone(),
            driver_handle: format!("h-{one}"),
        }));
        for action in &actions {
            sim.apply(action);
        }
        assert_eq!(Sim::starts(&sim.tick()), 1);
        sim.run_for(20_000, |sim| {
            let alive = sim.count(|t| !matches!(t.state, TaskState::Claimed { .. }));
            assert!(alive <= 5, "{alive} tasks above a ceiling of 5");
        });
    }

    #[test]
    fn a_floor_above_the_ceiling_is_capped() {
        let mut sim = Sim::new(PoolConfig::default(), target(8, 3, "a"));
        assert_eq!(Sim::starts(&sim.tick()), 3);
    }

    #[test]
    fn at_most_max_concurrent_starts_at_once() {
        let config = PoolConfig {
            max_concurrent_starts: 4,
            ..PoolConfig::default()
        };
        let mut sim = Sim::new(config, target(10, 20, "a"));
        assert_eq!(Sim::starts(&sim.tick()), 4);
        assert_eq!(Sim::starts(&sim.tick()), 0);
        sim.advance(START_MS);
        assert_eq!(Sim::starts(&sim.tick()), 4);
    }

    #[test]
    fn back_off_grows_to_its_cap_and_resets_when_a_task_becomes_warm() {
        let mut sim = Sim::new(PoolConfig::default(), target(3, 10, "a"));
        let (region, tier) = key();
        sim.broken = Some("no such program");
        // The first batch fails together: one failure's worth of back-off, not three.
        assert_eq!(Sim::starts(&sim.tick()), 3);
        let b = sim.ctl.backoff(&region, &tier).unwrap().clone();
        assert_eq!((b.delay_ms, b.failures), (1_000, 3));
        assert_eq!(b.until_ms, sim.now + 1_000);
        assert!(b.to_string().contains("because: no such program"), "{b}");
        assert!(sim.tick().is_empty(), "started while backing off");
        let status = sim.ctl.pool_status(&region, &tier).unwrap();
        assert_eq!(status.start_failures, 3);
        assert!(status.backoff.as_ref().unwrap().is_active(sim.now));

        // Each probe after a back-off ends fails and doubles it, up to 60 s.
        let mut delays = Vec::new();
        for _ in 0..8 {
            let until = sim.ctl.backoff(&region, &tier).unwrap().until_ms;
            sim.now = until - 1;
            assert!(sim.tick().is_empty());
            sim.now = until;
            let actions = sim.tick();
            assert_eq!(Sim::starts(&actions), 1, "one probe at a time: {actions:?}");
            delays.push(sim.ctl.backoff(&region, &tier).unwrap().delay_ms);
        }
        assert_eq!(
            delays,
            [2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );

        // The driver is fixed: the probe starts, becomes warm, and the back-off is gone.
        sim.broken = None;
        sim.now = sim.ctl.backoff(&region, &tier).unwrap().until_ms;
        assert_eq!(Sim::starts(&sim.tick()), 1);
        assert_eq!(Sim::starts(&sim.tick()), 0, "a second start while probing");
        sim.advance(START_MS);
        let actions = sim.tick();
        assert!(sim.ctl.backoff(&region, &tier).is_none());
        assert_eq!(Sim::starts(&actions), 2, "{actions:?}");
    }

    #[test]
    fn a_task_that_dies_before_it_is_warm_is_a_failed_start() {
        let mut sim = Sim::new(PoolConfig::default(), target(1, 10, "a"));
        sim.tick();
        let id = sim.tasks[0].id.clone();
        sim.task_mut(&id).state = TaskState::Dead {
            reason: "exited with code 3".into(),
        };
        let actions = sim.tick();
        let (region, tier) = key();
        let b = sim.ctl.backoff(&region, &tier).unwrap().clone();
        assert_eq!(b.failures, 1);
        assert!(b.reason.contains("exited with code 3"), "{b}");
        assert_eq!(Sim::starts(&actions), 0, "started while backing off");
        assert!(sim.tasks.is_empty(), "the dead task was not stopped");
        // Seeing the same dead task again (the stop not applied yet) does not count twice.
        sim.ctl.plan(
            sim.now,
            &[Task {
                id: TaskId("dead".into()),
                state: TaskState::Dead { reason: "x".into() },
                ..sim_task("a")
            }],
            &sim.targets,
        );
        let before = sim.ctl.backoff(&region, &tier).unwrap().failures;
        sim.ctl.plan(
            sim.now,
            &[Task {
                id: TaskId("dead".into()),
                state: TaskState::Dead { reason: "x".into() },
                ..sim_task("a")
            }],
            &sim.targets,
        );
        assert_eq!(sim.ctl.backoff(&region, &tier).unwrap().failures, before);
    }

    fn sim_task(version: &str) -> Task {
        let (region, tier) = key();
        Task {
            id: TaskId("x".into()),
            region,
            tier,
            version: RuntimeVersion(version.into()),
            state: TaskState::Starting,
            endpoints: None,
            driver_handle: "h".into(),
            started_at_ms: 0,
            warm_at_ms: None,
            lease_until_ms: 0,
        }
    }

    /// Brings the pool to `warm` warm tasks of version `a`.
    fn warmed(config: PoolConfig, floor: u32, ceiling: u32) -> Sim {
        let mut sim = Sim::new(config, target(floor, ceiling, "a"));
        sim.tick();
        sim.advance(START_MS);
        sim.tick();
        assert_eq!(sim.warm(), floor);
        sim
    }

    fn upgrade_to_b(sim: &mut Sim) {
        let t = sim.targets.get_mut(&key()).unwrap();
        t.version = RuntimeVersion("b".into());
    }

    #[test]
    fn a_rolling_upgrade_never_drops_warm_below_the_floor() {
        // Room for two more under the ceiling: old tasks go two at a time.
        let mut sim = warmed(PoolConfig::default(), 4, 6);
        upgrade_to_b(&mut sim);
        let mut saw_both = false;
        sim.run_for(30_000, |sim| {
            let warm = sim.warm();
            assert!(warm >= 4, "warm fell to {warm} during the upgrade");
            let old = sim.count(|t| t.state == TaskState::Warm && t.version.0 == "a");
            saw_both |= old > 0 && old < 4;
        });
        assert!(saw_both, "old tasks all drained at once");
        assert_eq!(sim.warm(), 4);
        assert!(
            sim.tasks.iter().all(|t| t.version.0 == "b"),
            "{:?}",
            sim.tasks
        );
        assert!(sim.tick().is_empty());
        let status = sim.ctl.pool_status(&key().0, &key().1).unwrap();
        assert_eq!(status.warm_old_version, 0);
    }

    #[test]
    fn a_rolling_upgrade_under_claims_ends_with_only_the_new_version() {
        let mut sim = warmed(PoolConfig::default(), 3, 10);
        upgrade_to_b(&mut sim);
        let mut served = 0;
        let end = sim.now + 30_000;
        let mut n = 0;
        while sim.now < end {
            sim.tick();
            if n % 4 == 0 && sim.claim(&format!("doc-{n}")).is_some() {
                served += 1;
            }
            n += 1;
            sim.advance(250);
        }
        assert_eq!(
            served, 30,
            "a claim found the pool empty during the upgrade"
        );
        let unclaimed_old =
            sim.count(|t| t.version.0 == "a" && !matches!(t.state, TaskState::Claimed { .. }));
        assert_eq!(unclaimed_old, 0, "{:?}", sim.tasks);
        sim.run_for(START_MS, |_| {});
        assert!(sim.warm() >= 3);
    }

    #[test]
    fn an_upgrade_with_no_room_under_the_ceiling_still_finishes() {
        let mut sim = warmed(PoolConfig::default(), 3, 3);
        upgrade_to_b(&mut sim);
        sim.run_for(60_000, |sim| {
            assert!(sim.warm() >= 2, "more than one task short at once");
            assert!(sim.tasks.len() <= 3);
        });
        assert_eq!(sim.warm(), 3);
        assert!(sim.tasks.iter().all(|t| t.version.0 == "b"));
    }

    #[test]
    fn old_version_tasks_still_starting_drain_at_once() {
        let mut sim = Sim::new(PoolConfig::default(), target(2, 10, "a"));
        sim.tick();
        upgrade_to_b(&mut sim);
        let actions = sim.tick();
        let drained = actions
            .iter()
            .filter(|a| matches!(a, PoolAction::Drain { .. }))
            .count();
        assert_eq!(drained, 2, "{actions:?}");
        assert_eq!(Sim::starts(&actions), 2);
    }

    #[test]
    fn claimed_tasks_are_never_retired_or_drained() {
        let config = PoolConfig {
            scale_down_delay_ms: 0,
            ..PoolConfig::default()
        };
        let mut sim = warmed(config, 6, 20);
        for i in 0..4 {
            sim.claim(&format!("doc-{i}")).unwrap();
        }
        // The floor drops to 1 and the version changes: warm tasks go, claimed ones stay.
        let t = sim.targets.get_mut(&key()).unwrap();
        t.floor = 1;
        sim.now += 31_000;
        upgrade_to_b(&mut sim);
        for _ in 0..40 {
            let actions = sim.tick();
            for action in &actions {
                if let PoolAction::Retire { task, .. } | PoolAction::Drain { task, .. } = action {
                    let t = sim.tasks.iter().find(|t| &t.id == task);
                    assert!(t.is_none_or(|t| !matches!(t.state, TaskState::Claimed { .. })));
                }
            }
            sim.advance(250);
        }
        assert_eq!(
            sim.count(|t| matches!(t.state, TaskState::Claimed { .. })),
            4
        );
        assert_eq!(sim.warm(), 1);
        assert_eq!(
            sim.count(|t| t.state == TaskState::Warm && t.version.0 == "b"),
            1
        );
    }

    #[test]
    fn excess_warm_tasks_retire_oldest_first() {
        let config = PoolConfig {
            scale_down_delay_ms: 0,
            ..PoolConfig::default()
        };
        let mut sim = Sim::new(config, target(3, 10, "a"));
        for _ in 0..3 {
            sim.tick();
            sim.advance(START_MS);
        }
        // Three more, started later by hand.
        sim.targets.get_mut(&key()).unwrap().floor = 6;
        sim.tick();
        sim.advance(START_MS);
        assert_eq!(sim.warm(), 6);
        sim.targets.get_mut(&key()).unwrap().floor = 4;
        let actions = sim.tick();
        let retired: Vec<&TaskId> = actions
            .iter()
            .filter_map(|a| match a {
                PoolAction::Retire { task, .. } => Some(task),
                _ => None,
            })
            .collect();
        assert_eq!(retired, [&TaskId("t001".into()), &TaskId("t002".into())]);
        // Retires asked for are not asked again while they take effect.
        let mut unapplied = sim.ctl.plan(sim.now, &sim.tasks, &sim.targets);
        unapplied.retain(|a| matches!(a, PoolAction::Retire { .. }));
        assert!(unapplied.is_empty(), "{unapplied:?}");
    }

    #[test]
    fn stops_are_asked_again_only_after_the_retry_period() {
        let mut sim = Sim::new(PoolConfig::default(), target(0, 10, "a"));
        sim.tasks.push(Task {
            state: TaskState::Draining {
                reason: "released".into(),
            },
            ..sim_task("a")
        });
        let stop = |actions: &[PoolAction]| {
            actions
                .iter()
                .filter(|a| matches!(a, PoolAction::Stop { .. }))
                .count()
        };
        assert_eq!(stop(&sim.plan()), 1);
        assert_eq!(stop(&sim.plan()), 0);
        sim.now += PoolConfig::default().retry_ms;
        assert_eq!(stop(&sim.plan()), 1);
    }

    #[test]
    fn pools_without_a_target_are_left_alone() {
        let mut sim = Sim::new(PoolConfig::default(), target(2, 10, "a"));
        sim.targets.clear();
        sim.tasks.push(Task {
            state: TaskState::Warm,
            warm_at_ms: Some(1),
            ..sim_task("a")
        });
        assert!(sim.tick().is_empty());
        assert_eq!(sim.ctl.status().count(), 0);
    }

    #[test]
    fn the_claim_rate_forgets_claims_outside_the_window() {
        let mut pool = PoolState::default();
        for t in [0, 500, 1_500, 29_999] {
            pool.claims.push_back((t / 1000, 1));
        }
        // The window is [1 000, 31 000): the claims of second 0 are out.
        pool.prune_claims(31_000, 30_000);
        assert_eq!(pool.claims.len(), 2, "{:?}", pool.claims);
        pool.prune_claims(59_000, 30_000);
        assert_eq!(pool.claims.len(), 1);
        assert!((pool.claim_rate(30_000) - 1.0 / 30.0).abs() < 1e-9);
        pool.prune_claims(60_000, 30_000);
        assert!(pool.claims.is_empty());
    }

    #[test]
    fn desired_warm_ignores_nonsense_factors() {
        let mut t = target(2, 10, "a");
        t.buffer_factor = f64::NAN;
        assert_eq!(desired_warm(&t, 100.0, 3_000), 2);
        t.buffer_factor = -1.0;
        assert_eq!(desired_warm(&t, 100.0, 3_000), 2);
        t.buffer_factor = f64::INFINITY;
        assert_eq!(desired_warm(&t, 100.0, 3_000), 2);
        t.buffer_factor = 1e300;
        assert_eq!(desired_warm(&t, 100.0, 3_000), 10);
    }
}
