//! Helpers of the worker's integration tests that only the worker needs:
//! ch-sim wrappers carrying fault settings, and a worker process driven
//! through `pcr-worker-test`. Process guards, polling and
//! spec fixtures come from `testkit`.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::fixtures::make_store;
use testkit::services::WorkerArgs;
use testkit::{Log, Proc, Reaper, bin};

pub(crate) fn ch_sim() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ch-sim"))
}

/// A script that runs ch-sim with extra environment (faults for one test
/// without touching this process's environment). `exec` keeps the pid.
pub(crate) fn ch_sim_with_env(dir: &Path, name: &str, env: &[(&str, &str)]) -> PathBuf {
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

/// A worker process plus its address; stopped (not its VMs) on drop.
pub(crate) struct Worker {
    pub(crate) proc: Proc,
    pub(crate) addr: String,
}

pub(crate) fn start_worker(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Worker {
    let mut w = WorkerArgs::new("e2e", &dir.join("run"), &dir.join("store"))
        .args(["--label", "zone=a", "--shutdown-timeout-ms", "500"])
        .args(extra.iter().copied())
        .env("WORKER_CH_BINARY", ch_sim().display().to_string())
        .env("WORKER_SOCKET_TIMEOUT_MS", "2000");
    // The CH binary comes from the environment, so a test may pass its own.
    w.ch_binary = None;
    w.cpu = 16;
    w.memory_mb = 16384;
    for (k, v) in env {
        w = w.env(*k, *v);
    }
    let proc = testkit::services::start_worker(&w, Log::File(dir.join("worker.log")));
    let addr = proc.addr.clone();
    Worker { proc, addr }
}

impl Worker {
    /// Runs pcr-worker-test; Ok(stdout) on success, Err(stderr) otherwise.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bin("pcr-worker-test"))
            .arg("--addr")
            .arg(&self.addr)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            assert_eq!(stderr.lines().count(), 1, "errors are one line: {stderr:?}");
            Err(stderr.trim().to_owned())
        }
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self
            .cli(&a)
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"));
        serde_json::from_str(&out).unwrap()
    }

    pub(crate) fn list(&self) -> Vec<Value> {
        self.json(&["list-vms"]).as_array().unwrap().clone()
    }

    /// SIGTERM and wait for a clean exit.
    pub(crate) fn stop(mut self) {
        let st = self
            .proc
            .terminate(Duration::from_secs(10))
            .expect("worker exits on SIGTERM");
        assert!(st.success(), "worker exit status {st}");
    }
}

/// A temp dir with a store, and the reaper of the ch-sim processes of its
/// run directory (bound after the dir, so it runs before the dir goes).
pub(crate) fn test_dir() -> (tempfile::TempDir, Reaper) {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper(dir.path().join("run").display().to_string());
    make_store(&dir.path().join("store"));
    (dir, reaper)
}

/// Names of the files in the run directory and its `vm/` and `console/`.
pub(crate) fn run_files(dir: &Path) -> Vec<String> {
    let run = dir.join("run");
    ["", "vm", "console"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(run.join(sub)).unwrap())
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

pub(crate) fn write_spec(dir: &Path, file: &str, v: &Value) -> String {
    let p = dir.join(file);
    std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    p.display().to_string()
}
