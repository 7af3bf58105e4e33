//! The Cap'n Proto `Worker` server: stateless, it converts each request to
//! domain types (`commands::convert`), sends a `Command` through its
//! `CommandSender` and writes the answer. Failures go back as the `err` arm
//! of `Result(Ok)` with an ErrorCode and one clear line.

use capnp::capability::Rc;
use commands::common_capnp;
use commands::convert::{self, RpcFailure};
use commands::worker_capnp::worker;

use crate::dto::VmId;
use crate::manager::WorkerError;
use crate::node::CommandSender;

#[derive(Clone)]
pub struct Server {
    sender: CommandSender,
}

impl Server {
    pub fn new(sender: CommandSender) -> Self {
        Server { sender }
    }

    pub fn client(self) -> worker::Client {
        capnp_rpc::new_client(self)
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
        let spec = convert::vm_spec_from_capnp(params.get()?.get_spec()?).map_err(RpcFailure::from);
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
        let r = match parse_id(params.get()?.get_id()) {
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
        let r = match parse_id(params.get()?.get_id()) {
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
        let r = match parse_id(params.get()?.get_id()) {
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
