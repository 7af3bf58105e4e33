//! The whole GitOps loop with every real binary: cache, control_plane, two
//! workers running ch-sim with their own nix store roots, ci_service, and
//! a real `git push` through the post-receive hook. Covers: push → job
//! succeeds → closures in the cache → generation 1 active → each host's
//! store holds its VMs' closures → every VM running; a one-VM change
//! replaces only that VM; evaluation and build failures change nothing;
//! a restarted control plane gets its generation back from ci_service with
//! zero VM restarts.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use control_plane::client::MasterClient;
use control_plane::model::ClusterStatusView;
use repo_outils::testing::HermeticNix;

const TOKEN: &str = "e2e-upload-token";

fn status(cp: &str) -> Option<ClusterStatusView> {
    commands::rpc::block_on_local(async {
        let c = MasterClient::connect(cp, Duration::from_secs(2)).await.ok()?;
        let s = c.status().await.ok();
        c.close().await;
        s
    })
}

/// Waits until generation `gen` is active, 100 % converged, every desired
/// VM running; returns name → (vm id, worker id).
fn wait_converged(cp: &str, generation: u64, timeout: Duration) -> BTreeMap<String, (String, String)> {
    let mut last = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(&format!("generation {generation} to converge"), timeout, || {
            let s = status(cp)?;
            let ok = s.active.as_ref().is_some_and(|g| g.number == generation)
                && s.convergence_percent >= 100.0
                && !s.vms.is_empty()
                && s.vms.iter().all(|v| v.state == Some(commands::types::VmState::Running));
            let out = ok.then(|| s.vms.iter().map(|v| (v.name.clone(), (v.vm_id.clone(), v.worker_id.clone()))).collect());
            last = Some(s);
            out
        })
    }));
    match r {
        Ok(v) => v,
        Err(_) => panic!("not converged to generation {generation}; last status: {last:#?}"),
    }
}

struct Cluster {
    h: HermeticNix,
    cache: Proc,
    cp: Proc,
    workers: Vec<Proc>,
    ci: Proc,
    public_key: String,
}

fn host_root(h: &HermeticNix, id: &str) -> PathBuf {
    h.dir().join("hosts").join(id)
}

fn start_control_plane(listen: &str) -> Proc {
    let mut cmd = Command::new(bin("control_plane"));
    cmd.args(["--listen", listen, "--startup-grace-ms", "300", "--heartbeat-timeout-ms", "3000"]);
    Proc::spawn("control_plane", cmd)
}

fn start() -> Cluster {
    let h = HermeticNix::new().unwrap();
    let d = h.dir();
    // Cache with a fresh key and upload token.
    let st = Command::new(bin("cache")).args(["keygen", "e2e-cache-1", "--out-dir"]).arg(d.join("key")).output().unwrap();
    assert!(st.status.success(), "cache keygen: {}", String::from_utf8_lossy(&st.stderr));
    let public_key = std::fs::read_to_string(d.join("key/public-key")).unwrap().trim().to_owned();
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut cmd = Command::new(bin("cache"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.join("cache-data"))
        .arg("--key-file")
        .arg(d.join("key/secret-key"))
        .arg("--upload-token-file")
        .arg(d.join("token"));
    let cache = Proc::spawn("cache", cmd);

    let cp = start_control_plane("127.0.0.1:0");

    let mut workers = Vec::new();
    for id in ["host-a", "host-b"] {
        let mut cmd = Command::new(bin("worker"));
        cmd.args(["--listen", "127.0.0.1:0", "--worker-id", id, "--cpu", "4", "--memory-mb", "2048"])
            .arg("--ch-binary")
            .arg(bin("ch-sim"))
            .arg("--run-dir")
            .arg(d.join("run").join(id))
            .arg("--store-root")
            .arg(host_root(&h, id))
            .args(["--closure-source", &cache.url(), "--cache-public-key", &public_key])
            .args(["--control-plane", &cp.addr])
            .envs(h.env());
        workers.push(Proc::spawn(id, cmd));
    }

    let mut cmd = Command::new(bin("ci_service"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.join("ci"))
        .arg("--nix-conf-dir")
        .arg(h.conf_dir())
        .args(["--cache", &cache.url(), "--control-plane", &cp.addr])
        .arg("--cache-token-file")
        .arg(d.join("token"));
    let ci = Proc::spawn("ci_service", cmd);
    Cluster { h, cache, cp, workers, ci, public_key }
}

fn narinfo_status(cache: &str, store_path: &str) -> u16 {
    let hash = &store_path["/nix/store/".len().."/nix/store/".len() + 32];
    get(&format!("{cache}/{hash}.narinfo")).0.as_u16()
}

fn spec_roots(job: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    job["vm_specs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let spec: commands::types::VmSpec = serde_json::from_value(s.clone()).unwrap();
            (spec.name().to_string(), spec.store_roots().into_iter().map(str::to_owned).collect())
        })
        .collect()
}

fn in_store(root: &Path, store_path: &str) -> bool {
    root.join(store_path.trim_start_matches('/')).exists()
}

#[test]
fn push_to_running_vms_and_back() {
    let c = start();
    let ci = c.ci.url();
    let cp = c.cp.addr.clone();
    let repo = Repo::new(c.h.dir(), &ci);
    assert!(!c.public_key.is_empty());

    // 1. Push the hermetic example: job succeeds, generation 1.
    let (c1, hook_out) = repo.push();
    assert!(hook_out.contains("queued"), "{hook_out}");
    let id = job_for(&ci, &c1);
    let job = wait_job(&ci, id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
    assert_eq!(job["generation"], 1);
    let text = log(&ci, id);
    assert!(text.contains("control plane accepted generation 1"), "{text}");

    // 2. Every path the VMs boot is in our cache (signed narinfo served).
    let roots = spec_roots(&job);
    for paths in roots.values() {
        for p in paths {
            assert_eq!(narinfo_status(&c.cache.url(), p), 200, "{p} not in the cache");
        }
    }

    // 3. Generation 1 active, 100 % converged, every VM running.
    let placed = wait_converged(&cp, 1, Duration::from_secs(60));
    assert_eq!(placed.keys().cloned().collect::<Vec<_>>(), ["db-0", "web-0", "web-1"]);

    // 4. Each simulated host's store holds the closures of its VMs (pulled
    // from the cache), and not those of VMs it does not run... unless
    // shared (kernel and initrd are).
    for (name, (_, worker)) in &placed {
        for p in &roots[name] {
            assert!(in_store(&host_root(&c.h, worker), p), "{p} (for {name}) missing on {worker}");
        }
    }

    // 5. Change one VM: only it is replaced.
    let (c2, _) = repo.change_and_push("hello from db v1", "hello from db v2", "db says v2");
    let id2 = job_for(&ci, &c2);
    let job2 = wait_job(&ci, id2, Duration::from_secs(120));
    assert_eq!(job2["state"], "succeeded", "{job2}\n{}", log(&ci, id2));
    assert_eq!(job2["generation"], 2);
    let placed2 = wait_converged(&cp, 2, Duration::from_secs(60));
    assert_ne!(placed2["db-0"].0, placed["db-0"].0, "db-0 was replaced");
    assert_eq!(placed2["web-0"], placed["web-0"], "web-0 untouched");
    assert_eq!(placed2["web-1"], placed["web-1"], "web-1 untouched");

    // 6. An evaluation error, then a build failure: jobs fail with useful
    // logs; the active generation and every VM stay.
    let (c3, _) = repo.change_and_push("replicas = 2;", "replicas = \"two\";", "bad replicas");
    let job3 = wait_job(&ci, job_for(&ci, &c3), Duration::from_secs(60));
    assert_eq!(job3["state"], "failed");
    assert!(job3["error"].as_str().unwrap().contains("replicas"), "{job3}");
    git(&repo.work, &["revert", "--no-edit", "HEAD"]);
    let (c4, _) = repo.change_and_push("failBuild = false;", "failBuild = true;", "break web");
    let id4 = job_for(&ci, &c4);
    let job4 = wait_job(&ci, id4, Duration::from_secs(60));
    assert_eq!(job4["state"], "failed");
    assert!(log(&ci, id4).contains("build failed on purpose"));
    let s = status(&cp).unwrap();
    assert_eq!(s.active.unwrap().number, 2);
    assert_eq!(wait_converged(&cp, 2, Duration::from_secs(5)), placed2, "no VM touched by failed pushes");

    // 7. Restart the control plane on the same address: ci_service
    // re-publishes generation 2 and nothing restarts.
    let mut cluster = c;
    let addr = cluster.cp.addr.clone();
    cluster.cp.kill();
    cluster.cp = wait_for("the control plane to restart on its port", Duration::from_secs(10), || {
        std::panic::catch_unwind(|| start_control_plane(&addr)).ok()
    });
    let placed3 = wait_converged(&addr, 2, Duration::from_secs(60));
    assert_eq!(placed3, placed2, "a control-plane restart restarts no VM");
    let health = get_json(&format!("{ci}/healthz"));
    assert!(health["republished"].as_u64().unwrap() >= 2, "{health}");
    drop(cluster.workers);
}
