//! `pcr history`, `pcr diff`, `pcr events`, `pcr vm` and `pcr logs`: a
//! project's generations with who published them and why, what one
//! generation changed against another, the control plane's event log, one
//! VM in full, and a VM's serial console (through the control plane's
//! `getWorker` proxy, admin tokens only, as `pcr-worker-test logs` reads
//! it from a worker directly).
//!
//! Each command returns the text to print (tables as `cli::output::Table`
//! renders them, or `--json`); errors name what was wrong and what exists
//! ("no VM web-9 in project team-a; VMs: web-0, web-1").

use std::collections::BTreeMap;
use std::time::Duration;

use commands::client::{ClientError, MasterClient};
use commands::model::{
    ClusterStatusView, EventView, GenerationDetailView, GenerationView, MAX_EVENTS_PER_PAGE,
    VmPlacementView,
};
use commands::types::{LogTail, ProjectName, VmId, VmSpec};
use serde::Serialize;

use crate::master::ConnectError;
use crate::output::{Table, age, key_values, or_dash, short_hash};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// What the user named does not exist; the message says what does.
    #[error("{0}")]
    NotFound(String),
}

impl From<ClientError> for InspectError {
    fn from(e: ClientError) -> Self {
        InspectError::Connect(ConnectError::Client(e))
    }
}

/// Pretty JSON with a final newline, what `--json` prints.
pub fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// The first `n` names of `names`, then how many more.
fn some_of(names: &[String], n: usize) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut s = names[..names.len().min(n)].join(", ");
    if names.len() > n {
        s.push_str(&format!(" and {} more", names.len() - n));
    }
    s
}

// ---- history ----------------------------------------------------------------

/// `pcr history`: generations newest first, with commit, author, message,
/// CI job, when published and when converged (`-` until then).
pub fn render_history(gens: &[GenerationView], with_project: bool, now_ms: u64) -> String {
    if gens.is_empty() {
        return "no generation published\n".into();
    }
    let mut header = vec![
        "GENERATION",
        "COMMIT",
        "AUTHOR",
        "MESSAGE",
        "JOB",
        "PUBLISHED",
        "CONVERGED",
        "ROLLOUT",
    ];
    if with_project {
        header.insert(0, "PROJECT");
    }
    let mut t = Table::new(&header);
    for g in gens {
        let mut row = Vec::with_capacity(8);
        if with_project {
            row.push(g.project.clone());
        }
        let converged = if g.converged_at_ms == 0 {
            "-".to_owned()
        } else {
            format!(
                "after {}",
                crate::output::duration_ms(g.converged_at_ms.saturating_sub(g.published_at_ms))
            )
        };
        row.extend([
            g.number.to_string(),
            short_hash(&g.commit),
            or_dash(&g.author),
            or_dash(&crate::output::one_line(&g.message)),
            if g.job_id == 0 {
                "-".into()
            } else {
                g.job_id.to_string()
            },
            format!("{} ago", age(g.published_at_ms, now_ms)),
            converged,
            or_dash(&g.rollout),
        ]);
        t.row(row);
    }
    t.render()
}

/// Generations of `project` (every project when `None`), newest first.
pub async fn history(
    m: &MasterClient,
    project: Option<&ProjectName>,
) -> Result<Vec<GenerationView>, InspectError> {
    let mut gens = m.generations(project.map(ProjectName::as_str)).await?;
    gens.sort_by(|a, b| {
        (&a.project, std::cmp::Reverse(a.number)).cmp(&(&b.project, std::cmp::Reverse(b.number)))
    });
    Ok(gens)
}

// ---- diff -------------------------------------------------------------------

/// What generation `to` changed against `from`, by VM name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationDiff {
    pub project: String,
    pub from: u64,
    pub to: u64,
    /// In `to`, not in `from`.
    pub added: Vec<String>,
    /// In both with another content hash: (name, old hash, new hash).
    pub replaced: Vec<ReplacedVm>,
    /// In `from`, not in `to`.
    pub removed: Vec<String>,
    /// In both with the same content hash.
    pub unchanged: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplacedVm {
    pub name: String,
    pub from_hash: String,
    pub to_hash: String,
}

/// Compares the specs of two generations by VM name and content hash.
pub fn diff(from: &GenerationDetailView, to: &GenerationDetailView) -> GenerationDiff {
    let by_name = |specs: &[VmSpec]| -> BTreeMap<String, String> {
        specs
            .iter()
            .map(|s| (s.name().to_string(), s.content_hash().to_owned()))
            .collect()
    };
    let (a, b) = (by_name(&from.specs), by_name(&to.specs));
    let mut d = GenerationDiff {
        project: to.generation.project.clone(),
        from: from.generation.number,
        to: to.generation.number,
        ..GenerationDiff::default()
    };
    for (name, hash) in &b {
        match a.get(name) {
            None => d.added.push(name.clone()),
            Some(old) if old != hash => d.replaced.push(ReplacedVm {
                name: name.clone(),
                from_hash: old.clone(),
                to_hash: hash.clone(),
            }),
            Some(_) => d.unchanged.push(name.clone()),
        }
    }
    d.removed = a.keys().filter(|n| !b.contains_key(*n)).cloned().collect();
    d
}

pub fn render_diff(d: &GenerationDiff) -> String {
    let mut out = format!(
        "project {}: generation {} → {}: {} added, {} replaced, {} removed, {} unchanged\n",
        d.project,
        d.from,
        d.to,
        d.added.len(),
        d.replaced.len(),
        d.removed.len(),
        d.unchanged.len()
    );
    for n in &d.added {
        out.push_str(&format!("+ {n}\n"));
    }
    for r in &d.replaced {
        out.push_str(&format!(
            "~ {}  {} → {}\n",
            r.name,
            short_hash(&r.from_hash),
            short_hash(&r.to_hash)
        ));
    }
    for n in &d.removed {
        out.push_str(&format!("- {n}\n"));
    }
    out
}

/// The project `pcr diff` and `pcr vm` mean: the one given, else the only
/// project with a generation, else an error naming the choices.
async fn one_project(
    m: &MasterClient,
    project: Option<&ProjectName>,
) -> Result<ProjectName, InspectError> {
    if let Some(p) = project {
        return Ok(p.clone());
    }
    let status = m.status().await?;
    let names: Vec<String> = status
        .generations
        .iter()
        .map(|g| g.project.clone())
        .collect();
    match names.as_slice() {
        [one] => one
            .parse()
            .map_err(|e| InspectError::NotFound(format!("project {one}: {e}"))),
        [] => Err(InspectError::NotFound(
            "no project has published a generation".into(),
        )),
        _ => Err(InspectError::NotFound(format!(
            "several projects have generations ({}); name one with --project",
            names.join(", ")
        ))),
    }
}

/// `pcr diff A B`: what generation `b` changed against `a`.
pub async fn diff_generations(
    m: &MasterClient,
    project: Option<&ProjectName>,
    a: u64,
    b: u64,
) -> Result<GenerationDiff, InspectError> {
    let project = one_project(m, project).await?;
    let from = m.generation(&project, a).await?;
    let to = m.generation(&project, b).await?;
    Ok(diff(&from, &to))
}

// ---- events -----------------------------------------------------------------

/// Every event after `after_id` the token may see (of `project` when
/// given), oldest first, paging through the log.
pub async fn events_after(
    m: &MasterClient,
    project: Option<&ProjectName>,
    after_id: u64,
) -> Result<Vec<EventView>, InspectError> {
    let mut out: Vec<EventView> = Vec::new();
    let mut after = after_id;
    loop {
        let page = m.list_events(project, after, MAX_EVENTS_PER_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let full = page.len() as u32 == MAX_EVENTS_PER_PAGE;
        out.extend(page);
        if !full {
            break;
        }
    }
    Ok(out)
}

/// Events as rows, oldest first (newest last, next to the prompt).
pub fn event_rows(events: &[EventView], now_ms: u64) -> Table {
    let mut t = Table::new(&["AGE", "PROJECT", "KIND", "VM", "WORKER", "MESSAGE"]);
    for e in events {
        t.row([
            age(e.at_ms, now_ms),
            or_dash(&e.project),
            e.kind.clone(),
            or_dash(&e.vm),
            or_dash(&e.worker_id),
            e.message.clone(),
        ]);
    }
    t
}

/// `pcr events`: the newest `limit` events as a table.
pub fn render_events(events: &[EventView], limit: usize, now_ms: u64) -> String {
    if events.is_empty() {
        return "No events\n".into();
    }
    let start = events.len().saturating_sub(limit);
    event_rows(&events[start..], now_ms).render()
}

/// `pcr events --watch`: polls for events after the last one shown, every
/// `interval`, printing each new batch (JSON lines with `json`) until
/// interrupted or a call fails.
pub async fn watch_events(
    m: &MasterClient,
    project: Option<&ProjectName>,
    mut after: u64,
    interval: Duration,
    json: bool,
) -> Result<(), InspectError> {
    loop {
        tokio::time::sleep(interval).await;
        let new = events_after(m, project, after).await?;
        let Some(last) = new.last() else { continue };
        after = last.id;
        let text = if json {
            new.iter()
                .map(|e| serde_json::to_string(e).unwrap_or_default() + "\n")
                .collect()
        } else {
            // Rows only: the header was printed with the first batch.
            let t = event_rows(&new, commands::telemetry::now_ms()).render();
            t.split_once('\n')
                .map_or(String::new(), |(_, r)| r.to_owned())
        };
        crate::output::print_str(&text);
    }
}

// ---- vm and logs ------------------------------------------------------------

/// One VM as `pcr vm` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmView {
    pub placement: VmPlacementView,
    /// The generation that wants it, and its spec there.
    pub generation: u64,
    pub spec: Option<VmSpec>,
    /// Why it is not placed, when it is not.
    pub unplaced: Option<String>,
    /// Its latest events, oldest first.
    pub events: Vec<EventView>,
}

/// The VM `name` (of `project`, or of the only project that has one by
/// that name) in the cluster status; errors list what exists.
fn find_vm<'a>(
    status: &'a ClusterStatusView,
    project: Option<&ProjectName>,
    name: &str,
) -> Result<&'a VmPlacementView, InspectError> {
    let in_scope = |v: &&VmPlacementView| project.is_none_or(|p| v.project == p.as_str());
    let hits: Vec<&VmPlacementView> = status
        .vms
        .iter()
        .filter(in_scope)
        .filter(|v| v.name == name)
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => {
            let mut names: Vec<String> = status
                .vms
                .iter()
                .filter(in_scope)
                .map(|v| {
                    if project.is_some() {
                        v.name.clone()
                    } else {
                        format!("{}/{}", v.project, v.name)
                    }
                })
                .collect();
            names.sort();
            names.dedup();
            let scope = project.map_or(String::new(), |p| format!(" in project {p}"));
            Err(InspectError::NotFound(format!(
                "no VM {name}{scope}; VMs: {}",
                some_of(&names, 20)
            )))
        }
        many => {
            let projects: Vec<&str> = many.iter().map(|v| v.project.as_str()).collect();
            Err(InspectError::NotFound(format!(
                "{name} exists in projects {}; name one with --project",
                projects.join(", ")
            )))
        }
    }
}

/// `pcr vm NAME`: placement, spec, state and latest events of one VM.
pub async fn vm(
    m: &MasterClient,
    project: Option<&ProjectName>,
    name: &str,
    recent: usize,
) -> Result<VmView, InspectError> {
    let status = m.status().await?;
    let placement = find_vm(&status, project, name)?.clone();
    let project: ProjectName = placement
        .project
        .parse()
        .map_err(|e| InspectError::NotFound(format!("project {}: {e}", placement.project)))?;
    let generation = status.active(project.as_str()).map_or(0, |g| g.number);
    let spec = if generation == 0 || placement.desired_hash.is_empty() {
        None
    } else {
        m.generation(&project, generation)
            .await?
            .specs
            .into_iter()
            .find(|s| s.name().as_str() == name)
    };
    let unplaced = status
        .unplaced
        .iter()
        .find(|u| u.project == placement.project && u.name == name)
        .map(|u| u.reason.clone());
    let mut events: Vec<EventView> = events_after(m, Some(&project), 0)
        .await?
        .into_iter()
        .filter(|e| e.vm == name)
        .collect();
    let start = events.len().saturating_sub(recent);
    events.drain(..start);
    Ok(VmView {
        placement,
        generation,
        spec,
        unplaced,
        events,
    })
}

pub fn render_vm(v: &VmView, now_ms: u64) -> String {
    let p = &v.placement;
    let mut pairs: Vec<(&str, String)> = vec![
        ("project", p.project.clone()),
        ("name", p.name.clone()),
        ("generation", v.generation.to_string()),
        ("worker", or_dash(&p.worker_id)),
        ("vm id", or_dash(&p.vm_id)),
        ("state", p.state.map_or("-".into(), |s| s.to_string())),
        ("drift", p.drift.to_string()),
        ("desired", or_dash(&p.desired_hash)),
        ("observed", or_dash(&p.observed_hash)),
    ];
    if let Some(why) = &v.unplaced {
        pairs.push(("unplaced", why.clone()));
    }
    if let Some(s) = &v.spec {
        pairs.extend([
            ("cpu", s.cpu().to_string()),
            ("memory", format!("{} MiB", s.memory_mb())),
            ("toplevel", s.toplevel().to_string()),
            ("kernel", s.kernel_path().to_string()),
            ("cmdline", s.cmdline().to_owned()),
        ]);
    }
    if p.state.is_some() {
        pairs.extend([
            ("cpu use", format!("{:.1}%", p.metrics.cpu_percent)),
            ("rss", crate::output::bytes(p.metrics.rss_bytes)),
        ]);
    }
    let mut out = key_values(&pairs);
    out.push('\n');
    if v.events.is_empty() {
        out.push_str("No events\n");
    } else {
        out.push_str(&event_rows(&v.events, now_ms).render());
    }
    out
}

/// Where VM `name` runs: its worker and id, or why it has none.
async fn running_vm(
    m: &MasterClient,
    project: Option<&ProjectName>,
    name: &str,
) -> Result<(String, VmId), InspectError> {
    let status = m.status().await?;
    let v = find_vm(&status, project, name)?;
    if v.worker_id.is_empty() {
        let why = status
            .unplaced
            .iter()
            .find(|u| u.project == v.project && u.name == v.name)
            .map_or("it is not placed".to_owned(), |u| {
                format!("it is not placed: {}", u.reason)
            });
        return Err(InspectError::NotFound(format!(
            "{} of project {} runs nowhere: {why}",
            v.name, v.project
        )));
    }
    let id = v.vm_id.parse::<VmId>().map_err(|_| {
        InspectError::NotFound(format!(
            "{} of project {} is placed on {} but that worker has not reported it running yet",
            v.name, v.project, v.worker_id
        ))
    })?;
    Ok((v.worker_id.clone(), id))
}

/// The end of VM `name`'s serial console: its last `lines` lines.
pub async fn logs(
    m: &MasterClient,
    project: Option<&ProjectName>,
    name: &str,
    lines: u32,
) -> Result<LogTail, InspectError> {
    let (worker, id) = running_vm(m, project, name).await?;
    Ok(m.worker(&worker).await?.logs(&id, lines).await?)
}

/// The lines of `tail`, one per line (`--json`: the tail as it is).
pub fn render_tail(tail: &LogTail, json: bool) -> String {
    if json {
        return to_json(tail);
    }
    let mut s = String::new();
    for l in &tail.lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// The lines of `now` that come after what `before` showed: the smallest
/// shift of the window `before` that lines up with the start of `now`.
/// (A console whose lines repeat exactly may be matched too early; the
/// cost is a line shown twice, never one lost in a steady stream.)
pub fn new_lines<'a>(before: &[String], now: &'a [String]) -> &'a [String] {
    for shift in 0..=before.len() {
        let rest = &before[shift..];
        if rest.len() <= now.len() && now[..rest.len()] == *rest {
            return &now[rest.len()..];
        }
    }
    now
}

/// `pcr logs --follow`: prints the tail, then the new console lines every
/// `interval` until interrupted, the VM goes away, or a call fails.
pub async fn follow_logs(
    m: &MasterClient,
    project: Option<&ProjectName>,
    name: &str,
    lines: u32,
    interval: Duration,
) -> Result<(), InspectError> {
    let (worker, id) = running_vm(m, project, name).await?;
    let w = m.worker(&worker).await?;
    // The window compared between polls: large enough that a burst
    // between two polls still overlaps it.
    let window = lines.max(1000);
    let first = w.logs(&id, window).await?;
    let start = first.lines.len().saturating_sub(lines as usize);
    crate::output::print_str(&render_tail(
        &LogTail {
            lines: first.lines[start..].to_vec(),
            truncated: false,
        },
        false,
    ));
    let mut before = first.lines;
    loop {
        tokio::time::sleep(interval).await;
        let now = w.logs(&id, window).await?;
        let fresh = new_lines(&before, &now.lines);
        if !fresh.is_empty() {
            let mut s = fresh.join("\n");
            s.push('\n');
            crate::output::print_str(&s);
        }
        before = now.lines;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::fixtures::spec;

    fn detail(number: u64, specs: Vec<VmSpec>) -> GenerationDetailView {
        GenerationDetailView {
            generation: GenerationView {
                project: "shop".into(),
                number,
                ..GenerationView::default()
            },
            specs,
        }
    }

    #[test]
    fn diff_names_added_replaced_removed() {
        let a = detail(
            3,
            vec![spec("web-0", "h1"), spec("web-1", "h1"), spec("db", "d1")],
        );
        let b = detail(
            5,
            vec![
                spec("web-0", "h2"),
                spec("web-1", "h1"),
                spec("cache", "c1"),
            ],
        );
        let d = diff(&a, &b);
        assert_eq!(d.added, ["cache"]);
        assert_eq!(d.removed, ["db"]);
        assert_eq!(d.unchanged, ["web-1"]);
        assert_eq!(
            d.replaced,
            [ReplacedVm {
                name: "web-0".into(),
                from_hash: "h1".into(),
                to_hash: "h2".into()
            }]
        );
        assert_eq!(
            render_diff(&d),
            "project shop: generation 3 → 5: 1 added, 1 replaced, 1 removed, 1 unchanged\n\
             + cache\n~ web-0  h1 → h2\n- db\n"
        );
    }

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| (*l).to_owned()).collect()
    }

    /// Following a console: only what is new is printed, whether the
    /// window slid, stayed, or jumped past everything seen.
    #[test]
    fn new_lines_follow_a_sliding_window() {
        let before = lines(&["a", "b", "c"]);
        assert_eq!(new_lines(&before, &lines(&["a", "b", "c", "d"])), ["d"]);
        assert_eq!(
            new_lines(&before, &lines(&["b", "c", "d", "e"])),
            ["d", "e"]
        );
        assert!(new_lines(&before, &lines(&["a", "b", "c"])).is_empty());
        assert_eq!(new_lines(&before, &lines(&["x", "y"])), ["x", "y"]);
        assert_eq!(new_lines(&[], &lines(&["x"])), ["x"]);
    }

    #[test]
    fn history_shows_who_why_and_when() {
        let g = GenerationView {
            project: "shop".into(),
            number: 4,
            commit: "0123456789abcdef0123".into(),
            author: "Ada".into(),
            message: "faster checkout".into(),
            job_id: 17,
            published_at_ms: 10_000,
            converged_at_ms: 13_000,
            rollout: "paused: web-1 unhealthy".into(),
            ..GenerationView::default()
        };
        let t = render_history(&[g], false, 70_000);
        assert_eq!(
            t,
            "GENERATION  COMMIT        AUTHOR  MESSAGE          JOB  PUBLISHED  CONVERGED  ROLLOUT\n\
             4           0123456789ab  Ada     faster checkout  17   1m00s ago  after 3s   paused: web-1 unhealthy\n"
        );
    }
}
