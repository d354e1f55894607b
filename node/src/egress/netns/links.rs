//! The namespace's interfaces, address and route, as `NETLINK_ROUTE` requests: what
//! `ip link set lo up`, `ip link add airlock0 type veth peer name airlock1`, both ends up,
//! `ip addr add 10.255.255.1/32 dev airlock0` and `ip route add default dev airlock0` send.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{Netlink, Request};
use super::{NetworkError, Step, VETH_ADDRESS};

/// The end of the veth pair that carries the default route.
const VETH: &str = "airlock0";
/// Its peer, also in the namespace.
const VETH_PEER: &str = "airlock1";
/// `lo` is interface 1 in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: u32 = 1;

/// Sets up the calling thread's network namespace.
pub(super) fn configure() -> Result<(), NetworkError> {
    let mut netlink = Netlink::open(netlink_sys::protocols::NETLINK_ROUTE, "route")?;
    netlink.request(vec![
        Request::acked(Step::LoopbackUp, link_up(LOOPBACK_INDEX), 0),
        Request::acked(Step::CreateVeth, veth_pair(), NLM_F_CREATE | NLM_F_EXCL),
    ])?;
    // The veth's indexes are Linux's choice (a fresh namespace may already hold tunnel
    // devices). Its ends come up only now: a veth end cannot open before its peer is attached.
    let index = |name| {
        nix::net::if_::if_nametoindex(name).map_err(|errno| NetworkError::Refused {
            step: Step::CreateVeth,
            source: errno.into(),
        })
    };
    let (veth, peer) = (index(VETH)?, index(VETH_PEER)?);
    netlink.request(vec![
        Request::acked(Step::VethUp, link_up(peer), 0),
        Request::acked(Step::VethUp, link_up(veth), 0),
        Request::acked(Step::VethAddress, address(veth), NLM_F_CREATE | NLM_F_EXCL),
        Request::acked(
            Step::DefaultRoute,
            default_route(veth),
            NLM_F_CREATE | NLM_F_EXCL,
        ),
    ])
}

fn up(message: &mut LinkMessage) {
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
}

fn link_up(index: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    up(&mut link);
    RouteNetlinkMessage::SetLink(link)
}

fn veth_pair() -> RouteNetlinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(VETH_PEER.to_owned()));
    let mut veth = LinkMessage::default();
    veth.attributes.push(LinkAttribute::IfName(VETH.to_owned()));
    veth.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    RouteNetlinkMessage::NewLink(veth)
}

fn address(index: u32) -> RouteNetlinkMessage {
    let mut address = AddressMessage::default();
    address.header.family = AddressFamily::Inet;
    address.header.prefix_len = 32;
    address.header.scope = AddressScope::Universe;
    address.header.index = index;
    let ip = IpAddr::V4(VETH_ADDRESS);
    address.attributes.push(AddressAttribute::Local(ip));
    address.attributes.push(AddressAttribute::Address(ip));
    RouteNetlinkMessage::NewAddress(address)
}

/// `default dev airlock0`: no gateway, so link scope (as `ip route` makes it).
fn default_route(index: u32) -> RouteNetlinkMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.destination_prefix_length = 0;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Link;
    route.header.kind = RouteType::Unicast;
    route.attributes.push(RouteAttribute::Oif(index));
    RouteNetlinkMessage::NewRoute(route)
}
