//! The CI views against a fake ci_service that speaks its HTTP contract
//! (the real one is in real_ci_service.rs and browser_ci.rs): job ids that
//! are not numbers, CI down, Cancel and Re-run by members and refused to
//! everyone else (the fake records what reached it), the stage bar and
//! summary fragment, and the CI badges of commits and branches.

mod support;

use http::StatusCode;
use support::{Client, FakeCi, TestApp};

const PW: &str = "correct horse battery";

async fn signed_up(app: &TestApp, name: &str) -> Client {
    let mut c = app.client();
    let r = c.signup(name, PW).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    c
}

/// `ann`, owner of the public project `p` with the repository `r`.
async fn ann_with_repo(app: &TestApp) -> Client {
    let mut ann = signed_up(app, "ann").await;
    ann.create_project("p", true).await;
    ann.create_repo("p", "r").await;
    ann
}

#[tokio::test]
async fn a_job_id_that_is_not_a_number_is_a_404_page_that_says_so() {
    let ci = FakeCi::start().await;
    let app = TestApp::new(|c| c.ci_url = Some(ci.url()));
    let mut ann = ann_with_repo(&app).await;
    for path in [
        "/p/-/jobs/abc",
        "/p/-/jobs/abc/log",
        "/p/-/jobs/abc/summary",
    ] {
        let r = ann.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        // The normal layout, with the viewer still logged in.
        r.assert_contains(&["no job abc (job ids are numbers)", "<header", "ann"]);
    }
    let r = ann.get("/p/-/jobs/999").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.assert_contains(&["project p has no job 999"]);
}

#[tokio::test]
async fn the_job_page_while_ci_is_down_says_ci_is_unreachable() {
    let ci = FakeCi::start().await;
    let app = TestApp::new(|c| c.ci_url = Some(ci.url()));
    let mut ann = ann_with_repo(&app).await;
    let path = app.state.repo_dir("p", "r").to_string_lossy().into_owned();
    let id = ci.add_job(&path, "running");
    ci.set_up(false);
    let r = ann.get(&format!("/p/-/jobs/{id}")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    r.assert_contains(&["CI is unreachable", "503", "<header"]);
    // Not configured at all: the page says how to configure it.
    let app2 = TestApp::new(|_| {});
    let mut c = signed_up(&app2, "ann").await;
    c.create_project("q", true).await;
    let r = c.get("/q/-/jobs/1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    r.assert_contains(&["CI is not configured (start repohub with --ci-url)"]);
}

#[tokio::test]
async fn members_cancel_and_rerun_and_nobody_else_reaches_ci() {
    let ci = FakeCi::start().await;
    let app = TestApp::new(|c| c.ci_url = Some(ci.url()));
    let mut ann = ann_with_repo(&app).await;
    let path = app.state.repo_dir("p", "r").to_string_lossy().into_owned();
    let running = ci.add_job(&path, "running");
    let failed = ci.add_job(&path, "failed");
    let foreign = ci.add_job("/elsewhere/other.git", "running");

    // The attack: someone logged in but outside the (public) project, an
    // anonymous visitor, and a member with a forged CSRF token.
    let mut bob = signed_up(&app, "bob").await;
    let page = bob.get(&format!("/p/-/jobs/{running}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("id=\"cancel-job\""), "{}", page.body);
    for (what, id) in [("cancel", running), ("rerun", failed)] {
        let r = bob.post(&format!("/p/-/jobs/{id}/{what}"), &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.body);
        r.assert_contains(&["only project members may do that"]);
        let mut anon = app.client();
        anon.get("/").await;
        let r = anon.post(&format!("/p/-/jobs/{id}/{what}"), &[]).await;
        assert!(r.location().starts_with("/login"), "{what}: {}", r.status);
        let r = ann
            .post_raw(&format!("/p/-/jobs/{id}/{what}"), &[("csrf", "forged")])
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}");
    }
    // A job of another project's repository, through this project.
    let r = ann.post(&format!("/p/-/jobs/{foreign}/cancel"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(ci.actions().is_empty(), "{:?}", ci.actions());

    // The member: Cancel on the running job, Re-run on the failed one.
    let page = ann.get(&format!("/p/-/jobs/{running}")).await;
    page.assert_contains(&["id=\"cancel-job\"", "data-refresh=", "data-follow="]);
    assert!(!page.body.contains("id=\"rerun-job\""));
    let r = ann.post(&format!("/p/-/jobs/{running}/cancel"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), format!("/p/-/jobs/{running}"));
    let page = ann.get(&format!("/p/-/jobs/{failed}")).await;
    page.assert_contains(&["id=\"rerun-job\""]);
    assert!(!page.body.contains("id=\"cancel-job\""));
    let r = ann.post(&format!("/p/-/jobs/{failed}/rerun"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let new = r
        .location()
        .rsplit('/')
        .next()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    assert!(new > foreign);
    assert_eq!(
        ci.actions(),
        [format!("cancel {running}"), format!("rerun {failed}")]
    );
    let page = ann.get(&format!("/p/-/jobs/{new}")).await;
    page.assert_contains(&["state-queued", "queue "]);
}

#[tokio::test]
async fn the_summary_fragment_has_the_state_and_marks_itself_final() {
    let ci = FakeCi::start().await;
    let app = TestApp::new(|c| c.ci_url = Some(ci.url()));
    let mut ann = ann_with_repo(&app).await;
    let path = app.state.repo_dir("p", "r").to_string_lossy().into_owned();
    let failed = ci.add_job(&path, "failed");
    let running = ci.add_job(&path, "running");
    let f = ann.get(&format!("/p/-/jobs/{failed}/summary")).await;
    assert_eq!(f.status, StatusCode::OK);
    assert!(!f.body.contains("<html"), "a fragment: {}", f.body);
    f.assert_contains(&["data-final=\"1\"", "id=\"job-state\"", ">failed<"]);
    // The fake records no step times: the failed job spent its 1.5 s in
    // the step after the last recorded one, the fetch.
    f.assert_contains(&["id=\"stage-bar\"", "fetch 1.5 s (failed)"]);
    let r = ann.get(&format!("/p/-/jobs/{running}/summary")).await;
    assert!(!r.body.contains("data-final"), "{}", r.body);
    r.assert_contains(&[">running<", "(running)"]);
}

#[tokio::test]
async fn commits_and_branches_show_their_ci_state_from_one_job_list() {
    let ci = FakeCi::start().await;
    let app = TestApp::new(|c| c.ci_url = Some(ci.url()));
    let mut ann = ann_with_repo(&app).await;
    let work = support::work_repo(app.dir.path(), &[("a.txt", b"one")], "first");
    let first = support::git(&work, &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    support::commit_at(&work, "second", 1_600_000_100);
    let second = support::git(&work, &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    app.push_direct(&work, "p", "r");
    let path = app.state.repo_dir("p", "r").to_string_lossy().into_owned();
    let old = ci.add_commit_job(&path, &first, "failed");
    let older = ci.add_commit_job(&path, &second, "failed");
    let newest = ci.add_commit_job(&path, &second, "succeeded");

    let log = ann.get("/p/r/log/main").await;
    assert_eq!(log.status, StatusCode::OK);
    // Each commit's newest job, linked.
    log.assert_contains(&[
        &format!("class=\"badge state-succeeded\" href=\"/p/-/jobs/{newest}\""),
        &format!("class=\"badge state-failed\" href=\"/p/-/jobs/{old}\""),
    ]);
    assert!(!log.body.contains(&format!("/p/-/jobs/{older}\"")));
    let repo = ann.get("/p/r").await;
    repo.assert_contains(&[&format!("href=\"/p/-/jobs/{newest}\"")]);
    let commit = ann.get(&format!("/p/r/commit/{first}")).await;
    commit.assert_contains(&[&format!("href=\"/p/-/jobs/{old}\"")]);

    // CI down: the pages still render, saying why there are no badges
    // (after the short cache of the job list runs out).
    ci.set_up(false);
    tokio::time::sleep(repohub::ci::JOBS_TTL).await;
    let log = ann.get("/p/r/log/main").await;
    assert_eq!(log.status, StatusCode::OK);
    log.assert_contains(&["id=\"ci-badges-unavailable\"", "CI status unavailable"]);
}

#[tokio::test]
async fn built_derivations_link_their_logs_at_the_cache_once_uploaded() {
    let ci = FakeCi::start().await;
    let app = TestApp::new(|c| {
        c.ci_url = Some(ci.url());
        c.cache_url = Some("http://cache.example:7200/".into());
    });
    let mut ann = ann_with_repo(&app).await;
    let path = app.state.repo_dir("p", "r").to_string_lossy().into_owned();
    let drv = "0123456789abcdfghijklmnpqrsvwxyz-web-disk.img.drv";
    // Not deployed (no upload step): named, not linked.
    let failed = ci.add_job(&path, "failed");
    let page = ann.get(&format!("/p/-/jobs/{failed}")).await;
    page.assert_contains(&["id=\"drv-logs\"", drv, "id=\"drv-logs-note\""]);
    assert!(!page.body.contains("cache.example"), "{}", page.body);
    // Succeeded with its upload step: each links the cache's /log/<drv>.
    let ok = ci.add_job(&path, "succeeded");
    for j in ci.state.jobs.lock().unwrap().iter_mut() {
        if j["id"] == ok {
            j["timings"] = serde_json::json!({"uploadMs": 5});
        }
    }
    let page = ann.get(&format!("/p/-/jobs/{ok}")).await;
    page.assert_contains(&[&format!("href=\"http://cache.example:7200/log/{drv}\"")]);
}

#[tokio::test]
async fn only_members_commit_a_generated_flake_and_never_over_a_moved_branch() {
    let app = TestApp::new(|_| {});
    let mut ann = ann_with_repo(&app).await;
    let work = support::work_repo(app.dir.path(), &[("bin/hello", b"echo hi\n")], "script");
    app.push_direct(&work, "p", "r");
    let head = support::git(&work, &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    let branch = |app: &TestApp| {
        let dir = app.state.repo_dir("p", "r");
        support::git(&dir, &["rev-parse", "refs/heads/main"])
            .trim()
            .to_owned()
    };
    // Outsiders of the public project, anonymous visitors and forged
    // forms change nothing.
    let mut bob = signed_up(&app, "bob").await;
    let r = bob
        .post("/p/r/autonix/commit", &[("base", head.as_str())])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = ann
        .post_raw(
            "/p/r/autonix/commit",
            &[("csrf", "forged"), ("base", head.as_str())],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A base the branch is not at: refused, naming why.
    let r = ann
        .post("/p/r/autonix/commit", &[("base", &"0".repeat(40))])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.assert_contains(&["main moved since the flake was generated"]);
    assert_eq!(branch(&app), head);
    // The member, from where the review saw it: one commit on main.
    let r = ann
        .post("/p/r/autonix/commit", &[("base", head.as_str())])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let new = branch(&app);
    assert_ne!(new, head);
    assert_eq!(r.location(), format!("/p/r/commit/{new}"));
    let dir = app.state.repo_dir("p", "r");
    let files = support::git(&dir, &["ls-tree", "--name-only", "main"]);
    assert!(
        files.contains("flake.nix") && files.contains("procurator.nix"),
        "{files}"
    );
    // The push event CI gets, as the hook would have recorded it.
    let queued = app.state.db.due_pushes(100).unwrap();
    assert!(
        queued
            .iter()
            .any(|p| p.event.new == new && p.event.old == head),
        "{queued:?}"
    );
    // Again from the same page: the branch moved and has a flake now.
    let r = ann
        .post("/p/r/autonix/commit", &[("base", new.as_str())])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.assert_contains(&["main already has a flake.nix"]);
}
