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
//! It does not check which requests a session's role allows (the session does, before asking;
//! the core itself refuses only a viewer's update), decode wire messages, or store anything.
//! Two things are not passed in yet: counters go to the `metrics` facade, and a cell inserted
//! without an id gets a random one (`cells::new_cell_id`).
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
//! # Layout
//! - this file: the state, the inputs (`handle_*`) and the getters;
//! - `effect`: what the core asks of its driver ([`Effect`]);
//! - `runs`: the kernel's side: runs, outputs, the run watcher, when the kernel can take work;
//! - `edits`: client updates and node-made edits;
//! - `durability`: commits and what they gate, compaction, stopping;
//! - [`Kernel`] (`kernel`), and `fake_kernel` for tests; `cells` keeps the graph in step with
//!   the notebook; `status_gate` paces the kernel's status broadcasts.
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
//! - **Outputs are bounded** per output, per cell and per document ([`OutputLimits`]; a list cut
//!   to a limit ends with a note saying so, which the limit does not count), and live output by
//!   the [`LiveView`].
//! - **Viewers cannot edit**, and no request is served once the document is stopping.

mod cells;
mod durability;
mod edits;
mod effect;
#[cfg(any(test, feature = "test-util"))]
pub mod fake_kernel;
mod kernel;
mod runs;
mod status_gate;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_protocol::{
    Accepted, CellOutputs as WireCellOutputs, CellStatus, ClientMessage, ErrorCode, ErrorReply,
    Exported, KernelStatus, Output, Role, RunId, RunOutput, RunStatus, ServerMessage, SessionId,
    StreamName, SyncStep2, UpdateAck,
};
use tracing::{info, warn};

use crate::collab::Notebook;
use crate::collab::ipynb::{self, OutputsByCell};
use crate::collab::validate::{self, Limits};
use crate::document::graph::{CellGraph, GraphEvent};
use crate::document::outputs::{LiveView, OutputLimits, trim_stored};
use crate::kernel::KernelEvent;
use crate::store::{CellId, CommitError, DocumentId, Seq, StoreError};

pub use cells::sync_structure;
use durability::Gated;
pub use effect::{Answer, Broadcast, CommitId, CompactError, Effect, Event, Timer};
pub use kernel::Kernel;
use runs::{CurrentRun, RunKind};
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

/// One connected client.
#[derive(Debug)]
struct Session {
    user: String,
    role: Role,
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

    // ---- Shared by the parts (runs.rs, edits.rs, durability.rs hold the rest) --------------

    /// Sends `message` to every session but `origin`, counted in the live view's ring.
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

/// The ids of `notebook`'s cells (to drop the stored outputs of cells that no longer exist).
pub fn cell_ids(notebook: &Notebook) -> HashSet<String> {
    notebook.cells().into_iter().map(|c| c.id).collect()
}
