//! `airlock node`: serve one document standalone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use airlock_node::kernel::KernelConfig;
use airlock_node::tls::TlsSource;
use airlock_node::{NodeConfig, RunningNode};
use airlock_protocol::FrameLimit;
use airlock_protocol::codec::DEFAULT_MAX_FRAME_LEN;
use anyhow::Context as _;
use serde_json::json;

use super::{JailArgs, PythonArgs};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  airlock keygen --out keys\n  airlock node --doc notes \
    --token-public-key keys/token-verifying.pem --connect-file node.json\n  \
    airlock exec --connect-file node.json --token \"$(airlock token --key keys/token-signing.pem \
    --doc notes)\" --code 'print(1 + 1)'"
)]
pub struct Args {
    /// The document this node serves.
    #[arg(long, value_name = "ID")]
    doc: String,
    /// The allocation epoch; tokens minted for an older epoch are refused.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// The public key (SPKI PEM) capability tokens must be signed with.
    #[arg(long, value_name = "FILE", env = "AIRLOCK_TOKEN_PUBLIC_KEY")]
    token_public_key: PathBuf,
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
    /// Folder for the kernel's connection file and IPC sockets.
    #[arg(long, value_name = "DIR", default_value_os_t = std::env::temp_dir())]
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
    #[command(flatten)]
    python: PythonArgs,
    #[command(flatten)]
    jail: JailArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let pem = std::fs::read_to_string(&args.token_public_key).with_context(|| {
        format!(
            "reading the token public key {}; make one with `airlock keygen`",
            args.token_public_key.display()
        )
    })?;
    let token_key = airlock_protocol::token::verifying_key_from_pem(&pem)
        .with_context(|| format!("{}", args.token_public_key.display()))?;
    let jail = args.jail.config()?;
    let python = args.python.interpreter().await?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => TlsSource::Files { cert, key },
        _ => TlsSource::SelfSigned {
            names: args.tls_names,
        },
    };
    let store = match args.store {
        Some(store) => store,
        None => airlock_node::store::data_home()
            .context("neither XDG_DATA_HOME nor HOME is set; pass --store DIR")?
            .join("documents")
            .display()
            .to_string(),
    };
    let config = NodeConfig {
        document: args.doc.clone(),
        epoch: args.epoch,
        token_key,
        quic_listen: (!args.no_quic).then_some(args.quic),
        ws_listen: (!args.no_ws).then_some(args.ws),
        tls,
        kernel: KernelConfig {
            jail,
            ..KernelConfig::new(python, args.runtime_dir)
        },
        frame_limit: FrameLimit::new(args.max_frame),
        store,
    };
    let node = airlock_node::start(config).await?;
    announce(&node, &args.doc, args.connect_file.as_deref())?;
    let code = tokio::select! {
        () = wait_for_signal() => {
            eprintln!("shutting down: closing clients and stopping the kernel");
            ExitCode::SUCCESS
        }
        reason = node.stopped() => {
            eprintln!("{}", reason.reply().message);
            eprintln!("the document stopped serving; shutting down");
            ExitCode::from(4)
        }
    };
    node.shutdown().await;
    if let Some(path) = &args.connect_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(code)
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
