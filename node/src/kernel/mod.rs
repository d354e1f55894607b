//! The kernel bridge: one real ipykernel process, spoken to over the Jupyter wire protocol on
//! ZeroMQ IPC sockets.
//!
//! INTERFACE CONTRACT (the hub in `crate::hub` depends on exactly this surface):
//!
//! ```ignore
//! let (bridge, mut events) = KernelBridge::start(config).await?;
//! bridge.execute(RunId(1), "x = 1", true)?;      // returns at once; results come as events
//! while let Some(event) = events.recv().await { /* KernelEvent::{Status, Output, Done} */ }
//! bridge.interrupt()?;                            // SIGINT, as Jupyter's signal interrupt mode
//! bridge.restart().await?;                        // fresh process, fresh HMAC key
//! bridge.shutdown().await;                        // no process, no socket file left
//! ```
//!
//! Every run handed to `execute` ends with exactly one `KernelEvent::Done`, after all of its
//! outputs: `Ok`/`Error` from the kernel's reply, `Aborted` when the kernel aborted it, was
//! restarted, or died. Death (exit, signal, heartbeat loss) is reported within 1 s as
//! `KernelEvent::Status(KernelStatus::Dead { cause })`.
//!
//! Layout, in the order a message travels:
//! - [`python_env`] finds or builds the interpreter the kernel runs on.
//! - `process` prepares the kernel's private runtime folder and spawns (through the
//!   [`jail`](crate::jail) when configured), signals and reaps it.
//! - `wire` decodes the few kernel messages the bridge cares about.
//! - [`session`] is the sans-IO core: run bookkeeping, the "done" rule, kernel status, heartbeat.
//! - `bridge` is the thin async driver: sockets, timers and the process, pumping the session.

mod bridge;
mod error;
mod process;
pub mod python_env;
mod raw_output;
pub mod session;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

use airlock_protocol::{KernelStatus, Output, RunId, RunStatus};

use crate::jail::JailConfig;

pub use bridge::KernelBridge;
pub use error::KernelError;
pub use python_env::{Progress, PythonEnvError, PythonSource, ensure_python};

/// How to start a kernel.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// A Python interpreter that can `import ipykernel`.
    pub python: PathBuf,
    /// Parent folder for each kernel's private runtime folder (connection file, IPC sockets).
    pub runtime_dir: PathBuf,
    /// How often the heartbeat channel is pinged.
    pub heartbeat_interval: Duration,
    /// How long the heartbeat may stay silent before the kernel is declared dead.
    pub heartbeat_timeout: Duration,
    /// How long a kernel may take to answer its first `kernel_info_request`.
    pub startup_timeout: Duration,
    /// The sandbox each kernel runs in; `None` runs it as the node's own user, unconfined
    /// (`--insecure-no-jail`, and tests that are not about the jail).
    pub jail: Option<JailConfig>,
    /// The largest ZeroMQ frame, and message, the kernel may send; checked before anything is
    /// allocated for it. A kernel that sends more is stopped with
    /// [`DeathCause::ChannelViolated`](airlock_protocol::DeathCause::ChannelViolated).
    pub message_limit: usize,
    /// What the kernel's outputs may cost the node and its clients.
    pub output_limits: crate::document::outputs::OutputLimits,
}

/// The default [`KernelConfig::message_limit`]: 64 MiB.
pub const DEFAULT_MESSAGE_LIMIT: usize = 64 << 20;

impl KernelConfig {
    /// Defaults that detect death within 1 s.
    pub fn new(python: PathBuf, runtime_dir: PathBuf) -> Self {
        KernelConfig {
            python,
            runtime_dir,
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_millis(800),
            startup_timeout: Duration::from_secs(60),
            jail: None,
            message_limit: DEFAULT_MESSAGE_LIMIT,
            output_limits: Default::default(),
        }
    }

    /// Like [`new`](Self::new), with every kernel in a jail configured by `jail`.
    pub fn jailed(python: PathBuf, runtime_dir: PathBuf, jail: JailConfig) -> Self {
        KernelConfig {
            jail: Some(jail),
            ..KernelConfig::new(python, runtime_dir)
        }
    }
}

/// What the bridge reports.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelEvent {
    Status(KernelStatus),
    Output {
        run: RunId,
        output: Output,
    },
    Done {
        run: RunId,
        status: RunStatus,
        execution_count: Option<u32>,
    },
}

/// The document core drives the bridge through its two synchronous commands.
impl crate::document::core::Kernel for KernelBridge {
    type Error = KernelError;

    fn execute(&self, run: RunId, code: &str, store_history: bool) -> Result<(), KernelError> {
        KernelBridge::execute(self, run, code, store_history)
    }

    fn interrupt(&self) -> Result<(), KernelError> {
        KernelBridge::interrupt(self)
    }
}
