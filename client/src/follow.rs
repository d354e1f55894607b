//! Following the runs of a set of cells until each has finished, from the document's events.
//!
//! After `run_cells` (or `edit_cells` with `run`) the node answers with the cells it queued, then
//! announces each run with a `queued` event naming its cell, the run's outputs and its `done`,
//! and reports every change of a cell's state with a `cell` event. A queued cell may also be
//! dropped without running, when a cell it needs failed: it then moves to `error` or `stale`
//! and never gets a `queued` event.
//!
//! [`RunFollower`] is the sans-IO rule that reads those events: feed it every message with
//! [`RunFollower::handle`] (and the time it arrived), ask [`RunFollower::is_finished`]. It does no
//! IO and reads no clock; [`crate::Client::follow`] drives it.
//!
//! # When a cell counts as finished
//! - **It ran**: its run's `done` arrived and the latest `cell` event since the run was queued
//!   left `running` (the node may send the cell's new state just before or just after `done`).
//! - **It was dropped**: no run was queued for it, and after a `cell` event put it in `queued`
//!   it moved to `idle`, `stale` or `error`. Events before that `queued` (the state sent on
//!   joining, say) do not count, so an old `stale` is not mistaken for a drop.
//!
//! The first run queued for a listed cell is the one followed; a later run of the same cell
//! (another client's edit, say) is not.
//!
//! # Following one request exactly
//! [`RunFollower::for_request`] follows only the runs a given request queued: the node names the
//! requesting session and `client_ref` in each `queued` event. Events of earlier runs that are
//! still waiting to be read cannot be mistaken for the request's. A cell then counts as dropped
//! only after one of the request's runs failed and the cell left `queued` without a run.
//!
//! In both modes a `dead` kernel ends every cell that has not finished.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use airlock_protocol::{
    CellState, KernelStatus, Output, RunId, RunStatus, ServerMessage, SessionId,
};

/// What became of one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct CellRun {
    pub cell: String,
    /// The run that executed it; `None` when it was dropped without running.
    pub run: Option<RunId>,
    /// How the run ended; `None` when it did not run.
    pub status: Option<RunStatus>,
    pub execution_count: Option<u32>,
    /// The run's outputs in the kernel's order, as sent (`clear_output` included).
    pub outputs: Vec<Output>,
    /// The last state the node reported for the cell (`None` if it reported none).
    pub state: Option<CellState>,
    /// From the start of the run (its `running` event, else its `queued` event) to its `done`.
    pub elapsed: Option<Duration>,
}

impl CellRun {
    /// Whether the cell ran to the end without raising.
    pub fn succeeded(&self) -> bool {
        self.status == Some(RunStatus::Ok)
    }
}

/// Bookkeeping beside each [`CellRun`].
#[derive(Debug, Clone, Default)]
struct Progress {
    /// A `cell` event put the cell in `queued`: from now on leaving that state without a run
    /// means it was dropped.
    armed: bool,
    /// A `cell` event arrived after the run was queued.
    state_since_run: bool,
    queued_at: Option<Instant>,
    running_at: Option<Instant>,
    done: bool,
    finished: bool,
}

/// Follows the runs of a set of cells; see the module documentation.
#[derive(Debug, Clone)]
pub struct RunFollower {
    cells: Vec<(CellRun, Progress)>,
    by_cell: HashMap<String, usize>,
    by_run: HashMap<RunId, usize>,
    unfinished: usize,
    /// Only runs queued by this request (session, `client_ref`) are followed.
    scope: Option<(SessionId, u64)>,
    /// A followed run failed: its queued dependents may be dropped now.
    failed: bool,
}

impl RunFollower {
    /// Follows `cells` (duplicates count once), typically an `accepted` reply's `queued`.
    pub fn new<S: Into<String>>(cells: impl IntoIterator<Item = S>) -> Self {
        let mut follower = RunFollower {
            cells: Vec::new(),
            by_cell: HashMap::new(),
            by_run: HashMap::new(),
            unfinished: 0,
            scope: None,
            failed: false,
        };
        for cell in cells {
            let cell = cell.into();
            if follower.by_cell.contains_key(&cell) {
                continue;
            }
            follower.by_cell.insert(cell.clone(), follower.cells.len());
            follower.cells.push((
                CellRun {
                    cell,
                    run: None,
                    status: None,
                    execution_count: None,
                    outputs: Vec::new(),
                    state: None,
                    elapsed: None,
                },
                Progress::default(),
            ));
        }
        follower.unfinished = follower.cells.len();
        follower
    }

    /// Follows `cells` as queued by the request `client_ref` of `session` (its `accepted`
    /// reply's `queued`), ignoring every other run of those cells.
    pub fn for_request<S: Into<String>>(
        cells: impl IntoIterator<Item = S>,
        session: SessionId,
        client_ref: u64,
    ) -> Self {
        let mut follower = Self::new(cells);
        follower.scope = Some((session, client_ref));
        follower
    }

    /// Whether every followed cell has finished.
    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// The followed cell a run executes, once its `queued` event has been seen.
    pub fn cell_of(&self, run: RunId) -> Option<&str> {
        self.by_run
            .get(&run)
            .map(|&i| self.cells[i].0.cell.as_str())
    }

    /// Whether a message is about a followed cell or its run, or about the kernel.
    pub fn concerns(&self, message: &ServerMessage) -> bool {
        match message {
            ServerMessage::Queued(queued) => queued
                .cell
                .as_ref()
                .and_then(|cell| self.by_cell.get(cell))
                .is_some_and(|&i| self.cells[i].0.run == Some(queued.run)),
            ServerMessage::Output(output) => self.by_run.contains_key(&output.run),
            ServerMessage::Done(done) => self.by_run.contains_key(&done.run),
            ServerMessage::Cell(status) => self.by_cell.contains_key(&status.cell),
            ServerMessage::Kernel(_) => true,
            _ => false,
        }
    }

    /// Every followed cell so far, in the order given to [`RunFollower::new`].
    pub fn runs(&self) -> impl Iterator<Item = &CellRun> + '_ {
        self.cells.iter().map(|(run, _)| run)
    }

    /// Every followed cell, in the order given to [`RunFollower::new`].
    pub fn into_runs(self) -> Vec<CellRun> {
        self.cells.into_iter().map(|(run, _)| run).collect()
    }

    /// Takes one message from the node, received at `now`.
    pub fn handle(&mut self, now: Instant, message: &ServerMessage) {
        match message {
            ServerMessage::Queued(queued) => {
                let Some(&i) = queued.cell.as_ref().and_then(|c| self.by_cell.get(c)) else {
                    return;
                };
                if self
                    .scope
                    .is_some_and(|scope| scope != (queued.session, queued.client_ref))
                {
                    return;
                }
                let (run, progress) = &mut self.cells[i];
                if run.run.is_some() || progress.finished {
                    return;
                }
                run.run = Some(queued.run);
                progress.queued_at = Some(now);
                self.by_run.insert(queued.run, i);
            }
            ServerMessage::Output(output) => {
                if let Some(&i) = self.by_run.get(&output.run) {
                    self.cells[i].0.outputs.push(output.output.clone());
                }
            }
            ServerMessage::Done(done) => {
                let Some(&i) = self.by_run.get(&done.run) else {
                    return;
                };
                let (run, progress) = &mut self.cells[i];
                run.status = Some(done.status);
                run.execution_count = done.execution_count;
                run.elapsed = progress
                    .running_at
                    .or(progress.queued_at)
                    .map(|start| now.saturating_duration_since(start));
                progress.done = true;
                if done.status != RunStatus::Ok {
                    self.failed = true;
                }
                self.settle(i);
            }
            ServerMessage::Kernel(KernelStatus::Dead { .. }) => {
                // Nothing queued will run in this kernel any more.
                for (_, progress) in &mut self.cells {
                    if !progress.finished {
                        progress.finished = true;
                        self.unfinished -= 1;
                    }
                }
            }
            ServerMessage::Cell(status) => {
                let Some(&i) = self.by_cell.get(&status.cell) else {
                    return;
                };
                let (run, progress) = &mut self.cells[i];
                if progress.finished {
                    return;
                }
                match status.state {
                    CellState::Queued => progress.armed = true,
                    CellState::Running if run.run.is_some() && progress.running_at.is_none() => {
                        progress.running_at = Some(now);
                    }
                    _ => {}
                }
                if run.run.is_some() {
                    progress.state_since_run = true;
                }
                run.state = Some(status.state.clone());
                self.settle(i);
            }
            _ => {}
        }
    }

    /// Marks cell `i` finished if the rules of the module documentation say so.
    fn settle(&mut self, i: usize) {
        let (run, progress) = &mut self.cells[i];
        if progress.finished {
            return;
        }
        let left_queue = matches!(
            run.state,
            Some(CellState::Idle | CellState::Stale | CellState::Error { .. })
        );
        let armed = match self.scope {
            Some(_) => self.failed,
            None => progress.armed,
        };
        let finished = if run.run.is_some() {
            progress.done
                && progress.state_since_run
                && !matches!(run.state, Some(CellState::Running))
        } else {
            armed && left_queue
        };
        if finished {
            progress.finished = true;
            self.unfinished -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed expectation is a failed test

    use airlock_protocol::{CellStatus, SessionId};
    use airlock_test_kit::messages::{self, done, stdout as output};

    use super::*;

    fn queued(run: u64, cell: &str) -> ServerMessage {
        messages::queued(run, 1, cell)
    }

    fn state(cell: &str, state: CellState) -> ServerMessage {
        ServerMessage::Cell(CellStatus {
            cell: cell.into(),
            state,
        })
    }

    /// Feeds `messages` one second apart; returns whether it finished after each.
    fn feed(follower: &mut RunFollower, start: Instant, messages: &[ServerMessage]) -> Vec<bool> {
        messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                follower.handle(start + Duration::from_secs(i as u64), message);
                follower.is_finished()
            })
            .collect()
    }

    #[test]
    fn a_cell_finishes_when_done_and_its_new_state_have_both_arrived() {
        let start = Instant::now();
        let mut follower = RunFollower::new(["a"]);
        let finished = feed(
            &mut follower,
            start,
            &[
                state("a", CellState::Queued),
                queued(5, "a"),
                state("a", CellState::Running),
                output(5, "hi\n"),
                output(6, "someone else's\n"),
                done(5, RunStatus::Ok),
                state("a", CellState::Idle),
            ],
        );
        assert_eq!(finished, [false, false, false, false, false, false, true]);
        let runs = follower.into_runs();
        assert_eq!(runs.len(), 1);
        let a = &runs[0];
        assert_eq!(a.run, Some(RunId(5)));
        assert_eq!(a.status, Some(RunStatus::Ok));
        assert_eq!(a.execution_count, Some(5));
        assert_eq!(a.outputs.len(), 1);
        assert_eq!(a.state, Some(CellState::Idle));
        assert!(a.succeeded());
        // From `running` (t=2) to `done` (t=5).
        assert_eq!(a.elapsed, Some(Duration::from_secs(3)));
    }

    #[test]
    fn the_new_state_may_come_before_done() {
        let mut follower = RunFollower::new(["a"]);
        let finished = feed(
            &mut follower,
            Instant::now(),
            &[
                queued(1, "a"),
                state("a", CellState::Running),
                state(
                    "a",
                    CellState::Error {
                        message: "raised".into(),
                    },
                ),
                done(1, RunStatus::Error),
            ],
        );
        assert_eq!(finished, [false, false, false, true]);
        let a = &follower.into_runs()[0];
        assert_eq!(a.status, Some(RunStatus::Error));
        assert!(!a.succeeded());
    }

    #[test]
    fn a_cell_dropped_after_an_upstream_failure_finishes_without_a_run() {
        let mut follower = RunFollower::new(["a", "b"]);
        let finished = feed(
            &mut follower,
            Instant::now(),
            &[
                state("a", CellState::Queued),
                state("b", CellState::Queued),
                queued(1, "a"),
                state("a", CellState::Running),
                done(1, RunStatus::Error),
                state(
                    "a",
                    CellState::Error {
                        message: "ZeroDivisionError".into(),
                    },
                ),
                state("b", CellState::Stale),
            ],
        );
        assert_eq!(finished, [false, false, false, false, false, false, true]);
        let runs = follower.into_runs();
        assert_eq!(runs[1].cell, "b");
        assert_eq!(runs[1].run, None);
        assert_eq!(runs[1].status, None);
        assert_eq!(runs[1].state, Some(CellState::Stale));
    }

    #[test]
    fn states_from_before_the_request_are_not_mistaken_for_a_drop() {
        let mut follower = RunFollower::new(["a"]);
        // The state sent on joining, then another client's run of the cell ending.
        let finished = feed(
            &mut follower,
            Instant::now(),
            &[
                state("a", CellState::Running),
                state("a", CellState::Stale),
                state("a", CellState::Queued),
                queued(9, "a"),
                done(9, RunStatus::Ok),
            ],
        );
        assert_eq!(finished, [false, false, false, false, false]);
        follower.handle(Instant::now(), &state("a", CellState::Idle));
        assert!(follower.is_finished());
    }

    #[test]
    fn only_the_first_run_of_a_cell_is_followed() {
        let mut follower = RunFollower::new(["a", "a"]);
        let now = Instant::now();
        follower.handle(now, &queued(1, "a"));
        follower.handle(now, &queued(2, "a"));
        assert_eq!(follower.cell_of(RunId(1)), Some("a"));
        assert_eq!(follower.cell_of(RunId(2)), None);
        assert!(follower.concerns(&output(1, "x")));
        assert!(!follower.concerns(&output(2, "x")));
        assert!(!follower.concerns(&queued(2, "a")));
        follower.handle(now, &output(2, "not ours"));
        follower.handle(now, &done(1, RunStatus::Aborted));
        follower.handle(now, &state("a", CellState::Stale));
        assert!(follower.is_finished());
        let runs = follower.into_runs();
        assert_eq!(runs.len(), 1, "duplicates count once");
        assert!(runs[0].outputs.is_empty());
        assert_eq!(runs[0].status, Some(RunStatus::Aborted));
    }

    #[test]
    fn nothing_to_follow_is_finished_at_once() {
        assert!(RunFollower::new(Vec::<String>::new()).is_finished());
    }

    fn queued_by(run: u64, cell: &str, client_ref: u64) -> ServerMessage {
        messages::queued(run, client_ref, cell)
    }

    #[test]
    fn a_request_follower_ignores_earlier_runs_of_its_cells() {
        let now = Instant::now();
        let mut follower = RunFollower::for_request(["a", "b"], SessionId(1), 9);
        // An earlier request's runs of the same cells, still unread.
        for message in [
            state("a", CellState::Queued),
            queued_by(1, "a", 3),
            state("a", CellState::Running),
            done(1, RunStatus::Ok),
            state("a", CellState::Idle),
            state("b", CellState::Queued),
            state("b", CellState::Stale),
        ] {
            follower.handle(now, &message);
        }
        assert!(!follower.is_finished(), "old events finish nothing");
        for message in [
            queued_by(5, "a", 9),
            output(5, "new"),
            state("a", CellState::Running),
            done(5, RunStatus::Error),
            state(
                "a",
                CellState::Error {
                    message: "raised".into(),
                },
            ),
            // `b` needed `a`, which failed: dropped without a run.
            state("b", CellState::Stale),
        ] {
            follower.handle(now, &message);
        }
        assert!(follower.is_finished());
        let runs = follower.into_runs();
        assert_eq!(runs[0].run, Some(RunId(5)));
        assert_eq!(runs[0].outputs.len(), 1);
        assert_eq!(runs[1].run, None);
    }

    #[test]
    fn a_dead_kernel_ends_every_cell() {
        let mut follower = RunFollower::for_request(["a"], SessionId(1), 9);
        follower.handle(
            Instant::now(),
            &ServerMessage::Kernel(KernelStatus::Dead {
                cause: airlock_protocol::DeathCause::Unknown,
            }),
        );
        assert!(follower.is_finished());
    }
}
