//! The framing of every immutable object the store writes — log entries, snapshots, outputs —
//! with a SHA-256 digest so a flipped bit or a truncated object is reported, never loaded.
//!
//! ```text
//! "ALRK" kind:u8 version:u8 0:u16 epoch:u64 n:u64 count:u32 | digest:[u8; 32]
//! | (len:u32 bytes) * count
//! ```
//! All integers are little-endian; `n` is the log position (log, snapshot) or the fence revision
//! (outputs); the digest covers the header before it and every part. Decoding does not copy:
//! parts are slices of the fetched buffer.

use bytes::{Buf, Bytes};
use sha2::{Digest, Sha256};

use super::StoreError;

const MAGIC: &[u8; 4] = b"ALRK";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 8 + 8 + 4;
const DIGEST_LEN: usize = 32;

/// What an object holds; a loader checks it got the kind it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Log = 1,
    Snapshot = 2,
    Outputs = 3,
}

/// A decoded object.
#[derive(Debug)]
pub(crate) struct Record {
    pub epoch: u64,
    pub n: u64,
    pub parts: Vec<Bytes>,
}

/// Frames `parts` as chunks ready for a `PutPayload` (the parts themselves are not copied).
pub(crate) fn encode(
    kind: Kind,
    epoch: u64,
    n: u64,
    parts: &[Bytes],
) -> Result<Vec<Bytes>, StoreError> {
    let count =
        u32::try_from(parts.len()).map_err(|_| StoreError::TooLarge { len: parts.len() })?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.push(kind as u8);
    header.push(VERSION);
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&epoch.to_le_bytes());
    header.extend_from_slice(&n.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    let mut digest = Sha256::new();
    digest.update(&header);
    let mut chunks = Vec::with_capacity(2 + 2 * parts.len());
    let mut lengths = Vec::with_capacity(parts.len());
    for part in parts {
        let len =
            u32::try_from(part.len()).map_err(|_| StoreError::TooLarge { len: part.len() })?;
        let len = Bytes::copy_from_slice(&len.to_le_bytes());
        digest.update(&len);
        digest.update(part);
        lengths.push(len);
    }
    chunks.push(Bytes::from(header));
    chunks.push(Bytes::copy_from_slice(&digest.finalize()));
    for (len, part) in lengths.into_iter().zip(parts) {
        chunks.push(len);
        chunks.push(part.clone());
    }
    Ok(chunks)
}

/// Decodes an object fetched from `path`, checking its kind and digest.
pub(crate) fn decode(kind: Kind, path: &str, bytes: Bytes) -> Result<Record, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        path: path.to_string(),
        reason,
    };
    if bytes.len() < HEADER_LEN + DIGEST_LEN {
        return Err(corrupt("shorter than a header"));
    }
    let mut header = &bytes[..HEADER_LEN];
    if &header[..4] != MAGIC {
        return Err(corrupt("not an Airlock store object"));
    }
    header.advance(4);
    if header.get_u8() != kind as u8 {
        return Err(corrupt("an object of another kind"));
    }
    if header.get_u8() != VERSION {
        return Err(corrupt("written by an unknown format version"));
    }
    header.advance(2);
    let epoch = header.get_u64_le();
    let n = header.get_u64_le();
    let count = header.get_u32_le();
    let stored_digest = &bytes[HEADER_LEN..HEADER_LEN + DIGEST_LEN];
    let mut digest = Sha256::new();
    digest.update(&bytes[..HEADER_LEN]);
    digest.update(&bytes[HEADER_LEN + DIGEST_LEN..]);
    if digest.finalize().as_slice() != stored_digest {
        return Err(corrupt("digest mismatch (damaged or truncated)"));
    }
    let mut at = HEADER_LEN + DIGEST_LEN;
    // `count` is covered by the digest, but bound the allocation by what the bytes can hold.
    let mut parts = Vec::with_capacity((count as usize).min((bytes.len() - at) / 4));
    for _ in 0..count {
        let Some(len) = bytes.get(at..at + 4) else {
            return Err(corrupt("a part length runs past the end"));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        at += 4;
        if bytes.len() - at < len {
            return Err(corrupt("a part runs past the end"));
        }
        parts.push(bytes.slice(at..at + len));
        at += len;
    }
    if at != bytes.len() {
        return Err(corrupt("trailing bytes after the last part"));
    }
    Ok(Record { epoch, n, parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(chunks: Vec<Bytes>) -> Bytes {
        chunks.concat().into()
    }

    #[test]
    fn round_trips_parts_in_order() {
        let parts = vec![
            Bytes::from_static(b"one"),
            Bytes::new(),
            Bytes::from_static(b"three"),
        ];
        let bytes = join(encode(Kind::Log, 7, 42, &parts).unwrap());
        let record = decode(Kind::Log, "p", bytes).unwrap();
        assert_eq!((record.epoch, record.n), (7, 42));
        assert_eq!(record.parts, parts);
    }

    #[test]
    fn every_flipped_bit_is_reported() {
        let parts = vec![Bytes::from_static(b"payload")];
        let bytes = join(encode(Kind::Snapshot, 1, 2, &parts).unwrap()).to_vec();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    decode(Kind::Snapshot, "p", damaged.into()).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncation_and_wrong_kind_are_reported() {
        let bytes = join(encode(Kind::Outputs, 1, 2, &[Bytes::from_static(b"x")]).unwrap());
        for len in 0..bytes.len() {
            assert!(
                decode(Kind::Outputs, "p", bytes.slice(..len)).is_err(),
                "length {len}"
            );
        }
        assert!(matches!(
            decode(Kind::Log, "p", bytes),
            Err(StoreError::Corrupt {
                reason: "an object of another kind",
                ..
            })
        ));
    }
}
