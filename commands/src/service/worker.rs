//! The `Worker` service adapter: `WorkerApi` (the worker implements it) served over Cap'n Proto.
//!
//! The adapter decodes each request with `convert`, checks the caller's
//! role and the connection's calls in flight, calls the `WorkerApi` and
//! writes the answer: failures of calls with a `Result` go back as its
//! `err` arm, failures of `read` and `listVms` (which have none) as a
//! `failed` exception carrying the message.
//!
//! Each connection's bootstrap is a `WorkerLogin` (see `auth`): an admin
//! token gets the whole interface, a reader token one whose mutating calls
//! are refused with permissionDenied. The capability the worker registers
//! with its control plane ([`WorkerCap`]) needs no login: whoever holds it
//! was given it.

use std::rc::Rc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Role};
use crate::common_capnp;
use crate::convert::{self, ErrorCode, RpcFailure};
use crate::rpc::{Conn, InFlight};
use crate::service::LoginGate;
use crate::types::{LogTail, VmDetails, VmId, VmSpec, VmStatus, WorkerStatus};
use crate::worker_capnp::{worker, worker_login};

/// Calls one connection (or the control plane's registered capability) may
/// have in flight; a worker works through VM operations one at a time anyway.
pub const MAX_IN_FLIGHT: u32 = 64;

/// The roles a worker's token file may grant.
pub const ROLES: &[Role] = &[Role::Admin, Role::Reader];

/// What a worker does, in domain types: the adapter owns the wire.
///
/// Every method has a default that refuses the call, so a fake worker in a
/// test or a benchmark implements only the calls it answers; the real
/// worker implements them all. The futures need not be `Send`: Cap'n Proto
/// servers run on a `LocalSet`.
#[allow(async_fn_in_trait)]
pub trait WorkerApi {
    /// The worker's own status (capacity, allocation, labels, version).
    async fn read(&self) -> Result<WorkerStatus, RpcFailure> {
        Err(not_implemented("read"))
    }

    /// Every VM the worker runs, in any state.
    async fn list_vms(&self) -> Result<Vec<VmStatus>, RpcFailure> {
        Err(not_implemented("listVms"))
    }

    /// Creates and boots a VM; answers once it runs (or why it could not).
    async fn create_vm(&self, spec: VmSpec) -> Result<VmStatus, RpcFailure> {
        let _ = spec;
        Err(not_implemented("createVm"))
    }

    /// Stops a VM and removes everything the worker kept for it.
    async fn delete_vm(&self, id: VmId) -> Result<(), RpcFailure> {
        let _ = id;
        Err(not_implemented("deleteVm"))
    }

    /// Spec, status, metrics and the hypervisor's view of one VM.
    async fn vm_info(&self, id: VmId) -> Result<VmDetails, RpcFailure> {
        let _ = id;
        Err(not_implemented("vmInfo"))
    }

    /// Pauses a running VM.
    async fn pause_vm(&self, id: VmId) -> Result<VmStatus, RpcFailure> {
        let _ = id;
        Err(not_implemented("pauseVm"))
    }

    /// Resumes a paused VM.
    async fn resume_vm(&self, id: VmId) -> Result<VmStatus, RpcFailure> {
        let _ = id;
        Err(not_implemented("resumeVm"))
    }

    /// The last `lines` lines of a VM's serial console (0: the default).
    async fn logs(&self, id: VmId, lines: u32) -> Result<LogTail, RpcFailure> {
        let _ = (id, lines);
        Err(not_implemented("logs"))
    }
}

fn not_implemented(call: &str) -> RpcFailure {
    RpcFailure::new(
        ErrorCode::Internal,
        format!("this worker does not implement {call}"),
    )
}

/// A `Worker` capability, opaque to everyone but this crate: the worker
/// makes one from its `WorkerApi` and hands it to the control plane in
/// `registerWorker` (possession is the grant).
#[derive(Clone)]
pub struct WorkerCap(pub(crate) worker::Client);

impl std::fmt::Debug for WorkerCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerCap")
    }
}

impl WorkerCap {
    /// A capability with every right over `api`, counting its own calls in
    /// flight (what the worker registers with its control plane).
    pub fn new<A: WorkerApi + 'static>(api: A) -> Self {
        WorkerCap(capnp_rpc::new_client(WorkerServer {
            api: Rc::new(api),
            read_only: false,
            in_flight: InFlight::new(MAX_IN_FLIGHT),
        }))
    }
}

/// The login checks of a worker's server: its tokens and the refusal
/// counts of its peers, shared by every connection (see [`login_bootstrap`]).
#[derive(Debug, Clone)]
pub struct WorkerAuth(Rc<LoginGate>);

impl WorkerAuth {
    pub fn new(auth: Authenticator) -> Self {
        WorkerAuth(Rc::new(LoginGate::new(auth)))
    }
}

/// The bootstrap capability of connection `conn`: a `WorkerLogin` over
/// `api` checking tokens with `auth`. For servers that pick their own
/// accept loop (`rpc::serve_limited`); [`serve`] is the usual way.
pub fn login_bootstrap<A: WorkerApi + 'static>(
    api: Rc<A>,
    auth: &WorkerAuth,
    conn: &Conn,
) -> capnp::capability::Client {
    let login: worker_login::Client = capnp_rpc::new_client(WorkerLogin {
        api,
        gate: Rc::clone(&auth.0),
        conn: conn.clone(),
        in_flight: InFlight::new(MAX_IN_FLIGHT),
    });
    login.client
}

/// Serves `api` on `listener` until `shutdown` fires, every connection
/// starting with a login checked by `auth`, within the default connection
/// limits. Must run inside a `LocalSet`.
pub async fn serve<A: WorkerApi + 'static>(
    listener: TcpListener,
    api: Rc<A>,
    auth: Authenticator,
    shutdown: CancellationToken,
) {
    let auth = WorkerAuth::new(auth);
    let make = move |conn: &Conn| login_bootstrap(Rc::clone(&api), &auth, conn);
    crate::rpc::serve_per_connection(listener, make, shutdown).await;
}

/// The bootstrap of one connection to a worker: nothing but `login`.
struct WorkerLogin<A> {
    api: Rc<A>,
    gate: Rc<LoginGate>,
    conn: Conn,
    /// Shared by every session of this connection: logging in again does
    /// not buy more slots.
    in_flight: InFlight,
}

impl<A: WorkerApi + 'static> worker_login::Server for WorkerLogin<A> {
    async fn login(
        self: capnp::capability::Rc<Self>,
        params: worker_login::LoginParams,
        mut results: worker_login::LoginResults,
    ) -> Result<(), capnp::Error> {
        let token = super::login_token(params.get().and_then(|p| p.get_token()));
        let grant = self.gate.login(&self.conn, token).await;
        let b = results.get().init_result();
        match grant {
            Ok(g) => {
                let mut ok = b.init_ok();
                ok.set_worker(capnp_rpc::new_client(WorkerServer {
                    api: Rc::clone(&self.api),
                    read_only: g.role != Role::Admin,
                    in_flight: self.in_flight.clone(),
                }));
                ok.set_role(g.role.to_capnp());
            }
            Err(e) => super::refuse_login(&e, b.init_err()),
        }
        Ok(())
    }
}

/// One session's view of the worker: its rights and the in-flight slots of
/// the connection it was logged in on.
struct WorkerServer<A> {
    api: Rc<A>,
    read_only: bool,
    in_flight: InFlight,
}

impl<A> WorkerServer<A> {
    /// Refuses a mutating call on a read-only session.
    fn may_change(&self, what: &str) -> Result<(), RpcFailure> {
        if self.read_only {
            Err(RpcFailure::new(
                ErrorCode::PermissionDenied,
                format!("a reader token may not {what}"),
            ))
        } else {
            Ok(())
        }
    }
}

fn parse_id(text: capnp::Result<capnp::text::Reader<'_>>) -> Result<VmId, RpcFailure> {
    let s = convert::text(text).map_err(RpcFailure::from)?;
    s.parse::<VmId>()
        .map_err(|e| RpcFailure::invalid(e.to_string()))
}

/// Fills a `Result(Ok)`: `ok` by `fill` from the value, or `err` from the
/// failure.
fn set_result<'a, T: capnp::traits::Owned, V>(
    b: common_capnp::result::Builder<'a, T>,
    r: Result<V, RpcFailure>,
    fill: impl FnOnce(&V, <T as capnp::traits::Owned>::Builder<'a>),
) {
    match r {
        Ok(v) => fill(&v, b.init_ok()),
        Err(e) => convert::error_to_capnp(&e, b.init_err()),
    }
}

/// A failure of a call without a `Result` in the schema, as an exception.
fn exception(f: RpcFailure) -> capnp::Error {
    capnp::Error::failed(f.message)
}

impl<A: WorkerApi + 'static> worker::Server for WorkerServer<A> {
    async fn read(
        self: capnp::capability::Rc<Self>,
        _: worker::ReadParams,
        mut results: worker::ReadResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let s = self.api.read().await.map_err(exception)?;
        convert::worker_status_to_capnp(&s, results.get().init_status());
        Ok(())
    }

    async fn list_vms(
        self: capnp::capability::Rc<Self>,
        _: worker::ListVmsParams,
        mut results: worker::ListVmsResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let vms = self.api.list_vms().await.map_err(exception)?;
        let mut list = results.get().init_vms(crate::client::len32(vms.len()));
        for (i, vm) in (0..).zip(&vms) {
            convert::vm_status_to_capnp(vm, list.reborrow().get(i));
        }
        Ok(())
    }

    async fn create_vm(
        self: capnp::capability::Rc<Self>,
        params: worker::CreateVmParams,
        mut results: worker::CreateVmResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let spec_r = params.get()?.get_spec()?;
        let spec = self
            .may_change("create VMs")
            .and_then(|()| convert::vm_spec_from_capnp(spec_r).map_err(RpcFailure::from));
        let r = async { self.api.create_vm(spec?).await }.await;
        set_result(results.get().init_result(), r, convert::vm_status_to_capnp);
        Ok(())
    }

    async fn delete_vm(
        self: capnp::capability::Rc<Self>,
        params: worker::DeleteVmParams,
        mut results: worker::DeleteVmResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let id = params.get()?.get_id();
        let id = self.may_change("delete VMs").and_then(|()| parse_id(id));
        let r = async { self.api.delete_vm(id?).await }.await;
        set_result::<common_capnp::empty::Owned, _>(results.get().init_result(), r, |(), _| {});
        Ok(())
    }

    async fn vm_info(
        self: capnp::capability::Rc<Self>,
        params: worker::VmInfoParams,
        mut results: worker::VmInfoResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let id = parse_id(params.get()?.get_id());
        let r = async { self.api.vm_info(id?).await }.await;
        set_result(results.get().init_result(), r, convert::vm_details_to_capnp);
        Ok(())
    }

    async fn pause_vm(
        self: capnp::capability::Rc<Self>,
        params: worker::PauseVmParams,
        mut results: worker::PauseVmResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let id = params.get()?.get_id();
        let id = self.may_change("pause VMs").and_then(|()| parse_id(id));
        let r = async { self.api.pause_vm(id?).await }.await;
        set_result(results.get().init_result(), r, convert::vm_status_to_capnp);
        Ok(())
    }

    async fn resume_vm(
        self: capnp::capability::Rc<Self>,
        params: worker::ResumeVmParams,
        mut results: worker::ResumeVmResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let id = params.get()?.get_id();
        let id = self.may_change("resume VMs").and_then(|()| parse_id(id));
        let r = async { self.api.resume_vm(id?).await }.await;
        set_result(results.get().init_result(), r, convert::vm_status_to_capnp);
        Ok(())
    }

    async fn logs(
        self: capnp::capability::Rc<Self>,
        params: worker::LogsParams,
        mut results: worker::LogsResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let p = params.get()?;
        let (id, lines) = (parse_id(p.get_id()), p.get_lines());
        let r = async { self.api.logs(id?, lines).await }.await;
        set_result(results.get().init_result(), r, convert::log_tail_to_capnp);
        Ok(())
    }
}
