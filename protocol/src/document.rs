//! The document part of the protocol: collaborative editing (y-sync), the reactive cell graph,
//! and notebook files.
//!
//! # Editing (y-sync over Airlock frames)
//! The document is a Yjs document in the `jupyter_ydoc` schema. A client syncs by sending
//! [`SyncStep1`] with its state vector; the node answers [`SyncStep2`] with everything the client
//! lacks. Then each local edit goes out as a [`ClientUpdate`] with a sequence number the client
//! picks (increasing per client); the node applies it, forwards it at once to every other client
//! as a [`DocUpdate`], and answers [`UpdateAck`] with the same number **only once the update is
//! durable** in the document store. A client keeps every update it has not seen acknowledged and
//! sends them again after reconnecting: applying an update twice is harmless in Yjs, so nothing
//! typed is lost to a dropped connection or a node crash. Awareness (user, cursor, selection) is
//! relayed to the other clients as it is and never stored.
//!
//! # Cells
//! Clients ask the node to run cells ([`RunCells`]) or every stale cell; the node runs them in the
//! order the graph plans and announces each run with a `queued` event that names its cell, then
//! the run's outputs and its end, exactly like a plain `execute`. Every change of a cell's state
//! goes to every client as a [`CellStatus`] event. For scripts, [`EditCells`] changes cells
//! without a Yjs library (the node makes the smallest Yjs edit itself).

use serde::{Deserialize, Serialize};

use crate::blob::Blob;
use crate::message::Output;

/// A client's state vector (y-sync step 1).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SyncStep1 {
    pub state_vector: Blob,
}

/// Everything the other side lacks (y-sync step 2).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SyncStep2 {
    pub update: Blob,
}

/// A client's edit: a Yjs v1 update, numbered by the client for its acknowledgement.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClientUpdate {
    pub seq: u64,
    pub update: Blob,
}

/// An edit made by another client or by the node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DocUpdate {
    pub update: Blob,
}

/// The node is done with the client's update `seq`: it is durable, or (with `refused`) it was
/// refused and will never be applied, so the client must not send it again.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UpdateAck {
    pub seq: u64,
    /// Why the update was refused (it does not validate, or is over the limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A y-protocols awareness update (presence, cursors), relayed and never stored.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AwarenessUpdate {
    pub update: Blob,
}

/// Runs cells with the graph's semantics: stale inputs first, then (in reactive mode) their
/// descendants. An empty list runs every stale cell.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RunCells {
    pub client_ref: u64,
    #[serde(default)]
    pub cells: Vec<String>,
    /// Run every code cell again in order (after a kernel loss, say), not only stale ones.
    #[serde(default)]
    pub replay: bool,
}

/// A kind of cell, as `cell_type` names it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CellKind {
    Code,
    Sql,
    Markdown,
    Raw,
    #[serde(other)]
    Unknown,
}

/// A change to the cells, made by the node as the smallest Yjs edit.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CellEdit {
    SetSource {
        cell: String,
        source: String,
    },
    Insert {
        /// Position in the document; past the end appends.
        index: usize,
        /// The new cell's id; the node picks one if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cell: Option<String>,
        kind: CellKind,
        source: String,
    },
    Delete {
        cell: String,
    },
    Move {
        cell: String,
        to: usize,
    },
    #[serde(other)]
    Unknown,
}

/// Edits applied in order; each is one update forwarded to every client.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EditCells {
    pub client_ref: u64,
    pub edits: Vec<CellEdit>,
    /// Run what the edits made stale (in reactive mode), as if the user pressed run.
    #[serde(default)]
    pub run: bool,
}

/// Whether running a cell also runs its descendants.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    #[default]
    Reactive,
    Lazy,
    #[serde(other)]
    Unknown,
}

/// Replaces the document's cells and outputs with a `.ipynb` file's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ImportNotebook {
    pub client_ref: u64,
    /// The file's JSON text.
    pub ipynb: String,
}

/// The node's answer to a request that changed or scheduled something.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Accepted {
    pub client_ref: u64,
    /// Cells queued to run, in the order they will start.
    #[serde(default)]
    pub queued: Vec<String>,
    /// Cells the request marked stale, in document order.
    #[serde(default)]
    pub stale: Vec<String>,
    /// Cells the request created (an import, an insert).
    #[serde(default)]
    pub created: Vec<String>,
    /// Things the person should know (an import's repairs, say).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// What a client shows on a cell.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CellState {
    Idle,
    Queued,
    Running,
    Stale,
    /// The cell cannot run, or its last run raised; `message` says which.
    Error {
        message: String,
    },
    #[serde(other)]
    Unknown,
}

/// A cell's state changed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CellStatus {
    pub cell: String,
    #[serde(flatten)]
    pub state: CellState,
}

/// A cell's latest outputs, sent to a client when it joins (it may have missed their runs).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CellOutputs {
    pub cell: String,
    pub execution_count: Option<u32>,
    pub outputs: Vec<Output>,
}

/// A reference of a cell and the cell above it that defines the name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CellBinding {
    pub name: String,
    pub cell: String,
}

/// One cell in the graph view.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GraphCell {
    pub id: String,
    pub kind: CellKind,
    #[serde(flatten)]
    pub state: CellState,
    /// Globals the cell defines, sorted.
    #[serde(default)]
    pub defines: Vec<String>,
    /// What the cell reads from cells above it.
    #[serde(default)]
    pub reads: Vec<CellBinding>,
    /// The first line of the source, for listings.
    #[serde(default)]
    pub summary: String,
}

/// The document's cells in order with their state and dependencies.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GraphView {
    pub client_ref: u64,
    pub mode: ExecutionMode,
    pub cells: Vec<GraphCell>,
}

/// The document as a `.ipynb` file (nbformat 4.5) with its latest outputs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub client_ref: u64,
    pub ipynb: String,
}
