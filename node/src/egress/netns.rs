//! A kernel's network namespace, made by the node before the kernel starts.
//!
//! The node creates the namespace on a short-lived thread (`unshare(CLONE_NEWNET)` changes only
//! that thread), configures it over netlink sockets opened on that thread (a socket belongs to
//! the namespace it was made in), and binds its own sockets inside it before the thread ends.
//! The kernel then enters the namespace with `setns` (see `jail::child`). No program is run:
//! a fresh machine without iproute2 or nftables installed gets the same namespace. What the
//! namespace holds:
//!
//! - `lo`, up (with `127.0.0.1` and, where IPv6 is on, `::1`); and `airlock0`, one end of a veth
//!   pair whose other end (`airlock1`) is in the same namespace, carrying the default route, so
//!   that a connect to any IPv4 address gets as far as netfilter instead of failing with
//!   "network unreachable". Nothing sent to `airlock0` goes anywhere. (A veth rather than a
//!   `dummy` device: kernels built without the dummy driver are common on cloud VMs; veth is
//!   there wherever containers run.) See [`links`].
//! - nftables (`table inet airlock`, see [`rules`]): every IPv4 TCP connection to a
//!   non-loopback address is redirected to the node's listener on port [`REDIRECT_PORT`]; then
//!   every packet not addressed to the namespace itself (`127.0.0.0/8` — where redirected
//!   connections now go —, `airlock0`'s address, where the node's answers go, and `::1`) is
//!   dropped, so UDP (except the node's DNS on `127.0.0.1:53`), ICMP and IPv6 other than
//!   loopback fail at once. IPv6 is never redirected: the node's listener is IPv4 only.
//! - the node's sockets: a TCP listener on `0.0.0.0:REDIRECT_PORT` (the redirect target; the
//!   original destination comes from conntrack, `SO_ORIGINAL_DST`) and a UDP socket on
//!   `127.0.0.1:53`, the jail's `/etc/resolv.conf` name server.
//!
//! The kernel cannot change any of this: the namespace belongs to the host's user namespace,
//! and the kernel holds no capability there. When the kernel dies and the node drops its
//! sockets and the namespace handle, the namespace is gone.
//!
//! # Why these crates
//!
//! Links, addresses and routes are `netlink-packet-route` messages; the firewall is
//! `netlink-packet-netfilter`'s nf_tables messages, sent as one transaction (batch). Both are
//! the rust-netlink project's pure-Rust message crates (MIT, the family under `rtnetlink`), so
//! one small blocking request/acknowledge loop ([`netlink`], over `netlink-sys`) drives both
//! on the set-up thread, with no async runtime and no C library. Not chosen: `rtnetlink`
//! (async only: it would need a runtime on a thread that lives for a millisecond), `rustables`
//! (GPL-3.0, incompatible with Airlock's Apache-2.0), `nftnl` (binds the C libnftnl), and
//! `neli` (its nf_tables support is bare attributes, the messages would be hand-built anyway).

mod links;
mod netlink;
mod rules;

use std::os::fd::OwnedFd;

/// Where the node listens, inside the namespace, for redirected connections.
pub(crate) const REDIRECT_PORT: u16 = 15001;

/// The address of `airlock0`, where the node's answers to redirected connections come from.
const VETH_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 255, 255, 1);

/// One thing the node asks Linux for while it builds a namespace; said in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    LoopbackUp,
    CreateVeth,
    VethUp,
    VethAddress,
    DefaultRoute,
    Table,
    NatChain,
    FilterChain,
    Rule(&'static str),
    /// The nf_tables transaction's begin or end marker.
    Batch,
}

impl Step {
    /// The Linux feature a step needs, named as its kernel option.
    fn feature(self) -> &'static str {
        match self {
            Step::LoopbackUp | Step::VethUp | Step::VethAddress | Step::DefaultRoute => {
                "IPv4 networking"
            }
            Step::CreateVeth => "veth devices (CONFIG_VETH)",
            Step::Table | Step::Batch => "nf_tables with inet tables (CONFIG_NF_TABLES_INET)",
            Step::NatChain => "nf_tables NAT chains (CONFIG_NFT_NAT)",
            Step::FilterChain => "nf_tables filter chains (CONFIG_NF_TABLES)",
            Step::Rule("redirect") => "the nf_tables redirect expression (CONFIG_NFT_REDIR)",
            Step::Rule(_) => "nf_tables payload and meta matching (CONFIG_NF_TABLES)",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::LoopbackUp => f.write_str("bring `lo` up"),
            Step::CreateVeth => f.write_str("create the veth pair airlock0/airlock1"),
            Step::VethUp => f.write_str("bring the veth pair airlock0/airlock1 up"),
            Step::VethAddress => write!(f, "give airlock0 the address {VETH_ADDRESS}/32"),
            Step::DefaultRoute => f.write_str("add the default route through airlock0"),
            Step::Table => f.write_str("add the nftables table `inet airlock`"),
            Step::NatChain => f.write_str("add the nftables NAT chain `to_node`"),
            Step::FilterChain => f.write_str("add the nftables filter chain `only_lo`"),
            Step::Rule(rule) => write!(f, "add the nftables rule `{rule}`"),
            Step::Batch => f.write_str("open an nftables transaction"),
        }
    }
}

/// What an errno from a refused step means for the operator.
fn hint(step: Step, error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => {
            "; the node needs root (CAP_NET_ADMIN) to build kernels' networks".to_owned()
        }
        Some(
            nix::libc::EOPNOTSUPP
            | nix::libc::EAFNOSUPPORT
            | nix::libc::EPROTONOSUPPORT
            | nix::libc::ENOENT,
        ) => format!("; this Linux lacks {}", step.feature()),
        _ => String::new(),
    }
}

/// Why the namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("could not create the kernel's network namespace: {0} (needs root, CAP_SYS_ADMIN)")]
    Unshare(#[source] nix::Error),
    #[error(
        "could not open a {family} netlink socket to set up the kernel's network: {source}{}",
        if *.family == "netfilter" {
            "; this Linux lacks nf_tables (CONFIG_NETFILTER_NETLINK, CONFIG_NF_TABLES)"
        } else {
            ""
        }
    )]
    Netlink {
        family: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Linux refused to {step} in the kernel's network: {source}{}", hint(*.step, .source))]
    Refused {
        step: Step,
        #[source]
        source: std::io::Error,
    },
    #[error("could not open the node's {what} socket in the kernel's network: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread setting up the kernel's network panicked")]
    Panicked,
}

/// A kernel's network namespace and the node's sockets in it.
#[derive(Debug)]
pub struct JailNetwork {
    /// The namespace (`/proc/thread-self/ns/net` of the thread that made it).
    pub(crate) namespace: OwnedFd,
    /// Redirected TCP connections arrive here.
    pub(crate) redirect: std::net::TcpListener,
    /// The jail's name server.
    pub(crate) dns: std::net::UdpSocket,
}

impl JailNetwork {
    /// Makes and configures a fresh namespace. Blocks for the millisecond or so the netlink
    /// exchanges take.
    pub fn create() -> Result<JailNetwork, NetworkError> {
        std::thread::spawn(build)
            .join()
            .map_err(|_| NetworkError::Panicked)?
    }
}

fn build() -> Result<JailNetwork, NetworkError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(NetworkError::Unshare)?;
    let namespace = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|source| NetworkError::Socket {
            what: "namespace",
            source,
        })?
        .into();
    links::configure()?;
    rules::install()?;
    let socket_error = |what| move |source| NetworkError::Socket { what, source };
    let redirect = std::net::TcpListener::bind(("0.0.0.0", REDIRECT_PORT))
        .map_err(socket_error("redirect"))?;
    redirect
        .set_nonblocking(true)
        .map_err(socket_error("redirect"))?;
    let dns = std::net::UdpSocket::bind(("127.0.0.1", 53)).map_err(socket_error("DNS"))?;
    dns.set_nonblocking(true).map_err(socket_error("DNS"))?;
    Ok(JailNetwork {
        namespace,
        redirect,
        dns,
    })
}

/// What this host lacks for kernels to have a network through the gateway, if anything: builds
/// one namespace and throws it away, so the answer names the very step that fails (not root,
/// no nf_tables, no NAT or redirect support, no veth driver).
/// Worded to follow "needs" or "lacks".
pub fn missing_support() -> Option<String> {
    JailNetwork::create()
        .err()
        .map(|error| format!("network namespaces the node can configure ({error})"))
}

/// The name callers knew [`missing_support`] by, when the node ran `ip` and `nft`: it no longer
/// looks for any program.
pub fn missing_tools() -> Option<String> {
    missing_support()
}

#[cfg(test)]
mod tests;
