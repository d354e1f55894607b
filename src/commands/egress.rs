//! `airlock egress`: run the egress gateway, the only way out for kernel code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use airlock_egress::audit::{AuditLog, AuditSink};
use airlock_egress::server::{self, Listeners};
use airlock_egress::{Config, Gateway};

/// What `airlock egress --help` teaches after the flags.
const GUIDE: &str = "\
Every connection a kernel makes leaves through this gateway, from the tenant's static IP,
under the tenant's and document's policy, with one audit record (a JSON line) per flow.

Front ends (each optional; flags override the config's [listen] section):
  --tunnel   QUIC for nodes: mutual TLS ([tunnel] cert, key, client_ca), node certificate
             names mapped to the tenants they may speak for ([[nodes]]).
  --connect  HTTP CONNECT; --socks  SOCKS5 (CONNECT only). Proxy credentials
             ([[credentials]]) name the tenant and document.

Policy: every resolved address is classified. Loopback, private, link-local, CGNAT,
multicast, reserved, IPv4-embedding IPv6 forms and the gateway's own addresses are denied
unless a tenant carves the range out; cloud metadata, unspecified, multicast, broadcast and
the gateway itself never can be. Numeric hosts like 0x7f.1 or 2130706433 are refused. A denied
flow fails at once with a sentence saying why: HTTP 403 + Airlock-Egress-Reason, SOCKS5
reply 2 (reason in the audit record), tunnel reply 'denied' + reason.

Reload: edit the config file (watched) or send SIGHUP; open flows keep their decision.

Try it:
  airlock egress --config egress.toml --socks 127.0.0.1:1080 --connect 127.0.0.1:3128
  curl -x socks5h://USER:PASS@127.0.0.1:1080 https://example.com
  curl -px http://USER:PASS@127.0.0.1:3128 https://example.com

See docs/EGRESS.md for the config file, the audit record and the metrics.";

/// Run the egress gateway.
#[derive(Debug, clap::Args)]
#[command(after_long_help = GUIDE)]
pub struct Args {
    /// The gateway's config file (TOML): tenants, static IPs per region, rules, limits,
    /// credentials, nodes.
    #[arg(long, short, value_name = "FILE", env = "AIRLOCK_EGRESS_CONFIG")]
    config: PathBuf,
    /// Serve HTTP CONNECT here (e.g. 127.0.0.1:3128).
    #[arg(long, value_name = "ADDR")]
    connect: Option<SocketAddr>,
    /// Serve SOCKS5 here (e.g. 127.0.0.1:1080).
    #[arg(long, value_name = "ADDR")]
    socks: Option<SocketAddr>,
    /// Serve the QUIC tunnel for nodes here (UDP, e.g. 0.0.0.0:4433); needs [tunnel] TLS files.
    #[arg(long, value_name = "ADDR")]
    tunnel: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Append audit records (JSON lines) to this file; `-` for standard output [default: the
    /// config's [audit] path, else standard output].
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,
    /// Do not reload when the config file changes (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config =
        Config::load(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    config.listen.connect = args.connect.or(config.listen.connect);
    config.listen.socks = args.socks.or(config.listen.socks);
    config.listen.tunnel = args.tunnel.or(config.listen.tunnel);
    config.listen.metrics = args.metrics.or(config.listen.metrics);
    let listen = config.listen.clone();
    if listen.connect.is_none() && listen.socks.is_none() && listen.tunnel.is_none() {
        anyhow::bail!(
            "no front end to serve: give --connect, --socks or --tunnel (or set them in [listen])"
        );
    }
    if let Some(addr) = listen.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let audit_path = args.audit.clone().or_else(|| config.audit.path.clone());
    let sink = match &audit_path {
        Some(path) if path.as_os_str() != "-" => AuditSink::File(path.clone()),
        _ => AuditSink::Stdout,
    };
    let audit = AuditLog::start(sink.clone())
        .with_context(|| format!("opening the audit log {audit_path:?}"))?;
    let listeners = Listeners::bind(&listen, config.tunnel.as_ref()).await?;
    let addrs = listeners.addresses();
    let region = config.gateway.region.clone();
    let tenants = config.tenants.len();
    let gateway = Gateway::new(config, &addrs.all(), audit)?;

    // Printed to stderr: stdout may be the audit log.
    eprintln!("airlock egress: region {region}, {tenants} tenant(s)");
    if let Some(addr) = addrs.connect {
        eprintln!("  HTTP CONNECT   {addr}");
    }
    if let Some(addr) = addrs.socks {
        eprintln!("  SOCKS5         {addr}");
    }
    if let Some(addr) = addrs.tunnel {
        eprintln!("  tunnel (QUIC)  {addr}  ALPN airlock-egress/1, node certificates required");
    }
    if let Some(addr) = listen.metrics {
        eprintln!("  metrics        http://{addr}/metrics");
    }
    match &sink {
        AuditSink::File(path) => eprintln!("  audit log      {}", path.display()),
        _ => eprintln!("  audit log      standard output"),
    }
    eprintln!(
        "reload: edit {} or `kill -HUP {}`; stop: Ctrl-C",
        args.config.display(),
        std::process::id()
    );

    let poll = if args.no_watch {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        Duration::from_secs(2)
    };
    let watcher = tokio::spawn(server::watch_config(
        gateway.clone(),
        args.config.clone(),
        poll,
    ));
    server::serve(
        gateway,
        listeners,
        super::wait_for_signal(),
        Duration::from_secs(10),
    )
    .await;
    watcher.abort();
    Ok(ExitCode::SUCCESS)
}
