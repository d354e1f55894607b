use super::*;
use crate::document::analysis::CellContent;

fn id(name: &str) -> CellId {
    CellId::new(name).unwrap()
}

fn ids(names: &[&str]) -> Vec<CellId> {
    names.iter().map(|name| id(name)).collect()
}

/// A graph of code cells named by their ids, in order.
fn graph(mode: ExecutionMode, cells: &[(&str, &str)]) -> CellGraph {
    let mut graph = CellGraph::new(mode);
    for (index, (name, source)) in cells.iter().enumerate() {
        graph
            .insert_cell(index, id(name), CellContent::code(*source))
            .unwrap();
    }
    graph
}

/// Plays the kernel: starts and completes queued runs until none is left; returns what ran.
fn drive(graph: &mut CellGraph) -> Vec<CellId> {
    let mut ran = Vec::new();
    while let Some(execution) = graph.start_run() {
        assert!(graph.finish_run(&execution.cell, execution.epoch, RunOutcome::Completed));
        ran.push(execution.cell);
    }
    ran
}

/// A graph whose cells have all run once, in order.
fn ran_graph(mode: ExecutionMode, cells: &[(&str, &str)]) -> CellGraph {
    let mut graph = graph(mode, cells);
    let names: Vec<&str> = cells.iter().map(|(name, _)| *name).collect();
    assert_eq!(graph.replay(), ids(&names));
    assert_eq!(drive(&mut graph), ids(&names));
    graph
}

fn binding(graph: &CellGraph, cell: &str) -> Vec<(String, String)> {
    graph
        .bindings(&id(cell))
        .unwrap()
        .iter()
        .map(|b| (b.name.clone(), b.cell.to_string()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

fn state(graph: &CellGraph, cell: &str) -> CellState {
    graph.state(&id(cell)).unwrap()
}

#[test]
fn a_reference_binds_to_the_nearest_definer_above() {
    let graph = graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "df = load()"),
            ("c2", "a = df.x"),
            ("c3", "df = other()"),
            ("c4", "b = df.y"),
        ],
    );
    assert_eq!(binding(&graph, "c2"), pairs(&[("df", "c1")]));
    assert_eq!(binding(&graph, "c4"), pairs(&[("df", "c3")]));
    assert!(binding(&graph, "c3").is_empty());
    assert_eq!(graph.dependents(&id("c1")).unwrap(), ids(&["c2"]));
    assert_eq!(graph.dependents(&id("c3")).unwrap(), ids(&["c4"]));
    for cell in ["c1", "c2", "c3", "c4"] {
        assert_eq!(state(&graph, cell), CellState::Stale, "{cell} never ran");
    }
}

#[test]
fn a_name_only_defined_below_is_an_error_until_the_definer_moves_up() {
    let mut graph = graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "y = x + 1"),
            ("c2", "x = 1"),
            ("c3", "print(undefined_anywhere)"),
        ],
    );
    let expected = CellError::DefinedBelow {
        name: "x".to_owned(),
        cell: id("c2"),
    };
    assert_eq!(state(&graph, "c1"), CellState::Error(expected.clone()));
    assert_eq!(
        graph.run(&id("c1")),
        Err(GraphError::Blocked {
            cell: id("c1"),
            reason: expected
        })
    );
    // A name no cell defines is not an error.
    assert_eq!(state(&graph, "c3"), CellState::Stale);

    let edit = graph.move_cell(&id("c2"), 0).unwrap();
    assert_eq!(edit.rebound, ids(&["c1"]));
    assert_eq!(binding(&graph, "c1"), pairs(&[("x", "c2")]));
    assert_eq!(state(&graph, "c1"), CellState::Stale);
    assert_eq!(graph.run(&id("c1")).unwrap(), ids(&["c2", "c1"]));
}

#[test]
fn deleting_a_cell_rebinds_its_dependents_and_reports_orphaned_globals() {
    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[("c1", "x = 1"), ("c2", "y = x"), ("c3", "z = y")],
    );
    let edit = graph.delete_cell(&id("c1")).unwrap();
    assert_eq!(edit.undefined, vec!["x".to_owned()]);
    assert_eq!(edit.rebound, ids(&["c2"]));
    assert_eq!(edit.stale, ids(&["c2", "c3"]));
    // Reactive: the up-to-date cell that lost its input re-runs (and fails in the kernel).
    assert_eq!(edit.queued, ids(&["c2", "c3"]));
    assert!(graph.bindings(&id("c2")).unwrap().is_empty());
}

#[test]
fn deleting_a_redefinition_restores_the_definer_above() {
    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[("c1", "df = 1"), ("c2", "df = 2"), ("c3", "print(df)")],
    );
    let edit = graph.delete_cell(&id("c2")).unwrap();
    assert!(edit.undefined.is_empty(), "c1 still defines df");
    assert_eq!(edit.rebound, ids(&["c3"]));
    // The kernel holds c2's df, so c1 runs again before c3.
    assert_eq!(edit.queued, ids(&["c1", "c3"]));
    assert_eq!(drive(&mut graph), ids(&["c1", "c3"]));
}

#[test]
fn deleting_in_lazy_mode_only_marks_stale() {
    let mut graph = ran_graph(ExecutionMode::Lazy, &[("c1", "x = 1"), ("c2", "y = x")]);
    let edit = graph.delete_cell(&id("c1")).unwrap();
    assert_eq!(edit.undefined, vec!["x".to_owned()]);
    assert!(edit.queued.is_empty());
    assert_eq!(state(&graph, "c2"), CellState::Stale);
    assert_eq!(graph.start_run(), None);
}

#[test]
fn moving_a_cell_rebinds_and_reruns_what_changed() {
    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "x = 1"),
            ("c2", "x = 2"),
            ("c3", "print(x)"),
            ("c4", "other = 1"),
        ],
    );
    assert_eq!(binding(&graph, "c3"), pairs(&[("x", "c2")]));
    let edit = graph.move_cell(&id("c2"), 3).unwrap();
    assert_eq!(
        graph.cell_ids().cloned().collect::<Vec<_>>(),
        ids(&["c1", "c3", "c4", "c2"])
    );
    assert_eq!(binding(&graph, "c3"), pairs(&[("x", "c1")]));
    assert_eq!(edit.rebound, ids(&["c3"]));
    assert_eq!(edit.stale, ids(&["c3"]));
    assert!(edit.undefined.is_empty());
    // The kernel's x is c2's: c1 runs again before c3.
    assert_eq!(edit.queued, ids(&["c1", "c3"]));
    assert_eq!(state(&graph, "c4"), CellState::Idle);

    // A move that changes no binding changes nothing.
    assert_eq!(drive(&mut graph), ids(&["c1", "c3"]));
    let edit = graph.move_cell(&id("c4"), 0).unwrap();
    assert_eq!(edit, Edit::default());
}

#[test]
fn editing_marks_the_cell_and_its_descendants_stale_at_once() {
    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "a = 1"),
            ("c2", "b = a + 1"),
            ("c3", "c = b + 1"),
            ("c4", "unrelated = 0"),
        ],
    );
    while graph.poll_event().is_some() {}
    let edit = graph
        .set_source(&id("c1"), CellContent::code("a = 2"))
        .unwrap();
    assert_eq!(edit.stale, ids(&["c1", "c2", "c3"]));
    assert!(edit.queued.is_empty(), "edits never run anything");
    assert_eq!(state(&graph, "c4"), CellState::Idle);
    let mut events = Vec::new();
    while let Some(GraphEvent::StateChanged { cell, state }) = graph.poll_event() {
        events.push((cell.to_string(), state));
    }
    assert_eq!(
        events,
        vec![
            ("c1".to_owned(), CellState::Stale),
            ("c2".to_owned(), CellState::Stale),
            ("c3".to_owned(), CellState::Stale),
        ]
    );
    // Unchanged content is not an edit.
    assert_eq!(
        graph.set_source(&id("c4"), CellContent::code("unrelated = 0")),
        Ok(Edit::default())
    );
}

#[test]
fn an_edit_that_changes_defs_rebinds_dependents() {
    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[("c1", "x = 1"), ("c2", "x = 2"), ("c3", "y = x")],
    );
    let edit = graph
        .set_source(&id("c2"), CellContent::code("w = 2"))
        .unwrap();
    assert_eq!(edit.rebound, ids(&["c3"]));
    assert_eq!(edit.stale, ids(&["c2", "c3"]));
    assert_eq!(binding(&graph, "c3"), pairs(&[("x", "c1")]));
    // c3 now reads c1's x, which the kernel does not hold (c2's x is there): c1 runs first.
    assert_eq!(graph.run(&id("c3")).unwrap(), ids(&["c1", "c3"]));
    assert_eq!(drive(&mut graph), ids(&["c1", "c3"]));
    assert_eq!(graph.run(&id("c2")).unwrap(), ids(&["c2"]));
    let execution = graph.start_run().unwrap();
    assert!(execution.delete_first.is_empty(), "c1 still defines x");

    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[("c1", "x = 1"), ("c2", "print(x)")],
    );
    graph
        .set_source(&id("c1"), CellContent::code("renamed = 1"))
        .unwrap();
    assert_eq!(graph.run(&id("c1")).unwrap(), ids(&["c1"]));
    let execution = graph.start_run().unwrap();
    assert_eq!(execution.delete_first, vec!["x".to_owned()]);
}

#[test]
fn lazy_mode_runs_stale_inputs_first_and_leaves_descendants_stale() {
    let mut graph = ran_graph(
        ExecutionMode::Lazy,
        &[("c1", "a = 1"), ("c2", "b = a + 1"), ("c3", "c = b + 1")],
    );
    let edit = graph
        .set_source(&id("c1"), CellContent::code("a = 5"))
        .unwrap();
    assert_eq!(edit.stale, ids(&["c1", "c2", "c3"]));
    assert!(edit.queued.is_empty());
    assert_eq!(graph.start_run(), None, "lazy edits schedule nothing");

    // Running the last cell never uses stale inputs.
    assert_eq!(graph.run(&id("c3")).unwrap(), ids(&["c1", "c2", "c3"]));
    assert_eq!(drive(&mut graph), ids(&["c1", "c2", "c3"]));

    // Running a cell only marks its descendants stale.
    assert_eq!(graph.run(&id("c1")).unwrap(), ids(&["c1"]));
    assert_eq!(drive(&mut graph), ids(&["c1"]));
    assert_eq!(state(&graph, "c2"), CellState::Stale);
    assert_eq!(state(&graph, "c3"), CellState::Stale);
    assert_eq!(graph.run_stale(), ids(&["c2", "c3"]));
    assert_eq!(drive(&mut graph), ids(&["c2", "c3"]));
}

#[test]
fn reactive_mode_runs_descendants() {
    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "a = 1"),
            ("c2", "b = a + 1"),
            ("c3", "c = b + 1"),
            ("c4", "d = 4"),
        ],
    );
    assert_eq!(graph.run(&id("c2")).unwrap(), ids(&["c2", "c3"]));
    assert_eq!(state(&graph, "c2"), CellState::Queued);
    assert_eq!(drive(&mut graph), ids(&["c2", "c3"]));
}

#[test]
fn a_diamond_runs_each_cell_once_in_document_order() {
    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "a = 1"),
            ("c2", "b = a * 2"),
            ("c3", "c = a * 3"),
            ("c4", "d = b + c"),
        ],
    );
    assert_eq!(
        graph.run(&id("c1")).unwrap(),
        ids(&["c1", "c2", "c3", "c4"])
    );
    assert_eq!(drive(&mut graph), ids(&["c1", "c2", "c3", "c4"]));

    let edit = graph
        .set_source(&id("c2"), CellContent::code("b = a * 20"))
        .unwrap();
    assert_eq!(edit.stale, ids(&["c2", "c4"]));
    assert_eq!(graph.run(&id("c2")).unwrap(), ids(&["c2", "c4"]));
    assert_eq!(drive(&mut graph), ids(&["c2", "c4"]));

    // Lazy, from nothing: running the bottom pulls the whole diamond in, once each.
    let mut graph = graph_from(&graph, ExecutionMode::Lazy);
    graph.kernel_lost();
    assert_eq!(
        graph.run(&id("c4")).unwrap(),
        ids(&["c1", "c2", "c3", "c4"])
    );
}

/// The same cells in a fresh graph.
fn graph_from(other: &CellGraph, mode: ExecutionMode) -> CellGraph {
    let mut graph = CellGraph::new(mode);
    for (index, cell) in other.cell_ids().enumerate() {
        let content = other.content(cell).unwrap().clone();
        graph.insert_cell(index, cell.clone(), content).unwrap();
    }
    graph
}

#[test]
fn rerunning_a_redefining_cell_restores_its_input_first() {
    // df = load(); df = clean(df); plot(df): re-running the second cell must not clean twice.
    let cells = [
        ("c1", "df = load()"),
        ("c2", "df = clean(df)"),
        ("c3", "plot(df)"),
    ];
    let mut graph = ran_graph(ExecutionMode::Reactive, &cells);
    assert_eq!(graph.run(&id("c2")).unwrap(), ids(&["c1", "c2", "c3"]));
    assert_eq!(drive(&mut graph), ids(&["c1", "c2", "c3"]));

    let mut graph = ran_graph(ExecutionMode::Lazy, &cells);
    assert_eq!(graph.run(&id("c2")).unwrap(), ids(&["c1", "c2"]));
    assert_eq!(drive(&mut graph), ids(&["c1", "c2"]));
    assert_eq!(state(&graph, "c3"), CellState::Stale);
    // c3 reads c2's df, which the kernel now holds: only c3 runs.
    assert_eq!(graph.run(&id("c3")).unwrap(), ids(&["c3"]));
}

#[test]
fn late_outputs_of_cancelled_runs_are_dropped() {
    let mut graph = graph(
        ExecutionMode::Reactive,
        &[("c1", "import time; time.sleep(10)"), ("c2", "x = 1")],
    );
    assert_eq!(graph.run(&id("c1")).unwrap(), ids(&["c1"]));
    let first = graph.start_run().unwrap();
    assert_eq!(first.cell, id("c1"));
    assert!(graph.accept_output(&id("c1"), first.epoch));
    assert_eq!(state(&graph, "c1"), CellState::Running);

    assert_eq!(graph.interrupt(), ids(&["c1"]));
    assert!(!graph.accept_output(&id("c1"), first.epoch));
    assert!(!graph.finish_run(&id("c1"), first.epoch, RunOutcome::Failed));
    assert_eq!(state(&graph, "c1"), CellState::Stale);

    graph.run(&id("c1")).unwrap();
    let second = graph.start_run().unwrap();
    assert!(second.epoch > first.epoch);
    assert!(!graph.accept_output(&id("c1"), first.epoch));
    assert!(graph.accept_output(&id("c1"), second.epoch));
    assert!(
        !graph.accept_output(&id("c2"), second.epoch),
        "epochs are per run"
    );
    assert!(graph.finish_run(&id("c1"), second.epoch, RunOutcome::Completed));
    // Output that trails the reply still belongs to the run.
    assert!(graph.accept_output(&id("c1"), second.epoch));
    assert!(
        !graph.finish_run(&id("c1"), second.epoch, RunOutcome::Completed),
        "only once"
    );

    // Re-running supersedes the previous epoch.
    graph.run(&id("c1")).unwrap();
    let third = graph.start_run().unwrap();
    assert!(third.epoch > second.epoch);
    assert!(!graph.accept_output(&id("c1"), second.epoch));
}

#[test]
fn a_lost_kernel_makes_everything_stale_and_replay_runs_all_code_in_order() {
    let mut graph = ran_graph(
        ExecutionMode::Reactive,
        &[("c1", "a = 1"), ("c2", "b = a"), ("c3", "c = 3")],
    );
    graph
        .insert_cell(1, id("md"), CellContent::markdown("# Notes"))
        .unwrap();
    graph.run(&id("c3")).unwrap();
    let running = graph.start_run().unwrap();
    assert_eq!(graph.kernel_lost(), ids(&["c3"]));
    assert!(!graph.accept_output(&id("c3"), running.epoch));
    for cell in ["c1", "c2", "c3"] {
        assert_eq!(state(&graph, cell), CellState::Stale);
    }
    assert_eq!(state(&graph, "md"), CellState::Idle);
    assert_eq!(graph.replay(), ids(&["c1", "c2", "c3"]));
    let mut epochs = Vec::new();
    while let Some(execution) = graph.start_run() {
        assert!(
            execution.delete_first.is_empty(),
            "a new kernel holds nothing"
        );
        epochs.push(execution.epoch);
        graph.finish_run(&execution.cell, execution.epoch, RunOutcome::Completed);
    }
    assert_eq!(epochs.len(), 3);
    assert!(epochs.windows(2).all(|w| w[0] < w[1]));
    assert!(epochs[0] > running.epoch);
}

#[test]
fn a_star_import_is_a_cell_error() {
    let mut graph = graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "from pylab import *\nx = 1"),
            ("c2", "y = x"),
            ("c3", "plot(z)"),
        ],
    );
    let error = CellError::StarImport {
        modules: vec!["pylab".to_owned()],
    };
    assert_eq!(state(&graph, "c1"), CellState::Error(error.clone()));
    assert_eq!(
        graph.run(&id("c1")),
        Err(GraphError::Blocked {
            cell: id("c1"),
            reason: error.clone()
        })
    );
    // Its dependents cannot run either; unrelated cells can.
    assert_eq!(
        graph.run(&id("c2")),
        Err(GraphError::AncestorBlocked {
            cell: id("c2"),
            ancestor: id("c1"),
            reason: error
        })
    );
    assert_eq!(graph.run(&id("c3")).unwrap(), ids(&["c3"]));
    assert_eq!(graph.replay(), ids(&["c3"]));
    assert_eq!(drive(&mut graph), ids(&["c3"]));

    // Fixing the import clears the error.
    graph
        .set_source(
            &id("c1"),
            CellContent::code("from pylab import plot\nx = 1"),
        )
        .unwrap();
    assert_eq!(state(&graph, "c1"), CellState::Stale);
    assert_eq!(graph.run(&id("c2")).unwrap(), ids(&["c1", "c2"]));
}

#[test]
fn syntax_errors_and_deleted_names_are_cell_errors() {
    let mut graph = graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "x = 1"),
            ("c2", "del x"),
            ("c3", "print(x)"),
            ("c4", "def f(:"),
        ],
    );
    assert_eq!(
        state(&graph, "c3"),
        CellState::Error(CellError::DeletedAbove {
            name: "x".to_owned(),
            cell: id("c2")
        })
    );
    assert!(matches!(
        state(&graph, "c4"),
        CellState::Error(CellError::Analysis(AnalysisError::Syntax { line: 1, .. }))
    ));
    assert!(matches!(
        graph.run(&id("c4")),
        Err(GraphError::Blocked { .. })
    ));
    // The deleting cell reads x from c1.
    assert_eq!(binding(&graph, "c2"), pairs(&[("x", "c1")]));
    assert_eq!(graph.replay(), ids(&["c1", "c2"]));
}

#[test]
fn a_failure_takes_the_queued_descendants_off_the_queue() {
    let mut graph = graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "a = boom()"),
            ("c2", "b = a"),
            ("c3", "c = b"),
            ("c4", "d = 4"),
        ],
    );
    assert_eq!(graph.replay(), ids(&["c1", "c2", "c3", "c4"]));
    let first = graph.start_run().unwrap();
    assert!(graph.finish_run(&first.cell, first.epoch, RunOutcome::Failed));
    assert_eq!(state(&graph, "c1"), CellState::Error(CellError::Failed));
    assert_eq!(state(&graph, "c2"), CellState::Stale);
    assert_eq!(state(&graph, "c3"), CellState::Stale);
    assert_eq!(state(&graph, "c4"), CellState::Queued);
    assert_eq!(drive(&mut graph), ids(&["c4"]));

    // Asking for a dependent runs the failed cell again first.
    assert_eq!(graph.run(&id("c3")).unwrap(), ids(&["c1", "c2", "c3"]));
}

#[test]
fn edits_and_run_requests_during_a_run_take_effect_when_it_ends() {
    let mut graph = graph(ExecutionMode::Reactive, &[("c1", "a = 1"), ("c2", "b = a")]);
    graph.run(&id("c1")).unwrap();
    let first = graph.start_run().unwrap();
    assert_eq!(first.cell, id("c1"));
    // Edited while running: stale once done; c2 stays queued and runs on the new value later.
    graph
        .set_source(&id("c1"), CellContent::code("a = 2"))
        .unwrap();
    assert_eq!(state(&graph, "c1"), CellState::Running);
    graph.finish_run(&first.cell, first.epoch, RunOutcome::Completed);
    assert_eq!(state(&graph, "c1"), CellState::Stale);
    // c2 needs a stale c1: c1 runs first.
    assert_eq!(drive(&mut graph), ids(&["c1", "c2"]));

    // Run requested while running: it runs again after finishing.
    graph.run(&id("c2")).unwrap();
    let running = graph.start_run().unwrap();
    assert_eq!(graph.run(&id("c2")).unwrap(), ids(&["c2"]));
    assert_eq!(state(&graph, "c2"), CellState::Running);
    graph.finish_run(&running.cell, running.epoch, RunOutcome::Completed);
    assert_eq!(state(&graph, "c2"), CellState::Queued);
    assert_eq!(drive(&mut graph), ids(&["c2"]));
}

#[test]
fn sql_cells_bind_dataframes_and_define_their_result() {
    let mut graph = graph(ExecutionMode::Reactive, &[("c1", "df = make()")]);
    graph
        .insert_cell(
            1,
            id("q"),
            CellContent::sql("-- name: top\nSELECT * FROM df ORDER BY x LIMIT 5"),
        )
        .unwrap();
    graph
        .insert_cell(2, id("c3"), CellContent::code("print(top)"))
        .unwrap();
    assert_eq!(binding(&graph, "q"), pairs(&[("df", "c1")]));
    assert_eq!(binding(&graph, "c3"), pairs(&[("top", "q")]));
    assert_eq!(graph.run(&id("c3")).unwrap(), ids(&["c1", "q", "c3"]));
    let _ = graph.start_run().unwrap();
    let c1 = graph.epoch(&id("c1")).unwrap();
    graph.finish_run(&id("c1"), c1, RunOutcome::Completed);
    let sql = graph.start_run().unwrap();
    assert_eq!(sql.cell, id("q"));
    assert!(sql.code.starts_with("top = "), "{}", sql.code);
}

#[test]
fn builtins_bind_only_to_a_shadowing_cell_above() {
    let graph = graph(
        ExecutionMode::Reactive,
        &[
            ("c1", "print(len([]))"),
            ("c2", "len = 3"),
            ("c3", "print(len)"),
        ],
    );
    assert!(binding(&graph, "c1").is_empty());
    assert_eq!(
        state(&graph, "c1"),
        CellState::Stale,
        "not an error: it is the builtin"
    );
    assert_eq!(binding(&graph, "c3"), pairs(&[("len", "c2")]));
}

#[test]
fn markdown_cells_never_run() {
    let mut graph = CellGraph::new(ExecutionMode::Reactive);
    graph
        .insert_cell(0, id("md"), CellContent::markdown("x = 1"))
        .unwrap();
    assert_eq!(state(&graph, "md"), CellState::Idle);
    assert_eq!(
        graph.run(&id("md")),
        Err(GraphError::NotCode {
            cell: id("md"),
            kind: CellKind::Markdown
        })
    );
    // Turning it into code makes it a stale code cell.
    graph
        .set_source(&id("md"), CellContent::code("x = 1"))
        .unwrap();
    assert_eq!(state(&graph, "md"), CellState::Stale);
}

#[test]
fn bad_requests_are_refused() {
    let mut graph = graph(ExecutionMode::Reactive, &[("c1", "x = 1")]);
    assert_eq!(
        graph.insert_cell(0, id("c1"), CellContent::code("")),
        Err(GraphError::DuplicateCell(id("c1")))
    );
    assert_eq!(
        graph.insert_cell(5, id("c2"), CellContent::code("")),
        Err(GraphError::OutOfRange { index: 5, len: 1 })
    );
    assert_eq!(
        graph.move_cell(&id("c1"), 1),
        Err(GraphError::OutOfRange { index: 1, len: 1 })
    );
    assert_eq!(
        graph.run(&id("nope")),
        Err(GraphError::UnknownCell(id("nope")))
    );
    assert_eq!(
        graph.delete_cell(&id("nope")),
        Err(GraphError::UnknownCell(id("nope")))
    );
    assert!(!graph.finish_run(&id("nope"), Epoch(1), RunOutcome::Completed));
    assert!(!graph.accept_output(&id("nope"), Epoch(1)));
}

#[test]
fn a_deleted_running_cell_drops_its_outputs() {
    let mut graph = graph(ExecutionMode::Reactive, &[("c1", "x = 1"), ("c2", "y = x")]);
    graph.run(&id("c1")).unwrap();
    let running = graph.start_run().unwrap();
    let edit = graph.delete_cell(&id("c1")).unwrap();
    assert_eq!(edit.undefined, vec!["x".to_owned()]);
    assert!(!graph.accept_output(&id("c1"), running.epoch));
    assert!(!graph.finish_run(&id("c1"), running.epoch, RunOutcome::Completed));
    // c2 stays queued and runs; x is gone, so it fails in the kernel like in Jupyter.
    assert_eq!(drive(&mut graph), ids(&["c2"]));
}

use crate::document::test_rng::Rng;

/// Random edits, runs and kernel events; after every step the graph's invariants hold.
#[test]
fn random_sessions_keep_the_invariants() {
    const SOURCES: &[&str] = &[
        "a = 1",
        "b = a + 1",
        "a = b * 2",
        "c = a + b",
        "print(c)",
        "del b",
        "from m import *",
        "def f(:",
        "d = [a for a in range(3)]",
        "a += 1",
        "%time e = c",
        "x = undefined_name",
    ];
    let mut started = 0;
    let mut planned = 0;
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mode = if seed % 2 == 0 {
            ExecutionMode::Reactive
        } else {
            ExecutionMode::Lazy
        };
        let mut graph = CellGraph::new(mode);
        let mut next_id = 0;
        let mut running: Option<Execution> = None;
        let mut last_epoch = Epoch(0);
        for step in 0..200 {
            let context = format!("seed {seed}, step {step}");
            let cells: Vec<CellId> = graph.cell_ids().cloned().collect();
            let pick = |rng: &mut Rng| cells[rng.below(cells.len())].clone();
            match rng.below(10) {
                0 | 1 => {
                    next_id += 1;
                    let source = SOURCES[rng.below(SOURCES.len())];
                    let at = rng.below(cells.len() + 1);
                    graph
                        .insert_cell(at, id(&format!("n{next_id}")), CellContent::code(source))
                        .unwrap();
                }
                2 if !cells.is_empty() => {
                    let source = SOURCES[rng.below(SOURCES.len())];
                    graph
                        .set_source(&pick(&mut rng), CellContent::code(source))
                        .unwrap();
                }
                3 if !cells.is_empty() => {
                    let to = rng.below(cells.len());
                    graph.move_cell(&pick(&mut rng), to).unwrap();
                }
                4 if !cells.is_empty() => {
                    graph.delete_cell(&pick(&mut rng)).unwrap();
                }
                5 | 6 if !cells.is_empty() => {
                    if let Ok(order) = graph.run(&pick(&mut rng)) {
                        planned += 1;
                        let positions: Vec<usize> = order
                            .iter()
                            .map(|cell| graph.cell_ids().position(|c| c == cell).unwrap())
                            .collect();
                        assert!(
                            positions.windows(2).all(|w| w[0] < w[1]),
                            "{context}: plan not in document order: {order:?}"
                        );
                    }
                }
                7 if running.is_none() => {
                    running = graph.start_run();
                    if let Some(execution) = &running {
                        started += 1;
                        assert!(execution.epoch > last_epoch, "{context}: epochs grow");
                        last_epoch = execution.epoch;
                        // Never on stale inputs: every cell it reads from is up to date.
                        for binding in graph.bindings(&execution.cell).unwrap() {
                            let parent = graph.state(&binding.cell).unwrap();
                            assert_eq!(
                                parent,
                                CellState::Idle,
                                "{context}: {} started on input {}",
                                execution.cell,
                                binding.cell
                            );
                        }
                    }
                }
                8 if running.is_some() => {
                    if let Some(execution) = running.take() {
                        let outcome = if rng.below(4) == 0 {
                            RunOutcome::Failed
                        } else {
                            RunOutcome::Completed
                        };
                        graph.finish_run(&execution.cell, execution.epoch, outcome);
                        assert!(
                            !graph.finish_run(&execution.cell, execution.epoch, outcome),
                            "{context}: a run finishes once"
                        );
                    }
                }
                9 => {
                    if rng.below(2) == 0 {
                        graph.interrupt();
                    } else {
                        graph.kernel_lost();
                    }
                    if let Some(execution) = running.take() {
                        assert!(!graph.accept_output(&execution.cell, execution.epoch));
                    }
                }
                _ => {}
            }
            // Bindings point up the document, and every state is consistent.
            let order: Vec<CellId> = graph.cell_ids().cloned().collect();
            for (index, cell) in order.iter().enumerate() {
                for binding in graph.bindings(cell).unwrap() {
                    let at = order.iter().position(|c| *c == binding.cell).unwrap();
                    assert!(
                        at < index,
                        "{context}: {cell} binds below, to {}",
                        binding.cell
                    );
                }
                let running_here = running.as_ref().is_some_and(|e| e.cell == *cell);
                if graph.state(cell) == Some(CellState::Running) {
                    assert!(running_here, "{context}: {cell} running without a run");
                }
            }
            while graph.poll_event().is_some() {}
        }
    }
    // The sessions did exercise the scheduler.
    assert!(started > 150, "only {started} runs started");
    assert!(planned > 150, "only {planned} run requests planned");
}
