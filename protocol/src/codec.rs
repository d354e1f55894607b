//! Framing: how messages become bytes on QUIC streams and WebSocket frames.
//!
//! A binary frame is a 4-byte big-endian payload length followed by the payload, a MessagePack
//! map (field names kept, so the format is self-describing like the JSON form). QUIC streams carry
//! frames back to back; a binary WebSocket message carries exactly one frame. Browsers may use
//! WebSocket text messages instead, each one JSON object of the same shape.
//!
//! Every decoder checks the size before it allocates: a length header over the limit is refused
//! at once, without waiting for the payload. Both forms refuse nesting deeper than
//! [`MAX_NESTING`], so hostile input cannot exhaust the stack. The decoders are sans-IO (bytes in, message out) so
//! the fuzz targets and property tests drive them directly.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::ErrorCode;

/// No configuration may raise the frame limit above this.
pub const HARD_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The frame limit a node uses unless configured otherwise: room for a few large images.
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Bytes in the length header.
pub const HEADER_LEN: usize = 4;

/// How deep arrays and maps may nest in a message, counting the message's own map. Decoding
/// recurses once per level, so hostile nesting would otherwise overflow the stack: rmp-serde's
/// own limit (1024 levels) overflows a 2 MiB thread stack in debug builds. This is serde_json's
/// fixed limit for the JSON form, so both forms accept the same messages.
pub const MAX_NESTING: usize = 127;

/// Why bytes did not become a message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame does not decode as a message: {0}")]
    Decode(#[source] rmp_serde::decode::Error),
    #[error("text message is not a valid JSON message: {0}")]
    Json(#[source] serde_json::Error),
    #[error("frame header says {declared} bytes but the message holds {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("message could not be encoded: {0}")]
    Encode(#[source] rmp_serde::encode::Error),
}

impl CodecError {
    /// The protocol error code a peer should see for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::Encode(_) => ErrorCode::Internal,
            _ => ErrorCode::BadFrame,
        }
    }
}

/// A frame size limit, never above [`HARD_MAX_FRAME_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimit(usize);

impl FrameLimit {
    /// A limit of `max` bytes, clamped to [`HARD_MAX_FRAME_LEN`].
    pub fn new(max: usize) -> Self {
        FrameLimit(max.min(HARD_MAX_FRAME_LEN))
    }

    pub fn get(self) -> usize {
        self.0
    }

    fn check(self, len: usize) -> Result<(), CodecError> {
        if len > self.0 {
            Err(CodecError::TooLarge { len, max: self.0 })
        } else {
            Ok(())
        }
    }

    /// Reads a length header and checks it against the limit: the only thing a stream reader
    /// needs before it reads the payload.
    pub fn payload_len(self, header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
        let len = u32::from_be_bytes(header) as usize;
        self.check(len)?;
        Ok(len)
    }
}

impl Default for FrameLimit {
    fn default() -> Self {
        FrameLimit(DEFAULT_MAX_FRAME_LEN)
    }
}

/// Encodes `msg` as one binary frame (header and payload).
pub fn encode_frame<M: Serialize>(msg: &M, limit: FrameLimit) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(&[0; HEADER_LEN]);
    rmp_serde::encode::write_named(&mut buf, msg).map_err(CodecError::Encode)?;
    let len = buf.len() - HEADER_LEN;
    limit.check(len)?;
    // `len` fits in u32: the limit is at most 16 MiB.
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes a payload (the bytes after the header). The payload must hold exactly one message:
/// bytes left over after it are refused, as the JSON form refuses trailing characters.
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, CodecError> {
    let mut de = rmp_serde::Deserializer::new(payload);
    // rmp-serde refuses when its depth counter reaches zero, so a limit of n admits n - 1 levels.
    de.set_max_depth(MAX_NESTING + 1);
    let msg = M::deserialize(&mut de).map_err(CodecError::Decode)?;
    let unread = de.get_ref().len();
    if unread != 0 {
        return Err(CodecError::LengthMismatch {
            declared: payload.len(),
            actual: payload.len() - unread,
        });
    }
    Ok(msg)
}

/// Decodes the first frame in `buf`, if all of it has arrived. Returns the message and how many
/// bytes it used; `Ok(None)` means more bytes are needed.
pub fn decode_frame<M: DeserializeOwned>(
    buf: &[u8],
    limit: FrameLimit,
) -> Result<Option<(M, usize)>, CodecError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = limit.payload_len(*header)?;
    let Some(payload) = buf[HEADER_LEN..].get(..len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, HEADER_LEN + len)))
}

/// Decodes a binary WebSocket message, which must hold exactly one whole frame.
pub fn decode_whole_frame<M: DeserializeOwned>(
    buf: &[u8],
    limit: FrameLimit,
) -> Result<M, CodecError> {
    limit.check(buf.len().saturating_sub(HEADER_LEN))?;
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(CodecError::LengthMismatch {
            declared: HEADER_LEN,
            actual: buf.len(),
        });
    };
    let declared = limit.payload_len(*header)?;
    let actual = buf.len() - HEADER_LEN;
    if declared != actual {
        return Err(CodecError::LengthMismatch { declared, actual });
    }
    decode_payload(&buf[HEADER_LEN..])
}

/// Encodes `msg` in the JSON text form.
pub fn encode_json<M: Serialize>(msg: &M, limit: FrameLimit) -> Result<String, CodecError> {
    let text = serde_json::to_string(msg).map_err(CodecError::Json)?;
    limit.check(text.len())?;
    Ok(text)
}

/// Decodes a message in the JSON text form.
pub fn decode_json<M: DeserializeOwned>(text: &str, limit: FrameLimit) -> Result<M, CodecError> {
    limit.check(text.len())?;
    serde_json::from_str(text).map_err(CodecError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ClientMessage, ExecuteRequest};

    fn execute(code: &str) -> ClientMessage {
        ClientMessage::Execute(ExecuteRequest {
            client_ref: 3,
            code: code.into(),
            store_history: true,
        })
    }

    #[test]
    fn frames_stream_back_to_back() {
        let limit = FrameLimit::default();
        let mut bytes = encode_frame(&execute("x = 1"), limit).unwrap();
        bytes.extend(encode_frame(&ClientMessage::Interrupt, limit).unwrap());
        let (first, used): (ClientMessage, _) = decode_frame(&bytes, limit).unwrap().unwrap();
        assert_eq!(first, execute("x = 1"));
        let (second, rest): (ClientMessage, _) =
            decode_frame(&bytes[used..], limit).unwrap().unwrap();
        assert_eq!(second, ClientMessage::Interrupt);
        assert_eq!(used + rest, bytes.len());
        // Any strict prefix asks for more bytes.
        for cut in 0..used {
            assert!(
                decode_frame::<ClientMessage>(&bytes[..cut], limit)
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn oversized_header_is_refused_before_the_payload_arrives() {
        let limit = FrameLimit::new(1024);
        let header = 1025u32.to_be_bytes();
        let err = decode_frame::<ClientMessage>(&header, limit).unwrap_err();
        assert!(matches!(
            err,
            CodecError::TooLarge {
                len: 1025,
                max: 1024
            }
        ));
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        let big = execute(&"x".repeat(2000));
        assert!(matches!(
            encode_frame(&big, limit),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_json::<ClientMessage>(&"{".repeat(2000), limit),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn whole_frame_must_match_its_header() {
        let limit = FrameLimit::default();
        let mut bytes = encode_frame(&execute("1"), limit).unwrap();
        assert_eq!(
            decode_whole_frame::<ClientMessage>(&bytes, limit).unwrap(),
            execute("1")
        );
        bytes.push(0);
        assert!(matches!(
            decode_whole_frame::<ClientMessage>(&bytes, limit),
            Err(CodecError::LengthMismatch { .. })
        ));
        assert!(decode_whole_frame::<ClientMessage>(&[0, 0], limit).is_err());
    }

    #[test]
    fn json_and_binary_forms_agree() {
        let limit = FrameLimit::default();
        let msg = execute("print('hi')");
        let text = encode_json(&msg, limit).unwrap();
        assert_eq!(
            text,
            r#"{"type":"execute","client_ref":3,"code":"print('hi')","store_history":true}"#
        );
        assert_eq!(decode_json::<ClientMessage>(&text, limit).unwrap(), msg);
        let garbage = decode_frame::<ClientMessage>(&[0, 0, 0, 2, 0xc1, 0xc1], limit);
        assert_eq!(garbage.unwrap_err().code(), ErrorCode::BadFrame);
    }

    #[test]
    fn hard_limit_caps_configuration() {
        assert_eq!(FrameLimit::new(usize::MAX).get(), HARD_MAX_FRAME_LEN);
    }
}
