//! What the jail tests share: the interpreter, a jailed kernel harness, a real node with a
//! jailed kernel reached by clients over QUIC and WebSocket, and cell helpers.
//!
//! Each helper waits on kernel events or node messages bounded by a timeout, never on sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../support/mod.rs"]
mod support;
pub use support::python;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_client::{Client, Target, Trust};
use airlock_node::jail::{JailConfig, TierLimits};
use airlock_node::kernel::{KernelBridge, KernelConfig, KernelEvent};
use airlock_node::tls::TlsSource;
use airlock_node::{NodeConfig, RunningNode};
use airlock_protocol::token::{self, Claims, Role};
use airlock_protocol::{FrameLimit, KernelStatus, Output, RunId, RunStatus, ServerMessage};
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

/// How long any single awaited event may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

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
    /// Fails the test unless the run succeeded; hands back its stdout.
    pub fn ok(self, code: &str) -> String {
        assert_eq!(
            self.status,
            RunStatus::Ok,
            "cell failed: {code}\n{:?}",
            self.outputs
        );
        self.stdout()
    }

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
    pub events: mpsc::Receiver<KernelEvent>,
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
        self.run(code).await.ok(code)
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

/// The document every jailed test node serves.
pub const DOC: &str = "jail-under-test";

/// A real node, started in-process, whose kernel is jailed: QUIC and WebSocket on loopback,
/// self-signed TLS, tokens signed by a key of its own.
pub struct JailedNode {
    pub node: RunningNode,
    key: SigningKey,
    cgroup_parent: String,
    /// The kernel's runtime folder lives under this one.
    pub runtime: tempfile::TempDir,
}

impl JailedNode {
    pub async fn start(config: JailConfig) -> JailedNode {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let runtime = tempfile::tempdir().unwrap();
        let cgroup_parent = config.cgroup_parent.clone();
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let start = airlock_node::start(NodeConfig {
            document: DOC.into(),
            epoch: 0,
            token_key: key.verifying_key(),
            quic_listen: Some(loopback),
            ws_listen: Some(loopback),
            tls: TlsSource::SelfSigned {
                names: vec!["localhost".into()],
            },
            kernel: KernelConfig::jailed(python().await, runtime.path().to_owned(), config),
            frame_limit: FrameLimit::default(),
            store: "memory://".into(),
            idle_timeout: None,
            tenant: "default".to_owned(),
        });
        let node = tokio::time::timeout(PATIENCE, start)
            .await
            .expect("node start timed out")
            .expect("node with a jailed kernel starts");
        JailedNode {
            node,
            key,
            cgroup_parent,
            runtime,
        }
    }

    pub fn quic(&self) -> Target {
        Target::Quic {
            addr: self.node.quic_addr.unwrap(),
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(self.node.fingerprint.clone()),
        }
    }

    pub fn ws(&self) -> Target {
        Target::WebSocket {
            url: format!("ws://{}/v1/doc", self.node.ws_addr.unwrap()),
            json: false,
        }
    }

    /// A client with the editor role, connected over `target`.
    pub async fn editor(&self, target: &Target) -> Client {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let token = token::sign(
            &Claims {
                doc: DOC.into(),
                user: "attacker".into(),
                role: Role::Editor,
                epoch: 0,
                exp,
            },
            &self.key,
        );
        tokio::time::timeout(PATIENCE, Client::connect(target, &token))
            .await
            .expect("connect timed out")
            .expect("editor connects")
    }

    /// Shuts the node (and its kernel) down, then removes the test's cgroup parent when empty.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        if let Ok(host) = airlock_node::jail::preflight() {
            for parent in host.cgroup_parents(&self.cgroup_parent) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// Runs `code` as a cell through the node and collects what it produced.
pub async fn run_cell(client: &mut Client, code: &str) -> Finished {
    let report = tokio::time::timeout(PATIENCE, client.run(code, |_| {}))
        .await
        .expect("run finished in time")
        .expect("run accepted");
    Finished {
        outputs: report.outputs,
        status: report.done.status,
    }
}

/// Runs `code` as a cell through the node and returns its stdout; the run must succeed.
pub async fn ok_cell(client: &mut Client, code: &str) -> String {
    run_cell(client, code).await.ok(code)
}

/// The next message matching `pick` within [`PATIENCE`], skipping others.
pub async fn next_matching<T>(
    client: &mut Client,
    pick: impl FnMut(ServerMessage) -> Option<T>,
) -> T {
    support::next_matching(client, PATIENCE, pick).await
}

/// Waits until the node reports the kernel idle.
pub async fn idle(client: &mut Client) {
    next_matching(client, |m| {
        matches!(m, ServerMessage::Kernel(KernelStatus::Idle)).then_some(())
    })
    .await;
}
