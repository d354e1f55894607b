//! Per-tenant and per-document limits as sans-IO state: a ledger of open connections, a
//! new-flow rate limiter, token buckets for bytes per second, and the idle clock of a flow.
//! Time is passed in; nothing here sleeps or reads a clock. The gateway's flow driver holds
//! them behind a mutex for a few instructions at a time and does the waiting itself.
//!
//! Safe defaults hold without any configuration ([`DefaultLimits`]): connections per tenant and
//! per document, new flows per second per document, and an idle timeout. A tenant's or
//! document's own `limits` replace the default connection limits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Limits of one scope (tenant or document). `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Flows open at once.
    pub connections: Option<u32>,
    /// Bytes per second, both directions together.
    pub bytes_per_second: Option<u64>,
    /// How many bytes may pass at once after an idle spell [default: one second's worth].
    pub burst_bytes: Option<u64>,
}

/// The limits every tenant and document has unless its own config says otherwise (`[limits]`;
/// `None`: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultLimits {
    /// Flows open at once per tenant (a tenant's `limits.connections` replaces it).
    pub tenant_connections: Option<u32>,
    /// Flows open at once per document (a document's `limits.connections` replaces it).
    pub document_connections: Option<u32>,
    /// New flows per second per document, on average...
    pub new_flows_per_second: Option<u32>,
    /// ...and at once after a quiet spell.
    pub new_flow_burst: u32,
    /// A flow with no byte in either direction for this long is closed.
    pub idle_timeout: Option<Duration>,
}

impl DefaultLimits {
    /// The defaults documented in `docs/EGRESS.md`.
    pub const SAFE: DefaultLimits = DefaultLimits {
        tenant_connections: Some(2048),
        document_connections: Some(256),
        new_flows_per_second: Some(20),
        new_flow_burst: 100,
        idle_timeout: Some(Duration::from_secs(600)),
    };
}

impl Default for DefaultLimits {
    fn default() -> Self {
        DefaultLimits::SAFE
    }
}

/// Which limit refused a flow; shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("limited: tenant {tenant} already has {limit} connections open")]
    TenantConnections { tenant: String, limit: u32 },
    #[error("limited: this document already has {limit} connections open")]
    DocumentConnections { limit: u32 },
    #[error(
        "limited: this document opens connections faster than {per_second} per second; slow down and try again"
    )]
    NewFlowRate { per_second: u32 },
}

/// New flows per second per (tenant, document): a token bucket each, refilled at the rate.
#[derive(Debug, Default)]
pub struct NewFlowLimiter {
    documents: HashMap<(String, String), (f64, Instant)>,
}

impl NewFlowLimiter {
    /// Takes a token for a new flow of `document` at `now`, or says it is over the rate.
    pub fn admit(
        &mut self,
        now: Instant,
        tenant: &str,
        document: &str,
        per_second: u32,
        burst: u32,
    ) -> Result<(), LimitExceeded> {
        let rate = f64::from(per_second.max(1));
        let burst = f64::from(burst.max(1));
        // Forget documents whose bucket is full again, so documents that come and go do not
        // pile up.
        if self.documents.len() > 4096 {
            self.documents.retain(|_, (level, last)| {
                *level + now.saturating_duration_since(*last).as_secs_f64() * rate < burst
            });
        }
        let (level, last) = self
            .documents
            .entry((tenant.to_owned(), document.to_owned()))
            .or_insert((burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *last = (*last).max(now);
        *level = (*level + elapsed * rate).min(burst);
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(LimitExceeded::NewFlowRate { per_second })
        }
    }
}

/// When a flow last moved a byte, to close it after an idle spell. The relay touches it on
/// every chunk and asks [`IdleClock::deadline`] when to look again.
#[derive(Debug, Clone, Copy)]
pub struct IdleClock {
    timeout: Duration,
    last: Instant,
}

impl IdleClock {
    pub fn new(timeout: Duration, now: Instant) -> Self {
        IdleClock { timeout, last: now }
    }

    /// Bytes moved at `now`.
    pub fn touch(&mut self, now: Instant) {
        self.last = self.last.max(now);
    }

    /// The instant the flow is idle for too long, if nothing moves before.
    pub fn deadline(&self) -> Instant {
        self.last + self.timeout
    }

    /// Whether the flow has been idle for the whole timeout at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

/// Open flows per tenant and per (tenant, document).
#[derive(Debug, Default)]
pub struct ConnectionLedger {
    tenants: HashMap<String, u32>,
    documents: HashMap<(String, String), u32>,
}

impl ConnectionLedger {
    /// Counts a new flow if both limits leave room; otherwise counts nothing.
    pub fn open(
        &mut self,
        tenant: &str,
        document: &str,
        tenant_limit: Option<u32>,
        document_limit: Option<u32>,
    ) -> Result<(), LimitExceeded> {
        let tenant_open = self.tenants.get(tenant).copied().unwrap_or(0);
        if let Some(limit) = tenant_limit.filter(|&limit| tenant_open >= limit) {
            return Err(LimitExceeded::TenantConnections {
                tenant: tenant.to_owned(),
                limit,
            });
        }
        let key = (tenant.to_owned(), document.to_owned());
        let document_open = self.documents.get(&key).copied().unwrap_or(0);
        if let Some(limit) = document_limit.filter(|&limit| document_open >= limit) {
            return Err(LimitExceeded::DocumentConnections { limit });
        }
        *self.tenants.entry(tenant.to_owned()).or_default() += 1;
        *self.documents.entry(key).or_default() += 1;
        Ok(())
    }

    /// Forgets one flow counted by [`ConnectionLedger::open`].
    pub fn close(&mut self, tenant: &str, document: &str) {
        if let Some(open) = self.tenants.get_mut(tenant) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.tenants.remove(tenant);
            }
        }
        let key = (tenant.to_owned(), document.to_owned());
        if let Some(open) = self.documents.get_mut(&key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.documents.remove(&key);
            }
        }
    }

    /// Flows open for a tenant.
    pub fn open_for(&self, tenant: &str) -> u32 {
        self.tenants.get(tenant).copied().unwrap_or(0)
    }

    /// Flows open in all.
    pub fn total(&self) -> u32 {
        self.tenants.values().sum()
    }
}

/// A token bucket that lets a sender go into debt: [`TokenBucket::take`] always takes the bytes
/// and says how long the sender must wait before sending more, so a chunk larger than the
/// burst still passes (at the right average rate) instead of waiting forever.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    level: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilled at `bytes_per_second`, holding at most `burst` bytes.
    pub fn new(bytes_per_second: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: bytes_per_second.max(1) as f64,
            burst,
            level: burst,
            last: now,
        }
    }

    /// Changes the rate (a reload), keeping the current level.
    pub fn set_rate(&mut self, bytes_per_second: u64, burst: u64) {
        self.rate = bytes_per_second.max(1) as f64;
        self.burst = burst.max(1) as f64;
        self.level = self.level.min(self.burst);
    }

    /// Takes `bytes` at `now`; returns how long to wait until the bucket is out of debt.
    pub fn take(&mut self, now: Instant, bytes: u64) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.level = (self.level + elapsed * self.rate).min(self.burst);
        self.level -= bytes as f64;
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_ledger_refuses_past_either_limit_and_frees_on_close() {
        let mut ledger = ConnectionLedger::default();
        ledger.open("acme", "a", Some(2), Some(1)).unwrap();
        assert_eq!(
            ledger.open("acme", "a", Some(2), Some(1)),
            Err(LimitExceeded::DocumentConnections { limit: 1 })
        );
        ledger.open("acme", "b", Some(2), Some(1)).unwrap();
        assert!(matches!(
            ledger.open("acme", "c", Some(2), Some(1)),
            Err(LimitExceeded::TenantConnections { limit: 2, .. })
        ));
        ledger.close("acme", "a");
        ledger.open("acme", "c", Some(2), Some(1)).unwrap();
        assert_eq!(ledger.open_for("acme"), 2);
        ledger.close("acme", "b");
        ledger.close("acme", "c");
        assert_eq!(ledger.total(), 0);
    }

    #[test]
    fn new_flows_are_limited_per_document_and_the_bucket_refills() {
        let start = Instant::now();
        let mut limiter = NewFlowLimiter::default();
        for _ in 0..5 {
            limiter.admit(start, "acme", "a", 10, 5).unwrap();
        }
        assert_eq!(
            limiter.admit(start, "acme", "a", 10, 5),
            Err(LimitExceeded::NewFlowRate { per_second: 10 })
        );
        limiter.admit(start, "acme", "b", 10, 5).unwrap();
        // A tenth of a second brings one more token.
        let later = start + Duration::from_millis(100);
        limiter.admit(later, "acme", "a", 10, 5).unwrap();
        assert!(limiter.admit(later, "acme", "a", 10, 5).is_err());
    }

    #[test]
    fn the_idle_clock_moves_with_the_bytes() {
        let start = Instant::now();
        let mut clock = IdleClock::new(Duration::from_secs(60), start);
        assert!(!clock.expired(start + Duration::from_secs(59)));
        clock.touch(start + Duration::from_secs(59));
        assert!(!clock.expired(start + Duration::from_secs(100)));
        assert_eq!(clock.deadline(), start + Duration::from_secs(119));
        assert!(clock.expired(start + Duration::from_secs(119)));
    }

    #[test]
    fn the_bucket_paces_to_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, 1000, start);
        assert_eq!(bucket.take(start, 1000), Duration::ZERO);
        assert_eq!(bucket.take(start, 500), Duration::from_millis(500));
        // Half a second later the debt is paid.
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.take(later, 0), Duration::ZERO);
        // A long idle spell refills only up to the burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(bucket.take(much_later, 1000), Duration::ZERO);
        assert_eq!(bucket.take(much_later, 100), Duration::from_millis(100));
    }
}
