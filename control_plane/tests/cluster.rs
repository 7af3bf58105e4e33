//! The whole loop with the real binaries: `control_plane` + 3 × `worker
//! --control-plane` running VMs on `ch-sim`, driven with `pcr-test` and
//! inspected with `pcr`.
//!
//! 1. generation 1 with 6 VMs → 100% converged;
//! 2. generation 2 changing 2 specs → exactly those 2 CH processes are
//!    replaced (pids compared), no other restarts;
//! 3. a worker is killed → its VMs come up on the others shortly after the
//!    heartbeat threshold;
//! 4. the control plane restarts and the generation is re-published → zero
//!    create/delete actions on the workers (pids and reconciler logs).
//!
//! Every service checks tokens (testkit's `ClusterOpts::tokens`): each
//! worker registers, and re-registers after its restart, with its own
//! `worker:<id>` token, and the CLIs are admin.
//!
//! The binaries of other packages (worker, ch-sim, pcr, pcr-test) are found
//! next to this package's `control_plane` binary; `cargo nextest run
//! --workspace` (or `cargo build --workspace`) builds them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::cluster::{Cluster, ClusterOpts, WorkerOpts};
use testkit::fixtures::write_specs;
use testkit::process::kill_mentioning;
use testkit::services::ControlPlaneArgs;
use testkit::{alive, bin, wait_until};

const HEARTBEAT_TIMEOUT_MS: u64 = 1500;

/// How long each step may take to be seen.
const STEP: Duration = Duration::from_secs(30);

/// The control plane (1 s startup grace, 5 s long-polls) and three workers
/// (8 CPUs, 4 GiB, heartbeats every 200 ms) with the fixture store.
fn start_cluster(ids: &[&'static str]) -> Cluster {
    let mut opts = ClusterOpts::new(
        ids.iter()
            .map(|id| WorkerOpts::quick(id, 8, 4096))
            .collect(),
    );
    opts.control_plane = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(HEARTBEAT_TIMEOUT_MS),
        startup_grace_ms: 1000,
        long_poll_timeout_ms: Some(5000),
        ..ControlPlaneArgs::default()
    };
    opts.fixture_store = true;
    // Real tokens: each worker registers (and re-registers after its
    // restart) with its own `worker:<id>` token; the CLIs are admin.
    opts.tokens = true;
    let c = Cluster::start(opts, |_, real| real.to_owned());
    ADMIN_TOKEN_FILE
        .set(c.admin_token_file().expect("a cluster with tokens"))
        .expect("one cluster per test binary");
    c
}

/// The admin token file of the one cluster of this test, for the CLIs.
static ADMIN_TOKEN_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// A CLI against the control plane, as admin.
fn cli(tool: &str) -> Command {
    let mut cmd = Command::new(bin(tool));
    cmd.env(
        "PCR_TOKEN_FILE",
        ADMIN_TOKEN_FILE.get().expect("the cluster started"),
    )
    .env_remove("PCR_TOKEN");
    cmd
}

/// Runs a CLI; stdout on success, panics with stderr otherwise.
fn run(tool: &str, cp: &str, args: &[&str]) -> String {
    let out = cli(tool)
        .arg("--control-plane")
        .arg(cp)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `pcr-test publish-state` of the specs in `specs` as generation
/// `generation` of `commit`; its output.
fn publish(cp: &str, commit: &str, generation: u64, specs: &Path) -> String {
    let generation = generation.to_string();
    let specs = specs.to_str().unwrap();
    let args = [
        "publish-state",
        "--commit",
        commit,
        "--generation",
        &generation,
        "--specs",
        specs,
    ];
    run("pcr-test", cp, &args)
}

fn json(tool: &str, cp: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = run(tool, cp, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{tool} {args:?}: {e}: {out}"))
}

/// name → (vm id, pid) of every VM on the given workers, through the
/// control plane's getWorker proxy.
fn vms_by_name(cp: &str, workers: &[&str]) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for w in workers {
        for vm in json("pcr-test", cp, &["worker", w, "list-vms"])
            .as_array()
            .unwrap()
        {
            let name = vm["name"].as_str().unwrap().to_owned();
            let prev = out.insert(
                name.clone(),
                (
                    vm["id"].as_str().unwrap().to_owned(),
                    vm["pid"].as_u64().unwrap_or(0),
                ),
            );
            assert!(prev.is_none(), "{name} runs twice");
        }
    }
    out
}

/// The entries of the JSON array `items` by their string field `key`.
fn keyed<'a, T>(
    items: &'a Value,
    key: &str,
    value: impl Fn(&'a Value) -> T,
) -> BTreeMap<&'a str, T> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v[key].as_str().unwrap(), value(v)))
        .collect()
}

/// Whether `pred` holds for every VM of the status `s`.
fn all_vms(s: &Value, pred: impl Fn(&Value) -> bool) -> bool {
    s["vms"].as_array().unwrap().iter().all(pred)
}

fn converged(cp: &str, generation: u64, expect_vms: usize) -> Option<Value> {
    let s = json("pcr", cp, &["status"]);
    let ok = s["generations"][0]["number"].as_u64() == Some(generation)
        && s["convergencePercent"].as_f64() == Some(100.0)
        && s["vms"].as_array().is_some_and(|v| v.len() == expect_vms);
    ok.then_some(s)
}

fn count_actions(c: &Cluster, ids: &[&str]) -> usize {
    ids.iter()
        .map(|id| {
            let log = std::fs::read_to_string(c.log(id)).unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("reconcile: create") || l.contains("reconcile: delete"))
                .count()
        })
        .sum()
}

#[test]
fn three_workers_converge_replace_fail_over_and_survive_a_control_plane_restart() {
    let ids = ["w1", "w2", "w3"];
    let mut c = start_cluster(&ids);
    // Without a token the control plane lets nobody in.
    let anonymous = Command::new(bin("pcr"))
        .args(["--control-plane", &c.cp.addr, "status"])
        .env_remove("PCR_TOKEN")
        .env_remove("PCR_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("no token was given"),
        "{anonymous:?}"
    );
    let dir = c.dir().to_owned();
    let dir = dir.as_path();
    let cp = c.cp.addr.clone();

    wait_until(STEP, "3 healthy workers", || {
        let w = json("pcr", &cp, &["workers"]);
        (w.as_array()
            .unwrap()
            .iter()
            .filter(|w| w["healthy"] == true)
            .count()
            == 3)
            .then_some(())
    });

    // ---- generation 1: 6 VMs, fully converged --------------------------
    let names = ["web-0", "web-1", "web-2", "api-0", "api-1", "api-2"];
    write_specs(&dir.join("gen1"), &names, |n| format!("g1-{n}"));
    let out = publish(&cp, "c1", 1, &dir.join("gen1"));
    assert_eq!(
        out.trim(),
        "project default generation 1: published; 6 placed, 0 unplaced"
    );
    let status = wait_until(STEP, "generation 1 converged", || converged(&cp, 1, 6));
    // Replicas of a group are spread: each worker runs one web and one api.
    for w in &ids {
        let on: Vec<&str> = status["vms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["workerId"] == *w)
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(on.len(), 2, "{w} runs {on:?}");
        assert!(
            on.iter().any(|n| n.starts_with("web")) && on.iter().any(|n| n.starts_with("api")),
            "{w}: {on:?}"
        );
    }
    let text = run("pcr", &cp, &["status"]);
    assert!(
        text.contains("generation:  default/1 (commit c1)"),
        "{text}"
    );
    assert!(text.contains("converged:   100.0%"), "{text}");
    assert!(text.contains("workers:     3/3 healthy"), "{text}");
    assert!(!text.contains('\x1b'), "no colour when not on a terminal");
    let vms_table = run("pcr", &cp, &["vms"]);
    assert!(vms_table.starts_with("PROJECT  NAME"), "{vms_table}");
    assert_eq!(
        vms_table
            .lines()
            .filter(|l| l.contains(" converged "))
            .count(),
        6,
        "{vms_table}"
    );
    let before = vms_by_name(&cp, &ids);
    assert_eq!(before.len(), 6);

    // ---- generation 2: 2 specs change → exactly 2 replaced ---------------
    let changed = ["web-1", "api-2"];
    write_specs(&dir.join("gen2"), &names, |n| {
        if changed.contains(&n) {
            format!("g2-{n}")
        } else {
            format!("g1-{n}")
        }
    });
    let t = Instant::now();
    publish(&cp, "c2", 2, &dir.join("gen2"));
    let status = wait_until(STEP, "generation 2 converged", || {
        converged(&cp, 2, 6).filter(|s| all_vms(s, |v| v["observedHash"] == v["desiredHash"]))
    });
    eprintln!("generation 2 converged in {:?}", t.elapsed());
    let after = vms_by_name(&cp, &ids);
    for name in names {
        let (old, new) = (&before[name], &after[name]);
        if changed.contains(&name) {
            assert_ne!(old.1, new.1, "{name} was not replaced");
            assert!(
                !alive(old.1 as u32),
                "{name}'s old CH process {} still runs",
                old.1
            );
        } else {
            assert_eq!(
                old, new,
                "{name} restarted although its spec did not change"
            );
        }
    }
    let hashes = keyed(&status["vms"], "name", |v| {
        v["observedHash"].as_str().unwrap()
    });
    assert_eq!(hashes["web-1"], "g2-web-1");

    // ---- metrics reach the status; a crashed CH process is recreated ---------
    wait_until(STEP, "RSS metrics of every VM", || {
        let s = json("pcr", &cp, &["status"]);
        all_vms(&s, |v| v["metrics"]["rssBytes"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let (crashed_id, crashed_pid) = after["api-0"].clone();
    let _ = Command::new("kill")
        .arg("-9")
        .arg(crashed_pid.to_string())
        .status();
    wait_until(STEP, "api-0 recreated after its CH process died", || {
        let now = vms_by_name(&cp, &ids);
        now.get("api-0")
            .filter(|(id, pid)| *id != crashed_id && *pid != 0 && alive(*pid as u32))
            .map(|_| ())
    });
    let status = wait_until(STEP, "converged after the recreation", || {
        converged(&cp, 2, 6)
    });

    // ---- kill a worker: its VMs move to the others --------------------------
    let victim = status["vms"].as_array().unwrap()[0]["workerId"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim_vms: Vec<String> = status["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["workerId"] == victim.as_str())
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let killed_at = Instant::now();
    c.kill_worker(&victim);
    // A dead host takes its VMs with it.
    kill_mentioning(&c.run_dir(&victim).display().to_string());
    let survivors: Vec<&str> = ids.iter().copied().filter(|w| *w != victim).collect();
    let status = wait_until(STEP, "VMs of the dead worker running elsewhere", || {
        converged(&cp, 2, 6).filter(|s| all_vms(s, |v| v["workerId"] != victim.as_str()))
    });
    let took = killed_at.elapsed();
    eprintln!("failover of {victim_vms:?} took {took:?}");
    assert!(
        took < Duration::from_millis(HEARTBEAT_TIMEOUT_MS + 5000),
        "failover took {took:?}"
    );
    let health = keyed(&status["workers"], "workerId", |w| {
        w["healthy"].as_bool().unwrap()
    });
    assert!(!health[victim.as_str()]);
    let workers_table = run("pcr", &cp, &["workers"]);
    assert!(workers_table.contains("unhealthy"), "{workers_table}");
    let before_restart = vms_by_name(&cp, &survivors);
    assert_eq!(before_restart.len(), 6);

    // ---- restart the control plane and re-publish: nothing restarts ----------
    let actions_before = count_actions(&c, &ids);
    c.restart_cp(1000);
    assert_eq!(c.cp.addr, cp);
    // CI re-publishes as soon as the control plane is back, before the
    // workers re-registered: that placement is blind, and must not win.
    let out = publish(&cp, "c2", 2, &dir.join("gen2"));
    assert!(
        out.starts_with("project default generation 2: published;"),
        "{out}"
    );
    wait_until(STEP, "workers re-registered with their VMs", || {
        let w = json("pcr", &cp, &["workers"]);
        let ready = w
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["healthy"] == true && w["vmCount"].as_u64() == Some(3))
            .count();
        (ready == 2).then_some(())
    });
    wait_until(STEP, "converged after the restart", || converged(&cp, 2, 6));
    // Give the reconcilers time to act if they (wrongly) were going to.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        vms_by_name(&cp, &survivors),
        before_restart,
        "a VM restarted"
    );
    assert_eq!(
        count_actions(&c, &ids),
        actions_before,
        "the restart caused create/delete actions"
    );
    let repeat = publish(&cp, "c2", 2, &dir.join("gen2"));
    assert!(repeat.contains("unchanged"), "{repeat}");

    // ---- the remaining CLI views ----------------------------------------------
    let gens = run("pcr", &cp, &["generation"]);
    assert!(
        gens.lines()
            .next()
            .unwrap()
            .starts_with("PROJECT  GENERATION"),
        "{gens}"
    );
    assert!(gens.contains("2 *"), "{gens}");
    let asg = run("pcr-test", &cp, &["get-assignment", survivors[0]]);
    assert!(
        asg.starts_with(&format!("worker {} generation 2", survivors[0])),
        "{asg}"
    );
    assert_eq!(asg.lines().count(), 4, "3 VMs listed: {asg}");
    let read = run("pcr-test", &cp, &["worker", survivors[0], "read"]);
    assert!(
        read.starts_with(&format!("worker {} ", survivors[0])) && read.contains("vms=3"),
        "{read}"
    );
    let cs = json("pcr-test", &cp, &["cluster-status"]);
    assert_eq!(cs["convergencePercent"], 100.0);
    let err = cli("pcr-test")
        .args(["--control-plane", &cp, "worker", "nope", "read"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert_eq!(
        String::from_utf8_lossy(&err.stderr).trim(),
        "error: not found: unknown worker nope"
    );
}
