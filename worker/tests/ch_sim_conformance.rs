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
    let client =
        CloudHypervisorBackend::new(ChBackendConfig::new("unused".into())).client_for(&socket);
    let subst = |s: &str| {
        s.replace("{run}", &run.display().to_string())
            .replace("{kernel}", &kernel.display().to_string())
    };

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ch-v53-conformance.jsonl"
    ))
    .unwrap();
    let mut replayed = 0;
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
        let what = format!(
            "line {} ({} {endpoint}, {})",
            n + 1,
            method,
            rec["note"].as_str().unwrap_or("")
        );
        let (status, bytes) = client.raw(method, endpoint, body).await.unwrap();
        assert_eq!(
            u64::from(status.as_u16()),
            rec["status"].as_u64().unwrap(),
            "{what}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let mut want: Value = serde_json::from_str(&subst(&rec["body"].to_string())).unwrap();
        if want.is_null() {
            assert!(
                bytes.is_empty(),
                "{what}: want no body, got {}",
                String::from_utf8_lossy(&bytes)
            );
            replayed += 1;
            continue;
        }
        let got: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        match (endpoint, status.as_u16()) {
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
    let client =
        CloudHypervisorBackend::new(ChBackendConfig::new("unused".into())).client_for(&socket);
    let serial = dir.path().join("p-serial.log");
    let cfg = serde_json::json!({"payload": {"kernel": kernel, "cmdline": "ch_sim.poweroff_after_ms=50"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "memory": {"size": 1 << 27},
        "serial": {"mode": "File", "file": serial}, "console": {"mode": "Off"}});
    let (st, _) = client
        .raw(Method::PUT, "vm.create", Some(cfg.to_string().into_bytes()))
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 204);
    let (st, _) = client.raw(Method::PUT, "vm.boot", None).await.unwrap();
    assert_eq!(st.as_u16(), 204);
    let status =
        poll(Duration::from_secs(10), || sim.child.try_wait().unwrap()).expect("guest powered off");
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "power-off removes the socket");
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(log.starts_with("[sim] p booted kernel="), "{log}");
    assert!(log.ends_with("[sim] reboot: Power down\n"), "{log}");
}
