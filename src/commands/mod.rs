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

/// How kernels are sandboxed: jailed by default, with per-kernel limits.
#[derive(Debug, clap::Args)]
pub struct JailArgs {
    /// Run kernels WITHOUT any sandbox (no namespaces, limits, seccomp or landlock): kernel code
    /// can then read the node's secrets and reach the network. For development on hosts that
    /// fail the jail's preflight only; logged loudly on every start.
    #[arg(long)]
    insecure_no_jail: bool,
    /// Memory limit of each kernel (its work dir and /tmp count against it), e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    memory: u64,
    /// Most processes and threads each kernel may run at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pids: u64,
    /// CPU each kernel may use, in cores (0.5 = half a core).
    #[arg(long, value_name = "CORES", default_value_t = 1.0)]
    cpus: f64,
    /// Size of each kernel's writable work dir (its cwd and HOME), e.g. 256M.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    work_dir_size: u64,
}

impl JailArgs {
    /// The jail configuration, after checking that this host can jail kernels; `None` with
    /// `--insecure-no-jail`.
    pub fn config(&self) -> anyhow::Result<Option<airlock_node::jail::JailConfig>> {
        use airlock_node::jail::{JailConfig, TierLimits, preflight};
        if self.insecure_no_jail {
            let warning = "--insecure-no-jail: kernels run WITHOUT a sandbox; any code a user runs can read this node's secrets, files and network";
            tracing::warn!("{warning}");
            eprintln!("WARNING: {warning}");
            return Ok(None);
        }
        if !self.cpus.is_finite() || self.cpus <= 0.0 {
            anyhow::bail!(
                "--cpus must be a positive number of cores, not {}",
                self.cpus
            );
        }
        let host = preflight()?;
        for warning in &host.warnings {
            tracing::warn!("jail: {warning}");
        }
        Ok(Some(JailConfig {
            limits: TierLimits {
                memory_bytes: self.memory,
                cpus: self.cpus,
                pids: self.pids,
                work_dir_bytes: self.work_dir_size,
                ..TierLimits::default()
            },
            ..JailConfig::default()
        }))
    }
}

/// `512M`, `2G`, `1048576`: a size in bytes with an optional K/M/G/T suffix (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, shift) = match text.char_indices().last() {
        Some((i, unit)) if unit.is_ascii_alphabetic() => {
            let shift = match unit.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size unit {unit:?}; use K, M, G or T")),
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    let number: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512M or 2G"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
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
