//! The gateway's configuration file (TOML), read in one place into typed values.
//!
//! [`Config::parse`] checks the whole file (unknown keys, bad globs, bad CIDRs, credentials
//! naming unknown tenants) so a reload with a mistake keeps the previous config instead of
//! half-applying. [`Config::policy`] turns it into the sans-IO [`EgressPolicy`]; the identity
//! tables ([`Credentials`], [`NodeDirectory`]) are built beside it. What a reload changes and
//! what it does not is described in `docs/EGRESS.md`: rules, limits, tenants, credentials,
//! nodes and resolver settings change for new flows; listen addresses and the tunnel's TLS
//! files need a restart.
//!
//! ```toml
//! [gateway]
//! region = "eu-west"
//! own_addresses = ["203.0.113.1"]
//!
//! [resolver]
//! upstreams = ["10.0.0.2:53"]
//!
//! [[tenants]]
//! name = "acme"
//! default = "allow"
//! static_ips = { eu-west = ["203.0.113.10"] }
//! deny_hosts = ["*.internal.acme.com"]
//! allow_cidrs = ["10.20.0.0/16", { cidr = "10.0.0.5", ports = [5432] }]
//! limits = { connections = 64, bytes_per_second = 10_000_000 }
//!
//! [[credentials]]
//! username = "acme-reports"
//! password = "s3cret"
//! tenant = "acme"
//! document = "reports"
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::aggregate::{LookupTallyConfig, RefusalBudgetConfig};
use crate::policy::{
    CidrRule, DefaultLimits, DefaultVerdict, DocumentPolicy, EgressPolicy, FlowTags, HostPattern,
    Limits, MixedAnswers, PortSet, RuleError, Rules, TenantPolicy,
};

/// The rule keys of a tenant or document section.
macro_rules! rules_of {
    ($section:expr) => {
        RulesSection {
            allow_hosts: $section.allow_hosts.clone(),
            deny_hosts: $section.deny_hosts.clone(),
            allow_cidrs: $section.allow_cidrs.clone(),
            deny_cidrs: $section.deny_cidrs.clone(),
            allow_ports: $section.allow_ports.clone(),
            deny_ports: $section.deny_ports.clone(),
        }
    };
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("{scope}: {source}")]
    Rule {
        scope: String,
        #[source]
        source: RuleError,
    },
    #[error("tenant {0:?} is configured twice")]
    DuplicateTenant(String),
    #[error("credentials {username:?} name tenant {tenant:?}, which is not configured")]
    CredentialTenant { username: String, tenant: String },
    #[error("credentials {0:?} are configured twice")]
    DuplicateCredential(String),
    #[error("node {node:?} names tenant {tenant:?}, which is not configured")]
    NodeTenant { node: String, tenant: String },
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub listen: ListenSection,
    #[serde(default)]
    pub resolver: ResolverSection,
    #[serde(default)]
    pub audit: AuditSection,
    /// Limits every tenant and document has without configuring any.
    #[serde(default)]
    pub limits: DefaultLimitsSection,
    /// Deny rules for every tenant (smokescreen's global deny list).
    #[serde(default)]
    pub global: GlobalSection,
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
    /// Proxy credentials for the CONNECT and SOCKS5 front ends.
    #[serde(default)]
    pub credentials: Vec<CredentialSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSection>,
    /// Nodes allowed on the tunnel, by certificate name.
    #[serde(default)]
    pub nodes: Vec<NodeSection>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The region this gateway serves: picks each tenant's static egress addresses.
    #[serde(default = "default_region")]
    pub region: String,
    /// This host's addresses; no flow may reach them on any port.
    #[serde(default)]
    pub own_addresses: Vec<IpAddr>,
    /// The rest of the platform (node hosts, coordinators, other gateways), as addresses or
    /// CIDRs; no flow may reach them on any port, whatever a tenant allows.
    #[serde(default)]
    pub platform_cidrs: Vec<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a client has to send its CONNECT head, SOCKS5 request or tunnel frame.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Let tenants without static addresses dial from any address (development only).
    #[serde(default)]
    pub allow_unbound_source: bool,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            region: default_region(),
            own_addresses: Vec::new(),
            platform_cidrs: Vec::new(),
            connect_timeout_ms: default_connect_timeout_ms(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            allow_unbound_source: false,
        }
    }
}

fn default_region() -> String {
    "local".to_owned()
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

/// Where the front ends listen; flags of `airlock egress` override these.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socks: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverSection {
    /// DNS servers asked over UDP (and TCP for truncated answers). Empty: the servers in
    /// `/etc/resolv.conf` (never the OS resolver itself, never the hosts file).
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    #[serde(default = "default_dns_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_dns_attempts")]
    pub attempts: usize,
    /// Answers are cached for their TTL unless this is false.
    #[serde(default = "default_true")]
    pub cache: bool,
}

impl Default for ResolverSection {
    fn default() -> Self {
        ResolverSection {
            upstreams: Vec::new(),
            timeout_ms: default_dns_timeout_ms(),
            attempts: default_dns_attempts(),
            cache: true,
        }
    }
}

fn default_dns_timeout_ms() -> u64 {
    5_000
}

fn default_dns_attempts() -> usize {
    2
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// A file to append JSON lines to; absent or `-`: standard output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Records waiting for the writer at most; past it records are dropped and counted
    /// (`airlock_egress_audit_dropped_total`). Needs a restart.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
    /// Refused flows of one document recorded one by one per second, on average...
    #[serde(default = "default_refusal_rate")]
    pub refusal_records_per_second: f64,
    /// ...and at once after a quiet spell. Past the budget, refusals share one record.
    #[serde(default = "default_refusal_burst")]
    pub refusal_record_burst: u32,
    /// How long refusals past the budget are gathered into one record.
    #[serde(default = "default_aggregate_window_ms")]
    pub aggregate_window_ms: u64,
    /// How long a document's name lookups are gathered (one record per distinct name).
    #[serde(default = "default_lookup_window_ms")]
    pub lookup_window_ms: u64,
    /// Distinct names per document and window with a record of their own; the rest share one.
    #[serde(default = "default_lookup_names")]
    pub lookup_names_per_window: usize,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            path: None,
            queue: default_audit_queue(),
            refusal_records_per_second: default_refusal_rate(),
            refusal_record_burst: default_refusal_burst(),
            aggregate_window_ms: default_aggregate_window_ms(),
            lookup_window_ms: default_lookup_window_ms(),
            lookup_names_per_window: default_lookup_names(),
        }
    }
}

impl AuditSection {
    pub fn refusal_budget(&self) -> RefusalBudgetConfig {
        RefusalBudgetConfig {
            per_second: self.refusal_records_per_second.max(0.0),
            burst: f64::from(self.refusal_record_burst),
            window: Duration::from_millis(self.aggregate_window_ms.max(1)),
        }
    }

    pub fn lookup_tally(&self) -> LookupTallyConfig {
        LookupTallyConfig {
            window: Duration::from_millis(self.lookup_window_ms.max(1)),
            max_names: self.lookup_names_per_window,
        }
    }
}

fn default_audit_queue() -> usize {
    crate::audit::DEFAULT_QUEUE
}

fn default_refusal_rate() -> f64 {
    1.0
}

fn default_refusal_burst() -> u32 {
    20
}

fn default_aggregate_window_ms() -> u64 {
    10_000
}

fn default_lookup_window_ms() -> u64 {
    10_000
}

fn default_lookup_names() -> usize {
    64
}

/// `[limits]`: what every tenant and document gets without configuring anything. `0` turns a
/// limit off.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultLimitsSection {
    #[serde(default = "default_tenant_connections")]
    pub tenant_connections: u32,
    #[serde(default = "default_document_connections")]
    pub document_connections: u32,
    #[serde(default = "default_new_flows_per_second")]
    pub new_flows_per_second: u32,
    #[serde(default = "default_new_flow_burst")]
    pub new_flow_burst: u32,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

impl Default for DefaultLimitsSection {
    fn default() -> Self {
        DefaultLimitsSection {
            tenant_connections: default_tenant_connections(),
            document_connections: default_document_connections(),
            new_flows_per_second: default_new_flows_per_second(),
            new_flow_burst: default_new_flow_burst(),
            idle_timeout_ms: default_idle_timeout_ms(),
        }
    }
}

impl From<DefaultLimitsSection> for DefaultLimits {
    fn from(section: DefaultLimitsSection) -> Self {
        let on = |value: u32| (value > 0).then_some(value);
        DefaultLimits {
            tenant_connections: on(section.tenant_connections),
            document_connections: on(section.document_connections),
            new_flows_per_second: on(section.new_flows_per_second),
            new_flow_burst: section.new_flow_burst.max(1),
            idle_timeout: (section.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(section.idle_timeout_ms)),
        }
    }
}

fn default_tenant_connections() -> u32 {
    DefaultLimits::SAFE.tenant_connections.unwrap_or(0)
}

fn default_document_connections() -> u32 {
    DefaultLimits::SAFE.document_connections.unwrap_or(0)
}

fn default_new_flows_per_second() -> u32 {
    DefaultLimits::SAFE.new_flows_per_second.unwrap_or(0)
}

fn default_new_flow_burst() -> u32 {
    DefaultLimits::SAFE.new_flow_burst
}

fn default_idle_timeout_ms() -> u64 {
    DefaultLimits::SAFE
        .idle_timeout
        .map_or(0, |timeout| timeout.as_millis() as u64)
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSection {
    #[serde(default)]
    pub deny_hosts: Vec<String>,
    #[serde(default)]
    pub deny_cidrs: Vec<CidrEntry>,
    #[serde(default)]
    pub deny_ports: Vec<PortEntry>,
}

/// `"10.0.0.0/8"` or `{ cidr = "10.0.0.5", ports = [5432] }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CidrEntry {
    Plain(String),
    WithPorts { cidr: String, ports: Vec<PortEntry> },
}

/// `443` or `"8000-8100"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortEntry {
    Number(u16),
    Range(String),
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
}

impl From<LimitsSection> for Limits {
    fn from(section: LimitsSection) -> Self {
        Limits {
            connections: section.connections,
            bytes_per_second: section.bytes_per_second,
            burst_bytes: section.burst_bytes,
        }
    }
}

/// Rules shared by tenants and documents (their sections list the same keys).
#[derive(Debug, Clone, Default)]
pub struct RulesSection {
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    pub allow_cidrs: Vec<CidrEntry>,
    pub deny_cidrs: Vec<CidrEntry>,
    pub allow_ports: Vec<PortEntry>,
    pub deny_ports: Vec<PortEntry>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub name: String,
    #[serde(default)]
    pub default: DefaultVerdict,
    /// Static egress addresses per region.
    #[serde(default)]
    pub static_ips: BTreeMap<String, Vec<IpAddr>>,
    #[serde(default)]
    pub mixed_answers: MixedAnswers,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub deny_hosts: Vec<String>,
    #[serde(default)]
    pub allow_cidrs: Vec<CidrEntry>,
    #[serde(default)]
    pub deny_cidrs: Vec<CidrEntry>,
    #[serde(default)]
    pub allow_ports: Vec<PortEntry>,
    #[serde(default)]
    pub deny_ports: Vec<PortEntry>,
    #[serde(default)]
    pub documents: Vec<DocumentSection>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentSection {
    pub id: String,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub deny_hosts: Vec<String>,
    #[serde(default)]
    pub allow_cidrs: Vec<CidrEntry>,
    #[serde(default)]
    pub deny_cidrs: Vec<CidrEntry>,
    #[serde(default)]
    pub allow_ports: Vec<PortEntry>,
    #[serde(default)]
    pub deny_ports: Vec<PortEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSection {
    pub username: String,
    pub password: String,
    pub tenant: String,
    /// The document flows with these credentials count against; `-` if none.
    #[serde(default = "no_document")]
    pub document: String,
}

fn no_document() -> String {
    "-".to_owned()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// The gateway's certificate chain (PEM) that nodes verify.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA (PEM) that signs node client certificates.
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// A DNS name in the node certificate's subject alternative names (or its common name).
    pub name: String,
    /// Tenants this node may open flows for; `"*"` for any (pool nodes serve any tenant).
    pub tenants: Vec<String>,
}

impl Config {
    /// Parses and checks a config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)?;
        // Build everything once so every mistake is found now, not on the first flow.
        config.policy(&[])?;
        config.credentials()?;
        config.nodes()?;
        Ok(config)
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway.connect_timeout_ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway.handshake_timeout_ms)
    }

    /// The policy, given the sockets the gateway listens on (for self-connection checks).
    pub fn policy(&self, listeners: &[SocketAddr]) -> Result<EgressPolicy, ConfigError> {
        let mut policy = EgressPolicy::new(self.gateway.region.clone());
        policy.own_addresses = self.gateway.own_addresses.clone();
        for text in &self.gateway.platform_cidrs {
            let rule =
                CidrRule::parse(text, PortSet::default()).map_err(|source| ConfigError::Rule {
                    scope: "[gateway] platform_cidrs".to_owned(),
                    source,
                })?;
            policy.platform_cidrs.push(rule.net);
        }
        policy.listeners = listeners.to_vec();
        policy.allow_unbound_source = self.gateway.allow_unbound_source;
        policy.defaults = self.limits.into();
        let global = RulesSection {
            deny_hosts: self.global.deny_hosts.clone(),
            deny_cidrs: self.global.deny_cidrs.clone(),
            deny_ports: self.global.deny_ports.clone(),
            ..RulesSection::default()
        };
        policy.global = rules(&global).map_err(|source| ConfigError::Rule {
            scope: "[global]".to_owned(),
            source,
        })?;
        for tenant in &self.tenants {
            let scope = format!("tenant {:?}", tenant.name);
            let mut documents = HashMap::new();
            for document in &tenant.documents {
                let rules = rules(&rules_of!(document)).map_err(|source| ConfigError::Rule {
                    scope: format!("{scope}, document {:?}", document.id),
                    source,
                })?;
                documents.insert(
                    document.id.clone(),
                    DocumentPolicy {
                        rules,
                        limits: document.limits.into(),
                    },
                );
            }
            let built = TenantPolicy {
                name: tenant.name.clone(),
                default: tenant.default,
                rules: rules(&rules_of!(tenant))
                    .map_err(|source| ConfigError::Rule { scope, source })?,
                limits: tenant.limits.into(),
                mixed_answers: tenant.mixed_answers,
                static_ips: tenant
                    .static_ips
                    .get(&self.gateway.region)
                    .cloned()
                    .unwrap_or_default(),
                documents,
            };
            if policy.tenants.insert(tenant.name.clone(), built).is_some() {
                return Err(ConfigError::DuplicateTenant(tenant.name.clone()));
            }
        }
        Ok(policy)
    }

    /// The proxy credentials table.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        let tenants: HashSet<&str> = self.tenants.iter().map(|t| t.name.as_str()).collect();
        let mut table = HashMap::new();
        for entry in &self.credentials {
            if !tenants.contains(entry.tenant.as_str()) {
                return Err(ConfigError::CredentialTenant {
                    username: entry.username.clone(),
                    tenant: entry.tenant.clone(),
                });
            }
            let tags = FlowTags {
                tenant: entry.tenant.clone(),
                document: entry.document.clone(),
            };
            if table
                .insert(entry.username.clone(), (entry.password.clone(), tags))
                .is_some()
            {
                return Err(ConfigError::DuplicateCredential(entry.username.clone()));
            }
        }
        Ok(Credentials { table })
    }

    /// The nodes allowed on the tunnel.
    pub fn nodes(&self) -> Result<NodeDirectory, ConfigError> {
        let tenants: HashSet<&str> = self.tenants.iter().map(|t| t.name.as_str()).collect();
        let mut nodes = HashMap::new();
        for node in &self.nodes {
            for tenant in &node.tenants {
                if tenant != "*" && !tenants.contains(tenant.as_str()) {
                    return Err(ConfigError::NodeTenant {
                        node: node.name.clone(),
                        tenant: tenant.clone(),
                    });
                }
            }
            nodes.insert(node.name.to_ascii_lowercase(), node.tenants.clone());
        }
        Ok(NodeDirectory { nodes })
    }
}

fn rules(section: &RulesSection) -> Result<Rules, RuleError> {
    let patterns = |list: &[String]| {
        list.iter()
            .map(|text| HostPattern::parse(text))
            .collect::<Result<Vec<_>, _>>()
    };
    let cidrs = |list: &[CidrEntry]| {
        list.iter()
            .map(|entry| match entry {
                CidrEntry::Plain(text) => CidrRule::parse(text, PortSet::default()),
                CidrEntry::WithPorts { cidr, ports: list } => CidrRule::parse(cidr, ports(list)?),
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Rules {
        allow_hosts: patterns(&section.allow_hosts)?,
        deny_hosts: patterns(&section.deny_hosts)?,
        allow_cidrs: cidrs(&section.allow_cidrs)?,
        deny_cidrs: cidrs(&section.deny_cidrs)?,
        allow_ports: ports(&section.allow_ports)?,
        deny_ports: ports(&section.deny_ports)?,
    })
}

fn ports(list: &[PortEntry]) -> Result<PortSet, RuleError> {
    let mut set = PortSet::default();
    for entry in list {
        match entry {
            PortEntry::Number(0) => return Err(RuleError::BadPort("0".to_owned())),
            PortEntry::Number(port) => set.push(*port..=*port),
            PortEntry::Range(text) => set.push(PortSet::parse_range(text)?),
        }
    }
    Ok(set)
}

/// Proxy credentials → tenant and document, for CONNECT (`Proxy-Authorization: Basic`) and
/// SOCKS5 (RFC 1929 username/password).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    table: HashMap<String, (String, FlowTags)>,
}

impl Credentials {
    /// The tags of matching credentials. The password comparison takes the same time wherever
    /// the first difference is.
    pub fn check(&self, username: &str, password: &str) -> Option<FlowTags> {
        let (expected, tags) = self.table.get(username)?;
        let same_length = expected.len() == password.len();
        let difference = expected
            .bytes()
            .zip(password.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (same_length && difference == 0).then(|| tags.clone())
    }
}

/// Node certificate names → the tenants the node may speak for.
#[derive(Debug, Clone, Default)]
pub struct NodeDirectory {
    nodes: HashMap<String, Vec<String>>,
}

impl NodeDirectory {
    /// Whether the node named `node` may open flows for `tenant`.
    pub fn may_serve(&self, node: &str, tenant: &str) -> bool {
        self.nodes
            .get(&node.to_ascii_lowercase())
            .is_some_and(|tenants| tenants.iter().any(|t| t == "*" || t == tenant))
    }

    /// Whether the node is known at all.
    pub fn knows(&self, node: &str) -> bool {
        self.nodes.contains_key(&node.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The example of the module documentation, as TOML text.
    fn module_example() -> String {
        include_str!("config.rs")
            .lines()
            .skip_while(|line| !line.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|line| !line.starts_with("//! ```"))
            .map(|line| format!("{}\n", line.trim_start_matches("//!").trim_start()))
            .collect()
    }

    #[test]
    fn a_config_written_out_reads_back_the_same() {
        let config = Config::parse(&module_example()).unwrap();
        let text = toml::to_string(&config).unwrap();
        let again = Config::parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        // Debug shows every field: the two configs are the same value.
        assert_eq!(format!("{config:?}"), format!("{again:?}"));
        assert_eq!(toml::to_string(&again).unwrap(), text);
    }

    #[test]
    fn the_example_in_the_module_doc_parses() {
        let config = Config::parse(&module_example()).unwrap();
        let policy = config.policy(&[]).unwrap();
        let acme = &policy.tenants["acme"];
        assert_eq!(
            acme.static_ips,
            vec!["203.0.113.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(acme.rules.allow_cidrs.len(), 2);
        assert_eq!(acme.limits.connections, Some(64));
        let tags = config
            .credentials()
            .unwrap()
            .check("acme-reports", "s3cret")
            .unwrap();
        assert_eq!(tags.document, "reports");
        assert!(
            config
                .credentials()
                .unwrap()
                .check("acme-reports", "s3cre")
                .is_none()
        );
    }

    #[test]
    fn limits_are_on_without_configuration_and_zero_turns_them_off() {
        let policy = Config::parse("").unwrap().policy(&[]).unwrap();
        assert_eq!(policy.defaults, DefaultLimits::SAFE);
        assert!(policy.defaults.tenant_connections.is_some());
        assert!(policy.defaults.idle_timeout.is_some());
        let off = Config::parse("[limits]\ntenant_connections = 0\nidle_timeout_ms = 0")
            .unwrap()
            .policy(&[])
            .unwrap();
        assert_eq!(off.defaults.tenant_connections, None);
        assert_eq!(off.defaults.idle_timeout, None);
        assert_eq!(off.defaults.document_connections, Some(256));
    }

    #[test]
    fn mistakes_are_found_at_load() {
        assert!(
            Config::parse("[[tenants]]\nname = \"a\"\nallow_hosts = [\"api.*.x.com\"]").is_err()
        );
        assert!(
            Config::parse("[[tenants]]\nname = \"a\"\ndeny_cidrs = [\"10.0.0.0/33\"]").is_err()
        );
        assert!(Config::parse("[gateway]\nregoin = \"x\"").is_err());
        assert!(
            Config::parse(
                "[[credentials]]\nusername = \"u\"\npassword = \"p\"\ntenant = \"nobody\""
            )
            .is_err()
        );
    }
}
