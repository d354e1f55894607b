//! The QUIC client endpoint: ALPN `airlock/1`, one bidirectional stream per connection opened by
//! the client, frames flowing both ways on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_protocol::codec::{self, FrameLimit, HEADER_LEN};
use airlock_protocol::{ErrorCode, ServerMessage};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::document::actor::DocumentHandle;
use crate::session::{self, Form, FrameWriter, Gate, Inbound, ReadError, WriteError};
use crate::tls::{NodeCertificate, TlsError};

/// How long a fatal error frame may take to reach the client before the connection is closed.
const LINGER: Duration = Duration::from_secs(1);

/// Binds the QUIC endpoint.
pub fn bind(
    addr: SocketAddr,
    certificate: &NodeCertificate,
) -> Result<quinn::Endpoint, crate::NodeError> {
    let tls = certificate.server_config(airlock_protocol::ALPN)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|err| TlsError::Rustls(rustls::Error::General(err.to_string())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Below common proxy and NAT idle timeouts, so quiet sessions stay open.
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(30_000).into()));
    // One control stream per connection; refuse more.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr).map_err(|source| crate::NodeError::Bind {
        what: "QUIC",
        addr,
        source,
    })
}

/// Accepts connections until the endpoint is closed.
pub async fn serve(
    endpoint: quinn::Endpoint,
    gate: Arc<Gate>,
    hub: DocumentHandle,
    limit: FrameLimit,
) {
    while let Some(incoming) = endpoint.accept().await {
        let gate = Arc::clone(&gate);
        let hub = hub.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(err) => return debug!(%err, "QUIC handshake failed"),
            };
            let (send, recv) = match connection.accept_bi().await {
                Ok(streams) => streams,
                Err(err) => return debug!(%err, "QUIC client opened no stream"),
            };
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(read_frames(recv, limit, tx));
            let writer = QuicWriter {
                connection,
                send,
                limit,
            };
            session::run("quic", gate, hub, rx, writer).await;
        });
    }
}

async fn read_frames(mut recv: quinn::RecvStream, limit: FrameLimit, tx: mpsc::Sender<Inbound>) {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        match recv.read_exact(&mut header).await {
            Ok(()) => {}
            // The client finished its stream between frames: a clean goodbye.
            Err(quinn::ReadExactError::FinishedEarly(0)) => return,
            Err(err) => {
                let _ = tx.send(Err(ReadError::Transport(err.to_string()))).await;
                return;
            }
        }
        let len = match limit.payload_len(header) {
            Ok(len) => len,
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        };
        payload.resize(len, 0);
        if let Err(err) = recv.read_exact(&mut payload).await {
            let _ = tx.send(Err(ReadError::Transport(err.to_string()))).await;
            return;
        }
        let inbound = codec::decode_payload(&payload)
            .map(|message| (message, Form::Binary))
            .map_err(ReadError::from);
        let failed = inbound.is_err();
        if tx.send(inbound).await.is_err() || failed {
            return;
        }
    }
}

struct QuicWriter {
    connection: quinn::Connection,
    send: quinn::SendStream,
    limit: FrameLimit,
}

impl FrameWriter for QuicWriter {
    async fn send(&mut self, message: &ServerMessage, _form: Form) -> Result<(), WriteError> {
        let frame = session::encode_or_skip(message, |m| codec::encode_frame(m, self.limit))?;
        self.send
            .write_all(&frame)
            .await
            .map_err(|err| WriteError::Transport(err.to_string()))
    }

    async fn send_batch(
        &mut self,
        messages: &[&ServerMessage],
        _form: Form,
    ) -> Result<(), WriteError> {
        let mut frames = Vec::new();
        for message in messages {
            frames.extend(session::encode_or_skip(message, |m| {
                codec::encode_frame(m, self.limit)
            })?);
        }
        self.send
            .write_all(&frames)
            .await
            .map_err(|err| WriteError::Transport(err.to_string()))
    }

    async fn close(&mut self, code: Option<ErrorCode>) {
        let _ = self.send.finish();
        // Let the error frame reach the client before the connection goes.
        if tokio::time::timeout(LINGER, self.send.stopped())
            .await
            .is_err()
        {
            warn!("client did not acknowledge the closing frame in time");
        }
        let (number, reason) = match code {
            Some(code) => (code.quic_code(), code.as_str()),
            None => (0, "closed"),
        };
        self.connection
            .close(quinn::VarInt::from_u32(number), reason.as_bytes());
    }
}
