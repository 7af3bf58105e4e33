//! Project pages: the list, creation, the project page with its flake,
//! VM specs, CI and cluster panels, members and deletion (CI job views are
//! in `ci`).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::pages::{
    CiPanel, CiPanelData, ClusterPanel, ClusterPanelData, ConfirmDeletePage, IndexPage, JobRow,
    NewProjectPage, ProjectPage, RepoRow, SpecRow, SyncView,
};
use super::{Post, Viewer, WebError, WebResult, base_url, blocking, render, render_status};
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

pub(super) fn job_row(j: &Job, repo_name: &str) -> JobRow {
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
pub(super) fn repo_paths(st: &AppState, p: &Project) -> Result<Vec<(String, String)>, WebError> {
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
            view: crate::cluster::project_view(&snap, &ctx.project.name, ctx.admin, ctx.member()),
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

/// Whether the deployed generation is the head of the deploy ref: Argo
/// CD's "Synced"/"OutOfSync", with how far the head is ahead and what CI
/// is doing about it.
async fn sync_view(
    p: &Project,
    repos: &[(String, String)],
    clp: &ClusterPanelData,
    jobs: &Result<Vec<(Job, String)>, String>,
) -> Result<SyncView, WebError> {
    let (Some(repo), Some(git_ref)) = (p.deploy_repo.clone(), p.deploy_ref.clone()) else {
        return Ok(SyncView::default());
    };
    let Some((_, dir)) = repos.iter().find(|(n, _)| *n == repo) else {
        return Ok(SyncView::default());
    };
    let deployed =
        (clp.error.is_none() && !clp.view.commit.is_empty()).then(|| clp.view.commit.clone());
    let dir = std::path::PathBuf::from(dir);
    let (head, ahead) = {
        let deployed = deployed.clone();
        let git_ref = git_ref.clone();
        blocking(move || {
            let Ok(r) = git::open(&dir) else {
                return Ok((None, None));
            };
            // The deploy ref is a full ref name (refs/heads/main).
            let Ok(head) = r
                .find_reference(&git_ref)
                .and_then(|f| f.peel_to_commit())
                .map(|c| c.id())
            else {
                return Ok((None, None));
            };
            let ahead = deployed
                .and_then(|d| git2::Oid::from_str(&d).ok())
                .and_then(|d| r.graph_ahead_behind(head, d).ok());
            Ok((Some(head.to_string()), ahead))
        })
        .await?
    };
    let branch = git_ref
        .strip_prefix("refs/heads/")
        .unwrap_or(&git_ref)
        .to_owned();
    let short = |c: &str| c[..12.min(c.len())].to_owned();
    let head_job = head.as_ref().and_then(|h| {
        jobs.as_ref()
            .ok()?
            .iter()
            .find(|(j, r)| j.commit == *h && *r == repo)
            .map(|(j, _)| (j.id, j.state.to_string()))
    });
    let (state, text) = match (&head, &deployed) {
        (None, _) => ("unknown", format!("{branch} has no commits yet")),
        (Some(_), None) if clp.error.is_some() => (
            "unknown",
            "the control plane is unavailable: what runs is unknown".to_owned(),
        ),
        (Some(h), None) => (
            "out-of-sync",
            format!("nothing deployed yet; {branch} is at {}", short(h)),
        ),
        (Some(h), Some(d)) if h == d => (
            "synced",
            format!(
                "generation {} is the head of {branch} ({})",
                clp.view.generation,
                short(h)
            ),
        ),
        (Some(h), Some(d)) => match ahead {
            Some((n, 0)) => (
                "out-of-sync",
                format!(
                    "{branch} ({}) is {n} commit{} ahead of generation {} ({})",
                    short(h),
                    if n == 1 { "" } else { "s" },
                    clp.view.generation,
                    short(d)
                ),
            ),
            _ => (
                "out-of-sync",
                format!(
                    "generation {} ({}) is not an ancestor of {branch} ({}): the branch was rewritten or the deploy target changed",
                    clp.view.generation,
                    short(d),
                    short(h)
                ),
            ),
        },
    };
    // The deployed commit is linked only where it is known to be on the branch.
    let on_branch = head == deployed || matches!(ahead, Some((_, 0)));
    Ok(SyncView {
        state,
        text,
        repo: Some(repo),
        deployed: deployed.filter(|_| on_branch),
        head_job,
    })
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
    let sync = sync_view(&p, &repos, &clp, &jobs).await?;
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
        sync,
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
