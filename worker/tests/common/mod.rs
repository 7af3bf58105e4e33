//! Helpers of the worker's integration tests that only the worker needs:
//! ch-sim wrappers carrying fault settings. Process guards, polling and
//! spec fixtures come from `testkit`.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
