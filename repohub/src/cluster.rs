//! Reads the cluster's state from the control plane (`Master.getClusterStatus`
//! over Cap'n Proto) and turns it into plain owned data for the templates.
//!
//! capnp-rpc objects are `!Send` while axum handlers must be `Send`, so each
//! request runs on a blocking thread with its own current-thread runtime and
//! `LocalSet` (`commands::rpc::block_on_local`). The panel is read once per
//! page view, so a connection per request is cheap next to the clarity of
//! having no long-lived RPC thread to supervise.

use std::time::Duration;

use commands::{common_capnp, master_capnp};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("control plane is not configured")]
    NotConfigured,
    #[error(transparent)]
    Connect(#[from] commands::rpc::RpcError),
    #[error("getClusterStatus failed: {0}")]
    Call(String),
    #[error("getClusterStatus timed out")]
    Timeout,
    #[error("the RPC thread failed")]
    Join,
}

impl From<capnp::Error> for ClusterError {
    fn from(e: capnp::Error) -> Self {
        ClusterError::Call(e.to_string())
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub generation: u64,
    pub commit: String,
    pub convergence: f64,
    pub vms: Vec<VmView>,
    pub workers: Vec<WorkerView>,
    pub unplaced: Vec<(String, String)>,
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

fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> String {
    r.ok()
        .and_then(|t| t.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn vm_state(s: Result<common_capnp::VmState, capnp::NotInSchema>) -> &'static str {
    use common_capnp::VmState as S;
    match s {
        Ok(S::Creating) => "creating",
        Ok(S::Running) => "running",
        Ok(S::Paused) => "paused",
        Ok(S::Stopping) => "stopping",
        Ok(S::Failed) => "failed",
        Ok(S::Stopped) => "stopped",
        Err(_) => "unknown",
    }
}

fn drift(d: Result<master_capnp::Drift, capnp::NotInSchema>) -> &'static str {
    use master_capnp::Drift as D;
    match d {
        Ok(D::Converged) => "converged",
        Ok(D::Pending) => "pending",
        Ok(D::Drifted) => "drifted",
        Ok(D::Orphaned) => "orphaned",
        Ok(D::Failed) => "failed",
        Err(_) => "unknown",
    }
}

/// Copies a ClusterStatus reader into owned data.
pub fn view(s: master_capnp::cluster_status::Reader<'_>) -> Result<ClusterView, capnp::Error> {
    let active = s.get_active()?;
    let mut v = ClusterView {
        generation: active.get_number(),
        commit: text(active.get_commit()),
        convergence: s.get_convergence_percent(),
        ..Default::default()
    };
    for p in s.get_vms()? {
        let m = p.get_metrics()?;
        v.vms.push(VmView {
            name: text(p.get_name()),
            worker: text(p.get_worker_id()),
            desired: short_hash(&text(p.get_desired_hash())),
            observed: short_hash(&text(p.get_observed_hash())),
            state: vm_state(p.get_state()).into(),
            drift: drift(p.get_drift()).into(),
            cpu_percent: m.get_cpu_percent(),
            rss_mib: m.get_rss_bytes() as f64 / (1024.0 * 1024.0),
        });
    }
    for w in s.get_workers()? {
        let cap = w.get_capacity()?;
        let alloc = w.get_allocated()?;
        v.workers.push(WorkerView {
            id: text(w.get_worker_id()),
            address: text(w.get_address()),
            healthy: w.get_healthy(),
            last_seen_ms_ago: w.get_last_seen_ms_ago(),
            cpu: format!("{}/{}", alloc.get_cpu(), cap.get_cpu()),
            memory: format!("{}/{} MiB", alloc.get_memory_mb(), cap.get_memory_mb()),
            vm_count: w.get_vm_count(),
            load: w.get_metrics()?.get_load_average(),
        });
    }
    for u in s.get_unplaced()? {
        v.unplaced.push((text(u.get_name()), text(u.get_reason())));
    }
    Ok(v)
}

async fn fetch_local(
    addr: String,
    token: commands::auth::Secret,
) -> Result<ClusterView, ClusterError> {
    let (conn, _session) =
        commands::rpc::connect_master(&addr, CONNECT_TIMEOUT, token.expose()).await?;
    let req = conn.client.get_cluster_status_request();
    let resp = tokio::time::timeout(CALL_TIMEOUT, req.send().promise)
        .await
        .map_err(|_| ClusterError::Timeout)??;
    let v = view(resp.get()?.get_status()?)?;
    conn.close().await;
    Ok(v)
}

/// Fetches the cluster status from the control plane at `addr`.
pub async fn fetch(
    addr: Option<String>,
    token: commands::auth::Secret,
) -> Result<ClusterView, ClusterError> {
    let addr = addr.ok_or(ClusterError::NotConfigured)?;
    tokio::task::spawn_blocking(move || commands::rpc::block_on_local(fetch_local(addr, token)))
        .await
        .map_err(|_| ClusterError::Join)?
}
