//! The tunnel between nodes and the gateway: QUIC (ALPN `airlock-egress/1`), mutually
//! authenticated, one bidirectional stream per flow.
//!
//! The gateway presents its certificate; each node presents a client certificate signed by the
//! configured CA (`[tunnel] client_ca`), or the handshake fails. The node's name is a DNS name
//! in that certificate's subject alternative names (or its common name), looked up in the
//! `[[nodes]]` table, which says which tenants the node may open flows for. A flow's first frame
//! ([`crate::frame::FlowOpen`]) carries the tenant and document tags; the gateway accepts the
//! tenant only if the node's entry allows it. The node writes those tags from its own state
//! (which document it serves, for whom), never from anything the kernel could write; the kernel
//! can only choose the destination.
//!
//! A stream may instead carry a name lookup ([`crate::frame::NameLookup`]): the node asks
//! whether a document may use a DNS name, authenticated for the tenant exactly as a flow, and
//! gets a verdict ([`crate::lookup`]) in one [`crate::frame::LookupReply`].
//!
//! [`TunnelClient`] is the node's side: `connect` once, then `open_flow` per redirected TCP
//! connection, and copy bytes both ways on the returned [`TunnelFlow`]; `lookup` per DNS
//! question of the kernel. Clones share the one connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::TunnelSection;
use crate::flow::{FlowFailure, FlowRequest, FrontEnd, RequestedHost};
use crate::frame::{
    self, FlowOpen, FlowOrigin, FlowReply, FrameError, HEADER_LEN, LookupReply, LookupStatus,
    NameLookup, ReplyStatus, RequestKind, StreamRequest, TargetHost,
};
use crate::gateway::Gateway;
use crate::lookup::{LookupRequest, LookupVerdict, count_lookup};
use crate::metrics as names;
use crate::policy::FlowTags;

/// Why the tunnel could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("could not read {path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC configuration refused: {0}")]
    Quic(String),
    #[error("could not bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not connect to the gateway: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("the tunnel handshake failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TunnelError> {
        Ok(Identity {
            chain: read_certs(cert)?,
            key: PrivateKeyDer::from_pem_file(key).map_err(|source| TunnelError::Pem {
                path: key.to_owned(),
                source,
            })?,
        })
    }
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TunnelError> {
    let pem_error = |source| TunnelError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TunnelError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(60_000).into()));
    // One stream per flow: a node with many open connections needs many streams.
    transport.max_concurrent_bidi_streams(4096u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // Bulk flows: windows large enough for a fast link with a few ms of RTT.
    transport.stream_receive_window((8u32 << 20).into());
    transport.receive_window((64u32 << 20).into());
    transport.send_window(64 << 20);
    transport
}

/// The gateway's QUIC server configuration: its identity, and node certificates checked
/// against `client_ca`.
pub fn server_config(
    identity: &Identity,
    client_ca: &[CertificateDer<'static>],
) -> Result<quinn::ServerConfig, TunnelError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_ca {
        roots.add(ca.clone())?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![frame::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|error| TunnelError::Quic(error.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// Binds the tunnel listener from the config's `[tunnel]` files.
pub fn bind(addr: SocketAddr, section: &TunnelSection) -> Result<quinn::Endpoint, TunnelError> {
    let identity = Identity::from_pem_files(&section.cert, &section.key)?;
    let client_ca = read_certs(&section.client_ca)?;
    bind_with(addr, &identity, &client_ca)
}

/// Binds the tunnel listener with identities already in memory.
pub fn bind_with(
    addr: SocketAddr,
    identity: &Identity,
    client_ca: &[CertificateDer<'static>],
) -> Result<quinn::Endpoint, TunnelError> {
    let config = server_config(identity, client_ca)?;
    quinn::Endpoint::server(config, addr).map_err(|source| TunnelError::Bind { addr, source })
}

/// The names a node certificate carries: DNS subject alternative names, then the common name.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_owned());
        }
    }
    names
}

/// Accepts node connections until the endpoint closes.
pub async fn serve(gateway: Gateway, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve_node(gateway, connection).await,
                Err(error) => {
                    metrics::counter!(names::TUNNEL_REFUSED, "why" => "handshake").increment(1);
                    tracing::info!(%error, "tunnel handshake failed");
                }
            }
        });
    }
}

/// Serves one node connection: a flow per stream.
async fn serve_node(gateway: Gateway, connection: quinn::Connection) {
    let remote = connection.remote_address();
    let names = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|leaf| certificate_names(leaf)))
        .unwrap_or_default();
    let snapshot = gateway.snapshot();
    let Some(node) = names.into_iter().find(|name| snapshot.nodes.knows(name)) else {
        metrics::counter!(names::TUNNEL_REFUSED, "why" => "unknown_node").increment(1);
        tracing::warn!(%remote, "tunnel client certificate names no configured node");
        connection.close(quinn::VarInt::from_u32(1), b"unknown node");
        return;
    };
    drop(snapshot);
    tracing::info!(%remote, node, "node connected to the egress tunnel");
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let gateway = gateway.clone();
                let node = node.clone();
                tokio::spawn(serve_stream(gateway, node, remote, send, recv));
            }
            Err(error) => {
                tracing::debug!(%remote, node, %error, "tunnel connection ended");
                return;
            }
        }
    }
}

/// Why a frame could not be read off a stream.
#[derive(Debug, thiserror::Error)]
enum ReadFrameError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Read(#[from] quinn::ReadExactError),
}

/// Reads one frame: its header, then exactly the body the header announces.
async fn read_frame<T>(
    recv: &mut quinn::RecvStream,
    decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, FrameError>,
) -> Result<T, ReadFrameError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await?;
    finish_frame(recv, header, decode).await
}

/// Reads the body after `header`; `decode` checks version, kind and length first.
async fn finish_frame<T>(
    recv: &mut quinn::RecvStream,
    header: [u8; HEADER_LEN],
    decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, FrameError>,
) -> Result<T, ReadFrameError> {
    decode(&header)?;
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut frame = vec![0u8; HEADER_LEN + len];
    frame[..HEADER_LEN].copy_from_slice(&header);
    recv.read_exact(&mut frame[HEADER_LEN..]).await?;
    match decode(&frame)? {
        Some((value, _)) => Ok(value),
        None => Err(FrameError::Truncated.into()),
    }
}

/// Reads a stream's request; `kind` learns what it was meant to be as soon as the header says,
/// so that even a malformed request gets the matching reply frame.
async fn read_request(
    recv: &mut quinn::RecvStream,
    kind: &mut Option<RequestKind>,
) -> Result<StreamRequest, ReadFrameError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await?;
    *kind = StreamRequest::kind_of(&header);
    finish_frame(recv, header, StreamRequest::decode).await
}

async fn reply(send: &mut quinn::SendStream, status: ReplyStatus, flow: u64, reason: String) {
    let bytes = FlowReply {
        status,
        flow,
        reason,
    }
    .encode();
    if send.write_all(&bytes).await.is_ok() && status != ReplyStatus::Connected {
        let _ = send.finish();
    }
}

/// Answers a lookup and ends the stream.
async fn lookup_reply(send: &mut quinn::SendStream, status: LookupStatus, reason: String) {
    let bytes = LookupReply { status, reason }.encode();
    if send.write_all(&bytes).await.is_ok() {
        let _ = send.finish();
    }
}

async fn serve_stream(
    gateway: Gateway,
    node: String,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let timeout = gateway.snapshot().config.handshake_timeout();
    let mut kind = None;
    let read = tokio::time::timeout(timeout, read_request(&mut recv, &mut kind)).await;
    let failure = match read {
        Ok(Ok(StreamRequest::Flow(open))) => {
            return serve_flow(gateway, node, remote, open, send, recv).await;
        }
        Ok(Ok(StreamRequest::Lookup(lookup))) => {
            return serve_lookup(gateway, node, lookup, send).await;
        }
        Ok(Err(error)) => Some(error),
        Err(_) => None,
    };
    match (kind, failure) {
        (Some(RequestKind::Lookup), failure) => {
            let reason = match failure {
                Some(error) => format!("bad lookup frame: {error}"),
                None => "no lookup frame in time".to_owned(),
            };
            metrics::counter!(names::LOOKUPS, "verdict" => "bad_request").increment(1);
            lookup_reply(&mut send, LookupStatus::BadRequest, reason).await;
        }
        (_, Some(error)) => {
            let reason = format!("bad flow frame: {error}");
            reply(&mut send, ReplyStatus::BadRequest, 0, reason).await;
        }
        (_, None) => {
            let reason = "no flow frame in time".to_owned();
            reply(&mut send, ReplyStatus::BadRequest, 0, reason).await;
        }
    }
}

async fn serve_flow(
    gateway: Gateway,
    node: String,
    remote: SocketAddr,
    open: FlowOpen,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    if !gateway.snapshot().nodes.may_serve(&node, &open.tenant) {
        metrics::counter!(names::TUNNEL_REFUSED, "why" => "tenant").increment(1);
        tracing::warn!(
            node,
            tenant = %crate::flow::for_log(&open.tenant),
            "node may not open flows for this tenant"
        );
        let reason = format!(
            "denied: node {node} may not open flows for tenant {}",
            open.tenant
        );
        reply(&mut send, ReplyStatus::Denied, 0, reason).await;
        return;
    }
    let host = match open.host {
        TargetHost::Ip(ip) => RequestedHost::Ip(ip),
        TargetHost::Name(name) => RequestedHost::Text(name),
    };
    let request = FlowRequest {
        front_end: FrontEnd::Tunnel,
        tags: FlowTags {
            tenant: open.tenant,
            document: open.document,
        },
        host,
        port: open.port,
        client: Some(remote),
        node: Some(node),
        origin: open.origin,
    };
    match gateway.open(request).await {
        Ok(flow) => {
            let id = flow.flow;
            reply(&mut send, ReplyStatus::Connected, id, String::new()).await;
            gateway.relay(flow, recv, send).await;
        }
        Err(refused) => {
            let status = match refused.failure {
                FlowFailure::Denied(_) => ReplyStatus::Denied,
                FlowFailure::Limited(_) => ReplyStatus::Limited,
                FlowFailure::Resolve(_) => ReplyStatus::ResolveFailed,
                FlowFailure::Connect(_) => ReplyStatus::ConnectFailed,
            };
            reply(&mut send, status, refused.flow, refused.failure.to_string()).await;
        }
    }
}

/// Decides a name lookup for a node that may speak for the tenant, and answers it.
async fn serve_lookup(
    gateway: Gateway,
    node: String,
    lookup: NameLookup,
    mut send: quinn::SendStream,
) {
    let verdict = if gateway.snapshot().nodes.may_serve(&node, &lookup.tenant) {
        gateway
            .lookup(LookupRequest {
                tags: FlowTags {
                    tenant: lookup.tenant,
                    document: lookup.document,
                },
                name: lookup.name,
                node: Some(node),
            })
            .await
    } else {
        metrics::counter!(names::TUNNEL_REFUSED, "why" => "tenant").increment(1);
        tracing::warn!(
            node,
            tenant = %crate::flow::for_log(&lookup.tenant),
            "node may not look up names for this tenant"
        );
        let verdict = LookupVerdict::TenantRefused {
            node,
            tenant: lookup.tenant,
        };
        count_lookup(&verdict);
        verdict
    };
    lookup_reply(&mut send, verdict.status(), verdict.to_string()).await;
}

/// Where a node wants a flow to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: TargetHost,
    pub port: u16,
}

impl Destination {
    /// The original destination of a redirected connection.
    pub fn addr(addr: SocketAddr) -> Self {
        Destination {
            host: TargetHost::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// A name for the gateway to resolve.
    pub fn name(host: impl Into<String>, port: u16) -> Self {
        Destination {
            host: TargetHost::Name(host.into()),
            port,
        }
    }
}

/// How a node reaches the gateway.
#[derive(Debug, Clone)]
pub struct TunnelClientConfig {
    pub gateway: SocketAddr,
    /// The name in the gateway's certificate.
    pub server_name: String,
    /// Certificates the gateway's chain must lead to.
    pub gateway_roots: Vec<CertificateDer<'static>>,
    /// The node's client certificate (signed by the gateway's `client_ca`) and key.
    pub identity: Identity,
}

/// Why a flow could not be opened through the tunnel.
#[derive(Debug, thiserror::Error)]
pub enum OpenFlowError {
    /// The gateway refused; `reason` is the sentence to show in the cell.
    #[error("{reason}")]
    Refused {
        status: ReplyStatus,
        flow: u64,
        reason: String,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the tunnel is down: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("writing to the tunnel failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("reading from the tunnel failed: {0}")]
    Read(#[from] quinn::ReadExactError),
}

/// The gateway's verdict on a name a node looked up ([`TunnelClient::lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAnswer {
    /// The name resolves and the document may reach it (on some port): answer the kernel, then
    /// open flows with [`Destination::name`].
    Found,
    /// No such name, or no A/AAAA records; `reason` is the sentence to show in the cell.
    NotFound { reason: String },
    /// The policy refuses the name (or every address it resolves to), or the node may not
    /// speak for the tenant; `reason` is the sentence to show in the cell.
    Denied { reason: String },
}

/// Why a lookup got no verdict.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The gateway could not decide: its resolver failed ([`LookupStatus::Failed`]) or it
    /// refused the request as malformed ([`LookupStatus::BadRequest`]).
    #[error("{reason}")]
    Unanswered {
        status: LookupStatus,
        reason: String,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the tunnel is down: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("writing to the tunnel failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("reading from the tunnel failed: {0}")]
    Read(#[from] quinn::ReadExactError),
}

impl From<ReadFrameError> for OpenFlowError {
    fn from(error: ReadFrameError) -> Self {
        match error {
            ReadFrameError::Frame(error) => OpenFlowError::Frame(error),
            ReadFrameError::Read(error) => OpenFlowError::Read(error),
        }
    }
}

impl From<ReadFrameError> for LookupError {
    fn from(error: ReadFrameError) -> Self {
        match error {
            ReadFrameError::Frame(error) => LookupError::Frame(error),
            ReadFrameError::Read(error) => LookupError::Read(error),
        }
    }
}

/// A node's connection to the gateway. Clone it freely: clones share the one QUIC connection
/// (each flow or lookup is a stream of it), so every task serving a redirected connection or
/// a DNS question can hold its own; [`TunnelClient::close`] closes it for all of them.
#[derive(Debug, Clone)]
pub struct TunnelClient {
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

impl TunnelClient {
    /// Connects and authenticates to the gateway.
    pub async fn connect(config: TunnelClientConfig) -> Result<Self, TunnelError> {
        let mut roots = rustls::RootCertStore::empty();
        for root in &config.gateway_roots {
            roots.add(root.clone())?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(config.identity.chain, config.identity.key)?;
        tls.alpn_protocols = vec![frame::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|error| TunnelError::Quic(error.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
        client_config.transport_config(Arc::new(transport()));
        let bind: SocketAddr = if config.gateway.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|source| TunnelError::Bind { addr: bind, source })?;
        endpoint.set_default_client_config(client_config);
        let connection = endpoint
            .connect(config.gateway, &config.server_name)?
            .await?;
        Ok(TunnelClient {
            _endpoint: endpoint,
            connection,
        })
    }

    /// Opens a flow to `dest` for `document` of `tenant`, waiting for the gateway's verdict.
    pub async fn open_flow(
        &self,
        dest: Destination,
        document: &str,
        tenant: &str,
    ) -> Result<TunnelFlow, OpenFlowError> {
        self.open_flow_from(dest, document, tenant, None).await
    }

    /// [`TunnelClient::open_flow`], naming the cell, run and user that opened the flow (its
    /// audit record carries them).
    pub async fn open_flow_from(
        &self,
        dest: Destination,
        document: &str,
        tenant: &str,
        origin: Option<FlowOrigin>,
    ) -> Result<TunnelFlow, OpenFlowError> {
        let frame = FlowOpen {
            host: dest.host,
            port: dest.port,
            tenant: tenant.to_owned(),
            document: document.to_owned(),
            origin,
        }
        .encode()?;
        let (mut send, mut recv) = self.connection.open_bi().await?;
        send.write_all(&frame).await?;
        let reply = read_frame(&mut recv, FlowReply::decode).await?;
        if reply.status != ReplyStatus::Connected {
            return Err(OpenFlowError::Refused {
                status: reply.status,
                flow: reply.flow,
                reason: reply.reason,
            });
        }
        Ok(TunnelFlow {
            flow: reply.flow,
            send,
            recv,
        })
    }

    /// Asks whether `document` of `tenant` may use the DNS name `name`, as the gateway's
    /// resolver sees it now. The answer is a verdict, not addresses: a node answers the kernel
    /// with addresses of its own and opens flows by name; each flow is still checked when it
    /// opens (with its port).
    pub async fn lookup(
        &self,
        name: &str,
        document: &str,
        tenant: &str,
    ) -> Result<LookupAnswer, LookupError> {
        let frame = NameLookup {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            document: document.to_owned(),
        }
        .encode()?;
        let (mut send, mut recv) = self.connection.open_bi().await?;
        send.write_all(&frame).await?;
        // Nothing more to say; if the stream is already gone, reading the reply says why.
        let _ = send.finish();
        let reply = read_frame(&mut recv, LookupReply::decode).await?;
        match reply.status {
            LookupStatus::Found => Ok(LookupAnswer::Found),
            LookupStatus::NotFound => Ok(LookupAnswer::NotFound {
                reason: reply.reason,
            }),
            LookupStatus::Denied => Ok(LookupAnswer::Denied {
                reason: reply.reason,
            }),
            status @ (LookupStatus::Failed | LookupStatus::BadRequest) => {
                Err(LookupError::Unanswered {
                    status,
                    reason: reply.reason,
                })
            }
        }
    }

    /// Closes the tunnel for every clone (open flows end).
    pub fn close(&self) {
        self.connection.close(quinn::VarInt::from_u32(0), b"bye");
    }
}

/// One open flow: read and write it like a TCP stream. `shutdown` half-closes.
#[derive(Debug)]
pub struct TunnelFlow {
    /// The gateway's flow number (its audit record).
    pub flow: u64,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl AsyncRead for TunnelFlow {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelFlow {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}
