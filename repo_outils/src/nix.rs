//! Typed wrappers around the `nix` command (2.8, no daemon): evaluate,
//! build, copy to and from a binary cache, query and verify paths. A `Nix`
//! value holds the environment every call runs with (`NIX_CONF_DIR`,
//! `XDG_CACHE_HOME`, an optional `--store` root that simulates another
//! host), so callers never assemble command lines themselves.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::nixlog::Renderer;

/// How many lines of nix's stderr an error keeps: the end is where nix
/// says what failed; the beginning is progress chatter.
const TAIL_LINES: usize = 40;
const TAIL_BYTES: usize = 8 * 1024;

/// What went wrong running nix. `stderr` is the tail of what nix printed,
/// rendered to plain text (no ANSI, no internal-json).
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` printed unexpected output: {detail}")]
    Output { command: String, detail: String },
    #[error("`{command}` did not finish within {secs}s")]
    Timeout { command: String, secs: u64 },
    #[error("paths are not valid in {store}: {paths:?}")]
    Invalid { store: String, paths: Vec<String> },
    #[error("no user {0:?} in /etc/passwd")]
    NoSuchUser(String),
    #[error("user {0:?} is root; untrusted code must run as an unprivileged user")]
    RootUser(String),
}

impl NixError {
    /// The tail of nix's stderr, when nix ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            NixError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// One entry of `nix path-info --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfo {
    pub path: String,
    #[serde(default = "yes")]
    pub valid: bool,
    #[serde(default)]
    pub nar_hash: Option<String>,
    #[serde(default)]
    pub nar_size: Option<u64>,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default)]
    pub signatures: Vec<String>,
    /// The derivation that built the path, when the store knows it.
    #[serde(default)]
    pub deriver: Option<String>,
}

/// `--option netrc-file FILE` when there is one: the cache's upload token.
fn netrc_option(netrc: Option<&Path>) -> Vec<OsString> {
    netrc.map_or_else(Vec::new, |n| {
        vec![
            "--option".into(),
            "netrc-file".into(),
            n.as_os_str().to_owned(),
        ]
    })
}

/// Writes a netrc file giving `password` to `host`, mode 0600 (nix's
/// `netrc-file` sends it as HTTP basic auth on every request to that host:
/// how the cache's upload token reaches it without a command line).
pub fn write_netrc(path: &Path, host: &str, password: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("machine {host}\nlogin pcr\npassword {password}\n").as_bytes())
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct BuildResult {
    outputs: std::collections::BTreeMap<String, String>,
}

/// A callback that receives each human-readable line nix prints while it
/// works (build output, "copying path …", errors), for a live job log.
pub type LineSink<'a> = &'a mut (dyn FnMut(&str) + Send);

/// An unprivileged user nix runs as when it evaluates untrusted code, and
/// the nix daemon it then talks to (`NIX_REMOTE`: `daemon`, or
/// `unix:///path/to/socket`), as such a user cannot write the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub remote: String,
}

impl RunAs {
    /// Looks `name` up in `/etc/passwd` (NixOS and Debian keep system
    /// users there); refuses root.
    pub fn lookup(name: &str) -> Result<RunAs, NixError> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Self::from_passwd(&passwd, name)
    }

    fn from_passwd(passwd: &str, name: &str) -> Result<RunAs, NixError> {
        let found = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| (f[2].parse::<u32>(), f[3].parse::<u32>()))
        });
        match found {
            Some((Ok(0), _)) => Err(NixError::RootUser(name.to_owned())),
            Some((Ok(uid), Ok(gid))) => Ok(RunAs {
                name: name.to_owned(),
                uid,
                gid,
                remote: "daemon".to_owned(),
            }),
            _ => Err(NixError::NoSuchUser(name.to_owned())),
        }
    }
}

/// The settings that make nix treat a flake as untrusted code (design
/// §11): pure evaluation that may read only the flake's own sources and
/// its locked inputs, no import-from-derivation, no fetching during
/// evaluation (empty `allowed-uris`), no `nixConfig` from the flake, no
/// native code, builds in the sandbox and never outside it (no fallback),
/// build output capped, and nix's own copy of build logs not kept (the
/// job log is the bounded record).
fn untrusted_options(max_build_log_bytes: u64) -> Vec<(String, String)> {
    [
        ("pure-eval", "true".to_owned()),
        ("restrict-eval", "true".to_owned()),
        ("allowed-uris", String::new()),
        ("allow-import-from-derivation", "false".to_owned()),
        ("accept-flake-config", "false".to_owned()),
        (
            "allow-unsafe-native-code-during-evaluation",
            "false".to_owned(),
        ),
        ("sandbox", "true".to_owned()),
        ("sandbox-fallback", "false".to_owned()),
        ("max-build-log-size", max_build_log_bytes.to_string()),
        ("keep-build-log", "false".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The nix command with its environment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Nix {
    program: PathBuf,
    conf_dir: Option<PathBuf>,
    cache_home: Option<PathBuf>,
    store_root: Option<PathBuf>,
    options: Vec<(String, String)>,
    timeout: Option<Duration>,
    /// Where each running nix process group is recorded, so that the next
    /// run of the service stops the groups a crashed run left behind (see
    /// [`Nix::with_group_registry`]).
    registry: Option<PathBuf>,
    /// Set for untrusted code: the restricted settings, a scrubbed
    /// environment, locked inputs only, and maybe another user.
    untrusted: Option<Untrusted>,
}

#[derive(Debug, Clone)]
struct Untrusted {
    run_as: Option<RunAs>,
    /// When set, evaluations run in a bubblewrap jail that sees only
    /// these directories (read-only) besides the system's programs, the
    /// store, nix's configuration and cache: see [`Nix::jailed`].
    jail: Option<Vec<PathBuf>>,
}

/// Where bubblewrap is looked for when no `PATH` entry has it.
const BWRAP: &str = "bwrap";

/// The program `name` resolved through `PATH` to its real path (on NixOS
/// `nix` is a link into the store; the jail sees the store, not `/run`).
fn resolve_program(name: &Path) -> PathBuf {
    if name.components().count() > 1 {
        return name.canonicalize().unwrap_or_else(|_| name.to_owned());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or_else(|| name.to_owned())
}

impl Default for Nix {
    fn default() -> Self {
        Self::new()
    }
}

impl Nix {
    /// `nix` from PATH with the process's own environment (the system
    /// store, /etc/nix unless NIX_CONF_DIR is set).
    pub fn new() -> Self {
        Nix {
            program: "nix".into(),
            conf_dir: None,
            cache_home: None,
            store_root: None,
            options: Vec::new(),
            timeout: None,
            registry: None,
            untrusted: None,
        }
    }

    /// This nix, for evaluating and building a pushed flake: the
    /// restricted settings of [`untrusted_options`], `--no-update-lock-file`
    /// on every evaluation and build (the locked-inputs policy of
    /// `crate::flake`), and a child process that inherits nothing but a
    /// minimal environment (`PATH`, `HOME`, `TMPDIR`, `NIX_CONF_DIR`,
    /// `XDG_CACHE_HOME`): no token a parent holds in its environment, no
    /// descriptor (Rust opens every file close-on-exec). With `run_as`,
    /// nix runs as that user (supplementary groups dropped) and talks to
    /// the nix daemon (`RunAs::remote`), as an unprivileged user cannot
    /// write the store; then it cannot read files only the service's user
    /// can.
    pub fn untrusted(mut self, run_as: Option<RunAs>, max_build_log_bytes: u64) -> Self {
        self.options.extend(untrusted_options(max_build_log_bytes));
        self.untrusted = Some(Untrusted { run_as, jail: None });
        self
    }

    /// Runs every evaluation of this untrusted nix (`eval`, reading a
    /// flake's inputs, computing what `build` builds) in a bubblewrap
    /// jail: a fresh mount and PID namespace that holds `/nix`, the
    /// system's programs and libraries, the few `/etc` files nix needs
    /// (users, DNS, CA certificates), nix's configuration and cache, a
    /// private `/tmp`, and `readable` (the checkouts), and nothing else. A
    /// fetcher pointed at a host path (`path:`, `git+file:`,
    /// `builtins.getFlake`, a transitive input the lock omits) finds
    /// nothing there. Builds run outside it, by derivation path, in nix's
    /// own sandbox. Needs `bwrap` (bubblewrap) on `PATH`.
    pub fn jailed(mut self, readable: Vec<PathBuf>) -> Self {
        if let Some(u) = &mut self.untrusted {
            u.jail = Some(readable);
        }
        self
    }

    /// The bubblewrap arguments that build the jail, up to `--`.
    fn jail_args(&self, readable: &[PathBuf]) -> Vec<OsString> {
        let mut a: Vec<OsString> = [
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--bind",
            "/nix",
            "/nix",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let mut ro: Vec<PathBuf> = [
            "/usr",
            "/bin",
            "/sbin",
            "/lib",
            "/lib32",
            "/lib64",
            "/etc/passwd",
            "/etc/group",
            "/etc/nsswitch.conf",
            "/etc/resolv.conf",
            "/etc/hosts",
            "/etc/ssl",
            "/etc/pki",
            "/etc/ca-certificates",
            "/etc/static/ssl",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        if self.conf_dir.is_none() {
            ro.push("/etc/nix".into());
        }
        ro.extend(self.conf_dir.iter().cloned());
        ro.extend(readable.iter().cloned());
        for p in ro {
            a.extend(["--ro-bind-try".into(), p.clone().into(), p.into()]);
        }
        let mut rw: Vec<PathBuf> = self.cache_home.iter().cloned().collect();
        if let Some(sock) = self
            .untrusted
            .as_ref()
            .and_then(|u| u.run_as.as_ref())
            .and_then(|r| r.remote.strip_prefix("unix://"))
            .and_then(|p| Path::new(p).parent())
        {
            rw.push(sock.to_owned());
        }
        for p in rw {
            a.extend(["--bind-try".into(), p.clone().into(), p.into()]);
        }
        a.extend(["--chdir".into(), "/".into(), "--".into()]);
        a
    }

    /// Use another nix binary.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Directory holding the `nix.conf` to use (replaces /etc/nix).
    pub fn with_conf_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.conf_dir = Some(dir.into());
        self
    }

    /// `XDG_CACHE_HOME`: where nix keeps its narinfo cache and flake
    /// evaluation cache. Separate per test so answers are not shared.
    pub fn with_cache_home(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_home = Some(dir.into());
        self
    }

    /// A chroot store: paths are `/nix/store/…` logically and live under
    /// `root/nix/store` (one per simulated host in tests).
    pub fn with_store_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.store_root = Some(root.into());
        self
    }

    /// An extra `--option NAME VALUE` on every call.
    pub fn with_option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((name.into(), value.into()));
        self
    }

    /// Kills a call that runs longer than this.
    /// Records every nix process group this nix starts as a file in `dir`
    /// (named by its process id, holding the process's start time) while
    /// it runs. A service killed with `kill -9` cannot stop its nix
    /// children, which run in process groups of their own; its next run
    /// calls [`stop_leftover_groups`] on the same directory, so a job it
    /// resumes never races the dead run's `nix copy` to the cache.
    pub fn with_group_registry(mut self, dir: impl Into<PathBuf>) -> Self {
        self.registry = Some(dir.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn store_root(&self) -> Option<&Path> {
        self.store_root.as_deref()
    }

    /// A human name of the store this value talks to, for messages.
    pub fn store_name(&self) -> String {
        self.store_root.as_ref().map_or_else(
            || "the system store".to_owned(),
            |p| p.display().to_string(),
        )
    }

    /// `nix eval --json INSTALLABLE`, parsed.
    pub async fn eval_json(&self, installable: &str) -> Result<serde_json::Value, NixError> {
        let mut args: Vec<OsString> = vec!["eval".into(), "--json".into()];
        args.extend(self.lock_flags());
        args.push(installable.into());
        let out = self.run(args, false, None).await?;
        serde_json::from_slice(&out).map_err(|e| NixError::Output {
            command: self.describe(&["eval", installable]),
            detail: e.to_string(),
        })
    }

    /// `nix build --json --no-link INSTALLABLE`: the output paths, in the
    /// order nix lists them. Build output goes to `sink` as it happens.
    pub async fn build(
        &self,
        installable: &str,
        sink: Option<LineSink<'_>>,
    ) -> Result<Vec<String>, NixError> {
        let mut args: Vec<OsString> = [
            "build",
            "--json",
            "--no-link",
            "-L",
            "--log-format",
            "internal-json",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        args.extend(self.lock_flags());
        if self.untrusted.as_ref().is_some_and(|u| u.jail.is_some()) {
            // Evaluate in the jail, build what it names outside.
            let drv = self.eval_raw(&format!("{installable}.drvPath")).await?;
            if !drv.starts_with('/') || !drv.ends_with(".drv") || drv.contains(char::is_whitespace)
            {
                return Err(NixError::Output {
                    command: self.describe(&["eval", installable]),
                    detail: format!("{installable} is not a derivation ({drv:?})"),
                });
            }
            args.push(drv.into());
        } else {
            args.push(installable.into());
        }
        let out = self.run(args, true, sink).await?;
        let command = self.describe(&["build", installable]);
        let results: Vec<BuildResult> =
            serde_json::from_slice(&out).map_err(|e| NixError::Output {
                command: command.clone(),
                detail: e.to_string(),
            })?;
        let paths: Vec<String> = results
            .into_iter()
            .flat_map(|r| r.outputs.into_values())
            .collect();
        if paths.is_empty() {
            return Err(NixError::Output {
                command,
                detail: "no output paths".into(),
            });
        }
        Ok(paths)
    }

    /// `nix eval --raw INSTALLABLE`.
    async fn eval_raw(&self, installable: &str) -> Result<String, NixError> {
        let mut args: Vec<OsString> = vec!["eval".into(), "--raw".into()];
        args.extend(self.lock_flags());
        args.push(installable.into());
        let out = self.run(args, false, None).await?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// `--no-update-lock-file` for untrusted code: an input missing from
    /// flake.lock is an error, never resolved.
    fn lock_flags(&self) -> Vec<OsString> {
        if self.untrusted.is_some() {
            vec!["--no-update-lock-file".into()]
        } else {
            Vec::new()
        }
    }

    /// The `inputs` attribute of `dir/flake.nix` as JSON, read without
    /// fetching any of them: `dir` is added to the store by its NAR hash
    /// (a locked `path` fetch, allowed in pure mode) and `flake.nix` is
    /// imported with this value's settings, so a restricted nix evaluates
    /// it exactly as purely as nix's own flake loader (no `currentTime`,
    /// no environment, no host paths) and cannot be shown other inputs.
    pub async fn declared_flake_inputs(&self, dir: &Path) -> Result<serde_json::Value, NixError> {
        let hash_args: Vec<OsString> =
            vec!["hash".into(), "path".into(), dir.as_os_str().to_owned()];
        let out = self.run(hash_args, false, None).await?;
        let hash = String::from_utf8_lossy(&out).trim().to_owned();
        let dir_json = serde_json::to_string(&dir.display().to_string()).expect("a JSON string");
        let hash_json = serde_json::to_string(&hash).expect("a JSON string");
        let expr = format!(
            "let src = builtins.fetchTree {{ type = \"path\"; path = {dir_json}; narHash = {hash_json}; }}; \
             in (import (src + \"/flake.nix\")).inputs or {{ }}"
        );
        let args: Vec<OsString> =
            vec!["eval".into(), "--json".into(), "--expr".into(), expr.into()];
        let out = self.run(args, false, None).await?;
        serde_json::from_slice(&out).map_err(|e| NixError::Output {
            command: self.describe(&["eval", "flake.nix inputs"]),
            detail: e.to_string(),
        })
    }

    /// `nix copy --to CACHE_URL PATHS` (with their closures), compressing
    /// NARs as `compression` (`zstd`: xz costs ~30 s per 50 MiB here).
    /// `netrc` holds the upload token for the cache's host.
    pub async fn copy_to(
        &self,
        cache_url: &str,
        paths: &[String],
        compression: &str,
        netrc: Option<&Path>,
        sink: Option<LineSink<'_>>,
    ) -> Result<(), NixError> {
        let sep = if cache_url.contains('?') { '&' } else { '?' };
        let mut args: Vec<OsString> =
            vec!["copy".into(), "--log-format".into(), "internal-json".into()];
        args.extend(netrc_option(netrc));
        args.extend([
            "--to".into(),
            format!("{cache_url}{sep}compression={compression}").into(),
        ]);
        args.extend(paths.iter().map(OsString::from));
        self.run(args, true, sink).await.map(drop)
    }

    /// `nix path-info -r --json PATHS`: every path of their closures.
    pub async fn closure_info(&self, paths: &[String]) -> Result<Vec<PathInfo>, NixError> {
        let mut args: Vec<OsString> = vec!["path-info".into(), "-r".into(), "--json".into()];
        args.extend(paths.iter().map(OsString::from));
        let out = self.run(args, false, None).await?;
        serde_json::from_slice(&out).map_err(|e| NixError::Output {
            command: self.describe(&["path-info", "-r", "--json"]),
            detail: e.to_string(),
        })
    }

    /// `nix store copy-log --to CACHE_URL DRVS`: uploads the build logs this
    /// store keeps of the derivations `drvs` (`PUT log/<drv>`). Fails on the
    /// first derivation without a log.
    pub async fn copy_log_to(
        &self,
        cache_url: &str,
        drvs: &[String],
        netrc: Option<&Path>,
    ) -> Result<(), NixError> {
        let mut args: Vec<OsString> = vec!["store".into(), "copy-log".into()];
        args.extend(netrc_option(netrc));
        args.extend(["--to".into(), cache_url.into()]);
        args.extend(drvs.iter().map(OsString::from));
        self.run(args, false, None).await.map(drop)
    }

    /// `nix copy --from CACHE_URL PATHS` into this value's store, accepting
    /// only narinfos signed by `trusted_key` (`name:base64`).
    pub async fn copy_from(
        &self,
        cache_url: &str,
        paths: &[String],
        trusted_key: &str,
        sink: Option<LineSink<'_>>,
    ) -> Result<(), NixError> {
        let mut args: Vec<OsString> = vec![
            "copy".into(),
            "--log-format".into(),
            "internal-json".into(),
            "--option".into(),
            "trusted-public-keys".into(),
            trusted_key.into(),
            "--option".into(),
            "require-sigs".into(),
            "true".into(),
            "--from".into(),
            cache_url.into(),
        ];
        if let Some(root) = &self.store_root {
            args.extend(["--to".into(), root.as_os_str().to_owned()]);
        }
        args.extend(paths.iter().map(OsString::from));
        // `--store` would also apply to `--from`'s source; `--to` is enough.
        self.run_with_store(args, true, sink, false).await.map(drop)
    }

    /// `nix path-info --json PATHS` in this value's store. Invalid paths
    /// come back with `valid == false`, not as an error.
    pub async fn path_info(&self, paths: &[String]) -> Result<Vec<PathInfo>, NixError> {
        let mut args: Vec<OsString> = vec!["path-info".into(), "--json".into()];
        args.extend(paths.iter().map(OsString::from));
        let out = self.run(args, false, None).await?;
        serde_json::from_slice(&out).map_err(|e| NixError::Output {
            command: self.describe(&["path-info", "--json"]),
            detail: e.to_string(),
        })
    }

    /// The subset of `paths` that is not valid in this value's store.
    pub async fn missing_paths(&self, paths: &[String]) -> Result<Vec<String>, NixError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .path_info(paths)
            .await?
            .into_iter()
            .filter(|p| !p.valid)
            .map(|p| p.path)
            .collect())
    }

    /// `nix store verify PATHS`: contents match the recorded hashes.
    /// Invalid paths are an error too.
    pub async fn verify(&self, paths: &[String]) -> Result<(), NixError> {
        let missing = self.missing_paths(paths).await?;
        if !missing.is_empty() {
            return Err(NixError::Invalid {
                store: self.store_name(),
                paths: missing,
            });
        }
        let mut args: Vec<OsString> = vec!["store".into(), "verify".into(), "--no-trust".into()];
        args.extend(paths.iter().map(OsString::from));
        self.run(args, false, None).await.map(drop)
    }

    fn describe(&self, args: &[&str]) -> String {
        let mut s = String::from("nix");
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        if let Some(r) = &self.store_root {
            s.push_str(&format!(" (store {})", r.display()));
        }
        s
    }

    async fn run(
        &self,
        args: Vec<OsString>,
        json_log: bool,
        sink: Option<LineSink<'_>>,
    ) -> Result<Vec<u8>, NixError> {
        self.run_with_store(args, json_log, sink, true).await
    }

    /// Runs nix, streaming stderr through the internal-json renderer when
    /// `json_log` is set, and returns stdout. On failure the error carries
    /// the rendered tail of stderr.
    async fn run_with_store(
        &self,
        mut args: Vec<OsString>,
        json_log: bool,
        mut sink: Option<LineSink<'_>>,
        pass_store: bool,
    ) -> Result<Vec<u8>, NixError> {
        let shown: Vec<String> = args
            .iter()
            .take(2)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let command = self.describe(&shown.iter().map(String::as_str).collect::<Vec<_>>());
        if pass_store && let Some(root) = &self.store_root {
            args.splice(1..1, ["--store".into(), root.as_os_str().to_owned()]);
        }
        for (k, v) in &self.options {
            args.splice(1..1, [OsString::from("--option"), k.into(), v.into()]);
        }
        // Evaluations of untrusted code run jailed; builds by derivation
        // path and store queries do not evaluate anything.
        let jail = self
            .untrusted
            .as_ref()
            .and_then(|u| u.jail.as_ref())
            .filter(|_| matches!(args[0].to_str(), Some("eval" | "hash")));
        let mut cmd = match jail {
            Some(readable) => {
                let mut c = Command::new(BWRAP);
                c.args(self.jail_args(readable))
                    .arg(resolve_program(&self.program));
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a cancelled job stops nix and
            // everything nix started (see `GroupGuard`).
            .process_group(0);
        if let Some(u) = &self.untrusted {
            cmd.env_clear();
            if let Some(v) = std::env::var_os("PATH") {
                cmd.env("PATH", v);
            }
            // A jailed nix has its own /tmp; the host's TMPDIR may not exist there.
            match std::env::var_os("TMPDIR") {
                Some(_) if jail.is_some() => {
                    cmd.env("TMPDIR", "/tmp");
                }
                Some(v) => {
                    cmd.env("TMPDIR", v);
                }
                None => {}
            }
            // nix reads ~/.config/nix and writes ~/.cache when HOME is set;
            // point it at the cache dir, never the service's own home.
            cmd.env(
                "HOME",
                self.cache_home
                    .as_deref()
                    .unwrap_or(Path::new("/var/empty")),
            );
            if let Some(r) = &u.run_as {
                cmd.uid(r.uid).gid(r.gid).env("NIX_REMOTE", &r.remote);
            }
        }
        if let Some(d) = &self.conf_dir {
            cmd.env("NIX_CONF_DIR", d);
        }
        if let Some(d) = &self.cache_home {
            cmd.env("XDG_CACHE_HOME", d);
        }
        tracing::debug!(?args, "running nix");
        let mut child = cmd.spawn().map_err(|source| NixError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        let mut group = GroupGuard(child.id(), None);
        if let (Some(dir), Some(pid)) = (&self.registry, child.id()) {
            group.1 = register_group(dir, pid);
        }
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let work = async {
            let read_out = async {
                let mut buf = Vec::new();
                let _ = stdout.read_to_end(&mut buf).await;
                buf
            };
            let read_err = async {
                let mut renderer = Renderer::new();
                let mut tail: VecDeque<String> = VecDeque::new();
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let rendered = if json_log {
                        renderer.render(&line)
                    } else {
                        Some(crate::nixlog::strip_ansi(&line))
                    };
                    let Some(text) = rendered else { continue };
                    if let Some(s) = sink.as_mut() {
                        s(&text);
                    }
                    tail.push_back(text);
                    if tail.len() > TAIL_LINES {
                        tail.pop_front();
                    }
                }
                tail
            };
            let (out, tail) = tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (out, tail, status)
        };
        let (out, tail, status) = match self.timeout {
            Some(t) => tokio::time::timeout(t, work)
                .await
                .map_err(|_| NixError::Timeout {
                    command: command.clone(),
                    secs: t.as_secs(),
                })?,
            None => work.await,
        };
        // Reaped: its pid (and so the group id) may be reused.
        group.0 = None;
        if let Some(entry) = group.1.take() {
            let _ = std::fs::remove_file(entry);
        }
        let status = status.map_err(|source| NixError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        if status.success() {
            return Ok(out);
        }
        let mut stderr = tail.into_iter().collect::<Vec<_>>().join("\n");
        if stderr.len() > TAIL_BYTES {
            let mut cut = stderr.len() - TAIL_BYTES;
            while !stderr.is_char_boundary(cut) {
                cut += 1;
            }
            stderr = format!("…{}", &stderr[cut..]);
        }
        Err(NixError::Failed {
            command,
            status: status.to_string(),
            stderr,
        })
    }
}

/// A nix process group that is still running when its call is dropped
/// (a cancelled job, a timeout): interrupted first, so nix stops its
/// builders (which run in sessions of their own) and removes its locks,
/// then killed whole after a grace period. The second field is the
/// group's entry in the registry, removed once the group is gone.
struct GroupGuard(Option<u32>, Option<PathBuf>);

/// The start time of process `pid` in clock ticks since boot (field 22
/// of `/proc/PID/stat`): with the pid, it names one process for good, as
/// a pid alone is reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Writes `pid`'s registry entry; a failure only loses the cleanup after
/// a crash, so it is logged and the run goes on.
fn register_group(dir: &Path, pid: u32) -> Option<PathBuf> {
    let start = start_time(pid)?;
    let entry = dir.join(pid.to_string());
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&entry, start.to_string())) {
        Ok(()) => Some(entry),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot record a nix process group");
            None
        }
    }
}

/// Stops the nix process groups a previous run of the service recorded in
/// `dir` (see [`Nix::with_group_registry`]) and that still run: each is
/// interrupted, then killed after a grace period. An entry whose process
/// is gone, or whose pid now names another process (its start time
/// differs), is only removed. Returns how many groups were stopped.
pub fn stop_leftover_groups(dir: &Path) -> usize {
    use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut stopped = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let recorded = std::fs::read_to_string(&path).ok();
        let live = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&pid| {
                recorded
                    .as_deref()
                    .map(str::trim)
                    .and_then(|r| r.parse().ok())
                    == start_time(pid)
            })
            .and_then(|pid| Pid::from_raw(pid as i32));
        if let Some(pid) = live
            && kill_process_group(pid, Signal::TERM).is_ok()
        {
            tracing::warn!(
                pid = pid.as_raw_nonzero().get(),
                "stopping a nix process group left by a previous run"
            );
            stopped.push(pid);
        }
        let _ = std::fs::remove_file(&path);
    }
    let deadline = std::time::Instant::now() + INTERRUPT_GRACE;
    for pid in &stopped {
        while test_kill_process_group(*pid).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill_process_group(*pid, Signal::KILL);
    }
    stopped.len()
}

/// How long an interrupted nix may take to stop its builders.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        use rustix::process::{
            Pid, Signal, WaitOptions, kill_process_group, test_kill_process_group, waitpid,
        };
        let entry = self.1.take();
        let Some(pid) = self.0.and_then(|p| Pid::from_raw(p as i32)) else {
            return;
        };
        if kill_process_group(pid, Signal::TERM).is_err() {
            if let Some(e) = entry {
                let _ = std::fs::remove_file(e);
            }
            return;
        }
        // Off the async runtime: the drop must not block it. nix itself is
        // reaped here (an error means tokio reaped it first), so it leaves
        // no zombie behind.
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + INTERRUPT_GRACE;
            let mut reaped = false;
            let mut gone = false;
            while std::time::Instant::now() < deadline {
                if !reaped {
                    reaped = !matches!(waitpid(Some(pid), WaitOptions::NOHANG), Ok(None));
                }
                if reaped && test_kill_process_group(pid).is_err() {
                    gone = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !gone {
                let _ = kill_process_group(pid, Signal::KILL);
                if !reaped {
                    let _ = waitpid(Some(pid), WaitOptions::empty());
                }
            }
            if let Some(e) = entry {
                let _ = std::fs::remove_file(e);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HermeticNix;

    /// A `sleep` in a process group of its own, as nix runs.
    fn grouped_sleep() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn leftover_groups_are_stopped_and_reused_pids_spared() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("groups");
        // What a crashed run left: a live group it recorded.
        let mut left = grouped_sleep();
        let entry = register_group(&reg, left.id()).expect("recorded");
        // A pid recorded with another start time is another process now.
        let mut other = grouped_sleep();
        std::fs::write(reg.join(other.id().to_string()), "1").unwrap();
        // And an entry whose process is gone.
        std::fs::write(reg.join("999999999"), "1").unwrap();

        // Reaped as init reaps an orphan, so the group is gone once it dies.
        let reaper = std::thread::spawn(move || left.wait().unwrap());
        assert_eq!(stop_leftover_groups(&reg), 1);
        let status = reaper.join().unwrap();
        assert!(
            !status.success(),
            "the leftover group was stopped: {status}"
        );
        assert!(!entry.exists());
        assert_eq!(
            std::fs::read_dir(&reg).unwrap().count(),
            0,
            "every entry is removed"
        );
        assert!(
            other.try_wait().unwrap().is_none(),
            "a reused pid is never signalled"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[tokio::test]
    async fn a_finished_call_leaves_no_registry_entry() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("groups");
        let nix = Nix::new().with_program("sleep").with_group_registry(&reg);
        let count = || std::fs::read_dir(&reg).map(|d| d.count()).unwrap_or(0);
        let (out, during) = tokio::join!(nix.run(vec!["0.5".into()], false, None), async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            count()
        });
        out.unwrap();
        assert_eq!(during, 1, "a running group is recorded");
        assert_eq!(count(), 0, "and forgotten once reaped");
    }

    /// A flake with one good and one failing builtins-only derivation.
    fn flake(dir: &Path, marker: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("flake.nix"),
            format!(
                r#"{{
  outputs = {{ self }}: let
    mk = name: script: derivation {{ inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" script ]; }};
    leaf = mk "leaf-{marker}" ''echo leaf > $out'';
  in {{
    value = {{ a = 1; b = [ "x" ]; }};
    broken = throw "broken on purpose";
    good = mk "top-{marker}" ''echo ${{leaf}} > $out'';
    bad = mk "bad-{marker}" ''echo "about to fail" >&2; exit 3'';
  }};
}}"#
            ),
        )
        .unwrap();
    }

    /// A hermetic nix with the test flake (marked `marker`) in `flake/`,
    /// and the flake's `path:` reference.
    fn hermetic_flake(marker: &str) -> (HermeticNix, String) {
        let h = HermeticNix::new().unwrap();
        let dir = h.dir().join("flake");
        flake(&dir, marker);
        let f = format!("path:{}", dir.display());
        (h, f)
    }

    /// Builds `installable`, collecting the log lines nix reports.
    async fn build_logged(
        nix: &Nix,
        installable: &str,
    ) -> (Result<Vec<String>, NixError>, Vec<String>) {
        let mut lines = Vec::new();
        let mut sink = |l: &str| lines.push(l.to_owned());
        let out = nix.build(installable, Some(&mut sink)).await;
        (out, lines)
    }

    #[tokio::test]
    async fn eval_build_info_verify_and_errors() {
        // A marker per run keeps this test's store paths its own.
        let marker = format!("{}", std::process::id());
        let (h, f) = hermetic_flake(&marker);
        let nix = h.nix();

        let v = nix.eval_json(&format!("{f}#value")).await.unwrap();
        assert_eq!(v, serde_json::json!({"a": 1, "b": ["x"]}));

        let err = nix.eval_json(&format!("{f}#broken")).await.unwrap_err();
        assert!(err.stderr().unwrap().contains("broken on purpose"), "{err}");

        let (out, _) = build_logged(&nix, &format!("{f}#good")).await;
        let out = out.unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].ends_with(&format!("-top-{marker}")), "{out:?}");

        let info = nix.path_info(&out).await.unwrap();
        assert!(info[0].valid);
        assert_eq!(info[0].references.len(), 1, "{info:?}");
        nix.verify(&out).await.unwrap();
        let bogus = "/nix/store/00000000000000000000000000000000-nothing".to_owned();
        assert_eq!(
            nix.missing_paths(std::slice::from_ref(&bogus))
                .await
                .unwrap(),
            vec![bogus.clone()]
        );
        assert!(matches!(
            nix.verify(&[bogus]).await,
            Err(NixError::Invalid { .. })
        ));

        let (err, lines) = build_logged(&nix, &format!("{f}#bad")).await;
        let err = err.unwrap_err();
        let tail = err.stderr().unwrap();
        assert!(tail.contains("about to fail"), "{tail}");
        assert!(tail.contains("exit code 3"), "{tail}");
        assert!(!tail.contains("@nix"), "rendered, not raw json: {tail}");
        assert!(
            lines.iter().any(|l| l.contains("about to fail")),
            "{lines:?}"
        );
    }

    /// copy_to a signed `file://` cache, then copy_from it into another
    /// store root trusting only the right key (the cache crate's HTTP server
    /// is exercised by the end-to-end test).
    #[tokio::test]
    async fn copy_to_and_from_a_signed_cache_into_a_store_root() {
        let marker = format!("copy{}", std::process::id());
        let (h, f) = hermetic_flake(&marker);
        let nix = h.nix();
        let out = nix.build(&format!("{f}#good"), None).await.unwrap();

        let (sk, pk) = (h.dir().join("sk"), h.dir().join("pk"));
        let st = std::process::Command::new("nix-store")
            .args(["--generate-binary-cache-key", "test-cache-1"])
            .arg(&sk)
            .arg(&pk)
            .env("NIX_CONF_DIR", h.conf_dir())
            .status()
            .unwrap();
        assert!(st.success());
        let public = std::fs::read_to_string(&pk).unwrap();
        let cache = format!("file://{}/bc", h.dir().display());
        nix.copy_to(
            &format!("{cache}?secret-key={}", sk.display()),
            &out,
            "zstd",
            None,
            None,
        )
        .await
        .unwrap();
        let narinfo_count = std::fs::read_dir(h.dir().join("bc"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".narinfo")
            })
            .count();
        assert_eq!(narinfo_count, 2, "the path and its one reference");
        let nar = std::fs::read_dir(h.dir().join("bc/nar"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert!(
            nar.file_name().to_string_lossy().ends_with(".nar.zst"),
            "{:?}",
            nar.file_name()
        );

        // Wrong key: refused, nothing lands.
        let host_b = h.nix().with_store_root(h.dir().join("host-b"));
        let err = host_b
            .copy_from(
                &cache,
                &out,
                "other:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                None,
            )
            .await
            .unwrap_err();
        assert!(err.stderr().unwrap().contains("signature"), "{err}");
        assert_eq!(host_b.missing_paths(&out).await.unwrap(), out);

        let host_a = h.nix().with_store_root(h.dir().join("host-a"));
        assert_eq!(host_a.missing_paths(&out).await.unwrap(), out);
        host_a
            .copy_from(&cache, &out, public.trim(), None)
            .await
            .unwrap();
        assert!(host_a.missing_paths(&out).await.unwrap().is_empty());
        host_a.verify(&out).await.unwrap();
        let file = h.dir().join("host-a").join(out[0].trim_start_matches('/'));
        assert!(
            std::fs::read_to_string(file)
                .unwrap()
                .contains(&format!("leaf-{marker}"))
        );
    }

    /// A child nix for untrusted code sees none of the parent's
    /// environment (cargo's variables stand in for a token there), only
    /// the minimal set.
    #[tokio::test]
    async fn untrusted_nix_runs_with_a_scrubbed_environment() {
        let h = HermeticNix::new().unwrap();
        let dump = h.dir().join("env.txt");
        let script = h.dir().join("fake-nix");
        std::fs::write(
            &script,
            format!("#!/bin/sh\n/usr/bin/env > {}\necho null\n", dump.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            std::env::var_os("CARGO_PKG_NAME").is_some(),
            "cargo sets it for tests"
        );

        let trusted = h.nix().with_program(&script);
        trusted.eval_json("x").await.unwrap();
        let seen = std::fs::read_to_string(&dump).unwrap();
        assert!(
            seen.contains("CARGO_PKG_NAME="),
            "a trusted call inherits: {seen}"
        );

        h.nix()
            .with_program(&script)
            .untrusted(None, 1 << 20)
            .eval_json("x")
            .await
            .unwrap();
        let seen = std::fs::read_to_string(&dump).unwrap();
        let mut keys: Vec<&str> = seen
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| *k != "PWD" && *k != "SHLVL" && *k != "_")
            .collect();
        keys.sort_unstable();
        let mut allowed = vec!["HOME", "NIX_CONF_DIR", "PATH", "XDG_CACHE_HOME"];
        if std::env::var_os("TMPDIR").is_some() {
            allowed.push("TMPDIR");
            allowed.sort_unstable();
        }
        assert_eq!(keys, allowed, "{seen}");
    }

    /// What a pushed flake tries, each through the restricted nix: reading
    /// a host file by absolute path, through a symlink in the repository,
    /// and by import-from-derivation. Each fails with nix's reason and the
    /// secret is in no output; the flake's declared inputs are read without
    /// fetching them (the secret's `path:` input lands nowhere).
    #[tokio::test]
    async fn untrusted_nix_refuses_host_files_and_import_from_derivation() {
        let h = HermeticNix::new().unwrap();
        let secret_text = format!("SECRET-{}-{}", std::process::id(), line!());
        let secret = h.dir().join("secret");
        std::fs::write(&secret, &secret_text).unwrap();
        let dir = h.dir().join("flake");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("link")).unwrap();
        std::fs::write(
            dir.join("flake.nix"),
            format!(
                r#"{{
  inputs.s = {{ url = "path:{secret}"; flake = false; }};
  inputs.t.url = if builtins ? currentTime then "github:impure/view" else "github:pure/view";
  outputs = {{ self, ... }}: let
    ifd = derivation {{ name = "ifd-{marker}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "/bin/cat {secret} > $out" ]; }};
  in {{
    abs = throw (builtins.readFile {secret});
    link = throw (builtins.readFile ./link);
    ifd = throw (builtins.readFile ifd);
  }};
}}"#,
                secret = secret.display(),
                marker = std::process::id(),
            ),
        )
        .unwrap();
        let nix = h.nix().untrusted(None, 1 << 20);
        let inputs = nix.declared_flake_inputs(&dir).await.unwrap();
        assert_eq!(inputs["s"]["url"], format!("path:{}", secret.display()));
        assert_eq!(
            inputs["t"]["url"], "github:pure/view",
            "read as purely as nix reads it"
        );

        // Without inputs (the policy refuses `s` before this point), each
        // attempt is refused by nix itself.
        let text = std::fs::read_to_string(dir.join("flake.nix")).unwrap();
        let body = text.split_once("outputs").unwrap().1;
        std::fs::write(dir.join("flake.nix"), format!("{{\n  outputs{body}")).unwrap();
        for (attr, why) in [
            ("abs", "forbidden in pure eval mode"),
            ("link", "forbidden in restricted mode"),
            ("ifd", "'allow-import-from-derivation' is disabled"),
        ] {
            let err = nix
                .eval_json(&format!("path:{}#{attr}", dir.display()))
                .await
                .unwrap_err();
            let tail = err.stderr().unwrap();
            assert!(tail.contains(why), "{attr}: {tail}");
            assert!(
                !tail.contains(&secret_text),
                "{attr} leaked the secret: {tail}"
            );
        }
    }

    /// `builtins.getFlake` with a commit id fetches any repository the
    /// nix process can read, pure mode or not: without the jail a pushed
    /// flake reads another local repository's files; in the jail the
    /// repository is not there. A normal flake evaluates and builds jailed.
    #[tokio::test]
    async fn the_jail_hides_host_repositories_from_evaluation() {
        if resolve_program(Path::new(BWRAP)) == Path::new(BWRAP) {
            panic!("bwrap (bubblewrap) is required: scripts/install-deps.sh installs it");
        }
        let h = HermeticNix::new().unwrap();
        let secret_text = format!("OTHER-PROJECT-{}-{}", std::process::id(), line!());
        let other = h.dir().join("other");
        let repo = git2::Repository::init(&other).unwrap();
        std::fs::write(other.join("flake.nix"), "{ outputs = { self }: { }; }").unwrap();
        std::fs::write(other.join("secret"), &secret_text).unwrap();
        let mut idx = repo.index().unwrap();
        idx.add_path(Path::new("flake.nix")).unwrap();
        idx.add_path(Path::new("secret")).unwrap();
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("T", "t@example.com").unwrap();
        let rev = repo
            .commit(Some("HEAD"), &sig, &sig, "c", &tree, &[])
            .unwrap();

        let dir = h.dir().join("flake");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("flake.nix"),
            format!(
                r#"{{ outputs = {{ self }}: {{
  steal = builtins.readFile ((builtins.getFlake "git+file://{}?rev={rev}").outPath + "/secret");
  good = derivation {{ name = "jailed-{}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; }};
}}; }}"#,
                other.display(),
                std::process::id()
            ),
        )
        .unwrap();
        let steal = format!("path:{}#steal", dir.display());
        // Jailed first: a fetch made outside the jail would be in nix's
        // fetcher cache and the store already.
        let jailed = h.nix().untrusted(None, 1 << 20).jailed(vec![dir.clone()]);
        let err = jailed.eval_json(&steal).await.unwrap_err();
        let tail = err.stderr().unwrap();
        assert!(!tail.contains(&secret_text), "{tail}");
        assert!(tail.contains("error:"), "{tail}");
        let open = h.nix().untrusted(None, 1 << 20);
        assert_eq!(
            open.eval_json(&steal).await.unwrap(),
            serde_json::json!(secret_text),
            "without the jail the attack works (so the refusal above means something)"
        );
        let built = jailed
            .build(&format!("path:{}#good", dir.display()), None)
            .await
            .unwrap();
        assert!(
            built[0].ends_with(&format!("-jailed-{}", std::process::id())),
            "{built:?}"
        );
        let inputs = jailed.declared_flake_inputs(&dir).await.unwrap();
        assert_eq!(inputs, serde_json::json!({}));
    }

    #[test]
    fn run_as_comes_from_passwd_and_is_never_root() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nci-eval:x:990:985::/var/empty:/bin/false\nbad:x:y:1::/:/\n";
        assert_eq!(
            RunAs::from_passwd(passwd, "ci-eval").unwrap(),
            RunAs {
                name: "ci-eval".into(),
                uid: 990,
                gid: 985,
                remote: "daemon".into(),
            }
        );
        assert!(matches!(
            RunAs::from_passwd(passwd, "root"),
            Err(NixError::RootUser(_))
        ));
        assert!(matches!(
            RunAs::from_passwd(passwd, "bad"),
            Err(NixError::NoSuchUser(_))
        ));
        assert_eq!(
            RunAs::from_passwd(passwd, "nobody-here")
                .unwrap_err()
                .to_string(),
            "no user \"nobody-here\" in /etc/passwd"
        );
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = Nix::new()
            .with_program("/nonexistent/nix")
            .eval_json("x")
            .await
            .unwrap_err();
        assert!(matches!(err, NixError::Spawn { .. }), "{err}");
    }
}
