//! Processes a test starts: a guard that stops them (SIGTERM, then SIGKILL
//! after a grace period) even when the test fails, their logs, and the
//! /proc helpers that find and kill what they leave behind (CH processes
//! outlive their worker by design).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};

use crate::wait::poll_every;

/// How long a stopped process may take to exit on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// How long a service may take to print its `listening on ADDR` line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a process's stderr goes.
#[derive(Debug, Clone)]
pub enum Log {
    /// Appended to this file (kept across restarts), with `RUST_LOG=info`
    /// and `NO_COLOR=1` unless the command sets them.
    File(PathBuf),
    /// Discarded, unless `PCR_TEST_VERBOSE` is set: then stderr and stdout
    /// are forwarded to the test's stderr, prefixed with the name.
    Quiet,
    /// The test's own stderr.
    Inherit,
}

/// A process the test started, stopped and reaped on drop. `addr` is what
/// it printed as `listening on ADDR` (empty for [`Proc::start`]).
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub addr: String,
    log: Option<PathBuf>,
    /// Signalled as a process group (the service and, say, the nix
    /// processes it runs), as systemd's default KillMode=control-group
    /// cleans up a unit. A worker is not (its VMs outlive it).
    group: bool,
}

impl Proc {
    /// Spawns `cmd` and waits for its `listening on ADDR` line on stdout.
    pub fn spawn(name: &str, cmd: Command, log: Log) -> Proc {
        Proc::launch(name, cmd, log, false, true)
    }

    /// [`Proc::spawn`] in its own process group, signalled as a whole.
    pub fn spawn_group(name: &str, cmd: Command, log: Log) -> Proc {
        Proc::launch(name, cmd, log, true, true)
    }

    /// Spawns `cmd` without waiting for anything (a process that prints no
    /// address, e.g. ch-sim).
    pub fn start(name: &str, cmd: Command, log: Log) -> Proc {
        Proc::launch(name, cmd, log, false, false)
    }

    /// Guards a child the test spawned itself.
    pub fn adopt(name: &str, child: Child) -> Proc {
        Proc {
            name: name.to_owned(),
            child,
            addr: String::new(),
            log: None,
            group: false,
        }
    }

    fn launch(name: &str, mut cmd: Command, log: Log, group: bool, listens: bool) -> Proc {
        if group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let verbose = std::env::var_os("PCR_TEST_VERBOSE").is_some();
        let log_file = match &log {
            Log::File(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()));
                cmd.stderr(f);
                for (k, v) in [("RUST_LOG", "info"), ("NO_COLOR", "1")] {
                    if !cmd.get_envs().any(|(key, _)| key == k) {
                        cmd.env(k, v);
                    }
                }
                Some(p.clone())
            }
            Log::Quiet if !verbose => {
                cmd.stderr(Stdio::null());
                None
            }
            Log::Quiet | Log::Inherit => None,
        };
        cmd.stdin(Stdio::null());
        if listens {
            cmd.stdout(Stdio::piped());
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        let mut p = Proc {
            name: name.to_owned(),
            child,
            addr: String::new(),
            log: log_file,
            group,
        };
        if listens {
            let forward = matches!(log, Log::Quiet) && verbose;
            p.addr = p.await_listening(forward);
        }
        p
    }

    /// Reads stdout (all of it, on a thread, so the service never blocks
    /// on a full pipe) until the `listening on ADDR` line.
    fn await_listening(&mut self, forward: bool) -> String {
        let stdout = self.child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(a) = line.trim().strip_prefix("listening on ") {
                    let _ = tx.send(a.trim().to_owned());
                    sent = true;
                }
                if forward {
                    eprintln!("[{name}] {line}");
                }
            }
        });
        match rx.recv_timeout(LISTEN_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                self.kill();
                let status = self.child.try_wait();
                panic!(
                    "{} did not print `listening on ADDR` within {LISTEN_TIMEOUT:?} ({status:?}); log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file, when it has one.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last 60 lines of its log file (empty without one).
    pub fn log_tail(&self) -> String {
        self.log.as_deref().map(tail).unwrap_or_default()
    }

    /// SIGKILL now (a crash; of the group for a group) and reap.
    pub fn kill(&mut self) {
        self.signal(Signal::KILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait up to `timeout` for the exit; None if it did not
    /// exit in time (it is still running then).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(Signal::TERM);
        poll_every(Duration::from_millis(10), timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }

    /// Signals the process (or its group) unless it was reaped already:
    /// a reaped pid may belong to a stranger by now.
    fn signal(&mut self, sig: Signal) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = if self.group {
                rustix::process::kill_process_group(pid, sig)
            } else {
                rustix::process::kill_process(pid, sig)
            };
        }
    }
}

impl Drop for Proc {
    /// SIGTERM, then SIGKILL after a grace period, so a failing test leaves
    /// no process behind and a passing one lets services shut down cleanly.
    fn drop(&mut self) {
        if self.terminate(GRACE).is_none() {
            self.kill();
        }
    }
}

/// Runs `cmd` to its end and returns its output; panics, naming `what`,
/// the command and what it printed, unless it ran and succeeded.
pub fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The last 60 lines of a log file (for assertion messages).
pub fn tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Runs `cmd` to completion and returns its output; panics with the
/// command, its status and what it printed when it cannot start or fails, so
/// a broken setup step names itself.
pub fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        panic!("{cmd:?} exited with {}: {stdout}{stderr}", out.status);
    }
    out
}

/// Whether `pid` is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// SIGKILL to `pid` (errors ignored: it may be gone already).
pub fn kill9(pid: u32) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, Signal::KILL);
    }
}

/// Pids of the processes (not this one) whose command line mentions
/// `needle`, in /proc order.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(needle))
        })
        .collect()
}

/// Kills every process whose command line mentions `needle` (the ch-sim
/// processes of one test's run directory).
pub fn kill_mentioning(needle: &str) {
    for pid in pids_mentioning(needle) {
        kill9(pid);
    }
}

/// Live (not zombie) pids of ch-sim processes whose API socket lies in
/// `run_dir`, sorted.
pub fn ch_pids(run_dir: &Path) -> Vec<u32> {
    let needle = format!("path={}/", run_dir.display());
    let mut out: Vec<u32> = pids_mentioning(&needle)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                cmd.split(|b| *b == 0).next().is_some_and(|a| {
                    Path::new(&*String::from_utf8_lossy(a))
                        .file_name()
                        .is_some_and(|n| n == "ch-sim")
                })
            })
        })
        .filter(|pid| alive(*pid))
        .collect();
    out.sort_unstable();
    out
}

/// Kills every process mentioning its needle when dropped (the CH
/// processes of a test's run directories), also when the test fails.
#[derive(Debug)]
pub struct Reaper(pub String);

impl Reaper {
    pub fn new(dir: &Path) -> Reaper {
        Reaper(dir.display().to_string())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        kill_mentioning(&self.0);
    }
}

/// What a process has used so far, from /proc (zeros once it is gone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User + system CPU, in clock ticks (1/100 s on Linux).
    pub cpu_ticks: u64,
    /// User + system CPU of its reaped children (e.g. the nix processes a
    /// service ran), in clock ticks.
    pub children_cpu_ticks: u64,
    /// Resident memory now (VmRSS).
    pub rss_bytes: u64,
    /// Peak resident memory (VmHWM).
    pub peak_rss_bytes: u64,
    /// Private resident memory (RssAnon): what one more such process
    /// really costs, without the pages shared with others.
    pub anon_rss_bytes: u64,
}

/// CPU and memory of `pid` from /proc/PID/stat and /proc/PID/status.
pub fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may itself hold spaces and ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Usage {
        cpu_ticks: n(11) + n(12),
        children_cpu_ticks: n(13) + n(14),
        rss_bytes: kib("VmRSS:"),
        peak_rss_bytes: kib("VmHWM:"),
        anon_rss_bytes: kib("RssAnon:"),
    }
}

/// Raises this process's open-file limit (soft and, where allowed, hard)
/// to at least `want`; returns the soft limit it ends with. A test that
/// holds thousands of sockets calls it first; raising the hard limit needs
/// root (CI runs as root).
pub fn raise_nofile_limit_to(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let cur = lim.current.unwrap_or(u64::MAX);
    if cur >= want {
        return cur;
    }
    let max = lim.maximum.unwrap_or(u64::MAX);
    let raised = Rlimit {
        current: Some(want),
        maximum: Some(max.max(want)),
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        // Not root: as far as the hard limit goes.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// How many file descriptors process `pid` has open (0 once it is gone).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}
