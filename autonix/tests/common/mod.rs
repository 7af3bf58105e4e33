//! Helpers shared by autonix's integration tests: fixture paths, temp
//! copies, the CLI binary, a hermetic nix environment and snapshots.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn fixtures_dir() -> PathBuf {
    crate_dir().join("tests/fixtures")
}

/// Names of every fixture repository, sorted.
pub(crate) fn fixtures() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Copies `src` into `dst` (files and directories; fixtures hold no links).
pub(crate) fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A temp dir holding a copy of fixture `name` under its own name, so the
/// scan reports the same `name` as the committed snapshot.
pub(crate) fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    copy_dir(&fixtures_dir().join(name), &dst);
    (tmp, dst)
}

pub(crate) fn autonix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autonix"))
        .args(args)
        .output()
        .expect("run autonix")
}

/// Runs a nix command with its own config dir and cache (design §9), so it
/// never touches the machine's nix state or the network.
pub(crate) fn nix(tmp: &Path, program: &str, args: &[&str]) -> Output {
    let conf = tmp.join("nix-conf");
    fs::create_dir_all(&conf).unwrap();
    fs::write(
        conf.join("nix.conf"),
        "build-users-group =\nsubstituters =\nsandbox = false\n",
    )
    .unwrap();
    Command::new(program)
        .args(args)
        .env("NIX_CONF_DIR", &conf)
        .env("XDG_CACHE_HOME", tmp.join("cache"))
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (nix-bin): {e}"))
}

/// Compares `actual` with the committed snapshot, or rewrites it when
/// AUTONIX_UPDATE_SNAPSHOTS=1.
pub(crate) fn check_snapshot(file: &str, actual: &str) -> Result<(), String> {
    let path = crate_dir().join("tests/snapshots").join(file);
    if std::env::var("AUTONIX_UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return Ok(());
    }
    let expected = fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (run with AUTONIX_UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    })?;
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  expected: {a}\n  actual:   {b}", i + 1))
            .collect();
        return Err(format!(
            "{} differs from the output ({} vs {} lines)\n{}",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        ));
    }
    Ok(())
}
