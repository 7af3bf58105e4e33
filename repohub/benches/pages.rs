//! Benchmark (prints figures): server time of the commit log and tree pages
//! of a repository with 10,000 commits and 5,000 files, and `git clone`
//! through repohub's smart HTTP against cloning the bare directory.
//!
//! Run: `cargo bench -p repohub --bench pages`. The repository is generated
//! with `git fast-import` (seconds, not minutes). Server time is measured
//! in process (router + oneshot: routing, SQLite, git2, templates), without
//! the TCP hop.

// The figures printed on stdout are what this benchmark is for.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/timing.rs"]
mod timing;

const COMMITS: usize = 10_000;
const DIRS: usize = 50;
const FILES_PER_DIR: usize = 100;
const ITERATIONS: usize = 300;

fn fast_import_stream() -> Vec<u8> {
    let mut s = Vec::with_capacity(8 << 20);
    let t0 = 1_600_000_000u64;
    for c in 0..COMMITS {
        let msg = format!("commit {c}: change things\n\nA longer body for commit {c}.\n");
        writeln!(s, "commit refs/heads/main").unwrap();
        writeln!(s, "mark :{}", c + 1).unwrap();
        writeln!(
            s,
            "author Bench <bench@example.com> {} +0000",
            t0 + c as u64
        )
        .unwrap();
        writeln!(
            s,
            "committer Bench <bench@example.com> {} +0000",
            t0 + c as u64
        )
        .unwrap();
        writeln!(s, "data {}\n{msg}", msg.len()).unwrap();
        if c > 0 {
            writeln!(s, "from :{c}").unwrap();
        }
        let mut put = |path: String, content: String| {
            writeln!(s, "M 100644 inline {path}").unwrap();
            writeln!(s, "data {}\n{content}", content.len()).unwrap();
        };
        if c == 0 {
            for d in 0..DIRS {
                for f in 0..FILES_PER_DIR {
                    put(
                        format!("d{d:02}/file{f:03}.txt"),
                        format!("file {d}/{f}\n").repeat(20),
                    );
                }
            }
            put(
                "README.md".into(),
                "# Big\n\nA benchmark repository.\n".into(),
            );
        } else {
            let i = c % (DIRS * FILES_PER_DIR);
            put(
                format!("d{:02}/file{:03}.txt", i / FILES_PER_DIR, i % FILES_PER_DIR),
                format!("rev {c}\n").repeat(20),
            );
        }
    }
    // A second branch whose root holds all 5,000 files in one directory:
    // the worst case for a tree listing.
    let msg = "flat layout\n";
    writeln!(s, "commit refs/heads/flat").unwrap();
    writeln!(s, "author Bench <bench@example.com> {t0} +0000").unwrap();
    writeln!(s, "committer Bench <bench@example.com> {t0} +0000").unwrap();
    writeln!(s, "data {}\n{msg}", msg.len()).unwrap();
    for f in 0..DIRS * FILES_PER_DIR {
        let content = format!("flat file {f}\n").repeat(20);
        writeln!(s, "M 100644 inline f{f:04}.txt").unwrap();
        writeln!(s, "data {}\n{content}", content.len()).unwrap();
    }
    s
}

fn git(dir: &Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    testkit::process::output_ok(
        Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0"),
    );
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (config, state, pid) = timing::bench_project(dir.path());
    state.db.create_repo(pid, "big").unwrap();
    let bare = state.repo_dir("bench", "big");
    repohub::git::create_bare(&bare, &state.spool, state.limits.receive).unwrap();

    let t = Instant::now();
    let stream = fast_import_stream();
    let mut child = Command::new("git")
        .current_dir(&bare)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success());
    git(&bare, &["gc", "-q"]);
    println!(
        "generated {COMMITS} commits, {} files ({:.1} MB fast-import stream) in {:.1} s",
        DIRS * FILES_PER_DIR + 1,
        stream.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // The "Older" cursor of page 100, as a user clicking through gets it.
    let cursor = {
        let r = repohub::git::open(&bare).unwrap();
        let mut starts = vec![repohub::git::resolve(&r, "main").unwrap()];
        for _ in 0..100 {
            starts = repohub::git::log(&r, &starts, 0).unwrap().next.unwrap();
        }
        starts
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let cursor_url = format!("/bench/big/log/main?page=100&after={cursor}");

    let router = repohub::app(state.clone());
    println!("\nserver time per page, {ITERATIONS} requests each (in process, release build):");
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>10}",
        "page", "median ms", "p99 ms", "max ms", "bytes"
    );
    for path in [
        "/bench/big/log/main",
        "/bench/big/log/main?page=2",
        "/bench/big/log/main?page=100",
        cursor_url.as_str(),
        "/bench/big/tree/main",
        "/bench/big/tree/main/d07",
        "/bench/big/tree/flat",
        "/bench/big/tree/main/d07/file042.txt",
        "/bench/big",
    ] {
        let (p50, p99, max, body) = timing::time_page(&router, path, ITERATIONS).await;
        let size = body.len();
        let label = if path.contains("after=") {
            "/bench/big/log/main?page=100&after=<cursor>"
        } else {
            path
        };
        println!("{label:<44} {p50:>9.2} {p99:>9.2} {max:>9.2} {size:>10}");
    }

    // Clone through repohub (real HTTP server) vs from the bare directory.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(repohub::run(config.clone(), listener, shutdown.clone()));
    let work = dir.path().join("clones");
    std::fs::create_dir_all(&work).unwrap();
    let url = format!("http://{addr}/bench/big.git");
    let file_url = format!("file://{}", bare.display());
    let bare_s = bare.to_string_lossy().into_owned();
    let (mut http, mut file, mut local) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..3 {
        let (u, f, l) = (url.clone(), file_url.clone(), bare_s.clone());
        let w = work.clone();
        let (a, b, c) = tokio::task::spawn_blocking(move || {
            (
                git(&w, &["clone", "-q", &u, &format!("http{i}")]),
                git(&w, &["clone", "-q", &f, &format!("file{i}")]),
                git(&w, &["clone", "-q", &l, &format!("local{i}")]),
            )
        })
        .await
        .unwrap();
        http.push(a);
        file.push(b);
        local.push(c);
    }
    shutdown.cancel();
    let (h, f, l) = (median(http), median(file), median(local));
    println!(
        "\ngit clone (median of 3, includes checkout of {} files):",
        DIRS * FILES_PER_DIR + 1
    );
    println!("  through repohub (smart HTTP)     {h:>8.0} ms");
    println!(
        "  from the bare dir, file:// URL   {f:>8.0} ms   ratio repohub/file:// = {:.2}",
        h / f
    );
    println!(
        "  from the bare dir, plain path    {l:>8.0} ms   ratio repohub/path    = {:.2}",
        h / l
    );
}
