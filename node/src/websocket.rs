//! The WebSocket client endpoint at `/v1/doc`: binary messages carry one protocol frame each,
//! text messages carry the JSON form. The node answers in the form of the client's hello.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_protocol::codec::{self, FrameLimit, HEADER_LEN};
use airlock_protocol::{CodecError, ErrorCode, ServerMessage};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::debug;

use crate::document::actor::DocumentHandle;
use crate::session::{self, Form, FrameWriter, Gate, Inbound, ReadError, WriteError};

/// The path clients connect to.
pub const PATH: &str = "/v1/doc";

/// Binds the WebSocket listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::NodeError::Bind {
            what: "WebSocket",
            addr,
            source,
        })
}

/// Accepts connections until the task is aborted.
// The handshake callback's error type is tungstenite's HTTP response; its size is not ours.
#[allow(clippy::result_large_err)]
pub async fn serve(listener: TcpListener, gate: Arc<Gate>, hub: DocumentHandle, limit: FrameLimit) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                debug!(%err, "WebSocket accept failed");
                continue;
            }
        };
        let gate = Arc::clone(&gate);
        let hub = hub.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let config = WebSocketConfig::default()
                .max_message_size(Some(limit.get() + HEADER_LEN))
                .max_frame_size(Some(limit.get() + HEADER_LEN));
            let check_path = |request: &Request, response: Response| {
                if request.uri().path() == PATH {
                    Ok(response)
                } else {
                    let mut refusal = ErrorResponse::new(Some(format!(
                        "no document endpoint here; connect to {PATH}\n"
                    )));
                    *refusal.status_mut() = StatusCode::NOT_FOUND;
                    Err(refusal)
                }
            };
            let ws = match tokio_tungstenite::accept_hdr_async_with_config(
                stream,
                check_path,
                Some(config),
            )
            .await
            {
                Ok(ws) => ws,
                Err(err) => return debug!(%err, %peer, "WebSocket handshake failed"),
            };
            let (sink, stream) = ws.split();
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(read_messages(stream, limit, tx));
            session::run("websocket", gate, hub, rx, WsWriter { sink, limit }).await;
        });
    }
}

async fn read_messages(
    mut stream: SplitStream<WebSocketStream<TcpStream>>,
    limit: FrameLimit,
    tx: mpsc::Sender<Inbound>,
) {
    while let Some(message) = stream.next().await {
        let inbound = match message {
            Ok(Message::Binary(bytes)) => codec::decode_whole_frame(&bytes, limit)
                .map(|m| (m, Form::Binary))
                .map_err(ReadError::from),
            Ok(Message::Text(text)) => codec::decode_json(text.as_str(), limit)
                .map(|m| (m, Form::Json))
                .map_err(ReadError::from),
            // Pings are answered by the WebSocket layer itself.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(_)) => return,
            Err(WsError::Capacity(err)) => Err(ReadError::Codec(CodecError::TooLarge {
                len: match err {
                    tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                        size,
                        ..
                    } => size,
                    _ => limit.get() + 1,
                },
                max: limit.get(),
            })),
            Err(err) => Err(ReadError::Transport(err.to_string())),
        };
        let failed = inbound.is_err();
        if tx.send(inbound).await.is_err() || failed {
            return;
        }
    }
}

struct WsWriter {
    sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    limit: FrameLimit,
}

impl WsWriter {
    fn encode(&self, message: &ServerMessage, form: Form) -> Result<Message, WriteError> {
        Ok(match form {
            Form::Binary => Message::Binary(
                session::encode_or_skip(message, |m| codec::encode_frame(m, self.limit))?.into(),
            ),
            Form::Json => Message::Text(
                session::encode_or_skip(message, |m| codec::encode_json(m, self.limit))?.into(),
            ),
        })
    }
}

impl FrameWriter for WsWriter {
    async fn send(&mut self, message: &ServerMessage, form: Form) -> Result<(), WriteError> {
        let message = self.encode(message, form)?;
        self.sink
            .send(message)
            .await
            .map_err(|err| WriteError::Transport(err.to_string()))
    }

    async fn send_batch(
        &mut self,
        messages: &[&ServerMessage],
        form: Form,
    ) -> Result<(), WriteError> {
        for message in messages {
            let message = self.encode(message, form)?;
            self.sink
                .feed(message)
                .await
                .map_err(|err| WriteError::Transport(err.to_string()))?;
        }
        self.sink
            .flush()
            .await
            .map_err(|err| WriteError::Transport(err.to_string()))
    }

    async fn close(&mut self, code: Option<ErrorCode>) {
        let frame = match code {
            Some(code) => CloseFrame {
                code: CloseCode::from(code.websocket_close_code()),
                reason: code.as_str().into(),
            },
            None => CloseFrame {
                code: CloseCode::Normal,
                reason: "closed".into(),
            },
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}
