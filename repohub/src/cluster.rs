//! Reads the cluster's state from the control plane (`Master.getClusterStatus`
//! through `commands::client::MasterClient`) and turns it into plain owned
//! rows for the templates, showing each viewer only its projects.
//!
//! Every page is drawn from one shared status ([`SharedStatus`]): it is
//! fetched at most once per TTL, and concurrent page views while it is
//! stale wait for the one fetch in flight instead of each making their own
//! RPC, so a flood of page views costs the control plane one call per TTL.
//! RPC clients are `!Send` while axum handlers must be `Send`, so the fetch
//! runs on a blocking thread with its own current-thread runtime and
//! `LocalSet` (`commands::rpc::block_on_local`).
//!
//! The cluster pages (`/-/cluster`, `/PROJECT/-/cluster`) are drawn by
//! [`cluster_page`] from the same snapshot; every fresh snapshot is also
//! sampled into the convergence [`Timeline`]. A VM page's spec and serial
//! console come from the VM's worker, reached through the control plane's
//! `getWorker` ([`SharedStatus::vm_detail`]), for a VM the page looked up in
//! the snapshot by (project, name): a worker or VM id never comes from the
//! request.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commands::client::{ClientError, MasterClient};
use commands::model::{
    ClusterStatusView, Drift, EventView, ProjectStatusView, VmPlacementView, WorkerHealthView,
};
use commands::types::{LogTail, VmDetails, VmId};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("control plane is not configured")]
    NotConfigured,
    #[error(transparent)]
    Connect(ClientError),
    #[error("getClusterStatus failed")]
    Call(#[source] ClientError),
    #[error("projects failed")]
    Projects(#[source] ClientError),
    #[error("listEvents failed")]
    Events(#[source] ClientError),
    #[error("the control plane did not answer in time")]
    Timeout,
    #[error("the RPC thread failed")]
    Join,
    #[error("getWorker {0} failed")]
    Worker(String, #[source] ClientError),
    #[error("vmInfo failed")]
    VmInfo(#[source] ClientError),
    #[error("logs failed")]
    Logs(#[source] ClientError),
    #[error("the VM id {0:?} the control plane reported is not a VM id")]
    VmId(String),
    #[error("too many console reads at once; try again in a moment")]
    Busy,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub project: String,
    pub generation: u64,
    pub commit: String,
    pub convergence: f64,
    pub vms: Vec<VmView>,
    pub workers: Vec<WorkerCard>,
    pub unplaced: Vec<(String, String)>,
    /// Whether worker addresses are shown (admins only).
    pub addresses: bool,
    /// The project's quota and what its active generation asks for, when
    /// the control plane reports them.
    pub quota: Option<QuotaView>,
    /// The project's rollouts not yet done, one line each: "web: paused,
    /// batch 1/3, 0/6 healthy: web-0 unhealthy: …".
    pub rollouts: Vec<String>,
}

/// A project's quota next to its usage, as the panel prints them.
#[derive(Debug, Clone)]
pub struct QuotaView {
    pub cpu: String,
    pub memory: String,
    pub vms: String,
}

/// One fetch from the control plane: the cluster status and every
/// project's quota and usage.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: ClusterStatusView,
    pub projects: Vec<ProjectStatusView>,
    /// Events logged since the previous fetch (they go to the shared
    /// [`EventLog`]), or why they could not be read.
    pub new_events: Result<Vec<EventView>, String>,
}

#[derive(Debug, Clone)]
pub struct VmView {
    pub project: String,
    pub name: String,
    /// Whether the viewer may open the VM's page (members only).
    pub link: bool,
    pub worker: String,
    pub desired: String,
    pub observed: String,
    pub state: String,
    pub drift: String,
    pub cpu_percent: f64,
    pub rss_mib: f64,
}

pub fn short_hash(h: &str) -> String {
    h.chars().take(12).collect()
}

/// What `project`'s page shows of the cluster: its generation, its VMs
/// and unplaced VMs, the workers that run them, and its quota and usage.
/// Nothing of another project is shown; worker addresses only to admins.
/// `member`: the viewer may open the VM pages (links are drawn).
pub fn project_view(snap: &Snapshot, project: &str, admin: bool, member: bool) -> ClusterView {
    let s = &snap.status;
    let active = s.active(project);
    let mine = snap.projects.iter().find(|p| p.project == project);
    let mut v = ClusterView {
        project: project.to_owned(),
        generation: active.map_or(0, |g| g.number),
        commit: active.map(|g| g.commit.clone()).unwrap_or_default(),
        convergence: mine.map_or(0.0, |p| p.convergence_percent),
        addresses: admin,
        quota: mine.map(|p| QuotaView {
            cpu: format!("{}/{}", p.usage.cpu, p.quota.cpu),
            memory: format!("{}/{} MiB", p.usage.memory_mb, p.quota.memory_mb),
            vms: format!("{}/{}", p.usage.vms, p.quota.vms),
        }),
        ..Default::default()
    };
    for p in s.vms.iter().filter(|p| p.project == project) {
        v.vms.push(vm_view(p, member));
    }
    // Only the workers running this project's VMs, and of them only what
    // the project's own VMs explain is not another tenant's business; the
    // allocation shown is the worker's total (what placement sees).
    let hosts: std::collections::BTreeSet<&str> = v.vms.iter().map(|m| m.worker.as_str()).collect();
    for w in s
        .workers
        .iter()
        .filter(|w| hosts.contains(w.worker_id.as_str()))
    {
        v.workers.push(worker_card(w, admin, None));
    }
    v.unplaced = s
        .unplaced
        .iter()
        .filter(|u| u.project == project)
        .map(|u| (u.name.clone(), u.reason.clone()))
        .collect();
    v.rollouts = s
        .rollouts
        .iter()
        .filter(|r| r.project == project)
        .map(|r| {
            let why = if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            };
            format!(
                "{} (generation {}): {}, batch {}/{}, {}/{} healthy{why}",
                r.group, r.generation, r.state, r.batch, r.batches, r.healthy, r.total
            )
        })
        .collect();
    v
}

/// One VM row: an unplaced VM says "unplaced" (no worker runs it), one
/// whose worker does not report it "unknown"; never "stopped", which is a
/// state a worker reports.
fn vm_view(p: &VmPlacementView, link: bool) -> VmView {
    let state = p.state_word();
    VmView {
        project: p.project.clone(),
        name: p.name.clone(),
        link,
        worker: p.worker_id.clone(),
        desired: short_hash(&p.desired_hash),
        observed: short_hash(&p.observed_hash),
        state,
        drift: p.drift.to_string(),
        cpu_percent: p.metrics.cpu_percent,
        rss_mib: p.metrics.rss_bytes as f64 / (1024.0 * 1024.0),
    }
}

/// A time since, as people read it: "850 ms ago", "12 s ago", "4 min
/// ago", "3 h ago", "2 d ago".
pub fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms ago"),
        1_000..120_000 => format!("{} s ago", ms / 1_000),
        120_000..7_200_000 => format!("{} min ago", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h ago", ms / 3_600_000),
        _ => format!("{} d ago", ms / 86_400_000),
    }
}

/// What of the cluster a viewer may see: the projects whose VMs are shown
/// (public ones and the viewer's, every one for an admin) and those whose
/// VM pages it may open (its own). Worker addresses and workers that run
/// none of the visible VMs are for admins only.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub admin: bool,
    pub visible: BTreeSet<String>,
    pub member: BTreeSet<String>,
}

impl Scope {
    fn sees(&self, project: &str) -> bool {
        self.admin || self.visible.contains(project)
    }
}

/// A capacity bar. The one definition on every page: *used* is what the
/// scheduler allocated to VMs on the worker, *free* is capacity minus
/// that (`WorkerHealthView::free`, as `pcr workers` shows it). A dead
/// worker's capacity is unavailable, neither used nor free.
#[derive(Debug, Clone)]
pub struct Usage {
    pub used: u64,
    pub capacity: u64,
    pub free: u64,
    pub unavailable: bool,
    pub unit: &'static str,
}

impl Usage {
    /// The bar's words, the same on every page.
    pub fn text(&self) -> String {
        if self.unavailable {
            format!(
                "{} {} unavailable (worker unhealthy)",
                self.capacity, self.unit
            )
        } else {
            format!(
                "{} used, {} free of {} {}",
                self.used, self.free, self.capacity, self.unit
            )
        }
    }

    fn new(used: u64, capacity: u64, free: u64, healthy: bool, unit: &'static str) -> Usage {
        Usage {
            used,
            capacity,
            free,
            unavailable: !healthy,
            unit,
        }
    }
}

/// One worker on the cluster page, with the visible VMs it runs grouped by
/// project.
#[derive(Debug, Clone)]
pub struct WorkerCard {
    pub id: String,
    pub address: String,
    pub healthy: bool,
    pub last_seen: String,
    pub cpu: Usage,
    pub memory: Usage,
    pub load: f64,
    /// VMs the worker reports running (every project's).
    pub vm_count: u32,
    pub groups: Vec<(String, Vec<VmView>)>,
}

#[derive(Debug, Clone)]
pub struct UnplacedRow {
    pub project: String,
    pub name: String,
    pub reason: String,
    pub link: bool,
}

#[derive(Debug, Clone)]
pub struct GenerationRow {
    pub project: String,
    pub number: u64,
    pub commit: String,
    pub vm_count: u32,
    /// The CI job that published it (0: published by hand).
    pub job_id: u64,
    pub message: String,
}

impl GenerationRow {
    fn of(g: &commands::model::GenerationView) -> GenerationRow {
        GenerationRow {
            project: g.project.clone(),
            number: g.number,
            commit: g.commit.clone(),
            vm_count: g.vm_count,
            job_id: g.job_id,
            message: g.message.clone(),
        }
    }
}

/// One event as the feeds show it.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub when: String,
    pub kind: String,
    pub project: String,
    pub vm: String,
    pub worker: String,
    pub generation: u64,
    pub message: String,
    /// Whether the viewer may open the VM's page.
    pub link: bool,
}

/// The rows of `events` at `now_ms`; `member` says which projects' VM
/// pages the viewer may open.
pub fn event_rows(
    events: &[EventView],
    now_ms: u64,
    member: impl Fn(&str) -> bool,
) -> Vec<EventRow> {
    events
        .iter()
        .map(|e| EventRow {
            when: ago(now_ms.saturating_sub(e.at_ms)),
            kind: e.kind.clone(),
            project: e.project.clone(),
            vm: e.vm.clone(),
            worker: e.worker_id.clone(),
            generation: e.generation,
            message: e.message.clone(),
            link: !e.vm.is_empty() && !e.project.is_empty() && member(&e.project),
        })
        .collect()
}

/// The cluster page: workers, their VMs, unplaced VMs, generations, with
/// convergence over the VMs shown.
#[derive(Debug, Clone, Default)]
pub struct ClusterPage {
    pub convergence: f64,
    pub desired: usize,
    pub converged: usize,
    pub workers: Vec<WorkerCard>,
    pub healthy_workers: usize,
    pub unplaced: Vec<UnplacedRow>,
    pub generations: Vec<GenerationRow>,
    pub addresses: bool,
}

/// The cluster as `scope` may see it; `only` narrows it to one project
/// (the project's cluster page). `recent` names workers that ran a shown
/// VM lately ([`SharedStatus::recent_hosts`]): they are shown too, so a
/// worker that died and lost its VMs to others is still named, unhealthy,
/// to the projects it ran.
pub fn cluster_page(
    snap: &Snapshot,
    scope: &Scope,
    only: Option<&str>,
    recent: &BTreeSet<String>,
) -> ClusterPage {
    let s = &snap.status;
    let shown = |project: &str| scope.sees(project) && only.is_none_or(|o| o == project);
    let vms: Vec<&VmPlacementView> = s.vms.iter().filter(|v| shown(&v.project)).collect();
    let mut by_worker: BTreeMap<&str, BTreeMap<&str, Vec<VmView>>> = BTreeMap::new();
    for v in vms.iter().filter(|v| !v.worker_id.is_empty()) {
        by_worker
            .entry(&v.worker_id)
            .or_default()
            .entry(&v.project)
            .or_default()
            .push(vm_view(v, scope.admin || scope.member.contains(&v.project)));
    }
    // Admins see every worker; others only the hosts of what they may see.
    let mut workers = Vec::new();
    for w in &s.workers {
        let groups = by_worker.remove(w.worker_id.as_str());
        if groups.is_some()
            || (scope.admin && only.is_none())
            || recent.contains(w.worker_id.as_str())
        {
            workers.push(worker_card(w, scope.admin, groups));
        }
    }
    let desired = vms.iter().filter(|v| v.drift != Drift::Orphaned).count();
    let converged = vms.iter().filter(|v| v.drift == Drift::Converged).count();
    ClusterPage {
        convergence: commands::model::convergence_percent(vms.iter().copied()),
        desired,
        converged,
        healthy_workers: workers.iter().filter(|w| w.healthy).count(),
        workers,
        unplaced: s
            .unplaced
            .iter()
            .filter(|u| shown(&u.project))
            .map(|u| UnplacedRow {
                project: u.project.clone(),
                name: u.name.clone(),
                reason: u.reason.clone(),
                link: scope.admin || scope.member.contains(&u.project),
            })
            .collect(),
        generations: s
            .generations
            .iter()
            .filter(|g| shown(&g.project))
            .map(GenerationRow::of)
            .collect(),
        addresses: scope.admin,
    }
}

impl WorkerCard {
    /// The capacity bars, CPU then memory.
    pub fn bars(&self) -> [&Usage; 2] {
        [&self.cpu, &self.memory]
    }
}

fn worker_card(
    w: &WorkerHealthView,
    admin: bool,
    groups: Option<BTreeMap<&str, Vec<VmView>>>,
) -> WorkerCard {
    let free = w.free();
    WorkerCard {
        id: w.worker_id.clone(),
        address: if admin {
            w.address.clone()
        } else {
            String::new()
        },
        healthy: w.healthy,
        last_seen: ago(w.last_seen_ms_ago),
        cpu: Usage::new(
            w.allocated.cpu.into(),
            w.capacity.cpu.into(),
            free.cpu.into(),
            w.healthy,
            "vCPU",
        ),
        memory: Usage::new(
            w.allocated.memory_mb,
            w.capacity.memory_mb,
            free.memory_mb,
            w.healthy,
            "MiB",
        ),
        load: w.metrics.load_average,
        vm_count: w.vm_count,
        groups: groups
            .unwrap_or_default()
            .into_iter()
            .map(|(p, vms)| (p.to_owned(), vms))
            .collect(),
    }
}

/// Where a VM is, for its page: its row in the snapshot (looked up by
/// project and name) and, when placed, its worker; or why it is unplaced.
#[derive(Debug, Clone)]
pub struct VmPlace {
    pub vm: VmView,
    /// The id the worker knows the VM by (empty when not placed).
    pub vm_id: String,
    pub worker: Option<WorkerCard>,
    pub unplaced_reason: Option<String>,
    pub generation: Option<GenerationRow>,
    pub metrics: commands::types::VmMetrics,
}

/// `project`/`name` in the snapshot; `None` when the control plane knows no
/// such VM.
pub fn vm_place(snap: &Snapshot, project: &str, name: &str, admin: bool) -> Option<VmPlace> {
    let s = &snap.status;
    let p = s
        .vms
        .iter()
        .find(|v| v.project == project && v.name == name)?;
    Some(VmPlace {
        vm: vm_view(p, true),
        vm_id: p.vm_id.clone(),
        worker: s
            .workers
            .iter()
            .find(|w| !p.worker_id.is_empty() && w.worker_id == p.worker_id)
            .map(|w| worker_card(w, admin, None)),
        unplaced_reason: s
            .unplaced
            .iter()
            .find(|u| u.project == project && u.name == name)
            .map(|u| u.reason.clone()),
        generation: s.active(project).map(GenerationRow::of),
        metrics: p.metrics,
    })
}

/// A project's VM counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Desired VMs (orphans are not desired).
    pub desired: u32,
    pub converged: u32,
    pub unplaced: u32,
}

/// One point of the timeline: the last sample taken in its bucket.
#[derive(Debug, Clone)]
struct Point {
    at_ms: u64,
    projects: BTreeMap<String, Counts>,
}

/// Convergence over time: a ring of at most [`Timeline::POINTS`] points
/// covering at most `horizon`, one point per time bucket (the last sample
/// taken in it). The bucket starts at the poll period; when the ring is
/// full and covers less than the horizon the bucket doubles and points
/// sharing a bucket merge, so the ring spans from the first sample (or the
/// horizon) to now at a resolution that coarsens as it grows. Memory is
/// bounded by the points times the projects.
#[derive(Debug, Clone)]
pub struct Timeline {
    points: VecDeque<Point>,
    bucket_ms: u64,
    horizon_ms: u64,
}

/// What the chart draws for one viewer: per point, the time, the
/// convergence % and the counts summed over the projects it may see.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub at_ms: Vec<u64>,
    pub percent: Vec<f64>,
    pub counts: Vec<Counts>,
}

impl Timeline {
    pub const POINTS: usize = 360;

    /// A timeline sampled every `period`, keeping `horizon`.
    pub fn new(period: Duration, horizon: Duration) -> Timeline {
        Timeline {
            points: VecDeque::new(),
            bucket_ms: (period.as_millis() as u64).max(1),
            horizon_ms: horizon.as_millis() as u64,
        }
    }

    /// Records `status` as seen at `now_ms`.
    pub fn sample(&mut self, status: &ClusterStatusView, now_ms: u64) {
        let mut projects: BTreeMap<String, Counts> = BTreeMap::new();
        for v in status.vms.iter().filter(|v| v.drift != Drift::Orphaned) {
            let c = projects.entry(v.project.clone()).or_default();
            c.desired += 1;
            c.converged += u32::from(v.drift == Drift::Converged);
        }
        for u in &status.unplaced {
            projects.entry(u.project.clone()).or_default().unplaced += 1;
        }
        let point = Point {
            at_ms: now_ms,
            projects,
        };
        // Within the newest point's bucket: the newer sample stands for it.
        match self.points.back_mut() {
            Some(last) if last.at_ms / self.bucket_ms == now_ms / self.bucket_ms => *last = point,
            _ => self.points.push_back(point),
        }
        let oldest = now_ms.saturating_sub(self.horizon_ms);
        while self.points.front().is_some_and(|p| p.at_ms < oldest) {
            self.points.pop_front();
        }
        while self.points.len() > Self::POINTS {
            let span = now_ms - self.points.front().map_or(now_ms, |p| p.at_ms);
            if span < self.horizon_ms {
                self.coarsen();
            } else {
                self.points.pop_front();
            }
        }
    }

    /// Doubles the bucket and keeps the latest point of each.
    fn coarsen(&mut self) {
        self.bucket_ms = self.bucket_ms.saturating_mul(2);
        let b = self.bucket_ms;
        let mut kept: VecDeque<Point> = VecDeque::with_capacity(self.points.len() / 2 + 1);
        for p in self.points.drain(..) {
            match kept.back_mut() {
                Some(last) if last.at_ms / b == p.at_ms / b => *last = p,
                _ => kept.push_back(p),
            }
        }
        self.points = kept;
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The series of the projects `sees` accepts, summed.
    pub fn series(&self, sees: impl Fn(&str) -> bool) -> Series {
        let mut s = Series::default();
        for p in &self.points {
            let mut c = Counts::default();
            for (_, pc) in p.projects.iter().filter(|(name, _)| sees(name)) {
                c.desired += pc.desired;
                c.converged += pc.converged;
                c.unplaced += pc.unplaced;
            }
            s.at_ms.push(p.at_ms);
            s.percent.push(if c.desired == 0 {
                100.0
            } else {
                f64::from(c.converged) * 100.0 / f64::from(c.desired)
            });
            s.counts.push(c);
        }
        s
    }
}

/// The timeline drawn as an SVG line chart: polyline coordinates (numbers
/// only, so the template escapes nothing that matters), in a 600×120 box.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    /// Convergence %, 0 at the bottom, 100 at the top.
    pub percent: String,
    /// Desired VMs, scaled to `max_vms` at the top.
    pub desired: String,
    pub max_vms: u32,
    /// "last 2 h 10 min", or empty when nothing was sampled yet.
    pub span: String,
    pub points: usize,
    pub last_percent: f64,
}

pub const CHART_W: f64 = 600.0;
pub const CHART_H: f64 = 120.0;
/// Room above 100 % and below 0, so a line there is not hidden by the box.
const CHART_PAD: f64 = 4.0;

pub fn chart(s: &Series) -> Chart {
    let (Some(&first), Some(&last)) = (s.at_ms.first(), s.at_ms.last()) else {
        return Chart::default();
    };
    let dur = (last - first).max(1) as f64;
    let x = |t: u64| {
        if s.at_ms.len() == 1 {
            CHART_W
        } else {
            (t - first) as f64 * CHART_W / dur
        }
    };
    let max_vms = s.counts.iter().map(|c| c.desired).max().unwrap_or(0).max(1);
    let line = |ys: &mut dyn Iterator<Item = f64>| {
        s.at_ms
            .iter()
            .zip(ys)
            .map(|(t, y)| {
                let y = CHART_H - CHART_PAD - y * (CHART_H - 2.0 * CHART_PAD);
                format!("{:.1},{y:.1}", x(*t))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let span_s = (last - first) / 1000;
    Chart {
        percent: line(&mut s.percent.iter().map(|p| p / 100.0)),
        desired: line(
            &mut s
                .counts
                .iter()
                .map(|c| f64::from(c.desired) / f64::from(max_vms)),
        ),
        max_vms,
        span: match span_s {
            0..120 => format!("last {span_s} s"),
            120..7200 => format!("last {} min", span_s / 60),
            _ => format!("last {} h {} min", span_s / 3600, (span_s % 3600) / 60),
        },
        points: s.at_ms.len(),
        last_percent: s.percent.last().copied().unwrap_or(100.0),
    }
}

/// What a VM page shows from the VM's worker.
#[derive(Debug, Clone)]
pub struct VmDetail {
    pub details: VmDetails,
    pub console: LogTail,
}

async fn vm_detail_local(
    addr: String,
    token: commands::auth::Secret,
    worker_id: String,
    vm_id: VmId,
    lines: u32,
    with_info: bool,
) -> Result<(Option<VmDetails>, LogTail), ClusterError> {
    let client = MasterClient::connect_with_token(&addr, CONNECT_TIMEOUT, token.expose())
        .await
        .map_err(ClusterError::Connect)?;
    let r = async {
        let w = tokio::time::timeout(CALL_TIMEOUT, client.worker(&worker_id))
            .await
            .map_err(|_| ClusterError::Timeout)?
            .map_err(|e| ClusterError::Worker(worker_id.clone(), e))?;
        let info = if with_info {
            Some(
                tokio::time::timeout(CALL_TIMEOUT, w.vm_info(&vm_id))
                    .await
                    .map_err(|_| ClusterError::Timeout)?
                    .map_err(ClusterError::VmInfo)?,
            )
        } else {
            None
        };
        let tail = tokio::time::timeout(CALL_TIMEOUT, w.logs(&vm_id, lines))
            .await
            .map_err(|_| ClusterError::Timeout)?
            .map_err(ClusterError::Logs)?;
        Ok((info, tail))
    }
    .await;
    client.close().await;
    r
}

/// `listEvents` pages read per fetch: a first fetch reads the log's tail up
/// to this many pages, later ones only what is new.
const EVENT_PAGES: usize = 10;

async fn fetch_local(
    addr: String,
    token: commands::auth::Secret,
    after_id: u64,
) -> Result<Snapshot, ClusterError> {
    let client = MasterClient::connect_with_token(&addr, CONNECT_TIMEOUT, token.expose())
        .await
        .map_err(ClusterError::Connect)?;
    let status = tokio::time::timeout(CALL_TIMEOUT, client.status())
        .await
        .map_err(|_| ClusterError::Timeout)?
        .map_err(ClusterError::Call)?;
    let projects = tokio::time::timeout(CALL_TIMEOUT, client.projects())
        .await
        .map_err(|_| ClusterError::Timeout)?
        .map_err(ClusterError::Projects)?;
    // The event feed is an extra: the pages work without it.
    let mut new_events = Ok(Vec::new());
    let mut after = after_id;
    for _ in 0..EVENT_PAGES {
        match tokio::time::timeout(CALL_TIMEOUT, client.list_events(None, after, 0)).await {
            Err(_) => {
                new_events = Err(ClusterError::Timeout.to_string());
                break;
            }
            Ok(Err(e)) => {
                new_events = Err(commands::report::error_chain(&ClusterError::Events(e)));
                break;
            }
            Ok(Ok(page)) => {
                let Some(last) = page.last().map(|e| e.id) else {
                    break;
                };
                after = last;
                if let Ok(all) = &mut new_events {
                    all.extend(page);
                }
            }
        }
    }
    client.close().await;
    Ok(Snapshot {
        status,
        projects,
        new_events,
    })
}

/// Fetches the cluster status and the projects from the control plane at
/// `addr`, over one connection.
pub async fn fetch(
    addr: Option<String>,
    token: commands::auth::Secret,
    after_event: u64,
) -> Result<Snapshot, ClusterError> {
    let addr = addr.ok_or(ClusterError::NotConfigured)?;
    tokio::task::spawn_blocking(move || {
        commands::rpc::block_on_local(fetch_local(addr, token, after_event))
    })
    .await
    .map_err(|_| ClusterError::Join)?
}

/// How long a worker stays on a project's cluster page after it last ran
/// one of the project's VMs.
pub const HOST_MEMORY: Duration = Duration::from_secs(3600);

/// Notes which workers run which projects' VMs at `now_ms`, and forgets
/// what is older than [`HOST_MEMORY`] (so the map is bounded by projects
/// times workers seen within it).
pub fn remember_hosts(
    hosts: &mut BTreeMap<(String, String), u64>,
    status: &ClusterStatusView,
    now_ms: u64,
) {
    for v in status.vms.iter().filter(|v| !v.worker_id.is_empty()) {
        hosts.insert((v.project.clone(), v.worker_id.clone()), now_ms);
    }
    let oldest = now_ms.saturating_sub(HOST_MEMORY.as_millis() as u64);
    hosts.retain(|_, at| *at >= oldest);
}

/// A lock that outlives a panicking holder (the data are plain values).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The control plane's newest events as repohub last read them: at most
/// [`EventLog::KEEP`], oldest first.
#[derive(Debug, Default)]
pub struct EventLog {
    events: VecDeque<EventView>,
    last_id: u64,
    error: Option<String>,
}

impl EventLog {
    pub const KEEP: usize = 2000;

    fn add(&mut self, new: &Result<Vec<EventView>, String>) {
        match new {
            Ok(new) => {
                self.error = None;
                for e in new {
                    if e.id > self.last_id {
                        self.last_id = e.id;
                        self.events.push_back(e.clone());
                    }
                }
                while self.events.len() > Self::KEEP {
                    self.events.pop_front();
                }
            }
            Err(e) => self.error = Some(e.clone()),
        }
    }
}

/// A status (or the error fetching it, as text) and when it was fetched.
type Cached = (Instant, Result<Arc<Snapshot>, String>);

/// The one cached control-plane status every page shares (see the module
/// docs). A failed fetch is cached for the TTL too, so a dead control plane
/// costs one connection attempt per TTL, not one per page.
#[derive(Clone)]
pub struct SharedStatus {
    addr: Option<String>,
    token: commands::auth::Secret,
    /// For the VM pages' worker calls (`getWorker` is for admin tokens).
    console_token: commands::auth::Secret,
    ttl: Duration,
    /// Held across the fetch: that is what makes it single-flight.
    cache: Arc<tokio::sync::Mutex<Option<Cached>>>,
    /// Every fresh snapshot, sampled.
    timeline: Arc<Mutex<Timeline>>,
    /// The control plane's newest events.
    events: Arc<Mutex<EventLog>>,
    /// (project, worker) → when the worker last ran a VM of the project.
    hosts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
    /// Console reads in flight (each holds a connection and a thread).
    console_reads: Arc<tokio::sync::Semaphore>,
}

/// Console reads at once; more wait up to [`CONSOLE_WAIT`], then are told
/// to try again.
const CONSOLE_READS: usize = 8;
const CONSOLE_WAIT: Duration = Duration::from_secs(2);
/// How far back the convergence timeline reaches.
pub const TIMELINE_HORIZON: Duration = Duration::from_secs(6 * 3600);

/// By hand: the token is a credential.
impl std::fmt::Debug for SharedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStatus")
            .field("addr", &self.addr)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SharedStatus {
    /// `console_token` is used for the VM pages' worker calls; empty means
    /// the status token.
    pub fn new(
        addr: Option<String>,
        token: commands::auth::Secret,
        console_token: commands::auth::Secret,
        ttl: Duration,
    ) -> Self {
        let console_token = if console_token.expose().is_empty() {
            token.clone()
        } else {
            console_token
        };
        Self {
            addr,
            token,
            console_token,
            ttl,
            cache: Arc::new(tokio::sync::Mutex::new(None)),
            timeline: Arc::new(Mutex::new(Timeline::new(
                ttl.max(Duration::from_secs(1)),
                TIMELINE_HORIZON,
            ))),
            console_reads: Arc::new(tokio::sync::Semaphore::new(CONSOLE_READS)),
            events: Arc::new(Mutex::new(EventLog::default())),
            hosts: Arc::default(),
        }
    }

    /// The convergence series of the projects `sees` accepts.
    pub fn series(&self, sees: impl Fn(&str) -> bool) -> Series {
        lock(&self.timeline).series(sees)
    }

    /// The workers that ran a VM of a project `sees` admits within the
    /// last [`HOST_MEMORY`].
    pub fn recent_hosts(&self, sees: impl Fn(&str) -> bool) -> BTreeSet<String> {
        lock(&self.hosts)
            .keys()
            .filter(|(p, _)| sees(p))
            .map(|(_, w)| w.clone())
            .collect()
    }

    /// The newest `n` events `sees` admits, newest first, and why the
    /// last read failed (if it did).
    pub fn events(
        &self,
        n: usize,
        sees: impl Fn(&EventView) -> bool,
    ) -> (Vec<EventView>, Option<String>) {
        let log = lock(&self.events);
        (
            log.events
                .iter()
                .rev()
                .filter(|e| sees(e))
                .take(n)
                .cloned()
                .collect(),
            log.error.clone(),
        )
    }

    /// Fetches the status every TTL until `shutdown`, so the timeline is
    /// sampled while nobody looks at a page.
    pub async fn sample_forever(self, shutdown: tokio_util::sync::CancellationToken) {
        if self.addr.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(self.ttl.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let _ = self.get().await;
                }
            }
        }
    }

    /// The spec and status (when `with_info`) and the last `lines` console
    /// lines of VM `vm_id` on `worker_id`, through the control plane. The
    /// ids come from the snapshot, never from a request.
    pub async fn vm_detail(
        &self,
        worker_id: &str,
        vm_id: &str,
        lines: u32,
        with_info: bool,
    ) -> Result<(Option<VmDetails>, LogTail), String> {
        let addr = self
            .addr
            .clone()
            .ok_or_else(|| ClusterError::NotConfigured.to_string())?;
        let vm_id: VmId = vm_id
            .parse()
            .map_err(|_| ClusterError::VmId(vm_id.to_owned()).to_string())?;
        let _permit = tokio::time::timeout(CONSOLE_WAIT, self.console_reads.acquire())
            .await
            .map_err(|_| ClusterError::Busy.to_string())?
            .map_err(|_| ClusterError::Busy.to_string())?;
        let (token, worker_id) = (self.console_token.clone(), worker_id.to_owned());
        tokio::task::spawn_blocking(move || {
            commands::rpc::block_on_local(vm_detail_local(
                addr, token, worker_id, vm_id, lines, with_info,
            ))
        })
        .await
        .map_err(|_| ClusterError::Join.to_string())?
        .map_err(|e| commands::report::error_chain(&e))
    }

    /// The cached status if it is younger than the TTL, else a fresh one.
    pub async fn get(&self) -> Result<Arc<Snapshot>, String> {
        if self.addr.is_none() {
            return Err(ClusterError::NotConfigured.to_string());
        }
        let mut cache = self.cache.lock().await;
        if let Some((at, r)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            return r.clone();
        }
        let after = lock(&self.events).last_id;
        let r = fetch(self.addr.clone(), self.token.clone(), after)
            .await
            .map(Arc::new)
            .map_err(|e| commands::report::error_chain(&e));
        if let Ok(snap) = &r {
            lock(&self.timeline).sample(&snap.status, commands::telemetry::now_ms());
            lock(&self.events).add(&snap.new_events);
            remember_hosts(
                &mut lock(&self.hosts),
                &snap.status,
                commands::telemetry::now_ms(),
            );
        }
        *cache = Some((Instant::now(), r.clone()));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::model::UnplacedView;

    fn status(converged: &[(&str, bool)], unplaced: &[&str]) -> ClusterStatusView {
        ClusterStatusView {
            generations: Vec::new(),
            convergence_percent: 0.0,
            vms: converged
                .iter()
                .enumerate()
                .map(|(i, (project, ok))| VmPlacementView {
                    project: (*project).into(),
                    name: format!("vm-{i}"),
                    worker_id: "w".into(),
                    desired_hash: "h".into(),
                    observed_hash: "h".into(),
                    state: None,
                    drift: if *ok {
                        Drift::Converged
                    } else {
                        Drift::Pending
                    },
                    metrics: Default::default(),
                    vm_id: String::new(),
                    health: Default::default(),
                    health_detail: String::new(),
                })
                .collect(),
            workers: Vec::new(),
            rollouts: Vec::new(),
            unplaced: unplaced
                .iter()
                .map(|p| UnplacedView {
                    project: (*p).into(),
                    name: "u".into(),
                    reason: "r".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_timeline_stays_bounded_and_spans_from_the_first_sample() {
        let mut t = Timeline::new(Duration::from_secs(3), Duration::from_secs(6 * 3600));
        let s = status(&[("a", true)], &[]);
        // 10 hours of samples every 3 s.
        let start = 1_000_000_000u64;
        for i in 0..12_000u64 {
            t.sample(&s, start + i * 3_000);
            assert!(
                t.len() <= Timeline::POINTS,
                "{} points at sample {i}",
                t.len()
            );
        }
        let series = t.series(|_| true);
        let (first, last) = (series.at_ms[0], *series.at_ms.last().unwrap());
        assert_eq!(last, start + 11_999 * 3_000, "the newest sample is kept");
        let span = last - first;
        assert!(span <= 6 * 3600 * 1000, "older than the horizon: {span}");
        assert!(
            span >= 5 * 3600 * 1000,
            "the ring covers most of the horizon: {span}"
        );
        assert!(t.len() > Timeline::POINTS / 4, "{} points", t.len());
    }

    #[test]
    fn a_sample_within_the_bucket_replaces_the_newest_point() {
        let mut t = Timeline::new(Duration::from_secs(3), Duration::from_secs(3600));
        t.sample(&status(&[("a", false)], &[]), 3_000);
        t.sample(&status(&[("a", true)], &[]), 4_000);
        assert_eq!(t.len(), 1);
        assert_eq!(t.series(|_| true).percent, vec![100.0]);
        t.sample(&status(&[("a", false)], &[]), 6_000);
        assert_eq!(t.series(|_| true).percent, vec![100.0, 0.0]);
    }

    #[test]
    fn the_series_sums_only_the_projects_the_viewer_sees() {
        let mut t = Timeline::new(Duration::from_secs(3), Duration::from_secs(3600));
        t.sample(
            &status(
                &[("a", true), ("a", false), ("b", false), ("b", false)],
                &["b"],
            ),
            3_000,
        );
        let a = t.series(|p| p == "a");
        assert_eq!(a.percent, vec![50.0]);
        assert_eq!(
            a.counts[0],
            Counts {
                desired: 2,
                converged: 1,
                unplaced: 0
            }
        );
        let all = t.series(|_| true);
        assert_eq!(all.percent, vec![25.0]);
        assert_eq!(all.counts[0].unplaced, 1);
        // Nothing visible: nothing desired, so 100 % (the one definition).
        assert_eq!(t.series(|_| false).percent, vec![100.0]);
    }

    #[test]
    fn the_chart_maps_percent_to_the_box() {
        let s = Series {
            at_ms: vec![0, 60_000],
            percent: vec![0.0, 100.0],
            counts: vec![
                Counts {
                    desired: 2,
                    ..Counts::default()
                },
                Counts {
                    desired: 4,
                    ..Counts::default()
                },
            ],
        };
        let c = chart(&s);
        assert_eq!(c.percent, "0.0,116.0 600.0,4.0");
        assert_eq!(c.desired, "0.0,60.0 600.0,4.0");
        assert_eq!(c.max_vms, 4);
        assert_eq!(c.span, "last 60 s");
        assert_eq!(chart(&Series::default()).points, 0);
    }

    #[test]
    fn a_dead_worker_stays_named_to_the_projects_it_ran() {
        let worker = |id: &str, healthy: bool| WorkerHealthView {
            worker_id: id.into(),
            address: "10.1.1.1:1".into(),
            healthy,
            last_seen_ms_ago: if healthy { 100 } else { 20_000 },
            capacity: Default::default(),
            allocated: Default::default(),
            observed_generation: 0,
            vm_count: 0,
            labels: Default::default(),
            metrics: Default::default(),
        };
        let mut before = status(&[("a", true)], &[]);
        before.vms[0].worker_id = "w1".into();
        before.workers = vec![worker("w1", true), worker("w2", true), worker("w3", true)];
        let mut hosts = BTreeMap::new();
        remember_hosts(&mut hosts, &before, 1_000);
        // w1 dies; a's VM moves to w2; w3 ran another project only.
        let mut after = before.clone();
        after.vms[0].worker_id = "w2".into();
        after.workers[0] = worker("w1", false);
        remember_hosts(&mut hosts, &after, 20_000);
        let recent: BTreeSet<String> = hosts
            .keys()
            .filter(|(p, _)| p == "a")
            .map(|(_, w)| w.clone())
            .collect();
        let snap = Snapshot {
            status: after.clone(),
            projects: Vec::new(),
            new_events: Ok(Vec::new()),
        };
        let scope = Scope {
            visible: ["a".to_owned()].into(),
            ..Scope::default()
        };
        let page = cluster_page(&snap, &scope, None, &recent);
        let ids: Vec<(&str, bool)> = page
            .workers
            .iter()
            .map(|w| (w.id.as_str(), w.healthy))
            .collect();
        assert_eq!(ids, vec![("w1", false), ("w2", true)]);
        assert!(page.workers[0].cpu.unavailable);
        assert!(page.workers.iter().all(|w| w.address.is_empty()));
        // An hour later w1 is forgotten.
        remember_hosts(&mut hosts, &after, 20_000 + HOST_MEMORY.as_millis() as u64);
        assert!(!hosts.keys().any(|(_, w)| w == "w1"));
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(ago(850), "850 ms ago");
        assert_eq!(ago(12_400), "12 s ago");
        assert_eq!(ago(117_577), "117 s ago");
        assert_eq!(ago(240_000), "4 min ago");
        assert_eq!(ago(3 * 3_600_000), "3 h ago");
        assert_eq!(ago(3 * 86_400_000), "3 d ago");
    }
}
