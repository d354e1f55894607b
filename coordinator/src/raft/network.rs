//! The dialling side of the RPC between coordinators: openraft's `RaftNetwork` over HTTPS with
//! this coordinator's client certificate (reqwest on rustls, HTTP/2 when the peer offers it),
//! and the forwarding of leader-only requests.
//!
//! Errors map onto what openraft does next: a connection that could not be made (refused,
//! TLS handshake rejected) is `Unreachable` (openraft backs off); anything after the request
//! left is a `Network` error (openraft retries); the peer's own Raft error comes back as a
//! `RemoteError`.

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Snapshot, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::tls::{TlsError, TlsMaterial};
use super::wire::{self, Forward, ForwardReply, SnapshotHeader};
use super::{NodeId, Peer, TypeConfig};

/// How long to wait for a TCP + TLS connection to a peer. Peers are on a LAN: a peer that
/// takes longer is as good as down for an election.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a call to a peer failed, below openraft's error types.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection could be made (refused, unreachable, TLS handshake rejected): the request
    /// never reached the peer.
    #[error("cannot connect to the peer")]
    Connect(#[source] reqwest::Error),
    /// The request may have reached the peer, but no usable answer came back.
    #[error("the call to the peer failed")]
    Http(#[source] reqwest::Error),
    #[error("the peer answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
}

impl CallError {
    /// The peer cannot have acted on the request.
    pub(crate) fn not_sent(&self) -> bool {
        matches!(self, CallError::Connect(_) | CallError::Encode(_))
    }

    fn from_reqwest(e: reqwest::Error) -> CallError {
        if e.is_connect() {
            CallError::Connect(e)
        } else {
            CallError::Http(e)
        }
    }

    fn into_rpc<E: std::error::Error>(self) -> RPCError<NodeId, Peer, E> {
        if self.not_sent() {
            RPCError::Unreachable(Unreachable::new(&self))
        } else {
            RPCError::Network(NetworkError::new(&self))
        }
    }

    fn into_streaming(self) -> StreamingError<TypeConfig, Fatal<NodeId>> {
        if self.not_sent() {
            StreamingError::Unreachable(Unreachable::new(&self))
        } else {
            StreamingError::Network(NetworkError::new(&self))
        }
    }
}

/// The client side of the peers' network; cloning shares the connection pool.
#[derive(Debug, Clone)]
pub(crate) struct PeerNetwork {
    client: reqwest::Client,
}

impl PeerNetwork {
    pub(crate) fn new(tls: &TlsMaterial) -> Result<PeerNetwork, NetworkSetupError> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls.client_config()?)
            .https_only(true)
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(NetworkSetupError::Client)?;
        Ok(PeerNetwork { client })
    }

    /// POSTs `body` as JSON to `path` on `addr` and decodes the JSON answer.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(body).map_err(CallError::Encode)?;
        let response = self
            .client
            .post(format!("https://{addr}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        if !response.status().is_success() {
            return Err(CallError::Status(response.status()));
        }
        response.json().await.map_err(CallError::Http)
    }

    /// Hands a leader-only request to the coordinator at `addr`.
    pub(crate) async fn forward(
        &self,
        addr: &str,
        request: &Forward,
        timeout: Duration,
    ) -> Result<ForwardReply, CallError> {
        self.call(addr, wire::FORWARD, request, timeout).await
    }
}

/// Why the peers' network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkSetupError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> PeerClient {
        PeerClient {
            network: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub(crate) struct PeerClient {
    network: PeerNetwork,
    target: NodeId,
    addr: String,
}

impl PeerClient {
    /// One Raft RPC: the peer answers `Result<Resp, E>` as JSON.
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Peer, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, E> = self
            .network
            .call(&self.addr, path, request, option.hard_ttl())
            .await
            .map_err(CallError::into_rpc)?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.rpc(wire::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(wire::INSTALL_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.rpc(wire::VOTE, &rpc, &option).await
    }

    /// The whole snapshot in one request (our snapshots are the state in memory, so chunking
    /// buys nothing).
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
        };
        let data = snapshot.snapshot.into_inner();
        let frame = wire::encode_snapshot(&header, &data)
            .map_err(|e| CallError::Encode(e).into_streaming())?;
        let send = async {
            let response = self
                .network
                .client
                .post(format!("https://{}{}", self.addr, wire::SNAPSHOT))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(frame)
                .timeout(option.hard_ttl()) // `Timing::install_snapshot_timeout`
                .send()
                .await
                .map_err(CallError::from_reqwest)?;
            if !response.status().is_success() {
                return Err(CallError::Status(response.status()));
            }
            response
                .json::<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>()
                .await
                .map_err(CallError::Http)
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            answer = send => match answer {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(self.target, fatal))),
                Err(e) => Err(e.into_streaming()),
            },
        }
    }
}
