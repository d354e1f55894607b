//! The kernel's side of the core: runs announced, sent, cancelled and ended (exactly one `done`
//! each), the cell run in flight and its outputs, what the run watcher is told, and when the
//! kernel can take work at all. Cell runs go to the kernel one at a time, as the graph plans
//! them; outputs count only for a cell's current epoch.

use std::time::Instant;

use airlock_protocol::{
    CellOutputs as WireCellOutputs, ErrorCode, ErrorReply, KernelStatus, Output, RunDone, RunId,
    RunOutput, RunQueued, RunStatus, ServerMessage, SessionId,
};
use bytes::Bytes;
use tracing::warn;

use crate::collab::ipynb::CellOutputs;
use crate::document::graph::{Epoch, RunOutcome};
use crate::document::outputs::{self, OutputLimits, RunOutputs, trim_stored};
use crate::store::CellId;

use super::{
    DocumentCore, Effect, Kernel, RunOrigin, Timer, bad_request, cells, gone_reply, status_gate,
    status_label,
};

/// What a kernel run is for.
#[derive(Debug, Clone)]
pub(super) enum RunKind {
    /// Code a client sent with `execute`.
    Adhoc,
    /// A cell the graph scheduled.
    Cell { cell: CellId, epoch: Epoch },
    /// Housekeeping (deleting globals no cell defines any more); its outputs are not shown.
    Internal,
}

/// The cell run in flight and what it has printed so far, settled.
#[derive(Debug)]
pub(super) struct CurrentRun {
    pub(super) run: RunId,
    pub(super) outputs: RunOutputs,
}

impl<K: Kernel> DocumentCore<K> {
    /// Tells the clients the kernel's status, at most once per [`STATUS_MIN_GAP`]; a status
    /// held back goes out when the gap has passed ([`Timer::KernelStatus`]).
    pub(super) fn broadcast_status(&mut self, now: Instant, status: KernelStatus) {
        match self.status_gate.offer(now, status) {
            status_gate::Gate::Send(status) => self.broadcast(None, ServerMessage::Kernel(status)),
            status_gate::Gate::Held(Some(at)) => self.effects.push_back(Effect::SetTimer {
                at,
                timer: Timer::KernelStatus,
            }),
            status_gate::Gate::Held(None) => {}
        }
    }

    /// Shows an output of `run` live, as far as the live view allows.
    pub(super) fn show_output(&mut self, now: Instant, run: RunId, output: Output) {
        for output in self.live.admit(now, output) {
            self.broadcast(None, ServerMessage::Output(RunOutput { run, output }));
        }
    }

    pub(super) fn done(&mut self, run: RunId, status: RunStatus, execution_count: Option<u32>) {
        self.broadcast(
            None,
            ServerMessage::Done(RunDone {
                run,
                status,
                execution_count,
            }),
        );
    }

    /// Why the kernel cannot take work now, if it cannot.
    pub(super) fn unavailable(&self, client_ref: Option<u64>) -> Option<ErrorReply> {
        let message = if self.restarting {
            "the kernel is restarting; try again when it reports idle".to_owned()
        } else if let KernelStatus::Dead { cause } = &self.kernel_status {
            format!("{cause}; send a restart to get a fresh kernel")
        } else if self.kernel.is_none() {
            "the document is shutting down".to_owned()
        } else {
            return None;
        };
        Some(ErrorReply::for_request(
            ErrorCode::KernelUnavailable,
            client_ref,
            message,
        ))
    }

    pub(super) fn new_run(&mut self, kind: RunKind) -> RunId {
        let run = RunId(self.next_run);
        self.next_run += 1;
        self.runs.insert(run, kind);
        run
    }

    pub(super) fn user_of(&self, session: SessionId) -> String {
        self.sessions
            .get(&session)
            .map(|s| s.user.clone())
            .unwrap_or_default()
    }

    /// Records who and what started `queued.run` (egress attributes its flows to it) and tells
    /// every session it is queued.
    fn announce_queued(&mut self, queued: RunQueued) {
        self.origins.insert(
            queued.run,
            RunOrigin {
                cell: queued.cell.clone(),
                run: queued.run.0,
                user: queued.user.clone(),
            },
        );
        self.broadcast(None, ServerMessage::Queued(queued));
    }

    pub(super) fn execute_adhoc(
        &mut self,
        session: SessionId,
        client_ref: u64,
        code: String,
        store_history: bool,
    ) -> Result<RunId, ErrorReply> {
        if let Some(refusal) = self.unavailable(Some(client_ref)) {
            return Err(refusal);
        }
        let user = self.user_of(session);
        let run = self.new_run(RunKind::Adhoc);
        // Announced before the kernel can answer, so `queued` precedes every output.
        self.announce_queued(RunQueued {
            run,
            session,
            client_ref,
            user,
            code: code.clone(),
            cell: None,
        });
        let sent = match &self.kernel {
            Some(kernel) => kernel
                .execute(run, &code, store_history)
                .map_err(|err| err.to_string()),
            None => {
                return Err(self
                    .unavailable(Some(client_ref))
                    .unwrap_or_else(gone_reply));
            }
        };
        let result = sent.map(|()| run).map_err(|err| {
            self.runs.remove(&run);
            self.origins.remove(&run);
            self.done(run, RunStatus::Aborted, None);
            ErrorReply::for_request(ErrorCode::KernelUnavailable, Some(client_ref), err)
        });
        self.tell_origin();
        result
    }

    pub(super) fn interrupt(&mut self) -> Result<(), ErrorReply> {
        if let Some(refusal) = self.unavailable(None) {
            return Err(refusal);
        }
        let kernel = self.kernel.as_ref().ok_or_else(gone_reply)?;
        kernel.interrupt().map_err(|err| {
            ErrorReply::for_request(ErrorCode::KernelUnavailable, None, err.to_string())
        })?;
        // Queued cells are cancelled; the running one ends with the kernel's KeyboardInterrupt.
        self.graph.interrupt();
        self.flush_graph_events();
        Ok(())
    }

    pub(super) fn restart(&mut self) -> Result<(), ErrorReply> {
        if self.restarting {
            return Ok(());
        }
        if self.kernel.is_none() {
            return Err(gone_reply());
        }
        self.restarting = true;
        // The fresh kernel holds nothing: every cell is stale again.
        self.graph.kernel_lost();
        self.current = None;
        self.flush_graph_events();
        self.effects.push_back(Effect::RestartKernel);
        Ok(())
    }

    /// The run the kernel executes now: the cell run in flight, else the oldest ad-hoc run (the
    /// kernel runs requests in order).
    pub(super) fn executing_run(&self) -> Option<RunId> {
        self.current
            .as_ref()
            .map(|current| current.run)
            .or_else(|| {
                self.runs
                    .iter()
                    .filter(|(_, kind)| matches!(kind, RunKind::Adhoc))
                    .map(|(run, _)| *run)
                    .min()
            })
    }

    /// Tells the run watcher which run executes now ([`Self::executing_run`]), if that changed.
    pub(super) fn tell_origin(&mut self) {
        let running = self.executing_run();
        let origin = running.and_then(|run| self.origins.get(&run).cloned());
        if origin != self.origin_told {
            self.origin_told = origin.clone();
            self.effects.push_back(Effect::RunChanged(origin));
        }
    }

    pub(super) fn kernel_status_changed(&mut self, now: Instant, status: KernelStatus) {
        if let KernelStatus::Dead { cause } = &status {
            warn!(%cause, "kernel died");
            metrics::counter!("airlock_node_kernel_deaths_total").increment(1);
            self.graph.kernel_lost();
            self.current = None;
            self.flush_graph_events();
        }
        // The fresh kernel's first idle ends a restart.
        if matches!(status, KernelStatus::Idle | KernelStatus::Busy) {
            self.restarting = false;
        }
        self.kernel_status = status.clone();
        self.broadcast_status(now, status);
        self.pump();
    }

    pub(super) fn kernel_output(&mut self, now: Instant, run: RunId, output: Output) {
        match self.runs.get(&run) {
            Some(RunKind::Adhoc) => {
                let output =
                    outputs::cap_output(&output, self.output_limits.per_output).unwrap_or(output);
                self.show_output(now, run, output);
            }
            Some(RunKind::Cell { cell, epoch }) => {
                if self.graph.accept_output(cell, *epoch) {
                    let output = match self.current.as_mut().filter(|c| c.run == run) {
                        Some(current) => current.outputs.accept(output),
                        None => outputs::cap_output(&output, self.output_limits.per_output)
                            .unwrap_or(output),
                    };
                    self.show_output(now, run, output);
                }
            }
            Some(RunKind::Internal) | None => {}
        }
    }

    pub(super) fn run_done(&mut self, run: RunId, status: RunStatus, execution_count: Option<u32>) {
        metrics::counter!("airlock_node_runs_total", "status" => status_label(status)).increment(1);
        self.origins.remove(&run);
        let shown = matches!(
            self.runs.get(&run),
            Some(RunKind::Adhoc | RunKind::Cell { .. })
        );
        if shown && let Some(hidden) = self.live.end_run() {
            self.broadcast(
                None,
                ServerMessage::Output(RunOutput {
                    run,
                    output: hidden,
                }),
            );
        }
        match self.runs.remove(&run) {
            Some(RunKind::Adhoc) => self.done(run, status, execution_count),
            Some(RunKind::Cell { cell, epoch }) => {
                self.cell_done(run, cell, epoch, status, execution_count);
                self.pump();
            }
            Some(RunKind::Internal) if status != RunStatus::Ok => {
                warn!(?status, "deleting stale globals from the kernel failed");
            }
            Some(RunKind::Internal) | None => {}
        }
    }

    /// A cell's run ended: record its outputs, tell the graph, tell the clients.
    pub(super) fn cell_done(
        &mut self,
        run: RunId,
        cell: CellId,
        epoch: Epoch,
        status: RunStatus,
        execution_count: Option<u32>,
    ) {
        let outputs = match self.current.take() {
            Some(current) if current.run == run => current.outputs.finish(),
            other => {
                self.current = other;
                Vec::new()
            }
        };
        let outcome = match status {
            RunStatus::Ok => RunOutcome::Completed,
            _ => RunOutcome::Failed,
        };
        let current_epoch = self.graph.finish_run(&cell, epoch, outcome);
        self.done(run, status, execution_count);
        self.flush_graph_events();
        if !current_epoch {
            return;
        }
        let record = CellOutputs {
            execution_count,
            outputs: self.within_document(cell.as_str(), outputs),
        };
        let stored = WireCellOutputs {
            cell: cell.as_str().to_owned(),
            execution_count: record.execution_count,
            outputs: record.outputs.clone(),
        };
        self.outputs.insert(cell.as_str().to_owned(), record);
        match serde_json::to_vec(&stored) {
            Ok(bytes) => self.effects.push_back(Effect::PutOutputs {
                cell,
                bytes: Bytes::from(bytes),
            }),
            Err(err) => warn!(%err, "outputs do not encode; not stored"),
        }
    }

    /// `outputs` of `cell`, cut to what the document's limit leaves room for beside the other
    /// cells' outputs.
    pub(super) fn within_document(&self, cell: &str, outputs: Vec<Output>) -> Vec<Output> {
        let others: usize = self
            .outputs
            .iter()
            .filter(|(id, _)| id.as_str() != cell)
            .flat_map(|(_, stored)| stored.outputs.iter())
            .map(outputs::json_size)
            .sum();
        let room = self.output_limits.per_document.saturating_sub(others);
        if room >= self.output_limits.per_cell {
            return outputs;
        }
        trim_stored(
            outputs,
            OutputLimits {
                per_cell: room,
                ..self.output_limits
            },
        )
    }

    /// Starts the next cell run the graph has queued, if the kernel is free for it.
    pub(super) fn pump(&mut self) {
        self.start_next_cell();
        self.tell_origin();
    }

    pub(super) fn start_next_cell(&mut self) {
        if self.current.is_some() || self.stop.is_some() || self.unavailable(None).is_some() {
            return;
        }
        let Some(execution) = self.graph.start_run() else {
            self.flush_graph_events();
            return;
        };
        if !execution.delete_first.is_empty() {
            self.delete_globals(&execution.delete_first);
        }
        let run = self.new_run(RunKind::Cell {
            cell: execution.cell.clone(),
            epoch: execution.epoch,
        });
        // Cells queued by an edit's reactive plan (not by a request) carry session 0.
        let (session, client_ref) = self
            .requested
            .remove(&execution.cell)
            .unwrap_or((SessionId(0), 0));
        let user = self.user_of(session);
        self.announce_queued(RunQueued {
            run,
            session,
            client_ref,
            user,
            code: execution.code.clone(),
            cell: Some(execution.cell.as_str().to_owned()),
        });
        self.flush_graph_events();
        let sent = match &self.kernel {
            Some(kernel) => kernel
                .execute(run, &execution.code, true)
                .map_err(|err| err.to_string()),
            // Unreachable: `unavailable` said a kernel is there.
            None => Err("the document is shutting down".to_owned()),
        };
        match sent {
            Ok(()) => {
                self.current = Some(CurrentRun {
                    run,
                    outputs: RunOutputs::new(self.output_limits),
                });
            }
            Err(err) => {
                warn!(%err, "kernel refused a cell run");
                self.runs.remove(&run);
                self.origins.remove(&run);
                self.graph.kernel_lost();
                self.done(run, RunStatus::Aborted, None);
                self.flush_graph_events();
            }
        }
    }

    /// Removes globals no cell defines any more from the kernel.
    pub(super) fn delete_globals(&mut self, names: &[String]) {
        if names.is_empty() || self.unavailable(None).is_some() {
            return;
        }
        let code = cells::delete_globals_code(names);
        let run = self.new_run(RunKind::Internal);
        let sent = self
            .kernel
            .as_ref()
            .is_some_and(|kernel| kernel.execute(run, &code, false).is_ok());
        if !sent {
            self.runs.remove(&run);
        }
    }

    pub(super) fn run_cells(
        &mut self,
        session: SessionId,
        cells: &[String],
        replay: bool,
        client_ref: u64,
    ) -> Result<Vec<String>, ErrorReply> {
        if let Some(refusal) = self.unavailable(Some(client_ref)) {
            return Err(refusal);
        }
        let mut planned = Vec::new();
        if replay {
            planned = self.graph.replay();
        } else if cells.is_empty() {
            planned = self.graph.run_stale();
        } else {
            for cell in cells {
                let id = CellId::new(cell.clone())
                    .map_err(|err| bad_request(Some(client_ref), err.to_string()))?;
                planned = self
                    .graph
                    .run(&id)
                    .map_err(|err| bad_request(Some(client_ref), err.to_string()))?;
            }
        }
        // Each run names the request that queued it, so its client can follow exactly those.
        for cell in &planned {
            self.requested.insert(cell.clone(), (session, client_ref));
        }
        self.flush_graph_events();
        self.pump();
        Ok(planned.iter().map(|c| c.as_str().to_owned()).collect())
    }
}
