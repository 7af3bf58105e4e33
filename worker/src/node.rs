//! `Node<B>`: owns the command channel's receiver and the VmManager, adopts
//! what the run directory holds, then feeds the manager. Every source of
//! commands (the RPC server and the reconciler) holds a clone of the same
//! `CommandSender`, so all changes go through the one manager loop.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::dto::{LogTail, VmDetails, VmId, VmSpec, VmStatus, WorkerStatus};
use crate::manager::{Command, ManagerConfig, Reply, VmManager, WorkerError};
use crate::vmm::VmmBackend;

/// Depth of the command queue: senders wait (backpressure) beyond it.
pub const COMMAND_QUEUE: usize = 1024;

/// Cloneable handle that turns calls into `Command`s with a oneshot reply.
#[derive(Clone, Debug)]
pub struct CommandSender {
    tx: mpsc::Sender<Command>,
}

impl CommandSender {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| WorkerError::ShuttingDown)?;
        rx.await.map_err(|_| WorkerError::ShuttingDown)?
    }

    pub async fn read(&self) -> Result<WorkerStatus, WorkerError> {
        self.call(|reply| Command::Read { reply }).await
    }
    pub async fn list_vms(&self) -> Result<Vec<VmStatus>, WorkerError> {
        self.call(|reply| Command::ListVms { reply }).await
    }
    pub async fn create_vm(&self, spec: VmSpec) -> Result<VmStatus, WorkerError> {
        self.call(|reply| Command::CreateVm { spec, reply }).await
    }
    pub async fn delete_vm(&self, id: VmId) -> Result<(), WorkerError> {
        self.call(|reply| Command::DeleteVm { id, reply }).await
    }
    pub async fn vm_info(&self, id: VmId) -> Result<VmDetails, WorkerError> {
        self.call(|reply| Command::VmInfo { id, reply }).await
    }
    pub async fn pause_vm(&self, id: VmId) -> Result<VmStatus, WorkerError> {
        self.call(|reply| Command::PauseVm { id, reply }).await
    }
    pub async fn resume_vm(&self, id: VmId) -> Result<VmStatus, WorkerError> {
        self.call(|reply| Command::ResumeVm { id, reply }).await
    }
    pub async fn logs(&self, id: VmId, lines: u32) -> Result<LogTail, WorkerError> {
        self.call(|reply| Command::Logs { id, lines, reply }).await
    }
}

pub struct Node<B: VmmBackend> {
    manager: VmManager<B>,
    commands: mpsc::Receiver<Command>,
    sender: CommandSender,
}

impl<B: VmmBackend> std::fmt::Debug for Node<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

impl<B: VmmBackend> Node<B> {
    pub fn new(backend: B, config: ManagerConfig) -> Result<Self, WorkerError> {
        let manager = VmManager::new(backend, config)?;
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        Ok(Node {
            manager,
            commands,
            sender: CommandSender { tx },
        })
    }

    /// Networks the VMs (see `VmManager::set_egress`).
    pub fn set_egress(&mut self, egress: crate::net::Egress) {
        self.manager.set_egress(egress);
    }

    /// Counts into `metrics` (see `VmManager::set_metrics`).
    pub fn set_metrics(&mut self, metrics: crate::metrics::WorkerMetrics) {
        self.manager.set_metrics(metrics);
    }

    pub fn sender(&self) -> CommandSender {
        self.sender.clone()
    }

    /// Adopts surviving VMs, then serves commands until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Node {
            mut manager,
            commands,
            sender,
        } = self;
        // Our own sender must not keep the channel open once every outside
        // sender is gone.
        drop(sender);
        manager.adopt_existing().await;
        manager.run(commands, shutdown).await;
    }
}
