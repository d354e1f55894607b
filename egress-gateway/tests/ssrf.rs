//! The SSRF table: every case from `research/egress.md` run through the same path a flow takes
//! before it dials (host parser → request check → classification of the answers), without
//! sockets. The rows from smokescreen's `TestClassifyAddr` keep its configuration: deny range
//! 1.1.1.1/32, deny address 8.8.8.8:321, allow ranges 8.8.9.0/24, 10.0.1.0/24, 172.16.1.0/24,
//! 192.168.1.0/24, 127.0.1.0/24, allow address 10.0.0.1:321, proxy port 4750 on 127.0.0.1,
//! 192.168.1.100 and ::1. The same rules over real sockets and a real DNS server are in
//! `tests/e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use airlock_egress::Config;
use airlock_egress::host::parse_host;
use airlock_egress::policy::{Denial, EgressPolicy, FlowTags};

const CONFIG: &str = r#"
[gateway]
region = "local"
own_addresses = ["45.33.32.156"]
# The node fleet and the coordinators (hairpin): never reachable, whatever a tenant allows.
platform_cidrs = ["45.33.40.0/24", "2600:3c01:40::/48"]

[global]
deny_ports = [25]

[[tenants]]
name = "smoke"
static_ips = { local = ["45.33.32.157", "2600:3c01::f03c:91ff:fe18:bb2f"] }
allow_cidrs = [
  "8.8.9.0/24", "10.0.1.0/24", "172.16.1.0/24", "192.168.1.0/24", "127.0.1.0/24",
  { cidr = "10.0.0.1", ports = [321] },
]
deny_cidrs = ["1.1.1.1/32", { cidr = "8.8.8.8", ports = [321] }]
deny_hosts = ["*.blocked.example"]

[[tenants]]
name = "strict"
default = "deny"
static_ips = { local = ["45.33.32.158"] }
allow_hosts = ["*.allowed.com"]
allow_ports = [443, "5400-5500"]

[[tenants]]
name = "carve"
static_ips = { local = ["45.33.32.159", "2600:3c01::1"] }
# Carve-outs that must NOT open these: metadata, unspecified, the gateway itself, multicast.
allow_cidrs = ["169.254.169.254/32", "0.0.0.0/8", "45.33.32.156/32", "224.0.0.0/4",
               "10.0.0.0/8", "64:ff9b::/96"]
deny_cidrs = ["10.0.0.66"]

[[tenants]]
name = "mixed"
mixed_answers = "deny"
static_ips = { local = ["45.33.32.160"] }

[[tenants]]
name = "wide"
static_ips = { local = ["45.33.32.161", "2600:3c01::2"] }
# Wide carve-outs (a Tailscale or a VPC range, link-local, ULA, the IETF block, the first
# IPv6 eighth, the platform's own range): the cloud endpoints inside them stay closed.
allow_cidrs = ["fc00::/7", "100.64.0.0/10", "169.254.0.0/16", "192.0.0.0/24", "fe80::/10",
               "::/8", "45.33.40.0/24"]

[[tenants]]
name = "locked"
default = "deny"
static_ips = { local = ["45.33.32.162"] }
allow_hosts = ["api.partner.example"]

[[tenants]]
name = "locked-cidr"
default = "deny"
static_ips = { local = ["45.33.32.163"] }
allow_hosts = ["api.partner.example"]
allow_cidrs = ["93.184.216.0/24"]
"#;

fn policy() -> EgressPolicy {
    let listeners: Vec<SocketAddr> = ["127.0.0.1:4750", "192.168.1.100:4750", "[::1]:4750"]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
    Config::parse(CONFIG).unwrap().policy(&listeners).unwrap()
}

/// What one row expects: the verdict's class (`allowed` or a denial class).
struct Case {
    tenant: &'static str,
    host: &'static str,
    port: u16,
    /// What DNS answers for a name (ignored for literal addresses).
    answers: &'static [&'static str],
    expect: &'static str,
}

const fn case(host: &'static str, port: u16, expect: &'static str) -> Case {
    Case {
        tenant: "smoke",
        host,
        port,
        answers: &[],
        expect,
    }
}

const fn named(
    tenant: &'static str,
    host: &'static str,
    answers: &'static [&'static str],
    expect: &'static str,
) -> Case {
    Case {
        tenant,
        host,
        port: 443,
        answers,
        expect,
    }
}

const fn as_tenant(
    tenant: &'static str,
    host: &'static str,
    port: u16,
    expect: &'static str,
) -> Case {
    Case {
        tenant,
        host,
        port,
        answers: &[],
        expect,
    }
}

const CASES: &[Case] = &[
    // smokescreen TestClassifyAddr, row by row.
    case("8.8.8.8", 1, "allowed"),
    case("8.8.9.8", 1, "allowed"),
    case("10.0.0.1", 1, "private"),
    case("172.16.0.1", 1, "private"),
    case("192.168.0.1", 1, "private"),
    case("10.0.0.1", 321, "allowed"),
    case("10.0.1.1", 1, "allowed"),
    case("172.16.1.1", 1, "allowed"),
    case("192.168.1.1", 1, "allowed"),
    case("100.64.0.1", 1, "cgnat"),
    case("100.64.0.100", 1, "cgnat"),
    case("100.127.255.254", 1, "cgnat"),
    case("100.63.255.254", 1, "allowed"),
    case("100.128.0.1", 1, "allowed"),
    case("8.8.8.8", 321, "denied_address"),
    case("1.1.1.1", 1, "denied_address"),
    case("127.0.0.1", 1, "loopback"),
    case("127.255.255.255", 1, "loopback"),
    case("[::1]", 1, "loopback"),
    case("127.0.1.1", 1, "allowed"),
    case("169.254.169.254", 80, "cloud_metadata"),
    case("255.255.255.255", 1, "broadcast"),
    case("[ff02::2]", 1, "multicast"),
    case("[64:ff9b::ac1c:5]", 1, "ipv6_embedding"),
    case("[64:ff9b::c000:201]", 1, "ipv6_embedding"),
    case("[64:ff9b::a00:1]", 1, "ipv6_embedding"),
    case("[64:ff9b::808:808]", 1, "ipv6_embedding"),
    case("[64:ff9b::ffff:ffff]", 1, "ipv6_embedding"),
    case("[2002:c000:201::1]", 1, "ipv6_embedding"),
    case("[2002:a00:1::1]", 1, "ipv6_embedding"),
    case("[2002:808:808::1]", 1, "ipv6_embedding"),
    case(
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
        1,
        "ipv6_embedding",
    ),
    case(
        "[2001:0:1234:5678:9abc:def0:1234:5678]",
        1,
        "ipv6_embedding",
    ),
    case("[2001:4860:4860::8888]", 1, "allowed"),
    case("[2606:4700:4700::1111]", 1, "allowed"),
    // smokescreen allows this one; it is inside ::/8, which IANA reserves (review #13).
    case("[64:ff9c::1]", 1, "reserved"),
    case("127.0.0.1", 4750, "self_connection"),
    case("192.168.1.100", 4750, "self_connection"),
    case("[::1]", 4750, "self_connection"),
    case("127.0.0.1", 8080, "loopback"),
    case("8.8.8.8", 4750, "allowed"),
    // Non-canonical numeric hosts (safeurl, glibc inet_aton forms): refused before any lookup.
    case("2130706433", 80, "non_canonical_numeric"),
    case("3232235777", 80, "non_canonical_numeric"),
    case("0177.0.0.1", 80, "non_canonical_numeric"),
    case("017700000001", 80, "non_canonical_numeric"),
    case("0x7f000001", 80, "non_canonical_numeric"),
    case("0xc0a80014", 80, "non_canonical_numeric"),
    case("0x7f.0x0.0x00000000.0x01", 80, "non_canonical_numeric"),
    case("0177.0x0.0x0.0x1", 80, "non_canonical_numeric"),
    case("0x7f.1", 80, "non_canonical_numeric"),
    case("127.1", 80, "non_canonical_numeric"),
    case("0", 80, "non_canonical_numeric"),
    case("127.000.0.1", 80, "non_canonical_numeric"),
    case("127.0.0.1.", 80, "non_canonical_numeric"),
    case("１２７.０.０.１", 80, "non_canonical_numeric"),
    case("2001:db8::1", 80, "bad_host"),
    case("[fe80::1%25eth0]", 80, "bad_host"),
    // IPv4-mapped, IPv4-compatible and other embedded forms.
    case("[::ffff:127.0.0.1]", 80, "loopback"),
    case("[::ffff:169.254.169.254]", 80, "cloud_metadata"),
    case("[::ffff:192.0.2.1]", 80, "reserved"),
    case("[::ffff:10.0.1.5]", 80, "allowed"),
    case("[::127.0.0.1]", 80, "ipv6_embedding"),
    case("[64:ff9b::a9fe:a9fe]", 80, "ipv6_embedding"),
    case("[64:ff9b:1::a00:1]", 80, "ipv6_embedding"),
    case("[2002:a9fe:a9fe::]", 80, "ipv6_embedding"),
    case("[2002:7f00:1::]", 80, "ipv6_embedding"),
    case("[::5efe:10.0.0.1]", 80, "ipv6_embedding"),
    case("[0000::1]", 80, "loopback"),
    // Unspecified, link-local, unique-local, other IANA special-purpose ranges.
    case("[::]", 80, "unspecified"),
    case("0.0.0.0", 80, "unspecified"),
    case("0.1.2.3", 80, "unspecified"),
    case("169.254.1.1", 80, "link_local"),
    case("169.254.170.2", 80, "cloud_metadata"),
    case("[fe80::1]", 80, "link_local"),
    case("[fc00::1]", 80, "private"),
    case("[fd00:ec2::254]", 80, "cloud_metadata"),
    case("198.18.0.1", 80, "reserved"),
    case("192.0.0.1", 80, "reserved"),
    case("192.0.2.1", 80, "reserved"),
    case("192.88.99.1", 80, "reserved"),
    case("240.0.0.1", 80, "reserved"),
    case("224.0.0.1", 80, "multicast"),
    case("[2001:db8::1]", 80, "reserved"),
    case("[fec0::1]", 80, "reserved"),
    case("[100::1]", 80, "reserved"),
    case("172.15.255.255", 80, "allowed"),
    case("172.32.0.0", 80, "allowed"),
    // The gateway's own addresses: configured, and every tenant's static egress IPs.
    case("45.33.32.156", 80, "gateway_address"),
    case("45.33.32.158", 80, "gateway_address"),
    case("[::ffff:45.33.32.156]", 80, "gateway_address"),
    // Ports.
    case("8.8.8.8", 25, "denied_port"),
    as_tenant("strict", "api.allowed.com", 80, "port_not_allowed"),
    // Names: metadata and local names are refused by name, whatever they resolve to.
    named(
        "smoke",
        "metadata.google.internal",
        &["8.8.8.8"],
        "reserved_name",
    ),
    named(
        "smoke",
        "METADATA.Google.Internal.",
        &["8.8.8.8"],
        "reserved_name",
    ),
    named("smoke", "instance-data", &["8.8.8.8"], "reserved_name"),
    named("smoke", "metadata", &["8.8.8.8"], "reserved_name"),
    named("smoke", "localhost", &["8.8.8.8"], "reserved_name"),
    named("smoke", "x.localhost", &["8.8.8.8"], "reserved_name"),
    // ...and by address when any other name leads there.
    named(
        "smoke",
        "metadata.attacker.example",
        &["169.254.169.254"],
        "cloud_metadata",
    ),
    named(
        "smoke",
        "aws-v6.attacker.example",
        &["fd00:ec2::254"],
        "cloud_metadata",
    ),
    named("smoke", "127.0.0.1.nip.io", &["127.0.0.1"], "loopback"),
    named("smoke", "localtest.me", &["127.0.0.1", "::1"], "loopback"),
    named("smoke", "intranet.example", &["10.0.0.5"], "private"),
    named("smoke", "mapped.example", &["::ffff:10.0.0.5"], "private"),
    named(
        "smoke",
        "all-denied.example",
        &["127.0.0.1", "10.0.0.1"],
        "loopback",
    ),
    // Mixed answers: the allowed address is taken (and the denied one audited)...
    named(
        "smoke",
        "mixed.example",
        &["10.0.0.5", "93.184.216.34"],
        "allowed",
    ),
    // ...unless the tenant refuses mixed names outright.
    named(
        "mixed",
        "mixed.example",
        &["93.184.216.34", "10.0.0.5"],
        "mixed_answers",
    ),
    named(
        "smoke",
        "a.blocked.example",
        &["93.184.216.34"],
        "denied_host",
    ),
    named(
        "smoke",
        "A.Blocked.Example.",
        &["93.184.216.34"],
        "denied_host",
    ),
    // Default deny: only allow-listed hosts, and an allowed name still cannot reach inside.
    named("strict", "api.allowed.com", &["93.184.216.34"], "allowed"),
    named("strict", "api.other.com", &["93.184.216.34"], "not_allowed"),
    named("strict", "internal.allowed.com", &["10.1.2.3"], "private"),
    named(
        "strict",
        "v6.allowed.com",
        &["2606:4700::1"],
        "no_source_address",
    ),
    as_tenant("strict", "93.184.216.34", 443, "not_allowed"),
    // Carve-outs are honoured for carvable classes only; deny still wins inside them.
    as_tenant("carve", "10.0.0.5", 80, "allowed"),
    as_tenant("carve", "10.0.0.66", 80, "denied_address"),
    as_tenant("carve", "[64:ff9b::a00:1]", 80, "allowed"),
    as_tenant("carve", "[64:ff9b::a9fe:a9fe]", 80, "ipv6_embedding"),
    as_tenant("carve", "169.254.169.254", 80, "cloud_metadata"),
    as_tenant("carve", "0.0.0.0", 80, "unspecified"),
    as_tenant("carve", "45.33.32.156", 80, "gateway_address"),
    as_tenant("carve", "224.0.0.1", 80, "multicast"),
    as_tenant("nobody", "8.8.8.8", 80, "unknown_tenant"),
    // Cloud metadata and platform endpoints of every major cloud (#9): never reachable, by a
    // default-allow tenant or through the widest carve-outs.
    case("[fd20:ce::254]", 80, "cloud_metadata"),
    case("100.100.100.200", 80, "cloud_metadata"),
    case("192.0.0.192", 80, "cloud_metadata"),
    case("169.254.0.23", 80, "cloud_metadata"),
    case("169.254.42.42", 80, "cloud_metadata"),
    case("[fd00:42::42]", 80, "cloud_metadata"),
    case("168.63.129.16", 80, "cloud_metadata"),
    case("168.63.129.16", 32526, "cloud_metadata"),
    case("[::ffff:168.63.129.16]", 80, "cloud_metadata"),
    case("[64:ff9b::a83f:8110]", 80, "ipv6_embedding"),
    case("168.63.129.15", 80, "allowed"),
    as_tenant("wide", "[fd20:ce::254]", 80, "cloud_metadata"),
    as_tenant("wide", "100.100.100.200", 80, "cloud_metadata"),
    as_tenant("wide", "192.0.0.192", 80, "cloud_metadata"),
    as_tenant("wide", "169.254.0.23", 80, "cloud_metadata"),
    as_tenant("wide", "169.254.42.42", 80, "cloud_metadata"),
    as_tenant("wide", "169.254.169.254", 80, "cloud_metadata"),
    as_tenant("wide", "[fd00:ec2::254]", 80, "cloud_metadata"),
    as_tenant("wide", "[fe80::a9fe:a9fe]", 80, "cloud_metadata"),
    as_tenant("wide", "168.63.129.16", 80, "cloud_metadata"),
    // ...while the rest of each carved range opens.
    as_tenant("wide", "[fd20:ce::253]", 80, "allowed"),
    as_tenant("wide", "100.100.100.201", 80, "allowed"),
    as_tenant("wide", "169.254.1.1", 80, "allowed"),
    as_tenant("wide", "192.0.0.193", 80, "allowed"),
    named(
        "smoke",
        "metadata.tencentyun.com",
        &["8.8.8.8"],
        "reserved_name",
    ),
    named(
        "smoke",
        "metadata.platformequinix.com",
        &["8.8.8.8"],
        "reserved_name",
    ),
    named(
        "smoke",
        "metadata.packet.net",
        &["8.8.8.8"],
        "reserved_name",
    ),
    named(
        "smoke",
        "api.metadata.cloud.ibm.com",
        &["8.8.8.8"],
        "reserved_name",
    ),
    named(
        "wide",
        "wireserver.attacker.example",
        &["168.63.129.16"],
        "cloud_metadata",
    ),
    named(
        "wide",
        "ali.attacker.example",
        &["100.100.100.200"],
        "cloud_metadata",
    ),
    // IPv6 forms (#13): SIIT embeds its IPv4 address; the rest of ::/8 is reserved; ISATAP
    // is seen before the table, so a ULA prefix does not hide the metadata address.
    case("[::ffff:0:a9fe:a9fe]", 80, "ipv6_embedding"),
    case("[::ffff:0:7f00:1]", 80, "ipv6_embedding"),
    case("[::ffff:0:808:808]", 80, "ipv6_embedding"),
    as_tenant("wide", "[::ffff:0:a9fe:a9fe]", 80, "ipv6_embedding"),
    case("[::1:0:0:0]", 80, "reserved"),
    case("[0:1::1]", 80, "reserved"),
    case("[ff::1]", 80, "reserved"),
    as_tenant("wide", "[::1:0:0:0]", 80, "allowed"),
    case("[fd00::5efe:a9fe:a9fe]", 80, "ipv6_embedding"),
    as_tenant("wide", "[fd00::5efe:a9fe:a9fe]", 80, "ipv6_embedding"),
    as_tenant("wide", "[fd00::200:5efe:a9fe:a9fe]", 80, "ipv6_embedding"),
    case("[2001:db8::5efe:a9fe:a9fe]", 80, "ipv6_embedding"),
    // Hairpin (#23): the platform's own ranges, even inside a carve-out.
    case("45.33.40.7", 443, "platform_address"),
    case("[2600:3c01:40::5]", 443, "platform_address"),
    as_tenant("wide", "45.33.40.7", 443, "platform_address"),
    named(
        "smoke",
        "node-7.example",
        &["45.33.40.7"],
        "platform_address",
    ),
    // Default deny (#8): a name no allow glob matches is refused before it is resolved (the
    // answers here are never looked at: see `default_deny_names_are_never_resolved`).
    named(
        "locked",
        "exfil-7e3f9a0c.attacker.test",
        &["93.184.216.34"],
        "not_allowed",
    ),
    named(
        "locked",
        "api.partner.example",
        &["93.184.216.34"],
        "allowed",
    ),
    named(
        "locked-cidr",
        "in-range.example",
        &["93.184.216.34"],
        "allowed",
    ),
    named(
        "locked-cidr",
        "out-of-range.example",
        &["8.8.8.8"],
        "not_allowed",
    ),
];

/// The verdict class for one row, the way `flow::Gateway::open` computes it.
fn verdict(policy: &EgressPolicy, case: &Case) -> Result<(), Denial> {
    let host = parse_host(case.host).map_err(|error| Denial::BadHost {
        input: case.host.to_owned(),
        error,
    })?;
    let tags = FlowTags {
        tenant: case.tenant.to_owned(),
        document: "doc".to_owned(),
    };
    let check = policy.check_request(&tags, &host, case.port)?;
    let answers: Vec<IpAddr> = match &host {
        airlock_egress::host::Host::Ip(ip) => vec![*ip],
        airlock_egress::host::Host::Name(_) => {
            case.answers.iter().map(|a| a.parse().unwrap()).collect()
        }
    };
    check.select(&answers).verdict
}

#[test]
fn every_ssrf_case_gets_its_verdict() {
    assert!(
        CASES.len() >= 160,
        "the cases of #9, #13, #8 and #23 are all here"
    );
    let policy = policy();
    let mut failures = Vec::new();
    for case in CASES {
        let got = match verdict(&policy, case) {
            Ok(()) => "allowed".to_owned(),
            Err(denial) => {
                assert!(denial.to_string().starts_with("denied: "), "{denial}");
                denial.class().to_owned()
            }
        };
        if got != case.expect {
            failures.push(format!(
                "{}:{} as {} (answers {:?}): expected {}, got {got}",
                case.host, case.port, case.tenant, case.answers, case.expect
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    println!("{} SSRF cases passed", CASES.len());
}

/// Whether a flow to `host` as `tenant` gets past step 1, that is whether the gateway would ask
/// its resolver.
fn would_resolve(policy: &EgressPolicy, tenant: &str, host: &str, port: u16) -> bool {
    let host = parse_host(host).unwrap();
    let tags = FlowTags {
        tenant: tenant.to_owned(),
        document: "doc".to_owned(),
    };
    policy.check_request(&tags, &host, port).is_ok()
}

#[test]
fn default_deny_names_are_never_resolved() {
    let policy = policy();
    // The review's case: a strict tenant, a name off its allow list.
    let refused = verdict(
        &policy,
        &Case {
            tenant: "locked",
            host: "exfil-7e3f9a0c.attacker.test",
            port: 80,
            answers: &[],
            expect: "",
        },
    )
    .unwrap_err();
    assert_eq!(refused.class(), "not_allowed");
    assert_eq!(
        refused.to_string(),
        "denied: exfil-7e3f9a0c.attacker.test is not on the allow list of tenant locked (default deny); ask your admin to allow it"
    );
    assert!(!would_resolve(
        &policy,
        "locked",
        "exfil-7e3f9a0c.attacker.test",
        80
    ));
    assert!(!would_resolve(
        &policy,
        "strict",
        "exfil-7e3f9a0c.attacker.test",
        443
    ));
    // Name lookups take the same step 1.
    let tags = FlowTags {
        tenant: "locked".to_owned(),
        document: "doc".to_owned(),
    };
    let exfil = parse_host("exfil-7e3f9a0c.attacker.test").unwrap();
    assert_eq!(
        policy.check_name(&tags, &exfil).unwrap_err().class(),
        "not_allowed"
    );
    // Allowed names are resolved; with an allow CIDR any name must be (its answers may fall
    // in the range); a default-allow tenant resolves everything not denied.
    assert!(would_resolve(&policy, "locked", "api.partner.example", 80));
    assert!(would_resolve(
        &policy,
        "locked-cidr",
        "anything.example",
        80
    ));
    assert!(would_resolve(
        &policy,
        "smoke",
        "exfil-7e3f9a0c.attacker.test",
        80
    ));
    // Literal addresses are not names: decided by their address as before.
    assert!(would_resolve(&policy, "locked", "93.184.216.34", 80));
}

#[test]
fn a_default_allow_tenant_cannot_reach_the_azure_wireserver() {
    let policy = policy();
    for host in ["168.63.129.16", "[::ffff:168.63.129.16]"] {
        let denial = verdict(&policy, &as_tenant("smoke", host, 80, "")).unwrap_err();
        assert_eq!(denial.class(), "cloud_metadata", "{host}");
        assert!(denial.to_string().ends_with("it can never be reached"));
    }
    let denial = verdict(&policy, &as_tenant("carve", "168.63.129.16", 80, "")).unwrap_err();
    assert_eq!(denial.class(), "cloud_metadata");
}

#[test]
fn reasons_read_well_in_a_cell() {
    let policy = policy();
    let reason = |tenant: &'static str, host: &'static str, port: u16| {
        verdict(&policy, &as_tenant(tenant, host, port, ""))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        reason("smoke", "10.0.0.5", 5432),
        "denied: 10.0.0.5 is a private address (RFC 1918); ask your admin for a carve-out"
    );
    assert_eq!(
        reason("carve", "169.254.169.254", 80),
        "denied: 169.254.169.254 is the cloud metadata address; it can never be reached"
    );
    assert_eq!(
        reason("smoke", "[64:ff9b::a9fe:a9fe]", 80),
        "denied: 64:ff9b::a9fe:a9fe is an IPv6 form of 169.254.169.254 (NAT64, RFC 6052), which is the cloud metadata address; it can never be reached"
    );
    assert!(reason("smoke", "0x7f.1", 80).contains("non-canonical notation"));
    assert_eq!(
        reason("smoke", "8.8.8.8", 25),
        "denied: port 25 is denied by the gateway's rules"
    );
}

#[test]
fn mixed_answers_keep_the_denied_ones_for_the_audit() {
    let policy = policy();
    let host = parse_host("mixed.example").unwrap();
    let tags = FlowTags {
        tenant: "smoke".to_owned(),
        document: "doc".to_owned(),
    };
    let check = policy.check_request(&tags, &host, 443).unwrap();
    let answers: Vec<IpAddr> = ["10.0.0.5", "169.254.169.254", "93.184.216.34", "8.8.4.4"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let selection = check.select(&answers);
    assert!(selection.verdict.is_ok());
    let chosen: Vec<IpAddr> = selection.candidates.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(
        chosen,
        vec![answers[2], answers[3]],
        "allowed answers in answer order"
    );
    let denied: Vec<IpAddr> = selection.denied.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(denied, vec![answers[0], answers[1]]);
}

/// A name lookup's verdict, the way `lookup::Gateway::lookup` computes it: the host rules
/// without the port rules, then every answer on every port.
fn name_verdict(policy: &EgressPolicy, tenant: &str, host: &str, answers: &[&str]) -> String {
    let host = parse_host(host).unwrap();
    let tags = FlowTags {
        tenant: tenant.to_owned(),
        document: "doc".to_owned(),
    };
    let check = match policy.check_name(&tags, &host) {
        Ok(check) => check,
        Err(denial) => return denial.class().to_owned(),
    };
    let answers: Vec<IpAddr> = answers.iter().map(|a| a.parse().unwrap()).collect();
    match check.select(&answers).verdict {
        Ok(()) => "allowed".to_owned(),
        Err(denial) => {
            assert!(denial.to_string().starts_with("denied: "), "{denial}");
            denial.class().to_owned()
        }
    }
}

#[test]
fn a_name_is_denied_only_if_every_port_of_every_answer_is() {
    let policy = policy();
    let cases: &[(&str, &str, &[&str], &str)] = &[
        ("smoke", "intranet.example", &["10.0.0.5"], "private"),
        (
            "smoke",
            "meta.example",
            &["169.254.169.254"],
            "cloud_metadata",
        ),
        ("smoke", "local.example", &["127.0.0.1"], "loopback"),
        ("smoke", "one.example", &["1.1.1.1"], "denied_address"),
        (
            "smoke",
            "x.blocked.example",
            &["93.184.216.34"],
            "denied_host",
        ),
        (
            "smoke",
            "metadata.google.internal",
            &["8.8.4.4"],
            "reserved_name",
        ),
        // A carve-out for one port, or a deny for one port, leaves the name usable.
        ("smoke", "port-carve.example", &["10.0.0.1"], "allowed"),
        ("smoke", "port-deny.example", &["8.8.8.8"], "allowed"),
        // The gateway's listener is one port of a carved-out address; the others are open.
        ("smoke", "proxy-host.example", &["192.168.1.100"], "allowed"),
        (
            "smoke",
            "public.example",
            &["10.0.0.5", "93.184.216.34"],
            "allowed",
        ),
        (
            "mixed",
            "mixed.example",
            &["10.0.0.5", "93.184.216.34"],
            "mixed_answers",
        ),
        // Port rules are for flows: a tenant allowing only 443 may still look names up.
        ("strict", "a.allowed.com", &["93.184.216.34"], "allowed"),
        ("strict", "other.com", &["93.184.216.34"], "not_allowed"),
        ("carve", "carved.example", &["10.0.0.5"], "allowed"),
        (
            "carve",
            "carved-denied.example",
            &["10.0.0.66"],
            "denied_address",
        ),
        (
            "carve",
            "meta.example",
            &["169.254.169.254"],
            "cloud_metadata",
        ),
        (
            "nobody",
            "public.example",
            &["93.184.216.34"],
            "unknown_tenant",
        ),
    ];
    let mut failures = Vec::new();
    for (tenant, host, answers, expect) in cases {
        let got = name_verdict(&policy, tenant, host, answers);
        if got != *expect {
            failures.push(format!(
                "{host} as {tenant} ({answers:?}): expected {expect}, got {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
