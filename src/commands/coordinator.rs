//! `airlock coordinator`: one member of a region's Raft group, the certificates its members use
//! to trust each other, and the region's published egress IP sets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use airlock_coordinator::api::{ApiRole, ApiToken, EgressIps};
use airlock_coordinator::cluster::{self, ProcessConfig};
use airlock_coordinator::driver::local::{LocalDriver, LocalDriverConfig, NodeCommand};
use airlock_coordinator::egress_ip_file::parse_egress_ip_file;
use airlock_coordinator::model::{PoolTarget, RuntimeVersion, Tier};
use airlock_coordinator::pool::PoolConfig;
use airlock_coordinator::raft::RaftConfig;
use airlock_coordinator::raft::tls::{ClusterCa, TlsMaterial};
use airlock_coordinator::service::CoordinatorConfig;
use anyhow::Context as _;

use super::PythonArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Run one coordinator of a region.
    #[command(after_help = "Example, three members on one machine:\n  \
        airlock coordinator certs --out tls --count 3\n  \
        airlock coordinator run --id 1 --raft 127.0.0.1:7801 --api 127.0.0.1:7701 --data c1 --tls-dir tls \\\n    \
        --members 1=127.0.0.1:7801,2=127.0.0.1:7802,3=127.0.0.1:7803 --api-token-file token\n  \
        (and the same with --id 2 and 3 and their own addresses; any member bootstraps the group once)")]
    Run(Box<RunArgs>),
    /// Make a cluster CA and one certificate per coordinator (mutual TLS between members).
    Certs(CertsArgs),
    /// Show the region's static egress IP sets (what users allow-list), or set them with --set.
    #[command(
        name = "egress-ips",
        long_about = "Show the region's static egress IP sets: for each tenant, the addresses \
            the egress gateway binds that tenant's outbound connections to. The coordinators \
            publish them at GET /v1/egress-ips (backend or operator token) so users can \
            allow-list them at their databases and APIs. A tenant that is not listed has no \
            static IPs published: its traffic may leave from any address of the region.\n\n\
            With --set FILE (operator token), replace the sets as a whole: a tenant left out of \
            the file, or given an empty list, is no longer published. Addresses are IPv4 or IPv6 \
            without a port; they are stored sorted and without duplicates. Tenant names are 1 to \
            64 of a-z 0-9 . _ - (the tenant a claim names).",
        after_help = "Examples:\n  \
            airlock coordinator egress-ips --coordinator http://127.0.0.1:7700 --api-token $TOKEN\n  \
            airlock coordinator egress-ips --api-token $OPERATOR_TOKEN --set egress-ips.toml\n\n\
            The file, as TOML (quote names with dots):\n  \
            acme = [\"203.0.113.10\", \"203.0.113.11\", \"2001:db8::10\"]\n  \
            \"team.eu\" = [\"198.51.100.7\"]\n\n\
            or as JSON (a file starting with `{`):\n  \
            {\"acme\": [\"203.0.113.10\", \"2001:db8::10\"], \"team.eu\": [\"198.51.100.7\"]}"
    )]
    EgressIps(EgressIpsArgs),
}

#[derive(Debug, clap::Args)]
pub struct EgressIpsArgs {
    #[command(flatten)]
    region: super::CoordinatorArgs,
    /// Replace the sets with this file's: a map of tenant → list of IP addresses, TOML or JSON
    /// (see the examples below).
    #[arg(long, value_name = "FILE")]
    set: Option<PathBuf>,
    /// Print the coordinator's JSON as it is.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// This member's id in the group (stable across restarts).
    #[arg(long)]
    id: u64,
    /// Where this member's Raft RPC listens (mutual TLS).
    #[arg(long, value_name = "ADDR")]
    raft: SocketAddr,
    /// Where the HTTP API listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    api: SocketAddr,
    /// The URL tasks and clients reach this member's API at [default: http://<--api>].
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// This member's Raft log and state.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Folder with ca.pem, coordinator-<id>.pem and coordinator-<id>-key.pem
    /// (`airlock coordinator certs` makes them).
    #[arg(long, value_name = "DIR")]
    tls_dir: PathBuf,
    /// The group's voting members, `id=host:port` of their Raft RPC, comma-separated. Given to
    /// every member; the group is bootstrapped with it once.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    members: Vec<String>,
    /// A file of API tokens, one per line: `operator <token>` or `backend <token>`.
    #[arg(long, value_name = "FILE", env = "AIRLOCK_API_TOKEN_FILE")]
    api_token_file: PathBuf,
    /// The region this group manages.
    #[arg(long, default_value = "local")]
    region: String,
    /// The document store tasks serve documents from (a folder or URL).
    #[arg(long, value_name = "DIR|URL")]
    store: String,
    /// Warm tasks to keep in the standard pool.
    #[arg(long, default_value_t = 2)]
    warm: u32,
    /// The most tasks of the standard pool.
    #[arg(long, default_value_t = 16)]
    ceiling: u32,
    /// The runtime version new tasks get (warm tasks of other versions are drained).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    runtime_version: String,
    /// Do not start tasks (a member that only votes and answers the API).
    #[arg(long)]
    no_driver: bool,
    /// Folder for the local driver's task runtime folders and logs [default: <--data>/tasks].
    #[arg(long, value_name = "DIR")]
    tasks_dir: Option<PathBuf>,
    /// Start tasks WITHOUT the jail (tests, hosts that cannot jail; never production).
    #[arg(long)]
    insecure_no_jail: bool,
    /// Run tasks with this program instead of `airlock node` (tests): the rest of the command
    /// line after `--task-command` is its arguments, with {task}, {coordinator}, {store} …
    /// replaced.
    #[arg(long, value_name = "PROGRAM", num_args = 1.., allow_hyphen_values = true)]
    task_command: Option<Vec<String>>,
    /// Seconds a claim waits for a warm task before answering 503.
    #[arg(long, default_value_t = 10)]
    claim_wait: u64,
    /// Seconds a task's lease lasts after each heartbeat.
    #[arg(long, default_value_t = 5)]
    lease: u64,
    #[command(flatten)]
    python: PythonArgs,
}

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Where to write ca.pem and the members' certificates and keys.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How many members (ids 1..=count).
    #[arg(long, default_value_t = 3)]
    count: u64,
    /// Host names and addresses the certificates name (what members dial).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    hosts: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Sub::Run(run) => run_member(*run).await,
        Sub::Certs(certs) => make_certs(&certs),
        Sub::EgressIps(egress) => egress_ips(egress).await,
    }
}

async fn egress_ips(args: EgressIpsArgs) -> anyhow::Result<ExitCode> {
    let client = args.region.client()?;
    let answer = match &args.set {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let tenants = parse_egress_ip_file(&text)
                .with_context(|| format!("reading {}", path.display()))?;
            client.set_egress_ips(tenants).await
        }
        None => client.egress_ips().await,
    };
    let ips = match answer {
        Ok(ips) => ips,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ips)?);
    } else {
        print!("{}", render_egress_ips(&ips));
    }
    Ok(ExitCode::SUCCESS)
}

/// The sets as an operator reads them: one line per tenant.
fn render_egress_ips(ips: &EgressIps) -> String {
    let mut out = match ips.updated_ms {
        Some(ms) => format!(
            "region {}: egress IP sets (set at {ms} Unix ms)\n",
            ips.region
        ),
        None => format!("region {}: no egress IP sets published yet\n", ips.region),
    };
    for (tenant, addresses) in &ips.tenants {
        let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        out.push_str(&format!("  {tenant:<20} {}\n", addresses.join(" ")));
    }
    if ips.updated_ms.is_some() {
        out.push_str("tenants not listed have no static IPs published\n");
    }
    out
}

fn make_certs(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ca = ClusterCa::generate("airlock coordinators").context("making the CA")?;
    std::fs::write(args.out.join("ca.pem"), ca.cert_pem())?;
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    for id in 1..=args.count {
        let material = ca
            .issue(&format!("coordinator-{id}"), &hosts)
            .context("issuing a certificate")?;
        let chain: String = material
            .cert_chain
            .iter()
            .map(|cert| airlock_client::pki::encode("CERTIFICATE", cert))
            .collect();
        std::fs::write(args.out.join(format!("coordinator-{id}.pem")), chain)?;
        let key_path = args.out.join(format!("coordinator-{id}-key.pem"));
        std::fs::write(
            &key_path,
            airlock_client::pki::encode("PRIVATE KEY", material.key.secret_der()),
        )?;
        restrict(&key_path)?;
    }
    println!(
        "wrote ca.pem and {} member certificates to {} (naming {})",
        args.count,
        args.out.display(),
        args.hosts.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

fn restrict(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

/// Reads `role token` lines.
fn read_tokens(path: &Path) -> anyhow::Result<Vec<ApiToken>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API token file {}", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (role, token) = line.split_once(char::is_whitespace).with_context(|| {
            format!(
                "{}:{}: write `operator <token>` or `backend <token>`",
                path.display(),
                n + 1
            )
        })?;
        let role = match role {
            "operator" => ApiRole::Operator,
            "backend" => ApiRole::Backend,
            other => anyhow::bail!(
                "{}:{}: unknown role {other:?}; use operator or backend",
                path.display(),
                n + 1
            ),
        };
        let token = token.trim();
        anyhow::ensure!(
            token.len() >= 16,
            "{}:{}: tokens must be at least 16 characters",
            path.display(),
            n + 1
        );
        tokens.push(ApiToken {
            token: token.to_owned(),
            role,
        });
    }
    anyhow::ensure!(!tokens.is_empty(), "{} has no tokens", path.display());
    Ok(tokens)
}

fn members(list: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    list.iter()
        .map(|entry| {
            let (id, addr) = entry
                .split_once('=')
                .with_context(|| format!("member {entry:?}: write id=host:port"))?;
            Ok((
                id.parse()
                    .with_context(|| format!("member {entry:?}: the id is a number"))?,
                addr.to_owned(),
            ))
        })
        .collect()
}

async fn run_member(args: RunArgs) -> anyhow::Result<ExitCode> {
    let tls = TlsMaterial::from_pem_files(
        &args.tls_dir.join("ca.pem"),
        &args.tls_dir.join(format!("coordinator-{}.pem", args.id)),
        &args
            .tls_dir
            .join(format!("coordinator-{}-key.pem", args.id)),
    )
    .with_context(|| {
        format!(
            "reading this member's TLS files from {} (make them with `airlock coordinator certs`)",
            args.tls_dir.display()
        )
    })?;
    let tokens = read_tokens(&args.api_token_file)?;
    let members = members(&args.members)?;
    // Served at /metrics (operator token).
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || handle.render());
    let metrics = Some(render);
    let mut coordinator = CoordinatorConfig::local(
        &args.region,
        args.store.clone(),
        args.advertise.clone().unwrap_or_default(),
    );
    coordinator.pools = vec![(
        Tier("standard".into()),
        PoolTarget {
            floor: args.warm,
            ceiling: args.ceiling.max(args.warm),
            buffer_factor: 2.0,
            version: RuntimeVersion(args.runtime_version.clone()),
        },
    )];
    coordinator.claim_wait = Duration::from_secs(args.claim_wait);
    coordinator.lease = Duration::from_secs(args.lease);
    let driver = if args.no_driver {
        None
    } else {
        let tasks = args
            .tasks_dir
            .clone()
            .unwrap_or_else(|| args.data.join("tasks"));
        let command = match &args.task_command {
            Some(command) => {
                let (program, rest) = command
                    .split_first()
                    .context("--task-command needs a program")?;
                NodeCommand::Custom {
                    program: PathBuf::from(program),
                    args: rest.to_vec(),
                }
            }
            None => {
                let python = args.python.interpreter().await?;
                coordinator.extra_node_args = vec!["--python".into(), python.display().to_string()];
                NodeCommand::this_executable()?
            }
        };
        let mut config = LocalDriverConfig::new(command, tasks.join("run"), tasks.join("logs"));
        config.insecure_no_jail = args.insecure_no_jail;
        Some(Arc::new(LocalDriver::new(config)))
    };
    let config = ProcessConfig {
        raft: RaftConfig::new(args.id, args.data.join("raft"), args.raft, tls),
        api_listen: args.api,
        initialize: (!members.is_empty()).then_some(members),
        coordinator,
        pool: PoolConfig::default(),
        tokens,
    };
    let running = cluster::start(config, driver, metrics).await?;
    eprintln!(
        "coordinator {} of region {}: API http://{}  raft {}",
        args.id, args.region, running.api_addr, running.raft_addr
    );
    super::wait_for_signal().await;
    eprintln!("stopping coordinator {}", args.id);
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
