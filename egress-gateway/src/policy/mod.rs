//! The egress policy: given who asks (tenant, document), for what (host, port) and what the
//! name resolved to, decide which addresses may be dialled and why, in words a notebook user
//! can read.
//!
//! A sans-IO core: no sockets, no resolver, no clock. The flow driver (`crate::flow`) asks in
//! two steps, because the first can refuse before any DNS traffic leaves:
//!
//! 1. [`EgressPolicy::check_request`]: the tenant exists, the port is allowed, the host name is
//!    not denied (built-in names such as `metadata.google.internal`, then global, tenant and
//!    document deny globs). Deny wins over allow at every level. Under default deny, a name no
//!    allow glob matches is refused here too when no allow CIDR exists that an answer could
//!    fall in: such a name is never resolved (DNS carries data out).
//! 2. [`RequestCheck::select`] over the resolved answers: every address is classified
//!    ([`RequestCheck::classify`]); the flow may dial only the allowed ones, in answer order.
//!
//! Classification of one address, in this order (first match decides):
//! 1. the gateway's own listening sockets (self-connection), its own addresses (configured
//!    `own_addresses` and every tenant's static egress IPs) and the platform's ranges
//!    (`platform_cidrs`: nodes, coordinators): denied, never carved out;
//! 2. special-purpose ranges that can never be carved out: unspecified, cloud metadata,
//!    multicast, broadcast, and IPv6 forms embedding those;
//! 3. deny CIDRs (global, tenant, document): denied — deny wins over any allow;
//! 4. other special-purpose ranges (loopback, RFC 1918, ULA, link-local, CGNAT, reserved,
//!    documentation, NAT64/6to4/Teredo/IPv4-compatible/ISATAP): denied unless an allow CIDR of
//!    the tenant or document contains the address (a carve-out, as smokescreen's
//!    `--allow-range`, optionally for some ports only);
//! 5. an ordinary address: allowed by an allow CIDR, by an allow glob that matched the host, or
//!    by the tenant's default `allow`; otherwise denied (default `deny`);
//! 6. finally the tenant needs a static egress address of the same family in this region.
//!
//! Mixed answers (some allowed, some denied) take the first allowed address, as smokescreen
//! does, and report the denied ones for the audit record; a tenant may set
//! `mixed_answers = "deny"` to refuse such names outright.
//!
//! A name lookup (the tunnel's `NameLookup`, [`EgressPolicy::check_name`]) asks the same two
//! steps without a port: step 1 leaves out the port rules, and step 2 denies an address only
//! if it would be denied on every port (it is tried at one port of each stretch over which no
//! rule's port list changes).

pub mod address;
pub mod limits;
pub mod rules;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::host::{Host, HostError};
pub use address::{Embedding, SpecialRange, canonical, special_range};
pub use limits::{
    ConnectionLedger, DefaultLimits, IdleClock, LimitExceeded, Limits, NewFlowLimiter, TokenBucket,
};
pub use rules::{CidrRule, HostPattern, PortSet, RuleError, Rules};

/// Names denied whatever the rules say: the local host and the cloud metadata services, per
/// cloud. Their addresses are denied as well ([`address::CLOUD_METADATA`]); the names are
/// denied too so that a resolver that answers them from a hosts file or a split-horizon zone
/// cannot help, and because some (Equinix Metal's) are public addresses that answer by the
/// caller's source address.
pub const RESERVED_NAMES: &[&str] = &[
    "localhost",
    "*.localhost",
    // GCP
    "metadata",
    "metadata.google.internal",
    "*.metadata.google.internal",
    "metadata.goog",
    // AWS
    "instance-data",
    "instance-data.ec2.internal",
    // Tencent Cloud
    "metadata.tencentyun.com",
    // Equinix Metal (formerly Packet)
    "metadata.platformequinix.com",
    "metadata.packet.net",
    // IBM Cloud VPC
    "api.metadata.cloud.ibm.com",
];

/// Who a flow belongs to. The tunnel takes the tenant from the node's certificate and config;
/// CONNECT and SOCKS5 from the proxy credentials. Nothing the kernel writes decides it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowTags {
    pub tenant: String,
    pub document: String,
}

/// A tenant's default for destinations no rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultVerdict {
    #[default]
    Allow,
    Deny,
}

/// What to do with a name whose answers are partly allowed and partly denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixedAnswers {
    /// Dial the first allowed address; the denied ones go into the audit record.
    #[default]
    FirstAllowed,
    /// Refuse the name.
    Deny,
}

/// Whose rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Tenant,
    Document,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Global => "the gateway's",
            Scope::Tenant => "the tenant's",
            Scope::Document => "this document's",
        })
    }
}

/// Why a flow (or one resolved address) was refused. `Display` is the sentence shown in the
/// cell, starting with "denied:".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The destination host string was refused by [`crate::host::parse_host`].
    BadHost {
        input: String,
        error: HostError,
    },
    UnknownTenant {
        tenant: String,
    },
    ReservedName {
        host: String,
    },
    DeniedHost {
        host: String,
        pattern: String,
        scope: Scope,
    },
    DeniedPort {
        port: u16,
        scope: Scope,
    },
    PortNotAllowed {
        port: u16,
        allowed: String,
        scope: Scope,
    },
    SelfConnection {
        addr: SocketAddr,
    },
    GatewayAddress {
        ip: IpAddr,
    },
    /// An address of the platform itself (nodes, coordinators): `[gateway] platform_cidrs`.
    PlatformAddress {
        ip: IpAddr,
        rule: String,
    },
    Range {
        ip: IpAddr,
        range: SpecialRange,
    },
    DeniedAddress {
        ip: IpAddr,
        rule: String,
        scope: Scope,
    },
    NotAllowed {
        host: String,
        tenant: String,
    },
    NoSourceAddress {
        ip: IpAddr,
        tenant: String,
        region: String,
    },
    NoAddresses {
        host: String,
    },
    /// `mixed_answers = "deny"` and the name also resolved to a denied address.
    MixedAnswers {
        host: String,
        denied: Box<Denial>,
    },
}

impl Denial {
    /// A short stable name for metrics labels and audit records.
    pub fn class(&self) -> &'static str {
        match self {
            Denial::BadHost { error, .. } => match error {
                HostError::NonCanonicalNumeric { .. } => "non_canonical_numeric",
                _ => "bad_host",
            },
            Denial::UnknownTenant { .. } => "unknown_tenant",
            Denial::ReservedName { .. } => "reserved_name",
            Denial::DeniedHost { .. } => "denied_host",
            Denial::DeniedPort { .. } => "denied_port",
            Denial::PortNotAllowed { .. } => "port_not_allowed",
            Denial::SelfConnection { .. } => "self_connection",
            Denial::GatewayAddress { .. } => "gateway_address",
            Denial::PlatformAddress { .. } => "platform_address",
            Denial::Range { range, .. } => range.label(),
            Denial::DeniedAddress { .. } => "denied_address",
            Denial::NotAllowed { .. } => "not_allowed",
            Denial::NoSourceAddress { .. } => "no_source_address",
            Denial::NoAddresses { .. } => "no_addresses",
            Denial::MixedAnswers { .. } => "mixed_answers",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("denied: ")?;
        match self {
            Denial::BadHost { error, .. } => write!(f, "{error}"),
            Denial::UnknownTenant { tenant } => {
                write!(f, "tenant {tenant:?} is not configured on this gateway")
            }
            Denial::ReservedName { host } => write!(
                f,
                "{host} is the local host or a cloud metadata service; it can never be reached"
            ),
            Denial::DeniedHost {
                host,
                pattern,
                scope,
            } => write!(f, "{host} matches {scope} deny rule {pattern}"),
            Denial::DeniedPort { port, scope } => {
                write!(f, "port {port} is denied by {scope} rules")
            }
            Denial::PortNotAllowed {
                port,
                allowed,
                scope,
            } => write!(
                f,
                "port {port} is not among the ports {scope} rules allow ({allowed})"
            ),
            Denial::SelfConnection { addr } => write!(
                f,
                "{addr} is this gateway's own listener (a connection back into the gateway); it can never be reached"
            ),
            Denial::GatewayAddress { ip } => write!(
                f,
                "{ip} is an address of the egress gateway itself; it can never be reached"
            ),
            Denial::PlatformAddress { ip, rule } => write!(
                f,
                "{ip} is an address of the Airlock platform itself ({rule}); it can never be reached"
            ),
            Denial::Range { ip, range } => {
                write!(f, "{ip} is {range}")?;
                if range.carvable() {
                    f.write_str("; ask your admin for a carve-out")
                } else {
                    f.write_str("; it can never be reached")
                }
            }
            Denial::DeniedAddress { ip, rule, scope } => {
                write!(f, "{ip} is in {scope} deny range {rule}")
            }
            Denial::NotAllowed { host, tenant } => write!(
                f,
                "{host} is not on the allow list of tenant {tenant} (default deny); ask your admin to allow it"
            ),
            Denial::NoSourceAddress { ip, tenant, region } => write!(
                f,
                "tenant {tenant} has no static egress address for {} in region {region}",
                if ip.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
            Denial::NoAddresses { host } => write!(f, "{host} resolved to no address"),
            Denial::MixedAnswers { host, denied } => write!(
                f,
                "{host} also resolves to a denied address ({})",
                denied.to_string().trim_start_matches("denied: ")
            ),
        }
    }
}

impl std::error::Error for Denial {}

/// Why an address was allowed, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A special-purpose address opened by an allow CIDR.
    CarveOut { rule: String, scope: Scope },
    /// An ordinary address inside an allow CIDR.
    Range { rule: String, scope: Scope },
    /// The host matched an allow glob.
    Host { pattern: String, scope: Scope },
    /// The tenant's default is allow and nothing denied it.
    Default,
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowed::CarveOut { rule, scope } => write!(f, "allowed: carve-out {rule} ({scope})"),
            Allowed::Range { rule, scope } => write!(f, "allowed: range {rule} ({scope})"),
            Allowed::Host { pattern, scope } => write!(f, "allowed: host {pattern} ({scope})"),
            Allowed::Default => f.write_str("allowed: tenant default"),
        }
    }
}

/// A document's own rules and limits, on top of its tenant's.
#[derive(Debug, Clone, Default)]
pub struct DocumentPolicy {
    pub rules: Rules,
    pub limits: Limits,
}

/// One tenant's policy in this gateway's region.
#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    pub name: String,
    pub default: DefaultVerdict,
    pub rules: Rules,
    pub limits: Limits,
    pub mixed_answers: MixedAnswers,
    /// The tenant's static egress addresses in this gateway's region; outbound sockets are
    /// bound to one of them.
    pub static_ips: Vec<IpAddr>,
    pub documents: HashMap<String, DocumentPolicy>,
}

/// The whole policy of one gateway, rebuilt from the config on every reload.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    pub region: String,
    pub global: Rules,
    pub tenants: HashMap<String, TenantPolicy>,
    /// Addresses of this host no flow may reach, on any port (its public and internal IPs).
    pub own_addresses: Vec<IpAddr>,
    /// Ranges of the rest of the platform (the node fleet, coordinators, other gateways) no
    /// flow may reach: a kernel must not come back in from the gateway's trusted addresses.
    pub platform_cidrs: Vec<ipnet::IpNet>,
    /// The gateway's listening sockets (self-connection).
    pub listeners: Vec<SocketAddr>,
    /// Whether tenants without static egress addresses may dial from whatever address the
    /// kernel picks (for `airlock dev` on one machine); off in production.
    pub allow_unbound_source: bool,
    /// Limits for tenants and documents that set none themselves, and the ones every flow has.
    pub defaults: DefaultLimits,
    reserved_names: Vec<HostPattern>,
}

/// The outcome of step 1, holding what step 2 needs.
#[derive(Debug)]
pub struct RequestCheck<'p> {
    policy: &'p EgressPolicy,
    pub tenant: &'p TenantPolicy,
    pub document: Option<&'p DocumentPolicy>,
    pub host: Host,
    /// The flow's port; `None` for a name lookup, which asks about every port.
    pub port: Option<u16>,
    /// An allow glob matched the host (for default-deny tenants).
    host_allowed: Option<(String, Scope)>,
}

/// The outcome of step 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Addresses that may be dialled, in answer order (canonical form).
    pub candidates: Vec<(IpAddr, Allowed)>,
    /// Addresses that may not, with why.
    pub denied: Vec<(IpAddr, Denial)>,
    /// `Ok` if the flow may go on to dial `candidates`.
    pub verdict: Result<(), Denial>,
}

/// Where an outbound socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A static egress address of the tenant.
    Static(IpAddr),
    /// Whatever the kernel picks (only with `allow_unbound_source`).
    Unbound,
}

impl EgressPolicy {
    /// An empty policy for `region` (no tenants) with the built-in reserved names.
    pub fn new(region: impl Into<String>) -> Self {
        EgressPolicy {
            region: region.into(),
            reserved_names: RESERVED_NAMES
                .iter()
                .filter_map(|name| HostPattern::parse(name).ok())
                .collect(),
            ..EgressPolicy::default()
        }
    }

    /// Step 1: everything that can be decided before resolving.
    pub fn check_request(
        &self,
        tags: &FlowTags,
        host: &Host,
        port: u16,
    ) -> Result<RequestCheck<'_>, Denial> {
        let (tenant, document) = self.tenant_of(tags)?;
        let scopes = self.scopes(tenant, document);
        for (rules, scope) in &scopes {
            if rules.deny_ports.contains(port) {
                return Err(Denial::DeniedPort {
                    port,
                    scope: *scope,
                });
            }
        }
        for (rules, scope) in &scopes {
            if !rules.allow_ports.is_empty() && !rules.allow_ports.contains(port) {
                return Err(Denial::PortNotAllowed {
                    port,
                    allowed: rules.allow_ports.to_string(),
                    scope: *scope,
                });
            }
        }
        self.check_host(tenant, document, host, Some(port))
    }

    /// Step 1 for a name lookup: as [`EgressPolicy::check_request`] without the port rules.
    /// The check's [`RequestCheck::classify`] then denies an address only if every port of
    /// it is denied.
    pub fn check_name(&self, tags: &FlowTags, host: &Host) -> Result<RequestCheck<'_>, Denial> {
        let (tenant, document) = self.tenant_of(tags)?;
        self.check_host(tenant, document, host, None)
    }

    fn tenant_of(
        &self,
        tags: &FlowTags,
    ) -> Result<(&TenantPolicy, Option<&DocumentPolicy>), Denial> {
        let tenant = self
            .tenants
            .get(&tags.tenant)
            .ok_or_else(|| Denial::UnknownTenant {
                tenant: tags.tenant.clone(),
            })?;
        Ok((tenant, tenant.documents.get(&tags.document)))
    }

    /// The host part of step 1: reserved names, deny globs, then which allow glob matched.
    fn check_host<'p>(
        &'p self,
        tenant: &'p TenantPolicy,
        document: Option<&'p DocumentPolicy>,
        host: &Host,
        port: Option<u16>,
    ) -> Result<RequestCheck<'p>, Denial> {
        let scopes = self.scopes(tenant, document);
        if self.reserved_names.iter().any(|name| name.matches(host)) {
            return Err(Denial::ReservedName {
                host: host.to_string(),
            });
        }
        for (rules, scope) in &scopes {
            if let Some(pattern) = rules.denied_host(host) {
                return Err(Denial::DeniedHost {
                    host: host.to_string(),
                    pattern: pattern.to_string(),
                    scope: *scope,
                });
            }
        }
        let host_allowed = scopes.iter().find_map(|(rules, scope)| {
            rules
                .allowed_host(host)
                .map(|pattern| (pattern.to_string(), *scope))
        });
        // Default deny, no allow glob for the name and no allow CIDR any answer could fall in:
        // whatever the name resolves to, it will be refused. Refuse it now, so that the name
        // never reaches a resolver (a name is a channel out: `<data>.attacker.example`).
        if matches!(host, Host::Name(_))
            && tenant.default == DefaultVerdict::Deny
            && host_allowed.is_none()
            && !scopes
                .iter()
                .any(|(rules, scope)| *scope != Scope::Global && !rules.allow_cidrs.is_empty())
        {
            return Err(Denial::NotAllowed {
                host: host.to_string(),
                tenant: tenant.name.clone(),
            });
        }
        Ok(RequestCheck {
            policy: self,
            tenant,
            document,
            host: host.clone(),
            port,
            host_allowed,
        })
    }

    /// The rule sets that apply, global first.
    fn scopes<'a>(
        &'a self,
        tenant: &'a TenantPolicy,
        document: Option<&'a DocumentPolicy>,
    ) -> Vec<(&'a Rules, Scope)> {
        let mut scopes = vec![
            (&self.global, Scope::Global),
            (&tenant.rules, Scope::Tenant),
        ];
        if let Some(document) = document {
            scopes.push((&document.rules, Scope::Document));
        }
        scopes
    }

    /// Whether `ip:port` is one of the gateway's listening sockets.
    fn is_self(&self, ip: IpAddr, port: u16) -> bool {
        self.listeners.iter().any(|listener| {
            listener.port() == port
                && (canonical(listener.ip()) == ip
                    || (listener.ip().is_unspecified()
                        && (ip.is_loopback() || ip.is_unspecified() || self.is_own(ip))))
        })
    }

    /// Whether `ip` is an address of this host: configured, or a tenant's static address.
    fn is_own(&self, ip: IpAddr) -> bool {
        self.own_addresses.iter().any(|own| canonical(*own) == ip)
            || self
                .tenants
                .values()
                .any(|tenant| tenant.static_ips.iter().any(|own| canonical(*own) == ip))
    }
}

impl RequestCheck<'_> {
    fn scopes(&self) -> Vec<(&Rules, Scope)> {
        self.policy.scopes(self.tenant, self.document)
    }

    /// Step 2 for one address (see the module doc for the order). Without a port (a name
    /// lookup): allowed if some port of it is, otherwise the denial of the lowest port.
    pub fn classify(&self, ip: IpAddr) -> Result<Allowed, Denial> {
        let ip = canonical(ip);
        match self.port {
            Some(port) => self.classify_at(ip, port),
            None => {
                let mut first_denial = None;
                for port in self.port_stretches() {
                    match self.classify_at(ip, port) {
                        Ok(allowed) => return Ok(allowed),
                        Err(denial) => {
                            first_denial.get_or_insert(denial);
                        }
                    }
                }
                // `port_stretches` always yields port 1, so a denial was recorded.
                Err(first_denial.unwrap_or_else(|| Denial::NoAddresses {
                    host: self.host.to_string(),
                }))
            }
        }
    }

    /// One port of each stretch of ports over which [`Self::classify_at`] cannot change for
    /// a fixed address: 1, and every boundary of a CIDR rule's port list or a listener port.
    fn port_stretches(&self) -> Vec<u16> {
        let mut ports = vec![1];
        for (rules, _) in self.scopes() {
            for rule in rules.allow_cidrs.iter().chain(&rules.deny_cidrs) {
                ports.extend(rule.ports.boundaries());
            }
        }
        for listener in &self.policy.listeners {
            ports.push(listener.port());
            ports.extend(listener.port().checked_add(1));
        }
        ports.retain(|port| *port != 0);
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Step 2 for one canonical address at one port.
    fn classify_at(&self, ip: IpAddr, port: u16) -> Result<Allowed, Denial> {
        if self.policy.is_self(ip, port) {
            return Err(Denial::SelfConnection {
                addr: SocketAddr::new(ip, port),
            });
        }
        if self.policy.is_own(ip) {
            return Err(Denial::GatewayAddress { ip });
        }
        if let Some(net) = self
            .policy
            .platform_cidrs
            .iter()
            .find(|net| net.contains(&ip))
        {
            return Err(Denial::PlatformAddress {
                ip,
                rule: net.to_string(),
            });
        }
        let range = special_range(ip);
        if let Some(range) = range.filter(|range| !range.carvable()) {
            return Err(Denial::Range { ip, range });
        }
        let scopes = self.scopes();
        for (rules, scope) in &scopes {
            if let Some(rule) = rules.denied_address(ip, port) {
                return Err(Denial::DeniedAddress {
                    ip,
                    rule: rule.to_string(),
                    scope: *scope,
                });
            }
        }
        // Allow CIDRs of the tenant and document only: a global allow would open every
        // tenant at once.
        let allowed_range = scopes
            .iter()
            .filter(|(_, scope)| *scope != Scope::Global)
            .find_map(|(rules, scope)| {
                rules
                    .allowed_address(ip, port)
                    .map(|rule| (rule.to_string(), *scope))
            });
        let allowed = match (range, allowed_range) {
            (Some(range), None) => return Err(Denial::Range { ip, range }),
            (Some(_), Some((rule, scope))) => Allowed::CarveOut { rule, scope },
            (None, Some((rule, scope))) => Allowed::Range { rule, scope },
            (None, None) => match (&self.host_allowed, self.tenant.default) {
                (Some((pattern, scope)), _) => Allowed::Host {
                    pattern: pattern.clone(),
                    scope: *scope,
                },
                (None, DefaultVerdict::Allow) => Allowed::Default,
                (None, DefaultVerdict::Deny) => {
                    return Err(Denial::NotAllowed {
                        host: self.host.to_string(),
                        tenant: self.tenant.name.clone(),
                    });
                }
            },
        };
        if self.source_for(ip, 0).is_none() {
            return Err(Denial::NoSourceAddress {
                ip,
                tenant: self.tenant.name.clone(),
                region: self.policy.region.clone(),
            });
        }
        Ok(allowed)
    }

    /// Step 2: classify every answer and decide.
    pub fn select(&self, answers: &[IpAddr]) -> Selection {
        let mut candidates = Vec::new();
        let mut denied = Vec::new();
        for &ip in answers {
            let ip = canonical(ip);
            if candidates.iter().any(|(seen, _)| *seen == ip)
                || denied.iter().any(|(seen, _)| *seen == ip)
            {
                continue;
            }
            match self.classify(ip) {
                Ok(allowed) => candidates.push((ip, allowed)),
                Err(denial) => denied.push((ip, denial)),
            }
        }
        let verdict = match (candidates.is_empty(), denied.first()) {
            (true, Some((_, denial))) => Err(denial.clone()),
            (true, None) => Err(Denial::NoAddresses {
                host: self.host.to_string(),
            }),
            (false, Some((_, denial))) if self.tenant.mixed_answers == MixedAnswers::Deny => {
                Err(Denial::MixedAnswers {
                    host: self.host.to_string(),
                    denied: Box::new(denial.clone()),
                })
            }
            (false, _) => Ok(()),
        };
        Selection {
            candidates,
            denied,
            verdict,
        }
    }

    /// The source address for a flow to `ip`: one of the tenant's static addresses of the same
    /// family, spread by `seq` (the flow number); `None` if the tenant has none.
    pub fn source_for(&self, ip: IpAddr, seq: u64) -> Option<Source> {
        let family: Vec<IpAddr> = self
            .tenant
            .static_ips
            .iter()
            .copied()
            .filter(|source| source.is_ipv4() == ip.is_ipv4())
            .collect();
        if family.is_empty() {
            return (self.tenant.static_ips.is_empty() && self.policy.allow_unbound_source)
                .then_some(Source::Unbound);
        }
        let index = (seq % family.len() as u64) as usize;
        family.get(index).copied().map(Source::Static)
    }

    /// The connection limits of the tenant and of the document: their own, else the
    /// gateway's defaults.
    pub fn connection_limits(&self) -> (Option<u32>, Option<u32>) {
        let defaults = &self.policy.defaults;
        (
            self.tenant
                .limits
                .connections
                .or(defaults.tenant_connections),
            self.document
                .and_then(|document| document.limits.connections)
                .or(defaults.document_connections),
        )
    }
}
