//! The Cap'n Proto `Worker` server: stateless, it converts each request to
//! domain types (`commands::convert`), sends a `Command` through its
//! `CommandSender` and writes the answer. Failures go back as the `err` arm
//! of `Result(Ok)` with an ErrorCode and one clear line.
//!
//! Each connection's bootstrap is a `WorkerLogin` (see `commands::auth`):
//! an admin token gets the whole `Server`, a reader token one whose
//! mutating calls are refused with permissionDenied. Every `Server` counts
//! its calls in flight and refuses more than [`MAX_IN_FLIGHT`].

use std::rc::Rc as StdRc;

use capnp::capability::Rc;
use commands::auth::{Authenticator, Role};
use commands::common_capnp;
use commands::convert::{self, ErrorCode, RpcFailure};
use commands::rpc::InFlight;
use commands::worker_capnp::{worker, worker_login};

use crate::dto::VmId;
use crate::manager::WorkerError;
use crate::node::CommandSender;

/// Calls one connection (or the control plane's registered capability) may
/// have in flight; the manager works through them one at a time anyway.
pub const MAX_IN_FLIGHT: u32 = 64;

/// The roles a worker's token file may grant.
pub const ROLES: &[Role] = &[Role::Admin, Role::Reader];

#[derive(Clone)]
pub struct Server {
    sender: CommandSender,
    read_only: bool,
    in_flight: InFlight,
}

impl Server {
    /// A server with every right (what the worker registers with its control plane).
    pub fn new(sender: CommandSender) -> Self {
        Server {
            sender,
            read_only: false,
            in_flight: InFlight::new(MAX_IN_FLIGHT),
        }
    }

    /// A server for `role` (readers may only read) counting its calls in
    /// `in_flight`, the slots of the connection it was logged in on.
    pub fn for_role(sender: CommandSender, role: Role, in_flight: InFlight) -> Self {
        Server {
            sender,
            read_only: role != Role::Admin,
            in_flight,
        }
    }

    pub fn client(self) -> worker::Client {
        capnp_rpc::new_client(self)
    }

    /// Refuses a mutating call on a read-only server.
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

/// How long a refused login takes to answer (slows token guessing).
const LOGIN_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// The bootstrap of one connection to the worker: nothing but `login`.
pub struct Login {
    sender: CommandSender,
    auth: StdRc<Authenticator>,
    /// Shared by every session of this connection: logging in again does
    /// not buy more slots.
    in_flight: InFlight,
}

impl Login {
    pub fn new(sender: CommandSender, auth: StdRc<Authenticator>) -> Self {
        Login {
            sender,
            auth,
            in_flight: InFlight::new(MAX_IN_FLIGHT),
        }
    }

    pub fn client(self) -> worker_login::Client {
        capnp_rpc::new_client(self)
    }
}

impl worker_login::Server for Login {
    async fn login(
        self: Rc<Self>,
        params: worker_login::LoginParams,
        mut results: worker_login::LoginResults,
    ) -> Result<(), capnp::Error> {
        let token = params
            .get()
            .and_then(|p| p.get_token())
            .ok()
            .and_then(|t| t.to_str().ok().map(str::to_owned))
            .unwrap_or_default();
        let grant = self.auth.login(&token);
        drop(token);
        let b = results.get().init_result();
        match grant {
            Ok(g) => {
                let mut ok = b.init_ok();
                ok.set_worker(
                    Server::for_role(self.sender.clone(), g.role, self.in_flight.clone()).client(),
                );
                ok.set_role(g.role.to_capnp());
            }
            Err(e) => {
                tracing::warn!(error = %e, "login refused");
                tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
                convert::error_to_capnp(
                    &RpcFailure::new(ErrorCode::PermissionDenied, e.to_string()),
                    b.init_err(),
                );
            }
        }
        Ok(())
    }
}

fn failure(e: &WorkerError) -> RpcFailure {
    RpcFailure::new(e.code(), e.message())
}

fn parse_id(text: capnp::Result<capnp::text::Reader<'_>>) -> Result<VmId, RpcFailure> {
    let s = convert::text(text).map_err(RpcFailure::from)?;
    s.parse::<VmId>()
        .map_err(|e| RpcFailure::invalid(e.to_string()))
}

/// Fills a `Result(Ok)`: `ok` by `fill`, or `err` from the failure.
fn set_result<'a, T: capnp::traits::Owned>(
    b: common_capnp::result::Builder<'a, T>,
    r: Result<impl FnOnce(<T as capnp::traits::Owned>::Builder<'a>), RpcFailure>,
) {
    match r {
        Ok(fill) => fill(b.init_ok()),
        Err(e) => convert::error_to_capnp(&e, b.init_err()),
    }
}

fn internal(e: impl std::fmt::Display) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

impl worker::Server for Server {
    async fn read(
        self: Rc<Self>,
        _: worker::ReadParams,
        mut results: worker::ReadResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let s = self
            .sender
            .read()
            .await
            .map_err(|e| internal(e.message()))?;
        convert::worker_status_to_capnp(&s, results.get().init_status());
        Ok(())
    }

    async fn list_vms(
        self: Rc<Self>,
        _: worker::ListVmsParams,
        mut results: worker::ListVmsResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let vms = self
            .sender
            .list_vms()
            .await
            .map_err(|e| internal(e.message()))?;
        let mut list = results.get().init_vms(vms.len() as u32);
        for (i, vm) in vms.iter().enumerate() {
            convert::vm_status_to_capnp(vm, list.reborrow().get(i as u32));
        }
        Ok(())
    }

    async fn create_vm(
        self: Rc<Self>,
        params: worker::CreateVmParams,
        mut results: worker::CreateVmResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let spec_r = params.get()?.get_spec()?;
        let spec = self
            .may_change("create VMs")
            .and_then(|()| convert::vm_spec_from_capnp(spec_r).map_err(RpcFailure::from));
        let r = match spec {
            Ok(spec) => self.sender.create_vm(spec).await.map_err(|e| failure(&e)),
            Err(e) => Err(e),
        };
        set_result(
            results.get().init_result(),
            r.map(|s| move |b| convert::vm_status_to_capnp(&s, b)),
        );
        Ok(())
    }

    async fn delete_vm(
        self: Rc<Self>,
        params: worker::DeleteVmParams,
        mut results: worker::DeleteVmResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let p = params.get()?;
        let r = match self
            .may_change("delete VMs")
            .and_then(|()| parse_id(p.get_id()))
        {
            Ok(id) => self.sender.delete_vm(id).await.map_err(|e| failure(&e)),
            Err(e) => Err(e),
        };
        set_result::<common_capnp::empty::Owned>(results.get().init_result(), r.map(|()| |_| {}));
        Ok(())
    }

    async fn vm_info(
        self: Rc<Self>,
        params: worker::VmInfoParams,
        mut results: worker::VmInfoResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let r = match parse_id(params.get()?.get_id()) {
            Ok(id) => self.sender.vm_info(id).await.map_err(|e| failure(&e)),
            Err(e) => Err(e),
        };
        set_result(
            results.get().init_result(),
            r.map(|d| move |b| convert::vm_details_to_capnp(&d, b)),
        );
        Ok(())
    }

    async fn pause_vm(
        self: Rc<Self>,
        params: worker::PauseVmParams,
        mut results: worker::PauseVmResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let p = params.get()?;
        let r = match self
            .may_change("pause VMs")
            .and_then(|()| parse_id(p.get_id()))
        {
            Ok(id) => self.sender.pause_vm(id).await.map_err(|e| failure(&e)),
            Err(e) => Err(e),
        };
        set_result(
            results.get().init_result(),
            r.map(|s| move |b| convert::vm_status_to_capnp(&s, b)),
        );
        Ok(())
    }

    async fn resume_vm(
        self: Rc<Self>,
        params: worker::ResumeVmParams,
        mut results: worker::ResumeVmResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let p = params.get()?;
        let r = match self
            .may_change("resume VMs")
            .and_then(|()| parse_id(p.get_id()))
        {
            Ok(id) => self.sender.resume_vm(id).await.map_err(|e| failure(&e)),
            Err(e) => Err(e),
        };
        set_result(
            results.get().init_result(),
            r.map(|s| move |b| convert::vm_status_to_capnp(&s, b)),
        );
        Ok(())
    }

    async fn logs(
        self: Rc<Self>,
        params: worker::LogsParams,
        mut results: worker::LogsResults,
    ) -> Result<(), capnp::Error> {
        let _slot = self.in_flight.enter()?;
        let p = params.get()?;
        let lines = p.get_lines();
        let r = match parse_id(p.get_id()) {
            Ok(id) => self.sender.logs(id, lines).await.map_err(|e| failure(&e)),
            Err(e) => Err(e),
        };
        set_result(
            results.get().init_result(),
            r.map(|t| move |b| convert::log_tail_to_capnp(&t, b)),
        );
        Ok(())
    }
}
