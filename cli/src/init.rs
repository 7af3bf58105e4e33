//! `pcr init [DIR]`: runs autonix on a repository and writes its flake.nix
//! and Procurator cluster file (procurator.nix), refusing to overwrite
//! either without `--force`, then says what it found and what it could not
//! decide. repohub's "Generate flake" renders the same `autonix::init`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use autonix::init::{CLUSTER_FILE, Init};

/// `pcr init`'s options.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The repository to scan and write into.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite an existing flake.nix or procurator.nix.
    #[arg(long)]
    pub force: bool,
    /// Flake URL of Procurator's nix/ directory (its library), written as
    /// the flake's `procurator` input.
    #[arg(
        long,
        env = "PCR_PROCURATOR_FLAKE",
        default_value = autonix::init::DEFAULT_PROCURATOR_URL
    )]
    pub procurator_url: String,
}

/// Why `pcr init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot scan {0}")]
    Scan(PathBuf, #[source] autonix::ScanError),
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// Scans, checks that nothing would be overwritten, writes both files and
/// returns the report to print.
pub fn run(args: &InitArgs) -> Result<String, InitError> {
    let init = autonix::init(&args.dir, &args.procurator_url)
        .map_err(|e| InitError::Scan(args.dir.clone(), e))?;
    let flake = args.dir.join("flake.nix");
    let cluster = args.dir.join(CLUSTER_FILE);
    // Both are checked before either is written: a refusal leaves the
    // repository exactly as it was.
    if !args.force {
        for f in [&flake, &cluster] {
            if f.exists() {
                return Err(InitError::Exists(f.clone()));
            }
        }
    }
    write(&flake, &init.flake)?;
    write(&cluster, &init.cluster)?;
    Ok(report(&init, &flake, &cluster))
}

fn write(path: &Path, text: &str) -> Result<(), InitError> {
    std::fs::write(path, text).map_err(|e| InitError::Write(path.to_path_buf(), e))
}

/// What `pcr init` prints: the files, the projects, the VM groups and the
/// open questions.
pub fn report(init: &Init, flake: &Path, cluster: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "wrote {}", flake.display());
    let _ = writeln!(
        s,
        "wrote {} ({} VM group(s))",
        cluster.display(),
        init.groups.len()
    );
    let _ = writeln!(s, "found {} project(s):", init.found.len());
    for f in &init.found {
        let _ = writeln!(s, "  {f}");
    }
    if !init.groups.is_empty() {
        s.push_str("VM groups:\n");
        for g in &init.groups {
            let _ = writeln!(
                s,
                "  {}: runs {}/bin/{} ({}), {} vCPU, {} MiB",
                g.name, g.package, g.program, g.project, g.cpu, g.memory_mb
            );
        }
    }
    if !init.undecided.is_empty() {
        s.push_str("could not decide:\n");
        for u in &init.undecided {
            let _ = writeln!(s, "  - {u}");
        }
    }
    s
}
