//! Where a jailed kernel's IPC sockets live: a small tmpfs of its own, made by the node and never
//! attached to the node's mount namespace.
//!
//! The kernel needs one writable place outside `/work` and `/tmp`: the folder in which ipykernel
//! binds its five ZeroMQ sockets, which the node connects to. That folder used to be the kernel's
//! runtime folder on the host (by default under the host's `/tmp`), bound read-write: a kernel
//! could fill the host's disk or inodes there, with no limit but `RLIMIT_FSIZE` per file.
//!
//! The choice made here, from the options the review gives (#2):
//! - the runtime folder on the host belongs to the node and holds only what the node writes: the
//!   connection file, bound into the jail **read-only**, the staging root, and `sockets`;
//! - the sockets get a per-kernel tmpfs ([`SOCKETS_TMPFS_BYTES`], [`SOCKETS_TMPFS_INODES`],
//!   `nosuid,nodev,noexec`, owned by the kernel's host uid, mode 0700), so a full socket folder is
//!   `ENOSPC` in the cell and costs the host at most that much memory;
//! - the tmpfs is made with the new mount API (`fsopen`, `fsconfig`, `fsmount`) as a *detached*
//!   mount: the node holds it as a descriptor and the kernel attaches it (`move_mount`) in its own
//!   mount namespace, at `<runtime folder>/sockets`. Nothing is mounted in the node's namespace,
//!   so there is nothing to unmount and nothing to leak when a node is killed outright: the
//!   tmpfs goes when the node's descriptor and the kernel's namespace are both gone;
//! - the node reaches the sockets through the host's `<runtime folder>/sockets`, a symbolic link
//!   to `/proc/<node pid>/fd/<descriptor>`, so the node connects to the same paths the connection
//!   file names, and the kernel cannot touch the link (the folder is the node's, mode 0700).
//!
//! A node-wide tmpfs for every runtime folder was the other choice; it bounds the sum, not each
//! kernel, and is a mount to clean up.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::JailError;

/// Where nodes keep their kernels' runtime folders unless told otherwise (`--runtime-dir`):
/// `/run/airlock` for a node running as root (as a jailing node does: a root-only tmpfs on most
/// hosts, emptied at boot, never the host's shared `/tmp`), else `$XDG_RUNTIME_DIR/airlock`,
/// else the temporary folder. Read once, when the command line is parsed.
pub fn default_runtime_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/airlock");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("airlock"))
        .unwrap_or_else(std::env::temp_dir)
}

/// Name of the folder, inside a kernel's runtime folder, where its IPC sockets are bound. The
/// kernel's `RuntimeFolder` creates it; for a jailed kernel the jail swaps it for the tmpfs.
pub(crate) const SOCKET_FOLDER: &str = "sockets";

/// Size of a kernel's socket tmpfs. Sockets take no data blocks; this leaves room for whatever
/// small files ipykernel or its libraries put next to them, and no more.
pub(crate) const SOCKETS_TMPFS_BYTES: u64 = 1 << 20;

/// Files and folders a kernel's socket tmpfs holds, its root included: five sockets and some
/// headroom.
pub(crate) const SOCKETS_TMPFS_INODES: u64 = 64;

// From `linux/mount.h`.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;

/// Makes a detached tmpfs for one kernel's sockets, owned by `host_id`, and returns its mount
/// descriptor (close-on-exec).
pub(crate) fn sockets_tmpfs(host_id: u32) -> Result<OwnedFd, JailError> {
    let failed =
        |step: &'static str| move |source: std::io::Error| JailError::SocketsTmpfs { step, source };
    // SAFETY: `fsopen` reads the NUL-terminated name; a non-negative result is a new
    // descriptor that nothing else owns.
    let context = unsafe {
        let fd = libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC);
        owned(fd).map_err(failed("fsopen"))?
    };
    let options = [
        ("size", SOCKETS_TMPFS_BYTES.to_string()),
        ("nr_inodes", SOCKETS_TMPFS_INODES.to_string()),
        ("mode", "0700".to_owned()),
        ("uid", host_id.to_string()),
        ("gid", host_id.to_string()),
    ];
    for (key, value) in options {
        // Option names and numbers never hold a NUL byte.
        let (Ok(key), Ok(value)) = (CString::new(key), CString::new(value)) else {
            continue;
        };
        set(&context, FSCONFIG_SET_STRING, Some((&key, &value))).map_err(failed("fsconfig"))?;
    }
    set(&context, FSCONFIG_CMD_CREATE, None).map_err(failed("fsconfig create"))?;
    // SAFETY: `fsmount` on a descriptor we own; a non-negative result is a new descriptor.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_fsmount,
            std::os::fd::AsRawFd::as_raw_fd(&context),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        );
        owned(fd).map_err(failed("fsmount"))
    }
}

/// `fsconfig(context, command, key, value, 0)`.
fn set(
    context: &OwnedFd,
    command: libc::c_uint,
    option: Option<(&CString, &CString)>,
) -> std::io::Result<()> {
    let (key, value) = match option {
        Some((key, value)) => (key.as_ptr(), value.as_ptr()),
        None => (std::ptr::null(), std::ptr::null()),
    };
    // SAFETY: the strings outlive the call (or are null, which `CMD_CREATE` expects).
    let result = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            std::os::fd::AsRawFd::as_raw_fd(context),
            command,
            key,
            value,
            0 as libc::c_int,
        )
    };
    if result == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// # Safety
/// `fd` must be the result of a system call that returns a new descriptor (or -1).
unsafe fn owned(fd: libc::c_long) -> std::io::Result<OwnedFd> {
    match libc::c_int::try_from(fd) {
        // SAFETY: the caller's system call just created this descriptor for us alone.
        Ok(fd) if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Swaps the (empty) socket folder the runtime folder was created with for a link through which
/// the node reaches the detached tmpfs `mount`.
pub(crate) fn link_sockets(runtime_folder: &Path, mount: &OwnedFd) -> Result<(), JailError> {
    let folder = runtime_folder.join(SOCKET_FOLDER);
    let target = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(mount)
    );
    let prepare = |source| JailError::Prepare {
        path: folder.clone(),
        source,
    };
    match std::fs::remove_dir(&folder) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(prepare(source)),
    }
    std::os::unix::fs::symlink(target, &folder).map_err(prepare)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (like the jail itself).
    #[test]
    fn the_sockets_tmpfs_is_small_and_reached_through_the_link() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let mount = sockets_tmpfs(0).unwrap();
        let runtime = tempfile::tempdir().unwrap();
        std::fs::create_dir(runtime.path().join(SOCKET_FOLDER)).unwrap();
        link_sockets(runtime.path(), &mount).unwrap();
        let sockets = runtime.path().join(SOCKET_FOLDER);
        let listener = std::os::unix::net::UnixListener::bind(sockets.join("k-1")).unwrap();
        std::os::unix::net::UnixStream::connect(sockets.join("k-1")).unwrap();
        drop(listener);
        // The inode limit: the root and the socket are two of them.
        let made = (0..SOCKETS_TMPFS_INODES)
            .take_while(|n| std::fs::write(sockets.join(format!("f{n}")), b"").is_ok())
            .count() as u64;
        assert!(made < SOCKETS_TMPFS_INODES - 1, "{made} files");
        // The size limit.
        let big = std::fs::write(sockets.join("f0"), vec![0u8; 2 << 20]).unwrap_err();
        assert_eq!(big.raw_os_error(), Some(libc::ENOSPC));
        // Nothing of it is in the node's mount table.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&runtime.path().display().to_string()));
    }
}
