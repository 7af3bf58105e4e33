//! The control plane's whole state, in memory by design, and every rule
//! that changes it: publishing generations, registering workers, heartbeats
//! and health, scheduling, quotas, and the views clients read.
//!
//! Tenancy: every project has its own generations (numbers and intent
//! hashes are per project); a publish replaces its project's desired VMs
//! and no other's, and VMs are keyed by (project, name) throughout.
//!
//! Pure and synchronous: methods take `now` instead of reading a clock, so
//! the rules are unit-tested without timers. The RPC layer owns one `State`
//! behind an `Rc<RefCell<_>>` on a single-threaded `LocalSet`; no method
//! awaits, so a borrow never spans a suspension point.
//!
//! Invariant: a refused call (any `Err`) changes nothing.
//!
//! Events: every accepted change leaves [`EventDraft`]s (published,
//! converged, placed, replaced, removed, failed, unplaced, worker joined,
//! unhealthy, healthy) that the caller takes with [`State::take_events`],
//! numbers, stamps and persists; the state itself keeps no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use commands::convert::{ErrorCode, RpcFailure};
use commands::types::{
    Labels, ProjectName, Resources, UpdatePolicy, VmKey, VmMetrics, VmName, VmSpec, VmState,
    WorkerId,
};

use crate::events::EventDraft;
use crate::quota::{QuotaConfig, UNLIMITED};
use crate::rollout::{self, Action};
use crate::scheduler::{self, Placement, Quotas, WorkerSlot};
use commands::model::{
    AssignmentView, ClusterStatusView, Drift, GenerationDetailView, GenerationView, Limits,
    MAX_VMS_PER_WORKER, ObservedVm, ProjectStatusView, PublishMeta, PublishOutcomeView,
    Registration, RolloutStatusView, UnplacedView, VmPlacementView, WorkerHealthView,
    WorkerMetricsView, event_kind,
};

/// How many past generations `listGenerations` remembers per project.
pub const HISTORY: usize = 100;
/// The most workers the control plane accepts (bounds memory under abuse).
pub const MAX_WORKERS: usize = 100_000;
const MAX_TEXT: usize = 256;

/// Knobs of the state machine (from the command line).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A worker silent for longer is unhealthy and its VMs are moved.
    pub heartbeat_timeout: Duration,
    /// After a (re)start, assignments are withheld this long so that workers
    /// re-register and report what they run before anything is placed:
    /// a restarted control plane must not move a single running VM.
    pub startup_grace: Duration,
}

#[derive(Debug)]
struct WorkerEntry {
    address: String,
    capacity: Resources,
    labels: Labels,
    /// The connection that registered it: only that connection may report
    /// for this id, so one worker cannot speak for another.
    conn: u64,
    /// Whether that connection is still open. While it is (and the worker
    /// is healthy) no other connection may register this id, whatever
    /// address it reports: the id is bound to the connection (and, with a
    /// token file, to the `worker:<id>` token), never to the address a
    /// worker says it has.
    conn_open: bool,
    last_seen: Instant,
    /// Health as of the last `tick`/heartbeat; what the scheduler uses, so
    /// a placement never depends on when exactly a call arrived.
    healthy: bool,
    observed_generation: u64,
    running: Vec<ObservedVm>,
    metrics: WorkerMetricsView,
    /// Bumped (from a process-wide counter) whenever this worker's assigned
    /// specs change; echoed back by the worker as lastSeenRevision.
    revision: u64,
    assigned: Vec<VmSpec>,
}

/// One project's generations.
#[derive(Debug, Default)]
struct Project {
    /// The active generation (its specs live in `State::desired`).
    active: Option<GenerationView>,
    /// The remembered generations with their specs, oldest first.
    history: VecDeque<GenerationDetailView>,
}

/// Where each VM in scope stood before a change: its worker (if placed),
/// desired content hash and why it is unplaced (if it is).
type PlacementSnapshot = BTreeMap<VmKey, (Option<WorkerId>, String, Option<String>)>;

/// What a rollout tells a replica's worker instead of its desired spec.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Override {
    /// Keep whatever runs under the name (`Assignment.hold`).
    Hold,
    /// Run this spec: the previous generation's (a revert). Boxed: most
    /// overrides are holds.
    Revert(Box<VmSpec>),
}

/// One VM group of one project: the key of a rollout.
type GroupKey = (ProjectName, String);

/// The spec a worker is told to run for `key`: its desired one unless a
/// rollout reverted it.
fn effective(
    desired: &BTreeMap<VmKey, VmSpec>,
    overrides: &BTreeMap<VmKey, Override>,
    key: &VmKey,
) -> VmSpec {
    match overrides.get(key) {
        Some(Override::Revert(spec)) => (**spec).clone(),
        _ => desired[key].clone(),
    }
}

/// What a state change means for the RPC layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Some worker's assignment changed: wake the long-polls.
    pub assignments_changed: bool,
}

impl Effects {
    /// Both effects.
    #[must_use]
    pub fn or(self, other: Effects) -> Effects {
        Effects {
            assignments_changed: self.assignments_changed || other.assignments_changed,
        }
    }
}

#[derive(Debug)]
pub struct State {
    settings: Settings,
    started: Instant,
    grace_over: bool,
    projects: BTreeMap<ProjectName, Project>,
    /// Every project's desired VMs: what the scheduler places.
    desired: BTreeMap<VmKey, VmSpec>,
    quotas: QuotaConfig,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    placement: Placement,
    revision_counter: u64,
    /// Projects whose active generation has not converged yet.
    converging: BTreeSet<ProjectName>,
    /// What happened since the caller last took the events.
    events: Vec<EventDraft>,
    /// Unix ms at `started`: rollouts compare the workers' timestamps
    /// (unix ms) with `now`.
    started_ms: u64,
    /// Per VM of a project with update policies: the spec it ran before
    /// the active generation (what a revert goes back to). In memory only.
    previous: BTreeMap<VmKey, VmSpec>,
    /// Projects whose active generation has a group with a policy: the
    /// only ones the rollout driver looks at.
    rolling_projects: BTreeSet<ProjectName>,
    rollouts: BTreeMap<GroupKey, rollout::Record>,
    rollout_status: BTreeMap<GroupKey, RolloutStatusView>,
    overrides: BTreeMap<VmKey, Override>,
}

/// The entries of `project` in a map keyed by (project, name): one
/// contiguous range, found without walking the other projects' entries.
fn of_project<'a, V>(
    map: &'a BTreeMap<VmKey, V>,
    project: &ProjectName,
) -> impl Iterator<Item = (&'a VmKey, &'a V)> {
    // "0" sorts before every VM name (a DNS label starts with a-z or 0-9).
    let first = VmKey::new(project.clone(), "0".parse().expect("a VM name"));
    let project = project.clone();
    map.range(first..)
        .take_while(move |(k, _)| k.project == project)
}

fn unplaced_view((k, why): (&VmKey, &String)) -> UnplacedView {
    UnplacedView {
        project: k.project.to_string(),
        name: k.name.to_string(),
        reason: why.clone(),
    }
}

/// Removes `project`'s entries from a map keyed by (project, name).
fn remove_project<V>(map: &mut BTreeMap<VmKey, V>, project: &ProjectName) {
    let keys: Vec<VmKey> = of_project(map, project).map(|(k, _)| k.clone()).collect();
    for k in keys {
        map.remove(&k);
    }
}

/// The first 12 characters of a hash or commit, as every table shows them.
fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

fn failure(code: ErrorCode, msg: impl Into<String>) -> RpcFailure {
    RpcFailure::new(code, msg)
}

fn check_text(field: &str, s: &str, allow_empty: bool) -> Result<(), RpcFailure> {
    if (!allow_empty && s.is_empty()) || s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(RpcFailure::invalid(format!(
            "{field}: must be {}at most {MAX_TEXT} bytes without control characters",
            if allow_empty { "" } else { "non-empty, " }
        )));
    }
    Ok(())
}

impl State {
    /// `revision_seed` should differ between control plane runs (the start
    /// time in ms): a worker's lastSeenRevision from a previous run then
    /// never matches by accident.
    pub fn new(settings: Settings, now: Instant, revision_seed: u64) -> Self {
        State {
            settings,
            started: now,
            grace_over: settings.startup_grace.is_zero(),
            projects: BTreeMap::new(),
            desired: BTreeMap::new(),
            quotas: QuotaConfig::unlimited(),
            workers: BTreeMap::new(),
            placement: Placement::default(),
            revision_counter: revision_seed,
            converging: BTreeSet::new(),
            events: Vec::new(),
            started_ms: 0,
            previous: BTreeMap::new(),
            rolling_projects: BTreeSet::new(),
            rollouts: BTreeMap::new(),
            rollout_status: BTreeMap::new(),
            overrides: BTreeMap::new(),
        }
    }

    /// The events recorded since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<EventDraft> {
        std::mem::take(&mut self.events)
    }

    /// Records an event (one of `commands::model::event_kind`) for the
    /// caller to take: what every rule here uses, and what a rollout
    /// driver records its `rollout-*` kinds with.
    pub fn event(
        &mut self,
        kind: &'static str,
        project: &str,
        vm: &str,
        worker: &str,
        generation: u64,
        message: String,
    ) {
        self.events.push(EventDraft {
            kind,
            project: project.to_owned(),
            vm: vm.to_owned(),
            worker_id: worker.to_owned(),
            generation,
            message,
        });
    }

    /// Puts back the generations a previous run persisted (any order): each
    /// project's newest `HISTORY` are remembered and its newest becomes the
    /// active one again, its specs the desired VMs. Nothing is handed out
    /// before the startup grace ends, so running VMs stay where they run.
    /// Records no events (they were recorded when it happened).
    pub fn restore(&mut self, mut generations: Vec<GenerationDetailView>) -> Effects {
        generations.sort_by(|a, b| {
            (&a.generation.project, a.generation.number)
                .cmp(&(&b.generation.project, b.generation.number))
        });
        for g in generations {
            let Ok(project) = g.generation.project.parse::<ProjectName>() else {
                tracing::warn!(project = %g.generation.project, "stored generation of an invalid project skipped");
                continue;
            };
            let entry = self.projects.entry(project.clone()).or_default();
            if entry.history.len() == HISTORY {
                entry.history.pop_front();
            }
            entry.active = Some(g.generation.clone());
            entry.history.push_back(g);
        }
        for (name, p) in &self.projects {
            let Some(active) = p.history.back() else {
                continue;
            };
            remove_project(&mut self.desired, name);
            self.desired.extend(active.specs.iter().map(|s| {
                let s = s.clone().with_project(name.clone());
                (VmKey::new(name.clone(), s.name().clone()), s)
            }));
            if active.generation.converged_at_ms == 0 {
                self.converging.insert(name.clone());
            }
            // A rollout carries on where the workers are; what a revert goes
            // back to is the generation before, the closest a restart knows
            // to what each replica ran before.
            if active.specs.iter().any(|s| s.update().is_some()) {
                self.rolling_projects.insert(name.clone());
                let before = p.history.iter().rev().nth(1);
                self.previous
                    .extend(before.into_iter().flat_map(|g| &g.specs).map(|s| {
                        let s = s.clone().with_project(name.clone());
                        (VmKey::new(name.clone(), s.name().clone()), s)
                    }));
            }
        }
        let effects = self.reschedule();
        // Placement after a restore is not news.
        self.events.clear();
        effects
    }

    /// Generation `number` of `project` with its specs, if remembered.
    pub fn generation(&self, project: &ProjectName, number: u64) -> Option<&GenerationDetailView> {
        self.projects
            .get(project)?
            .history
            .iter()
            .find(|g| g.generation.number == number)
    }

    /// Records that `project`'s generation `number` converged at `at_ms`
    /// (wall clock, from the caller), once.
    pub fn mark_converged(&mut self, project: &ProjectName, number: u64, at_ms: u64) {
        let Some(p) = self.projects.get_mut(project) else {
            return;
        };
        if let Some(a) = p.active.as_mut().filter(|a| a.number == number) {
            a.converged_at_ms = at_ms;
        }
        if let Some(h) = p.history.iter_mut().find(|g| g.generation.number == number) {
            h.generation.converged_at_ms = at_ms;
        }
    }

    /// Sets the wall clock: `unix_ms` is the time of the `now` given to
    /// [`State::new`]. Rollouts judge how long a VM has been healthy by
    /// the workers' timestamps, so the control plane needs real time.
    pub fn with_wall_clock(mut self, unix_ms: u64) -> Self {
        self.started_ms = unix_ms;
        self
    }

    fn now_ms(&self, now: Instant) -> u64 {
        self.started_ms.saturating_add(
            u64::try_from(now.saturating_duration_since(self.started).as_millis())
                .unwrap_or(u64::MAX),
        )
    }

    /// The active generation number of `project` (0 before its first publish).
    pub fn active_generation(&self, project: &ProjectName) -> u64 {
        self.projects
            .get(project)
            .and_then(|p| p.active.as_ref())
            .map_or(0, |g| g.number)
    }

    /// Replaces the quotas (a SIGHUP reload) and places again: a lowered
    /// quota unplaces its project's last VMs by name, a raised one places
    /// what it refused before.
    pub fn set_quotas(&mut self, quotas: QuotaConfig) -> Effects {
        self.quotas = quotas;
        self.reschedule()
    }

    // ---- publish -----------------------------------------------------------

    /// Makes `specs` the desired VMs of `project` as `generation`, leaving
    /// every other project's as they are. Refused whole (changing nothing)
    /// for an unknown project, a spec naming another project, a duplicate
    /// name, an older or conflicting generation number, or a generation
    /// over the project's quota.
    pub fn publish(
        &mut self,
        project: &ProjectName,
        commit: &str,
        generation: u64,
        intent_hash: &str,
        specs: Vec<VmSpec>,
        now_ms: u64,
    ) -> Result<(PublishOutcomeView, Effects), RpcFailure> {
        let meta = PublishMeta::default();
        self.publish_with_meta(
            project,
            commit,
            generation,
            intent_hash,
            specs,
            &meta,
            now_ms,
        )
    }

    /// [`Self::publish`] with where the generation came from (author,
    /// message, CI job), which its history and events show.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_with_meta(
        &mut self,
        project: &ProjectName,
        commit: &str,
        generation: u64,
        intent_hash: &str,
        specs: Vec<VmSpec>,
        meta: &PublishMeta,
        now_ms: u64,
    ) -> Result<(PublishOutcomeView, Effects), RpcFailure> {
        check_text("commit", commit, false)?;
        check_text("intentHash", intent_hash, false)?;
        check_text("meta.author", &meta.author, true)?;
        check_text("meta.message", &meta.message, true)?;
        if generation == 0 {
            return Err(RpcFailure::invalid("generation: must be at least 1"));
        }
        let quota = self
            .quotas
            .limits(project)
            .map_err(|why| failure(ErrorCode::NotFound, why))?;
        let mut by_name = BTreeMap::new();
        for s in specs {
            if let Some(other) = s.assigned_project().filter(|p| *p != project) {
                return Err(RpcFailure::invalid(format!(
                    "vmSpecs: {} names project {other} but is published for project {project}",
                    s.name()
                )));
            }
            let name = s.name().clone();
            if by_name
                .insert(name.clone(), s.with_project(project.clone()))
                .is_some()
            {
                return Err(RpcFailure::invalid(format!(
                    "vmSpecs: duplicate VM name {name:?}"
                )));
            }
        }
        // A rollout is per group: its replicas must agree on how.
        let mut policies: BTreeMap<&str, (&VmName, &UpdatePolicy)> = BTreeMap::new();
        for s in by_name.values() {
            let Some(u) = s.update() else { continue };
            match policies.get(u.group.as_str()) {
                Some((first, p)) if *p != u => {
                    return Err(RpcFailure::invalid(format!(
                        "vmSpecs: {} and {first} carry different update policies for group {:?}; every replica of a group must carry the same",
                        s.name(),
                        u.group
                    )));
                }
                Some(_) => {}
                None => {
                    policies.insert(&u.group, (s.name(), u));
                }
            }
        }
        if let Some(cur) = self.projects.get(project).and_then(|p| p.active.as_ref()) {
            if generation < cur.number {
                return Err(failure(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "generation {generation} is older than the active generation {}",
                        cur.number
                    ),
                ));
            }
            if generation == cur.number {
                if intent_hash == cur.intent_hash {
                    return Ok((self.outcome(project, generation, true), Effects::default()));
                }
                return Err(failure(
                    ErrorCode::AlreadyExists,
                    format!(
                        "generation {generation} is already active with intentHash {:?}; a different intent needs a new generation",
                        cur.intent_hash
                    ),
                ));
            }
        }
        if let Some(quota) = quota {
            let wants = Limits::of(by_name.values());
            if !wants.within(&quota) {
                return Err(failure(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "generation {generation} of project {project} needs {wants}, over its quota of {quota}; the active generation stays"
                    ),
                ));
            }
        }
        let record = GenerationView {
            project: project.to_string(),
            number: generation,
            commit: commit.to_owned(),
            intent_hash: intent_hash.to_owned(),
            vm_count: u32::try_from(by_name.len()).unwrap_or(u32::MAX),
            published_at_ms: now_ms,
            author: meta.author.clone(),
            message: meta.message.clone(),
            job_id: meta.job_id,
            converged_at_ms: 0,
            rollout: String::new(),
        };
        // Only this project's VMs need placing, unless another project has
        // VMs waiting for room (this publish may free some) or the workers
        // have not reported yet: then everything is placed again.
        let others_waiting = self
            .placement
            .unplaced
            .keys()
            .any(|k| k.project != *project);
        let partial = self.grace_over && !others_waiting;
        let before = self.snapshot(partial.then_some(project));
        // What each VM runs now is what a rollout of the new generation
        // reverts to: only kept for projects with a policy.
        let remembered: Vec<(VmKey, VmSpec)> = if policies.is_empty() {
            Vec::new()
        } else {
            of_project(&self.desired, project)
                .map(|(k, old)| (k.clone(), self.remembered_spec(k, old)))
                .collect()
        };
        remove_project(&mut self.previous, project);
        self.previous.extend(remembered);
        if policies.is_empty() {
            self.rolling_projects.remove(project);
        } else {
            self.rolling_projects.insert(project.clone());
        }
        let entry = self.projects.entry(project.clone()).or_default();
        if entry.history.len() == HISTORY {
            entry.history.pop_front();
        }
        entry.history.push_back(GenerationDetailView {
            generation: record.clone(),
            specs: by_name.values().cloned().collect(),
        });
        entry.active = Some(record);
        let by = if meta.author.is_empty() {
            String::new()
        } else {
            format!(" by {}", meta.author)
        };
        let job = if meta.job_id == 0 {
            String::new()
        } else {
            format!(", CI job {}", meta.job_id)
        };
        self.event(
            event_kind::GENERATION_PUBLISHED,
            project.as_str(),
            "",
            "",
            generation,
            format!(
                "generation {generation} published from commit {}{by}{job}: {} VMs",
                short(commit),
                by_name.len()
            ),
        );
        self.converging.insert(project.clone());
        remove_project(&mut self.desired, project);
        self.desired.extend(
            by_name
                .into_iter()
                .map(|(name, spec)| (VmKey::new(project.clone(), name), spec)),
        );
        // The rollout decides first what each replica is told, so that no
        // assignment ever hands out the whole new group at once.
        let changed = self.update_rollouts(now_ms);
        let effects = if partial {
            self.reschedule_project(project)
        } else {
            self.place_all()
        };
        let effects = effects.or(self.patch_assignments(changed));
        self.record_placement(before, partial.then_some(project));
        self.check_converged();
        Ok((self.outcome(project, generation, false), effects))
    }

    /// The publish outcome: what the scheduler did with `project`'s VMs.
    fn outcome(&self, project: &ProjectName, generation: u64, noop: bool) -> PublishOutcomeView {
        let placed = of_project(&self.placement.assigned, project).count();
        PublishOutcomeView {
            project: project.to_string(),
            generation,
            noop,
            placed: u32::try_from(placed).unwrap_or(u32::MAX),
            unplaced: of_project(&self.placement.unplaced, project)
                .map(unplaced_view)
                .collect(),
        }
    }

    fn unplaced_views(&self) -> Vec<UnplacedView> {
        self.placement.unplaced.iter().map(unplaced_view).collect()
    }

    /// The history of `project`, or of every project (by project) when `None`.
    pub fn generations(&self, project: Option<&ProjectName>) -> Vec<GenerationView> {
        self.projects
            .iter()
            .filter(|(p, _)| project.is_none_or(|want| want == *p))
            .flat_map(|(_, p)| p.history.iter().map(|g| g.generation.clone()))
            .collect()
    }

    // ---- events ------------------------------------------------------------

    /// Where the VMs of `scope` (every project when `None`) stand now.
    fn snapshot(&self, scope: Option<&ProjectName>) -> PlacementSnapshot {
        let row = |(k, s): (&VmKey, &VmSpec)| {
            (
                k.clone(),
                (
                    self.placement.assigned.get(k).cloned(),
                    s.content_hash().to_owned(),
                    self.placement.unplaced.get(k).cloned(),
                ),
            )
        };
        match scope {
            Some(p) => of_project(&self.desired, p).map(row).collect(),
            None => self.desired.iter().map(row).collect(),
        }
    }

    /// Records what changed for the VMs of `scope` since `before`: placed
    /// (or moved), replaced (a new version on the same worker), removed,
    /// unplaced. Nothing during the startup grace: placements then are
    /// provisional, made before the workers reported what they run.
    fn record_placement(&mut self, before: PlacementSnapshot, scope: Option<&ProjectName>) {
        if !self.grace_over {
            return;
        }
        let after = self.snapshot(scope);
        let generation_of = |s: &Self, p: &ProjectName| s.active_generation(p);
        for (k, (worker, hash, why)) in &after {
            let g = generation_of(self, &k.project);
            let old = before.get(k);
            let (old_worker, old_hash, old_why) = match old {
                Some((w, h, y)) => (w.as_ref(), Some(h), y.as_ref()),
                None => (None, None, None),
            };
            let (p, n) = (k.project.as_str(), k.name.as_str());
            match (worker, old_worker) {
                (Some(w), Some(ow)) if w == ow => {
                    if old_hash.is_some_and(|h| h != hash) {
                        let msg = format!(
                            "{n} replaced on {w}: {} → {}",
                            short(old_hash.map_or("", |h| h)),
                            short(hash)
                        );
                        self.event(event_kind::VM_REPLACED, p, n, w.as_str(), g, msg);
                    }
                }
                (Some(w), Some(ow)) => {
                    let msg = format!("{n} moved from {ow} to {w}");
                    self.event(event_kind::VM_PLACED, p, n, w.as_str(), g, msg);
                }
                (Some(w), None) => {
                    let msg = format!("{n} placed on {w}");
                    self.event(event_kind::VM_PLACED, p, n, w.as_str(), g, msg);
                }
                (None, _) => {
                    if let Some(why) = why.as_ref().filter(|y| Some(*y) != old_why) {
                        let msg = format!("{n} not placed: {why}");
                        let w = old_worker.map_or(String::new(), ToString::to_string);
                        self.event(event_kind::VM_UNPLACED, p, n, &w, g, msg);
                    }
                }
            }
        }
        for (k, (worker, _, _)) in before.iter().filter(|(k, _)| !after.contains_key(*k)) {
            let g = generation_of(self, &k.project);
            let w = worker.as_ref().map_or(String::new(), ToString::to_string);
            let msg = if w.is_empty() {
                format!("{} removed", k.name)
            } else {
                format!("{} removed from {w}", k.name)
            };
            self.event(
                event_kind::VM_REMOVED,
                k.project.as_str(),
                k.name.as_str(),
                &w,
                g,
                msg,
            );
        }
    }

    /// Records `generation-converged` for each project whose active
    /// generation now runs everywhere: every desired VM running its
    /// desired version on the worker it is placed on.
    fn check_converged(&mut self) {
        if self.converging.is_empty() {
            return;
        }
        let mut running: HashSet<(&WorkerId, &VmKey, &str)> = HashSet::new();
        let keys: Vec<(&WorkerId, VmKey, &str)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.healthy)
            .flat_map(|(id, w)| {
                w.running
                    .iter()
                    .filter(|vm| {
                        vm.status.state == VmState::Running
                            && self.converging.contains(&vm.status.project)
                    })
                    .map(move |vm| (id, vm.status.key(), vm.status.content_hash.as_str()))
            })
            .collect();
        for (w, k, h) in &keys {
            running.insert((w, k, h));
        }
        let done: Vec<(ProjectName, u64)> = self
            .converging
            .iter()
            .filter(|p| {
                of_project(&self.desired, p).all(|(k, s)| {
                    self.placement
                        .assigned
                        .get(k)
                        .is_some_and(|w| running.contains(&(w, k, s.content_hash())))
                })
            })
            .map(|p| (p.clone(), self.active_generation(p)))
            .collect();
        for (p, g) in done {
            self.converging.remove(&p);
            let n = of_project(&self.desired, &p).count();
            self.event(
                event_kind::GENERATION_CONVERGED,
                p.as_str(),
                "",
                "",
                g,
                format!("generation {g} converged: {n} of {n} VMs run it"),
            );
        }
    }

    // ---- workers -----------------------------------------------------------

    /// Registers (or re-registers) a worker from connection `conn`.
    pub fn register(
        &mut self,
        reg: Registration,
        conn: u64,
        now: Instant,
    ) -> Result<Effects, RpcFailure> {
        check_text("address", &reg.address, false)?;
        if let Some(existing) = self.workers.get(&reg.worker_id) {
            // A live worker keeps its id: another connection claiming it is
            // refused, even one reporting the same address (an address is
            // what a caller says, not who it is). A worker that reconnects
            // takes over once its old connection has closed, or once it has
            // missed its heartbeats (a connection whose host vanished
            // without closing it).
            if existing.conn != conn && existing.conn_open && existing.healthy {
                return Err(failure(
                    ErrorCode::PermissionDenied,
                    format!(
                        "worker id {} is registered on another open connection (a live worker at {}); \
                         it can register again once that connection closes",
                        reg.worker_id, existing.address
                    ),
                ));
            }
        } else if self.workers.len() >= MAX_WORKERS {
            return Err(failure(
                ErrorCode::Unavailable,
                format!("too many workers (at most {MAX_WORKERS})"),
            ));
        }
        let previous = self.workers.remove(&reg.worker_id);
        let (revision, assigned) = previous
            .as_ref()
            .map_or((0, Vec::new()), |p| (p.revision, p.assigned.clone()));
        let changed_shape = previous
            .as_ref()
            .is_none_or(|p| !p.healthy || p.capacity != reg.capacity || p.labels != reg.labels);
        match &previous {
            None => self.event(
                event_kind::WORKER_JOINED,
                "",
                "",
                reg.worker_id.as_str(),
                0,
                format!(
                    "{} joined from {} ({} vCPU, {} MiB)",
                    reg.worker_id, reg.address, reg.capacity.cpu, reg.capacity.memory_mb
                ),
            ),
            Some(p) if !p.healthy => self.event(
                event_kind::WORKER_HEALTHY,
                "",
                "",
                reg.worker_id.as_str(),
                0,
                format!("{} healthy again: registered again", reg.worker_id),
            ),
            Some(_) => {}
        }
        tracing::info!(worker_id = %reg.worker_id, address = %reg.address, cpu = reg.capacity.cpu,
            memory_mb = reg.capacity.memory_mb, "worker registered");
        self.workers.insert(
            reg.worker_id,
            WorkerEntry {
                address: reg.address,
                capacity: reg.capacity,
                labels: reg.labels,
                conn,
                conn_open: true,
                last_seen: now,
                healthy: true,
                observed_generation: previous.as_ref().map_or(0, |p| p.observed_generation),
                running: previous.map(|p| p.running).unwrap_or_default(),
                metrics: WorkerMetricsView::default(),
                revision,
                assigned,
            },
        );
        Ok(if changed_shape {
            self.reschedule()
        } else {
            Effects::default()
        })
    }

    /// Connection `conn` has closed: the workers registered on it may
    /// register again from another connection. Changes nothing else (their
    /// health still follows their heartbeats).
    pub fn connection_closed(&mut self, conn: u64) {
        for (id, w) in self.workers.iter_mut().filter(|(_, w)| w.conn == conn) {
            tracing::info!(worker_id = %id, conn, "worker connection closed");
            w.conn_open = false;
        }
    }

    /// Heartbeat and observed state from the connection that registered.
    pub fn push_data(
        &mut self,
        worker: &WorkerId,
        conn: u64,
        observed_generation: u64,
        running: Vec<ObservedVm>,
        metrics: WorkerMetricsView,
        now: Instant,
    ) -> Result<Effects, RpcFailure> {
        if running.len() > MAX_VMS_PER_WORKER {
            return Err(RpcFailure::invalid(format!(
                "runningVms: {} entries, more than the {MAX_VMS_PER_WORKER} allowed",
                running.len()
            )));
        }
        let entry = self.workers.get_mut(worker).ok_or_else(|| {
            failure(
                ErrorCode::NotFound,
                format!("unknown worker {worker}: register first"),
            )
        })?;
        if entry.conn != conn {
            return Err(failure(
                ErrorCode::PermissionDenied,
                format!(
                    "worker {worker} is registered on another connection; only it may report for this id"
                ),
            ));
        }
        let silent = now.saturating_duration_since(entry.last_seen);
        let failed_before: HashSet<commands::types::VmId> = entry
            .running
            .iter()
            .filter(|vm| vm.status.state == VmState::Failed)
            .map(|vm| vm.status.id.clone())
            .collect();
        entry.last_seen = now;
        entry.observed_generation = observed_generation;
        entry.running = running;
        entry.metrics = metrics;
        let newly_failed: Vec<(VmKey, String)> = entry
            .running
            .iter()
            .filter(|vm| {
                vm.status.state == VmState::Failed && !failed_before.contains(&vm.status.id)
            })
            .map(|vm| (vm.status.key(), vm.status.error.clone()))
            .collect();
        let was_healthy = entry.healthy;
        entry.healthy = true;
        for (k, error) in newly_failed {
            let g = self.active_generation(&k.project);
            let why = if error.is_empty() {
                String::new()
            } else {
                format!(": {error}")
            };
            let msg = format!("{} failed on {worker}{why}", k.name);
            self.event(
                event_kind::VM_FAILED,
                k.project.as_str(),
                k.name.as_str(),
                worker.as_str(),
                g,
                msg,
            );
        }
        if !was_healthy {
            tracing::info!(worker_id = %worker, "worker healthy again");
            self.event(
                event_kind::WORKER_HEALTHY,
                "",
                "",
                worker.as_str(),
                0,
                format!(
                    "{worker} healthy again: heartbeat after {} s",
                    silent.as_secs()
                ),
            );
            let effects = self.reschedule();
            self.check_converged();
            return Ok(effects.or(self.drive(now)));
        }
        // A desired VM running here but placed elsewhere (or nowhere): the
        // placement was made before this worker reported (a restarted
        // control plane); placing again adopts it where it runs.
        let misplaced = self.workers[worker].running.iter().any(|vm| {
            let key = vm.status.key();
            vm.status.state != VmState::Failed
                && self.desired.contains_key(&key)
                && self.placement.assigned.get(&key) != Some(worker)
        });
        let effects = if misplaced {
            self.reschedule()
        } else {
            Effects::default()
        };
        self.check_converged();
        Ok(effects.or(self.drive(now)))
    }

    /// Periodic: marks silent workers unhealthy (moving their VMs) and ends
    /// the startup grace period.
    pub fn tick(&mut self, now: Instant) -> Effects {
        let mut changed = false;
        let mut went_silent = Vec::new();
        for (id, w) in &mut self.workers {
            let silent = now.saturating_duration_since(w.last_seen);
            if w.healthy && silent > self.settings.heartbeat_timeout {
                tracing::warn!(worker_id = %id, silent_ms = silent.as_millis() as u64, "worker unhealthy; moving its VMs");
                w.healthy = false;
                changed = true;
                went_silent.push((id.clone(), silent));
            }
        }
        for (id, silent) in went_silent {
            self.event(
                event_kind::WORKER_UNHEALTHY,
                "",
                "",
                id.as_str(),
                0,
                format!("{id} unhealthy: no heartbeat for {} s", silent.as_secs()),
            );
        }
        let mut effects = if changed {
            self.reschedule()
        } else {
            Effects::default()
        };
        if !self.grace_over
            && now.saturating_duration_since(self.started) >= self.settings.startup_grace
        {
            self.grace_over = true;
            tracing::info!("startup grace over; handing out assignments");
            // Placement now sees every worker that re-registered and
            // reported its VMs; every long-poll gets its first answer.
            // Rollouts first: a replica a rollout has not reached is held
            // from the very first assignment.
            let now_ms = self.now_ms(now);
            self.update_rollouts(now_ms);
            self.reschedule();
            effects.assignments_changed = true;
        }
        effects.or(self.drive(now))
    }

    // ---- rollouts ----------------------------------------------------------

    /// What the worker `key` is placed on reports under its name (every
    /// instance: during a replacement there are two).
    fn reported<'a>(&'a self, key: &'a VmKey) -> impl Iterator<Item = &'a ObservedVm> {
        self.placement
            .assigned
            .get(key)
            .and_then(|w| self.workers.get(w))
            .into_iter()
            .flat_map(|w| &w.running)
            .filter(move |o| o.status.key() == *key)
    }

    /// The spec `key` runs now, to revert to later: the version its worker
    /// reports running among what it was told (its desired spec, or what
    /// a rollout held or reverted it to), else its desired spec.
    fn remembered_spec(&self, key: &VmKey, desired: &VmSpec) -> VmSpec {
        let running: Vec<&str> = self
            .reported(key)
            .filter(|o| o.status.state == VmState::Running)
            .map(|o| o.status.content_hash.as_str())
            .collect();
        let reverted = match self.overrides.get(key) {
            Some(Override::Revert(s)) => Some(&**s),
            _ => None,
        };
        let candidates = [Some(desired), reverted, self.previous.get(key)];
        candidates
            .iter()
            .flatten()
            .find(|s| running.contains(&s.content_hash()))
            .or(match self.overrides.get(key) {
                Some(_) => candidates[2].as_ref().or(candidates[1].as_ref()),
                None => None,
            })
            .map_or_else(|| desired.clone(), |s| (*s).clone())
    }

    /// Steps every rollout at `now` and re-tells the workers whose
    /// replicas' instructions changed.
    fn drive(&mut self, now: Instant) -> Effects {
        let now_ms = self.now_ms(now);
        let changed = self.update_rollouts(now_ms);
        self.patch_assignments(changed)
    }

    /// Steps the rollout of every group with a policy (see `rollout`) and
    /// records what each replica is told; returns the VMs whose
    /// instruction changed. Nothing during the startup grace: the workers
    /// have not reported yet, and nothing is handed out anyway.
    fn update_rollouts(&mut self, now_ms: u64) -> BTreeSet<VmKey> {
        if !self.grace_over {
            return BTreeSet::new();
        }
        let mut overrides = BTreeMap::new();
        let mut statuses = BTreeMap::new();
        let mut records = BTreeMap::new();
        // (project, generation, kind, message): recorded as events once the
        // borrows of this loop end.
        let mut transitions = Vec::new();
        for project in &self.rolling_projects {
            let Some((generation, line)) = self
                .projects
                .get(project)
                .and_then(|p| p.active.as_ref())
                .map(|g| (g.number, g.rollout.as_str()))
            else {
                continue;
            };
            type GroupReplicas = (UpdatePolicy, Option<u64>, Vec<rollout::Replica>);
            let mut groups: BTreeMap<&str, GroupReplicas> = BTreeMap::new();
            for (key, spec) in of_project(&self.desired, project) {
                let Some(u) = spec.update() else { continue };
                let g = groups
                    .entry(u.group.as_str())
                    .or_insert_with(|| (u.clone(), None, Vec::new()));
                if let Some(hc) = spec.health_check() {
                    g.1 = Some(g.1.map_or(hc.deadline_ms, |d| d.max(hc.deadline_ms)));
                }
                let instances = self
                    .reported(key)
                    .map(|o| rollout::Instance {
                        hash: o.status.content_hash.clone(),
                        state: o.status.state,
                        health: o.status.health,
                        detail: if o.status.health_detail.is_empty() {
                            o.status.error.clone()
                        } else {
                            o.status.health_detail.clone()
                        },
                        created_at_ms: o.status.created_at_ms,
                        healthy_since_ms: o.status.healthy_since_ms,
                    })
                    .collect();
                g.2.push(rollout::Replica {
                    name: key.name.clone(),
                    new_hash: spec.content_hash().to_owned(),
                    can_revert: self.previous.contains_key(key),
                    instances,
                });
            }
            for (group, (policy, deadline, replicas)) in groups {
                let gk: GroupKey = (project.clone(), group.to_owned());
                // No record (a restart): a recorded pause or revert of
                // this generation holds as it was.
                let mut record = self
                    .rollouts
                    .remove(&gk)
                    .or_else(|| rollout::Record::resume(generation, group, line, now_ms));
                let step = rollout::step(
                    &mut record,
                    rollout::Group {
                        policy: &policy,
                        check_deadline_ms: deadline,
                        generation,
                        replicas: &replicas,
                    },
                    now_ms,
                );
                for t in &step.transitions {
                    transitions.push((project.clone(), generation, t.kind, t.message.clone()));
                }
                for (name, action) in step.actions {
                    let key = VmKey::new(project.clone(), name);
                    match action {
                        Action::New => {}
                        Action::Hold => {
                            overrides.insert(key, Override::Hold);
                        }
                        Action::Revert => {
                            if let Some(prev) = self.previous.get(&key) {
                                overrides.insert(key, Override::Revert(Box::new(prev.clone())));
                            }
                        }
                    }
                }
                if let Some(r) = record {
                    records.insert(gk.clone(), r);
                }
                statuses.insert(
                    gk,
                    RolloutStatusView {
                        project: project.to_string(),
                        ..step.status
                    },
                );
            }
        }
        for project in &self.rolling_projects {
            let line = rollout::summary(
                statuses
                    .iter()
                    .filter(|((p, _), _)| p == project)
                    .map(|(_, s)| s),
            );
            if let Some(p) = self.projects.get_mut(project) {
                let number = p.active.as_ref().map(|g| g.number);
                for g in p.active.iter_mut().chain(
                    p.history
                        .iter_mut()
                        .rev()
                        .take(1)
                        .map(|g| &mut g.generation)
                        .filter(|g| Some(g.number) == number),
                ) {
                    g.rollout.clone_from(&line);
                }
            }
        }
        self.rollouts = records;
        self.rollout_status = statuses;
        for (project, generation, kind, message) in transitions {
            self.event(kind, project.as_str(), "", "", generation, message);
        }
        let mut changed: BTreeSet<VmKey> = BTreeSet::new();
        for (k, v) in &overrides {
            if self.overrides.get(k) != Some(v) {
                changed.insert(k.clone());
            }
        }
        for k in self.overrides.keys() {
            if !overrides.contains_key(k) {
                changed.insert(k.clone());
            }
        }
        self.overrides = overrides;
        changed
    }

    /// Tells the workers of `changed` VMs their new instruction (spec and
    /// hold) and bumps those workers' revisions.
    fn patch_assignments(&mut self, changed: BTreeSet<VmKey>) -> Effects {
        let mut touched: BTreeSet<WorkerId> = BTreeSet::new();
        for key in changed {
            if !self.desired.contains_key(&key) {
                continue;
            }
            let Some(w) = self.placement.assigned.get(&key) else {
                continue;
            };
            let spec = effective(&self.desired, &self.overrides, &key);
            if let Some(entry) = self.workers.get_mut(w) {
                if let Some(slot) = entry.assigned.iter_mut().find(|s| s.key() == key) {
                    *slot = spec;
                }
                touched.insert(w.clone());
            }
        }
        for id in &touched {
            if let Some(w) = self.workers.get_mut(id) {
                self.revision_counter += 1;
                w.revision = self.revision_counter;
            }
        }
        Effects {
            assignments_changed: !touched.is_empty(),
        }
    }

    // ---- scheduling --------------------------------------------------------

    /// Runs the scheduler on every project's desired VMs and the live
    /// workers, and bumps the revision of every worker whose assigned specs
    /// changed.
    fn reschedule(&mut self) -> Effects {
        let before = self.snapshot(None);
        let effects = self.place_all();
        self.record_placement(before, None);
        effects
    }

    /// [`Self::reschedule`] without recording events.
    fn place_all(&mut self) -> Effects {
        if self.projects.is_empty() {
            return Effects::default();
        }
        let specs: Vec<VmSpec> = self.desired.values().cloned().collect();
        let quotas: Quotas = self
            .projects
            .keys()
            .filter_map(|p| match self.quotas.limits(p) {
                Ok(Some(l)) => Some((p.clone(), l)),
                Ok(None) => None,
                // A project the reloaded file no longer knows keeps nothing.
                Err(_) => Some((p.clone(), Limits::default())),
            })
            .collect();
        let live: Vec<WorkerSlot> = self
            .workers
            .iter()
            .filter(|(_, w)| w.healthy)
            .map(|(id, w)| WorkerSlot {
                id: id.clone(),
                capacity: w.capacity,
                labels: w.labels.clone(),
            })
            .collect();
        // Previous placement: where each VM actually runs wins over what
        // the scheduler decided before but no worker has realised yet (a
        // placement made during the startup grace of a restarted control
        // plane, before the workers reported). A VM that runs where it was
        // assigned stays there; one running elsewhere on a live worker is
        // adopted there; one running nowhere keeps its earlier decision.
        let mut observed_on: BTreeMap<VmKey, Vec<&WorkerId>> = BTreeMap::new();
        for (id, w) in self.workers.iter().filter(|(_, w)| w.healthy) {
            for vm in &w.running {
                let key = vm.status.key();
                if vm.status.state != VmState::Failed && self.desired.contains_key(&key) {
                    observed_on.entry(key).or_default().push(id);
                }
            }
        }
        let mut previous = BTreeMap::new();
        for key in self.desired.keys() {
            let assigned = self.placement.assigned.get(key);
            let observed = observed_on.get(key);
            let pick = match (assigned, observed) {
                (Some(a), Some(o)) if o.contains(&a) => Some(a),
                (_, Some(o)) => o.first().copied(),
                (a, None) => a,
            };
            if let Some(w) = pick {
                previous.insert(key.clone(), w.clone());
            }
        }
        // What each VM held when it was last assigned: a VM that grew in
        // place must not push another's unchanged VM off its worker.
        let held: BTreeMap<VmKey, Resources> = self
            .workers
            .values()
            .flat_map(|w| &w.assigned)
            .map(|s| {
                let r = Resources {
                    cpu: s.cpu(),
                    memory_mb: s.memory_mb(),
                };
                (s.key(), r)
            })
            .collect();
        self.placement = scheduler::schedule_with_held(&specs, &live, &previous, &held, &quotas);

        let mut per_worker: BTreeMap<&WorkerId, Vec<VmSpec>> = BTreeMap::new();
        for (vm, w) in &self.placement.assigned {
            per_worker
                .entry(w)
                .or_default()
                .push(effective(&self.desired, &self.overrides, vm));
        }
        let mut changed = false;
        for (id, w) in &mut self.workers {
            let now_assigned = per_worker.remove(id).unwrap_or_default();
            if w.assigned != now_assigned || w.revision == 0 {
                self.revision_counter += 1;
                w.revision = self.revision_counter;
                w.assigned = now_assigned;
                changed = true;
            }
        }
        Effects {
            assignments_changed: changed,
        }
    }

    /// Places `project`'s desired VMs again beside every other project's,
    /// which stay exactly where they are (their cpu and memory are taken
    /// out of the workers' capacity first), and bumps the revision of the
    /// workers whose assignment changed. The same placement as
    /// [`Self::reschedule`] when no other project has unplaced VMs, at the
    /// cost of this project's VMs instead of every project's.
    fn reschedule_project(&mut self, project: &ProjectName) -> Effects {
        let mine = |s: &VmSpec| s.project() == project.as_str();
        let specs: Vec<VmSpec> = of_project(&self.desired, project)
            .map(|(_, s)| s.clone())
            .collect();
        let quotas: Quotas = match self.quotas.limits(project) {
            Ok(Some(l)) => [(project.clone(), l)].into(),
            Ok(None) => Quotas::new(),
            Err(_) => [(project.clone(), Limits::default())].into(),
        };
        let mut live = Vec::new();
        let mut taken: HashMap<WorkerId, Resources> = HashMap::new();
        let mut held: BTreeMap<VmKey, Resources> = BTreeMap::new();
        let mut observed_on: BTreeMap<VmKey, Vec<&WorkerId>> = BTreeMap::new();
        for (id, w) in &self.workers {
            for s in w.assigned.iter().filter(|s| mine(s)) {
                let r = Resources {
                    cpu: s.cpu(),
                    memory_mb: s.memory_mb(),
                };
                held.insert(s.key(), r);
            }
            if !w.healthy {
                continue;
            }
            live.push(WorkerSlot {
                id: id.clone(),
                capacity: w.capacity,
                labels: w.labels.clone(),
            });
            let t = taken.entry(id.clone()).or_default();
            for s in w.assigned.iter().filter(|s| !mine(s)) {
                t.cpu = t.cpu.saturating_add(s.cpu());
                t.memory_mb = t.memory_mb.saturating_add(s.memory_mb());
            }
            for vm in w.running.iter().filter(|vm| vm.status.project == *project) {
                let key = vm.status.key();
                if vm.status.state != VmState::Failed && self.desired.contains_key(&key) {
                    observed_on.entry(key).or_default().push(id);
                }
            }
        }
        let mut previous = BTreeMap::new();
        for s in &specs {
            let key = s.key();
            let assigned = self.placement.assigned.get(&key);
            let pick = match (assigned, observed_on.get(&key)) {
                (Some(a), Some(o)) if o.contains(&a) => Some(a),
                (_, Some(o)) => o.first().copied(),
                (a, None) => a,
            };
            if let Some(w) = pick {
                previous.insert(key, w.clone());
            }
        }
        let placed = scheduler::schedule_beside(&specs, &live, &taken, &previous, &held, &quotas);

        let mut per_worker: BTreeMap<&WorkerId, Vec<VmSpec>> = BTreeMap::new();
        for (vm, w) in &placed.assigned {
            per_worker
                .entry(w)
                .or_default()
                .push(effective(&self.desired, &self.overrides, vm));
        }
        let mut changed = false;
        for (id, w) in &mut self.workers {
            let now_mine = per_worker.remove(id).unwrap_or_default();
            let same = {
                let mut had = w.assigned.iter().filter(|s| mine(s));
                had.clone().count() == now_mine.len()
                    && now_mine.iter().all(|n| had.next() == Some(n))
            };
            if same && w.revision != 0 {
                continue;
            }
            if !same {
                // In place, in the order a full reschedule gives (by
                // project, then name): the project's specs are one
                // contiguous run, replaced by the new one; the other
                // projects' specs are neither copied nor moved.
                let start = w
                    .assigned
                    .partition_point(|s| s.project() < project.as_str());
                let end = start + w.assigned[start..].iter().take_while(|s| mine(s)).count();
                w.assigned.splice(start..end, now_mine);
            }
            self.revision_counter += 1;
            w.revision = self.revision_counter;
            changed = true;
        }
        remove_project(&mut self.placement.assigned, project);
        remove_project(&mut self.placement.unplaced, project);
        // Insert one by one: `append` would rebuild the whole map.
        self.placement.assigned.extend(placed.assigned);
        self.placement.unplaced.extend(placed.unplaced);
        Effects {
            assignments_changed: changed,
        }
    }

    /// What `worker` must run, or `None` when there is nothing newer than
    /// (last_generation, last_revision) to tell it. Nothing is handed out
    /// before a generation is active or during the startup grace, so a
    /// restarted control plane never tells a worker to stop its VMs.
    pub fn assignment(
        &self,
        worker: &WorkerId,
        last_generation: u64,
        last_revision: u64,
    ) -> Result<Option<AssignmentView>, RpcFailure> {
        let view = self.current_assignment(worker)?;
        if !self.grace_over || self.projects.is_empty() {
            return Ok(None);
        }
        if view.generation == last_generation && view.revision == last_revision {
            return Ok(None);
        }
        Ok(Some(AssignmentView {
            changed: true,
            ..view
        }))
    }

    /// The assignment as it stands (for a long-poll that timed out).
    pub fn current_assignment(&self, worker: &WorkerId) -> Result<AssignmentView, RpcFailure> {
        let w = self.workers.get(worker).ok_or_else(|| {
            failure(
                ErrorCode::NotFound,
                format!("unknown worker {worker}: register first"),
            )
        })?;
        // Generations are per project: the assignment names the highest
        // active one, which grows whenever any project publishes anew.
        let generation = self
            .projects
            .values()
            .filter_map(|p| p.active.as_ref())
            .map(|g| g.number)
            .max()
            .unwrap_or(0);
        Ok(AssignmentView {
            changed: false,
            worker_id: worker.to_string(),
            generation,
            commit: String::new(),
            revision: w.revision,
            vms: if self.grace_over {
                w.assigned.clone()
            } else {
                Vec::new()
            },
            hold: if self.grace_over {
                w.assigned
                    .iter()
                    .map(VmSpec::key)
                    .filter(|k| self.overrides.get(k) == Some(&Override::Hold))
                    .collect()
            } else {
                Vec::new()
            },
        })
    }

    // ---- status ------------------------------------------------------------

    pub fn cluster_status(&self, now: Instant) -> ClusterStatusView {
        let mut vms = Vec::new();
        let desired = &self.desired;
        // Observed VMs accounted for by a desired entry, per worker.
        let mut claimed: BTreeMap<&WorkerId, Vec<bool>> = self
            .workers
            .iter()
            .map(|(id, w)| (id, vec![false; w.running.len()]))
            .collect();

        for (key, spec) in desired {
            let worker = self.placement.assigned.get(key);
            let is_it =
                |s: &commands::types::VmStatus| s.project == key.project && s.name == key.name;
            let mut view = VmPlacementView {
                project: key.project.to_string(),
                name: key.name.to_string(),
                worker_id: worker.map(ToString::to_string).unwrap_or_default(),
                desired_hash: spec.content_hash().to_owned(),
                observed_hash: String::new(),
                state: None,
                drift: Drift::Pending,
                metrics: VmMetrics::default(),
                vm_id: String::new(),
                health: Default::default(),
                health_detail: String::new(),
            };
            if let Some(w) = worker.and_then(|w| self.workers.get_key_value(w)) {
                // During a replacement the worker runs two versions of the
                // name (it starts the new one, then stops the old): the row
                // shows the desired version if it exists, and the other
                // instances are part of this row, not orphans.
                let running = &w.1.running;
                let pick = running
                    .iter()
                    .position(|o| is_it(&o.status) && o.status.content_hash == spec.content_hash())
                    .or_else(|| running.iter().position(|o| is_it(&o.status)));
                let mut others = 0usize;
                if let Some(c) = claimed.get_mut(w.0) {
                    for (j, o) in running.iter().enumerate() {
                        if is_it(&o.status) {
                            c[j] = true;
                            others += usize::from(Some(j) != pick);
                        }
                    }
                }
                if let Some(i) = pick {
                    let o = &running[i];
                    view.observed_hash = o.status.content_hash.clone();
                    view.state = Some(o.status.state);
                    view.metrics = o.metrics;
                    view.vm_id = o.status.id.to_string();
                    view.health = o.status.health;
                    view.health_detail = o.status.health_detail.clone();
                    view.drift = if o.status.state == VmState::Failed {
                        Drift::Failed
                    } else if o.status.content_hash != spec.content_hash() {
                        Drift::Drifted
                    } else if o.status.state == VmState::Running && others == 0 {
                        Drift::Converged
                    } else {
                        // Booting, paused, or running while the old version
                        // is still being stopped.
                        Drift::Pending
                    };
                }
            }
            vms.push(view);
        }
        // Orphans only from live workers: what a silent worker reported last
        // is stale, and its VMs are being placed elsewhere.
        for (id, w) in self.workers.iter().filter(|(_, w)| w.healthy) {
            for (i, o) in w.running.iter().enumerate() {
                if claimed.get(id).is_some_and(|c| c[i]) {
                    continue;
                }
                vms.push(VmPlacementView {
                    project: o.status.project.to_string(),
                    name: o.status.name.to_string(),
                    worker_id: id.to_string(),
                    desired_hash: String::new(),
                    observed_hash: o.status.content_hash.clone(),
                    state: Some(o.status.state),
                    drift: Drift::Orphaned,
                    metrics: o.metrics,
                    vm_id: o.status.id.to_string(),
                    health: o.status.health,
                    health_detail: o.status.health_detail.clone(),
                });
            }
        }
        let convergence_percent = commands::model::convergence_percent(&vms);

        let mut allocated: BTreeMap<&WorkerId, Resources> = BTreeMap::new();
        for (vm, w) in &self.placement.assigned {
            let r = allocated.entry(w).or_default();
            r.cpu = r.cpu.saturating_add(desired[vm].cpu());
            r.memory_mb = r.memory_mb.saturating_add(desired[vm].memory_mb());
        }
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| WorkerHealthView {
                worker_id: id.to_string(),
                address: w.address.clone(),
                healthy: w.healthy,
                last_seen_ms_ago: u64::try_from(
                    now.saturating_duration_since(w.last_seen).as_millis(),
                )
                .unwrap_or(u64::MAX),
                capacity: w.capacity,
                allocated: allocated.get(id).copied().unwrap_or_default(),
                observed_generation: w.observed_generation,
                vm_count: u32::try_from(w.running.len()).unwrap_or(u32::MAX),
                labels: w.labels.clone(),
                metrics: w.metrics,
            })
            .collect();
        ClusterStatusView {
            generations: self
                .projects
                .values()
                .filter_map(|p| p.active.clone())
                .collect(),
            convergence_percent,
            vms,
            workers,
            unplaced: self.unplaced_views(),
            rollouts: self
                .rollout_status
                .values()
                .filter(|r| r.state != "rolled")
                .cloned()
                .collect(),
        }
    }

    /// Every project known (listed in the quota file or published):
    /// quota, usage, active generation and convergence.
    pub fn projects(&self, now: Instant) -> Vec<ProjectStatusView> {
        let status = self.cluster_status(now);
        let mut names: Vec<&ProjectName> = self.projects.keys().collect();
        names.extend(self.quotas.listed());
        names.sort();
        names.dedup();
        // Each project's rows, grouped in one pass.
        let mut rows: BTreeMap<&str, Vec<&VmPlacementView>> = BTreeMap::new();
        for v in &status.vms {
            rows.entry(v.project.as_str()).or_default().push(v);
        }
        let mut live = self.all_live_generations();
        names
            .into_iter()
            .map(|p| {
                let placed = of_project(&self.placement.assigned, p).count();
                let unplaced = of_project(&self.placement.unplaced, p).count();
                ProjectStatusView {
                    project: p.to_string(),
                    quota: self.quotas.limits(p).ok().flatten().unwrap_or(UNLIMITED),
                    usage: Limits::of(of_project(&self.desired, p).map(|(_, s)| s)),
                    generation: self.projects.get(p).and_then(|x| x.active.clone()),
                    convergence_percent: commands::model::convergence_percent(
                        rows.get(p.as_str()).into_iter().flatten().copied(),
                    ),
                    placed: u32::try_from(placed).unwrap_or(u32::MAX),
                    unplaced: u32::try_from(unplaced).unwrap_or(u32::MAX),
                    live_generations: live
                        .remove(p)
                        .map(|l| l.into_iter().collect())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The generations of `project` some worker still runs a VM of (see
    /// [`Self::all_live_generations`]).
    pub fn live_generations(&self, project: &ProjectName) -> Vec<u64> {
        self.all_live_generations()
            .remove(project)
            .map(|l| l.into_iter().collect())
            .unwrap_or_default()
    }

    /// Per project, the generations some worker still runs a VM of: for
    /// each VM a worker reports running (healthy workers and silent ones
    /// alike, as their VMs may still run), the newest remembered
    /// generation whose specs have its name and content hash. A paused
    /// rollout's old replicas keep their generation live however many
    /// generations came since. One pass over the histories and one over
    /// the reports: `projects()` is read every few seconds.
    fn all_live_generations(&self) -> BTreeMap<&ProjectName, BTreeSet<u64>> {
        // (project, name, hash) → the newest generation with that spec;
        // histories run oldest first, so later ones overwrite.
        let mut newest: HashMap<(&ProjectName, &str, &str), u64> = HashMap::new();
        for (project, p) in &self.projects {
            for g in &p.history {
                for s in &g.specs {
                    newest.insert(
                        (project, s.name().as_str(), s.content_hash()),
                        g.generation.number,
                    );
                }
            }
        }
        let mut live: BTreeMap<&ProjectName, BTreeSet<u64>> = BTreeMap::new();
        for vm in self.workers.values().flat_map(|w| &w.running) {
            if vm.status.state == VmState::Failed {
                continue;
            }
            let key = (
                &vm.status.project,
                vm.status.name.as_str(),
                vm.status.content_hash.as_str(),
            );
            if let Some((&(project, _, _), &n)) = newest.get_key_value(&key) {
                live.entry(project).or_default().insert(n);
            }
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::types::VmId;
    use testkit::fixtures::spec;

    fn reg(id: &str, addr: &str) -> Registration {
        testkit::fixtures::registration(id, addr.into(), 8, 8192)
    }

    fn settings() -> Settings {
        Settings {
            heartbeat_timeout: Duration::from_secs(5),
            startup_grace: Duration::ZERO,
        }
    }

    /// Workers `a` and `b` registered at `t`, with `specs` published as
    /// generation 1.
    fn two_workers_running(t: Instant, specs: Vec<VmSpec>) -> State {
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        s.register(reg("b", "x:2"), 2, t).unwrap();
        s.publish(&dp(), "c", 1, "i", specs, 0).unwrap();
        s
    }

    /// The default project.
    fn dp() -> ProjectName {
        ProjectName::default()
    }

    fn wid(s: &str) -> WorkerId {
        s.parse().unwrap()
    }

    fn observed(name: &str, hash: &str) -> ObservedVm {
        testkit::fixtures::running_vm(VmId::new_v7(), name, hash, 128)
    }

    /// A generation is live while a worker runs a VM of it: the newest
    /// generation holding that (name, hash), for each running VM; a failed
    /// VM keeps nothing live.
    #[test]
    fn live_generations_follow_what_workers_run() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        let run = |s: &mut State, vms: Vec<ObservedVm>| {
            s.push_data(&wid("a"), 1, 1, vms, WorkerMetricsView::default(), t)
                .unwrap();
            s.live_generations(&dp())
        };
        s.publish(
            &dp(),
            "c1",
            1,
            "i1",
            vec![spec("web-0", "h1"), spec("web-1", "h1")],
            0,
        )
        .unwrap();
        assert_eq!(run(&mut s, vec![]), Vec::<u64>::new());
        assert_eq!(
            run(
                &mut s,
                vec![observed("web-0", "h1"), observed("web-1", "h1")]
            ),
            [1]
        );
        // Generation 2 changes web-0 only: web-1's h1 is generation 2's too.
        s.publish(
            &dp(),
            "c2",
            2,
            "i2",
            vec![spec("web-0", "h2"), spec("web-1", "h1")],
            0,
        )
        .unwrap();
        assert_eq!(
            run(
                &mut s,
                vec![observed("web-0", "h1"), observed("web-1", "h1")]
            ),
            [1, 2]
        );
        s.publish(
            &dp(),
            "c3",
            3,
            "i3",
            vec![spec("web-0", "h3"), spec("web-1", "h3")],
            0,
        )
        .unwrap();
        let mut failed = observed("web-0", "h3");
        failed.status.state = VmState::Failed;
        assert_eq!(run(&mut s, vec![failed, observed("web-1", "h1")]), [2]);
        assert_eq!(s.projects(t)[0].live_generations, [2]);
    }

    /// The kinds and messages of the events taken from `s`.
    fn events(s: &mut State) -> Vec<(&'static str, String)> {
        s.take_events()
            .into_iter()
            .map(|e| (e.kind, e.message))
            .collect()
    }

    /// A generation's life as events: published and placed, converged
    /// once its VMs run, a new version replaced in place, a silent
    /// worker named with how long it was silent and its VMs moved, a
    /// failed VM, a removed VM; a restored state records none of it again.
    #[test]
    fn changes_are_recorded_as_events() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        s.register(reg("b", "x:2"), 2, t).unwrap();
        let joined = events(&mut s);
        assert_eq!(
            joined[0],
            (
                "worker-joined",
                "a joined from x:1 (8 vCPU, 8192 MiB)".into()
            )
        );
        let meta = PublishMeta {
            author: "Ada".into(),
            message: "two webs".into(),
            job_id: 12,
        };
        s.publish_with_meta(
            &dp(),
            "0123456789abcdef",
            1,
            "i1",
            vec![spec("web-0", "h1"), spec("web-1", "h1")],
            &meta,
            5,
        )
        .unwrap();
        let ev = events(&mut s);
        assert_eq!(
            ev[0],
            (
                "generation-published",
                "generation 1 published from commit 0123456789ab by Ada, CI job 12: 2 VMs".into()
            )
        );
        let placed: Vec<_> = ev.iter().filter(|e| e.0 == "vm-placed").collect();
        assert_eq!(placed.len(), 2, "{ev:?}");
        let where_is = |s: &State, n: &str| {
            s.placement.assigned[&VmKey::new(dp(), n.parse().unwrap())].clone()
        };
        let (w0, w1) = (where_is(&s, "web-0"), where_is(&s, "web-1"));
        let conn = |w: &WorkerId| if w.as_str() == "a" { 1 } else { 2 };
        // Only one VM runs: not converged yet.
        s.push_data(
            &w0,
            conn(&w0),
            1,
            vec![observed("web-0", "h1")],
            WorkerMetricsView::default(),
            t,
        )
        .unwrap();
        assert!(events(&mut s).is_empty());
        let both = w0 == w1;
        let mut on_w1 = vec![observed("web-1", "h1")];
        if both {
            on_w1.push(observed("web-0", "h1"));
        }
        s.push_data(&w1, conn(&w1), 1, on_w1, WorkerMetricsView::default(), t)
            .unwrap();
        assert_eq!(
            events(&mut s),
            [(
                "generation-converged",
                "generation 1 converged: 2 of 2 VMs run it".into()
            )]
        );
        s.mark_converged(&dp(), 1, 77);
        assert_eq!(s.generations(None)[0].converged_at_ms, 77);
        assert_eq!(s.generations(None)[0].author, "Ada");

        s.publish(
            &dp(),
            "c2",
            2,
            "i2",
            vec![spec("web-0", "h2"), spec("web-1", "h1")],
            6,
        )
        .unwrap();
        let ev = events(&mut s);
        assert!(
            ev.contains(&("vm-replaced", format!("web-0 replaced on {w0}: h1 → h2"))),
            "{ev:?}"
        );

        // b falls silent: named with how long, its VMs move to a.
        let later = t + Duration::from_secs(7);
        s.push_data(&wid("a"), 1, 2, vec![], WorkerMetricsView::default(), later)
            .unwrap();
        s.tick(later);
        let ev = events(&mut s);
        assert!(
            ev.contains(&(
                "worker-unhealthy",
                "b unhealthy: no heartbeat for 7 s".into()
            )),
            "{ev:?}"
        );
        let moved: Vec<_> = ev
            .iter()
            .filter(|e| e.1.contains("moved from b to a"))
            .collect();
        assert!(
            !moved.is_empty() || (w0.as_str() == "a" && w1.as_str() == "a"),
            "{ev:?}"
        );

        let mut failed = observed("web-1", "h1");
        failed.status.state = VmState::Failed;
        failed.status.error = "cloud-hypervisor exited with status 1".into();
        s.push_data(
            &wid("a"),
            1,
            2,
            vec![failed.clone()],
            WorkerMetricsView::default(),
            later,
        )
        .unwrap();
        assert!(events(&mut s).contains(&(
            "vm-failed",
            "web-1 failed on a: cloud-hypervisor exited with status 1".into()
        )));
        // The same failure reported again is not news.
        s.push_data(
            &wid("a"),
            1,
            2,
            vec![failed],
            WorkerMetricsView::default(),
            later,
        )
        .unwrap();
        assert!(events(&mut s).iter().all(|e| e.0 != "vm-failed"));

        s.publish(&dp(), "c3", 3, "i3", vec![spec("web-0", "h2")], 7)
            .unwrap();
        assert!(events(&mut s).contains(&("vm-removed", "web-1 removed from a".into())));

        // A restart's restore: the active generation and its specs are
        // back, and nothing is recorded again.
        let history: Vec<GenerationDetailView> = [1, 2, 3]
            .iter()
            .map(|n| s.generation(&dp(), *n).unwrap().clone())
            .collect();
        let mut r = State::new(settings(), later, 2);
        r.register(reg("a", "x:1"), 1, later).unwrap();
        r.take_events();
        r.restore(history);
        assert!(r.take_events().is_empty());
        assert_eq!(r.active_generation(&dp()), 3);
        assert_eq!(r.generations(Some(&dp())).len(), 3);
        assert_eq!(r.snapshot(None).len(), 1);
    }

    fn rolled_spec(name: &str, hash: &str, max_parallel: u32) -> VmSpec {
        testkit::fixtures::spec_with(name, hash, |f| {
            f.update = Some(UpdatePolicy {
                group: "web".into(),
                max_parallel,
                min_healthy_ms: 1000,
                auto_revert: true,
            });
        })
    }

    fn web(hash: &str) -> Vec<VmSpec> {
        (0..4)
            .map(|i| rolled_spec(&format!("web-{i}"), hash, 2))
            .collect()
    }

    /// What worker `a` reports: each (name, hash, state) created at `at_ms`.
    fn report(s: &mut State, vms: &[(&str, &str, VmState)], at_ms: u64, now: Instant) {
        let running = vms
            .iter()
            .map(|(n, h, st)| {
                let mut o = observed(n, h);
                o.status.state = *st;
                o.status.created_at_ms = at_ms;
                o
            })
            .collect();
        s.push_data(&wid("a"), 1, 1, running, WorkerMetricsView::default(), now)
            .unwrap();
    }

    /// Worker `a`'s assignment, one "name hash" per VM, " held" added
    /// when it is held.
    fn told(s: &State) -> Vec<String> {
        let a = s.current_assignment(&wid("a")).unwrap();
        a.vms
            .iter()
            .map(|v| {
                let held = if a.hold.contains(&v.key()) {
                    " held"
                } else {
                    ""
                };
                format!("{} {}{held}", v.name(), v.content_hash())
            })
            .collect()
    }

    #[test]
    fn a_rollout_goes_batch_by_batch_through_the_assignments_and_reverts_a_bad_version() {
        const T0: u64 = 1_000_000;
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let mut s = State::new(settings(), t, 1).with_wall_clock(T0);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        s.publish(&dp(), "c1", 1, "i1", web("v1"), T0).unwrap();
        // The first generation has nothing to protect: all at once.
        assert_eq!(told(&s), ["web-0 v1", "web-1 v1", "web-2 v1", "web-3 v1"]);
        let all = |h: &'static str| -> Vec<(&'static str, &'static str, VmState)> {
            ["web-0", "web-1", "web-2", "web-3"]
                .into_iter()
                .map(|n| (n, h, VmState::Running))
                .collect()
        };
        report(&mut s, &all("v1"), T0, at(10));
        report(&mut s, &all("v1"), T0, at(1000));
        assert_eq!(s.generations(None)[0].rollout, "rolled");

        // Generation 2: web-0 and web-1 first, the others held.
        s.publish(&dp(), "c2", 2, "i2", web("v2"), T0 + 2000)
            .unwrap();
        assert_eq!(
            told(&s),
            ["web-0 v2", "web-1 v2", "web-2 v2 held", "web-3 v2 held",]
        );
        let st = s.cluster_status(at(2000));
        assert_eq!(st.rollouts.len(), 1);
        let r = &st.rollouts[0];
        assert_eq!(
            (
                r.group.as_str(),
                r.batch,
                r.batches,
                r.healthy,
                r.total,
                r.state.as_str()
            ),
            ("web", 1, 2, 0, 4, "rolling")
        );
        assert_eq!(st.generations[0].rollout, "rolling web 1/2");
        let mut vms = all("v1");
        vms[0].1 = "v2";
        vms[1].1 = "v2";
        report(&mut s, &vms, T0 + 2100, at(2100));
        report(&mut s, &vms, T0 + 2100, at(3099));
        assert_eq!(told(&s)[2], "web-2 v2 held", "healthy for 999 ms only");
        report(&mut s, &vms, T0 + 2100, at(3100));
        assert_eq!(told(&s), ["web-0 v2", "web-1 v2", "web-2 v2", "web-3 v2",]);
        report(&mut s, &all("v2"), T0 + 3200, at(3200));
        report(&mut s, &all("v2"), T0 + 3200, at(4200));
        assert!(s.cluster_status(at(4200)).rollouts.is_empty());
        assert_eq!(s.generations(None)[1].rollout, "rolled");

        // Generation 3 fails on web-1: the batch goes back to v2, the
        // others never leave it.
        s.publish(&dp(), "c3", 3, "i3", web("v3"), T0 + 5000)
            .unwrap();
        let mut vms = all("v2");
        vms.push(("web-1", "v3", VmState::Failed));
        report(&mut s, &vms, T0 + 5100, at(5100));
        assert_eq!(
            told(&s),
            ["web-0 v2", "web-1 v2", "web-2 v3 held", "web-3 v3 held",]
        );
        let st = s.cluster_status(at(5100));
        assert_eq!(st.rollouts[0].state, "reverted");
        assert_eq!(st.generations[0].rollout, "reverted: web-1 failed");
        assert_eq!(s.generations(None)[2].rollout, "reverted: web-1 failed");
    }

    #[test]
    fn replicas_of_a_group_must_agree_on_the_policy() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        let specs = vec![rolled_spec("web-0", "h", 1), rolled_spec("web-1", "h", 2)];
        let err = s.publish(&dp(), "c", 1, "i", specs, 0).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(
            err.message,
            "vmSpecs: web-1 and web-0 carry different update policies for group \"web\"; every replica of a group must carry the same"
        );
        assert_eq!(s.active_generation(&dp()), 0, "refused whole");
    }

    #[test]
    fn generation_rules() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "127.0.0.1:1"), 1, t).unwrap();
        let (o, e) = s
            .publish(&dp(), "c1", 2, "i2", vec![spec("web-0", "h")], 0)
            .unwrap();
        assert!(!o.noop && o.placed == 1 && e.assignments_changed);
        let (o, e) = s.publish(&dp(), "c1", 2, "i2", vec![], 0).unwrap();
        assert!(o.noop && !e.assignments_changed);
        let err = s.publish(&dp(), "c1", 2, "other", vec![], 0).unwrap_err();
        assert_eq!(err.code, ErrorCode::AlreadyExists);
        let err = s.publish(&dp(), "c0", 1, "i1", vec![], 0).unwrap_err();
        assert!(
            err.message.contains("older than the active generation 2"),
            "{err}"
        );
        let err = s
            .publish(
                &dp(),
                "c3",
                3,
                "i3",
                vec![spec("a", "h"), spec("a", "h")],
                0,
            )
            .unwrap_err();
        assert!(err.message.contains("duplicate VM name"), "{err}");
        assert_eq!(
            s.active_generation(&dp()),
            2,
            "refused publishes changed nothing"
        );
        assert_eq!(s.generations(None).len(), 1);
    }

    #[test]
    fn workers_cannot_speak_for_each_other() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "127.0.0.1:1"), 1, t).unwrap();
        let err = s.register(reg("a", "127.0.0.1:2"), 2, t).unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        let err = s
            .push_data(&wid("a"), 2, 0, vec![], WorkerMetricsView::default(), t)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        let err = s
            .push_data(&wid("zz"), 1, 0, vec![], WorkerMetricsView::default(), t)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        // The same address from another connection is refused while the
        // first connection is open: an address is only what a caller says.
        let err = s.register(reg("a", "127.0.0.1:1"), 3, t).unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        assert!(err.message.contains("another open connection"), "{err}");
        // Closing another connection changes nothing; closing its own frees the id.
        s.connection_closed(2);
        assert!(s.register(reg("a", "127.0.0.1:9"), 3, t).is_err());
        s.connection_closed(1);
        s.register(reg("a", "127.0.0.1:1"), 3, t).unwrap();
        s.push_data(&wid("a"), 3, 0, vec![], WorkerMetricsView::default(), t)
            .unwrap();
        let err = s
            .push_data(&wid("a"), 1, 0, vec![], WorkerMetricsView::default(), t)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
    }

    #[test]
    fn silent_worker_loses_its_vms_and_assignments_wake() {
        let t = Instant::now();
        let mut s = two_workers_running(t, vec![spec("web-0", "h"), spec("web-1", "h")]);
        let a = s.assignment(&wid("a"), 0, 0).unwrap().unwrap();
        let b = s.assignment(&wid("b"), 0, 0).unwrap().unwrap();
        assert_eq!((a.vms.len(), b.vms.len()), (1, 1));
        assert!(
            s.assignment(&wid("a"), a.generation, a.revision)
                .unwrap()
                .is_none()
        );
        let later = t + Duration::from_secs(6);
        s.push_data(&wid("a"), 1, 1, vec![], WorkerMetricsView::default(), later)
            .unwrap();
        assert!(s.tick(later).assignments_changed);
        let a2 = s
            .assignment(&wid("a"), a.generation, a.revision)
            .unwrap()
            .unwrap();
        assert_eq!(a2.vms.len(), 2);
        let status = s.cluster_status(later);
        assert!(!status.workers[1].healthy);
    }

    #[test]
    fn restarted_control_plane_adopts_running_vms_after_grace() {
        let t = Instant::now();
        let grace = Settings {
            startup_grace: Duration::from_secs(1),
            ..settings()
        };
        let mut s = State::new(grace, t, 1000);
        for (id, conn) in [("a", 1), ("b", 2)] {
            s.register(reg(id, id), conn, t).unwrap();
        }
        // The re-publish arrives before the workers' first reports: its
        // placement (web spread over a and b) is made blind.
        let specs = vec![spec("web-0", "h"), spec("web-1", "h"), spec("web-2", "h")];
        s.publish(&dp(), "c", 7, "i", specs, 0).unwrap();
        assert!(
            s.assignment(&wid("b"), 7, 5).unwrap().is_none(),
            "withheld during grace"
        );
        // Then b reports what an earlier control plane placed: all three.
        let running = vec![
            observed("web-0", "h"),
            observed("web-1", "h"),
            observed("web-2", "h"),
        ];
        s.push_data(&wid("b"), 2, 7, running, WorkerMetricsView::default(), t)
            .unwrap();
        assert!(s.tick(t + Duration::from_secs(2)).assignments_changed);
        let b = s.assignment(&wid("b"), 7, 5).unwrap().unwrap();
        assert_eq!(b.vms.len(), 3, "adopted where they run");
        let a = s.assignment(&wid("a"), 0, 0).unwrap().unwrap();
        assert!(a.vms.is_empty());
        let st = s.cluster_status(t);
        assert_eq!(st.convergence_percent, 100.0);
    }

    #[test]
    fn a_worker_reporting_late_keeps_its_vms() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1000);
        s.register(reg("a", "a"), 1, t).unwrap();
        let specs = vec![spec("web-0", "h"), spec("web-1", "h")];
        s.publish(&dp(), "c", 3, "i", specs, 0).unwrap();
        // Blind: both on a. Then b registers and reports running both.
        assert_eq!(s.assignment(&wid("a"), 0, 0).unwrap().unwrap().vms.len(), 2);
        s.register(reg("b", "b"), 2, t).unwrap();
        let running = vec![observed("web-0", "h"), observed("web-1", "h")];
        let e = s
            .push_data(&wid("b"), 2, 3, running, WorkerMetricsView::default(), t)
            .unwrap();
        assert!(e.assignments_changed);
        assert_eq!(s.assignment(&wid("b"), 0, 0).unwrap().unwrap().vms.len(), 2);
        assert!(
            s.assignment(&wid("a"), 0, 0)
                .unwrap()
                .unwrap()
                .vms
                .is_empty()
        );
        // Steady state: the next report changes nothing.
        let running = vec![observed("web-0", "h"), observed("web-1", "h")];
        let e = s
            .push_data(&wid("b"), 2, 3, running, WorkerMetricsView::default(), t)
            .unwrap();
        assert!(!e.assignments_changed);
    }

    #[test]
    fn status_reports_drift_and_orphans() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x"), 1, t).unwrap();
        s.publish(
            &dp(),
            "c",
            1,
            "i",
            vec![spec("web-0", "new"), spec("db-0", "h")],
            0,
        )
        .unwrap();
        s.push_data(
            &wid("a"),
            1,
            1,
            vec![observed("web-0", "old"), observed("stray", "h")],
            WorkerMetricsView::default(),
            t,
        )
        .unwrap();
        let st = s.cluster_status(t);
        let drift: BTreeMap<&str, Drift> =
            st.vms.iter().map(|v| (v.name.as_str(), v.drift)).collect();
        assert_eq!(drift["web-0"], Drift::Drifted);
        assert_eq!(drift["db-0"], Drift::Pending);
        assert_eq!(drift["stray"], Drift::Orphaned);
        assert_eq!(st.convergence_percent, 0.0);
        assert_eq!(
            st.workers[0].allocated,
            Resources {
                cpu: 2,
                memory_mb: 256
            }
        );
    }

    /// A worker replacing a VM reports both versions of its name for a
    /// moment (new one first booting, then running while the old one
    /// stops). That is one row for the name, never an orphan, counted as
    /// converged only once the old version is gone; and it moves nothing.
    #[test]
    fn both_versions_during_a_replacement_are_one_row() {
        let t = Instant::now();
        let mut s = two_workers_running(t, vec![spec("web-0", "h1")]);
        let on = s
            .placement
            .assigned
            .get(&VmKey::new(dp(), "web-0".parse().unwrap()))
            .cloned()
            .unwrap();
        let conn = if on == wid("a") { 1 } else { 2 };
        s.push_data(
            &on,
            conn,
            1,
            vec![observed("web-0", "h1")],
            WorkerMetricsView::default(),
            t,
        )
        .unwrap();
        s.publish(&dp(), "c", 2, "i2", vec![spec("web-0", "h2")], 0)
            .unwrap();
        let revision = s.assignment(&on, 0, 0).unwrap().unwrap().revision;

        let old = observed("web-0", "h1");
        let mut new = observed("web-0", "h2");
        let mut row = |running: Vec<ObservedVm>| {
            let e = s
                .push_data(&on, conn, 1, running, WorkerMetricsView::default(), t)
                .unwrap();
            assert!(!e.assignments_changed, "a replacement moves nothing");
            let st = s.cluster_status(t);
            assert_eq!(st.vms.len(), 1, "one row per name: {:?}", st.vms);
            let v = st.vms[0].clone();
            assert_eq!(
                (v.name.as_str(), v.worker_id.as_str()),
                ("web-0", on.as_str())
            );
            (v.observed_hash, v.drift, v.vm_id, st.convergence_percent)
        };
        // Not started yet: the old version drifted.
        assert_eq!(
            row(vec![old.clone()]),
            ("h1".into(), Drift::Drifted, old.status.id.to_string(), 0.0)
        );
        // The new one boots beside the old.
        new.status.state = VmState::Creating;
        assert_eq!(
            row(vec![old.clone(), new.clone()]),
            ("h2".into(), Drift::Pending, new.status.id.to_string(), 0.0)
        );
        // Running, the old one being stopped: not converged yet.
        new.status.state = VmState::Running;
        let mut stopping = old.clone();
        stopping.status.state = VmState::Stopping;
        assert_eq!(
            row(vec![stopping, new.clone()]),
            ("h2".into(), Drift::Pending, new.status.id.to_string(), 0.0)
        );
        // The old one is gone.
        assert_eq!(
            row(vec![new.clone()]),
            (
                "h2".into(),
                Drift::Converged,
                new.status.id.to_string(),
                100.0
            )
        );
        // The new version failed while the old one still runs.
        new.status.state = VmState::Failed;
        assert_eq!(
            row(vec![old.clone(), new.clone()]),
            ("h2".into(), Drift::Failed, new.status.id.to_string(), 0.0)
        );
        assert_eq!(
            s.assignment(&on, 0, 0).unwrap().unwrap().revision,
            revision,
            "the assignment did not change"
        );
    }

    // ---- projects ----------------------------------------------------------

    fn project(p: &str) -> ProjectName {
        p.parse().unwrap()
    }

    /// `observed` as a VM of `p`.
    fn observed_in(p: &str, name: &str, hash: &str) -> ObservedVm {
        let mut o = observed(name, hash);
        o.status.project = project(p);
        o
    }

    /// (worker, vm id) of every row of project `p`, by name.
    fn rows_of(s: &State, p: &str, t: Instant) -> BTreeMap<String, (String, String)> {
        s.cluster_status(t)
            .vms
            .into_iter()
            .filter(|v| v.project == p)
            .map(|v| (v.name, (v.worker_id, v.vm_id)))
            .collect()
    }

    fn limits(cpu: u32, memory_mb: u64, vms: u32) -> Limits {
        Limits {
            cpu,
            memory_mb,
            vms,
        }
    }

    /// Each worker reports the VMs the state assigned to it as running,
    /// as a worker would: one id per (project, name, hash), kept in `ids`
    /// across reports.
    fn report_assigned(s: &mut State, ids: &mut BTreeMap<(VmKey, String), VmId>, t: Instant) {
        for (id, conn) in [("a", 1), ("b", 2)] {
            let running: Vec<ObservedVm> = s
                .current_assignment(&wid(id))
                .unwrap()
                .vms
                .iter()
                .map(|spec| {
                    let mut o =
                        observed_in(spec.project(), spec.name().as_str(), spec.content_hash());
                    o.status.id = ids
                        .entry((spec.key(), spec.content_hash().to_owned()))
                        .or_insert_with(VmId::new_v7)
                        .clone();
                    o
                })
                .collect();
            s.push_data(&wid(id), conn, 1, running, WorkerMetricsView::default(), t)
                .unwrap();
        }
    }

    #[test]
    fn two_projects_with_the_same_vm_names_are_two_sets_of_vms() {
        let mut ids = BTreeMap::new();
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        s.register(reg("b", "x:2"), 2, t).unwrap();
        let (oa, _) = s
            .publish(
                &project("team-a"),
                "ca",
                1,
                "ia",
                vec![spec("web-0", "h"), spec("web-1", "h")],
                0,
            )
            .unwrap();
        let (ob, _) = s
            .publish(
                &project("team-b"),
                "cb",
                1,
                "ib",
                vec![spec("web-0", "h")],
                0,
            )
            .unwrap();
        assert_eq!((oa.project.as_str(), oa.placed), ("team-a", 2));
        assert_eq!(
            (ob.project.as_str(), ob.placed),
            ("team-b", 1),
            "b's web-0 is not a's"
        );
        // Generation numbers are per project: both are at 1.
        assert_eq!(s.active_generation(&project("team-a")), 1);
        assert_eq!(s.active_generation(&project("team-b")), 1);
        let st = s.cluster_status(t);
        let mut names: Vec<String> = st
            .vms
            .iter()
            .map(|v| format!("{}/{}", v.project, v.name))
            .collect();
        names.sort();
        assert_eq!(names, ["team-a/web-0", "team-a/web-1", "team-b/web-0"]);
        assert_eq!(st.generations.len(), 2);
        // Each worker's assignment carries each spec's project.
        let mut assigned: Vec<String> = ["a", "b"]
            .iter()
            .flat_map(|w| s.current_assignment(&wid(w)).unwrap().vms)
            .map(|v| format!("{}/{}", v.project(), v.name()))
            .collect();
        assigned.sort();
        assert_eq!(assigned, names);
        // Running reports of both web-0s converge both rows, neither is an orphan.
        report_assigned(&mut s, &mut ids, t);
        let st = s.cluster_status(t);
        assert_eq!(st.convergence_percent, 100.0, "{:?}", st.vms);
        assert!(st.vms.iter().all(|v| v.drift == Drift::Converged));
    }

    #[test]
    fn publishing_a_twice_changes_nothing_of_b() {
        let mut ids = BTreeMap::new();
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        s.register(reg("b", "x:2"), 2, t).unwrap();
        let b_specs = vec![spec("web-0", "hb"), spec("web-1", "hb"), spec("db-0", "hb")];
        s.publish(&project("b"), "cb", 4, "ib", b_specs, 0).unwrap();
        s.publish(&project("a"), "c1", 1, "i1", vec![spec("web-0", "h1")], 0)
            .unwrap();
        report_assigned(&mut s, &mut ids, t);
        let b_before = rows_of(&s, "b", t);
        let b_assigned: Vec<Vec<VmSpec>> = ["a", "b"]
            .iter()
            .map(|w| {
                let mut v = s.current_assignment(&wid(w)).unwrap().vms;
                v.retain(|x| x.project() == "b");
                v
            })
            .collect();
        assert!(
            b_before
                .values()
                .all(|(w, id)| !w.is_empty() && !id.is_empty())
        );

        // A changes its web-0 and adds two VMs, then deletes everything.
        s.publish(
            &project("a"),
            "c2",
            2,
            "i2",
            vec![spec("web-0", "h2"), spec("web-1", "h2"), spec("db-0", "h2")],
            0,
        )
        .unwrap();
        report_assigned(&mut s, &mut ids, t);
        assert_eq!(rows_of(&s, "b", t), b_before, "b's placements and VM ids");
        let (o, _) = s.publish(&project("a"), "c3", 3, "i3", vec![], 0).unwrap();
        assert_eq!(o.placed, 0);
        report_assigned(&mut s, &mut ids, t);
        assert_eq!(rows_of(&s, "b", t), b_before, "b's placements and VM ids");
        assert!(
            rows_of(&s, "a", t).is_empty(),
            "an empty generation deletes a's VMs"
        );
        let b_after: Vec<Vec<VmSpec>> = ["a", "b"]
            .iter()
            .map(|w| {
                let mut v = s.current_assignment(&wid(w)).unwrap().vms;
                v.retain(|x| x.project() == "b");
                v
            })
            .collect();
        assert_eq!(b_after, b_assigned, "b's assignments");
        assert_eq!(s.active_generation(&project("b")), 4);
        assert_eq!(s.generations(Some(&project("a"))).len(), 3);
        assert_eq!(s.generations(None).len(), 4);
    }

    #[test]
    fn over_quota_unknown_project_and_foreign_specs_are_refused_whole() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        let quotas = QuotaConfig::new(None, [(project("a"), limits(2, 1024, 2))].into());
        s.set_quotas(quotas);
        s.publish(&project("a"), "c1", 1, "i1", vec![spec("web-0", "h")], 0)
            .unwrap();
        let before = s.cluster_status(t);

        let three = vec![
            spec("web-0", "h2"),
            spec("web-1", "h2"),
            spec("web-2", "h2"),
        ];
        let err = s
            .publish(&project("a"), "c2", 2, "i2", three, 0)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert_eq!(
            err.message,
            "generation 2 of project a needs 3 vCPU, 384 MiB, 3 VMs, over its quota of 2 vCPU, 1024 MiB, 2 VMs; the active generation stays"
        );
        let err = s
            .publish(&project("stranger"), "c1", 1, "i1", vec![spec("x", "h")], 0)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(err.message.starts_with("unknown project stranger"), "{err}");
        let foreign = spec("web-0", "h3").with_project(project("b"));
        let err = s
            .publish(&project("a"), "c3", 3, "i3", vec![foreign], 0)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(
            err.message,
            "vmSpecs: web-0 names project b but is published for project a"
        );
        assert_eq!(
            s.cluster_status(t),
            before,
            "refused publishes changed nothing"
        );
        assert_eq!(s.active_generation(&project("a")), 1);
        assert_eq!(s.generations(None).len(), 1);
    }

    /// A lowered quota (a SIGHUP reload) is never exceeded by the
    /// scheduler, although the workers have room: the project's VMs past it
    /// are unplaced with the numbers; another project is unaffected.
    #[test]
    fn the_scheduler_never_exceeds_a_quota_even_with_free_capacity() {
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        s.register(reg("b", "x:2"), 2, t).unwrap();
        let four: Vec<VmSpec> = (0..4).map(|i| spec(&format!("web-{i}"), "h")).collect();
        s.publish(&project("a"), "c1", 1, "i1", four.clone(), 0)
            .unwrap();
        s.publish(&project("b"), "c1", 1, "i1", four, 0).unwrap();
        let e = s.set_quotas(QuotaConfig::new(
            Some(limits(100, 100_000, 100)),
            [(project("a"), limits(100, 100_000, 2))].into(),
        ));
        assert!(e.assignments_changed);
        let ps = s.projects(t);
        let a = ps.iter().find(|p| p.project == "a").unwrap();
        assert_eq!((a.placed, a.unplaced), (2, 2));
        assert_eq!(a.quota, limits(100, 100_000, 2));
        let b = ps.iter().find(|p| p.project == "b").unwrap();
        assert_eq!((b.placed, b.unplaced), (4, 0));
        let st = s.cluster_status(t);
        let why: Vec<&str> = st.unplaced.iter().map(|u| u.reason.as_str()).collect();
        assert_eq!(
            why,
            ["over the quota of project a: placing it would use 3 vCPU, 384 MiB, 3 VMs of 100 vCPU, 100000 MiB, 2 VMs";
                2]
        );
        let free: u32 = st.workers.iter().map(|w| w.free().cpu).sum();
        assert!(free >= 2, "capacity was free: {free} cpu");
        // Raised again: everything is placed.
        s.set_quotas(QuotaConfig::unlimited());
        assert!(s.cluster_status(t).unplaced.is_empty());
    }

    /// A publish places only its project's VMs; a full reschedule right
    /// after it changes nothing: the same placement, no assignment moves.
    #[test]
    fn a_publish_places_the_same_as_a_full_reschedule() {
        let mut ids = BTreeMap::new();
        let t = Instant::now();
        let mut s = State::new(settings(), t, 1);
        s.register(reg("a", "x:1"), 1, t).unwrap();
        s.register(reg("b", "x:2"), 2, t).unwrap();
        let web = |n: usize, h: &str| -> Vec<VmSpec> {
            (0..n).map(|i| spec(&format!("web-{i}"), h)).collect()
        };
        s.publish(&project("b"), "c", 1, "i", web(3, "b1"), 0)
            .unwrap();
        s.publish(&project("a"), "c", 1, "i", web(2, "a1"), 0)
            .unwrap();
        report_assigned(&mut s, &mut ids, t);
        for (n, (count, hash)) in [(4, "a2"), (1, "a3"), (5, "a4"), (0, "a5")]
            .into_iter()
            .enumerate()
        {
            s.publish(&project("a"), "c", 2 + n as u64, hash, web(count, hash), 0)
                .unwrap();
            report_assigned(&mut s, &mut ids, t);
            let placement = s.placement.clone();
            let revisions: Vec<u64> = s.workers.values().map(|w| w.revision).collect();
            let e = s.reschedule();
            assert_eq!(s.placement, placement, "after publishing {count} VMs of a");
            assert!(!e.assignments_changed);
            assert_eq!(
                s.workers.values().map(|w| w.revision).collect::<Vec<_>>(),
                revisions
            );
        }
    }
}
