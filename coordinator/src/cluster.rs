//! One coordinator process assembled: its Raft member, the [`Coordinator`] over it, the HTTP
//! API, the leader's duties and the driver's exit reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{self, Api, ApiToken};
use crate::driver::Driver;
use crate::model::{Command, Response};
use crate::pool::PoolConfig;
use crate::raft::{NodeId, ProposeError, RaftConfig, RaftHandle, Role, StateEvent};
use crate::service::{Consensus, ConsensusError, Coordinator, CoordinatorConfig};
use crate::state::State;

/// [`Consensus`] over this coordinator's Raft member.
#[derive(Debug)]
pub struct RaftConsensus {
    raft: RaftHandle,
    applied: watch::Sender<u64>,
    forward: JoinHandle<()>,
}

impl RaftConsensus {
    pub fn new(raft: RaftHandle) -> Arc<Self> {
        let (applied, _) = watch::channel(0);
        let mut events = raft.subscribe();
        let sender = applied.clone();
        let forward = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(StateEvent::Applied { index, .. } | StateEvent::Replaced { index }) => {
                        sender.send_replace(index);
                    }
                    // Fell behind: wake everyone to re-read the state.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        sender.send_modify(|index| *index += 1);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Arc::new(RaftConsensus {
            raft,
            applied,
            forward,
        })
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }
}

impl Drop for RaftConsensus {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

impl Consensus for RaftConsensus {
    async fn propose(&self, command: Command) -> Result<Response, ConsensusError> {
        self.raft.propose(command).await.map_err(|err| match err {
            ProposeError::NoLeader { .. } => ConsensusError::NoLeader,
            indeterminate @ ProposeError::Indeterminate { .. } => {
                ConsensusError::Indeterminate(Arc::new(indeterminate))
            }
            other => ConsensusError::Failed(Arc::new(other)),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        self.raft.read(f)
    }

    fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn is_leader(&self) -> bool {
        self.raft.status().role == Role::Leader
    }
}

/// Everything one coordinator process needs.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub raft: RaftConfig,
    /// Where the HTTP API listens (port 0 picks one).
    pub api_listen: SocketAddr,
    /// Bootstrap a new group with these members (id → Raft RPC address) if this member's data
    /// directory is new; `None` to join as configured by others.
    pub initialize: Option<BTreeMap<NodeId, String>>,
    pub coordinator: CoordinatorConfig,
    pub pool: PoolConfig,
    pub tokens: Vec<ApiToken>,
}

/// A running coordinator process.
#[derive(Debug)]
pub struct RunningCoordinator<D> {
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub coordinator: Arc<Coordinator<RaftConsensus, D>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Raft(#[from] crate::raft::StartError),
    #[error("cannot listen for the API on {addr}: {source}; pick a free address")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("bootstrapping the group failed: {0}")]
    Initialize(#[source] ProposeError),
}

/// Starts the Raft member, the API and the duties. With `metrics`, `/metrics` renders it.
pub async fn start<D: Driver + 'static>(
    mut config: ProcessConfig,
    driver: Option<Arc<D>>,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
) -> Result<RunningCoordinator<D>, StartError> {
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.api_listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.api_listen,
        source,
    })?;
    if config.coordinator.advertise_url.is_empty() {
        config.coordinator.advertise_url = format!("http://{api_addr}");
    }
    let raft = RaftHandle::start(config.raft.clone()).await?;
    let raft_addr = raft.local_addr();
    if let Some(mut members) = config.initialize.clone() {
        // An empty address for this member means "where it just started listening".
        if let Some(own) = members.get_mut(&config.raft.id)
            && own.is_empty()
        {
            *own = raft_addr.to_string();
        }
        // Bootstrapping an already initialized group is refused by Raft and harmless.
        if let Err(err) = raft.initialize(members).await {
            info!("not bootstrapping the group: {err}");
        }
    }
    let consensus = RaftConsensus::new(raft.clone());
    let coordinator = Arc::new(Coordinator::new(
        consensus,
        driver.clone(),
        config.coordinator.clone(),
        config.pool.clone(),
    ));
    let cluster_raft = raft.clone();
    let api = Arc::new(Api {
        coordinator: Arc::clone(&coordinator),
        tokens: config.tokens.clone(),
        metrics,
        cluster: Some(Arc::new(move || {
            serde_json::to_value(cluster_raft.status()).unwrap_or_default()
        })),
    });
    let router = api::router(api);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            warn!("the API server stopped: {err}");
        }
    }));
    tasks.push(tokio::spawn(Arc::clone(&coordinator).run_duties()));
    if let Some(driver) = driver {
        let coordinator = Arc::clone(&coordinator);
        tasks.push(tokio::spawn(async move {
            loop {
                let exit = driver.next_exit().await;
                let reason = format!("its process {}", exit.status);
                warn!(task = %exit.task, %reason, "a task ended by itself");
                if let Err(err) = coordinator.task_exited(&exit.handle, reason).await {
                    warn!("recording the task's end: {err}");
                }
            }
        }));
    }
    info!(%api_addr, %raft_addr, id = config.raft.id, "coordinator running");
    Ok(RunningCoordinator {
        api_addr,
        raft_addr,
        coordinator,
        tasks,
    })
}

impl<D: Driver + 'static> RunningCoordinator<D> {
    pub fn raft(&self) -> &RaftHandle {
        self.coordinator.consensus().raft()
    }

    /// Stops the API, the duties and the Raft member (the driver's tasks are the driver's).
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.raft().shutdown().await;
    }
}
