//! The hermetic example's guest kernel (example/hermetic/guest/pvh.S), built
//! with the real nix client: a valid PVH ELF (its program headers, the Xen
//! PHYS32_ENTRY note and an entry point inside a loaded segment), and, when
//! QEMU is installed, a guest that boots and prints its name on the serial
//! port. Also: ch-sim prints the same line for this kernel.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ch_sim;
use repo_outils::testing::HermeticNix;
use testkit::{Proc, poll, run_ok};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Builds the kernel with nix (design §9's configuration); `None` with a
/// printed reason when nix is not installed.
fn build_kernel() -> Option<PathBuf> {
    if Command::new("nix").arg("--version").output().is_err() {
        eprintln!("SKIP: nix is not installed");
        return None;
    }
    let h = HermeticNix::new().unwrap();
    let image = repo_root().join("example/hermetic/image.nix");
    let out = run_ok(
        "nix build",
        Command::new("nix")
            .args(["build", "--impure", "--json", "--no-link", "--expr"])
            .arg(format!(
                "(import {} {{ system = \"x86_64-linux\"; }}).kernel",
                image.display()
            ))
            .envs(h.env()),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(PathBuf::from(v[0]["outputs"]["out"].as_str().unwrap()))
}

struct Phdr {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The program headers of an x86-64 ELF64 executable.
fn program_headers(elf: &[u8]) -> Vec<Phdr> {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "ELFCLASS64 (what CH's loader reads)");
    assert_eq!(elf[5], 1, "little endian");
    assert_eq!(u16_at(elf, 16), 2, "ET_EXEC");
    assert_eq!(u16_at(elf, 18), 62, "EM_X86_64");
    let (phoff, phentsize, phnum) = (
        u64_at(elf, 32) as usize,
        usize::from(u16_at(elf, 54)),
        usize::from(u16_at(elf, 56)),
    );
    (0..phnum)
        .map(|i| {
            let p = phoff + i * phentsize;
            Phdr {
                kind: u32_at(elf, p),
                offset: u64_at(elf, p + 8),
                paddr: u64_at(elf, p + 24),
                filesz: u64_at(elf, p + 32),
                memsz: u64_at(elf, p + 40),
            }
        })
        .collect()
}

/// The PVH entry point from the notes of a PT_NOTE segment.
fn pvh_entry(elf: &[u8], note: &Phdr) -> Option<u64> {
    let mut at = note.offset as usize;
    let end = at + note.filesz as usize;
    while at + 12 <= end {
        let (namesz, descsz, kind) = (
            u32_at(elf, at) as usize,
            u32_at(elf, at + 4) as usize,
            u32_at(elf, at + 8),
        );
        let name = &elf[at + 12..at + 12 + namesz];
        let desc = at + 12 + namesz.next_multiple_of(4);
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            assert!(descsz == 4 || descsz == 8, "descsz {descsz}");
            return Some(if descsz == 8 {
                u64_at(elf, desc)
            } else {
                u64::from(u32_at(elf, desc))
            });
        }
        at = desc + descsz.next_multiple_of(4);
    }
    None
}

#[test]
fn hermetic_kernel_is_a_pvh_elf_that_boots() {
    let Some(kernel) = build_kernel() else { return };
    let elf = std::fs::read(&kernel).unwrap();
    let phdrs = program_headers(&elf);
    let loads: Vec<_> = phdrs.iter().filter(|p| p.kind == PT_LOAD).collect();
    assert!(!loads.is_empty(), "no PT_LOAD");
    for l in &loads {
        // CH refuses to load below 1 MiB (HIGH_RAM_START).
        assert!(l.paddr >= 1 << 20, "PT_LOAD at {:#x}", l.paddr);
        assert!(l.filesz <= l.memsz);
    }
    let note = phdrs
        .iter()
        .find(|p| p.kind == PT_NOTE)
        .expect("a PT_NOTE segment");
    let entry = pvh_entry(&elf, note).expect("a Xen PHYS32_ENTRY note");
    assert!(
        entry <= u64::from(u32::MAX),
        "entry {entry:#x} is not 32-bit"
    );
    assert!(
        loads
            .iter()
            .any(|l| entry >= l.paddr && entry < l.paddr + l.filesz),
        "entry {entry:#x} is outside every PT_LOAD"
    );
    boot_in_qemu(&kernel);
    ch_sim_prints_the_guest_line(&kernel);
}

/// Boots the kernel in QEMU (TCG, no KVM needed) and waits for its line;
/// skipped with a reason when QEMU is absent (Debian: qemu-system-x86,
/// installed by scripts/install-deps.sh).
fn boot_in_qemu(kernel: &Path) {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: qemu-system-x86_64 is not installed; the real boot is not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("serial.txt");
    let _qemu = Proc::adopt(
        "qemu",
        Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-m", "64", "-kernel"])
            .arg(kernel)
            .args([
                "-append",
                "console=ttyS0 systemd.hostname=web-0 procurator.name=web-7",
            ])
            .args(["-nographic", "-monitor", "none", "-no-reboot", "-serial"])
            .arg(format!("file:{}", out.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The firmware prints first; the guest's line follows on the same port.
    let text = poll(Duration::from_secs(60), || {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        t.contains("is up\n").then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "no guest line within 60 s: {:?}",
            std::fs::read_to_string(&out).unwrap_or_default()
        )
    });
    assert!(
        text.contains("pcr-guest: web-7 is up\n"),
        "procurator.name= wins over systemd.hostname=: {text:?}"
    );
}

/// ch-sim cannot run a kernel; for this one it writes the line the guest
/// prints, so the demo over ch-sim shows what a real CH would.
fn ch_sim_prints_the_guest_line(kernel: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("g.sock");
    let _sim = Proc::adopt(
        "ch-sim",
        Command::new(ch_sim())
            .arg("--api-socket")
            .arg(format!("path={}", socket.display()))
            .spawn()
            .unwrap(),
    );
    poll(Duration::from_secs(5), || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    })
    .unwrap();
    let serial = dir.path().join("g.serial");
    let cfg = serde_json::json!({"payload": {"kernel": kernel, "cmdline": "console=ttyS0 systemd.hostname=db-0"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "memory": {"size": 1 << 27},
        "serial": {"mode": "File", "file": serial}, "console": {"mode": "Off"}});
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = worker::vmm::CloudHypervisorBackend::new(worker::vmm::ChBackendConfig::new(
            "unused".into(),
        ))
        .client_for(&socket);
        let (st, _) = client
            .raw(
                http::Method::PUT,
                "vm.create",
                Some(cfg.to_string().into_bytes()),
            )
            .await
            .unwrap();
        assert_eq!(st.as_u16(), 204);
        let (st, _) = client
            .raw(http::Method::PUT, "vm.boot", None)
            .await
            .unwrap();
        assert_eq!(st.as_u16(), 204);
    });
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.contains("\npcr-guest: db-0 is up\n"), "{text:?}");
}
