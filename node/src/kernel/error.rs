//! What can go wrong when starting, restarting, signalling or talking to a kernel.
//!
//! A failed run is not an error here: it is a [`super::KernelEvent::Done`] with `Error` or
//! `Aborted`. These are the failures of the bridge itself.

use std::path::PathBuf;
use std::time::Duration;

use airlock_protocol::DeathCause;

/// A failure of the kernel bridge.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "could not create a private runtime folder for the kernel in {dir}: {source}; check that it exists and is writable, or choose another runtime_dir"
    )]
    RuntimeDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the runtime folder {dir} is not valid UTF-8, which IPC socket addresses need; choose another runtime_dir"
    )]
    RuntimeDirNotUtf8 { dir: PathBuf },
    #[error(
        "the kernel's socket paths under {dir} would be {len} bytes long, over the {max}-byte limit of Unix socket paths; choose a shorter runtime_dir"
    )]
    SocketPathTooLong {
        dir: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("could not write the kernel connection file {path}: {source}")]
    ConnectionFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not start the kernel with {python}: {source}; check that the interpreter exists and is executable"
    )]
    Spawn {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not jail the kernel: {0}")]
    Jail(#[from] crate::jail::JailError),
    #[error("the kernel died while starting ({cause}){}", stderr_suffix(.stderr))]
    DiedDuringStartup {
        cause: DeathCause,
        /// The last lines the kernel wrote to stderr, which usually say why.
        stderr: String,
    },
    #[error(
        "the kernel did not answer within {timeout:?} of being started; the machine may be overloaded, or raise startup_timeout"
    )]
    StartupTimeout { timeout: Duration },
    #[error("could not connect to the kernel's {channel} socket: {source}")]
    Connect {
        channel: &'static str,
        #[source]
        source: jupyter_zmq_client::RuntimeError,
    },
    #[error("could not send {what} to the kernel: {source}")]
    Send {
        what: &'static str,
        #[source]
        source: jupyter_zmq_client::RuntimeError,
    },
    #[error("could not send {signal} to the kernel's process group {pid}: {source}")]
    Signal {
        signal: &'static str,
        pid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("no kernel is running (it died, or a restart is under way); restart it first")]
    NotRunning,
    #[error("the kernel bridge has shut down; start a new one")]
    BridgeClosed,
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its last words on stderr:\n{stderr}")
    }
}
