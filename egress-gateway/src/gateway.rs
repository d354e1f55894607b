//! The gateway's shared state: the current configuration snapshot (policy, identities,
//! resolver), the limit ledgers, the audit log and what decides which records it gets
//! ([`crate::aggregate`]), behind one cheap-to-clone handle.
//!
//! Reloading swaps the snapshot atomically: a flow takes the snapshot once when it starts and
//! keeps it, so in-flight flows keep the decision they were given and new flows see the new
//! rules. The ledgers outlive reloads (open connections still count), and rate buckets take the
//! new rates. Serving (listeners, accept loops, reload triggers) is `crate::server`'s; the flow
//! path is `crate::flow`'s.
//!
//! A small task started with the gateway writes the aggregated records whose window has
//! closed (every [`FLUSH_EVERY`]); [`Gateway::flush_audit`] writes whatever is still open, at
//! shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::aggregate::{LookupTally, RefusalAdmission, RefusalBudget};
use crate::audit::{AuditLog, AuditRecord};
use crate::config::{Config, ConfigError, Credentials, NodeDirectory};
use crate::metrics as names;
use crate::policy::{ConnectionLedger, EgressPolicy, Limits, NewFlowLimiter, TokenBucket};
use crate::resolve::{DnsResolver, ResolverSetupError};

/// Why a configuration could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Resolver(#[from] ResolverSetupError),
}

/// Everything a flow needs from the configuration, as of one load.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub policy: EgressPolicy,
    pub credentials: Credentials,
    pub nodes: NodeDirectory,
    pub resolver: DnsResolver,
}

impl Snapshot {
    fn build(config: Config, listeners: &[SocketAddr]) -> Result<Self, GatewayError> {
        Ok(Snapshot {
            policy: config.policy(listeners)?,
            credentials: config.credentials()?,
            nodes: config.nodes()?,
            resolver: DnsResolver::new(&config.resolver)?,
            config,
        })
    }
}

/// Whose bytes a token bucket paces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum RateKey {
    Tenant(String),
    Document(String, String),
}

/// The gateway: clone it freely.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    listeners: Vec<SocketAddr>,
    pub(crate) ledger: Mutex<ConnectionLedger>,
    pub(crate) new_flows: Mutex<NewFlowLimiter>,
    rates: Mutex<HashMap<RateKey, Arc<Mutex<TokenBucket>>>>,
    pub(crate) audit: AuditLog,
    refusals: Mutex<RefusalBudget>,
    lookups: Mutex<LookupTally>,
    pub(crate) next_flow: AtomicU64,
}

/// How often closed aggregation windows are looked for.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Locks `mutex`, taking over a poisoned one: the state behind these mutexes stays consistent
/// between the few statements each critical section runs.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Gateway {
    /// A gateway for `config`, listening on `listeners` (needed to refuse flows back into
    /// itself). Must be called inside a tokio runtime (the resolver spawns its tasks there).
    pub fn new(
        config: Config,
        listeners: &[SocketAddr],
        audit: AuditLog,
    ) -> Result<Self, GatewayError> {
        let snapshot = Snapshot::build(config, listeners)?;
        let refusals = RefusalBudget::new(snapshot.config.audit.refusal_budget());
        let lookups = LookupTally::new(snapshot.config.audit.lookup_tally());
        let gateway = Gateway {
            shared: Arc::new(Shared {
                snapshot: RwLock::new(Arc::new(snapshot)),
                listeners: listeners.to_vec(),
                ledger: Mutex::new(ConnectionLedger::default()),
                new_flows: Mutex::new(NewFlowLimiter::default()),
                rates: Mutex::new(HashMap::new()),
                audit,
                refusals: Mutex::new(refusals),
                lookups: Mutex::new(lookups),
                next_flow: AtomicU64::new(1),
            }),
        };
        tokio::spawn(flush_closed_windows(Arc::downgrade(&gateway.shared)));
        Ok(gateway)
    }

    /// The configuration in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.shared.snapshot.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Applies a new configuration to new flows. On error the old one stays.
    pub fn reload(&self, config: Config) -> Result<(), GatewayError> {
        let result = Snapshot::build(config, &self.shared.listeners);
        metrics::counter!(
            crate::metrics::RELOADS,
            "result" => if result.is_ok() { "ok" } else { "error" }
        )
        .increment(1);
        let snapshot = Arc::new(result?);
        lock(&self.shared.refusals).set_config(snapshot.config.audit.refusal_budget());
        lock(&self.shared.lookups).set_config(snapshot.config.audit.lookup_tally());
        match self.shared.snapshot.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
        Ok(())
    }

    /// Reads `path` and applies it.
    pub fn reload_from(&self, path: &Path) -> Result<(), GatewayError> {
        self.reload(Config::load(path)?)
    }

    pub fn audit(&self) -> &AuditLog {
        &self.shared.audit
    }

    /// Writes a refused flow's record if its document's budget allows, else counts it into
    /// the document's aggregated record. Returns whether it was written on its own (then the
    /// caller logs it).
    pub(crate) fn record_refusal(&self, record: AuditRecord) -> bool {
        let now = tokio::time::Instant::now().into_std();
        let admission = lock(&self.shared.refusals).handle_refusal(now, record.clone());
        match admission {
            RefusalAdmission::Record(record) => {
                self.shared.audit.record(*record);
                true
            }
            RefusalAdmission::Aggregated { opened } => {
                metrics::counter!(names::REFUSALS_AGGREGATED).increment(1);
                if opened {
                    tracing::info!(
                        tenant = ?record.tenant,
                        document = ?record.document,
                        "refused flows past this document's audit budget are aggregated into one record"
                    );
                }
                false
            }
        }
    }

    /// Counts a name lookup into its document's tally.
    pub(crate) fn record_lookup(&self, record: AuditRecord) {
        let now = tokio::time::Instant::now().into_std();
        lock(&self.shared.lookups).handle_lookup(now, record);
    }

    /// Writes every aggregated record still gathering (at shutdown; the windows close early).
    pub fn flush_audit(&self) {
        let mut due = lock(&self.shared.refusals).drain();
        due.extend(lock(&self.shared.lookups).drain());
        self.shared.write_aggregated(due);
    }

    /// Flows open now, all tenants together.
    pub fn open_flows(&self) -> u32 {
        self.shared
            .ledger
            .lock()
            .map(|ledger| ledger.total())
            .unwrap_or(0)
    }

    /// The bucket for `key` at `limits`' rate, created full or updated to the new rate.
    pub(crate) fn bucket(
        &self,
        key: RateKey,
        limits: &Limits,
        now: Instant,
    ) -> Option<Arc<Mutex<TokenBucket>>> {
        let rate = limits.bytes_per_second?;
        let burst = limits.burst_bytes.unwrap_or(rate);
        let mut rates = match self.shared.rates.lock() {
            Ok(rates) => rates,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Forget buckets no flow uses any more, so documents that come and go do not pile up.
        if rates.len() > 1024 {
            rates.retain(|_, bucket| Arc::strong_count(bucket) > 1);
        }
        let bucket = rates
            .entry(key)
            .or_insert_with(|| Arc::new(Mutex::new(TokenBucket::new(rate, burst, now))));
        if let Ok(mut bucket) = bucket.lock() {
            bucket.set_rate(rate, burst);
        }
        Some(Arc::clone(bucket))
    }
}

impl Shared {
    /// Writes the records of closed windows at `now`.
    fn flush_due(&self, now: Instant) {
        let mut due = lock(&self.refusals).poll_due(now);
        due.extend(lock(&self.lookups).poll_due(now));
        self.write_aggregated(due);
    }

    fn write_aggregated(&self, due: Vec<AuditRecord>) {
        let stamp = crate::flow::unix_ms();
        for mut record in due {
            record.ts_unix_ms = stamp;
            if record.front_end != crate::lookup::LOOKUP_FRONT_END {
                tracing::info!(
                    tenant = ?record.tenant,
                    document = ?record.document,
                    count = record.count,
                    classes = ?record.classes,
                    "refused flows aggregated"
                );
            }
            self.audit.record(record);
        }
    }
}

/// Writes closed windows' records until the gateway is dropped.
async fn flush_closed_windows(shared: Weak<Shared>) {
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.flush_due(tokio::time::Instant::now().into_std());
    }
}
