//! A real `airlock node` process killed with SIGKILL right after acknowledging edits: a new node
//! on the same document store serves every acknowledged edit. Then a newer owner claims the
//! document while the old process still runs: the old one is refused at its next write, tells its
//! clients, and exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_client::{Client, Target, Trust};
use airlock_node::collab::{CellKind, Notebook};
use airlock_protocol::token::{self, Claims, Role};
use airlock_protocol::{CellEdit, ErrorCode, ServerMessage};
use airlock_test_kit::{Check, eventually_blocking};
use ed25519_dalek::SigningKey;

const DOC: &str = "survivor";
const WAIT: Duration = Duration::from_secs(60);

struct NodeProcess {
    child: Child,
    epoch: u64,
    target: Target,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `airlock node` for [`DOC`] at `epoch` on `store`, and waits for its connect file.
fn start_node(dir: &Path, store: &Path, epoch: u64) -> NodeProcess {
    let connect = dir.join(format!("node-{epoch}.json"));
    let runtime = dir.join(format!("runtime-{epoch}"));
    std::fs::create_dir_all(&runtime).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["node", "--doc", DOC, "--epoch", &epoch.to_string()])
        .arg("--token-public-key")
        .arg(dir.join("token-verifying.pem"))
        .arg("--store")
        .arg(store)
        .args(["--quic", "127.0.0.1:0", "--no-ws"])
        .arg("--runtime-dir")
        .arg(&runtime)
        .arg("--connect-file")
        .arg(&connect)
        // The jail has its own tests; this one is about the store.
        .arg("--insecure-no-jail")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("airlock node starts");
    let info: serde_json::Value = eventually_blocking(
        &format!("node {epoch} writes its connect file"),
        WAIT,
        || match std::fs::read(&connect)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        {
            Some(info) => Check::Ready(info),
            None => Check::NotYet(connect.display().to_string()),
        },
    );
    NodeProcess {
        child,
        epoch,
        target: Target::Quic {
            addr: info["quic"].as_str().unwrap().parse().unwrap(),
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(info["fingerprint"].as_str().unwrap().into()),
        },
    }
}

fn token(key: &SigningKey, epoch: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    token::sign(
        &Claims {
            doc: DOC.into(),
            user: "writer".into(),
            role: Role::Editor,
            epoch,
            exp: now + 600,
        },
        key,
    )
}

/// What the node serves now, read by a fresh replica.
async fn served_source(node: &NodeProcess, key: &SigningKey) -> String {
    let mut client = Client::connect(&node.target, &token(key, node.epoch))
        .await
        .unwrap();
    let replica = Notebook::with_client_id(999);
    client.sync(replica.state_vector()).await.unwrap();
    loop {
        let message = tokio::time::timeout(WAIT, client.recv())
            .await
            .unwrap()
            .unwrap();
        if let ServerMessage::SyncStep2(step) = message {
            replica.apply(step.update.as_slice()).unwrap();
            break;
        }
    }
    client.close().await;
    replica.cell("c").map(|c| c.source).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_edits_survive_sigkill_and_a_stale_node_stops() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    std::fs::write(
        dir.path().join("token-verifying.pem"),
        token::verifying_key_to_pem(&key.verifying_key()).unwrap(),
    )
    .unwrap();

    // Node 1: a cell and 100 typed edits, every one acknowledged as durable.
    let mut first = start_node(dir.path(), &store, 1);
    let mut client = Client::connect(&first.target, &token(&key, 1))
        .await
        .unwrap();
    client
        .edit_cells(
            vec![CellEdit::Insert {
                index: 0,
                cell: Some("c".into()),
                kind: airlock_protocol::CellKind::Code,
                source: String::new(),
            }],
            false,
        )
        .await
        .unwrap();
    let replica = Notebook::with_client_id(5);
    client.sync(replica.state_vector()).await.unwrap();
    loop {
        if let ServerMessage::SyncStep2(step) = client.recv().await.unwrap() {
            replica.apply(step.update.as_slice()).unwrap();
            break;
        }
    }
    assert_eq!(replica.cell("c").unwrap().kind, CellKind::Code);
    for k in 0..100 {
        let update = replica
            .insert_text("c", usize::MAX, &format!("{k} "))
            .unwrap();
        client.update(update).await.unwrap();
    }
    tokio::time::timeout(WAIT, async {
        while !client.outbox().is_empty() {
            client.recv().await.unwrap();
        }
    })
    .await
    .expect("every edit acknowledged");
    let acknowledged = replica.cell("c").unwrap().source;

    // Killed right after the last acknowledgement: no shutdown, no snapshot.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    drop(client);

    // Node 2 (the next claim) serves every acknowledged edit.
    let second = start_node(dir.path(), &store, 2);
    assert_eq!(served_source(&second, &key).await, acknowledged);

    // Node 3 claims the document while node 2 still runs. Node 2's next write is refused:
    // its client hears `document_moved` and the process exits with status 4.
    let mut second = second;
    let mut client = Client::connect(&second.target, &token(&key, 2))
        .await
        .unwrap();
    let third = start_node(dir.path(), &store, 3);
    let update = replica.insert_text("c", usize::MAX, "late").unwrap();
    client.update(update).await.unwrap();
    let refusal = tokio::time::timeout(WAIT, async {
        loop {
            match client.recv().await {
                Ok(ServerMessage::Error(err)) if err.fatal => break Some(err),
                Ok(_) => {}
                Err(_) => break None,
            }
        }
    })
    .await
    .unwrap()
    .expect("a fatal error before the connection closes");
    assert_eq!(
        refusal.code,
        ErrorCode::DocumentMoved,
        "{}",
        refusal.message
    );
    let status = eventually_blocking("the fenced node exits", WAIT, || {
        match second.child.try_wait().unwrap() {
            Some(status) => Check::Ready(status),
            None => Check::NotYet("still running"),
        }
    });
    assert_eq!(status.code(), Some(4), "a fenced node exits with status 4");

    // The refused edit was never acknowledged; sent again to the new owner, it lands.
    let outbox = client.into_outbox();
    assert_eq!(outbox.len(), 1);
    let mut client = Client::connect_resuming(&third.target, &token(&key, 3), outbox)
        .await
        .map_err(|failed| failed.error)
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while !client.outbox().is_empty() {
            client.recv().await.unwrap();
        }
    })
    .await
    .expect("the resent edit is acknowledged");
    assert_eq!(
        served_source(&third, &key).await,
        format!("{acknowledged}late")
    );
}
