//! Browser tests: headless Chromium (Debian's chromium + chromium-driver)
//! against the real `repohub` binary, with a test ci_service and a real
//! Cap'n Proto control plane in the test. Signup is closed (the page says
//! so); the operator makes the admin with `repohub admin create-user`, who
//! logs in, creates a project and a repository, get a token, `git push` over HTTP, see the commit, the CI
//! job (and its live log) and the cluster panel; then the control plane
//! goes away and the panel says so. A screenshot of each page is kept
//! under `target/test-artifacts/repohub/`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::webdriver::Driver;
use support::{
    CI_SECRET, FakeCi, FakeMaster, artefacts, auth_url, create_admin, push_main, work_repo,
};
use testkit::fs::free_port;
use testkit::{Log, Proc};

/// The repohub process (stopped on drop) and its base URL.
struct Repohub {
    _proc: Proc,
    base: String,
}

impl Repohub {
    async fn start(dir: &std::path::Path, ci: &str, control_plane: &str) -> Self {
        let secret = dir.join("ci-secret");
        std::fs::write(&secret, format!("{CI_SECRET}\n")).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let port = free_port().port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_repohub"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--ci-url", ci, "--control-plane", control_plane])
            .arg("--ci-secret-file")
            .arg(&secret)
            // Cheap KDF and fast retries for the test only; defaults stay strong.
            .args(["--kdf-memory-kib", "1024", "--retry-initial-ms", "100"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        let me = Repohub {
            // It prints no address: the port is polled below.
            _proc: Proc::start("repohub", cmd, Log::Inherit),
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "repohub did not start listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        me
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_up_pushes_and_watches_ci_and_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    create_admin(&dir.path().join("data"), "ann", "correct horse battery");
    let ci = FakeCi::start().await;
    let master = FakeMaster::start();
    let hub = Repohub::start(dir.path(), &ci.url(), &master.addr.to_string()).await;
    let driver = Driver::start().await;
    let b = driver.session(artefacts()).await;
    let url = |p: &str| format!("{}{p}", hub.base);

    // Signup is closed; the admin the operator made logs in.
    b.goto(&url("/signup")).await;
    b.wait_text("main", "Sign-up is closed", 10).await;
    b.screenshot("01-signup-closed").await;
    b.goto(&url("/login")).await;
    b.fill("#username", "ann").await;
    b.fill("#password", "correct horse battery").await;
    b.click("#submit").await;
    b.wait_text("header", "ann", 10).await;
    b.screenshot("02-home").await;

    // Create a project and a repository.
    b.goto(&url("/new")).await;
    b.fill("#project-name", "shop").await;
    b.fill("#project-description", "the <shop> project").await;
    b.screenshot("03-new-project").await;
    b.click("#create-project").await;
    b.wait_text("h1", "shop", 10).await;
    b.fill("#repo-name", "infra").await;
    b.click("#create-repo").await;
    b.find("#empty-repo", 10).await;
    b.screenshot("04-empty-repo").await;

    // A personal access token for git.
    b.goto(&url("/settings/tokens")).await;
    b.fill("#token-name", "laptop").await;
    b.click("#create-token").await;
    let token = b.text("#new-token").await.trim().to_owned();
    assert_eq!(token.len(), 43, "{token:?}");
    b.screenshot("05-token").await;

    // git push over HTTP with that token.
    let work = work_repo(
        dir.path(),
        &[
            (
                "README.md",
                b"# Shop infra\n\nDeployed by **Procurator**.\n",
            ),
            ("flake.nix", b"{\n  outputs = { self }: { };\n}\n"),
            ("src/app.py", b"print('hello')\n"),
        ],
        "Initial infra <commit>",
    );
    push_main(
        &work,
        &auth_url(&hub.base, "ann", &token, "/shop/infra.git"),
    )
    .await;

    // The commit in the log, the README and the files.
    b.goto(&url("/shop/infra/log/main")).await;
    b.wait_text("#commits", "Initial infra <commit>", 10).await;
    b.screenshot("06-log").await;
    b.click("#commits a").await;
    b.wait_text("#commit-message", "Initial infra <commit>", 10)
        .await;
    b.wait_text("#changed", "flake.nix", 10).await;
    b.screenshot("06b-commit").await;
    // The repository, a directory and a file: each page, what it must show
    // and its screenshot.
    for (path, css, text, shot) in [
        (
            "/shop/infra",
            "#readme",
            "Deployed by Procurator.",
            "07-repo",
        ),
        ("/shop/infra/tree/main/src", "#tree", "app.py", "08-tree"),
        (
            "/shop/infra/tree/main/src/app.py",
            "#blob",
            "print('hello')",
            "08b-file",
        ),
    ] {
        b.goto(&url(path)).await;
        b.wait_text(css, text, 10).await;
        b.screenshot(shot).await;
    }

    // The project page: the flake, the CI job the push created (the panel
    // refreshes itself), the VM specs and the cluster from the control plane.
    b.goto(&url("/shop")).await;
    b.wait_text("#flake", "outputs", 10).await;
    b.wait_text("#ci-panel", "succeeded", 20).await;
    // shop's VMs, quota and usage; nothing of the other project.
    b.wait_text("#cluster-vms", "web-1", 10).await;
    b.wait_text("#cluster-workers", "unhealthy", 10).await;
    b.wait_text("#cluster-quota", "4/8 vCPU", 10).await;
    assert!(!b.source().await.contains("intruder-0"));
    let src = b.source().await;
    assert!(
        src.contains("the &lt;shop&gt; project"),
        "description escaped"
    );
    assert_eq!(ci.pushes().len(), 1, "one push, one notification");
    assert_eq!(ci.pushes()[0]["ref"], "refs/heads/main");
    // infra, the project's first repository, is its deploy repository.
    assert_eq!(ci.pushes()[0]["project"], "shop");
    assert_eq!(ci.pushes()[0]["deploy_ref"], "refs/heads/main");
    b.wait_text("#deploy-target", "refs/heads/main", 10).await;
    b.goto(&url("/shop")).await;
    b.wait_text("#vm-specs", "web-1", 10).await;
    b.screenshot("09-project").await;

    // The job page follows the log live.
    b.click("#ci-jobs a").await;
    // Followed by the page's script until the stream ends.
    b.find("#log[data-state=done]", 15).await;
    let log = b.text("#log").await;
    assert!(
        log.contains("evaluating flake")
            && log.contains("<script>alert(1)</script>")
            && log.contains("published generation"),
        "{log}"
    );
    b.screenshot("10-job").await;

    // A repository without a flake: "Generate flake" runs autonix.
    b.goto(&url("/shop")).await;
    b.fill("#repo-name", "api").await;
    b.click("#create-repo").await;
    b.find("#empty-repo", 10).await;
    let api = work_repo(
        dir.path(),
        &[
            (
                "Cargo.toml",
                b"[package]\nname = \"api\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
            ),
            ("src/main.rs", b"fn main() {}\n"),
        ],
        "api service",
    );
    push_main(&api, &auth_url(&hub.base, "ann", &token, "/shop/api.git")).await;
    b.goto(&url("/shop/api")).await;
    b.click("#generate-flake").await;
    b.wait_text("#generated-flake", "buildRustPackage", 30)
        .await;
    b.screenshot("11-generated-flake").await;

    // The control plane goes away: the panel says so, the rest still works.
    drop(master);
    b.goto(&url("/shop")).await;
    b.wait_text("#cluster-panel", "control plane unavailable", 10)
        .await;
    b.wait_text("#ci-panel", "succeeded", 10).await;
    b.screenshot("12-control-plane-down").await;
    assert!(artefacts().join("12-control-plane-down.png").exists());

    // Log out and back in.
    b.click("form[action='/logout'] button").await;
    b.find("a[href='/login']", 10).await;
    b.goto(&url("/login")).await;
    b.fill("#username", "ann").await;
    b.fill("#password", "wrong password").await;
    b.click("#submit").await;
    b.wait_text("#form-error", "wrong user name or password", 10)
        .await;
    b.screenshot("13-login-failed").await;
    b.fill("#password", "correct horse battery").await;
    b.click("#submit").await;
    b.wait_text("header", "Log out", 10).await;
}
