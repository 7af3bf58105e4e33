//! Scheduler benchmark: 100,000 VMs onto 1,000 workers. Prints placements
//! per second for a fresh placement, for a re-run with the previous
//! placement as input (the steady state after every publish), and whether a
//! second run gives the same placement. Then the same scale as 100
//! projects of 1,000 VMs under quotas: placements per second, the same
//! placement on a rerun, and one project republishing 1,000 changed VMs
//! through the control plane's state: the time until the new assignments
//! exist and how many placements of the other 99 projects changed (must be
//! 0). Run with `cargo bench -p control_plane --bench scheduler`.

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Instant;

use std::time::Duration;

use commands::model::{Limits, Registration};
use commands::types::{ProjectName, Resources, VmSpec, VmSpecFields};
use control_plane::quota::QuotaConfig;
use control_plane::scheduler::{Quotas, WorkerSlot, schedule};
use control_plane::state::{Settings, State};

fn specs(n: usize) -> Vec<VmSpec> {
    specs_versioned(n, "h")
}

/// `n` specs whose content hashes start with `version`.
fn specs_versioned(n: usize, version: &str) -> Vec<VmSpec> {
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
                content_hash: format!("{version}{i}"),
                labels,
                ..Default::default()
            })
            .expect("valid spec")
        })
        .collect()
}

/// One figure: `n` placements took `d`.
fn rate(label: &str, d: Duration, n: usize) {
    println!(
        "  {label:<18} {:>8.1} ms  {:>12.0} placements/s",
        d.as_secs_f64() * 1e3,
        n as f64 / d.as_secs_f64()
    );
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

    rate("fresh placement:", fresh, specs.len());
    rate("second fresh run:", again, specs.len());
    rate("with previous:", stable, specs.len());
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

    projects(&workers);
}

const PROJECTS: usize = 100;
const PER_PROJECT: usize = 1_000;

fn project(p: usize) -> ProjectName {
    format!("team-{p:03}").parse().expect("valid project")
}

/// 100 projects of 1,000 VMs each (the same names in every project).
fn project_specs(version_of: impl Fn(usize) -> &'static str) -> Vec<VmSpec> {
    (0..PROJECTS)
        .flat_map(|p| {
            specs_versioned(PER_PROJECT, version_of(p))
                .into_iter()
                .map(move |s| s.with_project(project(p)))
        })
        .collect()
}

/// Every project may use what its 1,000 VMs need and no more.
fn project_quotas() -> Quotas {
    let quota = Limits {
        cpu: 1_500,
        memory_mb: 1_000 * 1024,
        vms: PER_PROJECT as u32,
    };
    (0..PROJECTS).map(|p| (project(p), quota)).collect()
}

fn projects(workers: &[WorkerSlot]) {
    let specs = project_specs(|_| "h");
    let quotas = project_quotas();
    println!(
        "scheduler: {PROJECTS} projects, {} VMs onto {} workers, with quotas",
        specs.len(),
        workers.len()
    );
    let t = Instant::now();
    let first = schedule(&specs, workers, &BTreeMap::new(), &quotas);
    let fresh = t.elapsed();
    let t = Instant::now();
    let second = schedule(&specs, workers, &BTreeMap::new(), &quotas);
    let again = t.elapsed();
    rate("fresh placement:", fresh, specs.len());
    rate("second fresh run:", again, specs.len());
    println!(
        "  placed {} unplaced {}; same placement on the second run: {}",
        first.assigned.len(),
        first.unplaced.len(),
        first == second
    );

    // Through the control plane's state: every project published, then
    // team-000 republishes with all of its 1,000 VMs changed.
    let now = Instant::now();
    let settings = Settings {
        heartbeat_timeout: Duration::from_secs(3600),
        startup_grace: Duration::ZERO,
    };
    let mut state = State::new(settings, now, 1);
    let listed = (0..PROJECTS)
        .map(|p| (project(p), project_quotas()[&project(p)]))
        .collect();
    let _ = state.set_quotas(QuotaConfig::new(None, listed));
    for (i, w) in workers.iter().enumerate() {
        let reg = Registration {
            worker_id: w.id.clone(),
            address: format!("10.0.{}.{}:6000", i / 250, i % 250),
            capacity: w.capacity,
            labels: w.labels.clone(),
        };
        state.register(reg, i as u64, now).expect("register");
    }
    let t = Instant::now();
    for p in 0..PROJECTS {
        let own: Vec<VmSpec> = specs_versioned(PER_PROJECT, "h");
        state
            .publish(&project(p), "c1", 1, "i1", own, 0)
            .expect("publish");
    }
    let all = t.elapsed();
    println!(
        "  {PROJECTS} publishes (one per project) into the state: {:.1} ms",
        all.as_secs_f64() * 1e3
    );
    let before = rows(&state, now);
    let changed = specs_versioned(PER_PROJECT, "v2-");
    let t = Instant::now();
    let (outcome, effects) = state
        .publish(&project(0), "c2", 2, "i2", changed, 0)
        .expect("republish");
    let republish = t.elapsed();
    let after = rows(&state, now);
    let moved_elsewhere = before
        .iter()
        .filter(|(k, _)| !k.starts_with("team-000/"))
        .filter(|(k, w)| after.get(*k) != Some(*w))
        .count();
    let ours_kept = before
        .iter()
        .filter(|(k, w)| k.starts_with("team-000/") && after.get(*k) == Some(*w))
        .count();
    println!(
        "  one project republishes {PER_PROJECT} changed VMs: new assignments in {:.1} ms \
         (placed {}, assignments changed: {})",
        republish.as_secs_f64() * 1e3,
        outcome.placed,
        effects.assignments_changed
    );
    println!(
        "  placements of the other {} projects changed: {moved_elsewhere}; its own VMs kept their worker: {ours_kept}",
        PROJECTS - 1
    );
}

/// `project/name` → worker of every desired VM.
fn rows(state: &State, now: Instant) -> BTreeMap<String, String> {
    state
        .cluster_status(now)
        .vms
        .into_iter()
        .map(|v| (format!("{}/{}", v.project, v.name), v.worker_id))
        .collect()
}
