//! openraft around the replicated [`State`]: the log and the state machine on disk (redb),
//! snapshots, membership changes, the network between coordinators (HTTP over mutual TLS), and
//! proposing or reading from any coordinator. The rest of the coordinator talks to
//! [`RaftHandle`], [`Command`], [`Response`] and [`State`]; openraft's own types stay in here.
//!
//! # Layout
//! - [`handle`]: [`RaftHandle`] — start, initialize, membership, `propose`, reads, status,
//!   events, shutdown. Followers forward writes (and read-index requests) to the leader.
//! - [`storage`]: [`storage::LogStore`] and [`storage::StateMachineStore`], one redb file per
//!   coordinator; they pass openraft's storage conformance suite (`tests/raft_storage.rs`).
//! - `network` / `server`: the client and server side of the RPC between coordinators; `wire`
//!   has what travels between them.
//! - [`tls`]: the cluster's mutual TLS material, and a [`tls::ClusterCa`] to mint it for tests
//!   and single-machine clusters.
//!
//! # Guarantees
//! - **Writes.** [`RaftHandle::propose`] returns once the command is committed (on a quorum's
//!   disks) and applied on the leader, with the leader's [`Response`]. It works on any
//!   coordinator: a follower forwards the command to the leader over the peers' mutual-TLS
//!   network. Through a change of leader it retries until `Timing::propose_timeout`, so a
//!   command can be applied twice; every [`Command`] is harmless to repeat (a claim returns the
//!   same allocation, a repeated `AddTask`/`Release`/`RemoveTask` answers `Rejected`).
//!   [`ProposeError::Indeterminate`] means the outcome is unknown.
//! - **Reads.** [`RaftHandle::linearizable_read`] sees every write that completed before it was
//!   called, on any coordinator: the leader confirms its leadership with a quorum (a read
//!   index), and a follower waits until it has applied up to the leader's read index. Decide
//!   ownership with it. [`RaftHandle::read`] reads this replica's state as applied so far (may
//!   lag; never shows an uncommitted write).
//! - **Durability.** A log entry is acknowledged only after an fsync (redb `Immediate`
//!   commit), and so is the vote. The state machine is written key by key at every apply
//!   without its own fsync: it becomes durable with the next log fsync, and after a crash it
//!   is rebuilt from the last durable point by re-applying the committed log (openraft reads
//!   the saved committed index at start). Snapshots are written durably before the log is
//!   purged. A coordinator restarted from its data directory rejoins with everything it had
//!   acknowledged. The data directory holds the token signing key: it is created `0700`.
//! - **Failover.** With the default [`Timing`] (heartbeat 50 ms, election timeout
//!   150–300 ms), a lost leader is replaced in well under a second on a LAN.
//! - **Peers.** Every RPC is mutually authenticated: the listener accepts only clients whose
//!   certificate the cluster CA signed, and the client accepts only servers the same CA signed
//!   for the address it dialled. The RPC runs on its own port (`RaftConfig::listen_addr`), not
//!   on the public API's: the public API authenticates with bearer tokens and must not ask
//!   browsers and backends for client certificates.
//!
//! What it does not do: decide anything about tasks (that is [`State`]), or run the pool
//! controller (the coordinator runs it where [`RaftHandle::status`] says it leads).

pub mod handle;
mod network;
mod server;
pub mod storage;
pub mod tls;
mod wire;

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use handle::{
    ClusterStatus, LeaderError, ProposeError, RaftConfig, RaftHandle, ReadError, Role, StartError,
    StatusWatch, Timing,
};
pub use network::NetworkSetupError;

use crate::model::{Command, Response};
#[cfg(doc)]
use crate::state::State;

/// A coordinator's id in its Raft group. Stable across restarts (kept beside its data).
pub type NodeId = u64;

/// What the cluster knows about one coordinator: where its peers reach its Raft RPC.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// `host:port` of its Raft RPC listener; its TLS certificate must name `host`.
    pub addr: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// openraft's view of the coordinator: the log carries [`Command`]s, applying one gives a
    /// [`Response`], and snapshots are the serialized state in memory.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Peer,
        SnapshotData = Cursor<Vec<u8>>,
);

/// What a replica just did to its [`State`], as [`RaftHandle::subscribe`] reports it on every
/// coordinator (so each can notice, say, that a task was just claimed).
#[derive(Debug, Clone, PartialEq)]
pub enum StateEvent {
    /// Log entry `index` was applied: `command` gave `response` (shared: every subscriber
    /// receives the same event).
    Applied {
        index: u64,
        command: Arc<Command>,
        response: Arc<Response>,
    },
    /// A snapshot replaced the whole state up to `index` (this replica was far behind, or
    /// restarted): whatever a subscriber derived from earlier events must be re-read.
    Replaced { index: u64 },
}
