//! Issue 6's "done when", end to end: a small internet made of network namespaces on this
//! machine (an HTTP server, a raw TCP echo server, a DNS server), the real `airlock egress` on a
//! gateway host between it and this host, and two real `airlock node` processes with jailed
//! kernels, one per tenant. From cells:
//!
//! 1. HTTP by name works, and the server sees the tenant's static address (alpha and beta differ);
//! 2. raw TCP by name works, bytes come back intact;
//! 3. a denied host and a denied port fail at once with `[airlock egress] … denied …` in the
//!    cell's output; the denied port's flow leaves an audit record tagged with the document and
//!    tenant (the denied host is refused at its lookup, before any flow);
//! 4. the metadata address (literal and by name), the host's own veth address and the gateway
//!    host are refused over TCP, UDP fails at once, and nothing arrives anywhere (invariant 4:
//!    kernel code reaches nothing but the gateway).
//!
//! Before any node starts, the world is checked on its own through the gateway's CONNECT front
//! end, so a broken world and a broken node tell different stories. The nodes run with no `ip`
//! or `nft` on their `PATH`: they build their kernels' namespaces over netlink. Skips (with the
//! reason) only when the machine cannot build the world: not root, no `ip netns` (the fixtures
//! use it), no nf_tables in Linux.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_netns;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_client::{CellRun, Client};
use airlock_egress::audit::{AuditRecord, Verdict};
use airlock_protocol::token::{self, Claims, Role};
use airlock_protocol::{CellEdit, CellKind, Output, RunStatus};
use ed25519_dalek::SigningKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support_netns::{
    ALPHA_IP, BETA_IP, DENIED_PORT, DNS, ECHO, ECHO_PORT, METADATA, NodeProcess, WAIT, WEB, World,
    cannot_run, host_trap, http_connect, http_get,
};

const ALPHA_DOC: &str = "egress-alpha";
const BETA_DOC: &str = "egress-beta";
/// A refusal is a reply from the gateway, not a timeout: well under the cells' 10 s timeouts.
const PROMPT: Duration = Duration::from_secs(4);

/// The first cell of every notebook: what the probes below call.
const HELPERS: &str = r#"import socket
import urllib.request

def fetch(url):
    return urllib.request.urlopen(url, timeout=10).read().decode()

def echo(host, port, data):
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        return got
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_reach_the_internet_only_through_the_gateway_from_their_tenants_ip() {
    if let Some(reason) = cannot_run() {
        eprintln!("skipped: {reason}");
        return;
    }
    let started = Instant::now();
    let world = World::build().await;
    the_world_works_through_the_gateway(&world).await;
    let world_ready = started.elapsed();

    // Two nodes on this host, jailed, one document each, one per tenant.
    let (key, key_file) = world.token_key();
    let (alpha, alpha_connect) = NodeProcess::spawn(&world, &key_file, ALPHA_DOC, "alpha");
    let (beta, beta_connect) = NodeProcess::spawn(&world, &key_file, BETA_DOC, "beta");
    let alpha = NodeProcess::wait_ready(alpha, &alpha_connect, ALPHA_DOC).await;
    let beta = NodeProcess::wait_ready(beta, &beta_connect, BETA_DOC).await;
    let mut alpha_cells = Cells::open(&alpha, &key).await;
    let mut beta_cells = Cells::open(&beta, &key).await;
    let nodes_ready = started.elapsed();

    // 1. HTTP by name; the server sees each tenant's static address.
    let seen_before = world.seen.http_requests().len();
    let run = alpha_cells
        .run("web", r#"print(fetch("http://web.example/"))"#)
        .await;
    assert_ok(&run);
    assert_eq!(text(&run.outputs).trim(), ALPHA_IP.to_string());
    let run = beta_cells
        .run("web", r#"print(fetch("http://web.example/"))"#)
        .await;
    assert_ok(&run);
    assert_eq!(text(&run.outputs).trim(), BETA_IP.to_string());
    let from_cells: Vec<_> = world.seen.http_requests()[seen_before..]
        .iter()
        .map(|r| (r.server, r.peer.ip(), r.host.clone()))
        .collect();
    let web = SocketAddr::from((WEB, 80));
    assert_eq!(
        from_cells,
        [
            (web, ALPHA_IP.into(), "web.example".to_owned()),
            (web, BETA_IP.into(), "web.example".to_owned()),
        ],
        "the web server saw exactly the two cells' requests, from the tenants' static IPs"
    );
    let allowed = world
        .audit_record("alpha's allowed web flow", |r| {
            r.document == ALPHA_DOC && r.port == 80 && r.verdict == Verdict::Allow
        })
        .await;
    assert_eq!(allowed.tenant, "alpha");
    assert_eq!(
        allowed.requested_host, "web.example",
        "the flow left by name"
    );
    assert_eq!(allowed.front_end, "tunnel");
    assert_eq!(allowed.chosen, Some(web));
    assert_eq!(allowed.source.map(|s| s.ip()), Some(ALPHA_IP.into()));

    let allowed = world
        .audit_record("beta's allowed web flow", |r| {
            r.document == BETA_DOC && r.port == 80 && r.verdict == Verdict::Allow
        })
        .await;
    assert_eq!(allowed.tenant, "beta");
    assert_eq!(allowed.source.map(|s| s.ip()), Some(BETA_IP.into()));

    // 2. Raw TCP by name: 256 KiB out and back, intact.
    let echo = SocketAddr::from((ECHO, ECHO_PORT));
    let echoes_before = world.seen.accepted_at(echo).len();
    let run = alpha_cells
        .run(
            "echo",
            &format!(
                r#"data = bytes(range(256)) * 1024
back = echo("echo.example", {ECHO_PORT}, data)
print(len(back), back == data)"#
            ),
        )
        .await;
    assert_ok(&run);
    assert_eq!(text(&run.outputs).trim(), "262144 True");
    let peers: Vec<_> = world.seen.accepted_at(echo)[echoes_before..]
        .iter()
        .map(|peer| peer.ip())
        .collect();
    assert_eq!(
        peers,
        [ALPHA_IP],
        "the echo server saw one connection, from alpha's static IP"
    );

    // 3a. A denied host: a quick error naming it with the gateway's reason, decided at the
    //     lookup (the name gets NXDOMAIN and no synthetic address, security review #15), so
    //     no flow is ever opened.
    let run = alpha_cells
        .run("blocked", r#"fetch("http://blocked.example/")"#)
        .await;
    let shown = assert_refused_promptly(&run, "blocked.example");
    assert!(
        shown.contains("[airlock egress] blocked.example denied: "),
        "the cell shows the gateway's reason for the name: {shown}"
    );
    assert!(
        !world
            .seen
            .http_requests()
            .iter()
            .any(|r| r.host.contains("blocked.example")),
        "a denied host got a request"
    );

    // 3b. A denied port: the same, and the server listening there sees nothing.
    let run = alpha_cells
        .run(
            "port",
            &format!(r#"echo("echo.example", {DENIED_PORT}, b"hi")"#),
        )
        .await;
    assert_refused_promptly(&run, &format!(":{DENIED_PORT}"));
    let record = world
        .audit_record("the denied port", |r| {
            r.port == DENIED_PORT && r.document == ALPHA_DOC
        })
        .await;
    assert_denied_for_alpha(&record);
    assert_eq!(record.class, "denied_port", "{record:?}");
    assert!(
        world
            .seen
            .accepted_at(SocketAddr::from((ECHO, DENIED_PORT)))
            .is_empty(),
        "a connection reached the denied port"
    );

    // 4. Nothing but the gateway: the metadata address (literal and by name), this host's end of
    //    the veth, and the gateway host itself are refused, and nothing arrives there.
    let trap = host_trap(&world);
    let probes = [
        (
            "metadata",
            format!(r#"echo("{METADATA}", 80, b"x")"#),
            METADATA.to_string(),
        ),
        (
            "metadata_name",
            r#"fetch("http://meta.example/")"#.to_owned(),
            "meta.example".to_owned(),
        ),
        (
            "host",
            format!(r#"echo("{}", {}, b"x")"#, trap.ip(), trap.port()),
            trap.ip().to_string(),
        ),
        (
            "gateway_host",
            format!(
                r#"echo("{}", {}, b"x")"#,
                world.connect.ip(),
                world.connect.port()
            ),
            world.connect.ip().to_string(),
        ),
    ];
    for (cell, source, destination) in &probes {
        let run = alpha_cells.run(cell, source).await;
        assert_refused_promptly(&run, destination);
    }
    assert!(
        world
            .seen
            .accepted_at(SocketAddr::from((METADATA, 80)))
            .is_empty(),
        "kernel code reached the metadata address"
    );
    assert!(
        world.seen.accepted_at(trap).is_empty(),
        "kernel code reached the host at {trap}"
    );
    // The literal address is a flow, refused and audited; `meta.example` was refused at its
    // lookup (no flow, so no audit record: lookups are counted, not audited).
    let destination = METADATA.to_string();
    let record = world
        .audit_record(&destination, |r| {
            r.document == ALPHA_DOC && r.requested_host == destination && r.port == 80
        })
        .await;
    assert_denied_for_alpha(&record);

    // UDP never leaves the jail: not to the internet's DNS server (the kernel's DNS is the
    // node's), not to this host. Sending fails at once, and nothing arrives.
    let udp_trap = std::net::UdpSocket::bind((trap.ip(), 0)).unwrap();
    udp_trap.set_nonblocking(true).unwrap();
    let udp_trap_addr = udp_trap.local_addr().unwrap();
    let run = alpha_cells
        .run(
            "udp",
            &format!(
                r#"import errno
for dest in [("{DNS}", 53), ("{}", {})]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"x", dest)
        print(dest[0], "sent")
    except OSError as error:
        print(dest[0], errno.errorcode.get(error.errno, error.errno))
    finally:
        sock.close()"#,
                udp_trap_addr.ip(),
                udp_trap_addr.port()
            ),
        )
        .await;
    assert_ok(&run);
    let shown = text(&run.outputs);
    eprintln!("cell udp: {}", shown.trim().replace('\n', "; "));
    assert_eq!(shown.lines().count(), 2, "{shown}");
    assert!(
        shown.lines().all(|line| !line.ends_with(" sent")),
        "a UDP datagram left the jail: {shown}"
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        udp_trap.recv_from(&mut buf).map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "a datagram from kernel code reached the host"
    );

    eprintln!(
        "egress_netns: world {:.1?}, nodes {:.1?}, total {:.1?}",
        world_ready,
        nodes_ready - world_ready,
        started.elapsed()
    );
}

/// The world on its own, through the gateway's CONNECT front end from this host: DNS, routes and
/// each tenant's static source address, the echo server, and the three refusals the cells meet.
async fn the_world_works_through_the_gateway(world: &World) {
    let alpha = ("alpha-check", "alpha-pass");
    let beta = ("beta-check", "beta-pass");
    for (credentials, ip) in [(alpha, ALPHA_IP), (beta, BETA_IP)] {
        let stream = http_connect(world.connect, credentials, "web.example:80")
            .await
            .expect("CONNECT web.example:80");
        assert_eq!(http_get(stream, "web.example").await, ip.to_string());
    }
    let mut stream = http_connect(world.connect, alpha, &format!("echo.example:{ECHO_PORT}"))
        .await
        .expect("CONNECT echo.example");
    stream.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    for target in [
        "blocked.example:80".to_owned(),
        format!("echo.example:{DENIED_PORT}"),
        "meta.example:80".to_owned(),
    ] {
        assert_eq!(
            http_connect(world.connect, alpha, &target).await.err(),
            Some(403),
            "CONNECT {target} is refused"
        );
    }
}

/// One client's view of a node's notebook: cells appended and run one at a time.
struct Cells {
    client: Client,
}

impl Cells {
    /// Connects as an editor and runs [`HELPERS`].
    async fn open(node: &NodeProcess, key: &SigningKey) -> Cells {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = token::sign(
            &Claims {
                doc: node.doc.clone(),
                user: "egress-test".into(),
                role: Role::Editor,
                epoch: 1,
                exp: now + 3600,
            },
            key,
        );
        let client = Client::connect(&node.target, &token).await.unwrap();
        let mut cells = Cells { client };
        let run = cells.run("helpers", HELPERS).await;
        assert_ok(&run);
        cells
    }

    /// Appends a code cell `id` with `source`, runs it, and returns how it went.
    async fn run(&mut self, id: &str, source: &str) -> CellRun {
        self.client
            .edit_cells(
                vec![CellEdit::Insert {
                    index: usize::MAX,
                    cell: Some(id.into()),
                    kind: CellKind::Code,
                    source: source.into(),
                }],
                false,
            )
            .await
            .unwrap();
        let accepted = self.client.run_cells(vec![id.into()], false).await.unwrap();
        let runs = tokio::time::timeout(WAIT, self.client.follow_accepted(&accepted, |_| {}))
            .await
            .unwrap_or_else(|_| panic!("cell {id} finished within {WAIT:?}"))
            .unwrap();
        runs.into_iter()
            .find(|run| run.cell == id)
            .unwrap_or_else(|| panic!("cell {id} was not queued: {accepted:?}"))
    }
}

fn text(outputs: &[Output]) -> String {
    Output::text_of(outputs)
}

fn assert_ok(run: &CellRun) {
    assert_eq!(
        run.status,
        Some(RunStatus::Ok),
        "cell {} failed:\n{}",
        run.cell,
        text(&run.outputs)
    );
}

/// The cell failed, promptly, and shows `[airlock egress] … denied …` naming `destination`;
/// returns what it showed.
fn assert_refused_promptly(run: &CellRun, destination: &str) -> String {
    let shown = text(&run.outputs);
    assert_eq!(
        run.status,
        Some(RunStatus::Error),
        "cell {} should have failed:\n{shown}",
        run.cell
    );
    let elapsed = run.elapsed.expect("a finished run has a duration");
    assert!(
        elapsed < PROMPT,
        "cell {} took {elapsed:?} to fail (a refusal, not a timeout, is expected):\n{shown}",
        run.cell
    );
    let line = shown
        .lines()
        .find(|line| line.contains("[airlock egress]"))
        .unwrap_or_else(|| panic!("cell {} shows no [airlock egress] line:\n{shown}", run.cell));
    eprintln!("cell {} ({elapsed:.1?}): {line}", run.cell);
    assert!(
        line.contains("denied") && line.contains(destination),
        "cell {}: the egress line should say {destination} was denied: {line}",
        run.cell
    );
    shown
}

fn assert_denied_for_alpha(record: &AuditRecord) {
    assert_eq!(record.verdict, Verdict::Deny, "{record:?}");
    assert_eq!(record.tenant, "alpha", "{record:?}");
    assert_eq!(record.document, ALPHA_DOC, "{record:?}");
    assert_eq!(record.front_end, "tunnel", "{record:?}");
    assert!(record.chosen.is_none(), "a denied flow dialled: {record:?}");
}
