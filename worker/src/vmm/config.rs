//! Serde types for the parts of cloud-hypervisor's REST API the worker
//! speaks (`../shared/cloud-hypervisor.yaml`, v53), and the mapping from a
//! VmSpec to CH's `VmConfig`.
//!
//! Only the fields the worker sets or reads are modelled; responses carry
//! many more (CH fills in defaults) and unknown fields are ignored on input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disk::DiskMode;
use crate::dto::{VmId, VmSpec};
use crate::vmm::store::HostFiles;

/// `VmConfig`: what `vm.create` takes and `vm.info` returns under `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub payload: PayloadConfig,
    pub cpus: CpusConfig,
    pub memory: MemoryConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    pub serial: ConsoleConfig,
    pub console: ConsoleConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// "Raw" or "Qcow2"; the worker always sets it (design §10: left out,
    /// CH autodetects and then refuses writes to a raw image's sector 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
    /// Lets CH open a qcow2's backing file; without it CH refuses an
    /// overlay at `vm.boot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_files: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngConfig {
    pub src: String,
}

/// `ConsoleMode` of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    Off,
    Pty,
    Tty,
    File,
    Socket,
    Null,
}

/// `SerialConfig` / `ConsoleConfig` (the worker uses only mode and file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    pub mode: ConsoleMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// `VmState` of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChVmState {
    Created,
    Running,
    Shutdown,
    Paused,
}

impl ChVmState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChVmState::Created => "Created",
            ChVmState::Running => "Running",
            ChVmState::Shutdown => "Shutdown",
            ChVmState::Paused => "Paused",
        }
    }
}

/// `VmInfo`: `vm.info`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmInfoResponse {
    pub config: VmConfig,
    pub state: ChVmState,
    #[serde(default)]
    pub memory_actual_size: Option<u64>,
}

/// `VmmPingResponse`: `vmm.ping`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    #[serde(default)]
    pub build_version: Option<String>,
    pub version: String,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub features: Vec<String>,
}

/// `VmCounters`: device id → counter name → value.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// Where one VM's files are on the host (all inside the run directory
/// except the kernel and initrd, which are used in place in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub socket: PathBuf,
    pub metadata: PathBuf,
    pub serial_log: PathBuf,
    pub disk: PathBuf,
    /// How `disk` is made from the store image, and so its `image_type`.
    pub disk_mode: DiskMode,
    pub ch_log: PathBuf,
}

/// Host networking for VMs; `None` (the default) attaches no NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// Prefix of the TAP device names the host module created ("pcr").
    pub prefix: String,
}

impl TapConfig {
    /// A TAP name unique per VM within Linux's 15-byte limit: the prefix and
    /// the random tail of the UUIDv7 (its head is the timestamp, which
    /// repeats between VMs created in the same millisecond).
    pub fn tap_name(&self, id: &VmId) -> String {
        let hex: String = id.as_str().chars().filter(|c| *c != '-').collect();
        let room = 15usize.saturating_sub(self.prefix.len());
        format!("{}{}", self.prefix, &hex[hex.len() - room.min(hex.len())..])
    }

    /// A locally administered MAC derived from the VM id, stable across
    /// adoption so a guest keeps its lease.
    pub fn mac(&self, id: &VmId) -> String {
        let hex: String = id.as_str().chars().filter(|c| *c != '-').collect();
        let tail = &hex[hex.len() - 10..];
        format!(
            "02:{}:{}:{}:{}:{}",
            &tail[0..2],
            &tail[2..4],
            &tail[4..6],
            &tail[6..8],
            &tail[8..10]
        )
    }
}

/// Where a store path would be on this host: under `store_root` (`/` in
/// production; a temp dir in tests, like `nix copy --to DIR`). A plain
/// join, for presence checks only: a file handed to CH is resolved by
/// `store::resolve_spec`.
pub fn host_path(store_root: &Path, store_path: &str) -> PathBuf {
    store_root.join(store_path.trim_start_matches('/'))
}

/// Maps a spec to CH's VmConfig: kernel and initrd in place in the store
/// (their resolved paths, `files`), the VM's own writable disk (a qcow2
/// overlay of the store image, or a raw copy), serial console to the run
/// directory.
pub fn build_vm_config(
    id: &VmId,
    spec: &VmSpec,
    paths: &VmPaths,
    files: &HostFiles,
    tap: Option<&TapConfig>,
) -> VmConfig {
    let path_str = |p: &Path| p.to_string_lossy().into_owned();
    VmConfig {
        payload: PayloadConfig {
            kernel: path_str(&files.kernel),
            initramfs: files.initrd.as_deref().map(path_str),
            cmdline: Some(spec.cmdline().to_owned()).filter(|c| !c.is_empty()),
        },
        cpus: CpusConfig {
            boot_vcpus: spec.cpu(),
            max_vcpus: spec.cpu(),
        },
        memory: MemoryConfig {
            size: spec.memory_mb() * 1024 * 1024,
        },
        disks: files
            .disk_image
            .as_ref()
            .map(|_| {
                vec![DiskConfig {
                    path: path_str(&paths.disk),
                    readonly: None,
                    id: None,
                    image_type: Some(paths.disk_mode.image_type().to_owned()),
                    backing_files: (paths.disk_mode == DiskMode::Overlay).then_some(true),
                }]
            })
            .unwrap_or_default(),
        net: tap
            .map(|t| {
                vec![NetConfig {
                    tap: Some(t.tap_name(id)),
                    mac: Some(t.mac(id)),
                    id: None,
                }]
            })
            .unwrap_or_default(),
        rng: Some(RngConfig {
            src: "/dev/urandom".into(),
        }),
        serial: ConsoleConfig {
            mode: ConsoleMode::File,
            file: Some(path_str(&paths.serial_log)),
        },
        console: ConsoleConfig {
            mode: ConsoleMode::Off,
            file: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dto::VmSpecFields;

    fn spec(disk: bool) -> VmSpec {
        VmSpec::new(VmSpecFields {
            name: "web-0".into(),
            toplevel: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys".into(),
            kernel_path: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel".into(),
            initrd_path: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/initrd".into(),
            disk_image_path: if disk {
                "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-disk/disk.raw".into()
            } else {
                String::new()
            },
            cmdline: "console=ttyS0".into(),
            cpu: 2,
            memory_mb: 128,
            content_hash: "h".into(),
            ..Default::default()
        })
        .unwrap()
    }

    /// The spec's files as resolved beneath `root` (links-free already).
    fn files(root: &str, spec: &VmSpec) -> HostFiles {
        let at = |p: &str| Path::new(root).join(p.trim_start_matches('/'));
        HostFiles {
            kernel: at(spec.kernel_path().as_str()),
            initrd: spec.initrd_path().map(|p| at(p.as_str())),
            disk_image: spec.disk_image_path().map(|p| at(p.as_str())),
        }
    }

    fn paths() -> VmPaths {
        VmPaths {
            socket: "/run/pcr/a.sock".into(),
            metadata: "/run/pcr/a.json".into(),
            serial_log: "/run/pcr/a-serial.log".into(),
            disk: "/run/pcr/a.qcow2".into(),
            disk_mode: DiskMode::Overlay,
            ch_log: "/run/pcr/a-ch.log".into(),
        }
    }

    #[test]
    fn config_matches_the_shape_ch_accepts() {
        let id = VmId::new_v7();
        let c = build_vm_config(
            &id,
            &spec(true),
            &paths(),
            &files("/tmp/root", &spec(true)),
            None,
        );
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["payload"]["kernel"],
            "/tmp/root/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel"
        );
        assert_eq!(
            v["payload"]["initramfs"],
            "/tmp/root/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/initrd"
        );
        assert_eq!(v["payload"]["cmdline"], "console=ttyS0");
        assert_eq!(
            v["cpus"],
            serde_json::json!({"boot_vcpus": 2, "max_vcpus": 2})
        );
        assert_eq!(v["memory"]["size"], 134_217_728u64);
        assert_eq!(
            v["disks"],
            serde_json::json!([{"path": "/run/pcr/a.qcow2", "image_type": "Qcow2", "backing_files": true}])
        );
        let copy = VmPaths {
            disk: "/run/pcr/a.disk".into(),
            disk_mode: DiskMode::Copy,
            ..paths()
        };
        let c = build_vm_config(&id, &spec(true), &copy, &files("/", &spec(true)), None);
        assert_eq!(
            serde_json::to_value(&c.disks).unwrap(),
            serde_json::json!([{"path": "/run/pcr/a.disk", "image_type": "Raw"}])
        );
        assert_eq!(
            v["serial"],
            serde_json::json!({"mode": "File", "file": "/run/pcr/a-serial.log"})
        );
        assert_eq!(v["console"], serde_json::json!({"mode": "Off"}));
        assert!(
            v.get("net").is_none(),
            "no NIC unless the host is set up for TAP"
        );
    }

    #[test]
    fn no_disk_and_tap_when_configured() {
        let id: VmId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap();
        let tap = TapConfig {
            prefix: "pcr".into(),
        };
        let c = build_vm_config(
            &id,
            &spec(false),
            &paths(),
            &files("/", &spec(false)),
            Some(&tap),
        );
        assert!(c.disks.is_empty());
        assert_eq!(
            c.payload.kernel,
            "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel"
        );
        assert_eq!(c.net[0].tap.as_deref(), Some("pcrb302099a8057"));
        assert!(c.net[0].tap.as_ref().unwrap().len() <= 15);
        assert_eq!(c.net[0].mac.as_deref(), Some("02:02:09:9a:80:57"));
    }

    #[test]
    fn parses_a_recorded_vm_info() {
        let body = r#"{"state":"Running","config":{"cpus":{"boot_vcpus":1,"max_vcpus":1,"nested":true},
            "memory":{"size":134217728,"thp":true},"payload":{"kernel":"/k","cmdline":"c"},
            "disks":[{"id":"_disk0","path":"/d","readonly":false,"image_type":"Raw"}],
            "rng":{"pci_segment":0,"src":"/dev/urandom"},"serial":{"file":"/s","mode":"File"},
            "console":{"mode":"Off","pci_segment":0},"pvpanic":false},"memory_actual_size":134217728}"#;
        let info: VmInfoResponse = serde_json::from_str(body).unwrap();
        assert_eq!(info.state, ChVmState::Running);
        assert_eq!(info.config.disks[0].id.as_deref(), Some("_disk0"));
    }
}
