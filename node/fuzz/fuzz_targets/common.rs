//! Panic handling shared by the targets.
//!
//! libfuzzer-sys installs a panic hook that aborts the process *before* unwinding, so a panic
//! the node catches on purpose (`catch_unwind` around `yrs` in `Notebook::apply`/`diff`, around
//! Ruff's parser in the cell analysis) would be reported as a crash. [`install_hook`] replaces
//! that hook (it runs in the targets' `init:` block, after libfuzzer-sys's own) with one that
//! only records the panic, and [`run`] turns a panic that escapes the node's code into an abort
//! that prints the recorded message, so libFuzzer still sees real crashes.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::sync::Mutex;

thread_local! {
    /// The last panic's location and message.
    static LAST: RefCell<String> = const { RefCell::new(String::new()) };
    /// Panics so far on this thread, caught or not.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// Locations already reported once (caught panics are logged once per location, not per input).
static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string payload>".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let text = format!("{location}: {message}");
        if SEEN.lock().map(|mut s| s.insert(location)).unwrap_or(false) {
            eprintln!("[fuzz] panic (first at this location; may be caught): {text}");
        }
        LAST.with(|last| *last.borrow_mut() = text);
        COUNT.with(|c| c.set(c.get() + 1));
    }));
}

/// Panics on this thread so far (caught or not).
#[allow(dead_code)] // Not every target uses it.
pub fn panics() -> u64 {
    COUNT.with(Cell::get)
}

/// Runs one input; a panic that escapes is a finding: print it and abort (as libFuzzer expects).
pub fn run(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        LAST.with(|last| eprintln!("[fuzz] uncaught panic: {}", last.borrow()));
        std::process::abort();
    }
}
