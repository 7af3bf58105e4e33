//! Paths of the workspace's binaries, as the tests and benches run them.

use std::path::{Path, PathBuf};

/// The directory holding the workspace's binaries: `PCR_BIN_DIR` when set
/// (e.g. release binaries for a benchmark), else the profile directory of
/// the running test or bench (`target/<profile>`, wherever
/// `CARGO_TARGET_DIR` put it), where `cargo build --workspace --bins`
/// writes them.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PCR_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    // The test runs as target/<profile>/deps/<test>-<hash>.
    exe.parent()
        .and_then(Path::parent)
        .expect("a target directory above the test")
        .to_owned()
}

/// A workspace binary by name; panics with what to build when missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`)",
        p.display()
    );
    p
}
