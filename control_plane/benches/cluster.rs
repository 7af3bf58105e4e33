//! Cluster benchmarks against the real `control_plane` binary. Prints:
//! 1. publish-to-converged with 3 real workers on `ch-sim`: each round
//!    publishes a generation changing 2 of 6 specs and waits until the
//!    status shows every VM running the desired hash (median, p99);
//! 2. 1,000 simulated workers (in this process, one TCP connection each)
//!    registered, long-polling and heartbeating every second against one
//!    control plane: its CPU and RSS.
//!
//! Needs the release binaries of the other packages:
//! `cargo build --release -p worker -p control_plane && cargo bench -p control_plane --bench cluster`.

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::rc::Rc;
use std::time::{Duration, Instant};

use commands::client::MasterClient;
use commands::model::{ObservedVm, WorkerMetricsView};
use commands::service::worker::{WorkerApi, WorkerCap};
use commands::types::{VmId, VmSpec};
use testkit::fixtures::{make_store, spec};
use testkit::process::{Usage, usage};
use testkit::services::{ControlPlaneArgs, WorkerArgs, start_worker};
use testkit::{Log, Proc, Reaper};

/// The control plane with no startup grace and warnings only.
fn control_plane(heartbeat_timeout_ms: u64, long_poll_timeout_ms: Option<u64>) -> (Proc, String) {
    let cp = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(heartbeat_timeout_ms),
        long_poll_timeout_ms,
        ..ControlPlaneArgs::default()
    };
    let mut cmd = cp.command();
    cmd.env("RUST_LOG", "warn");
    let p = Proc::spawn("control_plane", cmd, Log::Quiet);
    let addr = p.addr.clone();
    (p, addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn publish_to_converged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let _reaper = Reaper::new(dir);
    make_store(&dir.join("store"));
    let (_cp, addr) = control_plane(3000, None);
    let mut workers = Vec::new();
    for id in ["b1", "b2", "b3"] {
        let w = WorkerArgs {
            cpu: 16,
            memory_mb: 8192,
            control_plane: Some(addr.clone()),
            ..WorkerArgs::new(id, &dir.join(id), &dir.join("store"))
        }
        .args([
            "--heartbeat-interval-ms",
            "500",
            "--shutdown-timeout-ms",
            "200",
        ])
        .arg("--stop-vms-on-exit")
        .env("RUST_LOG", "warn");
        workers.push(start_worker(&w, Log::Quiet));
    }
    let m = MasterClient::connect(&addr, Duration::from_secs(5))
        .await
        .expect("connect");
    loop {
        let s = m.status().await.expect("status");
        if s.workers.iter().filter(|w| w.healthy).count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let names = ["web-0", "web-1", "web-2", "api-0", "api-1", "api-2"];
    let rounds = 40u64;
    let mut times = Vec::new();
    for generation in 1..=rounds + 1 {
        // Generation 1 creates all six; later ones change two specs each.
        let changed = [
            names[(generation as usize * 2) % 6],
            names[(generation as usize * 2 + 1) % 6],
        ];
        let specs: Vec<VmSpec> = names
            .iter()
            .map(|n| {
                let v = if changed.contains(n) { generation } else { 0 };
                spec(n, &format!("h{v}"))
            })
            .collect();
        let t = Instant::now();
        m.publish(
            "default",
            &format!("c{generation}"),
            generation,
            &format!("i{generation}"),
            &specs,
        )
        .await
        .expect("publish");
        loop {
            let s = m.status().await.expect("status");
            if s.convergence_percent >= 100.0
                && s.vms.len() == 6
                && s.vms.iter().all(|v| v.observed_hash == v.desired_hash)
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "generation {generation} did not converge"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if generation > 1 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    println!(
        "publish-to-converged, 3 workers on ch-sim, 2 of 6 VMs replaced per generation, {rounds} generations:"
    );
    println!(
        "  median {:.1} ms   p99 {:.1} ms   min {:.1} ms   max {:.1} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    m.close().await;
    drop(workers);
}

/// A Worker capability that implements nothing: the control plane only
/// stores it.
struct NullWorker;
impl WorkerApi for NullWorker {}

async fn thousand_workers() {
    let n = 1000usize;
    let (cp, addr) = control_plane(5000, Some(25000));
    let pid = cp.pid();
    let cap = WorkerCap::new(NullWorker);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let addr = addr.clone();
        let cap = cap.clone();
        let stop = stop.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let m = Rc::new(
                MasterClient::connect(&addr, Duration::from_secs(30))
                    .await
                    .expect("connect"),
            );
            let reg = testkit::fixtures::sim_worker(i);
            let id = reg.worker_id.to_string();
            m.register(&reg, cap).await.expect("register");
            let poller = {
                let m = m.clone();
                let id = id.clone();
                async move {
                    let mut seen = (0, 0);
                    loop {
                        match m.get_assignment(&id, seen.0, seen.1).await {
                            Ok(a) => seen = (a.generation, a.revision),
                            Err(_) => return,
                        }
                    }
                }
            };
            let heartbeat = async {
                let mut running: Vec<ObservedVm> = Vec::new();
                loop {
                    // Report three VMs, as a small worker would.
                    if running.is_empty() {
                        running = (0..3)
                            .map(|k| {
                                testkit::fixtures::running_vm(
                                    VmId::new_v7(),
                                    &format!("vm{i}-{k}"),
                                    "h",
                                    128,
                                )
                            })
                            .collect();
                    }
                    if m.push_data(&id, 1, &running, &WorkerMetricsView::default())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = poller => {}
                () = heartbeat => {}
            }
        }));
    }
    let m = MasterClient::connect(&addr, Duration::from_secs(5))
        .await
        .expect("connect");
    loop {
        let s = m.status().await.expect("status");
        if s.workers.iter().filter(|w| w.healthy).count() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{n} simulated workers registered in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Steady state: heartbeats and parked long-polls, one publish of 3,000
    // VMs in the middle (every long-poll wakes).
    let window = Duration::from_secs(20);
    let t0 = usage(pid).cpu_ticks;
    let start = Instant::now();
    tokio::time::sleep(window / 2).await;
    let specs: Vec<VmSpec> = (0..3 * n)
        .map(|k| spec(&format!("app{}-{}", k / 3, k % 3), "h"))
        .collect();
    let pt = Instant::now();
    let o = m
        .publish("default", "c1", 1, "i1", &specs)
        .await
        .expect("publish");
    let publish_ms = pt.elapsed().as_secs_f64() * 1e3;
    tokio::time::sleep(window / 2).await;
    let Usage {
        cpu_ticks: t1,
        rss_bytes: rss,
        ..
    } = usage(pid);
    let secs = start.elapsed().as_secs_f64();
    let s = m.status().await.expect("status");
    println!(
        "  control plane over {secs:.1} s: CPU {:.1}% of one core, RSS {:.1} MiB; {} healthy; publish of {} VMs took {publish_ms:.1} ms ({} placed)",
        (t1 - t0) as f64 / 100.0 / secs * 100.0,
        rss as f64 / (1024.0 * 1024.0),
        s.workers.iter().filter(|w| w.healthy).count(),
        specs.len(),
        o.placed
    );
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop(cp);
}

fn main() {
    commands::rpc::block_on_local(async {
        publish_to_converged().await;
        thousand_workers().await;
    });
}
