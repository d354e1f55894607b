//! The subcommands, one module each, and the flags they share.

mod coordinator;
mod demo;
mod dev;
mod dev_egress;
mod egress;
mod exec;
mod keys;
mod node;
mod notebook;
mod python;
mod render;
mod status;

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
    /// Worker threads of the async runtime [default: 2 for `node` (it sits beside its kernel),
    /// one per core for `coordinator`, `egress`, `dev` and `demo`, 1 for the client commands].
    #[arg(long, global = true, value_name = "N", env = "AIRLOCK_THREADS")]
    threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// How many worker threads this command's runtime gets (`--threads`, else its default).
    pub fn worker_threads(&self) -> usize {
        if let Some(threads) = self.threads {
            return threads.get();
        }
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        match self.command {
            // A node shares its machine (and its tier's CPU) with the kernel it serves.
            Command::Node(_) => 2,
            Command::Coordinator(_) | Command::Egress(_) | Command::Dev(_) | Command::Demo(_) => {
                cores
            }
            Command::Status(_)
            | Command::Exec(_)
            | Command::Notebook(_)
            | Command::Token(_)
            | Command::Keygen(_)
            | Command::Python(_) => 1,
        }
    }

    pub fn default_log_filter(&self) -> &'static str {
        if self.verbose {
            "debug,quinn=info,rustls=info,zeromq=info,tokio_tungstenite=info,tungstenite=info"
        } else if matches!(self.command, Command::Demo(_) | Command::Dev(_)) {
            // The tour prints its own story; the node's logs would interleave with it.
            "warn"
        } else {
            "warn,airlock=info,airlock_node=info"
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A guided tour on this machine: a region with a warm pool, a claimed document, clients
    /// over QUIC and WebSocket, a reactive notebook.
    Demo(demo::Args),
    /// Run a whole region on this machine: coordinator, warm pool of jailed kernels, store.
    Dev(dev::Args),
    /// Run a member of a region's coordinator group, or make the group's certificates.
    Coordinator(coordinator::Args),
    /// Show a region's leader, pools, tasks and documents (for operators).
    Status(status::Args),
    /// Serve one document: start its kernel and listen for clients over QUIC and WebSocket.
    Node(Box<node::Args>),
    /// Run code in a document over QUIC (default) or WebSocket and print its outputs.
    Exec(exec::Args),
    /// Work with a document's cells: import, run, set, graph, export, mode.
    Notebook(notebook::Args),
    /// Mint a capability token for local use (the coordinator issues them in a cluster).
    Token(keys::TokenArgs),
    /// Make an ed25519 key pair for signing capability tokens.
    Keygen(keys::KeygenArgs),
    /// Create (or check) the managed Python environment kernels run in, and print its path.
    Python(python::Args),
    /// Run the egress gateway: tunnel, CONNECT and SOCKS5 front ends under per-tenant policy.
    Egress(egress::Args),
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

/// How a command reaches a region's coordinators.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorArgs {
    /// Any coordinator of the region.
    #[arg(
        long,
        value_name = "URL",
        env = "AIRLOCK_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    pub coordinator: String,
    /// The API token: an operator token, or a backend token where reading is enough.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "AIRLOCK_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: String,
}

impl CoordinatorArgs {
    pub fn client(&self) -> anyhow::Result<airlock_client::coordinator::ApiClient> {
        Ok(airlock_client::coordinator::ApiClient::new(
            &self.coordinator,
            &self.api_token,
        )?)
    }
}

/// Where kernels' network traffic goes: through the egress gateway's tunnel, or nowhere.
#[derive(Debug, Clone, clap::Args)]
pub struct EgressArgs {
    /// The egress gateway's QUIC tunnel (HOST:PORT, UDP). With it every kernel gets a network
    /// in which each TCP connection and DNS query goes to this node and leaves through the
    /// gateway, under the tenant's policy and from its static addresses. Without it kernels
    /// have no network at all. Needs the jail, root, and the `ip` and `nft` commands.
    #[arg(long, value_name = "ADDR", requires_all = ["egress_ca", "egress_cert", "egress_key"])]
    pub egress_gateway: Option<std::net::SocketAddr>,
    /// The DNS name in the gateway's certificate [default: "egress"].
    #[arg(long, value_name = "NAME", requires = "egress_gateway")]
    pub egress_server_name: Option<String>,
    /// PEM certificate(s) the gateway's certificate must chain to.
    #[arg(long, value_name = "FILE", requires = "egress_gateway")]
    pub egress_ca: Option<PathBuf>,
    /// This node's client certificate (PEM) for the tunnel; its DNS name must be one of the
    /// gateway's [[nodes]].
    #[arg(long, value_name = "FILE", requires = "egress_gateway")]
    pub egress_cert: Option<PathBuf>,
    /// The key of --egress-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "egress_gateway")]
    pub egress_key: Option<PathBuf>,
}

impl EgressArgs {
    /// Puts egress into `jail`, after checking what it needs; does nothing without
    /// `--egress-gateway`.
    pub fn apply(&self, jail: Option<&mut airlock_node::jail::JailConfig>) -> anyhow::Result<()> {
        use airlock_egress::tunnel::{Identity, TunnelClientConfig, read_certs};
        use anyhow::Context as _;
        let Some(gateway) = self.egress_gateway else {
            return Ok(());
        };
        let Some(jail) = jail else {
            anyhow::bail!(
                "--egress-gateway carries kernels' traffic out of the jail's network namespace, \
                 and --insecure-no-jail has no such namespace: drop one of the two"
            );
        };
        if let Some(missing) = airlock_node::egress::netns::missing_tools() {
            anyhow::bail!("--egress-gateway needs {missing}");
        }
        let (Some(ca), Some(cert), Some(key)) =
            (&self.egress_ca, &self.egress_cert, &self.egress_key)
        else {
            anyhow::bail!("--egress-gateway needs --egress-ca, --egress-cert and --egress-key");
        };
        let config = TunnelClientConfig {
            gateway,
            server_name: self
                .egress_server_name
                .clone()
                .unwrap_or_else(|| "egress".to_owned()),
            gateway_roots: read_certs(ca)
                .with_context(|| format!("--egress-ca {}", ca.display()))?,
            identity: Identity::from_pem_files(cert, key)
                .context("reading --egress-cert and --egress-key")?,
        };
        jail.egress = Some(airlock_node::egress::Egress::new(config));
        Ok(())
    }
}

/// How kernels are sandboxed: jailed by default, with per-kernel limits taken from a tier and
/// overridden field by field by the explicit limit flags.
#[derive(Debug, clap::Args)]
pub struct JailArgs {
    /// Run kernels WITHOUT any sandbox (no namespaces, limits, seccomp or landlock): kernel code
    /// can then read the node's secrets and reach the network. For development on hosts that
    /// fail the jail's preflight only; logged loudly on every start.
    #[arg(long)]
    insecure_no_jail: bool,
    /// The preset of per-kernel limits: small (512M, 0.5 cores, 128 pids, 128M work dir, 512
    /// open files), standard (1G, 1 core, 256, 256M, 1024) or large (4G, 2 cores, 1024, 1G,
    /// 4096). The flags below override single limits of the tier.
    #[arg(long, value_name = "TIER", value_enum, default_value_t = TierName::Standard)]
    tier: TierName,
    /// Memory limit of each kernel (its work dir and /tmp count against it), e.g. 512M or 2G
    /// [default: the tier's].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Most processes and threads each kernel may run at once [default: the tier's].
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// CPU each kernel may use, in cores (0.5 = half a core) [default: the tier's].
    #[arg(long, value_name = "CORES")]
    cpus: Option<f64>,
    /// Size of each kernel's writable work dir (its cwd and HOME), e.g. 256M [default: the
    /// tier's].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    work_dir_size: Option<u64>,
    /// Most files each kernel process may have open at once [default: the tier's].
    #[arg(long, value_name = "N")]
    open_files: Option<u64>,
}

/// What a kernel may send the node: ZeroMQ message sizes and output sizes. Every byte from a
/// kernel is hostile; these bound what one can cost the node, its clients and its store.
#[derive(Debug, clap::Args)]
pub struct KernelSendArgs {
    /// Largest ZeroMQ frame or message the kernel may send; a kernel that sends more is stopped
    /// and every client is told why.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    kernel_message_limit: u64,
    /// Largest single output (as JSON); a larger one is cut with a note saying so.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "2M")]
    output_limit: u64,
    /// Most output a cell keeps and sends to clients that join later (clipped to fit
    /// --max-frame).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4M")]
    cell_output_limit: u64,
    /// Most output all cells of a document keep together.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    document_output_limit: u64,
    /// Output shown live per second, after a burst of 16 MiB; faster output is hidden (the cell
    /// still keeps what fits) and a note says how much.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1M")]
    output_rate: u64,
}

impl KernelSendArgs {
    /// Applies the limits to `kernel`.
    pub fn apply(&self, kernel: &mut airlock_node::kernel::KernelConfig) {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        kernel.message_limit = size(self.kernel_message_limit);
        kernel.output_limits = airlock_node::document::outputs::OutputLimits {
            per_output: size(self.output_limit),
            per_cell: size(self.cell_output_limit),
            per_document: size(self.document_output_limit),
            live_rate: size(self.output_rate),
            ..Default::default()
        };
    }
}

/// The `--tier` values; [`airlock_node::jail::Tier`] holds their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TierName {
    Small,
    Standard,
    Large,
}

impl From<TierName> for airlock_node::jail::Tier {
    fn from(name: TierName) -> Self {
        use airlock_node::jail::Tier;
        match name {
            TierName::Small => Tier::Small,
            TierName::Standard => Tier::Standard,
            TierName::Large => Tier::Large,
        }
    }
}

impl JailArgs {
    /// The jail configuration, after checking that this host can jail kernels; `None` with
    /// `--insecure-no-jail`.
    pub fn config(&self) -> anyhow::Result<Option<airlock_node::jail::JailConfig>> {
        use airlock_node::jail::{JailConfig, preflight};
        if self.insecure_no_jail {
            let warning = "--insecure-no-jail: kernels run WITHOUT a sandbox; any code a user runs can read this node's secrets, files and network";
            tracing::warn!("{warning}");
            eprintln!("WARNING: {warning}");
            return Ok(None);
        }
        let limits = self.limits()?;
        tracing::info!(
            tier = %airlock_node::jail::Tier::from(self.tier),
            memory_bytes = limits.memory_bytes,
            cpus = limits.cpus,
            pids = limits.pids,
            work_dir_bytes = limits.work_dir_bytes,
            open_files = limits.open_files,
            "kernel limits"
        );
        let host = preflight()?;
        for warning in &host.warnings {
            tracing::warn!("jail: {warning}");
        }
        Ok(Some(JailConfig {
            limits,
            ..JailConfig::default()
        }))
    }

    /// The tier's limits with every explicitly given limit flag applied over them.
    fn limits(&self) -> anyhow::Result<airlock_node::jail::TierLimits> {
        let tier = airlock_node::jail::Tier::from(self.tier);
        let preset = tier.limits();
        let limits = airlock_node::jail::TierLimits {
            memory_bytes: self.memory.unwrap_or(preset.memory_bytes),
            cpus: self.cpus.unwrap_or(preset.cpus),
            pids: self.pids.unwrap_or(preset.pids),
            work_dir_bytes: self.work_dir_size.unwrap_or(preset.work_dir_bytes),
            open_files: self.open_files.unwrap_or(preset.open_files),
            ..preset
        };
        if !limits.cpus.is_finite() || limits.cpus <= 0.0 {
            anyhow::bail!(
                "--cpus must be a positive number of cores, not {}",
                limits.cpus
            );
        }
        Ok(limits)
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
        Command::Dev(args) => dev::run(args).await,
        Command::Coordinator(args) => coordinator::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Node(args) => node::run(*args).await,
        Command::Exec(args) => exec::run(args).await,
        Command::Notebook(args) => notebook::run(args).await,
        Command::Token(args) => keys::token(args),
        Command::Keygen(args) => keys::keygen(args),
        Command::Python(args) => python::run(args).await,
        Command::Egress(args) => egress::run(args).await,
    }
}

/// Waits for Ctrl-C or SIGTERM: how every long-running command is asked to stop.
pub async fn wait_for_signal() {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed expectation is a failed test

    use airlock_node::jail::{Tier, TierLimits};
    use clap::Parser;

    use super::JailArgs;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        jail: JailArgs,
    }

    fn limits(args: &[&str]) -> TierLimits {
        let flags =
            Flags::try_parse_from(std::iter::once("airlock").chain(args.iter().copied())).unwrap();
        flags.jail.limits().unwrap()
    }

    #[test]
    fn the_tier_is_standard_unless_named() {
        assert_eq!(limits(&[]), Tier::Standard.limits());
        assert_eq!(limits(&["--tier", "small"]), Tier::Small.limits());
        assert_eq!(limits(&["--tier", "standard"]), Tier::Standard.limits());
        assert_eq!(limits(&["--tier", "large"]), Tier::Large.limits());
        assert!(Flags::try_parse_from(["airlock", "--tier", "huge"]).is_err());
    }

    #[test]
    fn explicit_limits_override_the_tier() {
        let large = Tier::Large.limits();
        assert_eq!(
            limits(&["--tier", "large", "--memory", "2G"]),
            TierLimits {
                memory_bytes: 2 << 30,
                ..large
            }
        );
        assert_eq!(
            limits(&[
                "--tier",
                "small",
                "--memory",
                "768M",
                "--cpus",
                "1.5",
                "--pids",
                "64",
                "--work-dir-size",
                "64M",
                "--open-files",
                "100",
            ]),
            TierLimits {
                memory_bytes: 768 << 20,
                cpus: 1.5,
                pids: 64,
                work_dir_bytes: 64 << 20,
                open_files: 100,
                ..Tier::Small.limits()
            }
        );
        // Without --tier the overrides apply over the standard tier.
        assert_eq!(
            limits(&["--open-files", "4096"]),
            TierLimits {
                open_files: 4096,
                ..Tier::Standard.limits()
            }
        );
    }

    #[test]
    fn nonsense_cpus_are_refused() {
        for cpus in ["0", "-1", "NaN", "inf"] {
            let flag = format!("--cpus={cpus}");
            let flags = Flags::try_parse_from(["airlock", flag.as_str()]).unwrap();
            assert!(flags.jail.limits().is_err(), "--cpus {cpus}");
        }
    }
}
