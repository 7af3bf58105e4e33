//! The typed `Master` client: what `pcr`, `pcr-test`, the worker's
//! reconciler, ci_service's publisher, repohub's cluster panel, the tests
//! and the benchmarks use to talk to a control plane. Each call returns a
//! view from `crate::model` or one `ClientError`.

use std::time::Duration;

use crate::convert::master::{
    assignment_from_capnp, events_from_capnp, generation_detail_from_capnp, generations_from_capnp,
    projects_from_capnp, publish_meta_to_capnp, publish_outcome_from_capnp, registration_to_capnp,
    running_vms_to_capnp, status_from_capnp, worker_metrics_to_capnp,
};
use crate::convert::{result_from_capnp, vm_spec_to_capnp};
use crate::master_capnp::master;
use crate::model::{
    AssignmentView, ClusterStatusView, EventView, GenerationDetailView, GenerationView, ObservedVm,
    ProjectStatusView, PublishMeta, PublishOutcomeView, Registration, WorkerMetricsView,
};
use crate::rpc::{self, Connection, SessionInfo};
use crate::service::worker::WorkerCap;
use crate::types::{ProjectName, VmSpec};

use super::{ClientError, WorkerClient, len32};

/// A logged-in connection to a control plane.
#[derive(Debug)]
pub struct MasterClient {
    conn: Connection<master::Client>,
    session: SessionInfo,
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

    /// Closes the connection gracefully.
    pub async fn close(self) {
        self.conn.close().await;
    }

    /// Publishes a generation of `project` (admin and ci tokens; a
    /// `ci:<project>` token for its own project only). Touches no other
    /// project; empty `specs` delete the project's VMs.
    pub async fn publish(
        &self,
        project: &str,
        commit: &str,
        generation: u64,
        intent_hash: &str,
        specs: &[VmSpec],
    ) -> Result<PublishOutcomeView, ClientError> {
        self.publish_with_meta(
            project,
            commit,
            generation,
            intent_hash,
            specs,
            &PublishMeta::default(),
        )
        .await
    }

    /// Like [`Self::publish`], saying where the generation came from
    /// (author, message, CI job): `pcr history` shows it.
    pub async fn publish_with_meta(
        &self,
        project: &str,
        commit: &str,
        generation: u64,
        intent_hash: &str,
        specs: &[VmSpec],
        meta: &PublishMeta,
    ) -> Result<PublishOutcomeView, ClientError> {
        let mut req = self.conn.client.publish_state_request();
        {
            let mut p = req.get();
            p.set_commit(commit);
            p.set_generation(generation);
            p.set_intent_hash(intent_hash);
            p.set_project(project);
            publish_meta_to_capnp(meta, p.reborrow().init_meta());
            let mut l = p.init_vm_specs(len32(specs.len()));
            for (i, s) in specs.iter().enumerate() {
                vm_spec_to_capnp(s, l.reborrow().get(len32(i)));
            }
        }
        let reply = req.send().promise.await?;
        let ok = result_from_capnp(reply.get()?.get_result()?)??;
        Ok(publish_outcome_from_capnp(ok)?)
    }

    /// Registers a worker with the capability the control plane will hand
    /// to admins (`getWorker`).
    pub async fn register(&self, reg: &Registration, cap: WorkerCap) -> Result<(), ClientError> {
        let mut req = self.conn.client.register_worker_request();
        {
            let mut p = req.get();
            p.set_worker(cap.0);
            registration_to_capnp(reg, p.init_registration());
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
        Ok(assignment_from_capnp(ok)?)
    }

    /// A worker's heartbeat: what it runs and how loaded it is.
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
            worker_metrics_to_capnp(metrics, p.reborrow().init_metrics());
            running_vms_to_capnp(running, p.init_running_vms(len32(running.len())));
        }
        let reply = req.send().promise.await?;
        result_from_capnp(reply.get()?.get_result()?)??;
        Ok(())
    }

    /// The whole cluster: active generation, placements, workers' health.
    pub async fn status(&self) -> Result<ClusterStatusView, ClientError> {
        let reply = self
            .conn
            .client
            .get_cluster_status_request()
            .send()
            .promise
            .await?;
        Ok(status_from_capnp(reply.get()?.get_status()?)?)
    }

    /// The generations the control plane remembers of `project` (every
    /// project when `None`), oldest first.
    pub async fn generations(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<GenerationView>, ClientError> {
        let mut req = self.conn.client.list_generations_request();
        req.get().set_project(project.unwrap_or(""));
        let reply = req.send().promise.await?;
        Ok(generations_from_capnp(reply.get()?.get_generations()?)?)
    }

    /// The event log, oldest first: events after `after_id`, at most
    /// `limit` (0 = the server's page size), of `project` (every project
    /// the token may see when `None`).
    pub async fn list_events(
        &self,
        project: Option<&ProjectName>,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<EventView>, ClientError> {
        let mut req = self.conn.client.list_events_request();
        {
            let mut p = req.get();
            p.set_project(project.map_or("", |p| p.as_str()));
            p.set_after_id(after_id);
            p.set_limit(limit);
        }
        let reply = req.send().promise.await?;
        Ok(events_from_capnp(reply.get()?.get_events()?)?)
    }

    /// Generation `number` of `project` with the specs it published.
    pub async fn generation(
        &self,
        project: &ProjectName,
        number: u64,
    ) -> Result<GenerationDetailView, ClientError> {
        let mut req = self.conn.client.get_generation_request();
        {
            let mut p = req.get();
            p.set_project(project.as_str());
            p.set_number(number);
        }
        let reply = req.send().promise.await?;
        let ok = result_from_capnp(reply.get()?.get_result()?)??;
        Ok(generation_detail_from_capnp(ok)?)
    }

    /// Every project with its quota, usage, generation and convergence.
    pub async fn projects(&self) -> Result<Vec<ProjectStatusView>, ClientError> {
        let reply = self.conn.client.projects_request().send().promise.await?;
        Ok(projects_from_capnp(reply.get()?.get_projects()?)?)
    }

    /// The worker's own capability, proxied through the control plane
    /// (admin tokens): calls on it travel over this connection.
    pub async fn worker(&self, worker_id: &str) -> Result<WorkerClient, ClientError> {
        let mut req = self.conn.client.get_worker_request();
        req.get().set_worker_id(worker_id);
        let reply = req.send().promise.await?;
        let ok = result_from_capnp(reply.get()?.get_result()?)??;
        Ok(WorkerClient::from_capability(ok.get_worker()?))
    }
}
