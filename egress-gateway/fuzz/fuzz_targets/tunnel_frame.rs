//! Tunnel frames (FlowOpen from nodes, with its optional origin; FlowReply from the gateway).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    airlock_egress_fuzz::check_tunnel_frames(data);
});
