//! CI that survives hiccups, with the real binaries (ci_service, the
//! cache), real git pushes and the real nix: a transient failure (the
//! cache away during the upload) is retried with backoff inside the job
//! and logged; deterministic failures (a build error, a refused upload)
//! are not; `DELETE /jobs/{id}` cancels a queued job at once and a running
//! one by stopping its nix, which leaves no process behind; finished jobs
//! older than the retention period are pruned with their logs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use testkit::services::{cache_command, cache_keys};
use testkit::{Log, Proc};

const TOKEN: &str = "hiccups-upload-token";

/// A cache serving from `dir` on `addr` (its keys and token made first by
/// `cache_keys`).
fn start_cache(dir: &Path, addr: &str) -> Proc {
    Proc::spawn_group("cache", cache_command(dir, addr), Log::Quiet)
}

/// Waits until job `id`'s log contains `needle`; returns the log.
fn wait_log(ci: &str, id: i64, needle: &str) -> String {
    wait_until(
        Duration::from_secs(60),
        &format!("job {id} to log {needle:?}"),
        || {
            let text = log(ci, id);
            text.contains(needle).then_some(text)
        },
    )
}

/// `DELETE {ci}/jobs/{id}` with an optional bearer token.
fn cancel(ci: &str, id: i64, token: Option<&str>) -> (http::StatusCode, serde_json::Value) {
    let headers: Vec<_> = token
        .map(|t| (http::header::AUTHORIZATION, format!("Bearer {t}")))
        .into_iter()
        .collect();
    let (status, body) = request(
        http::Method::DELETE,
        &format!("{ci}/jobs/{id}"),
        &headers,
        None,
    );
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[test]
fn a_job_survives_the_cache_restarting_mid_upload() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let cache_dir = h.dir().join("cache");
    cache_keys(&cache_dir, "hiccups-cache", TOKEN);
    let addr = testkit::fs::free_port().to_string();
    let mut cache = start_cache(&cache_dir, &addr);
    let cache_url = cache.url();
    let token_file = cache_dir.join("token");
    let data = h.dir().join("ci");
    let ci = start_ci(
        &h,
        &data,
        &[
            "--cache",
            &cache_url,
            "--cache-token-file",
            token_file.to_str().unwrap(),
            "--retries",
            "20",
            "--retry-backoff-ms",
            "200",
        ],
        &[],
    );
    let url = ci.url();
    let repo = Repo::new(h.dir(), &url);
    let gate = gate_the_build(&h, &repo);
    let (commit, _) = repo.push();
    let id = job_for(&url, &commit);
    wait_log(&url, id, "building procurator.closure");

    // The cache goes down while the build is held; the build finishes and
    // the upload finds no cache, and is retried.
    cache.kill();
    std::fs::write(&gate, "go").unwrap();
    let text = wait_log(&url, id, "upload attempt 1 of 21 failed, transient");
    assert!(
        text.contains("retrying in 200 ms"),
        "the first wait is the backoff: {text}"
    );
    // Some attempts later the cache is back on its address.
    wait_log(&url, id, "upload attempt 2 of 21 failed, transient");
    let cache =
        testkit::cluster::respawn("the cache to restart", || start_cache(&cache_dir, &addr));

    let job = wait_job(&url, id, Duration::from_secs(120));
    let text = log(&url, id);
    assert_eq!(job["state"], "succeeded", "{job}\n{text}");
    assert!(text.contains("pinned as default/generation-1"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let last_retry = lines
        .iter()
        .rposition(|l| l.starts_with("upload attempt "))
        .unwrap();
    let pinned = lines
        .iter()
        .position(|l| l.starts_with("pinned as"))
        .unwrap();
    assert!(
        last_retry < pinned,
        "the retries come before the pin: {text}"
    );
    // Each failed attempt says what was wrong: the cache not answering.
    assert!(
        text.lines()
            .filter(|l| l.starts_with("upload attempt "))
            .all(|l| l.contains("cannot connect to")),
        "{text}"
    );

    // What the job uploaded is in the restarted cache.
    let generation = &get_json(&format!("{url}/generations"))[0];
    for path in generation["closure"].as_str().unwrap().split(' ') {
        let hash = &path["/nix/store/".len()..][..32];
        let (status, _) = get(&format!("{}/{hash}.narinfo", cache.url()));
        assert_eq!(status, 200, "{path} is in the cache");
    }
}

#[test]
fn deterministic_failures_are_not_retried() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let cache_dir = h.dir().join("cache");
    cache_keys(&cache_dir, "hiccups-cache", TOKEN);
    let cache = start_cache(&cache_dir, "127.0.0.1:0");
    // An upload token the cache does not know: every upload is refused.
    let wrong = h.dir().join("wrong-token");
    testkit::fs::write_private(&wrong, "not-the-upload-token\n");
    let data = h.dir().join("ci");
    let ci = start_ci(
        &h,
        &data,
        &[
            "--cache",
            &cache.url(),
            "--cache-token-file",
            wrong.to_str().unwrap(),
            "--retries",
            "5",
            "--retry-backoff-ms",
            "100",
        ],
        &[],
    );
    let url = ci.url();
    let repo = Repo::new(h.dir(), &url);

    // The cache answers and says no: one attempt, the job fails.
    let (commit, _) = repo.push();
    let id = job_for(&url, &commit);
    let job = wait_job(&url, id, Duration::from_secs(120));
    let text = log(&url, id);
    assert_eq!(job["state"], "failed", "{job}\n{text}");
    let err = job["error"].as_str().unwrap();
    assert!(err.contains("uploading the closure"), "{job}");
    assert!(!err.contains("transient"), "{job}");
    assert!(!text.contains("upload attempt"), "not retried: {text}");
    assert_eq!(text.matches("copying the closure").count(), 1, "{text}");

    // A build error: fails once, nothing retried.
    let (commit, _) = repo.change_and_push(
        "failBuild = false;",
        "failBuild = true;",
        "break the web image",
    );
    let id = job_for(&url, &commit);
    let job = wait_job(&url, id, Duration::from_secs(120));
    let text = log(&url, id);
    assert_eq!(job["state"], "failed", "{job}\n{text}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("building procurator.closure failed"),
        "{job}"
    );
    assert!(!text.contains("attempt"), "not retried: {text}");
    assert_eq!(
        text.lines()
            .filter(|l| *l == "building procurator.closure")
            .count(),
        1,
        "{text}"
    );
}

/// The processes descending from `pid`, with their command names.
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_owned();
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        parent_of.push((p, ppid, comm));
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp, comm) in &parent_of {
            if *pp == parent {
                found.push((*p, comm.clone()));
                frontier.push(*p);
            }
        }
    }
    found
}

/// Processes anywhere whose command line holds `needle` (the gated
/// builder's script names this test's gate file).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

#[test]
fn cancelling_stops_queued_and_running_jobs_and_leaves_no_nix_behind() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let tokens = h.dir().join("api-tokens");
    testkit::fs::write_private(
        &tokens,
        "admin admin-token-0123456789abcdef\nreader reader-token-0123456789abcdef\n",
    );
    let data = h.dir().join("ci");
    let ci = start_ci(
        &h,
        &data,
        &["--api-token-file", tokens.to_str().unwrap()],
        &[],
    );
    let url = ci.url();
    const READER: &str = "reader-token-0123456789abcdef";
    let admin = Some("admin-token-0123456789abcdef");
    let reader = Some(READER);
    let repo = Repo::new(h.dir(), &url);
    let gate = gate_the_build(&h, &repo);
    let marker = gate.display().to_string();
    let bare = repo.bare.to_str().unwrap().to_owned();
    let (commit, _) = repo.push();
    // Reads need a token here.
    let read = |path: String| {
        let (s, b) = request(
            http::Method::GET,
            &format!("{url}{path}"),
            &[(http::header::AUTHORIZATION, format!("Bearer {READER}"))],
            None,
        );
        assert_eq!(s, 200, "{path}: {b:?}");
        b
    };
    let get_job = |id: i64| {
        serde_json::from_slice::<serde_json::Value>(&read(format!("/jobs/{id}"))).unwrap()
    };
    let job_log = |id: i64| String::from_utf8_lossy(&read(format!("/jobs/{id}/log"))).into_owned();
    // The hook's job is the first.
    let running = 1;
    assert_eq!(get_job(running)["commit"], commit);
    wait_until(Duration::from_secs(60), "the build to start", || {
        job_log(running)
            .contains("building procurator.closure")
            .then_some(())
    });
    wait_until(Duration::from_secs(30), "the gated builder to run", || {
        (!processes_mentioning(&marker).is_empty()).then_some(())
    });

    // A job queued behind it (another ref), cancelled at once.
    let queued = post_push(&url, &bare, "refs/heads/other", &commit);
    assert_eq!(get_job(queued)["state"], "queued");
    let (s, body) = cancel(&url, queued, reader);
    assert_eq!(s, 403, "a reader may not cancel: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("needs an admin token"),
        "{body}"
    );
    let (s, _) = cancel(&url, queued, None);
    assert_eq!(s, 401, "no token, no cancel");
    let (s, body) = cancel(&url, queued, admin);
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    assert_eq!(get_job(queued)["state"], "cancelled");

    // The running one: its nix and the builder under it are stopped.
    let (s, body) = cancel(&url, running, admin);
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["state"], "running");
    let job = wait_until(Duration::from_secs(30), "the job to end", || {
        let j = get_job(running);
        (j["state"] != "running").then_some(j)
    });
    let text = job_log(running);
    assert_eq!(job["state"], "cancelled", "{job}\n{text}");
    assert!(
        text.contains("cancelled during build: nix was stopped"),
        "{text}"
    );
    assert!(
        text.contains("the active generation is unchanged"),
        "{text}"
    );
    wait_until(
        Duration::from_secs(15),
        "nix and the builder to be gone",
        || {
            let left: Vec<_> = descendants(ci.pid());
            let builders = processes_mentioning(&marker);
            (left.is_empty() && builders.is_empty()).then_some(())
        },
    );

    // Finished jobs answer 409 with their state; unknown ones 404.
    let (s, body) = cancel(&url, running, admin);
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already ended cancelled"),
        "{body}"
    );
    let (s, _) = cancel(&url, 999, admin);
    assert_eq!(s, 404);

    // The runner goes on: a new push builds and succeeds.
    std::fs::write(&gate, "go").unwrap();
    let again = post_push(&url, &bare, "refs/heads/main", &commit);
    let job = wait_until(Duration::from_secs(120), "the next job", || {
        let j = get_job(again);
        matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
    });
    assert_eq!(job["state"], "succeeded", "{job}\n{}", job_log(again));
    let (s, body) = cancel(&url, again, admin);
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already ended succeeded"),
        "{body}"
    );
}

#[test]
fn finished_jobs_past_the_retention_are_pruned_with_their_logs() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let data = h.dir().join("ci");
    let mut ci = start_ci(&h, &data, &[], &[]);
    let url = ci.url();
    // Pushes of a repository that does not exist fail fast, in fetch.
    let missing = h.dir().join("missing.git").display().to_string();
    let old = post_push(&url, &missing, "refs/heads/a", &"a".repeat(40));
    let recent = post_push(&url, &missing, "refs/heads/b", &"b".repeat(40));
    for id in [old, recent] {
        assert_eq!(
            wait_job(&url, id, Duration::from_secs(60))["state"],
            "failed"
        );
    }
    let log_of = |id: i64| data.join("logs").join(format!("{id}.log"));
    assert!(log_of(old).exists() && log_of(recent).exists());
    ci.kill();

    // One job ended 31 days ago, the other an hour ago.
    let day_ms: i64 = 86_400_000;
    let now = commands::telemetry::now_ms() as i64;
    let db = rusqlite::Connection::open(data.join("ci.sqlite")).unwrap();
    db.execute(
        "UPDATE jobs SET finished_at_ms = ?1 WHERE id = ?2",
        rusqlite::params![now - 31 * day_ms, old],
    )
    .unwrap();
    db.execute(
        "UPDATE jobs SET finished_at_ms = ?1 WHERE id = ?2",
        rusqlite::params![now - 3_600_000, recent],
    )
    .unwrap();
    drop(db);

    // Restarted with the default retention (30 days): pruned at start.
    let ci = start_ci(&h, &data, &[], &[]);
    let url = ci.url();
    wait_until(Duration::from_secs(10), "the old job to be pruned", || {
        (get(&format!("{url}/jobs/{old}")).0 == 404).then_some(())
    });
    assert!(!log_of(old).exists(), "its log went with it");
    assert_eq!(get_json(&format!("{url}/jobs/{recent}"))["state"], "failed");
    assert!(log_of(recent).exists());
    let ids: Vec<i64> = get_json(&format!("{url}/jobs"))
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![recent]);

    // A retention of 0 days is refused with the flag named.
    let out = std::process::Command::new(bin("ci_service"))
        .args([
            "--insecure-no-auth",
            "--job-retention-days",
            "0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--job-retention-days"), "{err}");
}
