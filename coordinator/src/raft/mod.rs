//! openraft around the state machine (to be written).
