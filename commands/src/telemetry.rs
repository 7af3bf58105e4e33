//! Logging set-up shared by every binary: `RUST_LOG` filters (default
//! `info`), human-readable lines on stderr, or JSON lines on request.
//! Colours only on a terminal: stderr redirected to a file or a pipe (a
//! service's log, a test's capture) gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Whether log lines carry ANSI colours: only when stderr is a terminal
/// and `NO_COLOR` (no-color.org) is unset or empty.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. Safe to call twice (the second call is
/// ignored), so tests that run `main`-like code do not panic.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder.with_target(false).try_init()
    };
}

/// Milliseconds since the Unix epoch, for timestamps carried over RPC.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(std::ffi::OsStr::new(""))));
        assert!(!colour(false, None));
        assert!(!colour(true, Some(std::ffi::OsStr::new("1"))));
    }
}
