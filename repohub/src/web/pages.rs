//! Template structs: one per page, compiled against `templates/` by askama
//! (a missing field or a typo is a build error). Askama escapes every
//! `{{ }}` for HTML; only the sanitised README uses `|safe`.

use askama::Template;

use crate::cluster::ClusterView;
use crate::db::Project;
use crate::git::{Branch, CommitDiff, CommitInfo};

#[derive(Debug, Clone, Default)]
pub struct Nav {
    pub user: Option<String>,
    pub csrf: String,
    /// Whether to offer "Sign up" to anonymous viewers.
    pub signup_open: bool,
    /// Whether to offer "New project" (admins and allowed accounts).
    pub may_create: bool,
    /// Whether to offer the admin page.
    pub admin: bool,
    /// Where "Log in" comes back to (percent-encoded; empty for home).
    pub login_next: String,
}

/// One account on the admin page.
pub(super) struct UserRow {
    pub name: String,
    pub admin: bool,
    pub may_create_projects: bool,
}

#[derive(Template)]
#[template(path = "admin.html")]
pub(super) struct AdminPage {
    pub title: String,
    pub nav: Nav,
    pub users: Vec<UserRow>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub(super) struct ErrorPage {
    pub title: String,
    pub nav: Nav,
    pub status: u16,
    pub message: String,
}

#[derive(Template)]
#[template(path = "index.html")]
pub(super) struct IndexPage {
    pub title: String,
    pub nav: Nav,
    pub projects: Vec<Project>,
}

#[derive(Template)]
#[template(path = "account.html")]
pub(super) struct AccountPage {
    pub title: String,
    pub nav: Nav,
    pub action: &'static str,
    pub signup: bool,
    pub username: String,
    /// Where a login returns to (validated; empty for home).
    pub next: String,
    pub error: Option<String>,
}

pub(super) struct TokenRow {
    pub id: i64,
    pub name: String,
    pub created: String,
    pub last_used: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
pub(super) struct TokensPage {
    pub title: String,
    pub nav: Nav,
    pub tokens: Vec<TokenRow>,
    pub new_token: Option<String>,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "new_project.html")]
pub(super) struct NewProjectPage {
    pub title: String,
    pub nav: Nav,
    pub name: String,
    pub description: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "confirm_delete.html")]
pub(super) struct ConfirmDeletePage {
    pub title: String,
    pub nav: Nav,
    pub what: &'static str,
    /// What deleting removes, one sentence.
    pub consequence: &'static str,
    pub name: String,
    pub action: String,
    pub error: Option<String>,
}

pub(super) struct JobRow {
    pub id: i64,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub state: String,
    pub duration: String,
    pub created: String,
}

#[derive(Default)]
pub(super) struct CiPanelData {
    pub project: String,
    pub error: Option<String>,
    pub jobs: Vec<JobRow>,
}

#[derive(Default)]
pub(super) struct ClusterPanelData {
    pub error: Option<String>,
    pub view: ClusterView,
}

#[derive(Template)]
#[template(path = "ci_panel.html")]
pub(super) struct CiPanel {
    pub cip: CiPanelData,
}

#[derive(Template)]
#[template(path = "cluster_panel.html")]
pub(super) struct ClusterPanel {
    pub clp: ClusterPanelData,
}

pub(super) struct RepoRow {
    pub name: String,
    pub clone_url: String,
    pub pending: i64,
}

pub(super) struct SpecRow {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub hash: String,
    pub toplevel: String,
}

/// The deployed generation against the head of the deploy ref.
#[derive(Default)]
pub(super) struct SyncView {
    /// "synced", "out-of-sync", "unknown", or "" when the project deploys
    /// nothing.
    pub state: &'static str,
    pub text: String,
    /// The deploy repository, for commit links.
    pub repo: Option<String>,
    /// The commit of the active generation.
    pub deployed: Option<String>,
    /// The newest CI job of the head commit: id and state.
    pub head_job: Option<(i64, String)>,
}

#[derive(Template)]
#[template(path = "project.html")]
pub(super) struct ProjectPage {
    pub title: String,
    pub nav: Nav,
    pub project: Project,
    pub member: bool,
    pub owner: bool,
    /// The project's repositories, for the deploy form's choice.
    pub repo_names: Vec<String>,
    pub repos: Vec<RepoRow>,
    pub members: Vec<(String, String)>,
    pub flake: Option<(String, String)>,
    pub specs: Vec<SpecRow>,
    pub specs_error: Option<String>,
    pub sync: SyncView,
    pub cip: CiPanelData,
    pub clp: ClusterPanelData,
}

#[derive(Template)]
#[template(path = "repo.html")]
pub(super) struct RepoPage {
    pub title: String,
    pub nav: Nav,
    pub project: String,
    pub repo: String,
    pub clone_url: String,
    pub empty: bool,
    pub rev_enc: String,
    /// (encoded name, branch)
    pub branches: Vec<(String, Branch)>,
    pub tag_count: usize,
    pub readme: Option<(String, String)>,
    pub has_flake: bool,
    pub member: bool,
    pub badges: super::ci::Badges,
}

/// The branch/tag switcher of the tree and log pages: plain links (a
/// `<details>` list), so it works without JavaScript.
pub(super) struct Switcher {
    pub current: String,
    /// (name, href) of each branch, then of each tag.
    pub branches: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    /// Refs past the switcher's bound.
    pub more_branches: usize,
    pub more_tags: usize,
}

#[derive(Template)]
#[template(path = "log.html")]
pub(super) struct LogPage {
    pub title: String,
    pub nav: Nav,
    pub project: String,
    pub repo: String,
    pub rev: String,
    pub switcher: Switcher,
    pub commits: Vec<CommitInfo>,
    /// 1-based, as in the URL.
    pub page: usize,
    /// Query string of the previous (newer) page, if any.
    pub newer: Option<String>,
    /// Query string of the next (older) page, if any.
    pub older: Option<String>,
    pub badges: super::ci::Badges,
    /// Set when the page is past the end: what there is instead.
    pub past_end: Option<String>,
}

pub(super) struct EntryRow {
    pub name: String,
    pub href: String,
    pub is_dir: bool,
    pub size: String,
}

pub(super) struct FileView {
    pub size: String,
    pub raw_href: String,
    pub text: Option<String>,
    pub binary: bool,
}

pub(super) enum TreeContent {
    Dir(Vec<EntryRow>),
    File(FileView),
}

#[derive(Template)]
#[template(path = "tree.html")]
pub(super) struct TreePage {
    pub title: String,
    pub nav: Nav,
    pub project: String,
    pub repo: String,
    pub rev: String,
    pub rev_enc: String,
    pub switcher: Switcher,
    /// (component, href)
    pub crumbs: Vec<(String, String)>,
    pub content: TreeContent,
}

#[derive(Template)]
#[template(path = "commit.html")]
pub(super) struct CommitPage {
    pub title: String,
    pub nav: Nav,
    pub project: String,
    pub repo: String,
    pub c: CommitInfo,
    pub diff: CommitDiff,
    pub badges: super::ci::Badges,
}

/// One step of a job's stage bar (see `ci::stages`).
pub(super) struct Stage {
    pub name: &'static str,
    /// "done", "running", "failed" or "cancelled".
    pub state: &'static str,
    /// "build 6.0 s (failed)".
    pub label: String,
    /// Where the step starts and how wide it is, in % of the bar.
    pub x: String,
    pub width: String,
}

/// What the job page shows of a job's state, redrawn while it runs.
pub(super) struct JobSummary {
    pub project: String,
    pub repo: String,
    pub id: i64,
    pub state: String,
    pub is_final: bool,
    pub duration: String,
    pub generation: Option<i64>,
    pub error: Option<String>,
    pub stages: Vec<Stage>,
    /// A project member sees Cancel while the job may still run...
    pub can_cancel: bool,
    /// ...and Re-run once it ended.
    pub can_rerun: bool,
    /// The job failed for want of a flake.nix: offer "Generate flake".
    pub no_flake: bool,
    pub member: bool,
    pub csrf: String,
}

/// A one-field form shown again after it failed (a new repository, a new
/// member), with the error and what was typed, in the normal layout.
#[derive(Template)]
#[template(path = "form.html")]
pub(super) struct FormPage {
    pub title: String,
    pub nav: Nav,
    pub project: String,
    pub form: &'static OneField,
    pub error: String,
    pub value: String,
}

/// What a one-field form of a project page is: its heading, where it
/// posts (under `/{project}/`), its field and its button.
#[derive(Debug)]
pub(super) struct OneField {
    pub heading: &'static str,
    pub path: &'static str,
    pub label: &'static str,
    pub field: &'static str,
    pub submit: &'static str,
}

pub(super) const NEW_REPO_FORM: OneField = OneField {
    heading: "New repository in",
    path: "-/repos",
    label: "Repository name",
    field: "name",
    submit: "Create repository",
};

pub(super) const ADD_MEMBER_FORM: OneField = OneField {
    heading: "Add a member to",
    path: "-/members",
    label: "User name",
    field: "username",
    submit: "Add member",
};

#[derive(Template)]
#[template(path = "job.html")]
pub(super) struct JobPage {
    pub title: String,
    pub nav: Nav,
    pub s: JobSummary,
    pub commit: String,
    pub short_commit: String,
    pub branch: String,
    pub created: String,
    /// Store basenames of the derivations the log says were built.
    pub drvs: Vec<String>,
    /// `<cache>/log/` when the cache has this job's build logs.
    pub drv_base: Option<String>,
    pub log: String,
}

#[derive(Template)]
#[template(path = "job_summary.html")]
pub(super) struct JobSummaryPart {
    pub s: JobSummary,
}

#[derive(Template)]
#[template(path = "autonix.html")]
pub(super) struct AutonixPage {
    pub title: String,
    pub nav: Nav,
    pub project: String,
    pub repo: String,
    pub result: Result<autonix::init::Init, String>,
    /// The default branch and the commit the flake was generated from
    /// (what "Commit" checks the branch is still at).
    pub branch: String,
    pub base: String,
    /// The scan's warnings (files it could not read, …), apart from
    /// `decisions`, what the user has to decide.
    pub warnings: Vec<String>,
    pub decisions: Vec<String>,
}
