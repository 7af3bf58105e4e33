//! The cluster of real binaries for the end-to-end test and the
//! benchmarks (testkit's harness: cache, control plane, workers on ch-sim
//! with their own store roots, ci_service wired to all of them), and the
//! control plane's view of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use commands::client::MasterClient;
use commands::model::ClusterStatusView;
pub(crate) use testkit::cluster::{Cluster, ClusterOpts, WorkerOpts};
use testkit::services::ControlPlaneArgs;

use super::*;

/// The cache's upload token in these clusters.
pub(crate) const TOKEN: &str = "e2e-upload-token";

pub(crate) fn status(cp: &str) -> Option<ClusterStatusView> {
    commands::rpc::block_on_local(async {
        let c = MasterClient::connect(cp, Duration::from_secs(2))
            .await
            .ok()?;
        let s = c.status().await.ok();
        c.close().await;
        s
    })
}

/// The default project's active generation number, if the control plane
/// answers and has one.
pub(crate) fn active_default(cp: &str) -> Option<u64> {
    status(cp)?
        .active(commands::types::DEFAULT_PROJECT)
        .map(|g| g.number)
}

/// name → (vm id, worker id) when generation `generation` is active, 100 %
/// converged and every desired VM runs in `s`; None otherwise.
pub(crate) fn placement(
    s: &ClusterStatusView,
    generation: u64,
) -> Option<BTreeMap<String, (String, String)>> {
    let ok = s.active("default").is_some_and(|g| g.number == generation)
        && s.convergence_percent >= 100.0
        && !s.vms.is_empty()
        && s.vms
            .iter()
            .all(|v| v.state == Some(commands::types::VmState::Running));
    ok.then(|| {
        s.vms
            .iter()
            .map(|v| (v.name.clone(), (v.vm_id.clone(), v.worker_id.clone())))
            .collect()
    })
}

/// Waits until generation `gen` is active, 100 % converged, every desired
/// VM running; returns name → (vm id, worker id).
pub(crate) fn wait_converged(
    cp: &str,
    generation: u64,
    timeout: Duration,
) -> BTreeMap<String, (String, String)> {
    let mut last = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            timeout,
            &format!("generation {generation} to converge"),
            || {
                let s = status(cp)?;
                let out = placement(&s, generation);
                last = Some(s);
                out
            },
        )
    }));
    match r {
        Ok(v) => v,
        Err(_) => panic!("not converged to generation {generation}; last status: {last:#?}"),
    }
}

/// Cache, control plane (3 s heartbeat timeout, `grace_ms` of startup
/// grace), the given workers and ci_service, on testkit's harness.
pub(crate) fn start_with(workers: Vec<WorkerOpts>, grace_ms: u64) -> Cluster {
    let mut opts = ClusterOpts::new(workers).with_ci();
    opts.control_plane = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(3000),
        startup_grace_ms: grace_ms,
        ..ControlPlaneArgs::default()
    };
    opts.cache_key_name = "e2e-cache-1".to_owned();
    opts.token = TOKEN.to_owned();
    Cluster::start(opts, |_, cp| cp.to_owned())
}

/// The end-to-end cluster: two workers (host-a, host-b) on ch-sim.
pub(crate) fn start() -> Cluster {
    start_with(
        vec![WorkerOpts::new("host-a"), WorkerOpts::new("host-b")],
        300,
    )
}
