//! The `Master` Cap'n Proto server: turns each call into a `State` method,
//! holds the workers' capabilities, and implements the long-poll. Each
//! connection's bootstrap is a `MasterLogin`; a login returns a `MasterImpl`
//! carrying the token's grant, and every call checks it first (a refused
//! call changes nothing).
//!
//! Single-threaded by design: capnp objects are `!Send`, so the whole server
//! runs on one `LocalSet` and shares `Rc<Shared>`. No `RefCell` borrow is
//! held across an `.await`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp::capability::Rc as CapRc;
use commands::auth::{Authenticator, Grant, Role};
use commands::common_capnp;
use commands::convert::{
    ConvertError, ErrorCode, RpcFailure, check_len, error_to_capnp, labels_from_capnp,
    resources_from_capnp, text, vm_metrics_from_capnp, vm_specs_from_capnp, vm_status_from_capnp,
};
use commands::master_capnp::{master, master_login};
use commands::rpc::InFlight;
use commands::telemetry::now_ms;
use commands::types::WorkerId;
use commands::worker_capnp::worker;
use tokio::sync::watch;

use crate::model::{self, worker_metrics_from_capnp};
use crate::state::{Effects, MAX_VMS_PER_WORKER, ObservedVm, Registration, State};

/// State shared by every connection's `Master` object.
pub struct Shared {
    pub state: RefCell<State>,
    /// Worker capabilities by id (the latest registration's).
    caps: RefCell<BTreeMap<WorkerId, worker::Client>>,
    /// Bumped whenever any assignment changes; long-polls wait on it.
    changes: watch::Sender<u64>,
    long_poll_timeout: Duration,
}

impl Shared {
    pub fn new(state: State, long_poll_timeout: Duration) -> Rc<Self> {
        Rc::new(Shared {
            state: RefCell::new(state),
            caps: RefCell::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            long_poll_timeout,
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

/// Long-polls one connection may hold at once (a worker needs one).
pub const MAX_IN_FLIGHT_PER_CONNECTION: u32 = 16;

/// How long a refused login takes to answer: guessing tokens over one
/// connection goes at a crawl (connections are capped by `rpc`).
const LOGIN_FAILURE_DELAY: Duration = Duration::from_millis(200);

/// The bootstrap of one connection: nothing but `login`.
pub struct MasterLoginImpl {
    shared: Rc<Shared>,
    auth: Rc<Authenticator>,
    conn: u64,
    peer: SocketAddr,
    in_flight: InFlight,
}

impl MasterLoginImpl {
    pub fn new(shared: Rc<Shared>, auth: Rc<Authenticator>, conn: u64, peer: SocketAddr) -> Self {
        MasterLoginImpl {
            shared,
            auth,
            conn,
            peer,
            in_flight: InFlight::new(MAX_IN_FLIGHT_PER_CONNECTION),
        }
    }
}

impl master_login::Server for MasterLoginImpl {
    fn login(
        self: CapRc<Self>,
        params: master_login::LoginParams,
        mut results: master_login::LoginResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let token = params
            .get()
            .and_then(|p| p.get_token())
            .ok()
            .and_then(|t| t.to_str().ok().map(str::to_owned))
            .unwrap_or_default();
        let login = self.auth.login(&token).map(|g| {
            let m: master::Client = capnp_rpc::new_client(MasterImpl {
                shared: Rc::clone(&self.shared),
                conn: self.conn,
                peer: self.peer,
                grant: g.clone(),
                in_flight: self.in_flight.clone(),
            });
            (g, m)
        });
        drop(token);
        let peer = self.peer;
        async move {
            let b = results.get().init_result();
            match login {
                Ok((g, m)) => {
                    tracing::debug!(%peer, role = %g.role, worker = g.worker_id.as_deref().unwrap_or(""), "login");
                    let mut ok = b.init_ok();
                    ok.set_master(m);
                    ok.set_role(g.role.to_capnp());
                    ok.set_worker_id(g.worker_id.as_deref().unwrap_or(""));
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "login refused");
                    tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
                    error_to_capnp(
                        &RpcFailure::new(ErrorCode::PermissionDenied, e.to_string()),
                        b.init_err(),
                    );
                }
            }
            Ok(())
        }
    }
}

/// The `Master` object of one login: what its token may do.
pub struct MasterImpl {
    shared: Rc<Shared>,
    conn: u64,
    peer: SocketAddr,
    grant: Grant,
    in_flight: InFlight,
}

fn denied(what: &str, grant: &Grant) -> RpcFailure {
    RpcFailure::new(
        ErrorCode::PermissionDenied,
        format!("a {} token may not {what}", grant.role),
    )
}

impl MasterImpl {
    /// Refuses unless the role is one of `roles`.
    fn allow(&self, what: &str, roles: &[Role]) -> Result<(), RpcFailure> {
        if roles.contains(&self.grant.role) {
            Ok(())
        } else {
            Err(denied(what, &self.grant))
        }
    }

    /// Admins act for any worker; a worker token only for its own id.
    fn allow_worker(&self, what: &str, id: &WorkerId) -> Result<(), RpcFailure> {
        match self.grant.role {
            Role::Admin => Ok(()),
            Role::Worker if self.grant.worker_id.as_deref() == Some(id.as_str()) => Ok(()),
            Role::Worker => Err(RpcFailure::new(
                ErrorCode::PermissionDenied,
                format!(
                    "this token belongs to worker {}, not {id}; it may not {what} for another worker",
                    self.grant.worker_id.as_deref().unwrap_or("?")
                ),
            )),
            _ => Err(denied(what, &self.grant)),
        }
    }
}

fn bad(e: capnp::Error) -> RpcFailure {
    RpcFailure::from(ConvertError::from(e))
}

fn parse_worker_id(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<WorkerId, RpcFailure> {
    let s = text(r).map_err(RpcFailure::from)?;
    s.parse::<WorkerId>()
        .map_err(|e| RpcFailure::invalid(e.to_string()))
}

/// Writes `r` into a `Result(Ok)` builder: `fill` for the ok branch.
fn write_result<'a, T, V>(
    b: common_capnp::result::Builder<'a, T>,
    r: Result<V, RpcFailure>,
    fill: impl FnOnce(&V, <T as capnp::traits::Owned>::Builder<'a>),
) where
    T: capnp::traits::Owned,
{
    match r {
        Ok(v) => fill(&v, b.init_ok()),
        Err(e) => error_to_capnp(&e, b.init_err()),
    }
}

impl master::Server for MasterImpl {
    fn publish_state(
        self: CapRc<Self>,
        params: master::PublishStateParams,
        mut results: master::PublishStateResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let outcome = (|| {
            self.allow("publish a generation", &[Role::Admin, Role::Ci])?;
            let p = params.get().map_err(bad)?;
            let commit = text(p.get_commit()).map_err(RpcFailure::from)?;
            let intent = text(p.get_intent_hash()).map_err(RpcFailure::from)?;
            let specs =
                vm_specs_from_capnp(p.get_vm_specs().map_err(bad)?).map_err(RpcFailure::from)?;
            let generation = p.get_generation();
            let (outcome, effects) = self.shared.state.borrow_mut().publish(
                &commit,
                generation,
                &intent,
                specs,
                now_ms(),
            )?;
            self.shared.apply(effects);
            tracing::info!(generation, commit = %commit, noop = outcome.noop, placed = outcome.placed,
                unplaced = outcome.unplaced.len(), "generation published");
            Ok(outcome)
        })();
        if let Err(e) = &outcome {
            tracing::warn!(peer = %self.peer, error = %e, "publishState refused");
        }
        write_result(results.get().init_result(), outcome, |o, b| {
            model::publish_outcome_to_capnp(o, b)
        });
        std::future::ready(Ok(()))
    }

    fn register_worker(
        self: CapRc<Self>,
        params: master::RegisterWorkerParams,
        mut results: master::RegisterWorkerResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            let p = params.get().map_err(bad)?;
            let reg = p.get_registration().map_err(bad)?;
            let registration = Registration {
                worker_id: parse_worker_id(reg.get_worker_id())?,
                address: text(reg.get_address()).map_err(RpcFailure::from)?,
                capacity: resources_from_capnp(reg.get_capacity().map_err(bad)?),
                labels: labels_from_capnp(reg.get_labels().map_err(bad)?)
                    .map_err(RpcFailure::from)?,
            };
            self.allow_worker("register", &registration.worker_id)?;
            let cap = p.get_worker().map_err(bad)?;
            let id = registration.worker_id.clone();
            let effects =
                self.shared
                    .state
                    .borrow_mut()
                    .register(registration, self.conn, Instant::now())?;
            self.shared.caps.borrow_mut().insert(id, cap);
            self.shared.apply(effects);
            Ok(())
        })();
        if let Err(e) = &r {
            tracing::warn!(peer = %self.peer, error = %e, "registerWorker refused");
        }
        write_result(results.get().init_result(), r, |(), _| {});
        std::future::ready(Ok(()))
    }

    fn get_assignment(
        self: CapRc<Self>,
        params: master::GetAssignmentParams,
        mut results: master::GetAssignmentResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let parsed = (|| {
            let p = params.get().map_err(bad)?;
            let id = parse_worker_id(p.get_worker_id())?;
            self.allow_worker("read the assignment", &id)?;
            Ok::<_, RpcFailure>((id, p.get_last_seen_generation(), p.get_last_seen_revision()))
        })();
        let shared = self.shared.clone();
        let slot = self.in_flight.enter();
        async move {
            let _slot = slot?;
            let reply = match parsed {
                Err(e) => Err(e),
                Ok((worker, last_gen, last_rev)) => {
                    long_poll(&shared, &worker, last_gen, last_rev).await
                }
            };
            write_result(results.get().init_result(), reply, |a, b| {
                model::assignment_to_capnp(a, b)
            });
            Ok(())
        }
    }

    fn push_data(
        self: CapRc<Self>,
        params: master::PushDataParams,
        mut results: master::PushDataResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            let p = params.get().map_err(bad)?;
            let worker = parse_worker_id(p.get_worker_id())?;
            self.allow_worker("report observed state", &worker)?;
            let list = p.get_running_vms().map_err(bad)?;
            check_len(list.len(), MAX_VMS_PER_WORKER as u32).map_err(RpcFailure::from)?;
            let mut running = Vec::with_capacity(list.len() as usize);
            for vm in list.iter() {
                running.push(ObservedVm {
                    status: vm_status_from_capnp(vm.get_status().map_err(bad)?)
                        .map_err(RpcFailure::from)?,
                    metrics: vm_metrics_from_capnp(vm.get_metrics().map_err(bad)?),
                });
            }
            let metrics = worker_metrics_from_capnp(p.get_metrics().map_err(bad)?);
            let effects = self.shared.state.borrow_mut().push_data(
                &worker,
                self.conn,
                p.get_observed_generation(),
                running,
                metrics,
                Instant::now(),
            )?;
            self.shared.apply(effects);
            Ok(())
        })();
        if let Err(e) = &r {
            tracing::warn!(peer = %self.peer, error = %e, "pushData refused");
        }
        write_result(results.get().init_result(), r, |(), _| {});
        std::future::ready(Ok(()))
    }

    fn get_cluster_status(
        self: CapRc<Self>,
        _: master::GetClusterStatusParams,
        mut results: master::GetClusterStatusResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let status = self.shared.state.borrow().cluster_status(Instant::now());
        model::status_to_capnp(&status, results.get().init_status());
        std::future::ready(Ok(()))
    }

    fn get_worker(
        self: CapRc<Self>,
        params: master::GetWorkerParams,
        mut results: master::GetWorkerResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let r =
            (|| {
                self.allow("control a worker", &[Role::Admin])?;
                let id = parse_worker_id(params.get().map_err(bad)?.get_worker_id())?;
                self.shared.caps.borrow().get(&id).cloned().ok_or_else(|| {
                    RpcFailure::new(ErrorCode::NotFound, format!("unknown worker {id}"))
                })
            })();
        write_result(results.get().init_result(), r, |c, mut b| {
            b.set_worker(c.clone())
        });
        std::future::ready(Ok(()))
    }

    fn list_generations(
        self: CapRc<Self>,
        _: master::ListGenerationsParams,
        mut results: master::ListGenerationsResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let gens = self.shared.state.borrow().generations();
        let mut b = results.get().init_generations(gens.len() as u32);
        for (i, g) in gens.iter().enumerate() {
            model::generation_to_capnp(g, b.reborrow().get(i as u32));
        }
        std::future::ready(Ok(()))
    }
}

/// Answers at once when there is something newer than (last_gen, last_rev)
/// for `worker`, otherwise as soon as an assignment changes, otherwise after
/// the long-poll timeout with `changed = false`.
async fn long_poll(
    shared: &Shared,
    worker: &WorkerId,
    last_gen: u64,
    last_rev: u64,
) -> Result<model::AssignmentView, RpcFailure> {
    let deadline = tokio::time::Instant::now() + shared.long_poll_timeout;
    // Subscribe before checking, so a change between the check and the wait
    // is not missed.
    let mut rx = shared.changes.subscribe();
    loop {
        if let Some(a) = shared
            .state
            .borrow()
            .assignment(worker, last_gen, last_rev)?
        {
            return Ok(a);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the server is going away): nothing new.
            _ => return shared.state.borrow().current_assignment(worker),
        }
    }
}
