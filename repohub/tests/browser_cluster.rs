//! Browser test of the cluster views with real binaries: a control plane
//! and two workers running VMs on ch-sim (testkit's `Cluster`, real tokens),
//! the real `repohub` binary reading them with an admin token, and headless
//! Chromium. The cluster page shows both workers and their VMs; the VM
//! page shows the serial console and follows it; then a worker is killed
//! and the (self-refreshing) cluster page names it unhealthy within the
//! heartbeat timeout plus repohub's status TTL and refresh period. Every
//! page is checked for horizontal scroll at 1280 px and screenshotted under
//! `target/test-artifacts/repohub/`.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::webdriver::Driver;
use support::{artefacts, create_admin};
use testkit::cluster::{Cluster, ClusterOpts, WorkerOpts};
use testkit::fs::free_port;
use testkit::process::kill_mentioning;
use testkit::services::ControlPlaneArgs;
use testkit::{Log, Proc, bin, wait_until};

const HEARTBEAT_TIMEOUT_MS: u64 = 1500;
/// repohub serves one status per TTL (3 s by default) and the page redraws
/// itself every 3 s: on top of the heartbeat timeout, that is how late the
/// page may name a dead worker (plus a little for the browser).
const PAGE_DELAY_MS: u64 = 3000 + 3000 + 2000;

fn start_cluster() -> Cluster {
    let mut opts = ClusterOpts::new(
        ["host-a", "host-b"]
            .into_iter()
            .map(|id| WorkerOpts::quick(id, 4, 2048))
            .collect(),
    );
    opts.control_plane = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(HEARTBEAT_TIMEOUT_MS),
        long_poll_timeout_ms: Some(5000),
        ..ControlPlaneArgs::default()
    };
    opts.fixture_store = true;
    opts.tokens = true;
    Cluster::start(opts, |_, real| real.to_owned())
}

/// `pcr-test publish-state` of web-0 and web-1 (their guests print a tick
/// line every 300 ms) as generation 1 of project `shop`.
fn publish(c: &Cluster, dir: &Path) {
    let specs = dir.join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    for name in ["web-0", "web-1"] {
        let spec = testkit::fixtures::spec_json(name, "console=ttyS0 ch_sim.tick_ms=300");
        std::fs::write(specs.join(format!("{name}.json")), spec.to_string()).unwrap();
    }
    let out = Command::new(bin("pcr-test"))
        .env("PCR_TOKEN_FILE", c.admin_token_file().unwrap())
        .env_remove("PCR_TOKEN")
        .args([
            "--control-plane",
            &c.cp.addr,
            "publish-state",
            "--project",
            "shop",
        ])
        .args(["--commit", "c0ffee1", "--generation", "1", "--specs"])
        .arg(&specs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The repohub binary against the cluster's control plane, with the admin
/// token (status and, through getWorker, the consoles); stopped on drop.
async fn start_repohub(dir: &Path, c: &Cluster) -> (Proc, String) {
    let port = free_port().port();
    let token = c.admin_token_file().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_repohub"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--control-plane", &c.cp.addr])
        .arg("--control-plane-token-file")
        .arg(&token)
        .args(["--kdf-memory-kib", "1024"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let p = Proc::start("repohub", cmd, Log::Inherit);
    wait_until(Duration::from_secs(20), "repohub listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (p, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_names_a_dead_worker_and_the_vm_page_follows_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start_cluster();
    publish(&c, dir.path());
    create_admin(&dir.path().join("data"), "ops", "correct horse battery");
    let (_hub, base) = start_repohub(dir.path(), &c).await;
    let url = |p: &str| format!("{base}{p}");
    let driver = Driver::start().await;
    let b = driver.session(artefacts()).await;

    b.goto(&url("/login")).await;
    b.fill("#username", "ops").await;
    b.fill("#password", "correct horse battery").await;
    b.click("#submit").await;
    b.wait_text("header", "ops", 10).await;
    b.goto(&url("/new")).await;
    b.fill("#project-name", "shop").await;
    b.click("#create-project").await;
    b.wait_text("h1", "shop", 10).await;

    // Both workers healthy, both VMs converged, by project, with links.
    b.goto(&url("/-/cluster")).await;
    b.wait_text("#cluster-summary", "100%", 30).await;
    for w in ["host-a", "host-b"] {
        b.wait_text(&format!("#worker-{w}"), "healthy", 10).await;
    }
    let workers = b.text("#cluster-workers").await;
    assert!(
        workers.contains("web-0") && workers.contains("web-1"),
        "{workers}"
    );
    assert!(!workers.contains("unhealthy"), "{workers}");
    b.find("#timeline-percent", 10).await;
    assert_eq!(
        b.horizontal_overflow().await,
        0,
        "/-/cluster scrolls sideways"
    );
    b.screenshot("20-cluster").await;

    // The VM page: placement, spec, the console as booted, then followed.
    b.click("a[href='/shop/-/vms/web-0']").await;
    b.wait_text("#vm-placement", "converged", 10).await;
    b.wait_text("#vm-spec", "ch_sim.tick_ms=300", 10).await;
    b.wait_text("#console", "booted kernel=", 10).await;
    b.find("#console[data-state=following]", 10).await;
    let first = b.text("#console").await;
    let ticks = |s: &str| s.matches("[sim] tick").count();
    // New lines arrive while the page is open.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = b.text("#console").await;
        if now != first && ticks(&now) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the console never moved: {now}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        b.horizontal_overflow().await,
        0,
        "the VM page scrolls sideways"
    );
    b.screenshot("21-vm-console").await;

    // The project's own cluster page.
    b.goto(&url("/shop/-/cluster")).await;
    b.wait_text("#cluster-workers", "web-1", 10).await;
    assert_eq!(
        b.horizontal_overflow().await,
        0,
        "/shop/-/cluster scrolls sideways"
    );
    b.screenshot("22-project-cluster").await;

    // Kill the worker running web-0 (and its VMs, as a dead host would):
    // the open cluster page names it unhealthy without a reload.
    b.goto(&url("/-/cluster")).await;
    let victim = if b.text("#worker-host-a").await.contains("web-0") {
        "host-a"
    } else {
        "host-b"
    };
    b.wait_text(&format!("#worker-{victim}"), "web-0", 10).await;
    let killed = Instant::now();
    c.kill_worker(victim);
    kill_mentioning(&c.run_dir(victim).display().to_string());
    b.wait_text(
        &format!("#worker-{victim}"),
        "unhealthy",
        (HEARTBEAT_TIMEOUT_MS + PAGE_DELAY_MS) / 1000 + 1,
    )
    .await;
    let took = killed.elapsed();
    eprintln!("the cluster page named {victim} unhealthy after {took:?}");
    assert!(
        took < Duration::from_millis(HEARTBEAT_TIMEOUT_MS + PAGE_DELAY_MS),
        "named unhealthy after {took:?}"
    );
    let card = b.text(&format!("#worker-{victim}")).await;
    assert!(card.contains("unavailable (worker unhealthy)"), "{card}");
    assert!(card.contains("last seen"), "{card}");
    assert!(
        !card.contains(" free of "),
        "a dead worker's capacity is not free: {card}"
    );
    assert_eq!(b.horizontal_overflow().await, 0);
    b.screenshot("23-cluster-worker-dead").await;
    assert!(artefacts().join("23-cluster-worker-dead.png").exists());
}
