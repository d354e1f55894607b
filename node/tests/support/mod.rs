//! What the node's integration tests share: the Python their kernels run on, and waiting for
//! a client's next message of interest.
#![allow(clippy::expect_used, dead_code)] // a failed expectation is a failed test

use std::path::PathBuf;
use std::time::Duration;

use airlock_client::Client;
use airlock_protocol::ServerMessage;

use airlock_node::kernel::python_env::{Progress, PythonSource, ensure_python};
use tokio::sync::OnceCell;

/// The first use may build the managed environment; every test in the binary shares that build.
static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();

/// `AIRLOCK_PYTHON` if set, else Airlock's managed environment.
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

/// The next message `pick` accepts within `patience`, skipping others.
pub async fn next_matching<T>(
    client: &mut Client,
    patience: Duration,
    mut pick: impl FnMut(ServerMessage) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let message = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("expected message in time")
            .expect("connection open");
        if let Some(found) = pick(message) {
            return found;
        }
    }
}

/// A node serving one document in this process, with an unconfined kernel (the jail has its own
/// tests) and a document store in a folder of its own.
pub struct TestNode {
    pub node: airlock_node::RunningNode,
    pub key: ed25519_dalek::SigningKey,
    pub document: String,
    pub epoch: u64,
    pub runtime: tempfile::TempDir,
    pub store: std::path::PathBuf,
}

impl TestNode {
    /// Starts a node for `document` at `epoch` on the store folder `store`.
    pub async fn start(document: &str, epoch: u64, store: &std::path::Path) -> TestNode {
        Self::start_with(document, epoch, store, |_| {}).await
    }

    /// [`TestNode::start`], with `adjust` applied to the node's configuration first.
    pub async fn start_with(
        document: &str,
        epoch: u64,
        store: &std::path::Path,
        adjust: impl FnOnce(&mut airlock_node::NodeConfig),
    ) -> TestNode {
        use airlock_node::kernel::KernelConfig;
        use airlock_node::tls::TlsSource;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let runtime = tempfile::tempdir().expect("a runtime folder");
        let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut config = airlock_node::NodeConfig {
            document: document.into(),
            epoch,
            token_key: key.verifying_key(),
            quic_listen: Some(loopback),
            ws_listen: Some(loopback),
            tls: TlsSource::SelfSigned {
                names: vec!["localhost".into()],
            },
            kernel: KernelConfig::new(python().await, runtime.path().to_owned()),
            frame_limit: airlock_protocol::FrameLimit::default(),
            store: store.display().to_string(),
            idle_timeout: None,
            tenant: "default".to_owned(),
        };
        adjust(&mut config);
        let node = airlock_node::start(config).await.expect("node starts");
        TestNode {
            node,
            key,
            document: document.into(),
            epoch,
            runtime,
            store: store.to_owned(),
        }
    }

    pub fn token(&self, role: airlock_protocol::Role) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs()
            + 600;
        airlock_protocol::token::sign(
            &airlock_protocol::Claims {
                doc: self.document.clone(),
                user: format!("{role}-user"),
                role,
                epoch: self.epoch,
                exp,
            },
            &self.key,
        )
    }

    pub fn quic(&self) -> airlock_client::Target {
        airlock_client::Target::Quic {
            addr: self.node.quic_addr.expect("QUIC enabled"),
            server_name: "localhost".into(),
            trust: airlock_client::Trust::Fingerprint(self.node.fingerprint.clone()),
        }
    }

    pub fn ws(&self, json: bool) -> airlock_client::Target {
        airlock_client::Target::WebSocket {
            url: format!(
                "ws://{}{}",
                self.node.ws_addr.expect("WebSocket enabled"),
                airlock_node::websocket::PATH
            ),
            json,
        }
    }

    /// An editor connected over QUIC (`i` even) or WebSocket (odd; JSON when `i % 4 == 3`).
    pub async fn editor(&self, i: usize) -> Client {
        let target = match i % 4 {
            0 | 2 => self.quic(),
            1 => self.ws(false),
            _ => self.ws(true),
        };
        Client::connect(&target, &self.token(airlock_protocol::Role::Editor))
            .await
            .expect("client connects")
    }
}
