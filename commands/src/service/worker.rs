//! The `Worker` service adapter: `WorkerApi` (the worker implements it) served over Cap'n Proto.

use crate::worker_capnp::worker;

/// A `Worker` capability, opaque to everyone but this crate: the worker
/// makes one from its `WorkerApi` and hands it to the control plane in
/// `registerWorker` (possession is the grant).
#[derive(Clone)]
pub struct WorkerCap(pub(crate) worker::Client);

impl std::fmt::Debug for WorkerCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerCap")
    }
}

impl WorkerCap {
    /// Wraps a `Worker` capability served by hand-written Cap'n Proto code
    /// (the worker's `server::Server`, the tests' fake workers) until they
    /// become `WorkerApi` implementations served by this module.
    pub fn from_capnp(client: worker::Client) -> Self {
        WorkerCap(client)
    }
}
