//! Benchmark (prints figures): server time of the pages that show CI
//! state (the commit log with a badge per commit, the repository page
//! with its branches, a job page with its stage bar) for a repository of
//! 200 commits and 400 jobs at a ci_service that speaks the HTTP contract
//! on loopback, and how many job lists those views cost ci_service: one
//! per repository per `repohub::ci::JOBS_TTL` however many commits a page
//! shows and however many viewers look.
//!
//! Run: `cargo bench -p repohub --bench ci_badges`. Server time is measured
//! in process (router + oneshot), without the browser's TCP hop.

// The figures printed on stdout are what this benchmark is for.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

const COMMITS: usize = 200;
const VIEWS: usize = 1_000;

fn fast_import_stream() -> Vec<u8> {
    let mut s = Vec::new();
    for c in 0..COMMITS {
        let msg = format!("commit {c}\n");
        writeln!(s, "commit refs/heads/main").unwrap();
        writeln!(s, "mark :{}", c + 1).unwrap();
        let t = 1_600_000_000 + c;
        writeln!(s, "author Bench <b@example.com> {t} +0000").unwrap();
        writeln!(s, "committer Bench <b@example.com> {t} +0000").unwrap();
        writeln!(s, "data {}\n{msg}", msg.len()).unwrap();
        if c > 0 {
            writeln!(s, "from :{c}").unwrap();
        }
        let content = format!("rev {c}\n");
        writeln!(s, "M 100644 inline file.txt").unwrap();
        writeln!(s, "data {}\n{content}", content.len()).unwrap();
    }
    s
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| ms(v[((v.len() as f64 * q).ceil() as usize).min(v.len()) - 1]);
    (p(0.5), p(0.99), ms(*v.last().unwrap()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ci = support::FakeCi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = repohub::Config::new(dir.path().join("data"));
    config.kdf = repohub::auth::KdfParams::insecure_for_tests();
    config.ci_url = Some(ci.url());
    let state = repohub::AppState::new(&config).unwrap();
    let user = state.db.create_user("bench", "x").unwrap();
    let pid = state.db.create_project("bench", "", true, user.id).unwrap();
    state.db.create_repo(pid, "r").unwrap();
    let bare = state.repo_dir("bench", "r");
    repohub::git::create_bare(&bare, &state.spool, state.limits.receive).unwrap();
    let mut child = Command::new("git")
        .current_dir(&bare)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fast_import_stream())
        .unwrap();
    assert!(child.wait().unwrap().success());
    // Two jobs per commit (a failed one, then its re-run), newest last.
    let out = Command::new("git")
        .current_dir(&bare)
        .args(["rev-list", "--reverse", "main"])
        .output()
        .unwrap();
    let repo = bare.to_string_lossy().into_owned();
    let mut last = 0;
    for c in String::from_utf8(out.stdout).unwrap().lines() {
        ci.add_commit_job(&repo, c, "failed");
        last = ci.add_commit_job(&repo, c, "succeeded");
    }

    let router = repohub::app(state);
    println!(
        "{COMMITS} commits, {} jobs; {VIEWS} views per page (in process; job lists cached for {:?})",
        2 * COMMITS,
        repohub::ci::JOBS_TTL
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>8} {:>14}",
        "page", "p50 ms", "p99 ms", "max ms", "badges", "job lists/100"
    );
    let job_page = format!("/bench/-/jobs/{last}");
    for path in ["/bench/r/log/main", "/bench/r", job_page.as_str()] {
        let calls0 = ci.state.list_calls.load(Ordering::SeqCst);
        let mut times = Vec::with_capacity(VIEWS);
        let mut badges = 0;
        for _ in 0..VIEWS {
            let req = Request::get(path)
                .header("host", "bench")
                .body(Body::empty())
                .unwrap();
            let t = Instant::now();
            let resp = router.clone().oneshot(req).await.unwrap();
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            times.push(t.elapsed());
            badges = String::from_utf8_lossy(&body)
                .matches("class=\"badge ")
                .count();
        }
        let calls = ci.state.list_calls.load(Ordering::SeqCst) - calls0;
        let (p50, p99, max) = stats(times);
        println!(
            "{path:<28} {p50:>9.2} {p99:>9.2} {max:>9.2} {badges:>8} {:>14.1}",
            calls as f64 * 100.0 / VIEWS as f64
        );
    }
}
