//! `airlock-egress` will own the egress gateway: tunnel listener, CONNECT and SOCKS5 front ends, resolver, policy, static source IPs, audit log. Not built yet (issue 5 of 5).
//!
//! Nothing lives here yet; see `docs/ARCHITECTURE.md` for what each crate owns.
#![forbid(unsafe_code)]
