//! Logging set-up shared by every binary: `RUST_LOG` filters (default
//! `info`), human-readable lines on stderr, or JSON lines on request.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call twice (the second call is
/// ignored), so tests that run `main`-like code do not panic.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
