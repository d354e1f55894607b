//! What a client reads from a node: bytes off a QUIC stream or a binary WebSocket message.
#![no_main]

use airlock_protocol::ServerMessage;
use airlock_protocol_fuzz::check_frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_frames::<ServerMessage>(data));
