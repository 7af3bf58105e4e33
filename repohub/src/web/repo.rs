//! Repository pages: creation and deletion, the summary (branches, README,
//! "Generate flake"), commit log, tree and file views, raw files, commits.

use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use super::pages::{
    AutonixPage, CommitPage, ConfirmDeletePage, EntryRow, FileView, LogPage, RepoPage, TreeContent,
    TreePage,
};
use super::project::{ConfirmForm, May, ProjectCtx, load, load_for_post};
use super::{
    CsrfForm, NameForm, Post, Viewer, WebError, WebResult, base_url, blocking, enc, enc_path,
    human_size, render, render_status,
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
    names::validate_name(repo).map_err(|_| WebError::NotFound)?;
    st.db
        .repo(ctx.project.id, repo)?
        .ok_or(WebError::NotFound)?;
    let dir = st.repo_dir(&ctx.project.name, repo);
    Ok((ctx, dir))
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
    names::validate_name(&f.name).map_err(|e| WebError::BadRequest(e.to_string()))?;
    let id = st.db.create_repo(ctx.project.id, &f.name)?;
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
        Ok(Some((head, branches, readme, has_flake)))
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
            readme: None,
            has_flake: false,
            member,
            badges,
        },
        Some((head, branches, readme, has_flake)) => RepoPage {
            title: format!("{}/{repo}", ctx.project.name),
            nav: v.nav(),
            project: ctx.project.name,
            repo,
            clone_url,
            empty: false,
            rev_enc: enc(&head),
            branches: branches.into_iter().map(|b| (enc(&b.name), b)).collect(),
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

pub(super) async fn log(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, repo, rev)): Path<(String, String, String)>,
    Query(q): Query<PageQuery>,
) -> WebResult {
    let (ctx, dir) = load_repo(&st, &v, &project, &repo)?;
    let page = q.page.unwrap_or(0).min(1_000_000);
    let cursor = q.after.as_deref().map(parse_cursor).transpose()?;
    let badges = super::ci::badges(&st, &ctx.project.name, &dir).await;
    let r2 = rev.clone();
    let lp = blocking(move || {
        let r = git::open(&dir)?;
        let head = git::resolve(&r, &r2)?;
        // With a cursor the page starts where the previous one ended;
        // without one (a typed URL), earlier pages are walked and dropped.
        let (starts, skip) = match cursor {
            Some(c) => (c, 0),
            None => (vec![head], page),
        };
        Ok(git::log(&r, &starts, skip)?)
    })
    .await?;
    let older = lp.more.then(|| match &lp.next {
        Some(ids) => {
            let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            format!("?page={}&after={}", page + 1, ids.join(","))
        }
        None => format!("?page={}", page + 1),
    });
    render(&LogPage {
        title: format!("Commits · {}/{repo}", ctx.project.name),
        nav: v.nav(),
        project: ctx.project.name,
        repo,
        rev,
        commits: lp.commits,
        page,
        older,
        badges,
    })
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
    let (r2, c2) = (rev.clone(), clean.clone());
    let node = blocking(move || {
        let r = git::open(&dir)?;
        let oid = git::resolve(&r, &r2)?;
        Ok(git::node(&r, oid, &c2)?)
    })
    .await?;
    let base = format!("/{}/{}", ctx.project.name, repo);
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
    let (_, dir) = load_repo(&st, &v, &project, &repo)?;
    names::tree_path(&path).map_err(|e| WebError::BadRequest(e.to_string()))?;
    let bytes = blocking(move || {
        let r = git::open(&dir)?;
        let oid = git::resolve(&r, &rev)?;
        Ok(git::raw(&r, oid, &path, MAX_RAW)?)
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
    let (c, files) = blocking(move || {
        let r = git::open(&dir)?;
        let oid = git::resolve(&r, &sha)?;
        Ok(git::commit(&r, oid)?)
    })
    .await?;
    render(&CommitPage {
        title: format!("{} · {}/{repo}", c.short, ctx.project.name),
        nav: v.nav(),
        project: ctx.project.name,
        repo,
        c,
        files,
        badges,
    })
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
    render(&AutonixPage {
        title: format!("Generated flake · {}/{repo}", ctx.project.name),
        nav: v.nav(),
        project: ctx.project.name,
        repo,
        result,
        branch,
        base,
    })
}
