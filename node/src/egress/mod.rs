//! The node's side of egress: a jailed kernel's only way out is through the node, into the
//! gateway's tunnel.
//!
//! Each kernel gets its own network namespace ([`netns`]) in which every TCP connection is
//! redirected to the node and every DNS query is answered by the node. For each redirected
//! connection the node reads the original destination, opens a flow on the mutually
//! authenticated QUIC tunnel to the gateway (`airlock_client::tunnel`), tagged with the
//! document and tenant of the node's assignment, and copies bytes both ways. Names the kernel
//! looks up are checked with the gateway and answered with synthetic addresses ([`names`]), so
//! flows to them leave by name and the gateway resolves them itself. Nothing the kernel can
//! read or write decides the tags: they come from the claim.
//!
//! A refused flow is reset at once, and the gateway's reason is written into the output of the
//! cell that is running, as a line on stderr: `[airlock egress] host:port denied: reason`.
//!
//! Each flow also names its origin when the document says what is running
//! ([`Egress::set_origin`]): the cell, the run and the user who started it, so the gateway's
//! audit record can say which cell opened which connection (DESIGN §5).
//!
//! [`Egress`] is the handle the node shares between the kernels it starts (a restarted kernel
//! gets a new namespace, same tunnel) and the document it serves.

mod dns;
mod names;
pub mod netns;
mod redirect;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use airlock_client::tunnel::{TunnelClient, TunnelClientConfig, TunnelError};

pub use airlock_protocol::tunnel::FlowOrigin;

pub use netns::{JailNetwork, NetworkError};

use names::SyntheticNames;

/// Writes a notice into the output of the cell that is running.
pub type Notify = Arc<dyn Fn(String) + Send + Sync>;

/// The document and tenant a node's flows are tagged with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTags {
    pub document: String,
    pub tenant: String,
}

/// The node's egress: its tunnel to the gateway, and what it tells the gateway about flows.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct Inner {
    config: TunnelClientConfig,
    tunnel: tokio::sync::Mutex<Option<Arc<TunnelClient>>>,
    tags: RwLock<Option<FlowTags>>,
    /// The cell, run and user executing now; every flow opened meanwhile carries it.
    origin: RwLock<Option<FlowOrigin>>,
    notify: RwLock<Option<Notify>>,
    names: Mutex<SyntheticNames>,
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Egress")
            .field("gateway", &self.inner.config.gateway)
            .field("server_name", &self.inner.config.server_name)
            .field("tags", &self.tags())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Egress {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Egress {
    /// Egress through the gateway `config` names. Nothing connects until the first flow (or
    /// [`Egress::connect`]).
    pub fn new(config: TunnelClientConfig) -> Self {
        Egress {
            inner: Arc::new(Inner {
                config,
                tunnel: tokio::sync::Mutex::new(None),
                tags: RwLock::new(None),
                origin: RwLock::new(None),
                notify: RwLock::new(None),
                names: Mutex::new(SyntheticNames::default()),
            }),
        }
    }

    /// Connects the tunnel now, so the first flow does not wait for the handshake.
    pub async fn connect(&self) -> Result<(), TunnelError> {
        self.tunnel().await.map(drop)
    }

    /// Tags every flow from now on with `tags`. Before this, flows are refused: a warm kernel
    /// runs no user code.
    pub fn assign(&self, tags: FlowTags) {
        *self.inner.tags.write().unwrap_or_else(|e| e.into_inner()) = Some(tags);
    }

    /// Says which cell and run are executing now and who started the run (`None` between
    /// runs). Flows opened from now on carry it to the gateway, which writes it into their
    /// audit records. Called by the document as runs start and end.
    pub fn set_origin(&self, origin: Option<FlowOrigin>) {
        *self.inner.origin.write().unwrap_or_else(|e| e.into_inner()) = origin;
    }

    /// What [`Egress::set_origin`] last said.
    fn origin(&self) -> Option<FlowOrigin> {
        self.inner
            .origin
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_notify(&self, notify: Notify) {
        *self.inner.notify.write().unwrap_or_else(|e| e.into_inner()) = Some(notify);
    }

    fn tags(&self) -> Option<FlowTags> {
        self.inner
            .tags
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn notify(&self, text: String) {
        let notify = self
            .inner
            .notify
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(notify) = notify {
            notify(text);
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, SyntheticNames> {
        self.inner.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tunnel, connecting if there is none (or the last one was [forgotten](Self::forget)).
    async fn tunnel(&self) -> Result<Arc<TunnelClient>, TunnelError> {
        let mut tunnel = self.inner.tunnel.lock().await;
        if let Some(client) = tunnel.as_ref() {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(TunnelClient::connect(self.inner.config.clone()).await?);
        *tunnel = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Drops `broken` (a tunnel that failed), so the next flow connects again.
    async fn forget(&self, broken: &Arc<TunnelClient>) {
        let mut tunnel = self.inner.tunnel.lock().await;
        if tunnel
            .as_ref()
            .is_some_and(|client| Arc::ptr_eq(client, broken))
        {
            *tunnel = None;
        }
    }

    /// Serves the node's end of a kernel's namespace (its sockets from [`JailNetwork`]) until
    /// the returned guard is dropped.
    pub(crate) fn serve(
        &self,
        redirect: std::net::TcpListener,
        dns: std::net::UdpSocket,
    ) -> Result<Serving, NetworkError> {
        redirect::serve(self.clone(), redirect, dns)
    }
}

pub(crate) use redirect::Serving;
