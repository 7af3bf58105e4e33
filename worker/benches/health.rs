//! Health-check benchmark (prints figures; not a timed test):
//! `cargo bench -p worker --bench health` (BENCH_N pending VMs, default 500).
//!
//! What the manager's console-sync round costs with health checks, on real
//! files in a temp dir with the default 1 MiB console bound:
//! - one guest flooding its console (1 MiB between two syncs, the most a
//!   sync copies): a round of sync alone, and of sync + scan, so the
//!   difference is what the check adds;
//! - BENCH_N VMs each printing one line per round: a whole round of sync
//!   alone, and of sync + scan of a pending check each.

// A benchmark's job is printing its figures on stdout.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use testkit::bench::stats;

use worker::dto::{HealthCheck, VmId};
use worker::health::HealthWatch;
use worker::rundir::{Console, RunDir};

const ROUNDS: usize = 30;

fn append(c: &Console, bytes: &[u8]) {
    testkit::fs::append(&c.serial, bytes);
}

/// A watch that never finds its line and whose deadline never passes.
fn pending_watch() -> HealthWatch {
    let mut w = HealthWatch::new(HealthCheck {
        console_line: "READY".into(),
        deadline_ms: 3_600_000,
    });
    w.booted(0);
    w
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let rd = RunDir::open(&dir.path().join("run")).unwrap();
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);

    // One flooding guest: 1 MiB of 100-byte lines per round.
    let flood: Vec<u8> = std::iter::repeat_n(format!("{}\n", "x".repeat(99)), 10_486)
        .collect::<String>()
        .into_bytes();
    let (mut sync_only, mut with_scan) = (Vec::new(), Vec::new());
    let plain = rd.console(&VmId::new_v7());
    let checked = rd.console(&VmId::new_v7());
    let mut watch = pending_watch();
    for _ in 0..ROUNDS {
        append(&plain, &flood);
        let t = Instant::now();
        plain.sync().unwrap();
        sync_only.push(t.elapsed());
        append(&checked, &flood);
        let t = Instant::now();
        watch.scan(&checked, 1).unwrap();
        with_scan.push(t.elapsed());
    }
    println!(
        "flooding guest, 1 MiB per round, sync only:   {}",
        stats(&sync_only)
    );
    println!(
        "flooding guest, 1 MiB per round, sync + scan: {}",
        stats(&with_scan)
    );

    // n VMs, one line each per round: synced only (no check), then
    // synced and scanned (a pending check each).
    let plain: Vec<Console> = (0..n).map(|_| rd.console(&VmId::new_v7())).collect();
    let mut vms: Vec<(Console, HealthWatch)> = (0..n)
        .map(|_| (rd.console(&VmId::new_v7()), pending_watch()))
        .collect();
    let (mut synced, mut scanned) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let line = format!("[   {round}.0] service started\n");
        for c in &plain {
            append(c, line.as_bytes());
        }
        let t = Instant::now();
        for c in &plain {
            c.sync().unwrap();
        }
        synced.push(t.elapsed());
        for (c, _) in &vms {
            append(c, line.as_bytes());
        }
        let t = Instant::now();
        for (c, w) in &mut vms {
            w.scan(c, 1).unwrap();
        }
        scanned.push(t.elapsed());
    }
    println!(
        "{n} VMs, one line each, whole round, sync only:   {}",
        stats(&synced)
    );
    println!(
        "{n} VMs, one line each, whole round, sync + scan: {}  (sync period 250 ms)",
        stats(&scanned)
    );
}
