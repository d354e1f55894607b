//! Protocol version negotiation.
//!
//! The client states the range it speaks in its hello; the node picks the highest version in
//! both ranges, or refuses with `version_unsupported`. A version number changes when a message's
//! meaning changes; adding a message type or an optional field does not need one, because every
//! enum has an `Unknown` fallback.

use serde::{Deserialize, Serialize};

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// An inclusive range of protocol versions.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    pub min: u32,
    pub max: u32,
}

impl VersionRange {
    /// The range this build speaks.
    pub const fn current() -> Self {
        VersionRange {
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        }
    }

    /// The highest version in both ranges, if they meet.
    pub fn negotiate(self, other: VersionRange) -> Option<u32> {
        let high = self.max.min(other.max);
        let low = self.min.max(other.min);
        (low <= high).then_some(high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_highest_common() {
        let node = VersionRange { min: 1, max: 3 };
        assert_eq!(node.negotiate(VersionRange { min: 2, max: 5 }), Some(3));
        assert_eq!(node.negotiate(VersionRange { min: 1, max: 1 }), Some(1));
        assert_eq!(node.negotiate(VersionRange { min: 4, max: 9 }), None);
        // A nonsense range (min > max) meets nothing.
        assert_eq!(node.negotiate(VersionRange { min: 3, max: 2 }), None);
    }
}
