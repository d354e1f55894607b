//! `airlock dev`: a whole region on this machine in one process — a single-member coordinator,
//! the local driver with a warm pool of jailed kernels, and a document store in a folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

#[derive(Debug, clap::Args)]
#[command(after_help = "Then, in another terminal:\n  \
    airlock notebook --coordinator http://127.0.0.1:7700 --api-token <token> --doc hello import examples/orders-by-region.ipynb\n  \
    airlock notebook --coordinator http://127.0.0.1:7700 --api-token <token> --doc hello run\n  \
    airlock status --coordinator http://127.0.0.1:7700 --api-token <token>")]
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
    #[command(flatten)]
    python: PythonArgs,
}

/// A region on this machine, as `dev` and `demo` run it.
#[derive(Debug)]
pub struct DevRegion {
    pub running: RunningCoordinator<LocalDriver>,
    pub api_url: String,
    pub operator_token: String,
    pub data: PathBuf,
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
    /// The interpreter tasks' kernels use (`--python`), if not the managed environment.
    pub python: Option<PathBuf>,
}

impl DevRegion {
    pub async fn start(options: DevOptions) -> anyhow::Result<DevRegion> {
        std::fs::create_dir_all(&options.data)
            .with_context(|| format!("creating {}", options.data.display()))?;
        let runtime = tempfile::Builder::new()
            .prefix("airlock-dev-")
            .tempdir()
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
        let mut coordinator = CoordinatorConfig::local("local", store, String::new());
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
        config.coordinator.extra_node_args = python_args;
        let running = cluster::start(config, Some(driver), None).await?;
        Ok(DevRegion {
            api_url: format!("http://{}", running.api_addr),
            running,
            operator_token,
            data: options.data,
            _runtime: runtime,
        })
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

    pub async fn shutdown(self) {
        self.running.shutdown().await;
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
    eprintln!("starting a region on this machine: coordinator, warm pool, document store");
    let region = DevRegion::start(DevOptions {
        api: args.api,
        data,
        warm: args.warm,
        insecure_no_jail: args.insecure_no_jail,
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
    println!();
    println!("Try:");
    println!(
        "  curl -s -X POST -H 'Authorization: Bearer {token}' {url}/v1/documents/hello/session -d '{{\"user\":\"me\",\"role\":\"editor\"}}' -H 'Content-Type: application/json'"
    );
    println!(
        "  airlock notebook --coordinator {url} --api-token {token} --doc hello import examples/orders-by-region.ipynb"
    );
    println!("  airlock notebook --coordinator {url} --api-token {token} --doc hello run");
    println!("  airlock status --coordinator {url} --api-token {token}");
    println!();
    println!("Press Ctrl-C to stop (warm kernels stop with it; documents stay in the store).");
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping the region");
    region.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
