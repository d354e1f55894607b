//! The subcommands, one module each, and the flags they share.

mod demo;
mod exec;
mod keys;
mod node;
mod python;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Airlock runs code from strangers: every notebook document gets its own sandboxed Jupyter
/// kernel, reached over QUIC or WebSocket.
///
/// Start with `airlock demo`: it makes a key, starts a node with a real kernel on this machine,
/// and walks through running code over both transports.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, propagate_version = true)]
pub struct Cli {
    /// Print debug logs (or set AIRLOCK_LOG, e.g. AIRLOCK_LOG=airlock_node=debug).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    pub fn default_log_filter(&self) -> &'static str {
        if self.verbose {
            "debug,quinn=info,rustls=info,zeromq=info,tokio_tungstenite=info,tungstenite=info"
        } else if matches!(self.command, Command::Demo(_)) {
            // The tour prints its own story; the node's logs would interleave with it.
            "warn"
        } else {
            "warn,airlock=info,airlock_node=info"
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A guided tour on this machine: a node, a real kernel, clients over QUIC and WebSocket.
    Demo(demo::Args),
    /// Serve one document: start its kernel and listen for clients over QUIC and WebSocket.
    Node(Box<node::Args>),
    /// Run code in a document over QUIC (default) or WebSocket and print its outputs.
    Exec(exec::Args),
    /// Mint a capability token for local use (the coordinator issues them in a cluster).
    Token(keys::TokenArgs),
    /// Make an ed25519 key pair for signing capability tokens.
    Keygen(keys::KeygenArgs),
    /// Create (or check) the managed Python environment kernels run in, and print its path.
    Python(python::Args),
}

/// Where the Python for kernels comes from; shared by `node`, `demo` and `python`.
#[derive(Debug, Clone, clap::Args)]
pub struct PythonArgs {
    /// Use this Python interpreter (it must have ipykernel) instead of the managed environment.
    #[arg(long, value_name = "PATH", env = "AIRLOCK_PYTHON")]
    python: Option<PathBuf>,
    /// Where the managed environment lives [default: $XDG_DATA_HOME/airlock/python].
    #[arg(long, value_name = "DIR", conflicts_with = "python")]
    python_env: Option<PathBuf>,
}

impl PythonArgs {
    pub async fn interpreter(&self) -> anyhow::Result<PathBuf> {
        use airlock_node::kernel::python_env::{self, Progress, PythonSource};
        let source = match (&self.python, &self.python_env) {
            (Some(path), _) => PythonSource::Existing(path.clone()),
            (None, Some(dir)) => PythonSource::Managed { dir: dir.clone() },
            (None, None) => PythonSource::default_managed()?,
        };
        Ok(python_env::ensure_python(&source, Progress::Auto).await?)
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Node(args) => node::run(*args).await,
        Command::Exec(args) => exec::run(args).await,
        Command::Token(args) => keys::token(args),
        Command::Keygen(args) => keys::keygen(args),
        Command::Python(args) => python::run(args).await,
    }
}
