//! What every long-running service does the same way around its `run`:
//! turning SIGTERM and SIGINT into a cancellation its tasks can watch, and
//! lifting the open-file limit when it holds many connections.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. Call it inside a Tokio
/// runtime (it spawns the watching task there). When the handlers cannot be
/// installed the token is never cancelled and the reason is logged: the
/// service still runs, it only cannot stop gracefully.
pub fn shutdown_token() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT; stop with SIGKILL");
            return token;
        }
    };
    let cancel = token.clone();
    // `spawn` (not `spawn_local`): the task only needs Send parts, so it
    // works on a multi-thread runtime and inside a LocalSet alike.
    tokio::spawn(async move {
        let (mut term, mut int) = (term, int);
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        cancel.cancel();
    });
    token
}

/// Lifts the soft open-file limit to the hard one, for services that hold
/// a descriptor per VM or per connection. Failing only costs capacity, so
/// it is logged, not returned.
pub fn raise_nofile_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}
