//! Reads the cluster's state from the control plane (`Master.getClusterStatus`
//! through `commands::client::MasterClient`) and turns it into plain owned
//! rows for the templates.
//!
//! RPC clients are `!Send` while axum handlers must be `Send`, so each
//! request runs on a blocking thread with its own current-thread runtime and
//! `LocalSet` (`commands::rpc::block_on_local`). The panel is read once per
//! page view, so a connection per request is cheap next to the clarity of
//! having no long-lived RPC thread to supervise.

use std::time::Duration;

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

/// Copies a cluster status into the panel's rows.
pub fn view(s: &ClusterStatusView) -> ClusterView {
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
        ..Default::default()
    };
    for p in &s.vms {
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
    for w in &s.workers {
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
        .map(|u| (u.name.clone(), u.reason.clone()))
        .collect();
    v
}

async fn fetch_local(
    addr: String,
    token: commands::auth::Secret,
) -> Result<ClusterView, ClusterError> {
    let client = MasterClient::connect_with_token(&addr, CONNECT_TIMEOUT, token.expose())
        .await
        .map_err(ClusterError::Connect)?;
    let status = tokio::time::timeout(CALL_TIMEOUT, client.status())
        .await
        .map_err(|_| ClusterError::Timeout)?
        .map_err(ClusterError::Call)?;
    client.close().await;
    Ok(view(&status))
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
