//! Load: 100 concurrent pushes across 10 repositories (10 per repository,
//! each a one-line change that makes a new build) against one ci_service
//! with the real cache and control plane (no workers: this measures the CI
//! path). Prints throughput, job latency (push → final) by outcome, the
//! superseded count, and CPU/RSS of every service from /proc.
//!
//!   cargo build -p ci_service -p cache -p control_plane --bins && \
//!   PCR_BIN_DIR=$PWD/target/debug cargo bench -p ci_service --bench pushes
//!
//! `PCR_PUSH_REPOS` (default 10) and `PCR_PUSHES_PER_REPO` (default 10).

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::cluster::{Cluster, ClusterOpts};
use testkit::process::usage;

/// (CPU ticks, CPU ticks of its reaped children: the nix processes
/// ci_service ran, peak RSS bytes) of `pid`.
fn cpu_rss(pid: u32) -> (u64, u64, u64) {
    let u = usage(pid);
    (u.cpu_ticks, u.children_cpu_ticks, u.peak_rss_bytes)
}

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

fn main() {
    let repos = env_num("PCR_PUSH_REPOS", 10);
    let per_repo = env_num("PCR_PUSHES_PER_REPO", 10);
    // Cache, control plane (3 s heartbeat timeout, no grace) and
    // ci_service; no workers.
    let mut opts = ClusterOpts::new(Vec::new()).with_ci();
    opts.control_plane.heartbeat_timeout_ms = Some(3000);
    opts.cache_key_name = "load-cache-1".to_owned();
    opts.token = "load-token".to_owned();
    let c = Cluster::start(opts, |_, cp| cp.to_owned());
    let d = c.dir().to_owned();
    let (ci, cache, cp) = (c.ci(), c.cache(), &c.cp);
    let url = ci.url();
    let run = format!("{}-{}", std::process::id(), commands::telemetry::now_ms());
    let rs: Vec<Repo> = (0..repos)
        .map(|i| {
            let root = d.join(format!("r{i}"));
            std::fs::create_dir_all(&root).unwrap();
            Repo::new(&root, &url)
        })
        .collect();
    let pids = [
        ("ci_service", ci.child.id()),
        ("cache", cache.child.id()),
        ("control_plane", cp.child.id()),
    ];
    let before: Vec<_> = pids.iter().map(|(_, p)| cpu_rss(*p)).collect();

    // Every repository pushes its 10 commits back to back, all
    // repositories at once.
    let t0 = Instant::now();
    let pushed: Vec<Vec<(String, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = rs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let run = run.clone();
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut prev = "hello from db v1".to_owned();
                    for k in 0..per_repo {
                        let next = format!("load {run} repo {i} push {k}");
                        let at = t0.elapsed().as_secs_f64();
                        let (c, _) = r.change_and_push(&prev, &next, &next);
                        out.push((c, at));
                        prev = next;
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let pushed_in = t0.elapsed();
    let total = repos * per_repo;
    let commits: Vec<(String, f64)> = pushed.into_iter().flatten().collect();

    // Wait until every job is final.
    let jobs = wait_until(Duration::from_secs(1800), "every job final", || {
        let jobs = get_json(&format!("{url}/jobs?limit=1000"));
        let list = jobs.as_array().unwrap().clone();
        (list.len() >= total
            && list.iter().all(|j| {
                matches!(
                    j["state"].as_str(),
                    Some("succeeded" | "failed" | "superseded")
                )
            }))
        .then_some(list)
    });
    let all_done = t0.elapsed();
    let after: Vec<_> = pids.iter().map(|(_, p)| cpu_rss(*p)).collect();

    let mut lat: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut lost = 0;
    for (c, at) in &commits {
        let Some(j) = jobs.iter().find(|j| j["commit"] == c.as_str()) else {
            lost += 1;
            continue;
        };
        let state = j["state"].as_str().unwrap_or("?").to_owned();
        let end = j["finishedAtMs"].as_f64().unwrap_or(0.0);
        let created = j["createdAtMs"].as_f64().unwrap_or(0.0);
        let queued_ms = (end - created).max(0.0);
        let _ = at;
        lat.entry(state).or_default().push(queued_ms);
    }
    println!(
        "{total} pushes across {repos} repositories: pushed in {:.1} s ({:.1} pushes/s accepted), all jobs final after {:.1} s",
        pushed_in.as_secs_f64(),
        total as f64 / pushed_in.as_secs_f64(),
        all_done.as_secs_f64()
    );
    println!("  jobs without a record (lost): {lost}");
    for (state, v) in &mut lat {
        let n = v.len();
        println!(
            "  {state:<10} {n:>3} jobs; created → final: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 1.0)
        );
    }
    let succeeded = lat.get("succeeded").map_or(0, Vec::len);
    println!(
        "  throughput: {:.2} builds/s completed ({succeeded} succeeded in {:.1} s)",
        succeeded as f64 / all_done.as_secs_f64(),
        all_done.as_secs_f64()
    );
    let gens = get_json(&format!("{url}/generations"));
    println!(
        "  generations recorded: {}",
        gens.as_array().map_or(0, Vec::len)
    );
    let secs = all_done.as_secs_f64();
    for (((name, _), b), a) in pids.iter().zip(&before).zip(&after) {
        println!(
            "  {name:<13} CPU {:>5.1}% of one core (children, i.e. nix: {:>5.1}%), peak RSS {:.1} MiB",
            (a.0 - b.0) as f64 / 100.0 / secs * 100.0,
            (a.1 - b.1) as f64 / 100.0 / secs * 100.0,
            a.2 as f64 / 1048576.0
        );
    }
}
