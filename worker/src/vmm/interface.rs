//! The three seams between the VM manager and a hypervisor: `Vmm` (the API
//! client of one VM), `VmmProcess` (the OS process behind it) and
//! `VmmBackend` (the factory that prepares, spawns, adopts and configures).
//!
//! `VmManager<B: VmmBackend>` is generic over them so its state machine is
//! unit-tested with an in-memory backend and runs in production over
//! cloud-hypervisor's REST API. Every future is `Send`: the manager runs
//! long I/O in sub-tasks.

use std::future::Future;
use std::path::PathBuf;

use repo_outils::nix::NixError;

use crate::dto::{VmId, VmSpec};
use crate::vmm::config::{VmConfig, VmCounters, VmInfoResponse, VmPaths, VmmPingResponse};
use crate::vmm::store::HostFiles;

/// Why a hypervisor operation failed. `Api` carries CH's own error chain.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot start {binary}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cloud-hypervisor exited ({status}) before opening its API socket {}", socket.display())]
    ExitedEarly { status: String, socket: PathBuf },
    #[error("cloud-hypervisor did not open its API socket {} within {ms} ms", socket.display())]
    SocketTimeout { socket: PathBuf, ms: u64 },
    #[error("cannot reach the API socket {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint} answered {status}: {}", chain.join(": "))]
    Api {
        endpoint: &'static str,
        status: u16,
        chain: Vec<String>,
    },
    #[error("{endpoint} did not answer within {ms} ms")]
    Timeout { endpoint: &'static str, ms: u64 },
    #[error("{endpoint} answered something unexpected: {reason}")]
    BadResponse {
        endpoint: &'static str,
        reason: String,
    },
    #[error("HTTP exchange for {endpoint} failed: {reason}")]
    Http {
        endpoint: &'static str,
        reason: String,
    },
    #[error("{step}")]
    Prepare {
        step: PrepareStep,
        // Boxed: nix's error is large and every worker Result carries it.
        #[source]
        source: Option<Box<NixError>>,
    },
    #[error("{path} is not on this worker and no closure source is configured")]
    MissingStorePath { path: String },
    #[error("cannot signal process {pid}")]
    Signal {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// What preparing a VM's closure (making its store paths present on this
/// host) failed at; the nix error, when nix ran, is the `Prepare` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareStep {
    /// A pull was needed but no key is configured to check its signatures.
    NoPublicKey { cache: String },
    /// Asking the local store which closure paths are missing.
    Check { store: String },
    /// Pulling the missing paths from the closure source.
    Pull { paths: Vec<String>, cache: String },
}

impl std::fmt::Display for PrepareStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareStep::NoPublicKey { cache } => write!(
                f,
                "cannot pull from {cache}: no cache public key configured (--cache-public-key)"
            ),
            PrepareStep::Check { store } => write!(f, "checking {store}"),
            PrepareStep::Pull { paths, cache } => {
                write!(f, "pulling {} from {cache}", paths.join(" "))
            }
        }
    }
}

/// How a hypervisor process ended, as far as we can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// "exit status 0", "killed by signal 9", "process 123 vanished".
    pub description: String,
    /// The exit code when it was our child and exited normally.
    pub code: Option<i32>,
}

/// Client for one VM's hypervisor API (CH's `vm.*` and `vmm.*` endpoints).
pub trait Vmm: Send + Sync + 'static {
    fn create(&self, config: &VmConfig) -> impl Future<Output = Result<(), VmmError>> + Send;
    fn boot(&self) -> impl Future<Output = Result<(), VmmError>> + Send;
    fn shutdown(&self) -> impl Future<Output = Result<(), VmmError>> + Send;
    fn delete(&self) -> impl Future<Output = Result<(), VmmError>> + Send;
    fn info(&self) -> impl Future<Output = Result<VmInfoResponse, VmmError>> + Send;
    fn pause(&self) -> impl Future<Output = Result<(), VmmError>> + Send;
    fn resume(&self) -> impl Future<Output = Result<(), VmmError>> + Send;
    fn counters(&self) -> impl Future<Output = Result<VmCounters, VmmError>> + Send;
    fn ping(&self) -> impl Future<Output = Result<VmmPingResponse, VmmError>> + Send;
    /// `vmm.shutdown`: ends the hypervisor process.
    fn shutdown_vmm(&self) -> impl Future<Output = Result<(), VmmError>> + Send;
}

/// The OS process behind one VM, whether we spawned it or adopted it.
pub trait VmmProcess: Send + Sync + 'static {
    fn pid(&self) -> Option<u32>;
    /// SIGKILL, unless it already exited.
    fn kill(&self) -> Result<(), VmmError>;
    /// Resolves once the process is gone (at once if it already is).
    fn exited(&self) -> impl Future<Output = ExitInfo> + Send;
    /// `Some` once the process is known to be gone.
    fn try_exited(&self) -> Option<ExitInfo>;
    /// Removes what the process leaves behind (its API socket and lock file).
    fn cleanup(&self);
}

/// A live hypervisor found in the run directory after a restart.
pub struct Adopted<B: VmmBackend + ?Sized> {
    pub vmm: B::Vmm,
    pub process: B::Process,
    pub info: VmInfoResponse,
}

impl<B: VmmBackend + ?Sized> std::fmt::Debug for Adopted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adopted")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Factory for VMs on one host.
pub trait VmmBackend: Send + Sync + 'static {
    type Vmm: Vmm;
    type Process: VmmProcess;

    /// Ensures the closure the spec boots is present locally. The default
    /// assumes it is (a host that builds its own images); a backend with a
    /// closure source (`nix copy --from <cache>`) overrides it.
    fn prepare(&self, spec: &VmSpec) -> impl Future<Output = Result<(), VmmError>> + Send {
        let _ = spec;
        async { Ok(()) }
    }

    /// Starts an empty hypervisor for `vm_id` and waits until its API answers.
    /// On error nothing is left running.
    fn spawn(
        &self,
        vm_id: &VmId,
        paths: &VmPaths,
    ) -> impl Future<Output = Result<(Self::Vmm, Self::Process), VmmError>> + Send;

    /// Reconnects to a hypervisor that outlived a previous worker. `Ok(None)`
    /// when nothing answers on its socket (it died while we were away).
    fn adopt(
        &self,
        vm_id: &VmId,
        paths: &VmPaths,
    ) -> impl Future<Output = Result<Option<Adopted<Self>>, VmmError>> + Send;

    /// Maps a spec to the hypervisor's VM configuration; `files` are the
    /// spec's store files as resolved beneath the store root, the only
    /// host paths of the store the hypervisor is given.
    fn build_config(
        &self,
        vm_id: &VmId,
        spec: &VmSpec,
        paths: &VmPaths,
        files: &HostFiles,
    ) -> VmConfig;
}
