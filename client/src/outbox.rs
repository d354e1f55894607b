//! The client's edits the node has not yet acknowledged as durable.
//!
//! Every local Yjs update goes out with a sequence number the client picks, increasing per
//! client, and stays here until the node answers `ack` with that number — which it does only once
//! the update is in the document store. After a dropped connection or a node crash the client
//! sends everything still pending again, with the same numbers ([`crate::Client::connect_resuming`]).
//! Yjs applies an update twice harmlessly, so nothing typed is lost.
//!
//! An `Outbox` is plain data: it does no IO and lives apart from the connection, so it survives
//! the connection's death ([`crate::Client::into_outbox`]). It does not decide when to resend.

use std::collections::BTreeMap;

use airlock_protocol::Blob;

/// Unacknowledged updates by sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    /// The number the next update gets. Never reused, so a late `ack` of an old number cannot
    /// remove a newer update.
    next_seq: u64,
    pending: BTreeMap<u64, Blob>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}

impl Outbox {
    /// An empty outbox whose first update gets seq 1.
    pub fn new() -> Self {
        Outbox {
            next_seq: 1,
            pending: BTreeMap::new(),
        }
    }

    /// Records an update and returns its sequence number, greater than every number before it.
    pub fn push(&mut self, update: impl Into<Blob>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(seq, update.into());
        seq
    }

    /// The node made update `seq` durable: forget it. Returns whether it was pending (an `ack`
    /// for an update resent after a reconnect may arrive twice).
    ///
    /// Only `seq` itself is removed: an acknowledgement says nothing about other numbers.
    pub fn ack(&mut self, seq: u64) -> bool {
        self.pending.remove(&seq).is_some()
    }

    /// The updates still waiting for their `ack`, in sequence order.
    pub fn pending(&self) -> impl Iterator<Item = (u64, &Blob)> + '_ {
        self.pending.iter().map(|(seq, update)| (*seq, update))
    }

    /// How many updates wait for their `ack`.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(outbox: &Outbox) -> Vec<u64> {
        outbox.pending().map(|(seq, _)| seq).collect()
    }

    #[test]
    fn seqs_increase_and_pending_is_in_seq_order() {
        let mut outbox = Outbox::new();
        assert!(outbox.is_empty());
        let a = outbox.push(vec![1]);
        let b = outbox.push(vec![2]);
        let c = outbox.push(vec![3]);
        assert!(a < b && b < c);
        assert_eq!(seqs(&outbox), vec![a, b, c]);
        assert_eq!(outbox.len(), 3);
        let bytes: Vec<&[u8]> = outbox.pending().map(|(_, u)| u.as_slice()).collect();
        assert_eq!(bytes, vec![&[1u8][..], &[2], &[3]]);
    }

    #[test]
    fn ack_removes_exactly_that_seq_once() {
        let mut outbox = Outbox::new();
        let a = outbox.push(vec![1]);
        let b = outbox.push(vec![2]);
        let c = outbox.push(vec![3]);
        assert!(outbox.ack(b));
        assert!(!outbox.ack(b), "a second ack of the same seq is a no-op");
        assert!(!outbox.ack(99), "an ack of a seq never sent is ignored");
        assert_eq!(seqs(&outbox), vec![a, c]);
        assert!(outbox.ack(a) && outbox.ack(c));
        assert!(outbox.is_empty());
    }

    #[test]
    fn seqs_are_never_reused_after_acks() {
        let mut outbox = Outbox::new();
        let a = outbox.push(vec![1]);
        outbox.ack(a);
        let b = outbox.push(vec![2]);
        assert!(b > a);
        // A late ack of the old number does not touch the new update.
        assert!(!outbox.ack(a));
        assert_eq!(seqs(&outbox), vec![b]);
    }
}
