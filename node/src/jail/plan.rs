//! One kernel's jail, as the node sees it: prepares the [`ChildPlan`] (everything that allocates),
//! wraps the kernel command, and owns the kernel's cgroup until the kernel is gone.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::process::Command;

use super::cgroup::KernelCgroup;
use super::child::{self, ChildPlan, JAIL_ID, Landlock, STEP_NAMES, Step};
use super::runtime::{self, SOCKET_FOLDER};
use super::uids::{HostUid, KERNEL_UIDS};
use super::{JailConfig, JailError, TierLimits, preflight, seccomp};
use crate::egress::JailNetwork;

/// Host folders bound read-only into the jail when they exist (symlinks are recreated as
/// symlinks, as on merged-`/usr` systems).
const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"];

/// Device nodes bound from the host into the jail's `/dev`. Not `tty`: through it a kernel
/// could reach the terminal that started the node (and the kernel has no controlling terminal
/// anyway, see `child::enter`).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Mode of the folders the jail creates on the way to a bound path (`/root` on the way to a
/// Python under `/root/.pyenv`): they can be crossed, not listed, whatever the host's modes are.
const PASSAGE_MODE: libc::mode_t = 0o711;

/// The kernel's `oom_score_adj` (at least; a node that runs higher passes its own on): when the
/// host runs out of memory, a kernel (one document, restartable) goes before the node (every
/// document) and before the host's services. Written as root, it is also the floor the kernel
/// cannot lower it below.
const KERNEL_OOM_SCORE_ADJ: i32 = 500;

/// `RLIMIT_STACK`: the usual 8 MiB, which the kernel may raise to 64 MiB. Never unlimited: an
/// unlimited stack switches the kernel to the legacy, less random memory layout.
const STACK_BYTES: (u64, u64) = (8 << 20, 64 << 20);

/// `RLIMIT_MEMLOCK`: locked memory is counted in `memory.max` anyway; a little for libraries
/// that lock a key in memory.
const MEMLOCK_BYTES: u64 = 64 << 10;

/// `RLIMIT_MSGQUEUE`: Linux's default for POSIX message queues (in the jail's own IPC namespace).
const MSGQUEUE_BYTES: u64 = 819_200;

/// `RLIMIT_SIGPENDING`: queued signals of the kernel's (unique) uid.
const SIGPENDING: u64 = 1024;

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
    /// The kernel's socket tmpfs (`runtime`), which the node reaches through this descriptor
    /// (`/proc/<node>/fd/<n>`); held, never read, until the jail goes.
    #[allow(dead_code)]
    sockets: OwnedFd,
    /// Given back (on drop) once the jail, and with it every process of the uid, is gone.
    #[allow(dead_code)]
    host_uid: HostUid,
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
        let host_uid = KERNEL_UIDS.allocate(config.uid_base, config.uid_count, rand::random())?;
        let host_id = host_uid.get();
        let prepare_error = |path: &Path| {
            let path = path.to_owned();
            move |source| JailError::Prepare { path, source }
        };
        let prefixes = bound_prefixes(python, &config.protected_dirs)?;

        // The kernel's uid may read the connection file, bound read-only; the folder itself
        // stays the node's. The sockets go to a tmpfs of the kernel's own (`runtime`).
        chown_files(runtime_folder, host_id).map_err(prepare_error(runtime_folder))?;
        let sockets = runtime::sockets_tmpfs(host_id)?;
        runtime::link_sockets(runtime_folder, &sockets)?;
        let staging = runtime_folder.join(".root");
        std::fs::create_dir(&staging).map_err(prepare_error(&staging))?;

        let mut layout = Layout::new(&staging);
        layout.assemble(
            &prefixes,
            runtime_folder,
            sockets.as_raw_fd(),
            &config.limits,
            host_id,
            config.egress.is_some(),
        )?;
        let (report_read, report_write) = pipe().map_err(prepare_error(runtime_folder))?;
        let filters = seccomp::compile()?;
        let limits = config.limits;
        let landlock = host
            .landlock_abi
            .map(|abi| landlock_rules(abi, &runtime_folder.join(SOCKET_FOLDER)))
            .transpose()?;

        // The cgroup comes last: from here on, any failure drops `jail`, which removes it.
        let cgroup =
            KernelCgroup::create(&host, &config.cgroup_parent, &kernel_name, &config.limits)?;
        let mut jail = KernelJail {
            cgroup: Some(cgroup),
            network: None,
            limits,
            report: report_read,
            sockets,
            host_uid,
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
            rlimits: rlimits(&limits),
            oom_score_adj: oom_score_adj().to_string().into_bytes(),
            landlock,
            allow_list: filters.allow_list,
            clone3: filters.clone3,
            unknown: filters.unknown,
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

    /// `mkdir -p` of `inside`, each new folder [`PASSAGE_MODE`]: crossable, not listable.
    fn mkdirs(&mut self, inside: &Path) -> Result<(), JailError> {
        self.mkdirs_with_mode(inside, PASSAGE_MODE)
    }

    fn mkdirs_with_mode(&mut self, inside: &Path, mode: libc::mode_t) -> Result<(), JailError> {
        let mut path = PathBuf::from("/");
        for component in inside.components() {
            if let Component::Normal(name) = component {
                path.push(name);
                if !self.made.contains(&path) {
                    self.made.push(path.clone());
                    let at = self.at(&path);
                    self.steps.push(Step::Mkdir(cstring(&at)?, mode));
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

    /// Binds host `path` at the same path inside, with every mount beneath it, all of them
    /// read-only, never setuid, never devices.
    fn bind(&mut self, path: &Path) -> Result<(), JailError> {
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
        // A remount would change only the top mount; `mount_setattr` reaches every submount.
        // Where it is missing (before Linux 5.12), each mount is remounted on its own.
        let mut fallback = Vec::new();
        for (mount_point, keep) in submounts_of(path, &host_mounts()) {
            fallback.push((cstring(&self.at(&mount_point))?, keep));
        }
        self.steps.push(Step::ReadOnlyTree {
            target: cstring(&self.at(path))?,
            fallback,
        });
        Ok(())
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
        prefixes: &[PathBuf],
        runtime_folder: &Path,
        sockets: RawFd,
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
                Err(_) if path.is_dir() => self.bind(path)?,
                Err(_) => {}
            }
        }
        for prefix in prefixes {
            self.bind(prefix)?;
        }

        // A minimal /etc: who the jail user is, where localhost is, the loader's cache.
        self.mkdirs_with_mode(Path::new("/etc"), 0o755)?;
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

        // The kernel's runtime folder at its own path: the node's files in it (the connection
        // file) read-only, and the kernel's socket tmpfs attached as its `sockets` folder.
        self.mkdirs(runtime_folder)?;
        let entries = std::fs::read_dir(runtime_folder).map_err(|source| JailError::Prepare {
            path: runtime_folder.to_owned(),
            source,
        })?;
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|kind| kind.is_file()) {
                self.bind(&entry.path())?;
            }
        }
        let socket_folder = runtime_folder.join(SOCKET_FOLDER);
        self.mkdirs(&socket_folder)?;
        self.steps.push(Step::Attach {
            mount: sockets,
            target: cstring(&self.at(&socket_folder))?,
        });

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

/// The interpreter's prefixes, as it reports them, by interpreter: asked once per process.
static PREFIXES: Mutex<Option<HashMap<PathBuf, Vec<PathBuf>>>> = Mutex::new(None);

/// The folders of the Python installation behind `python` that the jail binds: exactly
/// `sys.prefix` and `sys.base_prefix` (and the `exec_prefix` pair, usually the same) as the
/// interpreter reports them, less those inside the system folders (bound anyway). A prefix that
/// is or holds a home folder, or holds one of `protected` (the node's data), is refused.
fn bound_prefixes(python: &Path, protected: &[PathBuf]) -> Result<Vec<PathBuf>, JailError> {
    let reported = interpreter_prefixes(python)?;
    let homes = home_folders();
    let protected: Vec<PathBuf> = protected
        .iter()
        .map(|dir| std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()))
        .collect();
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for prefix in reported {
        let prefix = std::fs::canonicalize(&prefix).unwrap_or(prefix);
        if SYSTEM_DIRS.iter().any(|dir| prefix.starts_with(dir)) {
            continue;
        }
        check_prefix(&prefix, &homes, &protected)?;
        if !prefixes.iter().any(|p| prefix.starts_with(p)) {
            prefixes.retain(|p| !p.starts_with(&prefix));
            prefixes.push(prefix);
        }
    }
    Ok(prefixes)
}

/// Runs `python` (isolated from the environment) to learn its prefixes; the answer is kept for
/// the life of the process. This blocks for the interpreter's start-up, once per interpreter.
fn interpreter_prefixes(python: &Path) -> Result<Vec<PathBuf>, JailError> {
    let mut cache = PREFIXES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = cache.as_ref().and_then(|cache| cache.get(python)) {
        return Ok(known.clone());
    }
    let failed = |detail: String| JailError::PythonPrefix {
        python: python.to_owned(),
        detail,
    };
    let output = std::process::Command::new(python)
        .args(["-I", "-c", PRINT_PREFIXES])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| failed(format!("it could not be run: {error}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "it failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let prefixes: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    if prefixes.is_empty() || prefixes.iter().any(|p| !p.is_absolute()) {
        return Err(failed(format!("it reported {prefixes:?}")));
    }
    cache
        .get_or_insert_with(HashMap::new)
        .insert(python.to_owned(), prefixes.clone());
    Ok(prefixes)
}

/// What the interpreter runs to report its prefixes, one a line.
const PRINT_PREFIXES: &str = "import sys\nfor p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix): print(p)";

/// Refuses a prefix that would show the kernel a home folder or the node's data.
fn check_prefix(prefix: &Path, homes: &[PathBuf], protected: &[PathBuf]) -> Result<(), JailError> {
    let refuse = |exposes: &Path, what: &'static str| JailError::PrefixExposes {
        prefix: prefix.to_owned(),
        exposes: exposes.to_owned(),
        what,
    };
    if let Some(home) = homes.iter().find(|home| home.starts_with(prefix)) {
        return Err(refuse(home, "a home folder"));
    }
    if let Some(data) = protected.iter().find(|data| data.starts_with(prefix)) {
        return Err(refuse(data, "the node's data folder"));
    }
    Ok(())
}

/// Home folders of root and of login users (uid 1000 and up) in `/etc/passwd`, resolved.
fn home_folders() -> Vec<PathBuf> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    homes_in(&passwd)
        .into_iter()
        .map(|home| std::fs::canonicalize(&home).unwrap_or(home))
        .collect()
}

fn homes_in(passwd: &str) -> Vec<PathBuf> {
    passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let uid: u32 = fields.get(2)?.parse().ok()?;
            let home = Path::new(fields.get(5)?);
            let login = uid == 0 || (1000..65534).contains(&uid);
            (login && home.is_absolute() && home != Path::new("/")).then(|| home.to_owned())
        })
        .collect()
}

/// The host's mount points (`/proc/self/mountinfo`), each with the flags a read-only remount
/// must keep (`noexec`, atime settings).
fn host_mounts() -> Vec<(PathBuf, libc::c_ulong)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = PathBuf::from(unescape_mount_path(fields.get(4)?));
            let mut keep = 0;
            for option in fields.get(5)?.split(',') {
                keep |= match option {
                    "noexec" => libc::MS_NOEXEC,
                    "noatime" => libc::MS_NOATIME,
                    "nodiratime" => libc::MS_NODIRATIME,
                    "relatime" => libc::MS_RELATIME,
                    _ => 0,
                };
            }
            Some((point, keep))
        })
        .collect()
}

/// The mounts strictly beneath `path`, with the flags to keep.
fn submounts_of(path: &Path, mounts: &[(PathBuf, libc::c_ulong)]) -> Vec<(PathBuf, libc::c_ulong)> {
    mounts
        .iter()
        .filter(|(point, _)| point.starts_with(path) && point != path)
        .cloned()
        .collect()
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Every resource limit of a kernel, as (resource, soft, hard). Nothing is inherited from the
/// node (whose limits may be a root service's: real-time priority, locked memory, a nice level).
fn rlimits(limits: &TierLimits) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
    let unlimited = libc::RLIM_INFINITY;
    vec![
        (libc::RLIMIT_CPU, unlimited, unlimited),
        (
            libc::RLIMIT_FSIZE,
            limits.work_dir_bytes,
            limits.work_dir_bytes,
        ),
        (libc::RLIMIT_DATA, unlimited, unlimited),
        (libc::RLIMIT_STACK, STACK_BYTES.0, STACK_BYTES.1),
        (libc::RLIMIT_CORE, 0, 0),
        (libc::RLIMIT_RSS, unlimited, unlimited),
        (libc::RLIMIT_NPROC, limits.pids, limits.pids),
        (libc::RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (libc::RLIMIT_MEMLOCK, MEMLOCK_BYTES, MEMLOCK_BYTES),
        (libc::RLIMIT_AS, unlimited, unlimited),
        (libc::RLIMIT_LOCKS, limits.open_files, limits.open_files),
        (libc::RLIMIT_SIGPENDING, SIGPENDING, SIGPENDING),
        (libc::RLIMIT_MSGQUEUE, MSGQUEUE_BYTES, MSGQUEUE_BYTES),
        // Neither a higher priority nor a real-time one (which would escape `cpu.max` where
        // real-time tasks are not group-scheduled).
        (libc::RLIMIT_NICE, 0, 0),
        (libc::RLIMIT_RTPRIO, 0, 0),
        (libc::RLIMIT_RTTIME, 0, 0),
    ]
}

/// The kernel's `oom_score_adj`: [`KERNEL_OOM_SCORE_ADJ`], or the node's own when higher.
fn oom_score_adj() -> i32 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|value| value.trim().parse::<i32>().ok())
        .unwrap_or(0);
    own.max(KERNEL_OOM_SCORE_ADJ)
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

/// Gives the files directly in `dir` (not the folder, not its subfolders) to `id`.
fn chown_files(dir: &Path, id: u32) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::os::unix::fs::chown(entry.path(), Some(id), Some(id))?;
        }
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
    fn a_prefix_showing_a_home_or_the_data_folder_is_refused() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n";
        let homes = homes_in(passwd);
        assert_eq!(
            homes,
            [PathBuf::from("/root"), PathBuf::from("/home/alice")]
        );
        let data = [PathBuf::from("/root/.local/share/airlock")];
        let refused = |prefix: &str| check_prefix(Path::new(prefix), &homes, &data).err();
        // `home = ~/.local/bin` in a virtualenv's pyvenv.cfg used to bind `~/.local`.
        for prefix in [
            "/root/.local",
            "/root/.local/share",
            "/root",
            "/home",
            "/home/alice",
            "/",
        ] {
            let error = refused(prefix).unwrap_or_else(|| panic!("{prefix} was allowed"));
            let message = error.to_string();
            assert!(message.contains(prefix), "{message}");
            assert!(
                message.contains("use an interpreter installed elsewhere"),
                "{message}"
            );
        }
        assert!(matches!(
            refused("/root/.local"),
            Some(JailError::PrefixExposes {
                what: "the node's data folder",
                ..
            })
        ));
        assert!(matches!(
            refused("/home/alice"),
            Some(JailError::PrefixExposes {
                what: "a home folder",
                ..
            })
        ));
        for prefix in [
            "/root/.pyenv/versions/3.11.7",
            "/root/.local/share/airlock/python",
            "/home/alice/venv",
            "/opt/python3.12",
        ] {
            assert!(refused(prefix).is_none(), "{prefix} was refused");
        }
    }

    #[test]
    fn the_interpreter_reports_its_own_prefixes() {
        let python = PathBuf::from("/usr/bin/python3");
        if !python.exists() {
            eprintln!("skipped: no /usr/bin/python3");
            return;
        }
        let prefixes = interpreter_prefixes(&python).unwrap();
        assert_eq!(prefixes.len(), 4, "{prefixes:?}");
        assert!(
            prefixes.iter().all(|p| p.starts_with("/usr")),
            "{prefixes:?}"
        );
        assert!(
            bound_prefixes(&python, &[]).unwrap().is_empty(),
            "under /usr: bound anyway"
        );
    }

    #[test]
    fn every_rlimit_is_set() {
        let limits = TierLimits::default();
        let set = rlimits(&limits);
        // Linux has 16 resources (`RLIM_NLIMITS`), numbered from 0.
        let mut resources: Vec<u32> = set.iter().map(|&(resource, _, _)| resource).collect();
        resources.sort_unstable();
        assert_eq!(resources, (0..16).collect::<Vec<u32>>());
        let get = |wanted| {
            set.iter()
                .find(|&&(r, _, _)| r == wanted)
                .map(|&(_, s, h)| (s, h))
        };
        for zero in [libc::RLIMIT_CORE, libc::RLIMIT_NICE, libc::RLIMIT_RTPRIO] {
            assert_eq!(get(zero), Some((0, 0)));
        }
        assert_eq!(get(libc::RLIMIT_MEMLOCK), Some((64 << 10, 64 << 10)));
        assert_ne!(get(libc::RLIMIT_STACK).unwrap().1, libc::RLIM_INFINITY);
        assert!(oom_score_adj() >= KERNEL_OOM_SCORE_ADJ);
    }

    #[test]
    fn submounts_are_found_for_the_remount_fallback() {
        let mounts = [
            (PathBuf::from("/usr"), 0),
            (PathBuf::from("/usr/lib/modules"), libc::MS_NOEXEC),
            (PathBuf::from("/usrlocal"), 0),
            (PathBuf::from("/var"), 0),
        ];
        assert_eq!(
            submounts_of(Path::new("/usr"), &mounts),
            [(PathBuf::from("/usr/lib/modules"), libc::MS_NOEXEC)]
        );
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
    }

    /// A bound tree is read-only down to its submounts, and the folders made on the way to it
    /// are 0711. Runs the real steps in a forked child with a mount namespace of its own, so
    /// nothing is mounted on the host. Needs root.
    #[test]
    fn a_bound_tree_is_read_only_down_to_its_submounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let host = tempfile::tempdir().unwrap();
        let tree = host.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        let staging = host.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let mut layout = Layout::new(&staging);
        layout.bind(&tree).unwrap();
        // Everything the child touches is made before the fork: it must not allocate.
        let sub = cstring(&tree.join("sub")).unwrap();
        let staging_c = cstring(&staging).unwrap();
        let top_file = cstring(&layout.at(&tree.join("top"))).unwrap();
        let sub_file = cstring(&layout.at(&tree.join("sub/file"))).unwrap();
        let passage = cstring(&layout.at(host.path())).unwrap();
        // SAFETY: the child runs only raw system calls on values made above, then `_exit`s.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            // SAFETY: as above; every path is a NUL-terminated `CString`.
            unsafe {
                let tmpfs = c"tmpfs".as_ptr();
                let fail = |code: i32| -> ! { libc::_exit(code) };
                if libc::unshare(libc::CLONE_NEWNS) == -1
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == -1
                    || libc::mount(tmpfs, sub.as_ptr(), tmpfs, 0, std::ptr::null()) == -1
                    || libc::mount(tmpfs, staging_c.as_ptr(), tmpfs, 0, std::ptr::null()) == -1
                {
                    fail(10);
                }
                for step in &layout.steps {
                    if child::run_step(step).is_err() {
                        fail(11);
                    }
                }
                for (code, path) in [(12, &top_file), (13, &sub_file)] {
                    let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                    if fd != -1 || *libc::__errno_location() != libc::EROFS {
                        fail(code);
                    }
                }
                let mut stat: libc::stat = std::mem::zeroed();
                if libc::stat(passage.as_ptr(), &mut stat) == -1 || stat.st_mode & 0o777 != 0o711 {
                    fail(14);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status), "{status}");
        let code = libc::WEXITSTATUS(status);
        let what = match code {
            0 => "",
            10 => "the test's own mounts failed",
            11 => "a step failed",
            12 => "the bound tree is writable",
            13 => "the submount of the bound tree is writable",
            14 => "the folder on the way is not 0711",
            _ => "?",
        };
        assert_eq!(code, 0, "{what}");
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
                Step::Mkdir(path, 0o711) => path.to_str().unwrap().to_owned(),
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
        assert!(!filters.unknown.is_empty());
    }
}
