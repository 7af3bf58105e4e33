//! Reads the cluster's state from the control plane (`Master.getClusterStatus`
//! through `commands::client::MasterClient`) and turns it into plain owned
//! rows for the templates, showing each viewer only its projects.
//!
//! Every page is drawn from one shared status ([`SharedStatus`]): it is
//! fetched at most once per TTL, and concurrent page views while it is
//! stale wait for the one fetch in flight instead of each making their own
//! RPC, so a flood of page views costs the control plane one call per TTL.
//! RPC clients are `!Send` while axum handlers must be `Send`, so the fetch
//! runs on a blocking thread with its own current-thread runtime and
//! `LocalSet` (`commands::rpc::block_on_local`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use commands::client::{ClientError, MasterClient};
use commands::model::ClusterStatusView;
use commands::types::VmState;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("control plane is not configured")]
    NotConfigured,
    #[error(transparent)]
    Connect(ClientError),
    #[error("getClusterStatus failed")]
    Call(#[source] ClientError),
    #[error("getClusterStatus timed out")]
    Timeout,
    #[error("the RPC thread failed")]
    Join,
}

/// The project a VM of the status belongs to. Until the control plane
/// carries projects, every VM is the default project's.
pub fn vm_project(_vm: &commands::model::VmPlacementView) -> &str {
    DEFAULT_PROJECT
}

/// The project of an unplaced VM (see [`vm_project`]).
pub fn unplaced_project(_u: &commands::model::UnplacedView) -> &str {
    DEFAULT_PROJECT
}

/// The project single-project setups deploy to.
pub const DEFAULT_PROJECT: &str = "default";

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub generation: u64,
    pub commit: String,
    pub convergence: f64,
    pub vms: Vec<VmView>,
    pub workers: Vec<WorkerView>,
    pub unplaced: Vec<(String, String)>,
    /// Whether worker addresses are shown (admins only).
    pub addresses: bool,
}

#[derive(Debug, Clone)]
pub struct VmView {
    pub name: String,
    pub worker: String,
    pub desired: String,
    pub observed: String,
    pub state: String,
    pub drift: String,
    pub cpu_percent: f64,
    pub rss_mib: f64,
}

#[derive(Debug, Clone)]
pub struct WorkerView {
    pub id: String,
    pub address: String,
    pub healthy: bool,
    pub last_seen_ms_ago: u64,
    pub cpu: String,
    pub memory: String,
    pub vm_count: u32,
    pub load: f64,
}

pub fn short_hash(h: &str) -> String {
    h.chars().take(12).collect()
}

/// What `project`'s page shows of the cluster: its VMs and unplaced VMs,
/// and the workers that run them. Worker addresses are shown to admins
/// only; the generation line only when the project has VMs in it.
pub fn project_view(s: &ClusterStatusView, project: &str, admin: bool) -> ClusterView {
    let mut v = view(s, |p| p == project);
    v.addresses = admin;
    if !admin {
        for w in &mut v.workers {
            w.address.clear();
        }
    }
    if v.vms.is_empty() && v.unplaced.is_empty() {
        v.generation = 0;
        v.commit.clear();
        v.convergence = 0.0;
    }
    v
}

/// Copies the VMs of the projects `show` accepts, and the workers that run
/// one of them, into the panel's rows.
pub fn view(s: &ClusterStatusView, show: impl Fn(&str) -> bool) -> ClusterView {
    let mut v = ClusterView {
        generation: s
            .active(commands::types::DEFAULT_PROJECT)
            .map_or(0, |g| g.number),
        commit: s
            .active(commands::types::DEFAULT_PROJECT)
            .as_ref()
            .map(|g| g.commit.clone())
            .unwrap_or_default(),
        convergence: s.convergence_percent,
        addresses: true,
        ..Default::default()
    };
    for p in s.vms.iter().filter(|p| show(vm_project(p))) {
        v.vms.push(VmView {
            name: p.name.clone(),
            worker: p.worker_id.clone(),
            desired: short_hash(&p.desired_hash),
            observed: short_hash(&p.observed_hash),
            // What the wire carries for a VM no worker reports.
            state: p.state.unwrap_or(VmState::Stopped).to_string(),
            drift: p.drift.to_string(),
            cpu_percent: p.metrics.cpu_percent,
            rss_mib: p.metrics.rss_bytes as f64 / (1024.0 * 1024.0),
        });
    }
    let hosts: std::collections::BTreeSet<String> =
        v.vms.iter().map(|m| m.worker.clone()).collect();
    for w in s.workers.iter().filter(|w| hosts.contains(&w.worker_id)) {
        v.workers.push(WorkerView {
            id: w.worker_id.clone(),
            address: w.address.clone(),
            healthy: w.healthy,
            last_seen_ms_ago: w.last_seen_ms_ago,
            cpu: format!("{}/{}", w.allocated.cpu, w.capacity.cpu),
            memory: format!("{}/{} MiB", w.allocated.memory_mb, w.capacity.memory_mb),
            vm_count: w.vm_count,
            load: w.metrics.load_average,
        });
    }
    v.unplaced = s
        .unplaced
        .iter()
        .filter(|u| show(unplaced_project(u)))
        .map(|u| (u.name.clone(), u.reason.clone()))
        .collect();
    v
}

async fn fetch_local(
    addr: String,
    token: commands::auth::Secret,
) -> Result<ClusterStatusView, ClusterError> {
    let client = MasterClient::connect_with_token(&addr, CONNECT_TIMEOUT, token.expose())
        .await
        .map_err(ClusterError::Connect)?;
    let status = tokio::time::timeout(CALL_TIMEOUT, client.status())
        .await
        .map_err(|_| ClusterError::Timeout)?
        .map_err(ClusterError::Call)?;
    client.close().await;
    Ok(status)
}

/// Fetches the cluster status from the control plane at `addr`.
pub async fn fetch(
    addr: Option<String>,
    token: commands::auth::Secret,
) -> Result<ClusterStatusView, ClusterError> {
    let addr = addr.ok_or(ClusterError::NotConfigured)?;
    tokio::task::spawn_blocking(move || commands::rpc::block_on_local(fetch_local(addr, token)))
        .await
        .map_err(|_| ClusterError::Join)?
}

/// A status (or the error fetching it, as text) and when it was fetched.
type Cached = (Instant, Result<Arc<ClusterStatusView>, String>);

/// The one cached control-plane status every page shares (see the module
/// docs). A failed fetch is cached for the TTL too, so a dead control plane
/// costs one connection attempt per TTL, not one per page.
#[derive(Clone)]
pub struct SharedStatus {
    addr: Option<String>,
    token: commands::auth::Secret,
    ttl: Duration,
    /// Held across the fetch: that is what makes it single-flight.
    cache: Arc<tokio::sync::Mutex<Option<Cached>>>,
}

/// By hand: the token is a credential.
impl std::fmt::Debug for SharedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStatus")
            .field("addr", &self.addr)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SharedStatus {
    pub fn new(addr: Option<String>, token: commands::auth::Secret, ttl: Duration) -> Self {
        Self {
            addr,
            token,
            ttl,
            cache: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The cached status if it is younger than the TTL, else a fresh one.
    pub async fn get(&self) -> Result<Arc<ClusterStatusView>, String> {
        if self.addr.is_none() {
            return Err(ClusterError::NotConfigured.to_string());
        }
        let mut cache = self.cache.lock().await;
        if let Some((at, r)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            return r.clone();
        }
        let r = fetch(self.addr.clone(), self.token.clone())
            .await
            .map(Arc::new)
            .map_err(|e| commands::report::error_chain(&e));
        *cache = Some((Instant::now(), r.clone()));
        r
    }
}
