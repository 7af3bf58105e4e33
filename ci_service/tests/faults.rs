//! Fault injection on the whole loop with the real binaries (cache,
//! control plane, two workers on ch-sim, ci_service, a real git push), one
//! scenario per test: kill -9 of each service at a random point of the
//! push → converge path (CI mid-job, cache mid-upload, control plane
//! mid-publish, worker mid-create, a CH process mid-boot), a network cut
//! between a worker and the control plane, a full disk under the cache,
//! and a CH that hangs on `vm.shutdown`. After each, `check_invariants`:
//! the last good generation is active and converged, each worker runs
//! exactly one CH process per VM placed on it, `cache verify` is clean,
//! and every push has a final job.
//!
//! Random points come from a seeded RNG whose seed is printed;
//! `PCR_FAULT_SEED=N` replays a run.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::cluster::{active_default, status, wait_converged};
use common::{get_json, job_for, log, wait_job, wait_until};
use support::*;

fn two_workers() -> Vec<WorkerOpts> {
    vec![worker("host-a"), worker("host-b")]
}

fn direct(_: &str, cp: &str) -> String {
    cp.to_owned()
}

/// The last line of job `id`'s log: where the job was when a fault hit.
fn phase(ci: &str, id: i64) -> String {
    log(ci, id)
        .lines()
        .last()
        .unwrap_or("(empty log)")
        .to_owned()
}

/// Waits until job `id`'s log contains `needle`.
fn wait_log(ci: &str, id: i64, needle: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("job {id} to log {needle:?}"),
        || log(ci, id).contains(needle).then_some(()),
    );
}

#[test]
fn ci_killed_at_a_random_point_of_a_job_resumes_it() {
    let mut rng = Rng::from_env("ci");
    let mut c = start(two_workers(), direct);
    let ci = c.ci_url();
    // Bigger images make the job last ~1 s here (eval, build, upload).
    let commit = c.push_big_change(&format!("ci-{}", rng.next()), 24);
    let id = job_for(&ci, &commit);
    let delay = rng.millis(0, 1000);
    std::thread::sleep(delay);
    let at = phase(&ci, id);
    c.restart_ci();
    eprintln!("killed ci_service {delay:?} after the push, at: {at}");
    let job = wait_job(&ci, id, Duration::from_secs(90));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
    assert_eq!(job["generation"], 2);
    c.check_invariants(&[commit]);
}

#[test]
fn cache_killed_mid_upload_fails_or_finishes_the_job_and_stays_consistent() {
    let mut rng = Rng::from_env("cache");
    let mut c = start(two_workers(), direct);
    let ci = c.ci_url();
    let commit = c.push_big_change(&format!("cache-{}", rng.next()), 24);
    let id = job_for(&ci, &commit);
    wait_log(&ci, id, "copying the closure");
    let delay = rng.millis(0, 500);
    std::thread::sleep(delay);
    let at = phase(&ci, id);
    c.restart_cache();
    eprintln!("killed the cache {delay:?} into the upload, at: {at}");
    let job = wait_job(&ci, id, Duration::from_secs(90));
    match job["state"].as_str() {
        Some("succeeded") => {}
        Some("failed") => {
            let err = job["error"].as_str().unwrap_or_default();
            assert!(
                err.contains("upload") || err.contains("cache") || err.contains("pin"),
                "a failed upload says so: {job}"
            );
            assert!(
                log(&ci, id).contains("the active generation is unchanged"),
                "{}",
                log(&ci, id)
            );
            assert_eq!(active_default(&c.cp.addr), Some(1));
        }
        other => panic!("job {id} ended {other:?}: {job}"),
    }
    // What a half-finished upload left is invisible: verify is clean now,
    // and the next push uploads and converges.
    c.cache_verify();
    let (generation, _) = c.push_and_converge(&format!("cache-after-{}", rng.next()));
    assert!(generation >= 2);
    let last = c.repo.head();
    c.check_invariants(&[commit, last]);
}

#[test]
fn control_plane_killed_mid_publish_gets_the_generation_back() {
    let mut rng = Rng::from_env("control-plane");
    let mut c = start(two_workers(), direct);
    let ci = c.ci_url();
    let commit = c.push_big_change(&format!("cp-{}", rng.next()), 24);
    let id = job_for(&ci, &commit);
    wait_log(&ci, id, "copying the closure");
    let delay = rng.millis(0, 1500);
    std::thread::sleep(delay);
    let at = phase(&ci, id);
    c.cp.kill();
    let down = rng.millis(0, 1000);
    std::thread::sleep(down);
    c.restart_cp(1000);
    eprintln!("killed the control plane {delay:?} into the upload (at: {at}), down {down:?}");
    let job = wait_job(&ci, id, Duration::from_secs(90));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
    let placed = c.check_invariants(&[commit]);
    assert_eq!(placed.len(), 3);
}

#[test]
fn worker_killed_mid_create_adopts_or_cleans_up() {
    let mut rng = Rng::from_env("worker");
    // Slow boots widen the window in which a create is in flight.
    let workers = two_workers()
        .into_iter()
        .map(|mut o| {
            o.env.push(("CH_SIM_BOOT_DELAY_MS", "400".into()));
            o
        })
        .collect();
    let mut c = start(workers, direct);
    let ci = c.ci_url();
    let before = wait_converged(&c.cp.addr, 1, Duration::from_secs(30));
    let host = before["db-0"].1.clone();
    let commit = c.push_db_change(&format!("worker-{}", rng.next()));
    let id = job_for(&ci, &commit);
    wait_until(Duration::from_secs(60), "generation 2 published", || {
        (active_default(&c.cp.addr)? == 2).then_some(())
    });
    let delay = rng.millis(0, 800);
    std::thread::sleep(delay);
    let run = c.run_dir(&host);
    let chs = ch_pids(&run).len();
    let host: &'static str = c.workers.keys().find(|k| **k == host).copied().unwrap();
    c.restart_worker(host);
    eprintln!(
        "killed worker {host} {delay:?} after generation 2 was published ({chs} CH processes then)"
    );
    let job = wait_job(&ci, id, Duration::from_secs(90));
    assert_eq!(job["state"], "succeeded", "{job}");
    let after = c.check_invariants(&[commit]);
    assert_ne!(after["db-0"].0, before["db-0"].0, "db-0 runs generation 2");
}

#[test]
fn ch_killed_mid_boot_is_recreated_once() {
    let mut rng = Rng::from_env("ch");
    let workers = two_workers()
        .into_iter()
        .map(|mut o| {
            o.env.push(("CH_SIM_BOOT_DELAY_MS", "800".into()));
            o
        })
        .collect();
    let c = start(workers, direct);
    let before = wait_converged(&c.cp.addr, 1, Duration::from_secs(30));
    let run = c.run_dir(&before["db-0"].1);
    let old = ch_pids(&run);
    let commit = c.push_db_change(&format!("ch-{}", rng.next()));
    // The replacement's CH process (make-before-break: a new pid beside
    // the old ones), killed at a random point of its boot.
    let new = wait_until(Duration::from_secs(60), "the new db-0 CH process", || {
        ch_pids(&run).into_iter().find(|p| !old.contains(p))
    });
    let delay = rng.millis(0, 700);
    std::thread::sleep(delay);
    let _ = std::process::Command::new("kill")
        .args(["-9", &new.to_string()])
        .status();
    eprintln!("killed CH pid {new} {delay:?} into its boot");
    let after = c.check_invariants(&[commit]);
    assert!(!alive(new));
    assert_ne!(after["db-0"].0, before["db-0"].0);
}

#[test]
fn network_cut_worker_keeps_vms_cluster_reschedules_and_heals_without_duplicates() {
    // The random point is when the cut heals: before or after the
    // worker's own 10 s call timeout (a resumed session or a new one).
    let mut rng = Rng::from_env("network");
    let mut proxy: Option<Proxy> = None;
    let mut a = worker("host-a");
    a.ip = "127.0.0.2";
    let c = start(vec![a, worker("host-b")], |id, cp| {
        if id == "host-a" {
            let p = Proxy::start("127.0.0.3", cp.to_owned());
            let addr = p.addr.clone();
            proxy = Some(p);
            addr
        } else {
            cp.to_owned()
        }
    });
    let proxy = proxy.unwrap();
    let before = wait_converged(&c.cp.addr, 1, Duration::from_secs(30));
    let on_a: Vec<&String> = before
        .iter()
        .filter(|(_, (_, w))| w == "host-a")
        .map(|(n, _)| n)
        .collect();
    assert!(!on_a.is_empty(), "host-a runs something: {before:?}");
    let a_pids = ch_pids(&c.run_dir("host-a"));
    assert_eq!(a_pids.len(), on_a.len());

    proxy.cut();
    let cut_at = Instant::now();
    // The control plane notices the silence and runs everything on host-b.
    wait_until(
        Duration::from_secs(30),
        "host-a's VMs to run on host-b",
        || {
            let s = status(&c.cp.addr)?;
            let a_down = s
                .workers
                .iter()
                .any(|w| w.worker_id == "host-a" && !w.healthy);
            let all_b = s.convergence_percent >= 100.0
                && s.vms.len() == 3
                && s.vms.iter().all(|v| v.worker_id == "host-b");
            (a_down && all_b).then_some(())
        },
    );
    eprintln!("failover during the cut took {:?}", cut_at.elapsed());
    // Workers keep their VMs while the control plane is away.
    assert_eq!(
        ch_pids(&c.run_dir("host-a")),
        a_pids,
        "host-a stopped VMs during the cut"
    );
    assert_eq!(ch_pids(&c.run_dir("host-b")).len(), 3);
    let hold = rng.millis(0, 11_000);
    std::thread::sleep(hold);
    proxy.heal();
    eprintln!("healed {:?} after the cut", cut_at.elapsed());
    let healed = Instant::now();
    let placed = c.check_invariants(&[c.repo.head()]);
    eprintln!("converged {:?} after healing: {placed:?}", healed.elapsed());
    let s = status(&c.cp.addr).unwrap();
    assert!(
        s.workers.iter().all(|w| w.healthy),
        "host-a is back: {:?}",
        s.workers
    );
}

#[test]
fn full_disk_under_the_cache_fails_the_upload_cleanly() {
    let mut rng = Rng::from_env("disk-full");
    let c = start_with(two_workers(), direct, Some("4m"));
    let ci = c.ci_url();
    let before = wait_converged(&c.cp.addr, 1, Duration::from_secs(30));
    let filler = c.mounts[0].fill();
    let commit = c.push_db_change(&format!("full-{}", rng.next()));
    let id = job_for(&ci, &commit);
    let t = Instant::now();
    let job = wait_job(&ci, id, Duration::from_secs(60));
    let text = log(&ci, id);
    assert_eq!(job["state"], "failed", "{job}\n{text}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "a full disk fails the push quickly (nix hangs retrying 5xx): {:?}",
        t.elapsed()
    );
    let err = job["error"].as_str().unwrap_or_default();
    assert!(err.contains("upload"), "{job}");
    assert!(text.contains("disk is full"), "the log says why:\n{text}");
    assert!(!text.contains(" 500"), "never a 5xx:\n{text}");
    assert_eq!(active_default(&c.cp.addr), Some(1));
    assert_eq!(
        wait_converged(&c.cp.addr, 1, Duration::from_secs(10)),
        before
    );
    c.cache_verify();
    let metrics = String::from_utf8_lossy(&common::get(&format!("{}/metrics", c.cache().url())).1)
        .into_owned();
    assert!(metrics.contains("disk_full"), "{metrics}");

    // Space again: the next push goes through.
    std::fs::remove_file(filler).unwrap();
    let (generation, _) = c.push_and_converge(&format!("full-after-{}", rng.next()));
    assert_eq!(generation, 2);
    let last = c.repo.head();
    c.check_invariants(&[commit, last]);
}

#[test]
fn ch_hanging_on_shutdown_is_killed_and_the_replace_completes() {
    let workers = two_workers()
        .into_iter()
        .map(|mut o| {
            o.env.push(("CH_SIM_HANG", "vm.shutdown".into()));
            o
        })
        .collect();
    let c = start(workers, direct);
    let before = wait_converged(&c.cp.addr, 1, Duration::from_secs(30));
    let run = c.run_dir(&before["db-0"].1);
    let old: Vec<u32> = ch_pids(&run);
    let t = Instant::now();
    let (generation, placed) = c.push_and_converge("hang-on-shutdown");
    assert_eq!(generation, 2);
    assert_ne!(placed["db-0"].0, before["db-0"].0);
    let after = c.check_invariants(&[c.repo.head()]);
    eprintln!("replace with a hanging vm.shutdown took {:?}", t.elapsed());
    let gone: Vec<u32> = old
        .iter()
        .copied()
        .filter(|p| !ch_pids(&run).contains(p))
        .collect();
    assert_eq!(
        gone.len(),
        1,
        "exactly the old db-0's CH was stopped: {old:?}"
    );
    assert_eq!(after, placed);
    let _ = get_json(&format!("{}/healthz", c.ci_url()));
}
