//! The document hub: one task that owns the document's kernel and fans its events out to every
//! connected client session.
//!
//! Sessions talk to the hub through a [`HubHandle`]; the hub answers each join with a broadcast
//! receiver, so every client sees every run, whoever asked for it. The hub does not speak any
//! transport and does not check tokens: sessions do that before they join. It is the seed of the
//! document actor of DESIGN.md §3, which will add the cell graph, collaboration and persistence.

use std::sync::Arc;

use airlock_protocol::{
    ErrorCode, ErrorReply, KernelStatus, Role, RunDone, RunId, RunOutput, RunQueued, RunStatus,
    ServerMessage, SessionId,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use crate::kernel::{KernelBridge, KernelEvent};

/// How many events a slow client may fall behind before it is disconnected.
pub const BROADCAST_CAPACITY: usize = 4096;

/// Events every session of the document receives, shared rather than copied.
pub type Broadcast = Arc<ServerMessage>;

/// What a session asks of the hub.
#[derive(Debug)]
enum HubCommand {
    Join {
        user: String,
        role: Role,
        reply: oneshot::Sender<Joined>,
    },
    Leave {
        session: SessionId,
    },
    Execute {
        session: SessionId,
        user: String,
        client_ref: u64,
        code: String,
        store_history: bool,
        reply: oneshot::Sender<Result<RunId, ErrorReply>>,
    },
    Interrupt {
        reply: oneshot::Sender<Result<(), ErrorReply>>,
    },
    Restart {
        reply: oneshot::Sender<Result<(), ErrorReply>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    RestartFinished {
        result: Result<(), String>,
    },
}

/// What a session gets when it joins.
#[derive(Debug)]
pub struct Joined {
    pub session: SessionId,
    pub kernel: KernelStatus,
    pub events: broadcast::Receiver<Broadcast>,
}

/// The hub is gone (the node is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the document hub has stopped; the node is shutting down")]
pub struct HubGone;

/// A cheap, cloneable way for sessions to reach the hub.
#[derive(Debug, Clone)]
pub struct HubHandle {
    commands: mpsc::UnboundedSender<HubCommand>,
}

impl HubHandle {
    pub async fn join(&self, user: String, role: Role) -> Result<Joined, HubGone> {
        let (reply, rx) = oneshot::channel();
        self.send(HubCommand::Join { user, role, reply })?;
        rx.await.map_err(|_| HubGone)
    }

    pub fn leave(&self, session: SessionId) {
        let _ = self.send(HubCommand::Leave { session });
    }

    pub async fn execute(
        &self,
        session: SessionId,
        user: String,
        client_ref: u64,
        code: String,
        store_history: bool,
    ) -> Result<Result<RunId, ErrorReply>, HubGone> {
        let (reply, rx) = oneshot::channel();
        self.send(HubCommand::Execute {
            session,
            user,
            client_ref,
            code,
            store_history,
            reply,
        })?;
        rx.await.map_err(|_| HubGone)
    }

    pub async fn interrupt(&self) -> Result<Result<(), ErrorReply>, HubGone> {
        let (reply, rx) = oneshot::channel();
        self.send(HubCommand::Interrupt { reply })?;
        rx.await.map_err(|_| HubGone)
    }

    pub async fn restart(&self) -> Result<Result<(), ErrorReply>, HubGone> {
        let (reply, rx) = oneshot::channel();
        self.send(HubCommand::Restart { reply })?;
        rx.await.map_err(|_| HubGone)
    }

    /// Stops the hub and its kernel; returns once the kernel is gone.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.send(HubCommand::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
    }

    fn send(&self, command: HubCommand) -> Result<(), HubGone> {
        self.commands.send(command).map_err(|_| HubGone)
    }
}

/// Starts the hub task around a started kernel.
pub fn spawn(
    kernel: KernelBridge,
    kernel_events: mpsc::UnboundedReceiver<KernelEvent>,
) -> HubHandle {
    let (commands, rx) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
    let hub = Hub {
        kernel: Arc::new(kernel),
        status: KernelStatus::Idle,
        restarting: false,
        next_session: 1,
        next_run: 1,
        sessions: 0,
        events,
        self_handle: HubHandle {
            commands: commands.clone(),
        },
    };
    tokio::spawn(hub.run(rx, kernel_events));
    HubHandle { commands }
}

struct Hub {
    kernel: Arc<KernelBridge>,
    status: KernelStatus,
    /// A restart is under way; new runs are refused until it ends.
    restarting: bool,
    next_session: u64,
    next_run: u64,
    sessions: usize,
    events: broadcast::Sender<Broadcast>,
    /// Lets spawned restart tasks report back into the hub's own queue.
    self_handle: HubHandle,
}

impl Hub {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<HubCommand>,
        mut kernel_events: mpsc::UnboundedReceiver<KernelEvent>,
    ) {
        loop {
            tokio::select! {
                // Kernel events first: outputs must not wait behind a queue of commands.
                biased;
                Some(event) = kernel_events.recv() => self.on_kernel_event(event),
                command = commands.recv() => match command {
                    Some(HubCommand::Shutdown { done }) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.stop().await;
                        return;
                    }
                },
            }
        }
    }

    async fn stop(self) {
        info!("document hub stopping; shutting the kernel down");
        match Arc::try_unwrap(self.kernel) {
            Ok(kernel) => kernel.shutdown().await,
            // A restart task still holds the kernel; it ends with the runtime.
            Err(_) => warn!("kernel still restarting at shutdown"),
        }
    }

    fn broadcast(&self, message: ServerMessage) {
        // No receivers is fine: nobody is connected.
        let _ = self.events.send(Arc::new(message));
    }

    fn on_kernel_event(&mut self, event: KernelEvent) {
        match event {
            KernelEvent::Status(status) => {
                if let KernelStatus::Dead { cause } = &status {
                    warn!(%cause, "kernel died");
                    metrics::counter!("airlock_node_kernel_deaths_total").increment(1);
                }
                // The fresh kernel's first idle ends a restart: clients that see it may run code
                // at once, before the restart task reports back.
                if matches!(status, KernelStatus::Idle | KernelStatus::Busy) {
                    self.restarting = false;
                }
                self.status = status.clone();
                self.broadcast(ServerMessage::Kernel(status));
            }
            KernelEvent::Output { run, output } => {
                self.broadcast(ServerMessage::Output(RunOutput { run, output }));
            }
            KernelEvent::Done {
                run,
                status,
                execution_count,
            } => {
                let label = match status {
                    RunStatus::Ok => "ok",
                    RunStatus::Error => "error",
                    RunStatus::Aborted => "aborted",
                    RunStatus::Unknown => "unknown",
                };
                metrics::counter!("airlock_node_runs_total", "status" => label).increment(1);
                self.broadcast(ServerMessage::Done(RunDone {
                    run,
                    status,
                    execution_count,
                }));
            }
        }
    }

    fn unavailable(&self) -> Option<ErrorReply> {
        let message = if self.restarting {
            "the kernel is restarting; try again when it reports idle".to_owned()
        } else if let KernelStatus::Dead { cause } = &self.status {
            format!("{cause}; send a restart to get a fresh kernel")
        } else {
            return None;
        };
        Some(ErrorReply::for_request(
            ErrorCode::KernelUnavailable,
            None,
            message,
        ))
    }

    fn on_command(&mut self, command: HubCommand) {
        match command {
            HubCommand::Join { user, role, reply } => {
                let session = SessionId(self.next_session);
                self.next_session += 1;
                self.sessions += 1;
                metrics::gauge!("airlock_node_sessions").set(self.sessions as f64);
                info!(session = session.0, %user, %role, "client joined");
                let _ = reply.send(Joined {
                    session,
                    kernel: self.status.clone(),
                    events: self.events.subscribe(),
                });
            }
            HubCommand::Leave { session } => {
                self.sessions = self.sessions.saturating_sub(1);
                metrics::gauge!("airlock_node_sessions").set(self.sessions as f64);
                info!(session = session.0, "client left");
            }
            HubCommand::Execute {
                session,
                user,
                client_ref,
                code,
                store_history,
                reply,
            } => {
                if let Some(mut refusal) = self.unavailable() {
                    refusal.client_ref = Some(client_ref);
                    let _ = reply.send(Err(refusal));
                    return;
                }
                let run = RunId(self.next_run);
                self.next_run += 1;
                // Announce before the kernel can answer, so `Queued` precedes every output.
                self.broadcast(ServerMessage::Queued(RunQueued {
                    run,
                    session,
                    client_ref,
                    user,
                    code: code.clone(),
                    cell: None,
                }));
                let result = self
                    .kernel
                    .execute(run, &code, store_history)
                    .map(|()| run)
                    .map_err(|err| {
                        ErrorReply::for_request(
                            ErrorCode::KernelUnavailable,
                            Some(client_ref),
                            err.to_string(),
                        )
                    });
                if result.is_err() {
                    self.broadcast(ServerMessage::Done(RunDone {
                        run,
                        status: RunStatus::Aborted,
                        execution_count: None,
                    }));
                }
                let _ = reply.send(result);
            }
            HubCommand::Interrupt { reply } => {
                let result = match self.unavailable() {
                    Some(refusal) => Err(refusal),
                    None => self.kernel.interrupt().map_err(|err| {
                        ErrorReply::for_request(ErrorCode::KernelUnavailable, None, err.to_string())
                    }),
                };
                let _ = reply.send(result);
            }
            HubCommand::Restart { reply } => {
                if self.restarting {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.restarting = true;
                let kernel = Arc::clone(&self.kernel);
                let hub = self.self_handle.clone();
                tokio::spawn(async move {
                    let result = kernel.restart().await.map_err(|err| err.to_string());
                    let _ = hub.send(HubCommand::RestartFinished { result });
                });
                let _ = reply.send(Ok(()));
            }
            HubCommand::RestartFinished { result } => {
                self.restarting = false;
                if let Err(reason) = result {
                    warn!(%reason, "kernel restart failed");
                    let status = KernelStatus::Dead {
                        cause: airlock_protocol::DeathCause::StartFailed { reason },
                    };
                    self.status = status.clone();
                    self.broadcast(ServerMessage::Kernel(status));
                }
            }
            HubCommand::Shutdown { .. } => {}
        }
    }
}
