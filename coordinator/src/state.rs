//! The replicated state machine (to be written).
