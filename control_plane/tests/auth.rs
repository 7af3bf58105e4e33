//! Authentication with the real binaries: a `control_plane` and a `worker`
//! started with token files, driven by `pcr`, `pcr-test` and
//! `pcr-worker-test`. No or a wrong token is refused with one clear line, a
//! reader can read but not publish, a worker token cannot register another
//! id, the worker's own RPC takes admin and reader tokens; and every server
//! without tokens (control plane, worker, ci_service without a hook secret,
//! cache without an upload token) refuses a non-loopback bind.
//!
//! The binaries of other packages are found next to this package's
//! `control_plane` binary (`cargo build --workspace` builds them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use testkit::services::{ControlPlaneArgs, WorkerArgs, start_control_plane, start_worker};
use testkit::wait::poll_every;
use testkit::{Log, Proc, bin};

const ADMIN: &str = "admin-token-0123456789";
const CI: &str = "ci-token-0123456789abcd";
const W1: &str = "worker-w1-token-0123456";
const READER: &str = "reader-token-0123456789";
const WORKER_ADMIN: &str = "worker-admin-token-012345";
const WORKER_READER: &str = "worker-reader-token-01234";

/// A server started with a token file, its log in `log`.
fn start_cp(listen: &str, token_file: &Path, log: &Path) -> Proc {
    let cp = ControlPlaneArgs {
        listen: listen.to_owned(),
        args: vec!["--token-file".into(), token_file.display().to_string()],
        ..ControlPlaneArgs::default()
    };
    start_control_plane(&cp, Log::File(log.to_owned()))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs a CLI with no token in its environment unless `env` gives one.
fn cli(tool: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(tool));
    cmd.args(args)
        .env_remove("PCR_TOKEN")
        .env_remove("PCR_TOKEN_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The one line of stderr of a failed run.
fn err_line(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(e.lines().count(), 1, "one line expected: {e}");
    e
}

/// Polls `f` until it holds; on timeout the panic shows every log in `logs`.
fn wait_for(what: &str, logs: &Path, timeout: Duration, mut f: impl FnMut() -> bool) {
    let every = Duration::from_millis(50);
    if poll_every(every, timeout, || f().then_some(())).is_none() {
        let mut all = String::new();
        for e in std::fs::read_dir(logs).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                all += &format!(
                    "--- {}\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
        panic!("timed out waiting for {what}; logs:\n{all}");
    }
}

#[test]
fn tokens_and_roles_with_the_real_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cp_tokens = write(
        d,
        "cp-tokens",
        &format!("# control plane\nadmin {ADMIN}\nci {CI}\nworker:w1 {W1}\nreader {READER}\n"),
    );
    let cp_proc = start_cp("127.0.0.1:0", &cp_tokens, &d.join("cp.log"));
    let cp = cp_proc.addr.clone();
    let admin_file = write(d, "admin", &format!("{ADMIN}\n"));
    let reader_file = write(d, "reader", &format!("{READER}\n"));
    let ci_file = write(d, "ci", &format!("{CI}\n"));
    let wrong_file = write(d, "wrong", "not-the-token-0123456\n");
    let spec = write(
        d,
        "a.json",
        r#"{"name":"a","toplevel":"/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys","kernelPath":"/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel","cmdline":"","cpu":1,"memoryMb":128,"contentHash":"h1","initrdPath":"","diskImagePath":"","networkAllowedDomains":[],"labels":{}}"#,
    );

    // No token, a wrong token: refused with one line that says why.
    let e = err_line(&cli("pcr", &["--control-plane", &cp, "status"], &[]));
    assert_eq!(
        e,
        format!(
            "error: {cp} refused the login: no token was given; this server requires one \
             (--token-file, PCR_TOKEN or PCR_TOKEN_FILE)"
        )
    );
    let e = err_line(&cli(
        "pcr",
        &[
            "--control-plane",
            &cp,
            "status",
            "--token-file",
            wrong_file.to_str().unwrap(),
        ],
        &[],
    ));
    assert_eq!(
        e,
        format!("error: {cp} refused the login: the token is not valid for this server")
    );
    // The token never shows up in the control plane's log.
    assert!(
        !std::fs::read_to_string(d.join("cp.log"))
            .unwrap()
            .contains("not-the-token")
    );

    // A reader (token from the environment) can read but not publish.
    ok(&cli(
        "pcr",
        &["--control-plane", &cp, "status"],
        &[("PCR_TOKEN", READER)],
    ));
    ok(&cli(
        "pcr",
        &["--control-plane", &cp, "generation"],
        &[("PCR_TOKEN_FILE", reader_file.to_str().unwrap())],
    ));
    let publish = [
        "--control-plane",
        &cp,
        "publish-state",
        "--commit",
        "c1",
        "--generation",
        "1",
        "--spec",
        spec.to_str().unwrap(),
    ];
    let e = err_line(&cli("pcr-test", &publish, &[("PCR_TOKEN", READER)]));
    assert_eq!(
        e,
        "error: permission denied: a reader token may not publish a generation"
    );
    // CI can publish.
    ok(&cli(
        "pcr-test",
        &[&publish[..], &["--token-file", ci_file.to_str().unwrap()]].concat(),
        &[],
    ));

    // A worker with its own token file and the w1 cluster token registers.
    let worker_tokens = write(
        d,
        "worker-tokens",
        &format!("admin {WORKER_ADMIN}\nreader {WORKER_READER}\n"),
    );
    let w1_file = write(d, "w1-token", &format!("{W1}\n"));
    let start_worker = |id: &str| {
        let w = WorkerArgs {
            cpu: 8,
            memory_mb: 4096,
            control_plane: Some(cp.clone()),
            ..WorkerArgs::new(id, &d.join(id).join("run"), &d.join("store"))
        }
        .args(["--heartbeat-interval-ms", "200", "--token-file"])
        .arg(worker_tokens.display().to_string())
        .arg("--cluster-token-file")
        .arg(w1_file.display().to_string());
        let p = start_worker(&w, Log::File(d.join(format!("{id}.log"))));
        let addr = p.addr.clone();
        (p, addr)
    };
    let (_w1, w1_addr) = start_worker("w1");
    let workers = || {
        ok(&cli(
            "pcr",
            &["--control-plane", &cp, "--json", "workers"],
            &[("PCR_TOKEN", ADMIN)],
        ))
    };
    wait_for("w1 to register", d, Duration::from_secs(20), || {
        workers().contains("\"w1\"")
    });

    // The same worker token used by a worker calling itself w2 is refused.
    let (_w2, _) = start_worker("w2");
    wait_for(
        "w2's refusal in its log",
        d,
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(d.join("w2.log"))
                .unwrap_or_default()
                .contains("this token belongs to worker w1, not w2")
        },
    );
    assert!(!workers().contains("\"w2\""));

    // getWorker is for admins; the proxied capability needs no second login.
    let e = err_line(&cli(
        "pcr-test",
        &["--control-plane", &cp, "worker", "w1", "read"],
        &[("PCR_TOKEN", READER)],
    ));
    assert_eq!(
        e,
        "error: permission denied: a reader token may not control a worker"
    );
    assert!(
        ok(&cli(
            "pcr-test",
            &["--control-plane", &cp, "worker", "w1", "read"],
            &[("PCR_TOKEN", ADMIN)]
        ))
        .contains("w1")
    );

    // The worker's own RPC: no token refused, reader reads only, admin all.
    let on_w1 = |args: &[&str], env: &[(&str, &str)]| {
        cli(
            "pcr-worker-test",
            &[&["--addr", &w1_addr], args].concat(),
            env,
        )
    };
    let e = err_line(&on_w1(&["list-vms"], &[]));
    assert!(e.contains("refused the login: no token was given"), "{e}");
    ok(&on_w1(&["list-vms"], &[("PCR_TOKEN", WORKER_READER)]));
    let create = ["create-vm", "--spec", spec.to_str().unwrap()];
    let e = err_line(&on_w1(&create, &[("PCR_TOKEN", WORKER_READER)]));
    assert!(e.contains("a reader token may not create VMs"), "{e}");
    ok(&on_w1(&["read"], &[("PCR_TOKEN", WORKER_ADMIN)]));
    // The control plane's admin token is not the worker's.
    let e = err_line(&on_w1(
        &["read", "--token-file", admin_file.to_str().unwrap()],
        &[],
    ));
    assert!(e.contains("the token is not valid"), "{e}");
}

/// Starts `tool args` and expects it to exit non-zero at once with `needle`
/// on stderr.
fn refuses(tool: &str, args: &[&str], needle: &str) {
    let mut child = Command::new(bin(tool))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let every = Duration::from_millis(20);
    let Some(status) = poll_every(every, Duration::from_secs(10), || child.try_wait().unwrap())
    else {
        let _ = child.kill();
        panic!("{tool} kept running on 0.0.0.0 without a token");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{tool} exited 0");
    assert!(err.contains(needle), "{tool}: {err}");
}

/// [`refuses`], listening on every address.
fn refuses_public(tool: &str, args: &[&str], needle: &str) {
    refuses(tool, &[&["--listen", "0.0.0.0:0"], args].concat(), needle);
}

#[test]
fn servers_without_tokens_refuse_to_start_unless_told_and_then_only_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = d.join("run");
    let data = d.join("ci");
    let worker = ["--worker-id", "w", "--run-dir", run.to_str().unwrap()];
    let ci = ["--data-dir", data.to_str().unwrap()];
    let lo = ["--listen", "127.0.0.1:0"];
    let insecure = ["--insecure-no-auth"];
    let servers: [(&str, &[&str], &str, &str); 3] = [
        (
            "control_plane",
            &[],
            "the control plane needs --token-file: without it every caller would be trusted",
            "refusing to serve the control plane on non-loopback address 0.0.0.0:",
        ),
        (
            "worker",
            &worker,
            "the worker needs --token-file",
            "refusing to serve the worker on non-loopback address 0.0.0.0:",
        ),
        (
            "ci_service",
            &ci,
            "ci_service needs --hook-secret-file",
            "without --hook-secret-file",
        ),
    ];
    for (tool, own, no_token, public) in servers {
        // No token file and no --insecure-no-auth: not even on loopback.
        refuses(tool, &[&lo[..], own].concat(), no_token);
        // --insecure-no-auth is for loopback only.
        refuses_public(tool, &[own, &insecure].concat(), public);
    }
    // On loopback it starts, and says loudly what it is.
    let log = d.join("insecure-cp.log");
    let cp = start_control_plane(&ControlPlaneArgs::default(), Log::File(log.clone()));
    wait_for("the insecure warning", d, Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("INSECURE: the control plane runs with --insecure-no-auth")
    });
    drop(cp);
    // A token file and --insecure-no-auth together are a mistake.
    let tokens = write(d, "tokens", &format!("admin {ADMIN}\n"));
    refuses(
        "control_plane",
        &[
            &lo[..],
            &insecure,
            &["--token-file", tokens.to_str().unwrap()],
        ]
        .concat(),
        "--token-file and --insecure-no-auth exclude each other",
    );
    // The cache without an upload token: nobody could upload, keep it local.
    // (cache_keys also writes a token file, which this command does not name.)
    testkit::services::cache_keys(d, "test-1", "unused");
    let keys = d.join("key");
    let cache_dir = d.join("cache");
    refuses(
        "cache",
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            cache_dir.to_str().unwrap(),
            "--key-file",
            keys.join("secret-key").to_str().unwrap(),
        ],
        "without --upload-token-file",
    );
    // With a token file the same bind is fine.
    let cp = start_cp("0.0.0.0:0", &tokens, &d.join("cp.log"));
    let addr = cp.addr.clone();
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    // A malformed token file stops the server with the line that is wrong.
    let bad = write(d, "bad", &format!("admin {ADMIN}\nboss {CI}\n"));
    refuses(
        "control_plane",
        &["--token-file", bad.to_str().unwrap()],
        "line 2: unknown role \"boss\"",
    );
}
