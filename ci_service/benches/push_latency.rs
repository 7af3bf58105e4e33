//! Push-to-converged latency of the GitOps loop with every real binary
//! (cache, control plane, two ch-sim workers, ci_service, git push through
//! the hook), split into phases; prints the median of N one-VM changes
//! (default 10, `PCR_BENCH_PUSHES`). Binaries are taken from `PCR_BIN_DIR`
//! or the bench's own target dir:
//!
//!   cargo build --workspace --bins && \
//!   PCR_BIN_DIR=$PWD/target/debug cargo bench -p ci_service --bench push_latency

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("PCR_BENCH_PUSHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // The VMs' CH processes outlive the workers by design; the cluster
    // stops them at the end.
    let c = start();
    let ci = c.ci_url();
    let cp = c.cp.addr.clone();
    let repo = Repo::new(c.h.dir(), &ci);
    let (c1, _) = repo.push();
    let job = wait_job(&ci, job_for(&ci, &c1), Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");
    wait_converged(&cp, 1, Duration::from_secs(60));

    // hook: git push until the job exists; publish includes the control
    // plane's scheduling (publishState answers with the placement).
    let phases = [
        "hook", "queue", "fetch", "eval", "build", "upload", "publish", "converge", "total",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    for i in 0..n {
        let version = i + 1;
        let (from, to) = (
            format!("hello from db v{version}"),
            format!("hello from db v{}", version + 1),
        );
        let t0 = Instant::now();
        let t0_ms = commands::telemetry::now_ms() as f64;
        let (commit, _) = repo.change_and_push(&from, &to, &format!("bench {i}"));
        let id = job_for(&ci, &commit);
        let job = wait_job(&ci, id, Duration::from_secs(120));
        assert_eq!(job["state"], "succeeded", "{job}");
        let generation = job["generation"].as_u64().unwrap();
        let finished = Instant::now();
        wait_converged(&cp, generation, Duration::from_secs(60));
        let converged = t0.elapsed().as_secs_f64() * 1000.0;
        let t = &job["timings"];
        let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
        let hook = job["createdAtMs"].as_f64().unwrap() - t0_ms;
        // `converge`: from the job seen finished to every VM running the
        // new generation (the control plane's long-poll wake-up, the
        // worker's pull from the cache, CH create/boot, its report).
        let converge = converged - (finished - t0).as_secs_f64() * 1000.0;
        let row = [
            hook,
            f("queueMs"),
            f("fetchMs"),
            f("evalMs"),
            f("buildMs"),
            f("uploadMs"),
            f("publishMs"),
            converge,
            converged,
        ];
        for (s, v) in samples.iter_mut().zip(row) {
            s.push(v);
        }
        eprintln!(
            "push {i}: total {converged:.0} ms (build {:.0} ms)",
            f("buildMs")
        );
    }
    println!("push-to-converged latency, median of {n} one-VM changes (ms):");
    for (p, s) in phases.iter().zip(&samples) {
        println!("  {p:<9} {:>8.1}", median(s.clone()));
    }
    let total = median(samples[8].clone());
    let build = median(samples[4].clone());
    println!(
        "  total minus nix build: {:.1} ms (goal < 1000)",
        total - build
    );
}
