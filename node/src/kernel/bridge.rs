//! [`KernelBridge`]: the thin async driver that pumps a [`Session`] with one ipykernel process.
//!
//! One task (the driver) owns the process, the sockets and the session. It waits on everything at
//! once: commands from the bridge handle, iopub and shell messages, heartbeat replies, the
//! process's exit and the heartbeat deadline; it hands each to the session and forwards the
//! session's events. All decisions (when a run is done, when silence means death, which runs to
//! abort) are the session's; this file only does IO. Interrupts and `pid` skip the driver: they
//! read the current process id from an atomic, so an interrupt is not queued behind output.
//!
//! Start-up (also on restart): fresh runtime folder and key, spawn, wait for the socket files,
//! connect, then `kernel_info_request` until the kernel answers on shell and iopub delivers, all
//! bounded by `startup_timeout` and cut short if the process exits.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use airlock_protocol::{DeathCause, RunId};
use futures::{FutureExt, Stream, StreamExt};
use jupyter_protocol::{ExecuteRequest, JupyterMessage, KernelInfoRequest, ShutdownRequest};
use jupyter_zmq_client::{
    ClientControlConnection, ClientHeartbeatConnection, Connection, DealerSendConnection,
    RawMessage, RuntimeError,
};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zeromq::SocketRecv;

use super::process::{self, KernelProcess, RuntimeFolder};
use super::session::Session;
use super::wire::{self, Body};
use super::{KernelConfig, KernelError, KernelEvent};
use crate::jail::KernelJail;
use crate::log_budget::LogBudget;

/// How many events may wait for the document. Past that the driver stops reading the kernel's
/// sockets until the document catches up: a kernel that outputs faster than the node can take
/// waits on its own sockets instead of piling events up in the node (each is at most one output
/// of `OutputLimits::per_output`).
const EVENT_QUEUE: usize = 32;

/// How long a kernel gets to exit by itself after a `shutdown_request` before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often start-up checks whether the kernel has bound its sockets yet. Start-up only, never
/// on the execute path.
const SOCKET_POLL: Duration = Duration::from_millis(5);

/// How often start-up repeats `kernel_info_request` while waiting for iopub to deliver: the
/// kernel's status messages for it are what prove the subscription is live.
const NUDGE_INTERVAL: Duration = Duration::from_millis(100);

/// How long a failed start waits for the kernel's stderr to close, to report why.
const STDERR_PATIENCE: Duration = Duration::from_millis(500);

/// A handle to one kernel; cheap to share by reference. See the module docs of
/// [`crate::kernel`] for the contract.
///
/// Dropping the handle without [`shutdown`](Self::shutdown) still kills the kernel and removes
/// its runtime folder, only without asking the kernel to exit cleanly first.
#[derive(Debug)]
pub struct KernelBridge {
    commands: mpsc::UnboundedSender<Command>,
    /// The kernel's process id, 0 while none runs. Written by the driver, read by
    /// [`interrupt`](Self::interrupt) and [`pid`](Self::pid).
    pid: Arc<AtomicU32>,
    driver: JoinHandle<()>,
    output_limits: crate::document::outputs::OutputLimits,
}

#[derive(Debug)]
enum Command {
    Execute {
        run: RunId,
        code: String,
        store_history: bool,
    },
    Restart {
        done: oneshot::Sender<Result<(), KernelError>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

impl KernelBridge {
    /// Starts a kernel and returns once it answers requests. Events, from
    /// `Status(Starting)` and `Status(Idle)` on, arrive on the returned receiver.
    pub async fn start(
        config: KernelConfig,
    ) -> Result<(KernelBridge, mpsc::Receiver<KernelEvent>), KernelError> {
        // The limits are process-wide in the ZeroMQ crate; a node runs one kernel at a time.
        zeromq::set_receive_limits(zeromq::ReceiveLimits {
            max_frame: config.message_limit,
            max_message: config.message_limit,
            ..zeromq::ReceiveLimits::DEFAULT
        });
        let output_limits = config.output_limits;
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let pid = Arc::new(AtomicU32::new(0));
        let mut driver = Driver {
            session: Session::new(config.heartbeat_timeout),
            config,
            events,
            commands: command_receiver,
            pid: Arc::clone(&pid),
            warnings: LogBudget::default(),
        };
        let kernel = driver.launch().await?;
        let driver = tokio::spawn(driver.run(kernel));
        Ok((
            KernelBridge {
                commands,
                pid,
                driver,
                output_limits,
            },
            receiver,
        ))
    }

    /// Queues `code` as run `run` and returns at once; its outputs and its `Done` come as
    /// events, after the `Done` of every run queued before it. Fails only when the bridge has
    /// shut down. While the kernel is dead the run ends at once as `Aborted`; during a restart it
    /// waits for the new kernel.
    pub fn execute(&self, run: RunId, code: &str, store_history: bool) -> Result<(), KernelError> {
        self.commands
            .send(Command::Execute {
                run,
                code: code.to_owned(),
                store_history,
            })
            .map_err(|_| KernelError::BridgeClosed)
    }

    /// Interrupts whatever the kernel is running: SIGINT to its process group, as Jupyter's
    /// `signal` interrupt mode does. The interrupted run usually ends as `Error`
    /// (`KeyboardInterrupt`) and the runs queued behind it as `Aborted`. As in Jupyter, a SIGINT
    /// that reaches an idle kernel, or a run in the instant before its code starts, is ignored.
    /// Fails with [`KernelError::NotRunning`] while no kernel process runs.
    pub fn interrupt(&self) -> Result<(), KernelError> {
        match self.pid.load(Ordering::Acquire) {
            0 => Err(KernelError::NotRunning),
            pid => process::signal_group(pid, Signal::SIGINT),
        }
    }

    /// Replaces the kernel with a fresh process (new HMAC key, new runtime folder): reports
    /// `Restarting`, aborts pending runs, then `Starting` and `Idle`. Works on a dead kernel too.
    /// On failure the kernel is reported `Dead` and a later restart may be tried.
    pub async fn restart(&self) -> Result<(), KernelError> {
        let (done, result) = oneshot::channel();
        self.commands
            .send(Command::Restart { done })
            .map_err(|_| KernelError::BridgeClosed)?;
        result.await.map_err(|_| KernelError::BridgeClosed)?
    }

    /// Asks the kernel to exit, kills its process group if it has not within a short grace
    /// period, and removes its runtime folder. Pending runs end as `Aborted`; then the event
    /// stream ends.
    pub async fn shutdown(self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).is_ok() {
            let _ = finished.await;
        }
        if let Err(error) = self.driver.await {
            tracing::error!(%error, "the kernel driver task failed");
        }
    }

    /// What this kernel's outputs may cost ([`KernelConfig::output_limits`]).
    pub fn output_limits(&self) -> crate::document::outputs::OutputLimits {
        self.output_limits
    }

    /// The kernel's process id, while one runs.
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }
}

/// What one receiving socket yields: messages (already signature-checked, which proves little:
/// the kernel holds the key), then, if the kernel broke the channel's limits, why.
enum Received {
    Message(Result<RawMessage, RuntimeError>),
    /// The kernel sent more than the channel allows (`zeromq::ReceiveLimits`); the socket
    /// dropped the connection. Always the last item.
    Violated(String),
}

/// Messages from one socket. Ends when the socket fails.
type MessageStream = Pin<Box<dyn Stream<Item = Received> + Send>>;

/// Turns a receiving connection into a stream, so the driver can wait on it among other things
/// without recreating (and reallocating) a receive future on every turn of its loop.
fn message_stream<S>(connection: Connection<S>) -> MessageStream
where
    S: SocketRecv + Send + 'static,
{
    let messages = futures::stream::unfold(Some(connection), |connection| async move {
        let mut connection = connection?;
        match connection.socket.recv().await {
            Ok(frames) => {
                let message = RawMessage::from_multipart(frames, &connection.mac);
                Some((Received::Message(message), Some(connection)))
            }
            Err(zeromq::ZmqError::Codec(limit @ zeromq::CodecError::Limit { .. })) => {
                Some((Received::Violated(limit.to_string()), None))
            }
            Err(error) => {
                tracing::debug!(%error, "kernel socket closed");
                None
            }
        }
    });
    Box::pin(messages.fuse())
}

/// Everything that belongs to one kernel process; dropped (killing it) on death or restart.
struct RunningKernel {
    process: KernelProcess,
    folder: RuntimeFolder,
    channels: Channels,
}

/// Why the driver left its loop for the current kernel.
enum Next {
    Died,
    Restart(oneshot::Sender<Result<(), KernelError>>),
    Shutdown(oneshot::Sender<()>),
    /// The bridge handle was dropped.
    Closed,
}

struct Driver {
    config: KernelConfig,
    session: Session,
    events: mpsc::Sender<KernelEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    pid: Arc<AtomicU32>,
    /// Warnings about messages the kernel got wrong, which it can send as fast as it likes.
    warnings: LogBudget,
}

impl Driver {
    async fn run(mut self, first: RunningKernel) {
        let mut kernel = Some(first);
        loop {
            let next = match kernel.as_mut() {
                Some(running) => self.serve(running).await,
                None => self.while_dead().await,
            };
            match next {
                Next::Died => {
                    if let Some(dead) = kernel.take() {
                        self.teardown(dead).await;
                    }
                }
                Next::Restart(done) => {
                    self.session.restarting();
                    self.flush_events().await;
                    if let Some(old) = kernel.take() {
                        self.teardown(old).await;
                    }
                    let result = self.launch().await.map(|fresh| kernel = Some(fresh));
                    let _ = done.send(result);
                }
                Next::Shutdown(done) => {
                    self.session.shutting_down();
                    self.flush_events().await;
                    if let Some(running) = kernel.take() {
                        self.shutdown_gracefully(running).await;
                    }
                    let _ = done.send(());
                    return;
                }
                Next::Closed => {
                    self.session.shutting_down();
                    self.flush_events().await;
                    if let Some(running) = kernel.take() {
                        self.teardown(running).await;
                    }
                    return;
                }
            }
        }
    }

    /// Pumps the session with one live kernel until it dies or a command ends its life.
    async fn serve(&mut self, kernel: &mut RunningKernel) -> Next {
        let mut heartbeat_timer = pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer_deadline = None;
        loop {
            self.flush_events().await;
            let deadline = self.session.heartbeat_deadline();
            if deadline != timer_deadline {
                timer_deadline = deadline;
                if let Some(at) = deadline {
                    heartbeat_timer.as_mut().reset(Instant::from_std(at));
                }
            }
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Execute { run, code, store_history }) => {
                        self.execute(kernel, run, code, store_history).await;
                    }
                    Some(Command::Restart { done }) => return Next::Restart(done),
                    Some(Command::Shutdown { done }) => return Next::Shutdown(done),
                    None => return Next::Closed,
                },
                Some(received) = kernel.channels.iopub.next() => {
                    if let Some(cause) = self.receive("iopub", received) {
                        return self.violated(kernel, cause);
                    }
                }
                Some(received) = kernel.channels.replies.next() => {
                    if let Some(cause) = self.receive("shell", received) {
                        return self.violated(kernel, cause);
                    }
                }
                Some(()) = kernel.channels.pongs.recv() => {
                    self.session.on_heartbeat_reply(Instant::now().into_std());
                }
                status = kernel.process.wait() => {
                    // Whatever the kernel sent before dying still belongs to its runs.
                    while let Some(Some(received)) = kernel.channels.iopub.next().now_or_never() {
                        self.receive("iopub", received);
                    }
                    while let Some(Some(received)) = kernel.channels.replies.next().now_or_never() {
                        self.receive("shell", received);
                    }
                    let cause = match status {
                        Ok(status) => kernel.process.death_cause(status),
                        Err(error) => {
                            tracing::warn!(%error, "lost track of the kernel process");
                            DeathCause::Unknown
                        }
                    };
                    tracing::info!(pid = kernel.process.pid(), %cause, "kernel died");
                    self.session.died(cause);
                    return Next::Died;
                }
                () = &mut heartbeat_timer, if timer_deadline.is_some() => {
                    let now = Instant::now().into_std();
                    // A reply already waiting lost the race to the timer, not to the kernel:
                    // on a starved machine, judging silence without it would kill a live kernel.
                    if kernel.channels.pongs.try_recv().is_ok() {
                        self.session.on_heartbeat_reply(now);
                    }
                    if let Some(cause) = self.session.poll_heartbeat(now) {
                        tracing::warn!(pid = kernel.process.pid(), %cause, "killing silent kernel");
                        return Next::Died;
                    }
                }
            }
        }
    }

    /// Without a live kernel: runs end at once, until a restart or the end.
    async fn while_dead(&mut self) -> Next {
        loop {
            self.flush_events().await;
            match self.commands.recv().await {
                Some(Command::Execute { run, .. }) => self.session.reject(run),
                Some(Command::Restart { done }) => return Next::Restart(done),
                Some(Command::Shutdown { done }) => return Next::Shutdown(done),
                None => return Next::Closed,
            }
        }
    }

    async fn execute(
        &mut self,
        kernel: &mut RunningKernel,
        run: RunId,
        code: String,
        store_history: bool,
    ) {
        let request = ExecuteRequest {
            code,
            silent: false,
            store_history,
            user_expressions: None,
            allow_stdin: false,
            stop_on_error: true,
        };
        let message = JupyterMessage::new(request, None);
        if !self.session.execute(run, message.header.msg_id.clone()) {
            return;
        }
        if let Err(error) = kernel.channels.shell.send(message).await {
            tracing::warn!(?run, %error, "could not send an execute request to the kernel");
            self.session.send_failed(run);
        }
    }

    /// Hands one message to the session; returns why the kernel must go if it broke the
    /// channel's limits. Messages that fail their checks are dropped, with a rate-limited
    /// warning: a kernel can send them as fast as it likes.
    fn receive(&mut self, channel: &'static str, received: Received) -> Option<DeathCause> {
        let raw = match received {
            Received::Message(Ok(raw)) => raw,
            Received::Message(Err(error)) => {
                self.drop_message(channel, &error);
                return None;
            }
            Received::Violated(reason) => {
                return Some(DeathCause::ChannelViolated {
                    channel: channel.to_owned(),
                    reason,
                });
            }
        };
        match wire::decode(&raw.jparts) {
            Ok(mut incoming) => {
                // Cut an oversized output here, before it waits for the document.
                if let Body::Output(output) = &incoming.body
                    && let Some(capped) = crate::document::outputs::cap_output(
                        output,
                        self.config.output_limits.per_output,
                    )
                {
                    incoming.body = Body::Output(capped);
                }
                self.session.handle_message(incoming)
            }
            Err(error) => self.drop_message(channel, &error),
        }
        None
    }

    fn drop_message(&mut self, channel: &'static str, error: &dyn std::fmt::Display) {
        metrics::counter!("airlock_node_kernel_messages_dropped_total", "channel" => channel)
            .increment(1);
        if let Some(suppressed) = self.warnings.admit(Instant::now().into_std()) {
            tracing::warn!(channel, %error, suppressed, "dropped a kernel message");
        }
    }

    /// The kernel broke its channel's limits: it is killed (the caller tears it down) and every
    /// client is told why.
    fn violated(&mut self, kernel: &RunningKernel, cause: DeathCause) -> Next {
        tracing::warn!(pid = kernel.process.pid(), %cause, "stopping a kernel that broke its channel limits");
        metrics::counter!("airlock_node_kernel_channel_violations_total").increment(1);
        self.session.died(cause);
        Next::Died
    }

    async fn flush_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            // Nobody listening is not the driver's problem; the kernel keeps its state.
            let _ = self.events.send(event).await;
        }
    }

    /// Starts a fresh kernel process and waits until it answers. On failure the kernel is
    /// reported dead with `StartFailed` and nothing of it is left behind.
    async fn launch(&mut self) -> Result<RunningKernel, KernelError> {
        self.session.starting();
        self.flush_events().await;
        match self.try_launch().await {
            Ok(kernel) => {
                self.pid.store(kernel.process.pid(), Ordering::Release);
                self.session.ready(Instant::now().into_std());
                self.flush_events().await;
                Ok(kernel)
            }
            Err(error) => {
                tracing::warn!(%error, "kernel failed to start");
                self.session.died(DeathCause::StartFailed {
                    reason: error.to_string(),
                });
                self.flush_events().await;
                Err(error)
            }
        }
    }

    async fn try_launch(&self) -> Result<RunningKernel, KernelError> {
        let deadline = Instant::now() + self.config.startup_timeout;
        let folder = RuntimeFolder::create(&self.config.runtime_dir)?;
        let mut command = process::kernel_command(&self.config.python, folder.connection_file());
        let jail = match &self.config.jail {
            Some(jail) => Some(KernelJail::wrap(
                jail,
                &self.config.python,
                folder.path(),
                &mut command,
            )?),
            None => None,
        };
        let mut process = process::spawn(command, jail).map_err(|source| KernelError::Spawn {
            python: self.config.python.clone(),
            source,
        })?;
        let connected = tokio::select! {
            connected = connect(&folder, self.config.heartbeat_interval) => connected,
            status = process.wait() => {
                let cause = match status {
                    Ok(status) => process.death_cause(status),
                    Err(_) => DeathCause::Unknown,
                };
                let stderr = process.stderr_tail(STDERR_PATIENCE).await;
                Err(KernelError::DiedDuringStartup { cause, stderr })
            }
            () = tokio::time::sleep_until(deadline) => Err(KernelError::StartupTimeout {
                timeout: self.config.startup_timeout,
            }),
        };
        match connected {
            Ok(channels) => {
                tracing::debug!(pid = process.pid(), "kernel ready");
                Ok(RunningKernel {
                    process,
                    folder,
                    channels,
                })
            }
            Err(error) => {
                process.kill().await;
                remove_folder(folder);
                Err(error)
            }
        }
    }

    /// Asks the kernel to exit, then makes sure it did.
    async fn shutdown_gracefully(&mut self, mut kernel: RunningKernel) {
        let request = JupyterMessage::new(ShutdownRequest { restart: false }, None);
        match kernel.channels.control.send(request).await {
            // The reply only promises an exit; the exit is what counts.
            Ok(()) => {
                if tokio::time::timeout(SHUTDOWN_GRACE, kernel.process.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        pid = kernel.process.pid(),
                        "kernel ignored shutdown_request; killing it"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "could not ask the kernel to shut down"),
        }
        self.teardown(kernel).await;
    }

    /// Kills what is left of a kernel's process group, closes its sockets, removes its folder.
    async fn teardown(&mut self, mut kernel: RunningKernel) {
        self.pid.store(0, Ordering::Release);
        kernel.channels.heartbeat.abort();
        kernel.process.kill().await;
        let RunningKernel { folder, .. } = kernel;
        remove_folder(folder);
    }
}

fn remove_folder(folder: RuntimeFolder) {
    if let Err(error) = folder.remove() {
        tracing::warn!(%error, "could not remove a kernel's runtime folder");
    }
}

/// The channels of a kernel that has answered.
struct Channels {
    shell: DealerSendConnection,
    /// Shell replies.
    replies: MessageStream,
    iopub: MessageStream,
    control: ClientControlConnection,
    /// One message per heartbeat reply.
    pongs: mpsc::Receiver<()>,
    heartbeat: JoinHandle<()>,
}

/// Waits for the kernel's sockets, connects, and handshakes until the kernel answers on shell and
/// iopub delivers. Unbounded; the caller races it against the deadline and the process's exit.
async fn connect(
    folder: &RuntimeFolder,
    heartbeat_interval: Duration,
) -> Result<Channels, KernelError> {
    // The sockets exist only once the kernel has bound them; connecting earlier would leave
    // zeromq retrying with a growing back-off that would stretch every start.
    let mut poll = tokio::time::interval(SOCKET_POLL);
    for socket in folder.channel_sockets() {
        while !socket.exists() {
            poll.tick().await;
        }
    }

    let info = folder.connection();
    let session_id = uuid::Uuid::new_v4().to_string();
    let identity =
        jupyter_zmq_client::peer_identity_for_session(&session_id).map_err(|source| {
            KernelError::Connect {
                channel: "shell",
                source,
            }
        })?;
    let (iopub, shell, control, heartbeat) = tokio::try_join!(
        async {
            jupyter_zmq_client::create_client_iopub_connection(info, "", &session_id)
                .await
                .map_err(|source| KernelError::Connect {
                    channel: "iopub",
                    source,
                })
        },
        async {
            jupyter_zmq_client::create_client_shell_connection_with_identity(
                info,
                &session_id,
                identity,
            )
            .await
            .map_err(|source| KernelError::Connect {
                channel: "shell",
                source,
            })
        },
        async {
            jupyter_zmq_client::create_client_control_connection(info, &session_id)
                .await
                .map_err(|source| KernelError::Connect {
                    channel: "control",
                    source,
                })
        },
        async {
            jupyter_zmq_client::create_client_heartbeat_connection(info)
                .await
                .map_err(|source| KernelError::Connect {
                    channel: "heartbeat",
                    source,
                })
        },
    )?;
    let (mut shell, replies) = shell.split();
    let mut replies = message_stream(replies);
    let mut iopub = message_stream(iopub);

    // Ready means: the kernel answered kernel_info on shell, and iopub delivered something (its
    // welcome, or the status messages of a kernel_info), so no output of a first run is lost to
    // a subscription still in flight.
    let mut answered = false;
    let mut subscribed = false;
    let mut nudge = tokio::time::interval(NUDGE_INTERVAL);
    while !(answered && subscribed) {
        tokio::select! {
            _ = nudge.tick() => {
                let probe = JupyterMessage::new(KernelInfoRequest {}, None);
                shell.send(probe).await.map_err(|source| KernelError::Send {
                    what: "kernel_info_request",
                    source,
                })?;
            }
            Some(message) = replies.next() => {
                if let Received::Message(Ok(raw)) = message
                    && let Ok(incoming) = wire::decode(&raw.jparts)
                    && incoming.body == Body::KernelInfoReply
                {
                    answered = true;
                }
            }
            Some(_) = iopub.next() => subscribed = true,
        }
    }

    let (pong_sender, pongs) = mpsc::channel(1);
    let heartbeat = tokio::spawn(beat(heartbeat, heartbeat_interval, pong_sender));
    Ok(Channels {
        shell,
        replies,
        iopub,
        control,
        pongs,
        heartbeat,
    })
}

/// Pings the kernel's heartbeat every `interval` and reports each reply. A silent kernel leaves
/// this task waiting; the session's deadline notices.
async fn beat(
    mut heartbeat: ClientHeartbeatConnection,
    interval: Duration,
    pongs: mpsc::Sender<()>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = heartbeat.single_heartbeat().await {
            tracing::debug!(%error, "heartbeat socket closed");
            return;
        }
        // A full channel already holds a reply the driver has not read; one is enough.
        if let Err(mpsc::error::TrySendError::Closed(())) = pongs.try_send(()) {
            return;
        }
    }
}
