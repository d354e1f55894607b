//! [`LogBudget`]: how many log lines something the kernel controls may cause.
//!
//! A kernel can make the node log as fast as it can write (malformed messages, stderr lines,
//! refused connections). Each such log site owns a budget: a few lines per window, then
//! silence, then one line saying how many were suppressed. Sans-IO: the caller passes `now`.

use std::time::{Duration, Instant};

/// A fixed-window allowance of log lines.
#[derive(Debug, Clone)]
pub struct LogBudget {
    per_window: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// At most `per_window` lines in every `window`.
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogBudget {
            per_window,
            window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`. `Some(n)` says yes, and that `n` lines were
    /// suppressed since the last one logged (to be mentioned in this one); `None` says no.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Default for LogBudget {
    /// Ten lines every ten seconds.
    fn default() -> Self {
        LogBudget::new(10, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_the_next_window_counts_what_was_cut() {
        let start = Instant::now();
        let mut budget = LogBudget::new(3, Duration::from_secs(10));
        let admitted: Vec<_> = (0..1000)
            .map(|i| budget.admit(start + Duration::from_millis(i)))
            .collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 3);
        assert!(admitted[..3].iter().all(|a| *a == Some(0)));
        assert_eq!(budget.admit(start + Duration::from_secs(10)), Some(997));
        assert_eq!(budget.admit(start + Duration::from_secs(11)), Some(0));
    }
}
