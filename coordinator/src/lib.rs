//! `airlock-coordinator`: the Raft-replicated coordinator of one region.
//!
//! Coordinators keep a warm pool of kernel tasks, hand each document to exactly one task (with an
//! epoch that fences out every earlier owner at the document store), and survive losing their
//! leader. DESIGN.md §4 is the contract.
//!
//! # Layout
//! - [`model`]: the vocabulary — tasks, allocations (with their tenant), pool targets, egress IP
//!   sets, and the commands of the log.
//! - [`state`]: the replicated state machine, a sans-IO core: `apply(index, command)`.
//! - [`raft`]: openraft around the state machine — log and state on disk (redb), snapshots,
//!   the network between coordinators (mutual TLS), and proposing from any coordinator.
//! - [`pool`]: the pool controller, a sans-IO core: how many tasks to start, retire and drain.
//! - [`service`]: claims, the tasks' control protocol and the leader's duties, over any
//!   [`service::Consensus`].
//! - [`cluster`]: one coordinator process assembled (Raft member, service, API, duties).
//! - [`api`]: the HTTP API (routes, authentication, errors) and its OpenAPI document.
//! - [`egress_ip_file`]: the egress IP set files operators write (JSON or TOML). The API's
//!   client is `airlock_client::coordinator`; its bodies are `airlock_protocol::api`.
//! - [`driver`]: how tasks are started and stopped: the `Driver` trait, its conformance suite,
//!   and the local driver (spawns `airlock node` processes on this machine).
// `deny`, not `forbid`: the local driver's spawn must call `setsid` between fork and exec (std
// has no safe way to), in one function that says why it is sound. Nothing else may.
#![deny(unsafe_code)]

pub mod api;
pub mod cluster;
pub mod driver;
pub mod egress_ip_file;
pub mod model;
pub mod pool;
pub mod raft;
pub mod service;
pub mod state;
