//! Changes to the notebook: a client's update (applied, forwarded, committed; it marks cells
//! stale and never runs code), and the node-made edits of requests (cell edits, the mode, an
//! imported notebook), which are answered only once durable.

use std::fmt::Display;
use std::time::Instant;

use airlock_protocol::{
    Accepted, CellEdit, CellOutputs as WireCellOutputs, DocUpdate, ErrorCode, ErrorReply,
    ExecutionMode as WireMode, ServerMessage, SessionId, UpdateAck,
};
use bytes::Bytes;

use crate::collab::NotebookError;
use crate::collab::ipynb::{self, ImportLimits};
use crate::collab::validate;
use crate::document::graph::ExecutionMode;
use crate::document::outputs::trim_stored;
use crate::store::CellId;

use super::{
    Answer, DocumentCore, Effect, Gated, Kernel, MODE_KEY, StopReason, bad_request, cells,
    client_limits,
};

impl<K: Kernel> DocumentCore<K> {
    /// Applies a client's update, forwards it, and commits it; the ack follows the commit.
    pub(super) fn client_update(
        &mut self,
        _now: Instant,
        session: SessionId,
        seq: u64,
        update: Vec<u8>,
    ) {
        // A refused update is answered with a refusing ack: sending it again cannot help.
        let refuse = |core: &mut Self, reason: String| {
            metrics::counter!("airlock_node_updates_refused_total").increment(1);
            if core.sessions.contains_key(&session) {
                core.effects.push_back(Effect::Direct {
                    session,
                    message: ServerMessage::Ack(UpdateAck {
                        seq,
                        refused: Some(reason),
                    }),
                });
            }
        };
        if !self
            .sessions
            .get(&session)
            .is_some_and(|s| s.role.can_edit())
        {
            return refuse(self, "a viewer may not edit the document".to_owned());
        }
        if let Err(err) = validate::update_v1(&update, &client_limits()) {
            return refuse(self, format!("update refused: {err}"));
        }
        let changes = match self.notebook.apply(&update) {
            Ok(changes) => changes,
            Err(NotebookError::Poisoned) => return self.stop_serving(StopReason::Internal),
            Err(err) => return refuse(self, format!("update refused: {err}")),
        };
        metrics::counter!("airlock_node_updates_total").increment(1);
        let update = Bytes::from(update);
        self.broadcast(
            Some(session),
            ServerMessage::Update(DocUpdate {
                update: update.to_vec().into(),
            }),
        );
        if !changes.is_empty() {
            let edits = cells::sync_changes(&self.notebook, &mut self.graph, &changes);
            self.after_edits(edits);
        }
        self.commit(vec![update], Gated::Ack { session, seq });
    }

    /// Deletes stale globals and starts runs that edits planned, and tells clients about states.
    pub(super) fn after_edits(&mut self, edits: Vec<crate::document::graph::Edit>) {
        let undefined: Vec<String> = edits.iter().flat_map(|e| e.undefined.clone()).collect();
        if self.kernel.is_some() {
            self.delete_globals(&undefined);
        }
        self.pump();
        self.flush_graph_events();
    }

    /// Applies edit requests, answers once their updates are durable.
    pub(super) fn edit_cells(
        &mut self,
        session: SessionId,
        request: airlock_protocol::EditCells,
    ) -> Answer {
        let client_ref = request.client_ref;
        let mut updates = Vec::new();
        let mut touched = Vec::new();
        let mut created = Vec::new();
        let mut failure = None;
        for edit in request.edits {
            let result = match edit {
                CellEdit::SetSource { cell, source } => {
                    touched.push(cell.clone());
                    self.notebook.set_source(&cell, &source)
                }
                CellEdit::Insert {
                    index,
                    cell,
                    kind,
                    source,
                } => {
                    let id = cell.unwrap_or_else(cells::new_cell_id);
                    match CellId::new(id.clone()) {
                        Ok(_) => {
                            touched.push(id.clone());
                            created.push(id.clone());
                            self.notebook
                                .insert_cell(index, &id, cells::kind(kind), &source)
                        }
                        Err(err) => {
                            failure = Some(err.to_string());
                            break;
                        }
                    }
                }
                CellEdit::Delete { cell } => self.notebook.delete_cell(&cell),
                CellEdit::Move { cell, to } => self.notebook.move_cell(&cell, to),
                CellEdit::Unknown => {
                    failure = Some("an edit of a kind this node does not know".to_owned());
                    break;
                }
            };
            match result {
                Ok(update) => updates.push(Bytes::from(update)),
                Err(err) => {
                    failure = Some(err.to_string());
                    break;
                }
            }
        }
        self.broadcast_updates(&updates);
        let edits = cells::sync_all(&self.notebook, &mut self.graph);
        let mut stale: Vec<String> = edits
            .iter()
            .flat_map(|e| e.stale.iter().map(|c| c.as_str().to_owned()))
            .collect();
        stale.dedup();
        let mut queued: Vec<String> = edits
            .iter()
            .flat_map(|e| e.queued.iter().map(|c| c.as_str().to_owned()))
            .collect();
        self.after_edits(edits);
        if failure.is_none() && request.run {
            let runnable: Vec<String> = touched
                .into_iter()
                .filter(|cell| {
                    CellId::new(cell.clone())
                        .ok()
                        .and_then(|id| self.graph.content(&id).map(|c| c.kind.runs()))
                        .unwrap_or(false)
                })
                .collect();
            if !runnable.is_empty() {
                match self.run_cells(session, &runnable, false, client_ref) {
                    Ok(planned) => queued = planned,
                    Err(err) => failure = Some(err.message),
                }
            }
        }
        let answer = match failure {
            None => Ok(Some(ServerMessage::Accepted(Accepted {
                client_ref,
                queued,
                stale,
                created,
                warnings: Vec::new(),
            }))),
            Some(message) => Err(bad_request(Some(client_ref), message)),
        };
        self.durably(updates, client_ref, answer)
    }

    pub(super) fn set_mode(&mut self, client_ref: u64, mode: WireMode) -> Answer {
        let (mode, name) = match mode {
            WireMode::Reactive => (ExecutionMode::Reactive, "reactive"),
            WireMode::Lazy => (ExecutionMode::Lazy, "lazy"),
            WireMode::Unknown => {
                return Answer::Now(Err(bad_request(Some(client_ref), "unknown execution mode")));
            }
        };
        self.graph.set_mode(mode);
        let before = self.notebook.state_vector();
        self.notebook
            .set_meta(MODE_KEY, serde_json::Value::String(name.to_owned()));
        let update = self.notebook.diff(&before).map(Bytes::from);
        let updates: Vec<Bytes> = update.into_iter().collect();
        self.broadcast_updates(&updates);
        let answer = Ok(Some(ServerMessage::Accepted(Accepted {
            client_ref,
            ..Accepted::default()
        })));
        self.durably(updates, client_ref, answer)
    }

    /// Replaces the document's cells and outputs with a notebook file's.
    pub(super) fn import(&mut self, client_ref: u64, text: &str) -> Answer {
        let imported = match ipynb::import(text.as_bytes(), ImportLimits::default()) {
            Ok(imported) => imported,
            Err(err) => {
                let reply = bad_request(Some(client_ref), format!("import refused: {err}"));
                return Answer::Now(Err(reply));
            }
        };
        let failed = |err: &dyn Display| {
            Answer::Now(Err(ErrorReply::for_request(
                ErrorCode::Internal,
                Some(client_ref),
                format!("import failed: {err}"),
            )))
        };
        let before = self.notebook.state_vector();
        for cell in self.notebook.cells() {
            let _ = self.notebook.delete_cell(&cell.id);
        }
        if let Err(err) = self.notebook.apply(&imported.notebook.snapshot()) {
            return failed(&err);
        }
        self.notebook.take_changes();
        let update = match self.notebook.diff(&before) {
            Ok(update) => Bytes::from(update),
            Err(err) => return failed(&err),
        };
        self.broadcast_updates(std::slice::from_ref(&update));
        let edits = cells::sync_all(&self.notebook, &mut self.graph);
        self.after_edits(edits);
        self.outputs = imported.outputs;
        let limits = self.output_limits;
        for stored in self.outputs.values_mut() {
            stored.outputs = trim_stored(std::mem::take(&mut stored.outputs), limits);
        }
        let records: Vec<WireCellOutputs> = self
            .outputs
            .iter()
            .map(|(cell, stored)| WireCellOutputs {
                cell: cell.clone(),
                execution_count: stored.execution_count,
                outputs: stored.outputs.clone(),
            })
            .collect();
        for record in records {
            let cell = record.cell.clone();
            if let (Ok(id), Ok(bytes)) = (CellId::new(cell), serde_json::to_vec(&record)) {
                self.effects.push_back(Effect::PutOutputs {
                    cell: id,
                    bytes: Bytes::from(bytes),
                });
            }
            self.broadcast(None, ServerMessage::CellOutputs(record));
        }
        let accepted = Accepted {
            client_ref,
            created: self.notebook.cells().into_iter().map(|c| c.id).collect(),
            warnings: imported.warnings.iter().map(|w| w.to_string()).collect(),
            ..Accepted::default()
        };
        self.durably(
            vec![update],
            client_ref,
            Ok(Some(ServerMessage::Accepted(accepted))),
        )
    }

    pub(super) fn broadcast_updates(&mut self, updates: &[Bytes]) {
        for update in updates {
            self.broadcast(
                None,
                ServerMessage::Update(DocUpdate {
                    update: update.to_vec().into(),
                }),
            );
        }
    }
}
