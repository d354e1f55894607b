//! The pool controller (to be written).
