//! Opening a document: claiming it in the store, reading it, and starting its actor.

use std::sync::Arc;

use airlock_protocol::CellOutputs as WireCellOutputs;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{DocumentActor, DocumentHandle, handle};
use crate::collab::Notebook;
use crate::collab::NotebookError;
use crate::collab::ipynb::{CellOutputs, OutputsByCell};
use crate::document::core::{self, CoreConfig, DocumentCore, MODE_KEY, StoredDocument};
use crate::document::graph::{CellGraph, ExecutionMode};
use crate::kernel::{KernelBridge, KernelEvent};
use crate::store::{
    DocumentId, DocumentStore, Epoch as StoreEpoch, GroupCommitConfig, GroupCommitter,
    ObjectDocumentStore, Seq, StoreError,
};

/// Why a document could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("document store: {0}")]
    Store(#[from] StoreError),
    #[error("the stored document does not load: {0}; restore it from a backup of the store")]
    Corrupt(#[source] NotebookError),
    #[error("could not start the document's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A document read from its store, ready to be served.
#[derive(Debug)]
pub struct LoadedDocument {
    pub doc: DocumentId,
    pub notebook: Notebook,
    pub graph: CellGraph,
    pub outputs: OutputsByCell,
    /// The last append loaded, and how many appends came after the latest snapshot.
    seq: Seq,
    appends_since_snapshot: u64,
    epoch: StoreEpoch,
}

/// Claims `doc` at `epoch` in the store (fencing out earlier owners) and reads it: the notebook
/// from its snapshot and log, the graph built from it (every cell stale: the kernel is fresh),
/// and every cell's latest outputs.
pub async fn load(
    store: &ObjectDocumentStore,
    doc: DocumentId,
    epoch: u64,
) -> Result<LoadedDocument, OpenError> {
    let epoch = StoreEpoch(epoch);
    let started = std::time::Instant::now();
    store.claim(&doc, epoch).await?;
    let loaded = store.load(&doc).await?;
    let parts = loaded
        .snapshot
        .iter()
        .chain(loaded.updates.iter())
        .map(|b| b.as_ref());
    let notebook = Notebook::load(parts).map_err(OpenError::Corrupt)?;
    let mut outputs = OutputsByCell::new();
    for (cell, bytes) in store.outputs(&doc).await? {
        match serde_json::from_slice::<WireCellOutputs>(&bytes) {
            Ok(stored) => {
                outputs.insert(
                    cell.as_str().to_owned(),
                    CellOutputs {
                        execution_count: stored.execution_count,
                        outputs: stored.outputs,
                    },
                );
            }
            Err(err) => warn!(%cell, %err, "stored outputs do not decode; dropped"),
        }
    }
    let mode = match notebook.meta(MODE_KEY).as_ref().and_then(|v| v.as_str()) {
        Some("lazy") => ExecutionMode::Lazy,
        _ => ExecutionMode::Reactive,
    };
    let mut graph = CellGraph::new(mode);
    core::sync_structure(&notebook, &mut graph);
    // Every cell starts stale, and that is news to no one yet.
    while graph.poll_event().is_some() {}
    let present = core::cell_ids(&notebook);
    outputs.retain(|cell, _| present.contains(cell));
    info!(
        document = %doc,
        epoch = epoch.0,
        cells = notebook.len(),
        updates = loaded.updates.len(),
        ms = started.elapsed().as_millis() as u64,
        "document loaded"
    );
    Ok(LoadedDocument {
        doc,
        notebook,
        graph,
        outputs,
        seq: loaded.seq,
        appends_since_snapshot: loaded.seq.0.saturating_sub(loaded.snapshot_seq.0),
        epoch,
    })
}

/// Opens `doc` at `epoch` ([`load`]) and starts its actor around the already started kernel.
/// With `idle_timeout`, the document stops ([`StopReason::Idle`](super::StopReason::Idle)) once
/// it has had no client for that long, after a snapshot.
pub async fn open(
    store: Arc<ObjectDocumentStore>,
    doc: DocumentId,
    epoch: u64,
    kernel: KernelBridge,
    kernel_events: mpsc::Receiver<KernelEvent>,
    idle_timeout: Option<std::time::Duration>,
) -> Result<DocumentHandle, OpenError> {
    let loaded = load(&store, doc, epoch).await?;
    let committer = GroupCommitter::spawn(
        Arc::clone(&store),
        loaded.doc.clone(),
        loaded.epoch,
        GroupCommitConfig::default(),
    );
    let config = CoreConfig {
        output_limits: kernel.output_limits(),
        ring_capacity: super::BROADCAST_CAPACITY,
        idle_timeout,
    };
    let epoch = loaded.epoch;
    let stored = StoredDocument {
        doc: loaded.doc,
        notebook: loaded.notebook,
        graph: loaded.graph,
        outputs: loaded.outputs,
        seq: loaded.seq,
        appends_since_snapshot: loaded.appends_since_snapshot,
    };
    let kernel = Arc::new(kernel);
    let core = DocumentCore::new(
        std::time::Instant::now(),
        stored,
        Arc::clone(&kernel),
        config,
    );
    let (actor, stopped) = DocumentActor::new(core, epoch, store, committer, kernel, kernel_events);
    handle::spawn(actor, stopped).map_err(OpenError::Thread)
}
