//! Browser test of the CI views (headless Chromium) with the REAL
//! ci_service (in process, hermetic nix) behind a real repohub server: a
//! push of the hermetic example is followed on its job page from push to
//! `succeeded` without a reload, with the stage bar of its steps; Re-run
//! builds the same commit again; the commit log shows each commit's CI
//! badge. A repository without flake.nix fails its job saying what CI
//! looks for, the job page offers "Generate flake", and the generated
//! flake is committed from the page and reaches CI, which finds and reads
//! it. Each page is screenshotted under `target/test-artifacts/repohub/`
//! and checked for no horizontal scroll at 1280 px.

mod support;

use std::time::{Duration, Instant};

use support::artefacts;
use support::webdriver::{Driver, Session};
use support::{app_and_server, git_async, push_main, work_repo};
use testkit::fs::{copy_tree, example_dir};

const PW: &str = "correct horse battery";
/// An `admin` token of ci_service's API: repohub may cancel and re-run.
const CI_ADMIN: &str = "ci-api-admin-token-for-repohub-0123456789ab";

/// The newest job of the repository at `repo` that satisfies `pred`.
async fn job_where(
    ci: &repohub::ci::CiClient,
    repo: &str,
    secs: u64,
    pred: impl Fn(&repohub::ci::Job) -> bool,
) -> repohub::ci::Job {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let jobs = ci.jobs(repo, 10).await.unwrap_or_default();
        if let Some(j) = jobs.iter().find(|j| pred(j)) {
            return j.clone();
        }
        assert!(Instant::now() < deadline, "no such job of {repo}: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Screenshot `name` and the layout check every CI page must pass.
async fn shot(b: &Session<'_>, name: &str) {
    b.screenshot(name).await;
    assert!(
        b.ci_page_fits_width().await,
        "{name}: the page scrolls sideways at 1280 px"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_push_to_success_and_a_flake_generated_and_committed_from_the_page() {
    let nix = repo_outils::testing::HermeticNix::new().unwrap();
    let (ci_url, _stop) = support::real_ci_service(&nix, &format!("admin {CI_ADMIN}\n")).await;
    let ci = repohub::ci::client(Some(ci_url.clone()), None)
        .unwrap()
        .with_read_token(Some(CI_ADMIN.into()));

    let (app, srv) = app_and_server(support::ci_at(&ci_url, CI_ADMIN)).await;
    let mut ann = app.client();
    ann.signup("ann", PW).await;
    ann.create_project("demo", true).await;
    ann.create_repo("demo", "cluster").await;
    ann.create_repo("demo", "api").await;
    let token = ann.token().await;
    let cluster = app
        .state
        .repo_dir("demo", "cluster")
        .to_string_lossy()
        .into_owned();
    let api = app
        .state
        .repo_dir("demo", "api")
        .to_string_lossy()
        .into_owned();

    let driver = Driver::start().await;
    let b = driver.session(artefacts()).await;
    let url = |p: &str| srv.url(p);
    b.goto(&url("/login")).await;
    b.fill("#username", "ann").await;
    b.fill("#password", PW).await;
    b.click("#submit").await;
    b.wait_text("header", "ann", 10).await;

    // A push of the hermetic example; its job page is opened as soon as
    // the job exists and must reach `succeeded` by itself.
    let work = work_repo(app.dir.path(), &[(".keep", b"")], "empty start");
    copy_tree(&example_dir(), &work);
    let (ok, out) = git_async(&work, &["add", "-A"]).await;
    assert!(ok, "{out}");
    support::commit_at(&work, "hermetic example", 1_600_000_100);
    push_main(&work, &srv.auth_url("ann", &token, "/demo/cluster.git")).await;
    let job = job_where(&ci, &cluster, 60, |_| true).await;
    b.goto(&url(&format!("/demo/-/jobs/{}", job.id))).await;
    b.wait_text("#job-state", "succeeded", 240).await;
    // Every step, in order, with its time; nothing failed.
    let stages = b.wait_text("#stages", "publish", 10).await;
    let order: Vec<usize> = ["queue", "fetch", "eval", "build", "upload", "publish"]
        .iter()
        .map(|s| {
            stages
                .find(&format!("{s} "))
                .unwrap_or_else(|| panic!("{s}: {stages}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stages}");
    assert!(!stages.contains("failed"), "{stages}");
    let src = b.source().await;
    assert_eq!(src.matches("<rect class=\"stage-done").count(), 6, "{src}");
    b.find("#log[data-state=done]", 30).await;
    assert!(b.text("#log").await.contains("evaluated 3 VM(s)"));
    // The page offers Re-run (the job ended), not Cancel.
    b.find("#rerun-job", 10).await;
    assert!(!src.contains("id=\"cancel-job\""));
    shot(&b, "ci-01-job-succeeded").await;

    // Re-run: a new job for the same commit, followed to its end too.
    let before = b.current_url().await;
    b.click("#rerun-job").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let here = loop {
        let u = b.current_url().await;
        if u != before {
            break u;
        }
        assert!(Instant::now() < deadline, "Re-run stayed on {before}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rerun: i64 = here.rsplit('/').next().unwrap().parse().unwrap();
    assert!(rerun > job.id, "{here}");
    b.wait_text("#job-state", "succeeded", 240).await;
    assert_eq!(ci.job(rerun).await.unwrap().commit, job.commit);
    shot(&b, "ci-02-rerun-succeeded").await;

    // The commit log and the repository page: the commit's badge links
    // its newest job.
    b.goto(&url("/demo/cluster/log/main")).await;
    let badge = format!("a.badge[href='/demo/-/jobs/{rerun}']");
    b.find(&badge, 10).await;
    b.wait_text("#commits", "succeeded", 10).await;
    shot(&b, "ci-03-log-badges").await;
    b.goto(&url("/demo/cluster")).await;
    b.find(&badge, 10).await;
    shot(&b, "ci-04-repo-badges").await;

    // A repository without a flake: CI says what it looks for and the job
    // page offers "Generate flake".
    let w2 = work_repo(
        app.dir.path(),
        &[
            ("bin/hello", b"#!/bin/sh\necho hello\n"),
            ("README.md", b"# api\n"),
        ],
        "a script",
    );
    push_main(&w2, &srv.auth_url("ann", &token, "/demo/api.git")).await;
    let failed = job_where(&ci, &api, 60, |j| j.state.is_final()).await;
    b.goto(&url(&format!("/demo/-/jobs/{}", failed.id))).await;
    b.wait_text("#job-state", "failed", 10).await;
    b.wait_text(
        "#job-error",
        "no flake.nix at the repository root; CI evaluates procurator.vmSpecs and procurator.closure of it",
        10,
    )
    .await;
    b.wait_text("#stages", "eval", 10).await;
    b.find("#stages li.stage-failed[data-stage=eval]", 10).await;
    b.find("#no-flake", 10).await;
    shot(&b, "ci-05-job-no-flake").await;
    b.click("#generate-flake").await;
    b.wait_text("#generated-flake", "procurator", 60).await;
    let flake = b.text("#generated-flake").await;
    assert!(flake.contains("procurator.lib.evalNixosCluster"), "{flake}");
    shot(&b, "ci-06-generated-flake").await;

    // Committed from the page: a commit by ann on main, on top of the
    // pushed head, with both files; CI gets the push.
    let head = support::git(&w2, &["rev-parse", "HEAD"]).trim().to_owned();
    b.click("#commit-flake").await;
    b.wait_text("#changed", "flake.nix", 30).await;
    b.wait_text("#changed", "procurator.nix", 10).await;
    let commit_url = b.current_url().await;
    let new = commit_url.rsplit('/').next().unwrap().to_owned();
    assert_ne!(new, head);
    shot(&b, "ci-07-committed-flake").await;
    let (ok, out) = git_async(
        &w2,
        &[
            "pull",
            "-q",
            &srv.auth_url("ann", &token, "/demo/api.git"),
            "main",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let log = support::git(&w2, &["log", "-1", "--format=%an %P"]);
    assert_eq!(log.trim(), format!("ann {head}"));
    // CI builds the new commit: it finds the flake and reads its inputs
    // (the generated flake names nixpkgs and Procurator's library, which
    // CI never locks itself: it asks for flake.lock, the next step).
    let next = job_where(&ci, &api, 60, |j| j.commit == new && j.state.is_final()).await;
    let why = next.error.clone().unwrap_or_default();
    assert!(!why.starts_with("no flake.nix"), "{why}");
    assert!(why.contains("flake.lock"), "{why}");
    b.goto(&url(&format!("/demo/-/jobs/{}", next.id))).await;
    b.wait_text("#job-error", "flake.lock", 10).await;
    shot(&b, "ci-08-generated-flake-job").await;

    // A second commit from the same (now stale) page is refused, and
    // nothing moves.
    b.goto(&url("/demo/api")).await;
    let src = b.source().await;
    assert!(
        !src.contains("id=\"generate-flake\""),
        "the head has a flake now"
    );
    let mut again = ann.clone();
    let r = again
        .post("/demo/api/autonix/commit", &[("base", head.as_str())])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("main moved since the flake was generated"),
        "{}",
        r.body
    );
}
