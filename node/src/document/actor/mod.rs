//! The document actor: the thin actix driver that pumps one document's [`DocumentCore`].
//!
//! Every decision about the document (sessions, runs, acks after durability, fencing, the idle
//! deadline, output limits) is the core's; its rules are in [`crate::document::core`]. This
//! file only does IO: it hands the core each message with the current time, then carries out
//! the [`Effect`]s the core asks for — the broadcast channel and each session's direct channel,
//! the kernel's restart and shutdown, the group committer, the store's puts and compactions,
//! timers — and hands their results back.
//!
//! # Where it runs
//! The actor runs on its own single-threaded actix system, on a thread of its own, so nothing it
//! does can be preempted by another of its own messages: every message sees the core in one
//! consistent state. IO (the kernel's ZeroMQ sockets, the document store) stays on the node's
//! tokio runtime; the actor reaches it through futures and channels that work from any thread.

mod handle;
mod open;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use airlock_protocol::{ErrorReply, ServerMessage, SessionId};
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::warn;

use crate::document::core::{Answer, CommitId, CompactError, DocumentCore, Effect};
use crate::kernel::{KernelBridge, KernelEvent};
use crate::store::{
    CommitError, DocumentStore, Epoch as StoreEpoch, GroupCommitter, ObjectDocumentStore, Seq,
    StoreError,
};

pub use crate::document::core::{
    Broadcast, Event, MAX_CLIENT_UPDATE, MAX_CLIENT_UPDATE_ELEMENTS, RunOrigin,
};
pub use handle::{DocumentGone, DocumentHandle, Joined, StopReason};
use handle::{Join, Leave, Notice, Request, Shutdown, WatchRuns};
pub use open::{LoadedDocument, OpenError, load, open};

/// How many events a slow client may fall behind before it is disconnected.
pub const BROADCAST_CAPACITY: usize = 4096;

/// How many requests may wait in the actor's mailbox before senders wait.
const MAILBOX_CAPACITY: usize = 4096;

/// Told each time the executing run changes (`None`: nothing runs).
pub type RunWatcher = Arc<dyn Fn(Option<RunOrigin>) + Send + Sync>;

/// A request's answer, once the core gives it.
type ReplySender = oneshot::Sender<Result<Option<ServerMessage>, ErrorReply>>;

/// See the module documentation.
pub struct DocumentActor {
    core: DocumentCore<Arc<KernelBridge>>,
    epoch: StoreEpoch,
    store: Arc<ObjectDocumentStore>,
    /// Taken when the document stops.
    committer: Option<Arc<GroupCommitter>>,
    /// The node's runtime, where kernel and store IO lives.
    io: tokio::runtime::Handle,
    /// Taken when the document stops (the core holds a clone until then).
    kernel: Option<Arc<KernelBridge>>,
    kernel_events: Option<mpsc::Receiver<KernelEvent>>,
    events: broadcast::Sender<Broadcast>,
    direct: HashMap<SessionId, mpsc::UnboundedSender<ServerMessage>>,
    /// Requests answered once their changes are durable ([`Answer::Durable`]).
    replies: HashMap<CommitId, ReplySender>,
    run_watcher: Option<RunWatcher>,
    stopped_tx: watch::Sender<Option<StopReason>>,
}

impl DocumentActor {
    /// The driver of `core`; returns it with the receiver that learns why it stopped.
    pub(super) fn new(
        core: DocumentCore<Arc<KernelBridge>>,
        epoch: StoreEpoch,
        store: Arc<ObjectDocumentStore>,
        committer: GroupCommitter,
        kernel: Arc<KernelBridge>,
        kernel_events: mpsc::Receiver<KernelEvent>,
    ) -> (Self, watch::Receiver<Option<StopReason>>) {
        let (stopped_tx, stopped_rx) = watch::channel(None);
        let actor = DocumentActor {
            core,
            epoch,
            store,
            committer: Some(Arc::new(committer)),
            io: tokio::runtime::Handle::current(),
            kernel: Some(kernel),
            kernel_events: Some(kernel_events),
            events: broadcast::channel(BROADCAST_CAPACITY).0,
            direct: HashMap::new(),
            replies: HashMap::new(),
            run_watcher: None,
            stopped_tx,
        };
        (actor, stopped_rx)
    }
}

impl std::fmt::Debug for DocumentActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentActor")
            .field("doc", self.core.doc())
            .field("epoch", &self.epoch)
            .field("sessions", &self.core.session_count())
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
        if let Some(every) = self.core.tick_every() {
            ctx.run_interval(every, |actor, ctx| {
                actor.core.handle_tick(Instant::now());
                actor.drain(ctx);
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let reason = self.core.stop_reason().unwrap_or(StopReason::Shutdown);
        let _ = self.stopped_tx.send(Some(reason));
    }
}

/// What the driver learns back from the IO it did for an effect (sent to self).
#[derive(Debug, Message)]
#[rtype(result = "()")]
enum Finished {
    Commit(CommitId, Result<Vec<Seq>, CommitError>),
    Restart(Result<(), String>),
    Compaction(Result<(), CompactError>),
    OutputsFenced,
}

impl Handler<Join> for DocumentActor {
    type Result = Result<Joined, ErrorReply>;

    fn handle(&mut self, join: Join, ctx: &mut Context<Self>) -> Self::Result {
        let session = self
            .core
            .handle_join(Instant::now(), join.user, join.role)?;
        let (direct, direct_rx) = mpsc::unbounded_channel();
        self.direct.insert(session, direct);
        self.drain(ctx);
        metrics::gauge!("airlock_node_sessions").set(self.core.session_count() as f64);
        Ok(Joined {
            session,
            kernel: self.core.kernel_status().clone(),
            events: self.events.subscribe(),
            direct: direct_rx,
        })
    }
}

impl Handler<Leave> for DocumentActor {
    type Result = ();

    fn handle(&mut self, leave: Leave, ctx: &mut Context<Self>) {
        self.core.handle_leave(Instant::now(), leave.session);
        self.direct.remove(&leave.session);
        self.drain(ctx);
        metrics::gauge!("airlock_node_sessions").set(self.core.session_count() as f64);
    }
}

impl Handler<Request> for DocumentActor {
    type Result = ResponseFuture<Result<Option<ServerMessage>, ErrorReply>>;

    fn handle(&mut self, request: Request, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self
            .core
            .handle_request(Instant::now(), request.session, request.message);
        let reply = match answer {
            Answer::Now(reply) => Ok(reply),
            Answer::Durable(commit) => {
                let (tx, rx) = oneshot::channel();
                self.replies.insert(commit, tx);
                Err(rx)
            }
        };
        self.drain(ctx);
        match reply {
            Ok(reply) => Box::pin(std::future::ready(reply)),
            // A reply dropped unsent means the actor stopped first.
            Err(rx) => Box::pin(async move { rx.await.unwrap_or_else(|_| Err(gone_reply())) }),
        }
    }
}

impl Handler<Notice> for DocumentActor {
    type Result = ();

    fn handle(&mut self, notice: Notice, ctx: &mut Context<Self>) {
        self.core.handle_notice(Instant::now(), notice.text);
        self.drain(ctx);
    }
}

impl Handler<WatchRuns> for DocumentActor {
    type Result = ();

    fn handle(&mut self, watch: WatchRuns, _ctx: &mut Context<Self>) {
        let watcher = watch.0;
        watcher(self.core.running_origin());
        self.run_watcher = Some(watcher);
    }
}

impl Handler<Shutdown> for DocumentActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.core.handle_shutdown();
        self.drain(ctx);
    }
}

impl Handler<Finished> for DocumentActor {
    type Result = ();

    fn handle(&mut self, finished: Finished, ctx: &mut Context<Self>) {
        let now = Instant::now();
        match finished {
            Finished::Commit(commit, result) => self.core.handle_committed(now, commit, result),
            Finished::Restart(result) => self.core.handle_restart_finished(now, result),
            Finished::Compaction(result) => self.core.handle_compacted(now, result),
            Finished::OutputsFenced => self.core.handle_outputs_fenced(now),
        }
        self.drain(ctx);
    }
}

impl StreamHandler<KernelEvent> for DocumentActor {
    fn handle(&mut self, event: KernelEvent, ctx: &mut Context<Self>) {
        self.core.handle_kernel_event(Instant::now(), event);
        self.drain(ctx);
    }

    /// The kernel's event stream ends only when the kernel bridge is gone (shutdown).
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

// ---- Carrying out effects ---------------------------------------------------------------------

impl DocumentActor {
    /// Carries out every effect the core asked for, in order.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(effect) = self.core.poll_effect() {
            self.carry_out(effect, ctx);
        }
    }

    fn carry_out(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        match effect {
            // No receivers is fine: nobody is connected.
            Effect::Broadcast(event) => {
                let _ = self.events.send(event);
            }
            Effect::Direct { session, message } => {
                if let Some(direct) = self.direct.get(&session) {
                    let _ = direct.send(message);
                }
            }
            Effect::Reply { commit, result } => {
                if let Some(reply) = self.replies.remove(&commit) {
                    let _ = reply.send(result);
                }
            }
            Effect::Commit { commit, updates } => self.commit(commit, updates, ctx),
            Effect::PutOutputs { cell, bytes } => {
                let store = Arc::clone(&self.store);
                let (doc, epoch) = (self.core.doc().clone(), self.epoch);
                let addr = ctx.address();
                self.io.spawn(async move {
                    if let Err(err) = store.put_outputs(&doc, epoch, &cell, bytes).await {
                        warn!(%cell, %err, "storing outputs failed");
                        if matches!(err, StoreError::Fenced { .. }) {
                            addr.do_send(Finished::OutputsFenced);
                        }
                    }
                });
            }
            Effect::Compact { snapshot, upto } => {
                let store = Arc::clone(&self.store);
                let (doc, epoch) = (self.core.doc().clone(), self.epoch);
                let done = self
                    .io
                    .spawn(async move { store.compact(&doc, epoch, snapshot, upto).await });
                ctx.spawn(fut::wrap_future::<_, Self>(done).map(|result, _, ctx| {
                    let result = match result {
                        Ok(result) => result.map_err(CompactError::from),
                        Err(err) => {
                            warn!(%err, "compaction task failed");
                            Err(CompactError::Lost)
                        }
                    };
                    ctx.notify(Finished::Compaction(result));
                }));
            }
            Effect::RestartKernel => {
                let Some(kernel) = self.kernel.as_ref().map(Arc::clone) else {
                    return ctx.notify(Finished::Restart(Err(gone_reply().message)));
                };
                let restart = self.io.spawn(async move { kernel.restart().await });
                ctx.spawn(fut::wrap_future::<_, Self>(restart).map(|result, _, ctx| {
                    let result = match result {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(err)) => Err(err.to_string()),
                        Err(join) => Err(join.to_string()),
                    };
                    ctx.notify(Finished::Restart(result));
                }));
            }
            Effect::RunChanged(origin) => {
                if let Some(watcher) = &self.run_watcher {
                    watcher(origin);
                }
            }
            Effect::SetTimer { at, timer } => {
                let wait = at.saturating_duration_since(Instant::now());
                ctx.run_later(wait, move |actor, ctx| {
                    actor.core.handle_timer(Instant::now(), timer);
                    actor.drain(ctx);
                });
            }
            Effect::Stop { snapshot, .. } => self.stop(snapshot, ctx),
        }
    }

    /// Makes `updates` durable in the background; the result comes back as a message.
    fn commit(&self, commit: CommitId, updates: Vec<Bytes>, ctx: &mut Context<Self>) {
        let Some(committer) = self.committer.as_ref().map(Arc::clone) else {
            return;
        };
        let addr = ctx.address();
        self.io.spawn(async move {
            let pending = updates.into_iter().map(|update| {
                let committer = Arc::clone(&committer);
                async move { committer.commit(update).await }
            });
            let result = futures::future::try_join_all(pending).await;
            addr.do_send(Finished::Commit(commit, result));
        });
    }

    /// Stops serving: the committer's last appends, the snapshot, the kernel; then the actor.
    fn stop(&mut self, snapshot: Option<Bytes>, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let (doc, epoch) = (self.core.doc().clone(), self.epoch);
        let committer = self.committer.take();
        let kernel = self.kernel.take();
        let work = async move {
            // Everything acknowledged is in the log already; the snapshot only makes the next
            // open faster. The committer first, so the snapshot covers its last append.
            if let Some(committer) = committer.and_then(|c| Arc::try_unwrap(c).ok()) {
                committer.shutdown().await;
            }
            if let Some(snapshot) = snapshot
                && let Ok(loaded) = store.load(&doc).await
                && loaded.seq.0 > 0
                && let Err(err) = store.compact(&doc, epoch, snapshot, loaded.seq).await
            {
                warn!(%err, "snapshot at shutdown failed; the log still has everything");
            }
            match kernel.map(Arc::try_unwrap) {
                Some(Ok(kernel)) => kernel.shutdown().await,
                Some(Err(_)) => warn!("kernel still restarting at shutdown"),
                None => {}
            }
        };
        let done = self.io.spawn(work);
        ctx.spawn(fut::wrap_future::<_, Self>(done).map(|_, actor, ctx| {
            actor.events = broadcast::channel(1).0;
            ctx.stop();
        }));
    }
}

fn gone_reply() -> ErrorReply {
    ErrorReply::fatal(
        airlock_protocol::ErrorCode::Internal,
        "the node is shutting down",
    )
}
