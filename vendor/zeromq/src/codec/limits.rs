//! Airlock patch: hard limits on what a peer may make this process buffer.
//!
//! Upstream zeromq 0.7 accepts any frame length a peer declares (up to `isize::MAX`) and
//! reserves it before the body arrives, and it joins frames flagged MORE into one message
//! without limit. A peer that is hostile (in Airlock: the untrusted kernel on the other end of
//! the IPC sockets) could abort the process with one 9-byte header or make it buffer gigabytes.
//! These limits are checked in the decoder before any allocation; breaking one ends that peer's
//! connection with [`CodecError::Limit`](super::CodecError::Limit). They are process-wide, like
//! libzmq's `ZMQ_MAXMSGSIZE` set on every socket, and can be changed at any time (a connection
//! reads them when it starts a frame).

use std::sync::atomic::{AtomicUsize, Ordering};

/// What one peer may make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveLimits {
    /// The largest frame body, in bytes.
    pub max_frame: usize,
    /// The largest message (all its frames together), in bytes.
    pub max_message: usize,
    /// The most frames one message may have.
    pub max_frames: usize,
}

impl ReceiveLimits {
    /// 64 MiB frames and messages, 4096 frames a message.
    pub const DEFAULT: ReceiveLimits = ReceiveLimits {
        max_frame: 64 << 20,
        max_message: 64 << 20,
        max_frames: 4096,
    };
}

impl Default for ReceiveLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static MAX_FRAME: AtomicUsize = AtomicUsize::new(ReceiveLimits::DEFAULT.max_frame);
static MAX_MESSAGE: AtomicUsize = AtomicUsize::new(ReceiveLimits::DEFAULT.max_message);
static MAX_FRAMES: AtomicUsize = AtomicUsize::new(ReceiveLimits::DEFAULT.max_frames);

/// Sets the limits every connection of this process checks from its next frame on. Each
/// value is clamped to at least 1 and at most `isize::MAX / 4`.
pub fn set_receive_limits(limits: ReceiveLimits) {
    let clamp = |n: usize| n.clamp(1, isize::MAX as usize / 4);
    MAX_FRAME.store(clamp(limits.max_frame), Ordering::Relaxed);
    MAX_MESSAGE.store(clamp(limits.max_message), Ordering::Relaxed);
    MAX_FRAMES.store(clamp(limits.max_frames), Ordering::Relaxed);
}

/// The limits in force.
pub fn receive_limits() -> ReceiveLimits {
    ReceiveLimits {
        max_frame: MAX_FRAME.load(Ordering::Relaxed),
        max_message: MAX_MESSAGE.load(Ordering::Relaxed),
        max_frames: MAX_FRAMES.load(Ordering::Relaxed),
    }
}
