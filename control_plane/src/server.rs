//! The control plane's side of `Master`: each call becomes a `State`
//! method, the workers' capabilities are kept for `getWorker`, and
//! `getAssignment` long-polls. `commands::service::master` serves this over
//! Cap'n Proto and has already checked the caller's role, so nothing here
//! sees the wire.
//!
//! Single-threaded by design: the RPC objects are `!Send`, so the whole
//! server runs on one `LocalSet` and shares `Rc<Shared>`. No `RefCell`
//! borrow is held across an `.await`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use commands::convert::{ErrorCode, RpcFailure};
use commands::model::{
    AssignmentView, ClusterStatusView, EventView, GenerationDetailView, GenerationView,
    ProjectStatusView, PublishOutcomeView, Registration, event_kind,
};
use commands::service::master::{Caller, EventFilter, MasterApi, Poll, Publish, Report};
use commands::service::worker::WorkerCap;
use commands::telemetry::now_ms;
use commands::types::{ProjectName, WorkerId};
use tokio::sync::watch;

use crate::events::EventLog;
use crate::metrics::ControlPlaneMetrics;
use crate::state::{Effects, State};
use crate::store::{Store, StoreError};

/// State shared by every connection's `Master` object.
#[derive(Debug)]
pub struct Shared {
    pub state: RefCell<State>,
    /// Numbered, stamped events (what `State` recorded), bounded.
    log: RefCell<EventLog>,
    /// Where accepted changes are written through (`--state-dir`).
    store: RefCell<Option<Store>>,
    /// Worker capabilities by id (the latest registration's).
    caps: RefCell<BTreeMap<WorkerId, WorkerCap>>,
    /// Bumped whenever any assignment changes; long-polls wait on it.
    changes: watch::Sender<u64>,
    long_poll_timeout: Duration,
    /// Counted here, per RPC method; served on `--metrics-listen`.
    pub metrics: ControlPlaneMetrics,
}

impl Shared {
    pub fn new(state: State, long_poll_timeout: Duration) -> Rc<Self> {
        Self::with_store(state, EventLog::default(), None, long_poll_timeout)
    }

    /// Like [`Self::new`], with the events a previous run left and the
    /// store to write accepted changes to.
    pub fn with_store(
        state: State,
        log: EventLog,
        store: Option<Store>,
        long_poll_timeout: Duration,
    ) -> Rc<Self> {
        Rc::new(Shared {
            state: RefCell::new(state),
            log: RefCell::new(log),
            store: RefCell::new(store),
            caps: RefCell::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            long_poll_timeout,
            metrics: ControlPlaneMetrics::default(),
        })
    }

    /// Wakes the long-polls if an assignment changed, and records what
    /// the change left in the event log (and the store).
    pub fn apply(&self, effects: Effects) {
        if effects.assignments_changed {
            self.changes.send_modify(|n| *n += 1);
        }
        self.record_events();
    }

    /// Numbers and stamps the events `State` left, counts them, stamps a
    /// convergence on its generation, and writes them through.
    fn record_events(&self) {
        let drafts = self.state.borrow_mut().take_events();
        if drafts.is_empty() {
            return;
        }
        let at = now_ms();
        let mut recorded = Vec::with_capacity(drafts.len());
        {
            let mut log = self.log.borrow_mut();
            for d in drafts {
                let e = log.record(d, at);
                self.metrics.event(&e.kind);
                tracing::info!(event_id = e.id, kind = %e.kind, project = %e.project, vm = %e.vm,
                    worker_id = %e.worker_id, generation = e.generation, "{}", e.message);
                recorded.push(e);
            }
        }
        for e in recorded
            .iter()
            .filter(|e| e.kind == event_kind::GENERATION_CONVERGED)
        {
            if let Ok(p) = e.project.parse::<ProjectName>() {
                self.state.borrow_mut().mark_converged(&p, e.generation, at);
            }
            self.persist("convergence", |s| {
                s.set_converged(&e.project, e.generation, at)
            });
        }
        // A rollout's step changed its generation's line: kept, so a
        // restart resumes a paused or reverted rollout as it was.
        let mut rollouts: Vec<(&str, u64)> = recorded
            .iter()
            .filter(|e| e.kind.starts_with("rollout-"))
            .map(|e| (e.project.as_str(), e.generation))
            .collect();
        rollouts.dedup();
        for (project, number) in rollouts {
            let line = project.parse::<ProjectName>().ok().and_then(|p| {
                let st = self.state.borrow();
                st.generation(&p, number)
                    .map(|g| g.generation.rollout.clone())
            });
            if let Some(line) = line {
                self.persist("rollout", |s| s.set_rollout(project, number, &line));
            }
        }
        self.persist("events", |s| s.save_events(&recorded));
    }

    /// Runs `write` on the store, if there is one. A failed write is
    /// logged and counted (`control_plane_store_errors_total`); the change
    /// stays in memory and is served, only a restart would forget it.
    fn persist(&self, what: &str, write: impl FnOnce(&mut Store) -> Result<(), StoreError>) {
        if let Some(store) = self.store.borrow_mut().as_mut()
            && let Err(e) = write(store)
        {
            self.metrics.store_error();
            tracing::error!(what, error = %commands::report::error_chain(&e),
                "state not persisted; it stays in memory until a restart");
        }
    }

    /// Runs the periodic health check.
    pub fn tick(&self) {
        let effects = self.state.borrow_mut().tick(Instant::now());
        self.apply(effects);
    }
}

impl MasterApi for Shared {
    fn publish(&self, _: &Caller, p: Publish) -> Result<PublishOutcomeView, RpcFailure> {
        let started = Instant::now();
        let published = self.state.borrow_mut().publish_with_meta(
            &p.project,
            &p.commit,
            p.generation,
            &p.intent_hash,
            p.specs,
            &p.meta,
            now_ms(),
        );
        self.metrics.call("publish", &published);
        let (outcome, effects) = published?;
        self.metrics.published(
            p.project.as_str(),
            outcome.noop,
            outcome.placed,
            started.elapsed(),
        );
        if !outcome.noop {
            let record = self
                .state
                .borrow()
                .generation(&p.project, p.generation)
                .cloned();
            if let Some(g) = record {
                self.persist("generation", |s| s.save_generation(&g));
            }
        }
        self.apply(effects);
        tracing::info!(project = %p.project, generation = p.generation, commit = %p.commit, noop = outcome.noop, placed = outcome.placed,
            unplaced = outcome.unplaced.len(), "generation published");
        Ok(outcome)
    }

    fn register(
        &self,
        caller: &Caller,
        reg: Registration,
        worker: WorkerCap,
    ) -> Result<(), RpcFailure> {
        let id = reg.worker_id.clone();
        let registered = self
            .state
            .borrow_mut()
            .register(reg, caller.conn, Instant::now());
        self.metrics.call("register", &registered);
        let effects = registered?;
        self.caps.borrow_mut().insert(id, worker);
        self.apply(effects);
        Ok(())
    }

    /// Answers at once when there is something newer than what `poll` has
    /// seen, otherwise as soon as an assignment changes, otherwise after the
    /// long-poll timeout with `changed = false`.
    async fn get_assignment(&self, _: &Caller, poll: Poll) -> Result<AssignmentView, RpcFailure> {
        let answer = self.long_poll(poll).await;
        self.metrics.call("getAssignment", &answer);
        answer
    }

    fn push_data(&self, caller: &Caller, report: Report) -> Result<(), RpcFailure> {
        let pushed = self.state.borrow_mut().push_data(
            &report.worker_id,
            caller.conn,
            report.observed_generation,
            report.running,
            report.metrics,
            Instant::now(),
        );
        self.metrics.call("pushData", &pushed);
        self.apply(pushed?);
        Ok(())
    }

    fn cluster_status(&self, _: &Caller) -> ClusterStatusView {
        self.metrics.call::<()>("clusterStatus", &Ok(()));
        self.state.borrow().cluster_status(Instant::now())
    }

    fn get_worker(&self, _: &Caller, worker: &WorkerId) -> Result<WorkerCap, RpcFailure> {
        let cap = self.caps.borrow().get(worker).cloned().ok_or_else(|| {
            RpcFailure::new(ErrorCode::NotFound, format!("unknown worker {worker}"))
        });
        self.metrics.call("getWorker", &cap);
        cap
    }

    fn generations(&self, _: &Caller, project: Option<&ProjectName>) -> Vec<GenerationView> {
        self.metrics.call::<()>("generations", &Ok(()));
        self.state.borrow().generations(project)
    }

    fn projects(&self, _: &Caller) -> Vec<ProjectStatusView> {
        self.metrics.call::<()>("projects", &Ok(()));
        self.state.borrow().projects(Instant::now())
    }

    fn events(
        &self,
        _: &Caller,
        filter: &EventFilter,
        after_id: u64,
        limit: u32,
    ) -> Vec<EventView> {
        self.metrics.call::<()>("listEvents", &Ok(()));
        self.log.borrow().list(filter, after_id, limit)
    }

    fn generation(
        &self,
        _: &Caller,
        project: &ProjectName,
        number: u64,
    ) -> Result<GenerationDetailView, RpcFailure> {
        let state = self.state.borrow();
        let found = state.generation(project, number).cloned().ok_or_else(|| {
            let known: Vec<String> = state
                .generations(Some(project))
                .iter()
                .map(|g| g.number.to_string())
                .collect();
            let known = if known.is_empty() {
                format!("project {project} has published none")
            } else {
                format!("remembered: {}", known.join(", "))
            };
            RpcFailure::new(
                ErrorCode::NotFound,
                format!("no generation {number} of project {project}; {known}"),
            )
        });
        self.metrics.call("getGeneration", &found);
        found
    }

    fn disconnected(&self, conn: u64) {
        self.state.borrow_mut().connection_closed(conn);
    }
}

impl Shared {
    /// `getAssignment`'s long poll (see [`MasterApi::get_assignment`]).
    async fn long_poll(&self, poll: Poll) -> Result<AssignmentView, RpcFailure> {
        let deadline = tokio::time::Instant::now() + self.long_poll_timeout;
        // Subscribe before checking, so a change between the check and the
        // wait is not missed.
        let mut rx = self.changes.subscribe();
        loop {
            if let Some(a) = self.state.borrow().assignment(
                &poll.worker_id,
                poll.last_generation,
                poll.last_revision,
            )? {
                return Ok(a);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the server is going away): nothing new.
                _ => return self.state.borrow().current_assignment(&poll.worker_id),
            }
        }
    }
}
