//! [`FakeKernel`]: a scripted [`Kernel`] that keeps the kernel contract without Python.
//!
//! It keeps the runs it accepted in order and turns what a test asks for into the
//! [`KernelEvent`]s the real bridge would report, in the bridge's order: a finished run is
//! `Busy`, its outputs, `Done`, `Idle`; death is `Dead`, then `Done(Aborted)` for every pending
//! run; a restart is `Restarting`, the aborted runs, `Starting`, `Idle`; an interrupt ends the
//! running run as `Error` (`KeyboardInterrupt`) and the queued ones as `Aborted`. Every accepted
//! run gets exactly one `Done`, as [`Kernel`] demands. Events wait in the fake until the test
//! takes them with [`FakeKernel::poll_event`], so a test decides when the core hears of them
//! (late outputs included: [`FakeKernel::late_output`]).
//!
//! It is not a model of Python: code is never looked at.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use airlock_protocol::{DeathCause, KernelStatus, Output, RunId, RunStatus};

use super::Kernel;
use crate::kernel::KernelEvent;

/// Why the fake refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeKernelError {
    /// Like [`KernelError::NotRunning`](crate::kernel::KernelError::NotRunning).
    #[error("no kernel is running (it died, or a restart is under way); restart it first")]
    NotRunning,
    /// Like [`KernelError::BridgeClosed`](crate::kernel::KernelError::BridgeClosed).
    #[error("the kernel bridge has shut down; start a new one")]
    Closed,
}

/// A run the fake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRun {
    pub run: RunId,
    pub code: String,
    pub store_history: bool,
}

#[derive(Debug, Default)]
struct State {
    dead: bool,
    closed: bool,
    /// Accepted runs without a `Done` yet, in order.
    pending: VecDeque<FakeRun>,
    /// Every run ever accepted, in order.
    executed: Vec<FakeRun>,
    events: VecDeque<KernelEvent>,
    execution_count: u32,
}

/// See the module documentation. Clones share one kernel, so a test keeps one clone while the
/// core owns another.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    state: Arc<Mutex<State>>,
}

impl FakeKernel {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next event the kernel reports, oldest first.
    pub fn poll_event(&self) -> Option<KernelEvent> {
        self.state().events.pop_front()
    }

    /// Every run accepted so far, in order.
    pub fn executed(&self) -> Vec<FakeRun> {
        self.state().executed.clone()
    }

    /// The runs accepted and not yet done, in order.
    pub fn pending(&self) -> Vec<FakeRun> {
        self.state().pending.iter().cloned().collect()
    }

    /// Whether the kernel is dead (until [`restart`](Self::restart)).
    pub fn is_dead(&self) -> bool {
        self.state().dead
    }

    /// From now on every command fails as if the bridge had shut down.
    pub fn close(&self) {
        self.state().closed = true;
    }

    /// The oldest pending run prints `outputs` and ends with `status`; returns it, or `None`
    /// when nothing is pending.
    pub fn finish_next(&self, outputs: Vec<Output>, status: RunStatus) -> Option<RunId> {
        let mut state = self.state();
        let run = state.pending.pop_front()?.run;
        state
            .events
            .push_back(KernelEvent::Status(KernelStatus::Busy));
        for output in outputs {
            state.events.push_back(KernelEvent::Output { run, output });
        }
        let execution_count = match status {
            RunStatus::Aborted => None,
            _ => {
                state.execution_count += 1;
                Some(state.execution_count)
            }
        };
        state.events.push_back(KernelEvent::Done {
            run,
            status,
            execution_count,
        });
        state
            .events
            .push_back(KernelEvent::Status(KernelStatus::Idle));
        Some(run)
    }

    /// An output for `run` whatever its state: what a hostile or slow kernel may send after a
    /// run was cancelled.
    pub fn late_output(&self, run: RunId, output: Output) {
        self.state()
            .events
            .push_back(KernelEvent::Output { run, output });
    }

    /// The kernel dies of `cause`: `Dead`, then every pending run aborted.
    pub fn die(&self, cause: DeathCause) {
        let mut state = self.state();
        if state.dead {
            return;
        }
        state.dead = true;
        state
            .events
            .push_back(KernelEvent::Status(KernelStatus::Dead { cause }));
        abort_all(&mut state);
    }

    /// What the driver does for [`Effect::RestartKernel`](super::Effect::RestartKernel): a fresh
    /// kernel, the pending runs aborted. Returns what the restart returns.
    pub fn restart(&self) -> Result<(), FakeKernelError> {
        let mut state = self.state();
        if state.closed {
            return Err(FakeKernelError::Closed);
        }
        state
            .events
            .push_back(KernelEvent::Status(KernelStatus::Restarting));
        abort_all(&mut state);
        state
            .events
            .push_back(KernelEvent::Status(KernelStatus::Starting));
        state.dead = false;
        state.execution_count = 0;
        state
            .events
            .push_back(KernelEvent::Status(KernelStatus::Idle));
        Ok(())
    }
}

fn abort_all(state: &mut State) {
    while let Some(pending) = state.pending.pop_front() {
        state.events.push_back(KernelEvent::Done {
            run: pending.run,
            status: RunStatus::Aborted,
            execution_count: None,
        });
    }
}

impl Kernel for FakeKernel {
    type Error = FakeKernelError;

    fn execute(&self, run: RunId, code: &str, store_history: bool) -> Result<(), FakeKernelError> {
        let mut state = self.state();
        if state.closed {
            return Err(FakeKernelError::Closed);
        }
        let accepted = FakeRun {
            run,
            code: code.to_owned(),
            store_history,
        };
        state.executed.push(accepted.clone());
        if state.dead {
            // As the bridge does: a run sent to a dead kernel ends at once.
            state.events.push_back(KernelEvent::Done {
                run,
                status: RunStatus::Aborted,
                execution_count: None,
            });
        } else {
            state.pending.push_back(accepted);
        }
        Ok(())
    }

    fn interrupt(&self) -> Result<(), FakeKernelError> {
        let mut state = self.state();
        if state.closed {
            return Err(FakeKernelError::Closed);
        }
        if state.dead {
            return Err(FakeKernelError::NotRunning);
        }
        // A SIGINT to an idle kernel is ignored.
        let Some(running) = state.pending.pop_front() else {
            return Ok(());
        };
        let run = running.run;
        state.events.push_back(KernelEvent::Output {
            run,
            output: Output::Error {
                ename: "KeyboardInterrupt".to_owned(),
                evalue: String::new(),
                traceback: Vec::new(),
            },
        });
        state.execution_count += 1;
        let execution_count = Some(state.execution_count);
        state.events.push_back(KernelEvent::Done {
            run,
            status: RunStatus::Error,
            execution_count,
        });
        abort_all(&mut state);
        state
            .events
            .push_back(KernelEvent::Status(KernelStatus::Idle));
        Ok(())
    }
}
