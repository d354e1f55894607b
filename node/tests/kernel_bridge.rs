//! The kernel bridge against a real ipykernel.
//!
//! The interpreter comes from `AIRLOCK_PYTHON` when set, else from Airlock's managed environment
//! (built on first use, which needs PyPI). Each test gets its own runtime folder. Kernel starts
//! cost about a second each, so each test drives one kernel through several checks. Tests wait on
//! events, bounded by a timeout, never on sleeps. The test of the data libraries runs its kernel
//! jailed, as kernels run in production, and so needs root (the jail's preflight).

// A test file: its helpers panic on failure just as its tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod jail_common;
use jail_common::python;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_node::document::analysis::sql::kernel_source;
use airlock_node::jail::{JailConfig, Tier};
use airlock_node::kernel::{KernelBridge, KernelConfig, KernelError, KernelEvent};
use airlock_protocol::{DeathCause, KernelStatus, Output, RunId, RunStatus, StreamName};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;

/// How long any single awaited event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// One kernel under test and everything it reported.
struct Harness {
    bridge: KernelBridge,
    events: mpsc::Receiver<KernelEvent>,
    runtime: tempfile::TempDir,
    next_run: u64,
    /// Runs whose `Done` was seen: any later output for them breaks the contract.
    finished: HashSet<RunId>,
}

/// What one run produced.
#[derive(Debug)]
struct Finished {
    outputs: Vec<Output>,
    status: RunStatus,
    execution_count: Option<u32>,
}

impl Finished {
    fn stream(&self, name: StreamName) -> String {
        self.outputs
            .iter()
            .filter_map(|output| match output {
                Output::Stream { name: n, text } if *n == name => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

impl Harness {
    async fn start() -> Harness {
        let runtime = tempfile::tempdir().unwrap();
        let config = KernelConfig::new(python().await, runtime.path().to_owned());
        let (bridge, events) =
            tokio::time::timeout(Duration::from_secs(120), KernelBridge::start(config))
                .await
                .expect("kernel start timed out")
                .expect("kernel started");
        let mut harness = Harness {
            bridge,
            events,
            runtime,
            next_run: 0,
            finished: HashSet::new(),
        };
        harness.expect_status(KernelStatus::Starting).await;
        harness.expect_status(KernelStatus::Idle).await;
        harness
    }

    async fn next_event(&mut self) -> KernelEvent {
        let event = tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("no kernel event in time")
            .expect("event stream ended");
        // Runs are reported in order: nothing of a run before every earlier run is done.
        if let KernelEvent::Output { run, .. } | KernelEvent::Done { run, .. } = &event {
            assert!(
                (1..run.0).all(|earlier| self.finished.contains(&RunId(earlier))),
                "{event:?} arrived before every earlier run was done"
            );
        }
        match &event {
            KernelEvent::Output { run, output } => {
                assert!(
                    !self.finished.contains(run),
                    "output {output:?} arrived after run {run:?} was done"
                );
            }
            KernelEvent::Done { run, .. } => {
                assert!(self.finished.insert(*run), "second Done for run {run:?}");
            }
            KernelEvent::Status(_) => {}
        }
        event
    }

    /// Skips events until the next status, which must be `expected`.
    async fn expect_status(&mut self, expected: KernelStatus) {
        loop {
            if let KernelEvent::Status(status) = self.next_event().await {
                assert_eq!(status, expected);
                return;
            }
        }
    }

    /// Skips busy/idle statuses until one of another kind arrives.
    async fn next_lifecycle_status(&mut self) -> KernelStatus {
        loop {
            match self.next_event().await {
                KernelEvent::Status(KernelStatus::Busy | KernelStatus::Idle) => {}
                KernelEvent::Status(status) => return status,
                other => panic!("expected a status, got {other:?}"),
            }
        }
    }

    fn execute(&mut self, code: &str) -> RunId {
        self.next_run += 1;
        let run = RunId(self.next_run);
        self.bridge.execute(run, code, true).unwrap();
        run
    }

    /// Collects `run`'s outputs up to its `Done`.
    async fn finish(&mut self, run: RunId) -> Finished {
        let mut outputs = Vec::new();
        loop {
            match self.next_event().await {
                KernelEvent::Output { run: r, output } if r == run => outputs.push(output),
                KernelEvent::Done {
                    run: r,
                    status,
                    execution_count,
                } if r == run => {
                    return Finished {
                        outputs,
                        status,
                        execution_count,
                    };
                }
                KernelEvent::Status(_) => {}
                other => panic!("unexpected event while waiting for {run:?}: {other:?}"),
            }
        }
    }

    async fn run(&mut self, code: &str) -> Finished {
        let run = self.execute(code);
        self.finish(run).await
    }

    /// Waits for `run` to print `marker` on stdout, proof that its code is executing.
    async fn wait_for_output(&mut self, run: RunId, marker: &str) {
        loop {
            match self.next_event().await {
                KernelEvent::Output {
                    run: r,
                    output: Output::Stream { text, .. },
                } if r == run && text.contains(marker) => return,
                KernelEvent::Status(_) => {}
                other => panic!("unexpected event while waiting for {marker:?}: {other:?}"),
            }
        }
    }

    /// Shuts down and checks that neither the process nor any file of the kernel is left.
    async fn shut_down_cleanly(self, pids: &[u32]) {
        let Harness {
            bridge,
            mut events,
            runtime,
            ..
        } = self;
        bridge.shutdown().await;
        for pid in pids {
            assert!(!proc_exists(*pid), "kernel process {pid} outlived shutdown");
        }
        assert_eq!(files_in(runtime.path()), Vec::<PathBuf>::new());
        // The event stream ends after shutdown.
        while let Some(event) = events.recv().await {
            assert!(
                matches!(event, KernelEvent::Done { .. } | KernelEvent::Status(_)),
                "{event:?}"
            );
        }
    }
}

fn proc_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect()
}

fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
}

#[tokio::test]
async fn outputs_of_every_kind_precede_done_and_shutdown_leaves_nothing() {
    let mut kernel = Harness::start().await;
    let pid = kernel.bridge.pid().expect("a running kernel has a pid");
    assert!(proc_exists(pid));

    let printed = kernel
        .run("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)")
        .await;
    assert_eq!(printed.status, RunStatus::Ok);
    assert_eq!(printed.stream(StreamName::Stdout), "to stdout\n");
    assert_eq!(printed.stream(StreamName::Stderr), "to stderr\n");
    assert_eq!(printed.execution_count, Some(1));

    let shown = kernel
        .run("from IPython.display import display, HTML; display(HTML('<b>hi</b>'))")
        .await;
    assert_eq!(shown.status, RunStatus::Ok);
    match shown.outputs.as_slice() {
        [Output::DisplayData { data, .. }] => {
            assert_eq!(data["text/html"], "<b>hi</b>");
            assert!(data.contains_key("text/plain"));
        }
        other => panic!("expected one display_data, got {other:?}"),
    }

    let result = kernel.run("1+1").await;
    assert_eq!(result.status, RunStatus::Ok);
    match result.outputs.as_slice() {
        [
            Output::ExecuteResult {
                execution_count,
                data,
                ..
            },
        ] => {
            assert_eq!(data["text/plain"], "2");
            assert_eq!(Some(*execution_count), result.execution_count);
        }
        other => panic!("expected one execute_result, got {other:?}"),
    }

    let failed = kernel.run("1/0").await;
    assert_eq!(failed.status, RunStatus::Error);
    match failed.outputs.as_slice() {
        [
            Output::Error {
                ename, traceback, ..
            },
        ] => {
            assert_eq!(ename, "ZeroDivisionError");
            assert!(!traceback.is_empty());
        }
        other => panic!("expected one error, got {other:?}"),
    }

    // Runs queued together finish in order, each after its own outputs.
    let queued: Vec<RunId> = (0..5)
        .map(|i| kernel.execute(&format!("print({i})")))
        .collect();
    for (i, run) in queued.into_iter().enumerate() {
        let done = kernel.finish(run).await;
        assert_eq!(done.status, RunStatus::Ok);
        assert_eq!(done.stream(StreamName::Stdout), format!("{i}\n"));
    }

    kernel.shut_down_cleanly(&[pid]).await;
}

#[tokio::test]
async fn interrupt_ends_a_busy_loop_within_a_second_and_restart_forgets_state() {
    let mut kernel = Harness::start().await;
    let first_pid = kernel.bridge.pid().unwrap();

    let spinning = kernel.execute("print('spinning', flush=True)\nwhile True: pass");
    kernel.wait_for_output(spinning, "spinning").await;
    let interrupted_at = Instant::now();
    kernel.bridge.interrupt().unwrap();
    let interrupted = kernel.finish(spinning).await;
    let took = interrupted_at.elapsed();
    println!("interrupt to Done: {took:?}");
    assert!(took < Duration::from_secs(1), "interrupt took {took:?}");
    assert_eq!(interrupted.status, RunStatus::Error);
    // The KeyboardInterrupt error, or, when the interrupt lands where Python 3.11 has no line
    // number (IPython's traceback formatter then fails on its own assertion), IPython's plain
    // fallback traceback that still names it.
    assert!(
        interrupted.outputs.iter().any(|o| match o {
            Output::Error { ename, .. } => ename == "KeyboardInterrupt",
            Output::Stream { text, .. } => text.contains("\nKeyboardInterrupt\n"),
            _ => false,
        }),
        "{:?}",
        interrupted.outputs
    );

    assert_eq!(kernel.run("x = 2").await.status, RunStatus::Ok);
    let x = kernel.run("x").await;
    assert!(matches!(
        x.outputs.as_slice(),
        [Output::ExecuteResult { data, .. }] if data["text/plain"] == "2"
    ));

    kernel.bridge.restart().await.unwrap();
    assert_eq!(
        kernel.next_lifecycle_status().await,
        KernelStatus::Restarting
    );
    assert_eq!(kernel.next_lifecycle_status().await, KernelStatus::Starting);
    kernel.expect_status(KernelStatus::Idle).await;
    let second_pid = kernel.bridge.pid().unwrap();
    assert_ne!(first_pid, second_pid);
    assert!(
        !proc_exists(first_pid),
        "the old kernel outlived the restart"
    );

    let forgotten = kernel.run("x").await;
    assert_eq!(forgotten.status, RunStatus::Error);
    assert!(
        forgotten
            .outputs
            .iter()
            .any(|o| matches!(o, Output::Error { ename, .. } if ename == "NameError")),
        "{:?}",
        forgotten.outputs
    );

    kernel.shut_down_cleanly(&[first_pid, second_pid]).await;
}

#[tokio::test]
async fn killed_or_silent_kernels_are_reported_dead_within_a_second_and_restart_recovers() {
    let mut kernel = Harness::start().await;
    let first_pid = kernel.bridge.pid().unwrap();

    let sleeping = kernel.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)");
    kernel.wait_for_output(sleeping, "sleeping").await;
    let killed_at = Instant::now();
    signal(first_pid, Signal::SIGKILL);
    let status = kernel.next_lifecycle_status().await;
    let took = killed_at.elapsed();
    println!("SIGKILL to Dead: {took:?}");
    assert_eq!(
        status,
        KernelStatus::Dead {
            cause: DeathCause::Signaled {
                signal: 9,
                name: "SIGKILL".into()
            }
        }
    );
    assert!(
        took < Duration::from_secs(1),
        "death reported after {took:?}"
    );
    let aborted = kernel.finish(sleeping).await;
    assert_eq!(aborted.status, RunStatus::Aborted);

    // Dead: no pid, nothing to interrupt, runs end at once.
    assert_eq!(kernel.bridge.pid(), None);
    assert!(matches!(
        kernel.bridge.interrupt(),
        Err(KernelError::NotRunning)
    ));
    assert_eq!(kernel.run("1+1").await.status, RunStatus::Aborted);

    kernel.bridge.restart().await.unwrap();
    let second_pid = kernel.bridge.pid().unwrap();
    let result = kernel.run("1+1").await;
    assert!(matches!(
        result.outputs.as_slice(),
        [Output::ExecuteResult { data, .. }] if data["text/plain"] == "2"
    ));

    // A stopped process answers no heartbeat: declared dead, then killed.
    let pending = kernel.execute("import time\ntime.sleep(60)");
    signal(second_pid, Signal::SIGSTOP);
    let stopped_at = Instant::now();
    let status = kernel.next_lifecycle_status().await;
    let took = stopped_at.elapsed();
    println!("SIGSTOP to Dead: {took:?}");
    assert!(
        matches!(
            status,
            KernelStatus::Dead {
                cause: DeathCause::HeartbeatLost { .. }
            }
        ),
        "{status:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "heartbeat loss reported after {took:?}"
    );
    assert_eq!(kernel.finish(pending).await.status, RunStatus::Aborted);

    kernel.shut_down_cleanly(&[first_pid, second_pid]).await;
}

#[tokio::test]
async fn an_interpreter_that_cannot_run_the_kernel_fails_the_start_and_leaves_nothing() {
    let runtime = tempfile::tempdir().unwrap();
    // `false` ignores its arguments and exits 1, like an interpreter without ipykernel.
    let config = KernelConfig::new(PathBuf::from("false"), runtime.path().to_owned());
    let error = KernelBridge::start(config).await.unwrap_err();
    assert!(
        matches!(
            error,
            KernelError::DiedDuringStartup {
                cause: DeathCause::Exited { code: 1 },
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(files_in(runtime.path()), Vec::<PathBuf>::new());
}

/// The floor every Airlock benchmark is compared to: `x = 1` from `execute` to `Done`.
#[tokio::test]
async fn execute_round_trip() {
    const ROUNDS: usize = 200;
    let mut kernel = Harness::start().await;
    let pid = kernel.bridge.pid().unwrap();
    // Warm up the kernel's code paths first.
    for _ in 0..10 {
        kernel.run("x = 1").await;
    }
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let done = kernel.run("x = 1").await;
        times.push(started.elapsed());
        assert_eq!(done.status, RunStatus::Ok);
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "execute round trip of `x = 1` over {ROUNDS} runs: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    assert!(at(0.5) < Duration::from_millis(100), "p50 {:?}", at(0.5));
    kernel.shut_down_cleanly(&[pid]).await;
}

/// The notebook the data libraries are checked against, when it is readable.
fn real_notebook() -> Option<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/notebooks/pdsh-03.03-operations-in-pandas.ipynb");
    match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap()),
        Err(err) => {
            println!(
                "skipped the real notebook: {} is not readable ({err})",
                path.display()
            );
            None
        }
    }
}

/// The managed environment's data libraries work in a kernel jailed with the smallest tier's
/// limits: pandas and numpy, and a SQL cell run exactly as Airlock generates it (DuckDB over a
/// dataframe, with `HOME` and `/tmp` the jail's tmpfs), then every code cell of a real notebook.
#[tokio::test]
async fn pandas_numpy_and_sql_cells_work_in_a_jailed_kernel() {
    let config = JailConfig {
        limits: Tier::Small.limits(),
        ..jail_common::jail_config("data")
    };
    let mut kernel = jail_common::Jailed::start(config).await;

    // DuckDB resolves its home folder (for extensions and secrets) from `HOME`, the jail's tmpfs.
    let home = kernel
        .ok("import os, duckdb\nprint(os.environ['HOME'], duckdb.__version__)")
        .await;
    assert!(home.starts_with("/work "), "{home}");

    const ORDERS: &str = "\
import numpy as np
import pandas as pd
orders = pd.DataFrame({
    'region': ['north', 'south', 'north', 'east'],
    'amount': np.array([10.5, 20.0, 4.5, 7.0]),
})
";
    kernel.ok(ORDERS).await;

    let sql = "SELECT region, sum(amount) AS total FROM orders GROUP BY region ORDER BY region";
    let cell = kernel_source(sql, Some("totals"));
    let shown = kernel.run(&cell).await;
    assert_eq!(shown.status, RunStatus::Ok, "{cell}\n{:?}", shown.outputs);
    let table = match shown.outputs.as_slice() {
        [Output::ExecuteResult { data, .. }] => data["text/plain"].as_str().unwrap().to_owned(),
        other => panic!("expected the result dataframe, got {other:?}"),
    };
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["0", "east", "7.0"],
            ["1", "north", "15.0"],
            ["2", "south", "20.0"]
        ],
        "{table}"
    );
    // The result is bound to its name, as a pandas dataframe.
    let bound = kernel
        .ok("print(type(totals).__name__, totals.to_dict('list'))")
        .await;
    assert_eq!(
        bound,
        "DataFrame {'region': ['east', 'north', 'south'], 'total': [7.0, 15.0, 20.0]}\n"
    );
    // A statement without a result binds nothing and shows nothing; later cells see its table.
    let created = kernel
        .run(&kernel_source(
            "CREATE TABLE big AS SELECT * FROM orders WHERE amount > 5",
            None,
        ))
        .await;
    assert_eq!(created.status, RunStatus::Ok, "{:?}", created.outputs);
    assert!(created.outputs.is_empty(), "{:?}", created.outputs);
    let counted = kernel
        .ok(&format!(
            "print({})",
            kernel_source("SELECT count(*) AS n FROM big", None).trim()
        ))
        .await;
    assert_eq!(
        counted.split_whitespace().collect::<Vec<_>>(),
        ["n", "0", "3"],
        "{counted}"
    );

    if let Some(notebook) = real_notebook() {
        let cells = notebook["cells"].as_array().unwrap();
        let mut ran = 0;
        for cell in cells.iter().filter(|cell| cell["cell_type"] == "code") {
            let source = match &cell["source"] {
                serde_json::Value::Array(lines) => {
                    lines.iter().map(|line| line.as_str().unwrap()).collect()
                }
                other => other.as_str().unwrap().to_owned(),
            };
            kernel.ok(&source).await;
            ran += 1;
        }
        println!("ran the real notebook's {ran} code cells");
        assert!(ran > 0);
    }

    kernel.shutdown().await;
}
