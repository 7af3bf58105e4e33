//! Typed async clients of the two Cap'n Proto interfaces: every caller
//! (CLIs, the worker's reconciler, ci_service, repohub, tests, benches)
//! speaks `Master` through [`MasterClient`] and `Worker` through
//! [`WorkerClient`], with domain types in and out and one error type.

pub mod master;
pub mod worker;

pub use master::MasterClient;
pub use worker::WorkerClient;

use crate::convert::{ConvertError, RpcFailure};
use crate::rpc::RpcError;

/// What a typed client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or logging in failed.
    #[error(transparent)]
    Connect(#[from] RpcError),
    /// The call itself failed on the wire (disconnected, overloaded, …).
    #[error("rpc failed: {}", .0.extra)]
    Rpc(#[from] capnp::Error),
    /// The reply did not decode into domain types.
    #[error("malformed reply: {}", .0.to_message())]
    Reply(#[from] ConvertError),
    /// The server answered with an error as data.
    #[error(transparent)]
    Refused(#[from] RpcFailure),
}

impl ClientError {
    /// The server refused the call for load (more calls in flight on the
    /// connection than it allows); the same call later may succeed.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, ClientError::Rpc(e) if e.kind == capnp::ErrorKind::Overloaded)
    }

    /// The connection the call travelled on is gone (for a worker reached
    /// through the control plane: the worker's connection to it).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, ClientError::Rpc(e) if e.kind == capnp::ErrorKind::Disconnected)
    }
}

pub(crate) fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
