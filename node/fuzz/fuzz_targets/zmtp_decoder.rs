//! The ZeroMQ decoder (vendored zeromq with Airlock's receive limits) on hostile bytes: what a
//! kernel writes into its end of a node connection. The input's first two bytes pick the read
//! size; the rest follows a valid greeting. Checks: nothing panics or aborts, the buffer never
//! grows far past the limits, and a limit error names a size over its limit.
#![no_main]

use asynchronous_codec::Decoder;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zeromq::__bench::{CodecError, ZmqCodec};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    zeromq::set_receive_limits(zeromq::ReceiveLimits {
        max_frame: LIMIT,
        max_message: LIMIT,
        max_frames: 64,
    });
    let chunk = usize::from(u16::from_be_bytes([data[0], data[1]])).max(1);
    let mut stream = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];
    stream.extend_from_slice(b"NULL");
    stream.resize(64, 0);
    stream.extend_from_slice(&data[2..]);
    let mut codec = ZmqCodec::new();
    let mut buffer = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(CodecError::Limit { size, limit, .. }) => {
                    assert!(size > limit);
                    return;
                }
                Err(_) => return,
            }
        }
        assert!(buffer.capacity() <= 4 * LIMIT + stream.len().min(4 * LIMIT));
    }
});
