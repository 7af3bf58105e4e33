//! Project pages: the list, creation, the project page with its flake,
//! VM specs, CI and cluster panels, members, deletion, and CI job views.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use super::pages::{
    CiPanel, CiPanelData, ClusterPanel, ClusterPanelData, ConfirmDeletePage, IndexPage, JobPage,
    JobRow, NewProjectPage, ProjectPage, RepoRow, SpecRow,
};
use super::{
    CsrfForm, Post, Viewer, WebError, WebResult, base_url, blocking, render, render_status,
};
use crate::AppState;
use crate::ci::{Job, JobState};
use crate::db::Project;
use crate::git;
use crate::names;
use commands::report::error_chain;

/// A project the viewer may see, and the viewer's role in it.
/// An admin counts as an owner of every project.
pub(super) struct ProjectCtx {
    pub project: Project,
    pub role: Option<String>,
    pub admin: bool,
}

impl ProjectCtx {
    pub(super) fn member(&self) -> bool {
        self.role.is_some() || self.admin
    }

    pub(super) fn owner(&self) -> bool {
        self.role.as_deref() == Some("owner") || self.admin
    }

    pub(super) fn require_member(&self, v: &Viewer) -> Result<(), WebError> {
        require(v, self.member(), "project members")
    }

    pub(super) fn require_owner(&self, v: &Viewer) -> Result<(), WebError> {
        require(v, self.owner(), "the project owner")
    }
}

/// Who may post a form to a project.
#[derive(Debug, Clone, Copy)]
pub(super) enum May {
    Member,
    Owner,
}

impl ProjectCtx {
    /// A form post is allowed: the viewer's role is checked first, then the
    /// form's CSRF token.
    pub(super) fn check_post(&self, v: &Viewer, may: May, csrf: &str) -> Result<(), WebError> {
        match may {
            May::Member => self.require_member(v)?,
            May::Owner => self.require_owner(v)?,
        }
        v.check_csrf(csrf)
    }
}

/// `load` for a form post: the project, then [`ProjectCtx::check_post`].
pub(super) fn load_for_post(
    st: &AppState,
    v: &Viewer,
    name: &str,
    may: May,
    csrf: &str,
) -> Result<ProjectCtx, WebError> {
    let ctx = load(st, v, name)?;
    ctx.check_post(v, may, csrf)?;
    Ok(ctx)
}

/// A logged-in viewer with the right role passes; anyone else is sent to log
/// in or told that only `who` may do that.
fn require(v: &Viewer, allowed: bool, who: &str) -> Result<(), WebError> {
    v.require_user()?;
    if allowed {
        Ok(())
    } else {
        Err(WebError::Forbidden(format!("only {who} may do that")))
    }
}

/// Private projects are invisible (404) to non-members.
pub(super) fn load(st: &AppState, v: &Viewer, name: &str) -> Result<ProjectCtx, WebError> {
    // The same words whether the project does not exist or is private.
    let missing = || WebError::Missing(format!("no project {name}"));
    names::validate_project_name(name).map_err(|_| missing())?;
    let project = st.db.project(name)?.ok_or_else(missing)?;
    let role = match &v.user {
        Some(u) => st.db.role(project.id, u.id)?,
        None => None,
    };
    let admin = v.is_admin();
    if !project.public && role.is_none() && !admin {
        return Err(missing());
    }
    Ok(ProjectCtx {
        project,
        role,
        admin,
    })
}

pub(super) async fn index(State(st): State<AppState>, v: Viewer) -> WebResult {
    let projects = st.db.visible_projects(v.user.as_ref())?;
    render(&IndexPage {
        title: "Projects".into(),
        nav: v.nav(),
        projects,
    })
}

/// Only an admin, or an account an admin allowed, creates projects (each
/// project is a tenant with its own share of the cluster).
fn require_project_creator(v: &Viewer) -> Result<(), WebError> {
    let u = v.require_user()?;
    if u.admin || u.may_create_projects {
        Ok(())
    } else {
        Err(WebError::Forbidden(
            "only admins and accounts an admin allowed may create projects; ask an administrator"
                .into(),
        ))
    }
}

pub(super) async fn new_form(v: Viewer) -> WebResult {
    require_project_creator(&v)?;
    render(&NewProjectPage {
        title: "New project".into(),
        nav: v.nav(),
        name: String::new(),
        description: String::new(),
        error: None,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct NewProjectForm {
    csrf: String,
    name: String,
    description: String,
    public: Option<String>,
}

pub(super) async fn create(Post { st, v, form: f }: Post<NewProjectForm>) -> WebResult {
    let user = v.require_user()?.clone();
    require_project_creator(&v)?;
    v.check_csrf(&f.csrf)?;
    let fail = |msg: String| {
        render_status(
            StatusCode::BAD_REQUEST,
            &NewProjectPage {
                title: "New project".into(),
                nav: v.nav(),
                name: f.name.clone(),
                description: f.description.clone(),
                error: Some(msg),
            },
        )
    };
    if let Err(e) = names::validate_new_project_name(&f.name) {
        return fail(e.to_string());
    }
    if f.description.chars().count() > 500 {
        return fail("description must be at most 500 characters".into());
    }
    match st
        .db
        .create_project(&f.name, f.description.trim(), f.public.is_some(), user.id)
    {
        Ok(_) => {}
        Err(crate::db::DbError::Conflict(_)) => {
            return fail("a project with that name exists".into());
        }
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(st.repos_root.join(&f.name))
        .map_err(|e| WebError::Internal(e.to_string()))?;
    tracing::info!(project = %f.name, owner = %user.name, "project created");
    Ok(Redirect::to(&format!("/{}", f.name)).into_response())
}

fn job_row(j: &Job, repo_name: &str) -> JobRow {
    JobRow {
        id: j.id,
        repo: repo_name.to_owned(),
        branch: j.branch().to_owned(),
        commit: j.short_commit().to_owned(),
        state: j.state.to_string(),
        duration: j.duration(),
        created: git::format_time(j.created_at_ms / 1000),
    }
}

/// (repo name, absolute path) of each repository of the project.
fn repo_paths(st: &AppState, p: &Project) -> Result<Vec<(String, String)>, WebError> {
    Ok(st
        .db
        .repos(p.id)?
        .into_iter()
        .map(|r| {
            let path = st.repo_dir(&p.name, &r.name).to_string_lossy().into_owned();
            (r.name, path)
        })
        .collect())
}

/// Jobs of all the project's repositories, newest first.
async fn project_jobs(
    st: &AppState,
    repos: &[(String, String)],
) -> Result<Vec<(Job, String)>, String> {
    if !st.ci.configured() {
        return Err("not configured (start repohub with --ci-url)".into());
    }
    let calls = repos.iter().map(|(name, path)| async move {
        st.ci.jobs(path, 20).await.map(|js| {
            js.into_iter()
                .map(|j| (j, name.clone()))
                .collect::<Vec<_>>()
        })
    });
    let mut all = Vec::new();
    for r in futures::future::join_all(calls).await {
        all.extend(r.map_err(|e| error_chain(&e))?);
    }
    all.sort_by(|a, b| {
        b.0.created_at_ms
            .cmp(&a.0.created_at_ms)
            .then(b.0.id.cmp(&a.0.id))
    });
    all.truncate(20);
    Ok(all)
}

fn ci_panel_data(project: &str, jobs: &Result<Vec<(Job, String)>, String>) -> CiPanelData {
    match jobs {
        Ok(js) => CiPanelData {
            project: project.to_owned(),
            error: None,
            jobs: js.iter().map(|(j, r)| job_row(j, r)).collect(),
        },
        Err(e) => CiPanelData {
            project: project.to_owned(),
            error: Some(e.clone()),
            jobs: Vec::new(),
        },
    }
}

/// The project's share of the shared cluster status.
async fn cluster_panel_data(st: &AppState, ctx: &ProjectCtx) -> ClusterPanelData {
    match st.cluster.get().await {
        Ok(snap) => ClusterPanelData {
            error: None,
            view: crate::cluster::project_view(&snap, &ctx.project.name, ctx.admin),
        },
        Err(e) => ClusterPanelData {
            error: Some(e),
            view: Default::default(),
        },
    }
}

fn spec_rows(specs: &[serde_json::Value]) -> Vec<SpecRow> {
    let s = |v: &serde_json::Value, k: &str| match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    specs
        .iter()
        .map(|v| SpecRow {
            name: s(v, "name"),
            cpu: s(v, "cpu"),
            memory: format!("{} MiB", s(v, "memoryMb")),
            hash: crate::cluster::short_hash(&s(v, "contentHash")),
            toplevel: s(v, "toplevel"),
        })
        .collect()
}

pub(super) async fn show(
    State(st): State<AppState>,
    v: Viewer,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> WebResult {
    let ctx = load(&st, &v, &name)?;
    let p = ctx.project.clone();
    let repos = repo_paths(&st, &p)?;
    let base = base_url(&headers);
    let mut rows = Vec::new();
    for (r, path) in &repos {
        let (pending, _) = st.db.push_counts(path)?;
        rows.push(RepoRow {
            name: r.clone(),
            clone_url: format!("{base}/{}/{r}.git", p.name),
            pending,
        });
    }
    // The flake: flake.nix at the head of the first repository that has one.
    let dirs: Vec<(String, std::path::PathBuf)> = repos
        .iter()
        .map(|(n, path)| (n.clone(), std::path::PathBuf::from(path)))
        .collect();
    let flake = blocking(move || {
        for (n, dir) in dirs {
            let Ok(repo) = git::open(&dir) else { continue };
            let Some(head) = git::default_branch(&repo).and_then(|b| git::resolve(&repo, &b).ok())
            else {
                continue;
            };
            if let Some((_, text)) =
                git::root_file(&repo, head, &["flake.nix"], git::MAX_INLINE_BLOB)
            {
                return Ok(Some((n, text)));
            }
        }
        Ok(None)
    })
    .await?;

    let (jobs, clp) = tokio::join!(project_jobs(&st, &repos), cluster_panel_data(&st, &ctx));
    // VM specs come from the newest succeeded job.
    let (specs, specs_error) = match &jobs {
        Err(e) => (Vec::new(), Some(format!("ci_service unavailable: {e}"))),
        Ok(js) => match js.iter().find(|(j, _)| j.state == JobState::Succeeded) {
            None => (Vec::new(), None),
            Some((j, _)) => match st.ci.job(j.id).await {
                Ok(full) => (spec_rows(full.specs()), None),
                Err(e) => (
                    Vec::new(),
                    Some(format!("ci_service unavailable: {}", error_chain(&e))),
                ),
            },
        },
    };
    let page = ProjectPage {
        title: p.name.clone(),
        nav: v.nav(),
        member: ctx.member(),
        owner: ctx.owner(),
        repo_names: repos.iter().map(|(n, _)| n.clone()).collect(),
        members: st.db.members(p.id)?,
        repos: rows,
        flake,
        specs,
        specs_error,
        cip: ci_panel_data(&p.name, &jobs),
        clp,
        project: p,
    };
    render(&page)
}

pub(super) async fn ci_panel(
    State(st): State<AppState>,
    v: Viewer,
    Path(name): Path<String>,
) -> WebResult {
    let ctx = load(&st, &v, &name)?;
    let repos = repo_paths(&st, &ctx.project)?;
    let jobs = project_jobs(&st, &repos).await;
    render(&CiPanel {
        cip: ci_panel_data(&ctx.project.name, &jobs),
    })
}

pub(super) async fn cluster_panel(
    State(st): State<AppState>,
    v: Viewer,
    Path(name): Path<String>,
) -> WebResult {
    let ctx = load(&st, &v, &name)?;
    render(&ClusterPanel {
        clp: cluster_panel_data(&st, &ctx).await,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct DeployForm {
    csrf: String,
    /// A repository of the project, or empty for "deploy nothing".
    repo: String,
    git_ref: String,
}

/// Sets which repository and ref produce this project's generations
/// (owners and admins only). The ref must be a full, valid ref name.
pub(super) async fn set_deploy(
    Path(name): Path<String>,
    Post { st, v, form: f }: Post<DeployForm>,
) -> WebResult {
    let ctx = load_for_post(&st, &v, &name, May::Owner, &f.csrf)?;
    let repo = f.repo.trim();
    let git_ref = f.git_ref.trim();
    let target = if repo.is_empty() {
        None
    } else {
        if st.db.repo(ctx.project.id, repo)?.is_none() {
            return Err(WebError::BadRequest(format!(
                "the project has no repository named {repo:?}"
            )));
        }
        if !git_ref.starts_with("refs/") || !git2::Reference::is_valid_name(git_ref) {
            return Err(WebError::BadRequest(format!(
                "{git_ref:?} is not a full ref name such as refs/heads/main"
            )));
        }
        Some((repo, git_ref))
    };
    st.db.set_deploy(ctx.project.id, target)?;
    tracing::info!(project = %ctx.project.name, deploy_repo = ?target.map(|t| t.0), deploy_ref = ?target.map(|t| t.1), "deploy target set");
    Ok(Redirect::to(&format!("/{}", ctx.project.name)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct MemberForm {
    csrf: String,
    username: String,
}

pub(super) async fn add_member(
    Path(name): Path<String>,
    Post { st, v, form: f }: Post<MemberForm>,
) -> WebResult {
    let ctx = load_for_post(&st, &v, &name, May::Owner, &f.csrf)?;
    let username = f.username.trim();
    // A failure shows the form again, with the error and what was typed.
    let fail = |error: String| {
        super::form_again(
            &v,
            &ctx.project.name,
            &super::pages::ADD_MEMBER_FORM,
            username,
            error,
        )
    };
    let Some(user) = st.db.user_by_name(username)? else {
        return fail(format!("no user named {username:?}"));
    };
    // Adding a member twice changes nothing (the database ignores it).
    st.db.add_member(ctx.project.id, user.id)?;
    Ok(Redirect::to(&format!("/{}", ctx.project.name)).into_response())
}

pub(super) async fn delete_form(
    State(st): State<AppState>,
    v: Viewer,
    Path(name): Path<String>,
) -> WebResult {
    let ctx = load(&st, &v, &name)?;
    ctx.require_owner(&v)?;
    render(&confirm_page(&v, &ctx.project.name, None))
}

/// The page asking to type the project's name before it is deleted.
fn confirm_page(v: &Viewer, project: &str, error: Option<String>) -> ConfirmDeletePage {
    ConfirmDeletePage {
        title: format!("Delete {project}"),
        nav: v.nav(),
        what: "project",
        consequence: "This removes the project with all its repositories (and their history) and its member list.",
        action: format!("/{project}/-/delete"),
        name: project.to_owned(),
        error,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ConfirmForm {
    pub csrf: String,
    pub confirm: String,
}

pub(super) async fn delete(
    Path(name): Path<String>,
    Post { st, v, form: f }: Post<ConfirmForm>,
) -> WebResult {
    let ctx = load_for_post(&st, &v, &name, May::Owner, &f.csrf)?;
    if f.confirm != ctx.project.name {
        return render_status(
            StatusCode::BAD_REQUEST,
            &confirm_page(
                &v,
                &ctx.project.name,
                Some("the name you typed does not match".into()),
            ),
        );
    }
    st.db.delete_project(ctx.project.id)?;
    // The name was validated (no separators, no ".."), so this stays inside repos_root.
    let dir = st.repos_root.join(&ctx.project.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| WebError::Internal(format!("removing {}: {e}", dir.display())))?;
    }
    tracing::info!(project = %ctx.project.name, "project deleted");
    Ok(Redirect::to("/").into_response())
}

/// A CI job, only if it belongs to one of this project's repositories.
async fn project_job(st: &AppState, ctx: &ProjectCtx, id: i64) -> Result<(Job, String), WebError> {
    let repos = repo_paths(st, &ctx.project)?;
    let job = st.ci.job(id).await.map_err(|e| match e {
        crate::ci::CiError::Status { status: 404, .. } => WebError::NotFound,
        e => WebError::BadRequest(format!("ci_service unavailable: {}", error_chain(&e))),
    })?;
    let name = repos
        .into_iter()
        .find(|(_, p)| *p == job.repo)
        .map(|(n, _)| n)
        .ok_or(WebError::NotFound)?;
    Ok((job, name))
}

pub(super) async fn job(
    State(st): State<AppState>,
    v: Viewer,
    Path((name, id)): Path<(String, i64)>,
) -> WebResult {
    let ctx = load(&st, &v, &name)?;
    let (job, repo_name) = project_job(&st, &ctx, id).await?;
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
    render(&JobPage {
        title: format!("Job #{id}"),
        nav: v.nav(),
        project: ctx.project.name.clone(),
        repo_name,
        can_cancel: ctx.member() && !job.state.is_final(),
        job,
        log,
    })
}

/// The job page's Cancel button: a project member asks ci_service to
/// cancel one of the project's jobs (`DELETE /jobs/{id}`, with repohub's
/// ci_service token, which must be an `admin` one of its
/// `--api-token-file`), then sees the job page again.
pub(super) async fn cancel_job(
    Path((name, id)): Path<(String, i64)>,
    Post { st, v, form: f }: Post<CsrfForm>,
) -> WebResult {
    let ctx = load_for_post(&st, &v, &name, May::Member, &f.csrf)?;
    project_job(&st, &ctx, id).await?;
    st.ci.cancel(id).await.map_err(|e| match e {
        crate::ci::CiError::Status { status: 409, .. } => {
            WebError::BadRequest(format!("job #{id} has already ended"))
        }
        crate::ci::CiError::Status { status: 403, .. } => WebError::BadRequest(
            "ci_service refused: repohub's ci_service token may read jobs but not cancel them \
             (cancelling needs an admin token of ci_service's --api-token-file)"
                .into(),
        ),
        e => WebError::BadRequest(format!("ci_service unavailable: {}", error_chain(&e))),
    })?;
    Ok(Redirect::to(&format!("/{}/-/jobs/{id}", ctx.project.name)).into_response())
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
    Path((name, id)): Path<(String, i64)>,
    axum::extract::Query(q): axum::extract::Query<FollowQuery>,
) -> Result<Response, WebError> {
    let ctx = load(&st, &v, &name)?;
    project_job(&st, &ctx, id).await?;
    let follow = q.follow.as_deref() == Some("1");
    let resp = st.ci.log_stream(id, follow).await.map_err(|e| {
        WebError::BadRequest(format!("ci_service unavailable: {}", error_chain(&e)))
    })?;
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
