//! "Generate flake": exports a repository's head into a temporary directory
//! and runs autonix on it, returning the flake it writes.
//!
//! autonix is run as its own executable (found with `--autonix`, beside the
//! repohub binary, or on PATH) so a scan of a hostile repository cannot take
//! the web server down with it, and is bounded by a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AutonixError {
    #[error("autonix unavailable: no autonix executable beside repohub or on PATH")]
    Missing,
    #[error("autonix could not start")]
    Spawn(#[source] std::io::Error),
    #[error("autonix timed out after {0:?}")]
    Timeout(Duration),
    #[error("autonix failed: {0}")]
    Failed(String),
    #[error("autonix wrote no flake.nix")]
    NoFlake,
}

/// The executable to run: configured, beside our own binary, or on PATH.
pub fn locate(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return p.is_file().then(|| p.to_owned());
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_owned)) {
        for cand in [dir.join("autonix"), dir.join("..").join("autonix")] {
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("autonix")).find(|p| p.is_file()))
}

/// Runs autonix on `dir` (a checkout) and returns the generated flake text.
pub async fn generate(bin: Option<&Path>, dir: &Path) -> Result<String, AutonixError> {
    let exe = locate(bin).ok_or(AutonixError::Missing)?;
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(&exe).arg(dir).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| AutonixError::Timeout(TIMEOUT))?
    .map_err(AutonixError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(AutonixError::Failed(err.trim().chars().take(2000).collect()));
    }
    match std::fs::read_to_string(dir.join("flake.nix")) {
        Ok(t) => Ok(t),
        Err(_) if !out.stdout.is_empty() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(_) => Err(AutonixError::NoFlake),
    }
}
