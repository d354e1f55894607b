//! The Python interpreter kernels run on: either one the operator names, checked to have
//! ipykernel, or a virtualenv Airlock builds and manages itself.
//!
//! A managed environment is built once, on first use, with pinned packages
//! ([`KERNEL_PACKAGES`]): the kernel (ipykernel, pyzmq) and the libraries document features rely
//! on in the kernel (pandas and numpy for dataframes, duckdb for SQL cells). It is assembled in a
//! temporary sibling folder and renamed into place only when complete, so concurrent first uses
//! (parallel tests, several nodes on one host) never see a half-made environment, and a failed
//! install leaves nothing behind. A marker file holding the pin list tells a complete environment
//! apart; when the pins change, the next use rebuilds it.
//!
//! Configuration comes in as arguments. The one place that reads the process environment is
//! [`PythonSource::default_managed`], which resolves `XDG_DATA_HOME`/`HOME`. This module does not
//! start kernels (see the bridge) and does not manage Python versions: the managed environment
//! is made from whatever `python3` is on `PATH`.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// The packages of a managed environment, pinned. Changing this list rebuilds existing
/// environments on their next use. Each must install as a wheel for the base interpreter
/// (CPython 3.11, manylinux x86-64): a source build would need a compiler and take minutes.
/// Their own dependencies are left to pip's resolver.
pub const KERNEL_PACKAGES: &[&str] = &[
    // The kernel itself, and the ZeroMQ binding it talks to the node over.
    "ipykernel==7.4.0",
    "pyzmq==27.3.0",
    // Dataframes: what SQL cells query and return, and what notebooks mostly work with.
    "pandas==3.1.1",
    // Arrays under pandas, pinned so the pair is a combination known to work.
    "numpy==2.4.6",
    // The engine SQL cells run in (`document::analysis::sql::kernel_source`). Held at 1.x:
    // from 2.0 `duckdb.sql` returns a `Count`/`Success` relation for statements such as
    // `CREATE TABLE`, where the generated code expects `None`.
    "duckdb==1.5.6",
];

/// Name of the file that marks a managed environment as complete; it holds the pin list.
const MARKER: &str = "airlock-env.txt";

/// The interpreter that creates managed environments, looked up on `PATH`.
const BASE_PYTHON: &str = "python3";

/// Name prefixes of the siblings a build uses: the folder being built, and an environment with
/// old pins on its way out.
const BUILDING_PREFIX: &str = ".python-building-";
const STALE_PREFIX: &str = ".python-stale-";

/// How many of the last output lines of a failed command go into its error.
const OUTPUT_TAIL_LINES: usize = 25;

/// Where kernels get their Python from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PythonSource {
    /// A virtualenv that Airlock creates in `dir` on first use.
    Managed { dir: PathBuf },
    /// An interpreter chosen by the operator (`--python`); it must be able to import ipykernel.
    Existing(PathBuf),
}

impl PythonSource {
    /// The managed environment in the per-user data folder:
    /// `$XDG_DATA_HOME/airlock/python`, else `~/.local/share/airlock/python`.
    pub fn default_managed() -> Result<Self, PythonEnvError> {
        let data_home = crate::store::data_home().ok_or(PythonEnvError::NoDataHome)?;
        Ok(PythonSource::Managed {
            dir: data_home.join("python"),
        })
    }
}

/// How [`ensure_python`] reports a build of the managed environment, which can take a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// A spinner when stderr is a terminal, log lines otherwise.
    #[default]
    Auto,
    /// An indicatif spinner on stderr showing pip's latest line.
    Spinner,
    /// `tracing::info!` lines.
    Log,
}

/// Why no usable interpreter could be had.
#[derive(Debug, thiserror::Error)]
pub enum PythonEnvError {
    #[error(
        "neither XDG_DATA_HOME nor HOME is set, so there is no place for Airlock's managed Python environment; set HOME, or pass --python with an interpreter that has ipykernel"
    )]
    NoDataHome,
    #[error(
        "`{BASE_PYTHON}` was not found on PATH; Airlock needs it once to create its managed Python environment. Install Python 3 with venv support (for example `apt-get install python3 python3-venv`), or pass --python with an interpreter that has ipykernel"
    )]
    BasePythonMissing,
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{BASE_PYTHON} -m venv` failed ({status}); on Debian and Ubuntu install python3-venv. Its output:\n{output}"
    )]
    VenvFailed { status: ExitStatus, output: String },
    #[error("pip could not install {packages} ({status}); check that PyPI is reachable, or pass --python with an interpreter that has ipykernel. pip's last words:\n{output}", packages = KERNEL_PACKAGES.join(" "))]
    PipFailed { status: ExitStatus, output: String },
    #[error("could not compile the managed environment's modules ({status}):\n{output}")]
    CompileFailed { status: ExitStatus, output: String },
    #[error(
        "the Python interpreter {python} could not be run: {source}; check the path passed with --python"
    )]
    InterpreterUnusable {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the Python interpreter {python} cannot import ipykernel; install it with `{python} -m pip install ipykernel`, or leave out --python to let Airlock manage an environment. Python said:\n{output}"
    )]
    IpykernelMissing { python: PathBuf, output: String },
}

/// Returns the path of an interpreter that can run ipykernel, building the managed environment
/// first if it is missing or was built with other pins.
pub async fn ensure_python(
    source: &PythonSource,
    progress: Progress,
) -> Result<PathBuf, PythonEnvError> {
    match source {
        PythonSource::Existing(python) => {
            check_existing(python).await?;
            Ok(python.clone())
        }
        PythonSource::Managed { dir } => ensure_managed(dir, progress).await,
    }
}

/// The interpreter inside a virtualenv folder.
fn interpreter(env: &Path) -> PathBuf {
    env.join("bin").join("python")
}

/// The marker's contents: one pin a line.
fn pin_list() -> String {
    let mut pins = KERNEL_PACKAGES.join("\n");
    pins.push('\n');
    pins
}

async fn is_complete(env: &Path) -> bool {
    match tokio::fs::read_to_string(env.join(MARKER)).await {
        Ok(marker) => marker == pin_list() && interpreter(env).exists(),
        Err(_) => false,
    }
}

async fn check_existing(python: &Path) -> Result<(), PythonEnvError> {
    let output = Command::new(python)
        .args(["-c", "import ipykernel"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| PythonEnvError::InterpreterUnusable {
            python: python.to_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(PythonEnvError::IpykernelMissing {
        python: python.to_owned(),
        output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

async fn ensure_managed(dir: &Path, progress: Progress) -> Result<PathBuf, PythonEnvError> {
    if is_complete(dir).await {
        return Ok(interpreter(dir));
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|source| PythonEnvError::Io {
            action: "create the folder",
            path: parent.to_owned(),
            source,
        })?;
    let staging = tempfile::Builder::new()
        .prefix(BUILDING_PREFIX)
        .tempdir_in(parent)
        .map_err(|source| PythonEnvError::Io {
            action: "create a build folder in",
            path: parent.to_owned(),
            source,
        })?;

    sweep_leftovers(parent).await;

    let reporter = Reporter::new(progress, dir);
    let built = build(staging.path(), dir, &reporter).await;
    reporter.finish(built.is_ok());
    if let Err(error) = built {
        discard(staging).await;
        return Err(error);
    }
    publish(staging, dir, parent).await
}

/// Renames a complete build at `staging` to `dir`. Another process may have finished first
/// (then its environment is used and this one deleted), or an environment with other pins may be
/// in the way (then it is moved aside and deleted).
async fn publish(
    staging: tempfile::TempDir,
    dir: &Path,
    parent: &Path,
) -> Result<PathBuf, PythonEnvError> {
    for _ in 0..3 {
        match tokio::fs::rename(staging.path(), dir).await {
            Ok(()) => {
                // The staging folder is the environment now; it must not be deleted.
                let _ = staging.keep();
                tracing::info!(path = %dir.display(), "managed Python environment ready");
                return Ok(interpreter(dir));
            }
            Err(_) if is_complete(dir).await => {
                // Someone else's identical build won the race.
                discard(staging).await;
                return Ok(interpreter(dir));
            }
            Err(_) if dir.exists() => {
                if let Err(error) = move_aside(dir, parent).await {
                    discard(staging).await;
                    return Err(error);
                }
            }
            Err(source) => {
                discard(staging).await;
                return Err(PythonEnvError::Io {
                    action: "move the new environment to",
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
    discard(staging).await;
    Err(PythonEnvError::Io {
        action: "replace the stale environment at",
        path: dir.to_owned(),
        source: std::io::Error::other("another process kept putting a different environment there"),
    })
}

/// Deletes build and stale folders that a killed process left behind. Only those untouched for a
/// day: a build in progress elsewhere is never that old.
async fn sweep_leftovers(parent: &Path) {
    const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
    let Ok(mut entries) = tokio::fs::read_dir(parent).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(BUILDING_PREFIX) || name.starts_with(STALE_PREFIX)) {
            continue;
        }
        let abandoned = entry
            .metadata()
            .await
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if abandoned {
            tracing::info!(path = %entry.path().display(), "deleting an abandoned Python environment build");
            let _ = tokio::fs::remove_dir_all(entry.path()).await;
        }
    }
}

/// Builds a complete environment in `staging` that will live at `target`.
async fn build(staging: &Path, target: &Path, reporter: &Reporter) -> Result<(), PythonEnvError> {
    reporter.step("creating a virtualenv");
    let mut venv = Command::new(BASE_PYTHON);
    venv.args(["-m", "venv"]).arg(staging);
    let (status, output) = run(venv, reporter)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => PythonEnvError::BasePythonMissing,
            _ => PythonEnvError::Io {
                action: "run",
                path: PathBuf::from(BASE_PYTHON),
                source: error,
            },
        })?;
    if !status.success() {
        return Err(PythonEnvError::VenvFailed { status, output });
    }

    let python = interpreter(staging);
    reporter.step(&format!("installing {}", KERNEL_PACKAGES.join(" ")));
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-warn-script-location",
        // Compiled separately below, so tracebacks name the final location.
        "--no-compile",
    ])
    .args(KERNEL_PACKAGES);
    run_with(pip, &python, reporter, |status, output| {
        PythonEnvError::PipFailed { status, output }
    })
    .await?;

    // Byte-compile now, with the paths the modules will have after the rename (`-d`), so imports
    // are fast from the first kernel on and tracebacks point at real files.
    reporter.step("compiling modules");
    let mut compile = Command::new(&python);
    compile
        .args(["-m", "compileall", "-q", "-j", "0", "-d"])
        .arg(target.join("lib"))
        .arg(staging.join("lib"));
    run_with(compile, &python, reporter, |status, output| {
        PythonEnvError::CompileFailed { status, output }
    })
    .await?;

    let marker = staging.join(MARKER);
    tokio::fs::write(&marker, pin_list())
        .await
        .map_err(|source| PythonEnvError::Io {
            action: "write",
            path: marker,
            source,
        })
}

/// Moves a stale environment out of the way and deletes it.
async fn move_aside(dir: &Path, parent: &Path) -> Result<(), PythonEnvError> {
    let stale = parent.join(format!("{STALE_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    match tokio::fs::rename(dir, &stale).await {
        Ok(()) => {
            tracing::info!(path = %dir.display(), "replacing a Python environment built with other pins");
            if let Err(error) = tokio::fs::remove_dir_all(&stale).await {
                tracing::warn!(path = %stale.display(), %error, "could not delete a stale Python environment");
            }
            Ok(())
        }
        // Someone else moved it first.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PythonEnvError::Io {
            action: "move aside the stale environment at",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Deletes a failed or redundant build without blocking the async runtime.
async fn discard(staging: tempfile::TempDir) {
    let path = staging.path().to_owned();
    let removed = tokio::task::spawn_blocking(move || staging.close()).await;
    if !matches!(removed, Ok(Ok(()))) {
        tracing::warn!(path = %path.display(), "could not delete a Python environment build folder");
    }
}

/// Runs `command` to completion, passing each output line to `reporter`; returns its status and
/// its last lines (stdout and stderr interleaved).
/// Runs `command`, a step carried out with the environment's `python`; a step that exits
/// unsuccessfully is the error `failed` makes of its status and output.
async fn run_with(
    command: Command,
    python: &Path,
    reporter: &Reporter,
    failed: impl FnOnce(ExitStatus, String) -> PythonEnvError,
) -> Result<(), PythonEnvError> {
    let (status, output) = run(command, reporter)
        .await
        .map_err(|source| PythonEnvError::Io {
            action: "run",
            path: python.to_owned(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(status, output))
    }
}

async fn run(mut command: Command, reporter: &Reporter) -> std::io::Result<(ExitStatus, String)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let (lines, mut received) = mpsc::unbounded_channel();
    let readers = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(send_lines(out, lines.clone()))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(send_lines(err, lines.clone()))),
    ];
    drop(lines);
    let mut tail = VecDeque::with_capacity(OUTPUT_TAIL_LINES);
    while let Some(line) = received.recv().await {
        reporter.line(&line);
        if tail.len() == OUTPUT_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for reader in readers.into_iter().flatten() {
        let _ = reader.await;
    }
    let status = child.wait().await?;
    Ok((status, Vec::from(tail).join("\n")))
}

async fn send_lines(output: impl AsyncRead + Unpin, lines: mpsc::UnboundedSender<String>) {
    let mut reader = BufReader::new(output).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        if !line.trim().is_empty() && lines.send(line).is_err() {
            return;
        }
    }
}

/// Shows the build's progress: a spinner with the latest line, or log lines.
struct Reporter {
    spinner: Option<ProgressBar>,
}

impl Reporter {
    fn new(progress: Progress, dir: &Path) -> Self {
        let spinner = match progress {
            Progress::Spinner => true,
            Progress::Log => false,
            Progress::Auto => std::io::stderr().is_terminal(),
        };
        let spinner = spinner.then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix}: {wide_msg}") {
                bar.set_style(style);
            }
            bar.set_prefix("Preparing Python for Airlock kernels");
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        tracing::info!(
            path = %dir.display(),
            "building the managed Python environment (first use only; this can take a minute)"
        );
        Reporter { spinner }
    }

    fn step(&self, step: &str) {
        match &self.spinner {
            Some(bar) => bar.set_message(step.to_owned()),
            None => tracing::info!("python environment: {step}"),
        }
    }

    fn line(&self, line: &str) {
        match &self.spinner {
            Some(bar) => bar.set_message(line.trim().to_owned()),
            None => tracing::info!("python environment: {}", line.trim()),
        }
    }

    fn finish(&self, ok: bool) {
        if let Some(bar) = &self.spinner {
            if ok {
                bar.finish_with_message("done");
            } else {
                bar.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_without_the_current_marker_is_not_complete() {
        let root = tempfile::tempdir().unwrap();
        let env = root.path().join("python");
        std::fs::create_dir_all(env.join("bin")).unwrap();
        std::fs::write(env.join("bin").join("python"), "").unwrap();
        assert!(!is_complete(&env).await);
        std::fs::write(env.join(MARKER), "ipykernel==1.0\n").unwrap();
        assert!(!is_complete(&env).await);
        std::fs::write(env.join(MARKER), pin_list()).unwrap();
        assert!(is_complete(&env).await);
    }

    /// A staging folder holding what a finished build would.
    fn fake_build(parent: &Path, pins: &str) -> tempfile::TempDir {
        let staging = tempfile::Builder::new()
            .prefix(BUILDING_PREFIX)
            .tempdir_in(parent)
            .unwrap();
        std::fs::create_dir_all(staging.path().join("bin")).unwrap();
        std::fs::write(interpreter(staging.path()), "").unwrap();
        std::fs::write(staging.path().join(MARKER), pins).unwrap();
        staging
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn publishing_moves_the_build_into_place() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("python");
        let python = publish(fake_build(root.path(), &pin_list()), &dir, root.path())
            .await
            .unwrap();
        assert_eq!(python, interpreter(&dir));
        assert!(is_complete(&dir).await);
        assert_eq!(names_in(root.path()), ["python"]);
    }

    #[tokio::test]
    async fn a_build_that_loses_the_race_uses_the_winner_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("python");
        publish(fake_build(root.path(), &pin_list()), &dir, root.path())
            .await
            .unwrap();
        std::fs::write(dir.join("winner"), "").unwrap();
        publish(fake_build(root.path(), &pin_list()), &dir, root.path())
            .await
            .unwrap();
        assert!(dir.join("winner").exists());
        assert_eq!(names_in(root.path()), ["python"]);
    }

    #[tokio::test]
    async fn an_environment_with_other_pins_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("python");
        publish(
            fake_build(root.path(), "ipykernel==1.0\n"),
            &dir,
            root.path(),
        )
        .await
        .unwrap();
        assert!(!is_complete(&dir).await);
        publish(fake_build(root.path(), &pin_list()), &dir, root.path())
            .await
            .unwrap();
        assert!(is_complete(&dir).await);
        assert_eq!(names_in(root.path()), ["python"]);
    }

    #[tokio::test]
    async fn an_existing_interpreter_without_ipykernel_is_refused_with_the_fix() {
        let missing = PathBuf::from("/nonexistent/python");
        let error = ensure_python(&PythonSource::Existing(missing), Progress::Log)
            .await
            .unwrap_err();
        assert!(matches!(error, PythonEnvError::InterpreterUnusable { .. }));

        // `false` runs but cannot import anything.
        let error = check_existing(Path::new("false")).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("pip install ipykernel"), "{message}");
        assert!(message.contains("false"), "{message}");
    }
}
