//! One kernel's jail, as the node sees it: prepares the [`ChildPlan`] (everything that allocates),
//! wraps the kernel command, and owns the kernel's cgroup until the kernel is gone.

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::cgroup::KernelCgroup;
use super::child::{self, ChildPlan, JAIL_ID, Landlock, STEP_NAMES, Step};
use super::{JailConfig, JailError, TierLimits, preflight, seccomp};
use crate::egress::JailNetwork;

/// Host folders bound read-only into the jail when they exist (symlinks are recreated as
/// symlinks, as on merged-`/usr` systems).
const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"];

/// Device nodes bound from the host into the jail's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Host files copied into the jail's `/etc` when they exist.
const ETC_COPIES: &[&str] = &["ld.so.cache", "localtime"];

/// Size of the tmpfs the new root is made of: only mount points and a few `/etc` files.
const ROOT_TMPFS_OPTIONS: &str = "size=8m,mode=0755";

/// Size of `/dev/shm`.
const SHM_BYTES: u64 = 64 << 20;

/// The landlock filesystem rights (`LANDLOCK_ACCESS_FS_*`) this jail handles: everything that
/// writes. Reading and executing are left to the mount layout.
const LL_WRITE_FILE: u64 = 1 << 1;
const LL_WRITE_ALL_ABI1: u64 = LL_WRITE_FILE
    | (1 << 4) // REMOVE_DIR
    | (1 << 5) // REMOVE_FILE
    | (1 << 6) // MAKE_CHAR
    | (1 << 7) // MAKE_DIR
    | (1 << 8) // MAKE_REG
    | (1 << 9) // MAKE_SOCK
    | (1 << 10) // MAKE_FIFO
    | (1 << 11) // MAKE_BLOCK
    | (1 << 12); // MAKE_SYM
const LL_REFER: u64 = 1 << 13;
const LL_TRUNCATE: u64 = 1 << 14;

/// A kernel's jail from the node's side. Dropping it removes the cgroup (killing whatever is
/// still in it).
#[derive(Debug)]
pub(crate) struct KernelJail {
    cgroup: Option<KernelCgroup>,
    /// The kernel's network namespace and the node serving it, when egress is on. Dropped
    /// with the jail: the listeners stop and the namespace goes with its last user.
    network: Option<(OwnedFd, crate::egress::Serving)>,
    limits: TierLimits,
    /// Read end of the pipe the kernel reports a failed set-up step on.
    report: OwnedFd,
}

impl KernelJail {
    /// Creates the kernel's cgroup, hands the runtime folder to the kernel's uid, and wraps
    /// `command` so that it starts inside the jail. `runtime_folder` holds the connection file
    /// and gets the IPC sockets; `python` is the interpreter the command runs.
    pub(crate) fn wrap(
        config: &JailConfig,
        python: &Path,
        runtime_folder: &Path,
        command: &mut Command,
    ) -> Result<KernelJail, JailError> {
        let host = preflight()?;
        let kernel_name = runtime_folder
            .file_name()
            .and_then(OsStr::to_str)
            .ok_or_else(|| JailError::BadPath {
                path: runtime_folder.to_owned(),
            })?
            .to_owned();
        let offset = rand::random::<u32>() % config.uid_count.max(1);
        let host_id = config.uid_base.saturating_add(offset);
        let prepare_error = |path: &Path| {
            let path = path.to_owned();
            move |source| JailError::Prepare { path, source }
        };

        // The kernel's uid owns its runtime folder and connection file, nothing else.
        chown_tree(runtime_folder, host_id).map_err(prepare_error(runtime_folder))?;
        let staging = runtime_folder.join(".root");
        std::fs::create_dir(&staging).map_err(prepare_error(&staging))?;

        let mut layout = Layout::new(&staging);
        layout.assemble(
            python,
            runtime_folder,
            &config.limits,
            host_id,
            config.egress.is_some(),
        )?;
        let (report_read, report_write) = pipe().map_err(prepare_error(runtime_folder))?;
        let filters = seccomp::compile()?;
        let limits = config.limits;
        let landlock = host
            .landlock_abi
            .map(|abi| landlock_rules(abi, runtime_folder))
            .transpose()?;

        // The cgroup comes last: from here on, any failure drops `jail`, which removes it.
        let cgroup =
            KernelCgroup::create(&host, &config.cgroup_parent, &kernel_name, &config.limits)?;
        let mut jail = KernelJail {
            cgroup: Some(cgroup),
            network: None,
            limits,
            report: report_read,
        };
        if let Some(egress) = &config.egress {
            let JailNetwork {
                namespace,
                redirect,
                dns,
            } = JailNetwork::create()?;
            let serving = egress.serve(redirect, dns)?;
            jail.network = Some((namespace, serving));
        }
        let cgroup_procs = match &jail.cgroup {
            Some(cgroup) => cgroup.open_procs()?,
            None => Vec::new(),
        };
        let plan = ChildPlan {
            node_pid: std::process::id() as libc::pid_t,
            cgroup_procs,
            staging: cstring(&staging)?,
            root_tmpfs_options: cstring(Path::new(ROOT_TMPFS_OPTIONS))?,
            steps: layout.steps,
            hostname: CString::from(c"airlock"),
            host_uid: host_id,
            host_gid: host_id,
            uid_map: format!("{JAIL_ID} {host_id} 1\n").into_bytes(),
            gid_map: format!("{JAIL_ID} {host_id} 1\n").into_bytes(),
            work_dir: CString::from(c"/work"),
            rlimits: vec![
                (libc::RLIMIT_NOFILE, limits.open_files),
                (libc::RLIMIT_CORE, 0),
                (libc::RLIMIT_FSIZE, limits.work_dir_bytes),
                (libc::RLIMIT_NPROC, limits.pids),
            ],
            landlock,
            allow_list: filters.allow_list,
            clone3: filters.clone3,
            report: report_write,
            network: jail
                .network
                .as_ref()
                .map(|(namespace, _)| namespace.as_raw_fd()),
        };

        // The kernel sees none of the node's environment: no tokens, no store credentials.
        let kept: Vec<_> = command
            .as_std()
            .get_envs()
            .filter(|(name, _)| *name != "JPY_PARENT_PID")
            .filter_map(|(name, value)| Some((name.to_owned(), value?.to_owned())))
            .collect();
        command
            .env_clear()
            .envs(kept)
            .env("HOME", "/work")
            .env("TMPDIR", "/tmp")
            .env("USER", "jail")
            .env("LANG", "C.UTF-8")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("MPLCONFIGDIR", "/work/.config/matplotlib");
        // SAFETY: `child::enter` runs only raw system calls on the plan, which the closure owns
        // and which was fully built before the fork; it neither allocates nor locks.
        unsafe {
            command.pre_exec(move || child::enter(&plan));
        }
        Ok(jail)
    }

    /// Why the jail failed to start the kernel, if it reported a failed step.
    pub(crate) fn setup_failure(&self) -> Option<JailError> {
        let mut message = [0u8; 5];
        let mut file = std::fs::File::from(self.report.try_clone().ok()?);
        file.read_exact(&mut message).ok()?;
        let step = STEP_NAMES.get(usize::from(message[0])).copied()?;
        let code = i32::from_ne_bytes([message[1], message[2], message[3], message[4]]);
        Some(JailError::Setup {
            step,
            source: std::io::Error::from_raw_os_error(code),
        })
    }

    /// The memory limit, when the kernel was killed for exceeding it.
    pub(crate) fn out_of_memory(&self) -> Option<u64> {
        let cgroup = self.cgroup.as_ref()?;
        (cgroup.oom_kills() > 0).then_some(self.limits.memory_bytes)
    }

    /// Kills whatever is left in the cgroup and removes it, waiting (asynchronously) for the
    /// processes to go.
    pub(crate) async fn destroy(&mut self) {
        // The node's listeners in the kernel's namespace go first: nothing more is relayed.
        self.network = None;
        let Some(cgroup) = self.cgroup.take() else {
            return;
        };
        cgroup.kill_all();
        for _ in 0..200 {
            if cgroup.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            cgroup.kill_all();
        }
        cgroup.remove();
    }
}

impl Drop for KernelJail {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.kill_all();
            // Without a runtime to wait on, a short blocking wait is the best a drop can do.
            for _ in 0..100 {
                if cgroup.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            cgroup.remove();
        }
    }
}

/// The steps that assemble the new root under `staging`.
struct Layout {
    staging: PathBuf,
    steps: Vec<Step>,
    made: Vec<PathBuf>,
}

impl Layout {
    fn new(staging: &Path) -> Self {
        Layout {
            staging: staging.to_owned(),
            steps: Vec::new(),
            made: Vec::new(),
        }
    }

    /// Where `inside` (an absolute path in the jail) is while the root is assembled.
    fn at(&self, inside: &Path) -> PathBuf {
        let relative: PathBuf = inside
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        self.staging.join(relative)
    }

    /// `mkdir -p` of `inside`.
    fn mkdirs(&mut self, inside: &Path) -> Result<(), JailError> {
        let mut path = PathBuf::from("/");
        for component in inside.components() {
            if let Component::Normal(name) = component {
                path.push(name);
                if !self.made.contains(&path) {
                    self.made.push(path.clone());
                    let at = self.at(&path);
                    self.steps.push(Step::Mkdir(cstring(&at)?));
                }
            }
        }
        Ok(())
    }

    fn mount(
        &mut self,
        source: Option<&Path>,
        inside: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<String>,
    ) -> Result<(), JailError> {
        let target = cstring(&self.at(inside))?;
        self.steps.push(Step::Mount {
            source: source.map(cstring).transpose()?,
            target,
            fstype: fstype.map(|s| cstring(Path::new(s))).transpose()?,
            flags,
            data: data.map(|d| cstring(Path::new(&d))).transpose()?,
        });
        Ok(())
    }

    /// Binds host `path` at the same path inside, read-only (or read-write, never setuid or
    /// devices).
    fn bind(&mut self, path: &Path, writable: bool) -> Result<(), JailError> {
        let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            self.mkdirs(path)?;
        } else {
            if let Some(parent) = path.parent() {
                self.mkdirs(parent)?;
            }
            let at = cstring(&self.at(path))?;
            self.steps.push(Step::Touch(at));
        }
        self.mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
        if !writable {
            flags |= libc::MS_RDONLY;
        }
        self.mount(None, path, None, flags, None)
    }

    fn tmpfs(&mut self, inside: &Path, options: String) -> Result<(), JailError> {
        self.mkdirs(inside)?;
        self.mount(
            Some(Path::new("tmpfs")),
            inside,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(options),
        )
    }

    fn write(&mut self, inside: &Path, content: Vec<u8>) -> Result<(), JailError> {
        let at = cstring(&self.at(inside))?;
        self.steps.push(Step::Write(at, content));
        Ok(())
    }

    fn assemble(
        &mut self,
        python: &Path,
        runtime_folder: &Path,
        limits: &TierLimits,
        host_id: u32,
        network: bool,
    ) -> Result<(), JailError> {
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::read_link(path) {
                Ok(target) => {
                    let link = cstring(&self.at(path))?;
                    self.steps.push(Step::Symlink {
                        target: cstring(&target)?,
                        link,
                    });
                }
                Err(_) if path.is_dir() => self.bind(path, false)?,
                Err(_) => {}
            }
        }
        for prefix in python_prefixes(python) {
            if !SYSTEM_DIRS.iter().any(|dir| prefix.starts_with(dir)) {
                self.bind(&prefix, false)?;
            }
        }

        // A minimal /etc: who the jail user is, where localhost is, the loader's cache.
        self.mkdirs(Path::new("/etc"))?;
        let etc = Path::new("/etc");
        self.write(
            &etc.join("passwd"),
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\njail:x:{JAIL_ID}:{JAIL_ID}:airlock kernel:/work:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            )
            .into_bytes(),
        )?;
        self.write(
            &etc.join("group"),
            format!("root:x:0:\njail:x:{JAIL_ID}:\nnogroup:x:65534:\n").into_bytes(),
        )?;
        self.write(
            &etc.join("hosts"),
            b"127.0.0.1 localhost airlock\n::1 localhost\n".to_vec(),
        )?;
        self.write(
            &etc.join("nsswitch.conf"),
            b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec(),
        )?;
        if network {
            // The node answers DNS inside the kernel's namespace (crate::egress).
            self.write(
                &etc.join("resolv.conf"),
                b"nameserver 127.0.0.1\noptions timeout:5 attempts:2\n".to_vec(),
            )?;
        }
        for name in ETC_COPIES {
            let host = etc.join(name);
            if let Ok(content) = std::fs::read(&host) {
                self.write(&host, content)?;
            }
        }

        // /dev: a small tmpfs with the harmless device nodes bound in.
        let dev = Path::new("/dev");
        self.tmpfs(dev, "size=64k,mode=0755".to_owned())?;
        for name in DEVICES {
            let node = dev.join(name);
            if node.exists() {
                self.steps.push(Step::Touch(cstring(&self.at(&node))?));
                self.mount(Some(&node), &node, None, libc::MS_BIND, None)?;
            }
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            let link = cstring(&self.at(&dev.join(link)))?;
            self.steps.push(Step::Symlink {
                target: cstring(Path::new(target))?,
                link,
            });
        }
        self.tmpfs(&dev.join("shm"), format!("size={SHM_BYTES},mode=1777"))?;

        // Writable places, each a size-limited tmpfs.
        self.tmpfs(
            Path::new("/work"),
            format!(
                "size={},mode=0700,uid={host_id},gid={host_id}",
                limits.work_dir_bytes
            ),
        )?;
        self.tmpfs(
            Path::new("/tmp"),
            format!("size={},mode=1777", limits.work_dir_bytes),
        )?;

        // The kernel's runtime folder, read-write at its own path, for the IPC sockets.
        self.mkdirs(runtime_folder)?;
        self.mount(
            Some(runtime_folder),
            runtime_folder,
            None,
            libc::MS_BIND,
            None,
        )?;
        self.mount(
            None,
            runtime_folder,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;

        // A fresh /proc for the new pid namespace.
        self.mkdirs(Path::new("/proc"))?;
        self.mount(
            Some(Path::new("proc")),
            Path::new("/proc"),
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
        Ok(())
    }
}

/// The folders that make up the Python installation behind `python`: a virtualenv's own folder
/// and the base installation its `pyvenv.cfg` and symlinks point to.
fn python_prefixes(python: &Path) -> Vec<PathBuf> {
    let mut prefixes = Vec::new();
    let mut push = |path: PathBuf| {
        if !prefixes.iter().any(|p: &PathBuf| path.starts_with(p)) {
            prefixes.retain(|p| !p.starts_with(&path));
            prefixes.push(path);
        }
    };
    let prefix_of = |interpreter: &Path| interpreter.parent()?.parent().map(Path::to_owned);
    if let Some(venv) = prefix_of(python)
        && let Ok(cfg) = std::fs::read_to_string(venv.join("pyvenv.cfg"))
    {
        for line in cfg.lines() {
            if let Some((key, value)) = line.split_once('=')
                && matches!(key.trim(), "home" | "executable")
            {
                let value = Path::new(value.trim());
                let bin = if key.trim() == "home" {
                    Some(value)
                } else {
                    value.parent()
                };
                if let Some(base) = bin.and_then(Path::parent) {
                    push(base.to_owned());
                }
            }
        }
        push(venv);
    } else if let Some(prefix) = prefix_of(python) {
        push(prefix);
    }
    if let Ok(real) = std::fs::canonicalize(python)
        && let Some(prefix) = prefix_of(&real)
    {
        push(prefix);
    }
    prefixes.retain(|p| p.is_absolute() && p != Path::new("/"));
    prefixes
}

/// The landlock rules: writes only beneath the work dir, `/tmp`, `/dev/shm` and the runtime
/// folder; plain writes (no creation) to the device nodes.
fn landlock_rules(abi: u32, runtime_folder: &Path) -> Result<Landlock, JailError> {
    let mut handled = LL_WRITE_ALL_ABI1;
    if abi >= 2 {
        handled |= LL_REFER;
    }
    if abi >= 3 {
        handled |= LL_TRUNCATE;
    }
    let devices = LL_WRITE_FILE | (handled & LL_TRUNCATE);
    let mut rules = Vec::new();
    for dir in [
        Path::new("/work"),
        Path::new("/tmp"),
        Path::new("/dev/shm"),
        runtime_folder,
    ] {
        rules.push((cstring(dir)?, handled));
    }
    for name in DEVICES {
        let node = Path::new("/dev").join(name);
        if node.exists() {
            rules.push((cstring(&node)?, devices));
        }
    }
    Ok(Landlock { handled, rules })
}

/// Gives `dir` and the files directly in it to `id` (uid and gid).
fn chown_tree(dir: &Path, id: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(id), Some(id))?;
    for entry in std::fs::read_dir(dir)? {
        std::os::unix::fs::chown(entry?.path(), Some(id), Some(id))?;
    }
    Ok(())
}

/// A close-on-exec pipe; the read end is non-blocking.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&read),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((read, write))
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::BadPath {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtualenv_brings_its_base_installation() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("versions/3.11.7");
        let venv = root.path().join("venv");
        std::fs::create_dir_all(base.join("bin")).unwrap();
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(base.join("bin/python3.11"), "").unwrap();
        std::os::unix::fs::symlink(base.join("bin/python3.11"), venv.join("bin/python")).unwrap();
        std::fs::write(
            venv.join("pyvenv.cfg"),
            format!("home = {}\nversion = 3.11.7\n", base.join("bin").display()),
        )
        .unwrap();
        let mut prefixes = python_prefixes(&venv.join("bin/python"));
        prefixes.sort();
        assert_eq!(prefixes, vec![venv, base]);
    }

    #[test]
    fn layout_paths_live_under_the_staging_root() {
        let mut layout = Layout::new(Path::new("/run/k/.root"));
        assert_eq!(
            layout.at(Path::new("/usr/lib")),
            PathBuf::from("/run/k/.root/usr/lib")
        );
        layout.mkdirs(Path::new("/a/b")).unwrap();
        layout.mkdirs(Path::new("/a/c")).unwrap();
        let made: Vec<_> = layout
            .steps
            .iter()
            .map(|step| match step {
                Step::Mkdir(path) => path.to_str().unwrap().to_owned(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            made,
            ["/run/k/.root/a", "/run/k/.root/a/b", "/run/k/.root/a/c"]
        );
    }

    #[test]
    fn the_seccomp_filters_compile() {
        let filters = seccomp::compile().unwrap();
        assert!(!filters.allow_list.is_empty());
        assert!(filters.allow_list.len() < usize::from(u16::MAX));
        assert!(!filters.clone3.is_empty());
    }
}
