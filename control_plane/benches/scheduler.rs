//! Scheduler benchmark: 100,000 VMs onto 1,000 workers. Prints placements
//! per second for a fresh placement, for a re-run with the previous
//! placement as input (the steady state after every publish), and whether a
//! second run gives the same placement. Run with
//! `cargo bench -p control_plane --bench scheduler`.

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Instant;

use commands::types::{Resources, VmSpec, VmSpecFields};
use control_plane::scheduler::{Quotas, WorkerSlot, schedule};

fn specs(n: usize) -> Vec<VmSpec> {
    (0..n)
        .map(|i| {
            let mut labels = BTreeMap::new();
            // Every tenth VM is pinned to zone a (a third of the workers).
            if i % 10 == 0 {
                labels.insert("placement.zone".to_owned(), "a".to_owned());
            }
            VmSpec::new(VmSpecFields {
                // 1,000 groups of 100 replicas: app<g>-<r>.
                name: format!("app{}-{}", i / 100, i % 100),
                toplevel: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys".into(),
                kernel_path: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel".into(),
                cpu: 1 + (i % 2) as u32,
                memory_mb: 256 << (i % 3),
                content_hash: format!("h{i}"),
                labels,
                ..Default::default()
            })
            .expect("valid spec")
        })
        .collect()
}

fn workers(n: usize) -> Vec<WorkerSlot> {
    (0..n)
        .map(|i| WorkerSlot {
            id: format!("worker-{i:04}").parse().expect("valid id"),
            capacity: Resources {
                cpu: 256,
                memory_mb: 256 * 1024,
            },
            labels: [("zone".to_owned(), ["a", "b", "c"][i % 3].to_owned())]
                .into_iter()
                .collect(),
        })
        .collect()
}

fn main() {
    let specs = specs(100_000);
    let workers = workers(1_000);
    println!(
        "scheduler: {} VMs onto {} workers",
        specs.len(),
        workers.len()
    );

    let t = Instant::now();
    let first = schedule(&specs, &workers, &BTreeMap::new(), &Quotas::new());
    let fresh = t.elapsed();
    let t = Instant::now();
    let second = schedule(&specs, &workers, &BTreeMap::new(), &Quotas::new());
    let again = t.elapsed();
    let t = Instant::now();
    let steady = schedule(&specs, &workers, &first.assigned, &Quotas::new());
    let stable = t.elapsed();

    let rate = |d: std::time::Duration| specs.len() as f64 / d.as_secs_f64();
    println!(
        "  fresh placement:   {:>8.1} ms  {:>12.0} placements/s",
        fresh.as_secs_f64() * 1e3,
        rate(fresh)
    );
    println!(
        "  second fresh run:  {:>8.1} ms  {:>12.0} placements/s",
        again.as_secs_f64() * 1e3,
        rate(again)
    );
    println!(
        "  with previous:     {:>8.1} ms  {:>12.0} placements/s",
        stable.as_secs_f64() * 1e3,
        rate(stable)
    );
    println!(
        "  placed {} unplaced {}",
        first.assigned.len(),
        first.unplaced.len()
    );
    println!("  same placement on the second run: {}", first == second);
    println!(
        "  nothing moved with previous as input: {}",
        steady.assigned == first.assigned
    );

    // One worker of 1,000 dies: how long to move its VMs.
    let survivors = &workers[1..];
    let t = Instant::now();
    let failover = schedule(&specs, survivors, &first.assigned, &Quotas::new());
    let d = t.elapsed();
    let moved = first
        .assigned
        .iter()
        .filter(|(vm, w)| failover.assigned.get(*vm) != Some(*w))
        .count();
    println!(
        "  worker loss: {moved} VMs moved in {:.1} ms",
        d.as_secs_f64() * 1e3
    );
}
