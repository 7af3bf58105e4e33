//! The production backend: one `cloud-hypervisor --api-socket path=…`
//! process per VM, driven over its REST API on that unix socket through
//! `commands::http` (hyper and hyperlocal).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use commands::http::{HttpClient, HttpError, unix_uri};
use http::{Method, Request, StatusCode};
use hyperlocal::UnixConnector;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::dto::{VmId, VmSpec};
use crate::procfs;
use crate::rundir::remove_if_present;
use crate::vmm::config::{
    TapConfig, VmConfig, VmCounters, VmInfoResponse, VmPaths, VmmPingResponse, build_vm_config,
    host_path,
};
use crate::vmm::interface::{
    Adopted, ExitInfo, PrepareStep, Vmm, VmmBackend, VmmError, VmmProcess,
};
use crate::vmm::store::HostFiles;
use crate::vmm::user::VmOwner;

/// Settings of the cloud-hypervisor backend.
#[derive(Debug, Clone)]
pub struct ChBackendConfig {
    /// The `cloud-hypervisor` binary (or `ch-sim`).
    pub binary: PathBuf,
    /// Where `/nix/store/...` paths are on this host (`/` in production).
    pub store_root: PathBuf,
    /// Attach a TAP NIC per VM (only on hosts the NixOS module set up).
    pub tap: Option<TapConfig>,
    /// How long a new CH may take to answer on its socket.
    pub socket_timeout: Duration,
    /// Bound on each REST call.
    pub api_timeout: Duration,
    /// Binary cache `prepare` pulls missing closures from (`nix copy
    /// --from`); `None`: closures must already be local.
    pub closure_source: Option<String>,
    /// The only key whose signatures a pulled narinfo may carry
    /// (`name:base64`, the cache's public key).
    pub closure_public_key: Option<String>,
    /// The nix command pulls run with (its environment: NIX_CONF_DIR,
    /// XDG_CACHE_HOME); the store root is set from `store_root`.
    pub nix: repo_outils::nix::Nix,
    /// How often an adopted (not our child) process is checked.
    pub adopted_poll: Duration,
    /// Who CH runs as (`--vm-user`); `None`: as the worker.
    pub vm_owner: Option<VmOwner>,
    /// Pulls (bytes, time) are counted here.
    pub metrics: crate::metrics::WorkerMetrics,
}

impl ChBackendConfig {
    pub fn new(binary: PathBuf) -> Self {
        ChBackendConfig {
            binary,
            store_root: PathBuf::from("/"),
            tap: None,
            socket_timeout: Duration::from_secs(5),
            api_timeout: Duration::from_secs(10),
            closure_source: None,
            closure_public_key: None,
            nix: repo_outils::nix::Nix::new(),
            adopted_poll: Duration::from_millis(250),
            vm_owner: None,
            metrics: crate::metrics::WorkerMetrics::default(),
        }
    }
}

#[derive(Debug)]
pub struct CloudHypervisorBackend {
    config: ChBackendConfig,
    /// Bounded by `api_timeout`; it pools no idle connections (a worker
    /// talks to hundreds of sockets, rarely twice in a row, and a pooled
    /// connection to a dead CH only fails later).
    http: HttpClient<UnixConnector>,
    /// Pulls run one at a time: a second VM needing the same closure waits
    /// for the first pull, then finds its paths valid and pulls nothing.
    pull_lock: tokio::sync::Mutex<()>,
}

impl CloudHypervisorBackend {
    pub fn new(config: ChBackendConfig) -> Self {
        let http = HttpClient::unix().with_timeout(config.api_timeout);
        CloudHypervisorBackend {
            config,
            http,
            pull_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// A client for a CH socket (also used by tests and the benchmark).
    pub fn client_for(&self, socket: &Path) -> ChClient {
        ChClient {
            http: self.http.clone(),
            socket: socket.to_owned(),
        }
    }
}

impl VmmBackend for CloudHypervisorBackend {
    type Vmm = ChClient;
    type Process = ChProcess;

    async fn prepare(&self, spec: &VmSpec) -> Result<(), VmmError> {
        let absent = |roots: Vec<&str>| -> Vec<String> {
            roots
                .into_iter()
                .filter(|r| !host_path(&self.config.store_root, r).exists())
                .map(str::to_owned)
                .collect()
        };
        // Fast path: everything is local (no nix call per VM).
        if absent(spec.store_roots()).is_empty() {
            return Ok(());
        }
        let Some(src) = &self.config.closure_source else {
            return Err(VmmError::MissingStorePath {
                path: absent(spec.store_roots()).remove(0),
            });
        };
        let Some(key) = &self.config.closure_public_key else {
            return Err(VmmError::Prepare {
                step: PrepareStep::NoPublicKey { cache: src.clone() },
                source: None,
            });
        };
        let _one_pull_at_a_time = self.pull_lock.lock().await;
        let mut nix = self.config.nix.clone();
        if self.config.store_root != Path::new("/") {
            nix = nix.with_store_root(&self.config.store_root);
        }
        // Ask nix (not the file system) which paths are valid: a path a
        // concurrent pull just registered is skipped.
        let missing = nix
            .missing_paths(&absent(spec.store_roots()))
            .await
            .map_err(|e| VmmError::Prepare {
                step: PrepareStep::Check {
                    store: nix.store_name(),
                },
                source: Some(Box::new(e)),
            })?;
        if missing.is_empty() {
            return Ok(());
        }
        tracing::info!(paths = ?missing, %src, "pulling closures");
        let started = std::time::Instant::now();
        let pulled = nix.copy_from(src, &missing, key, None).await;
        let bytes = if pulled.is_ok() {
            let (root, paths) = (self.config.store_root.clone(), missing.clone());
            tokio::task::spawn_blocking(move || {
                paths.iter().map(|p| tree_bytes(&host_path(&root, p))).sum()
            })
            .await
            .unwrap_or(0)
        } else {
            0
        };
        self.config
            .metrics
            .pulled(pulled.is_ok(), bytes, started.elapsed());
        pulled.map_err(|e| VmmError::Prepare {
            step: PrepareStep::Pull {
                paths: missing.clone(),
                cache: src.clone(),
            },
            source: Some(Box::new(e)),
        })?;
        Ok(())
    }

    async fn spawn(
        &self,
        vm_id: &VmId,
        paths: &VmPaths,
    ) -> Result<(ChClient, ChProcess), VmmError> {
        let binary = self.config.binary.display().to_string();
        let spawn_err = |source| VmmError::Spawn {
            binary: binary.clone(),
            source,
        };
        let log = std::fs::File::create(&paths.ch_log).map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        let mut cmd = tokio::process::Command::new(&self.config.binary);
        if let Some(o) = self.config.vm_owner {
            // The standard library drops supplementary groups with the uid:
            // CH keeps exactly this uid and gid (see `vmm::user`).
            cmd.uid(o.uid).gid(o.gid);
        }
        let mut child = cmd
            .arg("--api-socket")
            .arg(format!("path={}", paths.socket.display()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C aimed at the worker's terminal
            // must not take the VMs down with it.
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        let pid = child.id();
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let info = match child.wait().await {
                Ok(st) => describe_exit(st),
                Err(e) => ExitInfo {
                    description: format!("could not be waited for ({e})"),
                    code: None,
                },
            };
            let _ = tx.send(Some(info));
        });
        let process = ChProcess {
            pid,
            socket: paths.socket.clone(),
            exit: rx,
        };
        let vmm = self.client_for(&paths.socket);
        match wait_for_api(&vmm, &process, self.config.socket_timeout).await {
            Ok(()) => {
                tracing::debug!(vm_id = %vm_id, ?pid, "cloud-hypervisor answers");
                Ok((vmm, process))
            }
            Err(e) => {
                let _ = process.kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), process.exited()).await;
                process.cleanup();
                Err(e)
            }
        }
    }

    async fn adopt(
        &self,
        _vm_id: &VmId,
        paths: &VmPaths,
    ) -> Result<Option<Adopted<Self>>, VmmError> {
        let vmm = self.client_for(&paths.socket);
        let ping = match vmm.ping().await {
            Ok(p) => p,
            // Refused or missing: the process died and left its socket.
            Err(VmmError::Connect { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let pid = ping
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| VmmError::BadResponse {
                endpoint: "vmm.ping",
                reason: "no pid".into(),
            })?;
        let info = match vmm.info().await {
            Ok(info) => info,
            Err(e) => {
                let process =
                    ChProcess::adopted(pid, paths.socket.clone(), self.config.adopted_poll);
                let _ = vmm.shutdown_vmm().await;
                let _ = process.kill();
                process.cleanup();
                return Err(e);
            }
        };
        let process = ChProcess::adopted(pid, paths.socket.clone(), self.config.adopted_poll);
        Ok(Some(Adopted { vmm, process, info }))
    }

    fn build_config(
        &self,
        vm_id: &VmId,
        spec: &VmSpec,
        paths: &VmPaths,
        files: &HostFiles,
    ) -> VmConfig {
        build_vm_config(vm_id, spec, paths, files, self.config.tap.as_ref())
    }
}

/// Polls until CH answers `vmm.ping`, watching for it to exit first (CH
/// exits with status 1 before making its socket when it cannot start).
async fn wait_for_api(
    vmm: &ChClient,
    process: &ChProcess,
    timeout: Duration,
) -> Result<(), VmmError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        if let Some(info) = process.try_exited() {
            return Err(VmmError::ExitedEarly {
                status: info.description,
                socket: process.socket.clone(),
            });
        }
        if process.socket.exists() {
            match vmm.ping().await {
                Ok(_) => return Ok(()),
                Err(VmmError::Connect { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if start.elapsed() >= timeout {
            return Err(VmmError::SocketTimeout {
                socket: process.socket.clone(),
                ms: timeout.as_millis() as u64,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

fn describe_exit(st: std::process::ExitStatus) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => ExitInfo {
            description: format!("exited with status {c}"),
            code: Some(c),
        },
        (None, Some(s)) => ExitInfo {
            description: format!("was killed by signal {s}"),
            code: None,
        },
        _ => ExitInfo {
            description: format!("ended ({st})"),
            code: None,
        },
    }
}

/// REST client of one CH API socket.
#[derive(Debug, Clone)]
pub struct ChClient {
    http: HttpClient<UnixConnector>,
    socket: PathBuf,
}

impl ChClient {
    /// One request; `Ok((status, body))` for any HTTP answer. The whole
    /// exchange is bounded by the API timeout.
    pub async fn raw(
        &self,
        method: Method,
        endpoint: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), VmmError> {
        let mut req = Request::builder()
            .method(method)
            .uri(unix_uri(&self.socket, &format!("/api/v1/{endpoint}")))
            .header(http::header::HOST, "localhost");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Bytes::from(body.unwrap_or_default()))
            .map_err(|e| VmmError::Http {
                endpoint,
                reason: e.to_string(),
            })?;
        let resp = self
            .http
            .send(req)
            .await
            .map_err(|e| self.transport_error(endpoint, e))?;
        Ok((resp.status, resp.body))
    }

    /// Maps a transport failure onto the VMM's errors: a refused or missing
    /// socket is `Connect` (a dead CH, which callers treat apart), the
    /// deadline is `Timeout`, anything else is `Http` with its reason.
    fn transport_error(&self, endpoint: &'static str, e: HttpError) -> VmmError {
        match e {
            HttpError::Connect { source, .. } => {
                let mut src: Option<&(dyn std::error::Error + 'static)> =
                    std::error::Error::source(&source);
                while let Some(s) = src {
                    if let Some(io) = s.downcast_ref::<std::io::Error>() {
                        return VmmError::Connect {
                            socket: self.socket.clone(),
                            source: std::io::Error::new(io.kind(), io.to_string()),
                        };
                    }
                    src = s.source();
                }
                VmmError::Connect {
                    socket: self.socket.clone(),
                    source: std::io::Error::other(source.to_string()),
                }
            }
            HttpError::Exchange { source, .. } => VmmError::Http {
                endpoint,
                reason: commands::report::error_chain(&source),
            },
            HttpError::Body { source, .. } => VmmError::Http {
                endpoint,
                reason: source.to_string(),
            },
            HttpError::Timeout { ms, .. } => VmmError::Timeout { endpoint, ms },
            e @ (HttpError::Url(_) | HttpError::TooLarge { .. }) => VmmError::Http {
                endpoint,
                reason: e.to_string(),
            },
        }
    }

    /// A call whose success is 2xx with an empty body.
    async fn put(&self, endpoint: &'static str, body: Option<Vec<u8>>) -> Result<(), VmmError> {
        let (status, bytes) = self.raw(Method::PUT, endpoint, body).await?;
        check(endpoint, status, &bytes)
    }

    async fn get<T: DeserializeOwned>(&self, endpoint: &'static str) -> Result<T, VmmError> {
        let (status, bytes) = self.raw(Method::GET, endpoint, None).await?;
        check(endpoint, status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| VmmError::BadResponse {
            endpoint,
            reason: e.to_string(),
        })
    }
}

/// Non-2xx answers carry CH's error chain as a JSON array of strings.
fn check(endpoint: &'static str, status: StatusCode, body: &[u8]) -> Result<(), VmmError> {
    if status.is_success() {
        return Ok(());
    }
    let chain = serde_json::from_slice::<Vec<String>>(body)
        .unwrap_or_else(|_| vec![String::from_utf8_lossy(body).trim().to_owned()])
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    Err(VmmError::Api {
        endpoint,
        status: status.as_u16(),
        chain,
    })
}

impl Vmm for ChClient {
    async fn create(&self, config: &VmConfig) -> Result<(), VmmError> {
        let body = serde_json::to_vec(config).map_err(|e| VmmError::Http {
            endpoint: "vm.create",
            reason: e.to_string(),
        })?;
        self.put("vm.create", Some(body)).await
    }
    async fn boot(&self) -> Result<(), VmmError> {
        self.put("vm.boot", None).await
    }
    async fn shutdown(&self) -> Result<(), VmmError> {
        self.put("vm.shutdown", None).await
    }
    async fn delete(&self) -> Result<(), VmmError> {
        self.put("vm.delete", None).await
    }
    async fn info(&self) -> Result<VmInfoResponse, VmmError> {
        self.get("vm.info").await
    }
    async fn pause(&self) -> Result<(), VmmError> {
        self.put("vm.pause", None).await
    }
    async fn resume(&self) -> Result<(), VmmError> {
        self.put("vm.resume", None).await
    }
    async fn counters(&self) -> Result<VmCounters, VmmError> {
        self.get("vm.counters").await
    }
    async fn ping(&self) -> Result<VmmPingResponse, VmmError> {
        self.get("vmm.ping").await
    }
    async fn shutdown_vmm(&self) -> Result<(), VmmError> {
        self.put("vmm.shutdown", None).await
    }
}

/// The CH process of one VM: our child (exit seen by `wait`) or adopted
/// from a previous worker (exit seen by polling /proc).
#[derive(Debug)]
pub struct ChProcess {
    pid: Option<u32>,
    socket: PathBuf,
    exit: watch::Receiver<Option<ExitInfo>>,
}

impl ChProcess {
    fn adopted(pid: u32, socket: PathBuf, poll: Duration) -> Self {
        let (tx, rx) = watch::channel(None);
        let started = procfs::start_time(pid);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(poll) => {}
                }
                // Gone, a zombie, or the pid now names another process.
                if started.is_none() || procfs::start_time(pid) != started {
                    let _ = tx.send(Some(ExitInfo {
                        description: format!("process {pid} vanished"),
                        code: None,
                    }));
                    return;
                }
            }
        });
        ChProcess {
            pid: Some(pid),
            socket,
            exit: rx,
        }
    }
}

impl VmmProcess for ChProcess {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn kill(&self) -> Result<(), VmmError> {
        let Some(pid) = self.pid else { return Ok(()) };
        if self.try_exited().is_some() {
            return Ok(());
        }
        let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
            return Ok(());
        };
        match rustix::process::kill_process(p, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(VmmError::Signal {
                pid,
                source: e.into(),
            }),
        }
    }

    async fn exited(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(unreachable_exit),
            // The watcher is gone without a verdict (runtime shutting down).
            Err(_) => unreachable_exit(),
        }
    }

    fn try_exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    fn cleanup(&self) {
        remove_if_present(&self.socket);
        remove_if_present(&PathBuf::from(format!("{}.lock", self.socket.display())));
    }
}

fn unreachable_exit() -> ExitInfo {
    ExitInfo {
        description: "is no longer watched".into(),
        code: None,
    }
}

/// Bytes of the files under `path` (symlinks not followed): what a pull
/// added to the store for that path.
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| tree_bytes(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}
