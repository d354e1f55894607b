//! The driver's caps with a real namespace (as root): a kernel's connections from inside it,
//! the node's listener, and a gateway that never answers, so flows under the cap stay open.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use airlock_client::tunnel::{Identity, TunnelClientConfig};
use tokio::sync::mpsc;

use super::*;
use crate::egress::netns::{JailNetwork, missing_support};

/// How long a notice may take to arrive (they are written at once, summaries within seconds).
const NOTICE_WITHIN: Duration = Duration::from_secs(15);

/// Egress towards `gateway`, assigned to a document, with every notice sent to the receiver.
fn egress(gateway: SocketAddr) -> (Egress, mpsc::UnboundedReceiver<String>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["node.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let egress = Egress::new(TunnelClientConfig {
        gateway,
        server_name: "egress".to_owned(),
        gateway_roots: vec![cert.der().clone()],
        identity: Identity {
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        },
    });
    egress.assign(FlowTags {
        document: "doc-caps".to_owned(),
        tenant: "acme".to_owned(),
    });
    let (notices, received) = mpsc::unbounded_channel();
    egress.set_notify(Arc::new(move |line| {
        let _ = notices.send(line);
    }));
    (egress, received)
}

/// A kernel's namespace served by the node with at most `flows` connections, towards a
/// gateway that never answers (flows under the cap wait for it, `ANSWER_WITHIN`).
struct SilentJail {
    namespace: OwnedFd,
    notices: mpsc::UnboundedReceiver<String>,
    _gateway: std::net::UdpSocket,
    _serving: Serving,
}

impl SilentJail {
    /// `None` (and a line saying why) where this host cannot make namespaces.
    fn serve(flows: usize) -> Option<SilentJail> {
        if let Some(missing) = missing_support() {
            println!("skipped: this host lacks {missing}");
            return None;
        }
        let gateway = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (egress, notices) = egress(gateway.local_addr().unwrap());
        let JailNetwork {
            namespace,
            redirect,
            dns,
        } = JailNetwork::create().unwrap();
        let serving = serve_with(egress, redirect, dns, flows).unwrap();
        Some(SilentJail {
            namespace,
            notices,
            _gateway: gateway,
            _serving: serving,
        })
    }
}

/// Runs `f` on a thread inside the namespace, as the kernel would be.
async fn inside<T: Send + 'static>(
    namespace: &OwnedFd,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let namespace = namespace.try_clone().unwrap();
    tokio::task::spawn_blocking(move || {
        nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .await
    .unwrap()
}

/// Connects to `to` and reads: how the connection ended, or `WouldBlock` if it is still open
/// after `wait`.
fn connect_and_read(to: SocketAddr, wait: Duration) -> ErrorKind {
    // A reset can come back before `connect` returns.
    let mut stream = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(error) => return error.kind(),
    };
    if let Err(error) = stream.set_read_timeout(Some(wait)) {
        return error.kind();
    }
    match stream.read(&mut [0u8; 16]) {
        Ok(0) => ErrorKind::UnexpectedEof,
        Ok(_) => ErrorKind::Other,
        Err(error) => error.kind(),
    }
}

async fn next_notice(notices: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(NOTICE_WITHIN, notices.recv())
        .await
        .expect("a notice within the timeout")
        .expect("the notice channel is open")
}

/// Security review #5 (node side): past the cap a connection is reset at once, the running
/// cell is told once, and the rest of the episode is one "N more refused" line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_reset_and_said_once() {
    let Some(mut jail) = SilentJail::serve(2) else {
        return;
    };

    let (held, extra) = inside(&jail.namespace, || {
        let target = SocketAddr::from(([1, 1, 1, 1], 80));
        // Two connections fill the cap; the node holds them while it waits for the gateway.
        let held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap())
            .collect();
        // The rest are reset at once (well within the held ones' wait).
        let extra: Vec<ErrorKind> = (0..10)
            .map(|_| connect_and_read(target, Duration::from_secs(2)))
            .collect();
        let held: Vec<ErrorKind> = held
            .into_iter()
            .map(|stream| {
                stream.set_nonblocking(true).unwrap();
                match (&stream).read(&mut [0u8; 1]) {
                    Err(error) => error.kind(),
                    Ok(0) => ErrorKind::UnexpectedEof,
                    Ok(_) => ErrorKind::Other,
                }
            })
            .collect();
        (held, extra)
    })
    .await;
    assert_eq!(
        extra,
        vec![ErrorKind::ConnectionReset; 10],
        "past the cap: reset"
    );
    assert_eq!(
        held,
        vec![ErrorKind::WouldBlock; 2],
        "under the cap: still open"
    );

    let first = next_notice(&mut jail.notices).await;
    assert!(
        first.contains("1.1.1.1:80 refused: the kernel already has 2 connections open"),
        "{first}"
    );
    let summary = next_notice(&mut jail.notices).await;
    assert!(
        summary.starts_with("[airlock egress] 9 more refused"),
        "the other nine are one line: {summary}"
    );
}

/// A flood of distinct refusals (synthetic addresses no name was given, refused by the node
/// itself) writes the notice burst and one summary, not one line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_is_a_few_lines_and_a_summary() {
    let Some(mut jail) = SilentJail::serve(FLOWS_PER_KERNEL) else {
        return;
    };
    const FLOOD: usize = 60;
    let ends = inside(&jail.namespace, || {
        (0..FLOOD)
            .map(|i| {
                let to = SocketAddr::from(([198, 18, 200, i as u8], 80));
                connect_and_read(to, Duration::from_secs(5))
            })
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(ends, vec![ErrorKind::ConnectionReset; FLOOD]);
    let mut lines = Vec::new();
    loop {
        let line = next_notice(&mut jail.notices).await;
        let done = line.contains("more refused");
        lines.push(line);
        if done {
            break;
        }
    }
    assert_eq!(
        lines.len(),
        notices::NOTICE_BURST as usize + 1,
        "the burst, then the summary: {lines:#?}"
    );
    assert!(lines[0].contains("198.18.200.0:80 refused"), "{}", lines[0]);
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with(&format!(
            "[airlock egress] {} more refused",
            FLOOD - notices::NOTICE_BURST as usize
        )),
        "{summary}"
    );
    assert!(
        jail.notices.try_recv().is_err(),
        "nothing after the summary"
    );
}
