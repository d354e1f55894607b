//! `airlock-egress`: the egress gateway, the only way out for kernel code. Every flow leaves
//! from the tenant's static IP, under the tenant's and document's policy, with an audit record.
//!
//! # Layout
//!
//! The modules follow a flow from the client to the destination.
//!
//! - Front ends, each identifying the tenant and document its own way:
//!   - [`tunnel`]: QUIC from nodes (mutual TLS; tenant from the node's certificate and config),
//!     one stream per flow or name lookup, framed by [`frame`] (`airlock_protocol::tunnel`).
//!     The node's side, `airlock_client::tunnel::TunnelClient`, is re-exported here.
//!   - [`connect`]: HTTP CONNECT, proxy credentials → tenant/document.
//!   - [`socks`]: SOCKS5 (RFC 1928, CONNECT only; RFC 1929 credentials), codec in
//!     [`socks::codec`].
//! - [`host`]: the destination host string → a canonical name or address, or a refusal
//!   (non-canonical numeric forms such as `0x7f.1`).
//! - [`flow`]: the one path every flow takes: policy, limits, resolve once, classify, dial,
//!   relay, audit.
//! - [`lookup`]: a node's question about a DNS name (tunnel only): the flow's policy, resolver
//!   and classification, answered with a verdict instead of a connection.
//! - [`policy`]: the sans-IO decision core (address classes in [`policy::address`], rule parts
//!   in [`policy::rules`], limits in [`policy::limits`]).
//! - [`resolve`]: hickory's in-process resolver at configured upstreams.
//! - [`dial`]: bind-before-connect from the tenant's static address.
//! - [`audit`]: JSON lines per flow; [`metrics`]: Prometheus names.
//! - [`config`]: the TOML file → typed values; [`gateway`]: shared state and reload;
//!   [`server`]: listeners, accept loops, shutdown, SIGHUP/file-watch reload.
//!
//! What this crate does not do: redirect a kernel's connections (the node does that and uses
//! [`tunnel::TunnelClient`]), answer DNS for kernels (the node does, asking
//! [`tunnel::TunnelClient::lookup`] for a verdict), or proxy plain HTTP requests.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod audit;
pub mod config;
pub mod connect;
pub mod dial;
pub mod flow;
pub mod gateway;
pub mod host;
pub mod lookup;
pub mod metrics;
pub mod policy;
pub mod resolve;
pub mod server;
pub mod socks;
mod splice;
pub mod tunnel;

/// The tunnel's frames, defined with every other wire type in `airlock-protocol`.
pub use airlock_protocol::tunnel as frame;

pub use config::Config;
pub use gateway::Gateway;
pub use server::{ListenAddresses, Listeners};
