//! The part of the jail that runs between `fork` and `exec`: raw system calls only.
//!
//! The node is multi-threaded, so after `fork` only async-signal-safe functions may run: no
//! allocation, no locks, no `std` I/O. Everything here reads a [`ChildPlan`] the node prepared
//! before forking, and calls `libc` directly. Errors travel as a step name and an `errno`: the
//! failing step is written to the plan's report pipe (the node reads it if the spawn fails).
//!
//! The sequence is described in the [module docs](super).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;

use seccompiler::BpfProgram;

/// The uid and gid the kernel has inside its user namespace.
pub(crate) const JAIL_ID: u32 = 1000;

/// One filesystem operation while the new root is assembled (paths are host paths under the
/// staging root).
#[derive(Debug)]
pub(crate) enum Step {
    /// `mkdir` with this mode (an existing folder is fine).
    Mkdir(CString, libc::mode_t),
    /// Create an empty file to bind a file onto.
    Touch(CString),
    /// Create a file with this content (mode 0644).
    Write(CString, Vec<u8>),
    /// `symlink(target, link)`.
    Symlink { target: CString, link: CString },
    /// Makes the mount at `target` and every mount beneath it read-only, `nosuid` and `nodev`
    /// with `mount_setattr(AT_RECURSIVE)`. Where that call is missing (`ENOSYS`, Linux before
    /// 5.12), remounts `target` and then each of `fallback` (the submounts, with the flags each
    /// keeps) one by one.
    ReadOnlyTree {
        target: CString,
        fallback: Vec<(CString, libc::c_ulong)>,
    },
    /// Attaches the detached mount `mount` (the kernel's socket tmpfs) at `target`.
    Attach { mount: RawFd, target: CString },
    /// `mount(2)`.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
}

/// The landlock ruleset the kernel restricts itself with.
#[derive(Debug)]
pub(crate) struct Landlock {
    /// The write-like accesses the ruleset handles (so denies outside the rules).
    pub(crate) handled: u64,
    /// Paths inside the jail and the accesses allowed beneath each.
    pub(crate) rules: Vec<(CString, u64)>,
}

/// Everything the forked processes need, prepared by the node.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    /// The node's pid: the supervisor exits at once if its parent is already another process.
    pub(crate) node_pid: libc::pid_t,
    /// `cgroup.procs` of the kernel's cgroup (one per hierarchy on cgroup v1), open for writing.
    pub(crate) cgroup_procs: Vec<OwnedFd>,
    /// An empty folder in the host the new root's tmpfs is mounted on.
    pub(crate) staging: CString,
    pub(crate) root_tmpfs_options: CString,
    pub(crate) steps: Vec<Step>,
    pub(crate) hostname: CString,
    pub(crate) host_uid: u32,
    pub(crate) host_gid: u32,
    pub(crate) uid_map: Vec<u8>,
    pub(crate) gid_map: Vec<u8>,
    pub(crate) work_dir: CString,
    /// Every resource limit, as (resource, soft, hard): nothing is inherited from the node.
    pub(crate) rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// Written to `/proc/self/oom_score_adj` while still root, which also makes it the floor
    /// the kernel cannot go below.
    pub(crate) oom_score_adj: Vec<u8>,
    pub(crate) landlock: Option<Landlock>,
    pub(crate) allow_list: BpfProgram,
    pub(crate) clone3: BpfProgram,
    pub(crate) unknown: BpfProgram,
    /// Write end of the pipe the kernel reports a failed step on.
    pub(crate) report: OwnedFd,
    /// The network namespace the node prepared (egress through the node), entered instead of
    /// unsharing an empty one.
    pub(crate) network: Option<RawFd>,
}

/// Makes the process `command` starts (unjailed) lead a session and process group of its own,
/// so that no terminal the node was started from is its controlling terminal.
pub(crate) fn own_session(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs between `fork` and `exec` and only calls `setsid`, which is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The names of the steps, indexed by the byte written to the report pipe.
pub(crate) const STEP_NAMES: &[&str] = &[
    "join the cgroup",
    "unshare namespaces",
    "make / private",
    "mount the root tmpfs",
    "assemble the root",
    "pivot_root",
    "remount / read-only",
    "set the hostname",
    "bring up loopback",
    "set rlimits",
    "drop to the jail uid",
    "unshare the user namespace",
    "write the uid/gid maps",
    "drop capabilities",
    "enter the work dir",
    "set the parent-death signal",
    "set no_new_privs",
    "apply landlock",
    "apply seccomp",
    "enter the network namespace",
    "set the OOM score",
    "reset the scheduling policy",
    "mark inherited files close-on-exec",
];

/// A failed step: its index into [`STEP_NAMES`] and the `errno`.
struct Failure(u8, i32);

fn check(step: u8, result: libc::c_long) -> Result<libc::c_long, Failure> {
    if result == -1 {
        Err(Failure(step, errno()))
    } else {
        Ok(result)
    }
}

fn errno() -> i32 {
    // SAFETY: `__errno_location` returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Runs in the process the node forked: becomes the supervisor, and returns `Ok` only in the
/// forked kernel process, once it is ready to `exec`.
///
/// # Safety
/// Call only in a child between `fork` and `exec` (as a `pre_exec` closure).
pub(crate) unsafe fn enter(plan: &ChildPlan) -> io::Result<()> {
    // SAFETY (for every libc call below): each is a plain system call on arguments that live for
    // the whole call (the plan, stack values); none allocates or takes a lock.
    unsafe {
        // A session of its own, so neither the supervisor nor the kernel has a controlling
        // terminal: the terminal that started the node is out of reach (no `/dev/tty`, no
        // `TIOCSPGRP`), and the node's Ctrl-C does not reach the jail. The supervisor leads the
        // session and its process group; the kernel it forks stays in both, so the node's
        // signals to the group (interrupts, kills) reach it.
        if libc::setsid() == -1 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != plan.node_pid {
            // The node died between fork and prctl: nobody will ever wait for us.
            libc::_exit(1);
        }
        if libc::unshare(libc::CLONE_NEWPID) == -1 {
            return Err(io::Error::last_os_error());
        }
        // The supervisor ignores SIGINT (the node's interrupts reach the whole process group);
        // the kernel restores the default before anything else, so Python installs its handler.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                match kernel(plan) {
                    Ok(()) => Ok(()),
                    Err(Failure(step, code)) => {
                        let mut message = [0u8; 5];
                        message[0] = step;
                        message[1..].copy_from_slice(&code.to_ne_bytes());
                        libc::write(plan.report.as_raw_fd(), message.as_ptr().cast(), 5);
                        Err(io::Error::from_raw_os_error(code))
                    }
                }
            }
            kernel => supervise(kernel),
        }
    }
}

/// The supervisor: holds nothing of the node, waits for the kernel, and exits the way it did.
unsafe fn supervise(kernel: libc::pid_t) -> ! {
    // SAFETY: plain system calls on stack values; this process never returns to Rust code that
    // could use the descriptors closed here.
    unsafe {
        // Every descriptor the node had (sockets, the spawn's status pipe, the stdio pipes) is
        // closed, so the supervisor keeps nothing of the node alive.
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        let mut status = 0;
        loop {
            let waited = libc::waitpid(kernel, &mut status, 0);
            if waited == kernel {
                break;
            }
            if waited == -1 && errno() != libc::EINTR {
                libc::_exit(1);
            }
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, ptr::null_mut());
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// The kernel process (pid 1 of the new pid namespace): builds the jail around itself.
unsafe fn kernel(plan: &ChildPlan) -> Result<(), Failure> {
    // SAFETY: plain system calls on arguments prepared by the node (NUL-terminated `CString`s,
    // owned buffers) or on the stack; nothing allocates.
    unsafe {
        // No `getppid` check here: in its own pid namespace the kernel's parent is outside, so
        // `getppid` is 0. The supervisor only ever exits after the kernel, or together with it
        // when the node kills their process group.
        check(
            15,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) as _,
        )?;
        for procs in &plan.cgroup_procs {
            check(
                0,
                libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) as _,
            )?;
        }
        let mut namespaces =
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWCGROUP;
        match plan.network {
            Some(network) => check(19, libc::setns(network, libc::CLONE_NEWNET) as _).map(drop)?,
            None => namespaces |= libc::CLONE_NEWNET,
        }
        check(1, libc::unshare(namespaces) as _)?;
        check(
            2,
            libc::mount(
                ptr::null(),
                c"/".as_ptr(),
                ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                ptr::null(),
            ) as _,
        )?;
        check(
            3,
            libc::mount(
                c"tmpfs".as_ptr(),
                plan.staging.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                plan.root_tmpfs_options.as_ptr().cast(),
            ) as _,
        )?;
        for step in &plan.steps {
            run_step(step).map_err(|code| Failure(4, code))?;
        }
        check(5, libc::chdir(plan.staging.as_ptr()) as _)?;
        check(
            5,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
        )?;
        check(5, libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _)?;
        check(5, libc::chdir(c"/".as_ptr()) as _)?;
        check(
            6,
            libc::mount(
                ptr::null(),
                c"/".as_ptr(),
                ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                ptr::null(),
            ) as _,
        )?;
        let hostname = plan.hostname.as_bytes();
        check(
            7,
            libc::sethostname(hostname.as_ptr().cast(), hostname.len()) as _,
        )?;
        loopback_up().map_err(|code| Failure(8, code))?;
        for &(resource, soft, hard) in &plan.rlimits {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            check(9, libc::setrlimit(resource, &limit) as _)?;
        }
        write_file(c"/proc/self/oom_score_adj", &plan.oom_score_adj)
            .map_err(|code| Failure(20, code))?;
        reset_scheduling().map_err(|code| Failure(21, code))?;

        // Become nobody on the host: no supplementary groups, the kernel's own uid and gid.
        check(10, libc::setgroups(0, ptr::null()) as _)?;
        check(
            10,
            libc::setresgid(plan.host_gid, plan.host_gid, plan.host_gid) as _,
        )?;
        check(
            10,
            libc::setresuid(plan.host_uid, plan.host_uid, plan.host_uid) as _,
        )?;
        // Changing uid made the process undumpable, which makes /proc/self/* root's; the maps
        // below are written through it.
        check(
            10,
            libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong) as _,
        )?;
        check(11, libc::unshare(libc::CLONE_NEWUSER) as _)?;
        write_file(c"/proc/self/setgroups", b"deny").map_err(|code| Failure(12, code))?;
        write_file(c"/proc/self/uid_map", &plan.uid_map).map_err(|code| Failure(12, code))?;
        write_file(c"/proc/self/gid_map", &plan.gid_map).map_err(|code| Failure(12, code))?;

        drop_capabilities().map_err(|code| Failure(13, code))?;
        check(14, libc::chdir(plan.work_dir.as_ptr()) as _)?;
        // The credential changes above cleared the parent-death signal.
        check(
            15,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) as _,
        )?;
        check(
            16,
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) as _,
        )?;
        if let Some(landlock) = &plan.landlock {
            restrict_with_landlock(landlock).map_err(|code| Failure(17, code))?;
        }
        // Whatever the node left open without `O_CLOEXEC` (a C library that forgot it) closes
        // at `exec`; the plan's own descriptors stay usable until then.
        check(
            22,
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ),
        )?;
        install_filter(&plan.allow_list).map_err(|code| Failure(18, code))?;
        install_filter(&plan.clone3).map_err(|code| Failure(18, code))?;
        install_filter(&plan.unknown).map_err(|code| Failure(18, code))?;
        Ok(())
    }
}

/// Gives up a real-time policy and a raised priority inherited from the node: the kernel runs
/// as an ordinary task, at nice 0 or lower priority (`RLIMIT_RTPRIO` and `RLIMIT_NICE` are 0,
/// so it cannot climb back).
unsafe fn reset_scheduling() -> Result<(), i32> {
    // SAFETY: plain system calls on a stack value.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        if policy == -1 {
            return Err(errno());
        }
        let ordinary = [libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE];
        if !ordinary.contains(&(policy & !libc::SCHED_RESET_ON_FORK)) {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == -1 {
                return Err(errno());
            }
        }
        // `getpriority` may legitimately return -1, so errno tells errors apart.
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && errno() != 0 {
            return Err(errno());
        }
        if nice < 0 && libc::setpriority(libc::PRIO_PROCESS, 0, 0) == -1 {
            return Err(errno());
        }
        Ok(())
    }
}

/// Runs one step of assembling the root; `Err` is the `errno`.
///
/// # Safety
/// Between `fork` and `exec` (or in a single-threaded child), like every function here.
pub(super) unsafe fn run_step(step: &Step) -> Result<(), i32> {
    // SAFETY: plain system calls on NUL-terminated strings and buffers owned by the plan.
    unsafe {
        match step {
            Step::Mkdir(path, mode) => {
                if libc::mkdir(path.as_ptr(), *mode) == -1 && errno() != libc::EEXIST {
                    return Err(errno());
                }
            }
            Step::ReadOnlyTree { target, fallback } => {
                let attr = MountAttr {
                    attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                    attr_clr: 0,
                    propagation: 0,
                    userns_fd: 0,
                };
                let result = libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    AT_RECURSIVE,
                    &attr,
                    size_of::<MountAttr>(),
                );
                if result == -1 {
                    if errno() != libc::ENOSYS {
                        return Err(errno());
                    }
                    let read_only = libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV;
                    let top = std::iter::once((target, 0));
                    for (mount, keep) in top.chain(fallback.iter().map(|(m, k)| (m, *k))) {
                        let flags = read_only | keep;
                        if libc::mount(ptr::null(), mount.as_ptr(), ptr::null(), flags, ptr::null())
                            == -1
                        {
                            return Err(errno());
                        }
                    }
                }
            }
            Step::Attach { mount, target } => {
                let result = libc::syscall(
                    libc::SYS_move_mount,
                    *mount,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                );
                if result == -1 {
                    return Err(errno());
                }
            }
            Step::Touch(path) => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o644,
                );
                if fd == -1 {
                    return Err(errno());
                }
                libc::close(fd);
            }
            Step::Write(path, content) => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                    0o644,
                );
                if fd == -1 {
                    return Err(errno());
                }
                let result = write_all(fd, content);
                libc::close(fd);
                result?;
            }
            Step::Symlink { target, link } => {
                if libc::symlink(target.as_ptr(), link.as_ptr()) == -1 && errno() != libc::EEXIST {
                    return Err(errno());
                }
            }
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                let result = libc::mount(
                    source.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                    target.as_ptr(),
                    fstype.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                    *flags,
                    data.as_ref().map_or(ptr::null(), |s| s.as_ptr().cast()),
                );
                if result == -1 {
                    return Err(errno());
                }
            }
        }
        Ok(())
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

// From `linux/mount.h`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
// From `linux/fcntl.h`.
const AT_RECURSIVE: libc::c_uint = 0x8000;

unsafe fn write_all(fd: libc::c_int, mut content: &[u8]) -> Result<(), i32> {
    while !content.is_empty() {
        // SAFETY: `content` is a live slice; `fd` is open.
        let written = unsafe { libc::write(fd, content.as_ptr().cast(), content.len()) };
        if written == -1 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(errno());
        }
        content = &content[written.unsigned_abs()..];
    }
    Ok(())
}

unsafe fn write_file(path: &CStr, content: &[u8]) -> Result<(), i32> {
    // SAFETY: `path` is NUL-terminated; the descriptor is closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd == -1 {
            return Err(errno());
        }
        let result = write_all(fd, content);
        libc::close(fd);
        result
    }
}

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct InterfaceFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Brings up `lo` in the new network namespace, its only interface.
unsafe fn loopback_up() -> Result<(), i32> {
    // SAFETY: the socket is closed before returning; `request` is a correctly sized `ifreq`.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket == -1 {
            return Err(errno());
        }
        let mut request = InterfaceFlags {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _rest: [0; 22],
        };
        request.name[..2].copy_from_slice(b"lo");
        let mut result = libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request);
        if result != -1 {
            request.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            result = libc::ioctl(socket, libc::SIOCSIFFLAGS, &request);
        }
        let code = errno();
        libc::close(socket);
        if result == -1 { Err(code) } else { Ok(()) }
    }
}

/// `struct __user_cap_header_struct` / `__user_cap_data_struct`, version 3.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the bounding and ambient sets, then the effective, permitted and inheritable ones.
unsafe fn drop_capabilities() -> Result<(), i32> {
    // SAFETY: prctl and capset on stack values of the layout the kernel expects.
    unsafe {
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) == -1
                && errno() != libc::EINVAL
            {
                return Err(errno());
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) == -1
        {
            return Err(errno());
        }
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) == -1 {
            return Err(errno());
        }
        Ok(())
    }
}

/// `struct landlock_ruleset_attr` (the filesystem part, which every ABI version accepts).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

/// `struct landlock_path_beneath_attr`, packed as in the kernel's header.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

const LANDLOCK_RULE_PATH_BENEATH: libc::c_long = 1;

unsafe fn restrict_with_landlock(landlock: &Landlock) -> Result<(), i32> {
    // SAFETY: landlock system calls on stack structs of the kernel's layout; every descriptor
    // opened here is closed before returning.
    unsafe {
        let attr = RulesetAttr {
            handled_access_fs: landlock.handled,
        };
        let ruleset = libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr,
            size_of::<RulesetAttr>(),
            0u32,
        );
        if ruleset == -1 {
            return Err(errno());
        }
        let ruleset = ruleset as libc::c_int;
        let mut result = Ok(());
        for (path, access) in &landlock.rules {
            let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd == -1 {
                result = Err(errno());
                break;
            }
            let rule = PathBeneathAttr {
                allowed_access: *access,
                parent_fd: fd,
            };
            let added = libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset,
                LANDLOCK_RULE_PATH_BENEATH,
                &rule,
                0u32,
            );
            let code = errno();
            libc::close(fd);
            if added == -1 {
                result = Err(code);
                break;
            }
        }
        if result.is_ok() && libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) == -1 {
            result = Err(errno());
        }
        libc::close(ruleset);
        result
    }
}

unsafe fn install_filter(program: &BpfProgram) -> Result<(), i32> {
    let Ok(len) = u16::try_from(program.len()) else {
        return Err(libc::E2BIG);
    };
    let fprog = libc::sock_fprog {
        len,
        // `seccompiler::sock_filter` is `#[repr(C)]` with the fields of `libc::sock_filter`.
        filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `fprog` points at the program, which outlives the call; the kernel copies it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &fprog,
        )
    };
    if result == -1 { Err(errno()) } else { Ok(()) }
}
