//! autonix: detects the stacks in a repository and writes the Nix flake
//! that builds them. Pipeline: [`scan::walk`] (filesystem) →
//! [`analysis::analyse`] (projects, tasks, CI, containers) → [`plan::plan`]
//! (builders, inputs, toolchains) → [`flake::generate`] (flake.nix text).
//! Each stage hands plain serde data to the next.

pub mod analysis;
pub mod flake;
mod glob;
pub mod init;
pub mod plan;
pub mod scan;

use std::path::Path;

pub use analysis::{Language, Project, Scan};
pub use plan::Plan;

pub use scan::{ScanError, Warning};

/// Scans the repository at `root` (read-only) and reports what it holds.
pub fn scan(root: impl AsRef<Path>) -> Result<Scan, ScanError> {
    let tree = scan::walk(root.as_ref())?;
    Ok(analysis::analyse(&tree))
}

/// Decides how each scanned project is built.
pub fn plan(scan: &Scan) -> Plan {
    plan::plan(scan)
}

/// Renders the flake.nix for a plan.
pub fn generate(plan: &Plan) -> String {
    flake::generate(plan)
}

/// Scans the repository at `root` and returns its flake.nix, its Procurator
/// cluster file and what was found and left undecided (`pcr init`,
/// repohub's "Generate flake"). `procurator_url` is the flake URL of
/// Procurator's `nix/` directory.
pub fn init(root: impl AsRef<Path>, procurator_url: &str) -> Result<init::Init, ScanError> {
    let scan = scan(root)?;
    let plan = plan::plan(&scan);
    Ok(init::init(&scan, &plan, procurator_url))
}
