//! Connection hardening with the real binaries and over real loopback TCP,
//! each check playing the attack:
//! - 20,000 idle TCP connections to the control plane (more than its
//!   connection limit) do not stop a real worker from registering and a
//!   generation from converging, and the control plane's descriptors stay
//!   bounded.
//!
//! (A worker token on a second connection: `roles.rs`.)

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::fixtures::{make_store, write_specs};
use testkit::process::{open_fds, output_ok, raise_nofile_limit_to};
use testkit::services::{
    ControlPlaneArgs, WorkerArgs, start_control_plane, start_worker, write_token_file,
};
use testkit::{Log, Reaper, bin, wait_until};

const ADMIN: &str = "admin-token-0123456789";
const W1: &str = "worker-w1-token-0123456";
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
    let out = output_ok(
        Command::new(bin(tool))
            .args(["--control-plane", cp])
            .args(args)
            .env("PCR_TOKEN", ADMIN)
            .env_remove("PCR_TOKEN_FILE"),
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
