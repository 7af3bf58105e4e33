//! Hostile trees: symlink loops, links leaving the root, huge files, FIFOs,
//! non-UTF-8 names, unreadable files and very deep nesting must become
//! warnings (or be skipped), never crashes or hangs, and scanning must not
//! change the scanned tree. Links are made here, in a temp dir, because git
//! fixtures cannot hold them portably.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use common::*;

/// Scans on another thread so a hang fails the test instead of blocking it.
fn scan_with_timeout(root: &Path) -> autonix::Scan {
    let (tx, rx) = mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(autonix::scan(&root));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("scan hung")
        .expect("scan failed")
}

/// Asserts that the scan warned about `path` with a message containing
/// `needle`, showing every warning when it did not.
#[track_caller]
fn assert_warned(scan: &autonix::Scan, path: &str, needle: &str) {
    assert!(
        scan.warnings
            .iter()
            .any(|w| w.path == path && w.message.contains(needle)),
        "no warning on {path} containing {needle:?}: {:?}",
        scan.warnings
    );
}

/// Every entry under `root` (without following links) with its size and
/// modification time.
fn state(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = fs::symlink_metadata(&dir).unwrap();
        out.insert(dir.clone(), (meta.len(), meta.modified().unwrap()));
        if !meta.is_dir() {
            continue;
        }
        for e in fs::read_dir(&dir).unwrap() {
            stack.push(e.unwrap().path());
        }
    }
    out
}

#[test]
fn hostile_tree_becomes_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("package.json"), r#"{"name":"secret"}"#).unwrap();
    let root = tmp.path().join("repo");
    fs::create_dir_all(root.join("app/src")).unwrap();
    fs::write(
        root.join("app/Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"1.0.0\"\n",
    )
    .unwrap();
    fs::write(root.join("app/src/main.rs"), "fn main() {}\n").unwrap();

    // Symlink loops: two file links pointing at each other, and directory
    // links back up the tree.
    fs::create_dir_all(root.join("loops")).unwrap();
    symlink("package.json", root.join("loops/Cargo.toml")).unwrap();
    symlink("Cargo.toml", root.join("loops/package.json")).unwrap();
    symlink("..", root.join("loops/up")).unwrap();
    symlink(&root, root.join("loops/root")).unwrap();
    // Links leaving the root: a directory and a manifest.
    fs::create_dir_all(root.join("escape")).unwrap();
    symlink(&outside, root.join("escape/outside-dir")).unwrap();
    symlink(
        outside.join("package.json"),
        root.join("escape/package.json"),
    )
    .unwrap();
    // A manifest linked from inside the root is read.
    fs::create_dir_all(root.join("linked")).unwrap();
    symlink("../app/Cargo.toml", root.join("linked/Cargo.toml")).unwrap();
    // Dangling link.
    symlink("does-not-exist", root.join("app/go.mod")).unwrap();
    // A huge manifest (sparse, so the test stays fast).
    fs::create_dir_all(root.join("huge")).unwrap();
    let f = fs::File::create(root.join("huge/package.json")).unwrap();
    f.set_len(64 * 1024 * 1024).unwrap();
    // A FIFO named like a manifest would block a naive reader forever.
    fs::create_dir_all(root.join("fifo")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.join("fifo/pyproject.toml"))
        .status()
        .unwrap();
    assert!(status.success());
    symlink("pyproject.toml", root.join("fifo/requirements.txt")).unwrap();
    // A file name that is not UTF-8.
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        fs::write(root.join("app").join(name), "x").unwrap();
    }
    // An unreadable manifest (only unreadable when not running as root).
    fs::create_dir_all(root.join("locked")).unwrap();
    fs::write(root.join("locked/Gemfile"), "gem \"rails\"\n").unwrap();
    fs::set_permissions(
        root.join("locked/Gemfile"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let privileged = fs::read(root.join("locked/Gemfile")).is_ok();
    // Deep nesting.
    let mut deep = root.join("deep");
    for i in 0..200 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("go.mod"), "module example.com/deep\n\ngo 1.22\n").unwrap();

    let before = state(&root);
    let scan = scan_with_timeout(&root);
    let plan = autonix::plan(&scan);
    let _flake = autonix::generate(&plan);
    assert_eq!(state(&root), before, "scanning changed the tree");

    assert_warned(&scan, "loops/Cargo.toml", "loop");
    assert_warned(&scan, "escape/outside-dir", "outside the scanned root");
    assert_warned(&scan, "escape/package.json", "outside the scanned root");
    assert!(
        !scan.projects.iter().any(|p| p.name == "secret"),
        "a manifest outside the root was read"
    );
    assert_warned(&scan, "app/go.mod", "broken symbolic link");
    assert_warned(&scan, "huge/package.json", "limit");
    assert_warned(&scan, "app", "not UTF-8");
    if !privileged {
        assert_warned(&scan, "locked/Gemfile", "not readable");
    }
    // Real projects are still found: app, its link, and the deep module.
    let paths: Vec<&str> = scan.projects.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"app"), "{paths:?}");
    assert!(paths.contains(&"linked"), "{paths:?}");
    assert!(paths.iter().any(|p| p.ends_with("d199")), "{paths:?}");
    // Nothing under the directory links was scanned twice.
    assert!(!paths.iter().any(|p| p.starts_with("loops/")), "{paths:?}");
}

#[test]
fn cli_reports_bad_roots_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = autonix(&["scan", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open scan root"), "{err}");
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let out = autonix(&["scan", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

#[test]
fn human_summary_lists_projects_and_versions() {
    let (_tmp, dir) = fixture_copy("rails-monorepo");
    let out = autonix(&["scan", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("rails-monorepo: 3 project(s)"), "{text}");
    assert!(text.contains("ruby 3.2.2 (from Gemfile (ruby))"), "{text}");
    assert!(
        text.contains("ci: .github/workflows/ci.yml (github-actions)"),
        "{text}"
    );
    assert!(
        text.contains("ignored: vendor/bundle/ruby/3.2.0/gems/rack-3.0.0/Gemfile (vendored code)"),
        "{text}"
    );
    assert!(
        text.contains("ignored: package.json (asset bundling of the Rails app beside it (no run command of its own))"),
        "{text}"
    );
}
