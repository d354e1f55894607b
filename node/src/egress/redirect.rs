//! The node's end of a kernel's namespace: redirected TCP connections become tunnel flows, and
//! DNS questions are answered with the gateway's word on each name.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use airlock_egress::frame::ReplyStatus;
use airlock_egress::tunnel::{
    Destination, LookupAnswer, LookupError, OpenFlowError, TunnelError, TunnelFlow,
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use super::dns::{self, Incoming, Verdict};
use super::names::is_synthetic;
use super::{Egress, FlowTags, NetworkError};

/// DNS questions answered at once; more wait in the socket's buffer.
const DNS_IN_FLIGHT: usize = 64;

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
    let socket_error = |what| move |source| NetworkError::Socket { what, source };
    let listener = TcpListener::from_std(redirect).map_err(socket_error("redirect"))?;
    let dns = UdpSocket::from_std(dns).map_err(socket_error("DNS"))?;
    let tasks = vec![
        tokio::spawn(accept(egress.clone(), listener)),
        tokio::spawn(answer_dns(egress, Arc::new(dns))),
    ];
    Ok(Serving { tasks })
}

async fn accept(egress: Egress, listener: TcpListener) {
    let mut flows = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    flows.spawn(relay(egress.clone(), stream));
                }
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

/// One redirected connection, from its original destination to its end.
async fn relay(egress: Egress, mut stream: TcpStream) {
    let Some(original) = original_destination(&stream) else {
        reset(stream);
        return;
    };
    let destination = match destination(&egress, original) {
        Ok(destination) => destination,
        Err(refusal) => {
            refused(&egress, "local", refusal);
            reset(stream);
            return;
        }
    };
    let shown = show(&destination);
    let Some(tags) = egress.tags() else {
        debug!(%shown, "a connection before the node has a document is refused");
        refused(
            &egress,
            "unassigned",
            format!("{shown} refused: the node has no document yet"),
        );
        reset(stream);
        return;
    };
    match open_flow(&egress, destination, &tags).await {
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
            refused(&egress, outcome, format!("{shown} {words}: {reason}"));
            reset(stream);
        }
        Err(error) => {
            refused(&egress, "tunnel_failed", format!("{shown} failed: {error}"));
            reset(stream);
        }
    }
}

/// Counts a refused connection and tells the running cell why.
fn refused(egress: &Egress, outcome: &'static str, sentence: String) {
    metrics::counter!("airlock_node_egress_flows_total", "outcome" => outcome).increment(1);
    egress.notify(format!("[airlock egress] {sentence}\n"));
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
        return match egress.names().name_of(ip) {
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
    use airlock_egress::frame::TargetHost;
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
            Err(_) | Ok(Err(OpenFlowError::Connection(_))) if !retried => {
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

async fn answer_dns(egress: Egress, socket: Arc<UdpSocket>) {
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
        let (egress, socket) = (egress.clone(), Arc::clone(&socket));
        tokio::spawn(async move {
            let verdict = look_up(&egress, &question.name).await;
            let label = match verdict {
                Verdict::Exists(_) => "exists",
                Verdict::Missing => "missing",
                Verdict::Failed => "failed",
            };
            metrics::counter!("airlock_node_egress_dns_answers_total", "answer" => label)
                .increment(1);
            let _ = socket.send_to(&dns::answer(&question, verdict), peer).await;
            drop(permit);
        });
    }
}

/// What the gateway says about `name`, as a synthetic address when it exists. A name the
/// policy denies still gets an address: connecting to it then fails with the gateway's reason
/// in the cell, which says more than "name not found".
async fn look_up(egress: &Egress, name: &str) -> Verdict {
    if let Some(addr) = egress.names().known(name) {
        return Verdict::Exists(addr);
    }
    let Some(tags) = egress.tags() else {
        return Verdict::Failed;
    };
    let mut retried = false;
    let answer = loop {
        let tunnel = match tokio::time::timeout(ANSWER_WITHIN, egress.tunnel()).await {
            Ok(Ok(tunnel)) => tunnel,
            Ok(Err(error)) => {
                warn!(%error, "the egress gateway could not be reached for a DNS question");
                return Verdict::Failed;
            }
            Err(_) => {
                warn!("the egress gateway did not complete the tunnel handshake");
                return Verdict::Failed;
            }
        };
        let answered = tokio::time::timeout(
            ANSWER_WITHIN,
            tunnel.lookup(name, &tags.document, &tags.tenant),
        )
        .await;
        match answered {
            Err(_) | Ok(Err(LookupError::Connection(_))) if !retried => {
                egress.forget(&tunnel).await;
                retried = true;
            }
            Err(_) => {
                warn!(name, "the egress gateway did not answer a DNS question");
                return Verdict::Failed;
            }
            Ok(Err(error)) => {
                warn!(%error, name, "a DNS question through the tunnel failed");
                return Verdict::Failed;
            }
            Ok(Ok(answer)) => break answer,
        }
    };
    match answer {
        LookupAnswer::Found | LookupAnswer::Denied { .. } => {
            match egress.names().address_of(name) {
                Ok(addr) => Verdict::Exists(addr),
                Err(error) => {
                    egress.notify(format!("[airlock egress] {name}: {error}\n"));
                    Verdict::Failed
                }
            }
        }
        LookupAnswer::NotFound { .. } => Verdict::Missing,
    }
}
