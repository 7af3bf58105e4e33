//! The worker's side of the `Worker` interface: a stateless `WorkerApi`
//! that sends each call as a `Command` through its `CommandSender` and
//! turns a `WorkerError` into an `RpcFailure` (an ErrorCode and one clear
//! line). The wire (decoding, logins, roles, calls in flight) is
//! `commands::service::worker`'s business.

use commands::convert::RpcFailure;
use commands::service::worker::{WorkerApi, WorkerCap};
use commands::types::{LogTail, VmDetails, VmId, VmSpec, VmStatus, WorkerStatus};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::manager::WorkerError;
use crate::node::CommandSender;

pub use commands::service::worker::ROLES;

/// The worker's `WorkerApi`: every call is one command to the manager.
#[derive(Debug, Clone)]
pub struct Server {
    sender: CommandSender,
}

impl Server {
    pub fn new(sender: CommandSender) -> Self {
        Server { sender }
    }
}

/// The capability the worker hands to its control plane at registration:
/// every right, no login (whoever holds it was given it).
pub fn worker_cap(sender: CommandSender) -> WorkerCap {
    WorkerCap::new(Server::new(sender))
}

/// Serves the `Worker` interface on `listener` until `shutdown` fires,
/// every connection logging in against `auth`. Must run inside a `LocalSet`.
pub async fn serve(
    listener: TcpListener,
    sender: CommandSender,
    auth: commands::auth::Authenticator,
    shutdown: CancellationToken,
) {
    let api = std::rc::Rc::new(Server::new(sender));
    commands::service::worker::serve(listener, api, auth, shutdown).await;
}

fn failure(e: WorkerError) -> RpcFailure {
    RpcFailure::new(e.code(), e.message())
}

impl WorkerApi for Server {
    async fn read(&self) -> Result<WorkerStatus, RpcFailure> {
        self.sender.read().await.map_err(failure)
    }

    async fn list_vms(&self) -> Result<Vec<VmStatus>, RpcFailure> {
        self.sender.list_vms().await.map_err(failure)
    }

    async fn create_vm(&self, spec: VmSpec) -> Result<VmStatus, RpcFailure> {
        self.sender.create_vm(spec).await.map_err(failure)
    }

    async fn delete_vm(&self, id: VmId) -> Result<(), RpcFailure> {
        self.sender.delete_vm(id).await.map_err(failure)
    }

    async fn vm_info(&self, id: VmId) -> Result<VmDetails, RpcFailure> {
        self.sender.vm_info(id).await.map_err(failure)
    }

    async fn pause_vm(&self, id: VmId) -> Result<VmStatus, RpcFailure> {
        self.sender.pause_vm(id).await.map_err(failure)
    }

    async fn resume_vm(&self, id: VmId) -> Result<VmStatus, RpcFailure> {
        self.sender.resume_vm(id).await.map_err(failure)
    }

    async fn logs(&self, id: VmId, lines: u32) -> Result<LogTail, RpcFailure> {
        self.sender.logs(id, lines).await.map_err(failure)
    }
}
