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
use commands::model::{ClusterStatusView, ProjectStatusView};
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
    #[error("projects failed")]
    Projects(#[source] ClientError),
    #[error("the control plane did not answer in time")]
    Timeout,
    #[error("the RPC thread failed")]
    Join,
}

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
    /// The project's quota and what its active generation asks for, when
    /// the control plane reports them.
    pub quota: Option<QuotaView>,
}

/// A project's quota next to its usage, as the panel prints them.
#[derive(Debug, Clone)]
pub struct QuotaView {
    pub cpu: String,
    pub memory: String,
    pub vms: String,
}

/// One fetch from the control plane: the cluster status and every
/// project's quota and usage.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: ClusterStatusView,
    pub projects: Vec<ProjectStatusView>,
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

/// What `project`'s page shows of the cluster: its generation, its VMs
/// and unplaced VMs, the workers that run them, and its quota and usage.
/// Nothing of another project is shown; worker addresses only to admins.
pub fn project_view(snap: &Snapshot, project: &str, admin: bool) -> ClusterView {
    let s = &snap.status;
    let active = s.active(project);
    let mine = snap.projects.iter().find(|p| p.project == project);
    let mut v = ClusterView {
        generation: active.map_or(0, |g| g.number),
        commit: active.map(|g| g.commit.clone()).unwrap_or_default(),
        convergence: mine.map_or(0.0, |p| p.convergence_percent),
        addresses: admin,
        quota: mine.map(|p| QuotaView {
            cpu: format!("{}/{}", p.usage.cpu, p.quota.cpu),
            memory: format!("{}/{} MiB", p.usage.memory_mb, p.quota.memory_mb),
            vms: format!("{}/{}", p.usage.vms, p.quota.vms),
        }),
        ..Default::default()
    };
    for p in s.vms.iter().filter(|p| p.project == project) {
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
    // Only the workers running this project's VMs, and of them only what
    // the project's own VMs explain is not another tenant's business; the
    // allocation shown is the worker's total (what placement sees).
    let hosts: std::collections::BTreeSet<&str> = v.vms.iter().map(|m| m.worker.as_str()).collect();
    for w in s
        .workers
        .iter()
        .filter(|w| hosts.contains(w.worker_id.as_str()))
    {
        v.workers.push(WorkerView {
            id: w.worker_id.clone(),
            address: if admin {
                w.address.clone()
            } else {
                String::new()
            },
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
        .filter(|u| u.project == project)
        .map(|u| (u.name.clone(), u.reason.clone()))
        .collect();
    v
}

async fn fetch_local(
    addr: String,
    token: commands::auth::Secret,
) -> Result<Snapshot, ClusterError> {
    let client = MasterClient::connect_with_token(&addr, CONNECT_TIMEOUT, token.expose())
        .await
        .map_err(ClusterError::Connect)?;
    let status = tokio::time::timeout(CALL_TIMEOUT, client.status())
        .await
        .map_err(|_| ClusterError::Timeout)?
        .map_err(ClusterError::Call)?;
    let projects = tokio::time::timeout(CALL_TIMEOUT, client.projects())
        .await
        .map_err(|_| ClusterError::Timeout)?
        .map_err(ClusterError::Projects)?;
    client.close().await;
    Ok(Snapshot { status, projects })
}

/// Fetches the cluster status and the projects from the control plane at
/// `addr`, over one connection.
pub async fn fetch(
    addr: Option<String>,
    token: commands::auth::Secret,
) -> Result<Snapshot, ClusterError> {
    let addr = addr.ok_or(ClusterError::NotConfigured)?;
    tokio::task::spawn_blocking(move || commands::rpc::block_on_local(fetch_local(addr, token)))
        .await
        .map_err(|_| ClusterError::Join)?
}

/// A status (or the error fetching it, as text) and when it was fetched.
type Cached = (Instant, Result<Arc<Snapshot>, String>);

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
    pub async fn get(&self) -> Result<Arc<Snapshot>, String> {
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
