//! Picking one request's answer out of everything else the node sends.
//!
//! A document connection carries the requester's replies interleaved with every client's events
//! (outputs, cell states, edits, acks). [`AwaitedReply`] is the sans-IO rule a request helper of
//! [`crate::Client`] applies to each incoming message: the reply it waits for ends the wait, so
//! does an `error` naming its `client_ref` or a fatal error; anything else is kept, in order, in
//! a backlog that [`crate::Client::recv`] hands out before reading the wire again. It does no IO
//! and does not send the request.

use std::collections::VecDeque;

use airlock_protocol::{Accepted, Exported, GraphView, ServerMessage};

use crate::ClientError;

/// Takes the awaited reply out of a message, or gives the message back.
type Extract<T> = fn(ServerMessage, u64) -> Result<T, ServerMessage>;

/// The reply a request with `client_ref` waits for.
#[derive(Debug, Clone, Copy)]
pub struct AwaitedReply<T> {
    client_ref: u64,
    extract: Extract<T>,
}

impl AwaitedReply<Accepted> {
    /// `run_cells`, `edit_cells`, `import`, `set_mode` are answered with `accepted`.
    pub fn accepted(client_ref: u64) -> Self {
        AwaitedReply {
            client_ref,
            extract: |message, client_ref| match message {
                ServerMessage::Accepted(accepted) if accepted.client_ref == client_ref => {
                    Ok(accepted)
                }
                other => Err(other),
            },
        }
    }
}

impl AwaitedReply<GraphView> {
    /// `graph` is answered with `graph`.
    pub fn graph(client_ref: u64) -> Self {
        AwaitedReply {
            client_ref,
            extract: |message, client_ref| match message {
                ServerMessage::Graph(view) if view.client_ref == client_ref => Ok(view),
                other => Err(other),
            },
        }
    }
}

impl AwaitedReply<Exported> {
    /// `export` is answered with `exported`.
    pub fn exported(client_ref: u64) -> Self {
        AwaitedReply {
            client_ref,
            extract: |message, client_ref| match message {
                ServerMessage::Exported(exported) if exported.client_ref == client_ref => {
                    Ok(exported)
                }
                other => Err(other),
            },
        }
    }
}

impl<T> AwaitedReply<T> {
    pub fn client_ref(&self) -> u64 {
        self.client_ref
    }

    /// Offers one incoming message. `Some` ends the wait: the reply, the refusal of this request
    /// ([`ClientError::Rejected`]), or a fatal error that ends the connection
    /// ([`ClientError::Refused`]). `None` means the message was someone else's and now sits at
    /// the back of `backlog`.
    pub fn offer(
        &self,
        message: ServerMessage,
        backlog: &mut VecDeque<ServerMessage>,
    ) -> Option<Result<T, ClientError>> {
        let message = match (self.extract)(message, self.client_ref) {
            Ok(reply) => return Some(Ok(reply)),
            Err(message) => message,
        };
        match message {
            ServerMessage::Error(reply) if reply.fatal => Some(Err(ClientError::Refused(reply))),
            ServerMessage::Error(reply) if reply.client_ref == Some(self.client_ref) => {
                Some(Err(ClientError::Rejected {
                    client_ref: self.client_ref,
                    code: reply.code,
                    message: reply.message,
                }))
            }
            other => {
                backlog.push_back(other);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed expectation is a failed test

    use airlock_protocol::{
        CellState, CellStatus, ErrorCode, ErrorReply, ExecutionMode, RunId, RunOutput, StreamName,
        UpdateAck,
    };

    use super::*;

    fn cell(id: &str) -> ServerMessage {
        ServerMessage::Cell(CellStatus {
            cell: id.into(),
            state: CellState::Queued,
        })
    }

    fn accepted(client_ref: u64) -> ServerMessage {
        ServerMessage::Accepted(Accepted {
            client_ref,
            queued: vec!["a".into()],
            ..Accepted::default()
        })
    }

    /// Feeds messages until one ends the wait; returns the outcome and how many were eaten.
    fn wait<T>(
        awaited: &AwaitedReply<T>,
        incoming: Vec<ServerMessage>,
        backlog: &mut VecDeque<ServerMessage>,
    ) -> (Option<Result<T, ClientError>>, usize) {
        for (i, message) in incoming.into_iter().enumerate() {
            if let Some(outcome) = awaited.offer(message, backlog) {
                return (Some(outcome), i + 1);
            }
        }
        (None, 0)
    }

    #[test]
    fn the_reply_ends_the_wait_and_everything_before_it_is_kept_in_order() {
        let awaited = AwaitedReply::accepted(7);
        let mut backlog = VecDeque::new();
        let output = ServerMessage::Output(RunOutput {
            run: RunId(3),
            output: airlock_protocol::Output::Stream {
                name: StreamName::Stdout,
                text: "hi".into(),
            },
        });
        let incoming = vec![
            cell("a"),
            accepted(6), // another request's answer is not ours
            ServerMessage::Ack(UpdateAck {
                seq: 1,
                refused: None,
            }),
            output.clone(),
            accepted(7),
            cell("b"),
        ];
        let (outcome, eaten) = wait(&awaited, incoming, &mut backlog);
        let reply = outcome.unwrap().unwrap();
        assert_eq!(reply.client_ref, 7);
        assert_eq!(reply.queued, vec!["a".to_owned()]);
        assert_eq!(eaten, 5, "the message after the reply stays unread");
        let kept: Vec<_> = backlog.into_iter().collect();
        assert_eq!(
            kept,
            vec![
                cell("a"),
                accepted(6),
                ServerMessage::Ack(UpdateAck {
                    seq: 1,
                    refused: None
                }),
                output
            ]
        );
    }

    #[test]
    fn an_error_for_this_request_is_a_typed_rejection() {
        let awaited = AwaitedReply::accepted(3);
        let mut backlog = VecDeque::new();
        let incoming = vec![
            // Someone else's refusal is an event like any other.
            ServerMessage::Error(ErrorReply::for_request(
                ErrorCode::Forbidden,
                Some(2),
                "not yours",
            )),
            ServerMessage::Error(ErrorReply::for_request(
                ErrorCode::BadRequest,
                Some(3),
                "no cell named x",
            )),
        ];
        let (outcome, _) = wait(&awaited, incoming, &mut backlog);
        match outcome.unwrap() {
            Err(ClientError::Rejected {
                client_ref,
                code,
                message,
            }) => {
                assert_eq!(client_ref, 3);
                assert_eq!(code, ErrorCode::BadRequest);
                assert_eq!(message, "no cell named x");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(backlog.len(), 1);
    }

    #[test]
    fn a_fatal_error_ends_the_wait_whoever_it_names() {
        let awaited = AwaitedReply::graph(1);
        let mut backlog = VecDeque::new();
        let fatal = ErrorReply::fatal(ErrorCode::DocumentMoved, "moved");
        let (outcome, _) = wait(
            &awaited,
            vec![ServerMessage::Error(fatal.clone())],
            &mut backlog,
        );
        assert!(matches!(outcome, Some(Err(ClientError::Refused(reply))) if reply == fatal));
        assert!(backlog.is_empty());
    }

    #[test]
    fn each_kind_of_reply_matches_only_its_own_type_and_ref() {
        let mut backlog = VecDeque::new();
        let view = GraphView {
            client_ref: 4,
            mode: ExecutionMode::Lazy,
            cells: vec![],
        };
        let exported = Exported {
            client_ref: 4,
            ipynb: "{}".into(),
        };
        // An `exported` with the right ref is not the `graph` we wait for.
        let graph = AwaitedReply::graph(4);
        assert!(
            graph
                .offer(ServerMessage::Exported(exported.clone()), &mut backlog)
                .is_none()
        );
        assert_eq!(
            graph
                .offer(ServerMessage::Graph(view.clone()), &mut backlog)
                .unwrap()
                .unwrap(),
            view
        );
        let export = AwaitedReply::exported(4);
        assert!(
            export
                .offer(
                    ServerMessage::Exported(Exported {
                        client_ref: 5,
                        ..exported.clone()
                    }),
                    &mut backlog
                )
                .is_none()
        );
        assert_eq!(
            export
                .offer(ServerMessage::Exported(exported.clone()), &mut backlog)
                .unwrap()
                .unwrap(),
            exported
        );
        assert_eq!(backlog.len(), 2);
    }
}
