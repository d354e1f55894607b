//! Outbound connections from the tenant's static egress address.
//!
//! Bind before connect: the socket is bound to the chosen source address with port 0 and
//! `IP_BIND_ADDRESS_NO_PORT`, so the kernel picks the source port at `connect()` time and can
//! reuse it toward different destinations (without it, each bound socket reserves a port
//! globally and a busy egress IP runs out after ~28k connections). The source address must be
//! local to this host (a secondary address of the NIC, or one a cloud NAT maps to the static
//! IP). This module dials exactly the address it is given; choosing it is the policy's.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
use tokio::net::{TcpSocket, TcpStream};

use crate::policy::Source;

/// Why a connection could not be made; shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("could not use source address {source_addr}: {error}")]
    Bind {
        source_addr: SocketAddr,
        #[source]
        error: io::Error,
    },
    #[error("connecting to {dest} timed out after {timeout:?}")]
    Timeout { dest: SocketAddr, timeout: Duration },
    #[error("{dest} refused the connection")]
    Refused { dest: SocketAddr },
    #[error("{dest} is unreachable: {error}")]
    Unreachable {
        dest: SocketAddr,
        #[source]
        error: io::Error,
    },
    #[error("connecting to {dest} failed: {error}")]
    Other {
        dest: SocketAddr,
        #[source]
        error: io::Error,
    },
}

impl DialError {
    /// A short stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DialError::Bind { .. } => "bind",
            DialError::Timeout { .. } => "timeout",
            DialError::Refused { .. } => "refused",
            DialError::Unreachable { .. } => "unreachable",
            DialError::Other { .. } => "other",
        }
    }
}

/// Connects to `dest` from `source` within `timeout`.
pub async fn dial(
    dest: SocketAddr,
    source: Source,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let socket = if dest.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|error| DialError::Other { dest, error })?;
    if let Source::Static(ip) = source {
        let source_addr = SocketAddr::new(ip, 0);
        let bind_error = |error| DialError::Bind { source_addr, error };
        // Best effort: kernels before 4.2 lack the option, and binding still works without it.
        if let Err(errno) = setsockopt(&socket, IpBindAddressNoPort, &true) {
            tracing::debug!(%errno, "IP_BIND_ADDRESS_NO_PORT unavailable");
        }
        socket.bind(source_addr).map_err(bind_error)?;
    }
    let stream = match tokio::time::timeout(timeout, socket.connect(dest)).await {
        Err(_) => return Err(DialError::Timeout { dest, timeout }),
        Ok(Err(error)) => {
            return Err(match error.kind() {
                io::ErrorKind::ConnectionRefused => DialError::Refused { dest },
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    DialError::Unreachable { dest, error }
                }
                io::ErrorKind::TimedOut => DialError::Timeout { dest, timeout },
                _ => DialError::Other { dest, error },
            });
        }
        Ok(Ok(stream)) => stream,
    };
    // Small writes (database handshakes, interactive protocols) should not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
