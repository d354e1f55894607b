//! `airlock dev`: a whole region on this machine in one process — a single-member coordinator,
//! the local driver with a warm pool of jailed kernels, the egress gateway their network goes
//! through ([`super::dev_egress`]), and a document store in a folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_client::coordinator::ApiClient;
use airlock_coordinator::api::{ApiRole, ApiToken};
use airlock_coordinator::cluster::{self, ProcessConfig, RunningCoordinator};
use airlock_coordinator::driver::local::{LocalDriver, LocalDriverConfig, NodeCommand};
use airlock_coordinator::model::{PoolTarget, RuntimeVersion, Tier};
use airlock_coordinator::pool::PoolConfig;
use airlock_coordinator::raft::RaftConfig;
use airlock_coordinator::raft::tls::ClusterCa;
use airlock_coordinator::service::CoordinatorConfig;
use anyhow::Context as _;

use super::PythonArgs;
use super::dev_egress::KernelNetwork;

/// What `airlock dev --help` teaches after the flags.
const GUIDE: &str = "\
Kernels' network: dev also runs the egress gateway in-process, as production does. Each
jailed kernel gets a network namespace whose TCP connections and DNS queries go to its node
and leave through the gateway's QUIC tunnel (127.0.0.1, mutual TLS), from this host's
outbound address, for tenant \"default\": public destinations are allowed; loopback, private
ranges, the cloud metadata address (169.254.169.254) and this host itself are refused, and the
cell that tried gets a line `[airlock egress] host:port denied: <reason>` on stderr. Its
certificates, config (egress.toml) and audit log (audit.jsonl, one JSON line per flow) are in
<data>/egress/. The coordinator publishes the static address (GET /v1/egress-ips).
With --no-egress, or without the `ip` and `nft` commands, there is no gateway and kernels
have no network at all. With --insecure-no-jail there is no gateway either, and kernels use
this host's network directly, unchecked.

Then, in another terminal:
  airlock notebook --coordinator http://127.0.0.1:7700 --api-token <token> --doc hello import examples/orders-by-region.ipynb
  airlock notebook --coordinator http://127.0.0.1:7700 --api-token <token> --doc hello run
  airlock exec --coordinator http://127.0.0.1:7700 --api-token <token> --doc hello -c 'import urllib.request; urllib.request.urlopen(\"http://169.254.169.254/\", timeout=5)'
  airlock status --coordinator http://127.0.0.1:7700 --api-token <token>";

#[derive(Debug, clap::Args)]
#[command(after_help = GUIDE)]
pub struct Args {
    /// Where the coordinator's HTTP API listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    api: SocketAddr,
    /// Where the coordinator keeps its Raft log, the document store and task logs
    /// [default: $XDG_DATA_HOME/airlock/dev].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// How many warm kernels to keep ready.
    #[arg(long, value_name = "N", default_value_t = 2)]
    warm: u32,
    /// Run kernels WITHOUT the jail (hosts that fail the jail's preflight; never production).
    #[arg(long)]
    insecure_no_jail: bool,
    /// Do not run the egress gateway: kernels then have no network at all (otherwise their
    /// connections leave through the gateway, under its policy; see below).
    #[arg(long)]
    no_egress: bool,
    #[command(flatten)]
    python: PythonArgs,
}

/// The region `dev` runs; it picks the static egress addresses in the gateway's config.
pub const REGION: &str = "local";

/// A region on this machine, as `dev` and `demo` run it.
#[derive(Debug)]
pub struct DevRegion {
    pub running: RunningCoordinator<LocalDriver>,
    pub api_url: String,
    pub operator_token: String,
    pub data: PathBuf,
    /// The egress gateway kernels' connections go through, or why they have no network.
    pub network: KernelNetwork,
    /// Short folder for the tasks' kernel sockets (socket paths must stay under 108 bytes).
    _runtime: tempfile::TempDir,
}

/// How to start a [`DevRegion`].
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub api: SocketAddr,
    pub data: PathBuf,
    pub warm: u32,
    pub insecure_no_jail: bool,
    /// Run no egress gateway (kernels get no network).
    pub no_egress: bool,
    /// The interpreter tasks' kernels use (`--python`), if not the managed environment.
    pub python: Option<PathBuf>,
}

impl DevRegion {
    pub async fn start(options: DevOptions) -> anyhow::Result<DevRegion> {
        std::fs::create_dir_all(&options.data)
            .with_context(|| format!("creating {}", options.data.display()))?;
        // Not the host's /tmp: as root, /run/airlock (see `default_runtime_dir`).
        let runtime_parent = airlock_node::jail::default_runtime_dir();
        std::fs::create_dir_all(&runtime_parent)
            .with_context(|| format!("creating {}", runtime_parent.display()))?;
        let runtime = tempfile::Builder::new()
            .prefix("airlock-dev-")
            .tempdir_in(&runtime_parent)
            .context("making a runtime folder for the tasks")?;
        let ca = ClusterCa::generate("airlock dev").context("making the dev cluster's CA")?;
        let tls = ca
            .issue("coordinator-1", &["127.0.0.1", "localhost"])
            .context("making the coordinator's certificate")?;
        let raft = RaftConfig::new(
            1,
            options.data.join("raft"),
            ([127, 0, 0, 1], 0).into(),
            tls,
        );
        let store = options.data.join("documents").display().to_string();
        let mut coordinator = CoordinatorConfig::local(REGION, store, String::new());
        coordinator.pools = vec![(
            Tier("standard".into()),
            PoolTarget {
                floor: options.warm,
                ceiling: (options.warm * 4).max(8),
                buffer_factor: 2.0,
                version: RuntimeVersion(env!("CARGO_PKG_VERSION").into()),
            },
        )];
        let operator_token = token_in(&options.data.join("operator-token"))?;
        let mut driver_config = LocalDriverConfig::new(
            NodeCommand::this_executable()?,
            runtime.path().to_owned(),
            options.data.join("logs"),
        );
        driver_config.insecure_no_jail = options.insecure_no_jail;
        driver_config.stop_grace = Duration::from_secs(5);
        let driver = Arc::new(LocalDriver::new(driver_config));
        let python_args: Vec<String> = options
            .python
            .iter()
            .flat_map(|p| ["--python".to_owned(), p.display().to_string()])
            .collect();
        let mut config = ProcessConfig {
            raft,
            api_listen: options.api,
            // A single member: bootstrap it with its own address (filled in once bound).
            initialize: Some(BTreeMap::from([(1, String::new())])),
            coordinator,
            pool: PoolConfig::default(),
            tokens: vec![ApiToken {
                token: operator_token.clone(),
                role: ApiRole::Operator,
            }],
        };
        let mut network = KernelNetwork::start(
            &options.data.join("egress"),
            REGION,
            options.no_egress,
            options.insecure_no_jail,
        )
        .await;
        config.coordinator.extra_node_args = python_args;
        config
            .coordinator
            .extra_node_args
            .extend(network.node_args());
        let running = match cluster::start(config, Some(driver), None).await {
            Ok(running) => running,
            Err(err) => {
                network.shutdown().await;
                return Err(err.into());
            }
        };
        let api_url = format!("http://{}", running.api_addr);
        if let KernelNetwork::Gateway(gateway) = &mut network {
            let published = match ApiClient::new(&api_url, &operator_token) {
                Ok(api) => gateway.publish(&api, Duration::from_secs(30)).await,
                Err(err) => Err(err.into()),
            };
            if let Err(err) = published {
                running.shutdown().await;
                network.shutdown().await;
                return Err(err);
            }
        }
        Ok(DevRegion {
            api_url,
            running,
            operator_token,
            data: options.data,
            network,
            _runtime: runtime,
        })
    }

    /// Lines saying where kernels' connections go, for a banner.
    pub fn network_lines(&self) -> Vec<String> {
        let gateway = match &self.network {
            KernelNetwork::Gateway(gateway) => gateway,
            other => {
                return other
                    .without_gateway()
                    .map(|line| format!("egress         {line}"))
                    .into_iter()
                    .collect();
            }
        };
        let ips = match &gateway.published {
            Some(published) => published
                .iter()
                .map(|(tenant, ips)| {
                    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                    format!("{tenant}: {}", ips.join(" "))
                })
                .collect::<Vec<_>>()
                .join("; "),
            None => "none: this host has no outbound IPv4 address, so the gateway denies every \
                     kernel flow for lack of a static address"
                .to_owned(),
        };
        vec![
            format!(
                "egress tunnel  {} (QUIC, mutual TLS; config {})",
                gateway.tunnel,
                gateway.files.config.display()
            ),
            format!("audit log      {}", gateway.files.audit.display()),
            format!(
                "egress IPs     {ips}   (GET {}/v1/egress-ips)",
                self.api_url
            ),
        ]
    }

    /// Waits until `count` warm tasks are ready, printing progress; errors after `patience`.
    pub async fn wait_warm(&self, count: u32, patience: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut shown = u32::MAX;
        loop {
            let warm = self.running.coordinator.read(|state| {
                state
                    .counts()
                    .values()
                    .map(|counts| counts.warm)
                    .sum::<u32>()
            });
            if warm != shown {
                eprintln!("    warm kernels: {warm} of {count}");
                shown = warm;
            }
            if warm >= count {
                return Ok(started.elapsed());
            }
            if started.elapsed() > patience {
                anyhow::bail!(
                    "only {warm} of {count} kernels became warm within {} s; see the task logs in {}",
                    patience.as_secs(),
                    self.data.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the coordinator (and with it the warm kernels), then the egress gateway.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
        self.network.shutdown().await;
    }
}

/// The operator token kept in `path`, made on first use.
fn token_in(path: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(token) = std::fs::read_to_string(path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let bytes: [u8; 24] = rand::random();
    let token = format!("op-{}", hex_string(&bytes));
    std::fs::write(path, &token).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn default_data() -> anyhow::Result<PathBuf> {
    Ok(airlock_node::store::data_home()
        .context("neither XDG_DATA_HOME nor HOME is set; pass --data DIR")?
        .join("dev"))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Build the managed environment first, so the tasks do not each try at once.
    let python = args.python.interpreter().await?;
    let data = match args.data {
        Some(data) => data,
        None => default_data()?,
    };
    eprintln!(
        "starting a region on this machine: coordinator, warm pool, {}document store",
        if args.no_egress || args.insecure_no_jail {
            ""
        } else {
            "egress gateway, "
        }
    );
    let region = DevRegion::start(DevOptions {
        api: args.api,
        data,
        warm: args.warm,
        insecure_no_jail: args.insecure_no_jail,
        no_egress: args.no_egress,
        python: Some(python),
    })
    .await?;
    let took = region
        .wait_warm(args.warm, Duration::from_secs(180))
        .await?;
    let url = &region.api_url;
    let token = &region.operator_token;
    println!();
    println!("Airlock dev region ready in {:.1} s", took.as_secs_f64());
    println!("  API            {url}   (OpenAPI: {url}/openapi.json)");
    println!("  operator token {token}");
    println!("  data           {}", region.data.display());
    for line in region.network_lines() {
        println!("  {line}");
    }
    println!();
    println!("Try:");
    println!(
        "  curl -s -X POST -H 'Authorization: Bearer {token}' {url}/v1/documents/hello/session -d '{{\"user\":\"me\",\"role\":\"editor\"}}' -H 'Content-Type: application/json'"
    );
    println!(
        "  airlock notebook --coordinator {url} --api-token {token} --doc hello import examples/orders-by-region.ipynb"
    );
    println!("  airlock notebook --coordinator {url} --api-token {token} --doc hello run");
    if region.network.gateway().is_some() {
        println!(
            "  airlock exec --coordinator {url} --api-token {token} --doc hello -c 'import urllib.request; urllib.request.urlopen(\"http://169.254.169.254/\", timeout=5)'   # refused: the metadata address"
        );
    }
    println!("  airlock status --coordinator {url} --api-token {token}");
    println!();
    println!("Press Ctrl-C to stop (warm kernels stop with it; documents stay in the store).");
    super::wait_for_signal().await;
    eprintln!("stopping the region");
    region.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
