//! Build logs to the binary cache: after the closure is copied, the logs
//! of the derivations that built its paths go up with `nix store
//! copy-log --to` (the cache's `PUT /log/<drv>`), so `nix log --store
//! <cache> <path>` shows how a deployed path was built. A path without a
//! log here (substituted, or built by an earlier job whose logs nix
//! dropped) is reported, never a job failure: the log is diagnosis, not
//! part of what boots.

use std::path::Path;

use repo_outils::nix::{Nix, NixError};

/// What the upload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// Derivations whose log is now in the cache.
    pub uploaded: Vec<String>,
    /// Derivations whose log was not uploaded, each with why.
    pub skipped: Vec<(String, String)>,
}

/// Uploads the build logs of the derivers of the closure of `paths` to
/// `cache_url` (those this store has a log of).
/// Errs only when the paths cannot be queried at all.
pub async fn upload(
    nix: &Nix,
    cache_url: &str,
    netrc: Option<&Path>,
    paths: &[String],
) -> Result<Uploaded, NixError> {
    let mut drvs: Vec<String> = nix
        .closure_info(paths)
        .await?
        .into_iter()
        .filter_map(|i| i.deriver)
        .filter(|d| d.ends_with(".drv"))
        .collect();
    drvs.sort();
    drvs.dedup();
    let mut out = Uploaded::default();
    if drvs.is_empty() {
        return Ok(out);
    }
    // One nix process for all; copy-log stops at the first derivation
    // without a log, so on failure each is tried alone to save the rest.
    if nix.copy_log_to(cache_url, &drvs, netrc).await.is_ok() {
        out.uploaded = drvs;
        return Ok(out);
    }
    for drv in drvs {
        match nix
            .copy_log_to(cache_url, std::slice::from_ref(&drv), netrc)
            .await
        {
            Ok(()) => out.uploaded.push(drv),
            Err(e) => out.skipped.push((drv, crate::runner::summary(&e))),
        }
    }
    Ok(out)
}
