//! The worker trusts nothing a spec says about the host (issue 14 point 1,
//! design §11): the real worker on ch-sim, driven by `pcr-worker-test`,
//! gets closures whose kernel, initrd or disk image is a link to a host
//! file, a chain out through `..`, a link to another VM's overlay in the
//! run directory, a fifo, a directory, `/dev/null`, or a qcow2 image whose
//! backing file is a host file. Each is refused with the spec field and
//! path named, and no hypervisor process starts; links that stay inside
//! the store (absolute `/nix/store/…` and relative) work, and CH is given
//! the real path they resolve to.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, makedev};

use common::{Worker, ch_sim, run_files, start_worker, test_dir, write_spec};
use serde_json::Value;
use testkit::fixtures::{DISK, INITRD, KERNEL, spec_json};

/// Why a link out of the store is refused: read inside the store root, its
/// target is not there.
const NOWHERE: &str = "is a link to nothing inside the store root";

/// The store path of the attacker's closure.
const EVIL: &str = "/nix/store/9c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-evil";

/// A ch-sim wrapper that appends a line to `dir/ch-starts` each time a
/// hypervisor process is started, then becomes ch-sim.
fn counting_ch(dir: &Path) -> PathBuf {
    let path = dir.join("counting-ch");
    let script = format!(
        "#!/bin/sh\necho start >> '{}'\nexec '{}' \"$@\"\n",
        dir.join("ch-starts").display(),
        ch_sim().display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn ch_starts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("ch-starts"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The host directory of a store path under the test's store root.
fn host(dir: &Path, store_path: &str) -> PathBuf {
    dir.join("store").join(store_path.trim_start_matches('/'))
}

fn mknod(path: &Path, kind: FileType, dev: u64) {
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, Mode::from_raw_mode(0o600), dev).unwrap();
}

/// Creates a VM from the fixture spec with `field` set to `value`.
fn create(w: &Worker, dir: &Path, name: &str, field: &str, value: &str) -> Result<Value, String> {
    let mut spec = spec_json(name, "console=ttyS0");
    spec[field] = value.into();
    let file = write_spec(dir, &format!("{name}.json"), &spec);
    w.cli(&["--json", "create-vm", "--spec", &file])
        .map(|out| serde_json::from_str(&out).unwrap())
}

#[test]
fn spec_paths_resolve_only_inside_the_store() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let ch = counting_ch(d);
    let w = start_worker(d, &[], &[("WORKER_CH_BINARY", ch.to_str().unwrap())]);

    // A VM whose overlay another closure will point at.
    let victim = w.json(&[
        "create-vm",
        "--spec",
        &write_spec(d, "victim.json", &spec_json("victim", "")),
    ]);
    let victim_id = victim[0]["id"].as_str().unwrap().to_owned();
    let victim_disk = d.join("run/vm").join(format!("{victim_id}.qcow2"));
    assert!(victim_disk.exists());
    assert_eq!(ch_starts(d), 1);

    // The attacker's closure. A host file stands in for /etc/shadow.
    let secret = d.join("shadow");
    std::fs::write(&secret, "root:$6$secret").unwrap();
    let evil = host(d, EVIL);
    std::fs::create_dir_all(&evil).unwrap();
    symlink(&secret, evil.join("host-file")).unwrap();
    symlink("../../../../../../../../shadow", evil.join("up")).unwrap();
    symlink("up", evil.join("chain")).unwrap();
    symlink(&victim_disk, evil.join("victim-abs")).unwrap();
    symlink(
        format!("../../../run/vm/{victim_id}.qcow2"),
        evil.join("victim-rel"),
    )
    .unwrap();
    std::fs::create_dir(evil.join("dir")).unwrap();
    mknod(&evil.join("fifo"), FileType::Fifo, 0);
    symlink("/dev/null", evil.join("null")).unwrap();
    // A qcow2 image whose backing file is a host file: CH would open it.
    let mut qcow2 = b"QFI\xfb\0\0\0\x03".to_vec();
    qcow2.extend_from_slice(&512u64.to_be_bytes());
    qcow2.extend_from_slice(&(secret.as_os_str().len() as u32).to_be_bytes());
    qcow2.resize(512, 0);
    qcow2.extend_from_slice(secret.as_os_str().as_encoded_bytes());
    std::fs::write(evil.join("backed.qcow2"), &qcow2).unwrap();
    // /dev/null as the store root's own /dev/null: a device, even there.
    std::fs::create_dir_all(d.join("store/dev")).unwrap();
    mknod(
        &d.join("store/dev/null"),
        FileType::CharacterDevice,
        makedev(1, 3),
    );

    let cases = [
        ("kernelPath", "host-file", NOWHERE),
        ("initrdPath", "host-file", NOWHERE),
        ("diskImagePath", "host-file", NOWHERE),
        ("diskImagePath", "chain", NOWHERE),
        ("diskImagePath", "victim-abs", NOWHERE),
        ("diskImagePath", "victim-rel", NOWHERE),
        ("diskImagePath", "dir", "is a directory, not a regular file"),
        ("kernelPath", "fifo", "is a fifo, not a regular file"),
        (
            "diskImagePath",
            "null",
            "is a character device, not a regular file",
        ),
    ];
    for (i, (field, file, why)) in cases.iter().enumerate() {
        let path = format!("{EVIL}/{file}");
        let err = create(&w, d, &format!("evil-{i}"), field, &path).unwrap_err();
        assert!(
            err.contains(&format!("{field} {path} {why}")),
            "{field} -> {file}: {err}"
        );
        assert_eq!(
            ch_starts(d),
            1,
            "no hypervisor started for {field} -> {file}"
        );
    }
    // Nothing of the refused VMs is left, and the victim runs on.
    let files = run_files(d);
    assert!(
        files.iter().all(|f| f.starts_with(&victim_id)),
        "left in the run directory: {files:?}"
    );
    let list = w.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "running");

    // Links that stay in the store work: an absolute /nix/store link and a
    // relative one, and CH is given the file they resolve to.
    let good = host(d, "/nix/store/8c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-good");
    std::fs::create_dir_all(&good).unwrap();
    symlink(KERNEL, good.join("kernel")).unwrap();
    symlink(
        format!("../{}", INITRD.trim_start_matches("/nix/store/")),
        good.join("initrd"),
    )
    .unwrap();
    symlink(
        format!("../{}", DISK.trim_start_matches("/nix/store/")),
        good.join("disk.raw"),
    )
    .unwrap();
    let mut spec = spec_json("good", "console=ttyS0");
    let g = "/nix/store/8c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-good";
    spec["kernelPath"] = format!("{g}/kernel").into();
    spec["initrdPath"] = format!("{g}/initrd").into();
    spec["diskImagePath"] = format!("{g}/disk.raw").into();
    let ok = w.json(&["create-vm", "--spec", &write_spec(d, "good.json", &spec)]);
    assert_eq!(ok[0]["state"], "running", "{ok}");
    assert_eq!(ch_starts(d), 2);
    let id = ok[0]["id"].as_str().unwrap();
    let real_kernel = host(d, KERNEL).canonicalize().unwrap();
    let logs = w.cli(&["logs", id, "-n", "5"]).unwrap();
    assert!(
        logs.contains(&format!("kernel={}", real_kernel.display())),
        "CH must get the resolved kernel: {logs}"
    );
    // The overlay's backing file is the resolved image, not the link.
    let overlay = std::fs::read(d.join("run/vm").join(format!("{id}.qcow2"))).unwrap();
    let real_disk = host(d, DISK).canonicalize().unwrap();
    let name = real_disk.as_os_str().as_encoded_bytes();
    assert!(
        overlay.windows(name.len()).any(|w| w == name),
        "the overlay names {}",
        real_disk.display()
    );
    w.stop();
}
