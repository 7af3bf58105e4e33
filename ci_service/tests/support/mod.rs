//! Support for the fault-injection suite (`tests/faults.rs`): testkit's
//! cluster of real binaries (pieces killed and restarted on the same
//! address) with the repository that drives it, a seeded RNG for
//! reproducible "random points", a TCP proxy that can cut a worker off the
//! control plane, and the post-fault invariants.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::cluster::{placement, status, wait_converged};
use crate::common::*;
pub(crate) use testkit::cluster::{ClusterOpts, WorkerOpts};
// For the suites that count CH processes; not every suite does.
#[allow(unused_imports)]
pub(crate) use testkit::process::{alive, ch_pids};
use testkit::services::ControlPlaneArgs;

pub(crate) const TOKEN: &str = "faults-upload-token";
/// The control plane's heartbeat threshold in this suite: short, so a cut
/// worker is noticed quickly, yet 5 × the workers' heartbeat interval.
pub(crate) const HEARTBEAT_TIMEOUT_MS: u64 = 1500;

// ---- seeded randomness ------------------------------------------------------

/// splitmix64: enough to pick delays reproducibly without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from `PCR_FAULT_SEED` when set, else from the clock; the seed
    /// is printed so a failing run can be replayed.
    pub(crate) fn from_env(scenario: &str) -> Rng {
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

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration in [lo, hi) milliseconds.
    pub(crate) fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

// ---- network cut ------------------------------------------------------------

/// A TCP proxy on its own loopback address in front of the control plane.
/// `cut()` models a partition: bytes in flight stay queued (as TCP would
/// retransmit them), new connections are accepted but get nowhere; `heal()`
/// lets everything flow again.
pub(crate) struct Proxy {
    pub addr: String,
    cut: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub(crate) fn start(listen_ip: &str, upstream: String) -> Proxy {
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

    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub(crate) fn heal(&self) {
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

// ---- the cluster ----------------------------------------------------------------

/// A worker as this suite starts it: quick heartbeats (so a cut is seen
/// soon) and short timeouts (so faults resolve within a scenario).
pub(crate) fn worker(id: &'static str) -> WorkerOpts {
    WorkerOpts::new(id).args([
        "--heartbeat-interval-ms",
        "250",
        "--shutdown-timeout-ms",
        "500",
        "--api-timeout-ms",
        "2000",
        "--socket-timeout-ms",
        "3000",
    ])
}

/// testkit's cluster with ci_service, plus the repository whose pushes
/// drive it; the cluster's pieces are reached through Deref.
pub(crate) struct Cluster {
    pub repo: Repo,
    inner: testkit::cluster::Cluster,
}

impl Deref for Cluster {
    type Target = testkit::cluster::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl Cluster {
    /// Pushes a one-line change of db's message (so db-0 is replaced);
    /// returns the commit.
    pub(crate) fn push_db_change(&self, tag: &str) -> String {
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
    /// message; returns the commit. The build sandbox has /dev and the
    /// host tools (nix.conf's extra-sandbox-paths), so the builder may run
    /// /bin/dd.
    pub(crate) fn push_big_change(&self, tag: &str, mb: u32) -> String {
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
    pub(crate) fn push_and_converge(&self, tag: &str) -> (u64, BTreeMap<String, (String, String)>) {
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
    pub(crate) fn check_invariants(
        &self,
        commits: &[String],
    ) -> BTreeMap<String, (String, String)> {
        let ci = self.ci_url();
        let jobs = wait_until(Duration::from_secs(90), "every CI job to be final", || {
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
            wait_until(
                Duration::from_secs(60),
                &format!("generation {last_good} converged with one CH process per placed VM"),
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

    pub(crate) fn cache_verify(&self) {
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

/// name → (vm id, worker id) when generation `generation` is active, 100 %
/// converged and every VM runs; None otherwise (never panics).
pub(crate) fn converged_now(
    cp: &str,
    generation: u64,
) -> Option<BTreeMap<String, (String, String)>> {
    placement(&status(cp)?, generation)
}

/// Starts cache, control plane, the workers (each reaching the control
/// plane at `cp_addr_for(id, real)`), ci_service and a repository with
/// the hook; pushes the hermetic example and waits for generation 1.
pub(crate) fn start(
    workers: Vec<WorkerOpts>,
    cp_addr_for: impl FnMut(&str, &str) -> String,
) -> Cluster {
    start_with(workers, cp_addr_for, None)
}

/// [`start`], with the cache's data dir on a tmpfs of `cache_tmpfs` size.
pub(crate) fn start_with(
    workers: Vec<WorkerOpts>,
    cp_addr_for: impl FnMut(&str, &str) -> String,
    cache_tmpfs: Option<&str>,
) -> Cluster {
    let mut opts = ClusterOpts::new(workers).with_ci();
    opts.control_plane = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(HEARTBEAT_TIMEOUT_MS),
        startup_grace_ms: 0,
        long_poll_timeout_ms: Some(5000),
        ..ControlPlaneArgs::default()
    };
    opts.cache_key_name = "faults-cache-1".to_owned();
    opts.token = TOKEN.to_owned();
    opts.cache_tmpfs = cache_tmpfs.map(str::to_owned);
    let inner = testkit::cluster::Cluster::start(opts, cp_addr_for);
    let repo = Repo::new(inner.dir(), &inner.ci_url());
    let c = Cluster { repo, inner };
    let ci = c.ci_url();
    let (commit, _) = c.repo.push();
    let id = job_for(&ci, &commit);
    let job = wait_job(&ci, id, Duration::from_secs(90));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
    wait_converged(&c.cp.addr, 1, Duration::from_secs(60));
    c
}
