//! Replays the recording of a real cloud-hypervisor v53
//! (`data/ch-v53-conformance.jsonl`) against ch-sim: same statuses, same
//! bodies (vm.info: state and every field the recording kept; vm.counters:
//! the same devices and counter names, whose values grow by design), then
//! checks CH's process behaviour.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ch_sim;
use http::Method;
use serde_json::Value;
use testkit::{Proc, kill9, poll};
use worker::vmm::ch::ChClient;
use worker::vmm::{ChBackendConfig, CloudHypervisorBackend};

fn start_sim(socket: &Path) -> Proc {
    let child = Command::new(ch_sim())
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll(Duration::from_secs(5), || {
        std::os::unix::net::UnixStream::connect(socket).ok()
    })
    .expect("ch-sim answers on its socket");
    Proc::adopt("ch-sim", child)
}

/// Every field of `want` is in `got` with the same value (arrays: same
/// length, element-wise).
fn subset(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let gv = g.get(k).ok_or(format!("{at}.{k} is missing"))?;
                subset(wv, gv, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .try_for_each(|(i, (w, g))| subset(w, g, &format!("{at}[{i}]"))),
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("{at}: want {w}, got {g}")),
    }
}

/// One recorded call with the placeholders of the run directory filled in.
struct Call {
    rec: Value,
    method: Method,
    endpoint: &'static str,
    body: Option<Vec<u8>>,
    /// The recorded answer's body (`null`: none).
    want: Value,
    /// "line N (METHOD endpoint, note)", for assertion messages.
    what: String,
}

/// The calls of a recording in `tests/data`, skipping its `meta` line.
fn recorded_calls(file: &str, run: &Path, kernel: &Path) -> Vec<Call> {
    let subst = |s: &str| {
        s.replace("{run}", &run.display().to_string())
            .replace("{kernel}", &kernel.display().to_string())
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    let mut calls = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let rec: Value = serde_json::from_str(line).unwrap();
        if rec.get("meta").is_some() {
            continue;
        }
        let method = Method::from_bytes(rec["method"].as_str().unwrap().as_bytes()).unwrap();
        let endpoint: &'static str = Box::leak(
            rec["endpoint"]
                .as_str()
                .unwrap()
                .to_owned()
                .into_boxed_str(),
        );
        let body = match &rec["request"] {
            Value::Null => None,
            Value::String(raw) => Some(subst(raw).into_bytes()),
            obj => Some(subst(&obj.to_string()).into_bytes()),
        };
        let want = serde_json::from_str(&subst(&rec["body"].to_string())).unwrap();
        let what = format!(
            "line {} ({method} {endpoint}, {})",
            n + 1,
            rec["note"].as_str().unwrap_or("")
        );
        calls.push(Call {
            rec,
            method,
            endpoint,
            body,
            want,
            what,
        });
    }
    calls
}

impl Call {
    /// Sends the call; checks the status, and that there is no body when
    /// the recording has none. The body as JSON otherwise.
    async fn replay(&self, client: &ChClient) -> Option<Value> {
        let what = &self.what;
        let (status, bytes) = client
            .raw(self.method.clone(), self.endpoint, self.body.clone())
            .await
            .unwrap();
        assert_eq!(
            u64::from(status.as_u16()),
            self.rec["status"].as_u64().unwrap(),
            "{what}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if self.want.is_null() {
            assert!(
                bytes.is_empty(),
                "{what}: want no body, got {}",
                String::from_utf8_lossy(&bytes)
            );
            return None;
        }
        Some(
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}")),
        )
    }
}

#[tokio::test]
async fn ch_sim_answers_like_ch_v53() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let kernel = run.join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    std::fs::write(run.join("disk.raw"), vec![0u8; 4096]).unwrap();
    let socket = run.join("vm.sock");
    let mut sim = start_sim(&socket);
    let pid = sim.pid();
    let client = client_for(&socket);
    let mut replayed = 0;
    for call in recorded_calls("ch-v53-conformance.jsonl", run, &kernel) {
        let Some(got) = call.replay(&client).await else {
            replayed += 1;
            continue;
        };
        let (what, mut want) = (&call.what, call.want.clone());
        match (call.endpoint, call.rec["status"].as_u64().unwrap()) {
            ("vm.info", 200) => {
                // The recording kept only whether a device tree was present.
                let has_tree = want
                    .as_object_mut()
                    .unwrap()
                    .remove("has_device_tree")
                    .unwrap()
                    .as_bool()
                    .unwrap();
                let got_tree = got
                    .get("device_tree")
                    .and_then(Value::as_object)
                    .is_some_and(|t| !t.is_empty());
                assert_eq!(got_tree, has_tree, "{what}: device tree");
                subset(&want, &got, "body").unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            ("vm.counters", 200) => {
                let keys = |v: &Value| -> Vec<(String, Vec<String>)> {
                    v.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, c)| {
                            (k.clone(), {
                                let mut ks: Vec<_> =
                                    c.as_object().unwrap().keys().cloned().collect();
                                ks.sort();
                                ks
                            })
                        })
                        .collect()
                };
                assert_eq!(keys(&got), keys(&want), "{what}");
            }
            ("vmm.ping", _) => {
                want["pid"] = Value::from(pid);
                assert_eq!(got, want, "{what}");
            }
            _ => assert_eq!(got, want, "{what}"),
        }
        replayed += 1;
    }
    assert_eq!(replayed, 51);
    // The recording ends with vmm.shutdown: CH exits 0, removes its socket,
    // and leaves the lock file.
    let status = poll(Duration::from_secs(10), || sim.child.try_wait().unwrap())
        .expect("exited after vmm.shutdown");
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists());
    assert!(run.join("vm.sock.lock").exists());
}

#[test]
fn process_behaviour_matches_ch() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a.sock");
    let first = start_sim(&socket);

    // A second CH on a live socket exits at once with an error.
    let out = Command::new(ch_sim())
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));

    // SIGKILL leaves the socket behind; a new CH on the path replaces it.
    kill9(first.pid());
    drop(first);
    assert!(socket.exists(), "SIGKILL leaves the socket");
    let second = start_sim(&socket);
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());

    // SIGTERM is graceful: exit 0, socket removed.
    let _ = Command::new("kill").arg(second.pid().to_string()).status();
    let mut second = second;
    let st = poll(Duration::from_secs(10), || second.child.try_wait().unwrap()).unwrap();
    assert_eq!(st.code(), Some(0));
    assert!(!socket.exists());

    // A socket in a missing directory: exit 1 before any socket exists.
    let out = Command::new(ch_sim())
        .arg("--api-socket")
        .arg("path=/nonexistent/dir/x.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(ch_sim()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cloud-hypervisor v53.0.0"));
}

#[tokio::test]
async fn guest_power_off_ends_the_process_like_ch() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"k").unwrap();
    let socket = dir.path().join("p.sock");
    let mut sim = start_sim(&socket);
    let client = client_for(&socket);
    let serial = dir.path().join("p-serial.log");
    let cfg = serde_json::json!({"payload": {"kernel": kernel, "cmdline": "ch_sim.poweroff_after_ms=50"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "memory": {"size": 1 << 27},
        "serial": {"mode": "File", "file": serial}, "console": {"mode": "Off"}});
    assert_eq!(create_and_boot(&client, &cfg).await, 204);
    let status =
        poll(Duration::from_secs(10), || sim.child.try_wait().unwrap()).expect("guest powered off");
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "power-off removes the socket");
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(log.starts_with("[sim] p booted kernel="), "{log}");
    assert!(log.ends_with("[sim] reboot: Power down\n"), "{log}");
}

/// A VM booted in its own ch-sim with `cmdline`; the process, its API
/// client, the socket and the serial file.
async fn booted_guest(
    dir: &Path,
    cmdline: &str,
) -> (Proc, ChClient, std::path::PathBuf, std::path::PathBuf) {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"k").unwrap();
    let socket = dir.join("g.sock");
    let sim = start_sim(&socket);
    let client = client_for(&socket);
    let serial = dir.join("g-serial.log");
    let cfg = serde_json::json!({"payload": {"kernel": kernel, "cmdline": cmdline},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "memory": {"size": 1 << 27},
        "serial": {"mode": "File", "file": serial}, "console": {"mode": "Off"}});
    assert_eq!(create_and_boot(&client, &cfg).await, 204);
    (sim, client, socket, serial)
}

fn lines(serial: &Path) -> Vec<String> {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn guest_prints_ready_after_the_cmdline_delay_at_every_boot() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, client, _socket, serial) =
        booted_guest(dir.path(), "console=ttyS0 pcr.sim.ready=300").await;
    let booted = std::time::Instant::now();
    assert!(!lines(&serial).contains(&"READY".to_owned()), "not at boot");
    poll(Duration::from_secs(5), || {
        lines(&serial).contains(&"READY".to_owned()).then_some(())
    })
    .expect("READY on the console");
    assert!(
        booted.elapsed() >= Duration::from_millis(250),
        "READY came {:?} after boot",
        booted.elapsed()
    );
    // A reboot truncates the console and the guest is ready again later.
    let (st, _) = client.raw(Method::PUT, "vm.reboot", None).await.unwrap();
    assert_eq!(st.as_u16(), 204);
    assert!(!lines(&serial).contains(&"READY".to_owned()));
    poll(Duration::from_secs(5), || {
        lines(&serial).contains(&"READY".to_owned()).then_some(())
    })
    .expect("READY after the reboot");
}

#[tokio::test]
async fn guest_ready_line_is_configurable_and_paused_guests_stay_silent() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, client, _socket, serial) =
        booted_guest(dir.path(), "ch_sim.ready=150 pcr.sim.ready_line=app-up").await;
    let (st, _) = client.raw(Method::PUT, "vm.pause", None).await.unwrap();
    assert_eq!(st.as_u16(), 204);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !lines(&serial).iter().any(|l| l == "app-up"),
        "{:?}",
        lines(&serial)
    );
    // Its timer belongs to the boot; resuming does not start another.
    let (st, _) = client.raw(Method::PUT, "vm.resume", None).await.unwrap();
    assert_eq!(st.as_u16(), 204);
    let (st, _) = client.raw(Method::PUT, "vm.reboot", None).await.unwrap();
    assert_eq!(st.as_u16(), 204);
    poll(Duration::from_secs(5), || {
        lines(&serial).iter().any(|l| l == "app-up").then_some(())
    })
    .expect("the configured line after the reboot");
    assert!(!lines(&serial).contains(&"READY".to_owned()));
}

#[tokio::test]
async fn guest_crash_ends_the_process_like_ch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sim, _client, socket, serial) =
        booted_guest(dir.path(), "pcr.sim.ready=20 pcr.sim.crash_after_ms=200").await;
    let status =
        poll(Duration::from_secs(10), || sim.child.try_wait().unwrap()).expect("guest crashed");
    // Design §10: a guest crash exits 0 like a power-off; only the
    // console tells them apart.
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "the crash removes the socket");
    let log = lines(&serial);
    assert!(log.contains(&"READY".to_owned()), "{log:?}");
    assert!(
        log.last().unwrap().contains("Kernel panic - not syncing"),
        "{log:?}"
    );
}

/// The files of the disk recording: `base.raw` (read-only, 64 MiB sparse),
/// overlays `a.qcow2` and `b.qcow2` of it, and `tiny.img` (shorter than a
/// sector), in a new temp dir; returns the dir and the kernel's path.
fn disk_files() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let kernel = run.join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let base = run.join("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    for name in ["a.qcow2", "b.qcow2"] {
        worker::disk::create_overlay(&base, &run.join(name), None).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::write(run.join("tiny.img"), b"tiny").unwrap();
    (dir, kernel)
}

/// Replays `data/ch-v53-disks.jsonl` (one CH process per case; the overlays
/// are the worker's own, where the recording used `qemu-img create`).
#[tokio::test]
async fn ch_sim_opens_disks_like_ch_v53() {
    let (dir, kernel) = disk_files();
    let run = dir.path();
    let mut sims: Vec<(String, Proc, ChClient)> = Vec::new();
    let mut replayed = 0;
    for call in recorded_calls("ch-v53-disks.jsonl", run, &kernel) {
        let case = call.rec["case"].as_str().unwrap().to_owned();
        if sims.last().is_none_or(|(c, ..)| *c != case) {
            let socket = run.join(format!("{case}.sock"));
            let sim = start_sim(&socket);
            let client = client_for(&socket);
            sims.push((case.clone(), sim, client));
        }
        let (_, sim, client) = sims.last_mut().unwrap();
        let what = &call.what;
        if let Some(got) = call.replay(client).await {
            if call.endpoint == "vm.info" {
                // The recording kept the state and the disks of the config.
                assert_eq!(got["state"], call.want["state"], "{what}");
                subset(&call.want["disks"], &got["config"]["disks"], "disks")
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            } else {
                assert_eq!(got, call.want, "{what}");
            }
        }
        if call.endpoint == "vmm.shutdown" {
            let status = poll(Duration::from_secs(10), || sim.child.try_wait().unwrap())
                .expect("exited after vmm.shutdown");
            assert_eq!(status.code(), Some(0), "{what}");
        }
        replayed += 1;
    }
    assert_eq!(replayed, 14);
    assert_eq!(sims.len(), 4);
}

/// A client of the CH API socket at `socket`.
fn client_for(socket: &Path) -> ChClient {
    CloudHypervisorBackend::new(ChBackendConfig::new("unused".into())).client_for(socket)
}

/// `vm.create` with `cfg` (which must succeed), then `vm.boot`; the boot's
/// status.
async fn create_and_boot(client: &ChClient, cfg: &serde_json::Value) -> u16 {
    let (st, _) = client
        .raw(Method::PUT, "vm.create", Some(cfg.to_string().into_bytes()))
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 204);
    let (st, _) = client.raw(Method::PUT, "vm.boot", None).await.unwrap();
    st.as_u16()
}

/// Booting one VM per disk `path`, each in its own ch-sim process; the
/// status of each `vm.boot`.
async fn boot_each(run: &Path, kernel: &Path, disks: &[&str]) -> (Vec<Proc>, Vec<u16>) {
    let mut out = (Vec::new(), Vec::new());
    for (i, disk) in disks.iter().enumerate() {
        let socket = run.join(format!("lock{i}.sock"));
        let _ = std::fs::remove_file(&socket);
        let sim = start_sim(&socket);
        let client = client_for(&socket);
        let cfg = serde_json::json!({"payload": {"kernel": kernel},
            "cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "memory": {"size": 1 << 27},
            "disks": [{"path": run.join(disk), "image_type": "Qcow2", "backing_files": true}],
            "serial": {"mode": "File", "file": run.join(format!("lock{i}.serial"))},
            "console": {"mode": "Off"}});
        out.1.push(create_and_boot(&client, &cfg).await);
        out.0.push(sim);
    }
    out
}

/// CH locks the overlay, not its backing file: two overlays of one image
/// run side by side, two VMs on one overlay do not.
#[tokio::test]
async fn ch_sim_locks_the_overlay_not_the_backing_file() {
    let (dir, kernel) = disk_files();
    let run = dir.path();
    let (sims, status) = boot_each(run, &kernel, &["a.qcow2", "b.qcow2"]).await;
    assert_eq!(status, vec![204, 204]);
    drop(sims);
    let (_sims, status) = boot_each(run, &kernel, &["a.qcow2", "a.qcow2"]).await;
    assert_eq!(status, vec![204, 500]);
}
