//! The path every flow takes, whichever front end it came through: take a token of the
//! document's new-flow rate, check the request, count it against the connection limits,
//! resolve once, classify every answer, dial a checked address from the tenant's static
//! source, relay with pacing until both sides end or the flow is idle too long, and write one
//! audit record (a refusal past its document's budget is counted into an aggregated one).
//!
//! Strings a client sent (hosts, names) are logged escaped ([`for_log`]): a newline in a SOCKS5
//! host must not forge a log line.
//!
//! The decisions are the policy core's ([`crate::policy`]); this module only drives it with IO
//! and keeps the books (metrics, audit, connection ledger). Front ends call
//! [`Gateway::open`] and, on success, tell their client and call [`Gateway::relay`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::audit::{AuditRecord, DeniedAnswer, Verdict};
use crate::dial::{self, DialError};
use crate::frame::FlowOrigin;
use crate::gateway::{Gateway, RateKey, Snapshot};
use crate::host::{self, Host, HostName};
use crate::metrics as names;
use crate::policy::{Denial, FlowTags, IdleClock, LimitExceeded, Source, TokenBucket};
use crate::resolve::ResolveError;

/// The relay's buffer per direction: large enough for bulk transfers at full speed (small
/// buffers cost throughput; see research/egress.md on proxy buffer sizes).
const RELAY_BUFFER: usize = 64 * 1024;

/// Which front end a flow came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    Connect,
    Socks5,
    Tunnel,
}

impl FrontEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontEnd::Connect => "connect",
            FrontEnd::Socks5 => "socks5",
            FrontEnd::Tunnel => "tunnel",
        }
    }
}

/// The destination as the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestedHost {
    /// A host string, checked with [`host::parse_host`].
    Text(String),
    /// A binary address (SOCKS5 ATYP 1/4, tunnel address types 1/4).
    Ip(IpAddr),
}

impl fmt::Display for RequestedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestedHost::Text(text) => f.write_str(text),
            RequestedHost::Ip(ip) => write!(f, "{}", Host::Ip(*ip)),
        }
    }
}

/// A flow a front end asks for.
#[derive(Debug, Clone)]
pub struct FlowRequest {
    pub front_end: FrontEnd,
    pub tags: FlowTags,
    pub host: RequestedHost,
    pub port: u16,
    pub client: Option<SocketAddr>,
    pub node: Option<String>,
    /// The cell, run and user that opened it (tunnel flows whose node says).
    pub origin: Option<FlowOrigin>,
}

impl FlowRequest {
    /// A request from a proxy client at `client` (no node, no origin: CONNECT and SOCKS5).
    pub fn from_proxy_client(
        front_end: FrontEnd,
        tags: FlowTags,
        host: RequestedHost,
        port: u16,
        client: Option<SocketAddr>,
    ) -> Self {
        FlowRequest {
            front_end,
            tags,
            host,
            port,
            client,
            node: None,
            origin: None,
        }
    }
}

/// `text` as it may go into a log line: control characters, quotes and backslashes escaped,
/// cut to 256 characters. Client-chosen strings go through this.
pub fn for_log(text: &str) -> String {
    let mut escaped: String = text
        .chars()
        .take(256)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(256).is_some() {
        escaped.push('…');
    }
    escaped
}

/// Why a flow did not open. `Display` is the sentence for the user.
#[derive(Debug)]
pub enum FlowFailure {
    Denied(Denial),
    Limited(LimitExceeded),
    Resolve(ResolveError),
    Connect(DialError),
}

impl fmt::Display for FlowFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowFailure::Denied(denial) => write!(f, "{denial}"),
            FlowFailure::Limited(limit) => write!(f, "{limit}"),
            FlowFailure::Resolve(error) => write!(f, "could not resolve: {error}"),
            FlowFailure::Connect(error) => write!(f, "could not connect: {error}"),
        }
    }
}

impl FlowFailure {
    fn verdict(&self) -> Verdict {
        match self {
            FlowFailure::Denied(_) => Verdict::Deny,
            FlowFailure::Limited(_) => Verdict::Limited,
            FlowFailure::Resolve(_) | FlowFailure::Connect(_) => Verdict::Error,
        }
    }

    fn class(&self) -> &'static str {
        match self {
            FlowFailure::Denied(denial) => denial.class(),
            FlowFailure::Limited(LimitExceeded::TenantConnections { .. }) => "tenant_connections",
            FlowFailure::Limited(LimitExceeded::DocumentConnections { .. }) => {
                "document_connections"
            }
            FlowFailure::Limited(LimitExceeded::NewFlowRate { .. }) => "new_flow_rate",
            FlowFailure::Resolve(error) => error.kind(),
            FlowFailure::Connect(error) => error.kind(),
        }
    }
}

/// A refused flow: its number (in the audit log) and why.
#[derive(Debug)]
pub struct Refused {
    pub flow: u64,
    pub failure: FlowFailure,
}

/// An open upstream connection, ready to relay.
#[derive(Debug)]
pub struct OpenFlow {
    pub flow: u64,
    pub upstream: TcpStream,
    pub chosen: SocketAddr,
    pub source: SocketAddr,
    record: AuditRecord,
    started: Instant,
    pacing: Pacing,
    idle_timeout: Option<Duration>,
    _slot: FlowSlot,
}

/// How a relayed flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSummary {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub duration: Duration,
    /// The gateway closed the flow after its idle timeout.
    pub idled_out: bool,
}

/// A place in the connection ledger, given back when dropped.
#[derive(Debug)]
struct FlowSlot {
    gateway: Gateway,
    tags: FlowTags,
    front_end: FrontEnd,
}

impl Drop for FlowSlot {
    fn drop(&mut self) {
        if let Ok(mut ledger) = self.gateway.shared.ledger.lock() {
            ledger.close(&self.tags.tenant, &self.tags.document);
        }
        metrics::gauge!(names::ACTIVE_FLOWS, "front_end" => self.front_end.as_str()).decrement(1);
    }
}

/// Token buckets a flow's bytes pass through (tenant's and document's).
#[derive(Debug, Default, Clone)]
struct Pacing {
    buckets: Vec<Arc<Mutex<TokenBucket>>>,
}

impl Pacing {
    async fn pace(&self, bytes: usize) {
        if self.buckets.is_empty() {
            return;
        }
        let now = Instant::now().into_std();
        let wait = self
            .buckets
            .iter()
            .filter_map(|bucket| bucket.lock().ok().map(|mut b| b.take(now, bytes as u64)))
            .max()
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The idle clock the pumps of one flow share; `None` when flows never idle out.
#[derive(Debug, Clone)]
struct Idle(Option<Arc<Mutex<IdleClock>>>);

impl Idle {
    fn new(timeout: Option<Duration>) -> Self {
        Idle(timeout.map(|timeout| {
            Arc::new(Mutex::new(IdleClock::new(
                timeout,
                Instant::now().into_std(),
            )))
        }))
    }

    fn touch(&self) {
        if let Some(clock) = &self.0 {
            crate::gateway::lock(clock).touch(Instant::now().into_std());
        }
    }

    /// Completes once the flow has moved no byte for the whole timeout.
    async fn expired(&self) {
        let Some(clock) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            let deadline = crate::gateway::lock(clock).deadline();
            tokio::time::sleep_until(Instant::from_std(deadline)).await;
            if crate::gateway::lock(clock).expired(Instant::now().into_std()) {
                return;
            }
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl Gateway {
    /// Decides, resolves and dials. A refusal is already in the audit log and the metrics
    /// when this returns.
    pub async fn open(&self, request: FlowRequest) -> Result<OpenFlow, Refused> {
        let started = Instant::now();
        let flow = self.shared.next_flow.fetch_add(1, Ordering::Relaxed);
        let origin = request.origin.clone();
        let mut record = AuditRecord {
            flow,
            front_end: request.front_end.as_str().to_owned(),
            tenant: request.tags.tenant.clone(),
            document: request.tags.document.clone(),
            cell: origin.as_ref().map(|origin| origin.cell.clone()),
            run: origin.as_ref().map(|origin| origin.run),
            user: origin.map(|origin| origin.user),
            node: request.node.clone(),
            client: request.client,
            requested_host: request.host.to_string(),
            port: request.port,
            class: "allowed".to_owned(),
            ..AuditRecord::default()
        };
        match self.try_open(&request, &mut record, started).await {
            Ok(open) => {
                metrics::counter!(names::DECISIONS, "verdict" => "allow", "class" => "allowed")
                    .increment(1);
                metrics::histogram!(names::CONNECT_SECONDS).record(started.elapsed().as_secs_f64());
                Ok(open)
            }
            Err(failure) => {
                let verdict = failure.verdict();
                let class = failure.class();
                metrics::counter!(
                    names::DECISIONS,
                    "verdict" => verdict_label(verdict),
                    "class" => class
                )
                .increment(1);
                record.verdict = verdict;
                record.class = class.to_owned();
                record.reason = failure.to_string();
                record.duration_ms = started.elapsed().as_millis() as u64;
                record.ts_unix_ms = unix_ms();
                let line = (
                    for_log(&record.tenant),
                    for_log(&record.document),
                    for_log(&record.requested_host),
                    record.port,
                    for_log(&record.reason),
                );
                if self.record_refusal(record) {
                    let (tenant, document, host, port, reason) = line;
                    tracing::info!(flow, %tenant, %document, %host, port, %reason, "flow refused");
                }
                Err(Refused { flow, failure })
            }
        }
    }

    async fn try_open(
        &self,
        request: &FlowRequest,
        record: &mut AuditRecord,
        started: Instant,
    ) -> Result<OpenFlow, FlowFailure> {
        let snapshot = self.snapshot();
        // First and cheapest: a document opening flows in a tight loop (refused or not) is
        // slowed down before it costs a policy check, a lookup or a record each.
        let defaults = snapshot.policy.defaults;
        if let Some(per_second) = defaults.new_flows_per_second {
            crate::gateway::lock(&self.shared.new_flows)
                .admit(
                    started.into_std(),
                    &request.tags.tenant,
                    &request.tags.document,
                    per_second,
                    defaults.new_flow_burst,
                )
                .map_err(FlowFailure::Limited)?;
        }
        let host = match &request.host {
            RequestedHost::Ip(ip) => Host::Ip(*ip),
            RequestedHost::Text(text) => parse_requested_host(text).map_err(FlowFailure::Denied)?,
        };
        let check = snapshot
            .policy
            .check_request(&request.tags, &host, request.port)
            .map_err(FlowFailure::Denied)?;
        let (tenant_limit, document_limit) = check.connection_limits();
        {
            let mut ledger = match self.shared.ledger.lock() {
                Ok(ledger) => ledger,
                Err(poisoned) => poisoned.into_inner(),
            };
            ledger
                .open(
                    &request.tags.tenant,
                    &request.tags.document,
                    tenant_limit,
                    document_limit,
                )
                .map_err(FlowFailure::Limited)?;
        }
        metrics::gauge!(names::ACTIVE_FLOWS, "front_end" => request.front_end.as_str())
            .increment(1);
        let slot = FlowSlot {
            gateway: self.clone(),
            tags: request.tags.clone(),
            front_end: request.front_end,
        };
        let answers = match &host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => resolve(&snapshot, name)
                .await
                .map_err(FlowFailure::Resolve)?,
        };
        record.resolved = answers.clone();
        let selection = check.select(&answers);
        record.denied_answers = selection
            .denied
            .iter()
            .map(|(address, denial)| DeniedAnswer {
                address: *address,
                reason: denial.to_string(),
            })
            .collect();
        if !selection.candidates.is_empty() && !selection.denied.is_empty() {
            metrics::counter!(names::MIXED_ANSWERS).increment(1);
        }
        selection.verdict.map_err(FlowFailure::Denied)?;
        let timeout = snapshot.config.connect_timeout();
        let mut last_error = None;
        for (ip, allowed) in &selection.candidates {
            let dest = SocketAddr::new(*ip, request.port);
            let source = check
                .source_for(*ip, record.flow)
                .unwrap_or(Source::Unbound);
            // Whatever time the earlier candidates used counts against the one timeout.
            let left = timeout.saturating_sub(started.elapsed());
            match dial::dial(dest, source, left).await {
                Ok(upstream) => {
                    let source = upstream.local_addr().unwrap_or(SocketAddr::new(
                        match source {
                            Source::Static(ip) => ip,
                            Source::Unbound => IpAddr::from([0, 0, 0, 0]),
                        },
                        0,
                    ));
                    record.chosen = Some(dest);
                    record.source = Some(source);
                    record.reason = allowed.to_string();
                    let now = Instant::now().into_std();
                    let mut pacing = Pacing::default();
                    pacing.buckets.extend(self.bucket(
                        RateKey::Tenant(request.tags.tenant.clone()),
                        &check.tenant.limits,
                        now,
                    ));
                    if let Some(document) = check.document {
                        pacing.buckets.extend(self.bucket(
                            RateKey::Document(
                                request.tags.tenant.clone(),
                                request.tags.document.clone(),
                            ),
                            &document.limits,
                            now,
                        ));
                    }
                    return Ok(OpenFlow {
                        flow: record.flow,
                        upstream,
                        chosen: dest,
                        source,
                        record: record.clone(),
                        started,
                        pacing,
                        idle_timeout: defaults.idle_timeout,
                        _slot: slot,
                    });
                }
                Err(error) => {
                    metrics::counter!(names::CONNECT_ERRORS, "kind" => error.kind()).increment(1);
                    tracing::debug!(flow = record.flow, %dest, %error, "connect failed");
                    last_error = Some(error);
                }
            }
        }
        Err(match last_error {
            Some(error) => FlowFailure::Connect(error),
            None => FlowFailure::Denied(Denial::NoAddresses {
                host: host.to_string(),
            }),
        })
    }

    /// Relays bytes between the client and the upstream until both directions have finished
    /// (each side's end is passed on as a half-close) or either side fails; then writes the
    /// flow's audit record.
    pub async fn relay<R, W>(&self, flow: OpenFlow, from_client: R, to_client: W) -> FlowSummary
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let OpenFlow {
            upstream,
            record,
            started,
            pacing,
            idle_timeout,
            _slot,
            ..
        } = flow;
        let relay_started = Instant::now();
        let (up_read, up_write) = upstream.into_split();
        let bytes_out = AtomicU64::new(0);
        let bytes_in = AtomicU64::new(0);
        let idle = Idle::new(idle_timeout);
        let idled_out = both_ways(
            pump(from_client, up_write, &pacing, &idle, &bytes_out, "out"),
            pump(up_read, to_client, &pacing, &idle, &bytes_in, "in"),
            idle.expired(),
        )
        .await;
        self.finish_flow(
            record,
            _slot,
            started,
            relay_started,
            (&bytes_out, &bytes_in),
            idled_out,
        )
    }

    /// [`Gateway::relay`] for a TCP client: the bytes move between the two sockets with
    /// `splice(2)`, never through user space (see [`crate::splice`]). `early` holds bytes the
    /// client sent after its request, before the flow was open; they go first.
    pub async fn relay_tcp(
        &self,
        flow: OpenFlow,
        client: TcpStream,
        early: Vec<u8>,
    ) -> FlowSummary {
        let pipes = crate::splice::Pipe::new().and_then(|a| Ok((a, crate::splice::Pipe::new()?)));
        let Ok((pipe_out, pipe_in)) = pipes else {
            let (read, write) = client.into_split();
            let read = std::io::Cursor::new(early).chain(read);
            return self.relay(flow, read, write).await;
        };
        let OpenFlow {
            mut upstream,
            record,
            started,
            pacing,
            idle_timeout,
            _slot,
            ..
        } = flow;
        let relay_started = Instant::now();
        let bytes_out = AtomicU64::new(0);
        let bytes_in = AtomicU64::new(0);
        let idle = Idle::new(idle_timeout);
        let mut idled_out = false;
        let early_sent = if early.is_empty() {
            true
        } else {
            pacing.pace(early.len()).await;
            let sent = upstream.write_all(&early).await.is_ok();
            bytes_out.fetch_add(early.len() as u64, Ordering::Relaxed);
            sent
        };
        if early_sent {
            idled_out = both_ways(
                splice_pump(
                    &client, &upstream, &pipe_out, &pacing, &idle, &bytes_out, "out",
                ),
                splice_pump(
                    &upstream, &client, &pipe_in, &pacing, &idle, &bytes_in, "in",
                ),
                idle.expired(),
            )
            .await;
        }
        self.finish_flow(
            record,
            _slot,
            started,
            relay_started,
            (&bytes_out, &bytes_in),
            idled_out,
        )
    }

    /// Writes the flow's audit record once relaying is over.
    fn finish_flow(
        &self,
        mut record: AuditRecord,
        slot: FlowSlot,
        started: Instant,
        relay_started: Instant,
        (bytes_out, bytes_in): (&AtomicU64, &AtomicU64),
        idled_out: bool,
    ) -> FlowSummary {
        let summary = FlowSummary {
            bytes_out: bytes_out.load(Ordering::Relaxed),
            bytes_in: bytes_in.load(Ordering::Relaxed),
            duration: relay_started.elapsed(),
            idled_out,
        };
        if idled_out {
            record.ended = Some("idle_timeout".to_owned());
            metrics::counter!(names::IDLE_TIMEOUTS, "front_end" => slot.front_end.as_str())
                .increment(1);
        }
        record.bytes_out = summary.bytes_out;
        record.bytes_in = summary.bytes_in;
        record.duration_ms = started.elapsed().as_millis() as u64;
        record.ts_unix_ms = unix_ms();
        // Free the connection slot before the record goes out: whoever waits for the record
        // may open the next flow at once.
        drop(slot);
        self.shared.audit.record(record);
        summary
    }
}

/// Runs both directions until each has ended (a half-close is passed on and the other
/// direction goes on), either fails (then the flow is over) or `idle` completes (the flow
/// moved nothing for too long). Returns whether it idled out.
async fn both_ways(
    outbound: impl std::future::Future<Output = std::io::Result<()>>,
    inbound: impl std::future::Future<Output = std::io::Result<()>>,
    idle: impl std::future::Future<Output = ()>,
) -> bool {
    let mut outbound = pin!(outbound);
    let mut inbound = pin!(inbound);
    let mut idle = pin!(idle);
    let (mut out_done, mut in_done) = (false, false);
    while !(out_done && in_done) {
        tokio::select! {
            () = &mut idle => return true,
            result = &mut outbound, if !out_done => {
                out_done = true;
                if result.is_err() { break; }
            }
            result = &mut inbound, if !in_done => {
                in_done = true;
                if result.is_err() { break; }
            }
        }
    }
    false
}

/// One direction between two sockets with `splice(2)`, then a half-close.
async fn splice_pump(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &crate::splice::Pipe,
    pacing: &Pacing,
    idle: &Idle,
    counter: &AtomicU64,
    direction: &'static str,
) -> std::io::Result<()> {
    loop {
        let n = crate::splice::fill(from, pipe).await?;
        if n == 0 {
            crate::splice::finish(to);
            return Ok(());
        }
        idle.touch();
        pacing.pace(n).await;
        crate::splice::drain(pipe, to, n).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!(names::BYTES, "direction" => direction).increment(n as u64);
    }
}

/// A client's host string in canonical form, or the denial every front end gives for it.
pub(crate) fn parse_requested_host(text: &str) -> Result<Host, Denial> {
    host::parse_host(text).map_err(|error| Denial::BadHost {
        input: text.to_owned(),
        error,
    })
}

/// Looks `name` up with the snapshot's resolver, counting failures by kind. Flows and name
/// lookups resolve through here.
pub(crate) async fn resolve(
    snapshot: &Snapshot,
    name: &HostName,
) -> Result<Vec<IpAddr>, ResolveError> {
    snapshot.resolver.lookup(name).await.inspect_err(|error| {
        metrics::counter!(names::RESOLVER_ERRORS, "kind" => error.kind()).increment(1);
    })
}

fn verdict_label(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Limited => "limited",
        Verdict::Error => "error",
    }
}

/// Copies one direction until end of stream, then half-closes the writer.
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    pacing: &Pacing,
    idle: &Idle,
    counter: &AtomicU64,
    direction: &'static str,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            // The peer may already be gone; the other direction decides how the flow ends.
            let _ = writer.shutdown().await;
            return Ok(());
        }
        idle.touch();
        pacing.pace(n).await;
        writer.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!(names::BYTES, "direction" => direction).increment(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_strings_cannot_forge_log_lines() {
        let host = "evil.example\n2026-01-01T00:00:00Z INFO flow allowed host=bank.example";
        let logged = for_log(host);
        assert!(!logged.contains('\n'), "{logged}");
        assert!(logged.contains("\\n"));
        assert_eq!(for_log("api.example.com"), "api.example.com");
        assert_eq!(for_log("\u{1b}[31m"), "\\u{1b}[31m");
        let long = for_log(&"a".repeat(1000));
        assert_eq!(long.chars().count(), 257);
    }
}
