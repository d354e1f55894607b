//! The seccomp filters: an allow-list of system calls, compiled once per kernel start in the node
//! (it allocates) and installed by the kernel process just before `exec`.
//!
//! Everything not allowed fails with `EPERM`, so Python raises `OSError` instead of dying. The
//! list is every x86-64 system call except those that administer the machine or cross a
//! boundary: mounting, namespaces, tracing other processes, modules, BPF, perf, userfaultfd,
//! keyrings, file handles, swap, reboot, root changes, clock setting, io_uring, the new mount API;
//! and those that are risky for little use: `modify_ldt` and `memfd_secret` (kernel attack
//! surface), legacy AIO (`io_setup` and friends charge the host-wide `fs.aio-max-nr`), the NUMA
//! policy calls (`mbind`, `set_mempolicy`, `migrate_pages`, `move_pages`), `sysfs` and `ustat`.
//! A few are allowed only with safe arguments: `socket` (Unix; TCP and UDP on IPv4 and IPv6,
//! with protocol 0 or exactly TCP or UDP, so no SCTP, UDP-Lite, MPTCP or ping sockets;
//! netlink-route; never `AF_PACKET` or `SOCK_RAW` on IP), `socketpair` (Unix only: any other
//! family would reach its `create` function and module autoload first), `personality` (only the
//! default persona and the query), `clone` (no namespace flags), `mknod`/`mknodat` (FIFOs,
//! sockets and regular files; never devices), `ioctl` (never `TIOCSTI`/`TIOCLINUX`, which push
//! input into a terminal).
//!
//! Two small filters answer `ENOSYS` instead, which C libraries read as "this kernel does not
//! have it" and fall back from:
//! - `clone3` passes its flags in memory, which seccomp cannot read; the C library then falls
//!   back to `clone`, whose flags the allow-list checks;
//! - system calls numbered above [`HIGHEST_REVIEWED`], added to Linux after this list was
//!   written: denied, but as unknown rather than forbidden (`EPERM` would break `ENOSYS`
//!   fallbacks).
//!
//! A system call that matches several filters gets the answer of the one installed last among
//! those that deny it, so the `ENOSYS` filters are installed after the allow-list.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::JailError;

/// System calls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_access,
    libc::SYS_alarm,
    libc::SYS_arch_prctl,
    libc::SYS_bind,
    libc::SYS_brk,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_chdir,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_connect,
    libc::SYS_copy_file_range,
    libc::SYS_creat,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_ctl_old,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_wait_old,
    libc::SYS_eventfd,
    libc::SYS_eventfd2,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fadvise64,
    libc::SYS_fallocate,
    libc::SYS_fanotify_mark,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchmodat2,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fork,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    libc::SYS_futimesat,
    libc::SYS_get_robust_list,
    libc::SYS_get_thread_area,
    libc::SYS_getcpu,
    libc::SYS_getcwd,
    libc::SYS_getdents,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getgroups,
    libc::SYS_getitimer,
    libc::SYS_getpeername,
    libc::SYS_getpgid,
    libc::SYS_getpgrp,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getpriority,
    libc::SYS_getrandom,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrlimit,
    libc::SYS_getrusage,
    libc::SYS_getsid,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_kill,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self,
    libc::SYS_lchown,
    libc::SYS_lgetxattr,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_listen,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    libc::SYS_lstat,
    libc::SYS_madvise,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_mincore,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mq_getsetattr,
    libc::SYS_mq_notify,
    libc::SYS_mq_open,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_unlink,
    libc::SYS_mremap,
    libc::SYS_msgctl,
    libc::SYS_msgget,
    libc::SYS_msgrcv,
    libc::SYS_msgsnd,
    libc::SYS_msync,
    libc::SYS_munlock,
    libc::SYS_munlockall,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pause,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_prlimit64,
    libc::SYS_process_mrelease,
    libc::SYS_pselect6,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_read,
    libc::SYS_readahead,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_remap_file_pages,
    libc::SYS_removexattr,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_restart_syscall,
    libc::SYS_rmdir,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield,
    libc::SYS_seccomp,
    libc::SYS_select,
    libc::SYS_semctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_sendfile,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_set_robust_list,
    libc::SYS_set_thread_area,
    libc::SYS_set_tid_address,
    libc::SYS_setfsgid,
    libc::SYS_setfsuid,
    libc::SYS_setgid,
    libc::SYS_setgroups,
    libc::SYS_setitimer,
    libc::SYS_setpgid,
    libc::SYS_setpriority,
    libc::SYS_setregid,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setreuid,
    libc::SYS_setrlimit,
    libc::SYS_setsid,
    libc::SYS_setsockopt,
    libc::SYS_setuid,
    libc::SYS_setxattr,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_shmget,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_signalfd,
    libc::SYS_signalfd4,
    libc::SYS_splice,
    libc::SYS_stat,
    libc::SYS_statfs,
    libc::SYS_statx,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_sync,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_sysinfo,
    libc::SYS_tee,
    libc::SYS_tgkill,
    libc::SYS_time,
    libc::SYS_timer_create,
    libc::SYS_timer_delete,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime,
    libc::SYS_timer_settime,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    libc::SYS_times,
    libc::SYS_tkill,
    libc::SYS_truncate,
    libc::SYS_umask,
    libc::SYS_uname,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_utime,
    libc::SYS_utimensat,
    libc::SYS_utimes,
    libc::SYS_vfork,
    libc::SYS_vmsplice,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The namespace flags `clone` may not carry.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// `NETLINK_ROUTE`, which the C library uses to list addresses in `getaddrinfo`.
const NETLINK_ROUTE: u64 = 0;

/// The socket type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC` (`SOCK_TYPE_MASK` in the kernel).
const SOCK_TYPE_MASK: u64 = 0xf;

/// `personality(0xffffffff)` only reads the current persona.
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

/// The highest system call number this list was reviewed against (`mseal`, Linux 6.10, on
/// x86-64). Numbers above it are newer than the list and answer `ENOSYS`.
#[cfg(target_arch = "x86_64")]
pub(crate) const HIGHEST_REVIEWED: u32 = libc::SYS_mseal as u32;
#[cfg(target_arch = "aarch64")]
pub(crate) const HIGHEST_REVIEWED: u32 = 462;

/// `__X32_SYSCALL_BIT`: x32 system calls are numbered from here. They are no "newer" calls, so
/// the allow-list's `EPERM` answers them.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The filters, in the order they must be installed.
#[derive(Debug)]
pub(crate) struct Filters {
    /// The allow-list; everything else is `EPERM`.
    pub(crate) allow_list: BpfProgram,
    /// `clone3` → `ENOSYS`; installed after the allow-list so its answer wins over `EPERM`.
    pub(crate) clone3: BpfProgram,
    /// Numbers above [`HIGHEST_REVIEWED`] → `ENOSYS`; installed after the allow-list too.
    pub(crate) unknown: BpfProgram,
}

/// Compiles the filters for the machine's architecture.
pub(crate) fn compile() -> Result<Filters, JailError> {
    let arch = target_arch();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();

    let mut socket = vec![rule([eq(0, libc::AF_UNIX as u64)])?];
    for domain in [libc::AF_INET, libc::AF_INET6] {
        for (kind, protocol) in [
            (libc::SOCK_STREAM, libc::IPPROTO_TCP),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        ] {
            // Protocol 0 is the family's default for the type: TCP or UDP.
            for protocol in [0, protocol] {
                socket.push(rule([
                    eq(0, domain as u64),
                    masked(1, SOCK_TYPE_MASK, kind as u64),
                    eq(2, protocol as u64),
                ])?);
            }
        }
    }
    socket.push(rule([
        eq(0, libc::AF_NETLINK as u64),
        eq(2, NETLINK_ROUTE),
    ])?);
    rules.insert(libc::SYS_socket, socket);
    rules.insert(
        libc::SYS_socketpair,
        vec![rule([eq(0, libc::AF_UNIX as u64)])?],
    );
    rules.insert(
        libc::SYS_personality,
        vec![rule([eq(0, 0)])?, rule([eq(0, PERSONALITY_QUERY)])?],
    );

    rules.insert(
        libc::SYS_clone,
        vec![rule([SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS),
            0,
        )])?],
    );

    let file_kinds = [0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK];
    for (nr, mode_arg) in [(libc::SYS_mknod, 1), (libc::SYS_mknodat, 2)] {
        let kinds = file_kinds
            .iter()
            .map(|&kind| rule([masked(mode_arg, libc::S_IFMT as u64, kind as u64)]))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, kinds);
    }

    rules.insert(
        libc::SYS_ioctl,
        vec![rule([
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, libc::TIOCSTI),
            SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                libc::TIOCLINUX,
            ),
        ])?],
    );

    let allow_list = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?
    .try_into()?;

    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?
    .try_into()?;
    Ok(Filters {
        allow_list,
        clone3,
        unknown: unknown_syscalls(),
    })
}

/// A filter that answers `ENOSYS` to every number above [`HIGHEST_REVIEWED`] (x32 numbers
/// excepted) and lets everything else through to the allow-list. seccompiler matches single
/// numbers only, so this one is written in classic BPF by hand; a foreign architecture passes
/// here and is killed by the allow-list's architecture check.
fn unknown_syscalls() -> BpfProgram {
    const ARCH_OFFSET: u32 = 4; // `seccomp_data.arch`
    const NR_OFFSET: u32 = 0; // `seccomp_data.nr`
    let load = |offset| statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    let jump = |op, k, jt, jf| sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    vec![
        load(ARCH_OFFSET),
        // Another architecture: on to the allow (the last instruction).
        jump(libc::BPF_JEQ, AUDIT_ARCH, 0, 4),
        load(NR_OFFSET),
        // An x32 number: allow here.
        jump(libc::BPF_JGE, X32_SYSCALL_BIT, 2, 0),
        jump(libc::BPF_JGT, HIGHEST_REVIEWED, 0, 1),
        statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// `AUDIT_ARCH_*` of the architecture the filters are written for (`linux/audit.h`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

fn rule<const N: usize>(
    conditions: [Result<SeccompCondition, seccompiler::BackendError>; N],
) -> Result<SeccompRule, JailError> {
    let conditions = conditions.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(SeccompRule::new(conditions)?)
}

fn eq(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
}

#[cfg(target_arch = "x86_64")]
fn target_arch() -> TargetArch {
    TargetArch::x86_64
}

#[cfg(target_arch = "aarch64")]
fn target_arch() -> TargetArch {
    TargetArch::aarch64
}
