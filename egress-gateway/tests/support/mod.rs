//! A small internet on loopback for the gateway's tests: a DNS server answering from a table, TCP
//! echo and HTTP servers that report who connected, certificates for the tunnel, a gateway
//! started on ephemeral ports, and minimal SOCKS5 and CONNECT clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_egress::audit::{AuditLog, AuditRecord, AuditSink};
use airlock_egress::{Config, Gateway, ListenAddresses, Listeners};
use airlock_test_kit::dns;
use base64::Engine;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{broadcast, mpsc, oneshot};

/// What the DNS server answers for a name.
#[derive(Debug, Clone)]
pub enum Answer {
    /// These addresses every time.
    Fixed(Vec<IpAddr>),
    /// One address per A query, cycling (DNS rebinding), TTL 0.
    Flip(Vec<IpAddr>),
}

/// A UDP DNS server answering A and AAAA queries from a table (NXDOMAIN otherwise).
pub struct DnsServer {
    pub addr: SocketAddr,
    /// A queries answered per name.
    pub a_queries: Arc<Mutex<HashMap<String, usize>>>,
    /// Every question asked, of any type, per name (known or not).
    pub questions: Arc<Mutex<HashMap<String, usize>>>,
}

impl DnsServer {
    pub async fn start(table: Vec<(&str, Answer)>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let table: HashMap<String, Answer> = table
            .into_iter()
            .map(|(name, answer)| (format!("{}.", name.to_ascii_lowercase()), answer))
            .collect();
        let a_queries = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let counts = Arc::clone(&a_queries);
        let questions = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let asked = Arc::clone(&questions);
        airlock_test_kit::dns::serve(socket, move |name, qtype| {
            *asked.lock().unwrap().entry(name.to_owned()).or_default() += 1;
            let Some(answer) = table.get(name) else {
                return dns::Answer::NoSuchName;
            };
            let (ips, ttl) = match answer {
                Answer::Fixed(ips) => {
                    if qtype == RecordType::A {
                        *counts.lock().unwrap().entry(name.to_owned()).or_default() += 1;
                    }
                    (ips.clone(), 60)
                }
                Answer::Flip(ips) if qtype == RecordType::A => {
                    let mut counts = counts.lock().unwrap();
                    let seen = counts.entry(name.to_owned()).or_default();
                    let ip = ips[*seen % ips.len()];
                    *seen += 1;
                    (vec![ip], 0)
                }
                Answer::Flip(_) => (Vec::new(), 0),
            };
            dns::Answer::Addresses { ips, ttl }
        });
        DnsServer {
            addr,
            a_queries,
            questions,
        }
    }

    /// Questions of any type the server was asked about `name`.
    pub fn questions(&self, name: &str) -> usize {
        let key = format!("{}.", name.to_ascii_lowercase());
        self.questions
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    pub fn a_queries(&self, name: &str) -> usize {
        let key = format!("{}.", name.to_ascii_lowercase());
        self.a_queries
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
}

/// A TCP server that greets with `hello from <its address>\n`, then echoes, and reports the
/// source address of every connection.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub peers: mpsc::UnboundedReceiver<SocketAddr>,
    pub accepted: Arc<AtomicUsize>,
}

impl EchoServer {
    pub async fn start(bind: &str) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, peers) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(peer);
                tokio::spawn(async move {
                    let hello = format!("hello from {addr}\n");
                    if stream.write_all(hello.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        EchoServer {
            addr,
            peers,
            accepted,
        }
    }
}

/// An HTTP/1.1 server answering every request with the client's source IP as the body.
pub async fn start_http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let body = peer.ip().to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A CA, a gateway certificate and node certificates, as PEM files in a temp dir.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Certs {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "airlock test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, issuer.pem()).unwrap();
        let ca_der = issuer.der().clone();
        let mut certs = Certs {
            gateway_cert: dir.path().join("gateway.pem"),
            gateway_key: dir.path().join("gateway.key"),
            dir,
            ca_pem,
            ca_der,
            issuer,
        };
        let (cert, key) = certs.leaf("gateway.airlock");
        std::fs::write(&certs.gateway_cert, cert).unwrap();
        std::fs::write(&certs.gateway_key, key).unwrap();
        certs.gateway_cert = certs.dir.path().join("gateway.pem");
        certs
    }

    /// A certificate for `name` signed by the CA: (cert PEM, key PEM).
    pub fn leaf(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A node identity signed by the CA.
    pub fn node_identity(&self, name: &str) -> airlock_egress::tunnel::Identity {
        let (cert, key) = self.leaf(name);
        identity_from_pem(&cert, &key)
    }
}

pub fn identity_from_pem(cert: &str, key: &str) -> airlock_egress::tunnel::Identity {
    use rustls::pki_types::pem::PemObject;
    airlock_egress::tunnel::Identity {
        chain: vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
        key: rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    }
}

/// A gateway serving on ephemeral loopback ports.
pub struct TestGateway {
    pub gateway: Gateway,
    pub addrs: ListenAddresses,
    pub audit: broadcast::Receiver<AuditRecord>,
    pub audit_path: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl TestGateway {
    /// Starts a gateway with `config` (whose `[listen]` should use port 0).
    pub async fn start(config: &str) -> Self {
        let config = Config::parse(config).unwrap();
        let listeners = Listeners::bind(&config.listen, config.tunnel.as_ref())
            .await
            .unwrap();
        let addrs = listeners.addresses();
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.jsonl");
        let audit = AuditLog::start(AuditSink::File(audit_path.clone())).unwrap();
        let records = audit.subscribe();
        let gateway = Gateway::new(config, &addrs.all(), audit).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(airlock_egress::server::serve(
            gateway.clone(),
            listeners,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        TestGateway {
            gateway,
            addrs,
            audit: records,
            audit_path,
            _dir: dir,
            stop: Some(stop),
        }
    }

    /// The next audit record (waits for it).
    pub async fn next_record(&mut self) -> AuditRecord {
        tokio::time::timeout(Duration::from_secs(10), self.audit.recv())
            .await
            .expect("an audit record within 10 s")
            .unwrap()
    }

    /// Waits for the audit record of flow `flow`.
    pub async fn record_of(&mut self, flow: u64) -> AuditRecord {
        loop {
            let record = self.next_record().await;
            if record.flow == flow {
                return record;
            }
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A SOCKS5 CONNECT: Ok((stream, bound address)) or Err(reply code).
pub async fn socks5(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    host: &str,
    port: u16,
) -> Result<(TcpStream, SocketAddr), u8> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(&[5, 1, 2]).await.unwrap();
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 2], "the gateway asks for username/password");
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(pass.len() as u8);
    auth.extend_from_slice(pass.as_bytes());
    stream.write_all(&auth).await.unwrap();
    let mut status = [0u8; 2];
    stream.read_exact(&mut status).await.unwrap();
    if status[1] != 0 {
        return Err(0xff);
    }
    let mut request = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            request.push(3);
            request.push(host.len() as u8);
            request.extend_from_slice(host.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await.unwrap();
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await.unwrap();
    let ip: IpAddr = match head[3] {
        1 => {
            let mut octets = [0u8; 4];
            stream.read_exact(&mut octets).await.unwrap();
            octets.into()
        }
        4 => {
            let mut octets = [0u8; 16];
            stream.read_exact(&mut octets).await.unwrap();
            octets.into()
        }
        other => panic!("unexpected reply address type {other}"),
    };
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).await.unwrap();
    if head[1] != 0 {
        return Err(head[1]);
    }
    Ok((stream, SocketAddr::new(ip, u16::from_be_bytes(port))))
}

/// A refused CONNECT: status, the reason header and the flow number.
#[derive(Debug)]
pub struct ConnectRefusal {
    pub status: u16,
    pub reason: Option<String>,
    pub flow: Option<u64>,
    pub body: String,
}

/// An HTTP CONNECT: Ok((stream, flow)) or the refusal.
pub async fn http_connect(
    proxy: SocketAddr,
    credentials: Option<(&str, &str)>,
    target: &str,
) -> Result<(TcpStream, u64), ConnectRefusal> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "the gateway closed before ending its response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let flow = header("Airlock-Egress-Flow").and_then(|flow| flow.parse().ok());
    if status == 200 {
        return Ok((stream, flow.unwrap()));
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body).await;
    Err(ConnectRefusal {
        status,
        reason: header("Airlock-Egress-Reason"),
        flow,
        body,
    })
}

/// Reads the echo server's greeting line.
pub async fn greeting(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "the echo server closed before greeting");
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap().trim_end().to_owned()
}

/// Writes `data` and reads the same number of bytes back.
pub async fn echo_round_trip(
    stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
    data: &[u8],
) -> Vec<u8> {
    stream.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).await.unwrap();
    back
}
