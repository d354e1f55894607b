//! How sessions and the node reach the document actor, and the thread it runs on.

use actix::prelude::*;
use airlock_protocol::SessionId;
use airlock_protocol::{ClientMessage, ErrorCode, ErrorReply, KernelStatus, Role, ServerMessage};
use tokio::sync::{broadcast, mpsc, watch};

use super::{Broadcast, DocumentActor, RunWatcher};
pub use crate::document::core::StopReason;

// ---- The actor's messages ----

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
/// stderr ([`DocumentCore::handle_notice`](crate::document::core::DocumentCore::handle_notice)).
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

/// What a session gets when it joins.
#[derive(Debug)]
pub struct Joined {
    pub session: SessionId,
    pub kernel: KernelStatus,
    /// Events for every client of the document.
    pub events: broadcast::Receiver<Broadcast>,
    /// Messages for this client only (acknowledgements, refused updates, what it missed).
    pub direct: mpsc::UnboundedReceiver<ServerMessage>,
}

/// The document actor is gone.
#[derive(Debug, thiserror::Error)]
#[error("the document has stopped; the node is shutting down or lost the document")]
pub struct DocumentGone;

/// A cheap, cloneable way to reach the document actor.
#[derive(Debug, Clone)]
pub struct DocumentHandle {
    addr: Addr<DocumentActor>,
    stopped: watch::Receiver<Option<StopReason>>,
}

impl DocumentHandle {
    pub async fn join(&self, user: String, role: Role) -> Result<Joined, ErrorReply> {
        self.addr
            .send(Join { user, role })
            .await
            .unwrap_or_else(|_| Err(gone()))
    }

    pub fn leave(&self, session: SessionId) {
        self.addr.do_send(Leave { session });
    }

    /// Sends a session's request; the answer is for that session only.
    pub async fn request(
        &self,
        session: SessionId,
        message: ClientMessage,
    ) -> Result<Option<ServerMessage>, ErrorReply> {
        self.addr
            .send(Request { session, message })
            .await
            .unwrap_or_else(|_| Err(gone()))
    }

    /// Shows `text` in the output of whatever the kernel is running (see [`Notice`]).
    pub fn notice(&self, text: String) {
        self.addr.do_send(Notice { text });
    }

    /// Calls `watcher` with the run the kernel executes now, and again each time that changes
    /// (egress tags each flow with it).
    pub fn watch_runs(&self, watcher: RunWatcher) {
        self.addr.do_send(WatchRuns(watcher));
    }

    /// Stops the document: a snapshot, then the kernel. Returns once both are done.
    pub async fn shutdown(&self) {
        let _ = self.addr.send(Shutdown).await;
        self.stopped().await;
    }

    /// Resolves once the document has stopped serving, with the reason.
    pub async fn stopped(&self) -> StopReason {
        let mut stopped = self.stopped.clone();
        loop {
            if let Some(reason) = *stopped.borrow_and_update() {
                return reason;
            }
            if stopped.changed().await.is_err() {
                return StopReason::Shutdown;
            }
        }
    }
}

fn gone() -> ErrorReply {
    ErrorReply::fatal(ErrorCode::Internal, DocumentGone.to_string())
}

/// Starts `actor` on a thread of its own with a single-threaded actix system, which ends when
/// the actor stops.
pub(super) fn spawn(
    actor: DocumentActor,
    stopped: watch::Receiver<Option<StopReason>>,
) -> std::io::Result<DocumentHandle> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let mut done = stopped.clone();
    std::thread::Builder::new()
        .name("airlock-document".into())
        .spawn(move || {
            let system = actix::System::new();
            system.block_on(async move {
                let addr = actor.start();
                let _ = addr_tx.send(addr);
                while done.borrow_and_update().is_none() {
                    if done.changed().await.is_err() {
                        break;
                    }
                }
            });
        })?;
    let addr = addr_rx
        .recv()
        .map_err(|_| std::io::Error::other("the document thread ended before it started"))?;
    Ok(DocumentHandle { addr, stopped })
}
