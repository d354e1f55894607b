//! `airlock-coordinator` will own the Raft-replicated coordinator: state machine, warm pool controller, drivers (local, nomad), HTTP API, token issuing. Not built yet (issue 4 of 5).
//!
//! Nothing lives here yet; see `docs/ARCHITECTURE.md` for what each crate owns.
#![forbid(unsafe_code)]
