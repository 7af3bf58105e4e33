//! Shared helpers for the cache's integration tests: a hermetic nix setup
//! (per-test NIX_CONF_DIR, XDG_CACHE_HOME, netrc), builtins-only closures,
//! and the real `cache` binary started on port 0 (testkit's process guard).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use testkit::wait::poll_every;
use testkit::{Log, Proc};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_cache");
pub(crate) const TOKEN: &str = "s3cret-upload-token";

/// A temp dir with nix.conf, registry, netrc and a signing key.
pub(crate) struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("conf")).unwrap();
        std::fs::create_dir_all(p.join("xdg")).unwrap();
        std::fs::write(p.join("registry.json"), r#"{"flakes":[],"version":2}"#).unwrap();
        std::fs::write(
            p.join("conf/nix.conf"),
            format!(
                "build-users-group =\nsandbox = false\nextra-sandbox-paths = /bin /usr /lib /lib64\nsubstituters =\n\
                 experimental-features = nix-command flakes\nflake-registry = {}/registry.json\n\
                 narinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\nnetrc-file = {}/netrc\n",
                p.display(),
                p.display()
            ),
        )
        .unwrap();
        let env = Self { dir };
        env.set_netrc_password(TOKEN);
        testkit::services::cache_keys(env.path(), "test-cache-1", TOKEN);
        env
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn set_netrc_password(&self, pw: &str) {
        std::fs::write(
            self.path().join("netrc"),
            format!("machine 127.0.0.1 login ci password {pw}\n"),
        )
        .unwrap();
    }

    pub(crate) fn public_key(&self) -> String {
        std::fs::read_to_string(self.path().join("key/public-key"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub(crate) fn secret_key_file(&self) -> PathBuf {
        self.path().join("key/secret-key")
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// A nix command with this env's configuration.
    pub(crate) fn nix(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("NIX_CONF_DIR", self.path().join("conf"))
            .env("XDG_CACHE_HOME", self.path().join("xdg"))
            .env("HOME", self.path())
            .env_remove("NIX_REMOTE");
        c
    }

    /// Builds `expr` (a nix file's contents) into the store root `store`
    /// and returns the output path.
    pub(crate) fn build(&self, store: &Path, file_name: &str, expr: &str) -> String {
        let f = self.path().join(file_name);
        std::fs::write(&f, expr).unwrap();
        let out = self
            .nix("nix-build")
            .arg("--store")
            .arg(store)
            .arg(&f)
            .arg("--no-out-link")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nix-build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Runs a nix command, bounded by `limit`.
    pub(crate) fn run(&self, cmd: &mut Command, limit: Duration) -> Output {
        run_with_timeout(cmd, limit)
    }

    /// `nix copy --to <cache>` from store root `src`.
    pub(crate) fn push(&self, src: &Path, url: &str, paths: &[&str]) -> Output {
        let mut c = self.nix("nix");
        c.args(["copy", "--store"])
            .arg(src)
            .args(["--to", url])
            .args(paths);
        run_with_timeout(&mut c, Duration::from_secs(60))
    }

    /// `nix copy --from <cache> --to <dst>` trusting `key`.
    pub(crate) fn pull(&self, url: &str, dst: &Path, key: &str, paths: &[&str]) -> Output {
        let mut c = self.nix("nix");
        c.args(["copy", "--from", url, "--to"])
            .arg(dst)
            .args(["--option", "trusted-public-keys", key])
            .args(paths);
        run_with_timeout(&mut c, Duration::from_secs(60))
    }
}

pub(crate) fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let every = Duration::from_millis(20);
    if poll_every(every, limit, || child.try_wait().unwrap()).is_some() {
        return child.wait_with_output().unwrap();
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "command timed out after {limit:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A derivation chain: `top` depends on `mid` depends on `leaf` (3 paths),
/// each with `kib` KiB of random data. `salt` makes distinct closures.
pub(crate) fn chain_expr(salt: &str, kib: u32) -> String {
    format!(
        r#"let
  mk = name: deps: derivation {{
    name = "${{name}}-{salt}"; system = "x86_64-linux"; builder = "/bin/sh";
    args = ["-c" ''
      /bin/mkdir -p $out/bin
      echo "${{name}} ${{toString deps}}" > $out/deps
      /bin/head -c {bytes} /dev/urandom > $out/data
      echo '#!/bin/sh' > $out/bin/run
      /bin/chmod +x $out/bin/run
      /bin/ln -s ../deps $out/bin/deps-link
    ''];
  }};
  leaf = mk "leaf" [];
  mid = mk "mid" [leaf];
  top = mk "top" [mid leaf];
in top
"#,
        bytes = kib * 1024
    )
}

/// The real `cache serve` on 127.0.0.1:0; stopped on drop.
pub(crate) struct Server {
    pub proc: Proc,
    pub addr: String,
}

impl Server {
    pub(crate) fn start(env: &Env, extra: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(env.data_dir())
            .arg("--key-file")
            .arg(env.secret_key_file())
            .arg("--upload-token-file")
            .arg(env.path().join("token"))
            .args(extra)
            .env("RUST_LOG", "warn");
        let proc = Proc::spawn("cache", cmd, Log::Inherit);
        let addr = proc.addr.clone();
        Self { proc, addr }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL now (a crash).
    pub(crate) fn kill(&mut self) {
        self.proc.kill();
    }
}

/// Runs a `cache` maintenance subcommand on `env`'s data dir.
pub(crate) fn cache_cmd(env: &Env, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).arg("--data-dir").arg(env.data_dir());
    run_with_timeout(&mut c, Duration::from_secs(60))
}

/// Store paths of a closure in `store`, via `nix path-info -r`.
pub(crate) fn closure(env: &Env, store: &Path, path: &str) -> Vec<String> {
    let mut c = env.nix("nix");
    c.args(["path-info", "-r", "--store"]).arg(store).arg(path);
    let out = run_with_timeout(&mut c, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "path-info: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Minimal blocking HTTP/1.1 request over a fresh connection; returns (status, body).
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(pw) = auth {
        use base64::Engine as _;
        req.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("ci:{pw}"))
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
