//! Execute round trip of `x = 1`, from sending the execute to receiving the run's `Done`:
//! Airlock over QUIC, WebSocket binary frames and the WebSocket JSON text form against a real
//! `airlock node` process; the same kernel driven in-process through `KernelBridge` (direct
//! ZeroMQ, the floor DESIGN.md §8 measures against); and plain Jupyter (direct ZeroMQ from Python
//! `jupyter_client`, and Kernel Gateway's WebSocket) from `shared/peers/jupyter_peer_bench.py`,
//! all in the same run. Also the node's resident memory beside its kernel's.
//!
//! Run with `cargo bench --bench exec_rtt`. It prints a table, then the same figures as one JSON
//! object on the last line. Progress goes to stderr. `AIRLOCK_PYTHON` picks the kernels'
//! interpreter instead of Airlock's managed environment.
//!
//! This is a benchmark, not a test: under `cargo test --benches` it does nothing.

#[path = "support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_client::{Client, Target, Trust};
use airlock_node::jail::JailConfig;
use airlock_node::kernel::python_env::{self, Progress, PythonSource};
use airlock_node::kernel::{KernelBridge, KernelConfig, KernelEvent};
use airlock_protocol::token::{self, Claims};
use airlock_protocol::{Role, RunId, RunStatus};
use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::Receiver;

/// The code every round trip runs.
const CODE: &str = "x = 1";
/// Timed round trips per transport.
const N: usize = 500;
/// Untimed round trips before them.
const WARMUP: usize = 50;
/// The timed runs are taken in this many rounds, the contenders taking turns.
const ROUNDS: usize = 10;
/// Untimed round trips at the start of each round after the first (a fresh connection).
const REWARM: usize = 5;
/// DESIGN.md §8: QUIC and WebSocket p50 within this of direct ZeroMQ.
const TARGET_ADDED_MS: f64 = 0.3;
/// DESIGN.md §8: the node's resident memory beside its kernel.
const TARGET_NODE_RSS_MB: f64 = 15.0;
/// The document the node serves.
const DOC: &str = "bench";
/// Longest wait for one round trip before the benchmark gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the node to start serving (the kernel starts first).
const NODE_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for the node to exit after SIGTERM.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Above this share of the CPU taken by other processes, the figures are called noisy.
const NOISY_OTHER_CPU: f64 = 0.10;
/// How many of the node's last stderr lines an error shows.
const NODE_LOG_TAIL: usize = 40;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and gets a no-op.
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("exec_rtt is a benchmark: run it with `cargo bench --bench exec_rtt`");
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,airlock_node::kernel::python_env=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // The same runtime shape as the `airlock` binary, so the in-process floor and the node
    // process schedule alike.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let python = kernel_python().await?;
    progress(&format!("kernels run on {}", python.display()));
    let sandbox = Sandbox::of_this_host();
    progress(&format!("kernels are {}", sandbox.describe()));
    let scratch = tempfile::tempdir().context("making a scratch folder")?;
    let measured = measure(&python, &sandbox, scratch.path()).await?;
    let peer = peer().await;
    let report = Report {
        python,
        measured,
        peer,
        sandbox,
    };
    report.print_table();
    println!("{}", report.json());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Timing

/// Round-trip times of one way of running code, in the order they were taken.
#[derive(Default)]
struct Sample(Vec<Duration>);

impl Sample {
    /// The `p`th percentile in ms, picked the way the peer script picks it (nearest rank below).
    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0 * sorted.len() as f64) as usize).min(sorted.len().saturating_sub(1));
        sorted
            .get(rank)
            .map_or(f64::NAN, |time| time.as_secs_f64() * 1e3)
    }

    fn p50(&self) -> f64 {
        self.percentile_ms(50.0)
    }

    fn p99(&self) -> f64 {
        self.percentile_ms(99.0)
    }

    /// Times one round trip into this sample.
    async fn time(
        &mut self,
        what: &str,
        run: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        untimed(what, run).await?;
        self.0.push(start.elapsed());
        Ok(())
    }
}

/// One round trip, with a deadline.
async fn untimed(what: &str, run: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .map_err(|_| anyhow!("{what}: a run got no Done within {RUN_TIMEOUT:?}"))?
        .with_context(|| format!("{what}: a run failed"))
}

fn check_status(status: RunStatus) -> anyhow::Result<()> {
    match status {
        RunStatus::Ok => Ok(()),
        other => bail!("`{CODE}` ended {other:?}, not Ok"),
    }
}

/// One way of reaching the node process, and its times.
struct Contender {
    label: &'static str,
    target: Target,
    sample: Sample,
}

/// One round trip through the node: execute, then wait for the run's `Done`.
async fn through_node(client: &mut Client) -> anyhow::Result<()> {
    let report = client.run(CODE, |_| {}).await?;
    check_status(report.done.status)
}

/// The floor: the in-process kernel bridge, and its times.
struct Direct<'a> {
    bridge: &'a KernelBridge,
    events: &'a mut Receiver<KernelEvent>,
    next_run: u64,
    sample: Sample,
}

impl Direct<'_> {
    const LABEL: &'static str = "direct ZeroMQ, Rust (KernelBridge in-process)";

    /// One round trip: execute, then wait for the run's `Done` event.
    async fn once(&mut self) -> anyhow::Result<()> {
        self.next_run += 1;
        let run = RunId(self.next_run);
        self.bridge.execute(run, CODE, true)?;
        loop {
            match self.events.recv().await {
                Some(KernelEvent::Done {
                    run: done, status, ..
                }) if done == run => return check_status(status),
                Some(_) => {}
                None => bail!("the kernel bridge closed its event stream"),
            }
        }
    }

    async fn timed(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        untimed(Self::LABEL, self.once()).await?;
        self.sample.0.push(start.elapsed());
        Ok(())
    }
}

/// How kernels are sandboxed: the node's and the floor's alike, so that the floor is the same
/// kind of kernel and the difference is the node and its transport.
enum Sandbox {
    /// The jail with the node's default limits (the CLI's defaults are `JailConfig::default()`).
    Jailed,
    /// No jail for either (`--insecure-no-jail`), because this host cannot jail.
    Unconfined { why: String },
}

impl Sandbox {
    fn of_this_host() -> Sandbox {
        match airlock_node::jail::preflight() {
            Ok(_) => Sandbox::Jailed,
            Err(err) => Sandbox::Unconfined {
                why: err.to_string(),
            },
        }
    }

    fn kernel_config(&self, python: PathBuf, runtime_dir: PathBuf) -> KernelConfig {
        match self {
            Sandbox::Jailed => KernelConfig::jailed(python, runtime_dir, JailConfig::default()),
            Sandbox::Unconfined { .. } => KernelConfig::new(python, runtime_dir),
        }
    }

    fn describe(&self) -> String {
        match self {
            Sandbox::Jailed => {
                let limits = JailConfig::default().limits;
                format!(
                    "jailed, the node's and the in-process floor's alike (default limits: {} \
                     core, {} MiB)",
                    limits.cpus,
                    limits.memory_bytes >> 20
                )
            }
            Sandbox::Unconfined { why } => format!(
                "unconfined, the node's (--insecure-no-jail) and the floor's alike: this host \
                 cannot jail ({why})"
            ),
        }
    }
}

/// Everything measured against Airlock itself.
struct Measured {
    quic: Sample,
    ws_binary: Sample,
    ws_json: Sample,
    direct: Sample,
    memory: Memory,
    /// The share of the machine's CPU time that other processes took while the samples were
    /// taken.
    other_cpu: Option<f64>,
}

/// Takes the samples so that load from elsewhere on the machine falls on every contender
/// alike, not on whichever ran while it lasted: in each of ROUNDS rounds every transport, in a
/// rotating order, gets a fresh connection (one client at a time: every client of a document
/// sees every run's messages, which would bill the others' traffic to the one being timed) and
/// times N / ROUNDS runs, each one alternating with a run of the floor.
async fn interleave(
    contenders: &mut [Contender],
    direct: &mut Direct<'_>,
    token: &str,
) -> anyhow::Result<()> {
    for _ in 0..WARMUP {
        untimed(Direct::LABEL, direct.once()).await?;
    }
    let count = contenders.len();
    for round in 0..ROUNDS {
        progress(&format!("round {}/{ROUNDS}", round + 1));
        let warmup = if round == 0 { WARMUP } else { REWARM };
        for k in 0..count {
            let Contender {
                label,
                target,
                sample,
            } = &mut contenders[(round + k) % count];
            let mut client = Client::connect(target, token)
                .await
                .with_context(|| format!("{label}: connecting"))?;
            let taken = async {
                for _ in 0..warmup {
                    untimed(label, through_node(&mut client)).await?;
                }
                for j in 0..N / ROUNDS {
                    if j % 2 == 0 {
                        sample.time(label, through_node(&mut client)).await?;
                        direct.timed().await?;
                    } else {
                        direct.timed().await?;
                        sample.time(label, through_node(&mut client)).await?;
                    }
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            client.close().await;
            taken?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Airlock: a real node process reached over QUIC and WebSocket, and the in-process floor

struct Memory {
    node_rss_mb: f64,
    node_peak_mb: f64,
    kernel_rss_mb: Option<f64>,
    kernel_pid: Option<u32>,
}

/// The node's last stderr lines, for errors.
type LogTail = Arc<Mutex<VecDeque<String>>>;

/// Starts the node, measures, and stops the node again, also when measuring failed.
async fn measure(python: &Path, sandbox: &Sandbox, scratch: &Path) -> anyhow::Result<Measured> {
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem_path = scratch.join("token-verifying.pem");
    let pem = token::verifying_key_to_pem(&signing.verifying_key())?;
    std::fs::write(&pem_path, pem).with_context(|| format!("writing {}", pem_path.display()))?;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let token = token::sign(
        &Claims {
            doc: DOC.into(),
            user: "bench".into(),
            role: Role::Editor,
            epoch: 0,
            exp,
        },
        &signing,
    );

    let connect_file = scratch.join("node.json");
    progress("starting `airlock node`");
    let mut node = Command::new(env!("CARGO_BIN_EXE_airlock"));
    node.arg("node");
    if let Sandbox::Unconfined { .. } = sandbox {
        node.arg("--insecure-no-jail");
    }
    let mut child = node
        .args(["--doc", DOC])
        .arg("--token-public-key")
        .arg(&pem_path)
        .args(["--quic", "127.0.0.1:0", "--ws", "127.0.0.1:0"])
        .arg("--connect-file")
        .arg(&connect_file)
        .arg("--python")
        .arg(python)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting `airlock node`")?;
    let log: LogTail = Arc::default();
    let measured = async {
        wait_until_serving(&mut child, &log).await?;
        let node_pid = child.id().context("the node has no pid")?;
        measure_with_node(node_pid, &connect_file, &token, python, sandbox, scratch).await
    }
    .await;
    let stopped = stop_node(child).await;
    let tail = || {
        log.lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    };
    let measured = measured.with_context(|| format!("the node's last words:\n{}", tail()))?;
    stopped.with_context(|| format!("the node's last words:\n{}", tail()))?;
    Ok(measured)
}

/// Reads the node's stderr until it says it is serving, then keeps draining it in the
/// background (a full pipe would stall the node) into `log`.
async fn wait_until_serving(child: &mut Child, log: &LogTail) -> anyhow::Result<()> {
    let stderr = child
        .stderr
        .take()
        .context("the node's stderr was not piped")?;
    let mut lines = BufReader::new(stderr).lines();
    let remember = |log: &LogTail, line: String| {
        if let Ok(mut tail) = log.lock() {
            if tail.len() == NODE_LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    };
    let serving = tokio::time::timeout(NODE_START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            let ready = line.contains("press Ctrl-C");
            remember(log, line);
            if ready {
                return Ok(true);
            }
        }
        Ok::<_, std::io::Error>(false)
    })
    .await
    .map_err(|_| anyhow!("the node did not start serving within {NODE_START_TIMEOUT:?}"))?
    .context("reading the node's stderr")?;
    if !serving {
        let status = child.wait().await?;
        bail!("the node exited ({status}) before serving");
    }
    let log = Arc::clone(log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            remember(&log, line);
        }
    });
    Ok(())
}

/// With the node serving: starts the in-process bridge, interleaves all four contenders, reads
/// the node's memory, and shuts the bridge down again.
async fn measure_with_node(
    node_pid: u32,
    connect_file: &Path,
    token: &str,
    python: &Path,
    sandbox: &Sandbox,
    scratch: &Path,
) -> anyhow::Result<Measured> {
    let info: Value = serde_json::from_slice(
        &std::fs::read(connect_file)
            .with_context(|| format!("reading the connect file {}", connect_file.display()))?,
    )
    .context("the connect file is not JSON")?;
    let field = |name: &str| {
        info.get(name)
            .and_then(Value::as_str)
            .with_context(|| format!("the connect file has no {name:?}: {info}"))
    };
    let quic_addr: SocketAddr = field("quic")?.parse().context("the connect file's quic")?;
    let contender = |label, target| Contender {
        label,
        target,
        sample: Sample::default(),
    };
    let mut contenders = [
        contender(
            "Airlock, QUIC",
            Target::Quic {
                addr: quic_addr,
                server_name: "localhost".into(),
                trust: Trust::Fingerprint(field("fingerprint")?.to_owned()),
            },
        ),
        contender(
            "Airlock, WebSocket (binary)",
            Target::WebSocket {
                url: field("websocket")?.to_owned(),
                json: false,
            },
        ),
        contender(
            "Airlock, WebSocket (JSON)",
            Target::WebSocket {
                url: field("websocket")?.to_owned(),
                json: true,
            },
        ),
    ];

    progress("starting a kernel in-process through KernelBridge (the direct ZeroMQ floor)");
    let runtime_dir = scratch.join("direct");
    std::fs::create_dir_all(&runtime_dir)
        .with_context(|| format!("making {}", runtime_dir.display()))?;
    let (bridge, mut events) =
        KernelBridge::start(sandbox.kernel_config(python.to_owned(), runtime_dir))
            .await
            .context("starting a kernel through KernelBridge")?;
    progress(&format!(
        "{WARMUP} warm-up runs each, then {N} timed per transport in {ROUNDS} rounds, each run \
         alternating with a direct one ({REWARM} warm-up runs on each new connection)"
    ));
    let mut direct = Direct {
        bridge: &bridge,
        events: &mut events,
        next_run: 0,
        sample: Sample::default(),
    };
    let before = CpuTicks::now();
    let taken = interleave(&mut contenders, &mut direct, token).await;
    let other_cpu = before
        .zip(CpuTicks::now())
        .and_then(|(before, after)| before.others_share(&after));
    let direct = direct.sample;
    bridge.shutdown().await;
    taken?;

    let (node_rss_mb, node_peak_mb) =
        rss_mb(node_pid).with_context(|| format!("reading /proc/{node_pid}/status of the node"))?;
    let kernel_pid = kernel_of(node_pid);
    let kernel_rss_mb = kernel_pid
        .and_then(|pid| rss_mb(pid).ok())
        .map(|(rss, _)| rss);
    let [quic, ws_binary, ws_json] = contenders.map(|contender| contender.sample);
    Ok(Measured {
        quic,
        ws_binary,
        ws_json,
        direct,
        other_cpu,
        memory: Memory {
            node_rss_mb,
            node_peak_mb,
            kernel_rss_mb,
            kernel_pid,
        },
    })
}

/// SIGTERM, then waits for a clean exit.
async fn stop_node(mut child: Child) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(pid) = child.id() else {
        // Already reaped.
        return Ok(());
    };
    progress("stopping the node (SIGTERM)");
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGTERM)
        .context("sending SIGTERM to the node")?;
    match tokio::time::timeout(NODE_STOP_TIMEOUT, child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                bail!("the node exited with {status} after SIGTERM");
            }
            Ok(())
        }
        Err(_) => {
            let _ = child.kill().await;
            bail!("the node did not exit within {NODE_STOP_TIMEOUT:?} of SIGTERM; killed it")
        }
    }
}

/// VmRSS and VmHWM of a process, in MB (2^20 bytes, as the peer script counts).
fn rss_mb(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: f64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{name}{line}"))?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The node's kernel: the process below it running `ipykernel_launcher` (a jailed kernel is a
/// grandchild, below the jail's supervisor; an unconfined one a child).
fn kernel_of(node_pid: u32) -> Option<u32> {
    let mut below = children_of(node_pid);
    let mut seen = 0;
    while let Some(&pid) = below.get(seen) {
        seen += 1;
        let is_kernel = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("ipykernel_launcher"))
            .unwrap_or(false);
        if is_kernel {
            return Some(pid);
        }
        if below.len() < 64 {
            below.extend(children_of(pid));
        }
    }
    None
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    // Every thread lists the children it forked.
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                children.extend(
                    list.split_whitespace()
                        .filter_map(|pid| pid.parse::<u32>().ok()),
                );
            }
        }
    }
    if !children.is_empty() {
        return children;
    }
    // Kernels built without /proc/*/task/*/children: scan every process's parent.
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

// ---------------------------------------------------------------------------------------------
// Peers: plain Jupyter on this machine, in this run

use support::peer::{PeerFigures, peer_number};

async fn peer() -> PeerFigures {
    support::peer::run(progress).await
}

// ---------------------------------------------------------------------------------------------
// Report

struct Report {
    python: PathBuf,
    measured: Measured,
    peer: PeerFigures,
    sandbox: Sandbox,
}

impl Report {
    fn quic_added_ms(&self) -> f64 {
        self.measured.quic.p50() - self.measured.direct.p50()
    }

    fn ws_added_ms(&self) -> f64 {
        self.measured.ws_binary.p50() - self.measured.direct.p50()
    }

    fn json_added_ms(&self) -> f64 {
        self.measured.ws_json.p50() - self.measured.direct.p50()
    }

    fn node_memory_met(&self) -> bool {
        self.measured.memory.node_rss_mb <= TARGET_NODE_RSS_MB
    }

    /// The peer's (p50, p99) in ms for `key`, from its microseconds.
    fn peer_rtt_ms(&self, key: &str) -> Option<(f64, f64)> {
        let peer = self.peer.as_ref().ok()?;
        Some((
            peer_number(peer, &[key, "p50"])? / 1e3,
            peer_number(peer, &[key, "p99"])? / 1e3,
        ))
    }

    fn print_table(&self) {
        const LABEL: usize = 56;
        let header = format!("execute round trip of `{CODE}` (N={N}, after {WARMUP} warm-up)");
        println!();
        println!("{header:<LABEL$} {:>10} {:>10}", "p50", "p99");
        let row = |label: &str, p50: f64, p99: f64| {
            println!(
                "  {label:<w$} {:>10} {:>10}",
                ms(p50),
                ms(p99),
                w = LABEL - 2
            );
        };
        row(
            "Airlock, QUIC",
            self.measured.quic.p50(),
            self.measured.quic.p99(),
        );
        row(
            "Airlock, WebSocket (binary)",
            self.measured.ws_binary.p50(),
            self.measured.ws_binary.p99(),
        );
        row(
            "Airlock, WebSocket (JSON)",
            self.measured.ws_json.p50(),
            self.measured.ws_json.p99(),
        );
        row(
            Direct::LABEL,
            self.measured.direct.p50(),
            self.measured.direct.p99(),
        );
        for (label, key) in [
            (
                "peer: direct ZeroMQ, Python jupyter_client",
                "raw_exec_rtt_us",
            ),
            ("peer: Jupyter Kernel Gateway WebSocket", "kg_exec_rtt_us"),
        ] {
            match self.peer_rtt_ms(key) {
                Some((p50, p99)) => row(label, p50, p99),
                None => println!("  {label:<w$} {:>21}", "not measured", w = LABEL - 2),
            }
        }
        println!(
            "  (each transport's runs alternate one-for-one with direct ZeroMQ runs, so N={} there;\n   \
             {ROUNDS} rounds, a fresh connection each; the peer script times its own 300 runs)",
            self.measured.direct.0.len()
        );

        let verdict = |added: f64| {
            if added <= TARGET_ADDED_MS {
                "met"
            } else {
                "NOT met"
            }
        };
        println!(
            "target: QUIC and WebSocket p50 within {TARGET_ADDED_MS} ms of direct ZeroMQ -> \
             QUIC {:+.2} ms {}, WS {:+.2} ms {} (WS JSON {:+.2} ms)",
            self.quic_added_ms(),
            verdict(self.quic_added_ms()),
            self.ws_added_ms(),
            verdict(self.ws_added_ms()),
            self.json_added_ms(),
        );

        let memory = &self.measured.memory;
        let kernel = match memory.kernel_rss_mb {
            Some(rss) => format!("its kernel {rss:.1} MB RSS"),
            None => "its kernel's RSS not found (no ipykernel_launcher child)".to_owned(),
        };
        let peer_kernel = self
            .peer
            .as_ref()
            .ok()
            .and_then(|peer| peer_number(peer, &["kernel_rss_mb"]))
            .map(|rss| format!("; peer's idle ipykernel {rss:.1} MB"))
            .unwrap_or_default();
        println!(
            "memory: node {:.1} MB RSS (peak {:.1} MB), {kernel}{peer_kernel} (target node <= \
             {TARGET_NODE_RSS_MB} MB: {})",
            memory.node_rss_mb,
            memory.node_peak_mb,
            if self.node_memory_met() {
                "met"
            } else {
                "NOT met"
            },
        );

        match &self.peer {
            Ok(peer) => {
                let figure = |path: &[&str]| {
                    peer_number(peer, path).map_or("?".to_owned(), |v| format!("{v:.0} ms"))
                };
                println!(
                    "peer: cold start {}, Kernel Gateway create -> first result {} (medians)",
                    figure(&["raw_cold_start_ms", "median"]),
                    figure(&["kg_create_ms", "median"]),
                );
            }
            Err(why) => println!("peer: not measured: {why}"),
        }
        println!("kernels' Python: {}", self.python.display());
        println!("kernels: {}", self.sandbox.describe());
        match self.measured.other_cpu {
            Some(share) => println!(
                "machine: {} cores; other work used {:.0}% of their time while Airlock was \
                 measured{}",
                cores(),
                share * 100.0,
                if share > NOISY_OTHER_CPU {
                    " -- enough to make these figures noisy: compare only within this run, and \
                     rerun on a quiet machine before judging the target"
                } else {
                    ""
                }
            ),
            None => println!("machine: {} cores", cores()),
        }
    }

    fn json(&self) -> Value {
        let rtt = |sample: &Sample| json!({ "p50_ms": round3(sample.p50()), "p99_ms": round3(sample.p99()) });
        let peer_rtt = |key: &str| match self.peer_rtt_ms(key) {
            Some((p50, p99)) => json!({ "p50_ms": round3(p50), "p99_ms": round3(p99) }),
            None => Value::Null,
        };
        let memory = &self.measured.memory;
        json!({
            "bench": "exec_rtt",
            "code": CODE,
            "n": N,
            "warmup": WARMUP,
            "rounds": ROUNDS,
            "rewarm_per_round": REWARM,
            "exec_rtt": {
                "airlock_quic": rtt(&self.measured.quic),
                "airlock_websocket_binary": rtt(&self.measured.ws_binary),
                "airlock_websocket_json": rtt(&self.measured.ws_json),
                "direct_zmq_rust": rtt(&self.measured.direct),
                "peer_direct_zmq_python": peer_rtt("raw_exec_rtt_us"),
                "peer_kernel_gateway_websocket": peer_rtt("kg_exec_rtt_us"),
            },
            "target_added_p50": {
                "max_ms": TARGET_ADDED_MS,
                "quic_ms": round3(self.quic_added_ms()),
                "websocket_ms": round3(self.ws_added_ms()),
                "websocket_json_ms": round3(self.json_added_ms()),
                "quic_met": self.quic_added_ms() <= TARGET_ADDED_MS,
                "websocket_met": self.ws_added_ms() <= TARGET_ADDED_MS,
            },
            "memory_mb": {
                "node_rss": round3(memory.node_rss_mb),
                "node_peak": round3(memory.node_peak_mb),
                "kernel_rss": memory.kernel_rss_mb.map(round3),
                "kernel_pid": memory.kernel_pid,
                "node_target_max": TARGET_NODE_RSS_MB,
                "node_met": self.node_memory_met(),
            },
            "peer": match &self.peer {
                Ok(peer) => peer.clone(),
                Err(why) => json!({ "not_measured": why }),
            },
            "python": self.python.display().to_string(),
            "kernel_sandbox": match &self.sandbox {
                Sandbox::Jailed => json!({ "jailed": true }),
                Sandbox::Unconfined { why } => json!({ "jailed": false, "why": why }),
            },
            "machine": {
                "cores": cores(),
                "other_cpu_share": self.measured.other_cpu.map(round3),
            },
        })
    }
}

fn ms(value: f64) -> String {
    format!("{value:.2} ms")
}

fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}

/// CPU time in clock ticks: the whole machine's, busy and in all, and this benchmark's own
/// process tree's (itself, the node, the jail supervisors and the kernels).
struct CpuTicks {
    machine_busy: u64,
    machine_total: u64,
    ours: u64,
}

impl CpuTicks {
    fn now() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // `cpu  user nice system idle iowait irq softirq steal guest guest_nice`; guest time is
        // already counted in user.
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            return None;
        };
        let mut tree = vec![std::process::id()];
        let mut seen = 0;
        while let Some(&pid) = tree.get(seen) {
            seen += 1;
            if tree.len() < 256 {
                tree.extend(children_of(pid));
            }
        }
        let ours = tree.iter().filter_map(|&pid| process_ticks(pid)).sum();
        Some(CpuTicks {
            machine_busy: user + nice + system + irq + softirq + steal,
            machine_total: user + nice + system + idle + iowait + irq + softirq + steal,
            ours,
        })
    }

    /// The share of the machine's CPU time between `self` and `later` that went to processes
    /// outside this benchmark.
    fn others_share(&self, later: &CpuTicks) -> Option<f64> {
        let total = later.machine_total.checked_sub(self.machine_total)?;
        let busy = later.machine_busy.checked_sub(self.machine_busy)?;
        let ours = later.ours.saturating_sub(self.ours);
        (total > 0).then(|| busy.saturating_sub(ours) as f64 / total as f64)
    }
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After `pid (comm)`: state is field 3, utime field 14, stime field 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn progress(message: &str) {
    eprintln!("exec_rtt: {message}");
}

/// The kernels' interpreter: `AIRLOCK_PYTHON`, else Airlock's managed environment (made on
/// first use, with progress).
async fn kernel_python() -> anyhow::Result<PathBuf> {
    let source = match std::env::var_os("AIRLOCK_PYTHON").filter(|path| !path.is_empty()) {
        Some(path) => PythonSource::Existing(PathBuf::from(path)),
        None => PythonSource::default_managed()?,
    };
    if matches!(source, PythonSource::Managed { .. }) {
        progress("checking Airlock's managed Python environment (made once, on first use)");
    }
    Ok(python_env::ensure_python(&source, Progress::Auto).await?)
}
