use thiserror::Error;

/// Represents an error when encoding/decoding raw byte buffers and frames
#[non_exhaustive]
#[derive(Error, Debug)]
pub enum CodecError {
    #[error("{0}")]
    Command(&'static str),
    #[error("{0}")]
    Greeting(&'static str),
    #[error("{0}")]
    Mechanism(&'static str),
    #[error("{0}")]
    Decode(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(&'static str),
    /// Airlock patch: the peer broke a [`ReceiveLimits`](super::ReceiveLimits) limit.
    #[error("the peer sent a ZeroMQ {what} of {size} over the limit of {limit}")]
    Limit {
        /// `"frame"`, `"message"` or `"message (frames)"`.
        what: &'static str,
        /// Bytes (or frames) the peer declared.
        size: u64,
        /// The limit it broke.
        limit: u64,
    },
}

pub(crate) type CodecResult<T> = Result<T, CodecError>;
