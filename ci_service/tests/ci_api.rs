//! ci_service on its own (no cache, no control plane): real git pushes
//! through the installed hook, real nix evaluation and builds, the HTTP
//! API, supersession, failure logs, crash recovery.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Pushes the change `from` → `to` and waits for its job to fail; returns
/// the job's id and JSON.
fn failing_push(
    repo: &Repo,
    url: &str,
    from: &str,
    to: &str,
    msg: &str,
) -> (i64, serde_json::Value) {
    let (commit, _) = repo.change_and_push(from, to, msg);
    let id = job_for(url, &commit);
    let job = wait_job(url, id, Duration::from_secs(60));
    assert_eq!(job["state"], "failed", "{job}");
    (id, job)
}

#[test]
fn push_builds_and_failures_are_explained() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let data = h.dir().join("ci");
    let ci = start_ci(&h, &data, &[], &[]);
    let url = ci.url();
    let repo = Repo::new(h.dir(), &url);

    // A good push: the hook queues a job that evaluates and builds.
    let (c1, out) = repo.push();
    assert!(
        out.contains("ci_service: refs/heads/main -> job"),
        "hook output: {out}"
    );
    let id = job_for(&url, &c1);
    let job = wait_job(&url, id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&url, id));
    assert_eq!(job["generation"], 1);
    assert_eq!(job["ref"], "refs/heads/main");
    let names: Vec<&str> = job["vmSpecs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db-0", "web-0", "web-1"]);
    for k in ["queueMs", "fetchMs", "evalMs", "buildMs", "publishMs"] {
        assert!(
            job["timings"][k].is_u64(),
            "{k} missing: {}",
            job["timings"]
        );
    }
    let text = log(&url, id);
    assert!(text.contains("evaluated 3 VM(s)"), "{text}");
    assert!(text.contains("published when it connects"), "{text}");

    // An evaluation error: the job fails, the log names the attribute and
    // the reason, and no generation is made.
    let (id2, job) = failing_push(
        &repo,
        &url,
        "cpu = 1;\n    memoryMb = 512;",
        "cpu = 0;\n    memoryMb = 512;",
        "bad cpu",
    );
    assert!(job["generation"].is_null());
    let err = job["error"].as_str().unwrap();
    assert!(
        err.contains("evaluating procurator.vmSpecs failed"),
        "{err}"
    );
    assert!(err.contains("cpu"), "{err}");
    assert!(log(&url, id2).contains("nothing was published"));

    // A build failure: named derivation and its output in the log.
    git(&repo.work, &["revert", "--no-edit", "HEAD"]);
    let (id3, job) = failing_push(
        &repo,
        &url,
        "failBuild = false;",
        "failBuild = true;",
        "break the web image",
    );
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("building procurator.closure failed"),
        "{job}"
    );
    let text = log(&url, id3);
    assert!(text.contains("build failed on purpose"), "{text}");
    assert!(text.contains("web-disk.img"), "{text}");
    // The job's one line names the failing builder and quotes its last
    // output, not nix's generic "1 dependencies of derivation … failed".
    let err = job["error"].as_str().unwrap();
    assert!(
        err.contains("builder for '/nix/store/") && err.contains("web-disk.img.drv' failed"),
        "{err}"
    );
    assert!(err.contains("last log lines:"), "{err}");
    assert!(err.contains("build failed on purpose"), "{err}");
    assert!(!err.contains("dependencies of derivation"), "{err}");

    // A repository without flake.nix: CI says what it looks for.
    git(&repo.work, &["revert", "--no-edit", "HEAD"]);
    git(&repo.work, &["rm", "-q", "flake.nix"]);
    git(&repo.work, &["commit", "-q", "-m", "no flake"]);
    let (c4, _) = repo.push();
    let id4 = job_for(&url, &c4);
    let job = wait_job(&url, id4, Duration::from_secs(60));
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(
        job["error"],
        "no flake.nix at the repository root; CI evaluates procurator.vmSpecs and \
         procurator.closure of it"
    );

    // Re-run: the same commit is built again as a new job, and fails the
    // same way; a job still running cannot be re-run.
    let (status, body) = request(
        http::Method::POST,
        &format!("{url}/jobs/{id4}/rerun"),
        &[],
        None,
    );
    assert_eq!(status, http::StatusCode::ACCEPTED, "{body:?}");
    let id5 = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["jobId"]
        .as_i64()
        .unwrap();
    assert!(id5 > id4);
    let job5 = wait_job(&url, id5, Duration::from_secs(60));
    assert_eq!(job5["commit"], c4.as_str());
    assert_eq!(job5["ref"], job["ref"]);
    assert_eq!(job5["error"], job["error"]);
    let (status, _) = request(
        http::Method::POST,
        &format!("{url}/jobs/999999/rerun"),
        &[],
        None,
    );
    assert_eq!(status, http::StatusCode::NOT_FOUND);

    let gens = get_json(&format!("{url}/generations"));
    assert_eq!(
        gens.as_array().unwrap().len(),
        1,
        "failures made no generation: {gens}"
    );
    // camelCase, as every Procurator JSON.
    assert_eq!(gens[0]["jobId"], id, "{gens}");
    assert!(gens[0]["intentHash"].is_string() && gens[0]["createdAtMs"].is_i64());
    let jobs = get_json(&format!("{url}/jobs?limit=2"));
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    assert_eq!(jobs[0]["id"], id5, "newest first");
}

#[test]
fn api_validates_supersedes_and_follows_logs() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let secret = h.dir().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let data = h.dir().join("ci");
    let ci = start_ci(
        &h,
        &data,
        &["--hook-secret-file", secret.to_str().unwrap()],
        &[],
    );
    let url = ci.url();
    let push = |commit: &str, auth: Option<&str>| {
        let headers: Vec<_> = auth
            .map(|a| (http::header::AUTHORIZATION, a.to_owned()))
            .into_iter()
            .collect();
        let body = serde_json::json!({"repo": "/nonexistent/repo.git", "ref": "refs/heads/dev", "old": "0".repeat(40), "new": commit});
        request(
            http::Method::POST,
            &format!("{url}/hooks/push"),
            &headers,
            Some(body),
        )
    };
    assert_eq!(push(&"a".repeat(40), None).0, 401);
    assert_eq!(push(&"a".repeat(40), Some("Bearer wrong")).0, 401);
    assert_eq!(push("not-a-sha", Some("Bearer s3cret")).0, 400);
    // A push event over the body limit is refused before it is buffered.
    let huge = serde_json::json!({"repo": "x".repeat(ci_service::api::MAX_HOOK_BODY), "ref": "refs/heads/dev", "old": "0".repeat(40), "new": "a".repeat(40)});
    let (st, body) = request(
        http::Method::POST,
        &format!("{url}/hooks/push"),
        &[(http::header::AUTHORIZATION, "Bearer s3cret".to_owned())],
        Some(huge),
    );
    assert_eq!(st, 413, "{}", String::from_utf8_lossy(&body));
    let (st, _) = push(&"0".repeat(40), Some("Bearer s3cret"));
    assert_eq!(st, 200, "a deleted ref queues nothing");
    assert_eq!(get(&format!("{url}/jobs/999")).0, 404);

    // The hook carries no secret: ci_service refuses it, the push stands.
    let repo = Repo::new(h.dir(), &url);
    let gate = gate_the_build(&h, &repo);
    let (c1, out) = repo.push();
    assert!(
        out.contains("warning: ci_service refused refs/heads/main: 401"),
        "{out}"
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main"]).trim(),
        c1,
        "the push went through"
    );

    // A job blocked in its build, then two more pushes to the same ref:
    // the older queued one is superseded at once, the newer runs next.
    let repo_path = repo.bare.to_str().unwrap().to_owned();
    let post = |commit: &str| {
        let body = serde_json::json!({"repo": repo_path, "ref": "refs/heads/main", "old": "0".repeat(40), "new": commit});
        let (st, body) = request(
            http::Method::POST,
            &format!("{url}/hooks/push"),
            &[(http::header::AUTHORIZATION, "Bearer s3cret".to_owned())],
            Some(body),
        );
        assert_eq!(st, 202);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["jobId"]
            .as_i64()
            .unwrap()
    };
    let running = post(&c1);
    wait_until(Duration::from_secs(30), "the build to start", || {
        log(&url, running)
            .contains("building procurator.closure")
            .then_some(())
    });
    let older = post(&"1".repeat(40));
    let newer = post(&"2".repeat(40));
    let state = |id: i64| {
        get_json(&format!("{url}/jobs/{id}"))["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (state(running), state(older), state(newer)),
        ("running".into(), "superseded".into(), "queued".into())
    );
    std::fs::write(&gate, "go").unwrap();
    assert_eq!(
        wait_job(&url, running, Duration::from_secs(60))["state"],
        "succeeded"
    );
    let last = wait_job(&url, newer, Duration::from_secs(30));
    assert_eq!(last["state"], "failed");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains(&format!("revision \"{}\" not found", "2".repeat(40))),
        "{last}"
    );
    // Following the log of a finished job returns all of it and ends.
    let (st, body) = get(&format!("{url}/jobs/{newer}/log?follow=1"));
    assert_eq!(st, 200);
    assert!(
        String::from_utf8_lossy(&body)
            .contains("failed: reading the pushed repository failed: revision"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn a_job_interrupted_by_a_crash_completes_after_restart() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let data = h.dir().join("ci");
    let mut ci = start_ci(&h, &data, &[], &[]);
    let repo = Repo::new(h.dir(), &ci.url());
    let gate = gate_the_build(&h, &repo);
    let (c, _) = repo.push();
    let url = ci.url();
    let id = job_for(&url, &c);
    wait_until(Duration::from_secs(30), "the build to start", || {
        log(&url, id)
            .contains("building procurator.closure")
            .then_some(())
    });
    assert_eq!(get_json(&format!("{url}/jobs/{id}"))["state"], "running");
    ci.kill();

    // Restart on the same data dir (a new port): the job is re-queued and
    // runs again from the start, and completes once the build may finish.
    let ci2 = start_ci(&h, &data, &[], &[]);
    let url2 = ci2.url();
    wait_until(Duration::from_secs(30), "the job to run again", || {
        (log(&url2, id).matches(&format!("job {id} for")).count() == 2).then_some(())
    });
    // Follow the log live while the build is blocked: the stream stays
    // open, then carries the rest and ends when the job ends.
    let follow_url = format!("{url2}/jobs/{id}/log?follow=1");
    let follower = std::thread::spawn(move || get(&follow_url));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !follower.is_finished(),
        "a followed log of a running job stays open"
    );
    std::fs::write(&gate, "go").unwrap();
    let (st, body) = follower.join().unwrap();
    assert_eq!(st, 200);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.trim_end()
            .ends_with("succeeded: generation 1 of project default"),
        "{body}"
    );
    let job = wait_job(&ci2.url(), id, Duration::from_secs(180));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci2.url(), id));
    assert_eq!(job["generation"], 1);
}

#[test]
fn hook_falls_back_to_curl_when_the_binary_is_gone() {
    if Command::new("curl").arg("--version").output().is_err() {
        // The binary path is the hook's main route; curl is optional.
        eprintln!("curl not installed: nothing to check");
        return;
    }
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let secret = h.dir().join("secret");
    std::fs::write(&secret, "hook-s3cret\n").unwrap();
    let ci = start_ci(
        &h,
        &h.dir().join("ci"),
        &["--hook-secret-file", secret.to_str().unwrap()],
        &[],
    );
    let url = ci.url();
    let repo = Repo::new(h.dir(), &url);
    ci_service::hook::install_hook(
        &repo.bare,
        &url,
        Some(&secret),
        std::path::Path::new("/nonexistent/ci_service"),
    )
    .unwrap();
    let (c1, out) = repo.push();
    assert!(out.contains("ci_service: refs/heads/main queued"), "{out}");
    let job = wait_job(&url, job_for(&url, &c1), Duration::from_secs(60));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["repo"],
        repo.bare.canonicalize().unwrap().to_str().unwrap()
    );
}
