//! A typed client of the `Master` interface, shared by `pcr`, `pcr-test`,
//! the worker's reconciler, the tests and the benchmarks: each call returns
//! a plain view from `model` or one error that says what went wrong.

use std::time::Duration;

use commands::convert::{
    ConvertError, RpcFailure, labels_to_capnp, resources_to_capnp, result_from_capnp,
    vm_metrics_to_capnp, vm_spec_to_capnp, vm_status_to_capnp,
};
use commands::master_capnp::master;
use commands::rpc::{self, Connection, RpcError, SessionInfo};
use commands::types::VmSpec;
use commands::worker_capnp::worker;

use crate::model::{
    self, AssignmentView, ClusterStatusView, GenerationView, PublishOutcomeView, WorkerMetricsView,
};
use crate::state::{ObservedVm, Registration};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] RpcError),
    #[error("rpc failed: {}", .0.extra)]
    Rpc(#[from] capnp::Error),
    #[error("malformed reply: {}", .0.to_message())]
    Reply(#[from] ConvertError),
    /// The control plane answered with an error as data.
    #[error(transparent)]
    Refused(#[from] RpcFailure),
}

/// A connection to a control plane.
pub struct MasterClient {
    conn: Connection<master::Client>,
    session: SessionInfo,
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl MasterClient {
    /// Connects to `addr` ("host:port") and logs in without a token (what a
    /// control plane without a token file takes). Must run inside a `LocalSet`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_with_token(addr, timeout, "").await
    }

    /// Connects to `addr` and logs in with `token`.
    pub async fn connect_with_token(
        addr: &str,
        timeout: Duration,
        token: &str,
    ) -> Result<Self, ClientError> {
        let (conn, session) = rpc::connect_master(addr, timeout, token).await?;
        Ok(MasterClient { conn, session })
    }

    /// The role (and worker id) the login granted.
    pub fn session(&self) -> &SessionInfo {
        &self.session
    }

    pub fn raw(&self) -> &master::Client {
        &self.conn.client
    }

    pub async fn close(self) {
        self.conn.close().await;
    }

    pub async fn publish(
        &self,
        commit: &str,
        generation: u64,
        intent_hash: &str,
        specs: &[VmSpec],
    ) -> Result<PublishOutcomeView, ClientError> {
        let mut req = self.conn.client.publish_state_request();
        {
            let mut p = req.get();
            p.set_commit(commit);
            p.set_generation(generation);
            p.set_intent_hash(intent_hash);
            let mut l = p.init_vm_specs(len32(specs.len()));
            for (i, s) in specs.iter().enumerate() {
                vm_spec_to_capnp(s, l.reborrow().get(len32(i)));
            }
        }
        let reply = req.send().promise.await?;
        let ok = result_from_capnp(reply.get()?.get_result()?)??;
        Ok(model::publish_outcome_from_capnp(ok)?)
    }

    pub async fn register(
        &self,
        reg: &Registration,
        cap: worker::Client,
    ) -> Result<(), ClientError> {
        let mut req = self.conn.client.register_worker_request();
        {
            let mut p = req.get();
            p.set_worker(cap);
            let mut r = p.init_registration();
            r.set_worker_id(reg.worker_id.as_str());
            r.set_address(&reg.address);
            resources_to_capnp(reg.capacity, r.reborrow().init_capacity());
            labels_to_capnp(&reg.labels, r.init_labels(len32(reg.labels.len())));
        }
        let reply = req.send().promise.await?;
        result_from_capnp(reply.get()?.get_result()?)??;
        Ok(())
    }

    /// The long-poll: returns when there is something newer than
    /// (last_generation, last_revision) or after the server's timeout
    /// (`changed == false`).
    pub async fn get_assignment(
        &self,
        worker_id: &str,
        last_generation: u64,
        last_revision: u64,
    ) -> Result<AssignmentView, ClientError> {
        let mut req = self.conn.client.get_assignment_request();
        {
            let mut p = req.get();
            p.set_worker_id(worker_id);
            p.set_last_seen_generation(last_generation);
            p.set_last_seen_revision(last_revision);
        }
        let reply = req.send().promise.await?;
        let ok = result_from_capnp(reply.get()?.get_result()?)??;
        Ok(model::assignment_from_capnp(ok)?)
    }

    pub async fn push_data(
        &self,
        worker_id: &str,
        observed_generation: u64,
        running: &[ObservedVm],
        metrics: &WorkerMetricsView,
    ) -> Result<(), ClientError> {
        let mut req = self.conn.client.push_data_request();
        {
            let mut p = req.get();
            p.set_worker_id(worker_id);
            p.set_observed_generation(observed_generation);
            model::worker_metrics_to_capnp(metrics, p.reborrow().init_metrics());
            let mut l = p.init_running_vms(len32(running.len()));
            for (i, vm) in running.iter().enumerate() {
                let mut e = l.reborrow().get(len32(i));
                vm_status_to_capnp(&vm.status, e.reborrow().init_status());
                vm_metrics_to_capnp(&vm.metrics, e.init_metrics());
            }
        }
        let reply = req.send().promise.await?;
        result_from_capnp(reply.get()?.get_result()?)??;
        Ok(())
    }

    pub async fn status(&self) -> Result<ClusterStatusView, ClientError> {
        let reply = self
            .conn
            .client
            .get_cluster_status_request()
            .send()
            .promise
            .await?;
        Ok(model::status_from_capnp(reply.get()?.get_status()?)?)
    }

    pub async fn generations(&self) -> Result<Vec<GenerationView>, ClientError> {
        let reply = self
            .conn
            .client
            .list_generations_request()
            .send()
            .promise
            .await?;
        Ok(model::generations_from_capnp(
            reply.get()?.get_generations()?,
        )?)
    }

    /// The worker's own capability, proxied through the control plane.
    pub async fn worker(&self, worker_id: &str) -> Result<worker::Client, ClientError> {
        let mut req = self.conn.client.get_worker_request();
        req.get().set_worker_id(worker_id);
        let reply = req.send().promise.await?;
        let ok = result_from_capnp(reply.get()?.get_result()?)??;
        Ok(ok.get_worker()?)
    }
}
