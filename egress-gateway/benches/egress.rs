//! Egress benchmark: what the gateway adds to a connection, beside squid on the same machine in
//! the same run (DESIGN §8: p99 ≤ 1 ms added connect latency; ≥ 90 % of a direct connection's
//! bulk throughput).
//!
//! Everything runs on loopback: a TCP server, the gateway's CONNECT and SOCKS5 front ends
//! (tenant `bench`, carve-out for the server, static source 127.0.0.2), its QUIC tunnel (mutual
//! TLS with a CA, gateway and node certificates made here; node `node.bench` may serve tenant
//! `bench`) and squid as a CONNECT proxy with `tcp_outgoing_address 127.0.0.2`. The tunnel is
//! the path kernels use: a node connects one [`TunnelClient`] once, so the QUIC handshake is not
//! part of any sample, and each redirected connection is one `open_flow`. Measures:
//! - connect: TCP connect + proxy handshake + a 1-byte echo per connection (for the tunnel:
//!   `open_flow`, which waits for the gateway's TCP connect, + the same echo); "added" is the
//!   percentile minus the direct connection's same percentile;
//! - bulk: one connection (one flow) downloading `EGRESS_BENCH_MB` MiB from the server, as MB/s
//!   and as a share of the direct connection.
//!
//! The node's side of the tunnel (QUIC and TLS in user space) runs in this process beside the
//! gateway, on the same two worker threads, so the tunnel's figures include work a real node
//! does on its own machine.
//!
//! Run with `cargo bench -p airlock-egress --bench egress`. If squid is not installed the bench
//! tries `apt-get install -y squid`, and if that fails prints why and measures Airlock alone.
//! `EGRESS_BENCH_CONNECTS` and `EGRESS_BENCH_MB` change the sample sizes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_egress::audit::{AuditLog, AuditSink};
use airlock_egress::tunnel::{Destination, Identity, TunnelClient, TunnelClientConfig};
use airlock_egress::{Config, Gateway, Listeners};
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUFFER: usize = 256 * 1024;

/// A server: the first byte says what to do. `e`: echo one byte. `b` + u64: send that many
/// bytes, then close.
async fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut op = [0u8; 1];
                if stream.read_exact(&mut op).await.is_err() {
                    return;
                }
                match op[0] {
                    b'e' => {
                        let _ = stream.write_all(b"e").await;
                        let mut rest = [0u8; 1];
                        let _ = stream.read(&mut rest).await;
                    }
                    b'b' => {
                        let mut len = [0u8; 8];
                        if stream.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut left = u64::from_be_bytes(len);
                        let chunk = vec![0x5au8; BUFFER];
                        while left > 0 {
                            let n = left.min(BUFFER as u64) as usize;
                            if stream.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                        let _ = stream.shutdown().await;
                    }
                    _ => {}
                }
            });
        }
    });
    addr
}

#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    Direct,
    AirlockConnect(SocketAddr),
    AirlockSocks(SocketAddr),
    /// A node's connection to the gateway, connected once before any sample.
    AirlockTunnel(&'a TunnelClient),
    SquidConnect(SocketAddr),
}

impl Route<'_> {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::AirlockConnect(_) => "airlock CONNECT",
            Route::AirlockSocks(_) => "airlock SOCKS5",
            Route::AirlockTunnel(_) => "airlock tunnel",
            Route::SquidConnect(_) => "squid CONNECT",
        }
    }
}

/// A connection through any route: a TCP stream or a tunnel flow.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn http_connect(proxy: SocketAddr, target: SocketAddr, auth: bool) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if auth {
        let token = base64::engine::general_purpose::STANDARD.encode("bench:bench");
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"),
        "proxy refused: {}",
        String::from_utf8_lossy(&head)
    );
    stream
}

async fn socks5(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut hello = vec![5, 1, 2, 1, 5];
    hello.extend_from_slice(b"bench");
    hello.push(5);
    hello.extend_from_slice(b"bench");
    let std::net::IpAddr::V4(ip) = target.ip() else {
        unreachable!()
    };
    hello.extend_from_slice(&[5, 1, 0, 1]);
    hello.extend_from_slice(&ip.octets());
    hello.extend_from_slice(&target.port().to_be_bytes());
    // Pipelined: greeting, login and request in one write, as fast clients do.
    stream.write_all(&hello).await.unwrap();
    let mut reply = [0u8; 2 + 2 + 10];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[5], 0, "SOCKS5 refused");
    stream
}

async fn open(route: Route<'_>, target: SocketAddr) -> Box<dyn Stream> {
    match route {
        Route::Direct => {
            let stream = TcpStream::connect(target).await.unwrap();
            stream.set_nodelay(true).unwrap();
            Box::new(stream)
        }
        Route::AirlockConnect(proxy) => Box::new(http_connect(proxy, target, true).await),
        Route::AirlockSocks(proxy) => Box::new(socks5(proxy, target).await),
        Route::AirlockTunnel(client) => Box::new(
            client
                .open_flow(Destination::addr(target), "bench", "bench")
                .await
                .unwrap(),
        ),
        Route::SquidConnect(proxy) => Box::new(http_connect(proxy, target, false).await),
    }
}

/// Connect + handshake + 1-byte echo, `n` times: sorted latencies.
async fn connect_latencies(route: Route<'_>, target: SocketAddr, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut stream = open(route, target).await;
        stream.write_all(b"e").await.unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// MB/s of one download of `bytes`.
async fn bulk(route: Route<'_>, target: SocketAddr, bytes: u64) -> f64 {
    let mut stream = open(route, target).await;
    let mut request = vec![b'b'];
    request.extend_from_slice(&bytes.to_be_bytes());
    let started = Instant::now();
    stream.write_all(&request).await.unwrap();
    let mut buf = vec![0u8; BUFFER];
    let mut got = 0u64;
    while got < bytes {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended after {got} of {bytes} bytes");
        got += n as u64;
    }
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

struct Squid {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_squid() -> Result<String, String> {
    for path in ["/usr/sbin/squid", "/usr/bin/squid", "/usr/local/sbin/squid"] {
        if Path::new(path).exists() {
            return Ok(path.to_owned());
        }
    }
    eprintln!("squid is not installed; trying apt-get install -y squid ...");
    let status = Command::new("apt-get")
        .args(["install", "-y", "squid"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() && Path::new("/usr/sbin/squid").exists() => {
            Ok("/usr/sbin/squid".to_owned())
        }
        Ok(status) => Err(format!("apt-get install -y squid failed ({status})")),
        Err(error) => Err(format!("could not run apt-get: {error}")),
    }
}

async fn start_squid() -> Result<Squid, String> {
    let binary = find_squid()?;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        probe.local_addr().map_err(|e| e.to_string())?.port()
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path();
    // Squid drops to an unprivileged user for its workers: let it write its files here.
    let _ = Command::new("chmod").arg("777").arg(path).status();
    let config = format!(
        "http_port 127.0.0.1:{port}\n\
         acl local src 127.0.0.0/8\n\
         acl CONNECT method CONNECT\n\
         http_access allow local\n\
         http_access deny all\n\
         cache deny all\n\
         access_log none\n\
         cache_log {dir}/cache.log\n\
         pid_filename {dir}/squid.pid\n\
         coredump_dir {dir}\n\
         tcp_outgoing_address 127.0.0.2\n\
         shutdown_lifetime 0 seconds\n\
         workers 1\n",
        dir = path.display()
    );
    let conf = path.join("squid.conf");
    std::fs::write(&conf, config).map_err(|e| e.to_string())?;
    let child = Command::new(&binary)
        .args(["-N", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start {binary}: {e}"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let squid = Squid {
        child,
        addr,
        _dir: dir,
    };
    // Wait for its port (squid has no readiness signal).
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            let log =
                std::fs::read_to_string(path_of(&squid).join("cache.log")).unwrap_or_default();
            return Err(format!(
                "squid did not listen within 20 s; cache.log:\n{log}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(squid)
}

fn path_of(squid: &Squid) -> &Path {
    squid._dir.path()
}

/// The tunnel's certificates: a CA signing the gateway's certificate (PEM files in `dir`, which
/// `[tunnel]` names) and the node's client certificate.
struct TunnelPki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    node: Identity,
}

const GATEWAY_NAME: &str = "gateway.bench";
const NODE_NAME: &str = "node.bench";

impl TunnelPki {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "airlock bench CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let leaf = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = leaf(GATEWAY_NAME);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("gateway.pem"), cert).unwrap();
        std::fs::write(dir.path().join("gateway.key"), key).unwrap();
        let (cert, key) = leaf(NODE_NAME);
        let node = Identity {
            chain: vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            key: PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        };
        TunnelPki {
            ca: ca.der().clone(),
            dir,
            node,
        }
    }
}

/// The gateway's front ends.
struct GatewayAddrs {
    connect: SocketAddr,
    socks: SocketAddr,
    tunnel: SocketAddr,
}

async fn start_gateway(target: SocketAddr, pki: &TunnelPki) -> (Gateway, GatewayAddrs) {
    let text = format!(
        r#"
[gateway]
region = "bench"
[listen]
connect = "127.0.0.1:0"
socks = "127.0.0.1:0"
tunnel = "127.0.0.1:0"
[resolver]
upstreams = ["127.0.0.1:53"]
# The data path is measured, not the limiter: the safe default new-flow rate would refuse the
# latency samples, which open flows back to back.
[limits]
new_flows_per_second = 0
document_connections = 0
tenant_connections = 0
[tunnel]
cert = "{dir}/gateway.pem"
key = "{dir}/gateway.key"
client_ca = "{dir}/ca.pem"
[[nodes]]
name = "{NODE_NAME}"
tenants = ["bench"]
[[tenants]]
name = "bench"
static_ips = {{ bench = ["127.0.0.2"] }}
allow_cidrs = [{{ cidr = "127.0.0.1", ports = [{port}] }}]
[[credentials]]
username = "bench"
password = "bench"
tenant = "bench"
document = "bench"
"#,
        dir = pki.dir.path().display(),
        port = target.port()
    );
    let config = Config::parse(&text).unwrap();
    let listeners = Listeners::bind(&config.listen, config.tunnel.as_ref())
        .await
        .unwrap();
    let addrs = listeners.addresses();
    let audit = AuditLog::start(AuditSink::Discard).unwrap();
    let gateway = Gateway::new(config, &addrs.all(), audit).unwrap();
    tokio::spawn(airlock_egress::server::serve(
        gateway.clone(),
        listeners,
        std::future::pending(),
        Duration::ZERO,
    ));
    let addrs = GatewayAddrs {
        connect: addrs.connect.unwrap(),
        socks: addrs.socks.unwrap(),
        tunnel: addrs.tunnel.unwrap(),
    };
    (gateway, addrs)
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    run().await;
}

async fn run() {
    let connects = env_number("EGRESS_BENCH_CONNECTS", 2000);
    let megabytes = env_number("EGRESS_BENCH_MB", 512) as u64;
    let target = start_server().await;
    let pki = TunnelPki::new();
    let (_gateway, front_ends) = start_gateway(target, &pki).await;
    // As a node does: one connection, made before any flow.
    let tunnel = TunnelClient::connect(TunnelClientConfig {
        gateway: front_ends.tunnel,
        server_name: GATEWAY_NAME.to_owned(),
        gateway_roots: vec![pki.ca.clone()],
        identity: pki.node.clone(),
    })
    .await
    .unwrap();
    let squid = match start_squid().await {
        Ok(squid) => Some(squid),
        Err(why) => {
            println!("squid: not measured: {why}");
            None
        }
    };
    let mut routes = vec![
        Route::Direct,
        Route::AirlockConnect(front_ends.connect),
        Route::AirlockSocks(front_ends.socks),
        Route::AirlockTunnel(&tunnel),
    ];
    if let Some(squid) = &squid {
        routes.push(Route::SquidConnect(squid.addr));
    }
    // Warm up every route (first connections pay for lazy setup).
    for &route in &routes {
        connect_latencies(route, target, 50).await;
        bulk(route, target, 8 << 20).await;
    }

    // Routes take turns, connection by connection and download by download, so load from
    // elsewhere on the machine falls on all of them alike.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(connects); routes.len()];
    for _ in 0..connects {
        for (i, &route) in routes.iter().enumerate() {
            samples[i].extend(connect_latencies(route, target, 1).await);
        }
    }
    println!(
        "\negress connect latency: TCP connect + proxy handshake + 1-byte echo (tunnel: open_flow + echo), {connects} connections per route, interleaved, loopback"
    );
    println!(
        "{:<18} {:>10} {:>10} {:>14} {:>14}",
        "route", "p50 µs", "p99 µs", "added p50 µs", "added p99 µs"
    );
    let mut results = Vec::new();
    let mut direct = (0.0, 0.0);
    for (i, &route) in routes.iter().enumerate() {
        samples[i].sort();
        let p50 = micros(percentile(&samples[i], 0.5));
        let p99 = micros(percentile(&samples[i], 0.99));
        if i == 0 {
            direct = (p50, p99);
        }
        let (added50, added99) = (p50 - direct.0, p99 - direct.1);
        println!(
            "{:<18} {:>10.1} {:>10.1} {:>14.1} {:>14.1}",
            route.name(),
            p50,
            p99,
            added50,
            added99
        );
        results.push((route, added99));
    }

    let bytes = megabytes << 20;
    let rounds = 3;
    let mut rates = vec![0.0f64; routes.len()];
    for _ in 0..rounds {
        for (i, &route) in routes.iter().enumerate() {
            rates[i] = rates[i].max(bulk(route, target, bytes).await);
        }
    }
    println!(
        "\negress bulk throughput: one connection downloading {megabytes} MiB, best of {rounds}, interleaved"
    );
    println!("{:<18} {:>10} {:>16}", "route", "MB/s", "share of direct");
    let mut shares = Vec::new();
    for (i, &route) in routes.iter().enumerate() {
        let share = rates[i] / rates[0] * 100.0;
        println!("{:<18} {:>10.0} {:>15.1}%", route.name(), rates[i], share);
        shares.push((route, share));
    }

    println!("\ntargets (DESIGN §8): added connect p99 ≤ 1000 µs; bulk ≥ 90 % of direct");
    for ((route, added99), (_, share)) in results.iter().zip(&shares).skip(1) {
        let latency_ok = *added99 <= 1000.0;
        let share_ok = *share >= 90.0;
        println!(
            "{:<18} added p99 {:>7.1} µs {}   bulk {:>5.1}% {}",
            route.name(),
            added99,
            if latency_ok { "ok" } else { "MISSED" },
            share,
            if share_ok { "ok" } else { "MISSED" }
        );
    }
    tunnel.close();
    drop(squid);
}
