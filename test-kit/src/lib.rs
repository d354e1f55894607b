//! `airlock-test-kit`: what Airlock's tests share. Never a dependency of production code.
//!
//! - [`eventually`] and [`eventually_blocking`]: wait until a condition holds, checking it
//!   again after each short pause, and fail with what was awaited and the last thing seen once
//!   the patience runs out. Every test that waits for a process, a cluster or a kernel waits
//!   through these, so a slow machine gets a clear message instead of a hang, and no test
//!   sleeps a fixed time before asserting.
//! - [`dns`]: a fake DNS server (real messages over UDP) whose answers the test decides.
//! - [`messages`]: builders of the node's messages a scripted test sends (queued, output, done).
//! - [`exited_within`]: a child process's exit, awaited with a deadline (test cleanup).
#![forbid(unsafe_code)]

pub mod dns;
pub mod messages;

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked again.
pub const POLL: Duration = Duration::from_millis(20);

/// What one check of a condition found.
#[derive(Debug)]
pub enum Check<T, S> {
    /// The condition holds; the wait ends with this value.
    Ready(T),
    /// Not yet; this is what was seen (shown if the wait runs out).
    NotYet(S),
}

/// Checks `check` until it is [`Check::Ready`], pausing [`POLL`] (or `pace`, if longer)
/// between checks; panics with `what` and the last [`Check::NotYet`] after `patience`.
pub async fn eventually_paced<T, S, F, Fut>(
    what: &str,
    patience: Duration,
    pace: Duration,
    mut check: F,
) -> T
where
    S: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T, S>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match check().await {
            Check::Ready(value) => return value,
            Check::NotYet(seen) if Instant::now() >= deadline => {
                panic!("{what}: still not so after {patience:?}; last seen: {seen:?}")
            }
            Check::NotYet(_) => tokio::time::sleep(pace.max(POLL)).await,
        }
    }
}

/// [`eventually_paced`] at the default pace.
pub async fn eventually<T, S, F, Fut>(what: &str, patience: Duration, check: F) -> T
where
    S: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T, S>>,
{
    eventually_paced(what, patience, POLL, check).await
}

/// [`eventually`] for tests without a runtime (checking processes, files, sockets).
pub fn eventually_blocking<T, S: Debug>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Check<T, S>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        match check() {
            Check::Ready(value) => return value,
            Check::NotYet(seen) if Instant::now() >= deadline => {
                panic!("{what}: still not so after {patience:?}; last seen: {seen:?}")
            }
            Check::NotYet(_) => std::thread::sleep(POLL),
        }
    }
}

/// Waits up to `patience` for `child` to exit (after the caller asked it to); whether it did.
/// Tests' `Drop`s use it before they fall back to killing the process.
pub fn exited_within(child: &mut std::process::Child, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) | Err(_) => return false,
        }
    }
}

/// [`Check::Ready`] with `value` when `holds`, else [`Check::NotYet`] with `seen`.
pub fn ready_if<T, S>(holds: bool, value: T, seen: S) -> Check<T, S> {
    if holds {
        Check::Ready(value)
    } else {
        Check::NotYet(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn waits_until_the_condition_holds() {
        let checks = AtomicU32::new(0);
        let value = eventually("the third check", Duration::from_secs(5), || async {
            let n = checks.fetch_add(1, Ordering::SeqCst) + 1;
            ready_if(n == 3, n * 10, n)
        })
        .await;
        assert_eq!(value, 30);
    }

    #[tokio::test]
    #[should_panic(expected = "never: still not so after")]
    async fn fails_with_what_it_waited_for_and_what_it_saw() {
        eventually("never", Duration::from_millis(50), || async {
            Check::<(), _>::NotYet("the last state")
        })
        .await;
    }

    #[test]
    fn a_child_that_exits_is_seen_and_one_that_does_not_is_not() {
        let mut quick = std::process::Command::new("true").spawn().unwrap();
        assert!(exited_within(&mut quick, Duration::from_secs(5)));
        let mut slow = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!exited_within(&mut slow, Duration::from_millis(50)));
        slow.kill().unwrap();
        slow.wait().unwrap();
    }

    #[test]
    fn the_blocking_form_waits_too() {
        let mut n = 0;
        let seen = eventually_blocking("two checks", Duration::from_secs(5), || {
            n += 1;
            ready_if(n >= 2, n, n)
        });
        assert_eq!(seen, 2);
    }

    #[test]
    #[should_panic(expected = "last seen: 7")]
    fn the_blocking_form_reports_the_last_state() {
        eventually_blocking("seven", Duration::from_millis(30), || {
            Check::<(), _>::NotYet(7)
        });
    }
}
