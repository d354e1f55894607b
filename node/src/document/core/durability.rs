//! Durability and stopping: commits in flight and what each gates (an ack, a reply), what a
//! failed or fenced commit means, compaction, and the one `Stop` the core ever asks for.

use airlock_protocol::{ErrorCode, ErrorReply, ServerMessage, SessionId};
use bytes::Bytes;
use tracing::{info, warn};

use crate::store::{CommitError, Seq};

use super::{Answer, COMPACT_EVERY, CommitId, DocumentCore, Effect, Kernel, StopReason};

/// What a commit in flight gates.
#[derive(Debug)]
pub(super) enum Gated {
    /// A client's update: the ack of `seq` to `session`.
    Ack { session: SessionId, seq: u64 },
    /// A node-made change: the answer to the request that made it.
    Reply {
        client_ref: u64,
        answer: Result<Option<ServerMessage>, ErrorReply>,
    },
}

impl<K: Kernel> DocumentCore<K> {
    /// Asks for `updates` to be made durable; `gated` waits for the answer.
    pub(super) fn commit(&mut self, updates: Vec<Bytes>, gated: Gated) -> CommitId {
        let commit = CommitId(self.next_commit);
        self.next_commit += 1;
        self.commits.insert(commit, gated);
        self.effects.push_back(Effect::Commit { commit, updates });
        commit
    }

    /// Appends the store acknowledged, towards the next compaction.
    pub(super) fn count_appends(&mut self, seqs: &[Seq]) {
        for seq in seqs {
            self.last_seq = self.last_seq.max(*seq);
            self.appends_since_snapshot += 1;
        }
    }

    pub(super) fn commit_failed(&mut self, err: &CommitError, ack: Option<(SessionId, u64)>) {
        match err {
            CommitError::Fenced { .. } => self.stop_serving(StopReason::Moved),
            CommitError::Store(_) | CommitError::Stopped => {
                warn!(%err, "an update could not be stored");
                if let Some((session, seq)) = ack
                    && self.sessions.contains_key(&session)
                {
                    // Not acknowledged: the client keeps it and sends it again.
                    self.effects.push_back(Effect::Direct {
                        session,
                        message: ServerMessage::Error(ErrorReply::for_request(
                            ErrorCode::Internal,
                            None,
                            format!("update {seq} was not stored ({err}); it stays unacknowledged"),
                        )),
                    });
                }
            }
        }
    }

    /// Stops serving the document at once: no run starts, every client is told why.
    pub(super) fn stop_serving(&mut self, reason: StopReason) {
        if self.stop.is_some() {
            return;
        }
        warn!(document = %self.doc, ?reason, "document stops serving");
        self.broadcast(None, ServerMessage::Error(reason.reply()));
        self.stop = Some(reason);
        self.emit_stop();
    }

    /// Asks the driver to stop, with a snapshot when the document is released in order.
    pub(super) fn emit_stop(&mut self) {
        let Some(reason) = self.stop else {
            return;
        };
        info!(document = %self.doc, "document stopping");
        let snapshot = matches!(reason, StopReason::Shutdown | StopReason::Idle)
            .then(|| Bytes::from(self.notebook.snapshot()));
        self.kernel = None;
        self.effects.push_back(Effect::Stop { reason, snapshot });
    }

    pub(super) fn maybe_compact(&mut self) {
        if self.compacting || self.appends_since_snapshot < COMPACT_EVERY {
            return;
        }
        self.compacting = true;
        // The snapshot covers every update applied so far, so also everything up to the last
        // acknowledged append.
        self.effects.push_back(Effect::Compact {
            snapshot: Bytes::from(self.notebook.snapshot()),
            upto: self.last_seq,
        });
    }

    /// Commits `updates`, then answers with `answer` (or the commit's failure).
    pub(super) fn durably(
        &mut self,
        updates: Vec<Bytes>,
        client_ref: u64,
        answer: Result<Option<ServerMessage>, ErrorReply>,
    ) -> Answer {
        if updates.is_empty() {
            return Answer::Now(answer);
        }
        Answer::Durable(self.commit(updates, Gated::Reply { client_ref, answer }))
    }
}
