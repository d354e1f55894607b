//! The local driver: each task is an `airlock node` process on this machine, in a process group
//! of its own, jailed by the node unless configured otherwise.
//!
//! For each task it makes `<runtime_dir>/<task id>` (mode 0700, the node's `--runtime-dir`),
//! sends the node's stdout and stderr to `<log_dir>/<task id>.log` (kept after the task ends, for
//! post-mortems), and passes the task's secret in [`TASK_TOKEN_ENV`], never on the command line.
//! A reaper task per process waits for it to end; an end nobody asked for is reported through
//! [`Driver::next_exit`]. Stopping sends SIGTERM to the group, SIGKILL after
//! [`LocalDriverConfig::stop_grace`]. Whatever is left in the group when its leader ends is
//! killed too, and the runtime folder removed. Dropping the driver SIGKILLs every task's group.
//!
//! It does not restart tasks, count them or back off (the pool controller does), and it cannot
//! find tasks an earlier coordinator process started: a handle it does not know is stopped as
//! already gone.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::{Driver, DriverError, ExitStatus, StartedTask, TaskExited, TaskSpec, valid_task_id};
use crate::model::{Region, TaskId, Tier};

pub use airlock_protocol::control::TASK_TOKEN_ENV;

/// What the local driver runs for each task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// `<binary> node --task <id> --coordinator <url> --region <r> --tier <t>
    /// --runtime-version <v> --store <store> --quic 127.0.0.1:0 --ws 127.0.0.1:0
    /// --runtime-dir <runtime_dir>/<id> [--insecure-no-jail] <extra args…>`
    AirlockNode { binary: PathBuf },
    /// `<program> <args…> <extra args…>`, each of `{task}`, `{region}`, `{tier}`, `{version}`,
    /// `{coordinator}`, `{store}` and `{runtime_dir}` in `args` replaced by the task's value:
    /// for tests (a stand-in for the node) and wrappers.
    Custom { program: PathBuf, args: Vec<String> },
}

impl NodeCommand {
    /// `airlock node` from the executable running now (the `airlock` binary itself).
    pub fn this_executable() -> Result<Self, DriverError> {
        let binary = std::env::current_exe().map_err(|source| DriverError::Program {
            program: PathBuf::from("the current executable"),
            source,
        })?;
        Ok(NodeCommand::AirlockNode { binary })
    }
}

/// How the local driver runs tasks. Read once by the caller and passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDriverConfig {
    pub command: NodeCommand,
    /// Each task gets `<runtime_dir>/<task id>` for its kernel's connection file and sockets.
    /// Keep it short: the kernel's socket paths under it must fit in 107 bytes.
    pub runtime_dir: PathBuf,
    /// Each task's stdout and stderr go to `<log_dir>/<task id>.log`.
    pub log_dir: PathBuf,
    /// Pass `--insecure-no-jail` to nodes: for tests and hosts that cannot jail, never production.
    pub insecure_no_jail: bool,
    /// How long a task has to end after SIGTERM before its group gets SIGKILL.
    pub stop_grace: Duration,
    /// How long to wait for a task to end after SIGKILL before calling it unkillable.
    pub kill_wait: Duration,
}

impl LocalDriverConfig {
    /// Jailed nodes from `command`, 10 s of grace on stop.
    pub fn new(command: NodeCommand, runtime_dir: PathBuf, log_dir: PathBuf) -> Self {
        LocalDriverConfig {
            command,
            runtime_dir,
            log_dir,
            insecure_no_jail: false,
            stop_grace: Duration::from_secs(10),
            kill_wait: Duration::from_secs(5),
        }
    }

    /// The folder the task's node runs in.
    pub fn task_dir(&self, task: &TaskId) -> PathBuf {
        self.runtime_dir.join(&task.0)
    }

    /// The file the task's output goes to.
    pub fn log_file(&self, task: &TaskId) -> PathBuf {
        self.log_dir.join(format!("{}.log", task.0))
    }

    /// What is left of the task with this handle: its group's live processes and its runtime
    /// folder, described. Empty once the task is fully gone. For tests and `airlock dev`'s
    /// shutdown check; it needs no driver, so it also checks after one was dropped.
    pub fn leftovers(&self, handle: &str) -> Vec<String> {
        let mut left = Vec::new();
        let Some((task, pid)) = parse_handle(handle) else {
            return left;
        };
        match processes_in_group(pid) {
            Ok(pids) => left.extend(pids.iter().map(|p| format!("process {p} in group {pid}"))),
            Err(error) => left.push(format!("cannot list processes: {error}")),
        }
        let dir = self.task_dir(&task);
        if dir.exists() {
            left.push(format!("folder {}", dir.display()));
        }
        left
    }

    /// The program and arguments that start `spec`'s task (the secret is not among them).
    pub fn command_line(&self, spec: &TaskSpec) -> (PathBuf, Vec<OsString>) {
        let task_dir = self.task_dir(&spec.id);
        let (program, mut args): (PathBuf, Vec<OsString>) = match &self.command {
            NodeCommand::AirlockNode { binary } => {
                let mut args: Vec<OsString> = [
                    "node",
                    "--task",
                    &spec.id.0,
                    "--coordinator",
                    &spec.coordinator_url,
                    "--region",
                    &spec.region.0,
                    "--tier",
                    &spec.tier.0,
                    "--runtime-version",
                    &spec.version.0,
                    "--store",
                    &spec.store,
                    "--quic",
                    "127.0.0.1:0",
                    "--ws",
                    "127.0.0.1:0",
                    "--runtime-dir",
                ]
                .into_iter()
                .map(OsString::from)
                .collect();
                args.push(task_dir.into_os_string());
                if self.insecure_no_jail {
                    args.push("--insecure-no-jail".into());
                }
                (binary.clone(), args)
            }
            NodeCommand::Custom { program, args } => {
                let dir = task_dir.to_string_lossy();
                let values = [
                    ("{task}", spec.id.0.as_str()),
                    ("{region}", spec.region.0.as_str()),
                    ("{tier}", spec.tier.0.as_str()),
                    ("{version}", spec.version.0.as_str()),
                    ("{coordinator}", spec.coordinator_url.as_str()),
                    ("{store}", spec.store.as_str()),
                    ("{runtime_dir}", &dir),
                ];
                let args = args
                    .iter()
                    .map(|arg| {
                        let mut arg = arg.clone();
                        for (name, value) in values {
                            arg = arg.replace(name, value);
                        }
                        OsString::from(arg)
                    })
                    .collect();
                (program.clone(), args)
            }
        };
        args.extend(spec.extra_args.iter().map(OsString::from));
        (program, args)
    }
}

/// The local driver (see the module docs). Not `Clone`: dropping it ends its tasks, so share it
/// behind an `Arc`.
#[derive(Debug)]
pub struct LocalDriver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: LocalDriverConfig,
    /// Tasks by id, from the start call until their reaper is done with them.
    tasks: Mutex<HashMap<TaskId, Slot>>,
    exits_tx: mpsc::UnboundedSender<TaskExited>,
    exits_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<TaskExited>>,
}

#[derive(Debug)]
enum Slot {
    /// `start` is preparing it: the id is taken.
    Starting,
    Running(RunningTask),
}

#[derive(Debug)]
struct RunningTask {
    pid: u32,
    region: Region,
    tier: Tier,
    /// Set by `stop` (or drop): its end is not reported as an exit.
    stop_requested: bool,
    /// `true` once the reaper reaped it, cleared its group and removed its folder.
    ended: watch::Receiver<bool>,
}

impl LocalDriver {
    pub fn new(config: LocalDriverConfig) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        LocalDriver {
            shared: Arc::new(Shared {
                config,
                tasks: Mutex::new(HashMap::new()),
                exits_tx,
                exits_rx: tokio::sync::Mutex::new(exits_rx),
            }),
        }
    }

    pub fn config(&self) -> &LocalDriverConfig {
        &self.shared.config
    }

    /// How many tasks are running (started and not yet ended).
    pub fn running(&self) -> usize {
        self.shared
            .lock()
            .values()
            .filter(|slot| matches!(slot, Slot::Running(t) if !*t.ended.borrow()))
            .count()
    }

    async fn start_task(&self, spec: TaskSpec) -> Result<StartedTask, DriverError> {
        if !valid_task_id(&spec.id) {
            return Err(DriverError::BadTaskId { task: spec.id });
        }
        {
            let mut tasks = self.shared.lock();
            if tasks.contains_key(&spec.id) {
                return Err(DriverError::Duplicate { task: spec.id });
            }
            tasks.insert(spec.id.clone(), Slot::Starting);
        }
        let spawned = self.spawn(&spec).await;
        let mut tasks = self.shared.lock();
        let (child, pid, log) = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                tasks.remove(&spec.id);
                drop(tasks);
                let labels = labels(&spec.region, &spec.tier);
                metrics::counter!("airlock_driver_start_failures_total", &labels).increment(1);
                tracing::warn!(task = %spec.id, error = %error.reason(), "task did not start");
                return Err(error);
            }
        };
        let (ended_tx, ended) = watch::channel(false);
        tasks.insert(
            spec.id.clone(),
            Slot::Running(RunningTask {
                pid,
                region: spec.region.clone(),
                tier: spec.tier.clone(),
                stop_requested: false,
                ended,
            }),
        );
        drop(tasks);
        let handle = format!("{}@{pid}", spec.id);
        tokio::spawn(reap(
            Arc::clone(&self.shared),
            spec.id.clone(),
            handle.clone(),
            pid,
            child,
            ended_tx,
        ));
        metrics::counter!(
            "airlock_driver_tasks_started_total",
            &labels(&spec.region, &spec.tier)
        )
        .increment(1);
        tracing::info!(task = %spec.id, pid, log = %log.display(), "task started");
        Ok(StartedTask {
            handle,
            log: Some(log),
        })
    }

    /// Prepares the task's folder and log, then spawns it in a process group of its own.
    async fn spawn(&self, spec: &TaskSpec) -> Result<(Child, u32, PathBuf), DriverError> {
        let config = &self.shared.config;
        let dir = config.task_dir(&spec.id);
        let prepare = |path: &Path| {
            let path = path.to_owned();
            move |source| DriverError::Prepare { path, source }
        };
        tokio::fs::create_dir_all(&config.runtime_dir)
            .await
            .map_err(prepare(&config.runtime_dir))?;
        // A folder left by an earlier coordinator process with the same task id.
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(prepare(&dir)(e)),
        }
        tokio::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .await
            .map_err(prepare(&dir))?;
        tokio::fs::create_dir_all(&config.log_dir)
            .await
            .map_err(prepare(&config.log_dir))?;
        let log = config.log_file(&spec.id);
        let stdout = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&log)
            .map_err(prepare(&log))?;
        let stderr = stdout.try_clone().map_err(prepare(&log))?;

        let (program, args) = config.command_line(spec);
        let mut command = Command::new(&program);
        command
            .args(&args)
            .env(TASK_TOKEN_ENV, spec.secret.expose())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Belt and braces: tokio kills the leader if the reaper is dropped (runtime gone).
            .kill_on_drop(true);
        own_session(&mut command);
        let child = command.spawn().map_err(|source| DriverError::Program {
            program: program.clone(),
            source,
        });
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(error);
            }
        };
        let Some(pid) = child.id() else {
            // `id` is `None` only once the child was reaped, and nothing has waited on it yet.
            return Err(DriverError::Program {
                program,
                source: io::Error::other("the process vanished as it was spawned"),
            });
        };
        Ok((child, pid, log))
    }

    async fn stop_task(&self, handle: &str) -> Result<(), DriverError> {
        let Some((task, pid)) = parse_handle(handle) else {
            return Ok(());
        };
        let mut ended = {
            let mut tasks = self.shared.lock();
            match tasks.get_mut(&task) {
                Some(Slot::Running(running)) if running.pid == pid => {
                    running.stop_requested = true;
                    running.ended.clone()
                }
                _ => return Ok(()),
            }
        };
        if *ended.borrow() {
            return Ok(());
        }
        let config = &self.shared.config;
        signal(handle, pid, Signal::SIGTERM)?;
        if tokio::time::timeout(config.stop_grace, ended.wait_for(|e| *e))
            .await
            .is_err()
        {
            tracing::info!(%task, pid, grace = ?config.stop_grace, "task ignored SIGTERM; killing it");
            signal(handle, pid, Signal::SIGKILL)?;
            if tokio::time::timeout(config.kill_wait, ended.wait_for(|e| *e))
                .await
                .is_err()
            {
                return Err(DriverError::Unkillable {
                    handle: handle.to_owned(),
                    waited: config.kill_wait,
                });
            }
        }
        Ok(())
    }

    fn is_alive(&self, handle: &str) -> bool {
        let Some((task, pid)) = parse_handle(handle) else {
            return false;
        };
        matches!(
            self.shared.lock().get(&task),
            Some(Slot::Running(running)) if running.pid == pid && !*running.ended.borrow()
        )
    }
}

impl Driver for LocalDriver {
    fn start(
        &self,
        spec: TaskSpec,
    ) -> impl Future<Output = Result<StartedTask, DriverError>> + Send {
        self.start_task(spec)
    }

    fn stop(&self, handle: &str) -> impl Future<Output = Result<(), DriverError>> + Send {
        self.stop_task(handle)
    }

    fn alive(&self, handle: &str) -> impl Future<Output = Result<bool, DriverError>> + Send {
        std::future::ready(Ok(self.is_alive(handle)))
    }

    fn next_exit(&self) -> impl Future<Output = TaskExited> + Send {
        let shared = Arc::clone(&self.shared);
        async move {
            match shared.exits_rx.lock().await.recv().await {
                Some(exit) => exit,
                // `shared` holds the sender, so the channel cannot close under us.
                None => std::future::pending().await,
            }
        }
    }
}

impl Drop for LocalDriver {
    fn drop(&mut self) {
        let mut tasks = self.shared.lock();
        for (task, slot) in tasks.iter_mut() {
            if let Slot::Running(running) = slot
                && !*running.ended.borrow()
            {
                running.stop_requested = true;
                tracing::info!(%task, pid = running.pid, "driver dropped; killing task");
                let _ = killpg_raw(running.pid, Signal::SIGKILL);
            }
        }
    }
}

impl Shared {
    /// The tasks. Never held across an `.await`; a panic while holding it left the map itself
    /// intact (every change is one insert or remove), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, Slot>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waits for the task's process to end, then clears its group and folder, reports the end if
/// nobody asked for it, and marks it ended.
async fn reap(
    shared: Arc<Shared>,
    task: TaskId,
    handle: String,
    pid: u32,
    mut child: Child,
    ended: watch::Sender<bool>,
) {
    let status = match child.wait().await {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Exited { code },
            (None, Some(signal)) => ExitStatus::Signaled { signal },
            (None, None) => ExitStatus::Lost {
                reason: format!("unexplained wait status {status}"),
            },
        },
        Err(error) => ExitStatus::Lost {
            reason: format!("could not wait for the process: {error}"),
        },
    };
    // Whatever the node left in its group goes with it.
    let kill_wait = shared.config.kill_wait;
    let swept = tokio::task::spawn_blocking(move || clear_group(pid, kill_wait)).await;
    if !matches!(swept, Ok(true)) {
        tracing::warn!(%task, pid, "processes of the task's group outlived it");
    }
    let dir = shared.config.task_dir(&task);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(%task, dir = %dir.display(), %error, "cannot remove the task's folder")
        }
    }
    let running = match shared.lock().remove(&task) {
        Some(Slot::Running(running)) => Some(running),
        _ => None,
    };
    if let Some(running) = running {
        let labels = labels(&running.region, &running.tier);
        if running.stop_requested {
            metrics::counter!("airlock_driver_tasks_stopped_total", &labels).increment(1);
            tracing::info!(%task, pid, %status, "task stopped");
        } else {
            metrics::counter!("airlock_driver_tasks_exited_total", &labels).increment(1);
            tracing::warn!(%task, pid, %status, "task ended by itself");
            // The receiver lives in `shared`, which this task holds: the send cannot fail.
            let _ = shared.exits_tx.send(TaskExited {
                handle,
                task,
                status,
            });
        }
    }
    ended.send_replace(true);
}

/// SIGKILLs what is left of the group led by `pid` and waits up to `patience` until none of its
/// processes is alive. `true` when the group is empty.
fn clear_group(pid: u32, patience: Duration) -> bool {
    if killpg_raw(pid, Signal::SIGKILL) == Err(nix::Error::ESRCH) {
        return true;
    }
    let deadline = Instant::now() + patience;
    loop {
        match processes_in_group(pid) {
            Ok(left) if left.is_empty() => return true,
            Ok(_) if Instant::now() < deadline => {
                // Blocking thread, bounded by `patience`: SIGKILLed processes take microseconds.
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(_) | Err(_) => return false,
        }
    }
}

/// Sends `signal` to the group led by `pid`; a group already gone is not an error.
fn signal(handle: &str, pid: u32, signal: Signal) -> Result<(), DriverError> {
    match killpg_raw(pid, signal) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(errno) => Err(DriverError::Signal {
            handle: handle.to_owned(),
            source: io::Error::from(errno),
        }),
    }
}

fn killpg_raw(pid: u32, signal: Signal) -> nix::Result<()> {
    // A pid that does not fit in i32 (never on Linux) names no group we made.
    let group = i32::try_from(pid).map_err(|_| nix::Error::ESRCH)?;
    if group <= 1 {
        return Err(nix::Error::ESRCH);
    }
    killpg(Pid::from_raw(group), signal)
}

/// Live (not zombie) processes whose process group is `pgid`, from `/proc`.
pub fn processes_in_group(pgid: u32) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process can end between listing and reading: not an error.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(_ppid), Some(pgrp)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if pgrp.parse::<u32>().ok() == Some(pgid) && state != "Z" && state != "X" {
            found.push(pid);
        }
    }
    Ok(found)
}

/// `<task id>@<pid>` back into its parts.
fn parse_handle(handle: &str) -> Option<(TaskId, u32)> {
    let (task, pid) = handle.rsplit_once('@')?;
    Some((TaskId(task.to_owned()), pid.parse().ok()?))
}

/// Makes the node `command` starts lead its own session, and with it its own process group: a
/// stop reaches whatever the node started in the group, and the terminal `airlock dev` runs in
/// is no node's (nor any kernel's) controlling terminal.
#[allow(unsafe_code)]
fn own_session(command: &mut Command) {
    // SAFETY: the closure runs between `fork` and `exec` and only calls `setsid`, which is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
}

fn labels(region: &Region, tier: &Tier) -> [(&'static str, String); 3] {
    [
        ("driver", "local".to_owned()),
        ("region", region.0.clone()),
        ("tier", tier.0.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::TaskSecret;
    use crate::model::RuntimeVersion;

    fn spec() -> TaskSpec {
        TaskSpec {
            id: TaskId("t-1".into()),
            region: Region("eu".into()),
            tier: Tier("small".into()),
            version: RuntimeVersion("0.1.0".into()),
            coordinator_url: "http://127.0.0.1:7700".into(),
            secret: TaskSecret::new("s3cret"),
            store: "/data/docs".into(),
            extra_args: vec!["--python".into(), "/usr/bin/python3".into()],
        }
    }

    #[test]
    fn the_node_command_line_is_exactly_the_nodes_flags() {
        let mut config = LocalDriverConfig::new(
            NodeCommand::AirlockNode {
                binary: "/usr/bin/airlock".into(),
            },
            "/run/airlock".into(),
            "/var/log/airlock".into(),
        );
        let (program, args) = config.command_line(&spec());
        assert_eq!(program, Path::new("/usr/bin/airlock"));
        let expected = "node --task t-1 --coordinator http://127.0.0.1:7700 --region eu --tier \
            small --runtime-version 0.1.0 --store /data/docs --quic 127.0.0.1:0 --ws \
            127.0.0.1:0 --runtime-dir /run/airlock/t-1 --python /usr/bin/python3";
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args.join(" "), expected);
        assert!(!args.iter().any(|a| a.contains("s3cret")));

        config.insecure_no_jail = true;
        let (_, args) = config.command_line(&spec());
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[args.len() - 3..],
            ["--insecure-no-jail", "--python", "/usr/bin/python3"]
        );
    }

    #[test]
    fn custom_commands_fill_in_placeholders() {
        let config = LocalDriverConfig::new(
            NodeCommand::Custom {
                program: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    "x".into(),
                    "{task}:{region}:{tier}:{version}".into(),
                    "{coordinator} {store} {runtime_dir}".into(),
                ],
            },
            "/run/a".into(),
            "/log".into(),
        );
        let (program, args) = config.command_line(&spec());
        assert_eq!(program, Path::new("/bin/sh"));
        assert_eq!(
            args,
            [
                "-c",
                "x",
                "t-1:eu:small:0.1.0",
                "http://127.0.0.1:7700 /data/docs /run/a/t-1",
                "--python",
                "/usr/bin/python3"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn handles_name_the_task_and_its_process() {
        assert_eq!(parse_handle("t-1@4242"), Some((TaskId("t-1".into()), 4242)));
        assert_eq!(parse_handle("t-1"), None);
        assert_eq!(parse_handle("t-1@x"), None);
        assert!(
            killpg_raw(1, Signal::SIGKILL).is_err(),
            "init is never a task"
        );
        assert!(
            killpg_raw(0, Signal::SIGKILL).is_err(),
            "our own group is never a task"
        );
    }

    #[tokio::test]
    async fn a_node_leads_a_session_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LocalDriverConfig::new(
            NodeCommand::Custom {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "exec sleep 1000".into()],
            },
            dir.path().join("run"),
            dir.path().join("logs"),
        );
        config.insecure_no_jail = true;
        let driver = LocalDriver::new(config);
        let started = driver.start(spec()).await.unwrap();
        let (_, pid) = parse_handle(&started.handle).unwrap();
        let pid = Pid::from_raw(pid as i32);
        let session = nix::unistd::getsid(Some(pid)).unwrap();
        assert_eq!(session, pid, "the node leads its session");
        assert_ne!(session, nix::unistd::getsid(None).unwrap());
        assert_eq!(nix::unistd::getpgid(Some(pid)).unwrap(), pid);
        driver.stop(&started.handle).await.unwrap();
    }

    #[test]
    fn processes_in_our_group_are_found() {
        let me = std::process::id();
        let group = nix::unistd::getpgrp().as_raw() as u32;
        assert!(processes_in_group(group).unwrap().contains(&me));
    }
}
