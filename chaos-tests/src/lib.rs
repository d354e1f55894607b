//! `airlock-chaos` will own the fault-injection harness, its invariant checkers and the Nomad HTTP API emulator. Not built yet.
//!
//! Nothing lives here yet; see `docs/ARCHITECTURE.md` for what each crate owns.
#![forbid(unsafe_code)]
