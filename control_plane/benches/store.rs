//! State-file benchmark (`--state-dir`): what persistence costs the
//! control plane. Writes 10 projects × 100 generations of 100 VMs each
//! (the HISTORY bound) and 10 projects × 10,000 events in batches of 10
//! (the per-project bound, then 1,000 more batches past it so the pruning
//! runs), printing the time per generation write and events per second;
//! then reopens the file and prints how long loading it and restoring the
//! state and the event log take (the restart cost), and the file's size.
//! Run with `cargo bench -p control_plane --bench store`.

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use commands::model::{EventView, GenerationDetailView, GenerationView};
use commands::types::ProjectName;
use control_plane::events::{EVENTS_PER_PROJECT, EventLog};
use control_plane::state::{HISTORY, Settings, State};
use control_plane::store::Store;

const PROJECTS: usize = 10;
const VMS: usize = 100;
const BATCH: usize = 10;

fn generation(p: usize, n: u64) -> GenerationDetailView {
    let project: ProjectName = format!("team-{p}").parse().unwrap();
    let specs = (0..VMS)
        .map(|i| {
            testkit::fixtures::project_spec(project.as_str(), &format!("web-{i}"), &format!("h{n}"))
        })
        .collect();
    GenerationDetailView {
        generation: GenerationView {
            project: project.to_string(),
            number: n,
            commit: format!("{n:040x}"),
            intent_hash: format!("{n:064x}"),
            vm_count: VMS as u32,
            published_at_ms: n,
            author: "Ada Lovelace".into(),
            message: "a change of some length, as commit summaries go".into(),
            job_id: n,
            converged_at_ms: 0,
            ..GenerationView::default()
        },
        specs,
    }
}

fn per(label: &str, took: Duration, n: usize) {
    println!(
        "  {label:<28} {n:>8} in {:>8.1} ms  ({:.3} ms each, {:.0}/s)",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3 / n as f64,
        n as f64 / took.as_secs_f64()
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), HISTORY, EVENTS_PER_PROJECT).unwrap();
    println!(
        "state file: {PROJECTS} projects, {HISTORY} generations of {VMS} VMs and {EVENTS_PER_PROJECT} events each"
    );

    let t = Instant::now();
    for n in 1..=HISTORY as u64 {
        for p in 0..PROJECTS {
            store.save_generation(&generation(p, n)).unwrap();
        }
    }
    per("generation writes", t.elapsed(), HISTORY * PROJECTS);

    let mut id = 0u64;
    let batches = EVENTS_PER_PROJECT / BATCH * PROJECTS + 1000;
    let t = Instant::now();
    for b in 0..batches {
        let project = format!("team-{}", b % PROJECTS);
        let events: Vec<EventView> = (0..BATCH)
            .map(|_| {
                id += 1;
                EventView {
                    id,
                    at_ms: id,
                    project: project.clone(),
                    kind: "vm-placed".into(),
                    vm: "web-0".into(),
                    worker_id: "host-a".into(),
                    generation: 1,
                    message: "web-0 placed on host-a".into(),
                }
            })
            .collect();
        store.save_events(&events).unwrap();
    }
    let took = t.elapsed();
    per("event batches of 10", took, batches);
    per("events", took, batches * BATCH);
    let kept = store.event_count("team-0").unwrap();
    println!("  events kept for team-0: {kept} (bound {EVENTS_PER_PROJECT})");
    drop(store);

    let size: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("  files on disk: {:.1} MiB", size as f64 / (1 << 20) as f64);

    let t = Instant::now();
    let store = Store::open(dir.path(), HISTORY, EVENTS_PER_PROJECT).unwrap();
    let loaded = store.load().unwrap();
    let load = t.elapsed();
    let t = Instant::now();
    let mut state = State::new(
        Settings {
            heartbeat_timeout: Duration::from_secs(5),
            startup_grace: Duration::from_secs(5),
        },
        Instant::now(),
        1,
    );
    let gens = loaded.generations.len();
    let events = loaded.events.len();
    state.restore(loaded.generations);
    let mut log = EventLog::default();
    for e in loaded.events {
        log.restore(e);
    }
    let restore = t.elapsed();
    println!(
        "restart: load {gens} generations and {events} events in {:.1} ms, restore them in {:.1} ms",
        load.as_secs_f64() * 1e3,
        restore.as_secs_f64() * 1e3
    );
}
