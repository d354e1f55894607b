//! End-to-end tests of a node: real ipykernel, real QUIC and WebSocket connections on loopback.
//!
//! Each test starts its own node (about a second for the kernel) and waits on events, never on
//! sleeps. The Python comes from `AIRLOCK_PYTHON` if set, else the managed environment.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod support;
use support::TestNode;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_client::{Client, ClientError, RunReport, Target, Trust};
use airlock_node::RunningNode;
use airlock_protocol::token::{self, Claims, Role};
use airlock_protocol::{
    ClientMessage, DeathCause, ErrorCode, FrameLimit, KernelStatus, Output, RunStatus,
    ServerMessage, StreamName, VersionRange,
};
use ed25519_dalek::SigningKey;

const DOC: &str = "doc-under-test";
const WAIT: Duration = Duration::from_secs(20);

struct Fixture {
    node: RunningNode,
    key: SigningKey,
    runtime: tempfile::TempDir,
    /// The document store's folder.
    _store: tempfile::TempDir,
}

async fn start_node(epoch: u64, frame_limit: FrameLimit) -> Fixture {
    let store = tempfile::tempdir().unwrap();
    let started = TestNode::start_with(DOC, epoch, store.path(), |config| {
        config.frame_limit = frame_limit;
    })
    .await;
    Fixture {
        node: started.node,
        key: started.key,
        runtime: started.runtime,
        _store: store,
    }
}

impl Fixture {
    fn token(&self, doc: &str, role: Role, epoch: u64, exp: u64) -> String {
        token::sign(
            &Claims {
                doc: doc.into(),
                user: format!("{role}-user"),
                role,
                epoch,
                exp,
            },
            &self.key,
        )
    }

    fn editor_token(&self) -> String {
        self.token(DOC, Role::Editor, 0, now() + 600)
    }

    fn quic(&self) -> Target {
        Target::Quic {
            addr: self.node.quic_addr.unwrap(),
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(self.node.fingerprint.clone()),
        }
    }

    fn ws(&self, json: bool) -> Target {
        Target::WebSocket {
            url: format!("ws://{}/v1/doc", self.node.ws_addr.unwrap()),
            json,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn run(client: &mut Client, code: &str) -> RunReport {
    tokio::time::timeout(WAIT, client.run(code, |_| {}))
        .await
        .expect("run finished in time")
        .expect("run accepted")
}

/// The next message matching `pick` within [`WAIT`], skipping others.
async fn next_matching<T>(client: &mut Client, pick: impl FnMut(ServerMessage) -> Option<T>) -> T {
    support::next_matching(client, WAIT, pick).await
}

fn text_plain(output: &Output) -> Option<&str> {
    match output {
        Output::ExecuteResult { data, .. } | Output::DisplayData { data, .. } => {
            data.get("text/plain")?.as_str()
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_reach_every_client_over_both_transports() {
    let fx = start_node(0, FrameLimit::default()).await;
    let mut quic = Client::connect(&fx.quic(), &fx.editor_token())
        .await
        .unwrap();
    let mut ws = Client::connect(&fx.ws(false), &fx.editor_token())
        .await
        .unwrap();
    let mut browser = Client::connect(&fx.ws(true), &fx.editor_token())
        .await
        .unwrap();
    assert_eq!(quic.welcome().document, DOC);
    assert_eq!(quic.welcome().role, Role::Editor);
    assert_eq!(quic.welcome().version, airlock_protocol::PROTOCOL_VERSION);
    assert_ne!(quic.welcome().session, ws.welcome().session);

    // Streams on both channels, a rich display and a result, run from the QUIC client.
    let code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\n\
                from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))\n40 + 2";
    let report = run(&mut quic, code).await;
    assert_eq!(report.done.status, RunStatus::Ok);
    let streams: Vec<_> = report
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Stream { name, text } => Some((*name, text.as_str())),
            _ => None,
        })
        .collect();
    assert!(
        streams.contains(&(StreamName::Stdout, "out\n")),
        "{streams:?}"
    );
    assert!(
        streams.contains(&(StreamName::Stderr, "err\n")),
        "{streams:?}"
    );
    let display = report
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::DisplayData { data, .. } => Some(data),
            _ => None,
        })
        .expect("a display_data output");
    assert_eq!(display["text/html"], "<b>hi</b>");
    let result = report.outputs.last().unwrap();
    assert!(matches!(result, Output::ExecuteResult { .. }));
    assert_eq!(text_plain(result), Some("42"));

    // The other two clients saw the same outputs, in the same order, for the same run.
    for other in [&mut ws, &mut browser] {
        let mut seen = Vec::new();
        next_matching(other, |m| match m {
            ServerMessage::Output(out) if out.run == report.run => {
                seen.push(out.output);
                None
            }
            ServerMessage::Done(done) if done.run == report.run => Some(done),
            _ => None,
        })
        .await;
        assert_eq!(seen, report.outputs);
    }

    // An error from the browser client: a traceback and an error status, seen by QUIC too.
    let report = run(&mut browser, "1/0").await;
    assert_eq!(report.done.status, RunStatus::Error);
    match &report.outputs[..] {
        [
            Output::Error {
                ename, traceback, ..
            },
        ] => {
            assert_eq!(ename, "ZeroDivisionError");
            assert!(!traceback.is_empty());
        }
        other => panic!("expected one error output, got {other:?}"),
    }
    let status = next_matching(&mut quic, |m| match m {
        ServerMessage::Done(done) if done.run == report.run => Some(done.status),
        _ => None,
    })
    .await;
    assert_eq!(status, RunStatus::Error);
    fx.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_restart_and_a_killed_kernel() {
    let fx = start_node(0, FrameLimit::default()).await;
    let mut alice = Client::connect(&fx.quic(), &fx.editor_token())
        .await
        .unwrap();
    let mut bob = Client::connect(&fx.ws(false), &fx.editor_token())
        .await
        .unwrap();

    // A busy loop stops within a second of the interrupt, and the kernel stays usable.
    run(&mut alice, "x = 1").await;
    alice
        .execute("print('looping', flush=True)\nwhile True:\n    pass")
        .await
        .unwrap();
    // The loop has started once its line is out.
    next_matching(&mut bob, |m| match m {
        ServerMessage::Output(out) => {
            matches!(out.output, Output::Stream { ref text, .. } if text == "looping\n")
                .then_some(())
        }
        _ => None,
    })
    .await;
    let asked = Instant::now();
    bob.send(&ClientMessage::Interrupt).await.unwrap();
    let status = next_matching(&mut alice, |m| match m {
        ServerMessage::Done(done) => Some(done.status),
        _ => None,
    })
    .await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "interrupt took {took:?}");
    assert_ne!(status, RunStatus::Ok);
    let report = run(&mut alice, "x + 1").await;
    assert_eq!(text_plain(report.outputs.last().unwrap()), Some("2"));

    // A restart loses the kernel's state.
    alice.send(&ClientMessage::Restart).await.unwrap();
    next_matching(&mut bob, |m| {
        matches!(m, ServerMessage::Kernel(KernelStatus::Restarting)).then_some(())
    })
    .await;
    next_matching(&mut bob, |m| {
        matches!(m, ServerMessage::Kernel(KernelStatus::Idle)).then_some(())
    })
    .await;
    let report = run(&mut alice, "x").await;
    assert_eq!(report.done.status, RunStatus::Error);
    assert!(matches!(&report.outputs[0], Output::Error { ename, .. } if ename == "NameError"));

    // SIGKILL the kernel: every client is told why within a second, the node stays up.
    let report = run(&mut alice, "import os; os.getpid()").await;
    let pid: i32 = text_plain(report.outputs.last().unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for client in [&mut alice, &mut bob] {
        let cause = next_matching(client, |m| match m {
            ServerMessage::Kernel(KernelStatus::Dead { cause }) => Some(cause),
            _ => None,
        })
        .await;
        assert_eq!(
            cause,
            DeathCause::Signaled {
                signal: 9,
                name: "SIGKILL".into()
            }
        );
    }
    let noticed = killed.elapsed();
    assert!(
        noticed < Duration::from_secs(1),
        "death noticed after {noticed:?}"
    );
    match alice.run("1", |_| {}).await {
        Err(ClientError::Refused(reply)) => {
            assert_eq!(reply.code, ErrorCode::KernelUnavailable);
            assert!(reply.message.contains("SIGKILL"), "{}", reply.message);
        }
        other => panic!("expected kernel_unavailable, got {other:?}"),
    }
    // A newcomer can still connect, and a restart brings a working kernel.
    let mut carol = Client::connect(&fx.quic(), &fx.editor_token())
        .await
        .unwrap();
    assert_eq!(carol.welcome().kernel, airlock_protocol::KernelState::Dead);
    carol.send(&ClientMessage::Restart).await.unwrap();
    next_matching(&mut carol, |m| {
        matches!(m, ServerMessage::Kernel(KernelStatus::Idle)).then_some(())
    })
    .await;
    let report = run(&mut carol, "'back'").await;
    assert_eq!(text_plain(report.outputs.last().unwrap()), Some("'back'"));
    fx.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_and_explained() {
    let fx = start_node(5, FrameLimit::default()).await;
    let other_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let forged = token::sign(
        &Claims {
            doc: DOC.into(),
            user: "mallory".into(),
            role: Role::Owner,
            epoch: 5,
            exp: now() + 600,
        },
        &other_key,
    );
    let cases = [
        (forged, ErrorCode::TokenInvalid, "signature"),
        (
            fx.token(DOC, Role::Editor, 5, now() - 10),
            ErrorCode::TokenExpired,
            "expired",
        ),
        (
            fx.token("another-doc", Role::Editor, 5, now() + 600),
            ErrorCode::WrongDocument,
            "another-doc",
        ),
        (
            fx.token(DOC, Role::Editor, 4, now() + 600),
            ErrorCode::StaleEpoch,
            "epoch 4",
        ),
        (
            "not a token".to_owned(),
            ErrorCode::TokenInvalid,
            "malformed",
        ),
    ];
    for (token, code, words) in cases {
        for target in [fx.quic(), fx.ws(false), fx.ws(true)] {
            match Client::connect(&target, &token).await {
                Err(ClientError::Refused(reply)) => {
                    assert_eq!(reply.code, code, "{target:?}");
                    assert!(reply.fatal);
                    assert!(
                        reply.message.contains(words),
                        "{:?} lacks {words:?}",
                        reply.message
                    );
                }
                other => panic!("{target:?} with {code:?}: expected a refusal, got {other:?}"),
            }
        }
    }

    // A viewer is welcome to watch, refused when it tries to run code, and stays connected.
    let mut viewer = Client::connect(&fx.quic(), &fx.token(DOC, Role::Viewer, 5, now() + 600))
        .await
        .unwrap();
    assert_eq!(viewer.welcome().role, Role::Viewer);
    for request in ["print('x')"] {
        match viewer.run(request, |_| {}).await {
            Err(ClientError::Refused(reply)) => {
                assert_eq!(reply.code, ErrorCode::Forbidden);
                assert!(!reply.fatal);
                assert!(reply.message.contains("viewer"));
            }
            other => panic!("expected forbidden, got {other:?}"),
        }
    }
    viewer.send(&ClientMessage::Interrupt).await.unwrap();
    let reply = next_matching(&mut viewer, |m| match m {
        ServerMessage::Error(reply) => Some(reply),
        _ => None,
    })
    .await;
    assert_eq!(reply.code, ErrorCode::Forbidden);
    viewer
        .send(&ClientMessage::Ping { nonce: 9 })
        .await
        .unwrap();
    next_matching(&mut viewer, |m| {
        matches!(m, ServerMessage::Pong { nonce: 9 }).then_some(())
    })
    .await;

    // A hello from the future, and a request before any hello.
    let mut raw = raw_ws(&fx).await;
    let hello = ClientMessage::Hello(airlock_protocol::Hello {
        versions: VersionRange { min: 99, max: 100 },
        token: fx.token(DOC, Role::Editor, 5, now() + 600),
        client: "future".into(),
    });
    raw.send_raw(&airlock_protocol::codec::encode_frame(&hello, FrameLimit::default()).unwrap())
        .await
        .unwrap();
    let reply = expect_fatal(&mut raw).await;
    assert_eq!(reply, ErrorCode::VersionUnsupported);
    fx.node.shutdown().await;
}

/// A WebSocket connection that has not said hello, for sending bytes of our choosing.
async fn raw_ws(fx: &Fixture) -> Client {
    airlock_client::Client::connect_without_hello(&fx.ws(false))
        .await
        .unwrap()
}

async fn expect_fatal(client: &mut Client) -> ErrorCode {
    let code = next_matching(client, |m| match m {
        ServerMessage::Error(reply) if reply.fatal => Some(reply.code),
        _ => None,
    })
    .await;
    // After a fatal error the node closes the connection.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(err) = client.recv().await {
                return err;
            }
        }
    })
    .await
    .expect("connection closed");
    assert!(matches!(closed, ClientError::Closed { .. }), "{closed:?}");
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_close_only_that_connection() {
    let limit = FrameLimit::new(64 * 1024);
    let fx = start_node(0, limit).await;
    let mut healthy = Client::connect(&fx.quic(), &fx.editor_token())
        .await
        .unwrap();

    // Garbage after a good hello, over QUIC and both WebSocket forms.
    for target in [fx.quic(), fx.ws(false)] {
        let mut client = Client::connect(&target, &fx.editor_token()).await.unwrap();
        client
            .send_raw(&[0, 0, 0, 3, 0xc1, 0xff, 0x00])
            .await
            .unwrap();
        assert_eq!(
            expect_fatal(&mut client).await,
            ErrorCode::BadFrame,
            "{target:?}"
        );
    }
    // A frame header announcing more than the limit is refused before its payload arrives.
    let mut client = Client::connect(&fx.quic(), &fx.editor_token())
        .await
        .unwrap();
    client
        .send_raw(&(64 * 1024 + 1u32).to_be_bytes())
        .await
        .unwrap();
    assert_eq!(expect_fatal(&mut client).await, ErrorCode::FrameTooLarge);
    // An oversized WebSocket message is refused by the WebSocket layer's own limit.
    let mut client = Client::connect(&fx.ws(false), &fx.editor_token())
        .await
        .unwrap();
    let huge = vec![0u8; 200 * 1024];
    client.send_raw(&huge).await.unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match client.recv().await {
                Ok(ServerMessage::Error(reply)) => break Ok(reply.code),
                Ok(_) => continue,
                Err(err) => break Err(err),
            }
        }
    })
    .await
    .unwrap();
    match closed {
        Ok(code) => assert_eq!(code, ErrorCode::FrameTooLarge),
        Err(ClientError::Closed { reason }) => assert!(reason.contains("1009"), "{reason}"),
        Err(other) => panic!("unexpected {other:?}"),
    }
    // Garbage before any hello.
    let mut raw = raw_ws(&fx).await;
    raw.send_raw(b"\x00\x00\x00\x04junk").await.unwrap();
    assert_eq!(expect_fatal(&mut raw).await, ErrorCode::BadFrame);
    // Text that is not JSON, and an HTTP request line read as a frame header (1.2 GB).
    let mut raw = airlock_client::Client::connect_without_hello(&fx.ws(true))
        .await
        .unwrap();
    raw.send(&ClientMessage::Ping { nonce: 1 }).await.unwrap();
    assert_eq!(expect_fatal(&mut raw).await, ErrorCode::HelloExpected);
    let mut raw = raw_ws(&fx).await;
    raw.send_raw(b"GET / HTTP/1.1").await.unwrap();
    assert_eq!(expect_fatal(&mut raw).await, ErrorCode::FrameTooLarge);

    // The node kept serving the healthy client throughout.
    let report = run(&mut healthy, "'alive'").await;
    assert_eq!(text_plain(report.outputs.last().unwrap()), Some("'alive'"));
    fx.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_process_and_no_socket_file() {
    let fx = start_node(0, FrameLimit::default()).await;
    let pid = fx.node.kernel_pid.expect("kernel pid");
    let mut client = Client::connect(&fx.quic(), &fx.editor_token())
        .await
        .unwrap();
    run(&mut client, "x = 1").await;
    assert!(
        std::fs::read_dir(fx.runtime.path()).unwrap().count() > 0,
        "kernel runtime files exist while running"
    );
    fx.node.shutdown().await;
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "kernel {pid} still running"
    );
    let left: Vec<_> = std::fs::read_dir(fx.runtime.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The client learns the node went away.
    let err = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(err) = client.recv().await {
                return err;
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(err, ClientError::Closed { .. }));
}
