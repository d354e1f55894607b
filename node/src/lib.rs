//! `airlock-node`: the kernel task — one per document.
//!
//! # Layout
//! The folders follow a request's path from the client to the kernel:
//! - [`quic`] and [`websocket`]: the two client endpoints; they decode frames and hand them on.
//! - [`session`]: one client connection whatever its transport — hello, token and role checks.
//! - [`document`]: the document actor — the notebook CRDT, the reactive cell graph, the kernel's
//!   execution queue and the sessions — and the sans-IO cores it drives (analysis, graph).
//! - [`collab`]: the notebook CRDT, its validator and `.ipynb` import and export.
//! - [`store`]: durable, fenced storage of each document's history and outputs.
//! - [`kernel`]: the kernel bridge — a real ipykernel over the Jupyter protocol on ZeroMQ IPC,
//!   and the managed Python environment it runs in.
//! - [`jail`]: the sandbox every kernel runs in — namespaces, a read-only root, cgroup limits,
//!   seccomp, landlock, no capabilities.
//! - [`egress`]: a jailed kernel's only way out — its namespace's TCP and DNS carried by the node
//!   into the gateway's tunnel.
//! - [`tls`]: the node's certificate (self-signed with a printed fingerprint, or from files).
//! - [`task`]: a task of the coordinators' warm pool: the node's side of the control protocol
//!   ([`task::run_task`]: ready, heartbeats, the assignment, the release).
//!
//! [`start`] assembles them; [`RunningNode::shutdown`] takes them apart again, leaving no
//! kernel process and no socket file behind.
// `deny`, not `forbid`: the jail (and only the jail) must call the OS directly.
#![deny(unsafe_code)]

pub mod collab;
pub mod document;
pub mod egress;
pub mod jail;
pub mod kernel;
pub mod log_budget;
pub mod quic;
pub mod session;
pub mod store;
pub mod task;
pub mod tls;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_protocol::FrameLimit;
use ed25519_dalek::VerifyingKey;
use tokio::task::JoinHandle;
use tracing::info;

use crate::document::actor::{self, DocumentHandle, OpenError, StopReason};
use crate::kernel::{KernelBridge, KernelConfig, KernelError};
use crate::session::Gate;
use crate::tls::{NodeCertificate, TlsError, TlsSource};

/// What egress audit records name as the cell of code sent with `execute` rather than run as a
/// cell.
pub const ADHOC_CELL: &str = "(execute)";

/// Everything a node needs, read once by the binary and passed down.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The document this node serves; tokens for any other are refused.
    pub document: String,
    /// The allocation epoch; tokens of an older epoch are refused.
    pub epoch: u64,
    /// The key capability tokens must be signed with.
    pub token_key: VerifyingKey,
    /// Where to listen for QUIC (UDP); `None` disables QUIC.
    pub quic_listen: Option<SocketAddr>,
    /// Where to listen for WebSocket (TCP); `None` disables WebSocket.
    pub ws_listen: Option<SocketAddr>,
    pub tls: TlsSource,
    pub kernel: KernelConfig,
    pub frame_limit: FrameLimit,
    /// Where the document's history and outputs are kept: a local folder, or a URL
    /// (`file://`, `s3://…`, `memory://` for throwaway documents).
    pub store: String,
    /// Stop serving (after a snapshot) once no client has been connected for this long.
    pub idle_timeout: Option<std::time::Duration>,
    /// Who the document belongs to: the kernel's flows leave under this tenant's egress policy
    /// and static addresses.
    pub tenant: String,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "document id {0:?} is not valid: use 1 to 128 characters from A-Z a-z 0-9 . _ - \
         (and not . or ..)"
    )]
    BadDocumentId(String),
    #[error("enable at least one of QUIC and WebSocket")]
    NoEndpoint,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("could not listen for {what} on {addr}: {source}; pick a free address or port")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("could not open the document store {url:?}: {source}")]
    Store {
        url: String,
        #[source]
        source: Box<crate::store::StoreError>,
    },
    #[error("could not open the document: {0}")]
    Document(#[from] Box<OpenError>),
}

/// Whether `id` is a document id this node accepts.
pub fn valid_document_id(id: &str) -> bool {
    airlock_protocol::ids::is_valid_id(id)
}

/// A node that is serving its document.
#[derive(Debug)]
pub struct RunningNode {
    pub quic_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    /// SHA-256 of the QUIC certificate, for clients to pin.
    pub fingerprint: String,
    /// The kernel's process id when the node started.
    pub kernel_pid: Option<u32>,
    document: DocumentHandle,
    quic: Option<quinn::Endpoint>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a warm node needs before it knows its document: endpoints, certificate, kernel.
#[derive(Debug, Clone)]
pub struct WarmConfig {
    /// Where to listen for QUIC (UDP); `None` disables QUIC.
    pub quic_listen: Option<SocketAddr>,
    /// Where to listen for WebSocket (TCP); `None` disables WebSocket.
    pub ws_listen: Option<SocketAddr>,
    pub tls: TlsSource,
    pub kernel: KernelConfig,
    pub frame_limit: FrameLimit,
}

/// The document a warm node is given: what the coordinator decides at claim time.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The document to serve; tokens for any other are refused.
    pub document: String,
    /// The allocation epoch; tokens of an older epoch are refused, and store writes are fenced
    /// with it.
    pub epoch: u64,
    /// The key capability tokens must be signed with.
    pub token_key: VerifyingKey,
    /// The document store (a folder or URL, as [`NodeConfig::store`]).
    pub store: String,
    /// Stop serving once no client has been connected for this long.
    pub idle_timeout: Option<std::time::Duration>,
    /// The tenant the document belongs to (egress policy and static addresses).
    pub tenant: String,
}

impl NodeConfig {
    fn split(self) -> (WarmConfig, Assignment) {
        (
            WarmConfig {
                quic_listen: self.quic_listen,
                ws_listen: self.ws_listen,
                tls: self.tls,
                kernel: self.kernel,
                frame_limit: self.frame_limit,
            },
            Assignment {
                document: self.document,
                epoch: self.epoch,
                token_key: self.token_key,
                store: self.store,
                idle_timeout: self.idle_timeout,
                tenant: self.tenant,
            },
        )
    }
}

/// A node with its endpoints bound and its kernel started, waiting for a document: a warm task
/// of the pool. Clients that connect before [`WarmNode::assign`] wait in the endpoints' accept
/// queues.
#[derive(Debug)]
pub struct WarmNode {
    pub quic_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    /// SHA-256 of the QUIC certificate, for clients to pin.
    pub fingerprint: String,
    pub kernel_pid: Option<u32>,
    quic: Option<quinn::Endpoint>,
    ws: Option<tokio::net::TcpListener>,
    kernel: KernelBridge,
    kernel_events: tokio::sync::mpsc::Receiver<kernel::KernelEvent>,
    frame_limit: FrameLimit,
    egress: Option<crate::egress::Egress>,
}

/// Binds the endpoints and starts the kernel, without a document yet.
pub async fn warm(config: WarmConfig) -> Result<WarmNode, NodeError> {
    if config.quic_listen.is_none() && config.ws_listen.is_none() {
        return Err(NodeError::NoEndpoint);
    }
    let certificate = NodeCertificate::load(&config.tls)?;
    let quic = config
        .quic_listen
        .map(|addr| quic::bind(addr, &certificate))
        .transpose()?;
    let quic_addr = match &quic {
        Some(endpoint) => Some(endpoint.local_addr().map_err(|source| {
            NodeError::Bind {
                what: "QUIC",
                addr: config
                    .quic_listen
                    .unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                source,
            }
        })?),
        None => None,
    };
    let ws = match config.ws_listen {
        Some(addr) => Some(websocket::bind(addr).await?),
        None => None,
    };
    let ws_addr = match &ws {
        Some(listener) => Some(listener.local_addr().map_err(|source| NodeError::Bind {
            what: "WebSocket",
            addr: config.ws_listen.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            source,
        })?),
        None => None,
    };
    let egress = config
        .kernel
        .jail
        .as_ref()
        .and_then(|jail| jail.egress.clone());
    if let Some(egress) = &egress {
        // The handshake happens now, not when the first cell connects somewhere.
        let egress = egress.clone();
        tokio::spawn(async move {
            if let Err(error) = egress.connect().await {
                tracing::warn!(%error, "the egress gateway is not reachable yet; flows will try again");
            }
        });
    }
    let mut kernel_config = config.kernel.clone();
    // One output, and one cell's kept outputs, must always fit a client's frame.
    kernel_config.output_limits = kernel_config
        .output_limits
        .within_frame(config.frame_limit.get());
    let (kernel, kernel_events) = KernelBridge::start(kernel_config).await?;
    Ok(WarmNode {
        egress,
        quic_addr,
        ws_addr,
        fingerprint: certificate.fingerprint,
        kernel_pid: kernel.pid(),
        quic,
        ws,
        kernel,
        kernel_events,
        frame_limit: config.frame_limit,
    })
}

impl WarmNode {
    /// Opens the assigned document (claiming it in the store at the assignment's epoch) and
    /// starts serving clients. A warm node serves one document in its life.
    pub async fn assign(self, assignment: Assignment) -> Result<RunningNode, NodeError> {
        if !valid_document_id(&assignment.document) {
            return Err(NodeError::BadDocumentId(assignment.document));
        }
        let store =
            crate::store::ObjectDocumentStore::open(&assignment.store, []).map_err(|source| {
                NodeError::Store {
                    url: assignment.store.clone(),
                    source: Box::new(source),
                }
            })?;
        let doc_id = crate::store::DocumentId::new(assignment.document.clone())
            .map_err(|_| NodeError::BadDocumentId(assignment.document.clone()))?;
        let document = actor::open(
            Arc::new(store),
            doc_id,
            assignment.epoch,
            self.kernel,
            self.kernel_events,
            assignment.idle_timeout,
        )
        .await
        .map_err(Box::new)?;
        if let Some(egress) = &self.egress {
            egress.assign(crate::egress::FlowTags {
                document: assignment.document.clone(),
                tenant: assignment.tenant.clone(),
            });
            let notices = document.clone();
            egress.set_notify(Arc::new(move |text| notices.notice(text)));
            // Each flow names the cell, run and user that were executing when it opened.
            let flows = egress.clone();
            document.watch_runs(Arc::new(move |origin| {
                flows.set_origin(origin.map(|origin| airlock_protocol::tunnel::FlowOrigin {
                    cell: origin.cell.unwrap_or_else(|| ADHOC_CELL.to_owned()),
                    run: origin.run,
                    user: origin.user,
                }));
            }));
        }
        let gate = Arc::new(Gate {
            document: assignment.document.clone(),
            epoch: assignment.epoch,
            token_key: assignment.token_key,
        });
        let mut tasks = Vec::new();
        if let Some(endpoint) = &self.quic {
            let serve = quic::serve(
                endpoint.clone(),
                Arc::clone(&gate),
                document.clone(),
                self.frame_limit,
            );
            tasks.push(tokio::spawn(serve));
        }
        if let Some(listener) = self.ws {
            let serve = websocket::serve(
                listener,
                Arc::clone(&gate),
                document.clone(),
                self.frame_limit,
            );
            tasks.push(tokio::spawn(serve));
        }
        info!(
            document = %assignment.document,
            epoch = assignment.epoch,
            quic_addr = ?self.quic_addr,
            ws_addr = ?self.ws_addr,
            fingerprint = %self.fingerprint,
            "node serving"
        );
        Ok(RunningNode {
            quic_addr: self.quic_addr,
            ws_addr: self.ws_addr,
            fingerprint: self.fingerprint,
            kernel_pid: self.kernel_pid,
            document,
            quic: self.quic,
            tasks,
        })
    }

    /// Stops a node that was never assigned: its kernel goes, its endpoints close.
    pub async fn retire(self) {
        if let Some(endpoint) = &self.quic {
            endpoint.close(quinn::VarInt::from_u32(0), b"node retired");
        }
        self.kernel.shutdown().await;
    }
}

/// Starts the kernel and the endpoints and serves `config.document` ([`warm`] then
/// [`WarmNode::assign`]).
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
    if !valid_document_id(&config.document) {
        return Err(NodeError::BadDocumentId(config.document));
    }
    let (warm_config, assignment) = config.split();
    warm(warm_config).await?.assign(assignment).await
}

impl RunningNode {
    /// Resolves when the document stops serving on its own: a newer owner fenced this node out
    /// of the store, or the replica failed. The node should then shut down.
    pub async fn stopped(&self) -> StopReason {
        self.document.stopped().await
    }

    /// Stops accepting, closes every client connection, and shuts the kernel down.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(endpoint) = &self.quic {
            endpoint.close(quinn::VarInt::from_u32(0), b"node shutting down");
        }
        // Stopping the document closes every session's event stream, which closes its connection.
        self.document.shutdown().await;
        if let Some(endpoint) = self.quic {
            endpoint.wait_idle().await;
        }
    }
}
