//! The checks the fuzz targets share: each decoder's promises about any input, beyond "does not
//! panic". The property tests in `egress-gateway/tests/decoders.rs` state the same promises.

use std::net::IpAddr;

use airlock_egress::connect::{MAX_HEAD, decode_head};
use airlock_egress::frame::{
    FlowOpen, FlowReply, LookupReply, MAX_CELL_LEN, MAX_DOCUMENT_LEN, MAX_LOOKUP_BODY, MAX_LOOKUP_NAME_LEN,
    MAX_LOOKUP_REPLY_BODY, MAX_OPEN_BODY, MAX_REASON_LEN, MAX_REPLY_BODY, MAX_TENANT_LEN,
    MAX_USER_LEN, NameLookup, StreamRequest,
};
use airlock_egress::host::{Host, MAX_NAME_LEN, parse_authority, parse_host};
use airlock_egress::socks::codec::{decode_greeting, decode_request, decode_userpass};

/// Tunnel frames as the gateway (FlowOpen, with or without its origin) and a node (FlowReply)
/// read them.
pub fn check_tunnel_frames(data: &[u8]) {
    if let Ok(Some((open, used))) = FlowOpen::decode(data) {
        assert!(used <= data.len() && used <= 4 + MAX_OPEN_BODY);
        assert!(open.port != 0);
        assert!(!open.tenant.is_empty() && open.tenant.len() <= MAX_TENANT_LEN);
        assert!(!open.document.is_empty() && open.document.len() <= MAX_DOCUMENT_LEN);
        if let Some(origin) = &open.origin {
            assert!(!origin.cell.is_empty() && origin.cell.len() <= MAX_CELL_LEN);
            assert!(origin.user.len() <= MAX_USER_LEN);
        }
        let again = open.encode().expect("a decoded frame encodes");
        assert_eq!(again, data[..used], "decode → encode is the identity");
    }
    if let Ok(Some((reply, used))) = FlowReply::decode(data) {
        assert!(used <= data.len() && used <= 4 + MAX_REPLY_BODY);
        assert!(reply.reason.len() <= MAX_REASON_LEN);
        assert_eq!(reply.encode(), data[..used]);
    }
}

/// Lookup frames as the gateway (NameLookup, through the stream-request dispatch) and a node
/// (LookupReply) read them.
pub fn check_lookup_frames(data: &[u8]) {
    if let Ok(Some((lookup, used))) = NameLookup::decode(data) {
        assert!(used <= data.len() && used <= 4 + MAX_LOOKUP_BODY);
        assert!(!lookup.name.is_empty() && lookup.name.len() <= MAX_LOOKUP_NAME_LEN);
        assert!(!lookup.tenant.is_empty() && lookup.tenant.len() <= MAX_TENANT_LEN);
        assert!(!lookup.document.is_empty() && lookup.document.len() <= MAX_DOCUMENT_LEN);
        let again = lookup.encode().expect("a decoded frame encodes");
        assert_eq!(again, data[..used], "decode → encode is the identity");
    }
    if let Ok(Some((request, used))) = StreamRequest::decode(data) {
        assert!(used <= data.len() && used <= 4 + MAX_OPEN_BODY.max(MAX_LOOKUP_BODY));
        assert!(StreamRequest::kind_of(data).is_some());
        let again = request.encode().expect("a decoded frame encodes");
        assert_eq!(again, data[..used], "decode → encode is the identity");
    }
    if let Ok(Some((reply, used))) = LookupReply::decode(data) {
        assert!(used <= data.len() && used <= 4 + MAX_LOOKUP_REPLY_BODY);
        assert!(reply.reason.len() <= MAX_REASON_LEN);
        assert_eq!(reply.encode(), data[..used]);
    }
}

/// Host strings as CONNECT, SOCKS5 and the tunnel pass them on.
pub fn check_host(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_host(text) {
        Ok(Host::Name(name)) => {
            let canonical = name.as_str();
            assert!(canonical.len() <= MAX_NAME_LEN);
            assert!(canonical.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'-' | b'_')));
            // Canonical names are fixed points, and never numeric-looking.
            assert_eq!(parse_host(canonical), Ok(Host::Name(name.clone())));
            assert!(canonical.parse::<IpAddr>().is_err());
        }
        Ok(Host::Ip(IpAddr::V4(ip))) => assert_eq!(ip.to_string(), text),
        Ok(Host::Ip(IpAddr::V6(_))) => assert!(text.starts_with('[') && text.ends_with(']')),
        Err(_) => {}
    }
    if let Ok((_, port)) = parse_authority(text) {
        assert!(port != 0);
    }
}

/// SOCKS5 handshake messages.
pub fn check_socks5(data: &[u8]) {
    if let Ok(Some((methods, used))) = decode_greeting(data) {
        assert!(used <= data.len() && used <= 257 && !methods.is_empty());
    }
    if let Ok(Some((login, used))) = decode_userpass(data) {
        assert!(used <= data.len() && used <= 513 && !login.username.is_empty());
    }
    if let Ok(Some((_, used))) = decode_request(data) {
        assert!(used <= data.len() && used <= 262);
    }
}

/// CONNECT request heads.
pub fn check_connect_head(data: &[u8]) {
    match decode_head(data) {
        Ok(Some((_, used))) => assert!(used <= data.len() && used <= MAX_HEAD),
        Ok(None) => assert!(data.len() < MAX_HEAD),
        Err(_) => {}
    }
}
