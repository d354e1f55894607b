//! The escape suite: hostile code run as cells through a real node (started in-process, reached
//! by editor clients over QUIC and WebSocket) whose kernel is jailed, each attempt's outcome
//! asserted from the outputs the client received.
//!
//! Every attempt prints one line, `name: BLOCKED <exception> <errno>` or `name: ESCAPED <what it
//! got>`, and the test checks the line. Limits (memory, pids, disk, CPU) use the small tier of
//! `jail_common::test_limits`. Needs root (the jail's preflight); run as
//! `cargo test -p airlock-node --test jail_escape`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod jail_common;

use std::time::{Duration, Instant};

use airlock_client::Client;
use airlock_protocol::{ClientMessage, DeathCause, KernelStatus, RunStatus, ServerMessage};
use jail_common::{JailedNode, PATIENCE, idle, jail_config, next_matching, ok_cell, test_limits};

/// Helpers every attempt cell uses.
const PRELUDE: &str = r#"
import os, ctypes, errno, socket, subprocess, signal, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sys_call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
def attempt(name, fn):
    try:
        r = fn()
        print(f"{name}: ESCAPED {r!r}")
    except Exception as e:
        code = getattr(e, 'errno', None) or 0
        print(f"{name}: BLOCKED {type(e).__name__} {errno.errorcode.get(code, '-')}")
"#;

/// The outcome line of attempt `name` in `out`.
fn outcome<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no outcome for {name} in:\n{out}"))
}

/// Asserts attempt `name` was blocked with one of `allowed` (`"<Exception> <ERRNO>"`).
fn blocked(out: &str, name: &str, allowed: &[&str]) {
    let line = outcome(out, name);
    println!("{name:>28}: {line}");
    let reason = line
        .strip_prefix("BLOCKED ")
        .unwrap_or_else(|| panic!("{name} escaped: {line}"));
    assert!(
        allowed.contains(&reason),
        "{name} was blocked, but by {reason:?}, not one of {allowed:?}"
    );
}

/// A node with a jailed kernel, and an editor connected over QUIC that has run the prelude.
async fn with_prelude() -> (JailedNode, Client) {
    let node = JailedNode::start(jail_config("escape")).await;
    let mut client = node.editor(&node.quic()).await;
    ok_cell(&mut client, PRELUDE).await;
    (node, client)
}

const NOT_FOUND: &str = "FileNotFoundError ENOENT";
const READ_ONLY: &str = "OSError EROFS";
const DENIED: &str = "PermissionError EPERM";
const NO_ACCESS: &str = "PermissionError EACCES";

#[tokio::test]
async fn filesystem_escapes_fail() {
    let (node, mut client) = with_prelude().await;
    // A fake node secret outside the jail, next to the kernel's runtime folder.
    let secret = node.runtime.path().join("token-signing.pem");
    std::fs::write(&secret, "SECRET").unwrap();
    let secret = secret.display();
    let node_pid = std::process::id();
    let out = ok_cell(&mut client, &format!(
            r#"
attempt("read node secret", lambda: open("{secret}").read())
attempt("read /etc/shadow", lambda: open("/etc/shadow").read())
attempt("read node environ", lambda: open("/proc/{node_pid}/environ").read())
attempt("read /root/.cargo", lambda: os.listdir("/root/.cargo"))
attempt("write /usr", lambda: open("/usr/pwned", "w"))
attempt("write /etc", lambda: open("/etc/passwd", "a"))
attempt("write /", lambda: open("/pwned", "w"))
attempt("write python install", lambda: open(os.path.join(os.path.dirname(os.__file__), "pwned.py"), "w"))
os.symlink("{secret}", "/work/planted")
attempt("follow planted symlink", lambda: open("/work/planted").read())
os.symlink("/root/.bash_history", "/work/planted2")
attempt("follow symlink to /root", lambda: open("/work/planted2").read())
attempt("read /proc/kcore", lambda: open("/proc/kcore", "rb").read(16))
attempt("write /sys", lambda: open("/sys/kernel/uevent_helper", "w").write("x"))
attempt("write /proc/sys", lambda: open("/proc/sys/kernel/hostname", "w").write("x"))
attempt("mknod device", lambda: os.mknod("/work/mem", 0o600 | 0o020000, os.makedev(1, 1)))
attempt("open host disk", lambda: open("/dev/sda", "rb"))
attempt("list /root", lambda: os.listdir("/root"))
attempt("list data folder", lambda: os.listdir("/root/.local/share/airlock"))
attempt("read documents", lambda: os.listdir("/root/.local/share/airlock/documents"))
print("passage modes:", oct(os.stat("/root").st_mode & 0o777), oct(os.stat("/root/.local").st_mode & 0o777))
print("uid:", os.getuid(), os.geteuid(), "home:", os.environ["HOME"], "cwd:", os.getcwd())
print("env has node vars:", any(k.startswith(("AIRLOCK", "AWS", "CARGO")) for k in os.environ))
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("caps:", status["CapInh"].strip(), status["CapPrm"].strip(), status["CapEff"].strip(), status["CapBnd"].strip(), status["CapAmb"].strip())
print("no_new_privs:", status["NoNewPrivs"].strip(), "seccomp:", status["Seccomp"].strip())
r = subprocess.run(["/usr/bin/su", "root", "-c", "id -u"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
print("su:", r.returncode, repr(r.stdout.strip()))
r = subprocess.run(["/usr/bin/passwd", "-S", "root"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
print("passwd:", r.returncode)
r = subprocess.run(["/usr/bin/newgrp", "root"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
print("newgrp:", r.returncode)
"#
        ))
        .await;
    blocked(&out, "read node secret", &[NOT_FOUND]);
    blocked(&out, "read /etc/shadow", &[NOT_FOUND]);
    blocked(&out, "read node environ", &[NOT_FOUND]);
    blocked(&out, "read /root/.cargo", &[NOT_FOUND]);
    blocked(&out, "write /usr", &[READ_ONLY, NO_ACCESS]);
    blocked(&out, "write /etc", &[READ_ONLY, NO_ACCESS]);
    blocked(&out, "write /", &[READ_ONLY, NO_ACCESS]);
    blocked(&out, "write python install", &[READ_ONLY, NO_ACCESS]);
    blocked(&out, "follow planted symlink", &[NOT_FOUND]);
    blocked(&out, "follow symlink to /root", &[NOT_FOUND]);
    // Absent on kernels built without CONFIG_PROC_KCORE.
    blocked(&out, "read /proc/kcore", &[NO_ACCESS, DENIED, NOT_FOUND]);
    blocked(&out, "write /sys", &[NOT_FOUND]);
    blocked(&out, "write /proc/sys", &[NO_ACCESS, DENIED, READ_ONLY]);
    blocked(&out, "mknod device", &[DENIED]);
    blocked(&out, "open host disk", &[NOT_FOUND]);
    println!("{out}");
    // The folders on the way to the Python installation can be crossed, not listed
    // (review #10, `bind_mount_exposes_host_data`).
    blocked(&out, "list /root", &[NO_ACCESS]);
    blocked(&out, "list data folder", &[NO_ACCESS]);
    blocked(&out, "read documents", &[NOT_FOUND]);
    assert!(out.contains("passage modes: 0o711 0o711"), "{out}");
    assert!(
        out.contains("uid: 1000 1000 home: /work cwd: /work"),
        "{out}"
    );
    assert!(out.contains("env has node vars: False"), "{out}");
    let zero = "0000000000000000";
    assert!(
        out.contains(&format!("caps: {zero} {zero} {zero} {zero} {zero}")),
        "every capability is dropped:\n{out}"
    );
    assert!(out.contains("no_new_privs: 1 seccomp: 2"), "{out}");
    let su = out.lines().find(|l| l.starts_with("su:")).unwrap();
    assert!(!su.starts_with("su: 0 "), "su gained root: {su}");
    assert!(!su.contains("'0'"), "su ran a command as root: {su}");
    assert!(!out.contains("passwd: 0"), "passwd ran setuid: {out}");
    assert!(!out.contains("newgrp: 0"), "newgrp ran setuid: {out}");
    node.shutdown().await;
}

#[tokio::test]
async fn process_and_syscall_escapes_fail() {
    // Two nodes, each with its own jailed kernel: the first one's cell tries to kill the other's.
    let ((node, mut client), other) =
        tokio::join!(with_prelude(), JailedNode::start(jail_config("escape")));
    let mut other_client = other.editor(&other.ws()).await;
    let other_pid = other.node.kernel_pid.unwrap();
    let node_pid = std::process::id();
    let out = ok_cell(
        &mut client,
        &format!(
            r#"
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("proc pids:", pids)
attempt("signal node", lambda: os.kill({node_pid}, signal.SIGKILL))
attempt("signal other kernel", lambda: os.kill({other_pid}, signal.SIGKILL))
attempt("ptrace init", lambda: sys_call(101, 16, 1, 0, 0))
attempt("ptrace node", lambda: sys_call(101, 16, {node_pid}, 0, 0))
attempt("process_vm_readv", lambda: sys_call(310, 1, 0, 0, 0, 0, 0))
attempt("mount tmpfs", lambda: sys_call(165, b"none", b"/work", b"tmpfs", 0, 0))
attempt("umount /proc", lambda: sys_call(166, b"/proc", 2))
attempt("unshare user", lambda: sys_call(272, 0x10000000))
attempt("unshare net", lambda: sys_call(272, 0x40000000))
attempt("clone newuser", lambda: sys_call(56, 0x10000000 | 17, 0, 0, 0, 0))
attempt("setns host net", lambda: sys_call(308, os.open("/proc/1/ns/net", os.O_RDONLY), 0))
attempt("chroot", lambda: os.chroot("/work"))
attempt("pivot_root", lambda: sys_call(155, b"/work", b"/work"))
attempt("init_module", lambda: sys_call(175, 0, 0, b""))
attempt("finit_module", lambda: sys_call(313, os.open("/dev/null", os.O_RDONLY), b"", 0))
attempt("delete_module", lambda: sys_call(176, b"ext4", 0))
attempt("kexec_load", lambda: sys_call(246, 0, 0, 0, 0))
attempt("keyctl", lambda: sys_call(250, 0, 0, 0, 0))
attempt("add_key", lambda: sys_call(248, b"user", b"x", b"y", 1, -3))
attempt("bpf", lambda: sys_call(321, 0, 0, 0))
attempt("perf_event_open", lambda: sys_call(298, 0, 0, -1, -1, 0))
attempt("userfaultfd", lambda: sys_call(323, 0))
attempt("open_by_handle_at", lambda: sys_call(304, 0, 0, 0))
attempt("io_uring_setup", lambda: sys_call(425, 1, 0))
attempt("reboot", lambda: sys_call(169, 0xfee1dead, 672274793, 0x1234567, 0))
attempt("swapon", lambda: sys_call(167, b"/work/swap", 0))
attempt("settimeofday", lambda: sys_call(164, 0, 0))
attempt("sethostname", lambda: socket.sethostname("pwned"))
th = __import__("threading").Thread(target=lambda: print("thread ran"))
th.start(); th.join()
r = subprocess.run(["/bin/sh", "-c", "echo child ok"], capture_output=True, text=True)
print("subprocess:", r.stdout.strip())
"#
        ),
    )
    .await;
    println!("{out}");
    let pids_line = out.lines().find(|l| l.starts_with("proc pids:")).unwrap();
    assert!(
        pids_line.starts_with("proc pids: [1,") || pids_line == "proc pids: [1]",
        "the kernel is pid 1 of its own namespace: {pids_line}"
    );
    assert!(!pids_line.contains(&format!(" {node_pid},")), "{pids_line}");
    blocked(&out, "signal node", &["ProcessLookupError ESRCH"]);
    blocked(&out, "signal other kernel", &["ProcessLookupError ESRCH"]);
    for name in [
        "ptrace init",
        "ptrace node",
        "process_vm_readv",
        "mount tmpfs",
        "umount /proc",
        "unshare user",
        "unshare net",
        "clone newuser",
        "setns host net",
        "chroot",
        "pivot_root",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "keyctl",
        "add_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "open_by_handle_at",
        "io_uring_setup",
        "reboot",
        "swapon",
        "settimeofday",
        "sethostname",
    ] {
        blocked(&out, name, &["OSError EPERM", DENIED]);
    }
    assert!(out.contains("thread ran"), "threads still work: {out}");
    assert!(
        out.contains("subprocess: child ok"),
        "subprocesses still work: {out}"
    );
    // The other kernel survived the attempt to kill it.
    assert_eq!(
        ok_cell(&mut other_client, "print('still here')").await,
        "still here\n"
    );
    tokio::join!(other.shutdown(), node.shutdown());
}

/// The kernel's runtime folder is no host filesystem (review #2, `runtime_folder_host_disk`):
/// the connection file is read-only, the socket folder is a 1 MiB tmpfs with 64 inodes, and the
/// host's folder sees nothing of what the cell tries.
#[tokio::test]
async fn runtime_folder_host_disk() {
    let (node, mut client) = with_prelude().await;
    let before = tree_size(node.runtime.path());
    let out = ok_cell(
        &mut client,
        r#"
import json
from ipykernel.connect import get_connection_file
connection = get_connection_file()
folder = os.path.dirname(connection)
sockets = os.path.dirname(json.load(open(connection))["ip"])
def many(where):
    made = []
    try:
        while len(made) < 20000:
            path = os.path.join(where, f"f{len(made)}")
            open(path, "w").close()
            made.append(path)
    finally:
        print(f"made {len(made)} in {where == sockets and 'sockets' or 'folder'}")
        for path in made:
            os.remove(path)
def big(where):
    path = os.path.join(where, "big")
    try:
        with open(path, "wb") as f:
            for _ in range(16):
                f.write(b"x" * (1 << 20)); f.flush()
    finally:
        if os.path.exists(path):
            os.remove(path)
attempt("runtime folder files", lambda: many(folder))
attempt("runtime folder big file", lambda: big(folder))
attempt("socket folder files", lambda: many(sockets))
attempt("socket folder big file", lambda: big(sockets))
attempt("rewrite connection file", lambda: open(connection, "a"))
"#,
    )
    .await;
    println!("{out}");
    // The folder is the jail's read-only root, owned by a uid the kernel's namespace lacks.
    blocked(&out, "runtime folder files", &[READ_ONLY, NO_ACCESS]);
    blocked(&out, "runtime folder big file", &[READ_ONLY, NO_ACCESS]);
    blocked(&out, "socket folder files", &["OSError ENOSPC"]);
    blocked(&out, "socket folder big file", &["OSError ENOSPC"]);
    blocked(&out, "rewrite connection file", &[READ_ONLY]);
    let made: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("made ")?.strip_suffix(" in sockets"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        made < 64,
        "the socket tmpfs holds 64 inodes, the cell made {made}"
    );
    assert_eq!(
        tree_size(node.runtime.path()),
        before,
        "the host's runtime folder changed"
    );
    // The kernel's own sockets still work.
    assert_eq!(
        ok_cell(&mut client, "print('still here')").await,
        "still here\n"
    );
    node.shutdown().await;
}

/// (entries, bytes) of everything under `dir`, symbolic links not followed.
fn tree_size(dir: &std::path::Path) -> (u64, u64) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let meta = entry.path().symlink_metadata().unwrap();
        total.0 += 1;
        total.1 += meta.len();
        if meta.is_dir() {
            let (entries, bytes) = tree_size(&entry.path());
            total = (total.0 + entries, total.1 + bytes);
        }
    }
    total
}

/// The kernel's process: a session of its own, no terminal, every resource limit set, an OOM
/// score that puts it first, and no descriptor of the node's (review #7, #12, #18, #19).
#[tokio::test]
async fn the_kernel_process_inherits_nothing_of_the_node() {
    // A descriptor the node leaks without close-on-exec, as a careless C library might.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "airlock-leaked-fd").unwrap();
    let leaked = nix::unistd::dup(std::os::fd::AsRawFd::as_raw_fd(secret.as_file())).unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&secret.as_file().metadata().unwrap());
    let (node, mut client) = with_prelude().await;
    let out = ok_cell(
        &mut client,
        &format!(
            r#"
import resource
def leaked(n):
    if os.fstat(n).st_ino != {inode}:
        raise OSError(errno.EBADF, "another file")
    return os.pread(n, 64, 0)
attempt("open /dev/tty", lambda: open("/dev/tty", "rb"))
attempt("read leaked fd", lambda: leaked({leaked}))
attempt("lower oom_score_adj", lambda: open("/proc/self/oom_score_adj", "w").write("0"))
attempt("raise nice", lambda: os.nice(-1))
attempt("real-time scheduling", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
print("oom_score_adj:", open("/proc/self/oom_score_adj").read().strip())
for name in sorted(n for n in dir(resource) if n.startswith("RLIMIT_")):
    soft, hard = resource.getrlimit(getattr(resource, name))
    print("limit", name, soft, hard)
"#
        ),
    )
    .await;
    println!("{out}");
    nix::unistd::close(leaked).unwrap();
    blocked(&out, "open /dev/tty", &[NOT_FOUND]);
    blocked(&out, "read leaked fd", &["OSError EBADF"]);
    blocked(&out, "lower oom_score_adj", &[NO_ACCESS]);
    blocked(&out, "raise nice", &[NO_ACCESS, DENIED]);
    blocked(&out, "real-time scheduling", &[NO_ACCESS, DENIED]);
    assert!(out.contains("oom_score_adj: 500\n"), "{out}");
    let limits = test_limits();
    let inf = -1; // resource.RLIM_INFINITY
    let expected: Vec<(&str, i64, i64)> = vec![
        ("RLIMIT_AS", inf, inf),
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", inf, inf),
        ("RLIMIT_DATA", inf, inf),
        (
            "RLIMIT_FSIZE",
            limits.work_dir_bytes as i64,
            limits.work_dir_bytes as i64,
        ),
        ("RLIMIT_MEMLOCK", 64 << 10, 64 << 10),
        ("RLIMIT_MSGQUEUE", 819_200, 819_200),
        ("RLIMIT_NICE", 0, 0),
        (
            "RLIMIT_NOFILE",
            limits.open_files as i64,
            limits.open_files as i64,
        ),
        ("RLIMIT_NPROC", limits.pids as i64, limits.pids as i64),
        ("RLIMIT_RSS", inf, inf),
        ("RLIMIT_RTPRIO", 0, 0),
        ("RLIMIT_RTTIME", 0, 0),
        ("RLIMIT_SIGPENDING", 1024, 1024),
        ("RLIMIT_STACK", 8 << 20, 64 << 20),
    ];
    for (name, soft, hard) in expected {
        let line = format!("limit {name} {soft} {hard}\n");
        assert!(out.contains(&line), "{line:?} missing:\n{out}");
    }
    // Seen from the host: the kernel and its supervisor lead no session of the node's.
    let supervisor = nix::unistd::Pid::from_raw(node.node.kernel_pid.unwrap() as i32);
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).unwrap();
    let kernel: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let ours = nix::unistd::getsid(None).unwrap();
    for pid in [supervisor, nix::unistd::Pid::from_raw(kernel)] {
        let session = nix::unistd::getsid(Some(pid)).unwrap();
        assert_eq!(session, supervisor, "{pid}");
        assert_ne!(session, ours, "{pid} shares the node's session");
    }
    node.shutdown().await;
}

/// The seccomp filter's argument checks (review #6, #11, #14): socket families and protocols,
/// risky system calls refused with `EPERM`, unknown ones answered `ENOSYS`; and what Python and
/// its libraries need still works.
#[tokio::test]
async fn seccomp_argument_holes_are_closed() {
    let (node, mut client) = with_prelude().await;
    let out = ok_cell(
        &mut client,
        r#"
pair = (ctypes.c_int * 2)()
attempt("socketpair tipc", lambda: sys_call(53, 30, 5, 0, pair))
attempt("socketpair netlink audit", lambda: sys_call(53, 16, 3, 9, pair))
attempt("socket sctp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132))
attempt("socket sctp seqpacket", lambda: socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, 132))
attempt("socket udplite", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136))
attempt("socket udplite v6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, 136))
attempt("socket mptcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262))
attempt("socket ping", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
attempt("socket tcp as udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_TCP))
attempt("modify_ldt", lambda: sys_call(154, 0, ctypes.create_string_buffer(16), 16))
attempt("memfd_secret", lambda: sys_call(447, 0))
attempt("io_setup", lambda: sys_call(206, 1, ctypes.byref(ctypes.c_ulong(0))))
attempt("personality read_implies_exec", lambda: sys_call(135, 0x0400000))
attempt("personality addr_no_randomize", lambda: sys_call(135, 0x0040000))
attempt("set_mempolicy", lambda: sys_call(238, 0, 0, 0))
attempt("mbind", lambda: sys_call(237, 0, 4096, 0, 0, 0, 0))
attempt("unknown syscall 1000", lambda: sys_call(1000))
attempt("unknown syscall 463", lambda: sys_call(463))
attempt("x32 syscall", lambda: sys_call(0x40000000 | 39))
print("personality query:", sys_call(135, 0xffffffff), sys_call(135, 0))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.IPPROTO_TCP); s.close()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP); s.close()
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.close()
a, b = socket.socketpair(); a.sendall(b"x"); print("unix pair:", b.recv(1)); a.close(); b.close()
print("getaddrinfo:", socket.getaddrinfo("localhost", 80)[0][4][1])
open("/work/mode", "w").close()
print("fchmodat2:", sys_call(452, -100, b"/work/mode", 0o600, 0))
import numpy, pandas
print("numpy:", int(numpy.arange(4).sum()), "pandas:", len(pandas.DataFrame({"a": [1, 2]})))
r = subprocess.run(["/bin/sh", "-c", "echo child ok"], capture_output=True, text=True)
print("subprocess:", r.stdout.strip())
"#,
    )
    .await;
    println!("{out}");
    for name in [
        "socketpair tipc",
        "socketpair netlink audit",
        "socket sctp",
        "socket sctp seqpacket",
        "socket udplite",
        "socket udplite v6",
        "socket mptcp",
        "socket ping",
        "socket tcp as udp",
        "modify_ldt",
        "memfd_secret",
        "io_setup",
        "personality read_implies_exec",
        "personality addr_no_randomize",
        "set_mempolicy",
        "mbind",
        "x32 syscall",
    ] {
        blocked(&out, name, &["OSError EPERM", DENIED]);
    }
    for name in ["unknown syscall 1000", "unknown syscall 463"] {
        blocked(&out, name, &["OSError ENOSYS"]);
    }
    for expected in [
        "personality query: 0 0",
        "unix pair: b'x'",
        "getaddrinfo: 80",
        "fchmodat2: 0",
        "numpy: 6 pandas: 2",
        "subprocess: child ok",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn network_escapes_fail() {
    let (node, mut client) = with_prelude().await;
    // The node's own ports, on the host's loopback.
    let ws_port = node.node.ws_addr.unwrap().port();
    let quic_port = node.node.quic_addr.unwrap().port();
    // Another service on the host's loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // The host's own address on its outside interface (no packet is sent to learn it), with a
    // listener on every interface.
    let wide = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    wide.set_nonblocking(true).unwrap();
    let wide_port = wide.local_addr().unwrap().port();
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let host_ip = match probe.connect("192.0.2.1:9") {
        Ok(()) => probe.local_addr().unwrap().ip().to_string(),
        Err(_) => "10.0.0.1".to_owned(),
    };
    // An abstract Unix socket on the host: abstract names belong to the network namespace.
    let abstract_name = format!("airlock-test-{}", std::process::id());
    let _abstract = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let out = ok_cell(&mut client, &format!(
            r#"
def connect(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    t = time.monotonic()
    try:
        s.connect((host, port))
    finally:
        print(f"{{host}} took {{time.monotonic() - t:.3f}}s")
        s.close()
attempt("host loopback service", lambda: connect("127.0.0.1", {port}))
attempt("node websocket port", lambda: connect("127.0.0.1", {ws_port}))
def datagram(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.send(b"\xc0 not quic")
        # A port nobody listens on answers with ICMP port unreachable: ECONNREFUSED here.
        return s.recv(64)
    finally:
        s.close()
attempt("node quic port", lambda: datagram("127.0.0.1", {quic_port}))
attempt("host outside address", lambda: connect("{host_ip}", {wide_port}))
def abstract():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\0{abstract_name}")
attempt("host abstract socket", abstract)
attempt("metadata address", lambda: connect("169.254.169.254", 80))
attempt("public address", lambda: connect("1.1.1.1", 80))
attempt("udp to public dns", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))
attempt("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt("packet socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
attempt("ipv6 raw socket", lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
print("interfaces:", [name for _, name in socket.if_nameindex()])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
c = socket.create_connection(srv.getsockname(), timeout=5)
print("own loopback works:", srv.accept()[0] is not None)
"#
        ))
        .await;
    println!("{out}");
    blocked(&out, "host outside address", &["OSError ENETUNREACH"]);
    blocked(
        &out,
        "host abstract socket",
        &["ConnectionRefusedError ECONNREFUSED"],
    );
    blocked(
        &out,
        "host loopback service",
        &["ConnectionRefusedError ECONNREFUSED"],
    );
    // The kernel's network namespace has a loopback of its own, where the node listens on nothing.
    let refused_or_unreachable = [
        "ConnectionRefusedError ECONNREFUSED",
        "OSError ENETUNREACH",
        "OSError EHOSTUNREACH",
    ];
    blocked(&out, "node websocket port", &refused_or_unreachable);
    blocked(&out, "node quic port", &refused_or_unreachable);
    blocked(&out, "metadata address", &["OSError ENETUNREACH"]);
    blocked(&out, "public address", &["OSError ENETUNREACH"]);
    blocked(&out, "udp to public dns", &["OSError ENETUNREACH"]);
    blocked(&out, "raw socket", &[DENIED]);
    blocked(&out, "packet socket", &[DENIED]);
    blocked(&out, "ipv6 raw socket", &[DENIED]);
    for line in out.lines().filter(|l| l.contains(" took ")) {
        let seconds: f64 = line
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(seconds < 0.5, "a blocked connection fails at once: {line}");
    }
    assert!(out.contains("interfaces: ['lo']"), "{out}");
    assert!(out.contains("own loopback works: True"), "{out}");
    assert!(
        listener.accept().is_err(),
        "the host service saw no connection"
    );
    // The node saw no connection from the cell: the next client to join gets the next session.
    let first = client.welcome().session.0;
    let later = node.editor(&node.ws()).await;
    assert_eq!(
        later.welcome().session.0,
        first + 1,
        "a session opened between the two clients"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn limits_hold_and_explain_themselves() {
    let limits = test_limits();
    let (node, mut client) = with_prelude().await;
    // A second editor, over WebSocket: every client is told why the kernel died.
    let mut watcher = node.editor(&node.ws()).await;
    // Disk: the work dir is full long before the node's disk is.
    let out = ok_cell(
        &mut client,
        &format!(
            r#"
def fill(path):
    with open(path, "wb") as f:
        for _ in range({chunks}):
            f.write(b"x" * (1 << 20)); f.flush()
attempt("fill work dir", lambda: fill("/work/big"))
os.remove("/work/big")
attempt("fill /tmp", lambda: fill("/tmp/big"))
os.remove("/tmp/big")
"#,
            chunks = (limits.work_dir_bytes >> 20) * 2
        ),
    )
    .await;
    blocked(&out, "fill work dir", &["OSError ENOSPC", "OSError EFBIG"]);
    blocked(&out, "fill /tmp", &["OSError ENOSPC", "OSError EFBIG"]);

    // Processes: forking stops at pids.max, with an error Python can catch.
    let out = ok_cell(
        &mut client,
        r#"
children = []
def fork_all():
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(30); os._exit(0)
        children.append(pid)
attempt("fork until failure", fork_all)
print("forked:", len(children))
for pid in children:
    os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
"#,
    )
    .await;
    blocked(&out, "fork until failure", &["BlockingIOError EAGAIN"]);
    let forked: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("forked: "))
        .unwrap()
        .parse()
        .unwrap();
    println!("forked {forked} processes before pids.max {}", limits.pids);
    assert!(forked < limits.pids, "{forked}");

    // Memory: twice the limit kills the kernel, and the bridge says why.
    let hog = format!(
        "blocks = []\nfor _ in range({}):\n    blocks.append(bytearray(1 << 20))",
        (limits.memory_bytes >> 20) * 2
    );
    let mut seen = None;
    let report = tokio::time::timeout(
        PATIENCE,
        client.run(&hog, |message| {
            if let Some(cause) = death(message.clone()) {
                seen = Some(cause);
            }
        }),
    )
    .await
    .expect("the memory hog ended in time")
    .expect("run accepted");
    assert_eq!(report.done.status, RunStatus::Aborted);
    let runner_saw = match seen {
        Some(cause) => cause,
        None => next_matching(&mut client, death).await,
    };
    let watcher_saw = next_matching(&mut watcher, death).await;
    for (who, cause) in [("QUIC", runner_saw), ("WebSocket", watcher_saw)] {
        println!("memory hog, as the {who} client heard it: {cause}");
        assert_eq!(
            cause,
            DeathCause::OutOfMemory {
                limit_bytes: Some(limits.memory_bytes)
            },
            "{who}"
        );
        assert_eq!(
            cause.to_string(),
            "kernel died: out of memory (limit 256 MiB)",
            "{who}"
        );
    }
    client.send(&ClientMessage::Restart).await.unwrap();
    idle(&mut watcher).await;
    assert_eq!(ok_cell(&mut client, "print('back')").await, "back\n");
    node.shutdown().await;
}

/// Why the kernel died, if `message` says it did.
fn death(message: ServerMessage) -> Option<DeathCause> {
    match message {
        ServerMessage::Kernel(KernelStatus::Dead { cause }) => Some(cause),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained() {
    let node = JailedNode::start(jail_config("forkbomb")).await;
    let mut client = node.editor(&node.quic()).await;
    // A timer in the test process keeps ticking while the bomb goes off.
    let ticker = tokio::spawn(async {
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut worst = Duration::ZERO;
        let mut last = Instant::now();
        for _ in 0..80 {
            interval.tick().await;
            worst = worst.max(last.elapsed());
            last = Instant::now();
        }
        worst
    });
    client
        .execute(
        "import os, time\nfor _ in range(12):\n    try:\n        os.fork()\n    except OSError:\n        pass\ntime.sleep(2)\nprint('survived', flush=True)",
    )
    .await
    .unwrap();
    let worst = ticker.await.unwrap();
    println!("worst timer gap during the fork bomb: {worst:?}");
    assert!(
        worst < Duration::from_millis(1000),
        "the test process stalled for {worst:?}"
    );
    client.send(&ClientMessage::Interrupt).await.unwrap();
    client.send(&ClientMessage::Restart).await.unwrap();
    next_matching(&mut client, |m| {
        matches!(m, ServerMessage::Kernel(KernelStatus::Restarting)).then_some(())
    })
    .await;
    idle(&mut client).await;
    assert_eq!(ok_cell(&mut client, "print(1 + 1)").await, "2\n");
    node.shutdown().await;
}

#[tokio::test]
async fn cpu_hog_is_held_to_its_quota() {
    let config = jail_config("cpu");
    let limits = config.limits;
    let parent = config.cgroup_parent.clone();
    let node = JailedNode::start(config).await;
    let mut client = node.editor(&node.quic()).await;
    let out = ok_cell(
        &mut client,
        r#"
import os, time
def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
start_wall = time.monotonic(); start = os.times()
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        spin(3); os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
t = os.times()
wall = time.monotonic() - start_wall
cpu = (t.children_user + t.children_system) - (start.children_user + start.children_system)
print(f"cpu {cpu:.3f} wall {wall:.3f} ratio {cpu / wall:.3f}")
"#,
    )
    .await;
    let ratio: f64 = out.split_whitespace().last().unwrap().parse().unwrap();
    let host = airlock_node::jail::preflight().unwrap();
    let cgroups = host.cgroup_parents(&parent);
    let kernel_dir = std::fs::read_dir(cgroups.last().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().is_dir())
        .unwrap()
        .file_name();
    let stat = std::fs::read_to_string(
        host.cpu_cgroup(&parent, kernel_dir.to_str().unwrap())
            .join("cpu.stat"),
    )
    .unwrap();
    println!(
        "two spinning processes under a {} CPU quota: {out}cpu.stat:\n{stat}",
        limits.cpus
    );
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(throttled > 0, "the quota throttled the hog");
    assert!(
        ratio <= limits.cpus * 1.2,
        "usage {ratio} over quota {}",
        limits.cpus
    );
    node.shutdown().await;
}
