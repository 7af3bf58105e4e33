//! Benchmark: what treating a pushed flake as untrusted code costs per job
//! step, with the real nix client on the hermetic example: evaluating
//! `procurator.vmSpecs` plainly, with the restricted settings, and in the
//! bubblewrap jail; reading the declared inputs (hash + pure eval); and
//! writing a 5,000-file tree with `git::write_tree` (openat, O_NOFOLLOW,
//! O_EXCL) from a packed repository. Prints the median and p90 of `PCR_BENCH_RUNS` runs (default
//! 15). Run: `cargo bench -p repo_outils --bench untrusted`.

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use repo_outils::git::{TreeLimits, write_tree};
use repo_outils::testing::HermeticNix;

fn runs() -> usize {
    std::env::var("PCR_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<44} median {:>7.1} ms   p90 {:>7.1} ms   ({} runs)",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        times.len()
    );
}

/// Times `f` once per run after one warm-up call.
fn time<F, Fut, T>(rt: &tokio::runtime::Runtime, what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    rt.block_on(f());
    let times = (0..runs())
        .map(|_| {
            let t = Instant::now();
            rt.block_on(f());
            t.elapsed()
        })
        .collect();
    report(what, times);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn main() {
    let h = HermeticNix::new().unwrap();
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../example/hermetic");
    let dir = h.dir().join("work").join("flake");
    copy_dir(&example, &dir);
    let attr = format!("path:{}#procurator.vmSpecs", dir.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let plain = h.nix();
    let restricted = h.nix().untrusted(None, 4 << 20);
    let jailed = h
        .nix()
        .untrusted(None, 4 << 20)
        .jailed(vec![h.dir().join("work")]);
    time(&rt, "eval vmSpecs, plain nix", || async {
        plain.eval_json(&attr).await.unwrap()
    });
    time(&rt, "eval vmSpecs, restricted settings", || async {
        restricted.eval_json(&attr).await.unwrap()
    });
    time(
        &rt,
        "eval vmSpecs, restricted + bubblewrap jail",
        || async { jailed.eval_json(&attr).await.unwrap() },
    );
    time(
        &rt,
        "declared inputs (hash + pure eval), jailed",
        || async { jailed.declared_flake_inputs(&dir).await.unwrap() },
    );

    // A tree of 5,000 small files in 50 directories.
    let repo = git2::Repository::init_bare(h.dir().join("tree.git")).unwrap();
    let mut root = repo.treebuilder(None).unwrap();
    for d in 0..50 {
        let mut sub = repo.treebuilder(None).unwrap();
        for f in 0..100 {
            let blob = repo
                .blob(format!("file {f} of directory {d}\n").as_bytes())
                .unwrap();
            sub.insert(format!("f{f:03}.txt"), blob, 0o100644).unwrap();
        }
        root.insert(format!("d{d:02}"), sub.write().unwrap(), 0o040000)
            .unwrap();
    }
    let tree_id = root.write().unwrap();
    // A fetched mirror holds packs, not loose objects: pack them (with the
    // host's git) so the figure is the one CI sees.
    let st = std::process::Command::new("git")
        .args(["repack", "-a", "-d", "-q"])
        .current_dir(h.dir().join("tree.git"))
        .status()
        .unwrap();
    assert!(st.success());
    let repo = git2::Repository::open_bare(h.dir().join("tree.git")).unwrap();
    let tree = repo.find_tree(tree_id).unwrap();
    // Every run writes into a fresh directory and nothing is deleted until
    // the end: ext4 slows down creating files right after deleting as
    // many. The same files written with plain std::fs are the baseline.
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        h.dir().join(format!("out-{n}"))
    };
    let times = (0..runs())
        .map(|_| {
            let dest = fresh();
            let t = Instant::now();
            for d in 0..50 {
                let dir = dest.join(format!("d{d:02}"));
                std::fs::create_dir_all(&dir).unwrap();
                for f in 0..100 {
                    std::fs::write(
                        dir.join(format!("f{f:03}.txt")),
                        format!("file {f} of directory {d}\n"),
                    )
                    .unwrap();
                }
            }
            t.elapsed()
        })
        .collect();
    report("baseline: std::fs::write of the same files", times);
    let times = (0..runs())
        .map(|_| {
            let dest = fresh();
            let t = Instant::now();
            write_tree(&repo, &tree, &dest, &TreeLimits::default()).unwrap();
            t.elapsed()
        })
        .collect();
    report("write_tree, 5,000 files in 50 directories", times);
}
