//! Repository pages: creation and deletion, the summary (branches, README,
//! "Generate flake"), commit log, tree and file views, raw files, commits.

use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use super::pages::{
    AutonixPage, CommitPage, ConfirmDeletePage, EntryRow, FileView, LogPage, RepoPage, Switcher,
    TreeContent, TreePage,
};
use super::project::{ConfirmForm, May, ProjectCtx, load, load_for_post};
use super::{
    CsrfForm, NameForm, Post, Viewer, WebError, WebResult, base_url, blocking, enc, enc_path,
    form_again, human_size, pages, render, render_status,
};
use crate::AppState;
use crate::git;
use crate::names;

/// Raw downloads above this are refused (the tree view never loads them).
const MAX_RAW: usize = 64 * 1024 * 1024;

/// The project context and the repository's directory, if it exists.
pub(super) fn load_repo(
    st: &AppState,
    v: &Viewer,
    project: &str,
    repo: &str,
) -> Result<(ProjectCtx, PathBuf), WebError> {
    let ctx = load(st, v, project)?;
    let missing = || WebError::Missing(format!("no repository {}/{repo}", ctx.project.name));
    names::validate_name(repo).map_err(|_| missing())?;
    st.db.repo(ctx.project.id, repo)?.ok_or_else(missing)?;
    let dir = st.repo_dir(&ctx.project.name, repo);
    Ok((ctx, dir))
}

/// A git lookup's "not found", saying what was looked for.
fn missing(what: String) -> impl FnOnce(WebError) -> WebError {
    move |e| match e {
        WebError::NotFound => WebError::Missing(what),
        e => e,
    }
}

/// `resolve`, with a 404 that names the revision and the repository.
fn resolve_rev(
    r: &git2::Repository,
    rev: &str,
    project: &str,
    repo: &str,
) -> Result<git2::Oid, WebError> {
    git::resolve(r, rev)
        .map_err(WebError::from)
        .map_err(missing(format!(
            "no branch, tag or commit {rev} in {project}/{repo}"
        )))
}

/// The switcher's links: each branch and tag, to `view` (`tree` or `log`)
/// with `path` kept.
fn switcher(
    r: &git2::Repository,
    base: &str,
    view: &str,
    current: &str,
    path: &str,
) -> Result<Switcher, WebError> {
    let refs = git::ref_names(r, git::MAX_SWITCHER_REFS)?;
    let tail = if path.is_empty() {
        String::new()
    } else {
        format!("/{}", enc_path(path))
    };
    let link = |n: String| {
        let href = format!("{base}/{view}/{}{tail}", enc(&n));
        (n, href)
    };
    Ok(Switcher {
        current: current.to_owned(),
        more_branches: refs.branch_count - refs.branches.len(),
        more_tags: refs.tag_count - refs.tags.len(),
        branches: refs.branches.into_iter().map(link).collect(),
        tags: refs.tags.into_iter().map(link).collect(),
    })
}

/// `load_repo` for a form post: the repository, then
/// [`ProjectCtx::check_post`] (role first, then the CSRF token).
pub(super) fn load_repo_for_post(
    st: &AppState,
    v: &Viewer,
    (project, repo): (&str, &str),
    may: May,
    csrf: &str,
) -> Result<(ProjectCtx, PathBuf), WebError> {
    let (ctx, dir) = load_repo(st, v, project, repo)?;
    ctx.check_post(v, may, csrf)?;
    Ok((ctx, dir))
}

pub(super) async fn create(
    Path(project): Path<String>,
    Post { st, v, form: f }: Post<NameForm>,
) -> WebResult {
    let ctx = load_for_post(&st, &v, &project, May::Member, &f.csrf)?;
    let fail =
        |error: String| form_again(&v, &ctx.project.name, &pages::NEW_REPO_FORM, &f.name, error);
    if let Err(e) = names::validate_name(&f.name) {
        return fail(e.to_string());
    }
    let id = match st.db.create_repo(ctx.project.id, &f.name) {
        Ok(id) => id,
        Err(crate::db::DbError::Conflict(_)) => {
            return fail(format!(
                "{}/{} already exists: pick another name",
                ctx.project.name, f.name
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let dir = st.repo_dir(&ctx.project.name, &f.name);
    let spool = st.spool.clone();
    let limits = st.limits.receive;
    let made =
        blocking(move || git::create_bare(&dir, &spool, limits).map_err(WebError::from)).await;
    if let Err(e) = made {
        // Keep the database and the disk in agreement.
        st.db.delete_repo(id)?;
        return Err(e);
    }
    tracing::info!(project = %ctx.project.name, repo = %f.name, "repository created");
    Ok(Redirect::to(&format!("/{}/{}", ctx.project.name, f.name)).into_response())
}

pub(super) async fn show(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> WebResult {
    // The clone URL pasted into a browser: the repository's page.
    if let Some(bare) = repo.strip_suffix(".git")
        && names::validate_name(bare).is_ok()
    {
        return Ok(Redirect::to(&format!("/{}/{}", enc(&project), enc(bare))).into_response());
    }
    let (ctx, dir) = load_repo(&st, &v, &project, &repo)?;
    let clone_url = format!("{}/{}/{}.git", base_url(&headers), ctx.project.name, repo);
    let badges = super::ci::badges(&st, &ctx.project.name, &dir).await;
    let data = blocking(move || {
        let r = git::open(&dir)?;
        if git::is_empty(&r) {
            return Ok(None);
        }
        let branches = git::branches(&r)?;
        let head = git::default_branch(&r)
            .filter(|b| branches.iter().any(|x| &x.name == b))
            .or_else(|| branches.first().map(|b| b.name.clone()))
            .ok_or(WebError::NotFound)?;
        let oid = git::resolve(&r, &head)?;
        let readme = git::root_file(
            &r,
            oid,
            &["README.md", "readme.md", "README", "README.txt"],
            git::MAX_README,
        )
        .map(|(n, t)| {
            (
                n.clone(),
                if n.ends_with(".md") {
                    crate::markdown::render(&t)
                } else {
                    html_pre(&t)
                },
            )
        });
        let has_flake = git::has_root_entry(&r, oid, "flake.nix")?;
        let tag_count = git::ref_names(&r, 0)?.tag_count;
        Ok(Some((head, branches, readme, has_flake, tag_count)))
    })
    .await?;
    let member = ctx.member();
    let page = match data {
        None => RepoPage {
            title: format!("{}/{repo}", ctx.project.name),
            nav: v.nav(),
            project: ctx.project.name,
            repo,
            clone_url,
            empty: true,
            rev_enc: String::new(),
            branches: Vec::new(),
            tag_count: 0,
            readme: None,
            has_flake: false,
            member,
            badges,
        },
        Some((head, branches, readme, has_flake, tag_count)) => RepoPage {
            title: format!("{}/{repo}", ctx.project.name),
            nav: v.nav(),
            project: ctx.project.name,
            repo,
            clone_url,
            empty: false,
            rev_enc: enc(&head),
            branches: branches.into_iter().map(|b| (enc(&b.name), b)).collect(),
            tag_count,
            readme,
            has_flake,
            member,
            badges,
        },
    };
    render(&page)
}

/// Plain-text README shown preformatted (escaped here since it goes through `|safe`).
fn html_pre(t: &str) -> String {
    let esc = t
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    format!("<pre>{esc}</pre>")
}

fn confirm_page(v: &Viewer, project: &str, repo: &str, error: Option<String>) -> ConfirmDeletePage {
    ConfirmDeletePage {
        title: format!("Delete {project}/{repo}"),
        nav: v.nav(),
        what: "repository",
        consequence: "This removes the repository and its whole history (every branch and tag) from disk.",
        name: repo.to_owned(),
        action: format!("/{project}/{repo}/delete"),
        error,
    }
}

pub(super) async fn delete_form(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, repo)): Path<(String, String)>,
) -> WebResult {
    let (ctx, _) = load_repo(&st, &v, &project, &repo)?;
    ctx.require_owner(&v)?;
    render(&confirm_page(&v, &ctx.project.name, &repo, None))
}

pub(super) async fn delete(
    Path((project, repo)): Path<(String, String)>,
    Post { st, v, form: f }: Post<ConfirmForm>,
) -> WebResult {
    let (ctx, dir) = load_repo_for_post(&st, &v, (&project, &repo), May::Owner, &f.csrf)?;
    if f.confirm != repo {
        let page = confirm_page(
            &v,
            &ctx.project.name,
            &repo,
            Some("the name you typed does not match".into()),
        );
        return render_status(StatusCode::BAD_REQUEST, &page);
    }
    let r = st
        .db
        .repo(ctx.project.id, &repo)?
        .ok_or(WebError::NotFound)?;
    st.db.delete_repo(r.id)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| WebError::Internal(format!("removing {}: {e}", dir.display())))?;
    }
    tracing::info!(project = %ctx.project.name, %repo, "repository deleted");
    Ok(Redirect::to(&format!("/{}", ctx.project.name)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct PageQuery {
    page: Option<usize>,
    /// Comma-separated commit ids where this page starts (from "Older").
    after: Option<String>,
}

/// Parses the `after` cursor: 1 to MAX_CURSOR full hex commit ids.
fn parse_cursor(s: &str) -> Result<Vec<git2::Oid>, WebError> {
    let bad = || WebError::BadRequest("bad page cursor".into());
    let ids: Vec<&str> = s.split(',').collect();
    if ids.is_empty() || ids.len() > git::MAX_CURSOR {
        return Err(bad());
    }
    ids.into_iter()
        .map(|h| {
            if h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                git2::Oid::from_str(h).map_err(|_| bad())
            } else {
                Err(bad())
            }
        })
        .collect()
}

/// The highest page number a URL may name without a cursor: page N walks
/// N × PAGE_SIZE commits, so deeper history is reached through the
/// "Older" links (which carry where they start).
pub(super) const MAX_PAGE: usize = 2000;

pub(super) async fn log(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, repo, rev)): Path<(String, String, String)>,
    Query(q): Query<PageQuery>,
) -> WebResult {
    let (ctx, dir) = load_repo(&st, &v, &project, &repo)?;
    let cursor = q.after.as_deref().map(parse_cursor).transpose()?;
    let badges = super::ci::badges(&st, &ctx.project.name, &dir).await;
    // Pages are numbered from 1, in the URL as on the page.
    let page = q.page.unwrap_or(1).clamp(1, 1_000_000);
    if cursor.is_none() && page > MAX_PAGE {
        return Err(WebError::BadRequest(format!(
            "page numbers go up to {MAX_PAGE}; follow the \"Older\" links for older history"
        )));
    }
    let base = format!("/{}/{repo}", ctx.project.name);
    let (r2, b2, name, rn) = (
        rev.clone(),
        base.clone(),
        ctx.project.name.clone(),
        repo.clone(),
    );
    let (lp, switcher) = blocking(move || {
        let r = git::open(&dir)?;
        let head = resolve_rev(&r, &r2, &name, &rn)?;
        // With a cursor the page starts where the previous one ended;
        // without one (a typed URL), earlier pages are walked and dropped.
        let (starts, skip) = match cursor {
            Some(c) => (c, 0),
            None => (vec![head], page - 1),
        };
        let lp = git::log(&r, &starts, skip)?;
        Ok((lp, switcher(&r, &b2, "log", &r2, "")?))
    })
    .await?;
    let mut status = StatusCode::OK;
    let mut past_end = None;
    let mut newer = (page > 1 && page - 1 <= MAX_PAGE).then(|| format!("?page={}", page - 1));
    if lp.commits.is_empty() && page > 1 {
        // Past the end: the walk ran out, so it counted the whole history.
        let pages = lp.walked.div_ceil(git::PAGE_SIZE).max(1);
        status = StatusCode::NOT_FOUND;
        past_end = Some(format!(
            "no commits on page {page}: the history of {rev} has {pages} page{} ({} commit{})",
            if pages == 1 { "" } else { "s" },
            lp.walked,
            if lp.walked == 1 { "" } else { "s" },
        ));
        newer = Some(format!("?page={pages}"));
    }
    let older = lp.more.then(|| match &lp.next {
        Some(ids) => {
            let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            format!("?page={}&after={}", page + 1, ids.join(","))
        }
        None => format!("?page={}", page + 1),
    });
    render_status(
        status,
        &LogPage {
            title: format!("Commits · {}/{repo}", ctx.project.name),
            nav: v.nav(),
            project: ctx.project.name,
            repo,
            rev,
            switcher,
            commits: lp.commits,
            page,
            newer,
            older,
            past_end,
            badges,
        },
    )
}

pub(super) async fn tree_root(
    st: State<AppState>,
    v: Viewer,
    Path((project, repo, rev)): Path<(String, String, String)>,
) -> WebResult {
    tree_page(st, v, project, repo, rev, String::new()).await
}

pub(super) async fn tree(
    st: State<AppState>,
    v: Viewer,
    Path((project, repo, rev, path)): Path<(String, String, String, String)>,
) -> WebResult {
    tree_page(st, v, project, repo, rev, path).await
}

async fn tree_page(
    State(st): State<AppState>,
    v: Viewer,
    project: String,
    repo: String,
    rev: String,
    path: String,
) -> WebResult {
    let (ctx, dir) = load_repo(&st, &v, &project, &repo)?;
    // Validate before touching git: `..`, empty components and the like are
    // a bad request, not a lookup.
    let comps: Vec<String> = names::tree_path(&path)
        .map_err(|e| WebError::BadRequest(e.to_string()))?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let clean = comps.join("/");
    let base = format!("/{}/{}", ctx.project.name, repo);
    let (r2, c2, b2, name, rn) = (
        rev.clone(),
        clean.clone(),
        base.clone(),
        ctx.project.name.clone(),
        repo.clone(),
    );
    let (node, switcher) = blocking(move || {
        let r = git::open(&dir)?;
        let oid = resolve_rev(&r, &r2, &name, &rn)?;
        let node = git::node(&r, oid, &c2)
            .map_err(WebError::from)
            .map_err(missing(format!(
                "no file or directory {c2} at {r2} in {name}/{rn}"
            )))?;
        Ok((node, switcher(&r, &b2, "tree", &r2, &c2)?))
    })
    .await?;
    let rev_enc = enc(&rev);
    let mut crumbs = Vec::new();
    let mut acc = String::new();
    for c in &comps {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(c);
        crumbs.push((
            c.clone(),
            format!("{base}/tree/{rev_enc}/{}", enc_path(&acc)),
        ));
    }
    let content = match node {
        git::Node::Tree(entries) => TreeContent::Dir(
            entries
                .into_iter()
                .map(|e| {
                    let full = if clean.is_empty() {
                        e.name.clone()
                    } else {
                        format!("{clean}/{}", e.name)
                    };
                    EntryRow {
                        href: format!("{base}/tree/{rev_enc}/{}", enc_path(&full)),
                        is_dir: e.is_dir,
                        size: if e.is_link {
                            "symlink".into()
                        } else {
                            e.size.map(human_size).unwrap_or_default()
                        },
                        name: e.name,
                    }
                })
                .collect(),
        ),
        git::Node::Blob(b) => TreeContent::File(FileView {
            size: human_size(b.size),
            raw_href: format!("{base}/raw/{rev_enc}/{}", enc_path(&clean)),
            text: b.text,
            binary: b.binary,
        }),
    };
    render(&TreePage {
        title: format!(
            "{} · {}/{repo}",
            if clean.is_empty() { "Files" } else { &clean },
            ctx.project.name
        ),
        nav: v.nav(),
        project: ctx.project.name,
        repo,
        rev,
        rev_enc,
        switcher,
        crumbs,
        content,
    })
}

/// The file's bytes, as an attachment-safe download: never rendered as
/// HTML by the browser (octet-stream, nosniff, sandboxing CSP).
pub(super) async fn raw(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, repo, rev, path)): Path<(String, String, String, String)>,
) -> WebResult {
    let (ctx, dir) = load_repo(&st, &v, &project, &repo)?;
    names::tree_path(&path).map_err(|e| WebError::BadRequest(e.to_string()))?;
    let name = ctx.project.name;
    let bytes = blocking(move || {
        let r = git::open(&dir)?;
        let oid = resolve_rev(&r, &rev, &name, &repo)?;
        git::raw(&r, oid, &path, MAX_RAW)
            .map_err(WebError::from)
            .map_err(missing(format!("no file {path} at {rev} in {name}/{repo}")))
    })
    .await?
    .ok_or_else(|| {
        WebError::TooLarge(format!(
            "files above {} are not served",
            human_size(MAX_RAW)
        ))
    })?;
    let text = std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0);
    let ctype = if text {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype),
            (
                header::CONTENT_SECURITY_POLICY,
                "sandbox; default-src 'none'",
            ),
        ],
        bytes,
    )
        .into_response())
}

pub(super) async fn commit(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, repo, sha)): Path<(String, String, String)>,
) -> WebResult {
    let (ctx, dir) = load_repo(&st, &v, &project, &repo)?;
    if sha.len() < 4 || sha.len() > 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WebError::BadRequest(
            "a commit id is 4 to 40 hex digits".into(),
        ));
    }
    let badges = super::ci::badges(&st, &ctx.project.name, &dir).await;
    let (name, rn) = (ctx.project.name.clone(), repo.clone());
    let (c, diff) = blocking(move || {
        let r = git::open(&dir)?;
        let oid = resolve_rev(&r, &sha, &name, &rn)?;
        Ok(git::commit(&r, oid, git::DiffLimits::default())?)
    })
    .await?;
    render(&CommitPage {
        title: format!("{} · {}/{repo}", c.short, ctx.project.name),
        nav: v.nav(),
        project: ctx.project.name,
        repo,
        c,
        diff,
        badges,
    })
}

/// `GET …/autonix` (a reload of the generated flake, a shared link): the
/// scan runs only on the repository page's button (a POST with its CSRF
/// token), so this goes back there.
pub(super) async fn autonix_reload(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, repo)): Path<(String, String)>,
) -> WebResult {
    let (ctx, _) = load_repo(&st, &v, &project, &repo)?;
    Ok(Redirect::to(&format!("/{}/{}", ctx.project.name, enc(&repo))).into_response())
}

/// Runs autonix on the repository's head and shows the flake it proposes.
pub(super) async fn autonix(
    Path((project, repo)): Path<(String, String)>,
    Post { st, v, form: f }: Post<CsrfForm>,
) -> WebResult {
    let (ctx, dir) = load_repo_for_post(&st, &v, (&project, &repo), May::Member, &f.csrf)?;
    let tmp = tempfile::tempdir().map_err(|e| WebError::Internal(e.to_string()))?;
    // Named after the repository: autonix uses the directory name in the flake.
    let dest = tmp.path().join(&repo);
    let d2 = dest.clone();
    let (branch, base) = blocking(move || {
        let r = git::open(&dir)?;
        let head = git::default_branch(&r).ok_or(WebError::NotFound)?;
        let oid = git::resolve(&r, &head)?;
        std::fs::create_dir_all(&d2).map_err(|e| WebError::Internal(e.to_string()))?;
        git::export_tree(&r, oid, &d2)?;
        Ok((head, oid.to_string()))
    })
    .await?;
    let result = crate::flakegen::generate(dest)
        .await
        .map_err(|e| commands::report::error_chain(&e));
    // autonix folds the scan's warnings into what is undecided, each
    // prefixed "warning: "; the page lists them apart.
    let (warnings, decisions) = match &result {
        Ok(init) => init
            .undecided
            .iter()
            .cloned()
            .partition(|u| u.starts_with("warning: ")),
        Err(_) => (Vec::new(), Vec::new()),
    };
    render(&AutonixPage {
        title: format!("Generated flake · {}/{repo}", ctx.project.name),
        nav: v.nav(),
        project: ctx.project.name,
        repo,
        result,
        branch,
        base,
        warnings,
        decisions,
    })
}
