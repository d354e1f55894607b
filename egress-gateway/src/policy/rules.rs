//! The pieces of a rule set: host patterns, CIDR ranges (optionally per port) and port sets,
//! each parsed from the operator's config text into a form that can only match one way.
//!
//! Host patterns follow smokescreen's restricted glob syntax: an exact host, or `*.` followed
//! by a name, meaning any name strictly below it (`*.example.com` matches `a.example.com` and
//! `a.b.example.com`, not `example.com`). Nothing else: `api.*.example.com`, `*example.com` and
//! `example.*` are refused when the config is read, because their meaning is easy to get
//! wrong. Patterns are compared with canonical names ([`crate::host`]), so they are written in
//! punycode and lowercase.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;

use crate::host::{self, Host, HostName};

/// Why a rule in the config cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "host pattern {0:?} is not allowed: write an exact host or `*.` followed by a name (no other wildcards)"
    )]
    BadPattern(String),
    #[error("host pattern {pattern:?} is not a canonical host name: {source}")]
    PatternHost {
        pattern: String,
        #[source]
        source: host::HostError,
    },
    #[error("{0:?} is not a CIDR range such as 10.0.0.0/8 or 2001:db8::/32")]
    BadCidr(String),
    #[error("{0:?} is not a port or port range such as 443 or 8000-8100")]
    BadPort(String),
}

/// A host pattern: an exact host or every name below a suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(Host),
    /// `*.example.com`, stored as `.example.com`.
    Below(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::BadPattern(text.to_owned());
        if let Some(rest) = text.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(bad());
            }
            return match host::parse_host(rest) {
                Ok(Host::Name(name)) => Ok(HostPattern::Below(format!(".{name}"))),
                Ok(Host::Ip(_)) => Err(bad()),
                Err(source) => Err(RuleError::PatternHost {
                    pattern: text.to_owned(),
                    source,
                }),
            };
        }
        if text.contains('*') {
            return Err(bad());
        }
        host::parse_host(text)
            .map(HostPattern::Exact)
            .map_err(|source| RuleError::PatternHost {
                pattern: text.to_owned(),
                source,
            })
    }

    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(exact), host) => exact == host,
            (HostPattern::Below(suffix), Host::Name(name)) => name.as_str().ends_with(suffix),
            (HostPattern::Below(_), Host::Ip(_)) => false,
        }
    }

    /// Whether a name matches (shortcut for names).
    pub fn matches_name(&self, name: &HostName) -> bool {
        self.matches(&Host::Name(name.clone()))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => write!(f, "{host}"),
            HostPattern::Below(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A set of ports; empty means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(Vec<RangeInclusive<u16>>);

impl PortSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|range| range.contains(&port))
    }

    pub fn push(&mut self, range: RangeInclusive<u16>) {
        self.0.push(range);
    }

    /// The ports where membership can change: each range's first port and the one after its
    /// last. Between two consecutive ones, every port is in the set or none is.
    pub fn boundaries(&self) -> impl Iterator<Item = u16> + '_ {
        self.0
            .iter()
            .flat_map(|range| std::iter::once(*range.start()).chain(range.end().checked_add(1)))
    }

    /// Parses `443` or `8000-8100`.
    pub fn parse_range(text: &str) -> Result<RangeInclusive<u16>, RuleError> {
        let bad = || RuleError::BadPort(text.to_owned());
        let (low, high) = text.split_once('-').unwrap_or((text, text));
        let low: u16 = low.trim().parse().map_err(|_| bad())?;
        let high: u16 = high.trim().parse().map_err(|_| bad())?;
        if low == 0 || low > high {
            return Err(bad());
        }
        Ok(low..=high)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if range.start() == range.end() {
                write!(f, "{}", range.start())?;
            } else {
                write!(f, "{}-{}", range.start(), range.end())?;
            }
        }
        Ok(())
    }
}

/// A CIDR range, optionally limited to some ports (smokescreen's `--allow-address ip:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRule {
    pub net: IpNet,
    /// Empty: every port.
    pub ports: PortSet,
}

impl CidrRule {
    /// Parses `10.0.0.0/8` or a bare address (`10.0.0.1`, meaning /32 or /128).
    pub fn parse(text: &str, ports: PortSet) -> Result<Self, RuleError> {
        let net = match text.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => text
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| RuleError::BadCidr(text.to_owned()))?,
        };
        Ok(CidrRule { net, ports })
    }

    /// `ip` must be canonical (IPv4-mapped addresses unwrapped), as rules are written.
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.net.contains(&ip) && (self.ports.is_empty() || self.ports.contains(port))
    }
}

impl fmt::Display for CidrRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)?;
        if !self.ports.is_empty() {
            write!(f, " port {}", self.ports)?;
        }
        Ok(())
    }
}

/// One scope's rules (the global deny list, a tenant, or a document).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub allow_hosts: Vec<HostPattern>,
    pub deny_hosts: Vec<HostPattern>,
    /// Allow ranges; inside a special-purpose range they are carve-outs.
    pub allow_cidrs: Vec<CidrRule>,
    pub deny_cidrs: Vec<CidrRule>,
    /// If not empty, only these ports may be reached.
    pub allow_ports: PortSet,
    pub deny_ports: PortSet,
}

impl Rules {
    pub fn denied_host(&self, host: &Host) -> Option<&HostPattern> {
        self.deny_hosts.iter().find(|pattern| pattern.matches(host))
    }

    pub fn allowed_host(&self, host: &Host) -> Option<&HostPattern> {
        self.allow_hosts
            .iter()
            .find(|pattern| pattern.matches(host))
    }

    pub fn denied_address(&self, ip: IpAddr, port: u16) -> Option<&CidrRule> {
        self.deny_cidrs.iter().find(|rule| rule.matches(ip, port))
    }

    pub fn allowed_address(&self, ip: IpAddr, port: u16) -> Option<&CidrRule> {
        self.allow_cidrs.iter().find(|rule| rule.matches(ip, port))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn patterns_follow_smokescreens_restrictions() {
        for bad in [
            "api.*.example.com",
            "*example.com",
            "example.*",
            "*",
            "*.*.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        let below = HostPattern::parse("*.Example.com.").unwrap();
        let host = |text| host::parse_host(text).unwrap();
        assert!(below.matches(&host("a.example.com")));
        assert!(below.matches(&host("a.b.EXAMPLE.com")));
        assert!(!below.matches(&host("example.com")));
        assert!(!below.matches(&host("badexample.com")));
        let exact = HostPattern::parse("example.com").unwrap();
        assert!(exact.matches(&host("example.com.")));
        assert!(!exact.matches(&host("a.example.com")));
    }

    #[test]
    fn cidr_rules_may_name_ports() {
        let mut ports = PortSet::default();
        ports.push(PortSet::parse_range("321").unwrap());
        let rule = CidrRule::parse("10.0.0.1", ports).unwrap();
        assert!(rule.matches("10.0.0.1".parse().unwrap(), 321));
        assert!(!rule.matches("10.0.0.1".parse().unwrap(), 1));
        let net = CidrRule::parse("10.0.1.7/24", PortSet::default()).unwrap();
        assert_eq!(net.net.to_string(), "10.0.1.0/24");
        assert!(PortSet::parse_range("0").is_err());
        assert!(PortSet::parse_range("9-8").is_err());
        assert_eq!(PortSet::parse_range("8000-8100").unwrap(), 8000..=8100);
    }
}
