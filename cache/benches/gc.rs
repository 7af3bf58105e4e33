//! Benchmark: how long gc holds the index's write lock (uploads wait for
//! it) and how long `cache du` takes, with 100 generations of one project
//! pinned (each 200 paths of its own over 1,000 shared ones: 21,000 paths)
//! and `--keep-generations 10`. Run: `cargo bench -p cache --bench gc`.

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use cache::hash::Sha256Hash;
use cache::index::{self, PathRow};
use cache::nixbase32;
use cache::store::{GcPolicy, Store};

const GENERATIONS: usize = 100;
const OWN: usize = 200;
const SHARED: usize = 1_000;

/// A made-up stored path named by `i`, referencing `refs`.
fn row(i: usize, refs: &[String]) -> PathRow {
    let hash = nixbase32::encode(&Sha256Hash::of(i.to_string().as_bytes()).0[..20]);
    PathRow {
        hash_part: hash.clone(),
        store_path: format!("{hash}-p{i}"),
        url: format!(
            "nar/{}.nar.zst",
            nixbase32::encode(&Sha256Hash::of(&i.to_le_bytes()).0)
        ),
        compression: "zstd".into(),
        file_hash: String::new(),
        file_size: 4096,
        nar_hash: String::new(),
        nar_size: 8192,
        refs: refs.join(" "),
        narinfo: String::new(),
        uploaded_at: 0,
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "/nix/store", None).unwrap();
    let conn = index::open(&dir.path().join("index.sqlite")).unwrap();
    let t = Instant::now();
    conn.execute_batch("BEGIN").unwrap();
    let mut n = 0;
    let mut shared = Vec::new();
    for _ in 0..SHARED {
        let r = row(n, &shared[shared.len().saturating_sub(1)..]);
        index::insert_path(&conn, &r).unwrap();
        shared.push(r.store_path);
        n += 1;
    }
    for g in 1..=GENERATIONS {
        let mut prev = vec![shared.last().unwrap().clone()];
        for _ in 0..OWN {
            let r = row(n, &prev);
            index::insert_path(&conn, &r).unwrap();
            prev = vec![r.store_path];
            n += 1;
        }
        index::set_pin(&conn, &format!("shop/generation-{g}"), &prev, None, 0).unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    println!(
        "setup: {n} paths, {GENERATIONS} generation pins in {:?}",
        t.elapsed()
    );

    let t = Instant::now();
    let du = store.du().unwrap();
    println!(
        "du: {:?} ({} pins, {} bytes total)",
        t.elapsed(),
        du.pins.len(),
        du.total_bytes
    );

    let policy = GcPolicy {
        grace: Duration::ZERO,
        keep_generations: Some(10),
    };
    let t = Instant::now();
    let dry = store.gc(&policy, false).unwrap();
    println!(
        "gc dry run: {:?} ({} pins to drop, {} paths to delete, {} kept)",
        t.elapsed(),
        dry.unpinned.len(),
        dry.deleted.len(),
        dry.kept
    );
    let t = Instant::now();
    let done = store.gc(&policy, true).unwrap();
    println!(
        "gc: {:?} holding the write lock ({} paths deleted, {} kept)",
        t.elapsed(),
        done.deleted.len(),
        done.kept
    );
    assert_eq!(done.deleted.len(), (GENERATIONS - 10) * OWN);
}
