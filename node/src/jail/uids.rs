//! Host uids for kernels: every running kernel of this node gets a host uid (and the gid of the
//! same number) that no other running kernel of the node has.
//!
//! Per-uid accounting in Linux (`RLIMIT_NPROC`, `RLIMIT_SIGPENDING`, `RLIMIT_MSGQUEUE`, inotify
//! instances, pipe pages) is shared by every process of one uid, so two kernels with the same
//! uid could starve each other. The pool is process-wide: a uid is taken when a jail is prepared
//! and given back when the jail is dropped, after its processes are gone. It does not coordinate
//! between node processes on one host; give each node its own `uid_base` range for that.
//!
//! Randomness is passed in (the first uid tried), so tests can pin it.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

/// The uids in use by this process's jails.
pub(crate) static KERNEL_UIDS: UidPool = UidPool::new();

/// A set of host uids handed out one at a time.
#[derive(Debug)]
pub(crate) struct UidPool {
    in_use: Mutex<BTreeSet<u32>>,
}

/// Every uid of the range is in use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "every host uid for kernels ({base}..{end}) is in use by a running kernel; raise uid_count or run fewer kernels",
    end = u64::from(*base) + u64::from(*count)
)]
pub struct UidsExhausted {
    pub base: u32,
    pub count: u32,
}

impl UidPool {
    pub(crate) const fn new() -> Self {
        UidPool {
            in_use: Mutex::new(BTreeSet::new()),
        }
    }

    /// Takes a free uid of `base .. base + count`, trying `base + start % count` first and
    /// going up (wrapping) from there.
    pub(crate) fn allocate(
        &'static self,
        base: u32,
        count: u32,
        start: u32,
    ) -> Result<HostUid, UidsExhausted> {
        let exhausted = UidsExhausted { base, count };
        let count = count.min(u32::MAX - base);
        if count == 0 {
            return Err(exhausted);
        }
        // Only inserts and removes happen under the lock, so a panic cannot leave the set
        // half-changed: a poisoned lock is still a consistent set.
        let mut in_use = self.in_use.lock().unwrap_or_else(PoisonError::into_inner);
        (0..count)
            .map(|step| base + ((u64::from(start) + u64::from(step)) % u64::from(count)) as u32)
            .find(|&uid| in_use.insert(uid))
            .map(|uid| HostUid { pool: self, uid })
            .ok_or(exhausted)
    }

    fn release(&self, uid: u32) {
        self.in_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&uid);
    }
}

/// One kernel's host uid; given back to its pool on drop.
#[derive(Debug)]
pub(crate) struct HostUid {
    pool: &'static UidPool,
    uid: u32,
}

impl HostUid {
    pub(crate) fn get(&self) -> u32 {
        self.uid
    }
}

impl Drop for HostUid {
    fn drop(&mut self) {
        self.pool.release(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_allocations_are_distinct() {
        static POOL: UidPool = UidPool::new();
        // Every thread starts at the same uid: the collision random offsets make likely.
        let held: Vec<HostUid> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..50)
                            .map(|_| POOL.allocate(1_000_000, 1000, 7).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        let distinct: BTreeSet<u32> = held.iter().map(HostUid::get).collect();
        assert_eq!(distinct.len(), 400);
        assert!(
            distinct
                .iter()
                .all(|uid| (1_000_000..1_001_000).contains(uid))
        );
        drop(held);
        assert!(
            POOL.in_use.lock().unwrap().is_empty(),
            "dropping gives back"
        );
    }

    #[test]
    fn a_full_range_is_refused_until_a_uid_comes_back() {
        static POOL: UidPool = UidPool::new();
        let first = POOL.allocate(5000, 2, 1).unwrap();
        let second = POOL.allocate(5000, 2, 1).unwrap();
        assert_eq!((first.get(), second.get()), (5001, 5000), "wraps around");
        assert_eq!(
            POOL.allocate(5000, 2, 0).unwrap_err(),
            UidsExhausted {
                base: 5000,
                count: 2
            }
        );
        drop(first);
        assert_eq!(POOL.allocate(5000, 2, 0).unwrap().get(), 5001);
        assert!(POOL.allocate(5000, 0, 0).is_err());
        assert_eq!(
            POOL.allocate(u32::MAX - 1, 5, 3).unwrap().get(),
            u32::MAX - 1
        );
    }
}
