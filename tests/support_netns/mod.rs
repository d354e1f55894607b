//! A small internet on this machine, built from network namespaces, for the egress end-to-end
//! test: what it is made of, how it is built and torn down, and the real processes (gateway,
//! nodes) that run in it. The test itself (`tests/egress_netns.rs`) says what is checked.
//!
//! ```text
//!   host namespace (the test, airlock node + its jailed kernels)
//!     │ veth  10.231.x.1/30 ─ 10.231.x.2/30
//!   netns `<p>g` (gateway host): airlock egress, tunnel on 10.231.x.2:4433,
//!     │ veth  185.199.108.1/24 + static IPs .10 (alpha) and .11 (beta)
//!   netns `<p>i` (the internet): 93.184.215.1/24 with
//!        .14:80  HTTP, answers with the source address it saw
//!        .15:7000 and .15:25  TCP echo
//!        .53:53  DNS for web/echo/blocked/meta.example
//!        169.254.169.254:80  a "metadata" HTTP server that must never be reached
//! ```
//!
//! Everything is named after the test's process id, so concurrent runs do not meet. Servers in
//! the internet namespace are tasks of the test's own runtime on sockets created inside it (a
//! thread enters the namespace, binds, and hands the sockets back; sockets keep their
//! namespace). [`Netns`] deletes a namespace on drop, which also destroys the veths in it.
//! Not here: anything about how the node carries flows; this module only builds the world and
//! starts processes.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_egress::audit::AuditRecord;
use airlock_test_kit::{Check, dns, eventually};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a process gets to come up, and a record to appear.
pub const WAIT: Duration = Duration::from_secs(60);

pub const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 14);
pub const ECHO: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 15);
pub const DNS: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 53);
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const ECHO_PORT: u16 = 7000;
/// A port the echo host also serves, denied by the tenant's rules.
pub const DENIED_PORT: u16 = 25;
/// The gateway's own address towards the internet.
pub const GW_PUBLIC: Ipv4Addr = Ipv4Addr::new(185, 199, 108, 1);
/// Tenant `alpha`'s static egress address.
pub const ALPHA_IP: Ipv4Addr = Ipv4Addr::new(185, 199, 108, 10);
/// Tenant `beta`'s static egress address.
pub const BETA_IP: Ipv4Addr = Ipv4Addr::new(185, 199, 108, 11);
pub const GATEWAY_NAME: &str = "gateway.airlock";
pub const NODE_NAME: &str = "node-1.airlock";
pub const REGION: &str = "netns-lab";

/// Why this machine cannot build the world, if it cannot (the test then skips).
pub fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespaces and veths need CAP_NET_ADMIN".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Some(format!(
                "`ip netns` does not work here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(err) => return Some(format!("no `ip` (iproute2): {err}")),
    }
    // The node builds its kernels' namespaces over netlink (no `nft` or `ip` program): what
    // it needs is Linux's nf_tables, which this answers by building one.
    if let Some(missing) = airlock_node::egress::netns::missing_support() {
        return Some(format!("the node's jail redirect needs {missing}"));
    }
    None
}

/// `PATH` without any directory that holds `ip` or `nft`: the nodes run with it, to show they
/// need neither program.
pub fn path_without_ip_and_nft() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|dir| !dir.join("ip").exists() && !dir.join("nft").exists())
        .collect();
    std::env::join_paths(kept).unwrap()
}

/// Runs `ip args…`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A named network namespace, deleted on drop (with the veths inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn add(name: String) -> Netns {
        // A leftover of a crashed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// `ip -n <this> args…`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it creates live here.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// One request the HTTP servers answered.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The server's address (which server was reached).
    pub server: SocketAddr,
    /// The source address it saw.
    pub peer: SocketAddr,
    /// The `Host` header.
    pub host: String,
}

/// What the internet's servers saw.
#[derive(Debug, Clone, Default)]
pub struct Sightings {
    pub http: Arc<Mutex<Vec<HttpRequest>>>,
    /// Accepted TCP connections per local address (echo servers and traps).
    pub accepted: Arc<Mutex<HashMap<SocketAddr, Vec<SocketAddr>>>>,
}

impl Sightings {
    pub fn http_requests(&self) -> Vec<HttpRequest> {
        self.http.lock().unwrap().clone()
    }

    /// Source addresses of the connections accepted at `addr`.
    pub fn accepted_at(&self, addr: SocketAddr) -> Vec<SocketAddr> {
        self.accepted
            .lock()
            .unwrap()
            .get(&addr)
            .cloned()
            .unwrap_or_default()
    }

    fn accepted(&self, local: SocketAddr, peer: SocketAddr) {
        self.accepted
            .lock()
            .unwrap()
            .entry(local)
            .or_default()
            .push(peer);
    }
}

/// Answers every HTTP/1.1 request on `listener` with the source address it saw.
pub fn serve_http(listener: std::net::TcpListener, seen: Sightings) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            seen.accepted(server, peer);
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let host = head
                    .lines()
                    .find_map(|line| {
                        let (key, value) = line.split_once(':')?;
                        key.eq_ignore_ascii_case("host")
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default();
                seen.http
                    .lock()
                    .unwrap()
                    .push(HttpRequest { server, peer, host });
                let body = peer.ip().to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
}

/// Echoes every byte back on `listener`'s connections.
pub fn serve_echo(listener: std::net::TcpListener, seen: Sightings) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            seen.accepted(local, peer);
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
}

/// A UDP DNS server answering A queries from `table` (NOERROR with no answer for other types
/// of a known name, NXDOMAIN for unknown names).
pub fn serve_dns(socket: std::net::UdpSocket, table: Vec<(&str, Ipv4Addr)>) {
    socket.set_nonblocking(true).unwrap();
    let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
    let table: HashMap<String, Ipv4Addr> = table
        .into_iter()
        .map(|(name, ip)| (format!("{name}."), ip))
        .collect();
    airlock_test_kit::dns::serve(socket, move |name, _| match table.get(name) {
        Some(ip) => dns::Answer::Addresses {
            ips: vec![IpAddr::V4(*ip)],
            ttl: 60,
        },
        None => dns::Answer::NoSuchName,
    });
}

/// Reads an HTTP head (up to the blank line), one byte at a time so nothing after it is lost.
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 16 * 1024 {
            return None;
        }
    }
    String::from_utf8(head).ok()
}

/// A CA, the gateway's certificate and a node's client certificate, as PEM files.
pub struct Certs {
    pub ca: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

impl Certs {
    pub fn write(dir: &Path) -> Certs {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "airlock netns test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let certs = Certs {
            ca: dir.join("ca.pem"),
            gateway_cert: dir.join("gateway.pem"),
            gateway_key: dir.join("gateway-key.pem"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node-key.pem"),
        };
        std::fs::write(&certs.ca, issuer.pem()).unwrap();
        let (cert, key) = leaf(GATEWAY_NAME);
        std::fs::write(&certs.gateway_cert, cert).unwrap();
        std::fs::write(&certs.gateway_key, key).unwrap();
        let (cert, key) = leaf(NODE_NAME);
        std::fs::write(&certs.node_cert, cert).unwrap();
        std::fs::write(&certs.node_key, key).unwrap();
        certs
    }
}

/// A child process killed on drop, its output in a log file that is printed if the test fails.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("{name} does not start: {err}"));
        Daemon {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready` holds, failing at once if the process exited.
    pub async fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Daemon) -> bool) {
        let waited = format!("{} {what}", self.name);
        eventually(&waited, WAIT, || {
            let check = if ready(self) {
                Check::Ready(())
            } else if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.name,
                    self.output()
                );
            } else {
                Check::NotYet(self.output())
            };
            async move { check }
        })
        .await;
    }
}

impl Drop for Daemon {
    /// SIGTERM, so the process cleans up after itself (a node stops its jailed kernel and
    /// removes its network), then SIGKILL if it has not exited within 10 s.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        airlock_test_kit::exited_within(&mut self.child, Duration::from_secs(10));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.output()
            );
        }
    }
}

/// The two namespaces, their servers, certificates and the running gateway.
pub struct World {
    /// Dropped first: killed before its namespace goes.
    pub gateway: Daemon,
    pub seen: Sightings,
    pub certs: Certs,
    /// The host's end of the host ↔ gateway veth (kernel code must never reach it).
    pub host_addr: Ipv4Addr,
    /// The gateway host's end: the tunnel and CONNECT listen here.
    pub gateway_addr: Ipv4Addr,
    pub tunnel: SocketAddr,
    pub connect: SocketAddr,
    pub audit: PathBuf,
    pub gw: Netns,
    pub inet: Netns,
    pub dir: tempfile::TempDir,
}

impl World {
    /// Builds the namespaces, starts the servers (tasks of the current runtime) and the
    /// gateway, and waits until the gateway listens.
    pub async fn build() -> World {
        let pid = std::process::id();
        let prefix = format!("al{pid}");
        // A /30 of 10.231.0.0/16 of our own.
        let block = (pid % 16384) * 4;
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + block;
        let host_addr = Ipv4Addr::from(base + 1);
        let gateway_addr = Ipv4Addr::from(base + 2);

        let inet = Netns::add(format!("{prefix}i"));
        let gw = Netns::add(format!("{prefix}g"));

        // Host ↔ gateway host.
        let host_end = format!("{prefix}h");
        let gw_host_end = format!("{prefix}hg");
        ip(&[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            &gw_host_end,
            "netns",
            &gw.name,
        ]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_end]);
        ip(&["link", "set", &host_end, "up"]);
        gw.ip(&[
            "addr",
            "add",
            &format!("{gateway_addr}/30"),
            "dev",
            &gw_host_end,
        ]);
        gw.ip(&["link", "set", &gw_host_end, "up"]);

        // Gateway host ↔ internet, on-link routes both ways.
        let gw_inet_end = format!("{prefix}gi");
        let inet_end = format!("{prefix}ig");
        gw.ip(&[
            "link",
            "add",
            &gw_inet_end,
            "type",
            "veth",
            "peer",
            "name",
            &inet_end,
            "netns",
            &inet.name,
        ]);
        for addr in [GW_PUBLIC, ALPHA_IP, BETA_IP] {
            gw.ip(&["addr", "add", &format!("{addr}/24"), "dev", &gw_inet_end]);
        }
        gw.ip(&["link", "set", &gw_inet_end, "up"]);
        gw.ip(&["route", "add", "93.184.215.0/24", "dev", &gw_inet_end]);
        // If the gateway ever dialled the metadata address, it would get there.
        gw.ip(&[
            "route",
            "add",
            &format!("{METADATA}/32"),
            "dev",
            &gw_inet_end,
        ]);
        inet.ip(&["addr", "add", "93.184.215.1/24", "dev", &inet_end]);
        for addr in [WEB, ECHO, DNS] {
            inet.ip(&["addr", "add", &format!("{addr}/24"), "dev", &inet_end]);
        }
        inet.ip(&["addr", "add", &format!("{METADATA}/32"), "dev", &inet_end]);
        inet.ip(&["link", "set", &inet_end, "up"]);
        inet.ip(&["route", "add", "185.199.108.0/24", "dev", &inet_end]);

        // The internet's servers.
        let seen = Sightings::default();
        let (web, metadata, echo, echo_denied, dns) = inet.enter(|| {
            (
                std::net::TcpListener::bind((WEB, 80)).unwrap(),
                std::net::TcpListener::bind((METADATA, 80)).unwrap(),
                std::net::TcpListener::bind((ECHO, ECHO_PORT)).unwrap(),
                std::net::TcpListener::bind((ECHO, DENIED_PORT)).unwrap(),
                std::net::UdpSocket::bind((DNS, 53)).unwrap(),
            )
        });
        serve_http(web, seen.clone());
        serve_http(metadata, seen.clone());
        serve_echo(echo, seen.clone());
        serve_echo(echo_denied, seen.clone());
        serve_dns(
            dns,
            vec![
                ("web.example", WEB),
                ("echo.example", ECHO),
                ("blocked.example", WEB),
                ("meta.example", METADATA),
            ],
        );

        // The gateway.
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::write(dir.path());
        let tunnel = SocketAddr::new(gateway_addr.into(), 4433);
        let connect = SocketAddr::new(gateway_addr.into(), 3128);
        let audit = dir.path().join("audit.jsonl");
        let config = dir.path().join("egress.toml");
        std::fs::write(&config, gateway_config(&certs, gateway_addr)).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &gw.name])
            .arg(env!("CARGO_BIN_EXE_airlock"))
            .arg("egress")
            .arg("--config")
            .arg(&config)
            .args(["--tunnel", &tunnel.to_string()])
            .args(["--connect", &connect.to_string()])
            .arg("--audit")
            .arg(&audit)
            .arg("--no-watch")
            .env("AIRLOCK_LOG", "info");
        let mut gateway = Daemon::spawn("airlock egress", command, dir.path().join("gateway.log"));
        gateway
            .wait_until("listening", |d| d.output().contains("tunnel (QUIC)"))
            .await;
        World {
            gateway,
            seen,
            certs,
            host_addr,
            gateway_addr,
            tunnel,
            connect,
            audit,
            gw,
            inet,
            dir,
        }
    }

    /// Every audit record written so far.
    /// A fresh key for capability tokens, its verifying half written where nodes read it.
    pub fn token_key(&self) -> (ed25519_dalek::SigningKey, PathBuf) {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let file = self.dir.path().join("token-verifying.pem");
        let pem = airlock_protocol::token::verifying_key_to_pem(&key.verifying_key()).unwrap();
        std::fs::write(&file, pem).unwrap();
        (key, file)
    }

    pub fn audit_records(&self) -> Vec<AuditRecord> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("an audit line is a record"))
            .collect()
    }

    /// Waits for the audit record `pick` accepts (records are written when a flow ends).
    pub async fn audit_record(
        &self,
        what: &str,
        pick: impl Fn(&AuditRecord) -> bool,
    ) -> AuditRecord {
        let what = format!("an audit record for {what}");
        eventually(&what, Duration::from_secs(10), || async {
            let records = self.audit_records();
            match records.iter().find(|r| pick(r)) {
                Some(record) => Check::Ready(record.clone()),
                None => Check::NotYet(records),
            }
        })
        .await
    }
}

/// The gateway's config: two tenants with one static IP each, alpha with a host and a port
/// denied, one node certificate allowed to speak for both, CONNECT credentials for the self
/// check.
fn gateway_config(certs: &Certs, gateway_addr: Ipv4Addr) -> String {
    format!(
        r#"
[gateway]
region = "{REGION}"
own_addresses = ["{gateway_addr}", "{GW_PUBLIC}"]
connect_timeout_ms = 5000

[resolver]
upstreams = ["{DNS}:53"]

[tunnel]
cert = "{gateway_cert}"
key = "{gateway_key}"
client_ca = "{ca}"

[[nodes]]
name = "{NODE_NAME}"
tenants = ["alpha", "beta"]

[[tenants]]
name = "alpha"
default = "allow"
static_ips = {{ {REGION} = ["{ALPHA_IP}"] }}
deny_hosts = ["blocked.example", "*.blocked.example"]
deny_ports = [{DENIED_PORT}]

[[tenants]]
name = "beta"
default = "allow"
static_ips = {{ {REGION} = ["{BETA_IP}"] }}

[[credentials]]
username = "alpha-check"
password = "alpha-pass"
tenant = "alpha"
document = "self-check"

[[credentials]]
username = "beta-check"
password = "beta-pass"
tenant = "beta"
document = "self-check"
"#,
        gateway_cert = certs.gateway_cert.display(),
        gateway_key = certs.gateway_key.display(),
        ca = certs.ca.display(),
    )
}

/// An HTTP CONNECT through the gateway's proxy front end: the connected stream, or the refusal
/// status.
pub async fn http_connect(
    proxy: SocketAddr,
    (user, pass): (&str, &str),
    target: &str,
) -> Result<tokio::net::TcpStream, u16> {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\
         Proxy-Authorization: Basic {credentials}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(WAIT, read_head(&mut stream))
        .await
        .expect("the proxy answers")
        .expect("a CONNECT reply head");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    if status == 200 {
        Ok(stream)
    } else {
        Err(status)
    }
}

/// `GET /` for `host` on a connected stream; the response body.
pub async fn http_get(mut stream: tokio::net::TcpStream, host: &str) -> String {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("the response in time")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// A listener on the host's end of the veth, recording whoever connects: kernel code must
/// never reach it.
pub fn host_trap(world: &World) -> SocketAddr {
    let listener = std::net::TcpListener::bind((IpAddr::V4(world.host_addr), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    serve_echo(listener, world.seen.clone());
    addr
}

/// An `airlock node` serving `doc` for `tenant`, jailed, with egress through the world's
/// gateway.
pub struct NodeProcess {
    pub daemon: Daemon,
    pub doc: String,
    pub target: airlock_client::Target,
}

impl NodeProcess {
    /// Starts the node; [`NodeProcess::wait_ready`] waits for its connect file.
    pub fn spawn(world: &World, key_file: &Path, doc: &str, tenant: &str) -> (Daemon, PathBuf) {
        let dir = world.dir.path().join(format!("node-{tenant}"));
        let runtime = dir.join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        let connect = dir.join("node.json");
        let mut command = Command::new(env!("CARGO_BIN_EXE_airlock"));
        command
            .args(["node", "--doc", doc, "--epoch", "1"])
            .arg("--token-public-key")
            .arg(key_file)
            .arg("--store")
            .arg(dir.join("store"))
            .args(["--quic", "127.0.0.1:0", "--no-ws"])
            .arg("--runtime-dir")
            .arg(&runtime)
            .arg("--connect-file")
            .arg(&connect)
            .args(["--egress-gateway", &world.tunnel.to_string()])
            .args(["--egress-server-name", GATEWAY_NAME])
            .arg("--egress-ca")
            .arg(&world.certs.ca)
            .arg("--egress-cert")
            .arg(&world.certs.node_cert)
            .arg("--egress-key")
            .arg(&world.certs.node_key)
            .args(["--tenant", tenant])
            .env("PATH", path_without_ip_and_nft())
            .env("AIRLOCK_LOG", "info");
        let daemon = Daemon::spawn(
            &format!("airlock node ({tenant})"),
            command,
            dir.join("node.log"),
        );
        (daemon, connect)
    }

    /// Waits for the connect file the node writes once it serves.
    pub async fn wait_ready(mut daemon: Daemon, connect: &Path, doc: &str) -> NodeProcess {
        daemon
            .wait_until("serving (connect file)", |_| {
                std::fs::read(connect)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                    .is_some()
            })
            .await;
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(connect).unwrap()).unwrap();
        NodeProcess {
            daemon,
            doc: doc.to_owned(),
            target: airlock_client::Target::Quic {
                addr: info["quic"].as_str().unwrap().parse().unwrap(),
                server_name: "localhost".into(),
                trust: airlock_client::Trust::Fingerprint(
                    info["fingerprint"].as_str().unwrap().into(),
                ),
            },
        }
    }
}
