//! Connection hardening with the real binaries and over real loopback TCP,
//! each check playing the attack:
//! - 20,000 idle TCP connections to the control plane (more than its
//!   connection limit) do not stop a real worker from registering and a
//!   generation from converging, and the control plane's descriptors stay
//!   bounded;
//! - a worker's token used on a second connection cannot take over the
//!   registration while the first connection is open, even reporting the
//!   same address; a token for w1 cannot register w2; once the first
//!   connection closes, the worker may register again.

use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use commands::auth::Authenticator;
use commands::client::{ClientError, MasterClient};
use commands::convert::ErrorCode;
use commands::model::WorkerMetricsView;
use commands::service::worker::{WorkerApi, WorkerCap};
use serde_json::Value;
use testkit::fixtures::{make_store, registration, write_specs};
use testkit::process::{open_fds, raise_nofile_limit_to};
use testkit::services::{
    ControlPlaneArgs, WorkerArgs, start_control_plane, start_worker, write_token_file,
};
use testkit::{Log, Reaper, bin, wait_until};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789";
const W1: &str = "worker-w1-token-0123456";
const W2: &str = "worker-w2-token-0123456";
const WORKER_ADMIN: &str = "worker-admin-token-012345";

const IDLE: usize = 20_000;
/// The flood comes from this many processes: one process may not hold
/// 20,000 sockets here (the hard open-file limit of the test machine).
const FLOOD_PROCS: usize = 4;
const FLOOD_ENV: &str = "PCR_TEST_IDLE_FLOOD";

/// Not a test of its own: the flooding process. When the parent test
/// starts this test binary on it with `PCR_TEST_IDLE_FLOOD=<addr>,<n>`, it
/// opens `n` connections to `addr`, says so on stdout, and holds them
/// until its stdin closes (the parent is done or gone). Without the
/// variable it does nothing.
#[test]
fn idle_flood_process() {
    use std::io::{Read, Write};
    let Ok(job) = std::env::var(FLOOD_ENV) else {
        return;
    };
    let (addr, n) = job.split_once(',').unwrap();
    let n: usize = n.parse().unwrap();
    raise_nofile_limit_to(n as u64 + 256);
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("idle connection {i}: {e}"),
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "flood-open {}", idle.len()).unwrap();
    out.flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(idle);
}

/// Starts the flooding processes against `addr`, `n` connections each, and
/// waits until every one has its connections open.
fn flood(addr: &str, procs: usize, n: usize) -> Vec<std::process::Child> {
    use std::io::BufRead;
    let children: Vec<std::process::Child> = (0..procs)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "idle_flood_process",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(FLOOD_ENV, format!("{addr},{n}"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut children = children;
    for c in &mut children {
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        // The harness may print "test idle_flood_process ... " first.
        let opened = (&mut out)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split_once("flood-open ")
                    .map(|(_, n)| n.trim().to_owned())
            })
            .expect("a flooding process failed before opening its connections");
        assert_eq!(opened, n.to_string());
        // Kept open: the process prints its result when it ends.
        c.stdout = Some(out.into_inner());
    }
    children
}

/// Runs `tool` against the control plane `cp` with the admin token; its
/// stdout, panicking with stderr on failure.
fn admin(tool: &str, cp: &str, args: &[&str]) -> String {
    let out = Command::new(bin(tool))
        .args(["--control-plane", cp])
        .args(args)
        .env("PCR_TOKEN", ADMIN)
        .env_remove("PCR_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(cp: &str) -> Value {
    serde_json::from_str(&admin("pcr", cp, &["--json", "status"])).unwrap()
}

#[test]
fn twenty_thousand_idle_connections_do_not_lock_a_worker_out() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let _reaper = Reaper::new(d);
    let tokens = d.join("cp-tokens");
    write_token_file(&tokens, &[("admin", ADMIN), ("worker:w1", W1)]);
    let cp_args = ControlPlaneArgs {
        args: vec!["--token-file".into(), tokens.display().to_string()],
        ..ControlPlaneArgs::default()
    };
    let cp_proc = start_control_plane(&cp_args, Log::File(d.join("cp.log")));
    let cp = cp_proc.addr.clone();

    // The flood: more idle connections than the control plane holds in
    // all (16,384), none of them ever sending a byte.
    let t = Instant::now();
    let idle = flood(&cp, FLOOD_PROCS, IDLE / FLOOD_PROCS);
    let flood_took = t.elapsed();
    let fds = open_fds(cp_proc.pid());
    assert!(
        fds < 4096,
        "the control plane holds {fds} descriptors under {IDLE} idle connections"
    );

    // A real worker with its own token registers through the flood.
    let store = d.join("store");
    make_store(&store);
    let worker_tokens = d.join("worker-tokens");
    write_token_file(&worker_tokens, &[("admin", WORKER_ADMIN)]);
    let w1_token = d.join("w1-token");
    testkit::fs::write_private(&w1_token, &format!("{W1}\n"));
    let w = WorkerArgs {
        control_plane: Some(cp.clone()),
        ..WorkerArgs::new("w1", &d.join("run"), &store)
    }
    .args(["--heartbeat-interval-ms", "200", "--token-file"])
    .arg(worker_tokens.display().to_string())
    .arg("--cluster-token-file")
    .arg(w1_token.display().to_string());
    let t = Instant::now();
    let _w1 = start_worker(&w, Log::File(d.join("w1.log")));
    let specs = d.join("specs");
    write_specs(&specs, &["web-0", "web-1"], |n| format!("h-{n}"));
    wait_until(Duration::from_secs(20), "w1 to register", || {
        status(&cp)["workers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["workerId"] == "w1"))
            .then_some(())
    });
    admin(
        "pcr-test",
        &cp,
        &[
            "publish-state",
            "--commit",
            "c1",
            "--generation",
            "1",
            "--specs",
            specs.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(20), "generation 1 to converge", || {
        let s = status(&cp);
        (s["convergencePercent"].as_f64() == Some(100.0)
            && s["vms"].as_array().is_some_and(|v| v.len() == 2))
        .then_some(())
    });
    let converged_in = t.elapsed();
    eprintln!(
        "{IDLE} idle connections opened in {flood_took:?}; worker registered and converged in {converged_in:?}; control plane fds {fds}"
    );
    // Closing their stdin ends the flooding processes.
    for mut c in idle {
        drop(c.stdin.take());
        assert!(c.wait_with_output().unwrap().status.success());
    }
}

/// A Worker capability with no methods: registration only needs one.
struct NullWorker;
impl WorkerApi for NullWorker {}

fn refused(e: ClientError) -> String {
    match e {
        ClientError::Refused(f) => {
            assert_eq!(f.code, ErrorCode::PermissionDenied, "{f}");
            f.message
        }
        other => panic!("expected permissionDenied, got {other}"),
    }
}

#[test]
fn a_worker_token_on_another_connection_cannot_take_over_the_registration() {
    commands::rpc::block_on_local(async {
        let text = format!("admin {ADMIN}\nworker:w1 {W1}\nworker:w2 {W2}\n");
        let auth = Authenticator::parse(&text, Path::new("t"), control_plane::ROLES).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        tokio::task::spawn_local(control_plane::run_with_auth(
            control_plane::Config {
                startup_grace: Duration::ZERO,
                ..control_plane::Config::default()
            },
            auth,
            listener,
            shutdown.clone(),
        ));
        let login = |token: &'static str| {
            let addr = addr.clone();
            async move {
                MasterClient::connect_with_token(&addr, Duration::from_secs(5), token)
                    .await
                    .unwrap()
            }
        };
        let reg = registration("w1", "10.0.0.1:6000".into(), 8, 4096);
        let cap = WorkerCap::new(NullWorker);
        let first = login(W1).await;
        first.register(&reg, cap.clone()).await.unwrap();

        // The same token on a second connection, reporting the very same
        // address: refused while the first connection is open.
        let thief = login(W1).await;
        let m = refused(thief.register(&reg, cap.clone()).await.unwrap_err());
        assert!(m.contains("registered on another open connection"), "{m}");
        let m = refused(
            thief
                .push_data("w1", 0, &[], &WorkerMetricsView::default())
                .await
                .unwrap_err(),
        );
        assert!(m.contains("another connection"), "{m}");
        // w2's token cannot register as w1, open connection or not.
        let w2 = login(W2).await;
        let m = refused(w2.register(&reg, cap.clone()).await.unwrap_err());
        assert!(m.contains("belongs to worker w2, not w1"), "{m}");
        // The first connection still reports for w1.
        first
            .push_data("w1", 0, &[], &WorkerMetricsView::default())
            .await
            .unwrap();

        // Once it closes, w1 (reconnected) registers again.
        first.close().await;
        let thief = Rc::new(thief);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match thief.register(&reg, cap.clone()).await {
                Ok(()) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the id stayed bound to a closed connection: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        thief
            .push_data("w1", 0, &[], &WorkerMetricsView::default())
            .await
            .unwrap();
        shutdown.cancel();
    });
}
