//! Lookup frames (NameLookup from nodes, through the stream-request dispatch; LookupReply from
//! the gateway).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    airlock_egress_fuzz::check_lookup_frames(data);
});
