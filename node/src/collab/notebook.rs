//! The notebook as a CRDT: a `yrs` document in the `jupyter_ydoc` schema, so JupyterLab-style
//! clients and Airlock's own edit the same structure.
//!
//! ```text
//! Y.Doc
//! ├── "meta":  Map { nbformat, nbformat_minor, metadata }
//! └── "cells": Array< Map { id, cell_type, source: Text, metadata: Map, execution_count } >
//! ```
//!
//! Outputs are deliberately *not* in the CRDT: they churn (every stream chunk would be a
//! tombstone forever) and the node is their only writer, so they live beside the document in
//! the store, replaced per run. This module does no IO: updates come in as bytes, changes go out
//! as bytes and as a [`Changes`] summary the document actor feeds to the cell graph.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::validate::{self, Limits};

use yrs::any::Number;
use yrs::types::{Event, PathSegment, ToJson};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayRef, DeepObservable, Doc, GetString, In, Map, MapPrelim, MapRef, Out, ReadTxn,
    StateVector, Text, TextPrelim, TextRef, Transact, TransactionMut, Update,
};

pub use crate::document::analysis::CellKind;

/// One cell as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellView {
    pub id: String,
    pub kind: CellKind,
    pub source: String,
    /// SQL cells: `metadata.airlock.result_name`, the name the query's result is bound to.
    pub result_name: Option<String>,
}

/// What one applied update changed, for the cell graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Cells were inserted, deleted or moved: re-read the cell order.
    pub structure: bool,
    /// Cells whose source or type changed.
    pub cells: BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.structure && self.cells.is_empty()
    }
}

/// Why an update or state vector was refused.
#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    /// The bytes break the update format's structure or its limits; nothing was decoded.
    #[error("update refused: {0}")]
    InvalidUpdate(#[source] validate::ValidationError),
    /// The bytes break the state vector format's structure or its limits.
    #[error("state vector refused: {0}")]
    InvalidStateVector(#[source] validate::ValidationError),
    /// The CRDT library's own decoder refused bytes that passed validation (its message).
    #[error("update does not decode: {0}")]
    BadUpdate(String),
    /// The CRDT library's own decoder refused a state vector that passed validation.
    #[error("state vector does not decode: {0}")]
    BadStateVector(String),
    #[error("update could not be applied: {0}")]
    Apply(String),
    #[error("no cell with id {0:?}")]
    NoSuchCell(String),
    #[error("a cell with id {0:?} already exists")]
    DuplicateCell(String),
    #[error("this replica hit a bug in the CRDT library on an earlier update; reload it")]
    Poisoned,
}

/// A notebook document.
pub struct Notebook {
    doc: Doc,
    cells: ArrayRef,
    meta: MapRef,
    /// Filled by the deep observer during a transaction, drained after it.
    pending: Arc<Mutex<Changes>>,
    /// Set when the CRDT library panicked inside a transaction: the replica may be inconsistent
    /// and must be reloaded from the store (which holds every acknowledged update).
    poisoned: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Notebook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notebook")
            .field("cells", &self.len())
            .finish()
    }
}

impl Default for Notebook {
    fn default() -> Self {
        Self::new()
    }
}

impl Notebook {
    /// An empty notebook (no cells).
    pub fn new() -> Self {
        Self::with_doc(Doc::new())
    }

    /// A notebook whose edits carry this Yjs client id (tests, deterministic replays).
    pub fn with_client_id(id: u64) -> Self {
        Self::with_doc(Doc::with_client_id(id))
    }

    fn with_doc(doc: Doc) -> Self {
        let cells = doc.get_or_insert_array("cells");
        let meta = doc.get_or_insert_map("meta");
        let pending = Arc::new(Mutex::new(Changes::default()));
        let sink = Arc::clone(&pending);
        cells.observe_deep("airlock-notebook", move |txn, events| {
            let mut changes = lock(&sink);
            for event in events.iter() {
                record(txn, event, &mut changes);
            }
        });
        Notebook {
            doc,
            cells,
            meta,
            pending,
            poisoned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Loads a notebook from a full-state update (a snapshot) plus later updates.
    pub fn load<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, NotebookError> {
        let notebook = Self::new();
        for part in parts {
            notebook.apply(part)?;
        }
        Ok(notebook)
    }

    /// How many cells there are.
    pub fn len(&self) -> usize {
        self.cells.len(&self.doc.transact()) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every cell, in document order.
    pub fn cells(&self) -> Vec<CellView> {
        let txn = self.doc.transact();
        self.cells
            .iter(&txn)
            .filter_map(|value| cell_view(&txn, value))
            .collect()
    }

    /// One cell by id.
    pub fn cell(&self, id: &str) -> Option<CellView> {
        let txn = self.doc.transact();
        let index = find(&txn, &self.cells, id)?;
        cell_view(&txn, self.cells.get(&txn, index)?)
    }

    /// This replica's state vector, encoded (y-sync step 1).
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// Everything a replica with `state_vector` lacks (y-sync step 2).
    pub fn diff(&self, state_vector: &[u8]) -> Result<Vec<u8>, NotebookError> {
        // Checked first: `yrs` trusts the declared length (see `validate`).
        validate::state_vector_v1(state_vector, &Limits::default())
            .map_err(NotebookError::InvalidStateVector)?;
        let sv = guarded(|| StateVector::decode_v1(state_vector))
            .map_err(NotebookError::BadStateVector)?
            .map_err(|err| NotebookError::BadStateVector(err.to_string()))?;
        Ok(self.doc.transact().encode_state_as_update_v1(&sv))
    }

    /// The whole document as one update (a snapshot).
    pub fn snapshot(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Applies a remote update and reports what it changed.
    ///
    /// Decoding is pure, so a decoder panic on hostile bytes is caught and reported as a bad
    /// update. A panic while applying leaves the replica poisoned: every later call fails with
    /// [`NotebookError::Poisoned`] and the owner must reload the document from its store.
    pub fn apply(&self, update: &[u8]) -> Result<Changes, NotebookError> {
        if self.poisoned.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(NotebookError::Poisoned);
        }
        // Checked first: `yrs` trusts the counts and lengths the bytes declare (see `validate`).
        validate::update_v1(update, &Limits::default()).map_err(NotebookError::InvalidUpdate)?;
        let update = guarded(|| Update::decode_v1(update))
            .map_err(NotebookError::BadUpdate)?
            .map_err(|err| NotebookError::BadUpdate(err.to_string()))?;
        let applied = guarded(|| {
            let mut txn = self.doc.transact_mut();
            txn.apply_update(update)
        });
        match applied {
            Ok(Ok(())) => Ok(self.take_changes()),
            Ok(Err(err)) => Err(NotebookError::Apply(err.to_string())),
            Err(_) => {
                self.poisoned
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(NotebookError::Poisoned)
            }
        }
    }

    /// Whether an earlier update left this replica unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Inserts a cell at `index` (clamped to the end); returns the update to broadcast.
    pub fn insert_cell(
        &self,
        index: usize,
        id: &str,
        kind: CellKind,
        source: &str,
    ) -> Result<Vec<u8>, NotebookError> {
        self.edit(|txn, cells| {
            if find(txn, cells, id).is_some() {
                return Err(NotebookError::DuplicateCell(id.to_owned()));
            }
            let index = (index as u32).min(cells.len(txn));
            cells.insert(txn, index, cell_prelim(id, kind, source));
            Ok(())
        })
    }

    /// Replaces a cell's source with the smallest edit (common prefix and suffix kept), so
    /// collaborators' cursors outside the changed span stay put.
    pub fn set_source(&self, id: &str, source: &str) -> Result<Vec<u8>, NotebookError> {
        self.edit(|txn, cells| {
            let index = find(txn, cells, id).ok_or_else(|| NotebookError::NoSuchCell(id.into()))?;
            let text =
                cell_text(txn, cells, index).ok_or_else(|| NotebookError::NoSuchCell(id.into()))?;
            let old = text.get_string(txn);
            let (start, old_end, new_end) = changed_span(&old, source);
            if old_end > start {
                text.remove_range(txn, start as u32, (old_end - start) as u32);
            }
            if new_end > start {
                text.insert(txn, start as u32, &source[start..new_end]);
            }
            Ok(())
        })
    }

    /// Inserts `text` at byte offset `at` of a cell's source (clamped to the end, moved back to a
    /// character boundary): what an editor sends for typing.
    pub fn insert_text(&self, id: &str, at: usize, text: &str) -> Result<Vec<u8>, NotebookError> {
        self.edit(|txn, cells| {
            let index = find(txn, cells, id).ok_or_else(|| NotebookError::NoSuchCell(id.into()))?;
            let source =
                cell_text(txn, cells, index).ok_or_else(|| NotebookError::NoSuchCell(id.into()))?;
            let old = source.get_string(txn);
            let mut at = at.min(old.len());
            while !old.is_char_boundary(at) {
                at -= 1;
            }
            source.insert(txn, at as u32, text);
            Ok(())
        })
    }

    /// Deletes a cell.
    pub fn delete_cell(&self, id: &str) -> Result<Vec<u8>, NotebookError> {
        self.edit(|txn, cells| {
            let index = find(txn, cells, id).ok_or_else(|| NotebookError::NoSuchCell(id.into()))?;
            cells.remove(txn, index);
            Ok(())
        })
    }

    /// Moves a cell to `to` (an index in the order after removal), as jupyter_ydoc does: the
    /// cell is removed and a copy inserted, which every Yjs client understands.
    pub fn move_cell(&self, id: &str, to: usize) -> Result<Vec<u8>, NotebookError> {
        self.edit(|txn, cells| {
            let index = find(txn, cells, id).ok_or_else(|| NotebookError::NoSuchCell(id.into()))?;
            let view = cells
                .get(txn, index)
                .and_then(|value| cell_view(txn, value))
                .ok_or_else(|| NotebookError::NoSuchCell(id.into()))?;
            cells.remove(txn, index);
            let to = (to as u32).min(cells.len(txn));
            cells.insert(txn, to, cell_prelim(&view.id, view.kind, &view.source));
            Ok(())
        })
    }

    /// Sets a notebook-level metadata value (`nbformat`, `metadata`, …).
    pub fn set_meta(&self, key: &str, value: serde_json::Value) {
        let mut txn = self.doc.transact_mut();
        self.meta.insert(&mut txn, key, json_to_any(&value));
    }

    /// A notebook-level metadata value.
    pub fn meta(&self, key: &str) -> Option<serde_json::Value> {
        let txn = self.doc.transact();
        match self.meta.get(&txn, key)? {
            Out::Any(any) => Some(any_to_json(&any)),
            _ => None,
        }
    }

    /// Runs a local edit and returns its update. Nothing is returned on error; a failed edit
    /// changes nothing.
    fn edit(
        &self,
        f: impl FnOnce(&mut TransactionMut, &ArrayRef) -> Result<(), NotebookError>,
    ) -> Result<Vec<u8>, NotebookError> {
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            f(&mut txn, &self.cells)?;
        }
        // Local edits are reported by the caller; the observer's record is not needed.
        self.take_changes();
        Ok(self.doc.transact().encode_state_as_update_v1(&before))
    }

    /// Drains the changes recorded since the last call.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *lock(&self.pending))
    }
}

/// Runs `f`, turning a panic into an error message. Only for calls into the CRDT library on
/// untrusted input, which should never panic but has been seen to (debug assertions in its
/// decoder).
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder panicked".to_owned())
    })
}

fn lock(m: &Mutex<Changes>) -> std::sync::MutexGuard<'_, Changes> {
    // A panic while holding this lock can only come from a bug in `record`; the data is a plain
    // summary, safe to keep using.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Notes what one observed event changed.
fn record(txn: &TransactionMut, event: &Event, changes: &mut Changes) {
    let path = event.path();
    match path.front() {
        // An event on the cells array itself: insertions, deletions, moves.
        None => changes.structure = true,
        // Inside cell `index`: its source text or a key of its map.
        Some(PathSegment::Index(index)) => {
            let touches_code = match (path.get(1), event) {
                (Some(PathSegment::Key(key)), _) => key.as_ref() == "source",
                (None, Event::Map(map)) => map
                    .keys(txn)
                    .keys()
                    .any(|key| matches!(key.as_ref(), "source" | "cell_type" | "id")),
                _ => false,
            };
            if touches_code {
                let cells = txn.get_array("cells");
                if let Some(cells) = cells
                    && let Some(Out::YMap(cell)) = cells.get(txn, *index)
                    && let Some(id) = string_at(txn, &cell, "id")
                {
                    changes.cells.insert(id);
                }
            }
        }
        Some(PathSegment::Key(_)) => {}
    }
}

fn cell_prelim(id: &str, kind: CellKind, source: &str) -> MapPrelim {
    MapPrelim::from([
        ("id", In::Any(Any::from(id))),
        ("cell_type", In::Any(Any::from(kind.as_str()))),
        ("source", In::from(TextPrelim::new(source))),
        ("metadata", In::Map(MapPrelim::default())),
        ("execution_count", In::Any(Any::Null)),
    ])
}

fn find<T: ReadTxn>(txn: &T, cells: &ArrayRef, id: &str) -> Option<u32> {
    cells
        .iter(txn)
        .position(|value| match value {
            Out::YMap(cell) => string_at(txn, &cell, "id").as_deref() == Some(id),
            _ => false,
        })
        .map(|index| index as u32)
}

fn cell_text<T: ReadTxn>(txn: &T, cells: &ArrayRef, index: u32) -> Option<TextRef> {
    match cells.get(txn, index)? {
        Out::YMap(cell) => match cell.get(txn, "source")? {
            Out::YText(text) => Some(text),
            _ => None,
        },
        _ => None,
    }
}

fn string_at<T: ReadTxn>(txn: &T, map: &MapRef, key: &str) -> Option<String> {
    match map.get(txn, key)? {
        Out::Any(Any::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn cell_view<T: ReadTxn>(txn: &T, value: Out) -> Option<CellView> {
    let Out::YMap(cell) = value else {
        return None;
    };
    let id = string_at(txn, &cell, "id")?;
    let kind = string_at(txn, &cell, "cell_type")
        .and_then(|s| s.parse::<CellKind>().ok())
        .unwrap_or(CellKind::Raw);
    let source = match cell.get(txn, "source") {
        Some(Out::YText(text)) => text.get_string(txn),
        // Some writers store source as a plain string; read it all the same.
        Some(Out::Any(Any::String(s))) => s.to_string(),
        _ => String::new(),
    };
    let result_name = match cell.get(txn, "metadata").map(|m| m.to_json(txn)) {
        Some(Any::Map(metadata)) => match metadata.get("airlock") {
            Some(Any::Map(airlock)) => match airlock.get("result_name") {
                Some(Any::String(name)) => Some(name.to_string()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    Some(CellView {
        id,
        kind,
        source,
        result_name,
    })
}

/// The byte span that differs between `old` and `new`: `(start, old_end, new_end)`, on char
/// boundaries.
fn changed_span(old: &str, new: &str) -> (usize, usize, usize) {
    let prefix = old
        .char_indices()
        .zip(new.chars())
        .take_while(|((_, a), b)| a == b)
        .last()
        .map_or(0, |((i, c), _)| i + c.len_utf8());
    let old_rest = &old[prefix..];
    let new_rest = &new[prefix..];
    let suffix = old_rest
        .chars()
        .rev()
        .zip(new_rest.chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(c, _)| c.len_utf8())
        .sum::<usize>();
    (prefix, old.len() - suffix, new.len() - suffix)
}

fn json_to_any(value: &serde_json::Value) -> Any {
    match value {
        serde_json::Value::Null => Any::Null,
        serde_json::Value::Bool(b) => Any::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Any::Number(Number::Int(i)),
            None => Any::Number(Number::Float(n.as_f64().unwrap_or(0.0))),
        },
        serde_json::Value::String(s) => Any::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Any::from(items.iter().map(json_to_any).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => Any::from(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_any(v)))
                .collect::<std::collections::HashMap<_, _>>(),
        ),
    }
}

fn any_to_json(any: &Any) -> serde_json::Value {
    match any {
        Any::Null | Any::Undefined => serde_json::Value::Null,
        Any::Bool(b) => serde_json::Value::Bool(*b),
        Any::Number(Number::Int(i)) => serde_json::json!(i),
        Any::Number(Number::Float(f)) => serde_json::json!(f),
        Any::String(s) => serde_json::Value::String(s.to_string()),
        Any::Buffer(b) => serde_json::json!(b.as_ref()),
        Any::Array(items) => serde_json::Value::Array(items.iter().map(any_to_json).collect()),
        Any::Map(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), any_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn synced(a: &Notebook, b: &Notebook) {
        let to_b = a.diff(&b.state_vector()).unwrap();
        let to_a = b.diff(&a.state_vector()).unwrap();
        b.apply(&to_b).unwrap();
        a.apply(&to_a).unwrap();
    }

    #[test]
    fn edits_replicate_and_report_what_changed() {
        let server = Notebook::with_client_id(1);
        let client = Notebook::with_client_id(2);
        let u1 = server.insert_cell(0, "a", CellKind::Code, "x = 1").unwrap();
        let u2 = server
            .insert_cell(1, "b", CellKind::Markdown, "# hi")
            .unwrap();
        let changes = client.apply(&u1).unwrap();
        assert!(changes.structure);
        client.apply(&u2).unwrap();
        assert_eq!(client.cells(), server.cells());

        let edit = client.set_source("a", "x = 10").unwrap();
        let changes = server.apply(&edit).unwrap();
        assert!(!changes.structure);
        assert_eq!(changes.cells, BTreeSet::from(["a".to_owned()]));
        assert_eq!(server.cell("a").unwrap().source, "x = 10");

        let moved = server.move_cell("a", 1).unwrap();
        let changes = client.apply(&moved).unwrap();
        assert!(changes.structure);
        let order: Vec<_> = client.cells().into_iter().map(|c| c.id).collect();
        assert_eq!(order, ["b", "a"]);
        assert_eq!(client.cell("a").unwrap().source, "x = 10");

        let deleted = client.delete_cell("b").unwrap();
        assert!(server.apply(&deleted).unwrap().structure);
        assert_eq!(server.len(), 1);
        assert!(matches!(
            server.delete_cell("b"),
            Err(NotebookError::NoSuchCell(_))
        ));
        assert!(matches!(
            server.insert_cell(0, "a", CellKind::Code, ""),
            Err(NotebookError::DuplicateCell(_))
        ));
    }

    #[test]
    fn set_source_keeps_the_unchanged_span() {
        assert_eq!(changed_span("abcdef", "abXYef"), (2, 4, 4));
        assert_eq!(changed_span("", "new"), (0, 0, 3));
        assert_eq!(changed_span("same", "same"), (4, 4, 4));
        assert_eq!(changed_span("héllo", "hallo"), (1, 3, 2));
        let nb = Notebook::new();
        nb.insert_cell(0, "c", CellKind::Code, "print('héllo')")
            .unwrap();
        nb.set_source("c", "print('hallo wörld')").unwrap();
        assert_eq!(nb.cell("c").unwrap().source, "print('hallo wörld')");
    }

    #[test]
    fn twenty_replicas_editing_one_cell_converge() {
        let mut rng = StdRng::seed_from_u64(7);
        let origin = Notebook::with_client_id(1000);
        let seed = origin
            .insert_cell(0, "shared", CellKind::Code, "base")
            .unwrap();
        let replicas: Vec<Notebook> = (0..20)
            .map(|i| {
                let nb = Notebook::with_client_id(i + 1);
                nb.apply(&seed).unwrap();
                nb
            })
            .collect();
        let mut in_flight: Vec<Vec<u8>> = Vec::new();
        for round in 0..30 {
            for (i, nb) in replicas.iter().enumerate() {
                let current = nb.cell("shared").unwrap().source;
                let cut = rng.gen_range(0..=current.len());
                let mut next = current.clone();
                next.insert_str(cut, &format!("[{i}.{round}]"));
                if rng.gen_bool(0.2) && next.len() > 4 {
                    next.replace_range(0..2, "");
                }
                in_flight.push(nb.set_source("shared", &next).unwrap());
            }
            // Deliver a random subset of updates to random replicas, out of order.
            in_flight.shuffle(&mut rng);
            for update in in_flight.iter().take(10) {
                let target = &replicas[rng.gen_range(0..replicas.len())];
                target.apply(update).unwrap();
            }
        }
        // Then every update reaches everyone, in yet another order, duplicates included.
        for nb in &replicas {
            in_flight.shuffle(&mut rng);
            for update in &in_flight {
                nb.apply(update).unwrap();
            }
        }
        let first = replicas[0].cells();
        for nb in &replicas[1..] {
            assert_eq!(nb.cells(), first);
        }
        // Every replica's marks survived (no lost insertions of distinct tags).
        let text = &first[0].source;
        for i in 0..20 {
            assert!(
                text.contains(&format!("[{i}.29]")),
                "replica {i}'s last edit is missing"
            );
        }
        // A late joiner syncs by state vector alone.
        let late = Notebook::with_client_id(99);
        synced(&replicas[3], &late);
        assert_eq!(late.cells(), first);
    }

    #[test]
    fn metadata_round_trips() {
        let nb = Notebook::new();
        nb.set_meta("nbformat", serde_json::json!(4));
        nb.set_meta(
            "metadata",
            serde_json::json!({"kernelspec": {"name": "python3"}}),
        );
        assert_eq!(nb.meta("nbformat"), Some(serde_json::json!(4)));
        assert_eq!(
            nb.meta("metadata").unwrap()["kernelspec"]["name"],
            "python3"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn hostile_bytes_are_refused_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let nb = Notebook::new();
            nb.insert_cell(0, "a", CellKind::Code, "x").unwrap();
            let _ = nb.apply(&bytes);
            let _ = nb.diff(&bytes);
            let _ = nb.cells();
        }

        #[test]
        fn mutated_updates_are_refused_or_applied_without_panic(flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..6)) {
            let source = Notebook::with_client_id(5);
            let mut update = source.insert_cell(0, "a", CellKind::Code, "x = 1\nprint(x)").unwrap();
            update.extend(source.set_source("a", "y = 2").unwrap());
            for (at, byte) in flips {
                let len = update.len();
                update[at % len] ^= byte;
            }
            let nb = Notebook::new();
            match nb.apply(&update) {
                Ok(_) | Err(_) => {}
            }
            let _ = nb.cells();
        }
    }
}
