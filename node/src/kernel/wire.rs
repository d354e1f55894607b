//! Decoding of the kernel messages the bridge acts on, straight from the JSON frames of a message
//! whose signature was already checked.
//!
//! Only the fields the [`super::session`] needs are read, and outputs are decoded directly into
//! `airlock_protocol` types, so MIME bundles pass through untouched (no detour through typed media
//! that could drop or reject a bundle). Unknown message types decode to [`Body::Ignored`] rather
//! than failing, so a newer kernel cannot wedge the bridge. No IO and no signature checks here:
//! the driver receives and verifies frames, this module only reads them.

use std::borrow::Cow;

use airlock_protocol::{MimeBundle, Output, RunStatus, StreamName};
use serde::Deserialize;

/// The parts of a message the session uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming<'a> {
    /// `msg_id` of the request this message answers or was caused by; absent for messages the
    /// kernel sends on its own (such as `iopub_welcome`).
    pub parent: Option<Cow<'a, str>>,
    pub body: Body,
}

/// What a message says, reduced to what the session acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// An iopub `status` message.
    Status(Activity),
    /// An iopub output: `stream`, `display_data`, `update_display_data`, `execute_result`,
    /// `error` or `clear_output`.
    Output(Output),
    /// A shell `execute_reply`.
    ExecuteReply {
        status: RunStatus,
        /// Absent on aborted runs, which never reached the interpreter.
        execution_count: Option<u32>,
    },
    /// A shell `kernel_info_reply`: the kernel is serving requests.
    KernelInfoReply,
    /// A control `shutdown_reply`.
    ShutdownReply,
    /// A message the bridge does not act on: `execute_input`, comms, `iopub_welcome`, and any
    /// type it does not know.
    Ignored,
}

/// The kernel's `execution_state` as reported on iopub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Busy,
    Idle,
    /// `starting` and anything else; the bridge tracks start-up itself.
    Other,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "a Jupyter message needs at least 4 JSON frames (header, parent, metadata, content), got {0}"
    )]
    MissingFrames(usize),
    #[error(
        "the {frame} frame of a kernel message is not valid JSON of the expected shape: {source}"
    )]
    Frame {
        frame: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the content of a `{msg_type}` message from the kernel has an unexpected shape: {source}"
    )]
    Content {
        msg_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("an `update_display_data` message from the kernel carries no display_id")]
    MissingDisplayId,
}

/// Decodes the JSON frames (`header`, `parent_header`, `metadata`, `content`, buffers…) of one
/// message. Borrows the parent's `msg_id` from the frame instead of copying it.
pub fn decode<B: AsRef<[u8]>>(frames: &[B]) -> Result<Incoming<'_>, DecodeError> {
    let [header, parent, _metadata, content, ..] = frames else {
        return Err(DecodeError::MissingFrames(frames.len()));
    };
    let header: HeaderFields<'_> =
        serde_json::from_slice(header.as_ref()).map_err(|source| DecodeError::Frame {
            frame: "header",
            source,
        })?;
    let parent: ParentFields<'_> =
        serde_json::from_slice(parent.as_ref()).map_err(|source| DecodeError::Frame {
            frame: "parent_header",
            source,
        })?;
    let body = decode_body(&header.msg_type, content.as_ref())?;
    Ok(Incoming {
        parent: parent.msg_id,
        body,
    })
}

fn decode_body(msg_type: &str, content: &[u8]) -> Result<Body, DecodeError> {
    fn parse<'de, T: Deserialize<'de>>(
        msg_type: &str,
        content: &'de [u8],
    ) -> Result<T, DecodeError> {
        serde_json::from_slice(content).map_err(|source| DecodeError::Content {
            msg_type: msg_type.to_owned(),
            source,
        })
    }
    let body = match msg_type {
        "status" => {
            let status: StatusContent<'_> = parse(msg_type, content)?;
            Body::Status(match status.execution_state.as_ref() {
                "busy" => Activity::Busy,
                "idle" => Activity::Idle,
                _ => Activity::Other,
            })
        }
        "stream" => {
            let stream: StreamContent = parse(msg_type, content)?;
            Body::Output(Output::Stream {
                name: stream.name,
                text: stream.text,
            })
        }
        "display_data" => {
            let display: DisplayContent = parse(msg_type, content)?;
            Body::Output(Output::DisplayData {
                data: display.data,
                metadata: display.metadata,
                display_id: display.transient.and_then(|t| t.display_id),
            })
        }
        "update_display_data" => {
            let display: DisplayContent = parse(msg_type, content)?;
            let display_id = display
                .transient
                .and_then(|t| t.display_id)
                .ok_or(DecodeError::MissingDisplayId)?;
            Body::Output(Output::UpdateDisplayData {
                data: display.data,
                metadata: display.metadata,
                display_id,
            })
        }
        "execute_result" => {
            let result: ExecuteResultContent = parse(msg_type, content)?;
            Body::Output(Output::ExecuteResult {
                execution_count: clamp_count(result.execution_count.unwrap_or(0)),
                data: result.data,
                metadata: result.metadata,
            })
        }
        "error" => {
            let error: ErrorContent = parse(msg_type, content)?;
            Body::Output(Output::Error {
                ename: error.ename,
                evalue: error.evalue,
                traceback: error.traceback,
            })
        }
        "clear_output" => {
            let clear: ClearContent = parse(msg_type, content)?;
            Body::Output(Output::ClearOutput { wait: clear.wait })
        }
        "execute_reply" => {
            let reply: ExecuteReplyContent<'_> = parse(msg_type, content)?;
            let status = match reply.status.as_ref() {
                "ok" => RunStatus::Ok,
                "error" => RunStatus::Error,
                "aborted" => RunStatus::Aborted,
                _ => RunStatus::Unknown,
            };
            let execution_count = match status {
                RunStatus::Aborted => None,
                _ => reply.execution_count.map(clamp_count),
            };
            Body::ExecuteReply {
                status,
                execution_count,
            }
        }
        "kernel_info_reply" => Body::KernelInfoReply,
        "shutdown_reply" => Body::ShutdownReply,
        _ => Body::Ignored,
    };
    Ok(body)
}

/// Execution counts are small; a kernel that reports one past `u32::MAX` gets the maximum.
fn clamp_count(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[derive(Deserialize)]
struct HeaderFields<'a> {
    #[serde(borrow)]
    msg_type: Cow<'a, str>,
}

/// The parent header is `{}` when the message answers nothing.
#[derive(Deserialize)]
struct ParentFields<'a> {
    #[serde(borrow, default)]
    msg_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StatusContent<'a> {
    #[serde(borrow)]
    execution_state: Cow<'a, str>,
}

#[derive(Deserialize)]
struct StreamContent {
    name: StreamName,
    text: String,
}

#[derive(Deserialize)]
struct DisplayContent {
    data: MimeBundle,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    transient: Option<Transient>,
}

#[derive(Deserialize)]
struct Transient {
    #[serde(default)]
    display_id: Option<String>,
}

#[derive(Deserialize)]
struct ExecuteResultContent {
    #[serde(default)]
    execution_count: Option<u64>,
    data: MimeBundle,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorContent {
    ename: String,
    evalue: String,
    #[serde(default)]
    traceback: Vec<String>,
}

#[derive(Deserialize)]
struct ClearContent {
    #[serde(default)]
    wait: bool,
}

#[derive(Deserialize)]
struct ExecuteReplyContent<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(default)]
    execution_count: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frames(msg_type: &str, parent: Option<&str>, content: serde_json::Value) -> Vec<Vec<u8>> {
        let parent = match parent {
            Some(id) => json!({ "msg_id": id, "msg_type": "execute_request" }),
            None => json!({}),
        };
        vec![
            serde_json::to_vec(&json!({ "msg_id": "m", "msg_type": msg_type, "session": "s" }))
                .unwrap(),
            serde_json::to_vec(&parent).unwrap(),
            b"{}".to_vec(),
            serde_json::to_vec(&content).unwrap(),
        ]
    }

    fn body(msg_type: &str, content: serde_json::Value) -> Body {
        let frames = frames(msg_type, Some("p"), content);
        let incoming = decode(&frames).unwrap();
        assert_eq!(incoming.parent.as_deref(), Some("p"));
        incoming.body
    }

    #[test]
    fn outputs_decode_into_protocol_types() {
        assert_eq!(
            body("stream", json!({ "name": "stderr", "text": "oops\n" })),
            Body::Output(Output::Stream {
                name: StreamName::Stderr,
                text: "oops\n".into()
            })
        );
        let Body::Output(Output::DisplayData {
            data, display_id, ..
        }) = body(
            "display_data",
            json!({
                "data": { "text/html": "<b>hi</b>", "application/x-custom": { "a": [1] } },
                "metadata": {},
                "transient": { "display_id": "d1" }
            }),
        )
        else {
            panic!("not display data")
        };
        assert_eq!(data["text/html"], json!("<b>hi</b>"));
        assert_eq!(data["application/x-custom"], json!({ "a": [1] }));
        assert_eq!(display_id.as_deref(), Some("d1"));
        assert_eq!(
            body(
                "execute_result",
                json!({ "execution_count": 3, "data": { "text/plain": "2" }, "metadata": {} })
            ),
            Body::Output(Output::ExecuteResult {
                execution_count: 3,
                data: [("text/plain".to_owned(), json!("2"))].into(),
                metadata: Default::default(),
            })
        );
        assert_eq!(
            body(
                "error",
                json!({ "ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": ["t"] })
            ),
            Body::Output(Output::Error {
                ename: "ZeroDivisionError".into(),
                evalue: "division by zero".into(),
                traceback: vec!["t".into()],
            })
        );
        assert_eq!(
            body("clear_output", json!({ "wait": true })),
            Body::Output(Output::ClearOutput { wait: true })
        );
    }

    #[test]
    fn update_display_data_needs_a_display_id() {
        let frames = frames(
            "update_display_data",
            Some("p"),
            json!({ "data": {}, "metadata": {} }),
        );
        assert!(matches!(
            decode(&frames),
            Err(DecodeError::MissingDisplayId)
        ));
        assert!(matches!(
            body(
                "update_display_data",
                json!({ "data": {}, "metadata": {}, "transient": { "display_id": "d" } })
            ),
            Body::Output(Output::UpdateDisplayData { display_id, .. }) if display_id == "d"
        ));
    }

    #[test]
    fn replies_and_statuses() {
        assert_eq!(
            body("status", json!({ "execution_state": "busy" })),
            Body::Status(Activity::Busy)
        );
        assert_eq!(
            body("status", json!({ "execution_state": "starting" })),
            Body::Status(Activity::Other)
        );
        assert_eq!(
            body(
                "execute_reply",
                json!({ "status": "error", "execution_count": 7, "ename": "E" })
            ),
            Body::ExecuteReply {
                status: RunStatus::Error,
                execution_count: Some(7)
            }
        );
        assert_eq!(
            body("execute_reply", json!({ "status": "aborted" })),
            Body::ExecuteReply {
                status: RunStatus::Aborted,
                execution_count: None
            }
        );
        assert_eq!(
            body("kernel_info_reply", json!({ "status": "ok" })),
            Body::KernelInfoReply
        );
    }

    #[test]
    fn unknown_types_and_orphans_are_harmless() {
        assert_eq!(
            body("comm_msg", json!({ "comm_id": "c", "data": {} })),
            Body::Ignored
        );
        assert_eq!(body("brand_new_message", json!(null)), Body::Ignored);
        let frames = frames("iopub_welcome", None, json!({ "subscription": "" }));
        let incoming = decode(&frames).unwrap();
        assert_eq!(incoming.parent, None);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(matches!(
            decode(&[b"{}".to_vec(), b"{}".to_vec()]),
            Err(DecodeError::MissingFrames(2))
        ));
        let mut bad = frames(
            "stream",
            Some("p"),
            json!({ "name": "stdout", "text": "x" }),
        );
        bad[0] = b"not json".to_vec();
        assert!(matches!(
            decode(&bad),
            Err(DecodeError::Frame {
                frame: "header",
                ..
            })
        ));
        let bad = frames("stream", Some("p"), json!({ "name": "stdout" }));
        assert!(matches!(decode(&bad), Err(DecodeError::Content { .. })));
    }
}
