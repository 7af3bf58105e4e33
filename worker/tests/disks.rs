//! The VM data path over ch-sim, in process (a `Node` with the CH backend):
//! a VM's qcow2 overlay costs the same time and space whatever the store
//! image's size, survives a worker restart (adoption) and goes with the VM;
//! the console keeps what the guest printed before a reboot.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::ch_sim;
use http::Method;
use testkit::Reaper;
use testkit::fixtures::{make_store, spec_json};
use tokio_util::sync::CancellationToken;
use worker::dto::{Resources, VmSpec, VmState};
use worker::manager::ManagerConfig;
use worker::node::{CommandSender, Node};
use worker::vmm::{ChBackendConfig, CloudHypervisorBackend};

struct Running {
    tx: CommandSender,
    shutdown: CancellationToken,
    join: tokio::task::JoinHandle<()>,
}

/// A temp dir with a store, the reaper of its ch-sim processes and a node
/// over them (bound in that order, so they go in reverse).
fn started() -> (tempfile::TempDir, Reaper, Running) {
    let dir = tempfile::tempdir().unwrap();
    make_store(&dir.path().join("store"));
    let reap = Reaper::new(dir.path());
    let w = start(dir.path());
    (dir, reap, w)
}

/// A worker node over ch-sim on `dir/run` and `dir/store`.
fn start(dir: &Path) -> Running {
    let mut c = ChBackendConfig::new(ch_sim());
    c.store_root = dir.join("store");
    let config = ManagerConfig {
        capacity: Resources {
            cpu: 64,
            memory_mb: 65536,
        },
        ..ManagerConfig::local("disks", dir)
    };
    let node = Node::new(CloudHypervisorBackend::new(c), config).unwrap();
    let tx = node.sender();
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(node.run(shutdown.clone()));
    Running { tx, shutdown, join }
}

impl Running {
    /// Stops the worker; its VMs keep running (no --stop-vms-on-exit).
    async fn stop(self) {
        self.shutdown.cancel();
        self.join.await.unwrap();
    }
}

/// A spec whose store image is a sparse file of `size` bytes.
fn spec_with_image(dir: &Path, name: &str, size: u64) -> VmSpec {
    let mut json = spec_json(name, "console=ttyS0");
    let image = format!("/nix/store/4c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-{name}/disk.raw");
    let host = dir.join("store").join(image.trim_start_matches('/'));
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    std::fs::File::create(&host).unwrap().set_len(size).unwrap();
    json["diskImagePath"] = image.into();
    serde_json::from_value(json).unwrap()
}

fn overlay(dir: &Path, id: &impl std::fmt::Display) -> PathBuf {
    dir.join("run/vm").join(format!("{id}.qcow2"))
}

// It prints each image's figures (create time, overlay size) for the log.
#[allow(clippy::print_stdout)]
#[tokio::test]
async fn overlay_is_o1_kept_by_adoption_and_removed_by_delete() {
    let (dir, _reap, w) = started();
    let mut figures = Vec::new();
    let mut ids = Vec::new();
    for (name, size) in [("small", 64u64 << 20), ("large", 2u64 << 30)] {
        let spec = spec_with_image(dir.path(), name, size);
        let t = Instant::now();
        let st = w.tx.create_vm(spec).await.unwrap();
        let took = t.elapsed();
        assert_eq!(st.state, VmState::Running);
        let meta = std::fs::metadata(overlay(dir.path(), &st.id)).unwrap();
        let allocated = meta.blocks() * 512;
        println!(
            "{name}: image {size} B, create {took:?}, overlay {} B long, {allocated} B allocated",
            meta.len()
        );
        // Independent of the image's size: a few KiB of metadata.
        assert!(allocated < 1 << 20, "{allocated} B allocated");
        assert!(meta.len() < 1 << 20, "{} B long", meta.len());
        figures.push((took, meta.len()));
        ids.push(st.id);
    }
    // The large image's overlay is the small one's plus 3 L1 entries.
    assert_eq!(figures[1].1 - figures[0].1, 3 * 8);
    // Time: no copy, so 32× the image is nowhere near 32× the create. A
    // generous bound: this machine is shared and ch-sim spawns dominate.
    assert!(
        figures[1].0 < figures[0].0 * 4 + Duration::from_millis(200),
        "{figures:?}"
    );

    // CH sees a qcow2 with its backing file enabled.
    let socket = dir.path().join("run/vm").join(format!("{}.sock", ids[1]));
    let client =
        CloudHypervisorBackend::new(ChBackendConfig::new("unused".into())).client_for(&socket);
    let (_, body) = client.raw(Method::GET, "vm.info", None).await.unwrap();
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(info["config"]["disks"][0]["image_type"], "Qcow2");
    assert_eq!(info["config"]["disks"][0]["backing_files"], true);

    // A worker restart adopts the VMs and keeps their overlays.
    w.stop().await;
    let w = start(dir.path());
    let list = w.tx.list_vms().await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|v| v.state == VmState::Running));
    for id in &ids {
        assert!(overlay(dir.path(), id).exists());
    }
    // Delete removes the overlay; the store image stays.
    w.tx.delete_vm(ids[1].clone()).await.unwrap();
    assert!(!overlay(dir.path(), &ids[1]).exists());
    assert!(overlay(dir.path(), &ids[0]).exists());
    assert!(
        dir.path()
            .join("store/nix/store/4c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-large/disk.raw")
            .exists()
    );
    w.tx.delete_vm(ids[0].clone()).await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn logs_keep_the_console_across_a_reboot() {
    let (dir, _reap, w) = started();
    let spec: VmSpec = serde_json::from_value(spec_json("con", "console=ttyS0")).unwrap();
    let st = w.tx.create_vm(spec).await.unwrap();
    let socket = dir.path().join("run/vm").join(format!("{}.sock", st.id));
    let client =
        CloudHypervisorBackend::new(ChBackendConfig::new("unused".into())).client_for(&socket);
    // Let the manager copy the first boot's output, then reboot (CH
    // truncates the serial file).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) = client.raw(Method::PUT, "vm.reboot", None).await.unwrap();
    assert_eq!(status.as_u16(), 204);
    let serial = std::fs::read_to_string(
        dir.path()
            .join("run/console")
            .join(format!("{}-serial.log", st.id)),
    )
    .unwrap();
    assert_eq!(serial.lines().count(), 1, "CH truncated it: {serial}");
    let tail = w.tx.logs(st.id.clone(), 0).await.unwrap();
    let boots = tail
        .lines
        .iter()
        .filter(|l| l.contains(" booted kernel="))
        .count();
    assert_eq!(boots, 2, "{:?}", tail.lines);
    w.tx.delete_vm(st.id.clone()).await.unwrap();
    w.stop().await;
}
