//! The checks the fuzz targets share: each decoder's promises about any input, beyond "does not
//! panic". The property tests in `protocol/tests/fuzz_decoders.rs` state the same promises.

use airlock_protocol::ErrorCode;
use airlock_protocol::codec::{self, CodecError, FrameLimit, HARD_MAX_FRAME_LEN, HEADER_LEN};
use ed25519_dalek::{Signer as _, SigningKey};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Limits to decode every input under: the default, and one small enough that fuzzed headers
/// often land on both sides of it.
const LIMITS: [usize; 2] = [codec::DEFAULT_MAX_FRAME_LEN, 64];

/// Reads `data` as a stream of frames, then as one WebSocket binary message.
pub fn check_frames<M>(data: &[u8])
where
    M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    for max in LIMITS {
        let limit = FrameLimit::new(max);
        // As a QUIC reader would: frame after frame until one is incomplete or bad.
        let mut rest = data;
        loop {
            match codec::decode_frame::<M>(rest, limit) {
                Ok(Some((msg, used))) => {
                    let declared = declared_len(rest);
                    assert!(used <= rest.len());
                    assert_eq!(used, HEADER_LEN + declared);
                    assert!(declared <= limit.get());
                    relay(&msg);
                    rest = &rest[used..];
                }
                Ok(None) => break,
                Err(err) => {
                    assert_peer_facing(&err);
                    if let CodecError::TooLarge { len, .. } = err {
                        assert!(len > limit.get());
                    }
                    break;
                }
            }
        }
        match codec::decode_whole_frame::<M>(data, limit) {
            Ok(msg) => {
                assert_eq!(declared_len(data), data.len() - HEADER_LEN);
                assert!(data.len() - HEADER_LEN <= limit.get());
                relay(&msg);
            }
            Err(err) => assert_peer_facing(&err),
        }
    }
}

/// Reads `text` as a WebSocket text message.
pub fn check_json<M>(text: &str)
where
    M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    for max in LIMITS {
        match codec::decode_json::<M>(text, FrameLimit::new(max)) {
            Ok(msg) => {
                assert!(text.len() <= max);
                relay(&msg);
                let again = codec::encode_json(&msg, FrameLimit::new(HARD_MAX_FRAME_LEN))
                    .expect("a decoded message encodes");
                codec::decode_json::<M>(&again, FrameLimit::new(HARD_MAX_FRAME_LEN))
                    .expect("an encoded message decodes");
            }
            Err(err) => assert_peer_facing(&err),
        }
    }
}

/// A token over arbitrary claim bytes, properly signed.
pub fn sign_raw_claims(claims: &[u8], key: &SigningKey) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut token = format!("v1.{}", b64.encode(claims));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&b64.encode(signature.to_bytes()));
    token
}

fn declared_len(bytes: &[u8]) -> usize {
    let header = bytes
        .first_chunk::<HEADER_LEN>()
        .expect("a decoded frame has a header");
    u32::from_be_bytes(*header) as usize
}

/// A node forwards a decoded message in binary: that must give back the same message.
fn relay<M>(msg: &M)
where
    M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let limit = FrameLimit::new(HARD_MAX_FRAME_LEN);
    let frame = codec::encode_frame(msg, limit).expect("a decoded message encodes");
    let back: M = codec::decode_whole_frame(&frame, limit).expect("an encoded message decodes");
    assert_eq!(&back, msg);
}

fn assert_peer_facing(err: &CodecError) {
    assert!(
        matches!(err.code(), ErrorCode::BadFrame | ErrorCode::FrameTooLarge),
        "{err}"
    );
}
