//! One ipykernel process and the private folder it lives in: the folder, the connection file
//! with a fresh HMAC key, the spawn itself, signals, reaping and cleanup.
//!
//! The spawn happens in exactly one function, [`spawn`], which takes a prepared command, so a
//! jail can wrap the command without touching anything else. Nothing here speaks the Jupyter
//! protocol (that is `super::bridge`) or decides when to kill (that is `super::session` and the
//! driver).

use std::fs::Permissions;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use airlock_protocol::DeathCause;
use jupyter_protocol::ConnectionInfo;
use jupyter_protocol::connection_info::Transport;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::KernelError;
use crate::jail::{KernelJail, SOCKET_FOLDER};

/// Longest path a Unix socket address can hold on Linux (`sun_path` is 108 bytes with a NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The channel numbers in the connection file. With IPC transport the kernel binds
/// `{prefix}-{n}`; the folder is fresh, so fixed numbers cannot collide.
const SHELL: u16 = 1;
const IOPUB: u16 = 2;
const STDIN: u16 = 3;
const CONTROL: u16 = 4;
const HEARTBEAT: u16 = 5;

/// A kernel's private runtime folder (mode 0700, the node's): its connection file, and the
/// `sockets` folder where the kernel binds its IPC sockets. A jail swaps that folder for a small
/// tmpfs of the kernel's own (`crate::jail`), so a jailed kernel writes nothing to the folder's
/// filesystem. Removed on [`remove`](Self::remove) or drop.
#[derive(Debug)]
pub(crate) struct RuntimeFolder {
    dir: tempfile::TempDir,
    connection: ConnectionInfo,
    connection_file: PathBuf,
}

impl RuntimeFolder {
    /// Creates a fresh folder under `parent` and writes a connection file with a new random
    /// HMAC-SHA256 key into it.
    pub(crate) fn create(parent: &Path) -> Result<Self, KernelError> {
        let folder_error = |source| KernelError::RuntimeDir {
            dir: parent.to_owned(),
            source,
        };
        std::fs::create_dir_all(parent).map_err(folder_error)?;
        let dir = tempfile::Builder::new()
            .prefix("kernel-")
            .permissions(Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(folder_error)?;
        let sockets = dir.path().join(SOCKET_FOLDER);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&sockets)
            .map_err(folder_error)?;
        let prefix = sockets.join("k");
        let Some(ip) = prefix.to_str() else {
            return Err(KernelError::RuntimeDirNotUtf8 {
                dir: parent.to_owned(),
            });
        };
        // The longest socket name is `{prefix}-{n}` with a one-digit n.
        let len = ip.len() + 2;
        if len > MAX_SOCKET_PATH {
            return Err(KernelError::SocketPathTooLong {
                dir: parent.to_owned(),
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        let connection = ConnectionInfo {
            ip: ip.to_owned(),
            transport: Transport::IPC,
            shell_port: SHELL,
            iopub_port: IOPUB,
            stdin_port: STDIN,
            control_port: CONTROL,
            hb_port: HEARTBEAT,
            key: hex::encode(rand::random::<[u8; 32]>()),
            signature_scheme: "hmac-sha256".to_owned(),
            kernel_name: None,
        };
        let connection_file = dir.path().join("connection.json");
        write_private(&connection_file, &connection).map_err(|source| {
            KernelError::ConnectionFile {
                path: connection_file.clone(),
                source,
            }
        })?;
        Ok(RuntimeFolder {
            dir,
            connection,
            connection_file,
        })
    }

    pub(crate) fn connection(&self) -> &ConnectionInfo {
        &self.connection
    }

    /// The folder itself.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn connection_file(&self) -> &Path {
        &self.connection_file
    }

    /// The socket files of the channels the bridge connects to; each appears when the kernel
    /// binds it.
    pub(crate) fn channel_sockets(&self) -> [PathBuf; 4] {
        [SHELL, IOPUB, CONTROL, HEARTBEAT]
            .map(|n| PathBuf::from(format!("{}-{n}", self.connection.ip)))
    }

    /// Deletes the folder and everything in it (connection file, socket files).
    pub(crate) fn remove(self) -> io::Result<()> {
        self.dir.close()
    }
}

/// Writes `connection` as JSON to a new file only its owner can read: it holds the HMAC key.
fn write_private(path: &Path, connection: &ConnectionInfo) -> io::Result<()> {
    let json = serde_json::to_vec(connection).map_err(io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&json)
}

/// The command that starts ipykernel on `connection_file`, before [`spawn`] prepares it.
pub(crate) fn kernel_command(python: &Path, connection_file: &Path) -> Command {
    let mut command = Command::new(python);
    command
        .arg("-m")
        .arg("ipykernel_launcher")
        .arg("-f")
        .arg(connection_file)
        // debugpy warns on every start of Python >= 3.11 that frozen modules hide breakpoints;
        // the bridge does not debug, so that warning would only bury real errors in the log.
        .env("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        // ipykernel exits by itself within a second when this process goes away, so a node that
        // is killed outright (no chance to kill its kernel) leaves no orphan behind. When a
        // wrapper makes the pid not match its parent, ipykernel only watches for reparenting.
        .env("JPY_PARENT_PID", std::process::id().to_string());
    command
}

/// Spawns the kernel. The only place a kernel process is created: `command` is
/// [`kernel_command`], wrapped by `jail` when there is one. The process leads its own session
/// and process group: an interrupt or kill reaches whatever the kernel started too, and no
/// terminal the node was started from is the kernel's controlling terminal. It is killed (and
/// its jail removed) if the handle is dropped.
pub(crate) fn spawn(mut command: Command, jail: Option<KernelJail>) -> io::Result<KernelProcess> {
    if jail.is_none() {
        // A jail's supervisor starts its session itself, first thing (`crate::jail`): its
        // pre-exec step runs before this one would, and forks the kernel.
        crate::jail::own_session(&mut command);
    }
    command
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = command.spawn();
    // The command holds the jail's half of its set-up pipes; drop it before asking the jail why
    // a spawn failed.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            return Err(match jail.as_ref().and_then(KernelJail::setup_failure) {
                Some(failure) => io::Error::other(failure),
                None => error,
            });
        }
    };
    let Some(pid) = child.id() else {
        // `id` is `None` only once the child was reaped, and nothing has waited on it yet.
        return Err(io::Error::other(
            "the kernel process vanished as it was spawned",
        ));
    };
    let output = tokio::spawn(super::raw_output::forward(
        pid,
        child.stdout.take(),
        child.stderr.take(),
    ));
    Ok(KernelProcess {
        child,
        pid,
        output,
        jail,
    })
}

/// A running (or just exited) kernel process. Dropping it kills its process group if the kernel
/// was not reaped yet.
#[derive(Debug)]
pub(crate) struct KernelProcess {
    child: Child,
    pid: u32,
    /// Forwards the kernel's stdout and stderr to the log; yields the stderr tail at EOF.
    output: JoinHandle<String>,
    /// The kernel's jail (its cgroup), when it runs in one; removed once the kernel is gone.
    jail: Option<KernelJail>,
}

impl KernelProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the kernel to exit. Cancel-safe, and returns the same status again once exited.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Kills the whole process group, reaps the kernel, and removes its jail.
    pub(crate) async fn kill(&mut self) {
        // ESRCH just means everything in the group is gone already.
        let _ = signal_group(self.pid, Signal::SIGKILL);
        if let Err(error) = self.child.wait().await {
            tracing::warn!(pid = self.pid, %error, "could not reap the kernel process");
        }
        if let Some(jail) = self.jail.as_mut() {
            jail.destroy().await;
        }
    }

    /// Why the kernel that exited with `status` is gone: a SIGKILL in a jail whose cgroup
    /// counted an OOM kill is [`DeathCause::OutOfMemory`].
    pub(crate) fn death_cause(&self, status: ExitStatus) -> DeathCause {
        if status.signal() == Some(Signal::SIGKILL as i32)
            && let Some(limit) = self.jail.as_ref().and_then(KernelJail::out_of_memory)
        {
            return DeathCause::OutOfMemory {
                limit_bytes: Some(limit),
            };
        }
        death_cause(status)
    }

    /// What the kernel wrote last to stderr, waiting up to `patience` for it to close the pipe.
    pub(crate) async fn stderr_tail(&mut self, patience: Duration) -> String {
        match tokio::time::timeout(patience, &mut self.output).await {
            Ok(Ok(tail)) => tail,
            Ok(Err(_)) | Err(_) => String::new(),
        }
    }
}

impl Drop for KernelProcess {
    fn drop(&mut self) {
        self.output.abort();
        if let Ok(None) = self.child.try_wait() {
            let _ = signal_group(self.pid, Signal::SIGKILL);
        }
    }
}

/// Sends `signal` to the process group led by `pid`.
pub(crate) fn signal_group(pid: u32, signal: Signal) -> Result<(), KernelError> {
    let group = i32::try_from(pid).map_err(|_| KernelError::NotRunning)?;
    killpg(Pid::from_raw(group), signal).map_err(|source| match source {
        nix::Error::ESRCH => KernelError::NotRunning,
        source => KernelError::Signal {
            signal: signal.as_str(),
            pid,
            source,
        },
    })
}

/// Why a kernel that exited with `status` is gone.
pub(crate) fn death_cause(status: ExitStatus) -> DeathCause {
    match (status.code(), status.signal()) {
        (Some(code), _) => DeathCause::Exited { code },
        (None, Some(signal)) => DeathCause::Signaled {
            signal,
            name: Signal::try_from(signal)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {signal}")),
        },
        (None, None) => DeathCause::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_folder_is_private_and_names_ipc_sockets() {
        let parent = tempfile::tempdir().unwrap();
        let folder = RuntimeFolder::create(parent.path()).unwrap();
        let mode = std::fs::metadata(folder.dir.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let file_mode = std::fs::metadata(folder.connection_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let written: ConnectionInfo =
            serde_json::from_slice(&std::fs::read(folder.connection_file()).unwrap()).unwrap();
        assert_eq!(&written, folder.connection());
        assert_eq!(written.transport, Transport::IPC);
        assert_eq!(written.key.len(), 64);
        assert_eq!(
            folder.connection().shell_url(),
            format!("ipc://{}-1", folder.dir.path().join("sockets/k").display())
        );
        let other = RuntimeFolder::create(parent.path()).unwrap();
        assert_ne!(other.connection().key, folder.connection().key);
        folder.remove().unwrap();
        other.remove().unwrap();
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn overlong_runtime_dir_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let deep = parent.path().join("d".repeat(100));
        assert!(matches!(
            RuntimeFolder::create(&deep),
            Err(KernelError::SocketPathTooLong { .. })
        ));
    }

    #[test]
    fn exit_statuses_name_their_cause() {
        assert_eq!(
            death_cause(ExitStatus::from_raw(9)),
            DeathCause::Signaled {
                signal: 9,
                name: "SIGKILL".into()
            }
        );
        assert_eq!(
            death_cause(ExitStatus::from_raw(3 << 8)),
            DeathCause::Exited { code: 3 }
        );
    }
}
