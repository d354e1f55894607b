//! The gateway's own DNS resolver: hickory's in-process resolver pointed at the configured
//! upstream servers (or the servers named in `/etc/resolv.conf`).
//!
//! Never the OS resolver (`getaddrinfo` accepts `0x7f.1` and reads `/etc/hosts`), never the
//! hosts file, never search domains: every name is looked up as a fully qualified name. A flow
//! resolves once; the addresses returned here are the ones the policy classifies and the
//! dialler connects to, so a name whose answers change between queries (DNS rebinding) cannot
//! slip a different address past the check. This module only looks up; classification is the
//! policy's.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, TokioResolver};

use crate::config::ResolverSection;
use crate::host::HostName;

/// Why the resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ResolverSetupError {
    #[error(
        "no upstream DNS servers: set [resolver] upstreams, or give this host an /etc/resolv.conf ({0})"
    )]
    SystemConfig(#[source] hickory_resolver::ResolveError),
}

/// Why a name did not resolve; shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{host} does not exist (NXDOMAIN)")]
    NoSuchHost { host: String },
    #[error("{host} has no A or AAAA records")]
    NoRecords { host: String },
    #[error("the DNS lookup of {host} timed out")]
    Timeout { host: String },
    #[error("the DNS lookup of {host} failed: {detail}")]
    Failed { host: String, detail: String },
}

impl ResolveError {
    /// A short stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ResolveError::NoSuchHost { .. } => "nxdomain",
            ResolveError::NoRecords { .. } => "no_records",
            ResolveError::Timeout { .. } => "timeout",
            ResolveError::Failed { .. } => "other",
        }
    }
}

/// The in-process resolver.
#[derive(Debug, Clone)]
pub struct DnsResolver {
    inner: TokioResolver,
}

impl DnsResolver {
    pub fn new(section: &ResolverSection) -> Result<Self, ResolverSetupError> {
        let servers: Vec<NameServerConfig> = if section.upstreams.is_empty() {
            let (system, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(ResolverSetupError::SystemConfig)?;
            system.name_servers().to_vec()
        } else {
            section
                .upstreams
                .iter()
                .flat_map(|&addr| {
                    [
                        NameServerConfig::new(addr, Protocol::Udp),
                        NameServerConfig::new(addr, Protocol::Tcp),
                    ]
                })
                .collect()
        };
        let config =
            ResolverConfig::from_parts(None, Vec::new(), NameServerConfigGroup::from(servers));
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_millis(section.timeout_ms);
        options.attempts = section.attempts;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.use_hosts_file = ResolveHosts::Never;
        options.ndots = 0;
        if !section.cache {
            options.positive_max_ttl = Some(Duration::ZERO);
            options.negative_max_ttl = Some(Duration::ZERO);
        }
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = options;
        Ok(DnsResolver {
            inner: builder.build(),
        })
    }

    /// The A and AAAA answers for `name`, in the order the server gave them.
    pub async fn lookup(&self, name: &HostName) -> Result<Vec<IpAddr>, ResolveError> {
        let host = name.as_str().to_owned();
        let fqdn = Name::from_ascii(format!("{host}.")).map_err(|error| ResolveError::Failed {
            host: host.clone(),
            detail: error.to_string(),
        })?;
        match self.inner.lookup_ip(fqdn).await {
            Ok(lookup) => {
                let addresses: Vec<IpAddr> = lookup.iter().collect();
                if addresses.is_empty() {
                    Err(ResolveError::NoRecords { host })
                } else {
                    Ok(addresses)
                }
            }
            Err(error) if error.is_nx_domain() => Err(ResolveError::NoSuchHost { host }),
            Err(error) if error.is_no_records_found() => Err(ResolveError::NoRecords { host }),
            Err(error)
                if error
                    .proto()
                    .is_some_and(|proto| matches!(proto.kind(), ProtoErrorKind::Timeout)) =>
            {
                Err(ResolveError::Timeout { host })
            }
            Err(error) => Err(ResolveError::Failed {
                host,
                detail: error.to_string(),
            }),
        }
    }
}
