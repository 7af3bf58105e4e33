//! Disk benchmark (prints figures; not a timed test). Run with
//! `cargo bench -p worker --bench disks` (BENCH_N to change the sample size).
//!
//! Create-to-running through the VM manager over ch-sim, in process: with
//! no disk, with a 2 GiB sparse store image as a qcow2 overlay (the
//! default) and, for reference, as a raw copy of a 64 MiB image. Then the
//! disk space one VM's overlay takes before the guest writes.
//! Goals (issue 15): overlay ≤ 2 ms more than no disk at the median; < 1 MiB
//! per VM.

// A benchmark's job is printing its figures on stdout.
#![allow(clippy::print_stdout)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use worker::disk::DiskMode;
use worker::dto::{Resources, VmSpec, VmStatus};
use worker::manager::ManagerConfig;
use worker::node::{CommandSender, Node};
use worker::rundir::VmFileOptions;
use worker::vmm::{ChBackendConfig, CloudHypervisorBackend};

const TOP: &str = "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys";

fn ch_sim() -> PathBuf {
    // Benches live in target/release/deps; ch-sim beside them one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let sim = dir.join("ch-sim");
    assert!(
        sim.exists(),
        "{} is missing: cargo build --release -p worker --bins",
        sim.display()
    );
    sim
}

/// A store root with the kernel and `name`'s image of `size` bytes (sparse).
fn image(root: &Path, name: &str, size: u64) -> String {
    let sys = root.join(TOP.trim_start_matches('/'));
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(sys.join("kernel"), b"kernel").unwrap();
    let path = format!("/nix/store/4c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-{name}/disk.raw");
    let host = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    std::fs::File::create(&host).unwrap().set_len(size).unwrap();
    path
}

fn spec(name: &str, disk: Option<&str>) -> VmSpec {
    testkit::fixtures::spec_with(name, name, |f| {
        f.toplevel = TOP.into();
        f.kernel_path = format!("{TOP}/kernel");
        f.disk_image_path = disk.unwrap_or_default().into();
        f.cmdline = "console=ttyS0".into();
    })
}

fn start(run_dir: &Path, store: &Path, disk_mode: DiskMode) -> (CommandSender, CancellationToken) {
    let mut c = ChBackendConfig::new(ch_sim());
    c.store_root = store.to_owned();
    let config = ManagerConfig {
        capacity: Resources {
            cpu: 4096,
            memory_mb: 1 << 30,
        },
        run_dir: run_dir.to_owned(),
        store_root: store.to_owned(),
        stop_vms_on_exit: true,
        files: VmFileOptions {
            disk_mode,
            ..Default::default()
        },
        version: "bench".into(),
        ..ManagerConfig::local("bench", run_dir)
    };
    let node = Node::new(CloudHypervisorBackend::new(c), config).unwrap();
    let tx = node.sender();
    let shutdown = CancellationToken::new();
    tokio::spawn(node.run(shutdown.clone()));
    (tx, shutdown)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Creates `spec` and adds the create-to-running time to `times`.
async fn timed_create(tx: &CommandSender, spec: VmSpec, times: &mut Vec<Duration>) -> VmStatus {
    let t = Instant::now();
    let st = tx.create_vm(spec).await.unwrap();
    times.push(t.elapsed());
    st
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let big = image(&store, "big", 2 << 30);
    let small = image(&store, "small", 64 << 20);
    let (tx, stop) = start(&dir.path().join("run-overlay"), &store, DiskMode::Overlay);
    let (tx_copy, stop_copy) = start(&dir.path().join("run-copy"), &store, DiskMode::Copy);
    let (mut none, mut overlay, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    let mut space = None;
    for i in 0..n {
        // Interleaved, so the three share whatever else the host is doing.
        let a = timed_create(&tx, spec(&format!("none-{i}"), None), &mut none).await;
        let b = timed_create(&tx, spec(&format!("big-{i}"), Some(&big)), &mut overlay).await;
        let c = timed_create(
            &tx_copy,
            spec(&format!("copy-{i}"), Some(&small)),
            &mut copy,
        )
        .await;
        if space.is_none() {
            let f = dir
                .path()
                .join("run-overlay/vm")
                .join(format!("{}.qcow2", b.id));
            let m = std::fs::metadata(&f).unwrap();
            space = Some((m.len(), m.blocks() * 512));
        }
        tx.delete_vm(a.id).await.unwrap();
        tx.delete_vm(b.id).await.unwrap();
        tx_copy.delete_vm(c.id).await.unwrap();
    }
    let (mn, mo, mc) = (median(&mut none), median(&mut overlay), median(&mut copy));
    println!("create-to-running over ch-sim, median of {n}:");
    println!("  no disk:                        {:.2} ms", ms(mn));
    println!(
        "  2 GiB image, qcow2 overlay:     {:.2} ms ({:+.2} ms; goal <= +2 ms)",
        ms(mo),
        ms(mo) - ms(mn)
    );
    println!(
        "  64 MiB image, raw copy:         {:.2} ms ({:+.2} ms)",
        ms(mc),
        ms(mc) - ms(mn)
    );
    let (len, allocated) = space.unwrap();
    println!(
        "disk space per VM before the guest writes (2 GiB image): {allocated} B allocated, {len} B long (goal < 1 MiB)"
    );
    stop.cancel();
    stop_copy.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
}
