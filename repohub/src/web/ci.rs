//! CI views: the job page (its live state, a stage bar drawn from the step
//! timings, the error summary, build-log links, Cancel and Re-run), the
//! summary fragment the page re-reads while the job runs, the log proxy,
//! the CI badges of commits and branches, and committing a generated flake
//! from the page.
//!
//! Every call to ci_service is bounded ([`crate::ci::API_TIMEOUT`]); when it
//! is down a page says so with 502 and the reason, never 400.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::header;
use serde::Deserialize;

use super::pages::{JobPage, JobSummary, JobSummaryPart, Stage};
use super::project::{May, ProjectCtx, load, load_for_post, repo_paths};
use super::repo::load_repo_for_post;
use super::{CsrfForm, Post, Viewer, WebError, WebResult, blocking, render};
use crate::AppState;
use crate::ci::{Badge, CiError, Job, JobState};
use crate::git;
use commands::report::error_chain;

/// `abc` in `/-/jobs/abc` is a missing page that says what job ids are.
fn job_id(s: &str) -> Result<i64, WebError> {
    s.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| WebError::Missing(format!("no job {s} (job ids are numbers)")))
}

/// What a page says when ci_service did not answer as it should.
fn unavailable(e: &CiError) -> WebError {
    match e {
        CiError::NotConfigured => {
            WebError::Unavailable("CI is not configured (start repohub with --ci-url)".into())
        }
        e => WebError::Unavailable(format!("CI is unreachable: {}", error_chain(e))),
    }
}

/// A CI job, only if it belongs to one of this project's repositories;
/// with that repository's name.
async fn project_job(st: &AppState, ctx: &ProjectCtx, id: i64) -> Result<(Job, String), WebError> {
    let missing = || WebError::Missing(format!("project {} has no job {id}", ctx.project.name));
    let repos = repo_paths(st, &ctx.project)?;
    let job = st.ci.job(id).await.map_err(|e| match e {
        CiError::Status { status: 404, .. } => missing(),
        e => unavailable(&e),
    })?;
    let name = repos
        .into_iter()
        .find(|(_, p)| *p == job.repo)
        .map(|(n, _)| n)
        .ok_or_else(missing)?;
    Ok((job, name))
}

/// The project `name` as `v` may see it and its job `id` (as written in
/// the URL), with the job's repository name.
async fn viewed_job(
    st: &AppState,
    v: &Viewer,
    name: &str,
    id: &str,
) -> Result<(ProjectCtx, Job, String), WebError> {
    let ctx = load(st, v, name)?;
    let id = job_id(id)?;
    let (job, repo) = project_job(st, &ctx, id).await?;
    Ok((ctx, job, repo))
}

/// The steps of a job in order, as `Timings` names them.
const STEPS: [&str; 6] = ["queue", "fetch", "eval", "build", "upload", "publish"];

fn step_ms(t: &commands::ci_api::Timings) -> [Option<u64>; 6] {
    [
        t.queue_ms,
        t.fetch_ms,
        t.eval_ms,
        t.build_ms,
        t.upload_ms,
        t.publish_ms,
    ]
}

/// "8 ms", "1.4 s", "12 s", "3 min 5 s".
fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..120_000 => format!("{} s", ms / 1000),
        _ => format!("{} min {} s", ms / 60_000, ms / 1000 % 60),
    }
}

/// The stage bar: each step the job went through with its duration, the
/// step it is in (running) or ended in (failed, cancelled) after them.
/// The runner records a step's time when the step ends, so the open step's
/// time is what the job's clock says beyond the recorded ones. Widths are
/// proportional to the durations (a step of a few ms still gets a sliver).
pub(super) fn stages(job: &Job, now_ms: i64) -> Vec<Stage> {
    let ms = step_ms(&job.timings);
    let mut out: Vec<(usize, u64, &'static str)> = ms
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.map(|m| (i, m, "done")))
        .collect();
    let open = match job.state {
        JobState::Queued => Some((0, "running")),
        JobState::Running => Some((out.last().map_or(1, |l| l.0 + 1), "running")),
        JobState::Failed => Some((out.last().map_or(1, |l| l.0 + 1), "failed")),
        JobState::Cancelled | JobState::Superseded => {
            Some((out.last().map_or(0, |l| l.0 + 1), "cancelled"))
        }
        JobState::Succeeded | JobState::BuiltNotDeployed => None,
    };
    if let Some((i, state)) = open.filter(|(i, _)| *i < STEPS.len()) {
        let end = job.finished_at_ms.unwrap_or(now_ms);
        // Queue time runs from the push; the other steps from the start.
        let from = if i == 0 {
            job.created_at_ms
        } else {
            job.started_at_ms.unwrap_or(job.created_at_ms)
        };
        let before: u64 = out.iter().filter(|s| s.0 != 0).map(|s| s.1).sum();
        let spent = (end - from).max(0) as u64;
        let d = if i == 0 {
            spent
        } else {
            spent.saturating_sub(before)
        };
        out.push((i, d, state));
    }
    // A sliver of 1.5 % for the shortest steps, the rest shared in
    // proportion.
    const MIN: f64 = 1.5;
    let total: u64 = out.iter().map(|s| s.1).sum::<u64>().max(1);
    let room = 100.0 - MIN * out.len() as f64;
    let mut x = 0.0;
    out.into_iter()
        .map(|(i, d, state)| {
            let width = MIN + room * d as f64 / total as f64;
            let s = Stage {
                name: STEPS[i],
                label: format!(
                    "{} {}{}",
                    STEPS[i],
                    human_ms(d),
                    match state {
                        "failed" => " (failed)",
                        "cancelled" => " (cancelled)",
                        "running" => " (running)",
                        _ => "",
                    }
                ),
                state,
                x: format!("{x:.2}"),
                width: format!("{width:.2}"),
            };
            x += width;
            s
        })
        .collect()
}

/// The derivations a job's log says nix built (`building '/nix/store/…drv'`),
/// by store basename, in order and without repeats.
pub(super) fn built_drvs(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in log.lines() {
        let Some(rest) = l.trim_start().strip_prefix("building '/nix/store/") else {
            continue;
        };
        let Some(name) = rest.split('\'').next().filter(|n| n.ends_with(".drv")) else {
            continue;
        };
        // A store basename: nothing a URL path or the page could misread.
        let safe = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
        if safe && !out.iter().any(|o| o == name) && out.len() < 200 {
            out.push(name.to_owned());
        }
    }
    out
}

/// Whether a failed job failed for want of a flake (ci_service's
/// `runner::NO_FLAKE`).
fn lacks_flake(job: &Job) -> bool {
    job.state == JobState::Failed
        && job
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("no flake.nix at the repository root"))
}

fn summary(v: &Viewer, ctx: &ProjectCtx, job: &Job, repo: &str) -> JobSummary {
    let member = ctx.member();
    JobSummary {
        project: ctx.project.name.clone(),
        repo: repo.to_owned(),
        id: job.id,
        state: job.state.to_string(),
        is_final: job.state.is_final(),
        duration: job.duration(),
        generation: job.generation,
        error: job.error.clone(),
        stages: stages(job, commands::telemetry::now_ms() as i64),
        can_cancel: member && !job.state.is_final(),
        can_rerun: member && job.state.is_final(),
        no_flake: lacks_flake(job),
        member,
        csrf: v.csrf.clone(),
    }
}

pub(super) async fn job(
    State(st): State<AppState>,
    v: Viewer,
    Path((name, id)): Path<(String, String)>,
) -> WebResult {
    let (ctx, job, repo_name) = viewed_job(&st, &v, &name, &id).await?;
    let id = job.id;
    // The log as it is now, so the page is complete without JavaScript:
    // streamed, keeping only its tail, so a huge log never sits in memory.
    let log = match st.ci.log_stream(id, false).await {
        Ok(resp) => {
            match crate::joblog::tail(Body::new(resp.into_body()), st.limits.job_log_tail).await {
                Ok(t) => t,
                Err(e) => format!("(log unavailable: {e})"),
            }
        }
        Err(e) => format!("(log unavailable: {})", error_chain(&e)),
    };
    // Build logs reach the cache with a deployed closure (the upload
    // step); before that only the job log has the builders' output.
    let uploaded = job.state == JobState::Succeeded && job.timings.upload_ms.is_some();
    let drv_base = st
        .cache_url
        .as_deref()
        .filter(|_| uploaded)
        .map(|u| format!("{u}/log/"));
    render(&JobPage {
        title: format!("Job #{id}"),
        nav: v.nav(),
        s: summary(&v, &ctx, &job, &repo_name),
        commit: job.commit.clone(),
        short_commit: job.short_commit().to_owned(),
        branch: job.branch().to_owned(),
        created: git::format_time(job.created_at_ms / 1000),
        drvs: built_drvs(&log),
        drv_base,
        log,
    })
}

/// The part of the job page that changes while the job runs (state,
/// stage bar, error, buttons); the page's script re-reads it until the
/// job is final and once more when the followed log ends.
pub(super) async fn job_summary(
    State(st): State<AppState>,
    v: Viewer,
    Path((name, id)): Path<(String, String)>,
) -> WebResult {
    let (ctx, job, repo_name) = viewed_job(&st, &v, &name, &id).await?;
    let mut resp = render(&JobSummaryPart {
        s: summary(&v, &ctx, &job, &repo_name),
    })?;
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// What ci_service's refusal of a cancel or re-run means to the member
/// who asked.
fn refused(id: i64, what: &str, e: &CiError) -> WebError {
    match e {
        CiError::Status { status: 409, .. } if what == "cancel" => {
            WebError::BadRequest(format!("job #{id} has already ended"))
        }
        CiError::Status { status: 409, .. } => WebError::BadRequest(format!(
            "job #{id} has not ended yet; re-run it once it has"
        )),
        CiError::Status {
            status: 401 | 403, ..
        } => WebError::Unavailable(format!(
            "ci_service refused to {what} job #{id}: repohub's ci_service token may read jobs but \
             not {what} them (that needs an admin token of ci_service's --api-token-file, given \
             to repohub as --ci-api-token-file)"
        )),
        e => unavailable(e),
    }
}

/// A member's form post about job `id` (from the URL) of project `name`:
/// who may post is checked first, then that the job is the project's.
async fn posted_job(
    st: &AppState,
    v: &Viewer,
    name: &str,
    id: &str,
    csrf: &str,
) -> Result<(ProjectCtx, i64), WebError> {
    let ctx = load_for_post(st, v, name, May::Member, csrf)?;
    let id = job_id(id)?;
    project_job(st, &ctx, id).await?;
    Ok((ctx, id))
}

/// The job page's Cancel button: a project member asks ci_service to
/// cancel one of the project's jobs (`DELETE /jobs/{id}`, with repohub's
/// ci_service token, which must be an `admin` one of its
/// `--api-token-file`), then sees the job page again.
pub(super) async fn cancel_job(
    Path((name, id)): Path<(String, String)>,
    Post { st, v, form: f }: Post<CsrfForm>,
) -> WebResult {
    let (ctx, id) = posted_job(&st, &v, &name, &id, &f.csrf).await?;
    st.ci
        .cancel(id)
        .await
        .map_err(|e| refused(id, "cancel", &e))?;
    tracing::info!(project = %ctx.project.name, job_id = id, user = ?v.user.as_ref().map(|u| &u.name), "job cancel requested");
    Ok(Redirect::to(&format!("/{}/-/jobs/{id}", ctx.project.name)).into_response())
}

/// The job page's Re-run button: ci_service queues the same push again
/// (`POST /jobs/{id}/rerun`: same repository, ref and commit, as a new
/// job); the member lands on the new job's page.
pub(super) async fn rerun_job(
    Path((name, id)): Path<(String, String)>,
    Post { st, v, form: f }: Post<CsrfForm>,
) -> WebResult {
    let (ctx, id) = posted_job(&st, &v, &name, &id, &f.csrf).await?;
    let reply = st
        .ci
        .rerun(id)
        .await
        .map_err(|e| refused(id, "re-run", &e))?;
    let new = reply
        .job_id
        .ok_or_else(|| WebError::Unavailable("ci_service queued no job for the re-run".into()))?;
    tracing::info!(project = %ctx.project.name, job_id = new, rerun_of = id, user = ?v.user.as_ref().map(|u| &u.name), "job re-run");
    Ok(Redirect::to(&format!("/{}/-/jobs/{new}", ctx.project.name)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct FollowQuery {
    follow: Option<String>,
}

/// Proxies ci_service's log, streamed as it grows when `follow=1`.
pub(super) async fn job_log(
    State(st): State<AppState>,
    v: Viewer,
    Path((name, id)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<FollowQuery>,
) -> Result<Response, WebError> {
    let ctx = load(&st, &v, &name)?;
    let id = job_id(&id)?;
    project_job(&st, &ctx, id).await?;
    let follow = q.follow.as_deref() == Some("1");
    let resp = st
        .ci
        .log_stream(id, follow)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(crate::joblog::capped(
            Body::new(resp.into_body()),
            st.limits.job_log_proxy,
        )),
    )
        .into_response())
}

/// The CI badges of one repository's commits: each commit's newest job,
/// from one (briefly cached) call to ci_service for the whole page. When
/// CI is down the page still renders, with the reason instead of badges.
#[derive(Debug, Default)]
pub(super) struct Badges {
    pub project: String,
    by_commit: HashMap<String, Badge>,
    pub error: Option<String>,
}

impl Badges {
    pub(super) fn get(&self, commit: &str) -> Option<&Badge> {
        self.by_commit.get(commit)
    }
}

/// The badges of the repository at `dir` (of project `project`).
pub(super) async fn badges(st: &AppState, project: &str, dir: &std::path::Path) -> Badges {
    let mut b = Badges {
        project: project.to_owned(),
        ..Badges::default()
    };
    if !st.ci.configured() {
        return b;
    }
    match st.ci_jobs.jobs(&st.ci, &dir.to_string_lossy()).await {
        Ok(jobs) => b.by_commit = crate::ci::badges(&jobs),
        Err(e) => b.error = Some(format!("CI status unavailable: {}", error_chain(&e))),
    }
    b
}

/// The generated-flake page's commit form: the commit the flake was
/// generated from.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AutonixCommitForm {
    csrf: String,
    base: String,
}

/// "Commit this flake" on the generated-flake page: repohub makes the
/// commit on the default branch (author: the member), only if the branch
/// is still at the commit the flake was generated from and has no
/// flake.nix or procurator.nix yet, then tells ci_service as a push would.
pub(super) async fn commit_flake(
    Path((project, repo)): Path<(String, String)>,
    Post { st, v, form: f }: Post<AutonixCommitForm>,
) -> WebResult {
    let (ctx, dir) = load_repo_for_post(&st, &v, (&project, &repo), May::Member, &f.csrf)?;
    let user = v.require_user()?.name.clone();
    let bad = |e: crate::flakegen::FlakegenError| WebError::BadRequest(error_chain(&e));
    // Check first, so a stale form costs no scan.
    let (d, base) = (dir.clone(), f.base.clone());
    let tmp = tempfile::tempdir().map_err(|e| WebError::Internal(e.to_string()))?;
    let dest = tmp.path().join(&repo);
    let d2 = dest.clone();
    blocking(move || {
        let r = git::open(&d)?;
        let target = crate::flakegen::check_target(&r, &base).map_err(bad)?;
        std::fs::create_dir_all(&d2).map_err(|e| WebError::Internal(e.to_string()))?;
        Ok(git::export_tree(&r, target.base, &d2)?)
    })
    .await?;
    let init = crate::flakegen::generate(dest)
        .await
        .map_err(|e| WebError::BadRequest(error_chain(&e)))?;
    let (d, base, who) = (dir.clone(), f.base.clone(), user.clone());
    let (branch, old, new) = blocking(move || {
        let r = git::open(&d)?;
        let target = crate::flakegen::check_target(&r, &base).map_err(bad)?;
        let files = [
            ("flake.nix", init.flake.as_str()),
            ("procurator.nix", init.cluster.as_str()),
        ];
        let id = crate::flakegen::commit_files(&r, &target, &files, &who).map_err(bad)?;
        Ok((target.branch, target.base.to_string(), id.to_string()))
    })
    .await?;
    tracing::info!(project = %ctx.project.name, %repo, %branch, commit = %new, user = %user, "generated flake committed");
    // As the post-receive hook would: the notifier delivers it to CI.
    let update = (old, new.clone(), format!("refs/heads/{branch}"));
    let event = crate::notify::push_event(&st.db, &st.repos_root, &dir.to_string_lossy(), update)?;
    st.db.enqueue_push(&event)?;
    Ok(Redirect::to(&format!("/{}/{repo}/commit/{new}", ctx.project.name)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::ci_api::Timings;

    fn job(state: JobState, timings: Timings) -> Job {
        Job {
            id: 1,
            repo: "/r".into(),
            git_ref: "refs/heads/main".into(),
            old: String::new(),
            commit: "a".repeat(40),
            state,
            created_at_ms: 1_000,
            started_at_ms: Some(1_100),
            finished_at_ms: Some(9_100),
            generation: None,
            error: None,
            timings,
            project: None,
            vm_specs: None,
        }
    }

    #[test]
    fn a_failed_build_marks_its_stage_with_the_time_it_took() {
        let t = Timings {
            queue_ms: Some(100),
            fetch_ms: Some(500),
            eval_ms: Some(1_500),
            ..Timings::default()
        };
        let s = stages(&job(JobState::Failed, t), 0);
        let names: Vec<_> = s.iter().map(|s| (s.name, s.state)).collect();
        assert_eq!(
            names,
            [
                ("queue", "done"),
                ("fetch", "done"),
                ("eval", "done"),
                ("build", "failed")
            ]
        );
        // 8 s from start to end, 2 s of it recorded: build took 6 s.
        assert_eq!(s[3].label, "build 6.0 s (failed)");
        let w: Vec<f64> = s.iter().map(|s| s.width.parse().unwrap()).collect();
        assert!((w.iter().sum::<f64>() - 100.0).abs() < 0.1, "{w:?}");
        assert!(w[3] > w[2] && w[2] > w[1] && w[1] > w[0], "{w:?}");
        assert_eq!(s[1].x, s[0].width);
    }

    #[test]
    fn a_succeeded_job_shows_only_its_steps_and_a_queued_one_its_wait() {
        let t = Timings {
            queue_ms: Some(10),
            fetch_ms: Some(20),
            eval_ms: Some(30),
            build_ms: Some(40),
            upload_ms: Some(50),
            publish_ms: Some(60),
        };
        let s = stages(&job(JobState::Succeeded, t), 0);
        assert_eq!(s.len(), 6);
        assert!(s.iter().all(|s| s.state == "done"));
        assert_eq!(s[5].label, "publish 60 ms");
        let mut q = job(JobState::Queued, Timings::default());
        q.started_at_ms = None;
        q.finished_at_ms = None;
        let s = stages(&q, 4_000);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label, "queue 3.0 s (running)");
        assert_eq!(s[0].width, "100.00");
    }

    #[test]
    fn built_derivations_are_read_from_the_log_and_nothing_else() {
        let log = "building procurator.closure\n\
                   building '/nix/store/abc-web.drv'...\n\
                   building '/nix/store/abc-web.drv'...\n\
                   building '/nix/store/x y\"><script>.drv'...\n\
                   building '/nix/store/def-db.drv'...\n";
        assert_eq!(built_drvs(log), ["abc-web.drv", "def-db.drv"]);
    }

    #[test]
    fn job_ids_are_numbers() {
        assert_eq!(job_id("42").unwrap(), 42);
        for bad in ["abc", "-1", "0", "1.5", ""] {
            let e = job_id(bad).unwrap_err();
            assert_eq!(e.to_string(), format!("no job {bad} (job ids are numbers)"));
        }
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_ms(420), "420 ms");
        assert_eq!(human_ms(1_420), "1.4 s");
        assert_eq!(human_ms(12_300), "12 s");
        assert_eq!(human_ms(185_000), "3 min 5 s");
    }
}
