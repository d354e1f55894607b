//! The document protocol's messages: what a client says to its document's node and what the node
//! says back.
//!
//! Every enum carries an explicit `type` tag and an `Unknown` fallback, so a peer one minor
//! version ahead can add a message without breaking an older one: the older side answers an
//! unknown request with [`ErrorCode::UnknownMessage`] and ignores an unknown event. Nothing here
//! does IO; framing lives in [`crate::codec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::document::*;
use crate::token::Role;
use crate::version::VersionRange;

/// A MIME bundle as Jupyter sends it: `text/plain`, `image/png`, … to a JSON value (a string for
/// text and base64 images, an object for JSON types).
pub type MimeBundle = BTreeMap<String, serde_json::Value>;

/// Free-form metadata that travels beside a MIME bundle.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Identifies one client connection on one node. Assigned by the node in [`Welcome`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct SessionId(pub u64);

/// Identifies one execution on one node. Assigned by the node when it queues the request, so
/// every client of the document can attribute outputs, whoever asked for the run.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct RunId(pub u64);

/// What a client sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message on every connection; nothing else is accepted before it.
    Hello(Hello),
    /// Run code in the document's kernel.
    Execute(ExecuteRequest),
    /// Interrupt whatever the kernel is running (SIGINT to the kernel, as Jupyter does).
    Interrupt,
    /// Restart the kernel: its state is lost, queued runs are aborted.
    Restart,
    /// Liveness probe; the node answers [`ServerMessage::Pong`] with the same nonce.
    Ping { nonce: u64 },
    /// y-sync step 1: the client's state vector; answered with `sync_step2`.
    SyncStep1(SyncStep1),
    /// A local edit; answered with `ack` once durable, forwarded to the others at once.
    Update(ClientUpdate),
    /// Presence and cursors, relayed to the other clients.
    Awareness(AwarenessUpdate),
    /// Runs cells (or every stale cell) in graph order; answered with `accepted`.
    RunCells(RunCells),
    /// Changes cells without a Yjs library; answered with `accepted`.
    EditCells(EditCells),
    /// Switches between reactive and lazy execution; answered with `accepted`.
    SetMode {
        client_ref: u64,
        mode: ExecutionMode,
    },
    /// Replaces the document with a `.ipynb` file; answered with `accepted`.
    Import(ImportNotebook),
    /// Asks for the document as a `.ipynb` file; answered with `exported`.
    Export { client_ref: u64 },
    /// Asks for the cells, their state and their dependencies; answered with `graph`.
    Graph { client_ref: u64 },
    /// A message type from a newer protocol version.
    #[serde(other)]
    Unknown,
}

/// Opens a session: the protocol versions the client speaks and its capability token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub versions: VersionRange,
    /// A capability token as minted by the coordinator (or `airlock token`).
    pub token: String,
    /// Free text naming the client, for logs ("airlock-cli/0.1").
    #[serde(default)]
    pub client: String,
}

/// A request to run code.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecuteRequest {
    /// Chosen by the client and echoed in [`RunQueued`], so it can match the node's [`RunId`] to
    /// its own request.
    pub client_ref: u64,
    pub code: String,
    /// Whether the kernel records this run in its history and bumps `execution_count`.
    #[serde(default = "yes")]
    pub store_history: bool,
}

fn yes() -> bool {
    true
}

/// What the node sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to a valid [`Hello`].
    Welcome(Welcome),
    /// A run was accepted and queued; sent to every client of the document.
    Queued(RunQueued),
    /// An output of a run; sent to every client of the document.
    Output(RunOutput),
    /// A run ended; sent to every client of the document.
    Done(RunDone),
    /// The kernel's execution state changed.
    Kernel(KernelStatus),
    /// A refusal or failure. When `fatal`, the node closes the connection after sending it.
    Error(ErrorReply),
    /// Answer to [`ClientMessage::Ping`].
    Pong {
        nonce: u64,
    },
    SyncStep2(SyncStep2),
    /// An edit by another client or by the node.
    Update(DocUpdate),
    /// The client's update `seq` is durable.
    Ack(UpdateAck),
    Awareness(AwarenessUpdate),
    /// A request that changed or scheduled something was accepted.
    Accepted(Accepted),
    /// A cell's state changed.
    Cell(CellStatus),
    /// A cell's latest outputs (sent on joining).
    CellOutputs(CellOutputs),
    Graph(GraphView),
    Exported(Exported),
    /// A message type from a newer protocol version.
    #[serde(other)]
    Unknown,
}

/// The node's answer to a valid hello.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u32,
    pub session: SessionId,
    pub document: String,
    pub user: String,
    pub role: Role,
    /// The kernel's state at the moment the client joined.
    pub kernel: KernelState,
    /// The node's software version, for bug reports.
    pub node_version: String,
}

/// A run entered the kernel's queue.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RunQueued {
    pub run: RunId,
    /// The session that asked for the run; equal to the receiver's own session id when it did.
    pub session: SessionId,
    /// The requester's [`ExecuteRequest::client_ref`].
    pub client_ref: u64,
    pub user: String,
    pub code: String,
    /// The cell this run executes, for runs the cell graph scheduled (absent for `execute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
}

/// One output of a run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunOutput {
    pub run: RunId,
    pub output: Output,
}

/// The end of a run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RunDone {
    pub run: RunId,
    pub status: RunStatus,
    /// The kernel's execution counter after this run, when the kernel reported one.
    pub execution_count: Option<u32>,
}

/// How a run ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The code ran to the end.
    Ok,
    /// The code raised; the traceback came as an [`Output::Error`].
    Error,
    /// The run never started or was cut short: an earlier run failed, the kernel was
    /// interrupted, restarted or died.
    Aborted,
    #[serde(other)]
    Unknown,
}

/// Outputs as Jupyter defines them (nbformat 4 output types).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "output_type", rename_all = "snake_case")]
pub enum Output {
    Stream {
        name: StreamName,
        text: String,
    },
    DisplayData {
        data: MimeBundle,
        #[serde(default)]
        metadata: Metadata,
        /// Set when the kernel may later update this display in place.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_id: Option<String>,
    },
    UpdateDisplayData {
        data: MimeBundle,
        #[serde(default)]
        metadata: Metadata,
        display_id: String,
    },
    ExecuteResult {
        execution_count: u32,
        data: MimeBundle,
        #[serde(default)]
        metadata: Metadata,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
    ClearOutput {
        wait: bool,
    },
    #[serde(other)]
    Unknown,
}

impl Output {
    /// What a person reading a terminal sees of this output: a stream's text, the `text/plain`
    /// of a result or display, an error's name and value followed by its traceback; nothing
    /// for the rest.
    pub fn text(&self) -> String {
        match self {
            Output::Stream { text, .. } => text.clone(),
            Output::ExecuteResult { data, .. }
            | Output::DisplayData { data, .. }
            | Output::UpdateDisplayData { data, .. } => data
                .get("text/plain")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            Output::Error {
                ename,
                evalue,
                traceback,
            } => format!("{ename}: {evalue}\n{}\n", traceback.join("\n")),
            Output::ClearOutput { .. } | Output::Unknown => String::new(),
        }
    }

    /// [`Output::text`] of each output, one after the other.
    pub fn text_of(outputs: &[Output]) -> String {
        outputs.iter().map(Output::text).collect()
    }
}

/// Which standard stream a [`Output::Stream`] chunk came from.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    Stdout,
    Stderr,
}

/// The kernel's state as clients see it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KernelStatus {
    Starting,
    Idle,
    Busy,
    Restarting,
    /// The kernel is gone; `cause` says why. A restart brings a fresh one.
    Dead {
        cause: DeathCause,
    },
    /// A state from a newer protocol version.
    #[serde(other)]
    Unknown,
}

impl KernelStatus {
    /// The state without its cause, for places that only need the label.
    pub fn state(&self) -> KernelState {
        match self {
            KernelStatus::Starting => KernelState::Starting,
            KernelStatus::Idle => KernelState::Idle,
            KernelStatus::Busy => KernelState::Busy,
            KernelStatus::Restarting => KernelState::Restarting,
            KernelStatus::Dead { .. } => KernelState::Dead,
            KernelStatus::Unknown => KernelState::Unknown,
        }
    }
}

/// The label of a [`KernelStatus`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KernelState {
    Starting,
    Idle,
    Busy,
    Restarting,
    Dead,
    #[serde(other)]
    Unknown,
}

/// Why a kernel died.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeathCause {
    /// The process exited by itself.
    Exited { code: i32 },
    /// The process was killed by a signal (`name` is e.g. `SIGKILL`).
    Signaled { signal: i32, name: String },
    /// The process ran out of its memory limit and the kernel's OOM killer ended it.
    OutOfMemory { limit_bytes: Option<u64> },
    /// The process is alive but stopped answering heartbeats.
    HeartbeatLost { silent_ms: u64 },
    /// The kernel could not be started at all.
    StartFailed { reason: String },
    /// The kernel broke a limit of its channels to the node (a ZeroMQ frame or message over
    /// the size limit, say); the node dropped it and carries on. `channel` is `shell`, `iopub`
    /// or `control`.
    ChannelViolated { channel: String, reason: String },
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for DeathCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeathCause::Exited { code } => write!(f, "kernel exited with status {code}"),
            DeathCause::Signaled { name, .. } => write!(f, "kernel was killed by {name}"),
            DeathCause::OutOfMemory {
                limit_bytes: Some(limit),
            } => write!(
                f,
                "kernel died: out of memory (limit {})",
                human_bytes(*limit)
            ),
            DeathCause::OutOfMemory { limit_bytes: None } => {
                write!(f, "kernel died: out of memory")
            }
            DeathCause::HeartbeatLost { silent_ms } => {
                write!(f, "kernel stopped answering heartbeats for {silent_ms} ms")
            }
            DeathCause::StartFailed { reason } => write!(f, "kernel failed to start: {reason}"),
            DeathCause::ChannelViolated { channel, reason } => write!(
                f,
                "kernel was stopped: it broke the limits of its {channel} channel ({reason})"
            ),
            DeathCause::Unknown => write!(f, "kernel died for a reason this client does not know"),
        }
    }
}

/// `1073741824` → `1 GiB`, the way limits are written in config.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024 && value.is_multiple_of(1024) && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

/// A typed refusal or failure.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    /// What happened and what to do, for a person.
    pub message: String,
    /// The request this answers, when it answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ref: Option<u64>,
    /// The node closes the connection after a fatal error.
    pub fatal: bool,
}

/// Machine-readable error codes. Stable across versions; new codes may be added.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Bytes that do not decode as a frame or message.
    BadFrame,
    /// A frame over the negotiated maximum size.
    FrameTooLarge,
    /// No protocol version in common.
    VersionUnsupported,
    /// Something other than a hello came first, or a second hello came.
    HelloExpected,
    /// The token is malformed or its signature does not verify.
    TokenInvalid,
    /// The token's expiry has passed.
    TokenExpired,
    /// The token names another document.
    WrongDocument,
    /// The token was issued for an older allocation of this document.
    StaleEpoch,
    /// The role in the token may not do this (a viewer executing, say).
    Forbidden,
    /// The kernel is dead or restarting and cannot take the request now.
    KernelUnavailable,
    /// The node is at its limit of connections or queued runs.
    Busy,
    /// The peer sent a message type this node does not know.
    UnknownMessage,
    /// A bug or an unexpected failure inside the node.
    Internal,
    /// A newer owner claimed the document (its store refused this node's write): ask the
    /// coordinator for a new session.
    DocumentMoved,
    /// A well-formed request the document cannot honour (an unknown cell, a cell that cannot
    /// run, a bad update); the message says why. Not fatal.
    BadRequest,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire (`"token_expired"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::VersionUnsupported => "version_unsupported",
            ErrorCode::HelloExpected => "hello_expected",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongDocument => "wrong_document",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::KernelUnavailable => "kernel_unavailable",
            ErrorCode::Busy => "busy",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::Internal => "internal",
            ErrorCode::DocumentMoved => "document_moved",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl ErrorCode {
    /// The QUIC application error code a node closes a connection with after this error. Zero
    /// is a clean close; codes never change meaning.
    pub fn quic_code(self) -> u32 {
        match self {
            ErrorCode::BadFrame => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::VersionUnsupported => 3,
            ErrorCode::HelloExpected => 4,
            ErrorCode::TokenInvalid => 5,
            ErrorCode::TokenExpired => 6,
            ErrorCode::WrongDocument => 7,
            ErrorCode::StaleEpoch => 8,
            ErrorCode::Forbidden => 9,
            ErrorCode::KernelUnavailable => 10,
            ErrorCode::Busy => 11,
            ErrorCode::UnknownMessage => 12,
            ErrorCode::Internal => 13,
            ErrorCode::Unknown => 14,
            ErrorCode::DocumentMoved => 15,
            ErrorCode::BadRequest => 16,
        }
    }

    /// The WebSocket close code (RFC 6455 §7.4) a node closes with after this error.
    pub fn websocket_close_code(self) -> u16 {
        match self {
            ErrorCode::FrameTooLarge => 1009,
            ErrorCode::BadFrame | ErrorCode::HelloExpected | ErrorCode::UnknownMessage => 1002,
            ErrorCode::Internal => 1011,
            ErrorCode::Busy => 1013,
            _ => 1008,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ErrorReply {
    /// An error that ends the connection.
    pub fn fatal(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
            client_ref: None,
            fatal: true,
        }
    }

    /// An error that answers one request; the connection stays open.
    pub fn for_request(
        code: ErrorCode,
        client_ref: Option<u64>,
        message: impl Into<String>,
    ) -> Self {
        ErrorReply {
            code,
            message: message.into(),
            client_ref,
            fatal: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn death_cause_reads_like_the_spec() {
        let oom = DeathCause::OutOfMemory {
            limit_bytes: Some(1 << 30),
        };
        assert_eq!(oom.to_string(), "kernel died: out of memory (limit 1 GiB)");
        let killed = DeathCause::Signaled {
            signal: 9,
            name: "SIGKILL".into(),
        };
        assert_eq!(killed.to_string(), "kernel was killed by SIGKILL");
        assert_eq!(human_bytes(1536), "1536 B");
    }

    #[test]
    fn unknown_variants_fall_back() {
        let msg: ClientMessage = serde_json::from_str(r#"{"type":"teleport"}"#).unwrap();
        assert_eq!(msg, ClientMessage::Unknown);
        let msg: ServerMessage = serde_json::from_str(r#"{"type":"hologram"}"#).unwrap();
        assert_eq!(msg, ServerMessage::Unknown);
        let code: ErrorCode = serde_json::from_str(r#""quota_exceeded""#).unwrap();
        assert_eq!(code, ErrorCode::Unknown);
    }

    #[test]
    fn an_outputs_text_is_what_a_terminal_shows() {
        let mut data = MimeBundle::new();
        data.insert("text/plain".into(), serde_json::json!("42"));
        data.insert("image/png".into(), serde_json::json!("iVBOR"));
        let outputs = [
            Output::Stream {
                name: StreamName::Stdout,
                text: "hi\n".into(),
            },
            Output::ExecuteResult {
                execution_count: 1,
                data,
                metadata: Metadata::default(),
            },
            Output::Error {
                ename: "ZeroDivisionError".into(),
                evalue: "division by zero".into(),
                traceback: vec!["line 1".into()],
            },
            Output::ClearOutput { wait: false },
        ];
        assert_eq!(
            Output::text_of(&outputs),
            "hi\n42ZeroDivisionError: division by zero\nline 1\n"
        );
    }

    #[test]
    fn error_code_strings_match_serde() {
        for code in [
            ErrorCode::BadFrame,
            ErrorCode::FrameTooLarge,
            ErrorCode::TokenExpired,
            ErrorCode::Forbidden,
            ErrorCode::KernelUnavailable,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
