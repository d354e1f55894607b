//! Property tests of every decoder of untrusted bytes in the gateway: tunnel frames (flows and
//! name lookups), host
//! strings, SOCKS5 messages and CONNECT heads. They never panic, never claim more bytes than
//! they were given or than their limit, round-trip what the encoders write, and keep their
//! canonical forms canonical. The same decoders are fuzzed in `fuzz/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};

use airlock_egress::connect::{MAX_HEAD, decode_head};
use airlock_egress::frame::{
    FlowOpen, FlowOrigin, FlowReply, LookupReply, LookupStatus, MAX_CELL_LEN, MAX_DOCUMENT_LEN,
    MAX_LOOKUP_BODY, MAX_LOOKUP_NAME_LEN, MAX_LOOKUP_REPLY_BODY, MAX_OPEN_BODY, MAX_REASON_LEN,
    MAX_REPLY_BODY, MAX_TENANT_LEN, MAX_USER_LEN, NameLookup, ReplyStatus, StreamRequest,
    TargetHost,
};
use airlock_egress::host::{Host, MAX_NAME_LEN, parse_authority, parse_host};
use airlock_egress::socks::codec::{decode_greeting, decode_request, decode_userpass};
use proptest::prelude::*;

fn target_host() -> impl Strategy<Value = TargetHost> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| TargetHost::Ip(IpAddr::from(b))),
        any::<[u8; 16]>().prop_map(|b| TargetHost::Ip(IpAddr::from(b))),
        "[a-z0-9.-]{1,255}".prop_map(TargetHost::Name),
    ]
}

fn flow_origin() -> impl Strategy<Value = FlowOrigin> {
    (
        proptest::string::string_regex(&format!("[a-zA-Z0-9_-]{{1,{MAX_CELL_LEN}}}")).unwrap(),
        any::<u64>(),
        // Any UTF-8 up to the byte limit, empty included.
        proptest::string::string_regex("\\PC{0,40}")
            .unwrap()
            .prop_filter("fits", |user| user.len() <= MAX_USER_LEN),
    )
        .prop_map(|(cell, run, user)| FlowOrigin { cell, run, user })
}

fn flow_open() -> impl Strategy<Value = FlowOpen> {
    (
        target_host(),
        1u16..,
        proptest::string::string_regex(&format!("[a-z0-9-]{{1,{MAX_TENANT_LEN}}}")).unwrap(),
        proptest::string::string_regex(&format!("[a-zA-Z0-9_-]{{1,{MAX_DOCUMENT_LEN}}}")).unwrap(),
        proptest::option::of(flow_origin()),
    )
        .prop_map(|(host, port, tenant, document, origin)| FlowOpen {
            host,
            port,
            tenant,
            document,
            origin,
        })
}

fn name_lookup() -> impl Strategy<Value = NameLookup> {
    (
        proptest::string::string_regex(&format!("[a-z0-9.-]{{1,{MAX_LOOKUP_NAME_LEN}}}")).unwrap(),
        proptest::string::string_regex(&format!("[a-z0-9-]{{1,{MAX_TENANT_LEN}}}")).unwrap(),
        proptest::string::string_regex(&format!("[a-zA-Z0-9_-]{{1,{MAX_DOCUMENT_LEN}}}")).unwrap(),
    )
        .prop_map(|(name, tenant, document)| NameLookup {
            name,
            tenant,
            document,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn name_lookup_round_trips_and_needs_every_byte(lookup in name_lookup(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
        let bytes = lookup.encode().unwrap();
        prop_assert!(bytes.len() <= 4 + MAX_LOOKUP_BODY);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(NameLookup::decode(&longer), Ok(Some((lookup.clone(), bytes.len()))));
        prop_assert_eq!(StreamRequest::decode(&longer), Ok(Some((StreamRequest::Lookup(lookup), bytes.len()))));
        for cut in 0..bytes.len() {
            prop_assert_eq!(NameLookup::decode(&bytes[..cut]), Ok(None));
            prop_assert_eq!(StreamRequest::decode(&bytes[..cut]), Ok(None));
        }
    }

    #[test]
    fn stream_requests_decode_any_bytes_within_limits(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(Some((lookup, used))) = NameLookup::decode(&bytes) {
            prop_assert!(used <= bytes.len() && used <= 4 + MAX_LOOKUP_BODY);
            prop_assert!(!lookup.name.is_empty() && lookup.name.len() <= MAX_LOOKUP_NAME_LEN);
            prop_assert!(!lookup.tenant.is_empty() && lookup.tenant.len() <= MAX_TENANT_LEN);
            prop_assert!(!lookup.document.is_empty() && lookup.document.len() <= MAX_DOCUMENT_LEN);
            prop_assert_eq!(lookup.encode().unwrap(), bytes[..used].to_vec());
        }
        match StreamRequest::decode(&bytes) {
            Ok(Some((request, used))) => {
                prop_assert!(used <= bytes.len() && used <= 4 + MAX_OPEN_BODY.max(MAX_LOOKUP_BODY));
                prop_assert_eq!(request.encode().unwrap(), bytes[..used].to_vec());
                prop_assert!(StreamRequest::kind_of(&bytes).is_some());
            }
            // "Need more" only while the frame the header announces is not all there.
            Ok(None) => {
                let announced = bytes
                    .get(2..4)
                    .map(|len| 4 + usize::from(u16::from_be_bytes([len[0], len[1]])));
                prop_assert!(announced.is_none_or(|whole| bytes.len() < whole));
            }
            Err(_) => {}
        }
    }

    #[test]
    fn name_lookup_with_a_valid_header_and_random_body(body in proptest::collection::vec(any::<u8>(), 0..700)) {
        let mut bytes = vec![1, 3];
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
        let result = NameLookup::decode(&bytes);
        if body.len() > MAX_LOOKUP_BODY {
            prop_assert!(result.is_err());
        } else {
            prop_assert!(!matches!(result, Ok(None)), "a whole frame is never 'need more'");
        }
    }

    #[test]
    fn lookup_reply_round_trips(status in 0u8..5, reason in ".{0,300}") {
        let reply = LookupReply { status: LookupStatus::try_from(status).unwrap(), reason };
        let bytes = reply.encode();
        prop_assert!(bytes.len() <= 4 + MAX_LOOKUP_REPLY_BODY);
        prop_assert_eq!(LookupReply::decode(&bytes), Ok(Some((reply, bytes.len()))));
    }

    #[test]
    fn lookup_reply_decodes_any_bytes_within_limits(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok(Some((reply, used))) = LookupReply::decode(&bytes) {
            prop_assert!(used <= bytes.len() && used <= 4 + MAX_LOOKUP_REPLY_BODY);
            prop_assert!(reply.reason.len() <= MAX_REASON_LEN);
            prop_assert_eq!(reply.encode(), bytes[..used].to_vec());
        }
    }

    #[test]
    fn long_lookup_reasons_are_cut_on_a_character_boundary(reason in "[a-zé€]{300,1500}") {
        let bytes = LookupReply { status: LookupStatus::Denied, reason }.encode();
        let (decoded, _) = LookupReply::decode(&bytes).unwrap().unwrap();
        prop_assert!(decoded.reason.len() <= MAX_REASON_LEN);
    }

    #[test]
    fn flow_open_round_trips_and_needs_every_byte(open in flow_open(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
        let bytes = open.encode().unwrap();
        prop_assert!(bytes.len() <= 4 + MAX_OPEN_BODY);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(FlowOpen::decode(&longer), Ok(Some((open, bytes.len()))));
        for cut in 0..bytes.len() {
            prop_assert_eq!(FlowOpen::decode(&bytes[..cut]), Ok(None));
        }
    }

    #[test]
    fn flow_open_decodes_any_bytes_within_limits(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(Some((open, used))) = FlowOpen::decode(&bytes) {
            prop_assert!(used <= bytes.len() && used <= 4 + MAX_OPEN_BODY);
            prop_assert!(open.port != 0);
            prop_assert!(!open.tenant.is_empty() && open.tenant.len() <= MAX_TENANT_LEN);
            prop_assert!(!open.document.is_empty() && open.document.len() <= MAX_DOCUMENT_LEN);
            if let Some(origin) = &open.origin {
                prop_assert!(!origin.cell.is_empty() && origin.cell.len() <= MAX_CELL_LEN);
                prop_assert!(origin.user.len() <= MAX_USER_LEN);
            }
            // What decodes re-encodes to the same bytes.
            prop_assert_eq!(open.encode().unwrap(), bytes[..used].to_vec());
        }
    }

    #[test]
    fn flow_open_with_a_valid_header_and_random_body(body in proptest::collection::vec(any::<u8>(), 0..700)) {
        let mut bytes = vec![1, 1];
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
        let result = FlowOpen::decode(&bytes);
        if body.len() > MAX_OPEN_BODY {
            prop_assert!(result.is_err());
        } else {
            prop_assert!(!matches!(result, Ok(None)), "a whole frame is never 'need more'");
        }
    }

    #[test]
    fn flow_reply_round_trips(status in 0u8..6, flow in any::<u64>(), reason in ".{0,300}") {
        let reply = FlowReply { status: ReplyStatus::try_from(status).unwrap(), flow, reason };
        let bytes = reply.encode();
        prop_assert!(bytes.len() <= 4 + MAX_REPLY_BODY);
        prop_assert_eq!(FlowReply::decode(&bytes), Ok(Some((reply, bytes.len()))));
    }

    #[test]
    fn flow_reply_decodes_any_bytes_within_limits(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok(Some((reply, used))) = FlowReply::decode(&bytes) {
            prop_assert!(used <= bytes.len() && used <= 4 + MAX_REPLY_BODY);
            prop_assert!(reply.reason.len() <= MAX_REASON_LEN);
        }
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary(reason in "[a-zé€]{300,1500}") {
        let bytes = FlowReply { status: ReplyStatus::Denied, flow: 1, reason }.encode();
        let (decoded, _) = FlowReply::decode(&bytes).unwrap().unwrap();
        prop_assert!(decoded.reason.len() <= MAX_REASON_LEN);
    }

    #[test]
    fn hosts_parse_to_fixed_points(input in "\\PC{0,80}") {
        match parse_host(&input) {
            Ok(Host::Name(name)) => {
                let text = name.as_str();
                prop_assert!(text.len() <= MAX_NAME_LEN);
                prop_assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'));
                prop_assert_eq!(parse_host(text), Ok(Host::Name(name.clone())));
            }
            Ok(Host::Ip(IpAddr::V4(ip))) => prop_assert_eq!(ip.to_string(), input.clone()),
            Ok(Host::Ip(IpAddr::V6(_))) => prop_assert!(input.starts_with('[') && input.ends_with(']')),
            Err(_) => {}
        }
    }

    #[test]
    fn hosts_from_host_like_bytes(input in "[0-9a-fA-Fx.:\\[\\]%_-]{0,40}") {
        // The characters numeric tricks are made of; whatever parses must be canonical.
        if let Ok(Host::Ip(IpAddr::V4(ip))) = parse_host(&input) {
            prop_assert_eq!(ip.to_string(), input.clone());
        }
        let _ = parse_authority(&input);
    }

    #[test]
    fn only_the_dotted_quad_spelling_of_an_address_parses(ip in any::<u32>()) {
        let ip = Ipv4Addr::from(ip);
        let [a, b, c, d] = ip.octets();
        prop_assert_eq!(parse_host(&ip.to_string()), Ok(Host::Ip(IpAddr::V4(ip))));
        for other in [
            u32::from(ip).to_string(),
            format!("{:#x}", u32::from(ip)),
            format!("0{:o}", u32::from(ip)),
            format!("{a}.{}", (u32::from(b) << 16) | (u32::from(c) << 8) | u32::from(d)),
            format!("{a}.{b}.{}", (u32::from(c) << 8) | u32::from(d)),
            format!("0{a}.{b}.{c}.{d}"),
            format!("{a:#x}.{b}.{c}.{d}"),
            format!("{a}.{b}.{c}.{d}."),
        ] {
            prop_assert!(parse_host(&other).is_err(), "{} parsed", other);
        }
    }

    #[test]
    fn socks_decoders_stay_within_their_input(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Some((methods, used))) = decode_greeting(&bytes) {
            prop_assert!(used <= bytes.len() && used <= 257 && !methods.is_empty());
        }
        if let Ok(Some((_, used))) = decode_userpass(&bytes) {
            prop_assert!(used <= bytes.len() && used <= 513);
        }
        if let Ok(Some((_, used))) = decode_request(&bytes) {
            prop_assert!(used <= bytes.len() && used <= 262);
        }
    }

    #[test]
    fn connect_heads_stay_within_their_limit(bytes in proptest::collection::vec(any::<u8>(), 0..(MAX_HEAD + 64))) {
        if let Ok(Some((_, used))) = decode_head(&bytes) {
            prop_assert!(used <= bytes.len() && used <= MAX_HEAD);
        }
        if bytes.len() >= MAX_HEAD {
            prop_assert!(!matches!(decode_head(&bytes), Ok(None)), "an oversized partial head must be an error");
        }
    }
}
