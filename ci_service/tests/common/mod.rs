//! Helpers shared by ci_service's integration tests: run real git on a
//! repository with ci_service's hook, and talk to the HTTP API. Binaries,
//! processes, polling and the cluster come from `testkit`.
#![allow(dead_code)]

pub(crate) mod cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::fs::{copy_tree, example_dir};
pub(crate) use testkit::{bin, wait_until};

/// Runs git with a fixed identity; panics with its stderr on failure.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A bare repository with ci_service's hook, and a work clone holding the
/// hermetic example, committed but not pushed yet.
pub(crate) struct Repo {
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Repo {
    pub(crate) fn new(root: &Path, ci_url: &str) -> Repo {
        let bare = root.join("cluster.git");
        let work = root.join("work");
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "--bare", "-q", "-b", "main"]);
        let st = Command::new(bin("ci_service"))
            .args(["install-hook", "--repo"])
            .arg(&bare)
            .args(["--url", ci_url])
            .status()
            .unwrap();
        assert!(st.success());
        copy_tree(&example_dir(), &work);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "hermetic example"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Repo { bare, work }
    }

    /// Edits `vms.nix` by replacing `from` with `to`, commits and pushes;
    /// returns the new commit and git's output (with the hook's lines).
    pub(crate) fn change_and_push(&self, from: &str, to: &str, msg: &str) -> (String, String) {
        let p = self.work.join("vms.nix");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "vms.nix lacks {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
        git(&self.work, &["commit", "-q", "-am", msg]);
        self.push()
    }

    pub(crate) fn push(&self) -> (String, String) {
        let out = git(&self.work, &["push", "-q", "origin", "main"]);
        (self.head(), out)
    }

    pub(crate) fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_owned()
    }
}

/// ci_service on a free loopback port with the hermetic nix of `h`, its
/// data in `data`, `extra` flags and `env` variables.
pub(crate) fn start_ci(
    h: &repo_outils::testing::HermeticNix,
    data: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> testkit::Proc {
    let mut cmd = Command::new(bin("ci_service"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--nix-conf-dir")
        .arg(h.conf_dir())
        .args(extra);
    // Tests about something else than the hook's secret run without one.
    if !extra.contains(&"--hook-secret-file") {
        cmd.arg("--insecure-no-auth");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    testkit::Proc::spawn("ci_service", cmd, testkit::Log::Quiet)
}

/// Blocking JSON GET (a fresh runtime per call keeps tests simple).
pub(crate) fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = get(url);
    assert!(
        status.is_success(),
        "GET {url}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e})"))
}

pub(crate) fn get(url: &str) -> (http::StatusCode, bytes::Bytes) {
    request(http::Method::GET, url, &[], None)
}

pub(crate) fn request(
    method: http::Method,
    url: &str,
    headers: &[(http::header::HeaderName, String)],
    json: Option<serde_json::Value>,
) -> (http::StatusCode, bytes::Bytes) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let body = match json {
        Some(j) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            bytes::Bytes::from(j.to_string())
        }
        None => bytes::Bytes::new(),
    };
    let req = req.body(body).unwrap_or_else(|e| panic!("{url}: {e}"));
    let client = commands::http::HttpClient::tcp().with_timeout(Duration::from_secs(60));
    let resp = rt
        .block_on(client.send(req))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    (resp.status, resp.body)
}

/// Posts a push event for `commit` of `repo` on `git_ref`; the job's id.
pub(crate) fn post_push(ci: &str, repo: &str, git_ref: &str, commit: &str) -> i64 {
    let event = serde_json::json!({
        "repo": repo, "ref": git_ref, "old": "0".repeat(40), "new": commit,
    });
    let (status, body) = request(
        http::Method::POST,
        &format!("{ci}/hooks/push"),
        &[],
        Some(event),
    );
    assert_eq!(status, http::StatusCode::ACCEPTED, "{body:?}");
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["jobId"]
        .as_i64()
        .unwrap()
}

/// Waits until job `id` is final and returns it.
pub(crate) fn wait_job(ci: &str, id: i64, timeout: Duration) -> serde_json::Value {
    wait_until(timeout, &format!("job {id} to finish"), || {
        let j = get_json(&format!("{ci}/jobs/{id}"));
        matches!(
            j["state"].as_str(),
            Some("succeeded" | "built-not-deployed" | "failed" | "superseded" | "cancelled")
        )
        .then_some(j)
    })
}

/// The job ci_service created for `commit`.
pub(crate) fn job_for(ci: &str, commit: &str) -> i64 {
    wait_until(
        Duration::from_secs(10),
        &format!("a job for {commit}"),
        || {
            let jobs = get_json(&format!("{ci}/jobs"));
            jobs.as_array()
                .unwrap()
                .iter()
                .find(|j| j["commit"] == commit)
                .map(|j| j["id"].as_i64().unwrap())
        },
    )
}

pub(crate) fn log(ci: &str, id: i64) -> String {
    String::from_utf8_lossy(&get(&format!("{ci}/jobs/{id}/log")).1).into_owned()
}

/// Makes the web image's build wait until the returned gate file exists,
/// with a marker that keeps the derivation unique to this test; commits
/// it. ci_service builds in the sandbox, so the gate's directory is made
/// visible there through the host's nix.conf (`extra-sandbox-paths`, the
/// administrator's setting, never the pusher's).
pub(crate) fn gate_the_build(h: &repo_outils::testing::HermeticNix, repo: &Repo) -> PathBuf {
    let gates = h.dir().join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    let conf = h.conf_dir().join("nix.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("extra-sandbox-paths = {}\n", gates.display()));
    std::fs::write(&conf, text).unwrap();
    let gate = gates.join("gate");
    let marker = format!("{}-{}", std::process::id(), commands::telemetry::now_ms());
    let vms = repo.work.join("vms.nix");
    let text = std::fs::read_to_string(&vms).unwrap().replacen(
        "hello from web v1",
        &format!("slow {marker}"),
        1,
    );
    std::fs::write(&vms, text).unwrap();
    let image = repo.work.join("image.nix");
    let text = std::fs::read_to_string(&image).unwrap();
    // Bounded (60 s) so a failed test leaves no builder spinning.
    let wait = format!(
        r#"n=0; while [ ! -e {} ] && [ $n -lt 1200 ]; do /bin/sleep 0.05; n=$((n+1)); done; echo "$content" > "$out""#,
        gate.display()
    );
    let slow = text.replacen(r#"echo "$content" > "$out""#, &wait, 1);
    assert_ne!(slow, text, "image.nix changed shape; update this test");
    std::fs::write(&image, slow).unwrap();
    git(&repo.work, &["commit", "-q", "-am", "slow build"]);
    gate
}

/// Posts a push event (no hook secret) for a repository that does not
/// exist under `h`; the job it queues fails at fetch. Returns its id.
pub(crate) fn push_event_for_missing_repo(h: &repo_outils::testing::HermeticNix, url: &str) -> i64 {
    let event = serde_json::json!({
        "repo": h.dir().join("missing.git").display().to_string(),
        "ref": "refs/heads/main", "old": "0".repeat(40), "new": "a".repeat(40),
    });
    let (status, body) = request(
        http::Method::POST,
        &format!("{url}/hooks/push"),
        &[],
        Some(event),
    );
    assert_eq!(status, http::StatusCode::ACCEPTED, "{body:?}");
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["jobId"]
        .as_i64()
        .unwrap()
}
