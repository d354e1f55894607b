//! The node's side of the egress tunnel: QUIC (ALPN `airlock-egress/1`) to the gateway,
//! mutually authenticated, one bidirectional stream per flow or name lookup, framed by
//! [`airlock_protocol::tunnel`].
//!
//! [`TunnelClient`] connects once, then `open_flow` per redirected TCP connection (copy bytes
//! both ways on the returned [`TunnelFlow`]) and `lookup` per DNS question of the kernel. Clones
//! share the one connection. What both ends share (the TLS provider, the QUIC transport, the
//! identity files, reading one frame off a stream) is here too, so the gateway's server side
//! (`airlock_egress::tunnel`) and the node meet only over the wire.

use std::net::SocketAddr;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use airlock_protocol::tunnel::{
    self as frame, FlowOpen, FlowOrigin, FlowReply, FrameError, HEADER_LEN, LookupReply,
    LookupStatus, NameLookup, ReplyStatus, TargetHost,
};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why the tunnel could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(transparent)]
    Pem(#[from] crate::pki::PemError),
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

pub use crate::pki::{Identity, read_certs};

/// The TLS provider both ends of the tunnel use (ring, as everywhere in Airlock).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The QUIC transport both ends of the tunnel use.
pub fn transport() -> quinn::TransportConfig {
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

/// Reads one frame: its header, then exactly the body the header announces.
pub async fn read_frame<T>(
    recv: &mut quinn::RecvStream,
    decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, FrameError>,
) -> Result<T, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await?;
    finish_frame(recv, header, decode).await
}

/// Reads the body after `header`; `decode` checks version, kind and length first.
pub async fn finish_frame<T>(
    recv: &mut quinn::RecvStream,
    header: [u8; HEADER_LEN],
    decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, FrameError>,
) -> Result<T, StreamError> {
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

/// Why a frame could not be written to or read off a tunnel stream (either end).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the tunnel is down: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("writing to the tunnel failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("reading from the tunnel failed: {0}")]
    Read(#[from] quinn::ReadExactError),
}

impl StreamError {
    /// Whether the tunnel itself is down (a new connection may succeed).
    pub fn is_connection(&self) -> bool {
        matches!(self, StreamError::Connection(_))
    }
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
    Stream(#[from] StreamError),
}

impl OpenFlowError {
    /// Whether the tunnel itself is down (a new connection may succeed).
    pub fn is_tunnel_down(&self) -> bool {
        matches!(self, OpenFlowError::Stream(error) if error.is_connection())
    }
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
    Stream(#[from] StreamError),
}

impl LookupError {
    /// Whether the tunnel itself is down (a new connection may succeed).
    pub fn is_tunnel_down(&self) -> bool {
        matches!(self, LookupError::Stream(error) if error.is_connection())
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
        .encode()
        .map_err(StreamError::from)?;
        let (send, recv, reply) = self.request(&frame, false, FlowReply::decode).await?;
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
        .encode()
        .map_err(StreamError::from)?;
        let (_, _, reply) = self.request(&frame, true, LookupReply::decode).await?;
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

    /// Opens a stream, writes `request` (then finishes the stream if `finish`: nothing more to
    /// say; if it is already gone, reading the reply says why) and reads one reply frame.
    async fn request<T>(
        &self,
        request: &[u8],
        finish: bool,
        decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, FrameError>,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, T), StreamError> {
        let (mut send, mut recv) = self.connection.open_bi().await?;
        send.write_all(request).await?;
        if finish {
            let _ = send.finish();
        }
        let reply = read_frame(&mut recv, decode).await?;
        Ok((send, recv, reply))
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
