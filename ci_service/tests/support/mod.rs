//! Support for the fault-injection suite (`tests/faults.rs`): a cluster of
//! the real binaries whose pieces can be killed and restarted on the same
//! address, a seeded RNG for reproducible "random points", a TCP proxy
//! that can cut a worker off the control plane, a tmpfs guard for a full
//! disk, CH process counting from /proc, and the post-fault invariants.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::cluster::{status, wait_converged};
use crate::common::*;
use repo_outils::testing::HermeticNix;

pub const TOKEN: &str = "faults-upload-token";
/// The control plane's heartbeat threshold in this suite: short, so a cut
/// worker is noticed quickly, yet 5 × the workers' heartbeat interval.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 1500;

// ---- seeded randomness ------------------------------------------------------

/// splitmix64: enough to pick delays reproducibly without a dependency.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `PCR_FAULT_SEED` when set, else from the clock; the seed
    /// is printed so a failing run can be replayed.
    pub fn from_env(scenario: &str) -> Rng {
        let seed = std::env::var("PCR_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("[{scenario}] fault seed {seed} (replay with PCR_FAULT_SEED={seed})");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration in [lo, hi) milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

// ---- processes --------------------------------------------------------------

/// A spawned service whose stderr goes to `<dir>/<name>.log` (appended
/// across restarts); killed with SIGKILL and reaped on drop.
pub struct Svc {
    pub child: Child,
    pub addr: String,
    /// Killed as a process group (the service and the nix processes it
    /// runs), as systemd's default KillMode=control-group cleans up a
    /// crashed unit; the worker's unit uses KillMode=process (its VMs
    /// outlive it), so it is killed alone.
    group: bool,
}

impl Svc {
    pub fn spawn(name: &str, log_dir: &Path, cmd: Command) -> Svc {
        Svc::spawn_as(name, log_dir, cmd, true)
    }

    pub fn spawn_as(name: &str, log_dir: &Path, mut cmd: Command, group: bool) -> Svc {
        if group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join(format!("{name}.log")))
            .unwrap();
        cmd.stdout(Stdio::piped())
            .stdin(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(a) = line.trim().strip_prefix("listening on ") {
                    let _ = tx.send(a.trim().to_owned());
                    sent = true;
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let st = child.wait();
            panic!(
                "{name} did not print `listening on ADDR` ({st:?}); log:\n{}",
                tail(&log_dir.join(format!("{name}.log")))
            );
        };
        Svc { child, addr, group }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9 (of the group, see `group`) and reap.
    pub fn kill(&mut self) {
        if self.group && self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last 60 lines of a log file (for assertion messages).
pub fn tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Restarts a service on the address it had (the port may take a moment
/// to be free again).
pub fn respawn(what: &str, f: impl Fn() -> Svc) -> Svc {
    wait_for(what, Duration::from_secs(15), || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(&f)).ok()
    })
}

/// Live (not zombie) pids of ch-sim processes whose API socket lies in
/// `run_dir`.
pub fn ch_pids(run_dir: &Path) -> Vec<u32> {
    let needle = format!("path={}/", run_dir.display());
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_sim = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "ch-sim"));
        if is_sim && args.iter().any(|a| a.contains(&needle)) && alive(pid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// Kills every process mentioning `needle` in its command line (the CH
/// processes of a test's run directories), also when the test fails.
pub struct Reaper(pub String);
impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid as u32 == std::process::id() {
                continue;
            }
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
                && String::from_utf8_lossy(&cmd).contains(&self.0)
            {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

// ---- network cut ------------------------------------------------------------

/// A TCP proxy on its own loopback address in front of the control plane.
/// `cut()` models a partition: bytes in flight stay queued (as TCP would
/// retransmit them), new connections are accepted but get nowhere; `heal()`
/// lets everything flow again.
pub struct Proxy {
    pub addr: String,
    cut: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(listen_ip: &str, upstream: String) -> Proxy {
        let cut = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let std_listener = std::net::TcpListener::bind((listen_ip, 0)).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap().to_string();
        let (c, f, s) = (cut.clone(), forwarded.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (down, _) = tokio::select! {
                        () = s.cancelled() => return,
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let (c, f, s, upstream) = (c.clone(), f.clone(), s.clone(), upstream.clone());
                    tokio::spawn(async move {
                        // A blackholed SYN: nothing happens until the cut heals.
                        while c.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (dr, dw) = down.into_split();
                        let (ur, uw) = up.into_split();
                        tokio::select! {
                            () = s.cancelled() => {}
                            () = pump(dr, uw, c.clone(), f.clone()) => {}
                            () = pump(ur, dw, c, f) => {}
                        }
                    });
                }
            });
        });
        Proxy {
            addr,
            cut,
            forwarded,
            stop,
            thread: Some(thread),
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
}

// ---- full disk ----------------------------------------------------------------

/// A small tmpfs mounted on a directory, unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this scenario mounts a tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }

    /// Fills the file system with a file until it is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0xa5u8; 4096];
        loop {
            if f.write_all(&block).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process killed a moment ago may still hold a file open.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// ---- the cluster ----------------------------------------------------------------

/// How to start one worker.
#[derive(Clone)]
pub struct WorkerOpts {
    pub id: &'static str,
    /// The loopback address the worker listens on.
    pub ip: &'static str,
    /// Environment for the worker and so for its ch-sim processes.
    pub env: Vec<(&'static str, String)>,
}

impl WorkerOpts {
    pub fn new(id: &'static str) -> WorkerOpts {
        WorkerOpts {
            id,
            ip: "127.0.0.1",
            env: Vec::new(),
        }
    }
}

/// Fields drop in order: services first, then the reaper (stray CH
/// processes), the temp dir last.
pub struct Cluster {
    pub ci: Svc,
    /// id → (options, process, control-plane address it uses).
    pub workers: BTreeMap<&'static str, (WorkerOpts, Svc, String)>,
    pub cp: Svc,
    pub cache: Svc,
    pub repo: Repo,
    pub logs: PathBuf,
    _reaper: Reaper,
    /// Unmounted after every process is gone, before the temp dir goes.
    pub mounts: Vec<Tmpfs>,
    pub h: HermeticNix,
}

impl Cluster {
    pub fn dir(&self) -> &Path {
        self.h.dir()
    }

    pub fn cache_data(&self) -> PathBuf {
        self.dir().join("cache-data")
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.dir().join("run").join(id)
    }

    pub fn ci_url(&self) -> String {
        self.ci.url()
    }

    pub fn start_cache(h: &HermeticNix, logs: &Path, listen: &str) -> Svc {
        let d = h.dir();
        let mut cmd = Command::new(bin("cache"));
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(d.join("cache-data"))
            .arg("--key-file")
            .arg(d.join("key/secret-key"))
            .arg("--upload-token-file")
            .arg(d.join("token"));
        Svc::spawn("cache", logs, cmd)
    }

    pub fn start_cp(logs: &Path, listen: &str, grace_ms: u64) -> Svc {
        let mut cmd = Command::new(bin("control_plane"));
        cmd.args(["--listen", listen])
            .args(["--heartbeat-timeout-ms", &HEARTBEAT_TIMEOUT_MS.to_string()])
            .args(["--startup-grace-ms", &grace_ms.to_string()])
            .args(["--long-poll-timeout-ms", "5000"]);
        Svc::spawn("control_plane", logs, cmd)
    }

    pub fn start_ci(h: &HermeticNix, logs: &Path, listen: &str, cache: &str, cp: &str) -> Svc {
        let cmd = crate::common::cluster::ci_command(h, listen, cache, cp);
        Svc::spawn("ci_service", logs, cmd)
    }

    pub fn spawn_worker(&self, o: &WorkerOpts, cp_addr: &str) -> Svc {
        start_worker(&self.h, &self.logs, o, &self.cache.url(), cp_addr)
    }

    /// kill -9 worker `id` (not its VMs) and start it again with the same
    /// id, run dir and options.
    pub fn restart_worker(&mut self, id: &str) {
        let (o, mut svc, cp) = self.workers.remove(id).expect("known worker");
        svc.kill();
        let svc = self.spawn_worker(&o, &cp);
        self.workers.insert(o.id, (o, svc, cp));
    }

    /// kill -9 the control plane and start it again on its address.
    pub fn restart_cp(&mut self) {
        let addr = self.cp.addr.clone();
        self.cp.kill();
        let logs = self.logs.clone();
        self.cp = respawn("the control plane to restart", || {
            Cluster::start_cp(&logs, &addr, 1000)
        });
    }

    pub fn restart_cache(&mut self) {
        let addr = self.cache.addr.clone();
        self.cache.kill();
        let logs = self.logs.clone();
        self.cache = respawn("the cache to restart", || {
            Cluster::start_cache(&self.h, &logs, &addr)
        });
    }

    pub fn restart_ci(&mut self) {
        let addr = self.ci.addr.clone();
        self.ci.kill();
        let logs = self.logs.clone();
        let (cache, cp) = (self.cache.url(), self.cp.addr.clone());
        self.ci = respawn("ci_service to restart", || {
            Cluster::start_ci(&self.h, &logs, &addr, &cache, &cp)
        });
    }

    /// Pushes a one-line change of db's message (so db-0 is replaced);
    /// returns the commit.
    pub fn push_db_change(&self, tag: &str) -> String {
        let p = self.repo.work.join("vms.nix");
        let text = std::fs::read_to_string(&p).unwrap();
        let start = text.find("hello from db").expect("db message");
        let end = start + text[start..].find('"').unwrap();
        let new = text.replacen(&text[start..end], &format!("hello from db {tag}"), 1);
        std::fs::write(&p, new).unwrap();
        git(&self.repo.work, &["commit", "-q", "-am", tag]);
        self.repo.push().0
    }

    /// Makes every disk image `mb` MiB of random data bigger (so the
    /// upload lasts long enough to be hit) and pushes with a new db
    /// message; returns the commit. The sandbox is off, so the builder may
    /// run /bin/dd.
    pub fn push_big_change(&self, tag: &str, mb: u32) -> String {
        let image = self.repo.work.join("image.nix");
        let text = std::fs::read_to_string(&image).unwrap();
        let big = text.replacen(
            r#"echo "$content" > "$out""#,
            &format!(
                r#"echo "$content" > "$out"; /bin/dd if=/dev/urandom bs=1M count={mb} status=none >> "$out""#
            ),
            1,
        );
        assert_ne!(big, text, "image.nix changed shape; update this helper");
        std::fs::write(&image, big).unwrap();
        self.push_db_change(tag)
    }

    /// Pushes, waits for the job to succeed and the generation to converge.
    pub fn push_and_converge(&self, tag: &str) -> (u64, BTreeMap<String, (String, String)>) {
        let ci = self.ci_url();
        let commit = self.push_db_change(tag);
        let id = job_for(&ci, &commit);
        let job = wait_job(&ci, id, Duration::from_secs(90));
        assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
        let generation = job["generation"].as_u64().unwrap();
        let placed = wait_converged(&self.cp.addr, generation, Duration::from_secs(60));
        (generation, placed)
    }

    /// The post-fault invariants, polled until they hold (bounded):
    /// - every pushed commit has a job and no job is left queued/running;
    /// - the active generation is the newest generation of a succeeded job
    ///   and it is 100 % converged, every VM running;
    /// - per worker, the live ch-sim processes in its run dir are exactly
    ///   the VMs the control plane sees there (no duplicate, no orphan);
    /// - `cache verify` finds every stored path intact and signed.
    ///
    /// Returns the converged placement.
    pub fn check_invariants(&self, commits: &[String]) -> BTreeMap<String, (String, String)> {
        let ci = self.ci_url();
        let jobs = wait_for("every CI job to be final", Duration::from_secs(90), || {
            let jobs = get_json(&format!("{ci}/jobs?limit=1000"));
            let list = jobs.as_array().unwrap().clone();
            list.iter()
                .all(|j| {
                    matches!(
                        j["state"].as_str(),
                        Some("succeeded" | "failed" | "superseded")
                    )
                })
                .then_some(list)
        });
        for c in commits {
            assert!(
                jobs.iter().any(|j| j["commit"] == c.as_str()),
                "the push of {c} has no job: {jobs:?}"
            );
        }
        let last_good = jobs
            .iter()
            .filter(|j| j["state"] == "succeeded")
            .filter_map(|j| j["generation"].as_u64())
            .max()
            .expect("a succeeded job");
        // Converged by the control plane's account AND one live CH process
        // per VM placed on each worker, seen together twice 300 ms apart
        // (a returning worker's stale report can look converged for a
        // moment before its reconciler deletes what moved away).
        let per_worker = |placed: &BTreeMap<String, (String, String)>| {
            let mut m: BTreeMap<String, usize> = BTreeMap::new();
            for (_, w) in placed.values() {
                *m.entry(w.clone()).or_default() += 1;
            }
            m
        };
        let mut last = (BTreeMap::new(), BTreeMap::new());
        let mut stable: Option<BTreeMap<String, (String, String)>> = None;
        let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                &format!("generation {last_good} converged with one CH process per placed VM"),
                Duration::from_secs(60),
                || {
                    std::thread::sleep(Duration::from_millis(250));
                    let placed = converged_now(&self.cp.addr, last_good);
                    let chs: BTreeMap<String, usize> = self
                        .workers
                        .keys()
                        .map(|id| (id.to_string(), ch_pids(&self.run_dir(id)).len()))
                        .filter(|(_, n)| *n > 0)
                        .collect();
                    let ok = placed.as_ref().filter(|p| per_worker(p) == chs).cloned();
                    last = (chs, placed.as_ref().map(per_worker).unwrap_or_default());
                    match (ok, stable.take()) {
                        (Some(p), Some(prev)) if p == prev => Some(p),
                        (ok, _) => {
                            stable = ok;
                            None
                        }
                    }
                },
            )
        }));
        let placed = match settled {
            Ok(p) => p,
            Err(_) => panic!(
                "not settled: CH processes per worker {:?}, placed per worker {:?}; status {:#?}",
                last.0,
                last.1,
                status(&self.cp.addr)
            ),
        };
        self.cache_verify();
        placed
    }

    pub fn cache_verify(&self) {
        let out = Command::new(bin("cache"))
            .args(["verify", "--data-dir"])
            .arg(self.cache_data())
            .arg("--key-file")
            .arg(self.dir().join("key/secret-key"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cache verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    /// A failed scenario keeps its services' logs (the temp dir goes).
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!(
                "pcr-faults-logs-{}-{}",
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
}

/// name → (vm id, worker id) when generation `generation` is active, 100 %
/// converged and every VM runs; None otherwise (never panics).
pub fn converged_now(cp: &str, generation: u64) -> Option<BTreeMap<String, (String, String)>> {
    let s = status(cp)?;
    let ok = s.active.as_ref().is_some_and(|g| g.number == generation)
        && s.convergence_percent >= 100.0
        && !s.vms.is_empty()
        && s.vms
            .iter()
            .all(|v| v.state == Some(commands::types::VmState::Running));
    ok.then(|| {
        s.vms
            .iter()
            .map(|v| (v.name.clone(), (v.vm_id.clone(), v.worker_id.clone())))
            .collect()
    })
}

pub fn start_worker(h: &HermeticNix, logs: &Path, o: &WorkerOpts, cache: &str, cp: &str) -> Svc {
    let d = h.dir();
    let public_key = std::fs::read_to_string(d.join("key/public-key")).unwrap();
    let mut cmd = Command::new(bin("worker"));
    cmd.args(["--listen", &format!("{}:0", o.ip), "--worker-id", o.id])
        .args(["--cpu", "4", "--memory-mb", "2048"])
        .args([
            "--heartbeat-interval-ms",
            "250",
            "--shutdown-timeout-ms",
            "500",
        ])
        .args(["--api-timeout-ms", "2000", "--socket-timeout-ms", "3000"])
        .arg("--ch-binary")
        .arg(bin("ch-sim"))
        .arg("--run-dir")
        .arg(d.join("run").join(o.id))
        .arg("--store-root")
        .arg(d.join("hosts").join(o.id))
        .args(["--closure-source", cache])
        .args(["--cache-public-key", public_key.trim()])
        .args(["--control-plane", cp])
        .envs(h.env());
    for (k, v) in &o.env {
        cmd.env(k, v);
    }
    Svc::spawn_as(o.id, logs, cmd, false)
}

/// Starts cache, control plane, the workers (each reaching the control
/// plane at `cp_addr_for(id, real)`), ci_service and a repository with
/// the hook; pushes the hermetic example and waits for generation 1.
pub fn start(workers: Vec<WorkerOpts>, cp_addr_for: impl FnMut(&str, &str) -> String) -> Cluster {
    start_with(workers, cp_addr_for, None)
}

/// [`start`], with the cache's data dir on a tmpfs of `cache_tmpfs` size.
pub fn start_with(
    workers: Vec<WorkerOpts>,
    mut cp_addr_for: impl FnMut(&str, &str) -> String,
    cache_tmpfs: Option<&str>,
) -> Cluster {
    let h = HermeticNix::new().unwrap();
    let d = h.dir().to_owned();
    let reaper = Reaper(d.display().to_string());
    let mounts: Vec<Tmpfs> = cache_tmpfs
        .map(|size| Tmpfs::mount(&d.join("cache-data"), size))
        .into_iter()
        .collect();
    let logs = d.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let st = Command::new(bin("cache"))
        .args(["keygen", "faults-cache-1", "--out-dir"])
        .arg(d.join("key"))
        .output()
        .unwrap();
    assert!(st.status.success(), "cache keygen");
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let cache = Cluster::start_cache(&h, &logs, "127.0.0.1:0");
    let cp = Cluster::start_cp(&logs, "127.0.0.1:0", 0);
    let mut ws = BTreeMap::new();
    for o in workers {
        let via = cp_addr_for(o.id, &cp.addr);
        let svc = start_worker(&h, &logs, &o, &cache.url(), &via);
        ws.insert(o.id, (o, svc, via));
    }
    let ci = Cluster::start_ci(&h, &logs, "127.0.0.1:0", &cache.url(), &cp.addr);
    let repo = Repo::new(&d, &ci.url());
    let c = Cluster {
        h,
        cache,
        cp,
        workers: ws,
        ci,
        repo,
        logs,
        _reaper: reaper,
        mounts,
    };
    let ci = c.ci_url();
    let (commit, _) = c.repo.push();
    let id = job_for(&ci, &commit);
    let job = wait_job(&ci, id, Duration::from_secs(90));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
    wait_converged(&c.cp.addr, 1, Duration::from_secs(60));
    c
}
