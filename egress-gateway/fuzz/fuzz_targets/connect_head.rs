//! HTTP CONNECT request heads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    airlock_egress_fuzz::check_connect_head(data);
});
