//! The gateway end to end over loopback, with real sockets: our own DNS server, echo and HTTP
//! servers, and the gateway's three front ends (SOCKS5, CONNECT, QUIC tunnel, whose name
//! lookups are tested here too).
//!
//! The test servers listen on 127.0.0.1, which the policy denies (loopback) unless a tenant
//! carves it out; tenants `alpha` and `beta` carve out exactly the test servers' ports, and
//! tenant `closed` carves out nothing, to show loopback is denied by default. Tenants' static
//! egress addresses are 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to `lo`), so the
//! servers can check the source address each tenant's flows come from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use airlock_egress::Config;
use airlock_egress::audit::{AuditRecord, Verdict};
use airlock_egress::frame::FlowOrigin;
use airlock_egress::frame::LookupStatus;
use airlock_egress::frame::ReplyStatus;
use airlock_egress::tunnel::{
    Destination, LookupAnswer, LookupError, OpenFlowError, TunnelClient, TunnelClientConfig,
};
use airlock_test_kit::{eventually, ready_if};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    dns: DnsServer,
    echo: EchoServer,
    http: std::net::SocketAddr,
    /// A server on 127.0.0.1 at the same port as `public` (the rebinding target).
    loopback_twin: EchoServer,
    /// A server on 127.0.0.9, carved out for alpha: the "public" answer of the rebinding name.
    public: EchoServer,
    certs: Certs,
}

impl World {
    async fn new() -> World {
        let echo = EchoServer::start("127.0.0.1:0").await;
        let http = start_http_server().await;
        let loopback_twin = EchoServer::start("127.0.0.1:0").await;
        let public = EchoServer::start(&format!("127.0.0.9:{}", loopback_twin.addr.port())).await;
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let dns = DnsServer::start(vec![
            ("echo.test", Answer::Fixed(vec![loopback])),
            ("http.test", Answer::Fixed(vec![loopback])),
            ("x.denied.test", Answer::Fixed(vec![loopback])),
            (
                "intranet.test",
                Answer::Fixed(vec!["10.0.0.5".parse().unwrap()]),
            ),
            (
                "metadata.attacker.test",
                Answer::Fixed(vec!["169.254.169.254".parse().unwrap()]),
            ),
            (
                "mixed.test",
                Answer::Fixed(vec!["10.0.0.5".parse().unwrap(), loopback]),
            ),
            (
                "rebind.test",
                Answer::Flip(vec!["127.0.0.9".parse().unwrap(), loopback]),
            ),
        ])
        .await;
        World {
            dns,
            echo,
            http,
            loopback_twin,
            public,
            certs: Certs::new(),
        }
    }

    /// The gateway config; `extra_alpha` is appended to tenant alpha's section.
    fn config(&self, extra_alpha: &str) -> String {
        let echo = self.echo.addr.port();
        let http = self.http.port();
        let twin = self.loopback_twin.addr.port();
        format!(
            r#"
[gateway]
region = "test"
connect_timeout_ms = 5000
handshake_timeout_ms = 5000

[listen]
connect = "127.0.0.1:0"
socks = "127.0.0.1:0"
tunnel = "127.0.0.1:0"

[resolver]
upstreams = ["{dns}"]
cache = false
timeout_ms = 2000
attempts = 1

[global]
deny_ports = [25]

[tunnel]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"

[[nodes]]
name = "node-1.airlock"
tenants = ["alpha", "closed", "strict"]

[[tenants]]
name = "alpha"
static_ips = {{ test = ["127.0.0.2"] }}
allow_cidrs = [{{ cidr = "127.0.0.1", ports = [{echo}, {http}] }}, {{ cidr = "127.0.0.9", ports = [{twin}] }}]
deny_hosts = ["*.denied.test"]
{extra_alpha}

[[tenants]]
name = "beta"
static_ips = {{ test = ["127.0.0.3"] }}
allow_cidrs = [{{ cidr = "127.0.0.1", ports = [{echo}, {http}] }}]

[[tenants]]
name = "closed"
static_ips = {{ test = ["127.0.0.4"] }}

[[tenants]]
name = "strict"
default = "deny"
static_ips = {{ test = ["127.0.0.5"] }}
allow_hosts = ["echo.test"]

[[credentials]]
username = "alpha"
password = "alpha-secret"
tenant = "alpha"
document = "doc-a"

[[credentials]]
username = "beta"
password = "beta-secret"
tenant = "beta"
document = "doc-b"

[[credentials]]
username = "closed"
password = "closed-secret"
tenant = "closed"

[[credentials]]
username = "strict"
password = "strict-secret"
tenant = "strict"
document = "doc-s"
"#,
            dns = self.dns.addr,
            cert = self.certs.gateway_cert.display(),
            key = self.certs.gateway_key.display(),
            ca = self.certs.ca_pem.display(),
        )
    }
}

#[tokio::test]
async fn socks5_and_connect_reach_servers_by_name_from_the_tenants_static_address() {
    let mut world = World::new().await;
    let mut gw = TestGateway::start(&world.config("")).await;
    let socks = gw.addrs.socks.unwrap();
    let connect = gw.addrs.connect.unwrap();
    let echo_port = world.echo.addr.port();

    // SOCKS5 by name, tenant alpha: the echo server sees 127.0.0.2.
    let (mut stream, bound) = socks5(socks, "alpha", "alpha-secret", "echo.test", echo_port)
        .await
        .unwrap();
    assert_eq!(
        bound.ip().to_string(),
        "127.0.0.2",
        "BND.ADDR is the static source"
    );
    assert_eq!(
        greeting(&mut stream).await,
        format!("hello from {}", world.echo.addr)
    );
    assert_eq!(echo_round_trip(&mut stream, b"ping").await, b"ping");
    assert_eq!(
        world.echo.peers.recv().await.unwrap().ip().to_string(),
        "127.0.0.2"
    );
    drop(stream);
    let record = gw.next_record().await;
    assert_eq!(record.verdict, Verdict::Allow);
    assert_eq!(record.front_end, "socks5");
    assert_eq!(
        (record.tenant.as_str(), record.document.as_str()),
        ("alpha", "doc-a")
    );
    assert_eq!(record.requested_host, "echo.test");
    assert_eq!(record.chosen, Some(world.echo.addr));
    assert_eq!(record.source.unwrap().ip().to_string(), "127.0.0.2");
    assert_eq!(
        record.resolved,
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );
    assert!(record.bytes_out >= 4 && record.bytes_in >= 4, "{record:?}");

    // CONNECT by name, tenant beta: an HTTP request through the tunnel; the server answers
    // with the source address it saw.
    let target = format!("http.test:{}", world.http.port());
    let (mut stream, flow) = http_connect(connect, Some(("beta", "beta-secret")), &target)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: http.test\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("\r\n\r\n127.0.0.3"), "{response}");
    // The server has closed its side; the flow ends when the client closes its own.
    drop(stream);
    let record = gw.record_of(flow).await;
    assert_eq!(record.front_end, "connect");
    assert_eq!(record.tenant, "beta");
    assert_eq!(record.source.unwrap().ip().to_string(), "127.0.0.3");

    // The audit file holds the same records as JSON lines.
    let lines = eventually(
        "two records in the audit file",
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&gw.audit_path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            let count = lines.len();
            ready_if(count >= 2, lines, count)
        },
    )
    .await;
    assert_eq!(lines[0]["verdict"], "allow");
    assert!(
        lines
            .iter()
            .any(|line| line["source"] == format!("127.0.0.3:{}", record.source.unwrap().port()))
    );
}

#[tokio::test]
async fn denied_host_and_port_fail_at_once_with_a_reason_and_an_audit_record() {
    let world = World::new().await;
    let mut gw = TestGateway::start(&world.config("")).await;
    let socks = gw.addrs.socks.unwrap();
    let connect = gw.addrs.connect.unwrap();
    let echo_port = world.echo.addr.port();
    let alpha = Some(("alpha", "alpha-secret"));

    let started = Instant::now();
    let refusal = http_connect(connect, alpha, &format!("x.denied.test:{echo_port}"))
        .await
        .unwrap_err();
    assert_eq!(refusal.status, 403);
    let reason = refusal.reason.unwrap();
    assert_eq!(
        reason,
        "denied: x.denied.test matches the tenant's deny rule *.denied.test"
    );
    assert_eq!(refusal.body.trim_end(), reason);
    let record = gw.record_of(refusal.flow.unwrap()).await;
    assert_eq!(
        (record.verdict, record.class.as_str()),
        (Verdict::Deny, "denied_host")
    );
    assert_eq!(record.reason, reason);

    let refusal = http_connect(connect, alpha, "echo.test:25")
        .await
        .unwrap_err();
    assert_eq!(refusal.status, 403);
    assert_eq!(
        refusal.reason.as_deref(),
        Some("denied: port 25 is denied by the gateway's rules")
    );
    let record = gw.record_of(refusal.flow.unwrap()).await;
    assert_eq!(record.class, "denied_port");

    assert_eq!(
        socks5(socks, "alpha", "alpha-secret", "x.denied.test", echo_port)
            .await
            .unwrap_err(),
        0x02,
        "SOCKS5 reply 'not allowed by ruleset'"
    );
    let record = gw.next_record().await;
    assert_eq!(
        (record.front_end.as_str(), record.class.as_str()),
        ("socks5", "denied_host")
    );
    assert_eq!(
        socks5(socks, "alpha", "alpha-secret", "echo.test", 25)
            .await
            .unwrap_err(),
        0x02
    );
    assert_eq!(gw.next_record().await.class, "denied_port");
    // A refusal decided before any DNS query or connect is immediate.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        world.dns.a_queries("x.denied.test"),
        0,
        "denied names are never looked up"
    );

    // No credentials: 407, and bad SOCKS5 credentials: refused at authentication.
    let refusal = http_connect(connect, None, "echo.test:80")
        .await
        .unwrap_err();
    assert_eq!(refusal.status, 407);
    assert!(
        socks5(socks, "alpha", "wrong", "echo.test", echo_port)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn without_a_carve_out_loopback_private_and_metadata_are_denied() {
    let world = World::new().await;
    let mut gw = TestGateway::start(&world.config("")).await;
    let socks = gw.addrs.socks.unwrap();
    let connect = gw.addrs.connect.unwrap();
    let echo_port = world.echo.addr.port();
    let closed = Some(("closed", "closed-secret"));
    let before = world
        .echo
        .accepted
        .load(std::sync::atomic::Ordering::SeqCst);

    let refusal = http_connect(connect, closed, &format!("echo.test:{echo_port}"))
        .await
        .unwrap_err();
    assert_eq!(refusal.status, 403);
    assert_eq!(
        refusal.reason.as_deref(),
        Some("denied: 127.0.0.1 is a loopback address; ask your admin for a carve-out")
    );
    assert_eq!(
        socks5(socks, "closed", "closed-secret", "127.0.0.1", echo_port)
            .await
            .unwrap_err(),
        0x02
    );
    // The same server is reachable for alpha, whose carve-out names it.
    assert!(
        http_connect(
            connect,
            Some(("alpha", "alpha-secret")),
            &format!("echo.test:{echo_port}")
        )
        .await
        .is_ok()
    );

    for (target, expected) in [
        (
            format!("intranet.test:{echo_port}"),
            "denied: 10.0.0.5 is a private address (RFC 1918); ask your admin for a carve-out",
        ),
        (
            "metadata.attacker.test:80".to_owned(),
            "denied: 169.254.169.254 is the cloud metadata address; it can never be reached",
        ),
        (
            "metadata.google.internal:80".to_owned(),
            "denied: metadata.google.internal is the local host or a cloud metadata service; it can never be reached",
        ),
        (
            "169.254.169.254:80".to_owned(),
            "denied: 169.254.169.254 is the cloud metadata address; it can never be reached",
        ),
        (
            format!("[::ffff:127.0.0.1]:{echo_port}"),
            "denied: 127.0.0.1 is a loopback address; ask your admin for a carve-out",
        ),
        (
            format!("0x7f.1:{echo_port}"),
            "denied: \"0x7f.1\" is a numeric host in a non-canonical notation (decimal, octal, hex, short or with leading zeros); write the address as a dotted quad such as 93.184.216.34 or a bracketed IPv6 address",
        ),
        (
            format!("2130706433:{echo_port}"),
            "denied: \"2130706433\" is a numeric host in a non-canonical notation (decimal, octal, hex, short or with leading zeros); write the address as a dotted quad such as 93.184.216.34 or a bracketed IPv6 address",
        ),
    ] {
        let refusal = http_connect(connect, closed, &target).await.unwrap_err();
        assert_eq!(refusal.status, 403, "{target}");
        assert_eq!(refusal.reason.as_deref(), Some(expected), "{target}");
    }
    // The gateway's own listener, even for a tenant with a loopback carve-out on other ports.
    let own = format!("127.0.0.1:{}", gw.addrs.socks.unwrap().port());
    let refusal = http_connect(connect, Some(("alpha", "alpha-secret")), &own)
        .await
        .unwrap_err();
    assert!(
        refusal
            .reason
            .unwrap()
            .contains("this gateway's own listener")
    );
    // ...and a tenant's static address.
    let refusal = http_connect(connect, Some(("alpha", "alpha-secret")), "127.0.0.3:80")
        .await
        .unwrap_err();
    assert!(
        refusal
            .reason
            .unwrap()
            .contains("an address of the egress gateway itself")
    );

    // Only alpha's flow reached the echo server.
    let after = world
        .echo
        .accepted
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after - before, 1);

    // Mixed answers: the allowed address is dialled, the denied one is in the audit record.
    let (mut stream, flow) = http_connect(
        connect,
        Some(("alpha", "alpha-secret")),
        &format!("mixed.test:{echo_port}"),
    )
    .await
    .unwrap();
    assert_eq!(
        greeting(&mut stream).await,
        format!("hello from {}", world.echo.addr)
    );
    drop(stream);
    let record = gw.record_of(flow).await;
    assert_eq!(record.chosen, Some(world.echo.addr));
    assert_eq!(record.denied_answers.len(), 1);
    assert_eq!(record.denied_answers[0].address.to_string(), "10.0.0.5");
}

#[tokio::test]
async fn a_rebinding_name_never_gets_a_connection_to_loopback() {
    let world = World::new().await;
    let gw = TestGateway::start(&world.config("")).await;
    let socks = gw.addrs.socks.unwrap();
    let port = world.public.addr.port();
    let attempts = 12;
    let (mut reached, mut denied) = (0, 0);
    for _ in 0..attempts {
        match socks5(socks, "alpha", "alpha-secret", "rebind.test", port).await {
            Ok((mut stream, _)) => {
                // Every connection that got through reached the address that was checked.
                assert_eq!(
                    greeting(&mut stream).await,
                    format!("hello from {}", world.public.addr)
                );
                reached += 1;
            }
            Err(code) => {
                assert_eq!(code, 0x02);
                denied += 1;
            }
        }
    }
    assert_eq!(reached + denied, attempts);
    assert!(
        world.dns.a_queries("rebind.test") >= attempts,
        "each flow resolved (TTL 0)"
    );
    assert!(
        reached > 0 && denied > 0,
        "the answers flipped: {reached} reached, {denied} denied"
    );
    assert_eq!(
        world
            .loopback_twin
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the loopback server"
    );
}

#[tokio::test]
async fn the_tunnel_carries_flows_for_authenticated_nodes_only() {
    let mut world = World::new().await;
    let mut gw = TestGateway::start(&world.config("")).await;
    let tunnel = gw.addrs.tunnel.unwrap();
    let client_config = |identity| TunnelClientConfig {
        gateway: tunnel,
        server_name: "gateway.airlock".to_owned(),
        gateway_roots: vec![world.certs.ca_der.clone()],
        identity,
    };
    let client = TunnelClient::connect(client_config(world.certs.node_identity("node-1.airlock")))
        .await
        .unwrap();

    let echo_port = world.echo.addr.port();
    let mut flow = client
        .open_flow(Destination::name("echo.test", echo_port), "doc-t", "alpha")
        .await
        .unwrap();
    assert_eq!(
        greeting(&mut flow).await,
        format!("hello from {}", world.echo.addr)
    );
    assert_eq!(
        echo_round_trip(&mut flow, b"through quic").await,
        b"through quic"
    );
    assert_eq!(
        world.echo.peers.recv().await.unwrap().ip().to_string(),
        "127.0.0.2"
    );
    // Half-close: the echo server sees the end and closes its side; the flow then ends.
    flow.shutdown().await.unwrap();
    let mut rest = Vec::new();
    flow.read_to_end(&mut rest).await.unwrap();
    let record = gw.record_of(flow.flow).await;
    assert_eq!(record.front_end, "tunnel");
    assert_eq!(record.node.as_deref(), Some("node-1.airlock"));
    assert_eq!(
        (record.tenant.as_str(), record.document.as_str()),
        ("alpha", "doc-t")
    );

    // A raw address (what a redirect sees) works the same way.
    let mut flow = client
        .open_flow(Destination::addr(world.echo.addr), "doc-t", "alpha")
        .await
        .unwrap();
    assert_eq!(
        greeting(&mut flow).await,
        format!("hello from {}", world.echo.addr)
    );

    // Denied destinations come back with the reason for the cell.
    match client
        .open_flow(
            Destination::name("x.denied.test", echo_port),
            "doc-t",
            "alpha",
        )
        .await
    {
        Err(OpenFlowError::Refused { status, reason, .. }) => {
            assert_eq!(status, ReplyStatus::Denied);
            assert_eq!(
                reason,
                "denied: x.denied.test matches the tenant's deny rule *.denied.test"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The node may speak only for its tenants: the tag is checked against its certificate.
    match client
        .open_flow(Destination::name("echo.test", echo_port), "doc-t", "beta")
        .await
    {
        Err(OpenFlowError::Refused { status, reason, .. }) => {
            assert_eq!(status, ReplyStatus::Denied);
            assert!(
                reason.contains("may not open flows for tenant beta"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A node whose certificate is not from the configured CA gets nothing.
    let stranger = {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node-1.airlock".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        identity_from_pem(&cert.pem(), &key.serialize_pem())
    };
    let outcome = async {
        let client = TunnelClient::connect(client_config(stranger))
            .await
            .map_err(|e| e.to_string())?;
        client
            .open_flow(Destination::name("echo.test", echo_port), "doc-t", "alpha")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(outcome.is_err(), "a stranger's flow opened");
    // A CA-signed node the config does not list is refused as well.
    let unknown =
        TunnelClient::connect(client_config(world.certs.node_identity("node-9.airlock"))).await;
    if let Ok(client) = unknown {
        assert!(
            client
                .open_flow(Destination::name("echo.test", echo_port), "doc-t", "alpha")
                .await
                .is_err()
        );
    }
}

/// A sentence for a cell: more than a word, ending without a dangling separator.
fn assert_sentence(reason: &str) {
    assert!(
        reason.split_whitespace().count() >= 4 && !reason.ends_with([':', ',', ';']),
        "not a sentence: {reason:?}"
    );
}

#[tokio::test]
async fn the_tunnel_answers_name_lookups_with_a_verdict() {
    let mut world = World::new().await;
    let mut gw = TestGateway::start(&world.config("")).await;
    let client = TunnelClient::connect(TunnelClientConfig {
        gateway: gw.addrs.tunnel.unwrap(),
        server_name: "gateway.airlock".to_owned(),
        gateway_roots: vec![world.certs.ca_der.clone()],
        identity: world.certs.node_identity("node-1.airlock"),
    })
    .await
    .unwrap();
    let lookup = |name: &'static str, tenant: &'static str| {
        // Clones share the connection: each lookup runs on its own task, as a node's would.
        let client = client.clone();
        tokio::spawn(async move { client.lookup(name, "doc-t", tenant).await })
    };
    let denied = |answer: LookupAnswer| match answer {
        LookupAnswer::Denied { reason } => {
            assert_sentence(&reason);
            reason
        }
        other => panic!("expected a denial, got {other:?}"),
    };

    // Found: echo.test answers 127.0.0.1, which alpha carves out (for the test servers' ports).
    let found = lookup("echo.test", "alpha");
    let found_upper = lookup("ECHO.test.", "alpha");
    assert_eq!(found.await.unwrap().unwrap(), LookupAnswer::Found);
    assert_eq!(found_upper.await.unwrap().unwrap(), LookupAnswer::Found);

    // Not found: NXDOMAIN from the world's DNS server.
    match lookup("nope.test", "alpha").await.unwrap().unwrap() {
        LookupAnswer::NotFound { reason } => {
            assert_sentence(&reason);
            assert_eq!(
                reason,
                "could not resolve: nope.test does not exist (NXDOMAIN)"
            );
        }
        other => panic!("expected not found, got {other:?}"),
    }

    // A deny glob: the sentence a flow to the name gets, before any DNS query.
    let before = world.dns.a_queries("x.denied.test");
    let reason = denied(lookup("x.denied.test", "alpha").await.unwrap().unwrap());
    assert_eq!(
        reason,
        "denied: x.denied.test matches the tenant's deny rule *.denied.test"
    );
    assert_eq!(world.dns.a_queries("x.denied.test"), before);

    // Names answering only addresses no port of which may be reached.
    let reason = denied(
        lookup("metadata.attacker.test", "alpha")
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(
        reason,
        "denied: 169.254.169.254 is the cloud metadata address; it can never be reached"
    );
    let reason = denied(lookup("intranet.test", "alpha").await.unwrap().unwrap());
    assert_eq!(
        reason,
        "denied: 10.0.0.5 is a private address (RFC 1918); ask your admin for a carve-out"
    );
    // Tenant closed carves out nothing: loopback is denied for it.
    let reason = denied(lookup("echo.test", "closed").await.unwrap().unwrap());
    assert!(
        reason.contains("127.0.0.1 is a loopback address"),
        "{reason}"
    );

    // A tenant the node's certificate may not speak for.
    let reason = denied(lookup("echo.test", "beta").await.unwrap().unwrap());
    assert_eq!(
        reason,
        "denied: node node-1.airlock may not look up names for tenant beta"
    );

    // A numeric name in a non-canonical notation is refused as a flow's host would be.
    let reason = denied(lookup("0x7f.1", "alpha").await.unwrap().unwrap());
    assert!(reason.contains("non-canonical notation"), "{reason}");
    // A dotted quad is an address, not a name: a bad request, not a verdict.
    match lookup("127.0.0.1", "alpha").await.unwrap() {
        Err(LookupError::Unanswered { status, reason }) => {
            assert_eq!(status, LookupStatus::BadRequest);
            assert_sentence(&reason);
        }
        other => panic!("expected a bad request, got {other:?}"),
    }

    // Lookup records wait for their document's window (10 s by default) to close, and flows
    // work beside them on the same connection: the next audit record is this flow's.
    let mut flow = client
        .open_flow(
            Destination::name("echo.test", world.echo.addr.port()),
            "doc-t",
            "alpha",
        )
        .await
        .unwrap();
    assert_eq!(
        greeting(&mut flow).await,
        format!("hello from {}", world.echo.addr)
    );
    assert_eq!(
        world.echo.peers.recv().await.unwrap().ip().to_string(),
        "127.0.0.2"
    );
    flow.shutdown().await.unwrap();
    let mut rest = Vec::new();
    flow.read_to_end(&mut rest).await.unwrap();
    let record = gw.next_record().await;
    assert_eq!(record.flow, flow.flow);
    assert_eq!(record.requested_host, "echo.test");
}

#[tokio::test]
async fn a_reload_changes_new_flows_and_keeps_open_ones() {
    let world = World::new().await;
    let gw = TestGateway::start(&world.config("")).await;
    let socks = gw.addrs.socks.unwrap();
    let echo_port = world.echo.addr.port();
    let (mut open, _) = socks5(socks, "alpha", "alpha-secret", "echo.test", echo_port)
        .await
        .unwrap();
    greeting(&mut open).await;

    // A broken config is refused and the old one stays.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("egress.toml");
    std::fs::write(
        &path,
        "[[tenants]]\nname = \"alpha\"\nallow_hosts = [\"a.*.b\"]\n",
    )
    .unwrap();
    assert!(gw.gateway.reload_from(&path).is_err());
    assert!(
        socks5(socks, "alpha", "alpha-secret", "echo.test", echo_port)
            .await
            .is_ok()
    );

    // Deny echo.test for alpha: new flows are refused...
    std::fs::write(&path, world.config("allow_ports = [1]")).unwrap();
    gw.gateway.reload_from(&path).unwrap();
    assert_eq!(
        socks5(socks, "alpha", "alpha-secret", "echo.test", echo_port)
            .await
            .unwrap_err(),
        0x02
    );
    // ...while the flow opened before keeps working.
    assert_eq!(
        echo_round_trip(&mut open, b"still here").await,
        b"still here"
    );
    let _ = Config::parse(&world.config("")).unwrap();
}

#[tokio::test]
async fn connection_and_byte_limits_hold() {
    let world = World::new().await;
    let extra = "limits = { connections = 1 }\n[[tenants.documents]]\nid = \"doc-a\"\nlimits = { bytes_per_second = 100_000, burst_bytes = 10_000 }";
    let mut gw = TestGateway::start(&world.config(extra)).await;
    let connect = gw.addrs.connect.unwrap();
    let target = format!("echo.test:{}", world.echo.addr.port());
    let alpha = Some(("alpha", "alpha-secret"));

    let (mut first, flow) = http_connect(connect, alpha, &target).await.unwrap();
    greeting(&mut first).await;
    let refusal = http_connect(connect, alpha, &target).await.unwrap_err();
    assert_eq!(refusal.status, 429);
    assert_eq!(
        refusal.reason.as_deref(),
        Some("limited: tenant alpha already has 1 connections open")
    );
    assert_eq!(
        gw.record_of(refusal.flow.unwrap()).await.verdict,
        Verdict::Limited
    );

    // 50 kB each way through a document paced at 100 kB/s (both directions) with a 10 kB
    // burst: at least (100 kB - 10 kB) / 100 kB/s = 0.9 s.
    let started = Instant::now();
    let data = vec![7u8; 50_000];
    assert_eq!(echo_round_trip(&mut first, &data).await, data);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800),
        "paced transfer took only {elapsed:?}"
    );
    drop(first);
    gw.record_of(flow).await;
    // The slot is free again once the first flow's record is out.
    assert!(http_connect(connect, alpha, &target).await.is_ok());
}

impl World {
    /// `config("")` with `sections` (top-level tables such as `[limits]`) appended.
    fn config_with(&self, sections: &str) -> String {
        format!("{}\n{sections}\n", self.config(""))
    }

    async fn node(&self, gw: &TestGateway) -> TunnelClient {
        TunnelClient::connect(TunnelClientConfig {
            gateway: gw.addrs.tunnel.unwrap(),
            server_name: "gateway.airlock".to_owned(),
            gateway_roots: vec![self.certs.ca_der.clone()],
            identity: self.certs.node_identity("node-1.airlock"),
        })
        .await
        .unwrap()
    }
}

impl TestGateway {
    /// Records until their counts add up to `total` (each record stands for `count` flows).
    async fn records_adding_up_to(&mut self, total: u64) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        let mut sum = 0;
        while sum < total {
            let record = self.next_record().await;
            sum += record.count;
            records.push(record);
        }
        assert_eq!(sum, total, "counted exactly once each");
        records
    }
}

#[tokio::test]
async fn a_refusal_flood_yields_a_bounded_number_of_audit_records() {
    let world = World::new().await;
    // Rate limit of new flows off, so every refusal is the metadata one; budget 10 records,
    // the rest gathered over windows of 300 ms.
    let mut gw = TestGateway::start(&world.config_with(
        "[limits]\nnew_flows_per_second = 0\n[audit]\nrefusal_record_burst = 10\nrefusal_records_per_second = 0.5\naggregate_window_ms = 300",
    ))
    .await;
    let client = world.node(&gw).await;
    let metadata: std::net::SocketAddr = "169.254.169.254:80".parse().unwrap();
    const FLOOD: u64 = 2000;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..20 {
        let client = client.clone();
        tasks.spawn(async move {
            for _ in 0..FLOOD / 20 {
                let refused = client
                    .open_flow(Destination::addr(metadata), "doc-flood", "alpha")
                    .await;
                match refused {
                    Err(OpenFlowError::Refused { status, .. }) => {
                        assert_eq!(status, ReplyStatus::Denied, "worker {worker}")
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let flood_took = started.elapsed();
    let records = gw.records_adding_up_to(FLOOD).await;
    let individual = records.iter().filter(|r| r.count == 1).count();
    let aggregated: Vec<&AuditRecord> = records.iter().filter(|r| r.count > 1).collect();
    // The burst, plus what the budget refilled meanwhile, plus one record per window.
    let windows = (flood_took.as_millis() / 300 + 2) as usize;
    assert!(
        individual <= 10 + windows,
        "{individual} individual records"
    );
    assert!(
        !aggregated.is_empty() && aggregated.len() <= windows,
        "{} aggregated records over {flood_took:?}",
        aggregated.len()
    );
    for record in &aggregated {
        assert_eq!(record.document, "doc-flood");
        assert_eq!(record.class, "cloud_metadata");
        assert_eq!(record.classes["cloud_metadata"], record.count);
    }
    assert_eq!(gw.gateway.audit().dropped(), 0);
}

#[tokio::test]
async fn default_connection_limits_and_the_new_flow_rate_hold_without_tenant_limits() {
    let world = World::new().await;
    let mut gw = TestGateway::start(&world.config_with(
        "[limits]\ndocument_connections = 2\nnew_flows_per_second = 1\nnew_flow_burst = 4",
    ))
    .await;
    let connect = gw.addrs.connect.unwrap();
    let target = format!("echo.test:{}", world.echo.addr.port());
    let alpha = Some(("alpha", "alpha-secret"));
    let (mut first, _) = http_connect(connect, alpha, &target).await.unwrap();
    let (mut second, _) = http_connect(connect, alpha, &target).await.unwrap();
    greeting(&mut first).await;
    greeting(&mut second).await;
    let refusal = http_connect(connect, alpha, &target).await.unwrap_err();
    assert_eq!(refusal.status, 429);
    assert_eq!(
        refusal.reason.as_deref(),
        Some("limited: this document already has 2 connections open")
    );
    // Another document of the tenant has a limit of its own.
    assert!(
        http_connect(connect, Some(("beta", "beta-secret")), &target)
            .await
            .is_ok()
    );
    // Past the burst of 4 new flows doc-a is over the rate (1 per second), whatever the
    // verdict would have been (a slow machine may earn a token back meanwhile, hence the loop).
    let mut limited = None;
    for _ in 0..20 {
        let refusal = http_connect(connect, alpha, "169.254.169.254:80")
            .await
            .unwrap_err();
        // Until then: the connection limit (two still open) answers first.
        if refusal.status == 429 && refusal.body.contains("faster than") {
            limited = Some(refusal);
            break;
        }
    }
    let refusal = limited.expect("the new-flow rate limit refused a flow");
    assert!(
        refusal
            .reason
            .as_deref()
            .unwrap()
            .starts_with("limited: this document opens connections faster than 1 per second"),
        "{refusal:?}"
    );
    let record = gw.record_of(refusal.flow.unwrap()).await;
    assert_eq!(record.class, "new_flow_rate");
}

#[tokio::test]
async fn an_idle_flow_is_closed_and_its_record_says_so() {
    let world = World::new().await;
    let mut gw = TestGateway::start(&world.config_with("[limits]\nidle_timeout_ms = 300")).await;
    let target = format!("echo.test:{}", world.echo.addr.port());
    // CONNECT (spliced relay) and the tunnel (copying relay) both time out.
    let (mut stream, flow) = http_connect(
        gw.addrs.connect.unwrap(),
        Some(("alpha", "alpha-secret")),
        &target,
    )
    .await
    .unwrap();
    greeting(&mut stream).await;
    let mut rest = Vec::new();
    let waited = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the gateway closes an idle flow");
    assert!(waited.elapsed() >= Duration::from_millis(250));
    let record = gw.record_of(flow).await;
    assert_eq!(record.ended.as_deref(), Some("idle_timeout"));
    assert_eq!(record.verdict, Verdict::Allow);

    let client = world.node(&gw).await;
    let mut flow = client
        .open_flow(Destination::addr(world.echo.addr), "doc-t", "alpha")
        .await
        .unwrap();
    greeting(&mut flow).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), flow.read_to_end(&mut rest))
        .await
        .expect("the gateway closes an idle tunnel flow");
    assert_eq!(
        gw.record_of(flow.flow).await.ended.as_deref(),
        Some("idle_timeout")
    );
}

#[tokio::test]
async fn a_default_deny_tenant_never_resolves_a_name_off_its_list() {
    let world = World::new().await;
    let mut gw = TestGateway::start(&world.config_with("[audit]\nlookup_window_ms = 200")).await;
    let connect = gw.addrs.connect.unwrap();
    let strict = Some(("strict", "strict-secret"));
    let exfil = "exfil-7e3f9a0c.attacker.test";
    let refusal = http_connect(connect, strict, &format!("{exfil}:80"))
        .await
        .unwrap_err();
    assert_eq!(refusal.status, 403);
    assert_eq!(
        refusal.reason.as_deref(),
        Some(
            "denied: exfil-7e3f9a0c.attacker.test is not on the allow list of tenant strict (default deny); ask your admin to allow it"
        )
    );
    assert_eq!(
        gw.record_of(refusal.flow.unwrap()).await.class,
        "not_allowed"
    );
    // The tunnel's lookups likewise.
    let client = world.node(&gw).await;
    for i in 0..3 {
        let answer = client
            .lookup(&format!("{i}-{exfil}"), "doc-s", "strict")
            .await
            .unwrap();
        assert!(matches!(answer, LookupAnswer::Denied { .. }), "{answer:?}");
    }
    // The name on the list is resolved (and then refused: it answers loopback, which strict
    // has no carve-out for).
    let answer = client.lookup("echo.test", "doc-s", "strict").await.unwrap();
    assert!(
        matches!(&answer, LookupAnswer::Denied { reason } if reason.contains("loopback")),
        "{answer:?}"
    );
    // The allowed name was resolved; the others never reached the resolver.
    assert!(world.dns.questions("echo.test") > 0);
    assert_eq!(world.dns.questions(exfil), 0);
    for i in 0..3 {
        assert_eq!(world.dns.questions(&format!("{i}-{exfil}")), 0);
    }
    // The lookups are audited: one record per distinct name for the window.
    let mut lookups = Vec::new();
    while lookups.len() < 4 {
        let record = gw.next_record().await;
        if record.front_end == "lookup" {
            lookups.push(record);
        }
    }
    lookups.sort_by(|a, b| a.requested_host.cmp(&b.requested_host));
    assert_eq!(lookups[0].requested_host, format!("0-{exfil}"));
    assert_eq!(lookups[0].class, "not_allowed");
    assert_eq!(lookups[0].verdict, Verdict::Deny);
    assert_eq!(lookups[3].requested_host, "echo.test");
    assert_eq!(lookups[3].class, "loopback");
}

#[tokio::test]
async fn a_tunnel_flow_is_attributed_to_the_cell_run_and_user_that_opened_it() {
    let world = World::new().await;
    let mut gw = TestGateway::start(&world.config("")).await;
    let client = world.node(&gw).await;
    let origin = FlowOrigin {
        cell: "cell-3f".to_owned(),
        run: 7,
        user: "ada@example.org".to_owned(),
    };
    let mut flow = client
        .open_flow_from(
            Destination::name("echo.test", world.echo.addr.port()),
            "doc-t",
            "alpha",
            Some(origin.clone()),
        )
        .await
        .unwrap();
    greeting(&mut flow).await;
    flow.shutdown().await.unwrap();
    let mut rest = Vec::new();
    flow.read_to_end(&mut rest).await.unwrap();
    let record = gw.record_of(flow.flow).await;
    assert_eq!(record.cell.as_deref(), Some("cell-3f"));
    assert_eq!(record.run, Some(7));
    assert_eq!(record.user.as_deref(), Some("ada@example.org"));
    // A refusal is attributed too.
    let refused = client
        .open_flow_from(
            Destination::addr("169.254.169.254:80".parse().unwrap()),
            "doc-t",
            "alpha",
            Some(origin),
        )
        .await;
    let Err(OpenFlowError::Refused { flow, .. }) = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!(gw.record_of(flow).await.cell.as_deref(), Some("cell-3f"));
    // Without an origin the record has none.
    let mut flow = client
        .open_flow(Destination::addr(world.echo.addr), "doc-t", "alpha")
        .await
        .unwrap();
    greeting(&mut flow).await;
    drop(flow);
}
