//! One kernel's cgroup: created with the tier's limits before the kernel starts, read for the
//! OOM-kill counter when it dies, emptied and removed when it is retired.
//!
//! On cgroup v2 that is one folder `<mount>/<parent>/<kernel>` with `memory.max`,
//! `memory.swap.max = 0`, `pids.max` and `cpu.max`, emptied with `cgroup.kill`. On the v1
//! fallback it is one folder per hierarchy (memory, pids, cpu) under the node's own cgroup there,
//! emptied by killing every listed process.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::preflight::{CgroupFlavor, HostSupport};
use super::{JailError, TierLimits};

#[derive(Debug)]
pub(crate) struct KernelCgroup {
    v2: bool,
    /// Every folder of this kernel's cgroup: one on v2, memory/pids/cpu on v1.
    dirs: Vec<PathBuf>,
    /// The folder with the memory controller's files.
    memory: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    let attempt = || -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    };
    attempt().map_err(|source| JailError::Cgroup {
        path: path.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(JailError::Cgroup {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Enables `controllers` for the children of `dir`, unless they already are.
fn enable(dir: &Path, controllers: &[&str]) -> Result<(), JailError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&path).unwrap_or_default();
    let wanted: Vec<String> = controllers
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(&path, &wanted.join(" "))
}

impl KernelCgroup {
    /// Creates the cgroup named `kernel` under `parent` and writes `limits` into it.
    pub(crate) fn create(
        host: &HostSupport,
        parent: &str,
        kernel: &str,
        limits: &TierLimits,
    ) -> Result<KernelCgroup, JailError> {
        let quota = limits.cpu_quota_us();
        match &host.cgroup {
            CgroupFlavor::V2 { mount } => {
                let controllers = ["memory", "pids", "cpu"];
                enable(mount, &controllers)?;
                let base = mount.join(parent);
                mkdir(&base)?;
                enable(&base, &controllers)?;
                let dir = base.join(kernel);
                mkdir(&dir)?;
                let cgroup = KernelCgroup {
                    v2: true,
                    dirs: vec![dir.clone()],
                    memory: dir.clone(),
                };
                // From here on, a failure removes the half-made cgroup (Drop of the caller's
                // jail is not reached), so write the limits through a guard.
                let guard = Removal(Some(cgroup));
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), "0")?;
                }
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                write(
                    &dir.join("cpu.max"),
                    &format!("{quota} {}", limits.cpu_period_us),
                )?;
                Ok(guard.keep())
            }
            CgroupFlavor::V1 { memory, pids, cpu } => {
                let mut dirs = Vec::new();
                for hierarchy in [memory, pids, cpu] {
                    let base = hierarchy.join(parent);
                    mkdir(&base)?;
                    let dir = base.join(kernel);
                    mkdir(&dir)?;
                    dirs.push(dir);
                }
                let cgroup = KernelCgroup {
                    v2: false,
                    memory: dirs[0].clone(),
                    dirs: dirs.clone(),
                };
                let guard = Removal(Some(cgroup));
                let [memory, pids, cpu] = [&dirs[0], &dirs[1], &dirs[2]];
                write(
                    &memory.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                if memory.join("memory.memsw.limit_in_bytes").exists() {
                    write(
                        &memory.join("memory.memsw.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                }
                if memory.join("memory.swappiness").exists() {
                    // Not every kernel lets a v1 child change it; the swap limit above matters more.
                    let _ = write(&memory.join("memory.swappiness"), "0");
                }
                write(&pids.join("pids.max"), &limits.pids.to_string())?;
                write(
                    &cpu.join("cpu.cfs_period_us"),
                    &limits.cpu_period_us.to_string(),
                )?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                Ok(guard.keep())
            }
        }
    }

    /// Each folder's `cgroup.procs`, open for writing, for the kernel process to join with `0`.
    pub(crate) fn open_procs(&self) -> Result<Vec<OwnedFd>, JailError> {
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| JailError::Cgroup { path, source })
            })
            .collect()
    }

    /// How many times the OOM killer killed a process of this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.memory.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn pids(&self) -> Vec<i32> {
        self.dirs
            .iter()
            .flat_map(|dir| {
                std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// Whether no process is left in the cgroup.
    pub(crate) fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// SIGKILLs every process in the cgroup.
    pub(crate) fn kill_all(&self) {
        if self.v2 && write(&self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Removes the cgroup's folders (the processes must be gone).
    pub(crate) fn remove(self) {
        Removal(Some(self)).remove();
    }
}

/// Removes a cgroup on drop unless kept.
struct Removal(Option<KernelCgroup>);

impl Removal {
    fn keep(mut self) -> KernelCgroup {
        match self.0.take() {
            Some(cgroup) => cgroup,
            // `keep` consumes the guard, which is only built with `Some`.
            None => unreachable!("a removal guard is built with its cgroup"),
        }
    }

    fn remove(&mut self) {
        if let Some(cgroup) = self.0.take() {
            for dir in &cgroup.dirs {
                if let Err(error) = std::fs::remove_dir(dir)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(dir = %dir.display(), %error, "could not remove a kernel's cgroup");
                }
            }
        }
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        self.remove();
    }
}
