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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use commands::convert::{ErrorCode, RpcFailure};
use commands::types::{
    Labels, ProjectName, Resources, VmKey, VmMetrics, VmSpec, VmState, WorkerId,
};

use crate::quota::{QuotaConfig, UNLIMITED};
use crate::scheduler::{self, Placement, Quotas, WorkerSlot};
use commands::model::{
    AssignmentView, ClusterStatusView, Drift, GenerationView, Limits, MAX_VMS_PER_WORKER,
    ObservedVm, ProjectStatusView, PublishOutcomeView, Registration, UnplacedView, VmPlacementView,
    WorkerHealthView, WorkerMetricsView,
};

/// How many past generations `listGenerations` remembers per project.
const HISTORY: usize = 100;
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
    history: VecDeque<GenerationView>,
}

/// What a state change means for the RPC layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Some worker's assignment changed: wake the long-polls.
    pub assignments_changed: bool,
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
        }
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
        check_text("commit", commit, false)?;
        check_text("intentHash", intent_hash, false)?;
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
            ..GenerationView::default()
        };
        let entry = self.projects.entry(project.clone()).or_default();
        if entry.history.len() == HISTORY {
            entry.history.pop_front();
        }
        entry.history.push_back(record.clone());
        entry.active = Some(record);
        remove_project(&mut self.desired, project);
        self.desired.extend(
            by_name
                .into_iter()
                .map(|(name, spec)| (VmKey::new(project.clone(), name), spec)),
        );
        // Only this project's VMs need placing, unless another project has
        // VMs waiting for room (this publish may free some) or the workers
        // have not reported yet: then everything is placed again.
        let others_waiting = self
            .placement
            .unplaced
            .keys()
            .any(|k| k.project != *project);
        let effects = if self.grace_over && !others_waiting {
            self.reschedule_project(project)
        } else {
            self.reschedule()
        };
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
            .flat_map(|(_, p)| p.history.iter().cloned())
            .collect()
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
        entry.last_seen = now;
        entry.observed_generation = observed_generation;
        entry.running = running;
        entry.metrics = metrics;
        if !entry.healthy {
            tracing::info!(worker_id = %worker, "worker healthy again");
            entry.healthy = true;
            return Ok(self.reschedule());
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
        if misplaced {
            return Ok(self.reschedule());
        }
        Ok(Effects::default())
    }

    /// Periodic: marks silent workers unhealthy (moving their VMs) and ends
    /// the startup grace period.
    pub fn tick(&mut self, now: Instant) -> Effects {
        let mut changed = false;
        for (id, w) in &mut self.workers {
            let silent = now.saturating_duration_since(w.last_seen);
            if w.healthy && silent > self.settings.heartbeat_timeout {
                tracing::warn!(worker_id = %id, silent_ms = silent.as_millis() as u64, "worker unhealthy; moving its VMs");
                w.healthy = false;
                changed = true;
            }
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
            self.reschedule();
            effects.assignments_changed = true;
        }
        effects
    }

    // ---- scheduling --------------------------------------------------------

    /// Runs the scheduler on every project's desired VMs and the live
    /// workers, and bumps the revision of every worker whose assigned specs
    /// changed.
    fn reschedule(&mut self) -> Effects {
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
                .push(self.desired[vm].clone());
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
                .push(self.desired[vm].clone());
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
                }
            })
            .collect()
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
