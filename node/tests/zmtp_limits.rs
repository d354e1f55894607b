//! The ZeroMQ decoder's receive limits (`vendor/zeromq/AIRLOCK-PATCH.md`), property-tested: for
//! any bytes a peer sends after its greeting, the decoder never holds or reserves much more than
//! the limits, and a frame or message over them is refused as `CodecError::Limit` from its
//! header, before its body arrives. The fuzz target `node/fuzz/fuzz_targets/zmtp_decoder.rs`
//! runs the same check under libFuzzer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use asynchronous_codec::Decoder;
use bytes::BytesMut;
use proptest::prelude::*;
use zeromq::__bench::{CodecError, Message, ZmqCodec};

const LIMIT: usize = 64 * 1024;

/// A ZMTP 3.0 NULL greeting, as any peer sends first.
fn greeting() -> Vec<u8> {
    let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];
    g.extend_from_slice(b"NULL");
    g.resize(64, 0);
    g
}

/// A frame: flags byte, short or long length, body.
fn frame(more: bool, body: &[u8]) -> Vec<u8> {
    let more = u8::from(more);
    let mut out = Vec::new();
    if body.len() > 255 {
        out.push(0x02 | more);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(more);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
    out
}

/// Feeds `bytes` to a decoder in `chunk`-sized reads; returns the first error, and checks the
/// buffer's capacity after every read.
fn feed(bytes: &[u8], chunk: usize) -> Option<CodecError> {
    zeromq::set_receive_limits(zeromq::ReceiveLimits {
        max_frame: LIMIT,
        max_message: LIMIT,
        max_frames: 64,
    });
    let mut codec = ZmqCodec::new();
    let mut buffer = BytesMut::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(error) => return Some(error),
            }
        }
        // The decoder may reserve a declared frame (within the limit) and one read chunk.
        assert!(
            buffer.capacity() <= 4 * LIMIT + bytes.len().min(4 * LIMIT),
            "the decoder holds {} bytes",
            buffer.capacity()
        );
    }
    None
}

#[test]
fn the_review_repro_is_refused_from_its_header() {
    let mut bytes = greeting();
    bytes.push(0x02);
    bytes.extend_from_slice(&(1u64 << 62).to_be_bytes());
    match feed(&bytes, 4096) {
        Some(CodecError::Limit { what, size, limit }) => {
            assert_eq!(what, "frame");
            assert_eq!(size, 1 << 62);
            assert_eq!(limit, LIMIT as u64);
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn a_message_of_many_frames_each_under_the_limit_is_refused_past_it() {
    let mut bytes = greeting();
    let body = vec![7u8; LIMIT / 4];
    for _ in 0..8 {
        bytes.extend(frame(true, &body));
    }
    assert!(matches!(
        feed(&bytes, 1000),
        Some(CodecError::Limit {
            what: "message",
            ..
        })
    ));
    let mut bytes = greeting();
    for _ in 0..100 {
        bytes.extend(frame(true, b"x"));
    }
    assert!(matches!(
        feed(&bytes, 1000),
        Some(CodecError::Limit {
            what: "message (frames)",
            ..
        })
    ));
}

#[test]
fn messages_within_the_limits_still_decode() {
    zeromq::set_receive_limits(zeromq::ReceiveLimits {
        max_frame: LIMIT,
        max_message: LIMIT,
        max_frames: 64,
    });
    let mut bytes = greeting();
    bytes.extend(frame(true, b"<IDS|MSG>"));
    bytes.extend(frame(false, &vec![1u8; LIMIT / 2]));
    let mut codec = ZmqCodec::new();
    let mut buffer = BytesMut::from(&bytes[..]);
    assert!(matches!(
        codec.decode(&mut buffer),
        Ok(Some(Message::Greeting(_)))
    ));
    match codec.decode(&mut buffer) {
        Ok(Some(Message::Message(message))) => assert_eq!(message.len(), 2),
        other => panic!("expected the message, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_after_a_greeting_stay_within_the_limits(
        frames in proptest::collection::vec(
            (any::<u8>(), prop_oneof![Just(0u64), Just(255), Just(1 << 62), Just(u64::MAX), 0u64..(4 * LIMIT as u64)], 0usize..512),
            0..24,
        ),
        chunk in 1usize..9000,
    ) {
        let mut bytes = greeting();
        for (flags, declared, body) in frames {
            bytes.push(flags & 0x07);
            if flags & 0x02 != 0 {
                bytes.extend_from_slice(&declared.to_be_bytes());
            } else {
                bytes.push(declared as u8);
            }
            bytes.extend(std::iter::repeat_n(0xab, body));
        }
        if let Some(CodecError::Limit { size, limit, .. }) = feed(&bytes, chunk) {
            prop_assert!(size > limit);
        }
    }
}
