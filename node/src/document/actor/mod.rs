//! The document actor: one actix actor per document owns everything about it that changes.
//!
//! It holds the notebook CRDT ([`Notebook`]), the reactive cell graph ([`CellGraph`]), the kernel
//! and its execution queue, the latest outputs of every cell, and the connected sessions. Sessions
//! (one task per client connection) reach it through a [`DocumentHandle`]; it answers each with
//! a broadcast stream of the document's events plus a private stream for acknowledgements.
//!
//! # Where it runs
//! The actor runs on its own single-threaded actix system, on a thread of its own, so nothing it
//! does can be preempted by another of its own messages: every message sees the notebook, the
//! graph and the queue consistent with each other. IO (the kernel's ZeroMQ sockets, the document
//! store) stays on the node's tokio runtime; the actor reaches it through futures and channels
//! that work from any thread.
//!
//! # The rules it keeps
//! - **Nothing acknowledged is lost.** A client's update is applied, forwarded to the other
//!   clients at once, and acknowledged to its sender only once the group committer has made it
//!   durable in the store. Edits made by the node (cell edits, imports) are answered only once
//!   durable too.
//! - **A fenced node stops at once.** When the store refuses a write because a newer epoch holds
//!   the document, every client gets `document_moved`, no further run starts, and the actor stops.
//! - **The graph decides what runs.** Cell runs go to the kernel one at a time, as the graph plans
//!   them; outputs are accepted only for a cell's current epoch, so a cancelled run's late output
//!   never lands. Plain `execute` requests (ad-hoc code) go to the same kernel queue.
//! - **Typing never runs code.** An update from a client only marks cells stale; running is an
//!   explicit request (or an edit request with `run`).

mod cells;
mod handle;
mod status_gate;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use airlock_protocol::{
    Accepted, CellEdit, CellOutputs as WireCellOutputs, CellStatus, ClientMessage, DocUpdate,
    ErrorCode, ErrorReply, ExecutionMode as WireMode, Exported, KernelStatus, Role, RunDone, RunId,
    RunOutput, RunQueued, RunStatus, ServerMessage, SessionId, SyncStep2, UpdateAck,
};
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::collab::ipynb::{self, CellOutputs, ImportLimits, OutputsByCell};
use crate::collab::validate::{self, Limits};
use crate::collab::{Notebook, NotebookError};
use crate::document::graph::{CellGraph, Epoch, ExecutionMode, RunOutcome};
use crate::document::outputs::{self, LiveView, OutputLimits, RunOutputs, trim_stored};
use crate::kernel::{KernelBridge, KernelEvent};
use crate::store::{
    CellId, CommitError, DocumentId, DocumentStore, Epoch as StoreEpoch, GroupCommitConfig,
    GroupCommitter, ObjectDocumentStore, Seq, StoreError,
};

pub use handle::{DocumentGone, DocumentHandle, Joined, StopReason};

/// How many events a slow client may fall behind before it is disconnected.
pub const BROADCAST_CAPACITY: usize = 4096;

/// Largest update one client message may carry. Typing makes updates of a few bytes; a pasted
/// cell a few kilobytes. Whole notebooks arrive through `import`, not as one update.
pub const MAX_CLIENT_UPDATE: usize = 2 << 20;

/// Most elements one client update may carry. `yrs` applies some shapes of update (many writes
/// to map keys without an anchor) in quadratic time, so a client may not send many at once.
pub const MAX_CLIENT_UPDATE_ELEMENTS: usize = 8192;

/// How many requests may wait in the actor's mailbox before senders wait.
const MAILBOX_CAPACITY: usize = 4096;

/// After this many appends since the last snapshot, the actor compacts the log.
const COMPACT_EVERY: u64 = 1000;

/// The notebook metadata key that keeps the document's execution mode.
const MODE_KEY: &str = "airlock_execution_mode";

/// An event for the document's sessions; `origin` is the session whose request caused it, if
/// that session must not get it back (its own edit).
#[derive(Debug)]
pub struct Event {
    pub origin: Option<SessionId>,
    pub message: ServerMessage,
}

/// Events every session of the document receives, shared rather than copied.
pub type Broadcast = Arc<Event>;

/// Why a document could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("document store: {0}")]
    Store(#[from] StoreError),
    #[error("the stored document does not load: {0}; restore it from a backup of the store")]
    Corrupt(#[source] NotebookError),
    #[error("could not start the document's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A document read from its store, ready to be served.
#[derive(Debug)]
pub struct LoadedDocument {
    pub doc: DocumentId,
    pub notebook: Notebook,
    pub graph: CellGraph,
    pub outputs: OutputsByCell,
    /// The last append loaded, and how many appends came after the latest snapshot.
    seq: Seq,
    appends_since_snapshot: u64,
    epoch: StoreEpoch,
}

/// Claims `doc` at `epoch` in the store (fencing out earlier owners) and reads it: the notebook
/// from its snapshot and log, the graph built from it (every cell stale: the kernel is fresh),
/// and every cell's latest outputs.
pub async fn load(
    store: &ObjectDocumentStore,
    doc: DocumentId,
    epoch: u64,
) -> Result<LoadedDocument, OpenError> {
    let epoch = StoreEpoch(epoch);
    let started = std::time::Instant::now();
    store.claim(&doc, epoch).await?;
    let loaded = store.load(&doc).await?;
    let parts = loaded
        .snapshot
        .iter()
        .chain(loaded.updates.iter())
        .map(|b| b.as_ref());
    let notebook = Notebook::load(parts).map_err(OpenError::Corrupt)?;
    let mut outputs = OutputsByCell::new();
    for (cell, bytes) in store.outputs(&doc).await? {
        match serde_json::from_slice::<WireCellOutputs>(&bytes) {
            Ok(stored) => {
                outputs.insert(
                    cell.as_str().to_owned(),
                    CellOutputs {
                        execution_count: stored.execution_count,
                        outputs: stored.outputs,
                    },
                );
            }
            Err(err) => warn!(%cell, %err, "stored outputs do not decode; dropped"),
        }
    }
    let mode = match notebook.meta(MODE_KEY).as_ref().and_then(|v| v.as_str()) {
        Some("lazy") => ExecutionMode::Lazy,
        _ => ExecutionMode::Reactive,
    };
    let mut graph = CellGraph::new(mode);
    cells::sync_structure(&notebook, &mut graph);
    // Every cell starts stale, and that is news to no one yet.
    while graph.poll_event().is_some() {}
    let present: std::collections::HashSet<String> =
        notebook.cells().into_iter().map(|c| c.id).collect();
    outputs.retain(|cell, _| present.contains(cell));
    info!(
        document = %doc,
        epoch = epoch.0,
        cells = notebook.len(),
        updates = loaded.updates.len(),
        ms = started.elapsed().as_millis() as u64,
        "document loaded"
    );
    Ok(LoadedDocument {
        doc,
        notebook,
        graph,
        outputs,
        seq: loaded.seq,
        appends_since_snapshot: loaded.seq.0.saturating_sub(loaded.snapshot_seq.0),
        epoch,
    })
}

/// Opens `doc` at `epoch` ([`load`]) and starts its actor around the already started kernel.
/// With `idle_timeout`, the document stops ([`StopReason::Idle`]) once it has had no client for
/// that long, after a snapshot.
pub async fn open(
    store: Arc<ObjectDocumentStore>,
    doc: DocumentId,
    epoch: u64,
    kernel: KernelBridge,
    kernel_events: mpsc::Receiver<KernelEvent>,
    idle_timeout: Option<std::time::Duration>,
) -> Result<DocumentHandle, OpenError> {
    let loaded = load(&store, doc, epoch).await?;
    let committer = GroupCommitter::spawn(
        Arc::clone(&store),
        loaded.doc.clone(),
        loaded.epoch,
        GroupCommitConfig::default(),
    );
    let io = tokio::runtime::Handle::current();
    let (stopped_tx, stopped_rx) = watch::channel(None);
    let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
    let output_limits = kernel.output_limits();
    let mut outputs = loaded.outputs;
    // Outputs stored before these limits (or under larger ones) must not make the document
    // unjoinable: each cell is held to them as it loads.
    for stored in outputs.values_mut() {
        stored.outputs = trim_stored(std::mem::take(&mut stored.outputs), output_limits);
    }
    let actor = DocumentActor {
        doc: loaded.doc,
        epoch: loaded.epoch,
        notebook: loaded.notebook,
        graph: loaded.graph,
        outputs,
        output_limits,
        live: LiveView::new(output_limits, BROADCAST_CAPACITY),
        status_gate: Default::default(),
        origins: HashMap::new(),
        origin_told: None,
        run_watcher: None,
        store,
        committer: Some(Arc::new(committer)),
        io,
        kernel: Some(Arc::new(kernel)),
        kernel_events: Some(kernel_events),
        kernel_status: KernelStatus::Idle,
        restarting: false,
        sessions: HashMap::new(),
        next_session: 1,
        next_run: 1,
        events,
        runs: HashMap::new(),
        current: None,
        requested: HashMap::new(),
        last_seq: loaded.seq,
        appends_since_snapshot: loaded.appends_since_snapshot,
        compacting: false,
        stop: None,
        stopped_tx,
        idle_timeout,
        idle_since: Some(std::time::Instant::now()),
    };
    handle::spawn(actor, stopped_rx).map_err(OpenError::Thread)
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

/// The run the kernel is executing, as the egress gateway's audit records name it: which cell
/// (none for code sent with `execute`), which run, and the user who started it (empty for runs
/// an edit's reactive plan queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOrigin {
    pub cell: Option<String>,
    pub run: u64,
    pub user: String,
}

/// Told each time the executing run changes (`None`: nothing runs).
pub type RunWatcher = Arc<dyn Fn(Option<RunOrigin>) + Send + Sync>;

/// One connected client.
#[derive(Debug)]
struct Session {
    user: String,
    role: Role,
    direct: mpsc::UnboundedSender<ServerMessage>,
}

/// See the module documentation.
pub struct DocumentActor {
    doc: DocumentId,
    epoch: StoreEpoch,
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
    /// The executing run last told to `run_watcher`.
    origin_told: Option<RunOrigin>,
    run_watcher: Option<RunWatcher>,
    store: Arc<ObjectDocumentStore>,
    committer: Option<Arc<GroupCommitter>>,
    /// The node's runtime, where kernel and store IO lives.
    io: tokio::runtime::Handle,
    kernel: Option<Arc<KernelBridge>>,
    kernel_events: Option<mpsc::Receiver<KernelEvent>>,
    kernel_status: KernelStatus,
    restarting: bool,
    sessions: HashMap<SessionId, Session>,
    next_session: u64,
    next_run: u64,
    events: broadcast::Sender<Broadcast>,
    runs: HashMap<RunId, RunKind>,
    current: Option<CurrentRun>,
    /// Which request (session, client_ref) queued each queued cell.
    requested: HashMap<CellId, (SessionId, u64)>,
    /// The last append the store acknowledged.
    last_seq: Seq,
    appends_since_snapshot: u64,
    compacting: bool,
    /// Why the actor is stopping, once it is.
    stop: Option<StopReason>,
    stopped_tx: watch::Sender<Option<StopReason>>,
    /// Stop after this long without a client.
    idle_timeout: Option<std::time::Duration>,
    /// Since when no client has been connected.
    idle_since: Option<std::time::Instant>,
}

impl std::fmt::Debug for DocumentActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentActor")
            .field("doc", &self.doc)
            .field("epoch", &self.epoch)
            .field("cells", &self.graph.len())
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl Actor for DocumentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Sessions wait (back-pressure) only when this many requests are already queued.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        if let Some(events) = self.kernel_events.take() {
            let stream = futures::stream::unfold(events, |mut events| async move {
                events.recv().await.map(|event| (event, events))
            });
            ctx.add_stream(stream);
        }
        if let Some(timeout) = self.idle_timeout {
            let every = (timeout / 4).clamp(
                std::time::Duration::from_millis(50),
                std::time::Duration::from_secs(5),
            );
            ctx.run_interval(every, move |actor, ctx| {
                let idle = actor
                    .idle_since
                    .is_some_and(|since| since.elapsed() >= timeout);
                if idle && actor.current.is_none() {
                    info!(document = %actor.doc, "no client for {timeout:?}; releasing");
                    actor.stop_serving(StopReason::Idle, ctx);
                }
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let reason = self.stop.unwrap_or(StopReason::Shutdown);
        let _ = self.stopped_tx.send(Some(reason));
    }
}

// ---- Messages from sessions -------------------------------------------------------------------

/// A client joins the document.
#[derive(Debug, Message)]
#[rtype(result = "Result<Joined, ErrorReply>")]
pub(crate) struct Join {
    pub user: String,
    pub role: Role,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Leave {
    pub session: SessionId,
}

/// A request from a session; the answer (if any) is for that session only.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<ServerMessage>, ErrorReply>")]
pub(crate) struct Request {
    pub session: SessionId,
    pub message: ClientMessage,
}

/// Stops the document: snapshot, then the kernel.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

/// A line from the node itself for the code that is running (an egress refusal), shown on its
/// stderr.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Notice {
    pub text: String,
}

/// Sets who is told which run executes ([`RunWatcher`]).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WatchRuns(pub RunWatcher);

impl std::fmt::Debug for WatchRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchRuns")
    }
}

impl Handler<WatchRuns> for DocumentActor {
    type Result = ();

    fn handle(&mut self, watch: WatchRuns, _ctx: &mut Context<Self>) {
        let watcher = watch.0;
        watcher(self.origin_told.clone());
        self.run_watcher = Some(watcher);
    }
}

/// A commit finished (sent to self).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Committed {
    /// The session and its seq to acknowledge, for a client's update.
    ack: Option<(SessionId, u64)>,
    result: Result<Seq, CommitError>,
}

impl Handler<Join> for DocumentActor {
    type Result = Result<Joined, ErrorReply>;

    fn handle(&mut self, join: Join, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(reason) = &self.stop {
            return Err(reason.reply());
        }
        let session = SessionId(self.next_session);
        self.next_session += 1;
        let (direct, direct_rx) = mpsc::unbounded_channel();
        // What a newcomer missed: every cell's latest outputs and state.
        for (cell, stored) in &self.outputs {
            let _ = direct.send(ServerMessage::CellOutputs(WireCellOutputs {
                cell: cell.clone(),
                execution_count: stored.execution_count,
                outputs: stored.outputs.clone(),
            }));
        }
        for cell in self.graph.cell_ids() {
            if let Some(state) = self.graph.state(cell) {
                let _ = direct.send(ServerMessage::Cell(CellStatus {
                    cell: cell.as_str().to_owned(),
                    state: cells::wire_state(&state),
                }));
            }
        }
        info!(session = session.0, user = %join.user, role = %join.role, "client joined");
        self.idle_since = None;
        self.sessions.insert(
            session,
            Session {
                user: join.user,
                role: join.role,
                direct,
            },
        );
        metrics::gauge!("airlock_node_sessions").set(self.sessions.len() as f64);
        Ok(Joined {
            session,
            kernel: self.kernel_status.clone(),
            events: self.events.subscribe(),
            direct: direct_rx,
        })
    }
}

impl Handler<Notice> for DocumentActor {
    type Result = ();

    /// The notice joins the outputs of the cell that is running, else of the oldest ad-hoc run
    /// (the kernel runs requests in order), as if the kernel had written it to stderr.
    fn handle(&mut self, notice: Notice, ctx: &mut Context<Self>) {
        let running = self.executing_run();
        let Some(run) = running else {
            info!(text = %notice.text.trim_end(), "node notice with no run to show it in");
            return;
        };
        self.on_kernel_event(
            ctx,
            KernelEvent::Output {
                run,
                output: airlock_protocol::Output::Stream {
                    name: airlock_protocol::StreamName::Stderr,
                    text: notice.text,
                },
            },
        );
    }
}

impl Handler<Leave> for DocumentActor {
    type Result = ();

    fn handle(&mut self, leave: Leave, _ctx: &mut Context<Self>) {
        if self.sessions.remove(&leave.session).is_some() {
            info!(session = leave.session.0, "client left");
        }
        if self.sessions.is_empty() {
            self.idle_since = Some(std::time::Instant::now());
        }
        metrics::gauge!("airlock_node_sessions").set(self.sessions.len() as f64);
    }
}

impl Handler<Request> for DocumentActor {
    type Result = ResponseActFuture<Self, Result<Option<ServerMessage>, ErrorReply>>;

    fn handle(&mut self, request: Request, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(reason) = &self.stop {
            let reply = reason.reply();
            return Box::pin(fut::ready(Err(reply)));
        }
        let session = request.session;
        match request.message {
            ClientMessage::Execute(execute) => {
                let reply = self
                    .execute_adhoc(
                        session,
                        execute.client_ref,
                        execute.code,
                        execute.store_history,
                    )
                    .map(|_| None);
                Box::pin(fut::ready(reply))
            }
            ClientMessage::Interrupt => Box::pin(fut::ready(self.interrupt().map(|()| None))),
            ClientMessage::Restart => Box::pin(fut::ready(self.restart(ctx).map(|()| None))),
            ClientMessage::SyncStep1(step) => {
                let reply = self
                    .notebook
                    .diff(step.state_vector.as_slice())
                    .map(|update| {
                        Some(ServerMessage::SyncStep2(SyncStep2 {
                            update: update.into(),
                        }))
                    })
                    .map_err(|err| bad_request(None, format!("sync step 1 refused: {err}")));
                Box::pin(fut::ready(reply))
            }
            ClientMessage::Update(update) => {
                self.client_update(session, update.seq, update.update.0, ctx);
                Box::pin(fut::ready(Ok(None)))
            }
            ClientMessage::Awareness(awareness) => {
                let reply =
                    validate::awareness_update_v1(awareness.update.as_slice(), &client_limits())
                        .map(|_| {
                            self.broadcast(Some(session), ServerMessage::Awareness(awareness));
                            None
                        })
                        .map_err(|err| {
                            bad_request(None, format!("awareness update refused: {err}"))
                        });
                Box::pin(fut::ready(reply))
            }
            ClientMessage::RunCells(run) => {
                let reply = self
                    .run_cells(session, &run.cells, run.replay, run.client_ref)
                    .map(|queued| {
                        Some(ServerMessage::Accepted(Accepted {
                            client_ref: run.client_ref,
                            queued,
                            ..Accepted::default()
                        }))
                    });
                Box::pin(fut::ready(reply))
            }
            ClientMessage::EditCells(edit) => self.edit_cells(session, edit),
            ClientMessage::SetMode { client_ref, mode } => self.set_mode(client_ref, mode),
            ClientMessage::Import(import) => self.import(import.client_ref, &import.ipynb),
            ClientMessage::Export { client_ref } => {
                let reply = ipynb::export(&self.notebook, &self.outputs)
                    .and_then(|value| ipynb::to_string_pretty(&value))
                    .map(|ipynb| Some(ServerMessage::Exported(Exported { client_ref, ipynb })))
                    .map_err(|err| {
                        ErrorReply::for_request(
                            ErrorCode::Internal,
                            Some(client_ref),
                            format!("export failed: {err}"),
                        )
                    });
                Box::pin(fut::ready(reply))
            }
            ClientMessage::Graph { client_ref } => Box::pin(fut::ready(Ok(Some(
                ServerMessage::Graph(cells::graph_view(&self.graph, client_ref)),
            )))),
            ClientMessage::Hello(_) | ClientMessage::Ping { .. } | ClientMessage::Unknown => {
                Box::pin(fut::ready(Ok(None)))
            }
        }
    }
}

impl Handler<Shutdown> for DocumentActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Context<Self>) -> Self::Result {
        if self.stop.is_none() {
            self.stop = Some(StopReason::Shutdown);
        }
        info!(document = %self.doc, "document stopping");
        let snapshot = matches!(self.stop, Some(StopReason::Shutdown | StopReason::Idle))
            .then(|| Bytes::from(self.notebook.snapshot()));
        let store = Arc::clone(&self.store);
        let (doc, epoch) = (self.doc.clone(), self.epoch);
        let committer = self.committer.take();
        let kernel = self.kernel.take();
        let io = self.io.clone();
        let work = async move {
            // Everything acknowledged is in the log already; the snapshot only makes the next
            // open faster. The committer first, so the snapshot covers its last append.
            let mut upto = None;
            if let Some(committer) = committer.and_then(|c| Arc::try_unwrap(c).ok()) {
                committer.shutdown().await;
            }
            if let Some(snapshot) = snapshot {
                if let Ok(loaded) = store.load(&doc).await {
                    upto = Some(loaded.seq);
                }
                if let Some(upto) = upto.filter(|seq| seq.0 > 0)
                    && let Err(err) = store.compact(&doc, epoch, snapshot, upto).await
                {
                    warn!(%err, "snapshot at shutdown failed; the log still has everything");
                }
            }
            match kernel.map(Arc::try_unwrap) {
                Some(Ok(kernel)) => kernel.shutdown().await,
                Some(Err(_)) => warn!("kernel still restarting at shutdown"),
                None => {}
            }
        };
        let done = io.spawn(work);
        Box::pin(fut::wrap_future::<_, Self>(done).map(|_, actor, ctx| {
            actor.events = broadcast::channel(1).0;
            ctx.stop();
        }))
    }
}

impl Handler<Committed> for DocumentActor {
    type Result = ();

    fn handle(&mut self, committed: Committed, ctx: &mut Context<Self>) {
        match committed.result {
            Ok(seq) => {
                self.last_seq = self.last_seq.max(seq);
                self.appends_since_snapshot += 1;
                if let Some((session, client_seq)) = committed.ack
                    && let Some(entry) = self.sessions.get(&session)
                {
                    let _ = entry.direct.send(ServerMessage::Ack(UpdateAck {
                        seq: client_seq,
                        refused: None,
                    }));
                }
                self.maybe_compact(ctx);
            }
            Err(err) => self.commit_failed(&err, committed.ack, ctx),
        }
    }
}

impl StreamHandler<KernelEvent> for DocumentActor {
    fn handle(&mut self, event: KernelEvent, ctx: &mut Context<Self>) {
        self.on_kernel_event(ctx, event);
    }

    /// The kernel's event stream ends only when the kernel bridge is gone (shutdown).
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

/// The restart of the kernel finished (sent to self).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct RestartFinished(Result<(), String>);

impl Handler<RestartFinished> for DocumentActor {
    type Result = ();

    fn handle(&mut self, finished: RestartFinished, _ctx: &mut Context<Self>) {
        self.restarting = false;
        if let Err(reason) = finished.0 {
            warn!(%reason, "kernel restart failed");
            let status = KernelStatus::Dead {
                cause: airlock_protocol::DeathCause::StartFailed { reason },
            };
            self.kernel_status = status.clone();
            self.broadcast(None, ServerMessage::Kernel(status));
        }
        self.pump();
    }
}

// ---- The actor's work -------------------------------------------------------------------------

impl DocumentActor {
    fn broadcast(&mut self, origin: Option<SessionId>, message: ServerMessage) {
        // Every event takes a place in the ring; the live view counts the output bytes there.
        let output = match &message {
            ServerMessage::Output(RunOutput { output, .. }) => Some(output),
            _ => None,
        };
        self.live.sent(output);
        // No receivers is fine: nobody is connected.
        let _ = self.events.send(Arc::new(Event { origin, message }));
    }

    /// Tells the clients the kernel's status, at most once per [`status_gate::MIN_GAP`]; a
    /// status held back goes out when the gap has passed.
    fn broadcast_status(&mut self, ctx: &mut Context<Self>, status: KernelStatus) {
        match self.status_gate.offer(std::time::Instant::now(), status) {
            status_gate::Gate::Send(status) => self.broadcast(None, ServerMessage::Kernel(status)),
            status_gate::Gate::Held(Some(at)) => {
                let wait = at.saturating_duration_since(std::time::Instant::now());
                ctx.run_later(wait, |actor, _ctx| {
                    if let Some(status) = actor.status_gate.flush(std::time::Instant::now()) {
                        actor.broadcast(None, ServerMessage::Kernel(status));
                    }
                });
            }
            status_gate::Gate::Held(None) => {}
        }
    }

    /// Shows an output of `run` live, as far as the live view allows.
    fn show_output(&mut self, run: RunId, output: airlock_protocol::Output) {
        for output in self.live.admit(std::time::Instant::now(), output) {
            self.broadcast(None, ServerMessage::Output(RunOutput { run, output }));
        }
    }

    /// Sends every pending change of a cell's state to the clients.
    fn flush_graph_events(&mut self) {
        while let Some(event) = self.graph.poll_event() {
            let crate::document::graph::GraphEvent::StateChanged { cell, state } = event;
            self.broadcast(
                None,
                ServerMessage::Cell(CellStatus {
                    cell: cell.as_str().to_owned(),
                    state: cells::wire_state(&state),
                }),
            );
        }
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
        let user = self
            .sessions
            .get(&session)
            .map(|s| s.user.clone())
            .unwrap_or_default();
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
        let kernel = self.kernel.as_ref().map(Arc::clone);
        let sent = match kernel {
            Some(kernel) => kernel.execute(run, &code, store_history),
            None => {
                return Err(self
                    .unavailable(Some(client_ref))
                    .unwrap_or_else(gone_reply));
            }
        };
        let result = sent.map(|()| run).map_err(|err| {
            self.runs.remove(&run);
            self.origins.remove(&run);
            self.broadcast(
                None,
                ServerMessage::Done(RunDone {
                    run,
                    status: RunStatus::Aborted,
                    execution_count: None,
                }),
            );
            ErrorReply::for_request(
                ErrorCode::KernelUnavailable,
                Some(client_ref),
                err.to_string(),
            )
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

    fn restart(&mut self, ctx: &mut Context<Self>) -> Result<(), ErrorReply> {
        if self.restarting {
            return Ok(());
        }
        let kernel = Arc::clone(self.kernel.as_ref().ok_or_else(gone_reply)?);
        self.restarting = true;
        // The fresh kernel holds nothing: every cell is stale again.
        self.graph.kernel_lost();
        self.current = None;
        self.flush_graph_events();
        let restart = self.io.spawn(async move { kernel.restart().await });
        ctx.spawn(
            fut::wrap_future::<_, Self>(restart).map(|result, _actor, ctx| {
                let result = match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(join) => Err(join.to_string()),
                };
                ctx.notify(RestartFinished(result));
            }),
        );
        Ok(())
    }

    fn on_kernel_event(&mut self, ctx: &mut Context<Self>, event: KernelEvent) {
        self.handle_kernel_event(ctx, event);
        self.tell_origin();
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
            if let Some(watcher) = &self.run_watcher {
                watcher(origin);
            }
        }
    }

    fn handle_kernel_event(&mut self, ctx: &mut Context<Self>, event: KernelEvent) {
        match event {
            KernelEvent::Status(status) => {
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
                self.broadcast_status(ctx, status);
                self.pump();
            }
            KernelEvent::Output { run, output } => match self.runs.get(&run) {
                Some(RunKind::Adhoc) => {
                    let output = outputs::cap_output(&output, self.output_limits.per_output)
                        .unwrap_or(output);
                    self.show_output(run, output);
                }
                Some(RunKind::Cell { cell, epoch }) => {
                    if self.graph.accept_output(cell, *epoch) {
                        let output = match self.current.as_mut().filter(|c| c.run == run) {
                            Some(current) => current.outputs.accept(output),
                            None => outputs::cap_output(&output, self.output_limits.per_output)
                                .unwrap_or(output),
                        };
                        self.show_output(run, output);
                    }
                }
                Some(RunKind::Internal) | None => {}
            },
            KernelEvent::Done {
                run,
                status,
                execution_count,
            } => {
                metrics::counter!("airlock_node_runs_total", "status" => status_label(status))
                    .increment(1);
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
                    Some(RunKind::Adhoc) => self.broadcast(
                        None,
                        ServerMessage::Done(RunDone {
                            run,
                            status,
                            execution_count,
                        }),
                    ),
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
        self.broadcast(
            None,
            ServerMessage::Done(RunDone {
                run,
                status,
                execution_count,
            }),
        );
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
            Ok(bytes) => self.put_outputs(cell, Bytes::from(bytes)),
            Err(err) => warn!(%err, "outputs do not encode; not stored"),
        }
    }

    /// `outputs` of `cell`, cut to what the document's limit leaves room for beside the other
    /// cells' outputs.
    fn within_document(
        &self,
        cell: &str,
        outputs: Vec<airlock_protocol::Output>,
    ) -> Vec<airlock_protocol::Output> {
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

    /// Stores a cell's latest outputs in the background.
    fn put_outputs(&self, cell: CellId, bytes: Bytes) {
        let store = Arc::clone(&self.store);
        let (doc, epoch) = (self.doc.clone(), self.epoch);
        let addr_events = self.events.clone();
        self.io.spawn(async move {
            if let Err(err) = store.put_outputs(&doc, epoch, &cell, bytes).await {
                warn!(%cell, %err, "storing outputs failed");
                if matches!(err, StoreError::Fenced { .. }) {
                    // The commit path stops the document; outputs alone cannot, but every client
                    // should know the next owner will not have these outputs.
                    let _ = addr_events.send(Arc::new(Event {
                        origin: None,
                        message: ServerMessage::Error(StopReason::Moved.reply()),
                    }));
                }
            }
        });
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
        let Some(kernel) = self.kernel.as_ref().map(Arc::clone) else {
            return;
        };
        let Some(execution) = self.graph.start_run() else {
            self.flush_graph_events();
            return;
        };
        if !execution.delete_first.is_empty() {
            self.delete_globals(&kernel, &execution.delete_first);
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
        let user = self
            .sessions
            .get(&session)
            .map(|s| s.user.clone())
            .unwrap_or_default();
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
        match kernel.execute(run, &execution.code, true) {
            Ok(()) => {
                self.current = Some(CurrentRun {
                    run,
                    outputs: RunOutputs::new(self.output_limits),
                });
            }
            Err(err) => {
                warn!(%err, "kernel refused a cell run");
                self.runs.remove(&run);
                self.graph.kernel_lost();
                self.broadcast(
                    None,
                    ServerMessage::Done(RunDone {
                        run,
                        status: RunStatus::Aborted,
                        execution_count: None,
                    }),
                );
                self.flush_graph_events();
            }
        }
    }

    /// Removes globals no cell defines any more from the kernel.
    fn delete_globals(&mut self, kernel: &KernelBridge, names: &[String]) {
        if names.is_empty() || self.unavailable(None).is_some() {
            return;
        }
        let code = cells::delete_globals_code(names);
        let run = self.new_run(RunKind::Internal);
        if kernel.execute(run, &code, false).is_err() {
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
    fn client_update(
        &mut self,
        session: SessionId,
        seq: u64,
        update: Vec<u8>,
        ctx: &mut Context<Self>,
    ) {
        // A refused update is answered with a refusing ack: sending it again cannot help.
        let refuse = |actor: &Self, reason: String| {
            metrics::counter!("airlock_node_updates_refused_total").increment(1);
            if let Some(entry) = actor.sessions.get(&session) {
                let _ = entry.direct.send(ServerMessage::Ack(UpdateAck {
                    seq,
                    refused: Some(reason),
                }));
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
            Err(NotebookError::Poisoned) => {
                return self.stop_serving(StopReason::Internal, ctx);
            }
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
        self.commit(update, Some((session, seq)), ctx);
    }

    /// Deletes stale globals and starts runs that edits planned, and tells clients about states.
    fn after_edits(&mut self, edits: Vec<crate::document::graph::Edit>) {
        let undefined: Vec<String> = edits.iter().flat_map(|e| e.undefined.clone()).collect();
        if let Some(kernel) = self.kernel.as_ref().map(Arc::clone) {
            self.delete_globals(&kernel, &undefined);
        }
        self.pump();
        self.flush_graph_events();
    }

    fn commit(&self, update: Bytes, ack: Option<(SessionId, u64)>, ctx: &mut Context<Self>) {
        let Some(committer) = self.committer.as_ref().map(Arc::clone) else {
            return;
        };
        let addr = ctx.address();
        self.io.spawn(async move {
            let result = committer.commit(update).await;
            addr.do_send(Committed { ack, result });
        });
    }

    fn commit_failed(
        &mut self,
        err: &CommitError,
        ack: Option<(SessionId, u64)>,
        ctx: &mut Context<Self>,
    ) {
        match err {
            CommitError::Fenced { .. } => self.stop_serving(StopReason::Moved, ctx),
            CommitError::Store(_) | CommitError::Stopped => {
                warn!(%err, "an update could not be stored");
                if let Some((session, seq)) = ack
                    && let Some(entry) = self.sessions.get(&session)
                {
                    // Not acknowledged: the client keeps it and sends it again.
                    let _ = entry
                        .direct
                        .send(ServerMessage::Error(ErrorReply::for_request(
                            ErrorCode::Internal,
                            None,
                            format!("update {seq} was not stored ({err}); it stays unacknowledged"),
                        )));
                }
            }
        }
    }

    /// Stops serving the document at once: no run starts, every client is told why.
    fn stop_serving(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        if self.stop.is_some() {
            return;
        }
        warn!(document = %self.doc, ?reason, "document stops serving");
        self.broadcast(None, ServerMessage::Error(reason.reply()));
        self.stop = Some(reason);
        ctx.notify(Shutdown);
    }

    fn maybe_compact(&mut self, ctx: &mut Context<Self>) {
        if self.compacting || self.appends_since_snapshot < COMPACT_EVERY {
            return;
        }
        self.compacting = true;
        // The snapshot covers every update applied so far, so also everything up to the last
        // acknowledged append.
        let snapshot = Bytes::from(self.notebook.snapshot());
        let upto = self.last_seq;
        let store = Arc::clone(&self.store);
        let (doc, epoch) = (self.doc.clone(), self.epoch);
        let done = self
            .io
            .spawn(async move { store.compact(&doc, epoch, snapshot, upto).await });
        ctx.spawn(fut::wrap_future::<_, Self>(done).map(|result, actor, ctx| {
            actor.compacting = false;
            match result {
                Ok(Ok(())) => actor.appends_since_snapshot = 0,
                Ok(Err(StoreError::Fenced { .. })) => actor.stop_serving(StopReason::Moved, ctx),
                Ok(Err(err)) => warn!(%err, "compaction failed; the log keeps everything"),
                Err(err) => warn!(%err, "compaction task failed"),
            }
        }));
    }

    /// Applies edit requests, answers once their updates are durable.
    fn edit_cells(
        &mut self,
        session: SessionId,
        request: airlock_protocol::EditCells,
    ) -> ResponseActFuture<Self, Result<Option<ServerMessage>, ErrorReply>> {
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
        for update in &updates {
            self.broadcast(
                None,
                ServerMessage::Update(DocUpdate {
                    update: update.to_vec().into(),
                }),
            );
        }
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
        let accepted = Accepted {
            client_ref,
            queued,
            stale,
            created,
            warnings: Vec::new(),
        };
        self.durably(updates, client_ref, move || match failure {
            None => Ok(Some(ServerMessage::Accepted(accepted))),
            Some(message) => Err(bad_request(Some(client_ref), message)),
        })
    }

    fn set_mode(
        &mut self,
        client_ref: u64,
        mode: WireMode,
    ) -> ResponseActFuture<Self, Result<Option<ServerMessage>, ErrorReply>> {
        let (mode, name) = match mode {
            WireMode::Reactive => (ExecutionMode::Reactive, "reactive"),
            WireMode::Lazy => (ExecutionMode::Lazy, "lazy"),
            WireMode::Unknown => {
                let reply = bad_request(Some(client_ref), "unknown execution mode");
                return Box::pin(fut::ready(Err(reply)));
            }
        };
        self.graph.set_mode(mode);
        let before = self.notebook.state_vector();
        self.notebook
            .set_meta(MODE_KEY, serde_json::Value::String(name.to_owned()));
        let update = self.notebook.diff(&before).map(Bytes::from);
        let updates: Vec<Bytes> = update.into_iter().collect();
        for update in &updates {
            self.broadcast(
                None,
                ServerMessage::Update(DocUpdate {
                    update: update.to_vec().into(),
                }),
            );
        }
        self.durably(updates, client_ref, move || {
            Ok(Some(ServerMessage::Accepted(Accepted {
                client_ref,
                ..Accepted::default()
            })))
        })
    }

    /// Replaces the document's cells and outputs with a notebook file's.
    fn import(
        &mut self,
        client_ref: u64,
        text: &str,
    ) -> ResponseActFuture<Self, Result<Option<ServerMessage>, ErrorReply>> {
        let imported = match ipynb::import(text.as_bytes(), ImportLimits::default()) {
            Ok(imported) => imported,
            Err(err) => {
                let reply = bad_request(Some(client_ref), format!("import refused: {err}"));
                return Box::pin(fut::ready(Err(reply)));
            }
        };
        let before = self.notebook.state_vector();
        for cell in self.notebook.cells() {
            let _ = self.notebook.delete_cell(&cell.id);
        }
        if let Err(err) = self.notebook.apply(&imported.notebook.snapshot()) {
            let reply = ErrorReply::for_request(
                ErrorCode::Internal,
                Some(client_ref),
                format!("import failed: {err}"),
            );
            return Box::pin(fut::ready(Err(reply)));
        }
        self.notebook.take_changes();
        let update = match self.notebook.diff(&before) {
            Ok(update) => Bytes::from(update),
            Err(err) => {
                let reply = ErrorReply::for_request(
                    ErrorCode::Internal,
                    Some(client_ref),
                    format!("import failed: {err}"),
                );
                return Box::pin(fut::ready(Err(reply)));
            }
        };
        self.broadcast(
            None,
            ServerMessage::Update(DocUpdate {
                update: update.to_vec().into(),
            }),
        );
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
                self.put_outputs(id, Bytes::from(bytes));
            }
            self.broadcast(None, ServerMessage::CellOutputs(record));
        }
        let accepted = Accepted {
            client_ref,
            created: self.notebook.cells().into_iter().map(|c| c.id).collect(),
            warnings: imported.warnings.iter().map(|w| w.to_string()).collect(),
            ..Accepted::default()
        };
        self.durably(vec![update], client_ref, move || {
            Ok(Some(ServerMessage::Accepted(accepted)))
        })
    }

    /// Commits `updates`, then answers with `reply` (or the commit's failure).
    fn durably(
        &self,
        updates: Vec<Bytes>,
        client_ref: u64,
        reply: impl FnOnce() -> Result<Option<ServerMessage>, ErrorReply> + 'static,
    ) -> ResponseActFuture<Self, Result<Option<ServerMessage>, ErrorReply>> {
        let Some(committer) = self.committer.as_ref().map(Arc::clone) else {
            return Box::pin(fut::ready(Err(gone_reply())));
        };
        let commits = self.io.spawn(async move {
            let pending = updates.into_iter().map(|update| {
                let committer = Arc::clone(&committer);
                async move { committer.commit(update).await }
            });
            futures::future::try_join_all(pending).await
        });
        Box::pin(
            fut::wrap_future::<_, Self>(commits).map(move |result, actor, ctx| match result {
                Ok(Ok(seqs)) => {
                    for seq in seqs {
                        actor.last_seq = actor.last_seq.max(seq);
                        actor.appends_since_snapshot += 1;
                    }
                    reply()
                }
                Ok(Err(err)) => {
                    actor.commit_failed(&err, None, ctx);
                    Err(ErrorReply::for_request(
                        if matches!(err, CommitError::Fenced { .. }) {
                            ErrorCode::DocumentMoved
                        } else {
                            ErrorCode::Internal
                        },
                        Some(client_ref),
                        format!("the change was not stored: {err}"),
                    ))
                }
                Err(join) => Err(ErrorReply::for_request(
                    ErrorCode::Internal,
                    Some(client_ref),
                    format!("the change was not stored: {join}"),
                )),
            }),
        )
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
