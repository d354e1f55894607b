//! What a node reads from a client: bytes off a QUIC stream or a binary WebSocket message.
#![no_main]

use airlock_protocol::ClientMessage;
use airlock_protocol_fuzz::check_frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_frames::<ClientMessage>(data));
