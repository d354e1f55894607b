//! The SOCKS5 front end (RFC 1928, CONNECT only) for deployments that cannot redirect.
//!
//! The client must authenticate with a username and password (RFC 1929); the configured
//! credentials name the tenant and document ([`crate::config::Credentials`]). Domain names
//! (ATYP 3) are resolved by the gateway; a client that resolved a name itself sends an address
//! and gets it classified as such. BIND and UDP ASSOCIATE are refused (reply 0x07). A denied
//! flow gets reply 0x02 at once; the sentence saying why is in the audit record and the log,
//! since SOCKS5 has nowhere to carry it.

pub mod codec;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::dial::DialError;
use crate::flow::{FlowFailure, FlowRequest, FrontEnd, RequestedHost};
use crate::gateway::Gateway;
use crate::resolve::ResolveError;
use codec::{ReplyCode, SocksError, SocksHost};

/// Why a SOCKS5 session ended before relaying.
#[derive(Debug, thiserror::Error)]
pub enum SocksSessionError {
    #[error(transparent)]
    Protocol(#[from] SocksError),
    #[error("the client did not finish its request in time")]
    Timeout,
    #[error("the client went away")]
    Closed,
    #[error("the client offered no username/password authentication")]
    NoAcceptableMethod,
    #[error("bad SOCKS5 credentials for {0:?}")]
    BadCredentials(String),
    #[error("command {0:#04x} is not supported (CONNECT only)")]
    Command(u8),
    #[error("flow {flow} refused: {reason}")]
    Refused { flow: u64, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Handshake messages are tiny; anything longer than this is not SOCKS5.
const MAX_HANDSHAKE: usize = 1024;

async fn read_message<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, SocksError>,
) -> Result<T, SocksSessionError> {
    loop {
        if let Some((message, used)) = decode(buf)? {
            buf.drain(..used);
            return Ok(message);
        }
        if buf.len() >= MAX_HANDSHAKE {
            return Err(SocksSessionError::Protocol(SocksError::Version(0)));
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(SocksSessionError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
}

/// Serves one SOCKS5 client connection to its end.
pub async fn serve(gateway: Gateway, mut stream: TcpStream) -> Result<(), SocksSessionError> {
    let client = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let timeout = gateway.snapshot().config.handshake_timeout();
    let mut buf = Vec::with_capacity(64);
    let handshake = async {
        let methods = read_message(&mut stream, &mut buf, codec::decode_greeting).await?;
        if !methods.contains(&codec::METHOD_USERPASS) {
            stream
                .write_all(&codec::encode_method(codec::METHOD_NONE_ACCEPTABLE))
                .await?;
            return Err(SocksSessionError::NoAcceptableMethod);
        }
        stream
            .write_all(&codec::encode_method(codec::METHOD_USERPASS))
            .await?;
        let login = read_message(&mut stream, &mut buf, codec::decode_userpass).await?;
        let checked = gateway
            .snapshot()
            .credentials
            .check(&login.username, &login.password);
        let Some(tags) = checked else {
            stream.write_all(&codec::encode_auth_status(false)).await?;
            return Err(SocksSessionError::BadCredentials(login.username));
        };
        stream.write_all(&codec::encode_auth_status(true)).await?;
        let request = match read_message(&mut stream, &mut buf, codec::decode_request).await {
            Ok(request) => request,
            Err(SocksSessionError::Protocol(error @ SocksError::AddressType(_))) => {
                let reply = codec::encode_reply(ReplyCode::AddressTypeNotSupported, unspecified());
                stream.write_all(&reply).await?;
                return Err(error.into());
            }
            Err(SocksSessionError::Protocol(error)) => {
                let reply = codec::encode_reply(ReplyCode::GeneralFailure, unspecified());
                stream.write_all(&reply).await?;
                return Err(error.into());
            }
            Err(other) => return Err(other),
        };
        Ok((tags, request))
    };
    let (tags, request) = match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => result?,
        Err(_) => return Err(SocksSessionError::Timeout),
    };
    if request.command != codec::COMMAND_CONNECT {
        let reply = codec::encode_reply(ReplyCode::CommandNotSupported, unspecified());
        stream.write_all(&reply).await?;
        return Err(SocksSessionError::Command(request.command));
    }
    let host = match request.host {
        SocksHost::Ip(ip) => RequestedHost::Ip(ip),
        SocksHost::Domain(name) => RequestedHost::Text(name),
    };
    let flow = gateway
        .open(FlowRequest::from_proxy_client(
            FrontEnd::Socks5,
            tags,
            host,
            request.port,
            client,
        ))
        .await;
    match flow {
        Ok(open) => {
            let reply = codec::encode_reply(ReplyCode::Succeeded, open.source);
            stream.write_all(&reply).await?;
            // Bytes the client sent early (after its request) are still in `buf`.
            gateway.relay_tcp(open, stream, buf).await;
            Ok(())
        }
        Err(refused) => {
            let code = reply_code(&refused.failure);
            stream
                .write_all(&codec::encode_reply(code, unspecified()))
                .await?;
            let _ = stream.shutdown().await;
            Err(SocksSessionError::Refused {
                flow: refused.flow,
                reason: refused.failure.to_string(),
            })
        }
    }
}

/// The SOCKS5 reply code for a refused flow.
pub fn reply_code(failure: &FlowFailure) -> ReplyCode {
    match failure {
        FlowFailure::Denied(_) | FlowFailure::Limited(_) => ReplyCode::NotAllowed,
        FlowFailure::Resolve(ResolveError::Timeout { .. }) => ReplyCode::TtlExpired,
        FlowFailure::Resolve(_) => ReplyCode::HostUnreachable,
        FlowFailure::Connect(DialError::Refused { .. }) => ReplyCode::ConnectionRefused,
        FlowFailure::Connect(DialError::Timeout { .. }) => ReplyCode::TtlExpired,
        FlowFailure::Connect(DialError::Unreachable { .. }) => ReplyCode::NetworkUnreachable,
        FlowFailure::Connect(_) => ReplyCode::GeneralFailure,
    }
}
