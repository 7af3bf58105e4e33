//! Helpers shared by the worker's integration tests: paths of the built
//! binaries, ch-sim wrappers carrying fault settings, process guards and
//! polling.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

pub fn ch_sim() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ch-sim"))
}

/// A script that runs ch-sim with extra environment (faults for one test
/// without touching this process's environment). `exec` keeps the pid.
pub fn ch_sim_with_env(dir: &Path, name: &str, env: &[(&str, &str)]) -> PathBuf {
    let mut script = String::from("#!/bin/sh\n");
    for (k, v) in env {
        script.push_str(&format!("export {k}='{v}'\n"));
    }
    script.push_str(&format!("exec '{}' \"$@\"\n", ch_sim().display()));
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Kills the child on drop so a failing test leaves no process behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 5 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn alive(pid: u32) -> bool {
    worker::procfs::start_time(pid).is_some()
}

pub fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
}

/// Kills every process whose command line mentions `needle` (the ch-sim
/// processes of one test's run directory), so a failed test leaks nothing.
pub fn kill_processes_mentioning(needle: &str) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            kill9(pid);
        }
    }
}

/// The store paths the example specs use, created under `root` (a store
/// root like `nix copy --to DIR` makes).
pub const KERNEL: &str = "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1/bzImage";
pub const INITRD: &str = "/nix/store/2c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-initrd/initrd";
pub const DISK: &str = "/nix/store/3c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-disk/disk.raw";
pub const TOPLEVEL: &str = "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-nixos-system";

pub fn make_store(root: &Path) {
    for (p, body) in [
        (KERNEL, &b"kernel"[..]),
        (INITRD, b"initrd"),
        (DISK, &[0u8; 8192][..]),
    ] {
        let f = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, body).unwrap();
    }
    std::fs::create_dir_all(root.join(TOPLEVEL.trim_start_matches('/'))).unwrap();
}

/// A vmSpec as Nix writes it.
pub fn spec_json(name: &str, cmdline: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "toplevel": TOPLEVEL, "kernelPath": KERNEL, "initrdPath": INITRD,
        "diskImagePath": DISK, "cmdline": cmdline, "cpu": 1, "memoryMb": 128,
        "networkAllowedDomains": [], "contentHash": format!("sha256-{name}"), "labels": {"app": name}
    })
}
