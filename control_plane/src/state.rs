//! The control plane's whole state, in memory by design, and every rule
//! that changes it: publishing generations, registering workers, heartbeats
//! and health, scheduling, and the views clients read.
//!
//! Pure and synchronous: methods take `now` instead of reading a clock, so
//! the rules are unit-tested without timers. The RPC layer owns one `State`
//! behind an `Rc<RefCell<_>>` on a single-threaded `LocalSet`; no method
//! awaits, so a borrow never spans a suspension point.
//!
//! Invariant: a refused call (any `Err`) changes nothing.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use commands::convert::{ErrorCode, RpcFailure};
use commands::types::{Labels, Resources, VmMetrics, VmName, VmSpec, VmState, WorkerId};

use crate::scheduler::{self, Placement, WorkerSlot};
use commands::model::{
    AssignmentView, ClusterStatusView, Drift, GenerationView, MAX_VMS_PER_WORKER, ObservedVm,
    PublishOutcomeView, Registration, UnplacedView, VmPlacementView, WorkerHealthView,
    WorkerMetricsView,
};

/// How many past generations `listGenerations` remembers.
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

#[derive(Debug)]
struct Active {
    record: GenerationView,
    specs: BTreeMap<VmName, VmSpec>,
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
    active: Option<Active>,
    history: VecDeque<GenerationView>,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    placement: Placement,
    revision_counter: u64,
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
            active: None,
            history: VecDeque::new(),
            workers: BTreeMap::new(),
            placement: Placement::default(),
            revision_counter: revision_seed,
        }
    }

    pub fn active_generation(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.record.number)
    }

    // ---- publish -----------------------------------------------------------

    pub fn publish(
        &mut self,
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
        let mut by_name = BTreeMap::new();
        for s in specs {
            let name = s.name().clone();
            if by_name.insert(name.clone(), s).is_some() {
                return Err(RpcFailure::invalid(format!(
                    "vmSpecs: duplicate VM name {name:?}"
                )));
            }
        }
        if let Some(a) = &self.active {
            let cur = &a.record;
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
                    return Ok((self.outcome(generation, true), Effects::default()));
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
        let record = GenerationView {
            number: generation,
            commit: commit.to_owned(),
            intent_hash: intent_hash.to_owned(),
            vm_count: u32::try_from(by_name.len()).unwrap_or(u32::MAX),
            published_at_ms: now_ms,
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(record.clone());
        self.active = Some(Active {
            record,
            specs: by_name,
        });
        let effects = self.reschedule();
        Ok((self.outcome(generation, false), effects))
    }

    fn outcome(&self, generation: u64, noop: bool) -> PublishOutcomeView {
        PublishOutcomeView {
            generation,
            noop,
            placed: u32::try_from(self.placement.assigned.len()).unwrap_or(u32::MAX),
            unplaced: self.unplaced_views(),
        }
    }

    fn unplaced_views(&self) -> Vec<UnplacedView> {
        self.placement
            .unplaced
            .iter()
            .map(|(n, r)| UnplacedView {
                name: n.to_string(),
                reason: r.clone(),
            })
            .collect()
    }

    pub fn generations(&self) -> Vec<GenerationView> {
        self.history.iter().cloned().collect()
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
        let misplaced = self.active.as_ref().is_some_and(|a| {
            self.workers[worker].running.iter().any(|vm| {
                vm.status.state != VmState::Failed
                    && a.specs.contains_key(&vm.status.name)
                    && self.placement.assigned.get(&vm.status.name) != Some(worker)
            })
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

    /// Runs the scheduler on the active generation and live workers, and
    /// bumps the revision of every worker whose assigned specs changed.
    fn reschedule(&mut self) -> Effects {
        let Some(active) = &self.active else {
            return Effects::default();
        };
        let specs: Vec<VmSpec> = active.specs.values().cloned().collect();
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
        let mut observed_on: BTreeMap<&VmName, Vec<&WorkerId>> = BTreeMap::new();
        for (id, w) in self.workers.iter().filter(|(_, w)| w.healthy) {
            for vm in &w.running {
                if active.specs.contains_key(&vm.status.name) && vm.status.state != VmState::Failed
                {
                    observed_on.entry(&vm.status.name).or_default().push(id);
                }
            }
        }
        let mut previous = BTreeMap::new();
        for name in active.specs.keys() {
            let assigned = self.placement.assigned.get(name);
            let observed = observed_on.get(name);
            let pick = match (assigned, observed) {
                (Some(a), Some(o)) if o.contains(&a) => Some(a),
                (_, Some(o)) => o.first().copied(),
                (a, None) => a,
            };
            if let Some(w) = pick {
                previous.insert(name.clone(), w.clone());
            }
        }
        self.placement = scheduler::schedule(&specs, &live, &previous);

        let mut per_worker: BTreeMap<&WorkerId, Vec<VmSpec>> = BTreeMap::new();
        for (vm, w) in &self.placement.assigned {
            per_worker
                .entry(w)
                .or_default()
                .push(active.specs[vm].clone());
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
        if !self.grace_over || self.active.is_none() {
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
        let (generation, commit) = self.active.as_ref().map_or((0, String::new()), |a| {
            (a.record.number, a.record.commit.clone())
        });
        Ok(AssignmentView {
            changed: false,
            worker_id: worker.to_string(),
            generation,
            commit,
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
        let mut converged = 0usize;
        let desired = self.active.as_ref().map(|a| &a.specs);
        // Observed VMs accounted for by a desired entry, per worker.
        let mut claimed: BTreeMap<&WorkerId, Vec<bool>> = self
            .workers
            .iter()
            .map(|(id, w)| (id, vec![false; w.running.len()]))
            .collect();

        for (name, spec) in desired.into_iter().flatten() {
            let worker = self.placement.assigned.get(name);
            let mut view = VmPlacementView {
                name: name.to_string(),
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
                    .position(|o| {
                        o.status.name == *name && o.status.content_hash == spec.content_hash()
                    })
                    .or_else(|| running.iter().position(|o| o.status.name == *name));
                let mut others = 0usize;
                if let Some(c) = claimed.get_mut(w.0) {
                    for (j, o) in running.iter().enumerate() {
                        if o.status.name == *name {
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
                        converged += 1;
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
        let total = desired.map_or(0, BTreeMap::len);
        let convergence_percent = if total == 0 {
            100.0
        } else {
            converged as f64 * 100.0 / total as f64
        };

        let mut allocated: BTreeMap<&WorkerId, Resources> = BTreeMap::new();
        if let Some(d) = desired {
            for (vm, w) in &self.placement.assigned {
                let r = allocated.entry(w).or_default();
                r.cpu = r.cpu.saturating_add(d[vm].cpu());
                r.memory_mb = r.memory_mb.saturating_add(d[vm].memory_mb());
            }
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
            active: self.active.as_ref().map(|a| a.record.clone()),
            convergence_percent,
            vms,
            workers,
            unplaced: self.unplaced_views(),
        }
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
        s.publish("c", 1, "i", specs, 0).unwrap();
        s
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
            .publish("c1", 2, "i2", vec![spec("web-0", "h")], 0)
            .unwrap();
        assert!(!o.noop && o.placed == 1 && e.assignments_changed);
        let (o, e) = s.publish("c1", 2, "i2", vec![], 0).unwrap();
        assert!(o.noop && !e.assignments_changed);
        let err = s.publish("c1", 2, "other", vec![], 0).unwrap_err();
        assert_eq!(err.code, ErrorCode::AlreadyExists);
        let err = s.publish("c0", 1, "i1", vec![], 0).unwrap_err();
        assert!(
            err.message.contains("older than the active generation 2"),
            "{err}"
        );
        let err = s
            .publish("c3", 3, "i3", vec![spec("a", "h"), spec("a", "h")], 0)
            .unwrap_err();
        assert!(err.message.contains("duplicate VM name"), "{err}");
        assert_eq!(
            s.active_generation(),
            2,
            "refused publishes changed nothing"
        );
        assert_eq!(s.generations().len(), 1);
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
        s.publish("c", 7, "i", specs, 0).unwrap();
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
        s.publish("c", 3, "i", specs, 0).unwrap();
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
            .get(&"web-0".parse::<VmName>().unwrap())
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
        s.publish("c", 2, "i2", vec![spec("web-0", "h2")], 0)
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
}
