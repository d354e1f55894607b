//! `airlock-client`: connect to a document's node over QUIC or WebSocket, run code, edit and run
//! the document's cells.
//!
//! # Layout
//! - [`Client`]: one connection. [`Client::connect`] says hello and waits for the welcome;
//!   [`Client::send`] and [`Client::recv`] move protocol messages; [`Client::run`] executes code
//!   and collects its outputs until the run is done.
//!   - Editing: [`Client::sync`] starts y-sync, [`Client::update`] sends a local Yjs update and
//!     keeps it in the [`Outbox`] until the node acknowledges it as durable;
//!     [`Client::connect_resuming`] reconnects and sends what is still pending.
//!   - Requests: [`Client::run_cells`], [`Client::edit_cells`], [`Client::import_ipynb`],
//!     [`Client::export_ipynb`], [`Client::graph`], [`Client::set_mode`] send a request and wait
//!     for its answer; whatever else arrives meanwhile waits in a backlog for [`Client::recv`].
//!   - [`Client::follow_runs`] waits until a set of cells has finished running.
//! - [`outbox`]: the unacknowledged updates, plain data that outlives a connection.
//! - [`reply`]: the sans-IO rule that picks a request's answer out of the other messages.
//! - [`follow`]: the sans-IO rule that decides when a cell has finished, from run and cell events.
//! - [`Target`]: where and how to connect; [`Trust`]: how the node's QUIC certificate is checked.
//! - [`pinned`]: the certificate verifier that accepts exactly one certificate fingerprint.
//! - [`coordinator`]: the coordinator's HTTP API ([`coordinator::ApiClient`]): claim a
//!   document, read and set the region's egress IP sets, read status.
//! - [`pki`]: PEM in and out (identities, certificate files, the text the CLI writes).
//! - [`tunnel`]: a node's side of the egress tunnel ([`tunnel::TunnelClient`]) and what the
//!   gateway's server side shares with it.
//!
//! A background task reads and decodes incoming frames, so [`Client::recv`] is cancel-safe and
//! can sit in a `select!` beside Ctrl-C handling.
#![forbid(unsafe_code)]

pub mod coordinator;
pub mod follow;
pub mod outbox;
pub mod pinned;
pub mod pki;
pub mod reply;
pub mod tunnel;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_protocol::codec::{self, FrameLimit, HEADER_LEN};
use airlock_protocol::{
    Accepted, Blob, CellEdit, ClientMessage, ClientUpdate, CodecError, EditCells, ErrorCode,
    ErrorReply, ExecuteRequest, ExecutionMode, GraphView, Hello, ImportNotebook, Output, RunCells,
    RunDone, RunId, ServerMessage, SyncStep1, VersionRange, Welcome,
};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use follow::{CellRun, RunFollower};
pub use outbox::Outbox;
use reply::AwaitedReply;

/// Where a node listens and how to reach it.
#[derive(Debug, Clone)]
pub enum Target {
    Quic {
        addr: SocketAddr,
        /// The name the certificate is issued for (`localhost` for a dev node).
        server_name: String,
        trust: Trust,
    },
    WebSocket {
        /// `ws://host:port/v1/doc`
        url: String,
        /// Binary frames or the JSON text form.
        json: bool,
    },
}

/// How the node's QUIC certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Accept only the certificate with this SHA-256 fingerprint (hex, colons allowed), as the
    /// node prints it at start.
    Fingerprint(String),
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// The node refused the connection or ended it with a fatal error; for `execute` (through
    /// [`Client::run`]) also a refusal of the run.
    #[error("the node refused: {} ({})", .0.message, .0.code)]
    Refused(ErrorReply),
    /// The node refused one request; the connection goes on.
    #[error("the node refused the request: {message} ({code})")]
    Rejected {
        client_ref: u64,
        code: ErrorCode,
        message: String,
    },
    #[error("the connection closed: {reason}")]
    Closed { reason: String },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no answer from the node within {0:?}")]
    Timeout(Duration),
}

/// [`Client::connect_resuming`] failed; the outbox it was given comes back, nothing lost.
#[derive(Debug, thiserror::Error)]
#[error("could not resume the connection")]
pub struct ResumeFailed {
    #[source]
    pub error: ClientError,
    /// Every update still unacknowledged, for the next attempt.
    pub outbox: Outbox,
}

impl From<ResumeFailed> for ClientError {
    fn from(failed: ResumeFailed) -> Self {
        failed.error
    }
}

/// How long [`Client::connect`] waits for the welcome.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a request helper ([`Client::run_cells`] and the others) waits for its answer. The
/// answer comes before any cell runs, so only a stuck node takes this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to one document.
#[derive(Debug)]
pub struct Client {
    writer: Writer,
    inbound: mpsc::Receiver<Result<ServerMessage, ClientError>>,
    /// Messages read while a request helper waited for its answer; [`Client::recv`] returns them
    /// first, in arrival order.
    backlog: VecDeque<ServerMessage>,
    /// Updates sent and not yet acknowledged; outlives the connection ([`Client::into_outbox`]).
    outbox: Outbox,
    welcome: Welcome,
    next_ref: u64,
    limit: FrameLimit,
}

enum Writer {
    Quic {
        // The endpoint must outlive the connection.
        _endpoint: quinn::Endpoint,
        connection: quinn::Connection,
        send: quinn::SendStream,
    },
    WebSocket {
        sink: SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>,
        json: bool,
    },
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Writer::Quic { .. } => "Writer::Quic",
            Writer::WebSocket { .. } => "Writer::WebSocket",
        })
    }
}

/// What one run produced, as [`Client::run`] collected it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub run: RunId,
    pub outputs: Vec<Output>,
    pub done: RunDone,
}

impl Client {
    /// Connects, says hello with `token`, and waits for the welcome.
    pub async fn connect(target: &Target, token: &str) -> Result<Client, ClientError> {
        let mut client = Client::connect_without_hello(target).await?;
        client
            .send(&ClientMessage::Hello(Hello {
                versions: VersionRange::current(),
                token: token.to_owned(),
                client: concat!("airlock-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            }))
            .await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, client.recv()).await {
            Ok(Ok(ServerMessage::Welcome(welcome))) => {
                client.welcome = welcome;
                Ok(client)
            }
            Ok(Ok(ServerMessage::Error(reply))) => Err(ClientError::Refused(reply)),
            Ok(Ok(other)) => Err(ClientError::Closed {
                reason: format!("expected a welcome, got {other:?}"),
            }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ClientError::Timeout(CONNECT_TIMEOUT)),
        }
    }

    /// Opens the transport without saying hello, for tools and tests that craft their own
    /// first message. [`Client::welcome`] stays empty.
    pub async fn connect_without_hello(target: &Target) -> Result<Client, ClientError> {
        let limit = FrameLimit::default();
        let (tx, inbound) = mpsc::channel(1024);
        let writer = match target {
            Target::Quic {
                addr,
                server_name,
                trust,
            } => connect_quic(*addr, server_name, trust, limit, tx).await?,
            Target::WebSocket { url, json } => connect_ws(url, *json, limit, tx).await?,
        };
        Ok(Client {
            writer,
            inbound,
            backlog: VecDeque::new(),
            outbox: Outbox::new(),
            welcome: Welcome {
                version: 0,
                session: airlock_protocol::SessionId(0),
                document: String::new(),
                user: String::new(),
                role: airlock_protocol::Role::Viewer,
                kernel: airlock_protocol::KernelState::Unknown,
                node_version: String::new(),
            },
            next_ref: 1,
            limit,
        })
    }

    /// The node's welcome: negotiated version, session id, role, kernel state.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        match &mut self.writer {
            Writer::Quic { send, .. } => {
                let frame = codec::encode_frame(message, self.limit)?;
                write_quic(send, &frame).await
            }
            Writer::WebSocket { sink, json } => {
                let message = if *json {
                    Message::Text(codec::encode_json(message, self.limit)?.into())
                } else {
                    Message::Binary(codec::encode_frame(message, self.limit)?.into())
                };
                sink.send(message).await.map_err(|err| ClientError::Closed {
                    reason: err.to_string(),
                })
            }
        }
    }

    /// Sends bytes as they are: a raw QUIC stream write, or one binary WebSocket message. For
    /// testing how a node treats bytes no honest client sends.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.writer {
            Writer::Quic { send, .. } => write_quic(send, bytes).await,
            Writer::WebSocket { sink, .. } => sink
                .send(Message::Binary(bytes.to_vec().into()))
                .await
                .map_err(|err| ClientError::Closed {
                    reason: err.to_string(),
                }),
        }
    }

    /// The next message from the node: first those a request helper set aside while it waited,
    /// then the wire. An `ack` passing by removes its update from the outbox (and is still
    /// returned). Cancel-safe.
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        match self.backlog.pop_front() {
            Some(message) => Ok(message),
            None => self.pull().await,
        }
    }

    /// The next message off the wire, with its `ack` applied. Cancel-safe: the only await is
    /// the channel's.
    async fn pull(&mut self) -> Result<ServerMessage, ClientError> {
        let message = match self.inbound.recv().await {
            Some(result) => result?,
            None => {
                return Err(ClientError::Closed {
                    reason: "the node closed the connection".into(),
                });
            }
        };
        if let ServerMessage::Ack(ack) = &message {
            self.outbox.ack(ack.seq);
        }
        Ok(message)
    }

    /// A `client_ref` this connection has not used yet.
    fn fresh_ref(&mut self) -> u64 {
        let client_ref = self.next_ref;
        self.next_ref += 1;
        client_ref
    }

    /// Asks the node to run `code`; returns the reference the node will echo in `Queued`.
    pub async fn execute(&mut self, code: &str) -> Result<u64, ClientError> {
        let client_ref = self.fresh_ref();
        self.send(&ClientMessage::Execute(ExecuteRequest {
            client_ref,
            code: code.to_owned(),
            store_history: true,
        }))
        .await?;
        Ok(client_ref)
    }

    /// Runs `code` and collects its outputs until it is done. Every message received meanwhile,
    /// this run's or others', is shown to `observe` first.
    pub async fn run(
        &mut self,
        code: &str,
        mut observe: impl FnMut(&ServerMessage),
    ) -> Result<RunReport, ClientError> {
        let client_ref = self.execute(code).await?;
        let session = self.welcome.session;
        let mut run = None;
        let mut outputs = Vec::new();
        loop {
            let message = self.recv().await?;
            observe(&message);
            match message {
                ServerMessage::Queued(queued)
                    if queued.session == session && queued.client_ref == client_ref =>
                {
                    run = Some(queued.run);
                }
                ServerMessage::Output(out) if Some(out.run) == run => outputs.push(out.output),
                ServerMessage::Done(done) if Some(done.run) == run => {
                    return Ok(RunReport {
                        run: done.run,
                        outputs,
                        done,
                    });
                }
                ServerMessage::Error(reply)
                    if reply.fatal || reply.client_ref == Some(client_ref) =>
                {
                    return Err(ClientError::Refused(reply));
                }
                _ => {}
            }
        }
    }

    /// Connects like [`Client::connect`], then sends every update of `outbox` again with its
    /// original seq. They stay pending until the node acknowledges them; applying an update
    /// twice is harmless, so resending what the node already stored costs nothing but bytes.
    /// On failure the outbox comes back inside the error.
    pub async fn connect_resuming(
        target: &Target,
        token: &str,
        outbox: Outbox,
    ) -> Result<Client, ResumeFailed> {
        let mut client = match Client::connect(target, token).await {
            Ok(client) => client,
            Err(error) => return Err(ResumeFailed { error, outbox }),
        };
        client.outbox = outbox;
        let resend: Vec<ClientMessage> = client
            .outbox
            .pending()
            .map(|(seq, update)| {
                ClientMessage::Update(ClientUpdate {
                    seq,
                    update: update.clone(),
                })
            })
            .collect();
        for message in &resend {
            if let Err(error) = client.send(message).await {
                return Err(ResumeFailed {
                    error,
                    outbox: client.into_outbox(),
                });
            }
        }
        Ok(client)
    }

    /// y-sync step 1: sends the client's state vector; the node answers `sync_step2` (read it
    /// with [`Client::recv`]).
    pub async fn sync(&mut self, state_vector: Vec<u8>) -> Result<(), ClientError> {
        self.send(&ClientMessage::SyncStep1(SyncStep1 {
            state_vector: state_vector.into(),
        }))
        .await
    }

    /// Sends a local Yjs v1 update and keeps it in the outbox until its `ack`; returns its seq.
    /// The update is recorded before it is sent: if sending fails, it is still pending and goes
    /// out again with [`Client::connect_resuming`].
    pub async fn update(&mut self, update: impl Into<Blob>) -> Result<u64, ClientError> {
        let update = update.into();
        let seq = self.outbox.push(update.clone());
        self.send(&ClientMessage::Update(ClientUpdate { seq, update }))
            .await?;
        Ok(seq)
    }

    /// The updates sent and not yet acknowledged.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Gives up the connection (dead or alive) and keeps its unacknowledged updates, for
    /// [`Client::connect_resuming`].
    pub fn into_outbox(self) -> Outbox {
        self.outbox
    }

    /// Runs `cells` (every stale cell when empty; every code cell again with `replay`). The
    /// answer lists the cells queued, in the order they will start: pass them to
    /// [`Client::follow_runs`].
    pub async fn run_cells(
        &mut self,
        cells: Vec<String>,
        replay: bool,
    ) -> Result<Accepted, ClientError> {
        let client_ref = self.fresh_ref();
        let request = ClientMessage::RunCells(RunCells {
            client_ref,
            cells,
            replay,
        });
        self.request(&request, AwaitedReply::accepted(client_ref))
            .await
    }

    /// Changes cells; with `run`, also runs what the edits made stale (in reactive mode). The
    /// resulting Yjs updates come to every client, this one included, as `update` messages.
    pub async fn edit_cells(
        &mut self,
        edits: Vec<CellEdit>,
        run: bool,
    ) -> Result<Accepted, ClientError> {
        let client_ref = self.fresh_ref();
        let request = ClientMessage::EditCells(EditCells {
            client_ref,
            edits,
            run,
        });
        self.request(&request, AwaitedReply::accepted(client_ref))
            .await
    }

    /// Replaces the document's cells and outputs with a `.ipynb` file's JSON text; the answer
    /// lists the cells created and the repairs made.
    pub async fn import_ipynb(&mut self, ipynb: String) -> Result<Accepted, ClientError> {
        let client_ref = self.fresh_ref();
        let request = ClientMessage::Import(ImportNotebook { client_ref, ipynb });
        self.request(&request, AwaitedReply::accepted(client_ref))
            .await
    }

    /// The document as `.ipynb` JSON text (nbformat 4.5) with its latest outputs.
    pub async fn export_ipynb(&mut self) -> Result<String, ClientError> {
        let client_ref = self.fresh_ref();
        let request = ClientMessage::Export { client_ref };
        let exported = self
            .request(&request, AwaitedReply::exported(client_ref))
            .await?;
        Ok(exported.ipynb)
    }

    /// The cells in document order with their state and dependencies.
    pub async fn graph(&mut self) -> Result<GraphView, ClientError> {
        let client_ref = self.fresh_ref();
        let request = ClientMessage::Graph { client_ref };
        self.request(&request, AwaitedReply::graph(client_ref))
            .await
    }

    /// Switches the document between reactive and lazy execution.
    pub async fn set_mode(&mut self, mode: ExecutionMode) -> Result<Accepted, ClientError> {
        let client_ref = self.fresh_ref();
        let request = ClientMessage::SetMode { client_ref, mode };
        self.request(&request, AwaitedReply::accepted(client_ref))
            .await
    }

    /// Sends `request` and waits up to [`REQUEST_TIMEOUT`] for its answer, keeping everything
    /// else in the backlog. Dropping the future loses nothing: what was read is in the backlog,
    /// and a late answer arrives there too.
    async fn request<T>(
        &mut self,
        request: &ClientMessage,
        awaited: AwaitedReply<T>,
    ) -> Result<T, ClientError> {
        self.send(request).await?;
        let wait = async {
            loop {
                let message = self.pull().await?;
                if let Some(outcome) = awaited.offer(message, &mut self.backlog) {
                    return outcome;
                }
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, wait).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ClientError::Timeout(REQUEST_TIMEOUT)),
        }
    }

    /// Waits until every cell an `accepted` reply of this client queued has finished, following
    /// only the runs that request queued ([`RunFollower::for_request`]). No time limit, as
    /// [`Client::follow_runs`].
    pub async fn follow_accepted(
        &mut self,
        accepted: &Accepted,
        mut observe: impl FnMut(&ServerMessage),
    ) -> Result<Vec<CellRun>, ClientError> {
        let mut follower = RunFollower::for_request(
            accepted.queued.iter().cloned(),
            self.welcome().session,
            accepted.client_ref,
        );
        self.follow(&mut follower, |_, message| observe(message))
            .await?;
        Ok(follower.into_runs())
    }

    /// Waits until every cell in `cells` (typically [`Accepted::queued`]) has finished: its
    /// run's `done` arrived, or it was dropped without running because a cell it needs failed.
    /// Returns one [`CellRun`] per cell, in the order given. Every message read meanwhile is
    /// shown to `observe`.
    ///
    /// There is no time limit, since cells may legitimately run for hours: wrap the call in
    /// `tokio::time::timeout` for one. To interrupt and keep following (Ctrl-C, say), drive a
    /// [`RunFollower`] with [`Client::follow`] instead, which can be cancelled and called again.
    pub async fn follow_runs(
        &mut self,
        cells: &[String],
        mut observe: impl FnMut(&ServerMessage),
    ) -> Result<Vec<CellRun>, ClientError> {
        let mut follower = RunFollower::new(cells.iter().cloned());
        self.follow(&mut follower, |_, message| observe(message))
            .await?;
        Ok(follower.into_runs())
    }

    /// Feeds `follower` every message until it has finished, showing each message to `observe`
    /// after the follower took it. A fatal error ends the wait with [`ClientError::Refused`].
    /// Cancel-safe: the progress lives in `follower`, so calling again resumes.
    pub async fn follow(
        &mut self,
        follower: &mut RunFollower,
        mut observe: impl FnMut(&RunFollower, &ServerMessage),
    ) -> Result<(), ClientError> {
        while !follower.is_finished() {
            let message = self.recv().await?;
            follower.handle(Instant::now(), &message);
            observe(follower, &message);
            if let ServerMessage::Error(reply) = message
                && reply.fatal
            {
                return Err(ClientError::Refused(reply));
            }
        }
        Ok(())
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        match &mut self.writer {
            Writer::Quic {
                connection, send, ..
            } => {
                let _ = send.finish();
                connection.close(quinn::VarInt::from_u32(0), b"bye");
            }
            Writer::WebSocket { sink, .. } => {
                let _ = sink.send(Message::Close(None)).await;
                let _ = sink.close().await;
            }
        }
    }
}

async fn write_quic(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), ClientError> {
    send.write_all(bytes)
        .await
        .map_err(|err| ClientError::Closed {
            reason: err.to_string(),
        })
}

async fn connect_quic(
    addr: SocketAddr,
    server_name: &str,
    trust: &Trust,
    limit: FrameLimit,
    tx: mpsc::Sender<Result<ServerMessage, ClientError>>,
) -> Result<Writer, ClientError> {
    let failed = |reason: String| ClientError::Connect {
        target: format!("quic://{addr}"),
        reason,
    };
    let Trust::Fingerprint(fingerprint) = trust;
    let crypto = pinned::client_config(fingerprint).map_err(failed)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|err| failed(err.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    config.transport_config(Arc::new(transport));
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|err| failed(err.to_string()))?;
    endpoint.set_default_client_config(config);
    let connection = endpoint
        .connect(addr, server_name)
        .map_err(|err| failed(err.to_string()))?
        .await
        .map_err(|err| failed(err.to_string()))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|err| failed(err.to_string()))?;
    tokio::spawn(read_quic(recv, connection.clone(), limit, tx));
    Ok(Writer::Quic {
        _endpoint: endpoint,
        connection,
        send,
    })
}

async fn read_quic(
    mut recv: quinn::RecvStream,
    connection: quinn::Connection,
    limit: FrameLimit,
    tx: mpsc::Sender<Result<ServerMessage, ClientError>>,
) {
    let closed = |connection: &quinn::Connection, fallback: String| {
        let reason = match connection.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => format!(
                "node closed the connection with code {} ({})",
                close.error_code,
                String::from_utf8_lossy(&close.reason)
            ),
            Some(other) => other.to_string(),
            None => fallback,
        };
        ClientError::Closed { reason }
    };
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        if let Err(err) = recv.read_exact(&mut header).await {
            // Give the connection a moment to learn its close reason.
            let _ = tokio::time::timeout(Duration::from_millis(200), connection.closed()).await;
            let _ = tx.send(Err(closed(&connection, err.to_string()))).await;
            return;
        }
        let result = limit.payload_len(header).map_err(ClientError::from);
        let len = match result {
            Ok(len) => len,
            Err(err) => {
                let _ = tx.send(Err(err)).await;
                return;
            }
        };
        payload.resize(len, 0);
        if let Err(err) = recv.read_exact(&mut payload).await {
            let _ = tx.send(Err(closed(&connection, err.to_string()))).await;
            return;
        }
        let message = codec::decode_payload(&payload).map_err(ClientError::from);
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

async fn connect_ws(
    url: &str,
    json: bool,
    limit: FrameLimit,
    tx: mpsc::Sender<Result<ServerMessage, ClientError>>,
) -> Result<Writer, ClientError> {
    let (ws, _) =
        tokio_tungstenite::connect_async(url)
            .await
            .map_err(|err| ClientError::Connect {
                target: url.to_owned(),
                reason: err.to_string(),
            })?;
    if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
        let _ = stream.set_nodelay(true);
    }
    let (sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let decoded = match message {
                Ok(Message::Binary(bytes)) => {
                    codec::decode_whole_frame(&bytes, limit).map_err(ClientError::from)
                }
                Ok(Message::Text(text)) => {
                    codec::decode_json(text.as_str(), limit).map_err(ClientError::from)
                }
                Ok(Message::Close(frame)) => {
                    let reason = match frame {
                        Some(frame) => format!(
                            "node closed the connection with code {} ({})",
                            u16::from(frame.code),
                            frame.reason
                        ),
                        None => "node closed the connection".to_owned(),
                    };
                    let _ = tx.send(Err(ClientError::Closed { reason })).await;
                    return;
                }
                Ok(_) => continue,
                Err(err) => Err(ClientError::Closed {
                    reason: err.to_string(),
                }),
            };
            let failed = decoded.is_err();
            if tx.send(decoded).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Writer::WebSocket { sink, json })
}
