//! Destination host strings (CONNECT authority, SOCKS5 domain, tunnel name).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    airlock_egress_fuzz::check_host(data);
});
