//! Rollout benchmark against the real `control_plane` and four real
//! workers on `ch-sim`: 100 replicas of one group, `maxParallel = 10`, a
//! READY health check (the simulated guest prints it 100 ms after boot).
//! Prints, from publish to "rolled" (every replica on the new version and
//! healthy for minHealthyMs, as the control plane reports it):
//! 1. with `minHealthyMs = 0`: the cost of ten batches of creates (create,
//!    boot, READY, the worker's report, the control plane's next batch);
//! 2. with `minHealthyMs = M`: the whole rollout, against the goal
//!    10 × M + (1), within 10 %.
//!
//! Leaves out: closure pulls (the fixture store is local), real boots
//! (ch-sim starts in milliseconds), and network latency between hosts.
//!
//! Needs the workspace's binaries in the profile's directory, e.g.
//! `cargo build --release -p worker -p control_plane -p cli --bins && cargo bench -p control_plane --bench rollout`
//! (or `--profile dev` for both).

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use commands::client::MasterClient;
use commands::types::{HealthCheck, UpdatePolicy, VmSpec};
use testkit::fixtures::{make_store, spec_with};
use testkit::services::{ControlPlaneArgs, WorkerArgs, start_worker};
use testkit::{Log, Proc, Reaper};

const REPLICAS: usize = 100;
const MAX_PARALLEL: u32 = 10;
const WORKERS: [&str; 4] = ["b1", "b2", "b3", "b4"];

fn generation(version: u64, min_healthy_ms: u64) -> Vec<VmSpec> {
    (0..REPLICAS)
        .map(|i| {
            let hash = format!("v{version}-{i}");
            spec_with(&format!("web-{i}"), &hash, |f| {
                f.cmdline = format!("console=ttyS0 v={hash} pcr.sim.ready=100");
                f.memory_mb = 64;
                f.health_check = Some(HealthCheck {
                    console_line: "READY".into(),
                    deadline_ms: 10_000,
                });
                f.update = Some(UpdatePolicy {
                    group: "web".into(),
                    max_parallel: MAX_PARALLEL,
                    min_healthy_ms,
                    auto_revert: false,
                });
            })
        })
        .collect()
}

/// Publishes `version` and returns the time until the control plane
/// reports it rolled.
async fn roll(m: &MasterClient, version: u64, min_healthy_ms: u64) -> Duration {
    let specs = generation(version, min_healthy_ms);
    let t = Instant::now();
    m.publish(
        "default",
        &format!("c{version}"),
        version,
        &format!("i{version}"),
        &specs,
    )
    .await
    .expect("publish");
    loop {
        let s = m.status().await.expect("status");
        let g = s.active("default").expect("the generation");
        if g.number == version && g.rollout == "rolled" {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "generation {version} did not roll: {}",
            g.rollout
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rollout_of_100() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let _reaper = Reaper::new(dir);
    make_store(&dir.join("store"));
    let mut cmd = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(5000),
        ..ControlPlaneArgs::default()
    }
    .command();
    cmd.env("RUST_LOG", "warn");
    let cp = Proc::spawn("control_plane", cmd, Log::Quiet);
    let mut workers = Vec::new();
    for id in WORKERS {
        let w = WorkerArgs {
            cpu: 64,
            memory_mb: 16384,
            control_plane: Some(cp.addr.clone()),
            ..WorkerArgs::new(id, &dir.join(id), &dir.join("store"))
        }
        .args([
            "--heartbeat-interval-ms",
            "200",
            "--shutdown-timeout-ms",
            "200",
        ])
        .arg("--stop-vms-on-exit")
        .env("RUST_LOG", "warn");
        workers.push(start_worker(&w, Log::Quiet));
    }
    let m = MasterClient::connect(&cp.addr, Duration::from_secs(5))
        .await
        .expect("connect");
    loop {
        let s = m.status().await.expect("status");
        if s.workers.iter().filter(|w| w.healthy).count() == WORKERS.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = roll(&m, 1, 0).await;
    let creates = roll(&m, 2, 0).await;
    let min_healthy_ms = 1000;
    let rolled = roll(&m, 3, min_healthy_ms).await;
    let goal = Duration::from_millis(10 * min_healthy_ms) + creates;
    println!(
        "rollout of {REPLICAS} replicas, maxParallel {MAX_PARALLEL}, {} workers on ch-sim, READY check:",
        WORKERS.len()
    );
    println!(
        "  first generation (all at once)        {:8.1} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "  minHealthyMs 0 (10 batches of creates) {:8.1} ms   ({:.1} ms per batch)",
        creates.as_secs_f64() * 1e3,
        creates.as_secs_f64() * 1e3 / 10.0
    );
    println!(
        "  minHealthyMs {min_healthy_ms}                     {:8.1} ms   goal 10 x {min_healthy_ms} + {:.1} = {:.1} ms: {:+.1} % ({})",
        rolled.as_secs_f64() * 1e3,
        creates.as_secs_f64() * 1e3,
        goal.as_secs_f64() * 1e3,
        (rolled.as_secs_f64() / goal.as_secs_f64() - 1.0) * 100.0,
        if rolled.as_secs_f64() <= goal.as_secs_f64() * 1.1 {
            "within 10 %"
        } else {
            "OVER the 10 % goal"
        }
    );
    m.close().await;
    drop(workers);
    drop(cp);
}

fn main() {
    commands::rpc::block_on_local(rollout_of_100());
}
