//! Collaboration benchmark (DESIGN.md §8): edit fan-out latency to 50 clients, updates applied
//! per second, and the time to open a 1 MB notebook from the store.
//!
//! A real node (in this process: endpoints, document actor, group commit to a local folder with
//! fsync, and an idle ipykernel) serves one document. Fifty clients connect, half over QUIC and
//! half over WebSocket. One of them edits a cell; each edit is a real Yjs update made by a
//! replica of the notebook in the bench. Fan-out latency is the time from sending an edit to its
//! arrival at each of the 49 other clients. Throughput is the rate of edits the node acknowledged
//! as durable while the 49 others listened. Opening is [`actor::load`] on a store folder holding
//! a 1 MB notebook as an edit log (claim, read, rebuild the CRDT, analyse every cell).
//!
//! No Jupyter peer is measured here: Jupyter's collaboration (jupyter-collaboration) is not
//! installed on these machines, so the figures stand against the targets only.
//!
//! `cargo bench -p airlock-node --bench collab`; `AIRLOCK_BENCH_EDITS` sets the number of timed
//! edits (default 300).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_client::{Client, Target, Trust};
use airlock_node::collab::{CellKind, Notebook};
use airlock_node::document::actor;
use airlock_node::kernel::{KernelConfig, Progress, PythonSource, ensure_python};
use airlock_node::store::{DocumentId, DocumentStore, Epoch, ObjectDocumentStore};
use airlock_node::tls::TlsSource;
use airlock_node::{NodeConfig, RunningNode};
use airlock_protocol::token::{self, Claims, Role};
use airlock_protocol::{ClientMessage, ClientUpdate, FrameLimit, ServerMessage};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

const DOC: &str = "bench-collab";
const CLIENTS: usize = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    run().await
}

async fn run() -> anyhow::Result<()> {
    let edits: usize = std::env::var("AIRLOCK_BENCH_EDITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let python = match std::env::var_os("AIRLOCK_PYTHON") {
        Some(python) => python.into(),
        None => ensure_python(&PythonSource::default_managed()?, Progress::Auto).await?,
    };
    let scratch = tempfile::tempdir()?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    std::fs::create_dir_all(scratch.path().join("runtime"))?;
    let node = airlock_node::start(NodeConfig {
        document: DOC.into(),
        epoch: 1,
        token_key: key.verifying_key(),
        quic_listen: Some(loopback),
        ws_listen: Some(loopback),
        tls: TlsSource::SelfSigned {
            names: vec!["localhost".into()],
        },
        kernel: KernelConfig::new(python, scratch.path().join("runtime")),
        frame_limit: FrameLimit::default(),
        store: scratch.path().join("store").display().to_string(),
        idle_timeout: None,
        tenant: "default".to_owned(),
    })
    .await?;
    let token = token::sign(
        &Claims {
            doc: DOC.into(),
            user: "bench".into(),
            role: Role::Editor,
            epoch: 1,
            exp: unix_now() + 3600,
        },
        &key,
    );

    eprintln!("connecting {CLIENTS} clients (half QUIC, half WebSocket)");
    let mut writer = Client::connect(&target(&node, 0), &token).await?;
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut listeners = Vec::new();
    for i in 1..CLIENTS {
        let mut client = Client::connect(&target(&node, i), &token).await?;
        let tx = arrivals_tx.clone();
        listeners.push(tokio::spawn(async move {
            while let Ok(message) = client.recv().await {
                if matches!(message, ServerMessage::Update(_)) {
                    let _ = tx.send((i, Instant::now()));
                }
            }
        }));
    }

    // The writer's replica makes the cell everyone edits.
    let replica = Notebook::with_client_id(7);
    let mut seq = 0;
    let first = replica.insert_cell(0, "shared", CellKind::Code, "x = 0\n")?;
    send_update(&mut writer, &mut seq, first).await?;
    wait_acks(&mut writer, seq).await?;
    drain(&mut arrivals, CLIENTS - 1, Duration::from_secs(10)).await;

    // Fan-out: one edit at a time, each waited for at every other client.
    eprintln!("timing {edits} edits fanned out to {} clients", CLIENTS - 1);
    let mut fanout = Vec::with_capacity(edits * (CLIENTS - 1));
    let mut ack_latency = Vec::with_capacity(edits);
    let mut source = String::from("x = 0\n");
    for i in 0..edits {
        source.push(char::from(b'a' + (i % 26) as u8));
        let update = replica.set_source("shared", &source)?;
        let sent = Instant::now();
        send_update(&mut writer, &mut seq, update).await?;
        let acked = wait_acks(&mut writer, seq).await?;
        ack_latency.push(acked - sent);
        for (_, at) in drain(&mut arrivals, CLIENTS - 1, Duration::from_secs(10)).await {
            fanout.push(at.saturating_duration_since(sent));
        }
    }
    let fanout = Samples::new(fanout);
    let ack_latency = Samples::new(ack_latency);

    // Throughput: a burst of edits, then every acknowledgement.
    let burst = edits * 10;
    eprintln!("timing a burst of {burst} edits until all are acknowledged as durable");
    let started = Instant::now();
    for i in 0..burst {
        source.push(char::from(b'a' + (i % 26) as u8));
        let update = replica.set_source("shared", &source)?;
        send_update(&mut writer, &mut seq, update).await?;
    }
    wait_acks(&mut writer, seq).await?;
    let burst_secs = started.elapsed().as_secs_f64();
    let throughput = burst as f64 / burst_secs;
    drain(
        &mut arrivals,
        burst * (CLIENTS - 1),
        Duration::from_secs(60),
    )
    .await;

    writer.close().await;
    for listener in listeners {
        listener.abort();
    }
    node.shutdown().await;

    // Opening a 1 MB notebook from its store.
    eprintln!("timing opens of a 1 MB notebook from a store folder");
    let open = measure_open(scratch.path()).await?;

    println!();
    println!("collaboration, {CLIENTS} clients on one document (QUIC and WebSocket, half each)");
    println!("                                                     p50        p99");
    println!(
        "  edit fan-out to {} clients                     {:>8}   {:>8}   (target p99 <= 10 ms: {})",
        CLIENTS - 1,
        ms(fanout.p(50.0)),
        ms(fanout.p(99.0)),
        verdict(fanout.p(99.0) <= Duration::from_millis(10)),
    );
    println!(
        "  edit -> durable ack to its author                {:>8}   {:>8}",
        ms(ack_latency.p(50.0)),
        ms(ack_latency.p(99.0)),
    );
    println!(
        "  updates applied and acknowledged as durable: {throughput:.0}/s ({burst} in {burst_secs:.2} s, fsync'd group commits)"
    );
    println!(
        "  open a {:.2} MB notebook from the store ({} cells, {} logged updates): p50 {}, p99 {} (n={}); after compaction: p50 {}",
        open.bytes as f64 / 1e6,
        open.cells,
        open.updates,
        ms(open.from_log.p(50.0)),
        ms(open.from_log.p(99.0)),
        open.from_log.len(),
        ms(open.from_snapshot.p(50.0)),
    );
    println!("  peer: none measured (Jupyter's collaboration server is not installed here)");
    Ok(())
}

fn target(node: &RunningNode, i: usize) -> Target {
    if i.is_multiple_of(2) {
        Target::Quic {
            addr: node.quic_addr.unwrap(),
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(node.fingerprint.clone()),
        }
    } else {
        Target::WebSocket {
            url: format!(
                "ws://{}{}",
                node.ws_addr.unwrap(),
                airlock_node::websocket::PATH
            ),
            json: false,
        }
    }
}

async fn send_update(client: &mut Client, seq: &mut u64, update: Vec<u8>) -> anyhow::Result<()> {
    *seq += 1;
    client
        .send(&ClientMessage::Update(ClientUpdate {
            seq: *seq,
            update: update.into(),
        }))
        .await?;
    Ok(())
}

/// Waits for the ack of `seq` (acks of earlier seqs pass by); returns when it arrived.
async fn wait_acks(client: &mut Client, seq: u64) -> anyhow::Result<Instant> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), client.recv()).await?? {
            ServerMessage::Ack(ack) if ack.seq >= seq => return Ok(Instant::now()),
            ServerMessage::Error(err) => anyhow::bail!("node refused an edit: {}", err.message),
            _ => {}
        }
    }
}

async fn drain(
    arrivals: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
    count: usize,
    patience: Duration,
) -> Vec<(usize, Instant)> {
    let mut got = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + patience;
    while got.len() < count {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some(arrival)) => got.push(arrival),
            _ => {
                eprintln!("warning: only {} of {count} arrivals came", got.len());
                break;
            }
        }
    }
    got
}

struct Opened {
    bytes: usize,
    cells: usize,
    updates: usize,
    from_log: Samples,
    from_snapshot: Samples,
}

/// Writes a 1 MB notebook as a log of edits (one insert per cell, then typing in each), then
/// opens it repeatedly, first from the log and then after compacting it into a snapshot.
async fn measure_open(scratch: &std::path::Path) -> anyhow::Result<Opened> {
    let store = ObjectDocumentStore::local(scratch.join("open-store"))?;
    let doc = DocumentId::new("one-megabyte")?;
    store.claim(&doc, Epoch(1)).await?;
    let replica = Notebook::with_client_id(11);
    let cells = 420;
    let mut updates = Vec::new();
    let mut bytes = 0;
    for c in 0..cells {
        let id = format!("cell-{c}");
        let mut source = format!("v{c} = v{} + 1 if {c} else 0\n", c.max(1) - 1);
        updates.push(Bytes::from(replica.insert_cell(
            c,
            &id,
            CellKind::Code,
            &source,
        )?));
        // Typing the rest of the cell: a comment line per edit, ~2.5 KB per cell.
        for line in 0..25 {
            source.push_str(&format!(
                "# line {line:02} of cell {c:03}: {}\n",
                "x".repeat(70)
            ));
            updates.push(Bytes::from(replica.set_source(&id, &source)?));
        }
        bytes += source.len();
    }
    let logged = updates.len();
    for batch in updates.chunks(500) {
        store.append(&doc, Epoch(1), batch.to_vec()).await?;
    }
    let mut from_log = Vec::new();
    let mut epoch = 2;
    for _ in 0..10 {
        let store = ObjectDocumentStore::local(scratch.join("open-store"))?;
        let started = Instant::now();
        let loaded = actor::load(&store, doc.clone(), epoch).await?;
        from_log.push(started.elapsed());
        assert_eq!(loaded.notebook.len(), cells);
        epoch += 1;
    }
    // Compact, as a node does every 1,000 appends and at shutdown.
    let store = ObjectDocumentStore::local(scratch.join("open-store"))?;
    let loaded_log = store.load(&doc).await.ok();
    store.claim(&doc, Epoch(epoch)).await?;
    let _ = store.load(&doc).await?;
    if let Some(loaded) = loaded_log {
        store
            .compact(
                &doc,
                Epoch(epoch),
                Bytes::from(replica.snapshot()),
                loaded.seq,
            )
            .await?;
    }
    epoch += 1;
    let mut from_snapshot = Vec::new();
    for _ in 0..10 {
        let store = Arc::new(ObjectDocumentStore::local(scratch.join("open-store"))?);
        let started = Instant::now();
        let loaded = actor::load(&store, doc.clone(), epoch).await?;
        from_snapshot.push(started.elapsed());
        assert_eq!(loaded.notebook.len(), cells);
        epoch += 1;
    }
    Ok(Opened {
        bytes,
        cells,
        updates: logged,
        from_log: Samples::new(from_log),
        from_snapshot: Samples::new(from_snapshot),
    })
}

struct Samples(Vec<Duration>);

impl Samples {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Samples(samples)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`th percentile (nearest rank).
    fn p(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
