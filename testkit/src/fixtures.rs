//! VM spec fixtures: the store paths the example specs name, a store root
//! holding them, and specs as Rust values and as the JSON Nix writes; and
//! what workers send: registrations and running VMs.

use std::path::Path;

use commands::model::{ObservedVm, Registration};
use commands::types::{
    Labels, Resources, VmId, VmMetrics, VmSpec, VmSpecFields, VmState, VmStatus,
};

pub const TOPLEVEL: &str = "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-nixos-system";
pub const KERNEL: &str = "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1/bzImage";
pub const INITRD: &str = "/nix/store/2c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-initrd/initrd";
pub const DISK: &str = "/nix/store/3c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-disk/disk.raw";

/// Creates the fixture store paths under `root` (a store root like
/// `nix copy --to DIR` makes): kernel, initrd, an 8 KiB disk image and the
/// toplevel directory.
pub fn make_store(root: &Path) {
    for (p, body) in [
        (KERNEL, &b"kernel"[..]),
        (INITRD, b"initrd"),
        (DISK, &[0u8; 8192][..]),
    ] {
        let f = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().expect("a store path has a parent")).unwrap();
        std::fs::write(f, body).unwrap();
    }
    std::fs::create_dir_all(root.join(TOPLEVEL.trim_start_matches('/'))).unwrap();
}

/// The fields of the fixture spec `name` with content hash `hash`: one
/// CPU, 128 MiB, the fixture toplevel and kernel, and a command line that
/// changes with the hash (as a rebuilt system's would).
pub fn spec_fields(name: &str, hash: &str) -> VmSpecFields {
    VmSpecFields {
        name: name.into(),
        toplevel: TOPLEVEL.into(),
        kernel_path: KERNEL.into(),
        cmdline: format!("console=ttyS0 v={hash}"),
        cpu: 1,
        memory_mb: 128,
        content_hash: hash.into(),
        ..Default::default()
    }
}

/// The fixture spec `name` with content hash `hash` (see [`spec_fields`]).
pub fn spec(name: &str, hash: &str) -> VmSpec {
    spec_with(name, hash, |_| {})
}

/// The fixture spec with the fields `edit` changes.
pub fn spec_with(name: &str, hash: &str, edit: impl FnOnce(&mut VmSpecFields)) -> VmSpec {
    let mut f = spec_fields(name, hash);
    edit(&mut f);
    VmSpec::new(f).expect("a valid fixture spec")
}

/// A vmSpec as Nix writes it (JSON), with initrd and disk image, content
/// hash `sha256-<name>` and label `app=<name>`.
pub fn spec_json(name: &str, cmdline: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "toplevel": TOPLEVEL, "kernelPath": KERNEL, "initrdPath": INITRD,
        "diskImagePath": DISK, "cmdline": cmdline, "cpu": 1, "memoryMb": 128,
        "networkAllowedDomains": [], "contentHash": format!("sha256-{name}"), "labels": {"app": name}
    })
}

/// Writes one spec JSON per VM into `dir` (`<name>.json`, as `pcr-test
/// publish-state` reads them); `hash_of` picks each content hash, which
/// also goes into the command line.
pub fn write_specs(dir: &Path, names: &[&str], hash_of: impl Fn(&str) -> String) {
    std::fs::create_dir_all(dir).unwrap();
    for name in names {
        let hash = hash_of(name);
        let spec = serde_json::json!({
            "name": name, "toplevel": TOPLEVEL, "kernelPath": KERNEL, "initrdPath": INITRD,
            "cmdline": format!("console=ttyS0 build={hash}"), "cpu": 1, "memoryMb": 128,
            "contentHash": hash,
        });
        std::fs::write(dir.join(format!("{name}.json")), spec.to_string()).unwrap();
    }
}

/// A worker's registration: `cpu` cores and `memory_mb` of capacity, no labels.
pub fn registration(id: &str, address: String, cpu: u32, memory_mb: u64) -> Registration {
    Registration {
        worker_id: id.parse().expect("worker id"),
        address,
        capacity: Resources { cpu, memory_mb },
        labels: Labels::new(),
    }
}

/// Simulated worker `i` of a load benchmark: id `sim-NNNN`, its own
/// 10.1.x.y address, 64 cores and 64 GiB.
pub fn sim_worker(i: usize) -> Registration {
    let address = format!("10.1.{}.{}:6000", i / 250, i % 250);
    registration(&format!("sim-{i:04}"), address, 64, 65536)
}

/// The fixture spec `name` at `hash`, published for `project`.
pub fn project_spec(project: &str, name: &str, hash: &str) -> VmSpec {
    spec(name, hash).with_project(project.parse().expect("project name"))
}

/// A running one-core VM `name` at `hash` of the default project, as its
/// worker reports it.
pub fn running_vm(id: VmId, name: &str, hash: &str, memory_mb: u64) -> ObservedVm {
    ObservedVm {
        status: VmStatus {
            id,
            project: Default::default(),
            name: name.parse().expect("VM name"),
            content_hash: hash.into(),
            state: VmState::Running,
            pid: Some(1),
            error: String::new(),
            created_at_ms: 0,
            cpu: 1,
            memory_mb,
            health: Default::default(),
            health_detail: String::new(),
            healthy_since_ms: None,
        },
        metrics: VmMetrics::default(),
    }
}
