//! VmManager unit tests over the in-memory backend: every command, every
//! state transition, and a failure injected at every step of a create
//! leaving nothing behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use commands::convert::ErrorCode;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::disk::DiskMode;
use crate::dto::VmState;
use crate::node::{CommandSender, Node};
use crate::vmm::memory::{Fault, MemoryBackend, Step};

fn spec(name: &str) -> VmSpec {
    versioned(name, &format!("hash-{name}"))
}

fn versioned(name: &str, content_hash: &str) -> VmSpec {
    testkit::fixtures::spec_with(name, content_hash, |f| f.cmdline = "console=ttyS0".into())
}

/// A manager config on `dir`, whose store root holds the fixture store
/// paths (the manager resolves a spec's files there before any spawn).
fn config(dir: &Path, stop_vms_on_exit: bool) -> ManagerConfig {
    testkit::fixtures::make_store(&dir.join("store"));
    ManagerConfig {
        stop_vms_on_exit,
        shutdown_timeout: Duration::from_millis(200),
        ..ManagerConfig::local("w1", dir)
    }
}

struct Running {
    tx: CommandSender,
    shutdown: CancellationToken,
    join: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.join.await.unwrap();
    }
}

fn start(backend: &MemoryBackend, dir: &Path, stop_vms_on_exit: bool) -> Running {
    let node = Node::new(backend.clone(), config(dir, stop_vms_on_exit)).unwrap();
    let tx = node.sender();
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(node.run(shutdown.clone()));
    Running { tx, shutdown, join }
}

/// A temp dir, a fresh in-memory backend and a manager started over them.
fn started(stop_vms_on_exit: bool) -> (tempfile::TempDir, MemoryBackend, Running) {
    let dir = tempfile::tempdir().unwrap();
    let backend = MemoryBackend::default();
    let w = start(&backend, dir.path(), stop_vms_on_exit);
    (dir, backend, w)
}

/// Asserts the run directory is empty, naming what is left.
fn assert_run_dir_empty(dir: &Path) {
    let left = run_files(dir);
    assert!(left.is_empty(), "left in the run directory: {left:?}");
}

/// Creates two versions (contentHash h1 and h2) of the VM named web.
async fn two_versions(w: &Running) -> (VmStatus, VmStatus) {
    let v1 = w.tx.create_vm(versioned("web", "h1")).await.unwrap();
    let v2 = w.tx.create_vm(versioned("web", "h2")).await.unwrap();
    (v1, v2)
}

/// Names of the files in the run directory.
fn run_files(dir: &Path) -> Vec<String> {
    let run = dir.join("run");
    let mut v: Vec<String> = ["", "vm", "console"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(run.join(sub)).unwrap())
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn create_list_read_info_delete() {
    let (dir, backend, w) = started(false);

    let st = w.tx.create_vm(spec("web-0")).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert_eq!(st.name.as_str(), "web-0");
    assert_eq!(st.pid, backend.pid_of(&st.id));
    assert_eq!((st.cpu, st.memory_mb), (1, 128));

    let list = w.tx.list_vms().await.unwrap();
    assert_eq!(list, vec![st.clone()]);
    let ws = w.tx.read().await.unwrap();
    assert_eq!(ws.vm_count, 1);
    assert_eq!(
        ws.allocated,
        Resources {
            cpu: 1,
            memory_mb: 128
        }
    );
    assert_eq!(
        ws.capacity,
        Resources {
            cpu: 8,
            memory_mb: 8192
        }
    );

    let info = w.tx.vm_info(st.id.clone()).await.unwrap();
    assert_eq!(info.ch_state, "Running");
    assert_eq!(info.metrics.disk_read_bytes, 4096);
    assert_eq!(info.spec, spec("web-0"));
    // The console history the worker keeps across boots, not CH's file.
    assert!(
        info.serial_log_path
            .ends_with(&format!("{}-console.log", st.id))
    );

    let logs = w.tx.logs(st.id.clone(), 0).await.unwrap();
    assert_eq!(logs.lines, vec![format!("[mem] {} booted", st.id)]);

    let id = st.id.clone();
    let files = run_files(dir.path());
    assert!(
        files.contains(&format!("{id}.json")) && files.contains(&format!("{id}.sock")),
        "{files:?}"
    );

    w.tx.delete_vm(id.clone()).await.unwrap();
    assert!(w.tx.list_vms().await.unwrap().is_empty());
    assert_eq!(backend.live(), 0);
    assert_run_dir_empty(dir.path());
    let err = w.tx.delete_vm(id).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    w.stop().await;
}

#[tokio::test]
async fn failure_at_every_create_step_leaves_nothing_behind() {
    let (dir, backend, w) = started(false);
    let keep = w.tx.create_vm(spec("keep")).await.unwrap();
    // Reading the logs copies keep's console into its history files now,
    // so the periodic copy makes none during the loop.
    w.tx.logs(keep.id.clone(), 0).await.unwrap();
    let before = run_files(dir.path());

    for (step, want) in [
        (Step::Prepare, "preparing the closure failed"),
        (Step::Spawn, "starting cloud-hypervisor failed"),
        (
            Step::Create,
            "creating the VM failed: vm.create answered 500",
        ),
        (
            Step::Boot,
            "booting the VM failed: vm.boot answered 500: Error from API: injected failure of vm.boot",
        ),
    ] {
        backend.fault(step, Fault::Fail(500));
        let err = w.tx.create_vm(spec("doomed")).await.unwrap_err();
        assert!(
            err.message().starts_with(want),
            "{step:?}: {}",
            err.message()
        );
        assert_eq!(err.code(), ErrorCode::Internal);
        backend.clear_faults();
        assert_eq!(
            w.tx.list_vms().await.unwrap(),
            vec![keep.clone()],
            "{step:?}"
        );
        assert_eq!(backend.live(), 1, "{step:?}: no orphan process");
        assert_eq!(run_files(dir.path()), before, "{step:?}: no orphan file");
    }
    // The name is free again and the survivor is untouched.
    w.tx.create_vm(spec("doomed")).await.unwrap();
    assert_eq!(
        w.tx.vm_info(keep.id.clone()).await.unwrap().status.state,
        VmState::Running
    );
    w.stop().await;
}

/// Each VM gets its own disk in the run directory, made as `--disk-mode`
/// says: a raw copy or a qcow2 overlay naming the resolved store image.
#[tokio::test]
async fn disk_image_is_copied_writable_and_removed_on_delete() {
    for mode in [DiskMode::Copy, DiskMode::Overlay] {
        let dir = tempfile::tempdir().unwrap();
        let backend = MemoryBackend::default();
        let mut cfg = config(dir.path(), false);
        cfg.files.disk_mode = mode;
        let node = Node::new(backend.clone(), cfg).unwrap();
        let tx = node.sender();
        let shutdown = CancellationToken::new();
        let join = tokio::spawn(node.run(shutdown.clone()));
        let w = Running { tx, shutdown, join };
        let mut f = spec("disk").to_fields();
        f.disk_image_path = "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-img/disk.raw".into();
        let with_disk = VmSpec::new(f).unwrap();

        let err = w.tx.create_vm(with_disk.clone()).await.unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::FailedPrecondition,
            "{}",
            err.message()
        );
        assert!(
            err.message()
                .contains("1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-img/disk.raw"),
            "{}",
            err.message()
        );
        assert_run_dir_empty(dir.path());
        assert_eq!(backend.live(), 0);

        let img = dir
            .path()
            .join("store/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-img");
        // A directory where the image should be is refused, naming the field.
        std::fs::create_dir_all(img.join("disk.raw")).unwrap();
        let err = w.tx.create_vm(with_disk.clone()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::FailedPrecondition);
        assert!(
            err.message().contains("diskImagePath") && err.message().contains("not a regular file"),
            "{}",
            err.message()
        );
        assert_eq!(backend.live(), 0);
        std::fs::remove_dir(img.join("disk.raw")).unwrap();

        std::fs::write(img.join("disk.raw"), b"bootsector").unwrap();
        let st = w.tx.create_vm(with_disk).await.unwrap();
        let disk = dir
            .path()
            .join("run/vm")
            .join(format!("{}{}", st.id, mode.file_suffix()));
        let bytes = std::fs::read(&disk).unwrap();
        // A guest's disk is nobody else's to read.
        use std::os::unix::fs::PermissionsExt;
        let perm = std::fs::metadata(&disk).unwrap().permissions().mode();
        assert_eq!(perm & 0o777, 0o600);
        match mode {
            DiskMode::Copy => assert_eq!(bytes, b"bootsector"),
            DiskMode::Overlay => {
                assert_eq!(&bytes[..4], b"QFI\xfb");
                let name = img.join("disk.raw").canonicalize().unwrap();
                let name = name.to_str().unwrap().as_bytes();
                assert!(bytes.windows(name.len()).any(|w| w == name));
            }
        }
        w.tx.delete_vm(st.id).await.unwrap();
        assert!(!disk.exists());
        assert_run_dir_empty(dir.path());
        w.stop().await;
    }
}

#[tokio::test]
async fn duplicate_name_and_hash_and_unknown_ids_are_refused() {
    let (_dir, backend, w) = started(false);
    let st = w.tx.create_vm(spec("a")).await.unwrap();
    let err = w.tx.create_vm(spec("a")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    assert_eq!(
        err.message(),
        format!(
            "a VM named default/a with contentHash hash-a already exists on this worker (id {})",
            st.id
        )
    );
    assert_eq!(backend.live(), 1, "the refused create started nothing");
    let ghost = VmId::new_v7();
    for err in [
        w.tx.delete_vm(ghost.clone()).await.unwrap_err(),
        w.tx.pause_vm(ghost.clone()).await.unwrap_err(),
        w.tx.resume_vm(ghost.clone()).await.unwrap_err(),
        w.tx.vm_info(ghost.clone()).await.map(|_| ()).unwrap_err(),
        w.tx.logs(ghost.clone(), 5).await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(err.code(), ErrorCode::NotFound);
        assert_eq!(
            err.message(),
            format!("no VM with id {ghost} on this worker")
        );
    }
    assert_eq!(w.tx.list_vms().await.unwrap(), vec![st]);
    assert_eq!(backend.live(), 1);
    w.stop().await;
}

#[tokio::test]
async fn pause_resume_transitions_and_refusals() {
    let (_dir, backend, w) = started(false);
    let id = w.tx.create_vm(spec("p")).await.unwrap().id;

    let err = w.tx.resume_vm(id.clone()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("VM {id}: is running; a running VM cannot be resumed")
    );

    assert_eq!(
        w.tx.pause_vm(id.clone()).await.unwrap().state,
        VmState::Paused
    );
    assert_eq!(w.tx.vm_info(id.clone()).await.unwrap().ch_state, "Paused");
    let err = w.tx.pause_vm(id.clone()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    assert_eq!(
        w.tx.resume_vm(id.clone()).await.unwrap().state,
        VmState::Running
    );

    // The hypervisor refuses: the error carries its chain, state unchanged.
    backend.fault(Step::Pause, Fault::Fail(500));
    let err = w.tx.pause_vm(id.clone()).await.unwrap_err();
    assert!(
        err.message()
            .starts_with("pausing failed: vm.pause answered 500"),
        "{}",
        err.message()
    );
    assert_eq!(w.tx.list_vms().await.unwrap()[0].state, VmState::Running);
    backend.clear_faults();

    // A paused VM can be deleted.
    w.tx.pause_vm(id.clone()).await.unwrap();
    w.tx.delete_vm(id).await.unwrap();
    assert_eq!(backend.live(), 0);
    w.stop().await;
}

#[tokio::test]
async fn slow_create_does_not_block_others_and_cannot_be_deleted() {
    let (_dir, backend, w) = started(false);
    let other = w.tx.create_vm(spec("other")).await.unwrap();
    backend.fault(Step::Boot, Fault::Delay(Duration::from_millis(600)));
    let tx = w.tx.clone();
    let slow = tokio::spawn(async move { tx.create_vm(spec("slow")).await });

    // While it boots: it is listed as creating, the rest of the table works.
    let creating = loop {
        let list = w.tx.list_vms().await.unwrap();
        if let Some(v) = list.iter().find(|v| v.name.as_str() == "slow") {
            break v.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(creating.state, VmState::Creating);
    let t = std::time::Instant::now();
    let err = w.tx.delete_vm(creating.id.clone()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    assert!(
        err.message().contains("is still being created"),
        "{}",
        err.message()
    );
    w.tx.pause_vm(other.id.clone()).await.unwrap();
    w.tx.delete_vm(other.id.clone()).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "other VMs waited for the slow create"
    );

    let done = slow.await.unwrap().unwrap();
    assert_eq!(done.state, VmState::Running);
    w.tx.delete_vm(done.id).await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn dead_process_marks_the_vm_failed_and_delete_cleans_it() {
    let (dir, backend, w) = started(false);
    let a = w.tx.create_vm(spec("a")).await.unwrap();
    let b = w.tx.create_vm(spec("b")).await.unwrap();
    backend.crash(&a.id);
    let t = std::time::Instant::now();
    let failed = loop {
        let st = w.tx.vm_info(a.id.clone()).await.unwrap().status;
        if st.state == VmState::Failed {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "failure not noticed within a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(failed.error, "cloud-hypervisor was killed by signal 9");
    assert_eq!(failed.pid, None);
    assert!(
        !dir.path()
            .join("run/vm")
            .join(format!("{}.sock", a.id))
            .exists(),
        "stale socket removed"
    );
    // Failed VMs hold no resources; the other VM is untouched.
    assert_eq!(w.tx.read().await.unwrap().allocated.cpu, 1);
    assert_eq!(
        w.tx.vm_info(b.id.clone()).await.unwrap().status.state,
        VmState::Running
    );
    let err = w.tx.pause_vm(a.id.clone()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);

    w.tx.delete_vm(a.id.clone()).await.unwrap();
    assert_eq!(w.tx.list_vms().await.unwrap(), vec![b.clone()]);
    assert!(
        !run_files(dir.path())
            .iter()
            .any(|f| f.starts_with(a.id.as_str()))
    );
    w.stop().await;
}

#[tokio::test]
async fn delete_of_a_hung_hypervisor_still_finishes() {
    let (dir, backend, w) = started(false);
    let a = w.tx.create_vm(spec("a")).await.unwrap();
    backend.fault(Step::Shutdown, Fault::Hang);
    backend.fault(Step::ShutdownVmm, Fault::Hang);
    let t = std::time::Instant::now();
    w.tx.delete_vm(a.id).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(6));
    assert_eq!(backend.live(), 0, "killed");
    assert_run_dir_empty(dir.path());
    w.stop().await;
}

/// A replacement runs both versions of one name for a while: a second VM
/// with the same name and another contentHash is its own VM (own id, own
/// process and files), and deleting either leaves the other alone.
#[tokio::test]
async fn same_name_with_another_hash_is_a_second_vm() {
    let (dir, backend, w) = started(false);
    let (v1, v2) = two_versions(&w).await;
    assert_ne!(v1.id, v2.id);
    assert_ne!(v1.pid, v2.pid);
    assert_eq!(backend.live(), 2);
    let list = w.tx.list_vms().await.unwrap();
    let mut got: Vec<_> = list
        .iter()
        .map(|v| (v.name.as_str(), v.content_hash.as_str(), v.state))
        .collect();
    got.sort_by_key(|v| v.1);
    assert_eq!(
        got,
        vec![
            ("web", "h1", VmState::Running),
            ("web", "h2", VmState::Running)
        ]
    );
    assert_eq!(w.tx.read().await.unwrap().allocated.cpu, 2);
    // Either version still refuses a repeat of itself.
    for (hash, id) in [("h1", &v1.id), ("h2", &v2.id)] {
        let err = w.tx.create_vm(versioned("web", hash)).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::AlreadyExists);
        assert!(
            err.message().ends_with(&format!("(id {id})")),
            "{}",
            err.message()
        );
    }
    // Deleting the old version leaves the new one running with its files.
    w.tx.delete_vm(v1.id.clone()).await.unwrap();
    let list = w.tx.list_vms().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((&list[0].id, list[0].state), (&v2.id, VmState::Running));
    assert_eq!(backend.pid_of(&v2.id), v2.pid);
    let files = run_files(dir.path());
    assert!(
        files.iter().all(|f| f.starts_with(v2.id.as_str())),
        "{files:?}"
    );
    assert!(!files.is_empty());
    // The old key is free again; the new one is still taken.
    let again = w.tx.create_vm(versioned("web", "h1")).await.unwrap();
    assert_eq!(
        w.tx.create_vm(versioned("web", "h2"))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::AlreadyExists
    );
    w.tx.delete_vm(again.id).await.unwrap();
    w.tx.delete_vm(v2.id).await.unwrap();
    assert_eq!(backend.live(), 0);
    w.stop().await;
}

/// Both versions of a name survive a worker restart: adoption keys them by
/// id, and each keeps refusing its own (name, hash) afterwards.
#[tokio::test]
async fn restart_adopts_both_versions_of_a_name() {
    let (dir, backend, w) = started(false);
    let (v1, v2) = two_versions(&w).await;
    w.stop().await;
    let w = start(&backend, dir.path(), false);
    let mut got: Vec<_> =
        w.tx.list_vms()
            .await
            .unwrap()
            .into_iter()
            .map(|v| (v.id, v.content_hash, v.state))
            .collect();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    let want = vec![
        (v1.id.clone(), "h1".to_owned(), VmState::Running),
        (v2.id.clone(), "h2".to_owned(), VmState::Running),
    ];
    assert_eq!(got, want);
    for hash in ["h1", "h2"] {
        assert_eq!(
            w.tx.create_vm(versioned("web", hash))
                .await
                .unwrap_err()
                .code(),
            ErrorCode::AlreadyExists
        );
    }
    w.stop().await;
}

/// Two projects' `web-0` at the same contentHash are two VMs: each has its
/// own id, process and run files, each refuses only a repeat of itself,
/// both are adopted after a restart with their project, and deleting one
/// leaves the other running.
#[tokio::test]
async fn same_name_in_two_projects_coexists_across_a_restart() {
    let (dir, backend, w) = started(false);
    let in_project = |p: &str| spec("web-0").with_project(p.parse().unwrap());
    let a = w.tx.create_vm(in_project("team-a")).await.unwrap();
    let b = w.tx.create_vm(in_project("team-b")).await.unwrap();
    assert_ne!(a.id, b.id);
    assert_ne!(a.pid, b.pid);
    assert_eq!(
        (a.project.as_str(), b.project.as_str()),
        ("team-a", "team-b")
    );
    let err = w.tx.create_vm(in_project("team-a")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    assert!(err.message().contains("team-a/web-0"), "{}", err.message());
    let files = run_files(dir.path());
    for id in [&a.id, &b.id] {
        assert!(
            files.iter().any(|f| f.starts_with(id.as_str())),
            "{id} has no run files: {files:?}"
        );
    }
    w.stop().await;

    let w = start(&backend, dir.path(), false);
    let adopted: BTreeMap<String, (VmId, VmState)> =
        w.tx.list_vms()
            .await
            .unwrap()
            .into_iter()
            .map(|v| (v.project.to_string(), (v.id, v.state)))
            .collect();
    assert_eq!(
        adopted,
        BTreeMap::from([
            ("team-a".to_owned(), (a.id.clone(), VmState::Running)),
            ("team-b".to_owned(), (b.id.clone(), VmState::Running)),
        ])
    );
    w.tx.delete_vm(a.id.clone()).await.unwrap();
    let left = w.tx.list_vms().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!((&left[0].id, left[0].state), (&b.id, VmState::Running));
    assert_eq!(backend.pid_of(&b.id), b.pid);
    w.tx.delete_vm(b.id).await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn restart_adopts_live_vms_and_cleans_dead_ones() {
    let (dir, backend, w) = started(false);
    let a = w.tx.create_vm(spec("a")).await.unwrap();
    let b = w.tx.create_vm(spec("b")).await.unwrap();
    let c = w.tx.create_vm(spec("c")).await.unwrap();
    let d = w.tx.create_vm(spec("d")).await.unwrap();
    w.tx.pause_vm(b.id.clone()).await.unwrap();
    w.stop().await;
    assert_eq!(backend.live(), 4, "VMs outlive the worker");

    backend.crash(&c.id); // died while no worker watched
    backend.set_state(&d.id, None); // alive but never created: half a create
    std::fs::write(
        dir.path().join("run/vm").join(format!("{}.sock", c.id)),
        b"",
    )
    .unwrap();

    let w = start(&backend, dir.path(), false);
    let list = w.tx.list_vms().await.unwrap();
    let got: Vec<_> = list
        .iter()
        .map(|v| (v.id.clone(), v.state, v.pid))
        .collect();
    assert_eq!(
        got,
        vec![
            (a.id.clone(), VmState::Running, a.pid),
            (b.id.clone(), VmState::Paused, b.pid)
        ]
    );
    assert_eq!(backend.live(), 2, "the half-created one was stopped");
    for gone in [&c.id, &d.id] {
        assert!(
            !run_files(dir.path())
                .iter()
                .any(|f| f.starts_with(gone.as_str())),
            "{gone} files removed"
        );
    }
    // Adopted VMs are fully managed: names are taken, exits are watched.
    assert_eq!(
        w.tx.create_vm(spec("a")).await.unwrap_err().code(),
        ErrorCode::AlreadyExists
    );
    backend.crash(&a.id);
    tokio::time::timeout(Duration::from_secs(1), async {
        while w.tx.list_vms().await.unwrap()[0].state != VmState::Failed {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("adopted VM's death noticed");
    w.tx.resume_vm(b.id.clone()).await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn stop_vms_on_exit_stops_everything_and_late_commands_are_refused() {
    let (dir, backend, w) = started(true);
    w.tx.create_vm(spec("a")).await.unwrap();
    w.tx.create_vm(spec("b")).await.unwrap();
    let tx = w.tx.clone();
    w.stop().await;
    assert_eq!(backend.live(), 0);
    assert_run_dir_empty(dir.path());
    let err = tx.list_vms().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert_eq!(err.message(), "the worker is shutting down");
}

#[tokio::test]
async fn a_generation_that_changes_only_domains_keeps_the_running_vm() {
    let (dir, backend, w) = started(false);
    let with = |hash: &str, domains: &[&str]| {
        testkit::fixtures::spec_with("web", hash, |f| {
            f.cmdline = "console=ttyS0".into();
            f.network_allowed_domains = domains.iter().map(|d| (*d).to_owned()).collect();
        })
    };
    let v1 = w.tx.create_vm(with("h1", &["a.example"])).await.unwrap();
    let v2 =
        w.tx.create_vm(with("h2", &["a.example", "*.b.example"]))
            .await
            .unwrap();
    assert_eq!(v2.id, v1.id, "the same VM, not a replacement");
    assert_eq!(v2.pid, v1.pid, "not restarted");
    assert_eq!(v2.content_hash, "h2");
    let d = w.tx.vm_info(v1.id.clone()).await.unwrap();
    assert_eq!(
        d.spec.network_allowed_domains(),
        ["a.example", "*.b.example"]
    );
    // The old key is free again and the new one taken.
    assert_eq!(
        w.tx.create_vm(with("h2", &["a.example", "*.b.example"]))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::AlreadyExists
    );
    // Anything else that boots differently is a second VM, as before.
    let other = testkit::fixtures::spec_with("web", "h3", |f| {
        f.cmdline = "console=ttyS0 quiet".into();
        f.network_allowed_domains = vec!["c.example".into()];
    });
    let v3 = w.tx.create_vm(other).await.unwrap();
    assert_ne!(v3.id, v1.id);
    // A restart adopts the VM with the domains of its last generation.
    w.stop().await;
    let w = start(&backend, dir.path(), false);
    let d = w.tx.vm_info(v1.id.clone()).await.unwrap();
    assert_eq!(d.status.content_hash, "h2");
    assert_eq!(
        d.spec.network_allowed_domains(),
        ["a.example", "*.b.example"]
    );
    w.stop().await;
}

/// `name` with a health check waiting `deadline_ms` for `READY`.
fn checked(name: &str, deadline_ms: u64) -> VmSpec {
    testkit::fixtures::spec_with(name, &format!("hash-{name}"), |f| {
        f.health_check = Some(crate::dto::HealthCheck {
            console_line: "READY".into(),
            deadline_ms,
        });
    })
}

/// Polls `vm_info` until `done` holds for the VM's status (5 s at most).
async fn wait_status(w: &Running, id: &VmId, done: impl Fn(&VmStatus) -> bool) -> VmStatus {
    let t = std::time::Instant::now();
    loop {
        let st = w.tx.vm_info(id.clone()).await.unwrap().status;
        if done(&st) {
            return st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "still {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the guest of `id` prints on its serial console.
fn guest_prints(dir: &Path, id: &VmId, line: &str) {
    let serial = dir.join("run/console").join(format!("{id}-serial.log"));
    testkit::fs::append(&serial, format!("{line}\n").as_bytes());
}

#[tokio::test]
async fn health_checks_report_pending_healthy_and_unhealthy() {
    let (dir, backend, w) = started(false);
    let plain = w.tx.create_vm(spec("plain")).await.unwrap();
    assert_eq!(plain.health, crate::dto::Health::None);

    let ok = w.tx.create_vm(checked("ok", 30_000)).await.unwrap();
    let slow = w.tx.create_vm(checked("slow", 400)).await.unwrap();
    assert_eq!(ok.health, crate::dto::Health::Pending);
    // Another VM's READY is not this one's.
    guest_prints(dir.path(), &plain.id, "READY");
    guest_prints(dir.path(), &ok.id, "[   0.5] systemd[1]: READY");
    let t0 = commands::telemetry::now_ms();
    let ok = wait_status(&w, &ok.id, |s| s.health != crate::dto::Health::Pending).await;
    assert_eq!(ok.health, crate::dto::Health::Healthy);
    let since = ok.healthy_since_ms.unwrap();
    assert!(since >= ok.created_at_ms && since <= commands::telemetry::now_ms());
    // A scan takes its time before it syncs, so it may date the line up
    // to one sync period before it was printed, never earlier.
    assert!(
        since + rundir::CONSOLE_SYNC_PERIOD.as_millis() as u64 >= t0,
        "{since} vs {t0}"
    );
    assert_eq!(ok.health_detail, "");

    let slow = wait_status(&w, &slow.id, |s| s.health != crate::dto::Health::Pending).await;
    assert_eq!(slow.health, crate::dto::Health::Unhealthy);
    assert_eq!(
        slow.health_detail,
        r#"no "READY" on the console within 400 ms"#
    );
    // The list (what pushData reports) says the same.
    let list = w.tx.list_vms().await.unwrap();
    let in_list = |id: &VmId| list.iter().find(|s| &s.id == id).unwrap().health;
    assert_eq!(in_list(&ok.id), crate::dto::Health::Healthy);
    assert_eq!(in_list(&slow.id), crate::dto::Health::Unhealthy);
    assert_eq!(in_list(&plain.id), crate::dto::Health::None);

    // A healthy VM whose hypervisor dies is unhealthy with the reason.
    backend.crash(&ok.id);
    let dead = wait_status(&w, &ok.id, |s| s.state == VmState::Failed).await;
    assert_eq!(dead.health, crate::dto::Health::Unhealthy);
    assert_eq!(
        dead.health_detail,
        "the VM failed: cloud-hypervisor was killed by signal 9"
    );
    assert_eq!(dead.healthy_since_ms, None);

    // Recreated (what the reconciler does with a failed VM): a new VM,
    // pending again, and healthy once its own guest is ready.
    w.tx.delete_vm(dead.id.clone()).await.unwrap();
    let again = w.tx.create_vm(checked("ok", 30_000)).await.unwrap();
    assert_eq!(again.health, crate::dto::Health::Pending);
    guest_prints(dir.path(), &again.id, "READY");
    wait_status(&w, &again.id, |s| s.health == crate::dto::Health::Healthy).await;
    w.stop().await;
}

#[tokio::test]
async fn a_restarted_worker_keeps_health_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let backend = MemoryBackend::default();
    let w = start(&backend, dir.path(), false);
    let ok = w.tx.create_vm(checked("ok", 30_000)).await.unwrap();
    guest_prints(dir.path(), &ok.id, "READY");
    let ok = wait_status(&w, &ok.id, |s| s.health == crate::dto::Health::Healthy).await;
    let waiting = w.tx.create_vm(checked("waiting", 30_000)).await.unwrap();
    w.stop().await;

    // Adopted: the verdict comes back as it was (its console may have
    // rotated the line away since); the pending check goes on.
    let w = start(&backend, dir.path(), false);
    let list = w.tx.list_vms().await.unwrap();
    let adopted = list.iter().find(|s| s.id == ok.id).unwrap();
    assert_eq!(
        (adopted.health, adopted.healthy_since_ms),
        (crate::dto::Health::Healthy, ok.healthy_since_ms)
    );
    let still = list.iter().find(|s| s.id == waiting.id).unwrap();
    assert_eq!(still.health, crate::dto::Health::Pending);
    guest_prints(dir.path(), &waiting.id, "READY");
    wait_status(&w, &waiting.id, |s| s.health == crate::dto::Health::Healthy).await;
    w.stop().await;
}
