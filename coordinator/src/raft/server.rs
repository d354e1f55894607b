//! The listening side of the RPC between coordinators: an axum router with the Raft routes and
//! the forwarded requests, served over TLS that requires a client certificate from the cluster
//! CA (a peer without one fails the handshake and never reaches a route).
//!
//! It runs on its own port; see the module docs of [`super`] for why it does not share the
//! public API's. Stopping it closes the listener and every open connection, so peers see this
//! coordinator gone at once.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Json, State};
use axum::http::StatusCode;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use openraft::error::{Fatal, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Raft, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::handle::serve_forwarded;
use super::wire::{self, Forward, ForwardReply};
use super::{NodeId, TypeConfig};

/// Largest request body: entries of one append, or a whole snapshot. Peers are authenticated,
/// so this guards against mistakes rather than attackers.
const MAX_BODY: usize = 1 << 30;
/// A peer gets this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The Raft RPC routes, for serving behind mutual TLS.
fn router(raft: Raft<TypeConfig>) -> Router {
    Router::new()
        .route(wire::APPEND, post(append))
        .route(wire::VOTE, post(vote))
        .route(wire::INSTALL_SNAPSHOT, post(install_snapshot))
        .route(wire::SNAPSHOT, post(full_snapshot))
        .route(wire::FORWARD, post(forward))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(raft)
}

async fn append(
    State(raft): State<Raft<TypeConfig>>,
    Json(request): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.append_entries(request).await)
}

async fn vote(
    State(raft): State<Raft<TypeConfig>>,
    Json(request): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.vote(request).await)
}

async fn install_snapshot(
    State(raft): State<Raft<TypeConfig>>,
    Json(request): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(raft.install_snapshot(request).await)
}

async fn full_snapshot(
    State(raft): State<Raft<TypeConfig>>,
    frame: Bytes,
) -> Result<Json<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>, (StatusCode, String)> {
    let (header, data) =
        wire::decode_snapshot(&frame).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: Box::new(Cursor::new(data.to_vec())),
    };
    Ok(Json(
        raft.install_full_snapshot(header.vote, snapshot).await,
    ))
}

async fn forward(
    State(raft): State<Raft<TypeConfig>>,
    Json(request): Json<Forward>,
) -> Json<ForwardReply> {
    Json(serve_forwarded(&raft, request).await)
}

/// The running listener; [`RpcServer::stop`] ends it.
#[derive(Debug)]
pub(crate) struct RpcServer {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RpcServer {
    pub(crate) fn spawn(
        listener: TcpListener,
        tls: rustls::ServerConfig,
        raft: Raft<TypeConfig>,
    ) -> RpcServer {
        let (stop, stopped) = oneshot::channel();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(serve(listener, acceptor, router(raft), stopped));
        RpcServer {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Closes the listener and every connection, and waits until they are gone.
    pub(crate) async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(serve_connection(tcp, peer, acceptor.clone(), router.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: let connections finish, try again.
                    tracing::warn!(error = %e, "raft rpc: accept failed");
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "raft rpc: refused a TLS handshake");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "raft rpc: TLS handshake timed out");
            return;
        }
    };
    let service = TowerToHyperService::new(router);
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "raft rpc: connection ended");
    }
}
