//! "Generate flake": exports a repository's head into a temporary directory
//! and runs autonix (scan → plan → generate) on it, returning the flake it
//! proposes. Nothing is committed: the user reviews the text and pushes it.
//!
//! autonix only reads the checkout; it runs on a blocking thread under a
//! timeout so a huge repository cannot hold a request forever.

use std::path::PathBuf;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FlakegenError {
    #[error("autonix could not scan the repository")]
    Scan(#[from] autonix::ScanError),
    #[error("autonix timed out after {0:?}")]
    Timeout(Duration),
    #[error("autonix stopped unexpectedly")]
    Panicked,
}

/// Scans the checkout at `dir` and returns the generated `flake.nix` text.
pub async fn generate(dir: PathBuf) -> Result<String, FlakegenError> {
    let work = tokio::task::spawn_blocking(move || -> Result<String, FlakegenError> {
        let scan = autonix::scan(&dir)?;
        let plan = autonix::plan(&scan);
        Ok(autonix::generate(&plan))
    });
    match tokio::time::timeout(TIMEOUT, work).await {
        Err(_) => Err(FlakegenError::Timeout(TIMEOUT)),
        Ok(Err(_)) => Err(FlakegenError::Panicked),
        Ok(Ok(r)) => r,
    }
}
