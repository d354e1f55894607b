//! The namespace's rules as messages (anywhere), and as behaviour in a real namespace (as root,
//! with no `ip` or `nft` program involved: this crate runs none).

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_packet_core::{NLM_F_ACK, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nftables::{NfTablesMessage, RuleAttribute};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};

use super::*;

#[test]
fn the_transaction_is_one_batch_with_every_rule_acknowledged() {
    let requests = rules::transaction();
    let mut kinds = Vec::new();
    for request in requests {
        let mut message = request.message;
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        // What goes out parses back as nf_tables (the crate's decoder agrees with its encoder).
        let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).unwrap();
        assert_eq!(
            request.step.is_some(),
            parsed.header.flags & NLM_F_ACK != 0,
            "acknowledged exactly when a step is named"
        );
        let NetlinkPayload::InnerMessage(inner) = parsed.payload else {
            panic!("a request, not {:?}", parsed.payload);
        };
        kinds.push(match inner.inner {
            NetfilterMessageInner::None(control) => format!("{control:?}"),
            NetfilterMessageInner::NfTables(NfTablesMessage::NewTable(_)) => "table".to_owned(),
            NetfilterMessageInner::NfTables(NfTablesMessage::NewChain(_)) => "chain".to_owned(),
            NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)) => {
                let expressions = rule
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RuleAttribute::Expressions(e) => Some(e.len()),
                        _ => None,
                    })
                    .unwrap();
                format!("rule({expressions})")
            }
            other => panic!("unexpected {other:?}"),
        });
        if let Some(Step::Rule(name)) = request.step {
            assert!(!name.is_empty());
        }
    }
    assert_eq!(
        kinds,
        [
            "BatchBegin",
            "table",
            "chain",
            "rule(5)", // nfproto, daddr, cmp, cmp, return
            "rule(6)", // nfproto, cmp, l4proto, cmp, port, redir
            "chain",
            "rule(5)",
            "rule(5)",
            "rule(5)",
            "rule(3)", // nfproto, cmp, drop
            "BatchEnd",
        ]
    );
}

#[test]
fn refusals_say_what_is_missing() {
    let not_root = NetworkError::Refused {
        step: Step::Table,
        source: std::io::Error::from_raw_os_error(nix::libc::EPERM),
    };
    assert!(not_root.to_string().contains("needs root"), "{not_root}");
    let no_nat = NetworkError::Refused {
        step: Step::NatChain,
        source: std::io::Error::from_raw_os_error(nix::libc::ENOENT),
    };
    assert!(no_nat.to_string().contains("CONFIG_NFT_NAT"), "{no_nat}");
    let no_redirect = NetworkError::Refused {
        step: Step::Rule("redirect"),
        source: std::io::Error::from_raw_os_error(nix::libc::EOPNOTSUPP),
    };
    assert!(
        no_redirect.to_string().contains("CONFIG_NFT_REDIR"),
        "{no_redirect}"
    );
    let no_netfilter = NetworkError::Netlink {
        family: "netfilter",
        source: std::io::Error::from_raw_os_error(nix::libc::EPROTONOSUPPORT),
    };
    assert!(
        no_netfilter.to_string().contains("lacks nf_tables"),
        "{no_netfilter}"
    );
}

/// Runs `f` on a thread inside `network`'s namespace, as the kernel would be.
fn inside<T: Send + 'static>(network: &JailNetwork, f: impl FnOnce() -> T + Send + 'static) -> T {
    let namespace = network.namespace.try_clone().unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn can_build() -> bool {
    if let Some(missing) = missing_support() {
        println!("skipped: this host lacks {missing}");
        return false;
    }
    true
}

/// The meaning of the old `nft` rules, kept: TCP anywhere reaches the node's listener with its
/// original destination; UDP other than the node's DNS is refused at once; loopback works.
#[test]
fn tcp_is_redirected_to_the_node_and_udp_is_dropped() {
    if !can_build() {
        return;
    }
    let network = JailNetwork::create().unwrap();
    network.redirect.set_nonblocking(false).unwrap();
    let redirect = network.redirect.try_clone().unwrap();
    let (udp, tcp) = inside(&network, || {
        let udp = UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .send_to(b"x", "8.8.8.8:53")
            .map_err(|e| e.raw_os_error());
        let tcp = TcpStream::connect_timeout(
            &SocketAddr::from(([1, 1, 1, 1], 80)),
            Duration::from_secs(5),
        )
        .map(drop)
        .map_err(|e| e.kind());
        (udp, tcp)
    });
    assert_eq!(udp, Err(Some(nix::libc::EPERM)), "UDP elsewhere is dropped");
    assert_eq!(tcp, Ok(()), "TCP to 1.1.1.1:80 is accepted by the node");
    let (accepted, _) = redirect.accept().unwrap();
    let original =
        nix::sys::socket::getsockopt(&accepted, nix::sys::socket::sockopt::OriginalDst).unwrap();
    assert_eq!(
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(original.sin_addr.s_addr)),
            u16::from_be(original.sin_port)
        ),
        SocketAddrV4::new(Ipv4Addr::new(1, 1, 1, 1), 80)
    );
    // The node's DNS socket is reachable; so is a loopback server of the kernel's own.
    let dns_port = network.dns.local_addr().unwrap().port();
    let (dns, loopback) = inside(&network, move || {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dns = udp.send_to(b"x", ("127.0.0.1", dns_port)).map(drop);
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(server.local_addr().unwrap()).map(drop);
        (dns.map_err(|e| e.kind()), client.map_err(|e| e.kind()))
    });
    assert_eq!(dns, Ok(()));
    assert_eq!(loopback, Ok(()));
}

/// Security review #22: `::1` works inside the jail, and other IPv6 fails at once instead of
/// being redirected to an IPv4-only listener.
#[test]
fn ipv6_loopback_works_and_other_ipv6_is_refused_at_once() {
    if !can_build() {
        return;
    }
    let network = JailNetwork::create().unwrap();
    let seen = inside(&network, || {
        let Ok(server) = TcpListener::bind("[::1]:0") else {
            return None; // IPv6 disabled on this host: nothing to check.
        };
        let port = server.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("::1", port)).unwrap();
        let (mut accepted, _) = server.accept().unwrap();
        std::io::Write::write_all(&mut accepted, b"v6").unwrap();
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        let elsewhere = TcpStream::connect_timeout(
            &"[2001:db8::1]:80".parse().unwrap(),
            Duration::from_secs(5),
        )
        .map(drop)
        .map_err(|e| e.kind());
        let udp = UdpSocket::bind("[::]:0")
            .unwrap()
            .send_to(b"x", "[2001:db8::1]:53")
            .map(drop)
            .map_err(|e| e.kind());
        Some((got, elsewhere, udp))
    });
    let Some((got, elsewhere, udp)) = seen else {
        println!("skipped: IPv6 is disabled on this host");
        return;
    };
    assert_eq!(&got, b"v6", "a server on [::1] inside the jail answers");
    // No IPv6 route leaves the namespace: refused at once, never a timeout.
    assert!(
        matches!(
            elsewhere,
            Err(ErrorKind::NetworkUnreachable | ErrorKind::PermissionDenied)
        ),
        "{elsewhere:?}"
    );
    assert!(
        matches!(
            udp,
            Err(ErrorKind::NetworkUnreachable | ErrorKind::PermissionDenied)
        ),
        "{udp:?}"
    );
}
