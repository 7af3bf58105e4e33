//! One way to start each service binary in a test: the command lines of
//! the worker, the control plane, the cache and ci_service, with the
//! options tests vary as fields.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bins::bin;
use crate::process::{Log, Proc, run_ok};

/// A `worker` to start; fields are its command-line options.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub id: String,
    pub listen: String,
    pub cpu: u32,
    pub memory_mb: u64,
    pub run_dir: PathBuf,
    pub store_root: PathBuf,
    /// `--ch-binary` (ch-sim by default); None leaves it to the
    /// environment (`WORKER_CH_BINARY`).
    pub ch_binary: Option<PathBuf>,
    /// `--control-plane`: registers there when set.
    pub control_plane: Option<String>,
    /// Further options, as given. Without a `--token-file` among them the
    /// worker starts with `--insecure-no-auth` (its own RPC checks no
    /// token: tests that are about something else).
    pub args: Vec<String>,
    /// Environment of the worker and so of its CH processes.
    pub env: Vec<(String, String)>,
}

impl WorkerArgs {
    /// Worker `id` on 127.0.0.1:0 with 4 CPUs and 2 GiB, running ch-sim.
    pub fn new(id: &str, run_dir: &Path, store_root: &Path) -> WorkerArgs {
        WorkerArgs {
            id: id.to_owned(),
            listen: "127.0.0.1:0".to_owned(),
            cpu: 4,
            memory_mb: 2048,
            run_dir: run_dir.to_owned(),
            store_root: store_root.to_owned(),
            ch_binary: Some(bin("ch-sim")),
            control_plane: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, a: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("worker"));
        cmd.args(["--listen", &self.listen, "--worker-id", &self.id])
            .args(["--cpu", &self.cpu.to_string()])
            .args(["--memory-mb", &self.memory_mb.to_string()])
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--store-root")
            .arg(&self.store_root);
        if let Some(ch) = &self.ch_binary {
            cmd.arg("--ch-binary").arg(ch);
        }
        if let Some(cp) = &self.control_plane {
            cmd.args(["--control-plane", cp]);
        }
        insecure_unless_token_file(&mut cmd, &self.args, "--token-file");
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// Starts a worker and waits until it listens. Not a process group: a
/// worker's VMs outlive it by design (see [`crate::Reaper`]).
pub fn start_worker(w: &WorkerArgs, log: Log) -> Proc {
    Proc::spawn(&w.id, w.command(), log)
}

/// A `control_plane` to start; fields are its command-line options.
#[derive(Debug, Clone)]
pub struct ControlPlaneArgs {
    pub listen: String,
    pub heartbeat_timeout_ms: Option<u64>,
    pub startup_grace_ms: u64,
    pub long_poll_timeout_ms: Option<u64>,
    /// Further options, as given. Without a `--token-file` among them the
    /// control plane starts with `--insecure-no-auth` (every caller is
    /// admin: tests that are about something else).
    pub args: Vec<String>,
}

impl Default for ControlPlaneArgs {
    fn default() -> Self {
        ControlPlaneArgs {
            listen: "127.0.0.1:0".to_owned(),
            heartbeat_timeout_ms: None,
            startup_grace_ms: 0,
            long_poll_timeout_ms: None,
            args: Vec::new(),
        }
    }
}

impl ControlPlaneArgs {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("control_plane"));
        cmd.args(["--listen", &self.listen])
            .args(["--startup-grace-ms", &self.startup_grace_ms.to_string()]);
        if let Some(ms) = self.heartbeat_timeout_ms {
            cmd.args(["--heartbeat-timeout-ms", &ms.to_string()]);
        }
        if let Some(ms) = self.long_poll_timeout_ms {
            cmd.args(["--long-poll-timeout-ms", &ms.to_string()]);
        }
        insecure_unless_token_file(&mut cmd, &self.args, "--token-file");
        cmd.args(&self.args);
        cmd
    }
}

/// Adds `--insecure-no-auth` unless `args` name the server's token file
/// (`flag`): the services refuse to start with neither.
pub fn insecure_unless_token_file(cmd: &mut Command, args: &[String], flag: &str) {
    if !args.iter().any(|a| a == flag) {
        cmd.arg("--insecure-no-auth");
    }
}

/// Writes a token file `path` (mode 0600) with one `<who> <token>` line per
/// entry (`admin`, `ci`, `reader`, `worker:<id>`), for a server's
/// `--token-file`.
pub fn write_token_file(path: &Path, entries: &[(&str, &str)]) {
    let text: String = entries
        .iter()
        .map(|(who, t)| format!("{who} {t}\n"))
        .collect();
    crate::fs::write_private(path, &text);
}

/// Starts a control plane and waits until it listens.
pub fn start_control_plane(cp: &ControlPlaneArgs, log: Log) -> Proc {
    Proc::spawn("control_plane", cp.command(), log)
}

/// Makes a cache signing key named `name` in `dir/key` (`secret-key`,
/// `public-key`) and an upload token file `dir/token`; returns the
/// public key.
pub fn cache_keys(dir: &Path, name: &str, token: &str) -> String {
    run_ok(
        "cache keygen",
        Command::new(bin("cache"))
            .args(["keygen", name, "--out-dir"])
            .arg(dir.join("key")),
    );
    crate::fs::write_private(&dir.join("token"), &format!("{token}\n"));
    std::fs::read_to_string(dir.join("key/public-key"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `cache serve` on `listen` with the key and token of [`cache_keys`] in
/// `dir` and its data in `dir/cache-data`.
pub fn cache_command(dir: &Path, listen: &str) -> Command {
    let mut cmd = Command::new(bin("cache"));
    cmd.args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir.join("cache-data"))
        .arg("--key-file")
        .arg(dir.join("key/secret-key"))
        .arg("--upload-token-file")
        .arg(dir.join("token"));
    cmd
}

/// ci_service on `listen` wired to the cache and the control plane, its
/// state in `dir/ci` (so a restart on the same address resumes it), the
/// cache token of [`cache_keys`], nix configured by `nix_conf_dir`, with
/// `--insecure-no-auth` (no hook secret; the hooks tests install have none).
pub fn ci_command(dir: &Path, nix_conf_dir: &Path, listen: &str, cache: &str, cp: &str) -> Command {
    let mut cmd = Command::new(bin("ci_service"));
    cmd.args(["--listen", listen, "--data-dir"])
        .arg(dir.join("ci"))
        .arg("--nix-conf-dir")
        .arg(nix_conf_dir)
        .args(["--cache", cache, "--control-plane", cp])
        .arg("--cache-token-file")
        .arg(dir.join("token"))
        .arg("--insecure-no-auth");
    cmd
}
