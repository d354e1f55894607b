//! The jail: every kernel runs sandboxed, as an unprivileged user that cannot reach the node,
//! the host or other kernels.
//!
//! What this module does: check that the host can jail at all ([`preflight`]), create a cgroup
//! with the tier's limits for each kernel, and turn the bridge's kernel command into one that
//! starts Python inside fresh namespaces. What it does not do: decide when a kernel starts or
//! dies (that is the bridge), or carry the kernel's network traffic (with egress on, the node
//! prepares the network namespace and the kernel enters it; see `crate::egress`; without, the
//! kernel's namespace has loopback only).
//!
//! # The start sequence
//!
//! Everything that allocates happens in the node, before `fork`: paths become `CString`s, the
//! seccomp filters are compiled to BPF, the `/etc` files are rendered, the cgroup is created and
//! its `cgroup.procs` files opened. After `fork` only raw system calls run (see [`child`]):
//!
//! 1. **Supervisor** (the process the node spawns, still in the host's namespaces): starts a
//!    session of its own (`setsid`: no controlling terminal for it or the kernel), sets
//!    `PR_SET_PDEATHSIG`, unshares a pid namespace, forks the kernel-to-be, closes every file
//!    it inherited, ignores `SIGINT`, and waits. When the kernel exits it exits the same way
//!    (same code, or the same signal), so the node sees the kernel's own status.
//! 2. **Kernel** (pid 1 of the new pid namespace), still host root:
//!    joins its cgroup by writing `0` to `cgroup.procs`; unshares mount, network, IPC, UTS and
//!    cgroup namespaces; makes `/` private; mounts a tmpfs as the new root and fills it: read-only
//!    binds of `/usr` (and friends) and of the Python installation (exactly `sys.prefix` and
//!    `sys.base_prefix` as the interpreter reports them; one that holds a home folder or the
//!    node's data is refused), read-only down to every submount (`mount_setattr` with
//!    `AT_RECURSIVE`), the folders on the way created 0711; rendered
//!    `/etc/{passwd,group,hosts,nsswitch.conf}` and `ld.so.cache`; the kernel's connection file
//!    read-only at its own path, and next to it its `sockets` folder: a detached 1 MiB tmpfs the
//!    node made (see [`runtime`]), attached here; a size-limited tmpfs `/work` (cwd and `HOME`); a
//!    tmpfs `/tmp` and `/dev/shm`; a tmpfs `/dev` with `null zero full random urandom`
//!    bind-mounted from the host (no `tty`); a fresh `/proc`. Then `pivot_root` into it, detach
//!    the old root, remount `/` read-only, set the hostname, bring `lo` up, set every rlimit (none
//!    is inherited from the node), an `oom_score_adj` of at least 500, and an ordinary
//!    scheduling policy.
//! 3. Drops to its unprivileged host uid/gid (no supplementary groups), unshares a **user**
//!    namespace and maps its uid to the jail user (`1000`) with `setgroups` denied. Because every
//!    other namespace was created by host root, the kernel holds no capability over its own
//!    mounts, network or hostname: even a capability bug inside the user namespace cannot remount
//!    anything.
//! 4. Drops every capability (bounding set, ambient, effective/permitted/inheritable), sets
//!    `PR_SET_PDEATHSIG` again (changing credentials cleared it), `PR_SET_NO_NEW_PRIVS`, applies
//!    the landlock ruleset (writes only under `/work`, `/tmp`, `/dev/shm`, the sockets folder and
//!    the device nodes), marks every inherited descriptor above 2 close-on-exec
//!    (`close_range`), installs the seccomp filters, and returns to `exec` Python.
//!
//! Tear-down: killing the process group (supervisor and kernel) kills pid 1 of the namespace,
//! and with it every process inside; the mount, network, IPC and user namespaces die with their
//! last process (the socket tmpfs with them, once the node has closed its descriptor); then the
//! cgroup is emptied (`cgroup.kill` on v2) and removed, and the kernel's host uid is free again
//! ([`uids`]). Nothing is ever mounted in the node's own mount namespace.
#![allow(unsafe_code)]

mod cgroup;
mod child;
mod plan;
mod preflight;
mod runtime;
mod seccomp;
mod uids;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub(crate) use child::own_session;
pub(crate) use plan::KernelJail;
pub use preflight::{CgroupFlavor, HostSupport, Missing, PreflightError, preflight};
pub(crate) use runtime::SOCKET_FOLDER;
pub use runtime::default_runtime_dir;
pub use uids::UidsExhausted;

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
    /// The [`Tier::Standard`] limits.
    fn default() -> Self {
        Tier::Standard.limits()
    }
}

/// A named preset of [`TierLimits`]: the sizes of kernel a node offers. Explicit limits
/// (`--memory` and friends) override single fields of a tier's preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Tier {
    /// Half a core and 512 MiB: teaching notebooks, quick looks at small data.
    Small,
    /// One core and 1 GiB: the default.
    #[default]
    Standard,
    /// Two cores and 4 GiB: data-heavy notebooks.
    Large,
}

impl Tier {
    /// Every tier, smallest first.
    pub const ALL: [Tier; 3] = [Tier::Small, Tier::Standard, Tier::Large];

    /// The tier's limits. The work dir stays a quarter of the memory or less, because the work
    /// dir is tmpfs and counts against the memory limit (a full work dir must be `ENOSPC`, not
    /// an OOM kill).
    pub fn limits(self) -> TierLimits {
        let (memory_bytes, cpus, pids, work_dir_bytes, open_files) = match self {
            Tier::Small => (512 << 20, 0.5, 128, 128 << 20, 512),
            Tier::Standard => (1 << 30, 1.0, 256, 256 << 20, 1024),
            Tier::Large => (4 << 30, 2.0, 1024, 1 << 30, 4096),
        };
        TierLimits {
            memory_bytes,
            cpus,
            cpu_period_us: 100_000,
            pids,
            work_dir_bytes,
            open_files,
        }
    }

    /// The tier's name in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Small => "small",
            Tier::Standard => "standard",
            Tier::Large => "large",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tier name that is not one of [`Tier::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?}; the tiers are small, standard and large")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|tier| tier.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| UnknownTier(name.to_owned()))
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
    /// Usually a [`Tier`]'s limits, possibly with fields overridden.
    pub limits: TierLimits,
    /// Name of the cgroup folder under which each kernel gets its own
    /// (`/sys/fs/cgroup/<cgroup_parent>/<kernel>` on cgroup v2).
    pub cgroup_parent: String,
    /// Each kernel runs as a host uid (and gid) from `uid_base .. uid_base + uid_count` that no
    /// other running kernel of this node has (two nodes on one host should use separate
    /// ranges); inside its user namespace it is always uid 1000.
    pub uid_base: u32,
    pub uid_count: u32,
    /// Folders of the node no kernel may see: a Python prefix that holds one is refused. By
    /// default the node's data folder (`$XDG_DATA_HOME/airlock`, else
    /// `~/.local/share/airlock`), where its documents, keys and logs live.
    pub protected_dirs: Vec<PathBuf>,
    /// Egress through the node and the gateway's tunnel: each kernel gets a network namespace
    /// whose TCP and DNS the node carries (`crate::egress`). `None`: loopback only, no way out.
    pub egress: Option<crate::egress::Egress>,
}

impl JailConfig {
    /// The default configuration with `tier`'s limits.
    pub fn for_tier(tier: Tier) -> Self {
        JailConfig {
            limits: tier.limits(),
            ..JailConfig::default()
        }
    }
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            limits: TierLimits::default(),
            cgroup_parent: "airlock".to_owned(),
            uid_base: 1_000_000,
            uid_count: 65_536,
            protected_dirs: default_data_dir().into_iter().collect(),
            egress: None,
        }
    }
}

/// The node's default data folder: the parent of the managed Python environment's.
fn default_data_dir() -> Option<PathBuf> {
    match crate::kernel::PythonSource::default_managed().ok()? {
        crate::kernel::PythonSource::Managed { dir } => dir.parent().map(PathBuf::from),
        crate::kernel::PythonSource::Existing(_) => None,
    }
}

/// Why a kernel could not be jailed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Network(#[from] crate::egress::NetworkError),
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
    #[error(transparent)]
    Uids(#[from] UidsExhausted),
    #[error(
        "could not make the tmpfs for the kernel's sockets ({step}): {source}; the jail needs the mount API of Linux 5.2 or later"
    )]
    SocketsTmpfs {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not learn the Python installation of {python}: {detail}; pass --python with a working interpreter"
    )]
    PythonPrefix { python: PathBuf, detail: String },
    #[error(
        "the Python installation at {prefix} holds {what} {exposes}, which the jail would show every kernel; use an interpreter installed elsewhere (for example the managed environment, by leaving out --python, or a virtualenv made from a Python under /usr or /opt)"
    )]
    PrefixExposes {
        prefix: PathBuf,
        exposes: PathBuf,
        what: &'static str,
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn the_tier_table() {
        let table: Vec<_> = Tier::ALL
            .into_iter()
            .map(|tier| {
                let l = tier.limits();
                (
                    tier.name(),
                    l.memory_bytes,
                    l.cpus,
                    l.pids,
                    l.work_dir_bytes,
                    l.open_files,
                )
            })
            .collect();
        assert_eq!(
            table,
            [
                ("small", 512 * MIB, 0.5, 128, 128 * MIB, 512),
                ("standard", GIB, 1.0, 256, 256 * MIB, 1024),
                ("large", 4 * GIB, 2.0, 1024, GIB, 4096),
            ]
        );
        for tier in Tier::ALL {
            let limits = tier.limits();
            assert_eq!(limits.cpu_period_us, 100_000, "{tier}");
            assert!(
                limits.work_dir_bytes * 4 <= limits.memory_bytes,
                "{tier}: a full work dir must not OOM-kill the kernel"
            );
        }
        assert_eq!(Tier::Small.limits().cpu_quota_us(), 50_000);
        assert_eq!(Tier::Large.limits().cpu_quota_us(), 200_000);
    }

    #[test]
    fn standard_is_the_default() {
        assert_eq!(Tier::default(), Tier::Standard);
        assert_eq!(TierLimits::default(), Tier::Standard.limits());
        assert_eq!(JailConfig::default().limits, Tier::Standard.limits());
        assert_eq!(
            JailConfig::for_tier(Tier::Large).limits,
            Tier::Large.limits()
        );
    }

    #[test]
    fn tiers_parse_by_name() {
        for tier in Tier::ALL {
            assert_eq!(tier.name().parse(), Ok(tier));
            assert_eq!(tier.to_string(), tier.name());
        }
        assert_eq!(" Large".parse(), Ok(Tier::Large));
        assert_eq!("huge".parse::<Tier>(), Err(UnknownTier("huge".to_owned())));
    }
}
