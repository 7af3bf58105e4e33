//! cloud-hypervisor runs unprivileged (issue 14 point 9): the real worker,
//! as root, started with `--vm-user nobody`, runs ch-sim as that user, and
//! the VM still converges. The VM's files are the VM user's and no one
//! else's: its overlay and serial file are 0600, its socket sits in a
//! directory only that user may enter, and the console history the worker
//! keeps is root's. Without `--vm-user` a root worker says it runs CH as
//! root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{start_worker, test_dir, write_spec};
use testkit::fixtures::spec_json;

/// `nobody`, whom every Debian and NixOS host has.
const NOBODY: u32 = 65534;

/// The `Uid:`, `Gid:` and `Groups:` lines of a process.
fn ids_of(pid: u64) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

fn mode_and_owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.permissions().mode() & 0o7777, m.uid())
}

#[test]
fn cloud_hypervisor_runs_as_the_vm_user() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: changing a child's uid needs root");
        return;
    }
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    // The VM user must reach the store (a temp dir is 0700, /nix/store is
    // world-readable) and the run directory's root.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let w = start_worker(d, &["--vm-user", "nobody"], &[]);

    let st = w.json(&[
        "create-vm",
        "--spec",
        &write_spec(d, "a.json", &spec_json("vm-a", "console=ttyS0")),
    ]);
    assert_eq!(st[0]["state"], "running", "{st}");
    let id = st[0]["id"].as_str().unwrap().to_owned();
    let pid = st[0]["pid"].as_u64().unwrap();
    let n = NOBODY.to_string();
    assert_eq!(
        ids_of(pid),
        (
            [n.as_str(); 4].join(" "),
            [n.as_str(); 4].join(" "),
            String::new()
        ),
        "cloud-hypervisor runs as nobody:nogroup with no other group"
    );
    // It booted from its overlay and wrote its console, as nobody.
    let logs = w.cli(&["logs", &id]).unwrap();
    assert!(logs.contains(&format!("[sim] {id} booted")), "{logs}");

    let run = d.join("run");
    assert_eq!(mode_and_owner(&run.join("vm")), (0o700, NOBODY));
    assert_eq!(
        mode_and_owner(&run.join("vm").join(format!("{id}.qcow2"))),
        (0o600, NOBODY)
    );
    let socket = std::fs::symlink_metadata(run.join("vm").join(format!("{id}.sock"))).unwrap();
    assert_eq!(socket.uid(), NOBODY, "CH made its socket as nobody");
    assert_eq!(mode_and_owner(&run.join("console")), (0o711, 0));
    let console = run.join("console");
    assert_eq!(
        mode_and_owner(&console.join(format!("{id}-serial.log"))),
        (0o600, NOBODY)
    );
    assert_eq!(
        mode_and_owner(&console.join(format!("{id}-console.log"))),
        (0o600, 0)
    );
    // The record and CH's own log stay the worker's.
    assert_eq!(mode_and_owner(&run.join(format!("{id}.json"))).1, 0);
    assert_eq!(mode_and_owner(&run.join(format!("{id}-ch.log"))).1, 0);

    assert_eq!(
        w.cli(&["delete-vm", &id]).unwrap(),
        format!("deleted VM {id}\n")
    );
    w.stop();
    let log = std::fs::read_to_string(d.join("worker.log")).unwrap();
    assert!(!log.contains("will run as root"), "{log}");

    // Without --vm-user, a root worker warns once.
    let (other, _reaper2) = test_dir();
    let w = start_worker(other.path(), &[], &[]);
    w.stop();
    let log = std::fs::read_to_string(other.path().join("worker.log")).unwrap();
    assert_eq!(
        log.matches("cloud-hypervisor will run as root").count(),
        1,
        "{log}"
    );
}
