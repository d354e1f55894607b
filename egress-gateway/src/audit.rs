//! The audit log: one JSON line per flow, written when the flow ends (or is refused), and
//! counted records for refusals past a document's budget and for name lookups
//! ([`crate::aggregate`] decides which).
//!
//! Records go through a bounded queue to one writer task, so a flow never waits on the disk;
//! the writer appends to a file or standard output and flushes after each burst. When the queue
//! is full (the disk is slower than the records come), a record is dropped and counted
//! ([`AuditLog::dropped`], [`crate::metrics::AUDIT_DROPPED`]) rather than queued without bound.
//! Subscribers (tests, an embedding process) receive every record as well. Fields are
//! documented on [`AuditRecord`] and in `docs/EGRESS.md`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};

/// The default capacity of the audit queue, in records.
pub const DEFAULT_QUEUE: usize = 8192;

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
    /// The cell that was running when the kernel opened the connection (tunnel flows whose
    /// node knows it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cell: Option<String>,
    /// Which run of that cell.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run: Option<u64>,
    /// Who started that run.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
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
    /// How the flow ended when the gateway ended it: `idle_timeout`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ended: Option<String>,
    /// How many flows (or lookups) this record stands for: more than one for an aggregated
    /// refusal record or a lookup record (absent: one).
    #[serde(skip_serializing_if = "is_one", default = "one")]
    pub count: u64,
    /// For an aggregated record: how many of `count` fell in each class.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub classes: BTreeMap<String, u64>,
}

impl Default for AuditRecord {
    /// An empty record standing for one flow.
    fn default() -> Self {
        AuditRecord {
            ts_unix_ms: 0,
            flow: 0,
            front_end: String::new(),
            tenant: String::new(),
            document: String::new(),
            cell: None,
            run: None,
            user: None,
            node: None,
            client: None,
            requested_host: String::new(),
            port: 0,
            resolved: Vec::new(),
            denied_answers: Vec::new(),
            chosen: None,
            source: None,
            verdict: Verdict::Allow,
            class: String::new(),
            reason: String::new(),
            bytes_out: 0,
            bytes_in: 0,
            duration_ms: 0,
            ended: None,
            count: 1,
            classes: BTreeMap::new(),
        }
    }
}

fn is_one(count: &u64) -> bool {
    *count == 1
}

fn one() -> u64 {
    1
}

/// The outcome of a flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    #[default]
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
    lines: mpsc::Sender<AuditRecord>,
    subscribers: broadcast::Sender<AuditRecord>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer task with a queue of [`DEFAULT_QUEUE`] records (call inside a tokio
    /// runtime). The task ends when every handle is dropped, after writing what was queued.
    pub fn start(sink: AuditSink) -> std::io::Result<Self> {
        Self::start_with_queue(sink, DEFAULT_QUEUE)
    }

    /// [`AuditLog::start`] with a queue of `capacity` records (at least one).
    pub fn start_with_queue(sink: AuditSink, capacity: usize) -> std::io::Result<Self> {
        let (lines, mut queue) = mpsc::channel::<AuditRecord>(capacity.max(1));
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
        Ok(AuditLog {
            lines,
            subscribers,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues a record for the log and every subscriber. If the queue is full the record is
    /// not written (subscribers still get it) and the drop is counted.
    pub fn record(&self, record: AuditRecord) {
        let _ = self.subscribers.send(record.clone());
        match self.lines.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::AUDIT_DROPPED).increment(1);
            }
            // The writer is gone (shutting down): nothing left to write to.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Records dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Every record from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.subscribers.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts_instead_of_growing() {
        let log = AuditLog::start_with_queue(AuditSink::Discard, 4).unwrap();
        let mut subscriber = log.subscribe();
        // On this single-threaded runtime the writer cannot run until the test yields, so the
        // queue is full after four records.
        for flow in 0..10 {
            log.record(AuditRecord {
                flow,
                ..AuditRecord::default()
            });
        }
        assert_eq!(log.dropped(), 6);
        // Subscribers still saw all ten.
        for flow in 0..10 {
            assert_eq!(subscriber.recv().await.unwrap().flow, flow);
        }
        // Once the writer has drained the queue there is room again.
        for _ in 0..100 {
            if log.lines.capacity() == 4 {
                break;
            }
            tokio::task::yield_now().await;
        }
        log.record(AuditRecord::default());
        assert_eq!(log.dropped(), 6);
    }

    #[test]
    fn one_is_the_default_count_and_is_left_out() {
        let record = AuditRecord {
            count: 1,
            ..AuditRecord::default()
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(!line.contains("count") && !line.contains("cell"), "{line}");
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back.count, 1);
    }
}
