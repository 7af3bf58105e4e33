//! Load: 1,000 simulated workers running 10,000 VMs against one real
//! `control_plane` process. Each worker is a lightweight in-process
//! reconciler on its own TCP connection: it registers, long-polls its
//! assignment, "runs" what it is assigned (a table of VM ids; a new id per
//! (name, contentHash), like the real worker) and pushes them as Running
//! on change and every second. Prints, for a publish of 10,000 VMs, a
//! change of 10 % of them and the loss of 1 % of the workers: publish
//! latency, time to 100 % converged, `getClusterStatus` latency, and the
//! control plane's CPU and RSS. Real ch-sim processes for 10,000 VMs would
//! be 10,000 processes: that is where a single host breaks, not the
//! control plane; see the report in context/architecture.md.
//!
//!   cargo build --release -p control_plane && \
//!   PCR_BIN_DIR=$PWD/target/release cargo bench -p ci_service --bench fleet
//!
//! `PCR_FLEET_WORKERS` (default 1000) and `PCR_FLEET_VMS` (default 10000).

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use commands::client::MasterClient;
use commands::model::{ClusterStatusView, ObservedVm, PublishOutcomeView, WorkerMetricsView};
use commands::service::worker::{WorkerApi, WorkerCap};
use commands::types::{VmId, VmSpec};
use testkit::fixtures::spec_with;
use testkit::process::usage;
use testkit::services::ControlPlaneArgs;
use testkit::{Log, Proc};

/// (CPU ticks, RSS bytes) of a process.
fn cpu_rss(pid: u32) -> (u64, u64) {
    let u = usage(pid);
    (u.cpu_ticks, u.rss_bytes)
}

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn spec(name: &str, hash: &str) -> VmSpec {
    spec_with(name, hash, |f| f.memory_mb = 256)
}

/// The control plane only stores this capability.
struct NullWorker;
impl WorkerApi for NullWorker {}

/// One simulated worker: what it runs, name → (id, hash).
type Table = Rc<RefCell<BTreeMap<String, (VmId, String)>>>;

async fn sim_worker(
    addr: String,
    i: usize,
    cap: WorkerCap,
    stop: tokio_util::sync::CancellationToken,
    table: Table,
) {
    let Ok(m) = MasterClient::connect(&addr, Duration::from_secs(60)).await else {
        eprintln!("worker {i}: connect failed");
        return;
    };
    let m = Rc::new(m);
    let reg = testkit::fixtures::sim_worker(i);
    let id = reg.worker_id.to_string();
    if let Err(e) = m.register(&reg, cap).await {
        eprintln!("worker {i}: register: {e}");
        return;
    }
    let changed = Rc::new(tokio::sync::Notify::new());
    let poller = {
        let (m, id, table, changed) = (m.clone(), id.clone(), table.clone(), changed.clone());
        async move {
            let mut seen = (0, 0);
            loop {
                let Ok(a) = m.get_assignment(&id, seen.0, seen.1).await else {
                    return;
                };
                if !a.changed {
                    continue;
                }
                seen = (a.generation, a.revision);
                // Converge: keep (name, hash) matches, "boot" the rest.
                let mut t = table.borrow_mut();
                let mut next = BTreeMap::new();
                for s in &a.vms {
                    let name = s.name().to_string();
                    let hash = s.content_hash().to_owned();
                    let entry = match t.remove(&name) {
                        Some((vid, h)) if h == hash => (vid, h),
                        _ => (VmId::new_v7(), hash),
                    };
                    next.insert(name, entry);
                }
                *t = next;
                changed.notify_one();
            }
        }
    };
    let heartbeat = async {
        loop {
            let running: Vec<ObservedVm> = table
                .borrow()
                .iter()
                .map(|(name, (vid, hash))| {
                    testkit::fixtures::running_vm(vid.clone(), name, hash, 256)
                })
                .collect();
            let metrics = WorkerMetricsView {
                vm_count: running.len() as u32,
                ..Default::default()
            };
            if m.push_data(&id, 0, &running, &metrics).await.is_err() {
                return;
            }
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        () = poller => {}
        () = heartbeat => {}
    }
}

/// Polls the status until `done` holds; returns (elapsed, status latencies).
/// Every one of `vms` VMs runs what generation `generation` wants.
fn all_running(s: &ClusterStatusView, generation: u64, vms: usize) -> bool {
    s.active("default").is_some_and(|a| a.number == generation)
        && s.vms.len() == vms
        && s.convergence_percent >= 100.0
        && s.vms.iter().all(|v| v.observed_hash == v.desired_hash)
}

/// Publishes `specs` as generation `generation` and waits until all run it:
/// the outcome, how long the publish and the convergence took, and the
/// latencies of the status calls while waiting.
async fn publish_until_running(
    m: &MasterClient,
    generation: u64,
    specs: &[VmSpec],
) -> (PublishOutcomeView, Duration, Duration, Vec<Duration>) {
    let p = Instant::now();
    let o = m
        .publish(
            "default",
            &format!("c{generation}"),
            generation,
            &format!("i{generation}"),
            specs,
        )
        .await
        .unwrap_or_else(|e| panic!("publish {generation}: {e}"));
    let publish = p.elapsed();
    let vms = specs.len();
    let (conv, lat) = until(
        m,
        &format!("generation {generation} converged"),
        Duration::from_secs(180),
        |s| all_running(s, generation, vms),
    )
    .await;
    (o, publish, conv, lat)
}

async fn until(
    m: &MasterClient,
    what: &str,
    limit: Duration,
    done: impl Fn(&ClusterStatusView) -> bool,
) -> (Duration, Vec<Duration>) {
    let t = Instant::now();
    let mut lat = Vec::new();
    loop {
        let q = Instant::now();
        let s = m.status().await.expect("status");
        lat.push(q.elapsed());
        if done(&s) {
            return (t.elapsed(), lat);
        }
        if t.elapsed() > limit {
            println!(
                "  BROKE: {what} not reached within {limit:?}: {:.1}% converged, {} unplaced, {}/{} workers healthy",
                s.convergence_percent,
                s.unplaced.len(),
                s.workers.iter().filter(|w| w.healthy).count(),
                s.workers.len()
            );
            return (t.elapsed(), lat);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn median_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

async fn fleet() {
    let n = env_num("PCR_FLEET_WORKERS", 1000);
    let vms = env_num("PCR_FLEET_VMS", 10_000);
    let mut cmd = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(5000),
        long_poll_timeout_ms: Some(25000),
        ..ControlPlaneArgs::default()
    }
    .command();
    cmd.env("RUST_LOG", "warn");
    let cp = Proc::spawn("control_plane", cmd, Log::Quiet);
    let pid = cp.pid();
    let addr = cp.addr.clone();
    let cap = WorkerCap::new(NullWorker);
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let stop = tokio_util::sync::CancellationToken::new();
        stops.push(stop.clone());
        let table: Table = Rc::default();
        tasks.push(tokio::task::spawn_local(sim_worker(
            addr.clone(),
            i,
            cap.clone(),
            stop,
            table,
        )));
    }
    let m = MasterClient::connect(&addr, Duration::from_secs(10))
        .await
        .expect("connect");
    let (reg, _) = until(
        &m,
        "all workers registered",
        Duration::from_secs(120),
        |s| s.workers.iter().filter(|w| w.healthy).count() == n,
    )
    .await;
    let (c0, rss0) = cpu_rss(pid);
    println!(
        "{n} simulated workers registered in {:.2} s (control plane RSS {:.1} MiB)",
        reg.as_secs_f64(),
        rss0 as f64 / 1048576.0
    );
    let _ = t;

    // Generation 1: `vms` VMs in groups of 10 replicas.
    let gen1: Vec<VmSpec> = (0..vms)
        .map(|k| spec(&format!("app{}-{}", k / 10, k % 10), "h1"))
        .collect();
    let (o, publish1, conv1, lat1) = publish_until_running(&m, 1, &gen1).await;
    let (sm, sx) = median_max(lat1);
    println!(
        "generation 1: publish of {vms} VMs {:.0} ms ({} placed, {} unplaced); 100% converged after {:.2} s; status call median {sm:.0} ms max {sx:.0} ms",
        publish1.as_secs_f64() * 1e3,
        o.placed,
        o.unplaced.len(),
        conv1.as_secs_f64()
    );

    // Generation 2: 10 % of the VMs change (every group's replica 0).
    let gen2: Vec<VmSpec> = (0..vms)
        .map(|k| {
            let h = if k % 10 == 0 { "h2" } else { "h1" };
            spec(&format!("app{}-{}", k / 10, k % 10), h)
        })
        .collect();
    let (_, publish2, conv2, _) = publish_until_running(&m, 2, &gen2).await;
    println!(
        "generation 2 ({} VMs changed): publish {:.0} ms; converged after {:.2} s",
        vms / 10,
        publish2.as_secs_f64() * 1e3,
        conv2.as_secs_f64()
    );

    // Steady state: heartbeats of every worker for 10 s.
    let (c1, _) = cpu_rss(pid);
    let w = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (c2, rss2) = cpu_rss(pid);
    println!(
        "steady state ({n} heartbeats/s of {} VMs): control plane CPU {:.1}% of one core, RSS {:.1} MiB (CPU since start {:.1} s)",
        vms / n.max(1),
        (c2 - c1) as f64 / 100.0 / w.elapsed().as_secs_f64() * 100.0,
        rss2 as f64 / 1048576.0,
        (c2 - c0) as f64 / 100.0
    );

    // 1 % of the workers go silent: their VMs move once the heartbeat
    // threshold (5 s) passes.
    let lost = (n / 100).max(1);
    for s in stops.iter().take(lost) {
        s.cancel();
    }
    let k = Instant::now();
    let (conv3, _) = until(&m, "failover converged", Duration::from_secs(120), |s| {
        s.workers.iter().filter(|w| !w.healthy).count() == lost && all_running(s, 2, vms)
    })
    .await;
    println!(
        "{lost} workers lost: their VMs running elsewhere after {:.2} s (heartbeat timeout 5 s)",
        conv3.as_secs_f64()
    );
    let _ = k;
    let (_, rss3) = cpu_rss(pid);
    println!(
        "control plane RSS at the end {:.1} MiB",
        rss3 as f64 / 1048576.0
    );
    for s in &stops {
        s.cancel();
    }
    for t in tasks {
        let _ = t.await;
    }
    m.close().await;
    drop(cp);
}

fn main() {
    commands::rpc::block_on_local(fleet());
}
