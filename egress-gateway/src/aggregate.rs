//! Which refusals and name lookups get an audit record of their own, and which share one: a
//! sans-IO core (time is passed in; nothing here reads a clock, spawns or writes).
//!
//! A kernel can ask for a refused destination in a tight loop (`connect(("169.254.169.254",
//! 80))` costs it one round trip), and it can ask for as many distinct names as it likes. One
//! record and one log line each would let it flood the audit log, the logs and the disk. So:
//!
//! - [`RefusalBudget`]: refused flows of one document are recorded one by one while the
//!   document's budget (a token bucket: `refusal_records_per_second`, `refusal_record_burst`)
//!   lasts. Past it, refusals open a window of `aggregate_window`; every refusal in the window
//!   is counted into one aggregated record (the window's first refusal, with `count` and a
//!   count per class), written when the window closes.
//! - [`LookupTally`]: name lookups are never recorded one by one. Per document and window,
//!   each distinct (name, verdict class) gets one record with a count, written when the window
//!   closes; past `max_names` distinct names in a window, the rest share one summary record
//!   (host `*`, with the count of lookups and of distinct names left out).
//!
//! The driver (`crate::gateway`) calls `poll_due` from a ticker and on shutdown (`drain`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::audit::AuditRecord;

/// How many refusals a document may have recorded one by one, and how they are grouped past
/// that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefusalBudgetConfig {
    /// Individual refusal records per second per document, on average.
    pub per_second: f64,
    /// Individual refusal records a document may have at once after a quiet spell.
    pub burst: f64,
    /// How long refusals past the budget are gathered into one record.
    pub window: Duration,
}

/// What to do with one refused flow's record.
#[derive(Debug, Clone, PartialEq)]
pub enum RefusalAdmission {
    /// Within the budget: write this record and log it.
    Record(Box<AuditRecord>),
    /// Counted into the document's open aggregate; `opened` is true for the refusal that
    /// opened the window (log one line saying refusals are being aggregated).
    Aggregated { opened: bool },
}

#[derive(Debug)]
struct DocumentRefusals {
    level: f64,
    last: Instant,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    closes: Instant,
    record: AuditRecord,
}

/// Per-document budgets of individual refusal records. See the module docs.
#[derive(Debug)]
pub struct RefusalBudget {
    config: RefusalBudgetConfig,
    documents: HashMap<(String, String), DocumentRefusals>,
}

impl RefusalBudget {
    pub fn new(config: RefusalBudgetConfig) -> Self {
        RefusalBudget {
            config,
            documents: HashMap::new(),
        }
    }

    /// Takes new rates (a reload); open windows keep their closing time.
    pub fn set_config(&mut self, config: RefusalBudgetConfig) {
        self.config = config;
    }

    /// Decides on one refused flow's record at `now`.
    pub fn handle_refusal(&mut self, now: Instant, record: AuditRecord) -> RefusalAdmission {
        let config = self.config;
        let key = (record.tenant.clone(), record.document.clone());
        let state = self.documents.entry(key).or_insert(DocumentRefusals {
            level: config.burst,
            last: now,
            pending: None,
        });
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.last = state.last.max(now);
        state.level = (state.level + elapsed * config.per_second).min(config.burst);
        if let Some(pending) = state.pending.as_mut() {
            absorb(&mut pending.record, &record);
            return RefusalAdmission::Aggregated { opened: false };
        }
        if state.level >= 1.0 {
            state.level -= 1.0;
            return RefusalAdmission::Record(Box::new(record));
        }
        let mut first = record;
        first.count = 1;
        first.classes = BTreeMap::from([(first.class.clone(), 1)]);
        state.pending = Some(Pending {
            closes: now + config.window,
            record: first,
        });
        RefusalAdmission::Aggregated { opened: true }
    }

    /// The aggregated records whose windows have closed by `now`. Also forgets documents that
    /// are quiet (full budget, no window open).
    pub fn poll_due(&mut self, now: Instant) -> Vec<AuditRecord> {
        let mut due = Vec::new();
        let config = self.config;
        self.documents.retain(|_, state| {
            if let Some(pending) = state.pending.take_if(|pending| pending.closes <= now) {
                due.push(pending.record);
            }
            let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
            let refilled = state.level + elapsed * config.per_second >= config.burst;
            state.pending.is_some() || !refilled
        });
        due.sort_by_key(|record| record.flow);
        due
    }

    /// Every open aggregate, whatever its window (shutdown).
    pub fn drain(&mut self) -> Vec<AuditRecord> {
        let mut due: Vec<AuditRecord> = self
            .documents
            .drain()
            .filter_map(|(_, state)| state.pending.map(|pending| pending.record))
            .collect();
        due.sort_by_key(|record| record.flow);
        due
    }

    /// When the next open window closes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.documents
            .values()
            .filter_map(|state| state.pending.as_ref().map(|pending| pending.closes))
            .min()
    }
}

/// Counts `record` into the aggregate `into`.
fn absorb(into: &mut AuditRecord, record: &AuditRecord) {
    into.count += record.count.max(1);
    *into.classes.entry(record.class.clone()).or_default() += record.count.max(1);
}

/// How lookups are gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupTallyConfig {
    /// How long a document's lookups are gathered before their records are written.
    pub window: Duration,
    /// Distinct (name, class) pairs per document and window with a record of their own.
    pub max_names: usize,
}

#[derive(Debug)]
struct DocumentLookups {
    closes: Instant,
    /// (name, class) → its record (count so far).
    names: BTreeMap<(String, String), AuditRecord>,
    /// Lookups past `max_names`: the summary record, and the distinct names in it.
    overflow: Option<(AuditRecord, HashSet<String>)>,
}

/// Per-document tallies of name lookups. See the module docs.
#[derive(Debug)]
pub struct LookupTally {
    config: LookupTallyConfig,
    documents: HashMap<(String, String), DocumentLookups>,
}

impl LookupTally {
    pub fn new(config: LookupTallyConfig) -> Self {
        LookupTally {
            config,
            documents: HashMap::new(),
        }
    }

    pub fn set_config(&mut self, config: LookupTallyConfig) {
        self.config = config;
    }

    /// Counts one lookup's record (its `requested_host` is the name, `class` the verdict's).
    pub fn handle_lookup(&mut self, now: Instant, record: AuditRecord) {
        let config = self.config;
        let key = (record.tenant.clone(), record.document.clone());
        let document = self.documents.entry(key).or_insert(DocumentLookups {
            closes: now + config.window,
            names: BTreeMap::new(),
            overflow: None,
        });
        let name_key = (record.requested_host.clone(), record.class.clone());
        if let Some(seen) = document.names.get_mut(&name_key) {
            seen.count += 1;
            return;
        }
        if document.names.len() < config.max_names {
            let mut first = record;
            first.count = 1;
            document.names.insert(name_key, first);
            return;
        }
        let (summary, distinct) = document.overflow.get_or_insert_with(|| {
            let mut summary = record.clone();
            summary.requested_host = "*".to_owned();
            summary.count = 0;
            summary.reason = String::new();
            (summary, HashSet::new())
        });
        *summary.classes.entry(record.class.clone()).or_default() += 1;
        summary.count += 1;
        // Bounded too: the set only says how many distinct names there were, up to a limit.
        if distinct.len() < 4096 {
            distinct.insert(record.requested_host);
        }
        summary.reason = format!(
            "{} more lookups of {} distinct names in this window, past the {} names recorded one by one",
            summary.count,
            distinct.len(),
            config.max_names
        );
    }

    /// The records of windows closed by `now`.
    pub fn poll_due(&mut self, now: Instant) -> Vec<AuditRecord> {
        let mut due = Vec::new();
        self.documents.retain(|_, document| {
            if document.closes > now {
                return true;
            }
            due.extend(std::mem::take(&mut document.names).into_values());
            due.extend(document.overflow.take().map(|(summary, _)| summary));
            false
        });
        due
    }

    /// Every record gathered so far (shutdown).
    pub fn drain(&mut self) -> Vec<AuditRecord> {
        let mut due = Vec::new();
        for (_, mut document) in self.documents.drain() {
            due.extend(std::mem::take(&mut document.names).into_values());
            due.extend(document.overflow.take().map(|(summary, _)| summary));
        }
        due
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.documents
            .values()
            .map(|document| document.closes)
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::audit::Verdict;

    fn refusal(flow: u64, document: &str, class: &str) -> AuditRecord {
        AuditRecord {
            flow,
            front_end: "tunnel".to_owned(),
            tenant: "acme".to_owned(),
            document: document.to_owned(),
            requested_host: "169.254.169.254".to_owned(),
            port: 80,
            verdict: Verdict::Deny,
            class: class.to_owned(),
            reason: "denied".to_owned(),
            ..AuditRecord::default()
        }
    }

    const CONFIG: RefusalBudgetConfig = RefusalBudgetConfig {
        per_second: 1.0,
        burst: 20.0,
        window: Duration::from_secs(10),
    };

    #[test]
    fn a_refusal_flood_becomes_a_bounded_number_of_records_with_the_right_count() {
        let start = Instant::now();
        let mut budget = RefusalBudget::new(CONFIG);
        let mut written = Vec::new();
        let mut opened = 0;
        // 5000 refusals over 5 seconds (one per millisecond), all from one document.
        for flow in 0..5000u64 {
            let now = start + Duration::from_millis(flow);
            match budget.handle_refusal(now, refusal(flow, "doc", "cloud_metadata")) {
                RefusalAdmission::Record(record) => written.push(*record),
                RefusalAdmission::Aggregated { opened: true } => opened += 1,
                RefusalAdmission::Aggregated { opened: false } => {}
            }
            written.extend(budget.poll_due(now));
        }
        written.extend(budget.poll_due(start + Duration::from_secs(60)));
        assert_eq!(opened, 1, "one log line for the whole flood");
        let individual = written.iter().filter(|r| r.count <= 1).count();
        let aggregated: Vec<_> = written.iter().filter(|r| r.count > 1).collect();
        assert_eq!(individual, 20, "the burst");
        assert_eq!(aggregated.len(), 1);
        assert_eq!(aggregated[0].count, 4980);
        assert_eq!(aggregated[0].classes["cloud_metadata"], 4980);
        assert_eq!(
            aggregated[0].flow, 20,
            "named after the first refusal it holds"
        );
        let total: u64 = written.iter().map(|r| r.count.max(1)).sum();
        assert_eq!(total, 5000, "every refusal is counted once");
        assert_eq!(budget.next_deadline(), None);
    }

    #[test]
    fn documents_have_budgets_of_their_own_and_the_budget_refills() {
        let start = Instant::now();
        let mut budget = RefusalBudget::new(RefusalBudgetConfig {
            burst: 2.0,
            ..CONFIG
        });
        let admit = |budget: &mut RefusalBudget, at: u64, doc: &str| {
            matches!(
                budget.handle_refusal(start + Duration::from_secs(at), refusal(at, doc, "private")),
                RefusalAdmission::Record(_)
            )
        };
        assert!(admit(&mut budget, 0, "a"));
        assert!(admit(&mut budget, 0, "a"));
        assert!(!admit(&mut budget, 0, "a"));
        assert!(
            admit(&mut budget, 0, "b"),
            "another document is not affected"
        );
        // While the window is open even a refilled budget aggregates...
        assert!(!admit(&mut budget, 5, "a"));
        let due = budget.poll_due(start + Duration::from_secs(10));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 2);
        // ...and once it closed, records are individual again.
        assert!(admit(&mut budget, 11, "a"));
        // Quiet documents are forgotten.
        budget.poll_due(start + Duration::from_secs(100));
        assert!(budget.documents.is_empty());
    }

    #[test]
    fn lookups_get_a_record_per_distinct_name_and_window_then_a_summary() {
        let start = Instant::now();
        let mut tally = LookupTally::new(LookupTallyConfig {
            window: Duration::from_secs(10),
            max_names: 3,
        });
        let lookup = |name: &str, class: &str| AuditRecord {
            requested_host: name.to_owned(),
            class: class.to_owned(),
            front_end: "lookup".to_owned(),
            ..refusal(0, "doc", class)
        };
        for _ in 0..5 {
            tally.handle_lookup(start, lookup("api.example.com", "found"));
        }
        tally.handle_lookup(start, lookup("a.example", "not_allowed"));
        tally.handle_lookup(start, lookup("b.example", "not_allowed"));
        for i in 0..100 {
            tally.handle_lookup(
                start,
                lookup(&format!("x{}.exfil.test", i % 40), "not_allowed"),
            );
        }
        assert!(tally.poll_due(start + Duration::from_secs(9)).is_empty());
        let due = tally.poll_due(start + Duration::from_secs(10));
        assert_eq!(due.len(), 4);
        let api = due
            .iter()
            .find(|r| r.requested_host == "api.example.com")
            .unwrap();
        assert_eq!(api.count, 5);
        let summary = due.iter().find(|r| r.requested_host == "*").unwrap();
        assert_eq!(summary.count, 100);
        assert!(
            summary.reason.contains("40 distinct names"),
            "{}",
            summary.reason
        );
        assert!(tally.poll_due(start + Duration::from_secs(30)).is_empty());
    }
}
