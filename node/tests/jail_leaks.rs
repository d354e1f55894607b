//! A retired jail leaves nothing behind: 50 jailed kernels are started and shut down, two at a
//! time, and afterwards no process, mount, cgroup or network namespace of theirs remains.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod jail_common;

use std::collections::BTreeSet;
use std::path::Path;

use jail_common::{Jailed, jail_config};

/// Pids of every process whose parent chain reaches this test process.
fn descendants() -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let mut parents = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: i32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        parents.insert(pid, ppid);
    }
    parents
        .keys()
        .copied()
        .filter(|&pid| {
            let mut current = pid;
            while let Some(&parent) = parents.get(&current) {
                if parent == me {
                    return true;
                }
                if parent <= 1 {
                    return false;
                }
                current = parent;
            }
            false
        })
        .collect()
}

fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|line| {
            line.split(' ')
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn netns_entries() -> usize {
    std::fs::read_dir("/run/netns")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn nsfs_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - nsfs "))
        .count()
}

fn folders_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jails_leave_nothing_behind() {
    let config = jail_config("leaks");
    let host = airlock_node::jail::preflight().unwrap();
    let cgroup_parents = host.cgroup_parents(&config.cgroup_parent);
    let mounts_before = mounts();
    let netns_before = netns_entries();
    let nsfs_before = nsfs_mounts();
    let mut kernel_pids = Vec::new();
    for round in 0..25 {
        let (mut a, mut b) =
            tokio::join!(Jailed::start(config.clone()), Jailed::start(config.clone()));
        kernel_pids.extend([a.bridge.pid().unwrap(), b.bridge.pid().unwrap()]);
        let (x, y) = tokio::join!(a.ok("print(6 * 7)"), b.ok("print(6 * 7)"));
        assert_eq!((x.as_str(), y.as_str()), ("42\n", "42\n"), "round {round}");
        for parent in &cgroup_parents {
            assert_eq!(folders_under(parent).len(), 2, "one cgroup per live kernel");
        }
        let runtimes = tokio::join!(a.shutdown(), b.shutdown());
        for runtime in [runtimes.0, runtimes.1] {
            let left = std::fs::read_dir(runtime.path()).unwrap().count();
            assert_eq!(left, 0, "the kernel's runtime folder is removed");
        }
    }
    let left = descendants();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    for pid in &kernel_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "kernel {pid} is gone"
        );
    }
    let added: Vec<_> = mounts().difference(&mounts_before).cloned().collect();
    assert!(added.is_empty(), "mounts left in the host: {added:?}");
    for parent in &cgroup_parents {
        let left = folders_under(parent);
        assert!(
            left.is_empty(),
            "cgroups left under {}: {left:?}",
            parent.display()
        );
        // The last shutdown removed the test's (then empty) cgroup parent as well.
        assert!(!parent.exists(), "{} is left", parent.display());
    }
    assert_eq!(netns_entries(), netns_before, "/run/netns unchanged");
    assert_eq!(nsfs_mounts(), nsfs_before, "no namespace pinned by a mount");
    println!(
        "50 jails started and retired; {} kernel pids checked; cgroups, mounts, namespaces clean",
        kernel_pids.len()
    );
}

/// Descriptors this process holds that are sockets or namespaces.
fn sockets_and_namespaces() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target.starts_with("socket:") || target.starts_with("net:")
        })
        .count()
}

/// Egress on, towards a gateway that is not there: what the kernel sees of the network the node
/// built, and that retiring the jail lets go of the namespace (its handle and the node's sockets
/// in it are the only things keeping it alive once the kernel is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_jails_see_only_the_node_and_release_their_namespace() {
    if let Some(missing) = airlock_node::egress::netns::missing_tools() {
        println!("skipped: egress needs {missing}");
        return;
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["node.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let egress = airlock_node::egress::Egress::new(airlock_client::tunnel::TunnelClientConfig {
        // Nothing listens on the discard port; no flow is ever assigned anyway.
        gateway: "127.0.0.1:9".parse().unwrap(),
        server_name: "egress".to_owned(),
        gateway_roots: vec![cert.der().clone()],
        identity: airlock_client::tunnel::Identity {
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        },
    });
    let mut config = jail_config("egress-leaks");
    config.egress = Some(egress);
    let before = sockets_and_namespaces();
    for round in 0..3 {
        let mut jailed = Jailed::start(config.clone()).await;
        let seen = jailed
            .ok(r#"
import socket
print(open("/etc/resolv.conf").read().split()[1])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    udp.sendto(b"x", ("8.8.8.8", 53))
    print("udp sent")
except PermissionError:
    print("udp dropped")
try:
    tcp = socket.create_connection(("1.1.1.1", 80), timeout=5)
    tcp.sendall(b"GET / HTTP/1.0\r\n\r\n")
    print("tcp read", tcp.recv(10))
except ConnectionResetError:
    print("tcp reset")
"#)
            .await;
        // DNS is the node's; UDP elsewhere is dropped at once; TCP reaches the node, which
        // resets it because it has no document (so no tags) yet.
        assert_eq!(seen, "127.0.0.1\nudp dropped\ntcp reset\n", "round {round}");
        jailed.shutdown().await;
    }
    assert_eq!(
        sockets_and_namespaces(),
        before,
        "every namespace handle and socket of the retired jails is closed"
    );
}
