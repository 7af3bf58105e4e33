//! Regression (fault suite, cache killed mid-upload): a crash between a
//! narinfo's rename into `store/` and its transaction's commit left a
//! narinfo the index lacks, and `cache verify` failed after the restart.
//! `cache serve` now removes such uncommitted narinfos before serving (the
//! uploader never got an answer and uploads again).

use std::path::Path;
use std::process::Command;

use testkit::{Log, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_cache");

/// Starts `cache serve`, waits until it is ready (the store is open and
/// cleaned), kills it.
fn serve_once(data: &Path, key: &Path) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--key-file")
        .arg(key);
    Proc::spawn("cache", cmd, Log::Quiet).kill();
}

fn verify(data: &Path, key: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["verify", "--data-dir"])
        .arg(data)
        .arg("--key-file")
        .arg(key)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_narinfo_left_uncommitted_by_a_crash_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keydir) = (dir.path().join("data"), dir.path().join("key"));
    let out = Command::new(BIN)
        .args(["keygen", "leftover-1", "--out-dir"])
        .arg(&keydir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = keydir.join("secret-key");
    serve_once(&data, &key);
    assert!(verify(&data, &key).0);

    // What the crash leaves: a complete narinfo file, no index row.
    let stray = data
        .join("store")
        .join("6dc8p4k5xa4jmk6fv0ws4bnczk331wvx.narinfo");
    std::fs::write(
        &stray,
        "StorePath: /nix/store/6dc8p4k5xa4jmk6fv0ws4bnczk331wvx-x\nURL: nar/1v82fgdjqkd91dzkbx9w8n55nf5b9y90b28vdql3ypbg1gf65hzn.nar.zst\n",
    )
    .unwrap();
    let (ok, report) = verify(&data, &key);
    assert!(!ok, "verify reports the stray narinfo: {report}");

    serve_once(&data, &key);
    assert!(
        !stray.exists(),
        "the restart removed the uncommitted narinfo"
    );
    let (ok, report) = verify(&data, &key);
    assert!(ok, "{report}");
}
