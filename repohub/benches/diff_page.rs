//! Benchmark (prints figures): server time of a commit page whose diff has
//! 1,000 changed lines (10 files with 50 lines replaced each, plus a
//! renamed file), p50/p99 against the goal p99 < 50 ms; and of a commit of
//! 20,000 changed lines, which the page's bounds (5,000 lines drawn) keep
//! near the same cost.
//!
//! Run: `cargo bench -p repohub --bench diff_page`. Server time is measured
//! in process (router + oneshot: routing, SQLite, git2 diff with rename
//! detection, templates), without the TCP hop.

// The figures printed on stdout are what this benchmark is for.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::Command;

#[path = "common/timing.rs"]
mod timing;

const ITERATIONS: usize = 300;
const GOAL_P99_MS: f64 = 50.0;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = testkit::process::output_ok(
        Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Bench")
            .env("GIT_AUTHOR_EMAIL", "bench@example.com")
            .env("GIT_COMMITTER_NAME", "Bench")
            .env("GIT_COMMITTER_EMAIL", "bench@example.com"),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `files` files of 200 lines, then a commit replacing `replaced` lines of
/// each and renaming one more file with one line changed; returns that
/// commit's id.
fn commit_with_changes(work: &Path, files: usize, replaced: usize) -> String {
    // Every `step`-th line changes, so the changes spread over many hunks.
    let step = (200 / replaced.max(1)).max(1);
    let body = |f: usize, tag: &str| -> String {
        (0..200)
            .map(|l| {
                if l % step == 0 {
                    format!("{tag} file {f} line {l}: let value_{l} = compute({f}, {l});\n")
                } else {
                    format!("file {f} line {l}: unchanged context that stays the same\n")
                }
            })
            .collect()
    };
    for f in 0..files {
        std::fs::write(work.join(format!("src/f{f:03}.rs")), body(f, "old")).unwrap();
    }
    std::fs::write(work.join("src/module.rs"), body(999, "module")).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", "before"]);
    for f in 0..files {
        std::fs::write(work.join(format!("src/f{f:03}.rs")), body(f, "new")).unwrap();
    }
    git(work, &["mv", "src/module.rs", "src/renamed.rs"]);
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", "change things"]);
    git(work, &["rev-parse", "HEAD"])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (_, state, pid) = timing::bench_project(dir.path());

    let mut cases = Vec::new();
    // (repository, files, lines replaced per file): 10 × 50 = 1,000
    // changed lines (500 removed, 500 added); 50 × 200 = 20,000.
    for (name, files, replaced) in [("diff1k", 10, 50), ("diff20k", 50, 200)] {
        state.db.create_repo(pid, name).unwrap();
        let bare = state.repo_dir("bench", name);
        repohub::git::create_bare(&bare, &state.spool, state.limits.receive).unwrap();
        let work = dir.path().join(format!("work-{name}"));
        std::fs::create_dir_all(work.join("src")).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let id = commit_with_changes(&work, files, replaced);
        git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        let numstat = git(&work, &["show", "--numstat", "-M", "--format=", "HEAD"]);
        let changed: usize = numstat
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some(f.next()?.parse::<usize>().ok()? + f.next()?.parse::<usize>().ok()?)
            })
            .sum();
        cases.push((format!("/bench/{name}/commit/{id}"), changed));
    }

    let router = repohub::app(state.clone());
    println!("server time of a commit page, {ITERATIONS} requests each (in process):");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "commit", "changed", "p50 ms", "p99 ms", "max ms", "bytes"
    );
    let mut goal_met = true;
    for (path, changed) in &cases {
        let (p50, p99, max, body) = timing::time_page(&router, path, ITERATIONS).await;
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("fstatus-renamed"), "the rename is detected");
        let label = path.split("/commit/").next().unwrap_or(path);
        println!(
            "{label:<28} {changed:>9} {p50:>9.2} {p99:>9.2} {max:>9.2} {:>10}",
            body.len()
        );
        if *changed <= 1000 && p99 >= GOAL_P99_MS {
            goal_met = false;
        }
    }
    println!(
        "goal: p99 < {GOAL_P99_MS} ms for 1,000 changed lines: {}",
        if goal_met { "met" } else { "NOT met" }
    );
}
