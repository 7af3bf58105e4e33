//! Rollouts with the real binaries: `control_plane` + 2 × `worker
//! --control-plane` on `ch-sim`, whose guest prints `READY` (or does not)
//! as its kernel command line says (`pcr.sim.ready=MS`). Six replicas of
//! group `web`, `maxParallel = 2`, `minHealthyMs = 1500`, a `READY` check
//! with a 3 s deadline and `autoRevert`.
//!
//! 1. generation 1 comes up at once (nothing to protect) and is "rolled";
//! 2. generation 2 (good) rolls batch by batch: the replicas switch in
//!    name order, two at a time, each batch at least minHealthyMs after the
//!    previous one, and `pcr status` shows the batch;
//! 3. generation 3 (good), the control plane is killed mid-rollout and
//!    restarted, generation 3 re-published: the rollout carries on where the
//!    workers are, no VM on generation 3 is restarted, and exactly six
//!    creates happen for the whole rollout;
//! 4. generation 4 (its guest never prints READY) stops after the first
//!    batch and reverts it to generation 3; the other replicas never run
//!    generation 4;
//! 5. generation 5 (its guest crashes 600 ms after boot, after READY),
//!    without autoRevert: paused after the first batch, the others stay on
//!    generation 3.
//!
//! The binaries of other packages (worker, ch-sim, pcr, pcr-test) are found
//! next to this package's `control_plane` binary (`cargo build --workspace
//! --bins`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::cluster::{Cluster, ClusterOpts, WorkerOpts};
use testkit::fixtures::{INITRD, KERNEL, TOPLEVEL};
use testkit::services::ControlPlaneArgs;
use testkit::{bin, wait_until};

const STEP: Duration = Duration::from_secs(60);
const MIN_HEALTHY_MS: u64 = 1500;
const REPLICAS: usize = 6;
const MAX_PARALLEL: usize = 2;
const WORKERS: [&str; 2] = ["w1", "w2"];

fn start_cluster() -> Cluster {
    let mut opts = ClusterOpts::new(
        WORKERS
            .iter()
            .map(|id| WorkerOpts::quick(id, 8, 4096))
            .collect(),
    );
    opts.control_plane = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(3000),
        startup_grace_ms: 1000,
        long_poll_timeout_ms: Some(5000),
        ..ControlPlaneArgs::default()
    };
    opts.fixture_store = true;
    Cluster::start(opts, |_, real| real.to_owned())
}

/// Waits until both workers are registered and healthy.
fn wait_for_workers(cp: &str) {
    wait_until(STEP, "2 healthy workers", || {
        let w = json_of("pcr", cp, &["workers"]);
        (w.as_array()
            .unwrap()
            .iter()
            .filter(|w| w["healthy"] == true)
            .count()
            == 2)
            .then_some(())
    });
}

fn run(tool: &str, cp: &str, args: &[&str]) -> String {
    let out = Command::new(bin(tool))
        .arg("--control-plane")
        .arg(cp)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(tool: &str, cp: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = run(tool, cp, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{tool} {args:?}: {e}: {out}"))
}

/// A guest that prints READY 200 ms after boot.
const GOOD: &str = " pcr.sim.ready=200";

/// Writes generation `version`'s specs: six `web` replicas whose guest
/// behaves as `guest` (ch-sim's kernel command line words) says.
fn write_generation(dir: &Path, version: &str, guest: &str, auto_revert: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..REPLICAS {
        let name = format!("web-{i}");
        let hash = format!("{version}-{name}");
        let spec = json!({
            "name": name, "toplevel": TOPLEVEL, "kernelPath": KERNEL, "initrdPath": INITRD,
            "cmdline": format!("console=ttyS0 build={hash}{guest}"), "cpu": 1, "memoryMb": 128,
            "contentHash": hash, "labels": { "group": "web" },
            "healthCheck": { "consoleLine": "READY", "deadlineMs": 3000 },
            "update": { "group": "web", "maxParallel": MAX_PARALLEL, "minHealthyMs": MIN_HEALTHY_MS, "autoRevert": auto_revert },
        });
        std::fs::write(dir.join(format!("{name}.json")), spec.to_string()).unwrap();
    }
}

fn publish(cp: &str, generation: u64, specs: &Path) {
    let g = generation.to_string();
    run(
        "pcr-test",
        cp,
        &[
            "publish-state",
            "--commit",
            &format!("c{g}"),
            "--generation",
            &g,
            "--specs",
            specs.to_str().unwrap(),
        ],
    );
}

/// One instance a worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Vm {
    id: String,
    pid: u64,
    version: String,
    state: String,
}

/// name → every instance under it, on both workers.
fn instances(cp: &str) -> BTreeMap<String, Vec<Vm>> {
    let mut out: BTreeMap<String, Vec<Vm>> = BTreeMap::new();
    for w in WORKERS {
        for vm in json_of("pcr-test", cp, &["worker", w, "list-vms"])
            .as_array()
            .unwrap()
        {
            let hash = vm["contentHash"].as_str().unwrap();
            out.entry(vm["name"].as_str().unwrap().to_owned())
                .or_default()
                .push(Vm {
                    id: vm["id"].as_str().unwrap().to_owned(),
                    pid: vm["pid"].as_u64().unwrap_or(0),
                    version: hash.split('-').next().unwrap().to_owned(),
                    state: vm["state"].as_str().unwrap().to_owned(),
                });
        }
    }
    out
}

/// Whether every replica runs exactly one instance, of `version`.
/// Polls until generation `generation`'s rollout line starts with
/// `outcome` and `settled` holds for the replicas, asserting all along that
/// the replicas past the first batch (web-2 onwards) never leave `old`;
/// returns `pcr status` then.
fn wait_outcome(
    cp: &str,
    generation: u64,
    outcome: &str,
    old: &str,
    settled: impl Fn(&BTreeMap<String, Vec<Vm>>) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let vms = instances(cp);
        for (name, v) in &vms {
            if !["web-0", "web-1"].contains(&name.as_str()) {
                assert!(
                    v.iter().all(|i| i.version == old),
                    "{name} left the old version {old}: {vms:?}"
                );
            }
        }
        let s = status(cp);
        if rollout_line(&s, generation).is_some_and(|l| l.starts_with(outcome)) && settled(&vms) {
            return s;
        }
        assert!(
            start.elapsed() < STEP,
            "generation {generation} never {outcome}: {s}\n{vms:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_on(vms: &BTreeMap<String, Vec<Vm>>, version: &str) -> bool {
    vms.len() == REPLICAS
        && vms
            .values()
            .all(|v| v.len() == 1 && v[0].version == version && v[0].state == "running")
}

fn status(cp: &str) -> Value {
    json_of("pcr", cp, &["status"])
}

/// The rollout outcome of the active generation `generation`.
fn rollout_line(s: &Value, generation: u64) -> Option<String> {
    let g = &s["generations"][0];
    (g["number"].as_u64() == Some(generation)).then(|| g["rollout"].as_str().unwrap().to_owned())
}

fn count_creates(c: &Cluster) -> usize {
    WORKERS
        .iter()
        .map(|id| {
            std::fs::read_to_string(c.log(id))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("reconcile: create"))
                .count()
        })
        .sum()
}

/// Polls until generation `generation` is rolled, noting when each
/// replica was first seen running only `version` and every rollout row
/// `pcr status` showed. Panics if the replicas that run `version` are ever
/// not the first ones by name (the rollout's order).
fn watch_rollout(
    cp: &str,
    generation: u64,
    version: &str,
) -> (BTreeMap<String, Instant>, Vec<String>) {
    let mut switched: BTreeMap<String, Instant> = BTreeMap::new();
    let mut rows = Vec::new();
    let deadline = Instant::now() + STEP;
    loop {
        let vms = instances(cp);
        let now = Instant::now();
        let touched: Vec<&String> = vms
            .iter()
            .filter(|(_, v)| v.iter().any(|i| i.version == version))
            .map(|(n, _)| n)
            .collect();
        // Batches go in name order; within a batch the replicas start
        // together, so which of them a worker creates first is free.
        let batches = touched.len().div_ceil(MAX_PARALLEL);
        let names: Vec<&String> = vms.keys().collect();
        let (done, current) = names.split_at((batches.max(1) - 1) * MAX_PARALLEL);
        let current = &current[..MAX_PARALLEL.min(current.len())];
        assert!(
            done.iter().all(|n| touched.contains(n))
                && touched
                    .iter()
                    .all(|n| done.contains(n) || current.contains(n)),
            "replicas are replaced batch by batch in name order ({MAX_PARALLEL} at a time): {vms:?}"
        );
        for (name, v) in &vms {
            if v.len() == 1 && v[0].version == version && v[0].state == "running" {
                switched.entry(name.clone()).or_insert(now);
            }
        }
        let s = status(cp);
        for r in s["rollouts"].as_array().unwrap() {
            let row = format!(
                "{} {}/{} {}/{}",
                r["state"].as_str().unwrap(),
                r["batch"],
                r["batches"],
                r["healthy"],
                r["total"]
            );
            if rows.last() != Some(&row) {
                rows.push(row);
            }
        }
        if rollout_line(&s, generation).as_deref() == Some("rolled") && all_on(&vms, version) {
            return (switched, rows);
        }
        assert!(
            now < deadline,
            "generation {generation} did not roll out: {s}\n{vms:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The replicas in the order they switched.
fn order(switched: &BTreeMap<String, Instant>) -> Vec<&str> {
    let mut v: Vec<(&Instant, &str)> = switched.iter().map(|(n, t)| (t, n.as_str())).collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

#[test]
fn rollouts_go_batch_by_batch_survive_a_restart_and_revert_a_bad_version() {
    let mut c = start_cluster();
    let cp = c.cp.addr.clone();
    let dir = c.dir().to_owned();
    wait_for_workers(&cp);

    // ---- 1: the first generation has nothing to protect -----------------
    write_generation(&dir.join("g1"), "v1", GOOD, true);
    publish(&cp, 1, &dir.join("g1"));
    wait_until(STEP, "generation 1 rolled", || {
        (all_on(&instances(&cp), "v1")
            && rollout_line(&status(&cp), 1).as_deref() == Some("rolled"))
        .then_some(())
    });

    // ---- 2: a good version rolls two at a time ---------------------------
    write_generation(&dir.join("g2"), "v2", GOOD, true);
    publish(&cp, 2, &dir.join("g2"));
    let (switched, rows) = watch_rollout(&cp, 2, "v2");
    let seen = order(&switched);
    let batches: Vec<Vec<&str>> = seen
        .chunks(2)
        .map(|c| {
            let mut c = c.to_vec();
            c.sort_unstable();
            c
        })
        .collect();
    assert_eq!(
        batches,
        [["web-0", "web-1"], ["web-2", "web-3"], ["web-4", "web-5"]],
        "replicas switch in name order, two at a time: {seen:?}"
    );
    for pair in [["web-1", "web-2"], ["web-3", "web-4"]] {
        // The next batch starts only after the previous one stayed healthy
        // for minHealthyMs (its first member switched after that, less the
        // 100 ms polling step).
        let gap = switched[pair[1]].saturating_duration_since(switched[pair[0]]);
        assert!(
            gap >= Duration::from_millis(MIN_HEALTHY_MS - 200),
            "{} switched {gap:?} after {}: {switched:?}",
            pair[1],
            pair[0]
        );
    }
    assert!(
        rows.iter().any(|r| r.starts_with("rolling 2/3")),
        "pcr status showed the batches: {rows:?}"
    );
    let text = run("pcr", &cp, &["status"]);
    assert!(
        text.contains("generation:  default/2 (commit c2), rolled"),
        "{text}"
    );

    // ---- 3: a restart mid-rollout carries on without restarting VMs -----
    let creates_before = count_creates(&c);
    write_generation(&dir.join("g3"), "v3", GOOD, true);
    publish(&cp, 3, &dir.join("g3"));
    // Kill the control plane once the first batch is done and the second
    // is under way.
    let before = wait_until(STEP, "generation 3's second batch", || {
        let vms = instances(&cp);
        let on_v3 = |n: &str| {
            vms.get(n)
                .is_some_and(|v| v.iter().any(|i| i.version == "v3"))
        };
        let second = status(&cp)["rollouts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["batch"] == 2);
        (second && on_v3("web-0") && on_v3("web-1") && on_v3("web-2")).then_some(vms)
    });
    c.restart_cp(1000);
    wait_for_workers(&cp);
    publish(&cp, 3, &dir.join("g3"));
    let (switched, _) = watch_rollout(&cp, 3, "v3");
    let after = instances(&cp);
    for (name, vms) in &before {
        for vm in vms.iter().filter(|v| v.version == "v3") {
            let now = &after[name][0];
            assert_eq!(
                now.id, vm.id,
                "{name}'s generation 3 VM was replaced across the control plane's restart"
            );
            if vm.state == "running" {
                assert_eq!(now.pid, vm.pid, "{name}'s CH process was restarted");
            }
        }
    }
    assert_eq!(
        count_creates(&c) - creates_before,
        REPLICAS,
        "one create per replica for the whole rollout"
    );
    let mut last = order(&switched)[4..].to_vec();
    last.sort_unstable();
    assert_eq!(
        last,
        ["web-4", "web-5"],
        "the last batch came last: {switched:?}"
    );

    // ---- 4: a bad version stops after one batch and reverts it ----------
    write_generation(&dir.join("g4"), "v4", "", true);
    publish(&cp, 4, &dir.join("g4"));
    let reverted = wait_outcome(&cp, 4, "reverted: ", "v3", |vms| all_on(vms, "v3"));
    let r = &reverted["rollouts"][0];
    assert_eq!(r["state"], "reverted");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("web-0 unhealthy") || reason.starts_with("web-1 unhealthy"),
        "{reason}"
    );
    let text = run("pcr", &cp, &["status"]);
    assert!(text.contains("rollouts:    1"), "{text}");
    assert!(
        text.contains("default/web generation 4: reverted, batch 1/3"),
        "{text}"
    );
    // It stays reverted: the untouched replicas are still held a while later.
    std::thread::sleep(Duration::from_millis(2 * MIN_HEALTHY_MS));
    assert!(all_on(&instances(&cp), "v3"));

    // ---- 5: a version that crashes after passing its check pauses -------
    // Without autoRevert the failed batch stays as it is (its worker keeps
    // retrying it) and the rollout goes no further.
    write_generation(
        &dir.join("g5"),
        "v5",
        " pcr.sim.ready=200 pcr.sim.crash_after_ms=600",
        false,
    );
    publish(&cp, 5, &dir.join("g5"));
    let paused = wait_outcome(&cp, 5, "paused: ", "v3", |_| true);
    let reason = paused["rollouts"][0]["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("web-0 ") || reason.starts_with("web-1 "),
        "{reason}"
    );
    std::thread::sleep(Duration::from_millis(2 * MIN_HEALTHY_MS));
    let vms = instances(&cp);
    for name in ["web-2", "web-3", "web-4", "web-5"] {
        assert!(
            vms[name]
                .iter()
                .all(|i| i.version == "v3" && i.state == "running"),
            "{name}: {vms:?}"
        );
    }
    assert_eq!(status(&cp)["rollouts"][0]["state"], "paused");
}
