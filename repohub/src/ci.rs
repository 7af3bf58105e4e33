//! repohub's side of ci_service's API. The client and the types are
//! `commands::ci_api`'s (one definition of the push event, the job and its
//! state for ci_service and its callers); this module only fixes the short
//! timeout every CI panel uses: a slow or dead ci_service must make its
//! panel say "unavailable", never hang a page.

use std::time::Duration;

pub use commands::ci_api::{CiClient, CiError, Job, JobState};

/// The bound on every call to ci_service (connect, answer and body; a
/// followed log is bounded only until its head).
pub const API_TIMEOUT: Duration = Duration::from_secs(3);

/// The client for `--ci-url` (unconfigured when it is `None`).
pub fn client(base: Option<String>, secret: Option<String>) -> Result<CiClient, CiError> {
    CiClient::new(base, secret, API_TIMEOUT)
}

/// "outer: inner: innermost", for messages shown to users.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
