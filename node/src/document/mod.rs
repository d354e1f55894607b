//! The document: cells, their static analysis and the reactive cell graph (sans-IO cores), and
//! the document actor that owns them beside the kernel.
//!
//! - [`analysis`]: what one cell defines, reads and deletes at global scope, from its text alone
//!   (Python with IPython syntax, or DuckDB SQL).
//! - [`graph`]: the cells in document order, each reference bound to the nearest cell above that
//!   defines the name, cell states, staleness, the execution queue and execution epochs.
//! - [`outputs`]: what a cell's outputs may cost — per output, live per run, kept per cell —
//!   and their settling as they arrive.
//!
//! All three are plain state machines: no IO, no clock, no tasks. The user-facing rules are in
//! `docs/REACTIVITY.md`.

pub mod actor;
pub mod analysis;
pub mod core;
pub mod graph;
pub mod outputs;
