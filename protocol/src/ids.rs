//! The names every part of Airlock agrees on, checked in one place: a document (or cell) id
//! a task and a tenant.
//!
//! - A **document id** (and a cell id) is 1 to 128 characters from `A-Z a-z 0-9 . _ -`, and
//!   neither `.` nor `..`: it names a folder in the document store, so it must be a safe path
//!   component on every store, and it appears in URLs unescaped.
//! - A **tenant** is 1 to 64 characters from `a-z 0-9 . _ -`: the egress gateway's policy and
//!   static IPs are keyed by it, and it is written into certificates and audit records.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest document or cell id.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` may name a document or a cell (see the module documentation).
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Longest task id: a task id names files and folders beside the document's.
pub const MAX_TASK_ID_LEN: usize = 64;

/// Whether `id` may name a task: the document id rule, at most 64 characters.
pub fn is_valid_task_id(id: &str) -> bool {
    id.len() <= MAX_TASK_ID_LEN && is_valid_id(id)
}

/// The sentence a refused document id gets, for every part that refuses one.
pub const DOCUMENT_ID_RULE: &str =
    "a document id is 1 to 128 characters from A-Z a-z 0-9 . _ - (not . or ..)";

/// Who a document belongs to: the egress gateway applies this tenant's rules and binds its
/// flows to this tenant's static IP set. 1 to 64 of `a-z 0-9 . _ -` ([`Tenant::parse`]).
/// Claims that name none, and entries written before tenants existed, are [`Tenant::DEFAULT`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Tenant(pub String);

/// Why a string is not a tenant name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {0:?} is not 1 to 64 characters from a-z 0-9 . _ -")]
pub struct BadTenant(pub String);

impl Tenant {
    /// The tenant of claims that name none.
    pub const DEFAULT: &'static str = "default";

    /// Checks a tenant name: 1 to 64 of `a-z 0-9 . _ -`.
    pub fn parse(name: &str) -> Result<Tenant, BadTenant> {
        let ok = (1..=64).contains(&name.len())
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(Tenant(name.to_owned()))
        } else {
            Err(BadTenant(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    /// [`Tenant::DEFAULT`]: what log entries and snapshots from before tenants decode to.
    fn default() -> Self {
        Tenant(Tenant::DEFAULT.to_owned())
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_one_rule() {
        for good in ["a", "doc-1", "Report_2024.v2", &"x".repeat(128), "..."] {
            assert!(is_valid_id(good), "{good:?}");
        }
        assert!(is_valid_task_id(&"t".repeat(64)) && !is_valid_task_id(&"t".repeat(65)));
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(129), "a\\0"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn tenants_are_lower_case_names() {
        assert_eq!(Tenant::parse("acme.eu-1").unwrap().as_str(), "acme.eu-1");
        for bad in ["", "Acme", "a b", &"t".repeat(65)] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Tenant::default().as_str(), Tenant::DEFAULT);
    }
}
