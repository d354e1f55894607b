//! The cell analysis on hostile sources (any collaborator can type a cell), as Python and as SQL.
//! Non-UTF-8 input is skipped (cell sources are strings). Checks: nothing panics outside the
//! analysis's own `catch_unwind` around Ruff's lexer and parser; those caught panics are
//! expected and, thanks to the hook in `common.rs`, not crashes (logged once per location).
#![no_main]

#[path = "common.rs"]
mod common;

use airlock_node::document::analysis::{CellContent, analyze};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::install_hook(), |data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    common::run(|| {
        let _ = analyze(&CellContent::code(source));
        let _ = analyze(&CellContent::sql(source));
    });
});
