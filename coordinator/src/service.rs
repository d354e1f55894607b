//! The coordinator's work around the replicated state: claims, the tasks' control protocol, and
//! the leader's duties (signing key, lease expiry, the pool through the driver).
//!
//! It talks to the replicated log through [`Consensus`] (openraft in production, through
//! [`crate::cluster::RaftConsensus`]), so it holds no Raft types of its own.
//!
//! # Claims
//! A claim proposes [`Command::Claim`]; the state machine answers with the task that already
//! serves the document, or takes a warm task with the claim's log index as its epoch. The claim
//! never waits on a scheduler while a warm task exists; with none, it waits for the pool (every
//! applied entry wakes it) up to [`CoordinatorConfig::claim_wait`], then gives up with
//! [`ClaimError::NoWarmTask`] (503 with `Retry-After`). A claim names a tenant (the egress
//! gateway's unit of policy and static IPs); a document served under one tenant is refused to
//! claims of another ([`ClaimError::TenantMismatch`]) until it is released.
//!
//! # Tasks
//! A task proves who it is with a secret derived from the coordinators' signing key and its id
//! ([`task_secret`]), so any coordinator can check it without storing secrets. Its assignment is
//! read from the local replica: the claim's entry reaches every coordinator within a round
//! trip, and every applied entry wakes the task's long poll.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_protocol::control::{HeartbeatReply, TaskAssignment, TaskReady};
use airlock_protocol::token::{self, Claims, Role};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::driver::{Driver, TaskSpec};
use crate::model::{
    Allocation, Command, EgressIpSets, Endpoints, PoolTarget, Region, Response, RuntimeVersion,
    Task, TaskId, TaskState, Tenant, Tier,
};
use crate::pool::{PoolAction, PoolConfig, PoolController};
use crate::state::State;

/// Why the replicated log did not take a command.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsensusError {
    /// No leader could be reached: nothing was applied by this attempt. Retry shortly.
    #[error("no coordinator leads the region right now (an election is under way); retry shortly")]
    NoLeader,
    /// The leader got the command but its answer was lost: it may or may not have been applied.
    /// Every command is safe to repeat, so a retry settles it.
    #[error("the leader's answer was lost (the command may or may not have been applied): {0}")]
    Indeterminate(#[source] SharedError),
    /// The log could not take the command (the leader lost its quorum, or refused it).
    #[error("the replicated log failed: {0}")]
    Failed(#[source] SharedError),
}

/// Any error, kept (and shared by clones) as the source of another.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// What the coordinator needs of the replicated log.
pub trait Consensus: Send + Sync + 'static {
    /// Appends `command` through the leader (from any coordinator) and returns its response once
    /// applied.
    fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<Response, ConsensusError>> + Send;

    /// Reads this replica's state (it may trail the leader by the entries in flight).
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T;

    /// Changes whenever this replica applies an entry.
    fn applied(&self) -> watch::Receiver<u64>;

    /// Whether this coordinator leads the region now.
    fn is_leader(&self) -> bool;
}

/// One coordinator's settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The region this coordinator's Raft group manages.
    pub region: Region,
    /// The tier claims get when they name none.
    pub default_tier: Tier,
    /// The pools to keep, set in the replicated state when this coordinator first leads.
    pub pools: Vec<(Tier, PoolTarget)>,
    /// The document store tasks serve documents from.
    pub store: String,
    /// How long a task's lease runs after each heartbeat.
    pub lease: Duration,
    /// How often tasks send heartbeats.
    pub heartbeat: Duration,
    /// How long a claim waits for a warm task before answering 503.
    pub claim_wait: Duration,
    /// How long capability tokens stay valid.
    pub token_ttl: Duration,
    /// The URL tasks reach the coordinators at (given to the driver).
    pub advertise_url: String,
    /// How often the leader runs its duties.
    pub tick: Duration,
    /// Appended to every task's node command line (e.g. `--python PATH`).
    pub extra_node_args: Vec<String>,
    /// Where the service reads the time: the system clock, or one a test moves.
    pub clock: Arc<dyn Clock>,
}

impl CoordinatorConfig {
    /// Settings for one region on this machine.
    pub fn local(region: &str, store: String, advertise_url: String) -> Self {
        CoordinatorConfig {
            region: Region(region.to_owned()),
            default_tier: Tier("standard".into()),
            pools: vec![(
                Tier("standard".into()),
                PoolTarget {
                    floor: 2,
                    ceiling: 8,
                    buffer_factor: 2.0,
                    version: RuntimeVersion(env!("CARGO_PKG_VERSION").into()),
                },
            )],
            store,
            lease: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            claim_wait: Duration::from_secs(10),
            token_ttl: Duration::from_secs(3600),
            advertise_url,
            tick: Duration::from_millis(200),
            extra_node_args: Vec::new(),
            clock: Arc::new(SystemClock),
        }
    }
}

pub use airlock_protocol::api::Session;

/// What a leader keeps of its own term: when it began (leases are not expired for one lease
/// after it) and whether it has set the configured pool targets yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenure {
    since_ms: u64,
    pools_set: bool,
}

impl Tenure {
    /// A term that began at `now_ms` (Unix milliseconds).
    pub fn begin(now_ms: u64) -> Self {
        Tenure {
            since_ms: now_ms,
            pools_set: false,
        }
    }
}

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "no warm task in region {region}, tier {tier} within {waited_ms} ms; the pool is \
         refilling, retry after {retry_after_s} s"
    )]
    NoWarmTask {
        region: String,
        tier: String,
        waited_ms: u64,
        retry_after_s: u64,
    },
    #[error(
        "document {document:?} is open under tenant {allocated:?}, not {requested:?}: a document \
         is served for one tenant at a time; claim it as {allocated:?}, or once it is released"
    )]
    TenantMismatch {
        document: String,
        allocated: Tenant,
        requested: Tenant,
    },
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error("the coordinators have no signing key yet (the first leader makes one); retry shortly")]
    NoSigningKey,
    #[error("{0}")]
    Internal(String),
}

/// Why the egress IP sets were not set.
#[derive(Debug, thiserror::Error)]
pub enum EgressIpsError {
    #[error(transparent)]
    Invalid(#[from] crate::model::BadEgressIps),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The state machine refused them (a coordinator of another version checks differently).
    #[error("{0}")]
    Rejected(String),
}

/// Why a task's request failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("unknown task {0}")]
    UnknownTask(String),
    #[error("the task's secret is wrong")]
    BadSecret,
    #[error("task {0} is gone (drained or dead); it should exit")]
    Gone(String),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error("{0}")]
    Rejected(String),
}

/// The coordinator of one region on this machine.
#[derive(Debug)]
pub struct Coordinator<C, D> {
    consensus: Arc<C>,
    driver: Option<Arc<D>>,
    config: CoordinatorConfig,
    pool: Mutex<PoolController>,
    /// Driver handles of tasks this coordinator started and has not yet seen in the state.
    started: Mutex<HashMap<TaskId, String>>,
}

/// The system clock in Unix milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the service reads the time, in Unix milliseconds. Every timestamp it writes into the
/// log (claims, leases, the pool's records) and every lease it judges comes from here, so a test
/// can move time instead of waiting for it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A clock that moves only when told to (tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock that reads `now_ms`.
    pub fn at(now_ms: u64) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(now_ms))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The secret a task proves itself with: derived from the signing key and the task id.
pub fn task_secret(signing_key_der: &[u8], task: &TaskId) -> String {
    let mut hash = Sha256::new();
    hash.update(b"airlock task secret v1\0");
    hash.update(signing_key_der);
    hash.update(task.0.as_bytes());
    hex::encode(hash.finalize())
}

/// Compares two secrets without leaking where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl<C: Consensus, D: Driver + 'static> Coordinator<C, D> {
    pub fn new(
        consensus: Arc<C>,
        driver: Option<Arc<D>>,
        config: CoordinatorConfig,
        pool: PoolConfig,
    ) -> Self {
        Coordinator {
            consensus,
            driver,
            config,
            pool: Mutex::new(PoolController::new(pool)),
            started: Mutex::new(HashMap::new()),
        }
    }

    /// Now, by the configured clock (Unix milliseconds).
    pub fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn consensus(&self) -> &Arc<C> {
        &self.consensus
    }

    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        self.consensus.read(f)
    }

    fn signing_key(&self) -> Option<SigningKey> {
        self.read(|state| {
            state
                .signing_key()
                .and_then(|der| SigningKey::from_pkcs8_der(der).ok())
        })
    }

    /// The token-signing public key (SPKI PEM), once the first leader made the key.
    pub fn token_public_key(&self) -> Option<String> {
        self.signing_key()
            .and_then(|key| token::verifying_key_to_pem(&key.verifying_key()).ok())
    }

    /// Serves `document` of `tenant` for `user` with `role`: the task already serving it, or a
    /// warm one.
    pub async fn claim(
        &self,
        document: &str,
        tenant: Tenant,
        user: &str,
        role: Role,
        tier: Option<Tier>,
    ) -> Result<Session, ClaimError> {
        let tier = tier.unwrap_or_else(|| self.config.default_tier.clone());
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.claim_wait;
        let mut applied = self.consensus.applied();
        loop {
            let proposed = self
                .consensus
                .propose(Command::Claim {
                    document: document.to_owned(),
                    region: self.config.region.clone(),
                    tier: tier.clone(),
                    now_ms: self.now_ms(),
                    tenant: tenant.clone(),
                })
                .await;
            // Through an election, or when a leader's answer was lost, try again: a claim
            // repeated after it was applied returns the same allocation.
            let response = match proposed {
                Ok(response) => response,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    warn!(document, "claim: {err}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            match response {
                Response::Claimed {
                    allocation,
                    task,
                    fresh,
                } => {
                    if fresh {
                        metrics::counter!("airlock_coordinator_claims_total", "result" => "fresh")
                            .increment(1);
                        self.pool.lock().await.record_claim(
                            &task.region,
                            &task.tier,
                            self.now_ms(),
                        );
                    } else {
                        metrics::counter!("airlock_coordinator_claims_total", "result" => "served")
                            .increment(1);
                    }
                    metrics::histogram!("airlock_coordinator_claim_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return self.session(&allocation, &task, user, role, fresh);
                }
                Response::NoWarmTask => {
                    metrics::counter!("airlock_coordinator_claim_waits_total").increment(1);
                    let wait = tokio::time::timeout_at(deadline, applied.changed()).await;
                    if wait.is_err() {
                        metrics::counter!("airlock_coordinator_claims_total", "result" => "no_warm_task")
                            .increment(1);
                        return Err(ClaimError::NoWarmTask {
                            region: self.config.region.0.clone(),
                            tier: tier.0,
                            waited_ms: started.elapsed().as_millis() as u64,
                            retry_after_s: 2,
                        });
                    }
                }
                Response::TenantMismatch {
                    document,
                    allocated,
                } => {
                    metrics::counter!("airlock_coordinator_claims_total", "result" => "tenant_mismatch")
                        .increment(1);
                    return Err(ClaimError::TenantMismatch {
                        document,
                        allocated,
                        requested: tenant,
                    });
                }
                other => return Err(ClaimError::Internal(format!("unexpected {other:?}"))),
            }
        }
    }

    fn session(
        &self,
        allocation: &Allocation,
        task: &Task,
        user: &str,
        role: Role,
        fresh: bool,
    ) -> Result<Session, ClaimError> {
        let key = self.signing_key().ok_or(ClaimError::NoSigningKey)?;
        let endpoints = task
            .endpoints
            .clone()
            .ok_or_else(|| ClaimError::Internal("a warm task without endpoints".into()))?;
        let expires_at = self.now_ms() / 1000 + self.config.token_ttl.as_secs();
        let token = token::sign(
            &Claims {
                doc: allocation.document.clone(),
                user: user.to_owned(),
                role,
                epoch: allocation.epoch,
                exp: expires_at,
            },
            &key,
        );
        Ok(Session {
            document: allocation.document.clone(),
            epoch: allocation.epoch,
            task: task.id.0.clone(),
            quic: endpoints.quic,
            websocket: endpoints.websocket,
            fingerprint: endpoints.fingerprint,
            token,
            expires_at,
            fresh,
            tenant: allocation.tenant.clone(),
        })
    }

    /// Checks a task's bearer secret.
    pub fn authenticate_task(&self, task: &TaskId, secret: &str) -> Result<(), TaskError> {
        let key = self.read(|state| state.signing_key().map(<[u8]>::to_vec));
        let known = self.read(|state| state.task(task).is_some());
        match key {
            Some(key) if same_secret(&task_secret(&key, task), secret) => {
                if known {
                    Ok(())
                } else {
                    Err(TaskError::UnknownTask(task.0.clone()))
                }
            }
            _ => Err(TaskError::BadSecret),
        }
    }

    fn lease_reply(&self) -> HeartbeatReply {
        HeartbeatReply {
            lease_ms: self.config.lease.as_millis() as u64,
            interval_ms: self.config.heartbeat.as_millis() as u64,
        }
    }

    fn accepted(&self, response: Response) -> Result<HeartbeatReply, TaskError> {
        match response {
            Response::Ok => Ok(self.lease_reply()),
            Response::Rejected { reason } => Err(TaskError::Rejected(reason)),
            other => Err(TaskError::Rejected(format!("unexpected {other:?}"))),
        }
    }

    /// The task's node is warm.
    pub async fn task_ready(
        &self,
        task: &TaskId,
        ready: TaskReady,
    ) -> Result<HeartbeatReply, TaskError> {
        let response = self
            .consensus
            .propose(Command::TaskReady {
                id: task.clone(),
                endpoints: Endpoints {
                    quic: ready.quic,
                    websocket: ready.websocket,
                    fingerprint: ready.fingerprint,
                },
                now_ms: self.now_ms(),
                lease_ms: self.config.lease.as_millis() as u64,
            })
            .await?;
        info!(%task, "task warm");
        self.accepted(response)
    }

    pub async fn task_heartbeat(&self, task: &TaskId) -> Result<HeartbeatReply, TaskError> {
        let response = self
            .consensus
            .propose(Command::Heartbeat {
                id: task.clone(),
                now_ms: self.now_ms(),
                lease_ms: self.config.lease.as_millis() as u64,
            })
            .await?;
        self.accepted(response)
    }

    /// Waits up to `wait` for a claim to take the task; `None` if none did.
    pub async fn task_assignment(
        &self,
        task: &TaskId,
        wait: Duration,
    ) -> Result<Option<TaskAssignment>, TaskError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.consensus.applied();
        loop {
            let state = self.read(|state| state.task(task).map(|t| t.state.clone()));
            match state {
                None => return Err(TaskError::UnknownTask(task.0.clone())),
                Some(TaskState::Claimed { document, epoch }) => {
                    let token_public_key = self
                        .token_public_key()
                        .ok_or_else(|| TaskError::Rejected("no signing key yet".into()))?;
                    // The allocation mirrors the claimed task (`State::violations`); read in a
                    // later call, it may be gone (released meanwhile): then the default, and
                    // the node finds its document moved at the store anyway.
                    let tenant = self
                        .read(|state| state.allocation(&document).map(|a| a.tenant.clone()))
                        .unwrap_or_default();
                    return Ok(Some(TaskAssignment {
                        document,
                        epoch,
                        token_public_key,
                        store: self.config.store.clone(),
                        tenant: tenant.0,
                    }));
                }
                Some(TaskState::Draining { .. } | TaskState::Dead { .. }) => {
                    return Err(TaskError::Gone(task.0.clone()));
                }
                Some(TaskState::Starting | TaskState::Warm) => {}
            }
            if tokio::time::timeout_at(deadline, applied.changed())
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }

    /// The task stopped serving its document: the document is free, the task drains.
    pub async fn task_released(
        &self,
        task: &TaskId,
        document: String,
        epoch: u64,
        reason: &str,
    ) -> Result<(), TaskError> {
        info!(%task, %document, epoch, reason, "document released");
        match self
            .consensus
            .propose(Command::Release { document, epoch })
            .await?
        {
            Response::Ok => Ok(()),
            Response::Rejected { reason } => Err(TaskError::Rejected(reason)),
            other => Err(TaskError::Rejected(format!("unexpected {other:?}"))),
        }
    }

    /// Asks for `task` to be drained (an operator's request).
    pub async fn drain(&self, task: &TaskId, reason: &str) -> Result<(), TaskError> {
        match self
            .consensus
            .propose(Command::Drain {
                id: task.clone(),
                reason: reason.to_owned(),
            })
            .await?
        {
            Response::Ok => Ok(()),
            Response::Rejected { reason } => Err(TaskError::Rejected(reason)),
            other => Err(TaskError::Rejected(format!("unexpected {other:?}"))),
        }
    }

    /// Sets one pool's target.
    pub async fn set_pool_target(
        &self,
        tier: Tier,
        target: PoolTarget,
    ) -> Result<(), ConsensusError> {
        self.consensus
            .propose(Command::SetPoolTarget {
                region: self.config.region.clone(),
                tier,
                target,
            })
            .await
            .map(|_| ())
    }

    /// The region's static egress IP sets, once an operator set them.
    pub fn egress_ips(&self) -> Option<EgressIpSets> {
        self.read(|state| state.egress_ips().cloned())
    }

    /// Replaces the region's static egress IP sets as a whole; returns them as published
    /// (checked and normalized by [`EgressIpSets::new`], which the state machine applies too).
    pub async fn set_egress_ips(
        &self,
        tenants: BTreeMap<Tenant, Vec<IpAddr>>,
    ) -> Result<EgressIpSets, EgressIpsError> {
        let now = self.now_ms();
        let sets = EgressIpSets::new(self.config.region.clone(), tenants.clone(), now)?;
        match self
            .consensus
            .propose(Command::SetEgressIps {
                region: self.config.region.clone(),
                tenants,
                now_ms: now,
            })
            .await?
        {
            Response::Ok => Ok(sets),
            Response::Rejected { reason } => Err(EgressIpsError::Rejected(reason)),
            other => Err(EgressIpsError::Rejected(format!("unexpected {other:?}"))),
        }
    }

    /// The pool controller's view of every pool (targets, desired counts, back-off).
    pub async fn pool_status(&self) -> Vec<crate::pool::PoolStatus> {
        self.pool.lock().await.status().cloned().collect()
    }

    /// Runs the leader's duties every tick while this coordinator leads, until the process
    /// ends. Followers do nothing here.
    pub async fn run_duties(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tenure: Option<Tenure> = None;
        loop {
            tick.tick().await;
            if !self.consensus.is_leader() {
                tenure = None;
                continue;
            }
            let tenure = tenure.get_or_insert_with(|| Tenure::begin(self.now_ms()));
            if let Err(err) = self.lead_once(tenure).await {
                warn!("leader duties: {err}");
            }
        }
    }

    /// One round of the leader's duties, in the term `tenure` describes.
    pub async fn lead_once(&self, tenure: &mut Tenure) -> Result<(), ConsensusError> {
        if self.read(|state| state.signing_key().is_none()) {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let der = key
                .to_pkcs8_der()
                .map_err(|err| ConsensusError::Failed(Arc::new(err)))?;
            self.consensus
                .propose(Command::SetSigningKey {
                    pkcs8_der: der.as_bytes().to_vec(),
                })
                .await?;
            info!("made the region's token-signing key");
        }
        if !tenure.pools_set {
            for (tier, target) in &self.config.pools {
                let current = self.read(|state| state.target(&self.config.region, tier).cloned());
                if current.as_ref() != Some(target) {
                    self.set_pool_target(tier.clone(), target.clone()).await?;
                }
            }
            tenure.pools_set = true;
        }
        // A new leader first gives every task one whole lease to reach it: heartbeats sent
        // while the cluster had no leader (an election, a paused or cut-off leader) could not
        // be committed, and a task that kept beating must not lose its document for that.
        // Nomad resets its heartbeat timers on election for the same reason.
        let now = self.now_ms();
        let lease_ms = self.config.lease.as_millis() as u64;
        if now < tenure.since_ms.saturating_add(lease_ms) {
            return self.run_pool().await;
        }
        // Only when a lease ran out, so an idle region does not grow its log every tick.
        let lapsed = self.read(|state| {
            state.tasks().any(|task| {
                task.lease_until_ms < now && !matches!(task.state, TaskState::Dead { .. })
            })
        });
        if !lapsed {
            return self.run_pool().await;
        }
        let expired = self
            .consensus
            .propose(Command::ExpireLeases { now_ms: now })
            .await?;
        if let Response::Expired { tasks, documents } = expired
            && !tasks.is_empty()
        {
            warn!(
                ?tasks,
                ?documents,
                "leases ran out; those tasks are presumed dead"
            );
        }
        self.run_pool().await
    }

    /// Plans the pool and carries the plan out through the driver.
    async fn run_pool(&self) -> Result<(), ConsensusError> {
        let Some(driver) = self.driver.clone() else {
            return Ok(());
        };
        let now = self.now_ms();
        let actions = {
            let mut pool = self.pool.lock().await;
            let (tasks, targets): (Vec<Task>, Vec<(crate::state::PoolKey, PoolTarget)>) = self
                .read(|state| {
                    (
                        state.tasks().cloned().collect(),
                        state
                            .targets()
                            .map(|(k, t)| (k.clone(), t.clone()))
                            .collect(),
                    )
                });
            let plan = pool.plan(now, tasks.iter(), targets.iter().map(|(k, t)| (k, t)));
            pool.publish_metrics(now);
            plan
        };
        let key = self.read(|state| state.signing_key().map(<[u8]>::to_vec));
        let Some(key) = key else {
            return Ok(());
        };
        for action in actions {
            match action {
                PoolAction::Start {
                    region,
                    tier,
                    version,
                    count,
                } => {
                    for _ in 0..count {
                        self.start_task(&driver, &key, &region, &tier, &version)
                            .await?;
                    }
                }
                PoolAction::Retire { .. } | PoolAction::Drain { .. } => {
                    if let Some(command) = action.command() {
                        self.consensus.propose(command).await?;
                    }
                }
                PoolAction::Stop {
                    task,
                    driver_handle,
                } => {
                    if let Err(err) = driver.stop(&driver_handle).await {
                        warn!(%task, "stopping the task: {err}");
                    }
                    self.consensus
                        .propose(Command::RemoveTask { id: task })
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn start_task(
        &self,
        driver: &Arc<D>,
        key: &[u8],
        region: &Region,
        tier: &Tier,
        version: &RuntimeVersion,
    ) -> Result<(), ConsensusError> {
        let id = TaskId(format!("t-{}", &uuid_like()));
        let spec = TaskSpec {
            id: id.clone(),
            region: region.clone(),
            tier: tier.clone(),
            version: version.clone(),
            coordinator_url: self.config.advertise_url.clone(),
            secret: task_secret(key, &id).into(),
            store: self.config.store.clone(),
            extra_args: self.config.extra_node_args.clone(),
        };
        match driver.start(spec).await {
            Ok(started) => {
                self.pool
                    .lock()
                    .await
                    .record_task_started(region, tier, id.clone());
                self.started
                    .lock()
                    .await
                    .insert(id.clone(), started.handle.clone());
                self.consensus
                    .propose(Command::AddTask {
                        id: id.clone(),
                        region: region.clone(),
                        tier: tier.clone(),
                        version: version.clone(),
                        driver_handle: started.handle.clone(),
                        now_ms: self.now_ms(),
                        // Time to warm up: the node's first heartbeat is its ready.
                        lease_ms: 120_000,
                    })
                    .await?;
                // A process that ended before its task was in the state had its exit report
                // dropped (no task had its handle yet): look again now.
                if !driver.alive(&started.handle).await.unwrap_or(true) {
                    self.consensus
                        .propose(Command::MarkDead {
                            id,
                            reason: "its process ended as soon as it started".into(),
                        })
                        .await?;
                }
            }
            Err(err) => {
                warn!(%region, %tier, "a task failed to start: {err}");
                self.pool.lock().await.record_start_failure(
                    region,
                    tier,
                    self.now_ms(),
                    err.reason(),
                );
            }
        }
        Ok(())
    }

    /// Reports a task the driver saw exit.
    pub async fn task_exited(&self, handle: &str, reason: String) -> Result<(), ConsensusError> {
        let task = self.read(|state| {
            state
                .tasks()
                .find(|t| t.driver_handle == handle)
                .map(|t| t.id.clone())
        });
        if let Some(id) = task {
            self.consensus
                .propose(Command::MarkDead { id, reason })
                .await?;
        }
        Ok(())
    }
}

/// A short random id.
fn uuid_like() -> String {
    use rand::Rng as _;
    let bytes: [u8; 6] = rand::thread_rng().r#gen();
    hex::encode(bytes)
}
