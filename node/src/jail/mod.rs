//! The jail: every kernel runs sandboxed, as an unprivileged user that cannot reach the node,
//! the host or other kernels.
//!
//! What this module does: check that the host can jail at all ([`preflight`]), create a cgroup
//! with the tier's limits for each kernel, and turn the bridge's kernel command into one that
//! starts Python inside fresh namespaces. What it does not do: decide when a kernel starts or
//! dies (that is the bridge), or route the kernel's network traffic (the namespace has loopback
//! only until the egress tunnel lands).
//!
//! # The start sequence
//!
//! Everything that allocates happens in the node, before `fork`: paths become `CString`s, the
//! seccomp filters are compiled to BPF, the `/etc` files are rendered, the cgroup is created and
//! its `cgroup.procs` files opened. After `fork` only raw system calls run (see [`child`]):
//!
//! 1. **Supervisor** (the process the node spawns, still in the host's namespaces): sets
//!    `PR_SET_PDEATHSIG`, unshares a pid namespace, forks the kernel-to-be, closes every file
//!    it inherited, ignores `SIGINT`, and waits. When the kernel exits it exits the same way
//!    (same code, or the same signal), so the node sees the kernel's own status.
//! 2. **Kernel** (pid 1 of the new pid namespace), still host root:
//!    joins its cgroup by writing `0` to `cgroup.procs`; unshares mount, network, IPC, UTS and
//!    cgroup namespaces; makes `/` private; mounts a tmpfs as the new root and fills it: read-only
//!    binds of `/usr` (and friends), of the Python installation (the virtualenv and the base
//!    interpreter it links to, at their own paths) and of `/etc/ld.so.cache`; rendered
//!    `/etc/{passwd,group,hosts,nsswitch.conf}`; the kernel's runtime folder (connection file and
//!    IPC sockets) read-write at its own path; a size-limited tmpfs `/work` (cwd and `HOME`); a
//!    tmpfs `/tmp` and `/dev/shm`; a tmpfs `/dev` with `null zero full random urandom tty`
//!    bind-mounted from the host; a fresh `/proc`. Then `pivot_root` into it, detach the old root,
//!    remount `/` read-only, set the hostname, bring `lo` up, set the rlimits.
//! 3. Drops to its unprivileged host uid/gid (no supplementary groups), unshares a **user**
//!    namespace and maps its uid to the jail user (`1000`) with `setgroups` denied. Because every
//!    other namespace was created by host root, the kernel holds no capability over its own
//!    mounts, network or hostname: even a capability bug inside the user namespace cannot remount
//!    anything.
//! 4. Drops every capability (bounding set, ambient, effective/permitted/inheritable), sets
//!    `PR_SET_PDEATHSIG` again (changing credentials cleared it), `PR_SET_NO_NEW_PRIVS`, applies
//!    the landlock ruleset (writes only under `/work`, `/tmp`, `/dev/shm`, the runtime folder and
//!    the device nodes), then the seccomp filters, and returns to `exec` Python.
//!
//! Tear-down: killing the process group (supervisor and kernel) kills pid 1 of the namespace,
//! and with it every process inside; the mount, network, IPC and user namespaces die with their
//! last process; then the cgroup is emptied (`cgroup.kill` on v2) and removed. Nothing is ever
//! mounted in the node's own mount namespace.
#![allow(unsafe_code)]

mod cgroup;
mod child;
mod plan;
mod preflight;
mod seccomp;

use std::path::PathBuf;

pub(crate) use plan::KernelJail;
pub use preflight::{CgroupFlavor, HostSupport, Missing, PreflightError, preflight};

/// Resource limits of one tier of kernels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierLimits {
    /// The kernel's memory (`memory.max`); swap is disabled. The tmpfs work dir, `/tmp` and
    /// `/dev/shm` are memory too and count against it.
    pub memory_bytes: u64,
    /// CPU time the kernel may use, in cores (`0.5` = half of one core), over `cpu_period_us`.
    pub cpus: f64,
    /// CFS period the CPU quota is measured over, in microseconds.
    pub cpu_period_us: u64,
    /// Most processes and threads at once (`pids.max`, and `RLIMIT_NPROC` as a backup).
    pub pids: u64,
    /// Size of the writable work dir (`/work`, the kernel's cwd and `HOME`); also `/tmp`'s size
    /// and `RLIMIT_FSIZE`.
    pub work_dir_bytes: u64,
    /// Most open files per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
}

impl Default for TierLimits {
    /// 1 GiB of memory, one core, 256 processes, a 256 MiB work dir, 1024 open files.
    fn default() -> Self {
        TierLimits {
            memory_bytes: 1 << 30,
            cpus: 1.0,
            cpu_period_us: 100_000,
            pids: 256,
            work_dir_bytes: 256 << 20,
            open_files: 1024,
        }
    }
}

impl TierLimits {
    /// The CPU quota per period in microseconds (`cpu.max`'s first number).
    pub fn cpu_quota_us(&self) -> u64 {
        // A float-to-int `as` saturates; at least 1 ms keeps the kernel runnable.
        ((self.cpus * self.cpu_period_us as f64) as u64).max(1000)
    }
}

/// How kernels are jailed.
#[derive(Debug, Clone, PartialEq)]
pub struct JailConfig {
    pub limits: TierLimits,
    /// Name of the cgroup folder under which each kernel gets its own
    /// (`/sys/fs/cgroup/<cgroup_parent>/<kernel>` on cgroup v2).
    pub cgroup_parent: String,
    /// Each kernel runs as a host uid (and gid) picked from
    /// `uid_base .. uid_base + uid_count`, so two kernels rarely share one; inside its user
    /// namespace it is always uid 1000.
    pub uid_base: u32,
    pub uid_count: u32,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            limits: TierLimits::default(),
            cgroup_parent: "airlock".to_owned(),
            uid_base: 1_000_000,
            uid_count: 65_536,
        }
    }
}

/// Why a kernel could not be jailed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("could not set up the kernel's cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the path {path} cannot be used inside the jail (it must be absolute, valid UTF-8 and without NUL bytes)"
    )]
    BadPath { path: PathBuf },
    #[error("could not prepare the jail's files at {path}: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not compile the seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::BackendError),
    #[error(
        "the jail failed while setting up the kernel at step {step:?}: {source}; run `airlock node` on a host that passes the preflight, or see docs/SECURITY.md"
    )]
    Setup {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}
