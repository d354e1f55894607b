//! The kernel as attacker, against a real node in this process: cells that go after the node
//! through what the kernel sends it (its ZeroMQ connections, its outputs, its own stderr), each
//! a repro from the security review (`shared/research/security-review.md`, findings 1, 3, 4).
//! The node must stay up, say in the cell what happened, and keep every client connected.
//!
//! Kernels here are unconfined (the jail has its own suite): what is tested is the node's side
//! of each channel. Each test is its own process under nextest, so the node's memory can be
//! read from `/proc/self/status`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use airlock_client::Client;
use airlock_protocol::{
    CellEdit, CellKind, ClientMessage, DeathCause, KernelStatus, Output, ServerMessage,
};
use support::{TestNode, next_matching};

const PATIENCE: Duration = Duration::from_secs(60);

/// These kernels work hard on a machine that runs other tests too: a heartbeat may be late
/// without the kernel being dead, which is not what these tests are about.
fn patient(config: &mut airlock_node::NodeConfig) {
    config.kernel.heartbeat_timeout = Duration::from_secs(10);
}

/// The node process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

fn text(outputs: &[Output]) -> String {
    Output::text_of(outputs)
}

/// Writes `payload` into the kernel's own end of the node's shell connection: the review's
/// repro for finding 1.
fn shell_injection(payload_hex: &str) -> String {
    format!(
        r#"
import os, socket, json
from ipykernel.connect import get_connection_file
info = json.load(open(get_connection_file()))
path = f"{{info['ip']}}-{{info['shell_port']}}"
hit = 0
for n in os.listdir('/proc/self/fd'):
    try:
        s = socket.socket(fileno=os.dup(int(n)))
    except OSError:
        continue
    try:
        if s.family == socket.AF_UNIX and s.getsockname() == path and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            os.write(int(n), bytes.fromhex("{payload_hex}"))
            hit += 1
    finally:
        s.close()
print("wrote into", hit, "connection(s)")
import time; time.sleep(5)
"#
    )
}

/// Waits for the kernel to be reported dead, and returns why.
async fn death(client: &mut Client) -> DeathCause {
    next_matching(client, PATIENCE, |message| match message {
        ServerMessage::Kernel(KernelStatus::Dead { cause }) => Some(cause),
        _ => None,
    })
    .await
}

/// Restarts the kernel and checks it runs code again.
async fn restart_and_run(client: &mut Client) {
    client.send(&ClientMessage::Restart).await.unwrap();
    // Earlier statuses may still wait in this client's queue: the fresh kernel's idle is the
    // first one after `restarting`.
    next_matching(client, PATIENCE, |message| {
        matches!(message, ServerMessage::Kernel(KernelStatus::Restarting)).then_some(())
    })
    .await;
    next_matching(client, PATIENCE, |message| {
        matches!(message, ServerMessage::Kernel(KernelStatus::Idle)).then_some(())
    })
    .await;
    let report = client.run("print(6 * 7)", |_| {}).await.unwrap();
    assert_eq!(text(&report.outputs), "42\n");
}

#[tokio::test]
async fn a_zmtp_header_declaring_2_pow_62_bytes_stops_the_kernel_not_the_node() {
    let store = tempfile::tempdir().unwrap();
    let node = TestNode::start_with("zmtp", 1, store.path(), patient).await;
    let mut attacker = node.editor(0).await;
    let mut watcher = node.editor(1).await;

    // A long frame (flags 0x02) of 2^62 bytes: upstream zeromq reserved it and aborted.
    let mut header = vec![0x02u8];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    attacker
        .execute(&shell_injection(&hex::encode(&header)))
        .await
        .unwrap();
    let cause = death(&mut watcher).await;
    match &cause {
        DeathCause::ChannelViolated { channel, reason } => {
            assert_eq!(channel, "shell");
            assert!(reason.contains("frame of 4611686018427387904"), "{reason}");
        }
        other => panic!("expected a channel violation, got {other}"),
    }
    assert!(
        cause
            .to_string()
            .contains("broke the limits of its shell channel")
    );

    // Both clients are still connected, and the node starts a fresh kernel on request.
    watcher
        .send(&ClientMessage::Ping { nonce: 7 })
        .await
        .unwrap();
    next_matching(&mut watcher, PATIENCE, |message| {
        matches!(message, ServerMessage::Pong { nonce: 7 }).then_some(())
    })
    .await;
    restart_and_run(&mut attacker).await;

    // A declared 8 GiB (representable, but over the limit) is stopped the same way, before the
    // node reserves anything for it.
    let mut header = vec![0x02u8];
    header.extend_from_slice(&(8u64 << 30).to_be_bytes());
    let before = rss();
    attacker
        .execute(&shell_injection(&hex::encode(&header)))
        .await
        .unwrap();
    assert!(matches!(
        death(&mut watcher).await,
        DeathCause::ChannelViolated { .. }
    ));
    assert!(
        rss() < before + (256 << 20),
        "the node reserved the declared length"
    );
    restart_and_run(&mut attacker).await;
}

#[tokio::test]
async fn ten_megabytes_of_prints_leave_the_document_joinable_across_restarts() {
    let store = tempfile::tempdir().unwrap();
    let node = TestNode::start_with("prints", 1, store.path(), patient).await;
    let mut writer = node.editor(0).await;
    let cell = "flood".to_owned();
    let accepted = writer
        .edit_cells(
            vec![CellEdit::Insert {
                index: 0,
                cell: Some(cell.clone()),
                kind: CellKind::Code,
                source: "for i in range(100_000): print('x' * 100)".into(),
            }],
            true,
        )
        .await
        .unwrap();
    let runs = writer.follow_accepted(&accepted, |_| {}).await.unwrap();
    assert_eq!(runs.len(), 1);

    // A client that joins now gets the cell's kept outputs in one message that fits a frame,
    // with the note that says what was not kept, and stays connected.
    let check_join = |mut joiner: Client| async move {
        let outputs = next_matching(&mut joiner, PATIENCE, |message| match message {
            ServerMessage::CellOutputs(outputs) if outputs.cell == "flood" => Some(outputs),
            _ => None,
        })
        .await;
        let size = serde_json::to_vec(&outputs.outputs).unwrap().len();
        assert!(
            size < airlock_protocol::codec::DEFAULT_MAX_FRAME_LEN,
            "{size}"
        );
        let shown = text(&outputs.outputs);
        assert!(shown.starts_with(&"x".repeat(100)));
        // What was not kept is said either way: chunks cut to the per-output limit as they
        // arrive ("not shown"), or chunks past the per-cell limit dropped ("not kept"). Which
        // one depends on how ipykernel batched the prints, and that depends on the machine.
        let notes: Vec<&str> = shown
            .lines()
            .filter(|l| l.starts_with("[airlock]"))
            .collect();
        assert!(
            notes
                .iter()
                .any(|note| note.contains("not kept") || note.contains("not shown")),
            "{} bytes shown in {} outputs; notes: {notes:?}",
            shown.len(),
            outputs.outputs.len()
        );
        assert!(shown.len() <= 4 << 20, "a cell keeps at most 4 MiB");
        let report = joiner.run("print('still here')", |_| {}).await.unwrap();
        assert_eq!(text(&report.outputs), "still here\n");
    };
    check_join(node.editor(1).await).await;
    check_join(node.editor(3).await).await;

    // The same after the node is gone and a new owner loads the document from the store.
    drop(writer);
    node.node.shutdown().await;
    let node = TestNode::start_with("prints", 2, store.path(), patient).await;
    check_join(node.editor(2).await).await;
}

#[tokio::test]
async fn one_output_over_the_frame_limit_is_cut_and_no_session_ends() {
    let store = tempfile::tempdir().unwrap();
    let node = TestNode::start_with("big-output", 1, store.path(), |config| {
        patient(config);
        config.frame_limit = airlock_protocol::FrameLimit::new(1 << 20);
    })
    .await;
    let mut client = node.editor(1).await;
    let mut other = node.editor(0).await;
    let report = client
        .run(
            "print('y' * 3_000_000); display({'text/plain': 'z' * 3_000_000}, raw=True)",
            |_| {},
        )
        .await
        .unwrap();
    let shown = text(&report.outputs);
    assert!(
        shown.contains("[airlock] output truncated"),
        "{}",
        &shown[..200]
    );
    assert!(shown.contains("cut to the limit"));
    assert!(shown.len() < 2 << 20);
    // The other client saw the same run and is still connected.
    other.send(&ClientMessage::Ping { nonce: 1 }).await.unwrap();
    next_matching(&mut other, PATIENCE, |message| {
        matches!(message, ServerMessage::Pong { nonce: 1 }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn stderr_without_newlines_does_not_grow_the_node() {
    let store = tempfile::tempdir().unwrap();
    let node = TestNode::start_with("stderr", 1, store.path(), patient).await;
    let mut client = node.editor(0).await;
    // Warm up, so the first run's own allocations are not counted.
    client.run("print(1)", |_| {}).await.unwrap();
    let before = rss();
    // 96 MiB without a newline into the node's pipe (ipykernel's fd 2), from a thread so the
    // cell ends while the writes wait on a pipe the node now reads slowly.
    let report = client
        .run(
            r#"
import os, sys, threading, time
fd = sys.stderr.fileno()
def flood():
    chunk = b'A' * (1 << 20)
    for _ in range(96):
        os.write(fd, chunk)
threading.Thread(target=flood, daemon=True).start()
time.sleep(4)
print('flooding')
"#,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(text(&report.outputs), "flooding\n");
    let grown = rss().saturating_sub(before);
    assert!(grown < 24 << 20, "the node grew by {grown} bytes");
    // The node still answers at once.
    let report = client.run("print('ok')", |_| {}).await.unwrap();
    assert_eq!(text(&report.outputs), "ok\n");
}

#[tokio::test]
async fn a_display_flood_is_cut_and_shown_within_the_live_budget() {
    let store = tempfile::tempdir().unwrap();
    // A small live budget, so a short flood is enough to pass it.
    let live = airlock_node::document::outputs::OutputLimits {
        live_burst: 4 << 20,
        live_rate: 256 << 10,
        ..Default::default()
    };
    let node = TestNode::start_with("displays", 1, store.path(), |config| {
        patient(config);
        config.kernel.output_limits = live;
    })
    .await;
    let mut client = node.editor(0).await;
    let mut watcher = node.editor(2).await;
    let before = rss();
    // The review's loop of 5 MB displays (here 12 of them), each cut to the 2 MiB per-output
    // limit and shown within the live budget.
    let started = std::time::Instant::now();
    let report = client
        .run(
            "for i in range(12): display({'text/plain': 'x' * 5_000_000}, raw=True)",
            |_| {},
        )
        .await
        .unwrap();
    let budget = live.live_burst as u64
        + (started.elapsed().as_secs() + 1) * live.live_rate as u64
        + live.per_output as u64;
    let sizes: Vec<u64> = report
        .outputs
        .iter()
        .map(|o| serde_json::to_vec(o).unwrap().len() as u64)
        .collect();
    assert!(sizes.iter().all(|&size| size <= live.per_output as u64));
    let shown: u64 = sizes.iter().sum();
    assert!(
        shown <= budget,
        "shown live: {shown} bytes, budget {budget}"
    );
    assert!(text(&report.outputs).contains("not shown live"));
    let grown = rss().saturating_sub(before);
    assert!(grown < 160 << 20, "the node grew by {grown} bytes");
    watcher
        .send(&ClientMessage::Ping { nonce: 2 })
        .await
        .unwrap();
    next_matching(&mut watcher, PATIENCE, |message| {
        matches!(message, ServerMessage::Pong { nonce: 2 }).then_some(())
    })
    .await;
}
