//! Opaque bytes inside a message: a Yjs update, a state vector, an awareness update.
//!
//! The binary form carries them as MessagePack `bin` (no inflation); the JSON form for browsers
//! carries them as standard base64 strings, since JSON has no byte type. Which one is used
//! follows the encoder (`is_human_readable`), so one type serves both forms.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes carried as `bin` in MessagePack and as base64 in JSON.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Blob(pub Vec<u8>);

impl Blob {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Blob(bytes)
    }
}

impl From<&[u8]> for Blob {
    fn from(bytes: &[u8]) -> Self {
        Blob(bytes.to_vec())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&B64.encode(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(BlobVisitor)
        } else {
            deserializer.deserialize_bytes(BlobVisitor)
        }
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes, or a base64 string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Blob, E> {
        B64.decode(text)
            .map(Blob)
            .map_err(|err| E::custom(format_args!("bytes field is not valid base64: {err}")))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Blob, E> {
        Ok(Blob(bytes.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob(bytes))
    }

    /// Some MessagePack writers send byte strings as arrays of integers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Blob(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_base64_and_msgpack_is_bin() {
        let blob = Blob(vec![0, 1, 2, 250]);
        let json = serde_json::to_string(&blob).unwrap();
        assert_eq!(json, "\"AAEC+g==\"");
        assert_eq!(serde_json::from_str::<Blob>(&json).unwrap(), blob);
        let packed = rmp_serde::to_vec_named(&blob).unwrap();
        // bin8 marker, length 4, then the bytes as they are.
        assert_eq!(packed, vec![0xc4, 4, 0, 1, 2, 250]);
        assert_eq!(rmp_serde::from_slice::<Blob>(&packed).unwrap(), blob);
    }

    #[test]
    fn bad_base64_is_a_clear_error() {
        let err = serde_json::from_str::<Blob>("\"not base64!\"").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }
}
