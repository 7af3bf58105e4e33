//! The `Master` service adapter: the control plane (or a test's fake)
//! implements [`MasterApi`] with domain types, and [`serve`] turns it into
//! the Cap'n Proto server, login bootstrap included.
//!
//! Each connection's bootstrap is a `MasterLogin`; a login returns a
//! `Master` object carrying the token's grant, and every call checks the
//! grant first, so a refused call never reaches the implementation. Who may
//! call what is part of the contract and lives here:
//! - `publishState`: admin, ci; a `ci:<project>` token for its project only;
//! - `registerWorker`, `getAssignment`, `pushData`: admin, or a worker
//!   token for its own id;
//! - `getWorker`: admin;
//! - `getClusterStatus`, `listGenerations`, `projects`: any role;
//! - `listEvents`: any role, filtered: a `ci:<project>` token sees its
//!   project's events only, a worker token those of its own worker id;
//! - `getGeneration`: admin, reader, ci (a `ci:<project>` token for its
//!   project only).
//!
//! Single-threaded by design: capnp objects are `!Send`, so everything runs
//! on one `LocalSet` and the implementation is shared as an `Rc`.

use capnp::capability::Rc as CapRc;
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Grant, Role};
use crate::common_capnp;
use crate::convert::master::{
    assignment_to_capnp, events_to_capnp, generation_detail_to_capnp, generation_to_capnp,
    projects_to_capnp, publish_meta_from_capnp, publish_outcome_to_capnp, running_vms_from_capnp,
    status_to_capnp, worker_metrics_from_capnp,
};
use crate::convert::{
    ConvertError, ErrorCode, RpcFailure, error_to_capnp, labels_from_capnp, project_from_text,
    resources_from_capnp, text, vm_specs_from_capnp,
};
use crate::master_capnp::{master, master_login};
use crate::model::{
    AssignmentView, ClusterStatusView, EventView, GenerationDetailView, GenerationView,
    MAX_EVENTS_PER_PAGE, MAX_VMS_PER_WORKER, ObservedVm, ProjectStatusView, PublishMeta,
    PublishOutcomeView, Registration, WorkerMetricsView,
};
use crate::rpc::{Conn, ConnLimits, InFlight};
use crate::service::LoginGate;
use crate::service::worker::WorkerCap;
use crate::types::{ProjectName, VmSpec, WorkerId};

/// Long-polls one connection may hold at once (a worker needs one).
pub const MAX_IN_FLIGHT_PER_CONNECTION: u32 = 16;

/// Who is calling: what the login granted, on which connection.
#[derive(Debug, Clone)]
pub struct Caller {
    pub grant: Grant,
    /// Numbers the connections of one server; a worker may only report on
    /// the connection it registered on.
    pub conn: u64,
    pub peer: SocketAddr,
}

/// A published generation, as `publishState` carries it.
#[derive(Debug, Clone)]
pub struct Publish {
    pub project: ProjectName,
    pub commit: String,
    pub generation: u64,
    pub intent_hash: String,
    pub specs: Vec<VmSpec>,
    /// Author, message and CI job, as the publisher tells them.
    pub meta: PublishMeta,
}

/// Which events a `listEvents` caller gets: the project it asked for (or
/// the only one its token may see), and for a worker token its own id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub project: Option<ProjectName>,
    pub worker: Option<String>,
}

impl EventFilter {
    /// Whether `e` passes.
    pub fn admits(&self, e: &EventView) -> bool {
        self.project
            .as_ref()
            .is_none_or(|p| e.project == p.as_str())
            && self.worker.as_ref().is_none_or(|w| e.worker_id == *w)
    }
}

/// A worker's long-poll, as `getAssignment` carries it: what it has seen.
#[derive(Debug, Clone)]
pub struct Poll {
    pub worker_id: WorkerId,
    pub last_generation: u64,
    pub last_revision: u64,
}

/// A worker's heartbeat, as `pushData` carries it.
#[derive(Debug, Clone)]
pub struct Report {
    pub worker_id: WorkerId,
    pub observed_generation: u64,
    pub running: Vec<ObservedVm>,
    pub metrics: WorkerMetricsView,
}

/// What the `Master` interface does, in domain types. Every call has
/// passed the role check when it gets here; `Err` answers as data.
pub trait MasterApi: 'static {
    fn publish(&self, caller: &Caller, p: Publish) -> Result<PublishOutcomeView, RpcFailure>;

    /// `worker` replaces any capability an earlier registration left.
    fn register(
        &self,
        caller: &Caller,
        reg: Registration,
        worker: WorkerCap,
    ) -> Result<(), RpcFailure>;

    /// The long-poll: answers when there is something newer than what
    /// `poll` has seen, or with `changed = false` once the implementation's
    /// timeout passes.
    fn get_assignment(
        &self,
        caller: &Caller,
        poll: Poll,
    ) -> impl Future<Output = Result<AssignmentView, RpcFailure>>;

    fn push_data(&self, caller: &Caller, report: Report) -> Result<(), RpcFailure>;

    fn cluster_status(&self, caller: &Caller) -> ClusterStatusView;

    /// The capability `worker` registered with.
    fn get_worker(&self, caller: &Caller, worker: &WorkerId) -> Result<WorkerCap, RpcFailure>;

    /// The history of `project`, or of every project when `None`.
    fn generations(&self, caller: &Caller, project: Option<&ProjectName>) -> Vec<GenerationView>;

    fn projects(&self, caller: &Caller) -> Vec<ProjectStatusView>;

    /// The events `filter` admits with an id above `after_id`, oldest
    /// first, at most `limit` (never 0 here).
    fn events(
        &self,
        caller: &Caller,
        filter: &EventFilter,
        after_id: u64,
        limit: u32,
    ) -> Vec<EventView>;

    /// Generation `number` of `project`, with its specs, if remembered.
    fn generation(
        &self,
        caller: &Caller,
        project: &ProjectName,
        number: u64,
    ) -> Result<GenerationDetailView, RpcFailure>;

    /// Connection `conn`, on which someone logged in, has closed: a worker
    /// registered on it may now register again from a new connection.
    fn disconnected(&self, conn: u64) {
        let _ = conn;
    }
}

/// Serves `api` on `listener` until `shutdown` fires, with the tokens of
/// `auth` deciding each connection's grant and the default connection
/// limits. Must run inside a `LocalSet`.
pub async fn serve<A: MasterApi>(
    api: Rc<A>,
    auth: Authenticator,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    serve_limited(api, auth, listener, ConnLimits::default(), shutdown).await;
}

/// Like [`serve`] within `limits` (login deadline, connections waiting to
/// log in, connections in all).
pub async fn serve_limited<A: MasterApi>(
    api: Rc<A>,
    auth: Authenticator,
    listener: TcpListener,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let gate = Rc::new(LoginGate::new(auth));
    let make = move |conn: &Conn| {
        let client: master_login::Client = capnp_rpc::new_client(Login {
            api: Rc::clone(&api),
            gate: Rc::clone(&gate),
            conn: conn.clone(),
            watching: Cell::new(false),
            in_flight: InFlight::new(MAX_IN_FLIGHT_PER_CONNECTION),
        });
        client.client
    };
    crate::rpc::serve_limited(listener, make, limits, shutdown).await;
}

/// The bootstrap of one connection: nothing but `login`.
struct Login<A> {
    api: Rc<A>,
    gate: Rc<LoginGate>,
    conn: Conn,
    /// Whether the implementation will hear of this connection's end
    /// (set by the first successful login).
    watching: Cell<bool>,
    /// Shared by every login of the connection: the limit is per connection.
    in_flight: InFlight,
}

impl<A: MasterApi> Login<A> {
    /// Tells the implementation when this logged-in connection closes, once.
    fn watch_close(&self) {
        if self.watching.replace(true) {
            return;
        }
        let (api, closed, id) = (Rc::clone(&self.api), self.conn.closed(), self.conn.id());
        tokio::task::spawn_local(async move {
            closed.cancelled().await;
            api.disconnected(id);
        });
    }
}

impl<A: MasterApi> master_login::Server for Login<A> {
    fn login(
        self: CapRc<Self>,
        params: master_login::LoginParams,
        mut results: master_login::LoginResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let token = super::login_token(params.get().and_then(|p| p.get_token()));
        async move {
            let login = self.gate.login(&self.conn, token).await;
            let b = results.get().init_result();
            match login {
                Ok(g) => {
                    let peer = self.conn.peer();
                    tracing::debug!(%peer, conn = self.conn.id(), grant = %g, "login");
                    self.watch_close();
                    let m: master::Client = capnp_rpc::new_client(Session {
                        api: Rc::clone(&self.api),
                        caller: Caller {
                            grant: g.clone(),
                            conn: self.conn.id(),
                            peer,
                        },
                        in_flight: self.in_flight.clone(),
                    });
                    let mut ok = b.init_ok();
                    ok.set_master(m);
                    ok.set_role(g.role.to_capnp());
                    ok.set_worker_id(g.worker_id.as_deref().unwrap_or(""));
                    ok.set_project(g.project.as_ref().map_or("", |p| p.as_str()));
                }
                Err(e) => super::refuse_login(&e, b.init_err()),
            }
            Ok(())
        }
    }
}

/// The `Master` object of one login: what its token may do.
struct Session<A> {
    api: Rc<A>,
    caller: Caller,
    in_flight: InFlight,
}

fn denied(what: &str, grant: &Grant) -> RpcFailure {
    RpcFailure::new(
        ErrorCode::PermissionDenied,
        format!("a {} token may not {what}", grant.role),
    )
}

impl<A> Session<A> {
    /// Refuses unless the role is one of `roles`.
    fn allow(&self, what: &str, roles: &[Role]) -> Result<(), RpcFailure> {
        if roles.contains(&self.caller.grant.role) {
            Ok(())
        } else {
            Err(denied(what, &self.caller.grant))
        }
    }

    /// Admins act for any worker; a worker token only for its own id.
    fn allow_worker(&self, what: &str, id: &WorkerId) -> Result<(), RpcFailure> {
        let grant = &self.caller.grant;
        match grant.role {
            Role::Admin => Ok(()),
            Role::Worker if grant.worker_id.as_deref() == Some(id.as_str()) => Ok(()),
            Role::Worker => Err(RpcFailure::new(
                ErrorCode::PermissionDenied,
                format!(
                    "this token belongs to worker {}, not {id}; it may not {what} for another worker",
                    grant.worker_id.as_deref().unwrap_or("?")
                ),
            )),
            _ => Err(denied(what, grant)),
        }
    }

    /// Logs a refused call with who made it; the caller gets it as data.
    fn log_refusal<T>(&self, call: &str, r: &Result<T, RpcFailure>) {
        if let Err(e) = r {
            tracing::warn!(peer = %self.caller.peer, error = %e, "{call} refused");
        }
    }
}

impl<A> Session<A> {
    /// What a `listEvents` caller may see of `asked` (None = everything):
    /// a `ci:<project>` token its project only (asking for another is
    /// refused), a worker token its own worker's events.
    fn event_filter(&self, asked: Option<ProjectName>) -> Result<EventFilter, RpcFailure> {
        let grant = &self.caller.grant;
        let project = match (&grant.project, asked) {
            (Some(mine), Some(p)) if *mine != p => {
                return Err(RpcFailure::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "this {grant} token may read the events of project {mine} only, not {p}"
                    ),
                ));
            }
            (Some(mine), _) => Some(mine.clone()),
            (None, asked) => asked,
        };
        let worker = match grant.role {
            Role::Worker => Some(grant.worker_id.clone().unwrap_or_default()),
            _ => None,
        };
        Ok(EventFilter { project, worker })
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A project named in a request, "" meaning none.
fn optional_project(
    r: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<Option<ProjectName>, RpcFailure> {
    let s = text(r).map_err(RpcFailure::from)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<ProjectName>()
        .map(Some)
        .map_err(|e| RpcFailure::invalid(format!("project: {e}")))
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
    fill: impl FnOnce(V, <T as capnp::traits::Owned>::Builder<'a>),
) where
    T: capnp::traits::Owned,
{
    match r {
        Ok(v) => fill(v, b.init_ok()),
        Err(e) => error_to_capnp(&e, b.init_err()),
    }
}

impl<A: MasterApi> master::Server for Session<A> {
    fn publish_state(
        self: CapRc<Self>,
        params: master::PublishStateParams,
        mut results: master::PublishStateResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let outcome = (|| {
            // The role first: a refused caller's specs are never decoded.
            self.allow("publish a generation", &[Role::Admin, Role::Ci])?;
            let p = params.get().map_err(bad)?;
            let project = project_from_text(text(p.get_project()).map_err(RpcFailure::from)?)
                .map_err(RpcFailure::from)?;
            if !self.caller.grant.covers_project(&project) {
                return Err(RpcFailure::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "this {} token may publish for project {} only, not {project}",
                        self.caller.grant,
                        self.caller
                            .grant
                            .project
                            .as_ref()
                            .map_or("?", |p| p.as_str())
                    ),
                ));
            }
            let publish = Publish {
                project,
                commit: text(p.get_commit()).map_err(RpcFailure::from)?,
                intent_hash: text(p.get_intent_hash()).map_err(RpcFailure::from)?,
                specs: vm_specs_from_capnp(p.get_vm_specs().map_err(bad)?)
                    .map_err(RpcFailure::from)?,
                generation: p.get_generation(),
                meta: if p.has_meta() {
                    publish_meta_from_capnp(p.get_meta().map_err(bad)?).map_err(RpcFailure::from)?
                } else {
                    PublishMeta::default()
                },
            };
            self.api.publish(&self.caller, publish)
        })();
        self.log_refusal("publishState", &outcome);
        write_result(results.get().init_result(), outcome, |o, b| {
            publish_outcome_to_capnp(&o, b)
        });
        std::future::ready(Ok(()))
    }

    fn register_worker(
        self: CapRc<Self>,
        params: master::RegisterWorkerParams,
        mut results: master::RegisterWorkerResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
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
            let cap = WorkerCap(p.get_worker().map_err(bad)?);
            self.api.register(&self.caller, registration, cap)
        })();
        self.log_refusal("registerWorker", &r);
        write_result(results.get().init_result(), r, |(), _| {});
        std::future::ready(Ok(()))
    }

    fn get_assignment(
        self: CapRc<Self>,
        params: master::GetAssignmentParams,
        mut results: master::GetAssignmentResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let parsed = (|| {
            let p = params.get().map_err(bad)?;
            let worker_id = parse_worker_id(p.get_worker_id())?;
            self.allow_worker("read the assignment", &worker_id)?;
            Ok::<_, RpcFailure>(Poll {
                worker_id,
                last_generation: p.get_last_seen_generation(),
                last_revision: p.get_last_seen_revision(),
            })
        })();
        let api = Rc::clone(&self.api);
        let caller = self.caller.clone();
        // A long-poll holds its slot until it answers; more than the limit
        // at once is refused on the wire (overloaded), not queued.
        let slot = self.in_flight.enter();
        async move {
            let _slot = slot?;
            let reply = match parsed {
                Err(e) => Err(e),
                Ok(poll) => api.get_assignment(&caller, poll).await,
            };
            write_result(results.get().init_result(), reply, |a, b| {
                assignment_to_capnp(&a, b)
            });
            Ok(())
        }
    }

    fn push_data(
        self: CapRc<Self>,
        params: master::PushDataParams,
        mut results: master::PushDataResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            let p = params.get().map_err(bad)?;
            let worker_id = parse_worker_id(p.get_worker_id())?;
            self.allow_worker("report observed state", &worker_id)?;
            let running = running_vms_from_capnp(
                p.get_running_vms().map_err(bad)?,
                MAX_VMS_PER_WORKER as u32,
            )
            .map_err(RpcFailure::from)?;
            let report = Report {
                worker_id,
                observed_generation: p.get_observed_generation(),
                running,
                metrics: worker_metrics_from_capnp(p.get_metrics().map_err(bad)?),
            };
            self.api.push_data(&self.caller, report)
        })();
        self.log_refusal("pushData", &r);
        write_result(results.get().init_result(), r, |(), _| {});
        std::future::ready(Ok(()))
    }

    fn get_cluster_status(
        self: CapRc<Self>,
        _: master::GetClusterStatusParams,
        mut results: master::GetClusterStatusResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let status = self.api.cluster_status(&self.caller);
        status_to_capnp(&status, results.get().init_status());
        std::future::ready(Ok(()))
    }

    fn get_worker(
        self: CapRc<Self>,
        params: master::GetWorkerParams,
        mut results: master::GetWorkerResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            self.allow("control a worker", &[Role::Admin])?;
            let id = parse_worker_id(params.get().map_err(bad)?.get_worker_id())?;
            self.api.get_worker(&self.caller, &id)
        })();
        write_result(results.get().init_result(), r, |c, mut b| b.set_worker(c.0));
        std::future::ready(Ok(()))
    }

    fn list_generations(
        self: CapRc<Self>,
        params: master::ListGenerationsParams,
        mut results: master::ListGenerationsResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let project = params
            .get()
            .and_then(|p| p.get_project())
            .map_err(ConvertError::from)
            .and_then(|t| text(Ok(t)))
            .and_then(|s| {
                if s.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(s.parse::<ProjectName>()?))
                }
            });
        let project = match project {
            Ok(p) => p,
            Err(e) => return std::future::ready(Err(capnp::Error::failed(e.to_string()))),
        };
        let gens = self.api.generations(&self.caller, project.as_ref());
        let mut b = results
            .get()
            .init_generations(u32::try_from(gens.len()).unwrap_or(u32::MAX));
        for (i, g) in gens.iter().enumerate() {
            generation_to_capnp(g, b.reborrow().get(u32::try_from(i).unwrap_or(u32::MAX)));
        }
        std::future::ready(Ok(()))
    }

    fn list_events(
        self: CapRc<Self>,
        params: master::ListEventsParams,
        mut results: master::ListEventsResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let asked = (|| {
            let p = params.get().map_err(bad)?;
            let project = optional_project(p.get_project())?;
            let filter = self.event_filter(project)?;
            let limit = match p.get_limit() {
                0 => MAX_EVENTS_PER_PAGE,
                n => n.min(MAX_EVENTS_PER_PAGE),
            };
            Ok::<_, RpcFailure>((filter, p.get_after_id(), limit))
        })();
        self.log_refusal("listEvents", &asked);
        let (filter, after_id, limit) = match asked {
            Ok(a) => a,
            Err(e) => return std::future::ready(Err(capnp::Error::failed(e.to_string()))),
        };
        let events = self.api.events(&self.caller, &filter, after_id, limit);
        events_to_capnp(&events, results.get().init_events(len32(events.len())));
        std::future::ready(Ok(()))
    }

    fn get_generation(
        self: CapRc<Self>,
        params: master::GetGenerationParams,
        mut results: master::GetGenerationResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            self.allow(
                "read a generation's specs",
                &[Role::Admin, Role::Reader, Role::Ci],
            )?;
            let p = params.get().map_err(bad)?;
            let project = project_from_text(text(p.get_project()).map_err(RpcFailure::from)?)
                .map_err(RpcFailure::from)?;
            if !self.caller.grant.covers_project(&project) {
                return Err(RpcFailure::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "this {} token may read project {} only, not {project}",
                        self.caller.grant,
                        self.caller
                            .grant
                            .project
                            .as_ref()
                            .map_or("?", |p| p.as_str())
                    ),
                ));
            }
            self.api.generation(&self.caller, &project, p.get_number())
        })();
        self.log_refusal("getGeneration", &r);
        write_result(results.get().init_result(), r, |d, b| {
            generation_detail_to_capnp(&d, b)
        });
        std::future::ready(Ok(()))
    }

    fn projects(
        self: CapRc<Self>,
        _: master::ProjectsParams,
        mut results: master::ProjectsResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let ps = self.api.projects(&self.caller);
        projects_to_capnp(
            &ps,
            results
                .get()
                .init_projects(u32::try_from(ps.len()).unwrap_or(u32::MAX)),
        );
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    /// Counts the publishes that reach it; everything else is unused.
    #[derive(Default)]
    struct Counting {
        published: Cell<u32>,
    }

    impl MasterApi for Counting {
        fn publish(&self, _: &Caller, p: Publish) -> Result<PublishOutcomeView, RpcFailure> {
            self.published.set(self.published.get() + 1);
            Ok(PublishOutcomeView {
                project: p.project.to_string(),
                generation: p.generation,
                noop: false,
                placed: 0,
                unplaced: Vec::new(),
            })
        }
        fn register(&self, _: &Caller, _: Registration, _: WorkerCap) -> Result<(), RpcFailure> {
            unreachable!()
        }
        async fn get_assignment(&self, _: &Caller, _: Poll) -> Result<AssignmentView, RpcFailure> {
            unreachable!()
        }
        fn push_data(&self, _: &Caller, _: Report) -> Result<(), RpcFailure> {
            unreachable!()
        }
        fn cluster_status(&self, _: &Caller) -> ClusterStatusView {
            unreachable!()
        }
        fn get_worker(&self, _: &Caller, _: &WorkerId) -> Result<WorkerCap, RpcFailure> {
            unreachable!()
        }
        fn generations(&self, _: &Caller, _: Option<&ProjectName>) -> Vec<GenerationView> {
            unreachable!()
        }
        fn projects(&self, _: &Caller) -> Vec<ProjectStatusView> {
            unreachable!()
        }
        fn events(&self, _: &Caller, _: &EventFilter, _: u64, _: u32) -> Vec<EventView> {
            unreachable!()
        }
        fn generation(
            &self,
            _: &Caller,
            _: &ProjectName,
            _: u64,
        ) -> Result<GenerationDetailView, RpcFailure> {
            unreachable!()
        }
    }

    const TOKEN: &str = "admin-token-0123456789";

    /// Serves `Counting` with one admin token within `limits`; its address.
    async fn start(limits: ConnLimits) -> (String, Rc<Counting>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let api = Rc::new(Counting::default());
        let auth = Authenticator::parse(
            &format!("admin {TOKEN}\n"),
            std::path::Path::new("t"),
            &[Role::Admin],
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        tokio::task::spawn_local(serve_limited(
            Rc::clone(&api),
            auth,
            listener,
            limits,
            shutdown.clone(),
        ));
        (addr, api, shutdown)
    }

    /// A raw connection to the login capability, nothing sent yet.
    async fn raw(addr: &str) -> crate::rpc::Connection<master_login::Client> {
        crate::rpc::connect::<master_login::Client>(addr, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Sends one login on `c`; the refusal message, or None when it was let in.
    fn login_on(
        c: &master_login::Client,
        token: &str,
    ) -> impl Future<Output = Result<Option<String>, capnp::Error>> + use<> {
        let mut req = c.login_request();
        req.get().set_token(token);
        let promise = req.send().promise;
        async move {
            let reply = promise.await?;
            let r = crate::convert::result_from_capnp(reply.get()?.get_result()?)
                .map_err(|e| capnp::Error::failed(e.to_message()))?;
            Ok(r.err().map(|f| f.message))
        }
    }

    /// Guesses pipelined on one connection are answered one after the
    /// other, each after the refusal delay: N guesses cost N × the delay.
    #[test]
    fn pipelined_wrong_logins_on_one_connection_take_turns() {
        crate::rpc::block_on_local(async {
            let (addr, _, shutdown) = start(ConnLimits::default()).await;
            let c = raw(&addr).await;
            let n = 5;
            let t = std::time::Instant::now();
            let guesses: Vec<_> = (0..n)
                .map(|i| login_on(&c.client, &format!("wrong-guess-{i:010}")))
                .collect();
            for g in futures::future::join_all(guesses).await {
                let why = g.unwrap().expect("a wrong token was let in");
                assert!(why.contains("not valid"), "{why}");
            }
            let took = t.elapsed();
            let floor = super::super::LOGIN_FAILURE_DELAY * n;
            assert!(
                took >= floor,
                "{n} pipelined refusals took {took:?}, less than {floor:?}"
            );
            // The right token on the same connection still gets in.
            assert_eq!(login_on(&c.client, TOKEN).await.unwrap(), None);
            shutdown.cancel();
        });
    }

    /// An address that has used up its refusals is refused without its
    /// token being compared, on any connection; its first refusals were
    /// answered as wrong tokens.
    #[test]
    fn refusals_are_rate_limited_per_peer_address() {
        crate::rpc::block_on_local(async {
            let (addr, _, shutdown) = start(ConnLimits::default()).await;
            let burst = super::super::LOGIN_FAILURE_BURST as usize;
            let mut conns = Vec::new();
            for _ in 0..burst + 5 {
                conns.push(raw(&addr).await);
            }
            // In parallel, one guess per connection.
            let answers = futures::future::join_all(
                conns
                    .iter()
                    .map(|c| login_on(&c.client, "wrong-guess-0123456789")),
            )
            .await;
            let answers: Vec<String> = answers
                .into_iter()
                .map(|a| a.unwrap().expect("a wrong token was let in"))
                .collect();
            let invalid = answers.iter().filter(|a| a.contains("not valid")).count();
            let limited = answers
                .iter()
                .filter(|a| a.contains("too many refused logins from this address"))
                .count();
            assert_eq!(invalid + limited, answers.len(), "{answers:?}");
            assert!((burst..=burst + 1).contains(&invalid), "{answers:?}");
            // While limited, even the right token is not compared.
            let c = raw(&addr).await;
            let why = login_on(&c.client, TOKEN).await.unwrap();
            assert!(
                why.is_some_and(|w| w.contains("too many refused logins")),
                "a limited address was let in"
            );
            shutdown.cancel();
        });
    }

    /// A connection that does not log in within the deadline is closed; one
    /// that did stays.
    #[test]
    fn connections_that_do_not_log_in_are_closed_at_the_deadline() {
        crate::rpc::block_on_local(async {
            let limits = ConnLimits {
                login_deadline: Duration::from_millis(300),
                ..ConnLimits::default()
            };
            let (addr, api, shutdown) = start(limits).await;
            let idle = raw(&addr).await;
            let (conn, _) = crate::rpc::connect_master(&addr, Duration::from_secs(5), TOKEN)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(700)).await;
            let e = login_on(&idle.client, TOKEN).await.unwrap_err();
            assert_eq!(e.kind, capnp::ErrorKind::Disconnected, "{e}");
            let mut req = conn.client.publish_state_request();
            req.get().set_commit("c1");
            req.get().set_generation(1);
            req.get().set_intent_hash("i1");
            req.send().promise.await.unwrap();
            assert_eq!(
                api.published.get(),
                1,
                "the logged-in connection was closed"
            );
            conn.close().await;
            shutdown.cancel();
        });
    }

    /// Beyond the waiting pool, the oldest connection still waiting to log
    /// in is closed, never the newest and never a logged-in one.
    #[test]
    fn a_flood_of_idle_connections_evicts_its_oldest() {
        crate::rpc::block_on_local(async {
            let limits = ConnLimits {
                max_waiting: 2,
                ..ConnLimits::default()
            };
            let (addr, _, shutdown) = start(limits).await;
            let (logged_in, _) = crate::rpc::connect_master(&addr, Duration::from_secs(5), TOKEN)
                .await
                .unwrap();
            let oldest = raw(&addr).await;
            let second = raw(&addr).await;
            let newest = raw(&addr).await;
            assert_eq!(login_on(&newest.client, TOKEN).await.unwrap(), None);
            let e = login_on(&oldest.client, TOKEN).await.unwrap_err();
            assert_eq!(e.kind, capnp::ErrorKind::Disconnected, "{e}");
            assert_eq!(login_on(&second.client, TOKEN).await.unwrap(), None);
            // The logged-in connection was never a candidate.
            let mut req = logged_in.client.publish_state_request();
            req.get().set_commit("c1");
            req.get().set_intent_hash("i1");
            req.send().promise.await.unwrap();
            logged_in.close().await;
            shutdown.cancel();
        });
    }

    /// A spec that does not validate (only a raw builder can express it) is
    /// refused with the field's name before the implementation sees it.
    #[test]
    fn an_invalid_spec_never_reaches_the_implementation() {
        crate::rpc::block_on_local(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let api = Rc::new(Counting::default());
            let shutdown = CancellationToken::new();
            tokio::task::spawn_local(serve(
                Rc::clone(&api),
                Authenticator::Open,
                listener,
                shutdown.clone(),
            ));
            let (conn, _) = crate::rpc::connect_master(&addr, Duration::from_secs(5), "")
                .await
                .unwrap();
            let mut req = conn.client.publish_state_request();
            let mut p = req.get();
            p.set_commit("c9");
            p.set_generation(9);
            p.set_intent_hash("i9");
            let mut s = p.init_vm_specs(1).get(0);
            s.set_name("evil");
            s.set_toplevel("/etc/passwd");
            let reply = req.send().promise.await.unwrap();
            let r = crate::convert::result_from_capnp(reply.get().unwrap().get_result().unwrap())
                .unwrap();
            let Err(e) = r else {
                panic!("an invalid spec was accepted")
            };
            assert!(e.message.contains("toplevel"), "{e}");
            assert_eq!(api.published.get(), 0);
            conn.close().await;
            shutdown.cancel();
        });
    }
}
