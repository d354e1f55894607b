//! Destination hosts as clients write them, turned into one canonical form or refused.
//!
//! Every front end (CONNECT authority, SOCKS5 domain, tunnel frame) passes the client's host
//! string through [`parse_host`] before any rule sees it, so a rule written `example.com` matches
//! `EXAMPLE.com.` and `ЕXAMPLE.com` cannot pose as it. Numeric hosts must be written the one way
//! Rust's strict parsers accept: a dotted quad without leading zeros or a bracketed IPv6 address
//! without a zone. Everything glibc's `inet_aton` would also accept (`2130706433`, `0177.0.0.1`,
//! `0x7f.1`, `127.1`) is refused here rather than guessed at, because a gateway that reads
//! `0x7f.1` differently from the client's library is how SSRF filters are bypassed.
//!
//! This module does no IO and no resolution; names stay names until `resolve` looks them up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest host string accepted before any processing, in bytes (a DNS name is at most 253
/// characters; the slack covers brackets and a trailing dot, and bounds IDNA work).
pub const MAX_HOST_INPUT: usize = 512;
pub use airlock_protocol::tunnel::MAX_NAME_LEN;
/// The longest label of a name.
pub const MAX_LABEL_LEN: usize = 63;

/// A destination host in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: resolved by the gateway, never by the client.
    Name(HostName),
    /// A literal address, classified as it stands.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name.as_str()),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A canonical DNS name: ASCII (IDNA names in punycode), lowercase, no trailing dot, labels of
/// `a-z 0-9 - _` between 1 and 63 bytes, at most 253 bytes, and not numeric-looking.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The labels from left to right.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a host string was refused. Each message is shown to the user as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("the host is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error(
        "{input:?} is a numeric host in a non-canonical notation (decimal, octal, hex, short or with leading zeros); write the address as a dotted quad such as 93.184.216.34 or a bracketed IPv6 address"
    )]
    NonCanonicalNumeric { input: String },
    #[error(
        "{input:?} is not a valid bracketed IPv6 address (zone ids such as %eth0 are not accepted)"
    )]
    BadIpv6 { input: String },
    #[error("{input:?} looks like an IPv6 address without brackets; write it as [{input}]")]
    UnbracketedIpv6 { input: String },
    #[error("the host contains {found:?}, which no host name may contain")]
    InvalidCharacter { found: char },
    #[error("the host has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("a label of the host is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("the host is not a valid internationalised domain name")]
    Idna,
    #[error("the destination has no port; write host:port")]
    MissingPort,
    #[error(
        "{input:?} is not a port; write a decimal number from 1 to 65535 without leading zeros"
    )]
    BadPort { input: String },
}

/// Parses a host as a client wrote it (no port): a name, a dotted quad or a bracketed IPv6
/// address.
pub fn parse_host(input: &str) -> Result<Host, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if input.len() > MAX_HOST_INPUT {
        return Err(HostError::TooLong);
    }
    if let Some(inner) = input.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| HostError::BadIpv6 {
            input: input.to_owned(),
        })?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| HostError::BadIpv6 {
                input: input.to_owned(),
            });
    }
    if input.contains(':') {
        return Err(HostError::UnbracketedIpv6 {
            input: input.to_owned(),
        });
    }
    if let Some(found) = input
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '%' | '/' | '@' | '\\'))
    {
        return Err(HostError::InvalidCharacter { found });
    }
    // IDNA mapping first: it folds case and full-width digits ("１２７.０.０.１"), so the
    // numeric check below sees what a resolver would.
    let mapped = idna::domain_to_ascii_cow(input.as_bytes(), idna::AsciiDenyList::URL)
        .map_err(|_| HostError::Idna)?;
    let (body, trailing_dot) = match mapped.strip_suffix('.') {
        Some(body) => (body, true),
        None => (mapped.as_ref(), false),
    };
    if body.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    let last = body.rsplit('.').next().unwrap_or(body);
    if looks_numeric(last) {
        // WHATWG URL: a host whose last label is numeric is an IPv4 address. Accept only the
        // form that prints back identically from a strict parse.
        return match body.parse::<Ipv4Addr>() {
            // `body == input`: IDNA mapping changed nothing (no full-width digits, no case).
            Ok(ip) if !trailing_dot && body == input && ip.to_string() == body => {
                Ok(Host::Ip(IpAddr::V4(ip)))
            }
            _ => Err(HostError::NonCanonicalNumeric {
                input: input.to_owned(),
            }),
        };
    }
    if body.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    for label in body.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong);
        }
        if let Some(found) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
        {
            return Err(HostError::InvalidCharacter { found });
        }
    }
    Ok(Host::Name(HostName(body.to_owned())))
}

/// Parses `host:port` (CONNECT's authority form): `example.com:443`, `93.184.216.34:80`,
/// `[2001:db8::1]:443`. The port is decimal, 1–65535, without leading zeros or a sign.
pub fn parse_authority(input: &str) -> Result<(Host, u16), HostError> {
    if input.len() > MAX_HOST_INPUT + 6 {
        return Err(HostError::TooLong);
    }
    let (host, port) = if input.starts_with('[') {
        match input.rfind("]:") {
            Some(end) => (&input[..=end], &input[end + 2..]),
            None if input.ends_with(']') => return Err(HostError::MissingPort),
            None => {
                return Err(HostError::BadIpv6 {
                    input: input.to_owned(),
                });
            }
        }
    } else {
        match input.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(HostError::UnbracketedIpv6 {
                    input: input.to_owned(),
                });
            }
            Some(split) => split,
            None => return Err(HostError::MissingPort),
        }
    };
    Ok((parse_host(host)?, parse_port(port)?))
}

/// A port in canonical decimal: `443`, not `0443`, `+443`, `https` or `0`.
pub fn parse_port(input: &str) -> Result<u16, HostError> {
    let bad = || HostError::BadPort {
        input: input.to_owned(),
    };
    if input.is_empty() || input.len() > 5 || !input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if input.starts_with('0') {
        return Err(bad());
    }
    match input.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(bad()),
    }
}

/// Whether a label reads as a number to an `inet_aton`-style parser: decimal digits, or `0x`
/// followed by hex digits (possibly none).
fn looks_numeric(label: &str) -> bool {
    if let Some(hex) = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn name(text: &str) -> Host {
        Host::Name(HostName(text.to_owned()))
    }

    #[test]
    fn names_are_folded_to_one_form() {
        assert_eq!(parse_host("Example.COM").unwrap(), name("example.com"));
        assert_eq!(parse_host("example.com.").unwrap(), name("example.com"));
        assert_eq!(
            parse_host("тест.example.com").unwrap(),
            name("xn--e1aybc.example.com")
        );
        assert_eq!(
            parse_host("foo_bar.example.com").unwrap(),
            name("foo_bar.example.com")
        );
        assert_eq!(parse_host("instance-data").unwrap(), name("instance-data"));
    }

    #[test]
    fn only_canonical_numbers_are_addresses() {
        assert_eq!(
            parse_host("127.0.0.1").unwrap(),
            Host::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_host("[::1]").unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
        for bad in [
            "2130706433",
            "3232235777",
            "0177.0.0.1",
            "017700000001",
            "0x7f000001",
            "0xc0a80014",
            "0x7f.0x0.0x00000000.0x01",
            "0177.0x0.0x0.0x1",
            "127.1",
            "0x7f.1",
            "0",
            "127.000.0.1",
            "127.0.0.1.",
            "1.2.3.4.5",
            "１２７.０.０.１",
            "0x",
        ] {
            assert!(
                matches!(parse_host(bad), Err(HostError::NonCanonicalNumeric { .. })),
                "{bad} -> {:?}",
                parse_host(bad)
            );
        }
    }

    #[test]
    fn ipv6_must_be_bracketed_and_zoneless() {
        assert!(matches!(
            parse_host("2001:DB8::1337"),
            Err(HostError::UnbracketedIpv6 { .. })
        ));
        assert!(matches!(
            parse_host("[fe80::1%eth0]"),
            Err(HostError::BadIpv6 { .. })
        ));
        assert!(matches!(
            parse_host("[[example.net]]"),
            Err(HostError::BadIpv6 { .. })
        ));
    }

    #[test]
    fn authorities_follow_smokescreens_hostport_cases() {
        assert_eq!(parse_authority("example.net"), Err(HostError::MissingPort));
        assert!(parse_authority("[[example.net]]:1337").is_err());
        assert!(parse_authority(":").is_err());
        assert!(parse_authority("::").is_err());
        assert!(parse_authority("2001:DB8::1337").is_err());
        assert!(matches!(
            parse_authority("[2001:DB8::1337]:91337"),
            Err(HostError::BadPort { .. })
        ));
        assert!(parse_authority(":-12").is_err());
        assert!(matches!(
            parse_authority("[2001:DB8::1337]:https"),
            Err(HostError::BadPort { .. })
        ));
        // Leading zeros are refused in ports as in addresses: one spelling per number.
        assert!(parse_authority("example.net:007").is_err());
        assert_eq!(
            parse_authority("[2001:db8::1337]:443").unwrap(),
            (Host::Ip("2001:db8::1337".parse().unwrap()), 443)
        );
        assert_eq!(
            parse_authority("Example.net.:80").unwrap(),
            (name("example.net"), 80)
        );
    }

    #[test]
    fn hostile_characters_are_refused() {
        for bad in [
            "exa mple.com",
            "example.com\0.evil",
            "example%00.com",
            "allowed.com@evil.com",
            "a..b",
            ".a",
            "",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert_eq!(parse_host(&long), Err(HostError::LabelTooLong));
    }
}
