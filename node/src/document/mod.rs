//! The document: cells, their static analysis, the reactive cell graph and the document core
//! (sans-IO), and the actor that drives the core beside the kernel.
//!
//! - [`analysis`]: what one cell defines, reads and deletes at global scope, from its text alone
//!   (Python with IPython syntax, or DuckDB SQL).
//! - [`graph`]: the cells in document order, each reference bound to the nearest cell above that
//!   defines the name, cell states, staleness, the execution queue and execution epochs.
//! - [`outputs`]: what a cell's outputs may cost — per output, live per run, kept per cell —
//!   and their settling as they arrive.
//! - [`core`]: everything about a served document that changes — notebook, graph, runs,
//!   sessions, durable acks, fencing, the idle deadline — in, and effects for a driver out.
//!
//! These four are plain state machines: no IO, no clock, no tasks, no tokio.
//! - [`actor`]: the actix driver of the core: it does the core's IO on the node's runtime and
//!   is what sessions reach ([`actor::DocumentHandle`]).
//!
//! The user-facing rules are in `docs/REACTIVITY.md`.

pub mod actor;
pub mod analysis;
pub mod core;
pub mod graph;
pub mod outputs;
#[cfg(test)]
mod test_rng;
