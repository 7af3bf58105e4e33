//! Plain, serde-serializable views of what the `Master` interface carries
//! (cluster status, assignments, publish outcomes, a worker's registration
//! and its report). The control plane fills replies from these, every client
//! (`pcr`, `pcr-test`, the worker's reconciler, ci_service, repohub) reads
//! replies into them, and `--json` prints them as they are, so their JSON
//! shape (camelCase) is part of the CLI's contract. The Cap'n Proto
//! conversions live in `convert::master`.

use serde::{Deserialize, Serialize};

use crate::types::{Labels, Resources, VmKey, VmMetrics, VmSpec, VmState, VmStatus, WorkerId};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationView {
    /// The project it belongs to; numbers and intent hashes are per project.
    pub project: String,
    pub number: u64,
    pub commit: String,
    pub intent_hash: String,
    pub vm_count: u32,
    pub published_at_ms: u64,
    /// The commit's author name ("" when the publisher did not say).
    #[serde(default)]
    pub author: String,
    /// The first line of the commit message.
    #[serde(default)]
    pub message: String,
    /// The CI job that published it (0 for a hand publish).
    #[serde(default)]
    pub job_id: u64,
    /// When every VM of it first ran its desired version (0 until then).
    #[serde(default)]
    pub converged_at_ms: u64,
    /// Its rollouts in one line: "" (no group has a policy), "rolling web
    /// 2/5", "rolled", "paused: …", "reverted: …".
    #[serde(default)]
    pub rollout: String,
}

/// Where a published generation came from, as CI knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishMeta {
    /// The commit's author name.
    pub author: String,
    /// The first line of the commit message.
    pub message: String,
    /// The CI job (0 for a hand publish).
    pub job_id: u64,
}

/// One remembered generation with the specs it published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationDetailView {
    pub generation: GenerationView,
    pub specs: Vec<VmSpec>,
}

/// What happened, as an event's `kind` names it.
pub mod event_kind {
    pub const GENERATION_PUBLISHED: &str = "generation-published";
    pub const GENERATION_CONVERGED: &str = "generation-converged";
    pub const VM_PLACED: &str = "vm-placed";
    pub const VM_REPLACED: &str = "vm-replaced";
    pub const VM_REMOVED: &str = "vm-removed";
    pub const VM_FAILED: &str = "vm-failed";
    pub const VM_UNPLACED: &str = "vm-unplaced";
    pub const WORKER_JOINED: &str = "worker-joined";
    pub const WORKER_UNHEALTHY: &str = "worker-unhealthy";
    pub const WORKER_HEALTHY: &str = "worker-healthy";
    pub const ROLLOUT_BATCH: &str = "rollout-batch";
    pub const ROLLOUT_PAUSED: &str = "rollout-paused";
    pub const ROLLOUT_REVERTED: &str = "rollout-reverted";
    pub const ROLLOUT_DONE: &str = "rollout-done";

    /// Every kind, in the order above.
    pub const ALL: [&str; 14] = [
        GENERATION_PUBLISHED,
        GENERATION_CONVERGED,
        VM_PLACED,
        VM_REPLACED,
        VM_REMOVED,
        VM_FAILED,
        VM_UNPLACED,
        WORKER_JOINED,
        WORKER_UNHEALTHY,
        WORKER_HEALTHY,
        ROLLOUT_BATCH,
        ROLLOUT_PAUSED,
        ROLLOUT_REVERTED,
        ROLLOUT_DONE,
    ];
}

/// One entry of the control plane's event log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Increasing; `listEvents` pages with it (`afterId`).
    pub id: u64,
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// "" for a worker's events.
    pub project: String,
    /// One of [`event_kind::ALL`].
    pub kind: String,
    pub vm: String,
    pub worker_id: String,
    pub generation: u64,
    /// One line a person reads ("host-b unhealthy: no heartbeat for 15 s").
    pub message: String,
}

/// The most events one `listEvents` answer carries (and its page size
/// when the caller asks for 0).
pub const MAX_EVENTS_PER_PAGE: u32 = 1000;

/// How a desired VM compares with what its worker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Drift {
    Converged,
    Pending,
    Drifted,
    Orphaned,
    Failed,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Drift::Converged => "converged",
            Drift::Pending => "pending",
            Drift::Drifted => "drifted",
            Drift::Orphaned => "orphaned",
            Drift::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmPlacementView {
    pub project: String,
    pub name: String,
    /// Empty when the VM is not placed (or, for an orphan, the worker that runs it).
    pub worker_id: String,
    /// Empty for an orphan.
    pub desired_hash: String,
    /// Empty when the worker does not report it.
    pub observed_hash: String,
    /// `None` when the worker does not report it.
    pub state: Option<VmState>,
    pub drift: Drift,
    pub metrics: VmMetrics,
    pub vm_id: String,
    /// The observed VM's health (`none` when it has no check or is not observed).
    #[serde(default)]
    pub health: crate::types::Health,
    /// Why it is unhealthy; empty otherwise.
    #[serde(default)]
    pub health_detail: String,
}

impl VmPlacementView {
    /// The state every surface prints: what the worker reports, else
    /// "unplaced" (no worker was chosen) or "unknown" (its worker does not
    /// report it); never "stopped", a state only a worker reports.
    pub fn state_word(&self) -> String {
        match self.state {
            Some(s) => s.to_string(),
            None if self.worker_id.is_empty() => "unplaced".to_owned(),
            None => "unknown".to_owned(),
        }
    }
}

/// Percent of the desired VMs among `vms` (every row but orphans) that run
/// their desired version; 100 when nothing is desired. The one definition
/// the cluster, each project and `pcr --project` report.
pub fn convergence_percent<'a>(vms: impl IntoIterator<Item = &'a VmPlacementView>) -> f64 {
    let (mut desired, mut converged) = (0usize, 0usize);
    for v in vms.into_iter().filter(|v| v.drift != Drift::Orphaned) {
        desired += 1;
        converged += usize::from(v.drift == Drift::Converged);
    }
    if desired == 0 {
        100.0
    } else {
        converged as f64 * 100.0 / desired as f64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnplacedView {
    pub project: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerMetricsView {
    pub load_average: f64,
    pub memory_used_mb: u64,
    pub vm_count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerHealthView {
    pub worker_id: String,
    pub address: String,
    pub healthy: bool,
    pub last_seen_ms_ago: u64,
    pub capacity: Resources,
    /// What the scheduler placed on it.
    pub allocated: Resources,
    pub observed_generation: u64,
    /// VMs the worker reports running.
    pub vm_count: u32,
    pub labels: Labels,
    pub metrics: WorkerMetricsView,
}

impl WorkerHealthView {
    /// Capacity the scheduler can still place on: capacity minus what is
    /// allocated on a healthy worker, nothing on an unhealthy one (its VMs
    /// are moved away and nothing new goes there). Every surface (`pcr
    /// workers`, repohub's cluster page) shows this one number as free.
    pub fn free(&self) -> Resources {
        if !self.healthy {
            return Resources {
                cpu: 0,
                memory_mb: 0,
            };
        }
        Resources {
            cpu: self.capacity.cpu.saturating_sub(self.allocated.cpu),
            memory_mb: self
                .capacity
                .memory_mb
                .saturating_sub(self.allocated.memory_mb),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatusView {
    /// The active generation of each project that published one, by project.
    pub generations: Vec<GenerationView>,
    pub convergence_percent: f64,
    pub vms: Vec<VmPlacementView>,
    pub workers: Vec<WorkerHealthView>,
    pub unplaced: Vec<UnplacedView>,
    /// The rollouts not yet done (rolling, paused or reverted).
    #[serde(default)]
    pub rollouts: Vec<RolloutStatusView>,
}

/// One VM group's rollout to its project's active generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatusView {
    pub project: String,
    pub group: String,
    pub generation: u64,
    /// The batch being replaced, from 1.
    pub batch: u32,
    /// ceil(replicas / maxParallel).
    pub batches: u32,
    /// Replicas on the new version that stayed healthy for minHealthyMs.
    pub healthy: u32,
    pub total: u32,
    /// rolling, paused, reverted or rolled.
    pub state: String,
    /// Why it paused or reverted; empty otherwise.
    pub reason: String,
}

impl ClusterStatusView {
    /// The active generation of `project`, if it published one.
    pub fn active(&self, project: &str) -> Option<&GenerationView> {
        self.generations.iter().find(|g| g.project == project)
    }
}

/// What one worker must run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentView {
    /// False when a long-poll timed out with nothing new.
    pub changed: bool,
    pub worker_id: String,
    pub generation: u64,
    pub commit: String,
    pub revision: u64,
    pub vms: Vec<VmSpec>,
    /// VMs to keep as they run, whatever version (a replica a rollout has
    /// not reached): the worker keeps every live instance of a held name
    /// and creates the spec in `vms` only when it runs none.
    #[serde(default)]
    pub hold: Vec<VmKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishOutcomeView {
    pub project: String,
    pub generation: u64,
    pub noop: bool,
    /// The project's VMs placed.
    pub placed: u32,
    /// The project's VMs not placed, with the reason.
    pub unplaced: Vec<UnplacedView>,
}

/// cpu, memory and VM count: a project's quota, or what it uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub cpu: u32,
    pub memory_mb: u64,
    pub vms: u32,
}

impl Limits {
    /// What `specs` ask for together (saturating, so a hostile list cannot wrap).
    pub fn of<'a>(specs: impl IntoIterator<Item = &'a VmSpec>) -> Limits {
        specs.into_iter().fold(Limits::default(), |acc, s| {
            acc.plus(&Limits {
                cpu: s.cpu(),
                memory_mb: s.memory_mb(),
                vms: 1,
            })
        })
    }

    /// The sum of two usages (saturating).
    pub fn plus(&self, other: &Limits) -> Limits {
        Limits {
            cpu: self.cpu.saturating_add(other.cpu),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            vms: self.vms.saturating_add(other.vms),
        }
    }

    /// Whether `self` (a usage) stays within `quota` on every axis.
    pub fn within(&self, quota: &Limits) -> bool {
        self.cpu <= quota.cpu && self.memory_mb <= quota.memory_mb && self.vms <= quota.vms
    }
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} vCPU, {} MiB, {} VMs",
            self.cpu, self.memory_mb, self.vms
        )
    }
}

/// One project as `pcr projects` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStatusView {
    pub project: String,
    pub quota: Limits,
    /// What its active generation asks for.
    pub usage: Limits,
    /// `None` until the project publishes.
    pub generation: Option<GenerationView>,
    pub convergence_percent: f64,
    pub placed: u32,
    pub unplaced: u32,
    /// Generations some worker still runs a VM of, ascending (see
    /// `ProjectStatus.liveGenerations`); a cache keeps their pins.
    #[serde(default)]
    pub live_generations: Vec<u64>,
}

/// The most VMs one worker may report in one `pushData`.
pub const MAX_VMS_PER_WORKER: usize = 10_000;

/// One VM as a worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedVm {
    pub status: VmStatus,
    pub metrics: VmMetrics,
}

/// What a worker registers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub worker_id: WorkerId,
    pub address: String,
    pub capacity: Resources,
    pub labels: Labels,
}

/// A byte count as people read it, in binary units: 1536 → "1.5 KiB". One
/// formatter for every place that shows the sizes these views carry (`pcr`
/// tables, repohub pages), so they agree.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(healthy: bool) -> WorkerHealthView {
        WorkerHealthView {
            worker_id: "host-a".into(),
            address: "127.0.0.1:6000".into(),
            healthy,
            last_seen_ms_ago: 0,
            capacity: Resources {
                cpu: 4,
                memory_mb: 4096,
            },
            allocated: Resources {
                cpu: 1,
                memory_mb: 1024,
            },
            observed_generation: 1,
            vm_count: 1,
            labels: Labels::default(),
            metrics: WorkerMetricsView::default(),
        }
    }

    #[test]
    fn a_vm_without_a_reported_state_is_unplaced_or_unknown_never_stopped() {
        let v = |worker: &str, state| VmPlacementView {
            project: "p".into(),
            name: "web-0".into(),
            worker_id: worker.into(),
            desired_hash: "h".into(),
            observed_hash: String::new(),
            state,
            drift: Drift::Pending,
            metrics: VmMetrics::default(),
            vm_id: String::new(),
            health: Default::default(),
            health_detail: String::new(),
        };
        assert_eq!(v("", None).state_word(), "unplaced");
        assert_eq!(v("host-a", None).state_word(), "unknown");
        assert_eq!(v("host-a", Some(VmState::Running)).state_word(), "running");
    }

    #[test]
    fn free_is_unallocated_capacity_of_a_healthy_worker_and_none_of_a_dead_one() {
        let free = |w: WorkerHealthView| (w.free().cpu, w.free().memory_mb);
        assert_eq!(free(worker(true)), (3, 3072));
        assert_eq!(free(worker(false)), (0, 0));
    }
}
