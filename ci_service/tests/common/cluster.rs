//! A whole cluster of real binaries for the end-to-end test and the
//! benchmark: cache, control plane, two workers on ch-sim with their own
//! store roots, ci_service wired to all of them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use commands::client::MasterClient;
use commands::model::ClusterStatusView;
use repo_outils::testing::HermeticNix;

use super::*;

const TOKEN: &str = "e2e-upload-token";

pub fn status(cp: &str) -> Option<ClusterStatusView> {
    commands::rpc::block_on_local(async {
        let c = MasterClient::connect(cp, Duration::from_secs(2))
            .await
            .ok()?;
        let s = c.status().await.ok();
        c.close().await;
        s
    })
}

/// Waits until generation `gen` is active, 100 % converged, every desired
/// VM running; returns name → (vm id, worker id).
pub fn wait_converged(
    cp: &str,
    generation: u64,
    timeout: Duration,
) -> BTreeMap<String, (String, String)> {
    let mut last = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            &format!("generation {generation} to converge"),
            timeout,
            || {
                let s = status(cp)?;
                let ok = s.active.as_ref().is_some_and(|g| g.number == generation)
                    && s.convergence_percent >= 100.0
                    && !s.vms.is_empty()
                    && s.vms
                        .iter()
                        .all(|v| v.state == Some(commands::types::VmState::Running));
                let out = ok.then(|| {
                    s.vms
                        .iter()
                        .map(|v| (v.name.clone(), (v.vm_id.clone(), v.worker_id.clone())))
                        .collect()
                });
                last = Some(s);
                out
            },
        )
    }));
    match r {
        Ok(v) => v,
        Err(_) => panic!("not converged to generation {generation}; last status: {last:#?}"),
    }
}

pub struct Cluster {
    pub h: HermeticNix,
    pub cache: Proc,
    pub cp: Proc,
    pub workers: Vec<Proc>,
    pub ci: Proc,
    pub public_key: String,
}

pub fn host_root(h: &HermeticNix, id: &str) -> PathBuf {
    h.dir().join("hosts").join(id)
}

/// `grace_ms`: how long a (re)started control plane withholds assignments
/// so workers can re-register and report the VMs they run (short for a
/// first start, a few seconds for a restart that must keep placements).
pub fn start_control_plane(listen: &str, grace_ms: u64) -> Proc {
    let mut cmd = Command::new(bin("control_plane"));
    cmd.args(["--listen", listen, "--heartbeat-timeout-ms", "3000"])
        .args(["--startup-grace-ms", &grace_ms.to_string()]);
    Proc::spawn("control_plane", cmd)
}

/// ci_service wired to the cache and control plane, its state in the
/// cluster's temp dir (so a restart on the same `listen` resumes it).
pub fn start_ci(h: &HermeticNix, listen: &str, cache: &str, cp: &str) -> Proc {
    Proc::spawn("ci_service", ci_command(h, listen, cache, cp))
}

/// The ci_service command line both cluster harnesses (this one and the
/// fault suite's) start: state in the cluster's temp dir, hermetic nix.
pub fn ci_command(h: &HermeticNix, listen: &str, cache: &str, cp: &str) -> Command {
    let d = h.dir();
    let mut cmd = Command::new(bin("ci_service"));
    cmd.args(["--listen", listen, "--data-dir"])
        .arg(d.join("ci"))
        .arg("--nix-conf-dir")
        .arg(h.conf_dir())
        .args(["--cache", cache, "--control-plane", cp])
        .arg("--cache-token-file")
        .arg(d.join("token"));
    cmd
}

pub fn start() -> Cluster {
    let h = HermeticNix::new().unwrap();
    let d = h.dir();
    // Cache with a fresh key and upload token.
    let st = Command::new(bin("cache"))
        .args(["keygen", "e2e-cache-1", "--out-dir"])
        .arg(d.join("key"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "cache keygen: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let public_key = std::fs::read_to_string(d.join("key/public-key"))
        .unwrap()
        .trim()
        .to_owned();
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut cmd = Command::new(bin("cache"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.join("cache-data"))
        .arg("--key-file")
        .arg(d.join("key/secret-key"))
        .arg("--upload-token-file")
        .arg(d.join("token"));
    let cache = Proc::spawn("cache", cmd);

    let cp = start_control_plane("127.0.0.1:0", 300);

    let mut workers = Vec::new();
    for id in ["host-a", "host-b"] {
        let mut cmd = Command::new(bin("worker"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--worker-id",
            id,
            "--cpu",
            "4",
            "--memory-mb",
            "2048",
        ])
        .arg("--ch-binary")
        .arg(bin("ch-sim"))
        .arg("--run-dir")
        .arg(d.join("run").join(id))
        .arg("--store-root")
        .arg(host_root(&h, id))
        .args([
            "--closure-source",
            &cache.url(),
            "--cache-public-key",
            &public_key,
        ])
        .args(["--control-plane", &cp.addr])
        .envs(h.env());
        workers.push(Proc::spawn(id, cmd));
    }

    let ci = start_ci(&h, "127.0.0.1:0", &cache.url(), &cp.addr);
    Cluster {
        h,
        cache,
        cp,
        workers,
        ci,
        public_key,
    }
}
