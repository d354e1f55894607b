//! The egress gateway `airlock dev` (and `demo`) runs in-process, so kernels on this machine
//! get the network production kernels get: every TCP connection and DNS query leaves through
//! the gateway's tunnel, under a policy, with an audit record.
//!
//! [`KernelNetwork::start`] decides whether kernels can have a gateway here at all (not with
//! `--no-egress`, not without the jail, not without `ip` and `nft`), makes a throwaway CA with a
//! gateway and a node certificate, writes the gateway's config, serves the tunnel on loopback
//! and hands back the `airlock node` flags that point the region's nodes at it. Publishing the
//! static IP set through the coordinator is `dev`'s, once the coordinator runs.
//!
//! The dev policy is one tenant, `default`, allowed everywhere public: the gateway's fixed rules
//! still refuse loopback, private ranges, the cloud metadata address and this host's own
//! addresses. What it does not do: reload the config when it is edited (it is rewritten on each
//! start), or serve the CONNECT and SOCKS5 front ends.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_coordinator::raft::tls::ClusterCa;
use airlock_egress::audit::{AuditLog, AuditRecord, AuditSink};
use airlock_egress::config::{
    AuditSection, GatewaySection, NodeSection, TenantSection, TunnelSection,
};
use airlock_egress::policy::DefaultVerdict;
use airlock_egress::server::{self, Listeners};
use airlock_egress::{Config, Gateway};
use anyhow::Context as _;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// The tenant dev's documents belong to (the coordinator's default tenant).
pub const TENANT: &str = "default";
/// The DNS name in the gateway's certificate (`airlock node --egress-server-name`).
const GATEWAY_NAME: &str = "egress";
/// The DNS name in the nodes' client certificate: the gateway's `[[nodes]]` entry.
const NODE_NAME: &str = "dev-node";
/// How long open flows may take to finish once dev stops.
const GRACE: Duration = Duration::from_secs(2);

/// What kernels of a dev region have for a network.
#[derive(Debug)]
pub enum KernelNetwork {
    /// Their connections go through this gateway (boxed: it is much larger than the rest).
    Gateway(Box<DevGateway>),
    /// None at all, for this reason.
    None { why: String },
    /// They are not jailed (`--insecure-no-jail`): they use this host's network directly, and
    /// there is no namespace whose traffic a gateway could carry.
    Unjailed,
}

/// Why jailed kernels of a dev region get no network, or `None` if they can have one.
fn why_no_network(no_egress: bool) -> Option<String> {
    if no_egress {
        return Some("--no-egress was given".to_owned());
    }
    airlock_node::egress::netns::missing_tools().map(|missing| format!("this host lacks {missing}"))
}

impl KernelNetwork {
    /// Starts the gateway for a region's kernels, keeping its files in `dir`, unless kernels
    /// are not jailed or cannot have a network here. A gateway that fails to start is reported
    /// as the reason kernels get no network, not as an error: the region works without it.
    pub async fn start(
        dir: &Path,
        region: &str,
        no_egress: bool,
        insecure_no_jail: bool,
    ) -> KernelNetwork {
        if insecure_no_jail {
            return KernelNetwork::Unjailed;
        }
        if let Some(why) = why_no_network(no_egress) {
            return KernelNetwork::None { why };
        }
        match DevGateway::start(dir, region).await {
            Ok(gateway) => KernelNetwork::Gateway(Box::new(gateway)),
            Err(err) => KernelNetwork::None {
                why: format!("the egress gateway did not start: {err:#}"),
            },
        }
    }

    /// Why there is no gateway and what kernels have instead, in one line; `None` with one.
    pub fn without_gateway(&self) -> Option<String> {
        match self {
            KernelNetwork::Gateway(_) => None,
            KernelNetwork::None { why } => {
                Some(format!("OFF ({why}): kernels have no network at all"))
            }
            KernelNetwork::Unjailed => Some(
                "OFF (--insecure-no-jail): kernels are not jailed and use this host's network \
                 directly, with no policy and no audit"
                    .to_owned(),
            ),
        }
    }

    /// The flags that point `airlock node` at the gateway (none without one).
    pub fn node_args(&self) -> Vec<String> {
        match self {
            KernelNetwork::Gateway(gateway) => gateway.node_args(),
            KernelNetwork::None { .. } | KernelNetwork::Unjailed => Vec::new(),
        }
    }

    pub fn gateway(&self) -> Option<&DevGateway> {
        match self {
            KernelNetwork::Gateway(gateway) => Some(gateway),
            KernelNetwork::None { .. } | KernelNetwork::Unjailed => None,
        }
    }

    pub async fn shutdown(self) {
        if let KernelNetwork::Gateway(gateway) = self {
            gateway.shutdown().await;
        }
    }
}

/// The files a dev gateway and its nodes use, all in one folder.
#[derive(Debug, Clone)]
pub struct DevEgressFiles {
    /// The CA that signed both certificates: nodes trust it for the gateway, the gateway for
    /// nodes.
    pub ca: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub config: PathBuf,
    pub audit: PathBuf,
}

impl DevEgressFiles {
    fn in_dir(dir: &Path) -> Self {
        DevEgressFiles {
            ca: dir.join("ca.pem"),
            gateway_cert: dir.join("gateway.pem"),
            gateway_key: dir.join("gateway-key.pem"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node-key.pem"),
            config: dir.join("egress.toml"),
            audit: dir.join("audit.jsonl"),
        }
    }
}

/// The gateway running inside the dev process.
#[derive(Debug)]
pub struct DevGateway {
    /// Where the QUIC tunnel listens (UDP, loopback).
    pub tunnel: SocketAddr,
    pub files: DevEgressFiles,
    /// The tenant's static address: this host's outbound IPv4 address, if it has one.
    pub static_ip: Option<IpAddr>,
    /// The sets as the coordinator published them (filled in by [`DevGateway::publish`]).
    pub published: Option<BTreeMap<String, Vec<IpAddr>>>,
    gateway: Gateway,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<()>,
}

impl DevGateway {
    /// Writes fresh certificates and the config into `dir`, then serves the tunnel on
    /// `127.0.0.1` (any free port).
    pub async fn start(dir: &Path, region: &str) -> anyhow::Result<DevGateway> {
        make_private_dir(dir)?;
        let files = DevEgressFiles::in_dir(dir);
        write_certificates(&files)?;
        let static_ip = outbound_ipv4();
        let text = config_text(&files, region, static_ip)?;
        write_file(&files.config, text.as_bytes(), 0o644)?;
        let mut config = Config::parse(&text).context("the dev gateway's config")?;
        config.listen.tunnel = Some((Ipv4Addr::LOCALHOST, 0).into());
        let audit = AuditLog::start(AuditSink::File(files.audit.clone()))
            .with_context(|| format!("opening the audit log {}", files.audit.display()))?;
        let listeners = Listeners::bind(&config.listen, config.tunnel.as_ref()).await?;
        let addresses = listeners.addresses();
        let tunnel = addresses
            .tunnel
            .context("the tunnel listener has no local address")?;
        let gateway = Gateway::new(config, &addresses.all(), audit)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server::serve(
            gateway.clone(),
            listeners,
            async {
                let _ = stopped.await;
            },
            GRACE,
        ));
        Ok(DevGateway {
            tunnel,
            files,
            static_ip,
            published: None,
            gateway,
            stop,
            serving,
        })
    }

    /// `airlock node` flags for this gateway.
    pub fn node_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--egress-gateway".into(),
            self.tunnel.to_string(),
            "--egress-server-name".into(),
            GATEWAY_NAME.into(),
            "--egress-ca".into(),
            path(&self.files.ca),
            "--egress-cert".into(),
            path(&self.files.node_cert),
            "--egress-key".into(),
            path(&self.files.node_key),
        ]
    }

    /// The static IP sets to publish: the dev tenant's address, if there is one.
    pub fn static_ips(&self) -> BTreeMap<String, Vec<IpAddr>> {
        self.static_ip
            .map(|ip| BTreeMap::from([(TENANT.to_owned(), vec![ip])]))
            .unwrap_or_default()
    }

    /// Publishes [`Self::static_ips`] through the coordinator at `api` (operator token),
    /// retrying while it elects itself leader (up to `patience`).
    pub async fn publish(
        &mut self,
        api: &airlock_client::coordinator::ApiClient,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let sets = self.static_ips();
        if sets.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match api.set_egress_ips(sets.clone()).await {
                Ok(published) => {
                    self.published = Some(published.tenants);
                    return Ok(());
                }
                Err(err) if tokio::time::Instant::now() >= deadline => {
                    return Err(err).context("publishing the egress IPs through the coordinator");
                }
                Err(err) => {
                    tracing::debug!(%err, "the coordinator cannot publish the egress IPs yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Every audit record from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.gateway.audit().subscribe()
    }

    /// Stops accepting flows and lets open ones finish for a moment.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.serving.await;
    }
}

/// This host's outbound IPv4 address: the source address the kernel picks for a public
/// destination. Connecting a UDP socket only chooses a route; it sends nothing.
fn outbound_ipv4() -> Option<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(1, 1, 1, 1), 53)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// The gateway's TOML: one tenant allowed everywhere public, from `static_ip`.
fn config_text(
    files: &DevEgressFiles,
    region: &str,
    static_ip: Option<IpAddr>,
) -> anyhow::Result<String> {
    let config = Config {
        gateway: GatewaySection {
            region: region.to_owned(),
            ..GatewaySection::default()
        },
        audit: AuditSection {
            path: Some(files.audit.clone()),
            ..AuditSection::default()
        },
        tunnel: Some(TunnelSection {
            cert: files.gateway_cert.clone(),
            key: files.gateway_key.clone(),
            client_ca: files.ca.clone(),
        }),
        nodes: vec![NodeSection {
            name: NODE_NAME.to_owned(),
            tenants: vec![TENANT.to_owned()],
        }],
        // Public destinations are allowed; loopback, private ranges, the cloud metadata
        // address and this host's own addresses are refused whatever this says.
        tenants: vec![TenantSection {
            name: TENANT.to_owned(),
            default: DefaultVerdict::Allow,
            static_ips: BTreeMap::from([(region.to_owned(), static_ip.into_iter().collect())]),
            ..TenantSection::default()
        }],
        ..Config::default()
    };
    let body = toml::to_string(&config).context("writing the dev gateway's config as TOML")?;
    Ok(format!(
        "# The egress gateway `airlock dev` runs in-process. Rewritten on each start of dev;\n\
         # docs/EGRESS.md describes every key. The tunnel listens on 127.0.0.1, any free port.\n\
         # Tenant {TENANT:?} may reach public destinations; loopback, private ranges, the cloud\n\
         # metadata address and this host's own addresses are refused whatever this says.\n\n{body}"
    ))
}

/// A fresh CA, the gateway's certificate and the nodes' client certificate.
fn write_certificates(files: &DevEgressFiles) -> anyhow::Result<()> {
    let ca = ClusterCa::generate("airlock dev egress").context("making the egress CA")?;
    write_file(&files.ca, ca.cert_pem().as_bytes(), 0o644)?;
    for (name, cert, key) in [
        (GATEWAY_NAME, &files.gateway_cert, &files.gateway_key),
        (NODE_NAME, &files.node_cert, &files.node_key),
    ] {
        let material = ca
            .issue(name, &[name])
            .with_context(|| format!("making the {name} certificate"))?;
        let chain: String = material
            .cert_chain
            .iter()
            .map(|der| airlock_client::pki::encode("CERTIFICATE", der))
            .collect();
        write_file(cert, chain.as_bytes(), 0o644)?;
        write_file(
            key,
            airlock_client::pki::encode("PRIVATE KEY", material.key.secret_der()).as_bytes(),
            0o600,
        )?;
    }
    Ok(())
}

fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
}

/// Replaces `path` with `contents`, created with `mode` (so a key is never readable by
/// others, not even for a moment).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        // An older file keeps its mode on open: set it again.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed expectation is a failed test

    use super::*;

    #[test]
    fn the_config_parses_with_and_without_a_static_address() {
        let files = DevEgressFiles::in_dir(Path::new("/tmp/dev \"quoted\"/egress"));
        for ip in [None, Some(IpAddr::from([192, 0, 2, 2]))] {
            let text = config_text(&files, "local", ip).unwrap();
            let config = Config::parse(&text).unwrap();
            assert_eq!(config.gateway.region, "local");
            assert_eq!(config.tenants.len(), 1);
            let tenant = &config.tenants[0];
            assert_eq!(tenant.name, TENANT);
            assert_eq!(
                tenant.static_ips.get("local").cloned().unwrap_or_default(),
                ip.into_iter().collect::<Vec<_>>()
            );
            assert_eq!(config.nodes[0].name, NODE_NAME);
            assert_eq!(config.audit.path.as_deref(), Some(files.audit.as_path()));
            assert_eq!(config.tunnel.unwrap().client_ca, files.ca);
        }
    }

    #[tokio::test]
    async fn the_gateway_starts_and_a_node_with_its_certificate_is_let_in() {
        use airlock_egress::tunnel::{Identity, TunnelClient, TunnelClientConfig, read_certs};
        let dir = tempfile::tempdir().unwrap();
        let gateway = DevGateway::start(&dir.path().join("egress"), "local")
            .await
            .unwrap();
        let files = &gateway.files;
        for key in [&files.gateway_key, &files.node_key] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let args = gateway.node_args();
        assert_eq!(args[1], gateway.tunnel.to_string());
        let client = TunnelClient::connect(TunnelClientConfig {
            gateway: gateway.tunnel,
            server_name: GATEWAY_NAME.into(),
            gateway_roots: read_certs(&files.ca).unwrap(),
            identity: Identity::from_pem_files(&files.node_cert, &files.node_key).unwrap(),
        })
        .await
        .unwrap();
        // The metadata address is refused by the gateway itself, whatever the tenant allows.
        let mut audit = gateway.subscribe();
        let refused = client
            .open_flow(
                airlock_egress::tunnel::Destination::addr(([169, 254, 169, 254], 80).into()),
                "doc",
                TENANT,
            )
            .await;
        assert!(refused.is_err());
        let record = audit.recv().await.unwrap();
        assert_eq!(record.requested_host, "169.254.169.254");
        assert_eq!(record.node.as_deref(), Some(NODE_NAME));
        client.close();
        gateway.shutdown().await;
    }
}
