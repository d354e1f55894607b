//! The gateway's shared state: the current configuration snapshot (policy, identities,
//! resolver), the limit ledgers and the audit log, behind one cheap-to-clone handle.
//!
//! Reloading swaps the snapshot atomically: a flow takes the snapshot once when it starts and
//! keeps it, so in-flight flows keep the decision they were given and new flows see the new
//! rules. The ledgers outlive reloads (open connections still count), and rate buckets take the
//! new rates. Serving (listeners, accept loops, reload triggers) is `crate::server`'s; the flow
//! path is `crate::flow`'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::audit::AuditLog;
use crate::config::{Config, ConfigError, Credentials, NodeDirectory};
use crate::policy::{ConnectionLedger, EgressPolicy, Limits, TokenBucket};
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
    rates: Mutex<HashMap<RateKey, Arc<Mutex<TokenBucket>>>>,
    pub(crate) audit: AuditLog,
    pub(crate) next_flow: AtomicU64,
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
        Ok(Gateway {
            shared: Arc::new(Shared {
                snapshot: RwLock::new(Arc::new(snapshot)),
                listeners: listeners.to_vec(),
                ledger: Mutex::new(ConnectionLedger::default()),
                rates: Mutex::new(HashMap::new()),
                audit,
                next_flow: AtomicU64::new(1),
            }),
        })
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
