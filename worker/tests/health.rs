//! Health checks end to end with the real binaries: the `worker` running
//! `ch-sim` guests that print READY (`pcr.sim.ready=N`), stay silent, or
//! crash (`pcr.sim.crash_after_ms=N`), read through `pcr-worker-test`; a
//! worker restart keeps the verdicts; and a worker registered with the real
//! `control_plane` reports health that `pcr vms` shows.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{start_worker, test_dir, write_spec};
use serde_json::{Value, json};
use testkit::fixtures::spec_json;
use testkit::services::{ControlPlaneArgs, WorkerArgs, start_control_plane};
use testkit::{Log, bin, poll, run_ok};

/// The fixture spec `name` with `cmdline` and a check for `READY` within
/// `deadline_ms`.
fn checked(name: &str, cmdline: &str, deadline_ms: u64) -> Value {
    let mut s = spec_json(name, cmdline);
    s["healthCheck"] = json!({"consoleLine": "READY", "deadlineMs": deadline_ms});
    s
}

fn find<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list:?}"))
}

/// Polls `list()` until VM `name`'s `health` is `want` (20 s at most: CLI
/// start-ups are slow on a loaded CI machine; the deadlines themselves
/// are held by the manager's unit tests).
fn wait_health(list: impl Fn() -> Vec<Value>, name: &str, want: &str) -> Value {
    poll(Duration::from_secs(20), || {
        let l = list();
        let v = find(&l, name).clone();
        (v["health"] == want).then_some(v)
    })
    .unwrap_or_else(|| panic!("{name} never {want}: {:?}", list()))
}

#[test]
fn ready_silent_and_crashing_guests_through_the_cli() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let w = start_worker(d, &[], &[]);
    let specs = json!([
        checked("vm-ready", "console=ttyS0 pcr.sim.ready=200", 20_000),
        checked("vm-silent", "console=ttyS0", 1_500),
        checked(
            "vm-crash",
            "console=ttyS0 pcr.sim.ready=100 pcr.sim.crash_after_ms=1500",
            20_000
        ),
        spec_json("vm-plain", "console=ttyS0 pcr.sim.ready=100"),
    ]);
    let created = w.json(&["create-vm", "--spec", &write_spec(d, "s.json", &specs)]);
    let created = created.as_array().unwrap();
    assert_eq!(find(created, "vm-silent")["health"], "pending");
    assert_eq!(find(created, "vm-plain")["health"], "none");

    let ready = wait_health(|| w.list(), "vm-ready", "healthy");
    assert!(
        ready["healthySinceMs"].as_u64().unwrap() >= ready["createdAtMs"].as_u64().unwrap() + 200,
        "{ready}"
    );
    assert_eq!(ready["healthDetail"], "");
    // vm-silent's neighbours printed READY on their own consoles; that is
    // not its READY.
    let silent = wait_health(|| w.list(), "vm-silent", "unhealthy");
    assert_eq!(
        silent["healthDetail"],
        r#"no "READY" on the console within 1500 ms"#
    );
    assert_eq!(silent["state"], "running", "unhealthy, not failed");

    // Healthy first, then its guest panics and CH exits.
    let crashed = poll(Duration::from_secs(20), || {
        let l = w.list();
        let v = find(&l, "vm-crash").clone();
        (v["state"] == "failed").then_some(v)
    })
    .expect("the crashed guest's VM fails");
    assert_eq!(crashed["health"], "unhealthy");
    let detail = crashed["healthDetail"].as_str().unwrap();
    assert!(
        detail.starts_with("the VM failed: cloud-hypervisor"),
        "{detail}"
    );
    let logs = w
        .cli(&["logs", crashed["id"].as_str().unwrap(), "-n", "3"])
        .unwrap();
    assert!(
        logs.contains("READY") && logs.contains("Kernel panic"),
        "{logs}"
    );

    let human = w.cli(&["list-vms"]).unwrap();
    let header = human.lines().next().unwrap();
    assert!(header.contains(" HEALTH "), "{header}");
    let row = |name: &str| {
        human
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} in {human}"))
            .to_owned()
    };
    assert!(row("vm-ready").contains("  healthy  "), "{human}");
    assert!(
        row("vm-silent").contains("unhealthy") && row("vm-silent").contains("no \"READY\""),
        "{human}"
    );
    assert!(row("vm-plain").contains("running  -  "), "{human}");
    let info = w.cli(&["info", silent["id"].as_str().unwrap()]).unwrap();
    assert!(
        info.contains(r#"unhealthy (no "READY" on the console within 1500 ms)"#)
            && info.contains(r#""READY" within 1500 ms"#),
        "{info}"
    );

    // A restarted worker adopts the VMs with their verdicts.
    w.stop();
    let w = start_worker(d, &[], &[]);
    let list = w.list();
    assert_eq!(find(&list, "vm-ready")["health"], "healthy");
    assert_eq!(
        find(&list, "vm-ready")["healthySinceMs"],
        ready["healthySinceMs"]
    );
    assert_eq!(
        find(&list, "vm-silent")["healthDetail"],
        silent["healthDetail"]
    );
    w.stop();
}

/// Runs `tool` (pcr, pcr-test) against the control plane `cp` without a
/// token (it checks none); its stdout, or a panic with what failed.
fn against(cp: &str, tool: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(bin(tool));
    cmd.arg("--control-plane")
        .arg(cp)
        .args(args)
        .env_remove("PCR_TOKEN")
        .env_remove("PCR_TOKEN_FILE");
    String::from_utf8_lossy(&run_ok(tool, &mut cmd).stdout).into_owned()
}

#[test]
fn the_control_plane_shows_what_the_worker_judged() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let cp = start_control_plane(
        &ControlPlaneArgs {
            long_poll_timeout_ms: Some(2000),
            ..Default::default()
        },
        Log::File(d.join("cp.log")),
    );
    let mut args = WorkerArgs::new("w-health", &d.join("run"), &d.join("store"))
        .args(["--heartbeat-interval-ms", "200"]);
    args.control_plane = Some(cp.addr.clone());
    let _worker = testkit::services::start_worker(&args, Log::File(d.join("worker.log")));

    let specs = d.join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    write_spec(
        &specs,
        "web-0.json",
        &checked("web-0", "console=ttyS0 pcr.sim.ready=100", 20_000),
    );
    write_spec(
        &specs,
        "web-1.json",
        &checked("web-1", "console=ttyS0", 1_000),
    );
    let specs_dir = specs.to_str().unwrap();
    against(
        &cp.addr,
        "pcr-test",
        &[
            "publish-state",
            "--commit",
            "c1",
            "--generation",
            "1",
            "--specs",
            specs_dir,
        ],
    );

    let vms = || -> Vec<Value> {
        let v: Value = serde_json::from_str(&against(&cp.addr, "pcr", &["--json", "vms"])).unwrap();
        v["vms"].as_array().unwrap().clone()
    };
    wait_health(vms, "web-0", "healthy");
    let bad = wait_health(vms, "web-1", "unhealthy");
    assert_eq!(
        bad["healthDetail"],
        r#"no "READY" on the console within 1000 ms"#
    );
    let human = against(&cp.addr, "pcr", &["vms"]);
    assert!(human.lines().next().unwrap().contains("HEALTH"), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.contains("web-1") && l.contains("unhealthy")),
        "{human}"
    );
}
