//! End to end with every real binary: the `worker` driving `ch-sim`
//! processes, driven through `pcr-worker-test`. Creates, lists,
//! pauses/resumes, reads logs, deletes, sees a kill -9 as a failure,
//! survives a worker restart by adopting the live VMs, and refuses bad
//! input with precise errors while leaving the table as it was.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run_files, start_worker, test_dir, write_spec};
use serde_json::{Value, json};
use testkit::fixtures::spec_json;
use testkit::{alive, bin, kill9, poll};

fn state_of(list: &[Value], id: &str) -> String {
    list.iter()
        .find(|v| v["id"] == id)
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[test]
fn worker_lifecycle_failure_and_adoption_through_the_cli() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let w = start_worker(d, &[], &[]);

    let status = w.json(&["read"]);
    assert_eq!(status["workerId"], "e2e");
    assert_eq!(status["vmCount"], 0);
    assert_eq!(
        status["capacity"],
        serde_json::json!({"cpu": 16, "memoryMb": 16384})
    );
    assert_eq!(status["labels"], serde_json::json!({"zone": "a"}));
    assert_eq!(status["address"], w.addr.as_str());
    let human = w.cli(&["read"]).unwrap();
    assert!(human.contains("capacity:  16 vCPU, 16384 MiB"), "{human}");

    // Three VMs: one spec file with one object, one with a list of two.
    let one = write_spec(d, "a.json", &spec_json("vm-a", "console=ttyS0"));
    let two = write_spec(
        d,
        "bc.json",
        &serde_json::json!([spec_json("vm-b", ""), spec_json("vm-c", "")]),
    );
    let a = w.json(&["create-vm", "--spec", &one]);
    assert_eq!(a[0]["state"], "running");
    let bc = w.json(&["create-vm", "--spec", &two]);
    assert_eq!(bc.as_array().unwrap().len(), 2);
    let list = w.list();
    assert_eq!(list.len(), 3);
    assert!(
        list.iter()
            .all(|v| v["state"] == "running" && v["pid"].as_u64().is_some()),
        "{list:?}"
    );
    let human = w.cli(&["list-vms"]).unwrap();
    assert!(
        human.starts_with("ID ") && human.contains("vm-b") && human.contains("running"),
        "{human}"
    );
    let id_a = a[0]["id"].as_str().unwrap().to_owned();
    let id_b = bc[0]["id"].as_str().unwrap().to_owned();
    let id_c = bc[1]["id"].as_str().unwrap().to_owned();
    // Each VM boots from its own qcow2 overlay of the store image.
    assert!(d.join("run/vm").join(format!("{id_a}.qcow2")).exists());

    // Pause and resume one.
    assert_eq!(w.json(&["pause", &id_a])["state"], "paused");
    let info = w.json(&["info", &id_a]);
    assert_eq!(
        (info["status"]["state"].as_str(), info["chState"].as_str()),
        (Some("paused"), Some("Paused"))
    );
    assert_eq!(
        w.cli(&["resume", &id_a]).unwrap(),
        format!("VM {id_a} is running\n")
    );
    assert_eq!(w.json(&["info", &id_a])["chState"], "Running");

    // Its serial log.
    let logs = w.cli(&["logs", &id_a, "-n", "5"]).unwrap();
    assert!(
        logs.starts_with(&format!("[sim] {id_a} booted kernel=")),
        "{logs}"
    );
    assert!(logs.contains("cmdline=console=ttyS0"), "{logs}");

    // Delete one.
    assert_eq!(
        w.cli(&["delete-vm", &id_c]).unwrap(),
        format!("deleted VM {id_c}\n")
    );
    assert_eq!(w.list().len(), 2);
    assert!(!run_files(d).iter().any(|f| f.starts_with(&id_c)));

    // A third VM whose CH is killed -9 shows as failed within a second.
    let dead = w.json(&[
        "create-vm",
        "--spec",
        &write_spec(d, "d.json", &spec_json("vm-d", "")),
    ]);
    let id_d = dead[0]["id"].as_str().unwrap().to_owned();
    kill9(dead[0]["pid"].as_u64().unwrap() as u32);
    // The bound is loose on purpose: on a loaded 2-core CI machine each
    // CLI start-up can take a while. The manager's unit test holds the
    // detection itself to 1 s.
    let failed = poll(Duration::from_secs(5), || {
        w.list()
            .into_iter()
            .find(|v| v["id"] == id_d.as_str() && v["state"] == "failed")
    })
    .expect("killed CH reported failed");
    assert_eq!(failed["error"], "cloud-hypervisor was killed by signal 9");
    let pids: Vec<(String, u64)> = w
        .list()
        .iter()
        .filter(|v| v["state"] == "running")
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pids.len(), 2);

    // Restart: the two live VMs are adopted with the same CH processes.
    w.stop();
    for (_, pid) in &pids {
        assert!(alive(*pid as u32), "VMs outlive the worker");
    }
    let w = start_worker(d, &[], &[]);
    let list = w.list();
    let mut after: Vec<(String, u64)> = list
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    after.sort();
    let mut before = pids.clone();
    before.sort();
    assert_eq!(after, before, "same VMs, same CH pids: {list:?}");
    assert_eq!(state_of(&list, &id_a), "running");
    // Adopted VMs are fully managed.
    assert_eq!(w.json(&["pause", &id_b])["state"], "paused");
    let logs = w.cli(&["logs", &id_b]).unwrap();
    assert!(logs.contains("booted"), "{logs}");
    for (id, pid) in &after {
        w.cli(&["delete-vm", id]).unwrap();
        assert!(
            poll(Duration::from_secs(10), || (!alive(*pid as u32))
                .then_some(()))
            .is_some()
        );
    }
    assert!(w.list().is_empty());
    let left = run_files(d);
    assert!(left.is_empty(), "run dir not empty: {left:?}");
    w.stop();
}

#[test]
fn bad_input_gets_precise_errors_and_changes_nothing() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let w = start_worker(d, &[], &[]);
    // The example spec the README's demo uses boots as it is.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vm-spec.json");
    let ex = w.json(&["create-vm", "--spec", example]);
    assert_eq!(
        (ex[0]["name"].as_str(), ex[0]["state"].as_str()),
        (Some("hello"), Some("running"))
    );
    w.cli(&["delete-vm", ex[0]["id"].as_str().unwrap()])
        .unwrap();

    let keep = w.json(&[
        "create-vm",
        "--spec",
        &write_spec(d, "keep.json", &spec_json("keep", "")),
    ]);
    let keep_id = keep[0]["id"].as_str().unwrap().to_owned();
    let table = w.list();

    let bad = |name: &str, edit: &dyn Fn(&mut Value), want: &str| {
        let mut v = spec_json(name, "");
        edit(&mut v);
        let err = w
            .cli(&[
                "create-vm",
                "--spec",
                &write_spec(d, &format!("{name}.json"), &v),
            ])
            .unwrap_err();
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{name}: {err}"
        );
    };
    bad(
        "missing",
        &|v| {
            v.as_object_mut().unwrap().remove("kernelPath");
        },
        "missing field `kernelPath`",
    );
    // One field set to a value the worker refuses before any work.
    for (name, field, value, want) in [
        ("cpu0", "cpu", json!(0), "cpu: must be 1..=256, got 0"),
        ("mem0", "memoryMb", json!(0), "memoryMb: must be 1..="),
        ("emptypath", "kernelPath", json!(""), "kernelPath: is empty"),
        ("relpath", "toplevel", json!("nix/store/x"), "toplevel"),
    ] {
        bad(name, &|v| v[field] = value.clone(), want);
    }
    bad(
        "keep",
        &|_| {},
        &format!(
            "already exists: a VM named default/keep with contentHash sha256-keep already exists on this worker (id {keep_id})"
        ),
    );
    bad(
        "nostore",
        &|v| v["kernelPath"] = "/nix/store/9c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-gone/bzImage".into(),
        "failed precondition: preparing the closure failed: /nix/store/9c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-gone is not on this worker",
    );
    // A CH that answers 500 (to vm.boot, per this VM's command line).
    bad(
        "ch500",
        &|v| v["cmdline"] = "ch_sim.fail=vm.boot:500".into(),
        "internal error: booting the VM failed: vm.boot answered 500: Error from API: ch-sim: injected failure of vm.boot",
    );

    let ghost = "01890a5d-ac96-774b-bcce-b302099a8057";
    for cmd in ["delete-vm", "info", "pause", "resume", "logs"] {
        let err = w.cli(&[cmd, ghost]).unwrap_err();
        assert_eq!(
            err,
            format!("error: not found: no VM with id {ghost} on this worker"),
            "{cmd}"
        );
    }
    let err = w.cli(&["delete-vm", "not-an-id"]).unwrap_err();
    assert!(err.contains("is not a VM id"), "{err}");

    // Delete of a VM being created (its boot takes 1.5 s) is refused.
    let slow = write_spec(
        d,
        "slow.json",
        &spec_json("slow", "ch_sim.boot_delay_ms=1500"),
    );
    let (addr, tool) = (w.addr.clone(), bin("pcr-worker-test"));
    let creating = std::thread::spawn(move || {
        Command::new(tool)
            .args(["--addr", &addr, "create-vm", "--spec", &slow])
            .output()
            .unwrap()
    });
    let slow_id = poll(Duration::from_secs(5), || {
        w.list()
            .into_iter()
            .find(|v| v["name"] == "slow" && v["state"] == "creating")
            .map(|v| v["id"].as_str().unwrap().to_owned())
    })
    .expect("slow VM listed as creating");
    let err = w.cli(&["delete-vm", &slow_id]).unwrap_err();
    assert!(err.contains("is still being created"), "{err}");
    assert!(creating.join().unwrap().status.success());
    w.cli(&["delete-vm", &slow_id]).unwrap();

    // Nothing of the failures is left: same table, no stray files or CHs.
    assert_eq!(w.list(), table);
    let files: Vec<String> = run_files(d)
        .into_iter()
        .filter(|f| !f.starts_with(&keep_id))
        .collect();
    assert!(files.is_empty(), "{files:?}");

    // Unreachable worker: one clear line.
    let out = Command::new(bin("pcr-worker-test"))
        .args(["--addr", "127.0.0.1:1", "list-vms"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: cannot connect to 127.0.0.1:1")
    );
    w.stop();
}

#[test]
fn ch_without_socket_times_out_and_stop_vms_on_exit_stops_them() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let wrapper = common::ch_sim_with_env(d, "ch-nosock", &[("CH_SIM_NO_SOCKET", "1")]);
    let w = start_worker(
        d,
        &[
            "--socket-timeout-ms",
            "300",
            "--ch-binary",
            wrapper.to_str().unwrap(),
        ],
        &[],
    );
    let err = w
        .cli(&[
            "create-vm",
            "--spec",
            &write_spec(d, "x.json", &spec_json("x", "")),
        ])
        .unwrap_err();
    assert!(
        err.contains(
            "starting cloud-hypervisor failed: cloud-hypervisor did not open its API socket"
        ),
        "{err}"
    );
    assert!(err.contains("within 300 ms"), "{err}");
    assert!(w.list().is_empty());
    w.stop();

    let w = start_worker(d, &["--stop-vms-on-exit"], &[]);
    let vms = w.json(&[
        "create-vm",
        "--spec",
        &write_spec(
            d,
            "y.json",
            &serde_json::json!([spec_json("y1", ""), spec_json("y2", "")]),
        ),
    ]);
    let pids: Vec<u32> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pid"].as_u64().unwrap() as u32)
        .collect();
    w.stop();
    for pid in pids {
        assert!(!alive(pid), "--stop-vms-on-exit stops VM processes");
    }
    let left = run_files(d);
    assert!(left.is_empty(), "run dir not empty: {left:?}");
}

#[test]
fn restart_kills_a_hypervisor_whose_api_hangs() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let w = start_worker(d, &[], &[]);
    // Once created, this VM's CH never answers vmm.ping again.
    let spec = write_spec(d, "hang.json", &spec_json("hang", "ch_sim.hang=vmm.ping"));
    let vm = w.json(&["create-vm", "--spec", &spec]);
    let pid = vm[0]["pid"].as_u64().unwrap() as u32;
    w.stop();
    assert!(alive(pid));

    // The restarted worker cannot adopt it: it kills it and removes its files.
    let w = start_worker(d, &["--api-timeout-ms", "300"], &[]);
    assert!(w.list().is_empty());
    assert!(
        poll(Duration::from_secs(10), || (!alive(pid)).then_some(())).is_some(),
        "hung CH killed"
    );
    let left = run_files(d);
    assert!(left.is_empty(), "run dir not empty: {left:?}");
    w.stop();
}
