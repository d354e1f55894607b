//! Synthetic addresses: the answers the node's DNS server gives a jailed kernel, and how many
//! names a kernel may have checked with the gateway.
//!
//! The kernel never learns a real address. When it asks for `db.example.com` and the gateway
//! says the name exists, the node hands out an address from `198.18.0.0/15` (RFC 2544's
//! benchmarking range, never routed on the internet) and remembers which name it stands for.
//! A redirected connection to that address becomes a flow *by name*, so the gateway resolves
//! the name itself, checks every address it gets and dials the one it checked: host rules
//! apply to the name the user wrote, and an answer that changes between the kernel's lookup and
//! its connect (DNS rebinding) gains nothing.
//!
//! Two limits keep a kernel from using this up or using it as a channel (security review #15,
//! #8):
//!
//! - [`SyntheticNames`] is a pool keyed by recency: when every address is taken, the name
//!   least recently looked up or connected to gives its address to the new name, provided it
//!   has not been used for [`QUIET_BEFORE_REUSE`] (so an address the kernel may still hold
//!   never changes meaning under it). Only names the gateway says are reachable get an address;
//!   denied and missing names get none.
//! - [`Lookups`] is one kernel's budget of *new* names forwarded to the gateway (a token
//!   bucket), and a short memory of names refused, so asking again (or asking `AAAA` after `A`)
//!   neither asks the gateway nor spends budget.
//!
//! Together they mean the pool cannot run out in a document's life: the budget lets a kernel
//! check at most [`NAME_BURST`] names plus [`NAMES_PER_MINUTE`] a minute, far fewer in
//! `QUIET_BEFORE_REUSE` than the pool holds.
//!
//! Sans-IO: plain tables with the time passed in, tested below.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The first synthetic address (`198.18.0.1`).
const FIRST: u32 = u32::from_be_bytes([198, 18, 0, 1]);
/// The last synthetic address (`198.19.255.254`).
const LAST: u32 = u32::from_be_bytes([198, 19, 255, 254]);

/// How long an address must go unused before it may stand for another name. Well past the
/// answers' 30 s TTL, for programs that keep addresses longer than they are told.
pub(crate) const QUIET_BEFORE_REUSE: Duration = Duration::from_secs(600);

/// New names a kernel may have checked at once, before the rate below applies.
pub(crate) const NAME_BURST: u32 = 200;
/// New names a kernel may have checked per minute, once the burst is spent.
pub(crate) const NAMES_PER_MINUTE: u32 = 120;
/// How long a refused name is remembered.
const REFUSAL_MEMORY: Duration = Duration::from_secs(30);
/// How many refused names a kernel's memory holds (older ones are forgotten first).
const REFUSALS_KEPT: usize = 1024;

/// Whether `addr` lies in the synthetic range (handed out or not).
pub(crate) fn is_synthetic(addr: Ipv4Addr) -> bool {
    let n = u32::from(addr);
    (u32::from_be_bytes([198, 18, 0, 0])..=u32::from_be_bytes([198, 19, 255, 255])).contains(&n)
}

/// The names a kernel looked up, each with its synthetic address.
#[derive(Debug)]
pub(crate) struct SyntheticNames {
    by_name: HashMap<String, Handed>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// Addresses by last use (with a counter to break ties): the first is the next to reuse.
    by_use: BTreeMap<(Instant, u64), Ipv4Addr>,
    uses: u64,
    /// The next never-used address, as a number.
    next: u32,
    /// The last address of the pool, as a number.
    last: u32,
}

#[derive(Debug, Clone, Copy)]
struct Handed {
    addr: Ipv4Addr,
    used: (Instant, u64),
}

impl Default for SyntheticNames {
    fn default() -> Self {
        SyntheticNames::with_range(FIRST, LAST)
    }
}

/// Every synthetic address stands for a name used within [`QUIET_BEFORE_REUSE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the kernel used more distinct names in the last {} minutes than the node has synthetic \
     addresses for",
    QUIET_BEFORE_REUSE.as_secs() / 60
)]
pub(crate) struct Exhausted;

impl SyntheticNames {
    fn with_range(first: u32, last: u32) -> Self {
        SyntheticNames {
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            by_use: BTreeMap::new(),
            uses: 0,
            next: first,
            last,
        }
    }

    /// The synthetic address of `name` (a lower-case name without the trailing dot), handing
    /// out one the first time: a never-used one while there are any, then the least recently
    /// used one that has been quiet long enough.
    pub(crate) fn address_of(&mut self, name: &str, now: Instant) -> Result<Ipv4Addr, Exhausted> {
        if let Some(addr) = self.known(name, now) {
            return Ok(addr);
        }
        let addr = if self.next <= self.last {
            let addr = Ipv4Addr::from(self.next);
            self.next += 1;
            addr
        } else {
            let (&(used, tie), &addr) = self.by_use.first_key_value().ok_or(Exhausted)?;
            if now.saturating_duration_since(used) < QUIET_BEFORE_REUSE {
                return Err(Exhausted);
            }
            self.by_use.remove(&(used, tie));
            if let Some(old) = self.by_addr.remove(&addr) {
                self.by_name.remove(&old);
            }
            addr
        };
        let used = self.stamp(now);
        self.by_use.insert(used, addr);
        self.by_name.insert(name.to_owned(), Handed { addr, used });
        self.by_addr.insert(addr, name.to_owned());
        Ok(addr)
    }

    /// The address `name` already has, if it was looked up before; counts as a use.
    pub(crate) fn known(&mut self, name: &str, now: Instant) -> Option<Ipv4Addr> {
        let addr = self.by_name.get(name)?.addr;
        self.touch(name, now);
        Some(addr)
    }

    /// The name `addr` stands for, if it was handed out; counts as a use.
    pub(crate) fn name_of(&mut self, addr: Ipv4Addr, now: Instant) -> Option<String> {
        let name = self.by_addr.get(&addr)?.clone();
        self.touch(&name, now);
        Some(name)
    }

    fn touch(&mut self, name: &str, now: Instant) {
        let used = self.stamp(now);
        if let Some(handed) = self.by_name.get_mut(name) {
            self.by_use.remove(&handed.used);
            handed.used = used;
            self.by_use.insert(used, handed.addr);
        }
    }

    fn stamp(&mut self, now: Instant) -> (Instant, u64) {
        self.uses += 1;
        (now, self.uses)
    }
}

/// Why a name was refused, remembered for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The name does not exist.
    Missing,
    /// The gateway's policy denies it, with the gateway's reason.
    Denied(String),
}

/// What to do with a kernel's question about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Ask the gateway (one name of the budget spent).
    Ask,
    /// The name was refused a moment ago: answer the same again.
    Refused(Refused),
    /// The kernel has asked about too many new names: do not ask.
    OverBudget,
}

/// One kernel's lookups: a budget of new names and a memory of refused ones.
#[derive(Debug)]
pub(crate) struct Lookups {
    budget: TokenBucket,
    refused: HashMap<String, (Refused, Instant)>,
}

impl Lookups {
    pub(crate) fn new(now: Instant) -> Self {
        Lookups {
            budget: TokenBucket::new(NAME_BURST, Duration::from_secs(60) / NAMES_PER_MINUTE, now),
            refused: HashMap::new(),
        }
    }

    /// Whether to forward a question about `name`, which has no synthetic address yet.
    pub(crate) fn decide(&mut self, name: &str, now: Instant) -> Decision {
        match self.refused.get(name) {
            Some((refused, until)) if now < *until => return Decision::Refused(refused.clone()),
            Some(_) => {
                self.refused.remove(name);
            }
            None => {}
        }
        if self.budget.take(now) {
            Decision::Ask
        } else {
            Decision::OverBudget
        }
    }

    /// Remembers that the gateway refused `name`.
    pub(crate) fn refused(&mut self, name: &str, why: Refused, now: Instant) {
        if self.refused.len() >= REFUSALS_KEPT {
            self.refused.retain(|_, (_, until)| now < *until);
        }
        if self.refused.len() >= REFUSALS_KEPT {
            // Still full of fresh refusals: forget the one closest to expiring.
            if let Some(oldest) = self
                .refused
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(name, _)| name.clone())
            {
                self.refused.remove(&oldest);
            }
        }
        self.refused
            .insert(name.to_owned(), (why, now + REFUSAL_MEMORY));
    }
}

/// A token bucket: `capacity` tokens, one more every `every`, time passed in.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: u32,
    every: Duration,
    tokens: u32,
    /// When the next token is due (meaningful while not full).
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(capacity: u32, every: Duration, now: Instant) -> Self {
        TokenBucket {
            capacity,
            every,
            tokens: capacity,
            refilled: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == self.capacity {
            self.refilled = now;
        }
        self.tokens -= 1;
        true
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.capacity || self.every.is_zero() {
            self.tokens = self.capacity;
            return;
        }
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = (elapsed.as_nanos() / self.every.as_nanos()).min(u128::from(u32::MAX));
        let earned = earned as u32;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(self.capacity);
            self.refilled += self.every * earned;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_address_and_maps_back() {
        let now = Instant::now();
        let mut names = SyntheticNames::default();
        let web = names.address_of("web.example", now).unwrap();
        let db = names.address_of("db.example", now).unwrap();
        assert_eq!(web, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(db, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(names.address_of("web.example", now).unwrap(), web);
        assert_eq!(names.name_of(db, now).as_deref(), Some("db.example"));
        assert_eq!(names.known("db.example", now), Some(db));
        assert_eq!(names.known("other.example", now), None);
        assert_eq!(names.name_of(Ipv4Addr::new(198, 18, 0, 9), now), None);
    }

    #[test]
    fn the_range_is_exactly_198_18_slash_15() {
        assert!(is_synthetic(Ipv4Addr::new(198, 18, 0, 0)));
        assert!(is_synthetic(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_synthetic(Ipv4Addr::new(198, 17, 255, 255)));
        assert!(!is_synthetic(Ipv4Addr::new(198, 20, 0, 0)));
        assert_eq!(LAST - FIRST + 1, 131_070);
    }

    /// Security review #15: a full pool is no longer the end of DNS for the document.
    #[test]
    fn a_full_pool_reuses_the_least_recently_used_quiet_address() {
        let start = Instant::now();
        let mut names = SyntheticNames::with_range(FIRST, FIRST + 2);
        let a = names.address_of("a.example", start).unwrap();
        let b = names.address_of("b.example", start).unwrap();
        let c = names.address_of("c.example", start).unwrap();
        // Full, and everything was used just now: no reuse, old names still answer.
        let soon = start + Duration::from_secs(1);
        assert_eq!(names.address_of("d.example", soon), Err(Exhausted));
        assert_eq!(names.name_of(a, soon).as_deref(), Some("a.example"));
        // Long after, `a` was used (connected to) most recently; `b` is the oldest: reused.
        let later = start + QUIET_BEFORE_REUSE;
        names.known("c.example", start + Duration::from_secs(2));
        let d = names.address_of("d.example", later).unwrap();
        assert_eq!(d, b, "the least recently used address is the one reused");
        assert_eq!(names.name_of(b, later).as_deref(), Some("d.example"));
        assert_eq!(
            names.known("b.example", later),
            None,
            "b's old name is forgotten"
        );
        // `a` was used at +1 s, `c` at +2 s: `a` goes next, once quiet long enough.
        let second = Duration::from_secs(1);
        assert_eq!(names.address_of("e.example", later), Err(Exhausted));
        assert_eq!(names.address_of("e.example", later + second), Ok(a));
        assert_eq!(
            names.address_of("f.example", later + second),
            Err(Exhausted),
            "c is not quiet yet"
        );
        assert_eq!(names.address_of("f.example", later + second * 2), Ok(c));
    }

    #[test]
    fn names_the_kernel_keeps_using_are_never_taken() {
        let start = Instant::now();
        let mut names = SyntheticNames::with_range(FIRST, FIRST);
        let kept = names.address_of("kept.example", start).unwrap();
        for minute in 1..=30 {
            let now = start + Duration::from_secs(60 * minute);
            names.name_of(kept, now);
            assert_eq!(names.address_of("new.example", now), Err(Exhausted));
        }
    }

    #[test]
    fn the_budget_allows_a_burst_then_a_rate() {
        let start = Instant::now();
        let mut lookups = Lookups::new(start);
        for i in 0..NAME_BURST {
            assert_eq!(
                lookups.decide(&format!("n{i}.example"), start),
                Decision::Ask
            );
        }
        assert_eq!(
            lookups.decide("one-more.example", start),
            Decision::OverBudget
        );
        // One new name per 60/NAMES_PER_MINUTE seconds after that.
        let every = Duration::from_secs(60) / NAMES_PER_MINUTE;
        assert_eq!(lookups.decide("x.example", start + every), Decision::Ask);
        assert_eq!(
            lookups.decide("y.example", start + every),
            Decision::OverBudget
        );
        // A minute refills NAMES_PER_MINUTE, never more than the burst.
        let minute = start + every + Duration::from_secs(60);
        let asked = (0..NAME_BURST)
            .filter(|i| lookups.decide(&format!("m{i}.example"), minute) == Decision::Ask)
            .count();
        assert_eq!(asked, NAMES_PER_MINUTE as usize);
        let much_later = minute + Duration::from_secs(3600);
        let asked = (0..NAME_BURST + 10)
            .filter(|i| lookups.decide(&format!("l{i}.example"), much_later) == Decision::Ask)
            .count();
        assert_eq!(asked, NAME_BURST as usize);
    }

    /// A denied name is answered from memory (no address, no budget) until it is forgotten.
    #[test]
    fn refused_names_are_remembered_briefly_and_cost_nothing() {
        let start = Instant::now();
        let mut lookups = Lookups::new(start);
        assert_eq!(lookups.decide("blocked.example", start), Decision::Ask);
        lookups.refused(
            "blocked.example",
            Refused::Denied("blocked by policy".into()),
            start,
        );
        for _ in 0..(NAME_BURST * 2) {
            assert_eq!(
                lookups.decide("blocked.example", start + Duration::from_secs(1)),
                Decision::Refused(Refused::Denied("blocked by policy".into()))
            );
        }
        // The budget was not touched by the repeats.
        assert_eq!(
            lookups.decide("fresh.example", start + Duration::from_secs(1)),
            Decision::Ask
        );
        assert_eq!(
            lookups.decide("blocked.example", start + REFUSAL_MEMORY),
            Decision::Ask,
            "forgotten after REFUSAL_MEMORY: asked again"
        );
    }

    #[test]
    fn the_refusal_memory_is_bounded() {
        let start = Instant::now();
        let mut lookups = Lookups::new(start);
        for i in 0..(REFUSALS_KEPT * 3) {
            lookups.refused(&format!("r{i}.example"), Refused::Missing, start);
        }
        assert!(lookups.refused.len() <= REFUSALS_KEPT);
    }

    #[test]
    fn a_token_bucket_refills_one_token_per_period_up_to_capacity() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut bucket = TokenBucket::new(2, second, start);
        assert!(bucket.take(start));
        assert!(bucket.take(start));
        assert!(!bucket.take(start));
        assert!(!bucket.take(start + second / 2));
        assert!(bucket.take(start + second));
        assert!(!bucket.take(start + second));
        assert!(bucket.take(start + second * 10));
        assert!(bucket.take(start + second * 10));
        assert!(!bucket.take(start + second * 10));
    }
}
