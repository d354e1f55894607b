//! Builders of the node's messages a test scripts: a run queued, its output, its end.

use airlock_protocol::{
    Output, RunDone, RunId, RunOutput, RunQueued, RunStatus, ServerMessage, SessionId, StreamName,
};

/// Run `run` of cell `cell` queued by session 1's request `client_ref`, user `ada`.
pub fn queued(run: u64, client_ref: u64, cell: &str) -> ServerMessage {
    ServerMessage::Queued(RunQueued {
        run: RunId(run),
        session: SessionId(1),
        client_ref,
        user: "ada".into(),
        code: String::new(),
        cell: Some(cell.into()),
    })
}

/// `text` on run `run`'s stdout.
pub fn stdout(run: u64, text: &str) -> ServerMessage {
    ServerMessage::Output(RunOutput {
        run: RunId(run),
        output: Output::Stream {
            name: StreamName::Stdout,
            text: text.into(),
        },
    })
}

/// Run `run` ended with `status` (its execution count is its number).
pub fn done(run: u64, status: RunStatus) -> ServerMessage {
    ServerMessage::Done(RunDone {
        run: RunId(run),
        status,
        execution_count: u32::try_from(run).ok(),
    })
}
