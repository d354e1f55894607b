//! One client connection, whatever its transport: the hello handshake, token checks, role checks,
//! and relaying between the client and the document actor.
//!
//! Transports supply two halves: a reader task that decodes frames into an [`Inbound`] channel
//! (so decoding never sits inside a `select!` and stays cancel-safe), and a [`FrameWriter`].
//! A decoding failure or an oversized frame ends only this connection, with a fatal error
//! telling the client why; the node keeps serving the others.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_protocol::{
    ClientMessage, CodecError, ErrorCode, ErrorReply, Hello, Role, ServerMessage, TokenError,
    VersionRange, Welcome, token,
};
use ed25519_dalek::VerifyingKey;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info};

use crate::document::actor::{Broadcast, DocumentHandle, Joined};

/// How long a client may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The two encodings a client may use; the node answers in the form of the client's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Length-prefixed MessagePack frames (QUIC, binary WebSocket messages).
    Binary,
    /// One JSON object per WebSocket text message.
    Json,
}

/// What a transport's reader task hands to the session.
pub type Inbound = Result<(ClientMessage, Form), ReadError>;

/// Why a transport stopped reading.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("connection failed: {0}")]
    Transport(String),
}

/// The sending half of a transport.
pub trait FrameWriter: Send {
    /// Sends one message in the given form.
    fn send(
        &mut self,
        message: &ServerMessage,
        form: Form,
    ) -> impl std::future::Future<Output = Result<(), WriteError>> + Send;

    /// Sends several messages with as few writes as the transport allows: events that are
    /// already waiting go out together (one QUIC stream write, one WebSocket flush).
    fn send_batch(
        &mut self,
        messages: &[&ServerMessage],
        form: Form,
    ) -> impl std::future::Future<Output = Result<(), WriteError>> + Send;

    /// Flushes and closes the connection; `code` is the fatal error that ended it, if one did,
    /// for transports that carry a close code.
    fn close(&mut self, code: Option<ErrorCode>) -> impl std::future::Future<Output = ()> + Send;
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("connection failed: {0}")]
    Transport(String),
}

/// Encodes `message` with `encode`. A message over the connection's frame limit is replaced by
/// a non-fatal `frame_too_large` notice saying what was skipped: no single message (a huge
/// output, say) can end a client's session.
pub(crate) fn encode_or_skip<T>(
    message: &ServerMessage,
    encode: impl Fn(&ServerMessage) -> Result<T, CodecError>,
) -> Result<T, CodecError> {
    match encode(message) {
        Err(CodecError::TooLarge { len, max }) => {
            metrics::counter!("airlock_node_messages_skipped_total").increment(1);
            let notice = ServerMessage::Error(ErrorReply {
                code: ErrorCode::FrameTooLarge,
                message: format!(
                    "the node skipped a message of {len} bytes: it is over this connection's \
                     frame limit of {max} bytes"
                ),
                client_ref: None,
                fatal: false,
            });
            encode(&notice)
        }
        other => other,
    }
}

/// What every session of this node needs to check a client: the document it serves, the key
/// tokens are signed with, and the allocation epoch.
#[derive(Debug)]
pub struct Gate {
    pub document: String,
    pub epoch: u64,
    pub token_key: VerifyingKey,
}

impl Gate {
    /// Checks a hello at `now_unix` and returns the negotiated version and the token's claims.
    pub fn admit(&self, hello: &Hello, now_unix: u64) -> Result<(u32, token::Claims), ErrorReply> {
        let version = VersionRange::current()
            .negotiate(hello.versions)
            .ok_or_else(|| {
                let ours = VersionRange::current();
                ErrorReply::fatal(
                    ErrorCode::VersionUnsupported,
                    format!(
                        "this node speaks protocol versions {}..={}, the client {}..={}; upgrade \
                         the older side",
                        ours.min, ours.max, hello.versions.min, hello.versions.max
                    ),
                )
            })?;
        let claims = token::verify(&hello.token, &self.token_key, now_unix)
            .and_then(|claims| {
                claims
                    .check_for(&self.document, self.epoch)
                    .map(|()| claims)
            })
            .map_err(|err| {
                let code = match err {
                    TokenError::Malformed(_) | TokenError::BadSignature => ErrorCode::TokenInvalid,
                    TokenError::Expired { .. } => ErrorCode::TokenExpired,
                    TokenError::WrongDocument { .. } => ErrorCode::WrongDocument,
                    TokenError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
                };
                ErrorReply::fatal(code, err.to_string())
            })?;
        Ok((version, claims))
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn refuse(code: ErrorCode) {
    metrics::counter!("airlock_node_refusals_total", "code" => code.as_str()).increment(1);
}

/// Serves one connection until the client leaves, the connection fails or the node stops.
pub async fn run<W: FrameWriter>(
    transport: &'static str,
    gate: Arc<Gate>,
    document: DocumentHandle,
    mut inbound: mpsc::Receiver<Inbound>,
    mut writer: W,
) {
    metrics::counter!("airlock_node_connections_total", "transport" => transport).increment(1);
    let (hello, form) = match tokio::time::timeout(HELLO_TIMEOUT, inbound.recv()).await {
        Ok(Some(Ok((ClientMessage::Hello(hello), form)))) => (hello, form),
        Ok(Some(Ok((_, form)))) => {
            let reply = ErrorReply::fatal(
                ErrorCode::HelloExpected,
                "the first message on a connection must be a hello",
            );
            return fail(&mut writer, reply, form).await;
        }
        Ok(Some(Err(err))) => return fail_read(&mut writer, err, Form::Binary).await,
        Ok(None) => return,
        Err(_) => {
            let reply = ErrorReply::fatal(
                ErrorCode::HelloExpected,
                format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
            );
            return fail(&mut writer, reply, Form::Binary).await;
        }
    };
    let (version, claims) = match gate.admit(&hello, now_unix()) {
        Ok(admitted) => admitted,
        Err(reply) => {
            info!(transport, code = %reply.code, client = %hello.client, "refused a client");
            return fail(&mut writer, reply, form).await;
        }
    };
    let joined = match document.join(claims.user.clone(), claims.role).await {
        Ok(joined) => joined,
        Err(reply) => return fail(&mut writer, reply, form).await,
    };
    let Joined {
        session,
        kernel,
        events,
        mut direct,
    } = joined;
    let welcome = ServerMessage::Welcome(Welcome {
        version,
        session,
        document: gate.document.clone(),
        user: claims.user.clone(),
        role: claims.role,
        kernel: kernel.state(),
        node_version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    if writer.send(&welcome, form).await.is_ok() {
        let mut relay = Relay {
            document: &document,
            session,
            role: claims.role,
            form,
        };
        relay
            .serve(&mut inbound, events, &mut direct, &mut writer)
            .await;
    }
    document.leave(session);
}

async fn fail<W: FrameWriter>(writer: &mut W, reply: ErrorReply, form: Form) {
    refuse(reply.code);
    let code = reply.code;
    let _ = writer.send(&ServerMessage::Error(reply), form).await;
    writer.close(Some(code)).await;
}

async fn fail_read<W: FrameWriter>(writer: &mut W, err: ReadError, form: Form) {
    match err {
        ReadError::Codec(err) => {
            let reply = ErrorReply::fatal(err.code(), err.to_string());
            fail(writer, reply, form).await;
        }
        ReadError::Transport(reason) => debug!(%reason, "client connection failed"),
    }
}

/// The most queued events one write carries.
const MAX_BATCH: usize = 64;

fn lagged_reply(missed: u64) -> ErrorReply {
    ErrorReply::fatal(
        ErrorCode::Busy,
        format!("this client fell {missed} messages behind the document; reconnect to catch up"),
    )
}

/// The fatal error among `messages`, if one ends the connection.
fn fatal_code<'a>(messages: impl IntoIterator<Item = &'a ServerMessage>) -> Option<ErrorCode> {
    messages.into_iter().find_map(|message| match message {
        ServerMessage::Error(reply) if reply.fatal => Some(reply.code),
        _ => None,
    })
}

/// The steady state of a session: client requests go to the document, its events to the client.
struct Relay<'a> {
    document: &'a DocumentHandle,
    session: airlock_protocol::SessionId,
    role: Role,
    form: Form,
}

impl Relay<'_> {
    async fn serve<W: FrameWriter>(
        &mut self,
        inbound: &mut mpsc::Receiver<Inbound>,
        mut events: broadcast::Receiver<Broadcast>,
        direct: &mut mpsc::UnboundedReceiver<ServerMessage>,
        writer: &mut W,
    ) {
        loop {
            tokio::select! {
                request = inbound.recv() => match request {
                    Some(Ok((message, _))) => {
                        if let Some(reply) = self.handle(message).await {
                            let fatal = fatal_code([&reply]);
                            if writer.send(&reply, self.form).await.is_err() {
                                return;
                            }
                            if let Some(code) = fatal {
                                return writer.close(Some(code)).await;
                            }
                        }
                    }
                    Some(Err(err)) => return fail_read(writer, err, self.form).await,
                    None => return,
                },
                Some(message) = direct.recv() => {
                    let mut batch = vec![message];
                    while batch.len() < MAX_BATCH {
                        match direct.try_recv() {
                            Ok(message) => batch.push(message),
                            Err(_) => break,
                        }
                    }
                    let refs: Vec<&ServerMessage> = batch.iter().collect();
                    if writer.send_batch(&refs, self.form).await.is_err() {
                        return;
                    }
                }
                event = events.recv() => match event {
                    Ok(event) => {
                        // Take whatever else is already waiting, so events that arrive together
                        // (a status and a run's end, say) leave in one write.
                        let mut batch = vec![event];
                        let mut lagged = None;
                        while batch.len() < MAX_BATCH {
                            match events.try_recv() {
                                Ok(event) => batch.push(event),
                                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                                    lagged = Some(missed);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        // A client's own edits are not echoed back to it.
                        let mine = Some(self.session);
                        let refs: Vec<&ServerMessage> = batch
                            .iter()
                            .filter(|event| event.origin != mine)
                            .map(|event| &event.message)
                            .collect();
                        if !refs.is_empty() && writer.send_batch(&refs, self.form).await.is_err() {
                            return;
                        }
                        if let Some(code) = fatal_code(refs) {
                            return writer.close(Some(code)).await;
                        }
                        if let Some(missed) = lagged {
                            return fail(writer, lagged_reply(missed), self.form).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return fail(writer, lagged_reply(missed), self.form).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        writer.close(None).await;
                        return;
                    }
                },
            }
        }
    }

    /// Handles one request; returns the reply meant for this client only, if any.
    async fn handle(&mut self, message: ClientMessage) -> Option<ServerMessage> {
        let client_ref = request_ref(&message);
        let refusal = match &message {
            ClientMessage::Ping { nonce } => return Some(ServerMessage::Pong { nonce: *nonce }),
            ClientMessage::Hello(_) => {
                return Some(ServerMessage::Error(ErrorReply::for_request(
                    ErrorCode::HelloExpected,
                    None,
                    "this session already said hello",
                )));
            }
            ClientMessage::Unknown => {
                return Some(ServerMessage::Error(ErrorReply::for_request(
                    ErrorCode::UnknownMessage,
                    None,
                    "this node does not know that message type; check the protocol version",
                )));
            }
            ClientMessage::Execute(_) if !self.role.can_execute() => Some("execute code"),
            ClientMessage::RunCells(_) if !self.role.can_execute() => Some("run cells"),
            ClientMessage::Interrupt if !self.role.can_execute() => Some("interrupt the kernel"),
            ClientMessage::Restart if !self.role.can_execute() => Some("restart the kernel"),
            ClientMessage::Update(_) | ClientMessage::EditCells(_) if !self.role.can_edit() => {
                Some("edit the document")
            }
            ClientMessage::Import(_) if !self.role.can_edit() => Some("import a notebook"),
            ClientMessage::SetMode { .. } if !self.role.can_edit() => {
                Some("change the execution mode")
            }
            _ => None,
        };
        if let Some(what) = refusal {
            refuse(ErrorCode::Forbidden);
            return Some(ServerMessage::Error(ErrorReply::for_request(
                ErrorCode::Forbidden,
                client_ref,
                format!(
                    "a {} may not {what}; ask the document's owner for editor access",
                    self.role
                ),
            )));
        }
        match self.document.request(self.session, message).await {
            Ok(reply) => reply,
            Err(reply) => Some(ServerMessage::Error(reply)),
        }
    }
}

/// The `client_ref` a request carries, for its error reply.
fn request_ref(message: &ClientMessage) -> Option<u64> {
    match message {
        ClientMessage::Execute(execute) => Some(execute.client_ref),
        ClientMessage::RunCells(run) => Some(run.client_ref),
        ClientMessage::EditCells(edit) => Some(edit.client_ref),
        ClientMessage::Import(import) => Some(import.client_ref),
        ClientMessage::SetMode { client_ref, .. }
        | ClientMessage::Export { client_ref }
        | ClientMessage::Graph { client_ref } => Some(*client_ref),
        _ => None,
    }
}
