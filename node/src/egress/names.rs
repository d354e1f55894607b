//! Synthetic addresses: the answers the node's DNS server gives a jailed kernel.
//!
//! The kernel never learns a real address. When it asks for `db.example.com` and the gateway
//! says the name exists, the node hands out an address from `198.18.0.0/15` (RFC 2544's
//! benchmarking range, never routed on the internet) and remembers which name it stands for.
//! A redirected connection to that address becomes a flow *by name*, so the gateway resolves
//! the name itself, checks every address it gets and dials the one it checked: host rules
//! apply to the name the user wrote, and an answer that changes between the kernel's lookup and
//! its connect (DNS rebinding) gains nothing.
//!
//! Sans-IO: a plain table, tested below.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The first synthetic address (`198.18.0.1`).
const FIRST: u32 = u32::from_be_bytes([198, 18, 0, 1]);
/// The last synthetic address (`198.19.255.254`).
const LAST: u32 = u32::from_be_bytes([198, 19, 255, 254]);

/// Whether `addr` lies in the synthetic range (handed out or not).
pub(crate) fn is_synthetic(addr: Ipv4Addr) -> bool {
    let n = u32::from(addr);
    (u32::from_be_bytes([198, 18, 0, 0])..=u32::from_be_bytes([198, 19, 255, 255])).contains(&n)
}

/// The names a kernel looked up, each with its synthetic address.
#[derive(Debug, Default)]
pub(crate) struct SyntheticNames {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// The next address to hand out, as a number.
    next: Option<u32>,
}

/// Every synthetic address is taken (131,070 distinct names in one document's life).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the kernel looked up more distinct names than the node has synthetic addresses for")]
pub(crate) struct Exhausted;

impl SyntheticNames {
    /// The synthetic address of `name` (a lower-case name without the trailing dot), handing
    /// out a new one the first time.
    pub(crate) fn address_of(&mut self, name: &str) -> Result<Ipv4Addr, Exhausted> {
        if let Some(addr) = self.by_name.get(name) {
            return Ok(*addr);
        }
        let n = self.next.unwrap_or(FIRST);
        if n > LAST {
            return Err(Exhausted);
        }
        self.next = Some(n + 1);
        let addr = Ipv4Addr::from(n);
        self.by_name.insert(name.to_owned(), addr);
        self.by_addr.insert(addr, name.to_owned());
        Ok(addr)
    }

    /// The address `name` already has, if it was looked up before.
    pub(crate) fn known(&self, name: &str) -> Option<Ipv4Addr> {
        self.by_name.get(name).copied()
    }

    /// The name `addr` stands for, if it was handed out.
    pub(crate) fn name_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_address_and_maps_back() {
        let mut names = SyntheticNames::default();
        let web = names.address_of("web.example").unwrap();
        let db = names.address_of("db.example").unwrap();
        assert_eq!(web, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(db, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(names.address_of("web.example").unwrap(), web);
        assert_eq!(names.name_of(db), Some("db.example"));
        assert_eq!(names.known("db.example"), Some(db));
        assert_eq!(names.known("other.example"), None);
        assert_eq!(names.name_of(Ipv4Addr::new(198, 18, 0, 9)), None);
    }

    #[test]
    fn the_range_is_exactly_198_18_slash_15() {
        assert!(is_synthetic(Ipv4Addr::new(198, 18, 0, 0)));
        assert!(is_synthetic(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_synthetic(Ipv4Addr::new(198, 17, 255, 255)));
        assert!(!is_synthetic(Ipv4Addr::new(198, 20, 0, 0)));
    }

    #[test]
    fn running_out_is_an_error_not_a_reuse() {
        let mut names = SyntheticNames {
            next: Some(LAST),
            ..SyntheticNames::default()
        };
        assert_eq!(
            names.address_of("last.example").unwrap(),
            Ipv4Addr::new(198, 19, 255, 254)
        );
        assert_eq!(names.address_of("one-more.example"), Err(Exhausted));
        // Names already handed out still answer.
        assert!(names.address_of("last.example").is_ok());
    }
}
