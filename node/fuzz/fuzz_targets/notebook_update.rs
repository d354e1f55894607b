//! `Notebook::apply` and `Notebook::diff` on hostile bytes, as a y-sync peer sends them.
//!
//! A notebook with one cell takes the input as an update (`apply`), then as a state vector
//! (`diff`; after a partial apply the doc may hold pending updates, which `diff` re-encodes).
//! Checks: nothing panics outside the node's own `catch_unwind`; when `validate::update_v1`
//! accepts the bytes, `apply` neither poisons the replica nor needs its decoder guard (a caught
//! decoder panic on validated bytes is a gap in the validator); when it refuses them, `apply`
//! refuses them too (`BadUpdate`).
#![no_main]

#[path = "common.rs"]
mod common;

use airlock_node::collab::validate::{self, Limits};
use airlock_node::collab::{CellKind, Notebook, NotebookError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::install_hook(), |data: &[u8]| {
    common::run(|| {
        let nb = Notebook::new();
        nb.insert_cell(0, "cell-1", CellKind::Code, "x = 1\nprint(x)")
            .expect("inserting into an empty notebook");
        let valid = validate::update_v1(data, &Limits::default());
        let before = common::panics();
        let applied = nb.apply(data);
        let caught = common::panics() - before;
        match (&valid, &applied) {
            (Ok(()), Err(NotebookError::Poisoned)) => {
                panic!("validate::update_v1 accepted an update that poisoned the replica")
            }
            (Ok(()), Err(NotebookError::BadUpdate(msg))) if caught > 0 => {
                panic!("validate::update_v1 accepted an update whose decoding panicked: {msg}")
            }
            (Err(_), Ok(_)) => panic!("apply accepted an update validate::update_v1 refused"),
            _ => {}
        }
        assert!(!nb.is_poisoned() || valid.is_err());
        // As a state vector (y-sync step 1 from a peer); the reply is not checked further.
        let _ = nb.diff(data);
        if !nb.is_poisoned() {
            let _ = nb.cells();
            let _ = nb.diff(&nb.state_vector());
        }
    });
});
