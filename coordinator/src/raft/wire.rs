//! What travels between coordinators: the paths of the Raft RPC, the requests a follower
//! forwards to the leader, and the framing of a whole snapshot. Bodies are JSON (openraft's
//! messages derive serde), except a snapshot, which is sent as raw bytes after a JSON header.

use std::collections::BTreeSet;

use openraft::{SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use super::{NodeId, Peer};
use crate::model::{Command, Response};

pub(crate) const APPEND: &str = "/raft/append";
pub(crate) const VOTE: &str = "/raft/vote";
/// openraft's chunked snapshot transfer (kept for completeness; [`SNAPSHOT`] is what we send).
pub(crate) const INSTALL_SNAPSHOT: &str = "/raft/install-snapshot";
/// A whole snapshot in one request.
pub(crate) const SNAPSHOT: &str = "/raft/snapshot";
/// A request a follower hands to the leader: see [`Forward`].
pub(crate) const FORWARD: &str = "/raft/forward";

/// What only the leader can do, asked of it by another coordinator.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Forward {
    /// Append, commit and apply a command; answer with its response.
    Propose {
        command: Command,
    },
    /// Confirm leadership with a quorum and answer the index a linearizable read must see.
    ReadIndex,
    AddLearner {
        id: NodeId,
        addr: String,
    },
    ChangeMembership {
        voters: BTreeSet<NodeId>,
    },
}

/// The leader's answer to a [`Forward`].
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum ForwardReply {
    Applied {
        response: Box<Response>,
    },
    ReadIndex {
        index: Option<u64>,
    },
    Done,
    /// The receiver is not the leader (any more); `leader` is who it believes is.
    NotLeader {
        leader: Option<NodeId>,
    },
    /// The leader tried and failed (lost its quorum, a storage fault, a refused membership
    /// change); the message is the leader's error.
    Failed {
        message: String,
    },
}

/// The JSON header of a whole snapshot: whose it is and what it covers.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct SnapshotHeader {
    pub(crate) vote: Vote<NodeId>,
    pub(crate) meta: SnapshotMeta<NodeId, Peer>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotFrameError {
    #[error("the snapshot frame is shorter than its header length says")]
    Truncated,
    #[error("the snapshot header does not decode")]
    Header(#[from] serde_json::Error),
}

/// `[header length: u32 big-endian][header JSON][snapshot bytes]`.
pub(crate) fn encode_snapshot(
    header: &SnapshotHeader,
    data: &[u8],
) -> Result<Vec<u8>, serde_json::Error> {
    let header = serde_json::to_vec(header)?;
    let mut frame = Vec::with_capacity(4 + header.len() + data.len());
    // A header is a vote and a membership: far below 4 GiB.
    frame.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&header);
    frame.extend_from_slice(data);
    Ok(frame)
}

pub(crate) fn decode_snapshot(frame: &[u8]) -> Result<(SnapshotHeader, &[u8]), SnapshotFrameError> {
    let (len, rest) = frame
        .split_first_chunk::<4>()
        .ok_or(SnapshotFrameError::Truncated)?;
    let len =
        usize::try_from(u32::from_be_bytes(*len)).map_err(|_| SnapshotFrameError::Truncated)?;
    if rest.len() < len {
        return Err(SnapshotFrameError::Truncated);
    }
    let (header, data) = rest.split_at(len);
    Ok((serde_json::from_slice(header)?, data))
}
