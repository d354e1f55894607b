//! Which special-purpose range an IP address falls in, from the IANA special-purpose registries
//! plus the ranges SSRF defences add (CGNAT, cloud metadata, IPv4 embedded in IPv6).
//!
//! This is a pure table lookup: it knows nothing of tenants, carve-outs or the gateway's own
//! addresses (those are [`super::EgressPolicy`]'s). Callers pass canonical addresses: an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is unwrapped to its IPv4 address first with
//! [`canonical`], since connecting to it reaches exactly that IPv4 address. Other IPv6 forms that
//! carry an IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible, ISATAP) are a range of their own,
//! and the IPv4 address inside is classified too: a NAT64 form of the metadata address can never
//! be carved out, just like the metadata address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A special-purpose range: an address in one is denied unless a tenant carves it out (and
/// some can never be carved out; see [`SpecialRange::carvable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialRange {
    /// `0.0.0.0/8`, `::`: "this host"; Linux delivers `0.0.0.0` to the local host.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) or RFC 4193 unique-local `fc00::/7`.
    Private(&'static str),
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// The cloud instance metadata and platform endpoints of the major clouds (see
    /// [`CLOUD_METADATA`]). They hand out credentials, or answer by source address.
    CloudMetadata,
    /// `100.64.0.0/10` (RFC 6598), carrier-grade NAT; Tailscale and EKS pod networks live here.
    Cgnat,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Any other special-purpose registry entry, named for the user.
    Reserved(&'static str),
    /// An IPv6 form carrying an IPv4 address.
    Embedded { form: Embedding, ipv4: Ipv4Addr },
}

/// The IPv6 forms that carry an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `64:ff9b::/96` (RFC 6052).
    Nat64,
    /// `64:ff9b:1::/48` (RFC 8215), local-use NAT64.
    LocalNat64,
    /// `2002::/16` (RFC 3056).
    SixToFour,
    /// `2001::/32` (RFC 4380); the client's IPv4 address is stored inverted in the last 32 bits.
    Teredo,
    /// `::a.b.c.d` (RFC 4291, deprecated IPv4-compatible).
    Compatible,
    /// An ISATAP interface identifier `::0:5efe:a.b.c.d` or `::200:5efe:a.b.c.d` (RFC 5214).
    Isatap,
    /// `::ffff:0:a.b.c.d` (RFC 6145 IPv4-translated, SIIT): a translator delivers it to the
    /// IPv4 address.
    Siit,
}

impl Embedding {
    fn name(self) -> &'static str {
        match self {
            Embedding::Nat64 => "NAT64, RFC 6052",
            Embedding::LocalNat64 => "local-use NAT64, RFC 8215",
            Embedding::SixToFour => "6to4, RFC 3056",
            Embedding::Teredo => "Teredo, RFC 4380",
            Embedding::Compatible => "IPv4-compatible IPv6, RFC 4291",
            Embedding::Isatap => "ISATAP, RFC 5214",
            Embedding::Siit => "IPv4-translated, RFC 6145",
        }
    }
}

impl SpecialRange {
    /// Whether an explicit tenant allow CIDR may open this range. Never: the unspecified
    /// address (it is this host), cloud metadata (credentials), multicast and broadcast (not
    /// unicast destinations at all), and IPv6 forms embedding one of those.
    pub fn carvable(&self) -> bool {
        match self {
            SpecialRange::Unspecified
            | SpecialRange::CloudMetadata
            | SpecialRange::Multicast
            | SpecialRange::Broadcast => false,
            SpecialRange::Embedded { ipv4, .. } => {
                special_range(IpAddr::V4(*ipv4)).is_none_or(|inner| inner.carvable())
            }
            _ => true,
        }
    }

    /// A short stable name for metrics labels and audit records.
    pub fn label(&self) -> &'static str {
        match self {
            SpecialRange::Unspecified => "unspecified",
            SpecialRange::Loopback => "loopback",
            SpecialRange::Private(_) => "private",
            SpecialRange::LinkLocal => "link_local",
            SpecialRange::CloudMetadata => "cloud_metadata",
            SpecialRange::Cgnat => "cgnat",
            SpecialRange::Multicast => "multicast",
            SpecialRange::Broadcast => "broadcast",
            SpecialRange::Reserved(_) => "reserved",
            SpecialRange::Embedded { .. } => "ipv6_embedding",
        }
    }
}

/// "a private address (RFC 1918)", to follow "10.0.0.5 is".
impl fmt::Display for SpecialRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecialRange::Unspecified => {
                f.write_str("the unspecified address (it means this host)")
            }
            SpecialRange::Loopback => f.write_str("a loopback address"),
            SpecialRange::Private(rfc) => write!(f, "a private address ({rfc})"),
            SpecialRange::LinkLocal => f.write_str("a link-local address"),
            SpecialRange::CloudMetadata => f.write_str("the cloud metadata address"),
            SpecialRange::Cgnat => f.write_str("a carrier-grade NAT address (RFC 6598)"),
            SpecialRange::Multicast => f.write_str("a multicast address"),
            SpecialRange::Broadcast => f.write_str("the broadcast address"),
            SpecialRange::Reserved(what) => write!(f, "a reserved address ({what})"),
            SpecialRange::Embedded { form, ipv4 } => {
                write!(f, "an IPv6 form of {ipv4} ({})", form.name())?;
                if let Some(inner) = special_range(IpAddr::V4(*ipv4)) {
                    write!(f, ", which is {inner}")?;
                }
                Ok(())
            }
        }
    }
}

/// The address a connection to `ip` reaches: IPv4-mapped IPv6 unwrapped to IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The special-purpose range of a canonical address, or `None` for an ordinary unicast
/// address.
pub fn special_range(ip: IpAddr) -> Option<SpecialRange> {
    let ip = canonical(ip);
    if cloud_metadata(ip).is_some() {
        return Some(SpecialRange::CloudMetadata);
    }
    match ip {
        IpAddr::V4(ip) => special_v4(ip),
        IpAddr::V6(ip) => special_v6(ip),
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_be_bytes([a, b, c, d])
}

/// The cloud metadata and platform endpoints, per cloud: never reachable, whatever a tenant
/// allows. Most sit inside a carvable range (link-local, CGNAT, ULA, `192.0.0.0/24`), so a
/// carve-out for that range must still not open them; Azure's WireServer is a public address,
/// so a default-allow tenant would reach it without this list.
pub const CLOUD_METADATA: &[(IpAddr, &str)] = &[
    (
        ip4(169, 254, 169, 254),
        "AWS, GCP, Azure, OCI, DigitalOcean, OpenStack, … IMDS",
    ),
    (ip4(169, 254, 170, 2), "AWS ECS task credentials"),
    (ip4(169, 254, 170, 23), "AWS EKS Pod Identity"),
    (
        ip6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]),
        "AWS IMDS over IPv6",
    ),
    (
        ip6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23]),
        "AWS EKS Pod Identity over IPv6",
    ),
    (
        ip6([0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254]),
        "GCP metadata over IPv6",
    ),
    (
        ip4(168, 63, 129, 16),
        "Azure WireServer (platform agent, DNS, health probes)",
    ),
    (ip4(100, 100, 100, 200), "Alibaba Cloud metadata"),
    (ip4(192, 0, 0, 192), "Oracle Cloud legacy metadata"),
    (ip4(169, 254, 0, 23), "Tencent Cloud metadata"),
    (ip4(169, 254, 42, 42), "Scaleway metadata"),
    (
        ip6([0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42]),
        "Scaleway metadata over IPv6",
    ),
    (
        ip6([0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe]),
        "OpenStack metadata over IPv6",
    ),
];

const fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn ip6(s: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
    ))
}

/// Which cloud endpoint `ip` is, if it is one.
pub fn cloud_metadata(ip: IpAddr) -> Option<&'static str> {
    CLOUD_METADATA
        .iter()
        .find_map(|(endpoint, what)| (*endpoint == ip).then_some(*what))
}

/// IPv4 special-purpose ranges, most specific first (the first match wins). The cloud
/// endpoints ([`CLOUD_METADATA`]) are looked up before this table.
const V4_TABLE: &[(u32, u8, SpecialRange)] = &[
    (v4(255, 255, 255, 255), 32, SpecialRange::Broadcast),
    (v4(0, 0, 0, 0), 8, SpecialRange::Unspecified),
    (v4(10, 0, 0, 0), 8, SpecialRange::Private("RFC 1918")),
    (v4(100, 64, 0, 0), 10, SpecialRange::Cgnat),
    (v4(127, 0, 0, 0), 8, SpecialRange::Loopback),
    (v4(169, 254, 0, 0), 16, SpecialRange::LinkLocal),
    (v4(172, 16, 0, 0), 12, SpecialRange::Private("RFC 1918")),
    (
        v4(192, 0, 0, 0),
        24,
        SpecialRange::Reserved("IETF protocol assignments, RFC 6890"),
    ),
    (
        v4(192, 0, 2, 0),
        24,
        SpecialRange::Reserved("documentation TEST-NET-1, RFC 5737"),
    ),
    (
        v4(192, 31, 196, 0),
        24,
        SpecialRange::Reserved("AS112, RFC 7535"),
    ),
    (
        v4(192, 52, 193, 0),
        24,
        SpecialRange::Reserved("AMT, RFC 7450"),
    ),
    (
        v4(192, 88, 99, 0),
        24,
        SpecialRange::Reserved("6to4 relay anycast, RFC 7526"),
    ),
    (v4(192, 168, 0, 0), 16, SpecialRange::Private("RFC 1918")),
    (
        v4(192, 175, 48, 0),
        24,
        SpecialRange::Reserved("AS112 direct delegation, RFC 7534"),
    ),
    (
        v4(198, 18, 0, 0),
        15,
        SpecialRange::Reserved("benchmarking, RFC 2544"),
    ),
    (
        v4(198, 51, 100, 0),
        24,
        SpecialRange::Reserved("documentation TEST-NET-2, RFC 5737"),
    ),
    (
        v4(203, 0, 113, 0),
        24,
        SpecialRange::Reserved("documentation TEST-NET-3, RFC 5737"),
    ),
    (v4(224, 0, 0, 0), 4, SpecialRange::Multicast),
    (
        v4(240, 0, 0, 0),
        4,
        SpecialRange::Reserved("reserved for future use, RFC 1112"),
    ),
];

fn special_v4(ip: Ipv4Addr) -> Option<SpecialRange> {
    let bits = u32::from(ip);
    V4_TABLE.iter().find_map(|&(base, len, range)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        (bits & mask == base).then_some(range)
    })
}

const fn v6(segments: [u16; 8]) -> u128 {
    let mut bits = 0u128;
    let mut i = 0;
    while i < 8 {
        bits = (bits << 16) | segments[i] as u128;
        i += 1;
    }
    bits
}

/// IPv6 special-purpose ranges that carry no IPv4 address, most specific first.
const V6_TABLE: &[(u128, u8, SpecialRange)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0]), 128, SpecialRange::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1]), 128, SpecialRange::Loopback),
    (
        v6([0x100, 0, 0, 0, 0, 0, 0, 0]),
        64,
        SpecialRange::Reserved("discard-only, RFC 6666"),
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]),
        32,
        SpecialRange::Reserved("documentation, RFC 3849"),
    ),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0]),
        23,
        SpecialRange::Reserved("IETF protocol assignments, RFC 2928"),
    ),
    (
        v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0]),
        48,
        SpecialRange::Reserved("AS112, RFC 7534"),
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]),
        20,
        SpecialRange::Reserved("documentation, RFC 9637"),
    ),
    (
        v6([0x5f00, 0, 0, 0, 0, 0, 0, 0]),
        16,
        SpecialRange::Reserved("SRv6 SIDs, RFC 9602"),
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]),
        7,
        SpecialRange::Private("RFC 4193 unique-local"),
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]),
        10,
        SpecialRange::LinkLocal,
    ),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]),
        10,
        SpecialRange::Reserved("site-local, deprecated by RFC 3879"),
    ),
    (
        v6([0xff00, 0, 0, 0, 0, 0, 0, 0]),
        8,
        SpecialRange::Multicast,
    ),
];

fn in_prefix(bits: u128, base: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    bits & mask == base
}

fn special_v6(ip: Ipv6Addr) -> Option<SpecialRange> {
    let bits = u128::from(ip);
    let s = ip.segments();
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let embedded = |form, ipv4| Some(SpecialRange::Embedded { form, ipv4 });
    // :: and ::1 first: they sit inside the IPv4-compatible /96.
    if bits <= 1 {
        return V6_TABLE
            .iter()
            .find_map(|&(base, len, range)| in_prefix(bits, base, len).then_some(range));
    }
    if in_prefix(bits, v6([0, 0, 0, 0, 0, 0, 0, 0]), 96) {
        return embedded(Embedding::Compatible, low32);
    }
    if in_prefix(bits, v6([0, 0, 0, 0, 0xffff, 0, 0, 0]), 96) {
        return embedded(Embedding::Siit, low32);
    }
    if in_prefix(bits, v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96) {
        return embedded(Embedding::Nat64, low32);
    }
    if in_prefix(bits, v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]), 48) {
        return embedded(Embedding::LocalNat64, low32);
    }
    // ISATAP interface identifier under any prefix (the u/g bits aside).
    let isatap = s[4] & 0xfcff == 0 && s[5] == 0x5efe;
    // The rest of ::/8 (NAT64 aside, which lives inside it): reserved by RFC 4291, never a
    // destination on the internet; an ISATAP identifier in it still names its IPv4 address.
    if in_prefix(bits, v6([0, 0, 0, 0, 0, 0, 0, 0]), 8) {
        if isatap {
            return embedded(Embedding::Isatap, low32);
        }
        return Some(SpecialRange::Reserved("reserved by IETF, RFC 4291"));
    }
    if in_prefix(bits, v6([0x2002, 0, 0, 0, 0, 0, 0, 0]), 16) {
        let ipv4 = Ipv4Addr::from(((u32::from(s[1])) << 16) | u32::from(s[2]));
        return embedded(Embedding::SixToFour, ipv4);
    }
    if in_prefix(bits, v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 32) {
        return embedded(Embedding::Teredo, Ipv4Addr::from(!u32::from(low32)));
    }
    let table = V6_TABLE
        .iter()
        .find_map(|&(base, len, range)| in_prefix(bits, base, len).then_some(range));
    // ISATAP before the table: a ULA or documentation prefix must not hide the IPv4 address
    // inside. A table range that can never be carved out (multicast) still wins, so the
    // embedding cannot weaken it.
    if isatap && table.is_none_or(|range| range.carvable()) {
        return embedded(Embedding::Isatap, low32);
    }
    table
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn range(text: &str) -> Option<SpecialRange> {
        special_range(text.parse().unwrap())
    }

    #[test]
    fn edges_of_ranges() {
        assert_eq!(range("172.15.255.255"), None);
        assert_eq!(range("172.32.0.0"), None);
        assert_eq!(range("100.63.255.254"), None);
        assert_eq!(range("100.128.0.1"), None);
        assert_eq!(range("100.127.255.254"), Some(SpecialRange::Cgnat));
        assert_eq!(range("8.8.8.8"), None);
        assert_eq!(range("2001:4860:4860::8888"), None);
        // Inside ::/8 but outside NAT64: reserved.
        assert!(matches!(
            range("64:ff9c::1"),
            Some(SpecialRange::Reserved(_))
        ));
    }

    #[test]
    fn every_cloud_endpoint_is_metadata_and_never_carvable() {
        for (ip, what) in CLOUD_METADATA {
            assert_eq!(
                special_range(*ip),
                Some(SpecialRange::CloudMetadata),
                "{what}"
            );
            assert!(!SpecialRange::CloudMetadata.carvable());
        }
        // Its neighbours keep their own range.
        assert_eq!(range("168.63.129.15"), None);
        assert_eq!(range("100.100.100.201"), Some(SpecialRange::Cgnat));
        assert_eq!(range("169.254.42.43"), Some(SpecialRange::LinkLocal));
        assert!(matches!(
            range("192.0.0.193"),
            Some(SpecialRange::Reserved(_))
        ));
        assert_eq!(
            range("fd20:ce::253"),
            Some(SpecialRange::Private("RFC 4193 unique-local"))
        );
    }

    #[test]
    fn the_rest_of_the_first_ipv6_eighth_is_reserved() {
        assert_eq!(range("::"), Some(SpecialRange::Unspecified));
        assert_eq!(range("::1"), Some(SpecialRange::Loopback));
        for text in ["::1:0:0:0", "0:1::", "ff::1", "0:0:0:1::1"] {
            assert!(
                matches!(range(text), Some(SpecialRange::Reserved(_))),
                "{text}: {:?}",
                range(text)
            );
        }
        assert!(matches!(
            range("64:ff9b::1.2.3.4"),
            Some(SpecialRange::Embedded {
                form: Embedding::Nat64,
                ..
            })
        ));
        assert_eq!(
            range("100::1"),
            Some(SpecialRange::Reserved("discard-only, RFC 6666"))
        );
    }

    #[test]
    fn embedded_addresses_are_unwrapped() {
        assert_eq!(
            range("2002:a9fe:a9fe::"),
            Some(SpecialRange::Embedded {
                form: Embedding::SixToFour,
                ipv4: Ipv4Addr::new(169, 254, 169, 254)
            })
        );
        assert_eq!(
            range("2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            Some(SpecialRange::Embedded {
                form: Embedding::Teredo,
                ipv4: Ipv4Addr::new(192, 0, 2, 45)
            })
        );
        assert!(!range("64:ff9b::a9fe:a9fe").unwrap().carvable());
        assert!(range("64:ff9b::a00:1").unwrap().carvable());
        assert_eq!(range("::ffff:127.0.0.1"), Some(SpecialRange::Loopback));
        assert_eq!(
            range("::5efe:10.0.0.1"),
            Some(SpecialRange::Embedded {
                form: Embedding::Isatap,
                ipv4: Ipv4Addr::new(10, 0, 0, 1)
            })
        );
        assert_eq!(
            range("::127.0.0.1"),
            Some(SpecialRange::Embedded {
                form: Embedding::Compatible,
                ipv4: Ipv4Addr::new(127, 0, 0, 1)
            })
        );
        // SIIT carries its IPv4 address like the other forms.
        assert_eq!(
            range("::ffff:0:a9fe:a9fe"),
            Some(SpecialRange::Embedded {
                form: Embedding::Siit,
                ipv4: Ipv4Addr::new(169, 254, 169, 254)
            })
        );
        assert!(!range("::ffff:0:a9fe:a9fe").unwrap().carvable());
        // ISATAP is seen under a ULA or documentation prefix too.
        assert_eq!(
            range("fd00::5efe:a9fe:a9fe"),
            Some(SpecialRange::Embedded {
                form: Embedding::Isatap,
                ipv4: Ipv4Addr::new(169, 254, 169, 254)
            })
        );
        assert!(!range("2001:db8::5efe:a9fe:a9fe").unwrap().carvable());
        assert_eq!(range("ff02::5efe:10.0.0.1"), Some(SpecialRange::Multicast));
        assert!(matches!(
            range("2001:4860::5efe:10.0.0.1"),
            Some(SpecialRange::Embedded {
                form: Embedding::Isatap,
                ..
            })
        ));
    }
}
