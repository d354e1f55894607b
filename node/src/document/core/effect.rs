//! What the core asks its driver to do ([`Effect`]), and the names the driver hands back with
//! the results ([`CommitId`], [`Timer`]).

use std::sync::Arc;
use std::time::Instant;

use airlock_protocol::{ErrorReply, ServerMessage, SessionId};
use bytes::Bytes;

use super::{RunOrigin, StopReason};
use crate::store::{CellId, Seq, StoreError};

/// An event for the document's sessions; `origin` is the session whose request caused it, if
/// that session must not get it back (its own edit).
#[derive(Debug)]
pub struct Event {
    pub origin: Option<SessionId>,
    pub message: ServerMessage,
}

/// Events every session of the document receives, shared rather than copied.
pub type Broadcast = Arc<Event>;

/// Names one [`Effect::Commit`], so its result can be handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(pub u64);

/// A timer the core asked for with [`Effect::SetTimer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// A kernel status held back by the status gate may go out now.
    KernelStatus,
}

/// What the driver must do. Effects are drained in order with
/// [`DocumentCore::poll_effect`](super::DocumentCore::poll_effect) and carried out in that order.
#[derive(Debug)]
pub enum Effect {
    /// Send to every session (except `origin`, when set).
    Broadcast(Broadcast),
    /// Send to one session only; dropped if it has left.
    Direct {
        session: SessionId,
        message: ServerMessage,
    },
    /// The answer to the request that got [`Answer::Durable`] with this commit.
    Reply {
        commit: CommitId,
        result: Result<Option<ServerMessage>, ErrorReply>,
    },
    /// Make `updates` durable (through the group committer) and hand the result to
    /// [`DocumentCore::handle_committed`](super::DocumentCore::handle_committed). Whatever the commit gates (an ack, a reply) waits.
    Commit {
        commit: CommitId,
        updates: Vec<Bytes>,
    },
    /// Store a cell's latest outputs (encoded [`CellOutputs`](airlock_protocol::CellOutputs)); when the store says the
    /// document is fenced, call [`DocumentCore::handle_outputs_fenced`](super::DocumentCore::handle_outputs_fenced).
    PutOutputs { cell: CellId, bytes: Bytes },
    /// Replace the log up to `upto` with `snapshot`, then call
    /// [`DocumentCore::handle_compacted`](super::DocumentCore::handle_compacted).
    Compact { snapshot: Bytes, upto: Seq },
    /// Restart the kernel, then call [`DocumentCore::handle_restart_finished`](super::DocumentCore::handle_restart_finished).
    RestartKernel,
    /// The run the kernel executes changed (`None`: nothing runs); tell the run watcher.
    RunChanged(Option<RunOrigin>),
    /// Call [`DocumentCore::handle_timer`](super::DocumentCore::handle_timer) with `timer` at `at`.
    SetTimer { at: Instant, timer: Timer },
    /// Stop serving: finish the pending commits, store `snapshot` if there is one, shut the
    /// kernel down, end every session's stream. Emitted once.
    Stop {
        reason: StopReason,
        snapshot: Option<Bytes>,
    },
}

/// Why a compaction ([`Effect::Compact`]) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task doing it ended without an answer (it panicked, or the runtime is going away).
    #[error("the compaction task ended without an answer")]
    Lost,
}

/// How a request is answered.
#[derive(Debug)]
pub enum Answer {
    /// Now, with this.
    Now(Result<Option<ServerMessage>, ErrorReply>),
    /// Once the changes it made are durable: [`Effect::Reply`] with this commit carries it.
    Durable(CommitId),
}
