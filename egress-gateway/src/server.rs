//! Serving: bind the front ends, accept until shutdown, reload the config on SIGHUP or when the
//! file changes.
//!
//! Shutdown (mini-redis style): when the `shutdown` future completes, the accept loops stop
//! and the tunnel endpoint refuses new connections; flows already open keep relaying for up to
//! the grace period, then the function returns (and dropping the runtime ends what is left).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;

use crate::config::{ListenSection, TunnelSection};
use crate::gateway::Gateway;
use crate::tunnel::{self, TunnelError};

/// Why a front end could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the tunnel listener needs a [tunnel] section with cert, key and client_ca")]
    TunnelNeedsTls,
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
}

/// The bound front ends.
#[derive(Debug, Default)]
pub struct Listeners {
    pub connect: Option<TcpListener>,
    pub socks: Option<TcpListener>,
    pub tunnel: Option<quinn::Endpoint>,
}

/// Where each front end listens (after binding, so port 0 is resolved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenAddresses {
    pub connect: Option<SocketAddr>,
    pub socks: Option<SocketAddr>,
    pub tunnel: Option<SocketAddr>,
}

impl ListenAddresses {
    pub fn all(&self) -> Vec<SocketAddr> {
        [self.connect, self.socks, self.tunnel]
            .into_iter()
            .flatten()
            .collect()
    }
}

impl Listeners {
    /// Binds every front end `listen` names.
    pub async fn bind(
        listen: &ListenSection,
        tunnel_tls: Option<&TunnelSection>,
    ) -> Result<Self, ServeError> {
        async fn tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { what, addr, source })
        }
        let mut listeners = Listeners::default();
        if let Some(addr) = listen.connect {
            listeners.connect = Some(tcp("HTTP CONNECT", addr).await?);
        }
        if let Some(addr) = listen.socks {
            listeners.socks = Some(tcp("SOCKS5", addr).await?);
        }
        if let Some(addr) = listen.tunnel {
            let tls = tunnel_tls.ok_or(ServeError::TunnelNeedsTls)?;
            listeners.tunnel = Some(tunnel::bind(addr, tls)?);
        }
        Ok(listeners)
    }

    pub fn addresses(&self) -> ListenAddresses {
        ListenAddresses {
            connect: self.connect.as_ref().and_then(|l| l.local_addr().ok()),
            socks: self.socks.as_ref().and_then(|l| l.local_addr().ok()),
            tunnel: self.tunnel.as_ref().and_then(|e| e.local_addr().ok()),
        }
    }
}

/// Serves until `shutdown` completes, then lets open flows finish for up to `grace`.
pub async fn serve(
    gateway: Gateway,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.connect {
        let gateway = gateway.clone();
        tasks.spawn(accept_loop(listener, move |stream| {
            let gateway = gateway.clone();
            async move {
                if let Err(error) = crate::connect::serve(gateway, stream).await {
                    tracing::debug!(%error, "CONNECT session ended");
                }
            }
        }));
    }
    if let Some(listener) = listeners.socks {
        let gateway = gateway.clone();
        tasks.spawn(accept_loop(listener, move |stream| {
            let gateway = gateway.clone();
            async move {
                if let Err(error) = crate::socks::serve(gateway, stream).await {
                    tracing::debug!(%error, "SOCKS5 session ended");
                }
            }
        }));
    }
    let endpoint = listeners.tunnel.clone();
    if let Some(endpoint) = listeners.tunnel {
        tasks.spawn(tunnel::serve(gateway.clone(), endpoint));
    }
    shutdown.await;
    tasks.abort_all();
    if let Some(endpoint) = endpoint {
        endpoint.set_server_config(None);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while gateway.open_flows() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Aggregated records still gathering are written now rather than lost.
    gateway.flush_audit();
}

async fn accept_loop<F, Fut>(listener: TcpListener, session: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(session(stream));
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reloads the config from `path` on SIGHUP and whenever its modification time changes
/// (checked every `poll`). Errors keep the old config and are logged.
pub async fn watch_config(gateway: Gateway, path: PathBuf, poll: Duration) {
    let modified = |path: &PathBuf| -> Option<SystemTime> {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    let mut last = modified(&path);
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler; reloading on file changes only");
            None
        }
    };
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = ticker.tick() => {
                let now = modified(&path);
                if now == last { continue; }
                last = now;
                "file changed"
            }
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        match gateway.reload_from(&path) {
            Ok(()) => tracing::info!(path = %path.display(), why, "egress config reloaded"),
            Err(error) => {
                tracing::error!(path = %path.display(), why, %error, "egress config NOT reloaded; the previous one stays")
            }
        }
    }
}
