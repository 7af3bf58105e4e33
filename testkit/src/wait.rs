//! Polling with a deadline: the one way tests wait for something to hold.

use std::time::{Duration, Instant};

/// Polls `f` every 5 ms until it returns Some (returned) or `timeout`
/// passes (None), for callers that decide themselves what a timeout means.
pub fn poll<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(Duration::from_millis(5), timeout, f)
}

/// Polls `f` every 50 ms until it returns Some; panics after `timeout`
/// naming `what` was awaited.
pub fn wait_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_every(Duration::from_millis(50), timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `f` every `every` until it returns Some, or `timeout` passes (None).
pub fn poll_every<T>(
    every: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}
