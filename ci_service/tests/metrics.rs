//! ci_service's `/metrics`, scraped with a real HTTP client and parsed as
//! Prometheus text: a real push runs a job through real nix, and the jobs
//! gauge and the step duration histograms move; the endpoint needs no
//! token even when reads do, and names no repository or project.

mod common;

use std::time::Duration;

use common::*;
use testkit::metrics::{scrape, value};

#[test]
fn a_job_moves_the_ci_metrics() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let data = h.dir().join("ci");
    let ci = start_ci(&h, &data, &[], &[]);
    let url = ci.url();
    let metrics = format!("{url}/metrics");
    let repo = Repo::new(h.dir(), &url);

    let before = scrape(&metrics);
    assert_eq!(value(&before, "procurator_ci_jobs", &[]), 0.0);
    assert_eq!(
        value(
            &before,
            "procurator_ci_step_seconds_count",
            &[("step", "build")]
        ),
        0.0
    );

    let (c1, _) = repo.push();
    let id = job_for(&url, &c1);
    let job = wait_job(&url, id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&url, id));

    let after = scrape(&metrics);
    assert_eq!(
        value(&after, "procurator_ci_jobs", &[("state", "succeeded")]),
        1.0
    );
    assert_eq!(
        value(&after, "procurator_ci_jobs", &[("state", "queued")]),
        0.0
    );
    for step in ["queue", "fetch", "eval", "build", "publish"] {
        assert_eq!(
            value(
                &after,
                "procurator_ci_step_seconds_count",
                &[("step", step)]
            ),
            1.0,
            "step {step}"
        );
    }
    // Counts and durations only: no label carries a name.
    for s in &after.samples {
        for (k, _) in s.labels.iter() {
            assert!(
                ["state", "step", "le"].contains(&k.as_str()),
                "label {k} on {}",
                s.metric
            );
        }
    }
}

#[test]
fn metrics_need_no_token_when_reads_do() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let data = h.dir().join("ci");
    let tokens = h.dir().join("api-tokens");
    std::fs::write(&tokens, "reader reader-token-0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ci = start_ci(
        &h,
        &data,
        &["--api-token-file", tokens.to_str().unwrap()],
        &[],
    );
    let url = ci.url();
    let (status, _) = get(&format!("{url}/jobs"));
    assert_eq!(status, http::StatusCode::UNAUTHORIZED);

    // A push event for a repository that does not exist: a job is queued
    // and fails; either way the jobs gauge counts one.
    push_event_for_missing_repo(&h, &url);
    let after = scrape(&format!("{url}/metrics"));
    assert_eq!(value(&after, "procurator_ci_jobs", &[]), 1.0);
}
