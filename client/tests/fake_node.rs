//! The client's document helpers against a scripted stand-in for a node over a real WebSocket:
//! request/answer matching with the backlog, following runs, and the outbox across a dropped
//! connection. The node's own behaviour is tested in `node/tests/`; this checks only the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use airlock_client::{Client, ClientError, Outbox, Target};
use airlock_protocol::codec::{self, FrameLimit};
use airlock_protocol::{
    Accepted, CellBinding, CellEdit, CellKind, CellOutputs, CellState, CellStatus, ClientMessage,
    DocUpdate, ErrorCode, ErrorReply, ExecutionMode, Exported, GraphCell, GraphView, KernelState,
    Output, Role, RunId, RunOutput, RunStatus, ServerMessage, SessionId, UpdateAck, Welcome,
};
use airlock_test_kit::messages::{done, queued, stdout};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(10);

/// Starts a scripted node; returns its URL and the updates it receives, as (seq, bytes).
async fn fake_node() -> (String, mpsc::UnboundedReceiver<(u64, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/doc", listener.local_addr().unwrap());
    let (updates, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, updates.clone()));
        }
    });
    (url, received)
}

/// One connection: answers in the form the client speaks, following a fixed script.
async fn serve(stream: tokio::net::TcpStream, updates: mpsc::UnboundedSender<(u64, Vec<u8>)>) {
    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
    let limit = FrameLimit::default();
    while let Some(Ok(message)) = ws.next().await {
        let (request, json): (ClientMessage, bool) = match message {
            Message::Binary(bytes) => (codec::decode_whole_frame(&bytes, limit).unwrap(), false),
            Message::Text(text) => (codec::decode_json(text.as_str(), limit).unwrap(), true),
            _ => continue,
        };
        let Some(replies) = script(request, &updates) else {
            return; // drop the connection without a goodbye
        };
        for reply in replies {
            let frame = if json {
                Message::Text(codec::encode_json(&reply, limit).unwrap().into())
            } else {
                Message::Binary(codec::encode_frame(&reply, limit).unwrap().into())
            };
            if ws.send(frame).await.is_err() {
                return;
            }
        }
    }
}

fn cell(id: &str, state: CellState) -> ServerMessage {
    ServerMessage::Cell(CellStatus {
        cell: id.into(),
        state,
    })
}

/// What the scripted node answers to one request; `None` drops the connection.
///
/// - `run_cells` of `["a", "b", "c"]`: `a` runs fine, `b` raises, `c` (which needs `b`) is
///   dropped. Any cell named `nope` is refused with `bad_request`.
/// - `update` is acknowledged when its first byte is 1, and reported to the test.
/// - `interrupt` drops the connection.
fn script(
    request: ClientMessage,
    updates: &mpsc::UnboundedSender<(u64, Vec<u8>)>,
) -> Option<Vec<ServerMessage>> {
    let replies = match request {
        ClientMessage::Hello(_) => vec![
            ServerMessage::Welcome(Welcome {
                version: 1,
                session: SessionId(1),
                document: "doc".into(),
                user: "ada".into(),
                role: Role::Editor,
                kernel: KernelState::Idle,
                node_version: "fake".into(),
            }),
            ServerMessage::CellOutputs(CellOutputs {
                cell: "a".into(),
                execution_count: Some(1),
                outputs: vec![],
            }),
            // The joining state: `c` is stale from an earlier edit, which is no drop.
            cell("c", CellState::Stale),
        ],
        ClientMessage::RunCells(run) if run.cells.iter().any(|c| c == "nope") => {
            vec![ServerMessage::Error(ErrorReply::for_request(
                ErrorCode::BadRequest,
                Some(run.client_ref),
                "no cell named nope",
            ))]
        }
        ClientMessage::RunCells(run) => {
            let r = run.client_ref;
            vec![
                cell("a", CellState::Queued),
                cell("b", CellState::Queued),
                cell("c", CellState::Queued),
                ServerMessage::Accepted(Accepted {
                    client_ref: r,
                    queued: vec!["a".into(), "b".into(), "c".into()],
                    ..Accepted::default()
                }),
                queued(1, r, "a"),
                cell("a", CellState::Running),
                stdout(1, "hello\n"),
                done(1, RunStatus::Ok),
                cell("a", CellState::Idle),
                queued(2, r, "b"),
                cell("b", CellState::Running),
                ServerMessage::Output(RunOutput {
                    run: RunId(2),
                    output: Output::Error {
                        ename: "ZeroDivisionError".into(),
                        evalue: "division by zero".into(),
                        traceback: vec![],
                    },
                }),
                cell(
                    "b",
                    CellState::Error {
                        message: "ZeroDivisionError".into(),
                    },
                ),
                done(2, RunStatus::Error),
                cell("c", CellState::Stale),
            ]
        }
        ClientMessage::EditCells(edit) => vec![
            ServerMessage::Update(DocUpdate {
                update: vec![9, 9].into(),
            }),
            ServerMessage::Accepted(Accepted {
                client_ref: edit.client_ref,
                stale: vec!["b".into()],
                ..Accepted::default()
            }),
        ],
        ClientMessage::Import(import) => vec![ServerMessage::Accepted(Accepted {
            client_ref: import.client_ref,
            created: vec!["x".into(), "y".into()],
            warnings: vec![format!("read {} bytes", import.ipynb.len())],
            ..Accepted::default()
        })],
        ClientMessage::Export { client_ref } => vec![
            cell("a", CellState::Idle),
            ServerMessage::Exported(Exported {
                client_ref,
                ipynb: "{\"nbformat\":4}".into(),
            }),
        ],
        ClientMessage::Graph { client_ref } => vec![ServerMessage::Graph(GraphView {
            client_ref,
            mode: ExecutionMode::Reactive,
            cells: vec![GraphCell {
                id: "a".into(),
                kind: CellKind::Code,
                state: CellState::Idle,
                defines: vec!["x".into()],
                reads: vec![CellBinding {
                    name: "pd".into(),
                    cell: "imports".into(),
                }],
                summary: "x = pd.DataFrame()".into(),
            }],
        })],
        ClientMessage::SetMode { client_ref, .. } => {
            vec![ServerMessage::Accepted(Accepted {
                client_ref,
                ..Accepted::default()
            })]
        }
        ClientMessage::Update(update) => {
            let bytes = update.update.0.clone();
            let _ = updates.send((update.seq, bytes.clone()));
            if bytes.first() == Some(&1) {
                vec![ServerMessage::Ack(UpdateAck {
                    seq: update.seq,
                    refused: None,
                })]
            } else {
                vec![]
            }
        }
        ClientMessage::Interrupt => return None,
        _ => vec![],
    };
    Some(replies)
}

async fn connect(url: &str, json: bool) -> Client {
    let target = Target::WebSocket {
        url: url.to_owned(),
        json,
    };
    tokio::time::timeout(PATIENCE, Client::connect(&target, "token"))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn answers_are_matched_and_everything_else_waits_in_order() {
    let (url, _) = fake_node().await;
    for json in [false, true] {
        let mut client = connect(&url, json).await;
        let graph = client.graph().await.unwrap();
        assert_eq!(graph.cells[0].reads[0].cell, "imports");
        // What arrived before the answer comes out of `recv`, in order.
        assert!(matches!(
            client.recv().await.unwrap(),
            ServerMessage::CellOutputs(_)
        ));
        assert_eq!(
            client.recv().await.unwrap(),
            cell("c", CellState::Stale),
            "json: {json}"
        );

        let ipynb = client.export_ipynb().await.unwrap();
        assert_eq!(ipynb, "{\"nbformat\":4}");
        assert_eq!(client.recv().await.unwrap(), cell("a", CellState::Idle));

        let edit = client
            .edit_cells(
                vec![CellEdit::SetSource {
                    cell: "a".into(),
                    source: "x = 2".into(),
                }],
                false,
            )
            .await
            .unwrap();
        assert_eq!(edit.stale, vec!["b".to_owned()]);
        let update = client.recv().await.unwrap();
        assert!(matches!(update, ServerMessage::Update(u) if u.update.0 == [9, 9]));

        let imported = client.import_ipynb("{}".into()).await.unwrap();
        assert_eq!(imported.created, vec!["x".to_owned(), "y".to_owned()]);
        assert_eq!(imported.warnings, vec!["read 2 bytes".to_owned()]);
        client.set_mode(ExecutionMode::Lazy).await.unwrap();

        match client.run_cells(vec!["nope".into()], false).await {
            Err(ClientError::Rejected { code, message, .. }) => {
                assert_eq!(code, ErrorCode::BadRequest);
                assert_eq!(message, "no cell named nope");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        client.close().await;
    }
}

#[tokio::test]
async fn following_runs_reports_each_cell_including_a_dropped_one() {
    let (url, _) = fake_node().await;
    let mut client = connect(&url, false).await;
    let accepted = client.run_cells(vec![], false).await.unwrap();
    assert_eq!(accepted.queued, vec!["a", "b", "c"]);
    let mut seen = 0;
    let runs = tokio::time::timeout(
        PATIENCE,
        client.follow_runs(&accepted.queued, |_| seen += 1),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(seen > 10, "observe saw {seen} messages");
    let summary: Vec<_> = runs
        .iter()
        .map(|r| (r.cell.as_str(), r.run, r.status, r.outputs.len()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a", Some(RunId(1)), Some(RunStatus::Ok), 1),
            ("b", Some(RunId(2)), Some(RunStatus::Error), 1),
            ("c", None, None, 0),
        ]
    );
    assert_eq!(runs[0].state, Some(CellState::Idle));
    assert_eq!(runs[2].state, Some(CellState::Stale));
}

#[tokio::test]
async fn unacknowledged_updates_survive_a_dead_connection_and_are_resent() {
    let (url, mut received) = fake_node().await;
    let mut client = connect(&url, false).await;
    let first = client.update(vec![1, 10]).await.unwrap(); // acknowledged
    let second = client.update(vec![0, 20]).await.unwrap(); // never acknowledged
    let third = client.update(vec![0, 30]).await.unwrap();
    assert!(first < second && second < third);
    // Read until the first ack has passed by.
    loop {
        let message = tokio::time::timeout(PATIENCE, client.recv())
            .await
            .unwrap()
            .unwrap();
        if let ServerMessage::Ack(ack) = message {
            assert_eq!(ack.seq, first);
            break;
        }
    }
    assert_eq!(client.outbox().len(), 2);
    for _ in 0..3 {
        received.recv().await.unwrap();
    }

    // The node goes away; the outbox outlives the connection.
    client.send(&ClientMessage::Interrupt).await.unwrap();
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Err(err) = client.recv().await {
                return err;
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(closed, ClientError::Closed { .. }), "{closed:?}");
    let outbox: Outbox = client.into_outbox();
    let pending: Vec<u64> = outbox.pending().map(|(seq, _)| seq).collect();
    assert_eq!(pending, vec![second, third]);

    // A failed reconnect hands the outbox back.
    let nowhere = Target::WebSocket {
        url: "ws://127.0.0.1:1/v1/doc".into(),
        json: false,
    };
    let failed = Client::connect_resuming(&nowhere, "token", outbox)
        .await
        .unwrap_err();
    let outbox = failed.outbox;
    assert_eq!(outbox.len(), 2);

    // Reconnecting resends both with their original seqs and bytes.
    let target = Target::WebSocket {
        url: url.clone(),
        json: false,
    };
    let mut client = Client::connect_resuming(&target, "token", outbox)
        .await
        .unwrap();
    let resent = vec![
        received.recv().await.unwrap(),
        received.recv().await.unwrap(),
    ];
    assert_eq!(resent, vec![(second, vec![0, 20]), (third, vec![0, 30])]);
    assert_eq!(client.outbox().len(), 2, "still pending until acknowledged");
    // New updates continue the numbering.
    let fourth = client.update(vec![1, 40]).await.unwrap();
    assert!(fourth > third);
    client.close().await;
}
