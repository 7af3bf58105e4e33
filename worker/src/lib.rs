//! The Procurator worker: one cloud-hypervisor process per VM, managed
//! through CH's REST API and served over Cap'n Proto (design §3).
//!
//! `run(config, listener, shutdown)` is the whole daemon; the `worker`
//! binary is a thin clap wrapper around it and tests call it on port 0.
//! Layers: `server::Server` (stateless `WorkerApi`, served by
//! `commands::service::worker`) → `node::CommandSender` →
//! `node::Node` → `manager::VmManager<B>` (sole owner of VM state) →
//! `vmm::VmmBackend` (`CloudHypervisorBackend` in production).

pub mod disk;
pub mod dto;
pub mod health;
pub mod manager;
pub mod metrics;
pub mod net;
pub mod node;
pub mod procfs;
pub mod reconciler;
pub mod rundir;
pub mod server;
pub mod state;
pub mod vmm;

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::dto::{Labels, Resources, WorkerId};
pub use crate::manager::{ManagerConfig, WorkerError};
pub use crate::node::{CommandSender, Node};
use crate::vmm::{ChBackendConfig, CloudHypervisorBackend};

/// The crate version, reported by `Worker.read`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a worker needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub worker_id: WorkerId,
    /// What the worker reports as its address (default: the bound address).
    pub advertise: Option<String>,
    pub run_dir: PathBuf,
    pub ch_binary: PathBuf,
    /// Where `/nix/store/...` paths are on this host (`/` in production).
    pub store_root: PathBuf,
    pub capacity: Resources,
    pub labels: Labels,
    /// A TAP on the bridge, a fixed address and egress rules per VM;
    /// `None` (the default): VMs get no NIC.
    pub net: Option<net::NetConfig>,
    /// How VM disks are made (overlay or copy) and console history bounded.
    pub files: rundir::VmFileOptions,
    pub stop_vms_on_exit: bool,
    pub socket_timeout: Duration,
    pub api_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Binary cache to pull missing closures from (`nix copy --from`).
    pub closure_source: Option<String>,
    /// The cache's public key: the only signer pulled paths may have.
    pub closure_public_key: Option<String>,
    /// The control plane to reconcile with; `None` keeps the worker manual.
    pub control_plane: Option<String>,
    /// How often the reconciler pushes observed state when nothing changes.
    pub heartbeat_interval: Duration,
    /// Who may call this worker (`Open`: anyone, as admin; loopback only).
    pub auth: commands::auth::Authenticator,
    /// The token this worker presents to its control plane.
    pub cluster_token: commands::auth::Secret,
}

impl Config {
    /// Defaults: capacity of this host, no labels, no TAP, VMs survive exit.
    pub fn new(worker_id: WorkerId, run_dir: PathBuf, ch_binary: PathBuf) -> Self {
        Config {
            worker_id,
            advertise: None,
            run_dir,
            ch_binary,
            store_root: PathBuf::from("/"),
            capacity: Resources {
                cpu: procfs::host_cpus(),
                memory_mb: procfs::host_memory_mb(),
            },
            labels: Labels::new(),
            net: None,
            files: rundir::VmFileOptions::default(),
            stop_vms_on_exit: false,
            socket_timeout: Duration::from_secs(5),
            api_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(3),
            closure_source: None,
            closure_public_key: None,
            control_plane: None,
            heartbeat_interval: Duration::from_secs(1),
            auth: commands::auth::Authenticator::Open,
            cluster_token: commands::auth::Secret::default(),
        }
    }
}

/// Serves the Worker interface on `listener` until `shutdown` fires. Adopts
/// the VMs its run directory holds first. Runs its own `LocalSet` (capnp-rpc
/// is `!Send`), so the returned future is `!Send`: await it directly or on a
/// dedicated thread (`commands::rpc::block_on_local`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    run_with_metrics(config, listener, None, shutdown).await
}

/// Like [`run`], also answering `GET /metrics` on `metrics_listener` when
/// given (`--metrics-listen`).
pub async fn run_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let metrics = metrics::WorkerMetrics::default();
    let address = match &config.advertise {
        Some(a) => a.clone(),
        None => listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    };
    // Networking comes up before any VM is adopted, so adoption can
    // restore every VM's rules.
    // CH runs as the VM owner when there is one: its TAPs are made its.
    let egress = match config.net.clone() {
        Some(mut net) => {
            net.tap_owner = config.files.vm_owner;
            Some(net::Egress::start(net, &config.run_dir, shutdown.clone()).await?)
        }
        None => None,
    };
    let mut backend_config = ChBackendConfig::new(config.ch_binary.clone());
    backend_config.store_root = config.store_root.clone();
    backend_config.tap = egress.as_ref().map(|e| e.tap_config().clone());
    backend_config.vm_owner = config.files.vm_owner;
    backend_config.socket_timeout = config.socket_timeout;
    backend_config.api_timeout = config.api_timeout;
    backend_config.closure_source = config.closure_source.clone();
    backend_config.closure_public_key = config.closure_public_key.clone();
    backend_config.metrics = metrics.clone();
    let backend = CloudHypervisorBackend::new(backend_config);
    let manager_config = ManagerConfig {
        worker_id: config.worker_id.clone(),
        address,
        capacity: config.capacity,
        labels: config.labels.clone(),
        run_dir: config.run_dir.clone(),
        store_root: config.store_root.clone(),
        stop_vms_on_exit: config.stop_vms_on_exit,
        shutdown_timeout: config.shutdown_timeout,
        files: config.files,
        version: VERSION.to_owned(),
    };
    let registration = commands::model::Registration {
        worker_id: config.worker_id.clone(),
        address: manager_config.address.clone(),
        capacity: config.capacity,
        labels: config.labels.clone(),
    };
    let mut node = Node::new(backend, manager_config)?;
    if let Some(egress) = egress {
        node.set_egress(egress);
    }
    node.set_metrics(metrics.clone());
    let metrics_server = metrics_listener.map(|l| {
        let sender = node.sender();
        tokio::spawn(commands::metrics::serve(
            l,
            metrics.registry(),
            move || {
                let (metrics, sender) = (metrics.clone(), sender.clone());
                async move { metrics.refresh(&sender).await }
            },
            shutdown.clone(),
        ))
    });
    let span = tracing::info_span!("worker", worker_id = %config.worker_id);
    let _g = span.enter();
    tracing::info!(run_dir = %config.run_dir.display(), ch = %config.ch_binary.display(), "worker starting");
    drop(_g);
    // The capability handed to the control plane at registration: whoever
    // holds it was given it (admins through getWorker), so it needs no login.
    let cap = server::worker_cap(node.sender());
    let auth = config.auth.clone();
    let serve_sender = node.sender();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            // The reconciler is a second source of commands for the same
            // manager; it needs the LocalSet (the Master client is !Send).
            let reconciler = config.control_plane.clone().map(|cp| {
                let mut rc = reconciler::ReconcilerConfig::new(cp, registration);
                rc.heartbeat_interval = config.heartbeat_interval;
                rc.token = config.cluster_token.clone();
                tokio::task::spawn_local(reconciler::run(
                    rc,
                    node.sender(),
                    cap.clone(),
                    shutdown.clone(),
                ))
            });
            let node_task = tokio::spawn(node.run(shutdown.clone()));
            server::serve(listener, serve_sender, auth, shutdown).await;
            if let Some(r) = reconciler {
                let _ = r.await;
            }
            let _ = node_task.await;
            if let Some(m) = metrics_server {
                let _ = m.await;
            }
        })
        .await;
    Ok(())
}
