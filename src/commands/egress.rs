//! `airlock egress`: run the egress gateway, the only way out for kernel code; `airlock egress
//! flows` lists a document's flows from an audit log, grouped by the cell that opened them.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use airlock_egress::audit::{AuditLog, AuditRecord, AuditSink, Verdict};
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

Safe defaults without configuration ([limits]): 2048 open flows per tenant, 256 per
document, 20 new flows per second per document (burst 100), flows idle for 10 minutes are
closed. Refusals past a document's budget share one audit record with a count.

Reload: edit the config file (watched) or send SIGHUP; open flows keep their decision.

A document's flows, per cell: airlock egress flows --audit-log FILE --doc DOC

Try it:
  airlock egress --config egress.toml --socks 127.0.0.1:1080 --connect 127.0.0.1:3128
  curl -x socks5h://USER:PASS@127.0.0.1:1080 https://example.com
  curl -px http://USER:PASS@127.0.0.1:3128 https://example.com

See docs/EGRESS.md for the config file, the audit record and the metrics.";

/// Run the egress gateway.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = GUIDE,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<EgressCommand>,
    /// The gateway's config file (TOML): tenants, static IPs per region, rules, limits,
    /// credentials, nodes.
    #[arg(
        long,
        short,
        value_name = "FILE",
        env = "AIRLOCK_EGRESS_CONFIG",
        required = true
    )]
    config: Option<PathBuf>,
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

#[derive(Debug, clap::Subcommand)]
enum EgressCommand {
    Flows(FlowsArgs),
}

/// What `airlock egress flows --help` teaches after the flags.
const FLOWS_GUIDE: &str = "\
Reads the gateway's audit log (one JSON line per flow) and prints one row per cell, run,
user, destination and verdict, with how many flows that is and the bytes they moved, so you
can see which cell of a notebook talked to what and who ran it.

The cell, run and user come from the node: they name the cell that was executing when the
kernel opened the connection. Flows opened between runs, and CONNECT/SOCKS5 flows, show '-'.
A refusal past the document's audit budget is one record standing for many flows; FLOWS
counts them all. Name lookups are summed in a last line, not listed.

Examples:
  airlock egress flows --audit-log /var/log/airlock/egress.jsonl --doc reports
  airlock egress flows --audit-log egress.jsonl --doc reports --tenant acme --json | jq .";

/// List a document's flows from an audit log, grouped by the cell that opened them.
#[derive(Debug, clap::Args)]
#[command(after_long_help = FLOWS_GUIDE)]
struct FlowsArgs {
    /// The audit log to read (JSON lines, as `airlock egress --audit` writes them).
    #[arg(long, value_name = "FILE")]
    audit_log: PathBuf,
    /// The document whose flows to list.
    #[arg(long, value_name = "DOC")]
    doc: String,
    /// Only this tenant's document of that name [default: any tenant].
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of `airlock egress flows`: flows alike in everything but their number and bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct FlowGroup {
    cell: Option<String>,
    run: Option<u64>,
    user: Option<String>,
    destination: String,
    verdict: Verdict,
    /// Flows this row stands for (aggregated refusal records count for their `count`).
    count: u64,
    bytes_out: u64,
    bytes_in: u64,
}

/// What an audit log says about one document.
#[derive(Debug, Default, PartialEq, Eq)]
struct DocumentFlows {
    groups: Vec<FlowGroup>,
    /// Name lookups of the document (records of front end `lookup`, by their count).
    lookups: u64,
    /// Lines that were not audit records.
    unreadable: u64,
}

/// Groups the records of `doc` (of `tenant`, if given) by cell, run, user, destination and
/// verdict; cells in order, flows outside any cell last.
fn group_flows(
    lines: impl Iterator<Item = String>,
    doc: &str,
    tenant: Option<&str>,
) -> DocumentFlows {
    type Key = (
        bool,
        Option<String>,
        Option<u64>,
        Option<String>,
        String,
        u8,
    );
    let mut groups: BTreeMap<Key, FlowGroup> = BTreeMap::new();
    let mut flows = DocumentFlows::default();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(record) = serde_json::from_str::<AuditRecord>(&line) else {
            flows.unreadable += 1;
            continue;
        };
        if record.document != doc || tenant.is_some_and(|tenant| record.tenant != tenant) {
            continue;
        }
        if record.front_end == "lookup" {
            flows.lookups += record.count;
            continue;
        }
        let destination = destination(&record);
        let key = (
            record.cell.is_none(),
            record.cell.clone(),
            record.run,
            record.user.clone(),
            destination.clone(),
            record.verdict as u8,
        );
        let group = groups.entry(key).or_insert_with(|| FlowGroup {
            cell: record.cell.clone(),
            run: record.run,
            user: record.user.clone(),
            destination,
            verdict: record.verdict,
            count: 0,
            bytes_out: 0,
            bytes_in: 0,
        });
        group.count += record.count.max(1);
        group.bytes_out += record.bytes_out;
        group.bytes_in += record.bytes_in;
    }
    flows.groups = groups.into_values().collect();
    flows
}

/// `host:port` as requested, IPv6 in brackets.
fn destination(record: &AuditRecord) -> String {
    let host = &record.requested_host;
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", record.port)
    } else {
        format!("{host}:{}", record.port)
    }
}

fn verdict_word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Limited => "limited",
        Verdict::Error => "error",
    }
}

/// The table `airlock egress flows` prints. Every field is escaped: the destination is what
/// the kernel asked for.
fn render_flows(doc: &str, flows: &DocumentFlows) -> String {
    let escape = |text: &str| text.escape_debug().to_string();
    let rows: Vec<[String; 8]> = flows
        .groups
        .iter()
        .map(|group| {
            [
                group.cell.as_deref().map_or("-".to_owned(), escape),
                group.run.map_or("-".to_owned(), |run| run.to_string()),
                match group.user.as_deref() {
                    None | Some("") => "-".to_owned(),
                    Some(user) => escape(user),
                },
                escape(&group.destination),
                verdict_word(group.verdict).to_owned(),
                group.count.to_string(),
                group.bytes_out.to_string(),
                group.bytes_in.to_string(),
            ]
        })
        .collect();
    let header = [
        "CELL",
        "RUN",
        "USER",
        "DESTINATION",
        "VERDICT",
        "FLOWS",
        "BYTES OUT",
        "BYTES IN",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // Numbers right-aligned, words left-aligned.
            if i >= 5 {
                text.push_str(&format!("{cell:>width$}"));
            } else {
                text.push_str(&format!("{cell:<width$}"));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str(&format!(
            "no flows of document {} in this log\n",
            escape(doc)
        ));
    } else {
        out.push_str(&line(&header));
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
    }
    if flows.lookups > 0 {
        out.push_str(&format!("and {} name lookups\n", flows.lookups));
    }
    out
}

/// `airlock egress flows`.
fn list_flows(args: &FlowsArgs) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(&args.audit_log)
        .with_context(|| format!("opening the audit log {}", args.audit_log.display()))?;
    let lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
    let flows = group_flows(lines, &args.doc, args.tenant.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&flows.groups)?);
    } else {
        print!("{}", render_flows(&args.doc, &flows));
    }
    if flows.unreadable > 0 {
        eprintln!(
            "{} line(s) of {} were not audit records and were skipped",
            flows.unreadable,
            args.audit_log.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(EgressCommand::Flows(flows)) = &args.command {
        return list_flows(flows);
    }
    let config_path = args
        .config
        .clone()
        .context("--config is needed to run the gateway")?;
    let mut config =
        Config::load(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
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
    let audit = AuditLog::start_with_queue(sink.clone(), config.audit.queue)
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
        config_path.display(),
        std::process::id()
    );

    let poll = if args.no_watch {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        Duration::from_secs(2)
    };
    let watcher = tokio::spawn(server::watch_config(
        gateway.clone(),
        config_path.clone(),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        egress: Args,
    }

    fn record(cell: Option<(&str, u64, &str)>, host: &str, verdict: Verdict, count: u64) -> String {
        let record = AuditRecord {
            flow: 1,
            front_end: "tunnel".to_owned(),
            tenant: "acme".to_owned(),
            document: "reports".to_owned(),
            cell: cell.map(|(cell, _, _)| cell.to_owned()),
            run: cell.map(|(_, run, _)| run),
            user: cell.map(|(_, _, user)| user.to_owned()),
            requested_host: host.to_owned(),
            port: 443,
            verdict,
            bytes_out: 10,
            bytes_in: 100,
            count,
            ..AuditRecord::default()
        };
        serde_json::to_string(&record).unwrap()
    }

    #[test]
    fn flows_are_grouped_per_cell_run_user_destination_and_verdict() {
        let ada = Some(("cell-a", 3, "ada"));
        let bob = Some(("cell-b", 1, "bob"));
        let mut lines = vec![
            record(bob, "api.example.com", Verdict::Allow, 1),
            record(ada, "api.example.com", Verdict::Allow, 1),
            record(ada, "api.example.com", Verdict::Allow, 1),
            record(ada, "169.254.169.254", Verdict::Deny, 1),
            // An aggregated refusal record stands for 500 flows.
            record(ada, "169.254.169.254", Verdict::Deny, 500),
            record(None, "pypi.org", Verdict::Allow, 1),
            "not json".to_owned(),
        ];
        let mut other = serde_json::from_str::<AuditRecord>(&lines[0]).unwrap();
        other.document = "elsewhere".to_owned();
        lines.push(serde_json::to_string(&other).unwrap());
        let mut lookup = serde_json::from_str::<AuditRecord>(&lines[0]).unwrap();
        lookup.front_end = "lookup".to_owned();
        lookup.count = 4;
        lines.push(serde_json::to_string(&lookup).unwrap());

        let flows = group_flows(lines.into_iter(), "reports", None);
        assert_eq!(flows.unreadable, 1);
        assert_eq!(flows.lookups, 4);
        let rows: Vec<(Option<&str>, &str, Verdict, u64, u64)> = flows
            .groups
            .iter()
            .map(|g| {
                (
                    g.cell.as_deref(),
                    g.destination.as_str(),
                    g.verdict,
                    g.count,
                    g.bytes_in,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    Some("cell-a"),
                    "169.254.169.254:443",
                    Verdict::Deny,
                    501,
                    200
                ),
                (
                    Some("cell-a"),
                    "api.example.com:443",
                    Verdict::Allow,
                    2,
                    200
                ),
                (
                    Some("cell-b"),
                    "api.example.com:443",
                    Verdict::Allow,
                    1,
                    100
                ),
                (None, "pypi.org:443", Verdict::Allow, 1, 100),
            ]
        );
        let table = render_flows("reports", &flows);
        let mut table_lines = table.lines();
        assert!(table_lines.next().unwrap().starts_with("CELL"));
        assert!(table_lines.next().unwrap().starts_with("cell-a  3    ada"));
        assert!(table.contains("and 4 name lookups"));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with('-') && l.contains("pypi.org:443"))
        );
        assert!(
            group_flows(std::iter::empty(), "reports", Some("other"))
                .groups
                .is_empty()
        );
        assert_eq!(
            render_flows("nope", &DocumentFlows::default()),
            "no flows of document nope in this log\n"
        );
    }

    #[test]
    fn a_hostile_destination_cannot_break_the_table() {
        let line = record(Some(("c", 1, "u")), "x\ny.example", Verdict::Deny, 1);
        let flows = group_flows(std::iter::once(line), "reports", None);
        assert_eq!(render_flows("reports", &flows).lines().count(), 2);
    }

    #[test]
    fn the_flows_subcommand_needs_no_config() {
        let cli = Cli::try_parse_from([
            "egress",
            "flows",
            "--audit-log",
            "egress.jsonl",
            "--doc",
            "reports",
            "--json",
        ])
        .unwrap();
        let Some(EgressCommand::Flows(flows)) = cli.egress.command else {
            panic!("not the flows subcommand");
        };
        assert_eq!(flows.doc, "reports");
        assert!(flows.json);
        // Serving still needs its config.
        assert!(Cli::try_parse_from(["egress", "--socks", "127.0.0.1:1080"]).is_err());
        assert!(Cli::try_parse_from(["egress", "--config", "egress.toml"]).is_ok());
    }

    #[tokio::test]
    async fn flows_lists_a_real_audit_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let text = [
            record(
                Some(("cell-a", 1, "ada")),
                "api.example.com",
                Verdict::Allow,
                1,
            ),
            record(
                Some(("cell-a", 1, "ada")),
                "api.example.com",
                Verdict::Allow,
                1,
            ),
        ]
        .join("\n");
        std::fs::write(&path, text).unwrap();
        let args = FlowsArgs {
            audit_log: path,
            doc: "reports".to_owned(),
            tenant: Some("acme".to_owned()),
            json: true,
        };
        assert_eq!(list_flows(&args).unwrap(), ExitCode::SUCCESS);
    }
}
