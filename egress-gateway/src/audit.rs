//! The audit log: one JSON line per flow, written when the flow ends (or is refused).
//!
//! Records go through a channel to one writer task, so a flow never waits on the disk; the
//! writer appends to a file or standard output and flushes after each burst. Subscribers (tests,
//! an embedding process) receive every record as well. Fields are documented on
//! [`AuditRecord`] and in `docs/EGRESS.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};

/// One flow, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the flow ended, in milliseconds since the Unix epoch.
    pub ts_unix_ms: u64,
    /// The flow number (also in the tunnel reply and the SOCKS5/CONNECT logs).
    pub flow: u64,
    /// `connect`, `socks5` or `tunnel`.
    pub front_end: String,
    pub tenant: String,
    pub document: String,
    /// The tunnel node's certificate name, for tunnel flows.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<String>,
    /// The client's address as the gateway saw it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client: Option<SocketAddr>,
    /// The host exactly as requested (before canonicalisation).
    pub requested_host: String,
    pub port: u16,
    /// Every address the name resolved to (or the literal address).
    pub resolved: Vec<IpAddr>,
    /// Answers the policy refused, with why (mixed answers).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub denied_answers: Vec<DeniedAnswer>,
    /// The address dialled.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chosen: Option<SocketAddr>,
    /// The local (static egress) address of the outbound socket.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<SocketAddr>,
    /// `allow`, `deny`, `limited` or `error`.
    pub verdict: Verdict,
    /// A stable class for the verdict (`private`, `denied_port`, `allowed`, `timeout`, …).
    pub class: String,
    /// The sentence the user saw.
    pub reason: String,
    /// Bytes from the client to the destination.
    pub bytes_out: u64,
    /// Bytes from the destination to the client.
    pub bytes_in: u64,
    pub duration_ms: u64,
}

/// The outcome of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    Limited,
    Error,
}

/// A resolved address the policy refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedAnswer {
    pub address: IpAddr,
    pub reason: String,
}

/// Where the JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
    /// Subscribers only.
    Discard,
}

/// The handle flows write records to.
#[derive(Debug, Clone)]
pub struct AuditLog {
    lines: mpsc::UnboundedSender<AuditRecord>,
    subscribers: broadcast::Sender<AuditRecord>,
}

impl AuditLog {
    /// Starts the writer task (call inside a tokio runtime). The task ends when every handle is
    /// dropped, after writing what was queued.
    pub fn start(sink: AuditSink) -> std::io::Result<Self> {
        let (lines, mut queue) = mpsc::unbounded_channel::<AuditRecord>();
        let (subscribers, _) = broadcast::channel(1024);
        let mut out: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = match &sink {
            AuditSink::Stdout => Some(Box::new(tokio::io::stdout())),
            AuditSink::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Some(Box::new(tokio::fs::File::from_std(file)))
            }
            AuditSink::Discard => None,
        };
        tokio::spawn(async move {
            while let Some(record) = queue.recv().await {
                let Some(out) = out.as_mut() else { continue };
                let mut burst = vec![record];
                while let Ok(record) = queue.try_recv() {
                    burst.push(record);
                }
                let mut text = String::new();
                for record in &burst {
                    match serde_json::to_string(record) {
                        Ok(line) => {
                            text.push_str(&line);
                            text.push('\n');
                        }
                        Err(error) => tracing::error!(%error, "audit record not serialisable"),
                    }
                }
                if let Err(error) = async {
                    out.write_all(text.as_bytes()).await?;
                    out.flush().await
                }
                .await
                {
                    tracing::error!(%error, "could not write the audit log");
                }
            }
        });
        Ok(AuditLog { lines, subscribers })
    }

    /// Queues a record for the log and every subscriber.
    pub fn record(&self, record: AuditRecord) {
        let _ = self.subscribers.send(record.clone());
        let _ = self.lines.send(record);
    }

    /// Every record from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.subscribers.subscribe()
    }
}
