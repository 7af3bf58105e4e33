//! `VmManager<B>`: the single owner of the VM table. It runs one loop that
//! takes `Command`s from the RPC server and the reconciler and
//! `Event`s from its own sub-tasks; only this loop changes the table.
//!
//! Long I/O (prepare, disk copy, spawn, REST calls) runs in sub-tasks whose
//! results come back as events, so one slow create never blocks a list or
//! the delete of another VM. A create in progress is an entry in phase
//! `Creating`; deleting it is refused until the create finishes.
//!
//! A VM is unique by (name, contentHash), not by name: two versions of one
//! VM run side by side while the reconciler replaces it (start the new one,
//! then stop the old). Everything per VM on disk is named by its id.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use commands::convert::ErrorCode;
use commands::report::error_chain;
use commands::telemetry::now_ms;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::disk::{self, DiskError};
use crate::dto::{
    Health, Labels, LogTail, Resources, VmDetails, VmId, VmKey, VmMetrics, VmRecord, VmSpec,
    VmStatus, WorkerId, WorkerStatus,
};
use crate::health::HealthWatch;
use crate::metrics::WorkerMetrics;
use crate::net::{Egress, NetError};
use crate::procfs;
use crate::rundir::{self, RunDir, RunDirError, VmFileOptions};
use crate::state::{InvalidTransition, VmEvent, VmPhase};
use crate::vmm::config::ChVmState;
use crate::vmm::interface::{ExitInfo, Vmm, VmmBackend, VmmError, VmmProcess};
use crate::vmm::store::{self, StoreError};

/// Why a command failed; `code()` is what goes over the wire.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no VM with id {0} on this worker")]
    NotFound(VmId),
    #[error(
        "a VM named {name} with contentHash {content_hash} already exists on this worker (id {id})"
    )]
    AlreadyExists {
        /// The qualified name, `project/name`.
        name: VmKey,
        content_hash: String,
        id: VmId,
    },
    #[error("VM {id}: {reason}")]
    WrongState { id: VmId, reason: String },
    #[error("{step} failed")]
    Vmm {
        step: &'static str,
        #[source]
        source: VmmError,
    },
    #[error("making the VM's disk failed")]
    Disk(#[from] DiskError),
    #[error("checking the spec's store files failed")]
    Store(#[from] StoreError),
    #[error("run directory")]
    RunDir(#[from] RunDirError),
    #[error("setting up the VM's network failed")]
    Net(#[from] NetError),
    #[error("cannot read the serial log {}", path.display())]
    Logs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the worker is shutting down")]
    ShuttingDown,
}

impl WorkerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WorkerError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            WorkerError::NotFound(_) => ErrorCode::NotFound,
            WorkerError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            WorkerError::WrongState { .. } => ErrorCode::FailedPrecondition,
            WorkerError::Store(e) if e.is_spec_error() => ErrorCode::FailedPrecondition,
            WorkerError::Vmm {
                source: VmmError::MissingStorePath { .. },
                ..
            } => ErrorCode::FailedPrecondition,
            WorkerError::ShuttingDown => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// One line with the whole cause chain, for an RPC error or a log.
    pub fn message(&self) -> String {
        error_chain(self)
    }

    fn step(step: &'static str) -> impl FnOnce(VmmError) -> WorkerError {
        move |source| WorkerError::Vmm { step, source }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, WorkerError>>;

/// What the RPC server and the reconciler ask of the manager. (A create
/// carries its whole spec; commands are queued briefly, so no boxing.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Read {
        reply: Reply<WorkerStatus>,
    },
    ListVms {
        reply: Reply<Vec<VmStatus>>,
    },
    CreateVm {
        spec: VmSpec,
        reply: Reply<VmStatus>,
    },
    DeleteVm {
        id: VmId,
        reply: Reply<()>,
    },
    VmInfo {
        id: VmId,
        reply: Reply<VmDetails>,
    },
    PauseVm {
        id: VmId,
        reply: Reply<VmStatus>,
    },
    ResumeVm {
        id: VmId,
        reply: Reply<VmStatus>,
    },
    Logs {
        id: VmId,
        lines: u32,
        reply: Reply<LogTail>,
    },
}

impl Command {
    /// Answers the command with `ShuttingDown` (the manager is gone).
    fn refuse(self) {
        fn no<T>(reply: Reply<T>) {
            let _ = reply.send(Err(WorkerError::ShuttingDown));
        }
        match self {
            Command::Read { reply } => no(reply),
            Command::ListVms { reply } => no(reply),
            Command::CreateVm { reply, .. } => no(reply),
            Command::DeleteVm { reply, .. } => no(reply),
            Command::VmInfo { reply, .. } => no(reply),
            Command::PauseVm { reply, .. } | Command::ResumeVm { reply, .. } => no(reply),
            Command::Logs { reply, .. } => no(reply),
        }
    }
}

/// Results of the manager's sub-tasks. Short-lived and few, so the size
/// of the `Created` variant (it carries the new VM's handles) is fine.
#[allow(clippy::large_enum_variant)]
enum Event<B: VmmBackend> {
    Created {
        id: VmId,
        result: Result<(B::Vmm, B::Process), WorkerError>,
        reply: Reply<VmStatus>,
    },
    OpDone {
        id: VmId,
        event: VmEvent,
        result: Result<(), VmmError>,
        reply: Reply<VmStatus>,
    },
    Deleted {
        id: VmId,
        reply: Option<Reply<()>>,
    },
    Exited {
        id: VmId,
        instance: u64,
        info: ExitInfo,
    },
    /// A console-sync round scanned these VMs' health checks.
    HealthScanned {
        watches: Vec<(VmId, HealthWatch)>,
    },
}

/// The static facts a manager reports and the knobs of its flows.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub worker_id: WorkerId,
    pub address: String,
    pub capacity: Resources,
    pub labels: Labels,
    pub run_dir: PathBuf,
    /// Where `/nix/store/...` paths are on this host (`/` in production).
    pub store_root: PathBuf,
    /// Stop (and forget) every VM when the manager exits.
    pub stop_vms_on_exit: bool,
    /// How long a delete waits for the guest's `vm.shutdown`.
    pub shutdown_timeout: Duration,
    /// How VM disks are made and console history bounded.
    pub files: VmFileOptions,
    pub version: String,
}

impl ManagerConfig {
    /// A manager on `dir/run` and `dir/store` for tests and benches: 8 CPUs
    /// and 8 GiB, no labels, an address nobody listens on, VMs left running
    /// on exit, a 500 ms shutdown wait and the default file options.
    pub fn local(worker_id: &str, dir: &Path) -> Self {
        ManagerConfig {
            worker_id: worker_id.parse().expect("a valid worker id"),
            address: "127.0.0.1:1".into(),
            capacity: Resources {
                cpu: 8,
                memory_mb: 8192,
            },
            labels: Labels::new(),
            run_dir: dir.join("run"),
            store_root: dir.join("store"),
            stop_vms_on_exit: false,
            shutdown_timeout: Duration::from_millis(500),
            files: VmFileOptions::default(),
            version: "test".into(),
        }
    }
}

struct Entry<B: VmmBackend> {
    spec: VmSpec,
    created_at_ms: u64,
    phase: VmPhase,
    error: String,
    pid: Option<u32>,
    vmm: Option<Arc<B::Vmm>>,
    process: Option<Arc<B::Process>>,
    /// Tells a stale exit event (of an earlier process) from a current one.
    instance: u64,
    /// The spec's health check; `None` when it has none.
    health: Option<HealthWatch>,
}

pub struct VmManager<B: VmmBackend> {
    backend: Arc<B>,
    config: ManagerConfig,
    run_dir: RunDir,
    vms: BTreeMap<VmId, Entry<B>>,
    /// (project, name, contentHash) → id: the key a create must not
    /// repeat. Two versions of one name may coexist (a replacement in
    /// progress), and so may two projects' VMs of the same name.
    names: HashMap<InstanceKey, VmId>,
    events_tx: mpsc::UnboundedSender<Event<B>>,
    events_rx: mpsc::UnboundedReceiver<Event<B>>,
    next_instance: u64,
    started: Instant,
    /// A console sync round is running (see `sync_consoles`).
    console_sync_busy: Arc<AtomicBool>,
    /// VM networking and egress rules; `None` when the host has no bridge.
    egress: Option<Egress>,
    /// Create/delete latency and CH failures are counted here.
    metrics: WorkerMetrics,
}

impl<B: VmmBackend> std::fmt::Debug for VmManager<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmManager")
            .field("vms", &self.vms.keys().collect::<Vec<_>>())
            .field("next_instance", &self.next_instance)
            .finish_non_exhaustive()
    }
}

/// What makes a VM unique on a worker: its project, name and contentHash
/// (two projects' `web-0` at the same hash are two VMs).
type InstanceKey = (VmKey, String);

fn key_of(spec: &VmSpec) -> InstanceKey {
    (spec.key(), spec.content_hash().to_owned())
}

const DEFAULT_LOG_LINES: u32 = 100;
const MAX_LOG_LINES: u32 = 10_000;
/// Bound on the REST calls of a delete after the graceful shutdown.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

impl<B: VmmBackend> VmManager<B> {
    pub fn new(backend: B, config: ManagerConfig) -> Result<Self, WorkerError> {
        let run_dir = RunDir::open_with(&config.run_dir, config.files)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Ok(VmManager {
            backend: Arc::new(backend),
            config,
            run_dir,
            vms: BTreeMap::new(),
            names: HashMap::new(),
            events_tx,
            events_rx,
            next_instance: 0,
            started: Instant::now(),
            console_sync_busy: Arc::new(AtomicBool::new(false)),
            egress: None,
            metrics: WorkerMetrics::default(),
        })
    }

    /// Counts into `metrics` (the registry the worker serves) from now on.
    pub fn set_metrics(&mut self, metrics: WorkerMetrics) {
        self.metrics = metrics;
    }

    /// Networks every VM from now on: a TAP, a fixed address and egress
    /// rules per VM (set before `adopt_existing`, which attaches the VMs it
    /// adopts again).
    pub fn set_egress(&mut self, egress: Egress) {
        self.egress = Some(egress);
    }

    /// Rebuilds the table from the run directory: VMs whose hypervisor still
    /// answers are adopted as they are (no reboot); the files of dead or
    /// half-created ones are removed.
    pub async fn adopt_existing(&mut self) {
        let ids = match self.run_dir.scan() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "cannot scan the run directory");
                return;
            }
        };
        let backend = self.backend.clone();
        let run_dir = self.run_dir.clone();
        // Probe concurrently: each probe is one ping and one info call.
        let probes = futures::stream::iter(ids.into_iter().map(|id| {
            let backend = backend.clone();
            let run_dir = run_dir.clone();
            async move {
                let paths = run_dir.paths(&id);
                let record = run_dir.read_record(&id);
                let adopted = match &record {
                    Ok(_) if paths.socket.exists() => backend.adopt(&id, &paths).await,
                    _ => Ok(None),
                };
                (id, paths, record, adopted)
            }
        }))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
        for (id, paths, record, adopted) in probes {
            let span = tracing::info_span!("adopt", vm_id = %id);
            let _g = span.enter();
            match (record, adopted) {
                (Ok(record), Ok(Some(a)))
                    if matches!(a.info.state, ChVmState::Running | ChVmState::Paused) =>
                {
                    let phase = if a.info.state == ChVmState::Paused {
                        VmPhase::Paused
                    } else {
                        VmPhase::Running
                    };
                    tracing::info!(pid = ?a.process.pid(), state = a.info.state.as_str(), "adopted a running VM");
                    // This manager never writes two records with one (name,
                    // hash); if a run dir holds them anyway, both are adopted
                    // and the reconciler deletes the younger as a duplicate.
                    self.names
                        .entry(key_of(&record.spec))
                        .or_insert_with(|| id.clone());
                    // The verdict the previous worker kept, else the check
                    // again from the history, its deadline from the create.
                    let health = record.spec.health_check().map(|c| {
                        HealthWatch::adopted(
                            c.clone(),
                            record.created_at_ms,
                            &self.run_dir.console(&id),
                        )
                    });
                    self.vms.insert(
                        id.clone(),
                        Entry {
                            spec: record.spec,
                            created_at_ms: record.created_at_ms,
                            phase,
                            error: String::new(),
                            pid: a.process.pid(),
                            vmm: None,
                            process: None,
                            instance: 0,
                            health,
                        },
                    );
                    self.attach(&id, a.vmm, a.process);
                    if let Some(eg) = &self.egress {
                        let domains = self.vms[&id].spec.network_allowed_domains().to_vec();
                        if let Err(e) = eg.attach(&id, &domains).await {
                            tracing::error!(error = %error_chain(&e), "cannot restore the adopted VM's network");
                        }
                    }
                }
                (record, adopted) => {
                    let why = match (&record, &adopted) {
                        (Err(e), _) => format!("no usable record ({})", error_chain(e)),
                        (_, Err(e)) => format!(
                            "its hypervisor does not answer properly ({})",
                            error_chain(e)
                        ),
                        (_, Ok(None)) => "its hypervisor is gone".to_owned(),
                        (_, Ok(Some(a))) => {
                            format!("it was never booted (state {})", a.info.state.as_str())
                        }
                    };
                    tracing::info!(%why, "removing the files of a VM that cannot be adopted");
                    match adopted {
                        Ok(Some(a)) => teardown(&a.vmm, &a.process).await,
                        // Alive but not answering properly (a hung API): find
                        // it by its socket path so it is not orphaned.
                        Err(_) => kill_by_socket(&paths.socket),
                        Ok(None) => {
                            // A hypervisor started before the run directory
                            // had `vm/` answers on the old socket path; it
                            // holds a disk and serial file the new layout does
                            // not name, so it is stopped and its VM recreated.
                            let legacy = self.run_dir.legacy_socket(&id);
                            if legacy.exists() {
                                kill_by_socket(&legacy);
                            }
                        }
                    }
                    self.run_dir.remove_vm_files(&id);
                    detach_network(self.egress.as_ref(), &id).await;
                }
            }
        }
    }

    /// Serves commands until `shutdown` fires or every sender is gone, then
    /// answers what is still queued with `ShuttingDown`.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut console_sync = tokio::time::interval(rundir::CONSOLE_SYNC_PERIOD);
        console_sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(ev) = self.events_rx.recv() => self.on_event(ev),
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = console_sync.tick() => self.sync_consoles(),
            }
        }
        commands.close();
        while let Ok(cmd) = commands.try_recv() {
            cmd.refuse();
        }
        if self.config.stop_vms_on_exit {
            self.stop_all().await;
        }
        tracing::info!(vms = self.vms.len(), "VM manager stopped");
    }

    /// Deletes every VM (used with `--stop-vms-on-exit`).
    async fn stop_all(&mut self) {
        let timeout = self.config.shutdown_timeout;
        let jobs: Vec<_> = std::mem::take(&mut self.vms)
            .into_iter()
            .map(|(id, e)| {
                let run_dir = self.run_dir.clone();
                let egress = self.egress.clone();
                async move {
                    delete_flow::<B>(e.vmm, e.process, &run_dir, egress.as_ref(), &id, timeout)
                        .await
                }
            })
            .collect();
        futures::future::join_all(jobs).await;
        self.names.clear();
    }

    fn status(&self, id: &VmId, e: &Entry<B>) -> VmStatus {
        let (health, health_detail, healthy_since_ms) = e
            .health
            .as_ref()
            .map_or((Health::None, String::new(), None), HealthWatch::report);
        VmStatus {
            id: id.clone(),
            project: e.spec.key().project,
            name: e.spec.name().clone(),
            content_hash: e.spec.content_hash().to_owned(),
            state: e.phase.public(),
            pid: e.pid,
            error: e.error.clone(),
            created_at_ms: e.created_at_ms,
            cpu: e.spec.cpu(),
            memory_mb: e.spec.memory_mb(),
            health,
            health_detail,
            healthy_since_ms,
        }
    }

    fn entry(&self, id: &VmId) -> Result<&Entry<B>, WorkerError> {
        self.vms
            .get(id)
            .ok_or_else(|| WorkerError::NotFound(id.clone()))
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Read { reply } => {
                let _ = reply.send(Ok(self.worker_status()));
            }
            Command::ListVms { reply } => {
                let list = self.vms.iter().map(|(id, e)| self.status(id, e)).collect();
                let _ = reply.send(Ok(list));
            }
            Command::CreateVm { spec, reply } => self.create(spec, reply),
            Command::DeleteVm { id, reply } => self.delete(id, reply),
            Command::PauseVm { id, reply } => self.op(id, VmEvent::Paused, reply),
            Command::ResumeVm { id, reply } => self.op(id, VmEvent::Resumed, reply),
            Command::VmInfo { id, reply } => self.info(id, reply),
            Command::Logs { id, lines, reply } => self.logs(id, lines, reply),
        }
    }

    fn worker_status(&self) -> WorkerStatus {
        let mut allocated = Resources::default();
        for e in self.vms.values().filter(|e| e.phase != VmPhase::Failed) {
            allocated.cpu += e.spec.cpu();
            allocated.memory_mb += e.spec.memory_mb();
        }
        WorkerStatus {
            worker_id: self.config.worker_id.clone(),
            address: self.config.address.clone(),
            capacity: self.config.capacity,
            allocated,
            labels: self.config.labels.clone(),
            vm_count: self.vms.len() as u32,
            run_dir: self.config.run_dir.display().to_string(),
            version: self.config.version.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    fn create(&mut self, spec: VmSpec, reply: Reply<VmStatus>) {
        if let Some(id) = self.names.get(&key_of(&spec)) {
            let _ = reply.send(Err(WorkerError::AlreadyExists {
                name: spec.key(),
                content_hash: spec.content_hash().to_owned(),
                id: id.clone(),
            }));
            return;
        }
        if let Some(id) = self.differs_only_in_domains(&spec) {
            self.retarget(id, spec, reply);
            return;
        }
        let id = VmId::new_v7();
        let record = VmRecord {
            id: id.clone(),
            spec: spec.clone(),
            created_at_ms: now_ms(),
            worker_id: self.config.worker_id.clone(),
        };
        self.names.insert(key_of(&spec), id.clone());
        let health = spec.health_check().cloned().map(HealthWatch::new);
        self.vms.insert(
            id.clone(),
            Entry {
                spec,
                created_at_ms: record.created_at_ms,
                phase: VmPhase::Creating,
                error: String::new(),
                pid: None,
                vmm: None,
                process: None,
                instance: 0,
                health,
            },
        );
        let span = tracing::info_span!("create_vm", worker_id = %self.config.worker_id, vm_id = %id, name = %record.spec.name());
        let backend = self.backend.clone();
        let run_dir = self.run_dir.clone();
        let store_root = self.config.store_root.clone();
        let events = self.events_tx.clone();
        let egress = self.egress.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(
            async move {
                let started = Instant::now();
                let result =
                    create_flow(&*backend, &run_dir, egress.as_ref(), &record, &store_root).await;
                metrics.created(&result, started.elapsed());
                match &result {
                    Ok(_) => tracing::info!("VM is running"),
                    Err(e) => tracing::warn!(error = %e.message(), "create failed; everything it started was removed"),
                }
                // The manager is gone: nothing recorded this VM, so it must
                // not outlive the create.
                if let Err(mpsc::error::SendError(Event::Created { id, result: Ok((vmm, process)), .. })) =
                    events.send(Event::Created { id, result, reply })
                {
                    teardown(&vmm, &process).await;
                    run_dir.remove_vm_files(&id);
                    detach_network(egress.as_ref(), &id).await;
                }
            }
            .instrument(span),
        );
    }

    /// The live VM `spec` would replace although only its domains differ
    /// (same name and everything that boots; hence another contentHash).
    /// Such a generation needs no new VM: the running one gets the new
    /// allowlist in place.
    fn differs_only_in_domains(&self, spec: &VmSpec) -> Option<VmId> {
        let boot = |s: &VmSpec| {
            let mut f = s.to_fields();
            f.network_allowed_domains.clear();
            f.content_hash.clear();
            f.labels.clear();
            // Compared as JSON: every field, including any added later.
            serde_json::to_value(f).ok()
        };
        let want = boot(spec);
        self.vms
            .iter()
            .find(|(_, e)| {
                matches!(e.phase, VmPhase::Running | VmPhase::Paused)
                    && e.spec.network_allowed_domains() != spec.network_allowed_domains()
                    && boot(&e.spec) == want
            })
            .map(|(id, _)| id.clone())
    }

    /// Gives the running VM `id` the spec of a new generation that changes
    /// only its domains: the table, its record (so a restart adopts it with
    /// them) and its egress allowlist, without restarting it.
    fn retarget(&mut self, id: VmId, spec: VmSpec, reply: Reply<VmStatus>) {
        let Some(e) = self.vms.get_mut(&id) else {
            let _ = reply.send(Err(WorkerError::NotFound(id)));
            return;
        };
        let old_key = key_of(&e.spec);
        e.spec = spec.clone();
        let record = VmRecord {
            id: id.clone(),
            spec,
            created_at_ms: e.created_at_ms,
            worker_id: self.config.worker_id.clone(),
        };
        if self.names.get(&old_key) == Some(&id) {
            self.names.remove(&old_key);
        }
        self.names.insert(key_of(&record.spec), id.clone());
        let status = self.status(&id, &self.vms[&id]);
        let run_dir = self.run_dir.clone();
        let egress = self.egress.clone();
        let span = tracing::info_span!("retarget_vm", worker_id = %self.config.worker_id, vm_id = %id, name = %record.spec.name());
        tokio::spawn(
            async move {
                let result: Result<VmStatus, WorkerError> = async {
                    run_dir.write_record(&record)?;
                    if let Some(eg) = &egress {
                        eg.update(&record.id, record.spec.network_allowed_domains())
                            .await?;
                    }
                    Ok(status)
                }
                .await;
                match &result {
                    Ok(_) => tracing::info!(
                        hash = record.spec.content_hash(),
                        "new domains applied to the running VM"
                    ),
                    Err(e) => tracing::error!(error = %e.message(), "cannot apply the new domains"),
                }
                let _ = reply.send(result);
            }
            .instrument(span),
        );
    }

    fn delete(&mut self, id: VmId, reply: Reply<()>) {
        let Some(e) = self.vms.get_mut(&id) else {
            let _ = reply.send(Err(WorkerError::NotFound(id)));
            return;
        };
        match e.phase.next(VmEvent::DeleteStarted) {
            Ok(next) => e.phase = next,
            Err(t) => {
                let reason = match t.from {
                    VmPhase::Creating => {
                        "is still being created; delete it once the create has finished".to_owned()
                    }
                    VmPhase::Stopping => "is already being deleted".to_owned(),
                    _ => t.to_string(),
                };
                let _ = reply.send(Err(WorkerError::WrongState { id, reason }));
                return;
            }
        }
        let (vmm, process) = (e.vmm.clone(), e.process.clone());
        let run_dir = self.run_dir.clone();
        let events = self.events_tx.clone();
        let timeout = self.config.shutdown_timeout;
        let egress = self.egress.clone();
        let span =
            tracing::info_span!("delete_vm", worker_id = %self.config.worker_id, vm_id = %id);
        let metrics = self.metrics.clone();
        tokio::spawn(
            async move {
                let started = Instant::now();
                delete_flow::<B>(vmm, process, &run_dir, egress.as_ref(), &id, timeout).await;
                metrics.deleted(started.elapsed());
                tracing::info!("VM deleted");
                let _ = events.send(Event::Deleted {
                    id,
                    reply: Some(reply),
                });
            }
            .instrument(span),
        );
    }

    fn op(&mut self, id: VmId, event: VmEvent, reply: Reply<VmStatus>) {
        let e = match self.entry(&id) {
            Ok(e) => e,
            Err(err) => {
                let _ = reply.send(Err(err));
                return;
            }
        };
        if let Err(t) = e.phase.next(event) {
            let _ = reply.send(Err(wrong_state(&id, t)));
            return;
        }
        let Some(vmm) = e.vmm.clone() else {
            let _ = reply.send(Err(WorkerError::WrongState {
                id,
                reason: "has no hypervisor".into(),
            }));
            return;
        };
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let result = match event {
                VmEvent::Paused => vmm.pause().await,
                _ => vmm.resume().await,
            };
            let _ = events.send(Event::OpDone {
                id,
                event,
                result,
                reply,
            });
        });
    }

    fn info(&mut self, id: VmId, reply: Reply<VmDetails>) {
        let e = match self.entry(&id) {
            Ok(e) => e,
            Err(err) => {
                let _ = reply.send(Err(err));
                return;
            }
        };
        let paths = self.run_dir.paths(&id);
        let mut details = VmDetails {
            status: self.status(&id, e),
            spec: e.spec.clone(),
            metrics: VmMetrics::default(),
            ch_state: String::new(),
            socket_path: paths.socket.display().to_string(),
            // The history, not CH's file: the worker punches what it
            // copied out of that (see rundir::Console).
            serial_log_path: self.run_dir.console(&id).history.display().to_string(),
        };
        let vmm = e
            .vmm
            .clone()
            .filter(|_| matches!(e.phase, VmPhase::Running | VmPhase::Paused));
        let egress = self.egress.clone();
        tokio::spawn(async move {
            if let Some(eg) = &egress {
                match eg.dropped_packets(&details.status.id).await {
                    Ok(n) => details.metrics.egress_dropped_packets = n,
                    Err(e) => {
                        tracing::warn!(vm_id = %details.status.id, error = %error_chain(&e), "cannot read the VM's egress drop counter")
                    }
                }
            }
            if let Some(vmm) = vmm {
                if let Ok(Ok(info)) = tokio::time::timeout(STEP_TIMEOUT, vmm.info()).await {
                    details.ch_state = info.state.as_str().to_owned();
                }
                if let Ok(Ok(counters)) = tokio::time::timeout(STEP_TIMEOUT, vmm.counters()).await {
                    for (dev, c) in &counters {
                        let get = |k: &str| c.get(k).copied().unwrap_or(0);
                        if dev.starts_with("_net") {
                            details.metrics.net_rx_bytes += get("rx_bytes");
                            details.metrics.net_tx_bytes += get("tx_bytes");
                        } else {
                            details.metrics.disk_read_bytes += get("read_bytes");
                            details.metrics.disk_write_bytes += get("write_bytes");
                        }
                    }
                }
            }
            if let Some(pid) = details.status.pid {
                details.metrics.rss_bytes = procfs::rss_bytes(pid);
            }
            let _ = reply.send(Ok(details));
        });
    }

    /// The console across boots: the history the worker keeps, brought up
    /// to date with what CH wrote since the last sync.
    fn logs(&mut self, id: VmId, lines: u32, reply: Reply<LogTail>) {
        if let Err(err) = self.entry(&id) {
            let _ = reply.send(Err(err));
            return;
        }
        let console = self.run_dir.console(&id);
        let n = if lines == 0 {
            DEFAULT_LOG_LINES
        } else {
            lines.min(MAX_LOG_LINES)
        } as usize;
        tokio::task::spawn_blocking(move || {
            let r = console
                .tail(n)
                .map(|(lines, truncated)| LogTail { lines, truncated })
                .map_err(|source| WorkerError::Logs {
                    path: console.serial,
                    source,
                });
            let _ = reply.send(r);
        });
    }

    /// Copies every VM's new serial output into its history before CH can
    /// truncate it at the guest's next reboot, and scans what the pending
    /// health checks have not read yet (on copies of their watches, which
    /// come back as an event). Skipped while the previous round still runs,
    /// so a slow disk never piles up tasks.
    fn sync_consoles(&mut self) {
        if self.vms.is_empty() || self.console_sync_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let consoles: Vec<_> = self
            .vms
            .iter()
            .map(|(id, e)| {
                let watch = e.health.clone().filter(|w| {
                    w.wants_scan() && matches!(e.phase, VmPhase::Running | VmPhase::Paused)
                });
                (id.clone(), self.run_dir.console(id), watch)
            })
            .collect();
        let busy = self.console_sync_busy.clone();
        let events = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let mut watches = Vec::new();
            for (id, c, watch) in consoles {
                let result = match watch {
                    Some(mut w) => {
                        let r = w.scan(&c, now);
                        watches.push((id.clone(), w));
                        r.map_err(|e| error_chain(&e))
                    }
                    None => c.sync().map_err(|e| e.to_string()),
                };
                if let Err(e) = result {
                    tracing::debug!(vm_id = %id, path = %c.serial.display(), error = %e, "cannot copy console output");
                }
            }
            if !watches.is_empty() {
                let _ = events.send(Event::HealthScanned { watches });
            }
            busy.store(false, Ordering::Release);
        });
    }

    /// Keeps what a scan made of the watches that are still pending (a VM
    /// that failed meanwhile keeps its failure).
    fn on_health_scanned(&mut self, watches: Vec<(VmId, HealthWatch)>) {
        for (id, scanned) in watches {
            let Some(e) = self.vms.get_mut(&id) else {
                continue;
            };
            let Some(current) = e.health.as_mut().filter(|w| w.wants_scan()) else {
                continue;
            };
            if scanned.verdict() != current.verdict() {
                let (health, detail, _) = scanned.report();
                match health {
                    Health::Unhealthy => {
                        tracing::warn!(vm_id = %id, name = %e.spec.name(), %detail, "VM is unhealthy");
                    }
                    _ => tracing::info!(vm_id = %id, name = %e.spec.name(), %health, "VM health"),
                }
            }
            *current = scanned;
        }
    }

    /// Drops `id` from the table; its key passes to another VM with the same
    /// key (only adoption can produce one) or is freed.
    fn forget(&mut self, id: &VmId) {
        let Some(e) = self.vms.remove(id) else {
            return;
        };
        let key = key_of(&e.spec);
        if self.names.get(&key) != Some(id) {
            return;
        }
        match self.vms.iter().find(|(_, o)| key_of(&o.spec) == key) {
            Some((other, _)) => {
                let other = other.clone();
                self.names.insert(key, other);
            }
            None => {
                self.names.remove(&key);
            }
        }
    }

    /// Records a live hypervisor for `id` and watches its process.
    fn attach(&mut self, id: &VmId, vmm: B::Vmm, process: B::Process) {
        self.next_instance += 1;
        let instance = self.next_instance;
        let process = Arc::new(process);
        if let Some(e) = self.vms.get_mut(id) {
            e.pid = process.pid();
            e.vmm = Some(Arc::new(vmm));
            e.process = Some(process.clone());
            e.instance = instance;
        }
        let events = self.events_tx.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let info = process.exited().await;
            let _ = events.send(Event::Exited { id, instance, info });
        });
    }

    fn on_event(&mut self, ev: Event<B>) {
        match ev {
            Event::Created { id, result, reply } => match result {
                Ok((vmm, process)) => {
                    self.attach(&id, vmm, process);
                    let Some(e) = self.vms.get_mut(&id) else {
                        return;
                    };
                    match e.phase.next(VmEvent::Booted) {
                        Ok(p) => {
                            e.phase = p;
                            // The deadline runs from the boot, not from the
                            // create (which may have copied a closure).
                            if let Some(w) = &mut e.health {
                                w.booted(now_ms());
                            }
                        }
                        Err(t) => {
                            tracing::error!(vm_id = %id, error = %t, "impossible transition after create")
                        }
                    }
                    let status = self.status(&id, &self.vms[&id]);
                    let _ = reply.send(Ok(status));
                }
                Err(err) => {
                    self.forget(&id);
                    let _ = reply.send(Err(err));
                }
            },
            Event::OpDone {
                id,
                event,
                result,
                reply,
            } => {
                let r = match (result, self.vms.get_mut(&id)) {
                    (_, None) => Err(WorkerError::NotFound(id.clone())),
                    (Err(source), Some(_)) => Err(WorkerError::Vmm {
                        step: if event == VmEvent::Paused {
                            "pausing"
                        } else {
                            "resuming"
                        },
                        source,
                    }),
                    (Ok(()), Some(e)) => e
                        .phase
                        .next(event)
                        .map(|p| e.phase = p)
                        .map_err(|t| wrong_state(&id, t)),
                };
                let _ = reply.send(r.map(|()| self.status(&id, &self.vms[&id])));
            }
            Event::Deleted { id, reply } => {
                self.forget(&id);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Event::Exited { id, instance, info } => {
                let Some(e) = self.vms.get_mut(&id) else {
                    return;
                };
                if e.instance != instance {
                    return;
                }
                if let Ok(next) = e.phase.next(VmEvent::Died) {
                    if next == VmPhase::Failed && e.phase != VmPhase::Failed {
                        e.error = format!("cloud-hypervisor {}", info.description);
                        tracing::warn!(vm_id = %id, error = %e.error, "VM failed");
                        if let Some(w) = &mut e.health {
                            w.failed(&e.error);
                        }
                        e.pid = None;
                        // CH leaves its socket behind when killed.
                        if let Some(p) = &e.process {
                            p.cleanup();
                        }
                    }
                    e.phase = next;
                }
            }
            Event::HealthScanned { watches } => self.on_health_scanned(watches),
        }
    }
}

fn wrong_state(id: &VmId, t: InvalidTransition) -> WorkerError {
    WorkerError::WrongState {
        id: id.clone(),
        reason: format!("is {}; {t}", t.from),
    }
}

/// prepare → disk copy → spawn → build_config → vm.create → vm.boot. On any
/// failure everything started so far is stopped and removed.
async fn create_flow<B: VmmBackend>(
    backend: &B,
    run_dir: &RunDir,
    egress: Option<&Egress>,
    record: &VmRecord,
    store_root: &std::path::Path,
) -> Result<(B::Vmm, B::Process), WorkerError> {
    let id = &record.id;
    let spec = &record.spec;
    let paths = run_dir.paths(id);
    // The record comes first so that a crash at any later step leaves a
    // file the next start finds and cleans up.
    run_dir.write_record(record)?;
    let result = async {
        backend
            .prepare(spec)
            .await
            .map_err(WorkerError::step("preparing the closure"))?;
        // Every host file the spec names is resolved before anything is
        // made from it or any hypervisor starts; CH gets only these paths.
        let files = {
            let (root, spec) = (store_root.to_owned(), spec.clone());
            tokio::task::spawn_blocking(move || store::resolve_spec(&root, &spec))
                .await
                .map_err(|e| StoreError::Root {
                    root: store_root.to_owned(),
                    source: std::io::Error::other(e),
                })??
        };
        if let Some(base) = files.disk_image.clone() {
            let to = paths.disk.clone();
            let mode = paths.disk_mode;
            let owner = run_dir.options().vm_owner;
            tokio::task::spawn_blocking(move || disk::make_disk(mode, &base, &to, owner))
                .await
                .map_err(|e| DiskError::Copy {
                    from: PathBuf::new(),
                    to: PathBuf::new(),
                    source: std::io::Error::other(e),
                })??;
        }
        run_dir.make_serial_file(id)?;
        // The TAP must exist and be on the bridge before CH opens it.
        let guest_ip = match egress {
            Some(eg) => {
                let net = eg.attach(id, spec.network_allowed_domains()).await?;
                Some(eg.guest_cmdline(&net))
            }
            None => None,
        };
        let (vmm, process) = backend
            .spawn(id, &paths)
            .await
            .map_err(WorkerError::step("starting cloud-hypervisor"))?;
        let mut config = backend.build_config(id, spec, &paths, &files);
        if let Some(ip) = guest_ip {
            let cmdline = config.payload.cmdline.take().unwrap_or_default();
            config.payload.cmdline = Some(format!("{cmdline} {ip}").trim_start().to_owned());
        }
        let booted = async {
            vmm.create(&config)
                .await
                .map_err(WorkerError::step("creating the VM"))?;
            vmm.boot()
                .await
                .map_err(WorkerError::step("booting the VM"))
        }
        .await;
        match booted {
            Ok(()) => Ok((vmm, process)),
            Err(e) => {
                teardown(&vmm, &process).await;
                Err(e)
            }
        }
    }
    .await;
    if result.is_err() {
        run_dir.remove_vm_files(id);
        detach_network(egress, id).await;
    }
    result
}

/// Removes a VM's network (if the worker networks VMs); never fails: what
/// cannot be removed is logged.
async fn detach_network(egress: Option<&Egress>, id: &VmId) {
    if let Some(eg) = egress
        && let Err(e) = eg.detach(id).await
    {
        tracing::error!(vm_id = %id, error = %error_chain(&e), "cannot remove the VM's network");
    }
}

/// SIGKILLs every process started with this API socket path.
fn kill_by_socket(socket: &std::path::Path) {
    let needle = format!("path={}", socket.display());
    for pid in procfs::pids_with_cmdline_containing(&needle) {
        tracing::warn!(pid, "killing a hypervisor whose API does not answer");
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// Ends a hypervisor that must not keep running: kill, wait, remove its socket.
async fn teardown<V: Vmm, P: VmmProcess>(_vmm: &V, process: &P) {
    if process.try_exited().is_none() {
        if let Err(e) = process.kill() {
            tracing::warn!(error = %error_chain(&e), "kill failed");
        }
        if tokio::time::timeout(Duration::from_secs(5), process.exited())
            .await
            .is_err()
        {
            tracing::error!(pid = ?process.pid(), "process survived SIGKILL for 5 s");
        }
    }
    process.cleanup();
}

/// vm.shutdown (bounded) → vm.delete → vmm.shutdown → kill if still alive →
/// remove socket and per-VM files. Never fails: whatever does not answer is
/// killed.
async fn delete_flow<B: VmmBackend>(
    vmm: Option<Arc<B::Vmm>>,
    process: Option<Arc<B::Process>>,
    run_dir: &RunDir,
    egress: Option<&Egress>,
    id: &VmId,
    graceful: Duration,
) {
    if let (Some(vmm), Some(process)) = (&vmm, &process) {
        if process.try_exited().is_none() {
            if let Ok(Err(e)) = tokio::time::timeout(graceful, vmm.shutdown()).await {
                tracing::debug!(error = %error_chain(&e), "vm.shutdown refused");
            }
            let _ = tokio::time::timeout(STEP_TIMEOUT, vmm.delete()).await;
            let _ = tokio::time::timeout(STEP_TIMEOUT, vmm.shutdown_vmm()).await;
            if tokio::time::timeout(Duration::from_secs(1), process.exited())
                .await
                .is_err()
            {
                tracing::warn!(pid = ?process.pid(), "hypervisor did not exit after vmm.shutdown; killing it");
            }
            teardown(&**vmm, &**process).await;
        } else {
            process.cleanup();
        }
    }
    detach_network(egress, id).await;
    let run_dir = run_dir.clone();
    let id = id.clone();
    let _ = tokio::task::spawn_blocking(move || run_dir.remove_vm_files(&id)).await;
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
