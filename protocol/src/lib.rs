//! `airlock-protocol`: every byte that crosses a boundary in Airlock is defined here.
//!
//! # Layout
//! - [`message`]: the document protocol between a client and its document's node — hello and
//!   welcome, execute, outputs, kernel status, interrupt, restart, typed errors.
//! - [`document`]: collaborative editing (y-sync), the cell graph and notebook files.
//! - [`api`]: the coordinator's HTTP API bodies (claims, sessions, egress IP sets, refusals).
//! - [`ids`]: the one rule for document and cell ids, and tenant names.
//! - [`blob`]: opaque bytes, `bin` in MessagePack and base64 in JSON.
//! - [`control`]: the HTTP/JSON protocol between a task's node and the coordinators.
//! - [`codec`]: the one binary framing used on QUIC streams and WebSocket binary frames, the JSON
//!   text form for browsers, and the frame size limits.
//! - [`tunnel`]: the frames a node and the egress gateway exchange on each QUIC stream of the
//!   egress tunnel (flow open and reply, name lookup and verdict).
//! - [`token`]: ed25519-signed capability tokens (document, user, role, epoch, expiry).
//! - [`version`]: protocol version negotiation.
//!
//! The crate does no IO, reads no clock and spawns nothing; callers pass `now` in. It depends on
//! serde, the two encodings and the signature scheme, and nothing else.
#![forbid(unsafe_code)]

pub mod api;
pub mod blob;
pub mod codec;
pub mod control;
pub mod document;
pub mod ids;
pub mod message;
pub mod token;
pub mod tunnel;
pub mod version;

pub use blob::Blob;
pub use codec::{CodecError, FrameLimit};
pub use document::*;
pub use message::*;
pub use token::{Claims, Role, TokenError};
pub use version::{PROTOCOL_VERSION, VersionRange};

/// ALPN protocol id for QUIC connections from clients to nodes.
pub const ALPN: &[u8] = b"airlock/1";
