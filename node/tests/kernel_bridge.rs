//! The kernel bridge against a real ipykernel.
//!
//! The interpreter comes from `AIRLOCK_PYTHON` when set, else from Airlock's managed environment
//! (built on first use, which needs PyPI). Each test gets its own runtime folder. Kernel starts
//! cost about a second each, so each test drives one kernel through several checks. Tests wait on
//! events, bounded by a timeout, never on sleeps.

// A test file: its helpers panic on failure just as its tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::python;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    events: mpsc::UnboundedReceiver<KernelEvent>,
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
    assert!(
        interrupted
            .outputs
            .iter()
            .any(|o| matches!(o, Output::Error { ename, .. } if ename == "KeyboardInterrupt")),
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
