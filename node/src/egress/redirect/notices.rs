//! How many `[airlock egress]` lines a kernel's refusals may write into the running cell.
//!
//! A loop of refused connects would otherwise append one line per attempt to the cell's
//! outputs (security review #5, #3). [`NoticeGate`] lets a few lines through at once
//! ([`NOTICE_BURST`], then one per [`NOTICE_EVERY`]), drops a line repeated within
//! [`REPEAT_WITHIN`] (a name's `A` and `AAAA` questions, the same refused address in a retry
//! loop), and counts the rest: once [`SUMMARY_AFTER`] has passed since the first line held back,
//! one line says how many more were refused, and summaries themselves come at most once per
//! [`SUMMARY_EVERY`]. A flood of thousands of refusals thus shows a handful of lines.
//!
//! Sans-IO: the driver passes the time and arms a timer for [`Offer::Held`]'s deadline.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::egress::names::TokenBucket;

/// Lines shown at once before the rate applies (a notebook meeting several refusals in a
/// minute still sees each: the end-to-end test meets six).
pub(crate) const NOTICE_BURST: u32 = 10;
/// One more line may be shown per this much time.
pub(crate) const NOTICE_EVERY: Duration = Duration::from_secs(60);
/// A line identical to one shown this recently is dropped without counting.
pub(crate) const REPEAT_WITHIN: Duration = Duration::from_secs(10);
/// How long after the first held-back line its summary is written.
pub(crate) const SUMMARY_AFTER: Duration = Duration::from_secs(2);
/// The least time between two summaries.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// Lines remembered for [`REPEAT_WITHIN`].
const RECENT_KEPT: usize = 16;

/// What to do with a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Write it now.
    Show(String),
    /// Held back and counted. `Some(at)`: a summary is newly due at `at` (arm a timer and call
    /// [`NoticeGate::flush`] then); `None`: one is already due.
    Held(Option<Instant>),
    /// The same line was just shown: nothing to do.
    Repeat,
}

/// One kernel's notices.
#[derive(Debug)]
pub(crate) struct NoticeGate {
    bucket: TokenBucket,
    recent: VecDeque<(String, Instant)>,
    /// Refusals held back since the last summary.
    held: u64,
    /// When the pending summary is due.
    due: Option<Instant>,
    last_summary: Option<Instant>,
}

impl NoticeGate {
    pub(crate) fn new(now: Instant) -> Self {
        NoticeGate {
            bucket: TokenBucket::new(NOTICE_BURST, NOTICE_EVERY, now),
            recent: VecDeque::new(),
            held: 0,
            due: None,
            last_summary: None,
        }
    }

    /// A refusal with a line to show.
    pub(crate) fn offer(&mut self, line: String, now: Instant) -> Offer {
        self.recent
            .retain(|(_, shown)| now.saturating_duration_since(*shown) < REPEAT_WITHIN);
        if self.recent.iter().any(|(shown, _)| *shown == line) {
            return Offer::Repeat;
        }
        if self.held == 0 && self.bucket.take(now) {
            if self.recent.len() >= RECENT_KEPT {
                self.recent.pop_front();
            }
            self.recent.push_back((line.clone(), now));
            return Offer::Show(line);
        }
        self.hold(now)
    }

    /// A refusal counted without a line of its own (one already said what is going on).
    pub(crate) fn hold(&mut self, now: Instant) -> Offer {
        self.held += 1;
        if self.due.is_some() {
            return Offer::Held(None);
        }
        let mut due = now + SUMMARY_AFTER;
        if let Some(last) = self.last_summary {
            due = due.max(last + SUMMARY_EVERY);
        }
        self.due = Some(due);
        Offer::Held(Some(due))
    }

    /// The summary line, if one is due by `now`.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<String> {
        let due = self.due?;
        if now < due {
            return None;
        }
        self.due = None;
        self.last_summary = Some(now);
        let held = std::mem::take(&mut self.held);
        (held > 0).then(|| {
            format!(
                "[airlock egress] {held} more refused (not shown one by one; {NOTICE_BURST} \
                 lines at most, then one per {}s)\n",
                NOTICE_EVERY.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> String {
        format!("[airlock egress] 10.0.0.{i}:80 denied: private\n")
    }

    /// A flood of distinct refusals shows the burst, then one summary with the exact count.
    #[test]
    fn a_flood_gives_a_few_lines_and_one_summary() {
        let start = Instant::now();
        let mut gate = NoticeGate::new(start);
        let mut shown = Vec::new();
        let mut timers = Vec::new();
        for i in 0..1000 {
            let now = start + Duration::from_millis(i as u64);
            match gate.offer(line(i), now) {
                Offer::Show(text) => shown.push(text),
                Offer::Held(Some(at)) => timers.push(at),
                Offer::Held(None) => {}
                Offer::Repeat => panic!("every line differs"),
            }
        }
        assert_eq!(shown.len(), NOTICE_BURST as usize);
        assert_eq!(timers.len(), 1, "one timer for the pending summary");
        let at = timers[0];
        assert_eq!(
            at,
            start + Duration::from_millis(NOTICE_BURST as u64) + SUMMARY_AFTER
        );
        assert_eq!(
            gate.flush(at - Duration::from_millis(1)),
            None,
            "not yet due"
        );
        let summary = gate.flush(at).unwrap();
        assert!(
            summary.starts_with("[airlock egress] 990 more refused"),
            "{summary}"
        );
        assert_eq!(gate.flush(at + SUMMARY_EVERY), None, "nothing more to say");
    }

    /// A long flood: summaries come no more often than SUMMARY_EVERY, and every refusal is
    /// either shown or counted in exactly one summary.
    #[test]
    fn a_long_flood_is_summarised_at_a_bounded_rate() {
        let start = Instant::now();
        let mut gate = NoticeGate::new(start);
        let (mut lines, mut shown, mut counted) = (0u64, 0u64, 0u64);
        let mut timer = None::<Instant>;
        let total = 10 * 60 * 100; // ten minutes at 100 refusals a second
        for i in 0..total {
            let now = start + Duration::from_millis(10 * i as u64);
            if let Some(at) = timer.filter(|at| *at <= now) {
                let summary = gate.flush(at).unwrap();
                let n: u64 = summary.split_whitespace().nth(2).unwrap().parse().unwrap();
                counted += n;
                lines += 1;
                timer = None;
            }
            match gate.offer(line(i as usize), now) {
                Offer::Show(_) => {
                    lines += 1;
                    shown += 1;
                }
                Offer::Held(Some(at)) => timer = Some(at),
                Offer::Held(None) | Offer::Repeat => {}
            }
        }
        if let Some(at) = timer
            && let Some(summary) = gate.flush(at)
        {
            counted += summary
                .split_whitespace()
                .nth(2)
                .unwrap()
                .parse::<u64>()
                .unwrap();
            lines += 1;
        }
        assert!(lines <= 40, "{lines} lines for a ten-minute flood");
        assert_eq!(
            shown + counted,
            total as u64,
            "every refusal is shown or counted"
        );
    }

    #[test]
    fn a_repeated_line_is_dropped_and_a_quiet_gate_shows_lines_again() {
        let start = Instant::now();
        let mut gate = NoticeGate::new(start);
        assert!(matches!(gate.offer(line(1), start), Offer::Show(_)));
        assert_eq!(gate.offer(line(1), start), Offer::Repeat);
        assert!(matches!(
            gate.offer(line(1), start + REPEAT_WITHIN),
            Offer::Show(_)
        ));
        // `hold` counts without a line, and is summarised like any held line.
        let Offer::Held(Some(at)) = gate.hold(start) else {
            panic!("a first hold arms the summary");
        };
        assert_eq!(gate.hold(start), Offer::Held(None));
        assert!(
            matches!(gate.offer(line(2), start), Offer::Held(None)),
            "while a summary is pending, lines are held so the summary comes after them"
        );
        assert!(gate.flush(at).unwrap().contains(" 3 more refused"));
        assert!(matches!(
            gate.offer(line(3), at + Duration::from_secs(1)),
            Offer::Show(_)
        ));
    }
}
