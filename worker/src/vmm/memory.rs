//! In-memory backend for the manager's unit tests: "processes" are entries
//! in a shared map, the API follows CH's state rules, and every step can be
//! made to fail, hang or crash on request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::dto::{VmId, VmSpec};
use repo_outils::nix::NixError;

use crate::vmm::config::{
    ChVmState, VmConfig, VmCounters, VmInfoResponse, VmPaths, VmmPingResponse, build_vm_config,
};
use crate::vmm::interface::{
    Adopted, ExitInfo, PrepareStep, Vmm, VmmBackend, VmmError, VmmProcess,
};
use crate::vmm::store::HostFiles;

/// A step a fault can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Prepare,
    Spawn,
    Create,
    Boot,
    Pause,
    Resume,
    Shutdown,
    Delete,
    ShutdownVmm,
    Info,
}

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer like CH does: this HTTP status and an error chain.
    Fail(u16),
    /// Wait this long, then go on normally.
    Delay(Duration),
    /// Never answer.
    Hang,
}

#[derive(Debug)]
struct Process {
    pid: u32,
    state: Mutex<Option<ChVmState>>,
    exit: watch::Sender<Option<ExitInfo>>,
}

#[derive(Debug, Default)]
struct Shared {
    faults: Mutex<HashMap<Step, Fault>>,
    live: Mutex<HashMap<VmId, Arc<Process>>>,
    next_pid: AtomicU32,
}

#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

impl MemoryBackend {
    pub fn fault(&self, step: Step, fault: Fault) {
        self.shared.faults.lock().unwrap().insert(step, fault);
    }
    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
    }
    /// How many hypervisor "processes" were ever spawned (create attempts
    /// that got past prepare).
    pub fn spawned(&self) -> u32 {
        self.shared.next_pid.load(Ordering::SeqCst)
    }
    /// How many hypervisor "processes" are alive.
    pub fn live(&self) -> usize {
        self.shared.live.lock().unwrap().len()
    }
    pub fn pid_of(&self, id: &VmId) -> Option<u32> {
        self.shared.live.lock().unwrap().get(id).map(|p| p.pid)
    }
    /// The process dies as under `kill -9`.
    pub fn crash(&self, id: &VmId) {
        if let Some(p) = self.shared.live.lock().unwrap().remove(id) {
            let _ = p.exit.send(Some(ExitInfo {
                description: "was killed by signal 9".into(),
                code: None,
            }));
        }
    }
    /// Puts a live VM back to Created (as if booting never happened).
    pub fn set_state(&self, id: &VmId, state: Option<ChVmState>) {
        if let Some(p) = self.shared.live.lock().unwrap().get(id) {
            *p.state.lock().unwrap() = state;
        }
    }

    fn end(shared: &Shared, id: &VmId, description: &str, code: Option<i32>) {
        if let Some(p) = shared.live.lock().unwrap().remove(id) {
            let _ = p.exit.send(Some(ExitInfo {
                description: description.into(),
                code,
            }));
        }
    }
}

async fn apply(shared: &Shared, step: Step, endpoint: &'static str) -> Result<(), VmmError> {
    let fault = shared.faults.lock().unwrap().get(&step).copied();
    match fault {
        None => Ok(()),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::Fail(status)) => Err(VmmError::Api {
            endpoint,
            status,
            chain: vec![
                "Error from API".into(),
                format!("injected failure of {endpoint}"),
            ],
        }),
    }
}

#[derive(Debug)]
pub struct MemVmm {
    id: VmId,
    process: Arc<Process>,
    shared: Arc<Shared>,
    serial: std::path::PathBuf,
}

#[derive(Debug)]
pub struct MemProcess {
    id: VmId,
    pid: u32,
    exit: watch::Receiver<Option<ExitInfo>>,
    shared: Arc<Shared>,
    socket: std::path::PathBuf,
}

fn api_err(endpoint: &'static str, status: u16, last: &str) -> VmmError {
    VmmError::Api {
        endpoint,
        status,
        chain: vec!["Error from API".into(), last.into()],
    }
}

impl MemVmm {
    /// `vm.pause` and `vm.resume`: `from` → `to`. CH refuses a VM already in
    /// `to` as an invalid transition, and any other as not running.
    async fn switch(
        &self,
        step: Step,
        endpoint: &'static str,
        from: ChVmState,
        to: ChVmState,
    ) -> Result<(), VmmError> {
        apply(&self.shared, step, endpoint).await?;
        self.transition(endpoint, |s| match s {
            Some(s) if s == from => Ok(Some(to)),
            Some(s) if s == to => Err(api_err(
                endpoint,
                500,
                &format!("InvalidStateTransition({to:?}, {to:?})"),
            )),
            _ => Err(api_err(endpoint, 500, "VM is not running")),
        })
    }

    fn transition(
        &self,
        endpoint: &'static str,
        f: impl FnOnce(Option<ChVmState>) -> Result<Option<ChVmState>, VmmError>,
    ) -> Result<(), VmmError> {
        let mut st = self.process.state.lock().unwrap();
        *st = f(*st)?;
        let _ = endpoint;
        Ok(())
    }
}

impl Vmm for MemVmm {
    async fn create(&self, config: &VmConfig) -> Result<(), VmmError> {
        apply(&self.shared, Step::Create, "vm.create").await?;
        let _ = config;
        self.transition("vm.create", |s| match s {
            None => Ok(Some(ChVmState::Created)),
            Some(_) => Err(api_err("vm.create", 500, "VM is already created")),
        })
    }
    async fn boot(&self) -> Result<(), VmmError> {
        apply(&self.shared, Step::Boot, "vm.boot").await?;
        self.transition("vm.boot", |s| match s {
            None => Err(api_err("vm.boot", 404, "VM config is missing")),
            Some(ChVmState::Created) => Ok(Some(ChVmState::Running)),
            Some(_) => Err(api_err("vm.boot", 500, "VM is already created")),
        })?;
        let _ = std::fs::write(&self.serial, format!("[mem] {} booted\n", self.id));
        Ok(())
    }
    async fn shutdown(&self) -> Result<(), VmmError> {
        apply(&self.shared, Step::Shutdown, "vm.shutdown").await?;
        self.transition("vm.shutdown", |s| match s {
            Some(ChVmState::Running | ChVmState::Paused) => Ok(Some(ChVmState::Created)),
            _ => Err(api_err("vm.shutdown", 500, "VM is not running")),
        })
    }
    async fn delete(&self) -> Result<(), VmmError> {
        apply(&self.shared, Step::Delete, "vm.delete").await?;
        self.transition("vm.delete", |_| Ok(None))
    }
    async fn info(&self) -> Result<VmInfoResponse, VmmError> {
        apply(&self.shared, Step::Info, "vm.info").await?;
        let st = *self.process.state.lock().unwrap();
        let state = st.ok_or_else(|| api_err("vm.info", 404, "VM is not created"))?;
        let config = serde_json::from_value(serde_json::json!({
            "payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
            "memory": {"size": 1}, "serial": {"mode": "Off"}, "console": {"mode": "Off"}
        }))
        .expect("static config");
        Ok(VmInfoResponse {
            config,
            state,
            memory_actual_size: None,
        })
    }
    async fn pause(&self) -> Result<(), VmmError> {
        self.switch(
            Step::Pause,
            "vm.pause",
            ChVmState::Running,
            ChVmState::Paused,
        )
        .await
    }
    async fn resume(&self) -> Result<(), VmmError> {
        self.switch(
            Step::Resume,
            "vm.resume",
            ChVmState::Paused,
            ChVmState::Running,
        )
        .await
    }
    async fn counters(&self) -> Result<VmCounters, VmmError> {
        let mut c = VmCounters::new();
        c.entry("_disk0".into())
            .or_default()
            .insert("read_bytes".into(), 4096);
        Ok(c)
    }
    async fn ping(&self) -> Result<VmmPingResponse, VmmError> {
        Ok(VmmPingResponse {
            build_version: None,
            version: "mem".into(),
            pid: Some(i64::from(self.process.pid)),
            features: vec![],
        })
    }
    async fn shutdown_vmm(&self) -> Result<(), VmmError> {
        apply(&self.shared, Step::ShutdownVmm, "vmm.shutdown").await?;
        MemoryBackend::end(&self.shared, &self.id, "exited with status 0", Some(0));
        Ok(())
    }
}

impl VmmProcess for MemProcess {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }
    fn kill(&self) -> Result<(), VmmError> {
        MemoryBackend::end(&self.shared, &self.id, "was killed by signal 9", None);
        Ok(())
    }
    async fn exited(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        let r = rx.wait_for(Option::is_some).await.map(|v| v.clone());
        r.ok().flatten().unwrap_or(ExitInfo {
            description: "gone".into(),
            code: None,
        })
    }
    fn try_exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }
    fn cleanup(&self) {
        crate::rundir::remove_if_present(&self.socket);
    }
}

impl MemoryBackend {
    fn handles(&self, id: &VmId, p: &Arc<Process>, paths: &VmPaths) -> (MemVmm, MemProcess) {
        (
            MemVmm {
                id: id.clone(),
                process: p.clone(),
                shared: self.shared.clone(),
                serial: paths.serial_log.clone(),
            },
            MemProcess {
                id: id.clone(),
                pid: p.pid,
                exit: p.exit.subscribe(),
                shared: self.shared.clone(),
                socket: paths.socket.clone(),
            },
        )
    }
}

impl VmmBackend for MemoryBackend {
    type Vmm = MemVmm;
    type Process = MemProcess;

    /// An injected prepare fault looks like a failed pull: that is the one
    /// prepare step that can fail on a host whose config is right.
    async fn prepare(&self, spec: &VmSpec) -> Result<(), VmmError> {
        apply(&self.shared, Step::Prepare, "prepare")
            .await
            .map_err(|e| VmmError::Prepare {
                step: PrepareStep::Pull {
                    paths: spec.store_roots().into_iter().map(str::to_owned).collect(),
                    cache: "memory".into(),
                },
                source: Some(Box::new(NixError::Failed {
                    command: "nix copy".into(),
                    status: "injected".into(),
                    stderr: e.to_string(),
                })),
            })
    }

    async fn spawn(&self, vm_id: &VmId, paths: &VmPaths) -> Result<(MemVmm, MemProcess), VmmError> {
        apply(&self.shared, Step::Spawn, "spawn")
            .await
            .map_err(|_| VmmError::SocketTimeout {
                socket: paths.socket.clone(),
                ms: 1,
            })?;
        let pid = 10_000 + self.shared.next_pid.fetch_add(1, Ordering::SeqCst);
        let (exit, _) = watch::channel(None);
        let p = Arc::new(Process {
            pid,
            state: Mutex::new(None),
            exit,
        });
        self.shared
            .live
            .lock()
            .unwrap()
            .insert(vm_id.clone(), p.clone());
        // Like CH, the socket file appears once the process runs.
        std::fs::write(&paths.socket, b"").map_err(|source| VmmError::Spawn {
            binary: "mem".into(),
            source,
        })?;
        Ok(self.handles(vm_id, &p, paths))
    }

    async fn adopt(
        &self,
        vm_id: &VmId,
        paths: &VmPaths,
    ) -> Result<Option<Adopted<Self>>, VmmError> {
        let Some(p) = self.shared.live.lock().unwrap().get(vm_id).cloned() else {
            return Ok(None);
        };
        let (vmm, process) = self.handles(vm_id, &p, paths);
        let info = match vmm.info().await {
            Ok(i) => i,
            // Never created: report it as such so the manager cleans it up.
            Err(_) => VmInfoResponse {
                config: serde_json::from_value(serde_json::json!({
                    "payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
                    "memory": {"size": 1}, "serial": {"mode": "Off"}, "console": {"mode": "Off"}
                }))
                .expect("static config"),
                state: ChVmState::Created,
                memory_actual_size: None,
            },
        };
        Ok(Some(Adopted { vmm, process, info }))
    }

    fn build_config(
        &self,
        vm_id: &VmId,
        spec: &VmSpec,
        paths: &VmPaths,
        files: &HostFiles,
    ) -> VmConfig {
        build_vm_config(vm_id, spec, paths, files, None)
    }
}
