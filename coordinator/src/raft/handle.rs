//! [`RaftHandle`]: this coordinator's member of its region's Raft group.
//!
//! Its methods come in four kinds:
//! - lifecycle: [`RaftHandle::start`], [`RaftHandle::initialize`], [`RaftHandle::add_learner`],
//!   [`RaftHandle::change_membership`], [`RaftHandle::shutdown`];
//! - writes: [`RaftHandle::propose`], on any coordinator;
//! - reads: [`RaftHandle::linearizable_read`] (decides ownership), [`RaftHandle::read`]
//!   (this replica, possibly behind);
//! - watching: [`RaftHandle::status`], [`RaftHandle::watch_status`], [`RaftHandle::subscribe`].
//!
//! Leader-only work (proposals, read indexes, membership changes) is tried here first; a
//! follower sends it to the leader it knows over the peers' network, and through an election it
//! waits for the next leader, up to [`Timing::propose_timeout`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::metrics::{RaftMetrics, WaitError};
use openraft::{Raft, ServerState, SnapshotPolicy};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::network::{NetworkSetupError, PeerNetwork};
use super::server::RpcServer;
use super::storage::{self, Closed, OpenError, Shared};
use super::tls::{TlsError, TlsMaterial};
use super::wire::{Forward, ForwardReply};
use super::{NodeId, Peer, StateEvent, TypeConfig};
use crate::model::{Command, Response};
use crate::state::State;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the leader waits for a new learner to receive the log before answering.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(60);

/// How fast the group notices a lost leader, and how long callers wait through an election.
#[derive(Debug, Clone)]
pub struct Timing {
    /// The leader's heartbeat; also openraft's deadline for one append RPC (a follower's
    /// fsync included), so keep it well above the disk's fsync time.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in this range starts an election.
    /// Failover takes about this plus one round trip.
    pub election_timeout: (Duration, Duration),
    /// How long `propose`, `linearizable_read` and membership changes keep trying through a
    /// change of leader before giving up.
    pub propose_timeout: Duration,
    /// The deadline for sending a whole snapshot to a follower and installing it there.
    pub install_snapshot_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            propose_timeout: Duration::from_secs(5),
            install_snapshot_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything one coordinator's Raft member needs; read once by the binary and passed down.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Stable across restarts, unique in the group.
    pub id: NodeId,
    /// Holds the log and the state machine (`coordinator.redb`); created `0700`.
    pub data_dir: PathBuf,
    /// Where the Raft RPC listens (port 0 picks one; see [`RaftHandle::local_addr`]). Peers
    /// dial the address given for this member in `initialize` or `add_learner`, kept in the
    /// membership: a restarted member must listen there again.
    pub listen_addr: SocketAddr,
    pub tls: TlsMaterial,
    pub timing: Timing,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log below a snapshot, so a slightly lagging follower catches up
    /// from the log instead of a whole snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl RaftConfig {
    pub fn new(
        id: NodeId,
        data_dir: PathBuf,
        listen_addr: SocketAddr,
        tls: TlsMaterial,
    ) -> RaftConfig {
        RaftConfig {
            id,
            data_dir,
            listen_addr,
            tls,
            timing: Timing::default(),
            snapshot_every: 5_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// Why a coordinator's Raft member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("invalid raft timing")]
    Timing(#[source] Box<openraft::ConfigError>),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Network(#[from] NetworkSetupError),
    #[error("raft did not start")]
    Raft(#[source] Box<Fatal<NodeId>>),
}

/// An error the leader reported, as text (it crossed the network).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LeaderError(String);

/// Why a proposal (or a membership change) did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader was elected, or none could be reached, in time. The command was not applied
    /// by this attempt (an earlier attempt cut off by a leader change may have been).
    #[error("no leader could be reached within {waited:?}")]
    NoLeader { waited: Duration },
    /// The command reached the leader but its answer did not come back: it may or may not
    /// have been applied. Repeating it is safe (see the module docs of `raft`).
    #[error(
        "coordinator {leader} (the leader) did not answer: the command may or may not have been applied"
    )]
    Indeterminate {
        leader: NodeId,
        #[source]
        source: BoxError,
    },
    /// The leader could not do it (it lost its quorum, a membership change was refused).
    #[error("coordinator {leader} (the leader) failed")]
    Failed {
        leader: NodeId,
        #[source]
        source: LeaderError,
    },
    /// This coordinator's Raft member has stopped (shut down, or a fatal storage error).
    #[error("this coordinator's raft member has stopped")]
    Stopped(#[source] BoxError),
}

/// Why a linearizable read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no leader could be reached within {waited:?}")]
    NoLeader { waited: Duration },
    /// The leader could not confirm its leadership, or this replica did not catch up in time.
    #[error("the read could not be confirmed")]
    Unavailable(#[source] BoxError),
    #[error("this coordinator's raft member has stopped")]
    Stopped(#[source] BoxError),
}

impl From<ProposeError> for ReadError {
    fn from(e: ProposeError) -> ReadError {
        match e {
            ProposeError::NoLeader { waited } => ReadError::NoLeader { waited },
            ProposeError::Indeterminate { source, .. } => ReadError::Unavailable(source),
            ProposeError::Failed { source, .. } => ReadError::Unavailable(Box::new(source)),
            ProposeError::Stopped(source) => ReadError::Stopped(source),
        }
    }
}

/// This coordinator's part in the group.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    /// Receives the log but does not vote (just added, or not a voter).
    Learner,
    Shutdown,
}

/// The group as this coordinator sees it, for `airlock status`, health checks and deciding
/// where the pool controller runs.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// The last index the current snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Voting members and their Raft RPC addresses.
    pub voters: BTreeMap<NodeId, String>,
    pub learners: BTreeMap<NodeId, String>,
}

impl ClusterStatus {
    fn of(m: &RaftMetrics<NodeId, Peer>) -> ClusterStatus {
        let membership = m.membership_config.membership();
        let addr = |id: NodeId| {
            let addr = membership
                .get_node(&id)
                .map(|p| p.addr.clone())
                .unwrap_or_default();
            (id, addr)
        };
        ClusterStatus {
            id: m.id,
            role: match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            voters: membership.voter_ids().map(addr).collect(),
            learners: membership.learner_ids().map(addr).collect(),
        }
    }
}

/// Follows [`ClusterStatus`] as it changes (leader elected, entries applied, members added).
#[derive(Debug, Clone)]
pub struct StatusWatch {
    metrics: watch::Receiver<RaftMetrics<NodeId, Peer>>,
}

impl StatusWatch {
    pub fn current(&self) -> ClusterStatus {
        ClusterStatus::of(&self.metrics.borrow())
    }

    /// Waits for the next change; `None` once the member has stopped.
    pub async fn changed(&mut self) -> Option<ClusterStatus> {
        self.metrics.changed().await.ok()?;
        Some(self.current())
    }
}

/// One coordinator's Raft member. Cheap to clone; every clone drives the same member.
#[derive(Debug, Clone)]
pub struct RaftHandle {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    network: PeerNetwork,
    local_addr: SocketAddr,
    timing: Timing,
    /// Taken by `shutdown`; dropping it (with the last handle) stops the listener too.
    server: Mutex<Option<RpcServer>>,
    closed: Mutex<Option<Closed>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl RaftHandle {
    /// Opens the store in `config.data_dir`, binds the RPC listener and starts the member. A
    /// new data directory starts an uninitialized member: call [`RaftHandle::initialize`] on
    /// one coordinator, or have the leader add this one. A used one rejoins its group.
    pub async fn start(config: RaftConfig) -> Result<RaftHandle, StartError> {
        create_private_dir(&config.data_dir)?;
        let (log, state_machine, closed) = storage::open(&config.data_dir)?;
        let shared = state_machine.shared();
        let timing = config.timing.clone();
        let raft_config = openraft::Config {
            cluster_name: "airlock".into(),
            heartbeat_interval: millis(timing.heartbeat),
            election_timeout_min: millis(timing.election_timeout.0),
            election_timeout_max: millis(timing.election_timeout.1),
            install_snapshot_timeout: millis(timing.install_snapshot_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| StartError::Timing(Box::new(e)))?;
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen_addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen_addr,
            source,
        })?;
        let server_tls = config.tls.server_config()?;
        let network = PeerNetwork::new(&config.tls)?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network.clone(),
            log,
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(Box::new(e)))?;
        let server = RpcServer::spawn(listener, server_tls, raft.clone());
        tracing::info!(id = config.id, addr = %local_addr, "raft member started");
        Ok(RaftHandle {
            inner: Arc::new(Inner {
                id: config.id,
                raft,
                shared,
                network,
                local_addr,
                timing,
                server: Mutex::new(Some(server)),
                closed: Mutex::new(Some(closed)),
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address the Raft RPC listens on (the bound port when `listen_addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Makes a new group of `members` (id → Raft RPC address, this coordinator among them).
    /// Call it on one coordinator, once; on a member that is already initialized it does
    /// nothing, so a restarted `airlock dev` can call it every time.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), ProposeError> {
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(stopped)? {
            return Ok(());
        }
        let members: BTreeMap<NodeId, Peer> = members
            .into_iter()
            .map(|(id, addr)| (id, Peer { addr }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e)) => Err(ProposeError::Failed {
                leader: self.inner.id,
                source: LeaderError(e.to_string()),
            }),
            Err(RaftError::Fatal(f)) => Err(stopped(f)),
        }
    }

    /// Adds a non-voting member that receives the log (from a snapshot if it is far behind),
    /// and waits until it has received it up to its own admission. Works on any coordinator.
    /// On a timeout the learner stays in the membership (learners do not count for quorum).
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), ProposeError> {
        self.lead_or_forward(Forward::AddLearner { id, addr })
            .await
            .map(|_| ())
    }

    /// Makes `voters` the voting members: learners among them are promoted, voters left out
    /// leave the group, other learners stay learners. Works on any coordinator.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), ProposeError> {
        self.lead_or_forward(Forward::ChangeMembership { voters })
            .await
            .map(|_| ())
    }

    /// Commits `command` and returns the leader's result of applying it. Works on any
    /// coordinator; see the module docs of `raft` for what a retry may repeat.
    pub async fn propose(&self, command: Command) -> Result<Response, ProposeError> {
        match self.lead_or_forward(Forward::Propose { command }).await? {
            ForwardReply::Applied { response } => Ok(*response),
            other => Err(unexpected(self.inner.id, &other)),
        }
    }

    /// Reads the state after every write that completed before this call (on any coordinator).
    /// Use it for reads that decide ownership.
    pub async fn linearizable_read<T>(
        &self,
        read: impl FnOnce(&State) -> T,
    ) -> Result<T, ReadError> {
        let start = Instant::now();
        let index = match self.lead_or_forward(Forward::ReadIndex).await? {
            ForwardReply::ReadIndex { index } => index,
            other => return Err(ReadError::from(unexpected(self.inner.id, &other))),
        };
        if index.is_some() {
            let left = self
                .inner
                .timing
                .propose_timeout
                .saturating_sub(start.elapsed());
            self.inner
                .raft
                .wait(Some(left))
                .applied_index_at_least(index, "linearizable read")
                .await
                .map_err(|e| ReadError::Unavailable(Box::new(e)))?;
        }
        Ok(self.read(read))
    }

    /// Reads this replica's state as applied so far: it may miss the latest writes, but never
    /// shows an uncommitted one.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.inner.shared.read().state)
    }

    /// Every command this replica applies from now on, and snapshot installs. A subscriber
    /// that falls 4096 events behind gets `Lagged` and should re-read the state.
    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.inner.shared.events.subscribe()
    }

    /// The leader this coordinator knows of (possibly stale by an election).
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus::of(&self.inner.raft.metrics().borrow())
    }

    pub fn watch_status(&self) -> StatusWatch {
        StatusWatch {
            metrics: self.inner.raft.metrics(),
        }
    }

    /// Stops the member: closes the RPC listener and its connections (peers see it gone at
    /// once), stops Raft, and waits until the store's file is closed, so the same data
    /// directory can be started again. Other clones of the handle stop working.
    pub async fn shutdown(&self) {
        let server = self
            .inner
            .server
            .lock()
            .map(|mut s| s.take())
            .unwrap_or(None);
        if let Some(mut server) = server {
            server.stop().await;
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        let closed = self
            .inner
            .closed
            .lock()
            .map(|mut c| c.take())
            .unwrap_or(None);
        if let Some(closed) = closed {
            // Replication tasks let go of the log shortly after the core stops.
            if tokio::time::timeout(Duration::from_secs(10), closed.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    id = self.inner.id,
                    "the raft store is still open after shutdown"
                );
            }
        }
        tracing::info!(id = self.inner.id, "raft member stopped");
    }

    /// Does leader-only work here if this coordinator leads, else at the leader; through an
    /// election, waits for the next leader until `propose_timeout`.
    async fn lead_or_forward(&self, request: Forward) -> Result<ForwardReply, ProposeError> {
        let inner = &self.inner;
        let start = Instant::now();
        let deadline = start + inner.timing.propose_timeout;
        let mut metrics = inner.raft.metrics();
        let mut hint: Option<NodeId> = None;
        loop {
            // Leader-side work can wait on a quorum (or, adding a learner, on it catching up).
            let left = deadline.saturating_duration_since(Instant::now());
            let here = tokio::time::timeout(left, lead(&inner.raft, request.clone()))
                .await
                .map_err(|elapsed| ProposeError::Indeterminate {
                    leader: inner.id,
                    source: Box::new(elapsed),
                })?;
            let known = match here.map_err(stopped)? {
                ForwardReply::NotLeader { leader } => hint.take().or(leader),
                ForwardReply::Failed { message } => {
                    return Err(ProposeError::Failed {
                        leader: inner.id,
                        source: LeaderError(message),
                    });
                }
                reply => return Ok(reply),
            };
            let addr = known.filter(|l| *l != inner.id).and_then(|leader| {
                let m = metrics.borrow();
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&leader)?
                    .addr
                    .clone();
                Some((leader, addr))
            });
            if let Some((leader, addr)) = addr {
                let left = deadline.saturating_duration_since(Instant::now());
                match inner.network.forward(&addr, &request, left).await {
                    Ok(ForwardReply::NotLeader { leader: next }) => {
                        hint = next.filter(|n| *n != leader)
                    }
                    Ok(ForwardReply::Failed { message }) => {
                        return Err(ProposeError::Failed {
                            leader,
                            source: LeaderError(message),
                        });
                    }
                    Ok(reply) => return Ok(reply),
                    // Never reached it (it is down, most likely): wait for the next leader.
                    Err(e) if e.not_sent() => {
                        tracing::debug!(leader, error = %e, "leader unreachable")
                    }
                    Err(e) => {
                        return Err(ProposeError::Indeterminate {
                            leader,
                            source: Box::new(e),
                        });
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ProposeError::NoLeader {
                    waited: now - start,
                });
            }
            if hint.is_some() {
                continue;
            }
            // Wait until the leader we know changes, or a little while (a stale view of a
            // leader that is down changes only when the next election ends).
            let pause = inner.timing.election_timeout.0.min(deadline - now);
            let _ = tokio::time::timeout(pause, wait_leader_change(&mut metrics, known)).await;
        }
    }
}

async fn wait_leader_change(
    metrics: &mut watch::Receiver<RaftMetrics<NodeId, Peer>>,
    from: Option<NodeId>,
) {
    while metrics.changed().await.is_ok() {
        if metrics.borrow().current_leader != from {
            return;
        }
    }
}

/// Leader-only work, done here: answers `NotLeader` when this member does not lead. Errors
/// only when the member itself has stopped.
async fn lead(
    raft: &Raft<TypeConfig>,
    request: Forward,
) -> Result<ForwardReply, Box<Fatal<NodeId>>> {
    fn write_reply<T>(
        result: Result<T, RaftError<NodeId, ClientWriteError<NodeId, Peer>>>,
        reply: impl FnOnce(T) -> ForwardReply,
    ) -> Result<ForwardReply, Box<Fatal<NodeId>>> {
        match result {
            Ok(t) => Ok(reply(t)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(ForwardReply::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(e)) => Ok(ForwardReply::Failed {
                message: e.to_string(),
            }),
            Err(RaftError::Fatal(f)) => Err(Box::new(f)),
        }
    }
    match request {
        Forward::Propose { command } => write_reply(raft.client_write(command).await, |r| {
            ForwardReply::Applied {
                response: Box::new(r.data),
            }
        }),
        Forward::AddLearner { id, addr } => {
            let added = match raft.add_learner(id, Peer { addr }, false).await {
                Ok(response) => response.log_id,
                Err(e) => return write_reply(Err::<(), _>(e), |_| ForwardReply::Done),
            };
            // openraft's own blocking add counts a learner within 5000 entries as caught up
            // even when it cannot be reached; wait until it really has the change that
            // added it (from a snapshot if the log below was purged).
            let caught_up = raft
                .wait(Some(LEARNER_CATCH_UP))
                .metrics(
                    |m| {
                        let matched = m.replication.as_ref().and_then(|r| r.get(&id));
                        matched.is_some_and(|matched| matched.as_ref() >= Some(&added))
                    },
                    "the new learner receives the log",
                )
                .await;
            match caught_up {
                Ok(_) => Ok(ForwardReply::Done),
                Err(WaitError::ShuttingDown) => Err(Box::new(Fatal::Stopped)),
                Err(e) => Ok(ForwardReply::Failed {
                    message: format!("learner {id} was added but has not received the log: {e}"),
                }),
            }
        }
        Forward::ChangeMembership { voters } => {
            write_reply(raft.change_membership(voters, false).await, |_| {
                ForwardReply::Done
            })
        }
        Forward::ReadIndex => match raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(ForwardReply::ReadIndex {
                index: read.map(|l| l.index),
            }),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Ok(ForwardReply::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(e)) => Ok(ForwardReply::Failed {
                message: e.to_string(),
            }),
            Err(RaftError::Fatal(f)) => Err(Box::new(f)),
        },
    }
}

/// The leader's side of a forwarded request (the RPC server calls it).
pub(crate) async fn serve_forwarded(raft: &Raft<TypeConfig>, request: Forward) -> ForwardReply {
    lead(raft, request)
        .await
        .unwrap_or_else(|fatal| ForwardReply::Failed {
            message: format!("the leader's raft member stopped: {fatal}"),
        })
}

fn stopped(fatal: impl std::error::Error + Send + Sync + 'static) -> ProposeError {
    ProposeError::Stopped(Box::new(fatal))
}

fn unexpected(leader: NodeId, reply: &ForwardReply) -> ProposeError {
    ProposeError::Failed {
        leader,
        source: LeaderError(format!("unexpected answer {reply:?}")),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let error = |source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(error)
}
