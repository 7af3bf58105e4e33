//! The typed `Worker` client: a direct connection (`connect`) or a worker
//! capability handed out by the control plane's `getWorker`
//! (`from_capability`).

use std::time::Duration;

use crate::convert;
use crate::rpc::{self, Connection, SessionInfo};
use crate::types::{LogTail, VmDetails, VmId, VmSpec, VmStatus, WorkerStatus};
use crate::worker_capnp::worker;

use super::ClientError;

/// Sends a request whose only parameter is a VM id and converts the
/// success with `$from`. A macro because each request is its own generated
/// type, with no common trait to be generic over.
macro_rules! call_by_id {
    ($req:expr, $id:expr, $from:path) => {{
        let mut req = $req;
        req.get().set_id($id.as_str());
        let reply = req.send().promise.await?;
        let ok = convert::result_from_capnp(reply.get()?.get_result()?)??;
        Ok($from(ok)?)
    }};
}

/// A session with one worker.
pub struct WorkerClient {
    cap: worker::Client,
    /// `None` when the capability came through another connection (the
    /// control plane's `getWorker`): that connection owns its lifetime.
    conn: Option<Connection<()>>,
    session: Option<SessionInfo>,
}

impl std::fmt::Debug for WorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerClient")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl WorkerClient {
    /// Connects to a worker at `addr` ("host:port") and logs in with
    /// `token` (empty for a worker without a token file). Must run inside a
    /// `LocalSet`.
    pub async fn connect(addr: &str, timeout: Duration, token: &str) -> Result<Self, ClientError> {
        let (conn, session) = rpc::connect_worker(addr, timeout, token).await?;
        let (cap, conn) = conn.split();
        Ok(WorkerClient {
            cap,
            conn: Some(conn),
            session: Some(session),
        })
    }

    /// Wraps a worker capability obtained through another connection.
    pub(crate) fn from_capability(cap: worker::Client) -> Self {
        WorkerClient {
            cap,
            conn: None,
            session: None,
        }
    }

    /// The role the login granted (`None` for a proxied capability).
    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref()
    }

    /// Closes a direct connection gracefully (a proxied one is left alone).
    pub async fn close(self) {
        if let Some(c) = self.conn {
            c.close().await;
        }
    }
}

impl WorkerClient {
    /// The worker's own status (capacity, allocation, labels, version).
    pub async fn read(&self) -> Result<WorkerStatus, ClientError> {
        let reply = self.cap.read_request().send().promise.await?;
        Ok(convert::worker_status_from_capnp(
            reply.get()?.get_status()?,
        )?)
    }

    /// Every VM the worker runs, in any state.
    pub async fn list_vms(&self) -> Result<Vec<VmStatus>, ClientError> {
        let reply = self.cap.list_vms_request().send().promise.await?;
        let list = reply.get()?.get_vms()?;
        convert::check_len(list.len(), convert::MAX_LIST)?;
        Ok(list
            .iter()
            .map(convert::vm_status_from_capnp)
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Creates and boots a VM; answers once it runs (or why it could not).
    pub async fn create_vm(&self, spec: &VmSpec) -> Result<VmStatus, ClientError> {
        let mut req = self.cap.create_vm_request();
        convert::vm_spec_to_capnp(spec, req.get().init_spec());
        let reply = req.send().promise.await?;
        let ok = convert::result_from_capnp(reply.get()?.get_result()?)??;
        Ok(convert::vm_status_from_capnp(ok)?)
    }

    /// Stops a VM and removes everything the worker kept for it.
    pub async fn delete_vm(&self, id: &VmId) -> Result<(), ClientError> {
        let mut req = self.cap.delete_vm_request();
        req.get().set_id(id.as_str());
        let reply = req.send().promise.await?;
        convert::result_from_capnp(reply.get()?.get_result()?)??;
        Ok(())
    }

    /// Spec, status, metrics and the hypervisor's view of one VM.
    pub async fn vm_info(&self, id: &VmId) -> Result<VmDetails, ClientError> {
        call_by_id!(
            self.cap.vm_info_request(),
            id,
            convert::vm_details_from_capnp
        )
    }

    /// Pauses a running VM.
    pub async fn pause_vm(&self, id: &VmId) -> Result<VmStatus, ClientError> {
        call_by_id!(
            self.cap.pause_vm_request(),
            id,
            convert::vm_status_from_capnp
        )
    }

    /// Resumes a paused VM.
    pub async fn resume_vm(&self, id: &VmId) -> Result<VmStatus, ClientError> {
        call_by_id!(
            self.cap.resume_vm_request(),
            id,
            convert::vm_status_from_capnp
        )
    }

    /// The last `lines` lines of a VM's serial console.
    pub async fn logs(&self, id: &VmId, lines: u32) -> Result<LogTail, ClientError> {
        let mut req = self.cap.logs_request();
        {
            let mut p = req.get();
            p.set_id(id.as_str());
            p.set_lines(lines);
        }
        let reply = req.send().promise.await?;
        let ok = convert::result_from_capnp(reply.get()?.get_result()?)??;
        Ok(convert::log_tail_from_capnp(ok)?)
    }
}
