//! What the jail tests share: the interpreter, a jailed kernel harness, and cell helpers.
//!
//! Each helper waits on kernel events bounded by a timeout, never on sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use airlock_node::jail::{JailConfig, TierLimits};
use airlock_node::kernel::{
    KernelBridge, KernelConfig, KernelEvent, Progress, PythonSource, ensure_python,
};
use airlock_protocol::{KernelStatus, Output, RunId, RunStatus};
use tokio::sync::{OnceCell, mpsc};

/// How long any single awaited event may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();

pub async fn python() -> PathBuf {
    PYTHON
        .get_or_init(|| async {
            if let Some(python) = std::env::var_os("AIRLOCK_PYTHON") {
                return PathBuf::from(python);
            }
            let source = PythonSource::default_managed().expect("HOME or XDG_DATA_HOME is set");
            ensure_python(&source, Progress::Auto)
                .await
                .expect("the managed Python environment")
        })
        .await
        .clone()
}

/// Small limits so the limit tests run fast: 256 MiB memory, 64 processes, half a core, a
/// 32 MiB work dir.
pub fn test_limits() -> TierLimits {
    TierLimits {
        memory_bytes: 256 << 20,
        cpus: 0.5,
        cpu_period_us: 100_000,
        pids: 64,
        work_dir_bytes: 32 << 20,
        open_files: 256,
    }
}

/// A jail config whose cgroups live under a parent folder of their own.
pub fn jail_config(parent: &str) -> JailConfig {
    JailConfig {
        limits: test_limits(),
        cgroup_parent: format!("airlock-test-{parent}-{}", std::process::id()),
        ..JailConfig::default()
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct Finished {
    pub outputs: Vec<Output>,
    pub status: RunStatus,
}

impl Finished {
    /// Everything printed on stdout.
    pub fn stdout(&self) -> String {
        self.outputs
            .iter()
            .filter_map(|output| match output {
                Output::Stream { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

pub struct Jailed {
    pub bridge: KernelBridge,
    /// The cgroup parent this kernel's cgroup lives under, removed at shutdown when empty.
    cgroup_parent: String,
    pub events: mpsc::UnboundedReceiver<KernelEvent>,
    pub runtime: tempfile::TempDir,
    next_run: u64,
}

impl Jailed {
    pub async fn start(config: JailConfig) -> Jailed {
        let runtime = tempfile::tempdir().unwrap();
        let cgroup_parent = config.cgroup_parent.clone();
        let kernel = KernelConfig::jailed(python().await, runtime.path().to_owned(), config);
        let (bridge, events) = tokio::time::timeout(PATIENCE, KernelBridge::start(kernel))
            .await
            .expect("kernel start timed out")
            .expect("jailed kernel started");
        Jailed {
            bridge,
            cgroup_parent,
            events,
            runtime,
            next_run: 0,
        }
    }

    pub async fn next_event(&mut self) -> KernelEvent {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("no kernel event in time")
            .expect("event stream ended")
    }

    pub fn execute(&mut self, code: &str) -> RunId {
        self.next_run += 1;
        let run = RunId(self.next_run);
        self.bridge.execute(run, code, true).unwrap();
        run
    }

    pub async fn finish(&mut self, run: RunId) -> Finished {
        let mut outputs = Vec::new();
        loop {
            match self.next_event().await {
                KernelEvent::Output { run: r, output } if r == run => outputs.push(output),
                KernelEvent::Done { run: r, status, .. } if r == run => {
                    return Finished { outputs, status };
                }
                _ => {}
            }
        }
    }

    pub async fn run(&mut self, code: &str) -> Finished {
        let run = self.execute(code);
        self.finish(run).await
    }

    /// Runs `code` and returns its stdout; the run must succeed.
    pub async fn ok(&mut self, code: &str) -> String {
        let finished = self.run(code).await;
        assert_eq!(
            finished.status,
            RunStatus::Ok,
            "cell failed: {code}\n{:?}",
            finished.outputs
        );
        finished.stdout()
    }

    /// Waits for the kernel to be reported dead and returns why.
    pub async fn death(&mut self) -> airlock_protocol::DeathCause {
        loop {
            if let KernelEvent::Status(KernelStatus::Dead { cause }) = self.next_event().await {
                return cause;
            }
        }
    }

    pub async fn restart(&mut self) {
        tokio::time::timeout(PATIENCE, self.bridge.restart())
            .await
            .expect("restart timed out")
            .expect("restarted");
    }

    /// Shuts the kernel down and hands back its (still existing) runtime parent folder.
    pub async fn shutdown(self) -> tempfile::TempDir {
        self.bridge.shutdown().await;
        // The test's cgroup parent goes once its last kernel has; while another kernel of the
        // same test still runs, removing it fails harmlessly.
        if let Ok(host) = airlock_node::jail::preflight() {
            for parent in host.cgroup_parents(&self.cgroup_parent) {
                let _ = std::fs::remove_dir(parent);
            }
        }
        self.runtime
    }
}
