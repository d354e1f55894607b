//! Drivers start and stop kernel tasks: the [`Driver`] trait, what a task is started with
//! ([`TaskSpec`]), what a driver reports ([`StartedTask`], [`TaskExited`], [`DriverError`]), the
//! [`conformance`] suite every driver passes, and the [`local`] driver.
//!
//! A driver is the thin IO side of the pool: the [`PoolController`](crate::pool::PoolController)
//! decides, the pool loop calls the driver and proposes what happened (`AddTask`, `MarkDead`,
//! `RemoveTask`) through Raft. A driver keeps no replicated state and decides nothing: it does
//! not retry, back off or count tasks.
//!
//! # Layout
//! - [`local`]: `airlock node` processes on this machine, one process group per task.
//! - [`conformance`]: [`conformance::Suite::test_all`], one case per guarantee of [`Driver`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::model::{Region, RuntimeVersion, TaskId, Tier};

pub mod conformance;
pub mod local;

/// Starts and stops tasks on some substrate (processes here, Nomad allocations elsewhere).
///
/// # Guarantees every implementation gives (and [`conformance::Suite`] checks)
/// 1. **Start answers.** [`start`](Self::start) returns within a bounded time: `Ok` with a
///    handle no other task of this driver has, or a [`DriverError`]. A task that cannot run
///    (a missing program, a refused job) is an error from `start`, or, if the driver can only
///    see it later, an exit reported by [`next_exit`](Self::next_exit) soon after: never a hang.
/// 2. **Stop ends everything.** Once [`stop`](Self::stop) returned `Ok`, nothing of the task is
///    left: no process, allocation or working folder (a log kept for post-mortems aside). A task that ignores the polite request
///    is killed after a grace period. `stop` is idempotent: stopping a task again, one that
///    already exited, or one this driver does not know (an earlier coordinator's) is `Ok`.
/// 3. **Exits are reported.** Every task that ends without `stop` is reported once by
///    [`next_exit`](Self::next_exit), with why it ended; a task ended by `stop` is not reported.
///    Reports come in the order the driver saw the exits.
/// 4. **Nothing outlives the driver** where the substrate allows it: the local driver kills
///    every task it started when it is dropped (a scheduler's tasks outlive a coordinator by
///    design and are found again by their handles).
///
/// Methods may be called concurrently from many tasks; `next_exit` is meant for one consumer.
pub trait Driver: Send + Sync {
    /// Starts one task. Returns once the substrate accepted it (the process runs, the job is
    /// placed), not once the node is ready: readiness comes through the coordinator's API.
    fn start(
        &self,
        spec: TaskSpec,
    ) -> impl Future<Output = Result<StartedTask, DriverError>> + Send;

    /// Stops the task with this handle and waits until nothing of it is left (see guarantee 2).
    fn stop(&self, handle: &str) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Whether the task with this handle is still running. `false` once it exited or was
    /// stopped, and for handles this driver does not know.
    fn alive(&self, handle: &str) -> impl Future<Output = Result<bool, DriverError>> + Send;

    /// The next task that ended without [`stop`](Self::stop). Waits until there is one;
    /// cancel-safe (a report is never lost to a dropped future).
    fn next_exit(&self) -> impl Future<Output = TaskExited> + Send;
}

/// Everything a driver needs to start one task. The node it starts calls `coordinator_url` with
/// `secret` to register, heartbeat and say it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub id: TaskId,
    pub region: Region,
    pub tier: Tier,
    pub version: RuntimeVersion,
    /// Where the node reaches the coordinators' API (`http://127.0.0.1:7700`).
    pub coordinator_url: String,
    /// The task's bearer secret for the coordinator's API: never on a command line.
    pub secret: TaskSecret,
    /// The document store the node writes to (a folder or a URL, as `airlock node --store`).
    pub store: String,
    /// Appended to the node's command line (e.g. `--python`, jail limits).
    pub extra_args: Vec<String>,
}

/// A task's bearer secret. Its `Debug` and `Display` hide it, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct TaskSecret(String);

impl TaskSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        TaskSecret(secret.into())
    }

    /// 32 random bytes from the OS, as 64 hex digits.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        TaskSecret(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The secret itself, for the one place that hands it to the task.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for TaskSecret {
    fn from(secret: String) -> Self {
        TaskSecret(secret)
    }
}

impl fmt::Debug for TaskSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TaskSecret(..)")
    }
}

/// A task the driver started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedTask {
    /// The driver's name for it, unique among this driver's tasks: `Task::driver_handle`.
    pub handle: String,
    /// Where its own output goes, if the driver keeps it in a file.
    pub log: Option<PathBuf>,
}

/// A task that ended without being stopped: the coordinator marks it dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExited {
    pub handle: String,
    pub task: TaskId,
    pub status: ExitStatus,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited { code: i32 },
    /// A signal ended it (an OOM kill is a SIGKILL).
    Signaled { signal: i32 },
    /// The substrate lost it (its machine went away) or could not say.
    Lost { reason: String },
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited { code } => write!(f, "exited with code {code}"),
            ExitStatus::Signaled { signal } => match nix::sys::signal::Signal::try_from(*signal) {
                Ok(name) => write!(f, "killed by {name}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            ExitStatus::Lost { reason } => write!(f, "lost: {reason}"),
        }
    }
}

/// What the caller should do about a [`DriverError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// A passing condition (resources, a scheduler's hiccup): retry after back-off.
    RetryLater,
    /// The driver's configuration is wrong (a missing program, an unwritable folder): retrying
    /// fails the same way until an operator fixes it. The pool backs off and says why.
    FixConfiguration,
    /// The request itself was wrong (a task id that cannot be a file name, a duplicate): a bug in
    /// the caller. Do not retry this spec.
    Abandon,
}

/// Why a driver could not do what it was asked. [`remedy`](Self::remedy) says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The task's program could not be started.
    #[error("cannot run {program}")]
    Program {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A folder or file the task needs could not be made.
    #[error("cannot prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The task's id cannot name a folder and a log file.
    #[error("task id {task:?} is not 1 to 64 of [A-Za-z0-9._-] (and not . or ..)")]
    BadTaskId { task: TaskId },
    /// The driver already runs a task with this id.
    #[error("task {task} is already running")]
    Duplicate { task: TaskId },
    /// Signalling the task failed (not because it was gone).
    #[error("cannot signal task {handle}")]
    Signal {
        handle: String,
        #[source]
        source: io::Error,
    },
    /// The task did not end even after SIGKILL (a process stuck in the kernel).
    #[error("task {handle} did not end within {waited:?} of SIGKILL")]
    Unkillable { handle: String, waited: Duration },
    /// The driver's substrate failed in a way its own error says.
    #[error("{what}")]
    Substrate {
        what: String,
        remedy: Remedy,
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
}

impl DriverError {
    pub fn remedy(&self) -> Remedy {
        match self {
            DriverError::Program { source, .. } | DriverError::Prepare { source, .. } => {
                match source.kind() {
                    io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::ReadOnlyFilesystem
                    | io::ErrorKind::NotADirectory
                    | io::ErrorKind::IsADirectory => Remedy::FixConfiguration,
                    _ => Remedy::RetryLater,
                }
            }
            DriverError::BadTaskId { .. } | DriverError::Duplicate { .. } => Remedy::Abandon,
            DriverError::Signal { .. } | DriverError::Unkillable { .. } => Remedy::RetryLater,
            DriverError::Substrate { remedy, .. } => *remedy,
        }
    }

    /// The error and its causes on one line (`cannot run /x: No such file or directory`), for a
    /// back-off reason or a task's death reason.
    pub fn reason(&self) -> String {
        let mut reason = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        reason
    }
}

/// Whether `task` can be a file name: 1 to 64 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn valid_task_id(task: &TaskId) -> bool {
    airlock_protocol::ids::is_valid_task_id(&task.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let secret = TaskSecret::generate();
        assert_eq!(secret.expose().len(), 64);
        assert_ne!(secret, TaskSecret::generate());
        let spec = TaskSpec {
            id: TaskId("t".into()),
            region: Region("r".into()),
            tier: Tier("small".into()),
            version: RuntimeVersion("1".into()),
            coordinator_url: "http://127.0.0.1:1".into(),
            secret: secret.clone(),
            store: "memory://".into(),
            extra_args: vec![],
        };
        assert!(!format!("{spec:?}").contains(secret.expose()));
    }

    #[test]
    fn task_ids_must_be_file_names() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_task_id(&TaskId(bad.into())), "{bad:?} accepted");
        }
        for good in ["a", "3f2a-77_x.1", "...", &"a".repeat(64)] {
            assert!(valid_task_id(&TaskId(good.into())), "{good:?} refused");
        }
    }

    #[test]
    fn errors_say_what_to_do_and_why() {
        let missing = DriverError::Program {
            program: "/nope".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(missing.remedy(), Remedy::FixConfiguration);
        assert!(
            missing.reason().starts_with("cannot run /nope: "),
            "{}",
            missing.reason()
        );
        let busy = DriverError::Program {
            program: "/x".into(),
            source: io::Error::from(io::ErrorKind::WouldBlock),
        };
        assert_eq!(busy.remedy(), Remedy::RetryLater);
        assert_eq!(
            ExitStatus::Signaled { signal: 9 }.to_string(),
            "killed by SIGKILL"
        );
        assert_eq!(
            ExitStatus::Exited { code: 3 }.to_string(),
            "exited with code 3"
        );
    }
}
