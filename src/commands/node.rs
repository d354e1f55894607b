//! `airlock node`: serve one document standalone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use airlock_node::document::actor::StopReason;
use airlock_node::kernel::KernelConfig;
use airlock_node::task::{TaskConfig, TaskEnd};
use airlock_node::tls::TlsSource;
use airlock_node::{Assignment, RunningNode, WarmConfig};
use airlock_protocol::FrameLimit;
use airlock_protocol::codec::DEFAULT_MAX_FRAME_LEN;
use airlock_protocol::control::TASK_TOKEN_ENV;
use anyhow::Context as _;
use serde_json::json;

use super::{EgressArgs, JailArgs, KernelSendArgs, PythonArgs};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  airlock keygen --out keys\n  airlock node --doc notes \
    --token-public-key keys/token-verifying.pem --connect-file node.json\n  \
    airlock exec --connect-file node.json --token \"$(airlock token --key keys/token-signing.pem \
    --doc notes)\" --code 'print(1 + 1)'"
)]
pub struct Args {
    /// The document this node serves (standalone; with --task the coordinator assigns it).
    #[arg(long, value_name = "ID", required_unless_present = "task")]
    doc: Option<String>,
    /// The allocation epoch; tokens minted for an older epoch are refused.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// The public key (SPKI PEM) capability tokens must be signed with (standalone; with --task
    /// the coordinator sends it).
    #[arg(
        long,
        value_name = "FILE",
        env = "AIRLOCK_TOKEN_PUBLIC_KEY",
        required_unless_present = "task"
    )]
    token_public_key: Option<PathBuf>,
    /// Run as a task of a coordinator's warm pool: warm up, report ready, and serve the
    /// document a claim assigns. The task's secret comes from AIRLOCK_TASK_TOKEN.
    #[arg(
        long,
        value_name = "ID",
        requires = "coordinator",
        conflicts_with = "doc"
    )]
    task: Option<String>,
    /// The coordinator's URL, for --task.
    #[arg(long, value_name = "URL", requires = "task")]
    coordinator: Option<String>,
    /// The region this task belongs to (reported by the driver; informational).
    #[arg(long, value_name = "REGION", requires = "task")]
    region: Option<String>,
    /// The runtime version this task reports [default: this build's version].
    #[arg(long, value_name = "VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    runtime_version: String,
    /// Release the document (after a snapshot) once no client has been connected for this
    /// many seconds [default: never standalone, 600 with --task].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// UDP address for QUIC clients.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4433")]
    quic: SocketAddr,
    /// TCP address for WebSocket clients (path /v1/doc).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4434")]
    ws: SocketAddr,
    /// Do not listen for QUIC.
    #[arg(long)]
    no_quic: bool,
    /// Do not listen for WebSocket.
    #[arg(long)]
    no_ws: bool,
    /// PEM certificate chain for QUIC; without it a self-signed one is made and its
    /// fingerprint printed.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Names for the self-signed certificate.
    #[arg(long = "tls-name", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    tls_names: Vec<String>,
    /// Where the document's edit history and outputs are kept: a folder, or a URL (`file://…`,
    /// `s3://bucket/prefix?region=…` with the usual AWS_* variables, `memory://` to keep
    /// nothing) [default: $XDG_DATA_HOME/airlock/documents].
    #[arg(long, value_name = "DIR|URL", env = "AIRLOCK_STORE")]
    store: Option<String>,
    /// Folder for each kernel's private runtime folder (its connection file; a jailed kernel's
    /// IPC sockets live in a 1 MiB tmpfs of its own, never on this folder's filesystem)
    /// [default: /run/airlock as root, else $XDG_RUNTIME_DIR/airlock, else the temp folder].
    #[arg(long, value_name = "DIR", default_value_os_t = airlock_node::jail::default_runtime_dir(), hide_default_value = true)]
    runtime_dir: PathBuf,
    /// Largest protocol frame accepted, in bytes (at most 16 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME_LEN)]
    max_frame: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Write the node's endpoints and certificate fingerprint to this JSON file for
    /// `airlock exec --connect-file`.
    #[arg(long, value_name = "FILE")]
    connect_file: Option<PathBuf>,
    /// The tenant the document belongs to (standalone; with --task the claim says): its
    /// flows leave under this tenant's egress policy and static addresses.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "default",
        conflicts_with = "task"
    )]
    tenant: String,
    #[command(flatten)]
    python: PythonArgs,
    #[command(flatten)]
    jail: JailArgs,
    #[command(flatten)]
    kernel_sends: KernelSendArgs,
    #[command(flatten)]
    egress: EgressArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let mut jail = args.jail.config()?;
    args.egress.apply(jail.as_mut())?;
    let python = args.python.interpreter().await?;
    let tls = match (args.tls_cert.clone(), args.tls_key.clone()) {
        (Some(cert), Some(key)) => TlsSource::Files { cert, key },
        _ => TlsSource::SelfSigned {
            names: args.tls_names.clone(),
        },
    };
    let warm = WarmConfig {
        quic_listen: (!args.no_quic).then_some(args.quic),
        ws_listen: (!args.no_ws).then_some(args.ws),
        tls,
        kernel: {
            let mut kernel = KernelConfig {
                jail,
                ..KernelConfig::new(python, args.runtime_dir.clone())
            };
            args.kernel_sends.apply(&mut kernel);
            kernel
        },
        frame_limit: FrameLimit::new(args.max_frame),
    };
    match (&args.task, &args.coordinator) {
        (Some(task), Some(coordinator)) => run_task(&args, task, coordinator, warm).await,
        _ => run_standalone(&args, warm).await,
    }
}

/// Serves `--doc` until a signal, or until the document stops serving on its own.
async fn run_standalone(args: &Args, warm: WarmConfig) -> anyhow::Result<ExitCode> {
    let doc = args.doc.clone().context("pass --doc (or --task)")?;
    let key_file = args
        .token_public_key
        .as_ref()
        .context("pass --token-public-key (or --task)")?;
    let pem = std::fs::read_to_string(key_file).with_context(|| {
        format!(
            "reading the token public key {}; make one with `airlock keygen`",
            key_file.display()
        )
    })?;
    let token_key = airlock_protocol::token::verifying_key_from_pem(&pem)
        .with_context(|| format!("{}", key_file.display()))?;
    let store = match &args.store {
        Some(store) => store.clone(),
        None => airlock_node::store::data_home()
            .context("neither XDG_DATA_HOME nor HOME is set; pass --store DIR")?
            .join("documents")
            .display()
            .to_string(),
    };
    let node = airlock_node::warm(warm)
        .await?
        .assign(Assignment {
            document: doc.clone(),
            epoch: args.epoch,
            token_key,
            store,
            idle_timeout: args.idle_timeout.map(Duration::from_secs),
            tenant: args.tenant.clone(),
        })
        .await?;
    announce(&node, &doc, args.connect_file.as_deref())?;
    let code = serve_until_stopped(&node).await;
    node.shutdown().await;
    if let Some(path) = &args.connect_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(code)
}

/// Waits for a signal or for the document to stop by itself; says which.
async fn serve_until_stopped(node: &RunningNode) -> ExitCode {
    tokio::select! {
        () = super::wait_for_signal() => {
            eprintln!("shutting down: closing clients and stopping the kernel");
            ExitCode::SUCCESS
        }
        reason = node.stopped() => {
            eprintln!("{}", reason.reply().message);
            exit_code(reason)
        }
    }
}

/// A node whose document stopped by itself exits 0 if it went idle or was shut down, and 4 if
/// it was moved to a newer owner or failed.
fn exit_code(reason: StopReason) -> ExitCode {
    match reason {
        StopReason::Idle | StopReason::Shutdown => ExitCode::SUCCESS,
        StopReason::Moved | StopReason::Internal => ExitCode::from(4),
    }
}

/// A task of the warm pool ([`airlock_node::task::run_task`]), until a signal or until its
/// document stops by itself.
async fn run_task(
    args: &Args,
    task: &str,
    coordinator: &str,
    warm: WarmConfig,
) -> anyhow::Result<ExitCode> {
    let secret = std::env::var(TASK_TOKEN_ENV).with_context(|| {
        format!("a task needs its secret in {TASK_TOKEN_ENV} (the driver sets it)")
    })?;
    let config = TaskConfig {
        task: task.to_owned(),
        coordinators: coordinator.to_owned(),
        secret,
        runtime_version: args.runtime_version.clone(),
        idle_timeout: Duration::from_secs(args.idle_timeout.unwrap_or(600)),
    };
    let end = airlock_node::task::run_task(config, warm, super::wait_for_signal()).await?;
    Ok(match end {
        TaskEnd::Retired | TaskEnd::Shutdown => ExitCode::SUCCESS,
        TaskEnd::Stopped(reason) => {
            eprintln!("{}", reason.reply().message);
            exit_code(reason)
        }
    })
}

/// Describes how to reach a node, as `--connect-file` stores it.
pub fn connect_info(node: &RunningNode, doc: &str) -> serde_json::Value {
    json!({
        "document": doc,
        "quic": node.quic_addr,
        "websocket": node.ws_addr.map(|addr| format!("ws://{addr}{}", airlock_node::websocket::PATH)),
        "fingerprint": node.fingerprint,
    })
}

fn announce(
    node: &RunningNode,
    doc: &str,
    connect_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    eprintln!("serving document {doc:?}");
    if let Some(addr) = node.quic_addr {
        eprintln!("  QUIC       {addr}  (ALPN airlock/1)");
        eprintln!("  cert sha256 {}", node.fingerprint);
    }
    if let Some(addr) = node.ws_addr {
        eprintln!("  WebSocket  ws://{addr}{}", airlock_node::websocket::PATH);
    }
    if let Some(pid) = node.kernel_pid {
        eprintln!("  kernel pid {pid}");
    }
    if let Some(path) = connect_file {
        std::fs::write(path, serde_json::to_vec_pretty(&connect_info(node, doc))?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("  connect file {}", path.display());
    }
    eprintln!("press Ctrl-C to stop");
    Ok(())
}
