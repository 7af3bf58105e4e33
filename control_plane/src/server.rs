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
    ProjectStatusView, PublishOutcomeView, Registration,
};
use commands::service::master::{Caller, EventFilter, MasterApi, Poll, Publish, Report};
use commands::service::worker::WorkerCap;
use commands::telemetry::now_ms;
use commands::types::{ProjectName, WorkerId};
use tokio::sync::watch;

use crate::metrics::ControlPlaneMetrics;
use crate::state::{Effects, State};

/// State shared by every connection's `Master` object.
#[derive(Debug)]
pub struct Shared {
    pub state: RefCell<State>,
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
        Rc::new(Shared {
            state: RefCell::new(state),
            caps: RefCell::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            long_poll_timeout,
            metrics: ControlPlaneMetrics::default(),
        })
    }

    /// Wakes the long-polls if an assignment changed.
    pub fn apply(&self, effects: Effects) {
        if effects.assignments_changed {
            self.changes.send_modify(|n| *n += 1);
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
        let published = self.state.borrow_mut().publish(
            &p.project,
            &p.commit,
            p.generation,
            &p.intent_hash,
            p.specs,
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

    fn events(&self, _: &Caller, _: &EventFilter, _: u64, _: u32) -> Vec<EventView> {
        // Recorded from the next commit on; the contract lands first.
        Vec::new()
    }

    fn generation(
        &self,
        _: &Caller,
        project: &ProjectName,
        number: u64,
    ) -> Result<GenerationDetailView, RpcFailure> {
        Err(RpcFailure::new(
            ErrorCode::NotFound,
            format!("generation {number} of project {project} is not remembered"),
        ))
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
