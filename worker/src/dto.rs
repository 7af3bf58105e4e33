//! The worker's data types: the shared domain types of `commands` (VmSpec,
//! ids, statuses; ADR-002) re-exported, plus what only the worker keeps.

pub use commands::types::{
    Health, HealthCheck, Labels, LogTail, Resources, SpecError, StorePath, VmDetails, VmId, VmKey,
    VmMetrics, VmName, VmSpec, VmSpecFields, VmState, VmStatus, WorkerId, WorkerStatus,
};

use serde::{Deserialize, Serialize};

/// What the worker writes to `<run-dir>/<vm-id>.json` before spawning a
/// VM's hypervisor: enough to adopt the VM after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    pub id: VmId,
    pub spec: VmSpec,
    pub created_at_ms: u64,
    /// The worker that created it (adoption ignores records of other ids
    /// sharing a run directory by mistake only in logs; it still adopts).
    pub worker_id: WorkerId,
}
