//! Errors a person understands, played against the real binaries: every
//! row of issue 18's table of cryptic errors (a control plane address that
//! answers HTTP, a worker tool pointed at a control plane, a dead worker
//! reached through the control plane, a URL where host:port is expected,
//! a malformed store path, empty and wrongly shaped spec files), with the
//! message asserted; `--version` on every binary; and the renamed flags'
//! old names still accepted.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use testkit::cluster::{Cluster, ClusterOpts, WorkerOpts};
use testkit::services::ControlPlaneArgs;
use testkit::{bin, wait_until};

/// Runs `tool` with `args`; its output, whatever the exit status.
fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(bin(tool))
        .args(args)
        .env_remove("PCR_TOKEN")
        .env_remove("PCR_TOKEN_FILE")
        .env_remove("PCR_CONTROL_PLANE")
        .env_remove("PCR_WORKER_ADDR")
        .output()
        .unwrap()
}

/// `tool args` must fail; its stderr, which must contain `want`.
fn fails_with(tool: &str, args: &[&str], want: &str) -> String {
    let out = run(tool, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{tool} {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains(want),
        "{tool} {args:?}: want {want:?} in {err:?}"
    );
    err
}

/// `tool args` must succeed; its stdout.
fn ok(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_binary_has_version() {
    for tool in [
        "pcr",
        "pcr-test",
        "pcr-worker-test",
        "cache",
        "ci_service",
        "control_plane",
        "worker",
        "repohub",
        "autonix",
    ] {
        let out = ok(tool, &["--version"]);
        let want = format!("{tool} {}", env!("CARGO_PKG_VERSION"));
        assert_eq!(out.trim(), want, "{tool} --version");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// An address nothing listens on.
const NOWHERE: &str = "127.0.0.1:1";

/// `pcr-test publish-state` of `spec` as generation 1 to `cp`.
fn publish_to<'a>(cp: &'a str, spec: &'a str) -> Vec<&'a str> {
    vec![
        "--control-plane",
        cp,
        "publish-state",
        "--commit",
        "c",
        "--generation",
        "1",
        "--spec",
        spec,
    ]
}

#[test]
fn spec_files_that_are_empty_or_of_the_wrong_shape_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let empty = write(d.path(), "empty.json", "[]");
    let number = write(d.path(), "number.json", "42");
    let strings = write(d.path(), "strings.json", r#"["web-0"]"#);
    let object = write(d.path(), "object.json", r#"{"vms": []}"#);
    // Local input is checked before any connection: no server is needed,
    // and the unreachable address proves no call was made.
    let nowhere = NOWHERE;
    let err = fails_with(
        "pcr-test",
        &publish_to(NOWHERE, &empty),
        &format!(
            "no VMs in {empty}; to remove every VM of project default publish with --allow-empty"
        ),
    );
    assert!(!err.contains("RawVmSpec"), "{err}");
    fails_with(
        "pcr-test",
        &publish_to(NOWHERE, &number),
        &format!(
            "{number}: expected a VmSpec object or a JSON array of VmSpec objects, found a number"
        ),
    );
    fails_with(
        "pcr-test",
        &publish_to(NOWHERE, &strings),
        "found an array holding a string",
    );
    fails_with(
        "pcr-test",
        &publish_to(NOWHERE, &object),
        &format!("{object}: the object is not a VM spec: unknown field `vms`"),
    );
    // create-vm with nothing to create fails instead of exiting 0 silently.
    fails_with(
        "pcr-worker-test",
        &["--worker", nowhere, "create-vm", "--spec", &empty],
        &format!("no VMs in {empty}: nothing to create"),
    );
    fails_with(
        "pcr-worker-test",
        &["--worker", nowhere, "create-vm", "--spec", &number],
        "expected a VmSpec object or a JSON array of VmSpec objects, found a number",
    );
}

#[test]
fn a_url_where_an_address_is_expected_gets_the_fix() {
    fails_with(
        "pcr",
        &["--control-plane", "http://127.0.0.1:7000/", "status"],
        "drop the scheme: 127.0.0.1:7000",
    );
    fails_with(
        "pcr-worker-test",
        &["--worker", "http://127.0.0.1:6000", "read"],
        "drop the scheme: 127.0.0.1:6000",
    );
}

/// A control plane with workers host-a and host-b (heartbeat timeout 3 s,
/// three heartbeats: no flapping on a loaded machine)
/// and a cache: a real HTTP server on loopback.
fn cluster() -> Cluster {
    let mut opts = ClusterOpts::new(vec![WorkerOpts::new("host-a"), WorkerOpts::new("host-b")]);
    opts.control_plane = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(3000),
        ..ControlPlaneArgs::default()
    };
    opts.cache = true;
    opts.fixture_store = true;
    Cluster::start(opts, |_, real| real.to_owned())
}

/// Runs `pcr status --watch --interval 1` until it printed `n` statuses
/// (or 20 s passed); how many it printed.
fn watch_status(cp: &str, n: usize) -> usize {
    use std::io::BufRead;
    let mut child = Command::new(bin("pcr"))
        .args([
            "--control-plane",
            cp,
            "status",
            "--watch",
            "--interval",
            "1",
        ])
        .env_remove("PCR_TOKEN")
        .env_remove("PCR_TOKEN_FILE")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("workers:") && tx.send(()).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while seen < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if rx.recv_timeout(left).is_err() {
            break;
        }
        seen += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    seen
}

#[test]
fn the_wrong_server_and_a_dead_worker_are_named() {
    let mut c = cluster();
    let cp = c.cp.addr.clone();
    let http = c.cache().addr.clone();
    let host_a = c.workers["host-a"].1.addr.clone();
    wait_until(Duration::from_secs(30), "2 healthy workers", || {
        let out = ok("pcr", &["--control-plane", &cp, "--json", "workers"]);
        let w: serde_json::Value = serde_json::from_str(&out).unwrap();
        (w.as_array()?
            .iter()
            .filter(|w| w["healthy"] == true)
            .count()
            == 2)
            .then_some(())
    });

    // An HTTP server where a control plane or a worker is expected, and
    // the other Procurator service, both ways; `--addr` is the old name of
    // `--worker` and still works.
    let cases = [
        (
            "pcr",
            "--control-plane",
            &http,
            "status",
            format!("{http} is not a Procurator control plane (it answered HTTP)"),
        ),
        (
            "pcr-worker-test",
            "--worker",
            &http,
            "read",
            format!("{http} is not a Procurator worker (it answered HTTP)"),
        ),
        (
            "pcr-worker-test",
            "--worker",
            &cp,
            "list-vms",
            format!("{cp} is a control plane, not a worker"),
        ),
        (
            "pcr-worker-test",
            "--addr",
            &cp,
            "list-vms",
            format!("{cp} is a control plane, not a worker"),
        ),
        (
            "pcr",
            "--control-plane",
            &host_a,
            "status",
            format!("{host_a} is a worker, not a control plane"),
        ),
    ];
    for (tool, flag, addr, verb, want) in &cases {
        fails_with(tool, &[flag, addr, verb], want);
    }
    // The right one, under both names; a worker without VMs says so.
    for flag in ["--worker", "--addr"] {
        assert_eq!(
            ok("pcr-worker-test", &[flag, &host_a, "list-vms"]),
            "No VMs\n"
        );
    }
    assert_eq!(ok("pcr", &["--control-plane", &cp, "vms"]), "No VMs\n");
    // `workers --wide` adds the allocated side and what workers report.
    let wide = ok("pcr", &["--control-plane", &cp, "workers", "--wide"]);
    let header = wide.lines().next().unwrap();
    for col in [
        "CPU FREE",
        "CPU ALLOC",
        "MEM ALLOC (MiB)",
        "LOAD",
        "MEM USED (MiB)",
    ] {
        assert!(header.contains(col), "{wide}");
    }
    assert!(wide.contains("0/4"), "nothing allocated yet: {wide}");
    let narrow = ok("pcr", &["--control-plane", &cp, "workers"]);
    assert!(!narrow.contains("CPU ALLOC"), "{narrow}");
    // `status --watch` keeps fetching: two statuses within a few seconds.
    assert_eq!(watch_status(&cp, 2), 2);
    // An explicit empty generation is accepted with --allow-empty.
    let d = tempfile::tempdir().unwrap();
    let empty = write(d.path(), "empty.json", "[]");
    let mut args = publish_to(&cp, &empty);
    args.push("--allow-empty");
    let out = ok("pcr-test", &args);
    assert!(out.contains("generation 1: published; 0 placed"), "{out}");

    // `pcr vms` shows each VM's id, the one pcr-worker-test takes.
    let specs = d.path().join("specs");
    testkit::fixtures::write_specs(&specs, &["web-0"], |n| {
        format!("sha256:{n}0123456789abcdef")
    });
    ok(
        "pcr-test",
        &[
            "--control-plane",
            &cp,
            "publish-state",
            "--commit",
            "c2",
            "--generation",
            "2",
            "--specs",
            specs.to_str().unwrap(),
        ],
    );
    let (vm_id, on) = wait_until(Duration::from_secs(30), "web-0 running", || {
        let out = ok("pcr", &["--control-plane", &cp, "--json", "vms"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let vm = &v["vms"][0];
        let id = vm["vmId"].as_str().filter(|id| !id.is_empty())?;
        (vm["drift"] == "converged")
            .then(|| (id.to_owned(), vm["workerId"].as_str().unwrap().to_owned()))
    });
    let table = ok("pcr", &["--control-plane", &cp, "vms"]);
    assert!(table.starts_with("PROJECT  NAME   ID "), "{table}");
    assert!(table.contains(&vm_id), "{table}");
    // The human table shortens the hash to 12 characters, --json keeps it.
    assert!(table.contains(" web-00123456 "), "{table}");
    let addr = c.workers[on.as_str()].1.addr.clone();
    let info = ok("pcr-worker-test", &["--worker", &addr, "info", &vm_id]);
    assert!(info.contains("web-0"), "{info}");

    // A dead worker reached through the control plane is named, with when
    // it was last seen, instead of "Peer disconnected".
    ok(
        "pcr-test",
        &["--control-plane", &cp, "worker", "host-b", "read"],
    );
    c.kill_worker("host-b");
    let err = wait_until(Duration::from_secs(15), "host-b seen as gone", || {
        let out = run(
            "pcr-test",
            &["--control-plane", &cp, "worker", "host-b", "read"],
        );
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    assert!(
        err.contains("worker host-b is not connected (last seen "),
        "{err}"
    );
    assert!(!err.contains("Peer disconnected"), "{err}");
    // `pcr status` names the dead worker once the heartbeat timeout passed.
    wait_until(Duration::from_secs(30), "host-b named unhealthy", || {
        let out = ok("pcr", &["--control-plane", &cp, "status"]);
        out.contains("workers:     1/2 healthy\n  host-b unhealthy: last seen ")
            .then_some(())
    });

    // `cache info` of something that is not a store path says what one is.
    let data = c.cache_data();
    let err = fails_with(
        "cache",
        &[
            "info",
            "--data-dir",
            data.to_str().unwrap(),
            "/nix/store/zzzz",
        ],
        "/nix/store/zzzz is not a store path: expected /nix/store/HASH-NAME",
    );
    assert!(err.contains("32 characters of Nix base32"), "{err}");
}
