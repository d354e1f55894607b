//! Live collaboration: the notebook as a CRDT (`yrs`, in the `jupyter_ydoc` schema) and, later,
//! the y-sync session logic that keeps every client's replica converging.
//!
//! Everything here is sans-IO: bytes in, bytes and change summaries out.

pub mod ipynb;
pub mod notebook;
pub mod validate;

pub use notebook::{CellKind, CellView, Changes, Notebook, NotebookError};
