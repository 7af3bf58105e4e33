//! Worker benchmark (prints figures; not a timed test). Run with
//! `cargo bench -p worker --bench worker_bench` (BENCH_N, BENCH_VMS to
//! change the sample sizes).
//!
//! 1. Create-to-running latency through the worker (Cap'n Proto createVm:
//!    record, prepare, spawn ch-sim, vm.create, vm.boot) against the same
//!    work done directly (spawn ch-sim, wait for its API, vm.create,
//!    vm.boot): medians and the worker's overhead.
//! 2. With BENCH_VMS (default 1000) VMs on one worker: listVms latency and
//!    the worker process's RSS growth per VM.

// A benchmark's job is printing its figures on stdout.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use commands::client::WorkerClient;
use commands::types::{VmId, VmSpec};
use testkit::fixtures::{make_store, spec_with};
use testkit::services::{WorkerArgs, start_worker as start_worker_proc};
use testkit::{Log, Proc, Reaper};
use worker::rundir::RunDir;
use worker::vmm::{ChBackendConfig, CloudHypervisorBackend, Vmm, VmmBackend, VmmProcess};

fn env_n(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(name: &str) -> VmSpec {
    spec_with(name, "bench", |f| f.cmdline = "console=ttyS0".into())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_kib(pid: u32) -> u64 {
    worker::procfs::rss_bytes(pid) / 1024
}

fn start_worker(dir: &Path) -> Proc {
    let w = WorkerArgs {
        cpu: 4096,
        memory_mb: 1_048_576,
        ..WorkerArgs::new("bench", &dir.join("run"), &dir.join("store"))
    }
    .arg("--stop-vms-on-exit")
    .env("RUST_LOG", "warn");
    start_worker_proc(&w, Log::Inherit)
}

async fn create(w: &WorkerClient, spec: &VmSpec) -> VmId {
    w.create_vm(spec)
        .await
        .unwrap_or_else(|e| panic!("create failed: {e}"))
        .id
}

async fn delete(w: &WorkerClient, id: &VmId) {
    w.delete_vm(id).await.unwrap();
}

async fn list_len(w: &WorkerClient) -> usize {
    w.list_vms().await.unwrap().len()
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let n = env_n("BENCH_N", 50);
    let vms = env_n("BENCH_VMS", 1000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let _reaper = Reaper::new(&d);
    make_store(&d.join("store"));

    commands::rpc::block_on_local(async move {
        // 1. Interleaved, so load from anything else on the machine hits
        // both sides alike: (a) direct — the same process start and REST
        // calls with no worker; (b) through the worker (separate process,
        // real RPC).
        let mut cfg = ChBackendConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_ch-sim")));
        cfg.store_root = d.join("store");
        let backend = CloudHypervisorBackend::new(cfg);
        let rd = RunDir::open(&d.join("direct")).unwrap();
        let worker_proc = start_worker(&d);
        let (wpid, addr) = (worker_proc.pid(), worker_proc.addr.clone());
        let w = WorkerClient::connect(&addr, Duration::from_secs(5), "")
            .await
            .unwrap();
        let mut direct = Vec::with_capacity(n);
        let mut through = Vec::with_capacity(n);
        for i in 0..n {
            let id = VmId::new_v7();
            let paths = rd.paths(&id);
            let s = spec(&format!("direct-{i}"));
            // Resolving the spec's files is the worker's work, not CH's.
            let files = worker::vmm::store::resolve_spec(&d.join("store"), &s).unwrap();
            let t = Instant::now();
            let (vmm, process) = backend.spawn(&id, &paths).await.unwrap();
            vmm.create(&backend.build_config(&id, &s, &paths, &files))
                .await
                .unwrap();
            vmm.boot().await.unwrap();
            direct.push(t.elapsed());
            vmm.shutdown_vmm().await.unwrap();
            process.exited().await;
            rd.remove_vm_files(&id);

            let s = spec(&format!("lat-{i}"));
            let t = Instant::now();
            let id = create(&w, &s).await;
            through.push(t.elapsed());
            delete(&w, &id).await;
        }
        let (md, mw) = (median(&mut direct), median(&mut through));
        println!("create-to-running, median of {n}:");
        println!(
            "  direct to ch-sim (spawn + wait API + vm.create + vm.boot): {:.2} ms",
            ms(md)
        );
        println!(
            "  through the worker (createVm RPC):                        {:.2} ms",
            ms(mw)
        );
        println!(
            "  worker overhead: {:.2} ms per create (ratio {:.2})",
            ms(mw) - ms(md),
            ms(mw) / ms(md)
        );

        // 2. Many VMs on one worker.
        let rss0 = rss_kib(wpid);
        let t = Instant::now();
        let mut created = 0usize;
        let mut all = Vec::with_capacity(vms);
        while created < vms {
            let batch = (vms - created).min(16);
            let futs: Vec<_> = (0..batch)
                .map(|j| {
                    let w = &w;
                    let s = spec(&format!("scale-{}", created + j));
                    async move { create(w, &s).await }
                })
                .collect();
            all.extend(futures::future::join_all(futs).await);
            created += batch;
        }
        let create_time = t.elapsed();
        // Let the worker settle (allocator, watcher tasks) before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss1 = rss_kib(wpid);
        let mut lists = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            assert_eq!(list_len(&w).await, vms);
            lists.push(t.elapsed());
        }
        let ml = median(&mut lists);
        let sim_pids: Vec<u32> = {
            // RSS of a few ch-sim processes (pids from the worker's list).
            let l = w.list_vms().await.unwrap();
            l.iter().take(10).map(|v| v.pid.unwrap_or(0)).collect()
        };
        println!(
            "{vms} VMs on one worker (created 16 at a time in {:.1} s):",
            create_time.as_secs_f64()
        );
        println!("  listVms: median of 20 = {:.2} ms", ms(ml));
        println!(
            "  worker RSS: {rss0} KiB idle -> {rss1} KiB with {vms} VMs = {:.1} KiB per VM",
            (rss1 as f64 - rss0 as f64) / vms as f64
        );
        println!(
            "  ch-sim RSS (first 10): {:?} KiB, of which private (RssAnon): {:?} KiB",
            sim_pids.iter().map(|p| rss_kib(*p)).collect::<Vec<_>>(),
            sim_pids
                .iter()
                .map(|p| testkit::process::usage(*p).anon_rss_bytes / 1024)
                .collect::<Vec<_>>()
        );

        let t = Instant::now();
        for chunk in all.chunks(32) {
            futures::future::join_all(chunk.iter().map(|id| delete(&w, id))).await;
        }
        println!("  deleted {vms} VMs in {:.1} s", t.elapsed().as_secs_f64());
        w.close().await;
        drop(worker_proc);
    });
}
