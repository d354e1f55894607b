//! The namespace's firewall as one nf_tables transaction over `NETLINK_NETFILTER`. In `nft`
//! syntax, the table is:
//!
//! ```text
//! table inet airlock {
//!   chain to_node {
//!     type nat hook output priority -100; policy accept;
//!     ip daddr 127.0.0.0/8 return
//!     meta nfproto ipv4 meta l4proto tcp redirect to :15001
//!   }
//!   chain only_lo {
//!     type filter hook output priority filter; policy drop;
//!     ip daddr 127.0.0.0/8 accept
//!     ip daddr 10.255.255.1 accept
//!     ip6 daddr ::1 accept
//!     meta nfproto ipv6 drop
//!   }
//! }
//! ```
//!
//! Each rule is the expressions `nft` compiles it to (`nft --debug=netlink` prints them): load
//! a field into register 1, compare, then a verdict or the redirect. `ip daddr` in an `inet`
//! table only matches IPv4 because the rule checks `meta nfproto` first, as `nft` adds. The
//! redirect rule names IPv4 itself: IPv6 TCP used to be redirected to `[::1]:15001`, where the
//! node does not listen (security review #22). `::1` is accepted so servers on IPv6 loopback
//! inside the jail work; other IPv6 is dropped by an explicit rule (the policy would drop it
//! too; the rule says it on purpose).
//!
//! The messages are built here, sans IO, and sent by [`install`]; the tests check them.

use netlink_packet_core::{DefaultNla, NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, Cmp, DataAttribute, Expressions, Hook, HookNumber, Immediate, InetHookNumber,
    Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute, TableAttribute,
    Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::nftables::{ChainMessage, RuleMessage, TableMessage};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use super::netlink::{Netlink, Request};
use super::{NetworkError, REDIRECT_PORT, Step, VETH_ADDRESS};

const TABLE: &str = "airlock";
const NAT_CHAIN: &str = "to_node";
const FILTER_CHAIN: &str = "only_lo";

/// `NFNL_SUBSYS_NFTABLES`: the batch markers name the subsystem they open.
const NFTABLES_SUBSYSTEM: u16 = 10;
/// `NFT_PAYLOAD_NETWORK_HEADER`.
const NETWORK_HEADER: u32 = 1;
/// Where the destination address starts in an IPv4 and an IPv6 header.
const V4_DADDR: u32 = 16;
const V6_DADDR: u32 = 24;
/// `NFPROTO_IPV4`, `NFPROTO_IPV6` (the values `meta nfproto` loads).
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// `IPPROTO_TCP`.
const TCP: u8 = 6;
/// `NF_DROP`, `NF_ACCEPT`: the netfilter verdicts (the chain policies use them too).
const DROP: u32 = 0;
const ACCEPT: u32 = 1;
/// The `redir` expression's attributes (`NFTA_REDIR_REG_PROTO_MIN`, `NFTA_REDIR_FLAGS`) and
/// `NF_NAT_RANGE_PROTO_SPECIFIED`: redirect to the port in the register.
const REDIR_REG_PROTO_MIN: u16 = 1;
const REDIR_FLAGS: u16 = 3;
const NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
/// The priority of the NAT chain, before conntrack confirms (`dstnat` for output is -100).
const NAT_PRIORITY: i32 = -100;
/// `priority filter`.
const FILTER_PRIORITY: i32 = 0;

/// Installs the table in the calling thread's network namespace.
pub(super) fn install() -> Result<(), NetworkError> {
    let mut netlink = Netlink::open(netlink_sys::protocols::NETLINK_NETFILTER, "netfilter")?;
    netlink.request(transaction())
}

/// The whole table as one transaction: Linux applies all of it or none.
pub(super) fn transaction() -> Vec<Request<NetfilterMessage>> {
    let mut requests = vec![Request::silent(control(ControlMessage::BatchBegin))];
    requests.push(Request::acked(
        Step::Table,
        inet(NfTablesMessage::NewTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.to_owned())],
        })),
        NLM_F_CREATE,
    ));
    requests.push(Request::acked(
        Step::NatChain,
        base_chain(NAT_CHAIN, "nat", NAT_PRIORITY, ACCEPT),
        NLM_F_CREATE,
    ));
    for (name, expressions) in nat_rules() {
        requests.push(rule(NAT_CHAIN, name, expressions));
    }
    requests.push(Request::acked(
        Step::FilterChain,
        base_chain(FILTER_CHAIN, "filter", FILTER_PRIORITY, DROP),
        NLM_F_CREATE,
    ));
    for (name, expressions) in filter_rules() {
        requests.push(rule(FILTER_CHAIN, name, expressions));
    }
    requests.push(Request::silent(control(ControlMessage::BatchEnd)));
    requests
}

/// The NAT chain's rules, named for errors.
fn nat_rules() -> Vec<(&'static str, Vec<Expressions>)> {
    let mut loopback = v4_destination_prefix(&[127]);
    loopback.push(verdict(Verdict::Return));
    let mut redirect = nfproto(NFPROTO_IPV4);
    redirect.extend([
        Expressions::Meta(vec![
            Meta::Key(MetaKey::L4Proto),
            Meta::DestinationRegister(Register::Reg1),
        ]),
        equals(vec![TCP]),
        Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Reg1),
            Immediate::Data(DataAttribute::Value(REDIRECT_PORT.to_be_bytes().to_vec())),
        ]),
        Expressions::Other {
            expression_type: "redir".to_owned(),
            attributes: vec![
                DefaultNla::new(
                    REDIR_REG_PROTO_MIN,
                    u32::from(Register::Reg1).to_be_bytes().to_vec(),
                ),
                DefaultNla::new(
                    REDIR_FLAGS,
                    NAT_RANGE_PROTO_SPECIFIED.to_be_bytes().to_vec(),
                ),
            ],
        },
    ]);
    vec![
        ("ip daddr 127.0.0.0/8 return", loopback),
        ("redirect", redirect),
    ]
}

/// The filter chain's rules, named for errors.
fn filter_rules() -> Vec<(&'static str, Vec<Expressions>)> {
    let mut loopback = v4_destination_prefix(&[127]);
    loopback.push(verdict(Verdict::Other(ACCEPT)));
    let mut veth = v4_destination_prefix(&VETH_ADDRESS.octets());
    veth.push(verdict(Verdict::Other(ACCEPT)));
    let mut v6_loopback = nfproto(NFPROTO_IPV6);
    v6_loopback.extend([
        load_payload(V6_DADDR, 16),
        equals(std::net::Ipv6Addr::LOCALHOST.octets().to_vec()),
        verdict(Verdict::Other(ACCEPT)),
    ]);
    let mut v6 = nfproto(NFPROTO_IPV6);
    v6.push(verdict(Verdict::Other(DROP)));
    vec![
        ("ip daddr 127.0.0.0/8 accept", loopback),
        ("ip daddr 10.255.255.1 accept", veth),
        ("ip6 daddr ::1 accept", v6_loopback),
        ("meta nfproto ipv6 drop", v6),
    ]
}

/// `meta nfproto <family>`.
fn nfproto(family: u8) -> Vec<Expressions> {
    vec![
        Expressions::Meta(vec![
            Meta::Key(MetaKey::Nfproto),
            Meta::DestinationRegister(Register::Reg1),
        ]),
        equals(vec![family]),
    ]
}

/// `ip daddr <prefix>` for a prefix of whole bytes (`127` is `127.0.0.0/8`).
fn v4_destination_prefix(prefix: &[u8]) -> Vec<Expressions> {
    let mut expressions = nfproto(NFPROTO_IPV4);
    expressions.push(load_payload(V4_DADDR, prefix.len() as u32));
    expressions.push(equals(prefix.to_vec()));
    expressions
}

fn load_payload(offset: u32, len: u32) -> Expressions {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(NETWORK_HEADER),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
}

fn equals(value: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(value)),
    ])
}

fn verdict(code: Verdict) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(code)])),
    ])
}

fn base_chain(name: &str, kind: &str, priority: i32, policy: u32) -> NetfilterMessage {
    inet(NfTablesMessage::NewChain(ChainMessage {
        attributes: vec![
            ChainAttribute::Table(TABLE.to_owned()),
            ChainAttribute::Name(name.to_owned()),
            ChainAttribute::Hook(vec![
                Hook::Number(HookNumber::from(InetHookNumber::LocalOut)),
                // The attribute is a big-endian s32; the crate carries it as u32.
                Hook::Priority(priority as u32),
            ]),
            ChainAttribute::Type(kind.to_owned()),
            ChainAttribute::Policy(policy),
        ],
    }))
}

fn rule(
    chain: &str,
    name: &'static str,
    expressions: Vec<Expressions>,
) -> Request<NetfilterMessage> {
    Request::acked(
        Step::Rule(name),
        inet(NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.to_owned()),
                RuleAttribute::Chain(chain.to_owned()),
                RuleAttribute::Expressions(expressions.into_iter().map(Into::into).collect()),
            ],
        })),
        NLM_F_CREATE | NLM_F_APPEND,
    )
}

fn inet(message: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        message,
    )
}

fn control(message: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFTABLES_SUBSYSTEM),
        message,
    )
}
