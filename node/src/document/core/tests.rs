//! The core's rules, one test each, against the scripted [`FakeKernel`]; then a seeded random
//! session that checks all of them after every step. No Python, no runtime, no clock: time is
//! an `Instant` the tests move by hand.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_protocol::{
    Blob, CellEdit, CellState as WireState, ClientMessage, ClientUpdate, DeathCause, EditCells,
    ErrorCode, ErrorReply, ExecuteRequest, KernelStatus, Output, Role, RunCells, RunStatus,
    ServerMessage, SessionId, StreamName,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fake_kernel::FakeKernel;
use super::*;
use crate::collab::Notebook;
use crate::document::analysis::CellKind;
use crate::document::graph::{CellGraph, ExecutionMode};
use crate::document::outputs;
use crate::store::{CommitError, DocumentId, Epoch as StoreEpoch, Seq, StoreError};

/// A driver for tests: carries out effects into logs, leaves commits for the test to answer.
struct Harness {
    core: DocumentCore<FakeKernel>,
    kernel: FakeKernel,
    now: Instant,
    broadcasts: Vec<Broadcast>,
    direct: Vec<(SessionId, ServerMessage)>,
    replies: Vec<(CommitId, Result<Option<ServerMessage>, ErrorReply>)>,
    /// Commits asked for and not yet answered, oldest first.
    commits: VecDeque<(CommitId, Vec<Bytes>)>,
    /// Every commit ever asked for, in order.
    commits_asked: Vec<CommitId>,
    puts: Vec<(CellId, Bytes)>,
    compactions: Vec<Seq>,
    restarts: usize,
    /// Whether a restart's answer reaches the core before the kernel's events about it (the
    /// actor may see either first).
    restart_answer_first: bool,
    stops: Vec<(StopReason, Option<Bytes>)>,
    timers: Vec<(Instant, Timer)>,
    run_changes: Vec<Option<RunOrigin>>,
    store_seq: u64,
}

fn limits() -> OutputLimits {
    OutputLimits::default()
}

fn stored(cells: &[(&str, &str)]) -> StoredDocument {
    let notebook = Notebook::new();
    for (index, (id, source)) in cells.iter().enumerate() {
        notebook
            .insert_cell(index, id, CellKind::Code, source)
            .expect("insert a cell");
    }
    notebook.take_changes();
    let mut graph = CellGraph::new(ExecutionMode::Reactive);
    sync_structure(&notebook, &mut graph);
    while graph.poll_event().is_some() {}
    StoredDocument {
        doc: DocumentId::new("doc").expect("a valid id"),
        notebook,
        graph,
        outputs: Default::default(),
        seq: Seq(0),
        appends_since_snapshot: 0,
    }
}

impl Harness {
    fn new(cells: &[(&str, &str)]) -> Self {
        Self::with(cells, limits(), None)
    }

    fn with(cells: &[(&str, &str)], output_limits: OutputLimits, idle: Option<Duration>) -> Self {
        let kernel = FakeKernel::new();
        let now = Instant::now();
        let config = CoreConfig {
            output_limits,
            ring_capacity: 4096,
            idle_timeout: idle,
        };
        let core = DocumentCore::new(now, stored(cells), kernel.clone(), config);
        Harness {
            core,
            kernel,
            now,
            broadcasts: Vec::new(),
            direct: Vec::new(),
            replies: Vec::new(),
            commits: VecDeque::new(),
            commits_asked: Vec::new(),
            puts: Vec::new(),
            compactions: Vec::new(),
            restarts: 0,
            restart_answer_first: false,
            stops: Vec::new(),
            timers: Vec::new(),
            run_changes: Vec::new(),
            store_seq: 0,
        }
    }

    /// Carries out every effect, and hands the kernel's events to the core, until both are
    /// quiet. Restarts finish at once (after the kernel's events for them).
    fn settle(&mut self) {
        loop {
            let mut busy = false;
            while let Some(effect) = self.core.poll_effect() {
                busy = true;
                match effect {
                    Effect::Broadcast(event) => self.broadcasts.push(event),
                    Effect::Direct { session, message } => self.direct.push((session, message)),
                    Effect::Reply { commit, result } => self.replies.push((commit, result)),
                    Effect::Commit { commit, updates } => {
                        self.commits_asked.push(commit);
                        self.commits.push_back((commit, updates));
                    }
                    Effect::PutOutputs { cell, bytes } => self.puts.push((cell, bytes)),
                    Effect::Compact { upto, .. } => self.compactions.push(upto),
                    Effect::RestartKernel => {
                        self.restarts += 1;
                        let result = self.kernel.restart();
                        if self.restart_answer_first {
                            self.core.handle_restart_finished(self.now, result);
                            self.deliver();
                        } else {
                            self.deliver();
                            self.core.handle_restart_finished(self.now, result);
                        }
                    }
                    Effect::RunChanged(origin) => self.run_changes.push(origin),
                    Effect::SetTimer { at, timer } => self.timers.push((at, timer)),
                    Effect::Stop { reason, snapshot } => self.stops.push((reason, snapshot)),
                }
            }
            busy |= self.deliver();
            if !busy {
                return;
            }
        }
    }

    /// Hands the kernel's waiting events to the core; whether there were any.
    fn deliver(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.kernel.poll_event() {
            any = true;
            self.core.handle_kernel_event(self.now, event);
        }
        any
    }

    fn join(&mut self, role: Role) -> SessionId {
        let session = self
            .core
            .handle_join(self.now, "ada".to_owned(), role)
            .expect("join");
        self.settle();
        session
    }

    fn request(&mut self, session: SessionId, message: ClientMessage) -> Answer {
        let answer = self.core.handle_request(self.now, session, message);
        self.settle();
        answer
    }

    fn run(&mut self, session: SessionId, cells: &[&str]) -> Answer {
        let cells = cells.iter().map(|c| (*c).to_owned()).collect();
        self.request(
            session,
            ClientMessage::RunCells(RunCells {
                client_ref: 7,
                cells,
                replay: false,
            }),
        )
    }

    fn execute(&mut self, session: SessionId, code: &str) -> Answer {
        self.request(
            session,
            ClientMessage::Execute(ExecuteRequest {
                client_ref: 9,
                code: code.to_owned(),
                store_history: true,
            }),
        )
    }

    /// An update a client replica makes by setting `cell`'s source.
    fn client_edit(&self, cell: &str, source: &str) -> Vec<u8> {
        let replica = Notebook::load([self.core.notebook.snapshot().as_slice()]).expect("load");
        replica.set_source(cell, source).expect("edit")
    }

    fn update(&mut self, session: SessionId, seq: u64, update: Vec<u8>) -> Answer {
        self.request(
            session,
            ClientMessage::Update(ClientUpdate {
                seq,
                update: Blob(update),
            }),
        )
    }

    fn set_source(&mut self, session: SessionId, cell: &str, source: &str, run: bool) -> Answer {
        self.request(
            session,
            ClientMessage::EditCells(EditCells {
                client_ref: 11,
                edits: vec![CellEdit::SetSource {
                    cell: cell.to_owned(),
                    source: source.to_owned(),
                }],
                run,
            }),
        )
    }

    /// Answers the oldest pending commit.
    fn commit_next(&mut self, result: Result<(), CommitError>) -> Option<CommitId> {
        self.commit_at(0, result)
    }

    /// Answers the pending commit at `index` (commits may finish out of order).
    fn commit_at(&mut self, index: usize, result: Result<(), CommitError>) -> Option<CommitId> {
        let (commit, updates) = self.commits.remove(index)?;
        let result = result.map(|()| {
            updates
                .iter()
                .map(|_| {
                    self.store_seq += 1;
                    Seq(self.store_seq)
                })
                .collect()
        });
        self.core.handle_committed(self.now, commit, result);
        self.settle();
        Some(commit)
    }

    fn finish_next(&mut self, outputs: Vec<Output>, status: RunStatus) -> Option<RunId> {
        let run = self.kernel.finish_next(outputs, status);
        self.settle();
        run
    }

    fn messages(&self) -> impl Iterator<Item = &ServerMessage> {
        self.broadcasts.iter().map(|event| &event.message)
    }

    fn queued(&self) -> Vec<RunId> {
        self.messages()
            .filter_map(|m| match m {
                ServerMessage::Queued(q) => Some(q.run),
                _ => None,
            })
            .collect()
    }

    fn dones(&self, run: RunId) -> Vec<RunStatus> {
        self.messages()
            .filter_map(|m| match m {
                ServerMessage::Done(d) if d.run == run => Some(d.status),
                _ => None,
            })
            .collect()
    }

    fn outputs_of(&self, run: RunId) -> Vec<&Output> {
        self.messages()
            .filter_map(|m| match m {
                ServerMessage::Output(o) if o.run == run => Some(&o.output),
                _ => None,
            })
            .collect()
    }

    fn acks(&self, session: SessionId) -> Vec<(u64, Option<String>)> {
        self.direct
            .iter()
            .filter(|(s, _)| *s == session)
            .filter_map(|(_, m)| match m {
                ServerMessage::Ack(ack) => Some((ack.seq, ack.refused.clone())),
                _ => None,
            })
            .collect()
    }

    fn cell_state(&self, cell: &str) -> Option<WireState> {
        let id = CellId::new(cell.to_owned()).ok()?;
        self.core.graph.state(&id).map(|s| cells::wire_state(&s))
    }
}

fn stream(text: &str) -> Output {
    Output::Stream {
        name: StreamName::Stdout,
        text: text.to_owned(),
    }
}

fn store_failure() -> CommitError {
    CommitError::Store(Arc::new(StoreError::TooLarge { len: 0 }))
}

fn fenced() -> CommitError {
    CommitError::Fenced {
        attempted: StoreEpoch(1),
        current: StoreEpoch(2),
    }
}

fn exactly_one_done_for_every_queued_run(h: &Harness) {
    for run in h.queued() {
        assert_eq!(h.dones(run).len(), 1, "run {run:?}: {:?}", h.dones(run));
    }
}

// ---- Exactly one `done` per run ---------------------------------------------------------------

#[test]
fn a_cell_run_ends_with_one_done() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    let run = h
        .finish_next(vec![stream("hi")], RunStatus::Ok)
        .expect("a run");
    assert_eq!(h.dones(run), [RunStatus::Ok]);
    assert_eq!(h.outputs_of(run).len(), 1);
    assert_eq!(h.cell_state("a"), Some(WireState::Idle));
    exactly_one_done_for_every_queued_run(&h);
}

#[test]
fn an_interrupt_ends_the_running_and_the_queued_runs_once_each() {
    let mut h = Harness::new(&[("a", "x = 1"), ("b", "y = x")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    h.execute(s, "print(1)");
    assert!(matches!(
        h.request(s, ClientMessage::Interrupt),
        Answer::Now(Ok(None))
    ));
    let queued = h.queued();
    assert_eq!(queued.len(), 2);
    assert_eq!(h.dones(queued[0]), [RunStatus::Error]);
    assert_eq!(h.dones(queued[1]), [RunStatus::Aborted]);
    // The interrupt cancelled `b`, which `a` had queued in reactive mode: it never ran.
    assert_eq!(h.kernel.executed().len(), 2);
    exactly_one_done_for_every_queued_run(&h);
}

#[test]
fn a_restart_aborts_every_pending_run_once() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    h.execute(s, "1");
    h.execute(s, "2");
    assert!(matches!(
        h.request(s, ClientMessage::Restart),
        Answer::Now(Ok(None))
    ));
    assert_eq!(h.restarts, 1);
    for run in h.queued() {
        assert_eq!(h.dones(run), [RunStatus::Aborted]);
    }
    assert_eq!(h.cell_state("a"), Some(WireState::Stale));
    // The fresh kernel takes work again.
    h.run(s, &["a"]);
    h.finish_next(Vec::new(), RunStatus::Ok);
    exactly_one_done_for_every_queued_run(&h);
}

#[test]
fn a_kernel_death_aborts_every_pending_run_once_and_refuses_work() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    h.execute(s, "1");
    h.kernel.die(DeathCause::OutOfMemory { limit_bytes: None });
    h.settle();
    for run in h.queued() {
        assert_eq!(h.dones(run), [RunStatus::Aborted]);
    }
    assert!(matches!(h.core.kernel_status(), KernelStatus::Dead { .. }));
    let Answer::Now(Err(refusal)) = h.execute(s, "2") else {
        panic!("a dead kernel takes no run");
    };
    assert_eq!(refusal.code, ErrorCode::KernelUnavailable);
    assert_eq!(h.cell_state("a"), Some(WireState::Stale));
    exactly_one_done_for_every_queued_run(&h);
}

#[test]
fn a_run_superseded_by_an_edit_ends_once_and_leaves_its_cell_stale() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    let update = h.client_edit("a", "x = 2");
    h.update(s, 1, update);
    let run = h
        .finish_next(vec![stream("old")], RunStatus::Ok)
        .expect("a run");
    assert_eq!(h.dones(run), [RunStatus::Ok]);
    // The run was of the old source: the cell needs running again.
    assert_eq!(h.cell_state("a"), Some(WireState::Stale));
    h.settle();
    while h.finish_next(Vec::new(), RunStatus::Ok).is_some() {}
    exactly_one_done_for_every_queued_run(&h);
}

#[test]
fn a_queued_cell_an_interrupt_cancels_is_never_sent() {
    let mut h = Harness::new(&[("a", "x = 1"), ("b", "y = 2")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    h.run(s, &["b"]);
    h.request(s, ClientMessage::Interrupt);
    // `b` was queued behind `a` and is cancelled: it is never sent, so it needs no `done`.
    assert_eq!(h.kernel.executed().len(), 1);
    assert_eq!(h.cell_state("b"), Some(WireState::Stale));
    exactly_one_done_for_every_queued_run(&h);
}

#[test]
fn a_run_the_kernel_refuses_ends_at_once_as_aborted() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.kernel.close();
    let Answer::Now(Err(refusal)) = h.execute(s, "1") else {
        panic!("a closed kernel refuses");
    };
    assert_eq!(refusal.code, ErrorCode::KernelUnavailable);
    h.run(s, &["a"]);
    for run in h.queued() {
        assert_eq!(h.dones(run), [RunStatus::Aborted]);
    }
    exactly_one_done_for_every_queued_run(&h);
}

// ---- Acknowledged only once durable -----------------------------------------------------------

#[test]
fn an_update_is_acknowledged_only_once_its_commit_is_durable() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let writer = h.join(Role::Editor);
    let other = h.join(Role::Editor);
    let update = h.client_edit("a", "x = 2");
    assert!(matches!(h.update(writer, 5, update), Answer::Now(Ok(None))));
    // Forwarded to the others at once, not back to the writer.
    let forwarded = h
        .broadcasts
        .iter()
        .find(|e| matches!(e.message, ServerMessage::Update(_)));
    assert_eq!(forwarded.map(|e| e.origin), Some(Some(writer)));
    assert!(
        h.acks(writer).is_empty(),
        "no ack before the commit is durable"
    );
    h.commit_next(Ok(()));
    assert_eq!(h.acks(writer), [(5, None)]);
    assert!(h.acks(other).is_empty());
}

#[test]
fn an_update_whose_commit_fails_is_never_acknowledged() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    let update = h.client_edit("a", "x = 2");
    h.update(s, 5, update);
    h.commit_next(Err(store_failure()));
    assert!(h.acks(s).is_empty());
    let told = h.direct.iter().any(|(to, m)| {
        *to == s && matches!(m, ServerMessage::Error(e) if e.code == ErrorCode::Internal)
    });
    assert!(told, "the writer is told the update stays unacknowledged");
    assert!(
        h.stops.is_empty(),
        "a store failure does not stop the document"
    );
}

#[test]
fn an_edit_request_is_answered_only_once_durable() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    let Answer::Durable(commit) = h.set_source(s, "a", "x = 3", false) else {
        panic!("an edit waits for its commit");
    };
    assert!(h.replies.is_empty());
    h.commit_next(Ok(()));
    assert!(matches!(
        h.replies.as_slice(),
        [(c, Ok(Some(ServerMessage::Accepted(_))))] if *c == commit
    ));
    let Answer::Durable(failing) = h.set_source(s, "a", "x = 4", false) else {
        panic!("an edit waits for its commit");
    };
    h.commit_next(Err(store_failure()));
    assert!(matches!(
        h.replies.last(),
        Some((c, Err(e))) if *c == failing && e.code == ErrorCode::Internal
    ));
}

// ---- Fenced: moved, no more runs, stop --------------------------------------------------------

#[test]
fn a_fenced_commit_moves_every_session_starts_no_run_and_stops() {
    let mut h = Harness::new(&[("a", "x = 1"), ("b", "y = 2")]);
    let s = h.join(Role::Editor);
    let _other = h.join(Role::Viewer);
    h.run(s, &["a"]);
    h.run(s, &["b"]);
    let update = h.client_edit("a", "x = 5");
    h.update(s, 1, update);
    let executed = h.kernel.executed().len();
    let queued_before = h.queued().len();
    h.commit_next(Err(fenced()));
    let moved = h.broadcasts.iter().any(|e| {
        e.origin.is_none()
            && matches!(&e.message, ServerMessage::Error(err) if err.code == ErrorCode::DocumentMoved)
    });
    assert!(moved, "every session is told the document moved");
    assert!(h.acks(s).is_empty());
    assert_eq!(h.stops.len(), 1);
    assert_eq!(h.stops[0].0, StopReason::Moved);
    assert!(h.stops[0].1.is_none(), "a fenced node writes no snapshot");
    // `a` finishing does not start `b`.
    h.finish_next(Vec::new(), RunStatus::Ok);
    assert_eq!(h.kernel.executed().len(), executed);
    assert_eq!(h.queued().len(), queued_before);
    let Answer::Now(Err(refusal)) = h.execute(s, "1") else {
        panic!("a stopped document serves nothing");
    };
    assert_eq!(refusal.code, ErrorCode::DocumentMoved);
    assert!(
        h.core
            .handle_join(h.now, "bo".to_owned(), Role::Editor)
            .is_err()
    );
    h.core.handle_shutdown();
    h.settle();
    assert_eq!(h.stops.len(), 1, "stop is asked for once");
}

#[test]
fn a_fenced_edit_request_fails_as_moved() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.set_source(s, "a", "x = 2", false);
    h.commit_next(Err(fenced()));
    assert!(matches!(h.replies.last(), Some((_, Err(e))) if e.code == ErrorCode::DocumentMoved));
    assert_eq!(h.stops.len(), 1);
}

// ---- Outputs only for the current epoch -------------------------------------------------------

#[test]
fn a_cancelled_runs_late_outputs_never_land() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    let run = h.queued()[0];
    // The restart cancels the run; the kernel's abort comes later than a late output.
    h.core.handle_request(h.now, s, ClientMessage::Restart);
    h.kernel.late_output(run, stream("late"));
    h.settle();
    assert!(
        h.outputs_of(run).is_empty(),
        "a cancelled run's output is not shown"
    );
    h.kernel.late_output(run, stream("later still"));
    h.settle();
    assert!(h.outputs_of(run).is_empty());
    assert!(!h.core.outputs.contains_key("a"));
    exactly_one_done_for_every_queued_run(&h);
}

#[test]
fn outputs_after_a_runs_done_are_dropped() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    let run = h
        .finish_next(vec![stream("1")], RunStatus::Ok)
        .expect("a run");
    h.kernel.late_output(run, stream("2"));
    h.settle();
    assert_eq!(h.outputs_of(run).len(), 1);
}

// ---- Typing never runs code -------------------------------------------------------------------

#[test]
fn a_client_update_marks_cells_stale_and_runs_nothing() {
    let mut h = Harness::new(&[("a", "x = 1"), ("b", "y = x + 1")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    h.finish_next(Vec::new(), RunStatus::Ok);
    h.finish_next(Vec::new(), RunStatus::Ok);
    assert_eq!(h.cell_state("b"), Some(WireState::Idle));
    let executed = h.kernel.executed().len();
    let update = h.client_edit("a", "x = 10");
    h.update(s, 1, update);
    assert_eq!(h.kernel.executed().len(), executed, "no code ran");
    assert_eq!(h.cell_state("a"), Some(WireState::Stale));
    assert_eq!(h.cell_state("b"), Some(WireState::Stale));
    let stale_told = h.messages().any(
        |m| matches!(m, ServerMessage::Cell(c) if c.cell == "b" && c.state == WireState::Stale),
    );
    assert!(stale_told);
}

// ---- Output limits ----------------------------------------------------------------------------

#[test]
fn output_limits_hold_per_output_per_cell_and_per_document() {
    let small = OutputLimits {
        per_output: 2_000,
        per_cell: 5_000,
        per_document: 8_000,
        ..OutputLimits::default()
    };
    let mut h = Harness::with(&[("a", "x = 1"), ("b", "y = 2")], small, None);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    let big = stream(&"x".repeat(10_000));
    let many: Vec<Output> = (0..10).map(|_| stream(&"y".repeat(1_500))).collect();
    let run = h
        .finish_next(std::iter::once(big).chain(many).collect(), RunStatus::Ok)
        .expect("a run");
    for output in h.outputs_of(run) {
        assert!(outputs::json_size(output) <= small.per_output, "per output");
    }
    let kept = |h: &Harness, cell: &str| -> usize {
        h.core.outputs[cell]
            .outputs
            .iter()
            .map(outputs::json_size)
            .sum()
    };
    assert!(
        kept(&h, "a") <= small.per_cell,
        "per cell: {}",
        kept(&h, "a")
    );
    h.run(s, &["b"]);
    let many: Vec<Output> = (0..10).map(|_| stream(&"z".repeat(1_500))).collect();
    h.finish_next(many, RunStatus::Ok);
    assert!(kept(&h, "b") <= small.per_cell);
    assert!(
        kept(&h, "a") + kept(&h, "b") <= small.per_document,
        "per document: {}",
        kept(&h, "a") + kept(&h, "b")
    );
    assert_eq!(h.puts.len(), 2, "each cell's outputs are stored");
}

// ---- Idle -------------------------------------------------------------------------------------

#[test]
fn the_idle_deadline_stops_after_a_snapshot_only_with_no_client() {
    let timeout = Duration::from_secs(60);
    let mut h = Harness::with(&[("a", "x = 1")], limits(), Some(timeout));
    let s = h.join(Role::Editor);
    h.now += timeout * 2;
    h.core.handle_tick(h.now);
    h.settle();
    assert!(h.stops.is_empty(), "a connected client keeps the document");
    h.run(s, &["a"]);
    h.core.handle_leave(h.now, s);
    h.now += timeout * 2;
    h.core.handle_tick(h.now);
    h.settle();
    assert!(h.stops.is_empty(), "a running cell keeps the document");
    h.finish_next(Vec::new(), RunStatus::Ok);
    h.now += Duration::from_secs(1);
    h.core.handle_tick(h.now);
    h.settle();
    assert_eq!(h.stops.len(), 1);
    assert_eq!(h.stops[0].0, StopReason::Idle);
    assert!(h.stops[0].1.is_some(), "idle release snapshots first");
}

#[test]
fn the_idle_clock_starts_when_the_last_client_leaves() {
    let timeout = Duration::from_secs(60);
    let mut h = Harness::with(&[], limits(), Some(timeout));
    let s = h.join(Role::Editor);
    h.now += timeout * 3;
    h.core.handle_leave(h.now, s);
    h.now += timeout / 2;
    h.core.handle_tick(h.now);
    h.settle();
    assert!(h.stops.is_empty());
    h.now += timeout;
    h.core.handle_tick(h.now);
    h.settle();
    assert_eq!(h.stops.len(), 1);
}

// ---- Viewers ----------------------------------------------------------------------------------

#[test]
fn a_viewers_update_is_refused_and_changes_nothing() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let viewer = h.join(Role::Viewer);
    let before = h.core.notebook.snapshot();
    let update = h.client_edit("a", "x = 2");
    h.update(viewer, 3, update);
    let acks = h.acks(viewer);
    assert_eq!(acks.len(), 1);
    assert!(acks[0].1.is_some(), "refused");
    assert!(h.commits_asked.is_empty());
    assert!(!h.messages().any(|m| matches!(m, ServerMessage::Update(_))));
    assert_eq!(h.core.notebook.snapshot(), before);
}

// ---- Small rules ------------------------------------------------------------------------------

#[test]
fn a_joining_client_is_told_every_cells_outputs_and_state_first() {
    let mut h = Harness::new(&[("a", "x = 1"), ("b", "y = 2")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    h.finish_next(vec![stream("a")], RunStatus::Ok);
    let late = h.join(Role::Viewer);
    let told: Vec<&ServerMessage> = h
        .direct
        .iter()
        .filter(|(to, _)| *to == late)
        .map(|(_, m)| m)
        .collect();
    assert!(matches!(told[0], ServerMessage::CellOutputs(o) if o.cell == "a"));
    assert_eq!(told.len(), 3);
}

#[test]
fn a_held_kernel_status_goes_out_when_its_timer_fires() {
    let mut h = Harness::new(&[]);
    h.core
        .handle_kernel_event(h.now, KernelEvent::Status(KernelStatus::Busy));
    h.core
        .handle_kernel_event(h.now, KernelEvent::Status(KernelStatus::Idle));
    h.settle();
    let statuses = |h: &Harness| {
        h.messages()
            .filter(|m| matches!(m, ServerMessage::Kernel(_)))
            .count()
    };
    assert_eq!(statuses(&h), 1);
    let (at, timer) = h.timers[0];
    h.core.handle_timer(at, timer);
    h.settle();
    assert_eq!(statuses(&h), 2);
    assert_eq!(h.core.kernel_status(), &KernelStatus::Idle);
}

#[test]
fn the_run_watcher_follows_the_executing_run() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    h.run(s, &["a"]);
    assert_eq!(
        h.run_changes.last().cloned().flatten().and_then(|o| o.cell),
        Some("a".to_owned())
    );
    h.finish_next(Vec::new(), RunStatus::Ok);
    assert_eq!(h.run_changes.last(), Some(&None));
    assert_eq!(h.core.running_origin(), None);
}

#[test]
fn many_appends_ask_for_one_compaction_at_a_time() {
    let mut h = Harness::new(&[("a", "x = 1")]);
    let s = h.join(Role::Editor);
    for seq in 0..=COMPACT_EVERY + 5 {
        let update = h.client_edit("a", &format!("x = {seq}"));
        h.update(s, seq, update);
        h.commit_next(Ok(()));
    }
    assert_eq!(h.compactions.len(), 1);
    h.core.handle_compacted(h.now, Ok(()));
    assert_eq!(h.core.appends_since_snapshot, 0);
}

// ---- A seeded random session ------------------------------------------------------------------

/// What the random session has seen so far, to check the rules after every step.
#[derive(Default)]
struct Ledger {
    /// Broadcasts already checked.
    seen: usize,
    queued: HashSet<RunId>,
    /// Runs of a cell (not ad-hoc code), and those of them an interrupt, restart or death
    /// cancelled: none of their outputs may be shown from then on.
    cell_runs: HashSet<RunId>,
    cancelled: HashSet<RunId>,
    done: HashSet<RunId>,
    /// Client updates by commit: (session, seq).
    updates: HashMap<CommitId, (SessionId, u64)>,
    durable: HashSet<(SessionId, u64)>,
    failed: HashSet<(SessionId, u64)>,
    acked: HashSet<(SessionId, u64)>,
    directs_seen: usize,
    moved_at: Option<usize>,
}

const CELLS: [&str; 4] = ["a", "b", "c", "d"];
const SOURCES: [&str; 7] = [
    "x = 1",
    "y = x + 1",
    "z = y * 2",
    "print(x)",
    "x = 7",
    "w = z",
    "del y",
];

/// One of the notebook's cells now, if it has any.
fn some_cell(h: &Harness, rng: &mut StdRng) -> Option<String> {
    let cells = h.core.notebook.cells();
    (!cells.is_empty()).then(|| cells[rng.gen_range(0..cells.len())].id.clone())
}

/// A random session of `steps` steps from `seed`: clients join and leave, edit (by update and
/// by request, cells inserted, deleted and moved too), run cells and code, interrupt and
/// restart; the kernel finishes runs, prints late and dies; commits succeed, fail or are fenced,
/// in any order; time passes. Every rule is checked after every step.
fn random_session(seed: u64, steps: usize) -> Coverage {
    let mut rng = StdRng::seed_from_u64(seed);
    let small = OutputLimits {
        per_output: 3_000,
        per_cell: 6_000,
        per_document: 10_000,
        ..OutputLimits::default()
    };
    let cells: Vec<(&str, &str)> = CELLS.iter().copied().zip(SOURCES).collect();
    let mut h = Harness::with(&cells, small, Some(Duration::from_secs(30)));
    let mut ledger = Ledger::default();
    let mut sessions: Vec<(SessionId, Role)> = Vec::new();
    let mut next_seq = 1u64;
    for role in [Role::Editor, Role::Editor, Role::Viewer] {
        let s = h.join(role);
        sessions.push((s, role));
    }
    for step in 0..steps {
        h.restart_answer_first = rng.gen_bool(0.5);
        let session = (!sessions.is_empty()).then(|| sessions[rng.gen_range(0..sessions.len())]);
        let commits_before = h.commits_asked.len();
        let queued_before = h.queued().len();
        let executed_before = h.kernel.executed().len();
        // Cell runs not yet done: an interrupt, restart or death cancels them.
        let open_cell_runs: Vec<RunId> =
            ledger.cell_runs.difference(&ledger.done).copied().collect();
        let mut client_update = None;
        // Weighted: edits, runs, finished runs and commits are what most steps are.
        match (rng.gen_range(0..100), session) {
            (0..=3, _) if sessions.len() < 5 => {
                let role = if rng.gen_bool(0.3) {
                    Role::Viewer
                } else {
                    Role::Editor
                };
                if let Ok(s) = h.core.handle_join(h.now, format!("u{step}"), role) {
                    sessions.push((s, role));
                }
                h.settle();
            }
            (4..=6, Some((s, _))) => {
                sessions.retain(|(other, _)| *other != s);
                h.core.handle_leave(h.now, s);
                h.settle();
            }
            (7..=20, Some((s, role))) => {
                let Some(cell) = some_cell(&h, &mut rng) else {
                    continue;
                };
                let source = SOURCES[rng.gen_range(0..SOURCES.len())];
                let update = if rng.gen_bool(0.05) {
                    vec![0xff, 0x00, 0x13]
                } else {
                    h.client_edit(&cell, source)
                };
                let seq = next_seq;
                next_seq += 1;
                h.update(s, seq, update);
                client_update = Some((s, role, seq));
                if let Some(&commit) = h.commits_asked.get(commits_before) {
                    ledger.updates.insert(commit, (s, seq));
                }
            }
            (21..=30, Some((s, _))) => {
                if let Some(cell) = some_cell(&h, &mut rng) {
                    h.run(s, &[cell.as_str()]);
                }
            }
            (31..=33, Some((s, _))) => {
                h.execute(s, "print('adhoc')");
            }
            (34..=39, Some((s, _))) => {
                let edit = match rng.gen_range(0..6) {
                    0 => CellEdit::Insert {
                        index: rng.gen_range(0..6),
                        cell: Some(format!("n{step}")),
                        kind: airlock_protocol::CellKind::Code,
                        source: SOURCES[rng.gen_range(0..SOURCES.len())].to_owned(),
                    },
                    1 => match some_cell(&h, &mut rng) {
                        Some(cell) => CellEdit::Delete { cell },
                        None => continue,
                    },
                    2 => match some_cell(&h, &mut rng) {
                        Some(cell) => CellEdit::Move {
                            cell,
                            to: rng.gen_range(0..5),
                        },
                        None => continue,
                    },
                    _ => match some_cell(&h, &mut rng) {
                        Some(cell) => CellEdit::SetSource {
                            cell,
                            source: SOURCES[rng.gen_range(0..SOURCES.len())].to_owned(),
                        },
                        None => continue,
                    },
                };
                h.request(
                    s,
                    ClientMessage::EditCells(EditCells {
                        client_ref: 11,
                        edits: vec![edit],
                        run: rng.gen_bool(0.5),
                    }),
                );
            }
            (40..=42, Some((s, _))) => {
                if let Answer::Now(Ok(_)) = h.request(s, ClientMessage::Interrupt) {
                    ledger.cancelled.extend(open_cell_runs);
                }
            }
            (43..=44, Some((s, _))) => {
                if let Answer::Now(Ok(_)) = h.request(s, ClientMessage::Restart) {
                    ledger.cancelled.extend(open_cell_runs);
                }
            }
            (45, Some((s, _))) => {
                let mode = if rng.gen_bool(0.5) {
                    airlock_protocol::ExecutionMode::Lazy
                } else {
                    airlock_protocol::ExecutionMode::Reactive
                };
                h.request(
                    s,
                    ClientMessage::SetMode {
                        client_ref: 13,
                        mode,
                    },
                );
            }
            (46..=63, _) => {
                let outputs: Vec<Output> = (0..rng.gen_range(0..4))
                    .map(|_| stream(&"o".repeat(rng.gen_range(1..5_000))))
                    .collect();
                let status = if rng.gen_bool(0.8) {
                    RunStatus::Ok
                } else {
                    RunStatus::Error
                };
                h.finish_next(outputs, status);
            }
            (64..=65, _) => {
                h.kernel.die(DeathCause::Exited { code: 1 });
                h.settle();
                ledger.cancelled.extend(open_cell_runs);
            }
            (66..=69, _) => {
                let queued = h.queued();
                if !queued.is_empty() {
                    let run = queued[rng.gen_range(0..queued.len())];
                    h.kernel.late_output(run, stream("late"));
                    h.settle();
                }
            }
            (70..=90, _) if !h.commits.is_empty() => {
                let result = match rng.gen_range(0..60) {
                    0 => Err(fenced()),
                    1..=6 => Err(store_failure()),
                    _ => Ok(()),
                };
                let index = if rng.gen_bool(0.8) {
                    0
                } else {
                    rng.gen_range(0..h.commits.len())
                };
                if let Some(&(commit, _)) = h.commits.get(index)
                    && let Some(&update) = ledger.updates.get(&commit)
                {
                    if result.is_ok() {
                        ledger.durable.insert(update);
                    } else {
                        ledger.failed.insert(update);
                    }
                }
                h.commit_at(index, result);
            }
            (91..=95, _) => {
                h.now += Duration::from_secs(rng.gen_range(1..20));
                h.core.handle_tick(h.now);
                h.settle();
            }
            (96..=99, _) => {
                h.core
                    .handle_notice(h.now, "[airlock egress] denied\n".to_owned());
                h.settle();
            }
            _ => {}
        }
        if let Some((s, role, seq)) = client_update {
            assert_eq!(
                h.queued().len(),
                queued_before,
                "step {step}: an update queued a run"
            );
            let ran: Vec<_> = h.kernel.executed()[executed_before..].to_vec();
            assert!(
                ran.iter().all(|run| !run.store_history),
                "step {step}: an update ran code: {ran:?}"
            );
            if role == Role::Viewer && h.stops.is_empty() {
                assert_eq!(
                    h.commits_asked.len(),
                    commits_before,
                    "step {step}: a viewer edited"
                );
                let refused = h.direct.iter().rev().find(|(to, _)| *to == s);
                assert!(
                    matches!(refused, Some((_, ServerMessage::Ack(ack))) if ack.seq == seq && ack.refused.is_some()),
                    "step {step}: a viewer's update was not refused"
                );
            }
        }
        check(&h, &mut ledger, step);
    }
    // Let the kernel finish (or, once stopped, shut down) and every run must have ended once.
    if h.stops.is_empty() {
        while h.finish_next(Vec::new(), RunStatus::Ok).is_some() {}
    } else {
        h.kernel.die(DeathCause::Unknown);
        h.settle();
    }
    check(&h, &mut ledger, steps);
    assert_eq!(ledger.queued, ledger.done, "every queued run ended");
    Coverage {
        runs: ledger.queued.len(),
        cancelled: ledger.cancelled.len(),
        acks: ledger.acked.len(),
        failed_commits: ledger.failed.len(),
        moved: ledger.moved_at.is_some(),
        idle: h
            .stops
            .first()
            .is_some_and(|(reason, _)| *reason == StopReason::Idle),
        restarts: h.restarts,
    }
}

/// What one random session went through, so the test can tell it exercised the rules.
#[derive(Debug, Default)]
struct Coverage {
    runs: usize,
    cancelled: usize,
    acks: usize,
    failed_commits: usize,
    moved: bool,
    idle: bool,
    restarts: usize,
}

/// The rules, checked over what happened since the last check.
fn check(h: &Harness, ledger: &mut Ledger, step: usize) {
    for (index, event) in h.broadcasts.iter().enumerate().skip(ledger.seen) {
        match &event.message {
            ServerMessage::Queued(q) => {
                assert!(
                    ledger.moved_at.is_none(),
                    "step {step}: a run queued after the move"
                );
                assert!(ledger.queued.insert(q.run), "step {step}: queued twice");
                if q.cell.is_some() {
                    ledger.cell_runs.insert(q.run);
                }
            }
            ServerMessage::Done(d) => {
                assert!(
                    ledger.queued.contains(&d.run),
                    "step {step}: done before queued"
                );
                assert!(
                    ledger.done.insert(d.run),
                    "step {step}: {:?} done twice",
                    d.run
                );
            }
            ServerMessage::Output(o) => {
                assert!(
                    ledger.queued.contains(&o.run),
                    "step {step}: output before queued"
                );
                assert!(
                    !ledger.done.contains(&o.run),
                    "step {step}: output after done"
                );
                assert!(
                    !ledger.cancelled.contains(&o.run),
                    "step {step}: an output of cancelled run {:?}",
                    o.run
                );
                assert!(
                    outputs::json_size(&o.output) <= h.core.output_limits.per_output,
                    "step {step}: an output over the limit"
                );
            }
            ServerMessage::Error(e) if e.code == ErrorCode::DocumentMoved => {
                ledger.moved_at.get_or_insert(index);
            }
            _ => {}
        }
    }
    ledger.seen = h.broadcasts.len();
    for (session, message) in h.direct.iter().skip(ledger.directs_seen) {
        if let ServerMessage::Ack(ack) = message
            && ack.refused.is_none()
        {
            let update = (*session, ack.seq);
            assert!(
                ledger.durable.contains(&update),
                "step {step}: acked before durable"
            );
            assert!(
                !ledger.failed.contains(&update),
                "step {step}: a failed commit acked"
            );
            assert!(ledger.acked.insert(update), "step {step}: acked twice");
        }
    }
    ledger.directs_seen = h.direct.len();
    // A list cut to a limit ends with a note saying what was cut, which the limit does not
    // count (`RunOutputs::finish`): one note's worth of slack.
    let limits = h.core.output_limits;
    let mut total = 0;
    for (cell, kept) in &h.core.outputs {
        let size: usize = kept.outputs.iter().map(outputs::json_size).sum();
        assert!(
            size <= limits.per_cell + NOTE_SLACK,
            "step {step}: cell {cell} keeps {size}"
        );
        total += size;
    }
    assert!(
        total <= limits.per_document + NOTE_SLACK,
        "step {step}: the document keeps {total}"
    );
    assert!(h.stops.len() <= 1, "step {step}: stop asked for twice");
    if ledger.moved_at.is_some() {
        assert!(
            h.stops
                .first()
                .is_some_and(|(reason, _)| *reason == StopReason::Moved),
            "step {step}: moved but not stopped"
        );
    }
    if let Some((StopReason::Idle, snapshot)) = h.stops.first() {
        assert_eq!(h.core.session_count(), 0, "step {step}: idle with a client");
        assert!(
            h.core.current.is_none(),
            "step {step}: idle with a cell running"
        );
        assert!(snapshot.is_some(), "step {step}: idle without a snapshot");
    }
}

/// The most a note about cut outputs takes.
const NOTE_SLACK: usize = 512;

/// How many seeds, and steps in each; a failure prints its seed.
const SEEDS: u64 = 200;
const STEPS: usize = 120;

#[test]
fn random_sessions_keep_every_rule() {
    let mut total = Coverage::default();
    let (mut moved, mut idle) = (0, 0);
    for seed in 0..SEEDS {
        let outcome = std::panic::catch_unwind(|| random_session(seed, STEPS));
        match outcome {
            Ok(seen) => {
                total.runs += seen.runs;
                total.cancelled += seen.cancelled;
                total.acks += seen.acks;
                total.failed_commits += seen.failed_commits;
                total.restarts += seen.restarts;
                moved += usize::from(seen.moved);
                idle += usize::from(seen.idle);
            }
            Err(panic) => {
                eprintln!(
                    "random session failed with seed {seed}; reproduce with \
                     `random_session({seed}, {STEPS})`"
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
    eprintln!("random sessions: {total:?}; moved {moved}, idle {idle}");
    // The sessions must have gone through what the rules are about, or they prove little.
    assert!(total.runs > 1000, "{total:?}");
    assert!(total.cancelled > 200, "{total:?}");
    assert!(total.acks > 500, "{total:?}");
    assert!(total.failed_commits > 50, "{total:?}");
    assert!(total.restarts > 50, "{total:?}");
    assert!(moved > 10 && idle > 0, "moved {moved}, idle {idle}");
}
