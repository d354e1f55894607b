//! A kernel's network namespace, made by the node before the kernel starts.
//!
//! The node creates the namespace on a short-lived thread (`unshare(CLONE_NEWNET)` changes only
//! that thread), configures it with `ip` and `nft` run from that thread (children inherit its
//! namespace), and binds its own sockets inside it before the thread ends: sockets keep the
//! namespace they were made in. The kernel then enters the namespace with `setns` (see
//! `jail::child`). What the namespace holds:
//!
//! - `lo`, up; and `airlock0`, one end of a veth pair whose other end (`airlock1`) is in the
//!   same namespace, carrying the default route, so that a connect to any IPv4 address gets as
//!   far as netfilter instead of failing with "network unreachable". Nothing sent to
//!   `airlock0` goes anywhere. (A veth rather than a `dummy` device: kernels built without the
//!   dummy driver are common on cloud VMs; veth is there wherever containers run.)
//! - nftables (`table inet airlock`): every TCP connection to a non-loopback address is
//!   redirected to the node's listener on port [`REDIRECT_PORT`]; then every packet not
//!   addressed to the namespace itself (`127.0.0.0/8` — where redirected connections now go —
//!   and `airlock0`'s address, where the node's answers go) is dropped, so UDP (except the
//!   node's DNS on `127.0.0.1:53`), ICMP and IPv6 fail at once with "operation not permitted".
//!   (The filter matches addresses, not `oifname "lo"`: the output interface netfilter reports
//!   is the one routed before the redirect.)
//! - the node's sockets: a TCP listener on `0.0.0.0:REDIRECT_PORT` (the redirect target; the
//!   original destination comes from conntrack, `SO_ORIGINAL_DST`) and a UDP socket on
//!   `127.0.0.1:53`, the jail's `/etc/resolv.conf` name server.
//!
//! The kernel cannot change any of this: the namespace belongs to the host's user namespace,
//! and the kernel holds no capability there. When the kernel dies and the node drops its
//! sockets and the namespace handle, the namespace is gone.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

/// Where the node listens, inside the namespace, for redirected connections.
pub(crate) const REDIRECT_PORT: u16 = 15001;

/// Interfaces, addresses and routes (`ip -batch`).
const LINKS: &str = "\
link set lo up
link add airlock0 type veth peer name airlock1
link set airlock1 up
link set airlock0 up
addr add 10.255.255.1/32 dev airlock0
route add default dev airlock0
";

/// The firewall (`nft -f`).
const RULES: &str = "\
table inet airlock {
  chain to_node {
    type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.0/8 return
    meta l4proto tcp redirect to :15001
  }
  chain only_lo {
    type filter hook output priority filter; policy drop;
    ip daddr { 127.0.0.0/8, 10.255.255.1 } accept
  }
}
";

/// Why the namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("could not create the kernel's network namespace: {0} (needs root, CAP_SYS_ADMIN)")]
    Unshare(#[source] nix::Error),
    #[error(
        "could not run `{program}` to set up the kernel's network: {source}; egress needs \
         iproute2 and nftables (apt-get install iproute2 nftables)"
    )]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` refused the kernel's network set-up: {stderr}")]
    Refused {
        program: &'static str,
        stderr: String,
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
    /// Makes and configures a fresh namespace. Blocks for the few milliseconds `ip` and `nft`
    /// take.
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
    run("ip", &["-batch", "-"], LINKS)?;
    run("nft", &["-f", "-"], RULES)?;
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

/// Runs `program` with `input` on its standard input, in this thread's namespaces.
fn run(program: &'static str, args: &[&str], input: &str) -> Result<(), NetworkError> {
    let spawn_error = |source| NetworkError::Spawn { program, source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Refused {
            program,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// What is missing on this host for kernels to have a network through the gateway, if anything.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = ["ip", "nft"]
        .into_iter()
        .filter(|program| {
            Command::new(program)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the {} command{} (apt-get install iproute2 nftables)",
            missing.join(" and "),
            if missing.len() > 1 { "s" } else { "" }
        )
    })
}
