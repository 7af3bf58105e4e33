//! Cluster pages: `/-/cluster` (every worker the viewer may see, with
//! health, capacity, its VMs by project, unplaced VMs, the convergence
//! timeline), `/PROJECT/-/cluster` (the same for one project), and the VM
//! page `/PROJECT/-/vms/NAME` (placement, spec and the live serial console
//! from the VM's worker; members only) with its console tail
//! `/PROJECT/-/vms/NAME/console`.
//!
//! Access: a viewer sees the VMs of the projects it may see (public ones,
//! its own, all for an admin), the workers running them, and worker
//! addresses only as an admin; a VM page and its console are for the
//! project's members (a private project answers 404 to others, a public
//! one 403, an anonymous viewer is sent to log in).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Deserialize;

use super::pages::Nav;
use super::project::{ProjectCtx, load};
use super::{Viewer, WebError, WebResult, render};
use crate::AppState;
use crate::cluster::{
    CHART_H, CHART_W, Chart, ClusterPage, EventRow, Scope, VmPlace, chart, cluster_page,
    event_rows, vm_place,
};

/// Events a feed shows.
const FEED: usize = 50;

/// Console lines a VM page shows, and the most `?lines=` may ask for.
const CONSOLE_LINES: u32 = 200;
const CONSOLE_MAX_LINES: u32 = 2000;

/// The chart's box, for the template.
pub(super) struct ChartBox {
    pub w: f64,
    pub h: f64,
}

const CHART_BOX: ChartBox = ChartBox {
    w: CHART_W,
    h: CHART_H,
};

#[derive(Template)]
#[template(path = "cluster.html")]
pub(super) struct ClusterPageT {
    pub title: String,
    pub nav: Nav,
    /// `Some` on a project's cluster page.
    pub project: Option<String>,
    /// The project's deploy repository, for commit links.
    pub deploy_repo: Option<String>,
    pub error: Option<String>,
    pub page: ClusterPage,
    pub chart: Chart,
    pub chart_box: ChartBox,
    pub events: Vec<EventRow>,
    pub events_error: Option<String>,
}

/// The spec as the VM page lists it.
pub(super) struct SpecView {
    pub kernel: String,
    pub initrd: String,
    pub disk: String,
    pub toplevel: String,
    pub cmdline: String,
    pub cpu: u32,
    pub memory_mb: u64,
    pub allowed_domains: Vec<String>,
    pub content_hash: String,
    pub ch_state: String,
    pub pid: String,
}

#[derive(Template)]
#[template(path = "vm.html")]
pub(super) struct VmPageT {
    pub title: String,
    pub nav: Nav,
    pub project: String,
    pub deploy_repo: Option<String>,
    pub name: String,
    pub error: Option<String>,
    pub place: Option<VmPlace>,
    pub spec: Option<SpecView>,
    pub console: String,
    pub console_truncated: bool,
    pub console_error: Option<String>,
    pub console_lines: u32,
    pub rss: String,
    pub events: Vec<EventRow>,
    pub events_error: Option<String>,
}

/// The projects `v` may see and those it belongs to.
fn scope(st: &AppState, v: &Viewer) -> Result<Scope, WebError> {
    let admin = v.is_admin();
    let mut s = Scope {
        admin,
        ..Scope::default()
    };
    if admin {
        return Ok(s);
    }
    for p in st.db.visible_projects(v.user.as_ref())? {
        if let Some(u) = &v.user
            && st.db.role(p.id, u.id)?.is_some()
        {
            s.member.insert(p.name.clone());
        }
        s.visible.insert(p.name);
    }
    Ok(s)
}

async fn draw(st: &AppState, v: &Viewer, scope: Scope, ctx: Option<&ProjectCtx>) -> WebResult {
    let only = ctx.map(|c| c.project.name.as_str());
    let sees = |p: &str| only.map_or(scope.admin || scope.visible.contains(p), |o| o == p);
    let (error, page) = match st.cluster.get().await {
        Ok(snap) => {
            let recent = st.cluster.recent_hosts(sees);
            (None, cluster_page(&snap, &scope, only, &recent))
        }
        Err(e) => (Some(e), ClusterPage::default()),
    };
    let series = st.cluster.series(sees);
    // A worker's own events (no project) go to those shown the worker.
    let hosts: std::collections::BTreeSet<&str> =
        page.workers.iter().map(|w| w.id.as_str()).collect();
    let (events, events_error) = st.cluster.events(FEED, |e| {
        if e.project.is_empty() {
            hosts.contains(e.worker_id.as_str())
        } else {
            sees(&e.project)
        }
    });
    let events = event_rows(&events, commands::telemetry::now_ms(), |p| {
        scope.admin || scope.member.contains(p)
    });
    render(&ClusterPageT {
        title: only.map_or_else(|| "Cluster".to_owned(), |p| format!("{p} · cluster")),
        nav: v.nav(),
        project: only.map(str::to_owned),
        deploy_repo: ctx.and_then(|c| c.project.deploy_repo.clone()),
        error,
        page,
        chart: chart(&series),
        chart_box: CHART_BOX,
        events,
        events_error,
    })
}

/// `/-/cluster`.
pub(super) async fn cluster(State(st): State<AppState>, v: Viewer) -> WebResult {
    let scope = scope(&st, &v)?;
    draw(&st, &v, scope, None).await
}

/// `/PROJECT/-/cluster`: anyone who may see the project.
pub(super) async fn project_cluster(
    State(st): State<AppState>,
    v: Viewer,
    Path(name): Path<String>,
) -> WebResult {
    let ctx = load(&st, &v, &name)?;
    // Admins see the addresses of the workers they are shown.
    let mut scope = Scope {
        admin: ctx.admin,
        ..Scope::default()
    };
    scope.visible.insert(ctx.project.name.clone());
    if ctx.member() {
        scope.member.insert(ctx.project.name.clone());
    }
    draw(&st, &v, scope, Some(&ctx)).await
}

/// The project (members only) and the VM's place in the snapshot.
async fn load_vm(
    st: &AppState,
    v: &Viewer,
    project: &str,
    name: &str,
) -> Result<(ProjectCtx, Result<Option<VmPlace>, String>), WebError> {
    let ctx = load(st, v, project)?;
    ctx.require_member(v)?;
    name.parse::<commands::types::VmName>()
        .map_err(|_| WebError::NotFound)?;
    let place = st
        .cluster
        .get()
        .await
        .map(|snap| vm_place(&snap, &ctx.project.name, name, ctx.admin));
    Ok((ctx, place))
}

/// `/PROJECT/-/vms/NAME`.
pub(super) async fn vm(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, name)): Path<(String, String)>,
) -> WebResult {
    let (ctx, place) = load_vm(&st, &v, &project, &name).await?;
    let (error, place) = match place {
        Ok(Some(p)) => (None, Some(p)),
        // The control plane is the authority on which VMs exist.
        Ok(None) => return Err(WebError::NotFound),
        Err(e) => (Some(e), None),
    };
    let mut page = VmPageT {
        title: format!("{name} · {}", ctx.project.name),
        nav: v.nav(),
        project: ctx.project.name.clone(),
        deploy_repo: ctx.project.deploy_repo.clone(),
        name: name.clone(),
        error,
        spec: None,
        console: String::new(),
        console_truncated: false,
        console_error: None,
        console_lines: CONSOLE_LINES,
        rss: place.as_ref().map_or_else(String::new, |p| {
            commands::model::human_bytes(p.metrics.rss_bytes)
        }),
        place,
        events: Vec::new(),
        events_error: None,
    };
    let (events, events_error) = st
        .cluster
        .events(FEED, |e| e.project == ctx.project.name && e.vm == name);
    page.events = event_rows(&events, commands::telemetry::now_ms(), |_| true);
    page.events_error = events_error;
    match page
        .place
        .as_ref()
        .and_then(|p| Some((p.worker.as_ref()?.id.clone(), p.vm_id.clone())))
        .filter(|(_, id)| !id.is_empty())
    {
        None => page.console_error = Some("the VM is not running on a worker".into()),
        Some((worker, id)) => match st
            .cluster
            .vm_detail(&worker, &id, CONSOLE_LINES, true)
            .await
        {
            Ok((info, tail)) => {
                page.spec = info.map(|d| {
                    let f = commands::types::VmSpecFields::from(d.spec);
                    SpecView {
                        kernel: f.kernel_path,
                        initrd: f.initrd_path,
                        disk: f.disk_image_path,
                        toplevel: f.toplevel,
                        cmdline: f.cmdline,
                        cpu: f.cpu,
                        memory_mb: f.memory_mb,
                        allowed_domains: f.network_allowed_domains,
                        content_hash: f.content_hash,
                        ch_state: d.ch_state,
                        pid: d
                            .status
                            .pid
                            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    }
                });
                page.console = tail.lines.join("\n");
                page.console_truncated = tail.truncated;
            }
            Err(e) => page.console_error = Some(e),
        },
    }
    render(&page)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ConsoleQuery {
    lines: Option<u32>,
}

/// `/PROJECT/-/vms/NAME/console?lines=N`: the end of the serial console as
/// plain text (the VM page's script polls it to follow the console).
pub(super) async fn console(
    State(st): State<AppState>,
    v: Viewer,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<ConsoleQuery>,
) -> Result<Response, WebError> {
    let lines = q.lines.unwrap_or(CONSOLE_LINES);
    if lines == 0 || lines > CONSOLE_MAX_LINES {
        return Err(WebError::BadRequest(format!(
            "lines must be 1 to {CONSOLE_MAX_LINES}"
        )));
    }
    let (_, place) = load_vm(&st, &v, &project, &name).await?;
    let text = |status: StatusCode, body: String| {
        (
            status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response()
    };
    // What the follower cannot get now is a 503 it may retry, in plain
    // text like the console itself.
    let unavailable = |msg: String| Ok(text(StatusCode::SERVICE_UNAVAILABLE, msg + "\n"));
    let place = match place {
        Ok(Some(p)) => p,
        Ok(None) => return Err(WebError::NotFound),
        Err(e) => return unavailable(format!("control plane unavailable: {e}")),
    };
    let (worker, id) = match (&place.worker, place.vm_id.as_str()) {
        (Some(w), id) if !id.is_empty() => (w.id.clone(), id.to_owned()),
        _ => return unavailable("the VM is not running on a worker".into()),
    };
    match st.cluster.vm_detail(&worker, &id, lines, false).await {
        Ok((_, tail)) => {
            let mut body = tail.lines.join("\n");
            body.push('\n');
            Ok(text(StatusCode::OK, body))
        }
        Err(e) => unavailable(format!("console unavailable: {e}")),
    }
}

pub(super) async fn cluster_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/cluster.js"),
    )
}

pub(super) async fn cluster_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/cluster.css"),
    )
}
