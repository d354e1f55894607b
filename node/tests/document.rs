//! The document actor end to end, with a real ipykernel and real QUIC and WebSocket clients:
//! reactive runs over a mixed Python/SQL/markdown notebook, many clients editing one cell,
//! a client that dies mid-edit, and a node fenced out by a newer owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use airlock_client::{Client, Outbox};
use airlock_node::collab::Notebook;
use airlock_protocol::{
    CellEdit, CellKind, CellState, ErrorCode, Output, Role, RunStatus, ServerMessage,
};
use support::{TestNode, next_matching};

const WAIT: Duration = Duration::from_secs(60);

/// A client's replica of the notebook, kept in step with the node.
struct Replica {
    client: Client,
    notebook: Notebook,
}

impl Replica {
    async fn join(client: Client, id: u64) -> Replica {
        let mut replica = Replica {
            client,
            notebook: Notebook::with_client_id(id),
        };
        replica.sync().await;
        replica
    }

    /// Asks the node for everything this replica lacks and applies it.
    async fn sync(&mut self) {
        self.client
            .sync(self.notebook.state_vector())
            .await
            .unwrap();
        let update = next_matching(&mut self.client, WAIT, |m| match m {
            ServerMessage::SyncStep2(step) => Some(step.update),
            _ => None,
        })
        .await;
        self.notebook.apply(update.as_slice()).unwrap();
    }

    /// Applies what the node forwarded, waiting at most `patience` for the first message.
    async fn absorb(&mut self, patience: Duration) {
        let mut wait = patience;
        while let Ok(message) = tokio::time::timeout(wait, self.client.recv()).await {
            if let ServerMessage::Update(update) = message.unwrap() {
                self.notebook.apply(update.update.as_slice()).unwrap();
            }
            wait = Duration::ZERO;
        }
    }

    /// Inserts `text` at byte `at` of `cell`'s source, as an editor does, and sends the update.
    async fn type_into(&mut self, cell: &str, at: usize, text: &str) {
        let update = self.notebook.insert_text(cell, at, text).unwrap();
        self.client.update(update).await.unwrap();
    }

    /// Waits until every update this client sent is acknowledged as durable.
    async fn settle(&mut self) {
        tokio::time::timeout(WAIT, async {
            while !self.client.outbox().is_empty() {
                if let ServerMessage::Update(update) = self.client.recv().await.unwrap() {
                    self.notebook.apply(update.update.as_slice()).unwrap();
                }
            }
        })
        .await
        .expect("every update acknowledged in time");
    }
}

fn insert(index: usize, id: &str, kind: CellKind, source: &str) -> CellEdit {
    CellEdit::Insert {
        index,
        cell: Some(id.into()),
        kind,
        source: source.into(),
    }
}

fn text(outputs: &[Output]) -> String {
    Output::text_of(outputs)
}

/// The cells whose runs a client saw start, in order, until every cell in `cells` finished.
async fn follow(client: &mut Client, cells: &[String]) -> Vec<airlock_client::CellRun> {
    tokio::time::timeout(WAIT, client.follow_runs(cells, |_| {}))
        .await
        .expect("runs finish in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_edit_reruns_exactly_its_descendants_for_every_client() {
    let store = tempfile::tempdir().unwrap();
    let node = TestNode::start("mixed", 1, store.path()).await;
    let mut author = node.editor(0).await; // QUIC
    let mut watcher_ws = node.editor(1).await; // WebSocket, binary
    let mut watcher_json = node.editor(3).await; // WebSocket, JSON

    // Ten cells: Python, SQL over a dataframe of another cell, and markdown.
    let cells = [
        ("title", CellKind::Markdown, "# Sales by region"),
        ("imports", CellKind::Code, "import pandas as pd"),
        ("rate", CellKind::Code, "rate = 2"),
        (
            "orders",
            CellKind::Code,
            "orders = pd.DataFrame({'region': ['n', 's', 'n'], 'amount': [10, 20, 30]})",
        ),
        (
            "scaled",
            CellKind::Code,
            "scaled = orders.assign(value=orders.amount * rate)",
        ),
        (
            "totals",
            CellKind::Sql,
            "-- name: totals\nSELECT region, sum(value) AS total FROM scaled GROUP BY region ORDER BY region",
        ),
        ("notes", CellKind::Markdown, "## Report"),
        (
            "report",
            CellKind::Code,
            "print({r: int(t) for r, t in zip(totals.region, totals.total)})",
        ),
        ("other", CellKind::Code, "unrelated = 42\nprint(unrelated)"),
        (
            "rate_user",
            CellKind::Code,
            "print('rate x 100 =', rate * 100)",
        ),
    ];
    let edits = cells
        .iter()
        .enumerate()
        .map(|(i, (id, kind, source))| insert(i, id, *kind, source))
        .collect();
    let created = author.edit_cells(edits, false).await.unwrap();
    assert_eq!(created.created.len(), cells.len());

    // Run everything once, in document order.
    let accepted = author.run_cells(Vec::new(), false).await.unwrap();
    let code_cells: Vec<String> = [
        "imports",
        "rate",
        "orders",
        "scaled",
        "totals",
        "report",
        "other",
        "rate_user",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(accepted.queued, code_cells);
    let runs = follow(&mut author, &code_cells).await;
    for run in &runs {
        assert_eq!(
            run.status,
            Some(RunStatus::Ok),
            "{}: {:?}",
            run.cell,
            run.outputs
        );
    }
    let report = runs.iter().find(|r| r.cell == "report").unwrap();
    assert_eq!(text(&report.outputs).trim(), "{'n': 80, 's': 40}");
    for watcher in [&mut watcher_ws, &mut watcher_json] {
        let seen = follow(watcher, &code_cells).await;
        assert!(seen.iter().all(|r| r.status == Some(RunStatus::Ok)));
    }

    // Edit the rate and run it: exactly its descendants re-run, in document order.
    let accepted = author
        .edit_cells(
            vec![CellEdit::SetSource {
                cell: "rate".into(),
                source: "rate = 3".into(),
            }],
            true,
        )
        .await
        .unwrap();
    let expected: Vec<String> = ["rate", "scaled", "totals", "report", "rate_user"]
        .map(String::from)
        .to_vec();
    assert_eq!(accepted.queued, expected);
    assert_eq!(
        accepted.stale, expected,
        "the edit marks them stale at once"
    );
    for client in [&mut author, &mut watcher_ws, &mut watcher_json] {
        let runs = follow(client, &expected).await;
        let ran: Vec<&str> = runs.iter().map(|r| r.cell.as_str()).collect();
        assert_eq!(ran, expected.iter().map(String::as_str).collect::<Vec<_>>());
        let report = runs.iter().find(|r| r.cell == "report").unwrap();
        assert_eq!(text(&report.outputs).trim(), "{'n': 120, 's': 60}");
        let rate_user = runs.iter().find(|r| r.cell == "rate_user").unwrap();
        assert_eq!(text(&rate_user.outputs).trim(), "rate x 100 = 300");
    }

    // Typing into `orders` (a Yjs update, no run) marks it and its descendants stale at once.
    let mut typist = Replica::join(node.editor(2).await, 901).await;
    let source = typist.notebook.cell("orders").unwrap().source;
    typist
        .type_into("orders", source.len(), "\norders = orders.head(2)")
        .await;
    let mut stale = BTreeSet::new();
    let wanted: BTreeSet<&str> = ["orders", "scaled", "totals", "report"].into();
    tokio::time::timeout(WAIT, async {
        while stale != wanted {
            if let ServerMessage::Cell(status) = watcher_ws.recv().await.unwrap()
                && status.state == CellState::Stale
                && let Some(cell) = wanted.iter().find(|c| **c == status.cell)
            {
                stale.insert(*cell);
            }
        }
    })
    .await
    .expect("stale marks arrive");
    typist.settle().await;

    // The graph agrees, and nothing ran because of typing.
    let graph = author.graph().await.unwrap();
    let state = |id: &str| {
        graph
            .cells
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.state.clone())
            .unwrap()
    };
    assert_eq!(state("scaled"), CellState::Stale);
    assert_eq!(state("other"), CellState::Idle);
    let totals = graph.cells.iter().find(|c| c.id == "totals").unwrap();
    assert_eq!(totals.reads[0].name, "scaled");
    assert_eq!(totals.reads[0].cell, "scaled");
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_converge_and_a_killed_client_loses_nothing() {
    const CLIENTS: usize = 20;
    const EDITS: usize = 15;
    const KILLED: usize = 7;
    let store = tempfile::tempdir().unwrap();
    let node = TestNode::start("together", 1, store.path()).await;
    let mut setup = node.editor(0).await;
    setup
        .edit_cells(
            vec![insert(0, "shared", CellKind::Code, "# shared\n")],
            false,
        )
        .await
        .unwrap();

    let mut replicas = Vec::new();
    for i in 0..CLIENTS {
        replicas.push(Replica::join(node.editor(i).await, 1000 + i as u64).await);
    }
    let tasks: Vec<_> = replicas
        .into_iter()
        .enumerate()
        .map(|(i, mut replica)| {
            let node_targets = (node.quic(), node.ws(false), node.token(Role::Editor));
            tokio::spawn(async move {
                for k in 0..EDITS {
                    // Between two markers (never inside one), so each stays whole.
                    let source = replica.notebook.cell("shared").unwrap().source;
                    let gaps: Vec<usize> = std::iter::once(source.len())
                        .chain(source.match_indices('>').map(|(at, _)| at + 1))
                        .collect();
                    let at = gaps[(i * 7 + k * 13) % gaps.len()];
                    replica.type_into("shared", at, &format!("<{i}:{k}>")).await;
                    if i == KILLED && k == EDITS / 2 {
                        // Killed mid-edit: the connection dies right after sending an update,
                        // before its acknowledgement can arrive.
                        let Replica { client, notebook } = replica;
                        let outbox: Outbox = client.into_outbox();
                        assert!(!outbox.is_empty(), "the killed client had unacked edits");
                        let target = if i % 2 == 0 {
                            node_targets.0.clone()
                        } else {
                            node_targets.1.clone()
                        };
                        let client = Client::connect_resuming(&target, &node_targets.2, outbox)
                            .await
                            .map_err(|failed| failed.error)
                            .unwrap();
                        replica = Replica { client, notebook };
                        replica.sync().await;
                    }
                    replica.absorb(Duration::from_millis(2)).await;
                }
                replica.settle().await;
                replica
            })
        })
        .collect();
    let mut replicas = Vec::new();
    for task in tasks {
        replicas.push(task.await.unwrap());
    }
    for replica in &mut replicas {
        replica.sync().await;
    }
    let texts: Vec<String> = replicas
        .iter()
        .map(|r| r.notebook.cell("shared").unwrap().source)
        .collect();
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, &texts[0], "client {i} diverged");
    }
    // What the node holds (a fresh client) is the same, and has every marker exactly once.
    let fresh = Replica::join(node.editor(1).await, 5000).await;
    let served = fresh.notebook.cell("shared").unwrap().source;
    assert_eq!(served, texts[0]);
    for i in 0..CLIENTS {
        for k in 0..EDITS {
            let marker = format!("<{i}:{k}>");
            assert_eq!(served.matches(&marker).count(), 1, "{marker} in {served}");
        }
    }
    node.node.shutdown().await;

    // And the store has it all: a new node on the same folder serves the same text.
    let reopened = TestNode::start("together", 2, store.path()).await;
    let fresh = Replica::join(reopened.editor(0).await, 5001).await;
    assert_eq!(fresh.notebook.cell("shared").unwrap().source, served);
    reopened.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_node_stops_serving_and_nothing_acknowledged_is_lost() {
    let store = tempfile::tempdir().unwrap();
    let old = TestNode::start("moving", 1, store.path()).await;
    let mut writer = Replica::join(old.editor(0).await, 77).await;
    writer
        .client
        .edit_cells(vec![insert(0, "c", CellKind::Code, "")], false)
        .await
        .unwrap();
    writer.absorb(Duration::from_millis(200)).await;
    for k in 0..20 {
        writer.type_into("c", usize::MAX, &format!("a{k} ")).await;
    }
    writer.settle().await;
    let acknowledged = writer.notebook.cell("c").unwrap().source;

    // A newer owner claims the document on the same store.
    let new = TestNode::start("moving", 2, store.path()).await;
    // The old node's next write is refused: it tells its clients and stops.
    writer.type_into("c", usize::MAX, "late ").await;
    let refusal = next_matching(&mut writer.client, WAIT, |m| match m {
        ServerMessage::Error(err) if err.fatal => Some(err),
        _ => None,
    })
    .await;
    assert_eq!(
        refusal.code,
        ErrorCode::DocumentMoved,
        "{}",
        refusal.message
    );
    let reason = tokio::time::timeout(WAIT, old.node.stopped())
        .await
        .unwrap();
    assert_eq!(reason, airlock_node::document::actor::StopReason::Moved);
    assert_eq!(
        writer.client.outbox().len(),
        1,
        "the refused edit stays unacknowledged"
    );

    // The client resumes on the new owner: the acknowledged text is there, and its
    // unacknowledged edit is sent again and lands.
    let Replica { client, notebook } = writer;
    let outbox = client.into_outbox();
    let client = Client::connect_resuming(&new.quic(), &new.token(Role::Editor), outbox)
        .await
        .map_err(|failed| failed.error)
        .unwrap();
    let mut writer = Replica { client, notebook };
    writer.settle().await;
    let fresh = Replica::join(new.editor(1).await, 78).await;
    let served = fresh.notebook.cell("c").unwrap().source;
    assert!(served.starts_with(&acknowledged), "{served:?}");
    assert!(served.ends_with("late "), "{served:?}");
    old.node.shutdown().await;
    new.node.shutdown().await;
}

/// The real notebook in `shared/notebooks`: a pandas chapter that redefines `A`, `B` and `df`
/// across cells and keeps random state in `rng`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pdsh_notebook_imports_runs_reacts_and_exports() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/notebooks/pdsh-03.03-operations-in-pandas.ipynb");
    let Ok(file) = std::fs::read_to_string(&path) else {
        println!("skipped: {} is not readable", path.display());
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let node = TestNode::start("pdsh", 1, store.path()).await;
    let mut client = node.editor(0).await;
    let accepted = client.import_ipynb(file).await.unwrap();
    assert_eq!(accepted.created.len(), 40);

    // Every code cell runs, in document order, with its outputs or its error recorded.
    let graph = client.graph().await.unwrap();
    let code: Vec<(String, String)> = graph
        .cells
        .iter()
        .filter(|c| c.kind == CellKind::Code)
        .map(|c| (c.id.clone(), c.summary.clone()))
        .collect();
    assert_eq!(code.len(), 20);
    let ids: Vec<String> = code.iter().map(|(id, _)| id.clone()).collect();
    let accepted = client.run_cells(Vec::new(), false).await.unwrap();
    assert_eq!(accepted.queued, ids);
    let first = follow(&mut client, &ids).await;
    for run in &first {
        match run.status {
            Some(RunStatus::Ok) => {}
            Some(RunStatus::Error) => assert!(
                run.outputs
                    .iter()
                    .any(|o| matches!(o, Output::Error { .. })),
                "{} failed without an error output",
                run.cell
            ),
            other => panic!("{} ended {other:?}", run.cell),
        }
    }
    let cell_starting = |prefix: &str| -> String {
        code.iter()
            .find(|(_, summary)| summary.starts_with(prefix))
            .unwrap_or_else(|| panic!("a cell starting {prefix:?}"))
            .0
            .clone()
    };
    let exp_ser = cell_starting("np.exp(ser)");
    let before = text(&first.iter().find(|r| r.cell == exp_ser).unwrap().outputs);
    assert!(!before.is_empty());

    // Re-seed the generator: exactly the cells that use `rng` (directly or through what they
    // made) re-run, in document order; the Series/area cells and the imports do not.
    let seeded = cell_starting("rng = np.random.default_rng(42)");
    let source = graph
        .cells
        .iter()
        .find(|c| c.id == seeded)
        .map(|_| {
            "rng = np.random.default_rng(7)\nser = pd.Series(rng.integers(0, 10, 4))\nser"
                .to_owned()
        })
        .unwrap();
    let accepted = client
        .edit_cells(
            vec![CellEdit::SetSource {
                cell: seeded.clone(),
                source,
            }],
            true,
        )
        .await
        .unwrap();
    let expected: Vec<String> = [
        "rng = np.random.default_rng(",
        "df = pd.DataFrame(rng.integers(0, 10, (3, 4)),",
        "np.exp(ser)",
        "np.sin(df * np.pi / 4)",
        "A = pd.DataFrame(rng.integers(0, 20, (2, 2)),",
        "B = pd.DataFrame(rng.integers(0, 10, (3, 3)),",
        "A + B",
        "A.add(B, fill_value=A.values.mean())",
        "A = rng.integers(10, size=(3, 4))",
        "A - A[0]",
        "df = pd.DataFrame(A, columns=['Q', 'R', 'S', 'T'])",
        "df.subtract(df['R'], axis=0)",
        "halfrow = df.iloc[0, ::2]",
        "df - halfrow",
    ]
    .iter()
    .map(|prefix| cell_starting(prefix))
    .collect();
    assert_eq!(accepted.queued, expected);
    let second = follow(&mut client, &expected).await;
    let after = text(&second.iter().find(|r| r.cell == exp_ser).unwrap().outputs);
    assert_ne!(before, after, "a new seed gives new values downstream");

    // The export is a valid notebook with every cell and the latest outputs.
    let exported = client.export_ipynb().await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(value["nbformat"], 4);
    let cells = value["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 40);
    // Each code cell carries what its latest run showed.
    let latest = |id: &str| {
        second
            .iter()
            .chain(first.iter())
            .find(|run| run.cell == id)
            .unwrap()
    };
    let mut with_outputs = 0;
    for cell in cells.iter().filter(|c| c["cell_type"] == "code") {
        assert!(cell["execution_count"].is_u64(), "{cell}");
        let run = latest(cell["id"].as_str().unwrap());
        assert_eq!(
            cell["outputs"].as_array().unwrap().len(),
            run.outputs.len(),
            "{cell}"
        );
        with_outputs += usize::from(!run.outputs.is_empty());
    }
    assert!(
        with_outputs >= 17,
        "most cells of this chapter show a value"
    );
    let reimported = airlock_node::collab::ipynb::import(
        exported.as_bytes(),
        airlock_node::collab::ipynb::ImportLimits::default(),
    )
    .unwrap();
    assert_eq!(reimported.notebook.len(), 40);
    assert_eq!(reimported.outputs.len(), 20);
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_by_ack_and_the_session_goes_on() {
    let store = tempfile::tempdir().unwrap();
    let node = TestNode::start("hostile", 1, store.path()).await;
    let mut editor = Replica::join(node.editor(0).await, 41).await;
    editor
        .client
        .edit_cells(vec![insert(0, "c", CellKind::Code, "")], false)
        .await
        .unwrap();
    editor.absorb(Duration::from_millis(200)).await;

    // Garbage, and a well-formed update over the per-update limit (2 MiB).
    let garbage = editor.client.update(vec![0xff; 64]).await.unwrap();
    let scratch = Notebook::with_client_id(42);
    scratch
        .insert_cell(0, "big", airlock_node::collab::CellKind::Code, "")
        .unwrap();
    let big = scratch.insert_text("big", 0, &"x".repeat(3 << 20)).unwrap();
    let oversized = editor.client.update(big).await.unwrap();
    for seq in [garbage, oversized] {
        let ack = next_matching(&mut editor.client, WAIT, |m| match m {
            ServerMessage::Ack(ack) if ack.seq == seq => Some(ack),
            _ => None,
        })
        .await;
        let reason = ack.refused.expect("refused, not acknowledged as durable");
        assert!(reason.contains("update refused"), "{reason}");
    }
    assert!(
        editor.client.outbox().is_empty(),
        "refused updates leave the outbox"
    );

    // A viewer may watch but not edit.
    let mut viewer = Client::connect(&node.quic(), &node.token(Role::Viewer))
        .await
        .unwrap();
    let update = scratch.insert_text("big", 0, "x").unwrap();
    viewer.update(update).await.unwrap();
    let refusal = next_matching(&mut viewer, WAIT, |m| match m {
        ServerMessage::Error(err) => Some(err),
        _ => None,
    })
    .await;
    assert_eq!(refusal.code, ErrorCode::Forbidden);

    // The editor's session goes on.
    editor.type_into("c", 0, "ok = 1").await;
    editor.settle().await;
    let fresh = Replica::join(node.editor(1).await, 43).await;
    assert_eq!(fresh.notebook.cell("c").unwrap().source, "ok = 1");
    node.node.shutdown().await;
}
