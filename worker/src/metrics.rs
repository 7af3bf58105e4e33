//! The worker's Prometheus metrics: create and delete latency, failures
//! of the cloud-hypervisor API by step, closure pulls (bytes and time)
//! counted where they happen; VMs by state and per-VM CPU, RSS, disk,
//! network and egress drops set from the manager's own answers just
//! before each scrape.

use std::sync::Arc;
use std::time::Duration;

use commands::metrics::{
    Counter, Counters, FloatGauges, Gauges, Histogram, Latencies, Metrics, labels,
};
use commands::types::{VmDetails, VmState};

use crate::manager::WorkerError;
use crate::node::CommandSender;
use crate::vmm::VmmError;

/// Handles on every family; cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: Arc<Metrics>,
    create_seconds: Latencies,
    delete_seconds: Histogram,
    ch_api_errors: Counters,
    pull_bytes: Counter,
    pull_seconds: Latencies,
    vms: Gauges,
    vm_cpu_seconds: FloatGauges,
    vm_rss_bytes: Gauges,
    vm_disk_bytes: Gauges,
    vm_net_bytes: Gauges,
    vm_egress_dropped: Gauges,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut m = Metrics::new("worker");
        let create_seconds = m.latencies(
            "vm_create_seconds",
            "Time from create request to a booted VM (or the failure), by outcome.",
        );
        let delete_seconds = m.latency(
            "vm_delete_seconds",
            "Time to shut a VM down and remove its files.",
        );
        let ch_api_errors = m.counters(
            "ch_api_errors",
            "Failed calls to a cloud-hypervisor process (its API, socket or process), by step.",
        );
        let pull_bytes = m.counter(
            "closure_pull_bytes",
            "Bytes of store paths pulled from the binary cache.",
        );
        let pull_seconds = m.latencies(
            "closure_pull_seconds",
            "Time of each closure pull from the binary cache, by outcome.",
        );
        let vms = m.gauges("vms", "VMs on this worker, by state.");
        let vm_cpu_seconds = m.float_gauges(
            "vm_cpu_seconds",
            "CPU time used by the VM's hypervisor process so far, by VM.",
        );
        let vm_rss_bytes = m.gauges(
            "vm_rss_bytes",
            "Resident memory of the VM's hypervisor process, by VM.",
        );
        let vm_disk_bytes = m.gauges(
            "vm_disk_bytes",
            "Bytes the VM read or wrote on its disks, by VM and direction.",
        );
        let vm_net_bytes = m.gauges(
            "vm_net_bytes",
            "Bytes the VM received or sent, by VM and direction.",
        );
        let vm_egress_dropped = m.gauges(
            "vm_egress_dropped_packets",
            "Packets the egress rules dropped for the VM, by VM.",
        );
        WorkerMetrics {
            registry: Arc::new(m),
            create_seconds,
            delete_seconds,
            ch_api_errors,
            pull_bytes,
            pull_seconds,
            vms,
            vm_cpu_seconds,
            vm_rss_bytes,
            vm_disk_bytes,
            vm_net_bytes,
            vm_egress_dropped,
        }
    }
}

impl WorkerMetrics {
    /// The registry to serve.
    pub fn registry(&self) -> Arc<Metrics> {
        Arc::clone(&self.registry)
    }

    /// Records a create that took `took`; a failure talking to the
    /// hypervisor also counts as a CH API error of its step.
    pub fn created<T>(&self, result: &Result<T, WorkerError>, took: Duration) {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.create_seconds
            .get_or_create(&labels([("outcome", outcome)]))
            .observe(took.as_secs_f64());
        if let Err(WorkerError::Vmm { step, source }) = result
            && is_ch_failure(source)
        {
            self.ch_api_error(step);
        }
    }

    /// Counts a failed call to a hypervisor during `step`.
    pub fn ch_api_error(&self, step: &str) {
        self.ch_api_errors
            .get_or_create(&labels([("step", step)]))
            .inc();
    }

    /// Records a delete that took `took`.
    pub fn deleted(&self, took: Duration) {
        self.delete_seconds.observe(took.as_secs_f64());
    }

    /// Records a closure pull of `bytes` that took `took`.
    pub fn pulled(&self, ok: bool, bytes: u64, took: Duration) {
        let outcome = if ok { "ok" } else { "failed" };
        self.pull_seconds
            .get_or_create(&labels([("outcome", outcome)]))
            .observe(took.as_secs_f64());
        self.pull_bytes.inc_by(bytes);
    }

    /// Sets the VM gauges from the manager's answers (called before each
    /// scrape): every VM's state, and each VM's details (CH counters, RSS,
    /// egress drops) plus the CPU time of its process.
    pub async fn refresh(&self, sender: &CommandSender) {
        let Ok(vms) = sender.list_vms().await else {
            return;
        };
        let mut details = Vec::with_capacity(vms.len());
        for vm in &vms {
            if let Ok(d) = sender.vm_info(vm.id.clone()).await {
                details.push(d);
            }
        }
        self.set(&vms.iter().map(|v| v.state).collect::<Vec<_>>(), &details);
    }

    fn set(&self, states: &[VmState], details: &[VmDetails]) {
        // Cleared first: a deleted VM's series disappear with it.
        for f in [
            &self.vms,
            &self.vm_rss_bytes,
            &self.vm_disk_bytes,
            &self.vm_net_bytes,
            &self.vm_egress_dropped,
        ] {
            f.clear();
        }
        self.vm_cpu_seconds.clear();
        for s in [
            VmState::Creating,
            VmState::Running,
            VmState::Paused,
            VmState::Stopping,
            VmState::Failed,
            VmState::Stopped,
        ] {
            let n = states.iter().filter(|x| **x == s).count();
            self.vms
                .get_or_create(&labels([("state", &s.to_string())]))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for d in details {
            let st = &d.status;
            let vm = [
                ("vm_id", st.id.to_string()),
                ("project", st.project.to_string()),
                ("name", st.name.to_string()),
            ];
            let with = |extra: Option<(&'static str, &str)>| {
                let mut l: Vec<(&'static str, String)> = vm.to_vec();
                l.extend(extra.map(|(k, v)| (k, v.to_owned())));
                l
            };
            let m = &d.metrics;
            if let Some(ticks) = st.pid.and_then(crate::procfs::cpu_ticks) {
                self.vm_cpu_seconds
                    .get_or_create(&with(None))
                    .set(ticks as f64 / crate::procfs::TICKS_PER_SEC);
            }
            self.vm_rss_bytes
                .get_or_create(&with(None))
                .set(gauge(m.rss_bytes));
            self.vm_egress_dropped
                .get_or_create(&with(None))
                .set(gauge(m.egress_dropped_packets));
            for (dir, disk, net) in [
                ("read", m.disk_read_bytes, m.net_rx_bytes),
                ("write", m.disk_write_bytes, m.net_tx_bytes),
            ] {
                self.vm_disk_bytes
                    .get_or_create(&with(Some(("direction", dir))))
                    .set(gauge(disk));
                let net_dir = if dir == "read" { "rx" } else { "tx" };
                self.vm_net_bytes
                    .get_or_create(&with(Some(("direction", net_dir))))
                    .set(gauge(net));
            }
        }
    }
}

/// Whether `e` is the hypervisor failing (its process, socket or API),
/// rather than our preparation (closure, disk, store).
fn is_ch_failure(e: &VmmError) -> bool {
    matches!(
        e,
        VmmError::Spawn { .. }
            | VmmError::ExitedEarly { .. }
            | VmmError::SocketTimeout { .. }
            | VmmError::Connect { .. }
            | VmmError::Api { .. }
            | VmmError::Timeout { .. }
            | VmmError::BadResponse { .. }
            | VmmError::Http { .. }
    )
}
