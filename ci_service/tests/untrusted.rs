//! Pushed flakes are untrusted code (design §11, issue 14 points 2, 6 and
//! 8). Each test plays the attacker with real git pushes, the real nix
//! client and ci_service's real HTTP API: a flake that reaches for the
//! CI host's secrets (the cache upload token's netrc, a file outside the
//! repository, another repository) through a `path:` input, a hand-made
//! flake.lock, `builtins.readFile`, import-from-derivation, a symlink and
//! its build; a build that prints a gigabyte; and a stranger reading the
//! job API.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The upload token ci_service holds; every attack tries to print it.
const UPLOAD_TOKEN: &str = "upload-token-7f3a9c1e5b2d4086";

/// ci_service holding the upload token, with a cache it never reaches:
/// pushes to main build but do not deploy (so never upload); what matters
/// is the netrc ci_service writes with the token at start.
fn start_ci_holding_the_token(
    h: &repo_outils::testing::HermeticNix,
    data: &Path,
    extra: &[&str],
) -> testkit::Proc {
    let mut args = vec![
        "--cache",
        "http://127.0.0.1:9",
        "--deploy-ref",
        "refs/heads/deploy",
    ];
    args.extend_from_slice(extra);
    start_ci(h, data, &args, &[("CI_CACHE_TOKEN", UPLOAD_TOKEN)])
}

/// Replaces the work clone's flake.nix (and flake.lock, when given),
/// commits and pushes; returns the job's final JSON and its log.
fn push_flake(
    url: &str,
    repo: &Repo,
    flake: &str,
    lock: Option<&str>,
    msg: &str,
) -> (serde_json::Value, String) {
    std::fs::write(repo.work.join("flake.nix"), flake).unwrap();
    let lock_path = repo.work.join("flake.lock");
    match lock {
        Some(l) => std::fs::write(&lock_path, l).unwrap(),
        None => {
            let _ = std::fs::remove_file(&lock_path);
        }
    }
    git(&repo.work, &["add", "-A"]);
    git(&repo.work, &["commit", "-q", "-m", msg]);
    let (commit, _) = repo.push();
    let id = job_for(url, &commit);
    let job = wait_job(url, id, Duration::from_secs(60));
    (job, log(url, id))
}

/// A flake whose VM list is empty and whose closure is `closure` (a Nix
/// expression), so evaluation gets as far as the attack needs.
fn flake_with(inputs: &str, let_in: &str, specs: &str, closure: &str) -> String {
    format!(
        r#"{{
  {inputs}
  outputs = {{ self, ... }}@all: let
    {let_in}
  in {{
    procurator.vmSpecs = {specs};
    procurator.closure = {closure};
  }};
}}
"#
    )
}

/// A builtins-only derivation running `script` with /bin/sh.
fn drv(name: &str, script: &str) -> String {
    format!(
        r#"derivation {{ name = "{name}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" ''{script}'' ]; }}"#
    )
}

/// Everything the outside world can see of a job: its log, its JSON in
/// the list and alone.
fn visible(url: &str, job: &serde_json::Value, log: &str) -> String {
    let id = job["id"].as_i64().unwrap();
    format!(
        "{log}\n{job}\n{}\n{}",
        get_json(&format!("{url}/jobs/{id}")),
        get_json(&format!("{url}/jobs"))
    )
}

#[test]
fn pushed_flakes_cannot_read_the_hosts_secrets() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let data = h.dir().join("ci");
    let ci = start_ci_holding_the_token(&h, &data, &[]);
    let url = ci.url();
    let netrc = data.join("cache.netrc");
    testkit::wait_until(Duration::from_secs(10), "the netrc", || {
        netrc.exists().then_some(())
    });
    assert!(
        std::fs::read_to_string(&netrc)
            .unwrap()
            .contains(UPLOAD_TOKEN)
    );
    // Another project's repository on the same host.
    let other = h.dir().join("other.git");
    std::fs::create_dir_all(&other).unwrap();
    git(&other, &["init", "--bare", "-q"]);

    let repo = Repo::new(h.dir(), &url);
    // The untouched example still builds: the restrictions keep a normal
    // flake working (sandboxed build, pure evaluation, no inputs).
    let (c1, _) = repo.push();
    let id = job_for(&url, &c1);
    let job = wait_job(&url, id, Duration::from_secs(120));
    assert_eq!(
        job["state"],
        "built-not-deployed",
        "{job}\n{}",
        log(&url, id)
    );
    assert!(log(&url, id).contains("checked 0 flake input(s)"));

    let n = netrc.display();
    let marker = std::process::id();
    let attacks: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "a path: input naming the netrc",
            flake_with(
                &format!(r#"inputs.s = {{ url = "path:{n}"; flake = false; }};"#),
                "",
                "throw (builtins.readFile all.s)",
                "null",
            ),
            None,
            "flake input \"s\" (path:",
        ),
        (
            "a hand-written flake.lock naming the netrc",
            flake_with(
                r#"inputs.s = { url = "github:someone/innocent"; flake = false; };"#,
                "",
                "throw (builtins.readFile all.s)",
                "null",
            ),
            Some(
                serde_json::json!({"nodes": {
                    "root": {"inputs": {"s": "s"}},
                    "s": {"locked": {"type": "path", "path": n.to_string(), "narHash": "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
                          "original": {"type": "github", "owner": "someone", "repo": "innocent"}},
                }, "root": "root", "version": 7})
                .to_string(),
            ),
            "flake input \"s\" (flake.lock locked:",
        ),
        (
            "a git+file: input naming another project's repository",
            flake_with(
                &format!(r#"inputs.o.url = "git+file://{}";"#, other.display()),
                "",
                "[ ]",
                "null",
            ),
            None,
            "git+file: reads the CI host's files",
        ),
        (
            "an input declared without flake.lock",
            flake_with(r#"inputs.n.url = "github:NixOS/nixpkgs";"#, "", "[ ]", "null"),
            None,
            "has no flake.lock",
        ),
        (
            "builtins.readFile of the netrc",
            flake_with("", "", &format!("throw (builtins.readFile {n})"), "null"),
            None,
            "forbidden in pure eval mode",
        ),
        (
            "import-from-derivation reading the netrc",
            flake_with(
                "",
                &format!(
                    "ifd = {};",
                    drv(&format!("ifd-{marker}"), &format!("/bin/cat {n} > $out"))
                ),
                "throw (builtins.readFile ifd)",
                "null",
            ),
            None,
            "'allow-import-from-derivation' is disabled",
        ),
        (
            "a build that copies the netrc into its output and its log",
            flake_with(
                "",
                "",
                "[ ]",
                &drv(
                    &format!("steal-{marker}"),
                    &format!("/bin/cat {n} >&2; /bin/cat {n} > $out"),
                ),
            ),
            None,
            "building procurator.closure failed",
        ),
    ];
    for (what, flake, lock, why) in attacks {
        let (job, text) = push_flake(&url, &repo, &flake, lock.as_deref(), what);
        assert_eq!(job["state"], "failed", "{what}: {job}\n{text}");
        let error = job["error"].as_str().unwrap();
        assert!(
            error.contains(why) || text.contains(why),
            "{what}: the reason should say {why:?}: {error}\n{text}"
        );
        assert!(
            !visible(&url, &job, &text).contains(UPLOAD_TOKEN),
            "{what}: the token leaked: {text}"
        );
        assert!(text.contains("nothing was published"), "{what}: {text}");
    }

    // A symlink in the repository pointing at the netrc reads nothing
    // either (nix resolves it and refuses the host path).
    std::os::unix::fs::symlink(&netrc, repo.work.join("link")).unwrap();
    let (job, text) = push_flake(
        &url,
        &repo,
        &flake_with("", "", "throw (builtins.readFile ./link)", "null"),
        None,
        "a symlink to the netrc",
    );
    assert_eq!(job["state"], "failed", "{job}\n{text}");
    // Refused by restricted evaluation, or not there at all in the jail.
    assert!(
        text.contains("forbidden in restricted mode") || text.contains("No such file or directory"),
        "{text}"
    );
    assert!(!visible(&url, &job, &text).contains(UPLOAD_TOKEN), "{text}");

    // Another project's repository with a flake, fetched by commit id
    // (pure mode allows a locked getFlake): the jail has no such path.
    let secret = format!("OTHER-PROJECT-SECRET-{marker}");
    let theirs = h.dir().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    git(&theirs, &["init", "-q"]);
    std::fs::write(theirs.join("flake.nix"), "{ outputs = { self }: { }; }").unwrap();
    std::fs::write(theirs.join("secret"), &secret).unwrap();
    git(&theirs, &["add", "-A"]);
    git(&theirs, &["commit", "-q", "-m", "theirs"]);
    let rev = git(&theirs, &["rev-parse", "HEAD"]).trim().to_owned();
    let (job, text) = push_flake(
        &url,
        &repo,
        &flake_with(
            "",
            "",
            &format!(
                r#"throw (builtins.readFile ((builtins.getFlake "git+file://{}?rev={rev}").outPath + "/secret"))"#,
                theirs.display()
            ),
            "null",
        ),
        None,
        "builtins.getFlake of another project's repository",
    );
    assert_eq!(job["state"], "failed", "{job}\n{text}");
    assert!(!visible(&url, &job, &text).contains(&secret), "{text}");
}

#[test]
fn a_build_that_prints_a_gigabyte_is_stopped_at_the_log_bound() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let data = h.dir().join("ci");
    const LIMIT: u64 = 1 << 20;
    let ci = start_ci(&h, &data, &["--max-job-log-bytes", &LIMIT.to_string()], &[]);
    let url = ci.url();
    let repo = Repo::new(h.dir(), &url);
    let name = format!(
        "chatty-{}-{}",
        std::process::id(),
        commands::telemetry::now_ms()
    );
    // 1 GiB of 71-byte lines from the host's own tools.
    let loud = drv(
        &name,
        "/usr/bin/yes 0123456789012345678901234567890123456789012345678901234567890123456789 | /usr/bin/head -c 1073741824; echo done > $out",
    );
    let t = Instant::now();
    let (job, text) = push_flake(
        &url,
        &repo,
        &flake_with("", "", "[ ]", &loud),
        None,
        "a build that prints 1 GiB",
    );
    let took = t.elapsed();
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "killed after writing more than {LIMIT} bytes of log output"
        )),
        "{error}"
    );
    assert!(
        text.contains(&format!(
            "log truncated: this job's output passed the job log limit of {LIMIT} bytes"
        )),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
    assert!(text.ends_with("nothing was published; the active generation is unchanged\n"));
    // Disk: the job log stays within its bound (plus the final lines), and
    // nix kept no copy of the build log of its own.
    let id = job["id"].as_i64().unwrap();
    let on_disk = std::fs::metadata(data.join("logs").join(format!("{id}.log")))
        .unwrap()
        .len();
    assert!(on_disk <= LIMIT + 4096, "{on_disk} bytes on disk");
    let drv_logs: Vec<PathBuf> = walk(Path::new("/nix/var/log/nix/drvs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&name))
        .collect();
    assert!(drv_logs.is_empty(), "nix kept {drv_logs:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// Files under `dir` (two levels: nix's log layout).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(
                std::fs::read_dir(e.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|f| f.path()),
            );
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn the_read_api_needs_a_reader_token() {
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    let data = h.dir().join("ci");
    let tokens = h.dir().join("api-tokens");
    let reader = "reader-token-0123456789abcdef";
    let admin = "admin-token-0123456789abcdef";
    std::fs::write(&tokens, format!("reader {reader}\nadmin {admin}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A token file with a role the read API has no use for is refused.
    let bad = h.dir().join("bad-tokens");
    std::fs::write(&bad, "ci ci-token-0123456789abcdef\n").unwrap();
    let out = Command::new(bin("ci_service"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--insecure-no-auth")
        .arg("--api-token-file")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("role ci is not used by this server"), "{err}");
    assert!(!err.contains("ci-token-0123456789abcdef"), "{err}");

    let ci = start_ci(
        &h,
        &data,
        &["--api-token-file", tokens.to_str().unwrap()],
        &[],
    );
    let url = ci.url();
    // The hook is not a reader: it pushes with its own secret (none here).
    let id = push_event_for_missing_repo(&h, &url);

    let bearer = |t: &str| vec![(http::header::AUTHORIZATION, format!("Bearer {t}"))];
    let reads = [
        "/jobs".to_owned(),
        format!("/jobs/{id}"),
        format!("/jobs/{id}/log"),
        format!("/jobs/{id}/log?follow=1"),
        "/generations".to_owned(),
    ];
    for path in &reads {
        let u = format!("{url}{path}");
        let (s, b) = request(http::Method::GET, &u, &[], None);
        assert_eq!(s, http::StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            String::from_utf8_lossy(&b).contains("no token was given"),
            "{path}: {b:?}"
        );
        let (s, b) = request(
            http::Method::GET,
            &u,
            &bearer("reader-token-0123456789abcdeX"),
            None,
        );
        assert_eq!(s, http::StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            String::from_utf8_lossy(&b).contains("not valid"),
            "{path}: {b:?}"
        );
    }
    // The job fails (its repository does not exist); then every read works
    // with either token.
    testkit::wait_until(Duration::from_secs(30), "the job to fail", || {
        let (_, b) = request(
            http::Method::GET,
            &format!("{url}/jobs/{id}"),
            &bearer(reader),
            None,
        );
        let j: serde_json::Value = serde_json::from_slice(&b).ok()?;
        (j["state"] == "failed").then_some(())
    });
    for token in [reader, admin] {
        for path in &reads {
            let (s, b) = request(
                http::Method::GET,
                &format!("{url}{path}"),
                &bearer(token),
                None,
            );
            assert_eq!(s, http::StatusCode::OK, "{path}: {b:?}");
            if path.contains("/log") {
                assert!(
                    String::from_utf8_lossy(&b).contains("failed: "),
                    "{path}: {b:?}"
                );
            }
        }
    }
    // Re-running queues a build: an admin's call. Without a token or with
    // a reader's it is refused and nothing is queued.
    let rerun = format!("{url}/jobs/{id}/rerun");
    let (s, _) = request(http::Method::POST, &rerun, &[], None);
    assert_eq!(s, http::StatusCode::UNAUTHORIZED);
    let (s, b) = request(http::Method::POST, &rerun, &bearer(reader), None);
    assert_eq!(s, http::StatusCode::FORBIDDEN, "{b:?}");
    let jobs = |token: &str| {
        let (_, b) = request(
            http::Method::GET,
            &format!("{url}/jobs"),
            &bearer(token),
            None,
        );
        serde_json::from_slice::<serde_json::Value>(&b)
            .unwrap()
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(jobs(reader), 1, "a refused re-run queued nothing");
    let (s, b) = request(http::Method::POST, &rerun, &bearer(admin), None);
    assert_eq!(s, http::StatusCode::ACCEPTED, "{b:?}");
    assert_eq!(jobs(reader), 2);
    // The typed client (repohub's) carries the read token.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = |t: Option<&str>| {
        commands::ci_api::CiClient::new(Some(url.clone()), None, Duration::from_secs(10))
            .unwrap()
            .with_read_token(t.map(str::to_owned))
    };
    let job = rt.block_on(client(Some(reader)).job(id)).unwrap();
    assert_eq!(job.id, id);
    let log = rt.block_on(client(Some(reader)).log(id)).unwrap();
    assert!(String::from_utf8_lossy(&log).contains("failed: "));
    let err = rt.block_on(client(None).jobs("", 10)).unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    let (s, _) = request(http::Method::GET, &format!("{url}/healthz"), &[], None);
    assert_eq!(s, http::StatusCode::OK, "health stays open for probes");
}

/// With `--eval-user`, nix evaluates and builds pushed flakes as that
/// unprivileged user through a nix daemon (a real `nix-daemon` on its own
/// socket here): a normal flake still builds, every file nix made for the
/// job belongs to that user, and the token's netrc is not readable by it.
/// Needs root (to switch users) and the `nobody` user; says so and
/// returns otherwise.
#[test]
fn evaluation_runs_as_the_eval_user_through_the_daemon() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("skipped: switching to the evaluation user needs root");
        return;
    }
    let Ok(nobody) = repo_outils::nix::RunAs::lookup("nobody") else {
        eprintln!("skipped: no user nobody");
        return;
    };
    let h = repo_outils::testing::HermeticNix::new().unwrap();
    // The evaluation user reaches the checkout and nix.conf by path only.
    std::fs::set_permissions(h.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let daemon_conf = h.dir().join("daemon-conf");
    repo_outils::testing::write_nix_conf(
        &daemon_conf,
        "sandbox = true\nsandbox-fallback = false\n",
    )
    .unwrap();
    let socket = h.dir().join("daemon").join("socket");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let mut cmd = Command::new("nix-daemon");
    cmd.env("NIX_CONF_DIR", &daemon_conf)
        .env("NIX_DAEMON_SOCKET_PATH", &socket);
    let _daemon = testkit::Proc::start("nix-daemon", cmd, testkit::Log::Quiet);
    testkit::wait_until(Duration::from_secs(10), "the nix daemon's socket", || {
        socket.exists().then_some(())
    });

    let data = h.dir().join("ci");
    let remote = format!("unix://{}", socket.display());
    let ci = start_ci_holding_the_token(
        &h,
        &data,
        &["--eval-user", "nobody", "--eval-nix-remote", &remote],
    );
    let url = ci.url();
    let repo = Repo::new(h.dir(), &url);
    let (commit, _) = repo.push();
    let id = job_for(&url, &commit);
    let job = wait_job(&url, id, Duration::from_secs(120));
    assert_eq!(
        job["state"],
        "built-not-deployed",
        "{job}\n{}",
        log(&url, id)
    );

    let home = data.join("eval-home");
    let made: Vec<PathBuf> = walk_all(&home);
    assert!(
        !made.is_empty(),
        "nix wrote nothing under {}",
        home.display()
    );
    for f in &made {
        let m = std::fs::symlink_metadata(f).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (nobody.uid, nobody.gid),
            "{}",
            f.display()
        );
    }
    let netrc = std::fs::metadata(data.join("cache.netrc")).unwrap();
    assert_eq!((netrc.uid(), netrc.mode() & 0o777), (0, 0o600));
}

/// Every file and directory under `dir`.
fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}
