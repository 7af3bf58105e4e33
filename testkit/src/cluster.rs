//! The one cluster harness of real binaries: a control plane, N workers on
//! ch-sim (each with its own store root and run directory), and optionally
//! a cache and ci_service wired to them, in one hermetic temp dir, with
//! every service's log in `<dir>/logs/<name>.log`. Pieces can be killed
//! and restarted on the address they had.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use repo_outils::testing::HermeticNix;

use crate::fs::Tmpfs;
use crate::process::{Log, Proc, Reaper};
use crate::services::{
    ControlPlaneArgs, WorkerArgs, cache_command, cache_keys, ci_command, start_worker,
    write_token_file,
};
use crate::wait::wait_until;

/// How to start one worker of the cluster.
#[derive(Debug, Clone)]
pub struct WorkerOpts {
    pub id: &'static str,
    /// The loopback address the worker listens on.
    pub ip: &'static str,
    pub cpu: u32,
    pub memory_mb: u64,
    /// Further worker options.
    pub args: Vec<String>,
    /// Environment for the worker and so for its ch-sim processes.
    pub env: Vec<(&'static str, String)>,
}

impl WorkerOpts {
    /// Worker `id` on 127.0.0.1 with 4 CPUs and 2 GiB.
    pub fn new(id: &'static str) -> WorkerOpts {
        WorkerOpts {
            id,
            ip: "127.0.0.1",
            cpu: 4,
            memory_mb: 2048,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Worker `id` with `cpu` and `memory_mb`, heartbeating every 200 ms
    /// and giving a stopping CH 500 ms: the quick worker of the tests that
    /// watch a cluster react.
    pub fn quick(id: &'static str, cpu: u32, memory_mb: u64) -> WorkerOpts {
        WorkerOpts {
            cpu,
            memory_mb,
            ..WorkerOpts::new(id)
        }
        .args([
            "--heartbeat-interval-ms",
            "200",
            "--shutdown-timeout-ms",
            "500",
        ])
    }

    pub fn args<S: Into<String>>(mut self, a: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    pub workers: Vec<WorkerOpts>,
    /// The control plane's options (its address is chosen by the cluster).
    pub control_plane: ControlPlaneArgs,
    /// A cache (key `<cache_key_name>`, upload token `token`) the workers
    /// pull closures from, and ci_service uploads to.
    pub cache: bool,
    pub cache_key_name: String,
    pub token: String,
    /// The cache's data dir on a tmpfs of this size (needs root).
    pub cache_tmpfs: Option<String>,
    /// ci_service wired to the cache and the control plane (needs `cache`).
    pub ci: bool,
    /// Further ci_service options (`--projects`, a control-plane token).
    pub ci_args: Vec<String>,
    /// The fixture store paths ([`crate::fixtures::make_store`]) in every
    /// worker's store root.
    pub fixture_store: bool,
    /// Every Cap'n Proto service checks tokens: the control plane has an
    /// admin, a ci and a `worker:<id>` token per worker, each worker
    /// presents its own and takes the admin token on its RPC, ci_service
    /// presents the ci token. Without it they run `--insecure-no-auth`.
    /// Clients use [`Cluster::admin_token_file`].
    pub tokens: bool,
}

impl ClusterOpts {
    /// Control plane and `workers`, nothing else.
    pub fn new(workers: Vec<WorkerOpts>) -> ClusterOpts {
        ClusterOpts {
            workers,
            control_plane: ControlPlaneArgs::default(),
            cache: false,
            cache_key_name: "test-cache-1".to_owned(),
            token: "test-upload-token".to_owned(),
            cache_tmpfs: None,
            ci: false,
            ci_args: Vec::new(),
            fixture_store: false,
            tokens: false,
        }
    }

    /// Control plane and ch-sim workers `ids` with the fixture store,
    /// every service checking tokens, 200 ms heartbeats against a 1.5 s
    /// timeout, 3 s long-polls, no startup grace; `cp_args` go to the
    /// control plane. The quick cluster of the history and CLI tests.
    pub fn quick(ids: &[&'static str], cp_args: &[&str]) -> ClusterOpts {
        let mut opts = ClusterOpts::new(
            ids.iter()
                .map(|id| WorkerOpts::new(id).args(["--heartbeat-interval-ms", "200"]))
                .collect(),
        );
        opts.control_plane = ControlPlaneArgs {
            heartbeat_timeout_ms: Some(1500),
            long_poll_timeout_ms: Some(3000),
            args: cp_args.iter().map(|a| (*a).to_owned()).collect(),
            ..ControlPlaneArgs::default()
        };
        opts.fixture_store = true;
        opts.tokens = true;
        opts
    }

    /// With a cache and ci_service too.
    pub fn with_ci(mut self) -> ClusterOpts {
        self.cache = true;
        self.ci = true;
        self
    }
}

/// A running cluster. Fields drop in order: services first, then the
/// reaper (the CH processes that outlive workers by design), the mounts,
/// the temp dir last.
pub struct Cluster {
    pub ci: Option<Proc>,
    /// id → (options, process, control-plane address it uses).
    pub workers: BTreeMap<&'static str, (WorkerOpts, Proc, String)>,
    pub cp: Proc,
    pub cache: Option<Proc>,
    /// The cache's public key (empty without a cache).
    pub public_key: String,
    pub logs: PathBuf,
    opts: ClusterOpts,
    _reaper: Reaper,
    /// Unmounted after every process is gone, before the temp dir goes.
    pub mounts: Vec<Tmpfs>,
    pub h: HermeticNix,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("workers", &self.workers.keys().collect::<Vec<_>>())
            .field("cp", &self.cp)
            .field("logs", &self.logs)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the cluster, every worker reaching the control plane at
    /// `cp_addr_for(worker id, real address)` (e.g. through a proxy).
    pub fn start(
        mut opts: ClusterOpts,
        mut cp_addr_for: impl FnMut(&str, &str) -> String,
    ) -> Cluster {
        let h = HermeticNix::new().expect("a hermetic nix temp dir");
        let d = h.dir().to_owned();
        if opts.tokens {
            let file = write_tokens(&d.join("tokens"), &opts.workers);
            opts.control_plane
                .args
                .extend(["--token-file".to_owned(), file.display().to_string()]);
        }
        let reaper = Reaper::new(&d);
        let mounts: Vec<Tmpfs> = opts
            .cache_tmpfs
            .as_deref()
            .map(|size| Tmpfs::mount(&d.join("cache-data"), size))
            .into_iter()
            .collect();
        let logs = d.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let (cache, public_key) = if opts.cache {
            let key = cache_keys(&d, &opts.cache_key_name, &opts.token);
            let cache = Proc::spawn_group(
                "cache",
                cache_command(&d, "127.0.0.1:0"),
                Log::File(logs.join("cache.log")),
            );
            (Some(cache), key)
        } else {
            (None, String::new())
        };
        let cp = Proc::spawn_group(
            "control_plane",
            opts.control_plane.command(),
            Log::File(logs.join("control_plane.log")),
        );
        let mut c = Cluster {
            ci: None,
            workers: BTreeMap::new(),
            cp,
            cache,
            public_key,
            logs,
            opts,
            _reaper: reaper,
            mounts,
            h,
        };
        for o in c.opts.workers.clone() {
            if c.opts.fixture_store {
                crate::fixtures::make_store(&c.host_root(o.id));
            }
            let via = cp_addr_for(o.id, &c.cp.addr);
            let w = c.spawn_worker(&o, &via);
            c.workers.insert(o.id, (o, w, via));
        }
        if c.opts.ci {
            let ci = c.start_ci("127.0.0.1:0");
            c.ci = Some(ci);
        }
        c
    }

    pub fn dir(&self) -> &Path {
        self.h.dir()
    }

    /// The file holding the control plane's admin token (also the workers'
    /// admin token), for a client's `PCR_TOKEN_FILE`; None without
    /// [`ClusterOpts::tokens`].
    pub fn admin_token_file(&self) -> Option<PathBuf> {
        self.opts.tokens.then(|| self.token_file("admin"))
    }

    /// Runs `f` with a control-plane client logged in as admin (a cluster
    /// with [`ClusterOpts::tokens`]), on a `LocalSet` of its own.
    pub fn with_admin<T>(&self, f: impl AsyncFnOnce(&commands::client::MasterClient) -> T) -> T {
        let token = std::fs::read_to_string(self.token_file("admin")).unwrap();
        let addr = self.cp.addr.clone();
        commands::rpc::block_on_local(async move {
            let m = commands::client::MasterClient::connect_with_token(
                &addr,
                Duration::from_secs(5),
                token.trim(),
            )
            .await
            .unwrap();
            let out = f(&m).await;
            m.close().await;
            out
        })
    }

    /// A token file [`write_tokens`] wrote.
    fn token_file(&self, name: &str) -> PathBuf {
        self.dir().join("tokens").join(name)
    }

    /// Worker `id`'s store root.
    pub fn host_root(&self, id: &str) -> PathBuf {
        self.dir().join("hosts").join(id)
    }

    /// Worker `id`'s run directory.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.dir().join("run").join(id)
    }

    pub fn cache_data(&self) -> PathBuf {
        self.dir().join("cache-data")
    }

    /// The cache (panics when the cluster has none).
    pub fn cache(&self) -> &Proc {
        self.cache.as_ref().expect("a cluster with a cache")
    }

    /// ci_service (panics when the cluster has none).
    pub fn ci(&self) -> &Proc {
        self.ci.as_ref().expect("a cluster with ci_service")
    }

    pub fn ci_url(&self) -> String {
        self.ci().url()
    }

    /// The log of service `name` (`control_plane`, `cache`, `ci_service`
    /// or a worker id).
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Starts worker `o` (not a process group: its VMs outlive it).
    pub fn spawn_worker(&self, o: &WorkerOpts, cp_addr: &str) -> Proc {
        let mut w = WorkerArgs::new(o.id, &self.run_dir(o.id), &self.host_root(o.id));
        w.listen = format!("{}:0", o.ip);
        w.cpu = o.cpu;
        w.memory_mb = o.memory_mb;
        w.control_plane = Some(cp_addr.to_owned());
        if let Some(cache) = &self.cache {
            w.args.extend(["--closure-source".to_owned(), cache.url()]);
            w.args
                .extend(["--cache-public-key".to_owned(), self.public_key.clone()]);
        }
        if self.opts.tokens {
            w.args.extend([
                "--token-file".to_owned(),
                self.token_file("worker-rpc").display().to_string(),
                "--cluster-token-file".to_owned(),
                self.token_file(&format!("worker-{}", o.id))
                    .display()
                    .to_string(),
            ]);
        }
        w.args.extend(o.args.iter().cloned());
        for (k, v) in self.h.env() {
            w.env.push((k.to_owned(), v.to_string_lossy().into_owned()));
        }
        for (k, v) in &o.env {
            w.env.push(((*k).to_owned(), v.clone()));
        }
        start_worker(&w, Log::File(self.log(o.id)))
    }

    /// Starts ci_service on `listen` (state in the cluster's dir, so a
    /// restart on the same address resumes it).
    pub fn start_ci(&self, listen: &str) -> Proc {
        let mut cmd = ci_command(
            self.dir(),
            &self.h.conf_dir(),
            listen,
            &self.cache().url(),
            &self.cp.addr,
        );
        cmd.args(&self.opts.ci_args);
        if self.opts.tokens {
            cmd.arg("--control-plane-token-file")
                .arg(self.token_file("ci"));
        }
        Proc::spawn_group("ci_service", cmd, Log::File(self.log("ci_service")))
    }

    /// kill -9 worker `id` (not its VMs) and start it again with the same
    /// id, run dir and options.
    pub fn restart_worker(&mut self, id: &str) {
        let (o, mut w, cp) = self.workers.remove(id).expect("a worker of the cluster");
        w.kill();
        let w = self.spawn_worker(&o, &cp);
        self.workers.insert(o.id, (o, w, cp));
    }

    /// Stops worker `id` with kill -9 (its VMs keep running) and forgets it.
    pub fn kill_worker(&mut self, id: &str) {
        let (_, mut w, _) = self.workers.remove(id).expect("a worker of the cluster");
        w.kill();
    }

    /// kill -9 the control plane and start it again on its address, with
    /// `grace_ms` of startup grace (so workers can report what they run).
    pub fn restart_cp(&mut self, grace_ms: u64) {
        let mut args = self.opts.control_plane.clone();
        args.listen = self.cp.addr.clone();
        args.startup_grace_ms = grace_ms;
        self.cp.kill();
        let log = self.log("control_plane");
        self.cp = respawn("the control plane to restart", || {
            Proc::spawn_group("control_plane", args.command(), Log::File(log.clone()))
        });
    }

    /// kill -9 the cache and start it again on its address.
    pub fn restart_cache(&mut self) {
        self.restart_cache_with(&[]);
    }

    /// [`Self::restart_cache`], the cache started with `extra` options
    /// (e.g. a gc schedule).
    pub fn restart_cache_with(&mut self, extra: &[&str]) {
        let cache = self.cache.as_mut().expect("a cluster with a cache");
        let addr = cache.addr.clone();
        cache.kill();
        let (dir, log) = (self.dir().to_owned(), self.log("cache"));
        self.cache = Some(respawn("the cache to restart", || {
            let mut cmd = cache_command(&dir, &addr);
            cmd.args(extra);
            Proc::spawn_group("cache", cmd, Log::File(log.clone()))
        }));
    }

    /// kill -9 ci_service and start it again on its address (the hook's).
    pub fn restart_ci(&mut self) {
        let ci = self.ci.as_mut().expect("a cluster with ci_service");
        let addr = ci.addr.clone();
        ci.kill();
        let ci = respawn("ci_service to restart", || self.start_ci(&addr));
        self.ci = Some(ci);
    }
}

/// Writes the cluster's tokens into `dir` (0600 files): `admin`, `ci`,
/// `worker-<id>` (one token each), `control-plane` (the control plane's
/// token file naming them all) and `worker-rpc` (the workers' own token
/// file: the admin token). Returns the control plane's file.
fn write_tokens(dir: &Path, workers: &[WorkerOpts]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let admin = "cluster-admin-token-000000";
    let ci = "cluster-ci-token-000000000";
    let mut entries = vec![
        ("admin".to_owned(), admin.to_owned()),
        ("ci".to_owned(), ci.to_owned()),
    ];
    for w in workers {
        let token = format!("cluster-worker-token-{}", w.id);
        crate::fs::write_private(&dir.join(format!("worker-{}", w.id)), &format!("{token}\n"));
        entries.push((format!("worker:{}", w.id), token));
    }
    crate::fs::write_private(&dir.join("admin"), &format!("{admin}\n"));
    crate::fs::write_private(&dir.join("ci"), &format!("{ci}\n"));
    write_token_file(&dir.join("worker-rpc"), &[("admin", admin)]);
    let file = dir.join("control-plane");
    let refs: Vec<(&str, &str)> = entries
        .iter()
        .map(|(w, t)| (w.as_str(), t.as_str()))
        .collect();
    write_token_file(&file, &refs);
    file
}

/// Starts a service again on the address it had: the port may take a
/// moment to be free again, so a start that fails is retried.
pub fn respawn(what: &str, f: impl Fn() -> Proc) -> Proc {
    wait_until(Duration::from_secs(15), what, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(&f)).ok()
    })
}

impl Drop for Cluster {
    /// A failed test keeps its services' logs (the temp dir goes).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let keep = std::env::temp_dir().join(format!(
            "pcr-test-logs-{}-{}",
            std::process::id(),
            commands::telemetry::now_ms()
        ));
        if std::fs::create_dir_all(&keep).is_ok() {
            for e in std::fs::read_dir(&self.logs)
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
            }
            eprintln!("service logs kept in {}", keep.display());
        }
    }
}
