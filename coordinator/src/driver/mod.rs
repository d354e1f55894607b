//! Drivers that start and stop tasks (to be written).
