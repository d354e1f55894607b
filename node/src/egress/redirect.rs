//! The node's end of a kernel's namespace: redirected TCP connections become tunnel flows, and
//! DNS questions are answered with the gateway's word on each name.
//!
//! Each kernel (each [`serve`]) has its own caps, so one kernel's loop cannot take the node's
//! descriptors or the gateway's attention (security review #5, #15):
//!
//! - at most [`FLOWS_PER_KERNEL`] redirected connections at once; past that a connection is
//!   reset at once, counted (`airlock_node_egress_flows_total{outcome="over_cap"}`), and the
//!   cell is told once per episode;
//! - a budget of new names checked with the gateway ([`names::Lookups`]); past it the kernel's
//!   question gets `SERVFAIL` without asking (`airlock_node_egress_dns_answers_total{answer=
//!   "limited"}`);
//! - names the gateway denies get `NXDOMAIN` and no synthetic address, with the gateway's
//!   reason in the cell;
//! - the refusal lines written into the cell go through a [`NoticeGate`]: a few lines, then
//!   "N more refused" (`airlock_node_egress_notices_held_total` counts the lines held back).
//!
//! What this does not do: decide anything about a destination. The gateway does, per flow and
//! per name; the node only carries, counts and tells.

mod notices;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_client::tunnel::{
    Destination, LookupAnswer, LookupError, OpenFlowError, TunnelError, TunnelFlow,
};
use airlock_protocol::tunnel::ReplyStatus;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use super::dns::{self, Incoming, Verdict};
use super::names::{self, Decision, Lookups, Refused, is_synthetic};
use super::{Egress, FlowTags, NetworkError};
use notices::{NoticeGate, Offer};

/// DNS questions answered at once; more wait in the socket's buffer.
const DNS_IN_FLIGHT: usize = 64;

/// Redirected connections one kernel may have open through the node at once.
pub(crate) const FLOWS_PER_KERNEL: usize = 256;

/// How long the gateway may take to answer a flow or a lookup before the tunnel is presumed
/// dead (a gateway that restarted cannot reset the old connection) and connected again.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(4);

/// The node serving one kernel's namespace; dropping it stops the listeners and every flow.
#[derive(Debug)]
pub(crate) struct Serving {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(super) fn serve(
    egress: Egress,
    redirect: std::net::TcpListener,
    dns: std::net::UdpSocket,
) -> Result<Serving, NetworkError> {
    serve_with(egress, redirect, dns, FLOWS_PER_KERNEL)
}

/// [`serve`] with a connection cap of `flow_cap` (tests use a small one).
pub(super) fn serve_with(
    egress: Egress,
    redirect: std::net::TcpListener,
    dns: std::net::UdpSocket,
    flow_cap: usize,
) -> Result<Serving, NetworkError> {
    let socket_error = |what| move |source| NetworkError::Socket { what, source };
    let listener = TcpListener::from_std(redirect).map_err(socket_error("redirect"))?;
    let dns = UdpSocket::from_std(dns).map_err(socket_error("DNS"))?;
    let kernel = Arc::new(Kernel::new(egress, flow_cap));
    let tasks = vec![
        tokio::spawn(accept(Arc::clone(&kernel), listener)),
        tokio::spawn(answer_dns(kernel, Arc::new(dns))),
    ];
    Ok(Serving { tasks })
}

/// The time the caps and the notice gate see (tokio's clock, so tests can pause it).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One kernel's namespace as the node serves it: the shared egress, and this kernel's caps.
struct Kernel {
    egress: Egress,
    /// Permits for concurrent redirected connections.
    flows: Arc<Semaphore>,
    flow_cap: usize,
    /// The cell was told the cap is reached, and no connection was accepted since.
    at_cap: AtomicBool,
    lookups: Mutex<Lookups>,
    notices: Mutex<NoticeGate>,
}

impl Kernel {
    fn new(egress: Egress, flow_cap: usize) -> Self {
        let now = now();
        Kernel {
            egress,
            flows: Arc::new(Semaphore::new(flow_cap)),
            flow_cap,
            at_cap: AtomicBool::new(false),
            lookups: Mutex::new(Lookups::new(now)),
            notices: Mutex::new(NoticeGate::new(now)),
        }
    }

    fn lookups(&self) -> std::sync::MutexGuard<'_, Lookups> {
        self.lookups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, NoticeGate> {
        self.notices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the running cell `line`, as the notice gate allows.
    fn notice(self: &Arc<Self>, line: String) {
        let offer = self.gate().offer(line, now());
        self.act(offer);
    }

    fn act(self: &Arc<Self>, offer: Offer) {
        match offer {
            Offer::Show(line) => self.egress.notify(line),
            Offer::Held(due) => {
                metrics::counter!("airlock_node_egress_notices_held_total").increment(1);
                if let Some(due) = due {
                    let kernel = Arc::clone(self);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                        let summary = kernel.gate().flush(now());
                        if let Some(summary) = summary {
                            kernel.egress.notify(summary);
                        }
                    });
                }
            }
            Offer::Repeat => {}
        }
    }

    /// A connection past the cap: reset at once, counted, and said once per episode.
    fn over_cap(self: &Arc<Self>, stream: TcpStream) {
        metrics::counter!("airlock_node_egress_flows_total", "outcome" => "over_cap").increment(1);
        if self.at_cap.swap(true, Ordering::Relaxed) {
            let offer = self.gate().hold(now());
            self.act(offer);
        } else {
            let to = original_destination(&stream)
                .map(|addr| format!("{addr} "))
                .unwrap_or_default();
            warn!(
                cap = self.flow_cap,
                "a kernel reached its cap of redirected connections"
            );
            self.notice(format!(
                "[airlock egress] {to}refused: the kernel already has {} connections open \
                 through the node, the most it may have at once\n",
                self.flow_cap
            ));
        }
        reset(stream);
    }
}

async fn accept(kernel: Arc<Kernel>, listener: TcpListener) {
    let mut flows = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&kernel.flows).try_acquire_owned() {
                    Ok(permit) => {
                        kernel.at_cap.store(false, Ordering::Relaxed);
                        flows.spawn(relay(Arc::clone(&kernel), stream, permit));
                    }
                    Err(_) => kernel.over_cap(stream),
                },
                Err(error) => {
                    warn!(%error, "accepting a redirected connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
            Some(_) = flows.join_next(), if !flows.is_empty() => {}
        }
    }
}

/// Why a flow could not be opened.
#[derive(Debug, thiserror::Error)]
enum FlowError {
    #[error("the egress gateway could not be reached: {0}")]
    Tunnel(#[from] TunnelError),
    #[error("{0}")]
    Open(#[from] OpenFlowError),
    #[error("the egress gateway did not answer within {}s", ANSWER_WITHIN.as_secs())]
    Silent,
}

/// One redirected connection, from its original destination to its end; `_permit` is its
/// place under the kernel's cap, given back when it ends.
async fn relay(kernel: Arc<Kernel>, mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let egress = &kernel.egress;
    let Some(original) = original_destination(&stream) else {
        reset(stream);
        return;
    };
    let destination = match destination(egress, original) {
        Ok(destination) => destination,
        Err(refusal) => {
            refused(&kernel, "local", refusal);
            reset(stream);
            return;
        }
    };
    let shown = show(&destination);
    let Some(tags) = egress.tags() else {
        debug!(%shown, "a connection before the node has a document is refused");
        refused(
            &kernel,
            "unassigned",
            format!("{shown} refused: the node has no document yet"),
        );
        reset(stream);
        return;
    };
    match open_flow(egress, destination, &tags).await {
        Ok(mut flow) => {
            metrics::counter!("airlock_node_egress_flows_total", "outcome" => "connected")
                .increment(1);
            if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut stream, &mut flow).await {
                metrics::counter!("airlock_node_egress_bytes_total", "direction" => "out")
                    .increment(up);
                metrics::counter!("airlock_node_egress_bytes_total", "direction" => "in")
                    .increment(down);
            }
        }
        Err(FlowError::Open(OpenFlowError::Refused { status, reason, .. })) => {
            let (outcome, words) = match status {
                ReplyStatus::Denied => ("denied", "denied"),
                ReplyStatus::Limited => ("limited", "refused (limit reached)"),
                ReplyStatus::ResolveFailed => ("resolve_failed", "could not be resolved"),
                ReplyStatus::ConnectFailed => ("connect_failed", "could not be reached"),
                ReplyStatus::BadRequest | ReplyStatus::Connected => ("bad_request", "refused"),
            };
            // The gateway's sentences for denials start with the verdict already.
            let reason = reason.strip_prefix("denied: ").unwrap_or(&reason);
            refused(&kernel, outcome, format!("{shown} {words}: {reason}"));
            reset(stream);
        }
        Err(error) => {
            refused(&kernel, "tunnel_failed", format!("{shown} failed: {error}"));
            reset(stream);
        }
    }
}

/// Counts a refused connection and tells the running cell why (as the notice gate allows).
fn refused(kernel: &Arc<Kernel>, outcome: &'static str, sentence: String) {
    metrics::counter!("airlock_node_egress_flows_total", "outcome" => outcome).increment(1);
    kernel.notice(format!("[airlock egress] {sentence}\n"));
}

/// Where the kernel meant to go: a name it looked up, or an address it wrote.
fn destination(egress: &Egress, original: SocketAddrV4) -> Result<Destination, String> {
    let (ip, port) = (*original.ip(), original.port());
    if ip.is_loopback() {
        return Err(format!(
            "{original} refused: connections to the node's own sockets are not flows"
        ));
    }
    if is_synthetic(ip) {
        return match egress.names().name_of(ip, now()) {
            Some(name) => Ok(Destination::name(name, port)),
            None => Err(format!(
                "{original} refused: 198.18.0.0/15 holds the node's synthetic addresses, and \
                 this one stands for no name the kernel looked up"
            )),
        };
    }
    Ok(Destination::addr(SocketAddr::V4(original)))
}

/// `host:port` as a user would write it.
fn show(destination: &Destination) -> String {
    use airlock_protocol::tunnel::TargetHost;
    match &destination.host {
        TargetHost::Name(name) => format!("{name}:{}", destination.port),
        TargetHost::Ip(ip) => SocketAddr::new(*ip, destination.port).to_string(),
    }
}

/// Opens a flow, connecting the tunnel again once if it had gone down.
async fn open_flow(
    egress: &Egress,
    destination: Destination,
    tags: &FlowTags,
) -> Result<TunnelFlow, FlowError> {
    let mut retried = false;
    loop {
        let tunnel = tokio::time::timeout(ANSWER_WITHIN, egress.tunnel())
            .await
            .map_err(|_| FlowError::Silent)??;
        let opened = tokio::time::timeout(
            ANSWER_WITHIN,
            tunnel.open_flow_from(
                destination.clone(),
                &tags.document,
                &tags.tenant,
                egress.origin(),
            ),
        )
        .await;
        match opened {
            ref opened if !retried && silent_or_down(opened, OpenFlowError::is_tunnel_down) => {
                debug!("the tunnel is down or silent; connecting again");
                egress.forget(&tunnel).await;
                retried = true;
            }
            Err(_) => return Err(FlowError::Silent),
            Ok(result) => return Ok(result?),
        }
    }
}

/// The destination a redirected connection was sent to, from conntrack.
fn original_destination(stream: &TcpStream) -> Option<SocketAddrV4> {
    let addr = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)
        .inspect_err(|error| warn!(%error, "SO_ORIGINAL_DST failed"))
        .ok()?;
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// Closes with a reset, so the kernel's next read or write fails at once.
fn reset(stream: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger);
    drop(stream);
}

async fn answer_dns(kernel: Arc<Kernel>, socket: Arc<UdpSocket>) {
    let in_flight = Arc::new(Semaphore::new(DNS_IN_FLIGHT));
    let mut buf = vec![0u8; dns::MAX_QUERY + 1];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                warn!(%error, "reading a DNS query failed");
                continue;
            }
        };
        let question = match dns::read(&buf[..len]) {
            Incoming::Drop => continue,
            Incoming::Reply(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
                continue;
            }
            Incoming::Ask(question) => question,
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let (kernel, socket) = (Arc::clone(&kernel), Arc::clone(&socket));
        tokio::spawn(async move {
            let (verdict, label) = look_up(&kernel, &question.name).await;
            metrics::counter!("airlock_node_egress_dns_answers_total", "answer" => label)
                .increment(1);
            let _ = socket.send_to(&dns::answer(&question, verdict), peer).await;
            drop(permit);
        });
    }
}

/// What the gateway says about `name`, as a synthetic address when it may be reached, with the
/// answer's metric label. A name the policy denies gets `NXDOMAIN` and no address (so denied
/// names cannot use up the pool); the gateway's reason goes into the cell, which says more than
/// "name not found". A name refused a moment ago is answered from memory; past the kernel's
/// budget of new names, the gateway is not asked at all.
async fn look_up(kernel: &Arc<Kernel>, name: &str) -> (Verdict, &'static str) {
    let egress = &kernel.egress;
    if let Some(addr) = egress.names().known(name, now()) {
        return (Verdict::Exists(addr), "exists");
    }
    let Some(tags) = egress.tags() else {
        return (Verdict::Failed, "failed");
    };
    let decision = kernel.lookups().decide(name, now());
    match decision {
        Decision::Ask => {}
        Decision::Refused(Refused::Missing) => return (Verdict::Missing, "missing"),
        Decision::Refused(Refused::Denied(_)) => return (Verdict::Missing, "denied"),
        Decision::OverBudget => {
            kernel.notice(format!(
                "[airlock egress] {name} not looked up: the kernel asked about more than {} \
                 new names ({} a minute once those are spent)\n",
                names::NAME_BURST,
                names::NAMES_PER_MINUTE
            ));
            return (Verdict::Failed, "limited");
        }
    }
    let mut retried = false;
    let answer = loop {
        let tunnel = match tokio::time::timeout(ANSWER_WITHIN, egress.tunnel()).await {
            Ok(Ok(tunnel)) => tunnel,
            Ok(Err(error)) => {
                warn!(%error, "the egress gateway could not be reached for a DNS question");
                return (Verdict::Failed, "failed");
            }
            Err(_) => {
                warn!("the egress gateway did not complete the tunnel handshake");
                return (Verdict::Failed, "failed");
            }
        };
        let answered = tokio::time::timeout(
            ANSWER_WITHIN,
            tunnel.lookup(name, &tags.document, &tags.tenant),
        )
        .await;
        match answered {
            ref looked if !retried && silent_or_down(looked, LookupError::is_tunnel_down) => {
                egress.forget(&tunnel).await;
                retried = true;
            }
            Err(_) => {
                warn!(name, "the egress gateway did not answer a DNS question");
                return (Verdict::Failed, "failed");
            }
            Ok(Err(error)) => {
                warn!(%error, name, "a DNS question through the tunnel failed");
                return (Verdict::Failed, "failed");
            }
            Ok(Ok(answer)) => break answer,
        }
    };
    match answer {
        LookupAnswer::Found => {
            let handed = egress.names().address_of(name, now());
            match handed {
                Ok(addr) => (Verdict::Exists(addr), "exists"),
                Err(error) => {
                    kernel.notice(format!("[airlock egress] {name}: {error}\n"));
                    (Verdict::Failed, "exhausted")
                }
            }
        }
        LookupAnswer::Denied { reason } => {
            // The gateway's sentences for denials start with the verdict already.
            let reason = reason
                .strip_prefix("denied: ")
                .unwrap_or(&reason)
                .to_owned();
            kernel.notice(format!("[airlock egress] {name} denied: {reason}\n"));
            kernel
                .lookups()
                .refused(name, Refused::Denied(reason), now());
            (Verdict::Missing, "denied")
        }
        LookupAnswer::NotFound { .. } => {
            kernel.lookups().refused(name, Refused::Missing, now());
            (Verdict::Missing, "missing")
        }
    }
}

/// Whether a tunnel request timed out or failed because the tunnel itself is down: either way
/// a new connection may succeed where this one did not.
fn silent_or_down<T, E, Elapsed>(
    outcome: &Result<Result<T, E>, Elapsed>,
    is_down: impl Fn(&E) -> bool,
) -> bool {
    match outcome {
        Err(_) => true,
        Ok(Err(error)) => is_down(error),
        Ok(Ok(_)) => false,
    }
}
