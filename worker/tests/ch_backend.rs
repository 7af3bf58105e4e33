//! CloudHypervisorBackend against the real ch-sim binary: spawning, the
//! socket wait and its timeout, every REST call, CH's error bodies mapped
//! to typed errors, adoption and exit detection.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ch_sim, ch_sim_with_env};
use testkit::{Proc, alive, kill9, poll};
use worker::dto::{VmId, VmSpec, VmSpecFields};
use worker::rundir::RunDir;
use worker::vmm::config::{ChVmState, VmPaths};
use worker::vmm::store::{HostFiles, resolve_spec};
use worker::vmm::{ChBackendConfig, CloudHypervisorBackend, Vmm, VmmBackend, VmmError, VmmProcess};

const TOP: &str = "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys";

fn backend(binary: &Path, store_root: &Path) -> CloudHypervisorBackend {
    let mut c = ChBackendConfig::new(binary.to_owned());
    c.store_root = store_root.to_owned();
    c.socket_timeout = Duration::from_millis(500);
    c.api_timeout = Duration::from_secs(2);
    c.adopted_poll = Duration::from_millis(50);
    CloudHypervisorBackend::new(c)
}

/// A store root holding the spec's kernel, and the spec.
fn store(dir: &Path) -> VmSpec {
    let sys = dir.join("store").join(TOP.trim_start_matches('/'));
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(sys.join("kernel"), b"kernel").unwrap();
    VmSpec::new(VmSpecFields {
        name: "vm".into(),
        toplevel: TOP.into(),
        kernel_path: format!("{TOP}/kernel"),
        cmdline: "console=ttyS0".into(),
        cpu: 1,
        memory_mb: 128,
        content_hash: "h".into(),
        ..Default::default()
    })
    .unwrap()
}

/// A temp dir with the spec's store (see `store`), the spec's files
/// resolved in it, and a ch-sim backend over it.
fn ch_sim_setup() -> (tempfile::TempDir, VmSpec, HostFiles, CloudHypervisorBackend) {
    let dir = tempfile::tempdir().unwrap();
    let spec = store(dir.path());
    let files = resolve_spec(&dir.path().join("store"), &spec).unwrap();
    let b = backend(&ch_sim(), &dir.path().join("store"));
    (dir, spec, files, b)
}

fn paths(dir: &Path) -> (VmId, VmPaths) {
    let rd = RunDir::open(&dir.join("run")).unwrap();
    let id = VmId::new_v7();
    let p = rd.paths(&id);
    (id, p)
}

#[tokio::test]
async fn spawn_and_every_rest_call() {
    let (dir, spec, files, b) = ch_sim_setup();
    b.prepare(&spec).await.unwrap();
    let (id, p) = paths(dir.path());
    let t = Instant::now();
    let (vmm, proc_) = b.spawn(&id, &p).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(500));
    let pid = proc_.pid().unwrap();
    assert!(alive(pid));

    let ping = vmm.ping().await.unwrap();
    assert_eq!(ping.version, "53.0.0");
    assert_eq!(ping.pid, Some(i64::from(pid)));

    match vmm.info().await.unwrap_err() {
        VmmError::Api {
            endpoint: "vm.info",
            status: 404,
            chain,
        } => {
            assert_eq!(
                chain,
                [
                    "Error from API",
                    "The VM info is not available",
                    "VM is not created"
                ]
            )
        }
        e => panic!("{e}"),
    }
    let config = b.build_config(&id, &spec, &p, &files);
    vmm.create(&config).await.unwrap();
    let info = vmm.info().await.unwrap();
    assert_eq!(info.state, ChVmState::Created);
    assert_eq!(info.config.payload.kernel, config.payload.kernel);
    assert_eq!(info.memory_actual_size, Some(128 << 20));
    vmm.boot().await.unwrap();
    assert_eq!(vmm.info().await.unwrap().state, ChVmState::Running);
    let serial = std::fs::read_to_string(&p.serial_log).unwrap();
    assert!(
        serial.starts_with(&format!("[sim] {id} booted kernel=")),
        "{serial}"
    );
    let counters = vmm.counters().await.unwrap();
    assert!(counters.is_empty(), "no disk, no NIC: no device counters");
    vmm.pause().await.unwrap();
    assert_eq!(vmm.info().await.unwrap().state, ChVmState::Paused);
    let e = vmm.pause().await.unwrap_err().to_string();
    assert!(
        e.ends_with("Invalid transition: InvalidStateTransition(Paused, Paused)"),
        "{e}"
    );
    vmm.resume().await.unwrap();
    vmm.shutdown().await.unwrap();
    assert_eq!(vmm.info().await.unwrap().state, ChVmState::Created);
    vmm.boot().await.unwrap();
    vmm.delete().await.unwrap();
    assert!(vmm.info().await.is_err());
    vmm.shutdown_vmm().await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(2), proc_.exited())
        .await
        .unwrap();
    assert_eq!(exit.code, Some(0));
    assert!(!p.socket.exists());
    proc_.cleanup();
    assert!(!Path::new(&format!("{}.lock", p.socket.display())).exists());
}

#[tokio::test]
async fn ch_error_bodies_become_typed_errors() {
    let (dir, spec, files, b) = ch_sim_setup();
    let (id, p) = paths(dir.path());
    let (vmm, proc_) = b.spawn(&id, &p).await.unwrap();
    let e = vmm.boot().await.unwrap_err();
    assert!(
        matches!(
            &e,
            VmmError::Api {
                endpoint: "vm.boot",
                status: 404,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "vm.boot answered 404: Error from API: The VM could not boot: VM config is missing"
    );
    let e = vmm.pause().await.unwrap_err();
    assert!(matches!(&e, VmmError::Api { status: 500, .. }), "{e}");

    // A kernel that is not there: vm.create accepts, vm.boot refuses.
    std::fs::remove_file(
        dir.path()
            .join("store")
            .join(TOP.trim_start_matches('/'))
            .join("kernel"),
    )
    .unwrap();
    vmm.create(&b.build_config(&id, &spec, &p, &files))
        .await
        .unwrap();
    let e = vmm.boot().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "vm.boot answered 500: Error from API: The VM could not boot: Cannot open kernel file: No such file or directory (os error 2)"
    );
    let e = vmm
        .create(&b.build_config(&id, &spec, &p, &files))
        .await
        .unwrap_err();
    assert!(e.to_string().ends_with("VM is already created"), "{e}");
    // Without its store path (and no closure source) prepare refuses the
    // spec before anything is spawned, naming the path.
    std::fs::remove_dir_all(dir.path().join("store").join(TOP.trim_start_matches('/'))).unwrap();
    let e = b.prepare(&spec).await.unwrap_err();
    assert!(
        matches!(&e, VmmError::MissingStorePath { path } if path == TOP),
        "{e}"
    );
    proc_.kill().unwrap();
    let exit = proc_.exited().await;
    assert_eq!(exit.description, "was killed by signal 9");
}

#[tokio::test]
async fn socket_wait_times_out_exits_early_and_bad_answers_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let (id, p) = paths(dir.path());

    // Never opens its socket: timeout, and the process is killed.
    let b = backend(
        &ch_sim_with_env(dir.path(), "nosock", &[("CH_SIM_NO_SOCKET", "1")]),
        dir.path(),
    );
    let t = Instant::now();
    let e = b.spawn(&id, &p).await.err().unwrap();
    assert!(matches!(&e, VmmError::SocketTimeout { ms: 500, .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(e.to_string().contains("did not open its API socket"), "{e}");
    let log = std::fs::read_to_string(&p.ch_log).unwrap_or_default();
    assert!(log.is_empty(), "{log}");

    // Exits before making its socket (CH without /dev/kvm does this).
    let b = backend(
        &ch_sim_with_env(
            dir.path(),
            "die",
            &[("CH_SIM_DIE_AFTER_MS", "0"), ("CH_SIM_NO_SOCKET", "1")],
        ),
        dir.path(),
    );
    let e = b.spawn(&id, &p).await.err().unwrap();
    assert!(
        matches!(&e, VmmError::ExitedEarly { status, .. } if status == "exited with status 1"),
        "{e}"
    );

    // Answers ping with 500: refused and killed, socket removed.
    let b = backend(
        &ch_sim_with_env(dir.path(), "fail", &[("CH_SIM_FAIL", "vmm.ping:500")]),
        dir.path(),
    );
    let e = b.spawn(&id, &p).await.err().unwrap();
    assert!(
        matches!(
            &e,
            VmmError::Api {
                endpoint: "vmm.ping",
                status: 500,
                ..
            }
        ),
        "{e}"
    );
    assert!(!p.socket.exists());

    // A binary that does not exist.
    let b = backend(&dir.path().join("no-such-ch"), dir.path());
    let e = b.spawn(&id, &p).await.err().unwrap();
    assert!(matches!(&e, VmmError::Spawn { .. }), "{e}");
}

#[tokio::test]
async fn adopts_a_live_ch_and_sees_it_die() {
    let (dir, spec, files, b) = ch_sim_setup();
    let (id, p) = paths(dir.path());
    // Started by someone else (a previous worker): not our child.
    let child = Command::new(ch_sim())
        .arg("--api-socket")
        .arg(format!("path={}", p.socket.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Proc::adopt("ch-sim", child);
    let pid = guard.pid();
    poll(Duration::from_secs(5), || {
        std::os::unix::net::UnixStream::connect(&p.socket).ok()
    })
    .unwrap();
    {
        let vmm = b.client_for(&p.socket);
        vmm.create(&b.build_config(&id, &spec, &p, &files))
            .await
            .unwrap();
        vmm.boot().await.unwrap();
    }
    let a = b.adopt(&id, &p).await.unwrap().expect("live CH adopted");
    assert_eq!(a.process.pid(), Some(pid));
    assert_eq!(a.info.state, ChVmState::Running);
    assert!(a.process.try_exited().is_none());

    kill9(pid);
    let t = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(1), a.process.exited())
        .await
        .expect("death seen within 1 s");
    assert_eq!(exit.description, format!("process {pid} vanished"));
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(guard);
    // SIGKILL left the socket: nothing answers there any more.
    assert!(p.socket.exists());
    assert!(b.adopt(&id, &p).await.unwrap().is_none());
}
