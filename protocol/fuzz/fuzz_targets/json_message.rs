//! WebSocket text messages, both ways: the JSON form of either message type.
#![no_main]

use airlock_protocol::{ClientMessage, ServerMessage};
use airlock_protocol_fuzz::check_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A WebSocket text message is UTF-8 by the time it reaches the decoder.
    if let Ok(text) = std::str::from_utf8(data) {
        check_json::<ClientMessage>(text);
        check_json::<ServerMessage>(text);
    }
});
