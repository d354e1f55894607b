//! SOCKS5 greeting, username/password and request messages.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    airlock_egress_fuzz::check_socks5(data);
});
