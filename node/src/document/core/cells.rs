//! Keeping the cell graph in step with the notebook, and the graph's types in wire form.
//!
//! The notebook (the CRDT) is the truth about which cells exist, in which order, with which
//! source; the graph follows it. After every change the core calls [`sync_changes`] (or
//! [`sync_all`]), which turns the difference into graph edits: deletions first, then insertions
//! and moves in document order, then source changes.

use std::collections::HashSet;

use airlock_protocol::{
    CellBinding, CellKind as WireKind, CellState as WireState, ExecutionMode as WireMode,
    GraphCell, GraphView,
};

use crate::collab::{CellView, Changes, Notebook};
use crate::document::analysis::{CellContent, CellKind};
use crate::document::graph::{CellGraph, CellState, Edit, ExecutionMode};
use crate::store::CellId;

/// Brings the graph in line with the notebook after `changes`.
pub fn sync_changes(notebook: &Notebook, graph: &mut CellGraph, changes: &Changes) -> Vec<Edit> {
    if changes.structure {
        return sync_all(notebook, graph);
    }
    let mut edits = Vec::new();
    for id in &changes.cells {
        if let (Some(view), Ok(cell)) = (notebook.cell(id), CellId::new(id.clone()))
            && let Ok(edit) = graph.set_source(&cell, content(&view))
        {
            edits.push(edit);
        }
    }
    edits
}

/// Brings the graph in line with the whole notebook.
pub fn sync_all(notebook: &Notebook, graph: &mut CellGraph) -> Vec<Edit> {
    let mut edits = sync_structure(notebook, graph);
    for view in notebook.cells() {
        if let Ok(cell) = CellId::new(view.id.clone())
            && let Ok(edit) = graph.set_source(&cell, content(&view))
            && edit != Edit::default()
        {
            edits.push(edit);
        }
    }
    edits
}

/// Deletes, inserts and moves graph cells so that the graph has the notebook's cells in its
/// order. Cells whose id is not a valid [`CellId`], and later duplicates of an id, are left out
/// of the graph: they are shown but never run.
pub fn sync_structure(notebook: &Notebook, graph: &mut CellGraph) -> Vec<Edit> {
    let views: Vec<(CellId, CellView)> = {
        let mut seen = HashSet::new();
        notebook
            .cells()
            .into_iter()
            .filter_map(|view| {
                let id = CellId::new(view.id.clone()).ok()?;
                seen.insert(view.id.clone()).then_some((id, view))
            })
            .collect()
    };
    let wanted: HashSet<&CellId> = views.iter().map(|(id, _)| id).collect();
    let mut edits = Vec::new();
    let gone: Vec<CellId> = graph
        .cell_ids()
        .filter(|id| !wanted.contains(id))
        .cloned()
        .collect();
    for id in gone {
        if let Ok(edit) = graph.delete_cell(&id) {
            edits.push(edit);
        }
    }
    for (index, (id, view)) in views.iter().enumerate() {
        let position = graph.cell_ids().position(|c| c == id);
        let edit = match position {
            None => graph.insert_cell(index, id.clone(), content(view)),
            Some(at) if at != index => graph.move_cell(id, index),
            Some(_) => continue,
        };
        if let Ok(edit) = edit {
            edits.push(edit);
        }
    }
    edits
}

/// What the analysis needs of a notebook cell.
pub fn content(view: &CellView) -> CellContent {
    CellContent {
        kind: view.kind,
        source: view.source.clone(),
        result_name: view.result_name.clone(),
    }
}

pub fn wire_state(state: &CellState) -> WireState {
    match state {
        CellState::Idle => WireState::Idle,
        CellState::Queued => WireState::Queued,
        CellState::Running => WireState::Running,
        CellState::Stale => WireState::Stale,
        CellState::Error(error) => WireState::Error {
            message: error.to_string(),
        },
    }
}

pub fn wire_kind(kind: CellKind) -> WireKind {
    match kind {
        CellKind::Code => WireKind::Code,
        CellKind::Sql => WireKind::Sql,
        CellKind::Markdown => WireKind::Markdown,
        CellKind::Raw => WireKind::Raw,
    }
}

/// The notebook's kind for a wire kind; an unknown kind becomes raw (it never runs).
pub fn kind(kind: WireKind) -> CellKind {
    match kind {
        WireKind::Code => CellKind::Code,
        WireKind::Sql => CellKind::Sql,
        WireKind::Markdown => CellKind::Markdown,
        WireKind::Raw | WireKind::Unknown => CellKind::Raw,
    }
}

/// The graph as clients see it.
pub fn graph_view(graph: &CellGraph, client_ref: u64) -> GraphView {
    let cells = graph
        .cell_ids()
        .map(|id| {
            let content = graph.content(id);
            let defines = match graph.analysis(id) {
                Some(Ok(analysis)) if content.is_some_and(|c| c.kind.runs()) => {
                    analysis.defs.iter().cloned().collect()
                }
                _ => Vec::new(),
            };
            let reads = graph
                .bindings(id)
                .unwrap_or_default()
                .iter()
                .map(|binding| CellBinding {
                    name: binding.name.clone(),
                    cell: binding.cell.as_str().to_owned(),
                })
                .collect();
            GraphCell {
                id: id.as_str().to_owned(),
                kind: content.map_or(WireKind::Unknown, |c| wire_kind(c.kind)),
                state: graph
                    .state(id)
                    .map_or(WireState::Unknown, |s| wire_state(&s)),
                defines,
                reads,
                summary: content
                    .and_then(|c| c.source.lines().find(|l| !l.trim().is_empty()))
                    .unwrap_or_default()
                    .chars()
                    .take(80)
                    .collect(),
            }
        })
        .collect();
    GraphView {
        client_ref,
        mode: match graph.mode() {
            ExecutionMode::Reactive => WireMode::Reactive,
            ExecutionMode::Lazy => WireMode::Lazy,
        },
        cells,
    }
}

/// Python that removes `names` from the kernel's globals, whether or not they are there.
pub fn delete_globals_code(names: &[String]) -> String {
    let list: Vec<String> = names
        .iter()
        .map(|name| crate::document::analysis::sql::python_string_literal(name))
        .collect();
    format!(
        "for __airlock_name in [{}]:\n    globals().pop(__airlock_name, None)\ndel __airlock_name\n",
        list.join(", ")
    )
}

/// A fresh cell id in nbformat's pattern.
pub fn new_cell_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_follows_inserts_moves_and_deletes() {
        let notebook = Notebook::new();
        let mut graph = CellGraph::new(ExecutionMode::Reactive);
        notebook
            .insert_cell(0, "a", CellKind::Code, "x = 1")
            .unwrap();
        notebook
            .insert_cell(1, "b", CellKind::Code, "y = x + 1")
            .unwrap();
        notebook
            .insert_cell(2, "c", CellKind::Markdown, "# notes")
            .unwrap();
        sync_all(&notebook, &mut graph);
        let order: Vec<&str> = graph.cell_ids().map(|c| c.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        let b = CellId::new("b").unwrap();
        assert_eq!(graph.bindings(&b).unwrap()[0].cell.as_str(), "a");

        notebook.move_cell("c", 0).unwrap();
        notebook.delete_cell("a").unwrap();
        notebook.set_source("b", "y = 2").unwrap();
        sync_all(&notebook, &mut graph);
        let order: Vec<&str> = graph.cell_ids().map(|c| c.as_str()).collect();
        assert_eq!(order, ["c", "b"]);
        assert!(graph.bindings(&b).unwrap().is_empty());
        assert_eq!(graph.content(&b).unwrap().source, "y = 2");
    }

    #[test]
    fn cells_with_bad_or_repeated_ids_stay_out_of_the_graph() {
        let notebook = Notebook::new();
        let mut graph = CellGraph::new(ExecutionMode::Reactive);
        notebook
            .insert_cell(0, "ok", CellKind::Code, "x = 1")
            .unwrap();
        notebook
            .insert_cell(1, "has space", CellKind::Code, "y = 1")
            .unwrap();
        sync_all(&notebook, &mut graph);
        let order: Vec<&str> = graph.cell_ids().map(|c| c.as_str()).collect();
        assert_eq!(order, ["ok"]);
    }

    #[test]
    fn deleting_globals_is_plain_python() {
        let code = delete_globals_code(&["df".into(), "it's".into()]);
        assert!(code.contains("'df'"), "{code}");
        assert!(code.contains("globals().pop"), "{code}");
    }

    #[test]
    fn new_ids_fit_nbformat() {
        let id = new_cell_id();
        assert!(crate::collab::ipynb::is_nbformat_id(&id), "{id}");
        assert!(CellId::new(id).is_ok());
    }
}
