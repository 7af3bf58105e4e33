//! End to end with the real ci_service (in process, hermetic nix): a push of
//! the hermetic example flake through repohub's smart HTTP reaches
//! ci_service through the hook and the notifier, ci_service evaluates and
//! builds it, and repohub's project page shows the job, its log and the VM
//! specs of that good build. A push of the same flake to a repository that
//! is not the project's deploy repository is built but not deployed, with
//! the reason on its job. ci_service's read API wants a token: repohub
//! sends its reader token (`--ci-token-file`), a client without one is
//! refused. The job page's Cancel button reaches ci_service's
//! `DELETE /jobs/{id}`.

mod support;

use std::time::Duration;

use support::{app_and_server, git_async, push_main, work_repo};
use testkit::fs::{copy_tree, example_dir};

const PW: &str = "correct horse battery";
/// The `reader` token of ci_service's read API that repohub is given.
const CI_READER: &str = "ci-read-api-reader-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_through_repohub_is_built_by_ci_service_and_shown() {
    let nix = repo_outils::testing::HermeticNix::new().unwrap();
    let (ci_url, _stop) = support::real_ci_service(&nix, &format!("reader {CI_READER}\n")).await;

    let (app, srv) = app_and_server(support::ci_at(&ci_url, CI_READER)).await;

    let mut ann = app.client();
    ann.signup("ann", PW).await;
    ann.create_project("demo", true).await;
    ann.create_repo("demo", "cluster").await;
    ann.create_repo("demo", "notes").await;
    let token = ann.token().await;

    let work = work_repo(app.dir.path(), &[(".keep", b"")], "empty start");
    copy_tree(&example_dir(), &work);
    let (ok, out) = git_async(&work, &["add", "-A"]).await;
    assert!(ok, "{out}");
    support::commit_at(&work, "hermetic example", 1_600_000_100);
    push_main(&work, &srv.auth_url("ann", &token, "/demo/cluster.git")).await;

    push_main(&work, &srv.auth_url("ann", &token, "/demo/notes.git")).await;

    let anonymous = repohub::ci::client(Some(ci_url.clone()), None).unwrap();
    let ci = anonymous.clone().with_read_token(Some(CI_READER.into()));
    // The finished job of `repo`, through repohub's own client.
    let finished = |repo: &str| {
        let repo_path = app
            .state
            .repo_dir("demo", repo)
            .to_string_lossy()
            .into_owned();
        let ci = &ci;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(240);
            loop {
                let jobs = ci.jobs(&repo_path, 5).await.unwrap_or_default();
                if let Some(j) = jobs.first().filter(|j| {
                    matches!(
                        j.state.as_str(),
                        "succeeded" | "failed" | "built-not-deployed"
                    )
                }) {
                    break j.clone();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no finished job for {repo_path}: {jobs:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let job = finished("cluster").await;
    let cluster_path = app.state.repo_dir("demo", "cluster");
    let refused = anonymous
        .jobs(&cluster_path.to_string_lossy(), 5)
        .await
        .expect_err("ci_service's read API answered a client without a token");
    assert!(
        matches!(refused, repohub::ci::CiError::Status { status: 401, .. }),
        "{}",
        commands::report::error_chain(&refused)
    );
    let notes = finished("notes").await;
    let notes_full = ci.job(notes.id).await.unwrap();
    assert_eq!(notes.state.as_str(), "built-not-deployed", "{notes_full:?}");
    let why = notes_full.error.clone().unwrap_or_default();
    assert!(why.contains("deploy"), "{why}");
    assert_eq!(job.git_ref, "refs/heads/main");
    let full = ci.job(job.id).await.unwrap();
    assert_eq!(job.state.as_str(), "succeeded", "{full:?}");

    let page = ann.get("/demo").await;
    assert!(
        page.body.contains(&format!("/demo/-/jobs/{}", job.id)),
        "{}",
        page.body
    );
    assert!(page.body.contains("state-succeeded"));
    assert!(
        page.body.contains("id=\"vm-specs\"")
            && page.body.contains("web-0")
            && page.body.contains("db-0")
    );
    assert!(page.body.contains("id=\"flake\""));
    let jp = ann.get(&format!("/demo/-/jobs/{}", job.id)).await;
    assert!(jp.body.contains("evaluated 3 VM(s)"), "{}", jp.body);
    // A finished job shows no Cancel button; a cancel posted anyway is
    // refused by ci_service: repohub holds only its reader token here, and
    // the refusal is shown as such (cancelling needs an admin token).
    let cancel = format!("/demo/-/jobs/{}/cancel", job.id);
    assert!(!jp.body.contains(&cancel), "{}", jp.body);
    let r = ann.post(&cancel, &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body.contains("may read jobs but not cancel them"),
        "{}",
        r.body
    );
    // Someone outside the project may not post it at all.
    let mut bob = app.client();
    bob.signup("bob", PW).await;
    let r = bob.post(&cancel, &[]).await;
    assert!(r.status.is_client_error(), "{}", r.body);
    assert!(!r.body.contains("has already ended"), "{}", r.body);
    let log = ann
        .get(&format!("/demo/-/jobs/{}/log?follow=1", job.id))
        .await;
    assert!(log.body.contains("evaluated 3 VM(s)"));
}
