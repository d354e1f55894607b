//! [`DocumentCore`]: everything about one served document that changes, as a sans-IO state
//! machine.
//!
//! It owns the notebook CRDT ([`Notebook`]), the reactive cell graph ([`CellGraph`]), the runs
//! in the kernel and the cell run in flight with its outputs, every cell's latest outputs, the
//! connected sessions, the commits waiting to be durable, the stop state, the idle deadline, the
//! kernel status gate and the live-output view. It does no IO, reads no clock and spawns
//! nothing: `now` is passed in, the kernel is reached only through the two synchronous
//! commands of [`Kernel`], and everything else it decides comes out as [`Effect`]s, drained
//! with [`poll_effect`](DocumentCore::poll_effect), that a driver (the actix
//! [`DocumentActor`](super::actor::DocumentActor)) carries out and answers with `handle_*`.
//!
//! Methods come in the four kinds of `quinn_proto::Connection`:
//! - getters: [`kernel_status`](DocumentCore::kernel_status),
//!   [`running_origin`](DocumentCore::running_origin),
//!   [`stop_reason`](DocumentCore::stop_reason), …;
//! - `handle_*`: what happened — a client joined, left or asked something, the kernel said
//!   something, a commit, compaction or restart finished, a timer fired, time passed;
//! - commands: [`handle_shutdown`](DocumentCore::handle_shutdown) (stop serving);
//! - `poll_effect`: what the driver must do now, oldest first.
//!
//! # The rules it keeps
//! - **Nothing acknowledged is lost.** A client's update is applied, forwarded to the other
//!   clients at once, and acknowledged to its sender only once its [`Effect::Commit`] comes back
//!   durable ([`handle_committed`](DocumentCore::handle_committed)); a failed commit is never
//!   acknowledged. Edits made by the node (cell edits, imports, the mode) are answered only once
//!   durable too ([`Answer::Durable`]).
//! - **A fenced node stops at once.** When the store refuses a write because a newer epoch holds
//!   the document, every client gets `document_moved`, no further run starts, and the core asks
//!   to stop ([`Effect::Stop`] with [`StopReason::Moved`]).
//! - **The graph decides what runs.** Cell runs go to the kernel one at a time, as the graph plans
//!   them; outputs are accepted only for a cell's current epoch, so a cancelled run's late output
//!   never lands. Plain `execute` requests (ad-hoc code) go to the same kernel queue.
//! - **Typing never runs code.** An update from a client only marks cells stale; running is an
//!   explicit request (or an edit request with `run`).
//! - **Exactly one `done` per run.** Every run announced with `queued` ends with one `done`: the
//!   kernel's (see the [`Kernel`] contract), or `aborted` at once when the kernel refused it.
//! - **Outputs are bounded** per output, per cell and per document ([`OutputLimits`]), and live
//!   output by the [`LiveView`].
//! - **Viewers cannot edit**, and no request is served once the document is stopping.

mod cells;
#[cfg(any(test, feature = "test-util"))]
pub mod fake_kernel;
mod kernel;
mod status_gate;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_protocol::{
    Accepted, CellEdit, CellOutputs as WireCellOutputs, CellStatus, ClientMessage, DocUpdate,
    ErrorCode, ErrorReply, ExecutionMode as WireMode, Exported, KernelStatus, Output, Role,
    RunDone, RunId, RunOutput, RunQueued, RunStatus, ServerMessage, SessionId, StreamName,
    SyncStep2, UpdateAck,
};
use bytes::Bytes;
use tracing::{info, warn};

use crate::collab::ipynb::{self, CellOutputs, ImportLimits, OutputsByCell};
use crate::collab::validate::{self, Limits};
use crate::collab::{Notebook, NotebookError};
use crate::document::graph::{CellGraph, Epoch, ExecutionMode, GraphEvent, RunOutcome};
use crate::document::outputs::{self, LiveView, OutputLimits, RunOutputs, trim_stored};
use crate::kernel::KernelEvent;
use crate::store::{CellId, CommitError, DocumentId, Seq, StoreError};

pub use cells::sync_structure;
pub use kernel::Kernel;
pub use status_gate::MIN_GAP as STATUS_MIN_GAP;

/// Largest update one client message may carry. Typing makes updates of a few bytes; a pasted
/// cell a few kilobytes. Whole notebooks arrive through `import`, not as one update.
pub const MAX_CLIENT_UPDATE: usize = 2 << 20;

/// Most elements one client update may carry. `yrs` applies some shapes of update (many writes
/// to map keys without an anchor) in quadratic time, so a client may not send many at once.
pub const MAX_CLIENT_UPDATE_ELEMENTS: usize = 8192;

/// After this many appends since the last snapshot, the core asks for a compaction.
pub const COMPACT_EVERY: u64 = 1000;

/// The notebook metadata key that keeps the document's execution mode.
pub const MODE_KEY: &str = "airlock_execution_mode";

/// An event for the document's sessions; `origin` is the session whose request caused it, if
/// that session must not get it back (its own edit).
#[derive(Debug)]
pub struct Event {
    pub origin: Option<SessionId>,
    pub message: ServerMessage,
}

/// Events every session of the document receives, shared rather than copied.
pub type Broadcast = Arc<Event>;

/// Why the document stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The node is shutting down.
    Shutdown,
    /// No client for the configured idle time: the document was snapshotted and released.
    Idle,
    /// The store refused a write: a newer owner holds the document.
    Moved,
    /// The document's replica hit a bug in the CRDT library; it must be reloaded.
    Internal,
}

impl StopReason {
    /// The fatal error every client gets.
    pub fn reply(self) -> ErrorReply {
        match self {
            StopReason::Shutdown => {
                ErrorReply::fatal(ErrorCode::Internal, "the node is shutting down")
            }
            StopReason::Idle => ErrorReply::fatal(
                ErrorCode::Internal,
                "the document was idle and has been released; ask the coordinator for a new \
                 session",
            ),
            StopReason::Moved => ErrorReply::fatal(
                ErrorCode::DocumentMoved,
                "another node now serves this document (its store refused this node's write); \
                 ask the coordinator for a new session. Edits not yet acknowledged are kept by \
                 your client and sent again.",
            ),
            StopReason::Internal => ErrorReply::fatal(
                ErrorCode::Internal,
                "the document's replica failed and must be reloaded; reconnect. Edits not yet \
                 acknowledged are kept by your client and sent again.",
            ),
        }
    }
}

/// The run the kernel is executing, as the egress gateway's audit records name it: which cell
/// (none for code sent with `execute`), which run, and the user who started it (empty for runs
/// an edit's reactive plan queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOrigin {
    pub cell: Option<String>,
    pub run: u64,
    pub user: String,
}

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
/// [`DocumentCore::poll_effect`] and carried out in that order.
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
    /// [`DocumentCore::handle_committed`]. Whatever the commit gates (an ack, a reply) waits.
    Commit {
        commit: CommitId,
        updates: Vec<Bytes>,
    },
    /// Store a cell's latest outputs (encoded [`WireCellOutputs`]); when the store says the
    /// document is fenced, call [`DocumentCore::handle_outputs_fenced`].
    PutOutputs { cell: CellId, bytes: Bytes },
    /// Replace the log up to `upto` with `snapshot`, then call
    /// [`DocumentCore::handle_compacted`].
    Compact { snapshot: Bytes, upto: Seq },
    /// Restart the kernel, then call [`DocumentCore::handle_restart_finished`].
    RestartKernel,
    /// The run the kernel executes changed (`None`: nothing runs); tell the run watcher.
    RunChanged(Option<RunOrigin>),
    /// Call [`DocumentCore::handle_timer`] with `timer` at `at`.
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

/// How the core is set up.
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    /// What the kernel's outputs may cost.
    pub output_limits: OutputLimits,
    /// How many events the broadcast ring holds (the live view counts the output bytes in it).
    pub ring_capacity: usize,
    /// Stop after this long without a client ([`StopReason::Idle`]).
    pub idle_timeout: Option<Duration>,
}

/// A document as read from its store, for [`DocumentCore::new`].
#[derive(Debug)]
pub struct StoredDocument {
    pub doc: DocumentId,
    pub notebook: Notebook,
    /// Built from the notebook, every cell stale.
    pub graph: CellGraph,
    pub outputs: OutputsByCell,
    /// The last append loaded.
    pub seq: Seq,
    /// How many appends came after the latest snapshot.
    pub appends_since_snapshot: u64,
}

/// What a kernel run is for.
#[derive(Debug, Clone)]
enum RunKind {
    /// Code a client sent with `execute`.
    Adhoc,
    /// A cell the graph scheduled.
    Cell { cell: CellId, epoch: Epoch },
    /// Housekeeping (deleting globals no cell defines any more); its outputs are not shown.
    Internal,
}

/// The cell run in flight and what it has printed so far, settled.
#[derive(Debug)]
struct CurrentRun {
    run: RunId,
    outputs: RunOutputs,
}

/// One connected client.
#[derive(Debug)]
struct Session {
    user: String,
    role: Role,
}

/// What a commit in flight gates.
#[derive(Debug)]
enum Gated {
    /// A client's update: the ack of `seq` to `session`.
    Ack { session: SessionId, seq: u64 },
    /// A node-made change: the answer to the request that made it.
    Reply {
        client_ref: u64,
        answer: Result<Option<ServerMessage>, ErrorReply>,
    },
}

/// See the module documentation.
#[derive(Debug)]
pub struct DocumentCore<K> {
    doc: DocumentId,
    notebook: Notebook,
    graph: CellGraph,
    /// Latest settled outputs of each cell (not in the CRDT).
    outputs: OutputsByCell,
    /// What the kernel's outputs may cost ([`crate::document::outputs`]).
    output_limits: OutputLimits,
    /// What clients are shown live, within the limits.
    live: LiveView,
    /// How often the kernel's status flips reach the clients.
    status_gate: status_gate::StatusGate,
    /// Who and what started each run still in the kernel.
    origins: HashMap<RunId, RunOrigin>,
    /// The executing run last told with [`Effect::RunChanged`].
    origin_told: Option<RunOrigin>,
    /// `None` once the document stops: nothing more goes to the kernel.
    kernel: Option<K>,
    kernel_status: KernelStatus,
    restarting: bool,
    sessions: HashMap<SessionId, Session>,
    next_session: u64,
    next_run: u64,
    runs: HashMap<RunId, RunKind>,
    current: Option<CurrentRun>,
    /// Which request (session, client_ref) queued each queued cell.
    requested: HashMap<CellId, (SessionId, u64)>,
    /// Commits asked for and not yet answered.
    commits: HashMap<CommitId, Gated>,
    next_commit: u64,
    /// The last append the store acknowledged.
    last_seq: Seq,
    appends_since_snapshot: u64,
    compacting: bool,
    /// Why the document is stopping, once it is.
    stop: Option<StopReason>,
    /// Stop after this long without a client.
    idle_timeout: Option<Duration>,
    /// Since when no client has been connected.
    idle_since: Option<Instant>,
    effects: VecDeque<Effect>,
}

impl<K: Kernel> DocumentCore<K> {
    /// A core for `stored`, around a kernel that has just started (idle, holding nothing: every
    /// cell is stale). Stored outputs are held to the limits here, so outputs kept under larger
    /// limits cannot make the document unjoinable.
    pub fn new(now: Instant, stored: StoredDocument, kernel: K, config: CoreConfig) -> Self {
        let limits = config.output_limits;
        let mut outputs = stored.outputs;
        for kept in outputs.values_mut() {
            kept.outputs = trim_stored(std::mem::take(&mut kept.outputs), limits);
        }
        DocumentCore {
            doc: stored.doc,
            notebook: stored.notebook,
            graph: stored.graph,
            outputs,
            output_limits: limits,
            live: LiveView::new(limits, config.ring_capacity),
            status_gate: Default::default(),
            origins: HashMap::new(),
            origin_told: None,
            kernel: Some(kernel),
            kernel_status: KernelStatus::Idle,
            restarting: false,
            sessions: HashMap::new(),
            next_session: 1,
            next_run: 1,
            runs: HashMap::new(),
            current: None,
            requested: HashMap::new(),
            commits: HashMap::new(),
            next_commit: 1,
            last_seq: stored.seq,
            appends_since_snapshot: stored.appends_since_snapshot,
            compacting: false,
            stop: None,
            idle_timeout: config.idle_timeout,
            idle_since: Some(now),
            effects: VecDeque::new(),
        }
    }

    // ---- Getters ------------------------------------------------------------------------------

    pub fn doc(&self) -> &DocumentId {
        &self.doc
    }

    /// The kernel's state as last reported (what a joining client is told).
    pub fn kernel_status(&self) -> &KernelStatus {
        &self.kernel_status
    }

    /// The run the kernel executes now, as last told with [`Effect::RunChanged`].
    pub fn running_origin(&self) -> Option<RunOrigin> {
        self.origin_told.clone()
    }

    /// Why the document is stopping, once it is.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// How many clients are connected.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// How often [`handle_tick`](Self::handle_tick) should be called (`None`: never needed).
    pub fn tick_every(&self) -> Option<Duration> {
        self.idle_timeout
            .map(|timeout| (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)))
    }

    /// The next thing the driver must do.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    // ---- What happened ------------------------------------------------------------------------

    /// A client joins: it is told every cell's latest outputs and state (directly, before
    /// anything else reaches it), and gets a session id.
    pub fn handle_join(
        &mut self,
        _now: Instant,
        user: String,
        role: Role,
    ) -> Result<SessionId, ErrorReply> {
        if let Some(reason) = &self.stop {
            return Err(reason.reply());
        }
        let session = SessionId(self.next_session);
        self.next_session += 1;
        for (cell, stored) in &self.outputs {
            self.effects.push_back(Effect::Direct {
                session,
                message: ServerMessage::CellOutputs(WireCellOutputs {
                    cell: cell.clone(),
                    execution_count: stored.execution_count,
                    outputs: stored.outputs.clone(),
                }),
            });
        }
        for cell in self.graph.cell_ids() {
            if let Some(state) = self.graph.state(cell) {
                self.effects.push_back(Effect::Direct {
                    session,
                    message: ServerMessage::Cell(CellStatus {
                        cell: cell.as_str().to_owned(),
                        state: cells::wire_state(&state),
                    }),
                });
            }
        }
        info!(session = session.0, user = %user, role = %role, "client joined");
        self.idle_since = None;
        self.sessions.insert(session, Session { user, role });
        Ok(session)
    }

    /// A client left; with none left, the idle clock starts at `now`.
    pub fn handle_leave(&mut self, now: Instant, session: SessionId) {
        if self.sessions.remove(&session).is_some() {
            info!(session = session.0, "client left");
        }
        if self.sessions.is_empty() {
            self.idle_since = Some(now);
        }
    }

    /// A request from a session; the answer (if any) is for that session only.
    pub fn handle_request(
        &mut self,
        now: Instant,
        session: SessionId,
        message: ClientMessage,
    ) -> Answer {
        if let Some(reason) = &self.stop {
            return Answer::Now(Err(reason.reply()));
        }
        let now_answer = Answer::Now;
        match message {
            ClientMessage::Execute(execute) => now_answer(
                self.execute_adhoc(
                    session,
                    execute.client_ref,
                    execute.code,
                    execute.store_history,
                )
                .map(|_| None),
            ),
            ClientMessage::Interrupt => now_answer(self.interrupt().map(|()| None)),
            ClientMessage::Restart => now_answer(self.restart().map(|()| None)),
            ClientMessage::SyncStep1(step) => now_answer(
                self.notebook
                    .diff(step.state_vector.as_slice())
                    .map(|update| {
                        Some(ServerMessage::SyncStep2(SyncStep2 {
                            update: update.into(),
                        }))
                    })
                    .map_err(|err| bad_request(None, format!("sync step 1 refused: {err}"))),
            ),
            ClientMessage::Update(update) => {
                self.client_update(now, session, update.seq, update.update.0);
                now_answer(Ok(None))
            }
            ClientMessage::Awareness(awareness) => now_answer(
                validate::awareness_update_v1(awareness.update.as_slice(), &client_limits())
                    .map(|_| {
                        self.broadcast(Some(session), ServerMessage::Awareness(awareness));
                        None
                    })
                    .map_err(|err| bad_request(None, format!("awareness update refused: {err}"))),
            ),
            ClientMessage::RunCells(run) => now_answer(
                self.run_cells(session, &run.cells, run.replay, run.client_ref)
                    .map(|queued| {
                        Some(ServerMessage::Accepted(Accepted {
                            client_ref: run.client_ref,
                            queued,
                            ..Accepted::default()
                        }))
                    }),
            ),
            ClientMessage::EditCells(edit) => self.edit_cells(session, edit),
            ClientMessage::SetMode { client_ref, mode } => self.set_mode(client_ref, mode),
            ClientMessage::Import(import) => self.import(import.client_ref, &import.ipynb),
            ClientMessage::Export { client_ref } => now_answer(
                ipynb::export(&self.notebook, &self.outputs)
                    .and_then(|value| ipynb::to_string_pretty(&value))
                    .map(|ipynb| Some(ServerMessage::Exported(Exported { client_ref, ipynb })))
                    .map_err(|err| {
                        ErrorReply::for_request(
                            ErrorCode::Internal,
                            Some(client_ref),
                            format!("export failed: {err}"),
                        )
                    }),
            ),
            ClientMessage::Graph { client_ref } => now_answer(Ok(Some(ServerMessage::Graph(
                cells::graph_view(&self.graph, client_ref),
            )))),
            ClientMessage::Hello(_) | ClientMessage::Ping { .. } | ClientMessage::Unknown => {
                now_answer(Ok(None))
            }
        }
    }

    /// A line from the node itself for the code that is running (an egress refusal): it joins
    /// the outputs of the cell that is running, else of the oldest ad-hoc run (the kernel runs
    /// requests in order), as if the kernel had written it to stderr.
    pub fn handle_notice(&mut self, now: Instant, text: String) {
        let Some(run) = self.executing_run() else {
            info!(text = %text.trim_end(), "node notice with no run to show it in");
            return;
        };
        let output = Output::Stream {
            name: StreamName::Stderr,
            text,
        };
        self.handle_kernel_event(now, KernelEvent::Output { run, output });
    }

    /// Something the kernel reported.
    pub fn handle_kernel_event(&mut self, now: Instant, event: KernelEvent) {
        match event {
            KernelEvent::Status(status) => self.kernel_status_changed(now, status),
            KernelEvent::Output { run, output } => self.kernel_output(now, run, output),
            KernelEvent::Done {
                run,
                status,
                execution_count,
            } => self.run_done(run, status, execution_count),
        }
        self.tell_origin();
    }

    /// A commit asked for with [`Effect::Commit`] finished with `result` (one seq per update).
    pub fn handle_committed(
        &mut self,
        _now: Instant,
        commit: CommitId,
        result: Result<Vec<Seq>, CommitError>,
    ) {
        let Some(gated) = self.commits.remove(&commit) else {
            return;
        };
        match (gated, result) {
            (Gated::Ack { session, seq }, Ok(seqs)) => {
                self.count_appends(&seqs);
                if self.sessions.contains_key(&session) {
                    self.effects.push_back(Effect::Direct {
                        session,
                        message: ServerMessage::Ack(UpdateAck { seq, refused: None }),
                    });
                }
                self.maybe_compact();
            }
            (Gated::Ack { session, seq }, Err(err)) => {
                self.commit_failed(&err, Some((session, seq)));
            }
            (Gated::Reply { answer, .. }, Ok(seqs)) => {
                self.count_appends(&seqs);
                self.effects.push_back(Effect::Reply {
                    commit,
                    result: answer,
                });
            }
            (Gated::Reply { client_ref, .. }, Err(err)) => {
                self.commit_failed(&err, None);
                let code = if matches!(err, CommitError::Fenced { .. }) {
                    ErrorCode::DocumentMoved
                } else {
                    ErrorCode::Internal
                };
                let reply = ErrorReply::for_request(
                    code,
                    Some(client_ref),
                    format!("the change was not stored: {err}"),
                );
                self.effects.push_back(Effect::Reply {
                    commit,
                    result: Err(reply),
                });
            }
        }
    }

    /// A compaction asked for with [`Effect::Compact`] finished.
    pub fn handle_compacted(&mut self, _now: Instant, result: Result<(), CompactError>) {
        self.compacting = false;
        match result {
            Ok(()) => self.appends_since_snapshot = 0,
            Err(CompactError::Store(StoreError::Fenced { .. })) => {
                self.stop_serving(StopReason::Moved);
            }
            Err(err) => warn!(%err, "compaction failed; the log keeps everything"),
        }
    }

    /// Storing a cell's outputs ([`Effect::PutOutputs`]) was refused because a newer epoch holds
    /// the document. The commit path stops the document; outputs alone cannot, but every client
    /// should know the next owner will not have these outputs.
    pub fn handle_outputs_fenced(&mut self, _now: Instant) {
        self.broadcast(None, ServerMessage::Error(StopReason::Moved.reply()));
    }

    /// The restart asked for with [`Effect::RestartKernel`] finished.
    pub fn handle_restart_finished(&mut self, _now: Instant, result: Result<(), impl Display>) {
        self.restarting = false;
        if let Err(reason) = result {
            warn!(%reason, "kernel restart failed");
            let status = KernelStatus::Dead {
                cause: airlock_protocol::DeathCause::StartFailed {
                    reason: reason.to_string(),
                },
            };
            self.kernel_status = status.clone();
            self.broadcast(None, ServerMessage::Kernel(status));
        }
        self.pump();
    }

    /// A timer asked for with [`Effect::SetTimer`] is due.
    pub fn handle_timer(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::KernelStatus => {
                if let Some(status) = self.status_gate.flush(now) {
                    self.broadcast(None, ServerMessage::Kernel(status));
                }
            }
        }
    }

    /// Time passed (every [`tick_every`](Self::tick_every)): with no client for the idle
    /// timeout and no cell running, the document stops ([`StopReason::Idle`], after a snapshot).
    pub fn handle_tick(&mut self, now: Instant) {
        let Some(timeout) = self.idle_timeout else {
            return;
        };
        let idle = self
            .idle_since
            .is_some_and(|since| now.saturating_duration_since(since) >= timeout);
        if idle && self.current.is_none() {
            info!(document = %self.doc, "no client for {timeout:?}; releasing");
            self.stop_serving(StopReason::Idle);
        }
    }

    // ---- Commands -----------------------------------------------------------------------------

    /// Stops the document (the node shuts down): a snapshot, then the kernel. Does nothing when
    /// the document is stopping already.
    pub fn handle_shutdown(&mut self) {
        if self.stop.is_none() {
            self.stop = Some(StopReason::Shutdown);
            self.emit_stop();
        }
    }

    // ---- The work -----------------------------------------------------------------------------

    fn broadcast(&mut self, origin: Option<SessionId>, message: ServerMessage) {
        // Every event takes a place in the ring; the live view counts the output bytes there.
        let output = match &message {
            ServerMessage::Output(RunOutput { output, .. }) => Some(output),
            _ => None,
        };
        self.live.sent(output);
        self.effects
            .push_back(Effect::Broadcast(Arc::new(Event { origin, message })));
    }

    /// Tells the clients the kernel's status, at most once per [`STATUS_MIN_GAP`]; a status
    /// held back goes out when the gap has passed ([`Timer::KernelStatus`]).
    fn broadcast_status(&mut self, now: Instant, status: KernelStatus) {
        match self.status_gate.offer(now, status) {
            status_gate::Gate::Send(status) => self.broadcast(None, ServerMessage::Kernel(status)),
            status_gate::Gate::Held(Some(at)) => self.effects.push_back(Effect::SetTimer {
                at,
                timer: Timer::KernelStatus,
            }),
            status_gate::Gate::Held(None) => {}
        }
    }

    /// Shows an output of `run` live, as far as the live view allows.
    fn show_output(&mut self, now: Instant, run: RunId, output: Output) {
        for output in self.live.admit(now, output) {
            self.broadcast(None, ServerMessage::Output(RunOutput { run, output }));
        }
    }

    /// Sends every pending change of a cell's state to the clients.
    fn flush_graph_events(&mut self) {
        while let Some(event) = self.graph.poll_event() {
            let GraphEvent::StateChanged { cell, state } = event;
            self.broadcast(
                None,
                ServerMessage::Cell(CellStatus {
                    cell: cell.as_str().to_owned(),
                    state: cells::wire_state(&state),
                }),
            );
        }
    }

    fn done(&mut self, run: RunId, status: RunStatus, execution_count: Option<u32>) {
        self.broadcast(
            None,
            ServerMessage::Done(RunDone {
                run,
                status,
                execution_count,
            }),
        );
    }

    /// Why the kernel cannot take work now, if it cannot.
    fn unavailable(&self, client_ref: Option<u64>) -> Option<ErrorReply> {
        let message = if self.restarting {
            "the kernel is restarting; try again when it reports idle".to_owned()
        } else if let KernelStatus::Dead { cause } = &self.kernel_status {
            format!("{cause}; send a restart to get a fresh kernel")
        } else if self.kernel.is_none() {
            "the document is shutting down".to_owned()
        } else {
            return None;
        };
        Some(ErrorReply::for_request(
            ErrorCode::KernelUnavailable,
            client_ref,
            message,
        ))
    }

    fn new_run(&mut self, kind: RunKind) -> RunId {
        let run = RunId(self.next_run);
        self.next_run += 1;
        self.runs.insert(run, kind);
        run
    }

    fn user_of(&self, session: SessionId) -> String {
        self.sessions
            .get(&session)
            .map(|s| s.user.clone())
            .unwrap_or_default()
    }

    fn execute_adhoc(
        &mut self,
        session: SessionId,
        client_ref: u64,
        code: String,
        store_history: bool,
    ) -> Result<RunId, ErrorReply> {
        if let Some(refusal) = self.unavailable(Some(client_ref)) {
            return Err(refusal);
        }
        let user = self.user_of(session);
        let run = self.new_run(RunKind::Adhoc);
        self.origins.insert(
            run,
            RunOrigin {
                cell: None,
                run: run.0,
                user: user.clone(),
            },
        );
        // Announced before the kernel can answer, so `queued` precedes every output.
        self.broadcast(
            None,
            ServerMessage::Queued(RunQueued {
                run,
                session,
                client_ref,
                user,
                code: code.clone(),
                cell: None,
            }),
        );
        let sent = match &self.kernel {
            Some(kernel) => kernel
                .execute(run, &code, store_history)
                .map_err(|err| err.to_string()),
            None => {
                return Err(self
                    .unavailable(Some(client_ref))
                    .unwrap_or_else(gone_reply));
            }
        };
        let result = sent.map(|()| run).map_err(|err| {
            self.runs.remove(&run);
            self.origins.remove(&run);
            self.done(run, RunStatus::Aborted, None);
            ErrorReply::for_request(ErrorCode::KernelUnavailable, Some(client_ref), err)
        });
        self.tell_origin();
        result
    }

    fn interrupt(&mut self) -> Result<(), ErrorReply> {
        if let Some(refusal) = self.unavailable(None) {
            return Err(refusal);
        }
        let kernel = self.kernel.as_ref().ok_or_else(gone_reply)?;
        kernel.interrupt().map_err(|err| {
            ErrorReply::for_request(ErrorCode::KernelUnavailable, None, err.to_string())
        })?;
        // Queued cells are cancelled; the running one ends with the kernel's KeyboardInterrupt.
        self.graph.interrupt();
        self.flush_graph_events();
        Ok(())
    }

    fn restart(&mut self) -> Result<(), ErrorReply> {
        if self.restarting {
            return Ok(());
        }
        if self.kernel.is_none() {
            return Err(gone_reply());
        }
        self.restarting = true;
        // The fresh kernel holds nothing: every cell is stale again.
        self.graph.kernel_lost();
        self.current = None;
        self.flush_graph_events();
        self.effects.push_back(Effect::RestartKernel);
        Ok(())
    }

    /// The run the kernel executes now: the cell run in flight, else the oldest ad-hoc run (the
    /// kernel runs requests in order).
    fn executing_run(&self) -> Option<RunId> {
        self.current
            .as_ref()
            .map(|current| current.run)
            .or_else(|| {
                self.runs
                    .iter()
                    .filter(|(_, kind)| matches!(kind, RunKind::Adhoc))
                    .map(|(run, _)| *run)
                    .min()
            })
    }

    /// Tells the run watcher which run executes now ([`Self::executing_run`]), if that changed.
    fn tell_origin(&mut self) {
        let running = self.executing_run();
        let origin = running.and_then(|run| self.origins.get(&run).cloned());
        if origin != self.origin_told {
            self.origin_told = origin.clone();
            self.effects.push_back(Effect::RunChanged(origin));
        }
    }

    fn kernel_status_changed(&mut self, now: Instant, status: KernelStatus) {
        if let KernelStatus::Dead { cause } = &status {
            warn!(%cause, "kernel died");
            metrics::counter!("airlock_node_kernel_deaths_total").increment(1);
            self.graph.kernel_lost();
            self.current = None;
            self.flush_graph_events();
        }
        // The fresh kernel's first idle ends a restart.
        if matches!(status, KernelStatus::Idle | KernelStatus::Busy) {
            self.restarting = false;
        }
        self.kernel_status = status.clone();
        self.broadcast_status(now, status);
        self.pump();
    }

    fn kernel_output(&mut self, now: Instant, run: RunId, output: Output) {
        match self.runs.get(&run) {
            Some(RunKind::Adhoc) => {
                let output =
                    outputs::cap_output(&output, self.output_limits.per_output).unwrap_or(output);
                self.show_output(now, run, output);
            }
            Some(RunKind::Cell { cell, epoch }) => {
                if self.graph.accept_output(cell, *epoch) {
                    let output = match self.current.as_mut().filter(|c| c.run == run) {
                        Some(current) => current.outputs.accept(output),
                        None => outputs::cap_output(&output, self.output_limits.per_output)
                            .unwrap_or(output),
                    };
                    self.show_output(now, run, output);
                }
            }
            Some(RunKind::Internal) | None => {}
        }
    }

    fn run_done(&mut self, run: RunId, status: RunStatus, execution_count: Option<u32>) {
        metrics::counter!("airlock_node_runs_total", "status" => status_label(status)).increment(1);
        self.origins.remove(&run);
        let shown = matches!(
            self.runs.get(&run),
            Some(RunKind::Adhoc | RunKind::Cell { .. })
        );
        if shown && let Some(hidden) = self.live.end_run() {
            self.broadcast(
                None,
                ServerMessage::Output(RunOutput {
                    run,
                    output: hidden,
                }),
            );
        }
        match self.runs.remove(&run) {
            Some(RunKind::Adhoc) => self.done(run, status, execution_count),
            Some(RunKind::Cell { cell, epoch }) => {
                self.cell_done(run, cell, epoch, status, execution_count);
                self.pump();
            }
            Some(RunKind::Internal) if status != RunStatus::Ok => {
                warn!(?status, "deleting stale globals from the kernel failed");
            }
            Some(RunKind::Internal) | None => {}
        }
    }

    /// A cell's run ended: record its outputs, tell the graph, tell the clients.
    fn cell_done(
        &mut self,
        run: RunId,
        cell: CellId,
        epoch: Epoch,
        status: RunStatus,
        execution_count: Option<u32>,
    ) {
        let outputs = match self.current.take() {
            Some(current) if current.run == run => current.outputs.finish(),
            other => {
                self.current = other;
                Vec::new()
            }
        };
        let outcome = match status {
            RunStatus::Ok => RunOutcome::Completed,
            _ => RunOutcome::Failed,
        };
        let current_epoch = self.graph.finish_run(&cell, epoch, outcome);
        self.done(run, status, execution_count);
        self.flush_graph_events();
        if !current_epoch {
            return;
        }
        let record = CellOutputs {
            execution_count,
            outputs: self.within_document(cell.as_str(), outputs),
        };
        let stored = WireCellOutputs {
            cell: cell.as_str().to_owned(),
            execution_count: record.execution_count,
            outputs: record.outputs.clone(),
        };
        self.outputs.insert(cell.as_str().to_owned(), record);
        match serde_json::to_vec(&stored) {
            Ok(bytes) => self.effects.push_back(Effect::PutOutputs {
                cell,
                bytes: Bytes::from(bytes),
            }),
            Err(err) => warn!(%err, "outputs do not encode; not stored"),
        }
    }

    /// `outputs` of `cell`, cut to what the document's limit leaves room for beside the other
    /// cells' outputs.
    fn within_document(&self, cell: &str, outputs: Vec<Output>) -> Vec<Output> {
        let others: usize = self
            .outputs
            .iter()
            .filter(|(id, _)| id.as_str() != cell)
            .flat_map(|(_, stored)| stored.outputs.iter())
            .map(outputs::json_size)
            .sum();
        let room = self.output_limits.per_document.saturating_sub(others);
        if room >= self.output_limits.per_cell {
            return outputs;
        }
        trim_stored(
            outputs,
            OutputLimits {
                per_cell: room,
                ..self.output_limits
            },
        )
    }

    /// Starts the next cell run the graph has queued, if the kernel is free for it.
    fn pump(&mut self) {
        self.start_next_cell();
        self.tell_origin();
    }

    fn start_next_cell(&mut self) {
        if self.current.is_some() || self.stop.is_some() || self.unavailable(None).is_some() {
            return;
        }
        let Some(execution) = self.graph.start_run() else {
            self.flush_graph_events();
            return;
        };
        if !execution.delete_first.is_empty() {
            self.delete_globals(&execution.delete_first);
        }
        let run = self.new_run(RunKind::Cell {
            cell: execution.cell.clone(),
            epoch: execution.epoch,
        });
        // Cells queued by an edit's reactive plan (not by a request) carry session 0.
        let (session, client_ref) = self
            .requested
            .remove(&execution.cell)
            .unwrap_or((SessionId(0), 0));
        let user = self.user_of(session);
        self.origins.insert(
            run,
            RunOrigin {
                cell: Some(execution.cell.as_str().to_owned()),
                run: run.0,
                user: user.clone(),
            },
        );
        self.broadcast(
            None,
            ServerMessage::Queued(RunQueued {
                run,
                session,
                client_ref,
                user,
                code: execution.code.clone(),
                cell: Some(execution.cell.as_str().to_owned()),
            }),
        );
        self.flush_graph_events();
        let sent = match &self.kernel {
            Some(kernel) => kernel
                .execute(run, &execution.code, true)
                .map_err(|err| err.to_string()),
            // Unreachable: `unavailable` said a kernel is there.
            None => Err("the document is shutting down".to_owned()),
        };
        match sent {
            Ok(()) => {
                self.current = Some(CurrentRun {
                    run,
                    outputs: RunOutputs::new(self.output_limits),
                });
            }
            Err(err) => {
                warn!(%err, "kernel refused a cell run");
                self.runs.remove(&run);
                self.origins.remove(&run);
                self.graph.kernel_lost();
                self.done(run, RunStatus::Aborted, None);
                self.flush_graph_events();
            }
        }
    }

    /// Removes globals no cell defines any more from the kernel.
    fn delete_globals(&mut self, names: &[String]) {
        if names.is_empty() || self.unavailable(None).is_some() {
            return;
        }
        let code = cells::delete_globals_code(names);
        let run = self.new_run(RunKind::Internal);
        let sent = self
            .kernel
            .as_ref()
            .is_some_and(|kernel| kernel.execute(run, &code, false).is_ok());
        if !sent {
            self.runs.remove(&run);
        }
    }

    fn run_cells(
        &mut self,
        session: SessionId,
        cells: &[String],
        replay: bool,
        client_ref: u64,
    ) -> Result<Vec<String>, ErrorReply> {
        if let Some(refusal) = self.unavailable(Some(client_ref)) {
            return Err(refusal);
        }
        let mut planned = Vec::new();
        if replay {
            planned = self.graph.replay();
        } else if cells.is_empty() {
            planned = self.graph.run_stale();
        } else {
            for cell in cells {
                let id = CellId::new(cell.clone())
                    .map_err(|err| bad_request(Some(client_ref), err.to_string()))?;
                planned = self
                    .graph
                    .run(&id)
                    .map_err(|err| bad_request(Some(client_ref), err.to_string()))?;
            }
        }
        // Each run names the request that queued it, so its client can follow exactly those.
        for cell in &planned {
            self.requested.insert(cell.clone(), (session, client_ref));
        }
        self.flush_graph_events();
        self.pump();
        Ok(planned.iter().map(|c| c.as_str().to_owned()).collect())
    }

    /// Applies a client's update, forwards it, and commits it; the ack follows the commit.
    fn client_update(&mut self, _now: Instant, session: SessionId, seq: u64, update: Vec<u8>) {
        // A refused update is answered with a refusing ack: sending it again cannot help.
        let refuse = |core: &mut Self, reason: String| {
            metrics::counter!("airlock_node_updates_refused_total").increment(1);
            if core.sessions.contains_key(&session) {
                core.effects.push_back(Effect::Direct {
                    session,
                    message: ServerMessage::Ack(UpdateAck {
                        seq,
                        refused: Some(reason),
                    }),
                });
            }
        };
        if !self
            .sessions
            .get(&session)
            .is_some_and(|s| s.role.can_edit())
        {
            return refuse(self, "a viewer may not edit the document".to_owned());
        }
        if let Err(err) = validate::update_v1(&update, &client_limits()) {
            return refuse(self, format!("update refused: {err}"));
        }
        let changes = match self.notebook.apply(&update) {
            Ok(changes) => changes,
            Err(NotebookError::Poisoned) => return self.stop_serving(StopReason::Internal),
            Err(err) => return refuse(self, format!("update refused: {err}")),
        };
        metrics::counter!("airlock_node_updates_total").increment(1);
        let update = Bytes::from(update);
        self.broadcast(
            Some(session),
            ServerMessage::Update(DocUpdate {
                update: update.to_vec().into(),
            }),
        );
        if !changes.is_empty() {
            let edits = cells::sync_changes(&self.notebook, &mut self.graph, &changes);
            self.after_edits(edits);
        }
        self.commit(vec![update], Gated::Ack { session, seq });
    }

    /// Deletes stale globals and starts runs that edits planned, and tells clients about states.
    fn after_edits(&mut self, edits: Vec<crate::document::graph::Edit>) {
        let undefined: Vec<String> = edits.iter().flat_map(|e| e.undefined.clone()).collect();
        if self.kernel.is_some() {
            self.delete_globals(&undefined);
        }
        self.pump();
        self.flush_graph_events();
    }

    fn commit(&mut self, updates: Vec<Bytes>, gated: Gated) -> CommitId {
        let commit = CommitId(self.next_commit);
        self.next_commit += 1;
        self.commits.insert(commit, gated);
        self.effects.push_back(Effect::Commit { commit, updates });
        commit
    }

    fn count_appends(&mut self, seqs: &[Seq]) {
        for seq in seqs {
            self.last_seq = self.last_seq.max(*seq);
            self.appends_since_snapshot += 1;
        }
    }

    fn commit_failed(&mut self, err: &CommitError, ack: Option<(SessionId, u64)>) {
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
    fn stop_serving(&mut self, reason: StopReason) {
        if self.stop.is_some() {
            return;
        }
        warn!(document = %self.doc, ?reason, "document stops serving");
        self.broadcast(None, ServerMessage::Error(reason.reply()));
        self.stop = Some(reason);
        self.emit_stop();
    }

    /// Asks the driver to stop, with a snapshot when the document is released in order.
    fn emit_stop(&mut self) {
        let Some(reason) = self.stop else {
            return;
        };
        info!(document = %self.doc, "document stopping");
        let snapshot = matches!(reason, StopReason::Shutdown | StopReason::Idle)
            .then(|| Bytes::from(self.notebook.snapshot()));
        self.kernel = None;
        self.effects.push_back(Effect::Stop { reason, snapshot });
    }

    fn maybe_compact(&mut self) {
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

    /// Applies edit requests, answers once their updates are durable.
    fn edit_cells(&mut self, session: SessionId, request: airlock_protocol::EditCells) -> Answer {
        let client_ref = request.client_ref;
        let mut updates = Vec::new();
        let mut touched = Vec::new();
        let mut created = Vec::new();
        let mut failure = None;
        for edit in request.edits {
            let result = match edit {
                CellEdit::SetSource { cell, source } => {
                    touched.push(cell.clone());
                    self.notebook.set_source(&cell, &source)
                }
                CellEdit::Insert {
                    index,
                    cell,
                    kind,
                    source,
                } => {
                    let id = cell.unwrap_or_else(cells::new_cell_id);
                    match CellId::new(id.clone()) {
                        Ok(_) => {
                            touched.push(id.clone());
                            created.push(id.clone());
                            self.notebook
                                .insert_cell(index, &id, cells::kind(kind), &source)
                        }
                        Err(err) => {
                            failure = Some(err.to_string());
                            break;
                        }
                    }
                }
                CellEdit::Delete { cell } => self.notebook.delete_cell(&cell),
                CellEdit::Move { cell, to } => self.notebook.move_cell(&cell, to),
                CellEdit::Unknown => {
                    failure = Some("an edit of a kind this node does not know".to_owned());
                    break;
                }
            };
            match result {
                Ok(update) => updates.push(Bytes::from(update)),
                Err(err) => {
                    failure = Some(err.to_string());
                    break;
                }
            }
        }
        self.broadcast_updates(&updates);
        let edits = cells::sync_all(&self.notebook, &mut self.graph);
        let mut stale: Vec<String> = edits
            .iter()
            .flat_map(|e| e.stale.iter().map(|c| c.as_str().to_owned()))
            .collect();
        stale.dedup();
        let mut queued: Vec<String> = edits
            .iter()
            .flat_map(|e| e.queued.iter().map(|c| c.as_str().to_owned()))
            .collect();
        self.after_edits(edits);
        if failure.is_none() && request.run {
            let runnable: Vec<String> = touched
                .into_iter()
                .filter(|cell| {
                    CellId::new(cell.clone())
                        .ok()
                        .and_then(|id| self.graph.content(&id).map(|c| c.kind.runs()))
                        .unwrap_or(false)
                })
                .collect();
            if !runnable.is_empty() {
                match self.run_cells(session, &runnable, false, client_ref) {
                    Ok(planned) => queued = planned,
                    Err(err) => failure = Some(err.message),
                }
            }
        }
        let answer = match failure {
            None => Ok(Some(ServerMessage::Accepted(Accepted {
                client_ref,
                queued,
                stale,
                created,
                warnings: Vec::new(),
            }))),
            Some(message) => Err(bad_request(Some(client_ref), message)),
        };
        self.durably(updates, client_ref, answer)
    }

    fn set_mode(&mut self, client_ref: u64, mode: WireMode) -> Answer {
        let (mode, name) = match mode {
            WireMode::Reactive => (ExecutionMode::Reactive, "reactive"),
            WireMode::Lazy => (ExecutionMode::Lazy, "lazy"),
            WireMode::Unknown => {
                return Answer::Now(Err(bad_request(Some(client_ref), "unknown execution mode")));
            }
        };
        self.graph.set_mode(mode);
        let before = self.notebook.state_vector();
        self.notebook
            .set_meta(MODE_KEY, serde_json::Value::String(name.to_owned()));
        let update = self.notebook.diff(&before).map(Bytes::from);
        let updates: Vec<Bytes> = update.into_iter().collect();
        self.broadcast_updates(&updates);
        let answer = Ok(Some(ServerMessage::Accepted(Accepted {
            client_ref,
            ..Accepted::default()
        })));
        self.durably(updates, client_ref, answer)
    }

    /// Replaces the document's cells and outputs with a notebook file's.
    fn import(&mut self, client_ref: u64, text: &str) -> Answer {
        let imported = match ipynb::import(text.as_bytes(), ImportLimits::default()) {
            Ok(imported) => imported,
            Err(err) => {
                let reply = bad_request(Some(client_ref), format!("import refused: {err}"));
                return Answer::Now(Err(reply));
            }
        };
        let failed = |err: &dyn Display| {
            Answer::Now(Err(ErrorReply::for_request(
                ErrorCode::Internal,
                Some(client_ref),
                format!("import failed: {err}"),
            )))
        };
        let before = self.notebook.state_vector();
        for cell in self.notebook.cells() {
            let _ = self.notebook.delete_cell(&cell.id);
        }
        if let Err(err) = self.notebook.apply(&imported.notebook.snapshot()) {
            return failed(&err);
        }
        self.notebook.take_changes();
        let update = match self.notebook.diff(&before) {
            Ok(update) => Bytes::from(update),
            Err(err) => return failed(&err),
        };
        self.broadcast_updates(std::slice::from_ref(&update));
        let edits = cells::sync_all(&self.notebook, &mut self.graph);
        self.after_edits(edits);
        self.outputs = imported.outputs;
        let limits = self.output_limits;
        for stored in self.outputs.values_mut() {
            stored.outputs = trim_stored(std::mem::take(&mut stored.outputs), limits);
        }
        let records: Vec<WireCellOutputs> = self
            .outputs
            .iter()
            .map(|(cell, stored)| WireCellOutputs {
                cell: cell.clone(),
                execution_count: stored.execution_count,
                outputs: stored.outputs.clone(),
            })
            .collect();
        for record in records {
            let cell = record.cell.clone();
            if let (Ok(id), Ok(bytes)) = (CellId::new(cell), serde_json::to_vec(&record)) {
                self.effects.push_back(Effect::PutOutputs {
                    cell: id,
                    bytes: Bytes::from(bytes),
                });
            }
            self.broadcast(None, ServerMessage::CellOutputs(record));
        }
        let accepted = Accepted {
            client_ref,
            created: self.notebook.cells().into_iter().map(|c| c.id).collect(),
            warnings: imported.warnings.iter().map(|w| w.to_string()).collect(),
            ..Accepted::default()
        };
        self.durably(
            vec![update],
            client_ref,
            Ok(Some(ServerMessage::Accepted(accepted))),
        )
    }

    fn broadcast_updates(&mut self, updates: &[Bytes]) {
        for update in updates {
            self.broadcast(
                None,
                ServerMessage::Update(DocUpdate {
                    update: update.to_vec().into(),
                }),
            );
        }
    }

    /// Commits `updates`, then answers with `answer` (or the commit's failure).
    fn durably(
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

fn client_limits() -> Limits {
    Limits {
        max_len: MAX_CLIENT_UPDATE,
        max_depth: 64,
        max_elements: MAX_CLIENT_UPDATE_ELEMENTS,
    }
}

fn bad_request(client_ref: Option<u64>, message: impl Into<String>) -> ErrorReply {
    ErrorReply::for_request(ErrorCode::BadRequest, client_ref, message)
}

fn gone_reply() -> ErrorReply {
    ErrorReply::fatal(ErrorCode::Internal, "the node is shutting down")
}

fn status_label(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Ok => "ok",
        RunStatus::Error => "error",
        RunStatus::Aborted => "aborted",
        RunStatus::Unknown => "unknown",
    }
}

/// Cells of `notebook` that are in `present` (for dropping stored outputs of deleted cells).
pub fn cell_ids(notebook: &Notebook) -> HashSet<String> {
    notebook.cells().into_iter().map(|c| c.id).collect()
}
