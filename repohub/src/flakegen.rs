//! "Generate flake": exports a repository's head into a temporary directory
//! and runs autonix on it (`autonix::init`, the code behind `pcr init`),
//! returning the flake.nix and procurator.nix it proposes and what it could
//! not decide. Nothing is committed: the user reviews the text and pushes it.
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

/// Scans the checkout at `dir` and returns the generated files and report.
pub async fn generate(dir: PathBuf) -> Result<autonix::init::Init, FlakegenError> {
    let work = tokio::task::spawn_blocking(move || -> Result<_, FlakegenError> {
        Ok(autonix::init(&dir, autonix::init::DEFAULT_PROCURATOR_URL)?)
    });
    match tokio::time::timeout(TIMEOUT, work).await {
        Err(_) => Err(FlakegenError::Timeout(TIMEOUT)),
        Ok(Err(_)) => Err(FlakegenError::Panicked),
        Ok(Ok(r)) => r,
    }
}
