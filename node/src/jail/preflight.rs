//! Can this host jail kernels? [`preflight`] checks every mechanism the jail needs and names
//! what is missing and how to enable it.
//!
//! Required: running as root, user namespaces that an unprivileged uid may create, seccomp
//! filters with `errno` actions, and the memory, pids and cpu cgroup controllers (cgroup v2, or
//! as a fallback the same three controllers on cgroup v1 hierarchies, as on hosts that still
//! mount v1). Optional: landlock (its absence is a warning; the mount layout already makes
//! everything outside the writable folders read-only). Warned about: a `core_pattern` that pipes
//! core dumps to a helper, which Linux feeds a crashing kernel's memory whatever its
//! `RLIMIT_CORE` (the jail sets 0) says.

use std::fmt;
use std::path::{Path, PathBuf};

/// Which cgroup interface the jail uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupFlavor {
    /// The unified hierarchy mounted at `mount`, with memory, pids and cpu available.
    V2 { mount: PathBuf },
    /// Separate v1 hierarchies; each path is the node's own cgroup in that hierarchy, under which
    /// the jail creates its folder.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
    },
}

/// What the host offers the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSupport {
    pub cgroup: CgroupFlavor,
    /// The landlock ABI version, when landlock is enabled.
    pub landlock_abi: Option<u32>,
    /// Things that work, but less well than they could, for the operator's log.
    pub warnings: Vec<String>,
}

impl HostSupport {
    /// The folders under which kernels' cgroups named `parent` are created (one per hierarchy
    /// on cgroup v1).
    pub fn cgroup_parents(&self, parent: &str) -> Vec<PathBuf> {
        match &self.cgroup {
            CgroupFlavor::V2 { mount } => vec![mount.join(parent)],
            CgroupFlavor::V1 { memory, pids, cpu } => {
                vec![memory.join(parent), pids.join(parent), cpu.join(parent)]
            }
        }
    }

    /// The folder whose `cpu.stat` tells how much a kernel `kernel` under `parent` was throttled.
    pub fn cpu_cgroup(&self, parent: &str, kernel: &str) -> PathBuf {
        match &self.cgroup {
            CgroupFlavor::V2 { mount } => mount.join(parent).join(kernel),
            CgroupFlavor::V1 { cpu, .. } => cpu.join(parent).join(kernel),
        }
    }
}

/// One mechanism the host lacks, with how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    NotRoot,
    UserNamespaces { detail: String },
    Seccomp { detail: String },
    Cgroups { detail: String },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::NotRoot => write!(
                f,
                "the node is not running as root: the jail mounts the kernel's root filesystem and creates its cgroup; run the node as root (it drops every privilege for the kernel)"
            ),
            Missing::UserNamespaces { detail } => write!(f, "user namespaces: {detail}"),
            Missing::Seccomp { detail } => write!(f, "seccomp: {detail}"),
            Missing::Cgroups { detail } => write!(f, "cgroups: {detail}"),
        }
    }
}

/// The host cannot jail kernels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this host cannot jail kernels:\n{}\nfix the above, or start the node with --insecure-no-jail to run kernels WITHOUT any sandbox",
    .missing.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n")
)]
pub struct PreflightError {
    pub missing: Vec<Missing>,
}

/// Checks every mechanism the jail needs.
pub fn preflight() -> Result<HostSupport, PreflightError> {
    let mut missing = Vec::new();
    let mut warnings = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(Missing::NotRoot);
    }
    if let Err(detail) = check_user_namespaces() {
        missing.push(Missing::UserNamespaces { detail });
    }
    if let Err(detail) = check_seccomp() {
        missing.push(Missing::Seccomp { detail });
    }
    let cgroup = match find_cgroups() {
        Ok((flavor, warning)) => {
            warnings.extend(warning);
            Some(flavor)
        }
        Err(detail) => {
            missing.push(Missing::Cgroups { detail });
            None
        }
    };
    let landlock_abi = landlock_abi();
    if landlock_abi.is_none() {
        warnings.push(
            "landlock is not enabled in this kernel (add `landlock` to the `lsm=` boot parameter); the kernel's writes are still confined by the read-only mounts".to_owned(),
        );
    }
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    warnings.extend(core_pattern_warning(&core_pattern));
    match cgroup {
        Some(cgroup) if missing.is_empty() => Ok(HostSupport {
            cgroup,
            landlock_abi,
            warnings,
        }),
        _ => Err(PreflightError { missing }),
    }
}

/// The warning for a `kernel.core_pattern` that starts with `|`: Linux ignores `RLIMIT_CORE`
/// for pipes ("core limits are irrelevant to pipes"), so a crash inside the jail streams the
/// process's memory to that helper, which runs as root outside the jail.
fn core_pattern_warning(pattern: &str) -> Option<String> {
    let helper = pattern.trim().strip_prefix('|')?;
    let program = helper.split_whitespace().next().unwrap_or(helper);
    Some(format!(
        "kernel.core_pattern pipes core dumps to {program}: a kernel that crashes sends its memory to that helper outside the jail, whatever RLIMIT_CORE says (most helpers, apport and systemd-coredump among them, then honour the jail's RLIMIT_CORE=0 and drop it); to keep kernels' memory off the host entirely, set `sysctl -w kernel.core_pattern=core` (dumps then stay inside the jail, where RLIMIT_CORE=0 stops them)"
    ))
}

fn read_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn check_user_namespaces() -> Result<(), String> {
    match read_number("/proc/sys/user/max_user_namespaces") {
        None => {
            return Err(
                "/proc/sys/user/max_user_namespaces is missing: the kernel was built without CONFIG_USER_NS; use a kernel with user namespaces".to_owned(),
            );
        }
        Some(0) => {
            return Err(
                "user.max_user_namespaces is 0; enable them with `sysctl -w user.max_user_namespaces=15000`".to_owned(),
            );
        }
        Some(_) => {}
    }
    if read_number("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        return Err(
            "kernel.unprivileged_userns_clone is 0 (the kernel drops to an unprivileged uid before creating its user namespace); enable it with `sysctl -w kernel.unprivileged_userns_clone=1`".to_owned(),
        );
    }
    if read_number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        return Err(
            "AppArmor restricts unprivileged user namespaces; allow them with `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile for the airlock binary".to_owned(),
        );
    }
    Ok(())
}

fn check_seccomp() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|line| line.starts_with("Seccomp:")) {
        return Err(
            "the kernel was built without CONFIG_SECCOMP_FILTER; use a kernel with seccomp filters"
                .to_owned(),
        );
    }
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if !actions.split_whitespace().any(|a| a == "errno") {
        return Err(
            "the kernel's seccomp lacks the `errno` action (/proc/sys/kernel/seccomp/actions_avail); use Linux 4.14 or later".to_owned(),
        );
    }
    Ok(())
}

fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with a null attribute, zero size and the VERSION flag, the call only returns the
    // ABI version; it reads and writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(abi).ok().filter(|&abi| abi > 0)
}

/// A cgroup mount from `/proc/self/mountinfo`.
struct CgroupMount {
    mount_point: PathBuf,
    /// The cgroup this mount shows as its root.
    root: String,
    v2: bool,
    controllers: Vec<String>,
}

fn cgroup_mounts() -> Vec<CgroupMount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<_> = left.split(' ').collect();
            let right: Vec<_> = right.split(' ').collect();
            let fstype = *right.first()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgroupMount {
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                root: unescape(left.get(3)?),
                v2: fstype == "cgroup2",
                controllers: right
                    .get(2)
                    .map(|opts| opts.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// This process's cgroup in each hierarchy: `("", path)` for v2, `(controllers, path)` for v1.
fn own_cgroups() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_owned();
            let path = parts.next()?.to_owned();
            Some((controllers, path))
        })
        .collect()
}

/// Where this process's own cgroup is under `mount`, given its path `path` in that hierarchy.
fn own_folder(mount: &CgroupMount, path: &str) -> PathBuf {
    let relative = path.strip_prefix(mount.root.as_str()).unwrap_or(path);
    mount.mount_point.join(relative.trim_start_matches('/'))
}

const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

fn find_cgroups() -> Result<(CgroupFlavor, Option<String>), String> {
    let mounts = cgroup_mounts();
    let v2 = mounts.iter().find(|m| m.v2);
    let mut v2_problem = None;
    if let Some(v2) = v2 {
        let available =
            std::fs::read_to_string(v2.mount_point.join("cgroup.controllers")).unwrap_or_default();
        let lacking: Vec<_> = CONTROLLERS
            .iter()
            .filter(|c| !available.split_whitespace().any(|a| a == **c))
            .copied()
            .collect();
        if lacking.is_empty() {
            if !writable(&v2.mount_point) {
                return Err(format!(
                    "the cgroup v2 tree at {} is not writable; mount it read-write, or delegate a subtree to the node",
                    v2.mount_point.display()
                ));
            }
            return Ok((
                CgroupFlavor::V2 {
                    mount: v2.mount_point.clone(),
                },
                None,
            ));
        }
        v2_problem = Some(format!(
            "cgroup v2 is mounted at {} but its {} controller(s) are not available there (they are bound to cgroup v1 hierarchies)",
            v2.mount_point.display(),
            lacking.join(", ")
        ));
    }

    // The v1 fallback: one hierarchy per controller.
    let own = own_cgroups();
    let mut found = Vec::new();
    let mut lacking = Vec::new();
    for controller in CONTROLLERS {
        let mount = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller));
        let path = own
            .iter()
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller));
        match (mount, path) {
            (Some(mount), Some((_, path))) if writable(&mount.mount_point) => {
                found.push(own_folder(mount, path));
            }
            _ => lacking.push(controller),
        }
    }
    if lacking.is_empty()
        && let [memory, pids, cpu] = <[PathBuf; 3]>::try_from(found).unwrap_or_default()
    {
        let warning = format!(
            "{}; using the cgroup v1 fallback (memory, pids, cpu hierarchies). Boot with `systemd.unified_cgroup_hierarchy=1` (or `cgroup_no_v1=all`) to use cgroup v2",
            v2_problem.as_deref().unwrap_or("cgroup v2 is not mounted")
        );
        return Ok((CgroupFlavor::V1 { memory, pids, cpu }, Some(warning)));
    }
    Err(format!(
        "{}; and no writable cgroup v1 hierarchy for {}. Mount cgroup v2 with the memory, pids and cpu controllers enabled (`mount -t cgroup2 none /sys/fs/cgroup`, boot with `systemd.unified_cgroup_hierarchy=1`)",
        v2_problem.as_deref().unwrap_or("cgroup v2 is not mounted"),
        lacking.join(", ")
    ))
}

fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
        && !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|line| {
                let fields: Vec<_> = line.split(' ').collect();
                fields.get(4).map(|p| Path::new(*p)) == Some(path)
                    && fields
                        .get(5)
                        .is_some_and(|o| o.split(',').any(|o| o == "ro"))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piped_core_pattern_is_warned_about() {
        let warning =
            core_pattern_warning("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h\n")
                .unwrap();
        assert!(
            warning.contains("/usr/lib/systemd/systemd-coredump:"),
            "{warning}"
        );
        assert!(warning.contains("kernel.core_pattern=core"), "{warning}");
        assert_eq!(core_pattern_warning("core\n"), None);
        assert_eq!(core_pattern_warning("/var/crash/core.%p"), None);
    }
}
