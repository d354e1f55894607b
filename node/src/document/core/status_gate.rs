//! [`StatusGate`]: how often the kernel's busy/idle flips reach the clients.
//!
//! The kernel holds its HMAC key, so it can forge any number of `status` messages; each flip
//! would otherwise be one broadcast to every client and one slot of the broadcast ring. The
//! core still acts on every flip at once (that is what starts the next queued run); only the
//! broadcast is gated: at most one busy/idle flip per [`MIN_GAP`], and the last state held back
//! is sent when the gap has passed, so clients always end on the true state. What the node
//! itself decides (starting, restarting, dead) is never held: the kernel cannot forge it, and
//! clients wait for it. Sans-IO.

use std::time::{Duration, Instant};

use airlock_protocol::KernelStatus;

/// The shortest time between two status broadcasts.
pub const MIN_GAP: Duration = Duration::from_millis(5);

/// What to do with a status now.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Broadcast it now.
    Send(KernelStatus),
    /// Held: call [`StatusGate::flush`] at this instant (a timer is already due if `None`).
    Held(Option<Instant>),
}

#[derive(Debug, Default)]
pub struct StatusGate {
    last_sent: Option<Instant>,
    held: Option<KernelStatus>,
}

impl StatusGate {
    /// A status the kernel reported at `now`.
    pub fn offer(&mut self, now: Instant, status: KernelStatus) -> Gate {
        let due = self.last_sent.map(|at| at + MIN_GAP);
        let flip = matches!(status, KernelStatus::Busy | KernelStatus::Idle);
        if !flip || due.is_none_or(|due| now >= due) {
            self.held = None;
            self.last_sent = Some(now);
            return Gate::Send(status);
        }
        let first_held = self.held.replace(status).is_none();
        Gate::Held(if first_held { due } else { None })
    }

    /// The timer set by [`Gate::Held`] fired: the status to broadcast, if one is still held.
    pub fn flush(&mut self, now: Instant) -> Option<KernelStatus> {
        let held = self.held.take()?;
        self.last_sent = Some(now);
        Some(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_flips_is_one_broadcast_per_gap_ending_on_the_true_state() {
        let start = Instant::now();
        let mut gate = StatusGate::default();
        let mut sent = Vec::new();
        let mut timers = Vec::new();
        for i in 0..4_000u32 {
            let now = start + Duration::from_micros(u64::from(i));
            let status = if i % 2 == 0 {
                KernelStatus::Busy
            } else {
                KernelStatus::Idle
            };
            match gate.offer(now, status) {
                Gate::Send(status) => sent.push(status),
                Gate::Held(Some(at)) => timers.push(at),
                Gate::Held(None) => {}
            }
        }
        assert_eq!(sent, [KernelStatus::Busy]);
        assert_eq!(timers, [start + MIN_GAP]);
        assert_eq!(gate.flush(start + MIN_GAP), Some(KernelStatus::Idle));
        assert_eq!(gate.flush(start + MIN_GAP), None);
    }

    #[test]
    fn what_the_node_decides_is_never_held() {
        let start = Instant::now();
        let mut gate = StatusGate::default();
        assert_eq!(
            gate.offer(start, KernelStatus::Busy),
            Gate::Send(KernelStatus::Busy)
        );
        let dead = KernelStatus::Dead {
            cause: airlock_protocol::DeathCause::Unknown,
        };
        assert_eq!(gate.offer(start, dead.clone()), Gate::Send(dead));
        for status in [KernelStatus::Restarting, KernelStatus::Starting] {
            assert_eq!(gate.offer(start, status.clone()), Gate::Send(status));
        }
        assert_eq!(gate.flush(start + MIN_GAP), None);
    }

    #[test]
    fn ordinary_runs_are_not_delayed() {
        let start = Instant::now();
        let mut gate = StatusGate::default();
        assert!(matches!(
            gate.offer(start, KernelStatus::Busy),
            Gate::Send(_)
        ));
        let later = start + Duration::from_millis(40);
        assert!(matches!(
            gate.offer(later, KernelStatus::Idle),
            Gate::Send(_)
        ));
    }
}
