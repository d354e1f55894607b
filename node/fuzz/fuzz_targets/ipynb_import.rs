//! `.ipynb` import on hostile bytes (an uploaded file). Checks: nothing panics outside the node's
//! own `catch_unwind`, and whatever imports also exports (and serializes).
#![no_main]

#[path = "common.rs"]
mod common;

use airlock_node::collab::ipynb::{self, ImportLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::install_hook(), |data: &[u8]| {
    common::run(|| {
        let Ok(imported) = ipynb::import(data, ImportLimits::default()) else {
            return;
        };
        assert!(!imported.notebook.is_poisoned());
        let exported = match ipynb::export(&imported.notebook, &imported.outputs) {
            Ok(value) => value,
            Err(err) => panic!("imported but did not export: {err}"),
        };
        if let Err(err) = ipynb::to_string_pretty(&exported) {
            panic!("exported but did not serialize: {err}");
        }
    });
});
