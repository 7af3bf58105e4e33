//! `autonix` CLI: `scan` (what is in a repository), `plan` (how each project
//! builds) and `generate` (the flake.nix).
// Printing the scan, plan or flake to stdout is this binary's job.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "autonix",
    version,
    about = "Detect a repository's stacks and write the flake that builds them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report the projects, CI files, container files and tasks found.
    Scan {
        path: PathBuf,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
        /// Say why each project was reported, which file decided each of
        /// its fields, and why each skipped manifest is not a project.
        #[arg(long, conflicts_with = "json")]
        explain: bool,
    },
    /// Print the build plan as JSON.
    Plan { path: PathBuf },
    /// Write the flake (to PATH/flake.nix unless -o is given; `-o -` prints it).
    Generate {
        path: PathBuf,
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Overwrite an existing flake.nix.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Scan(#[from] autonix::ScanError),
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode JSON")]
    Json(#[from] serde_json::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("autonix: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Scan {
            path,
            json,
            explain,
        } => {
            let scan = autonix::scan(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&scan)?);
            } else if explain {
                print!("{}", explain_text(&scan));
            } else {
                print_summary(&scan);
            }
        }
        Command::Plan { path } => {
            let scan = autonix::scan(&path)?;
            let plan = autonix::plan(&scan);
            println!("{}", serde_json::to_string_pretty(&plan)?);
        }
        Command::Generate {
            path,
            output,
            force,
        } => {
            let scan = autonix::scan(&path)?;
            let plan = autonix::plan(&scan);
            let text = autonix::generate(&plan);
            let target = output.unwrap_or_else(|| path.join("flake.nix"));
            if target == Path::new("-") {
                print!("{text}");
            } else {
                if target.exists() && !force {
                    return Err(CliError::Exists(target));
                }
                std::fs::write(&target, &text).map_err(|source| CliError::Write {
                    path: target.clone(),
                    source,
                })?;
                let shells = match plan.shells.len() {
                    0 => String::new(),
                    n => format!(", {n} dev shells for projects nixpkgs cannot build"),
                };
                eprintln!(
                    "wrote {} ({} packages{shells})",
                    target.display(),
                    plan.packages.len()
                );
            }
            for w in &scan.warnings {
                eprintln!("warning: {}: {}", w.path, w.message);
            }
            if !plan.notes.is_empty() {
                eprintln!("before the first build:");
                for n in &plan.notes {
                    eprintln!("  - {n}");
                }
            }
        }
    }
    Ok(())
}

fn print_summary(scan: &autonix::Scan) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}: {} project(s)", scan.name, scan.projects.len());
    for p in &scan.projects {
        let version = match (&p.toolchain_version, &p.version_source) {
            (Some(v), Some(s)) => match &p.toolchain_range {
                Some(r) => format!(" {} {v} ({r}, from {s})", p.language.as_str()),
                None => format!(" {} {v} (from {s})", p.language.as_str()),
            },
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:<20} {} {} [{}]{version}{}",
            p.path,
            p.language.as_str(),
            p.package_manager,
            p.lockfile.as_deref().unwrap_or("no lockfile"),
            if p.members.is_empty() {
                String::new()
            } else {
                format!(", {} members", p.members.len())
            }
        );
        if let Some(r) = &p.run {
            let _ = writeln!(out, "  {:<20} run: {r}", "");
        }
    }
    for c in &scan.ci_files {
        let _ = writeln!(out, "ci: {} ({})", c.path, c.system);
    }
    for c in &scan.container_files {
        let _ = writeln!(out, "container: {} ({})", c.path, c.kind);
    }
    if !scan.tasks.is_empty() {
        let _ = writeln!(out, "tasks: {}", scan.tasks.len());
    }
    for i in &scan.ignored {
        let _ = writeln!(out, "ignored: {} ({})", i.path, i.reason);
    }
    for w in &scan.warnings {
        let _ = writeln!(out, "warning: {}: {}", w.path, w.message);
    }
}

/// `scan --explain`: per project, why it is one and, field by field, its
/// value and what decided it; then every manifest or directory that is not
/// a project, with the rule that excluded it.
fn explain_text(scan: &autonix::Scan) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}: {} project(s)", scan.name, scan.projects.len());
    for p in &scan.projects {
        let _ = writeln!(
            s,
            "\n{} ({}, {}) at {}",
            p.name,
            p.language.as_str(),
            p.package_manager,
            p.path
        );
        let why = |k: &str| p.decided_by.get(k).cloned();
        let mut line = |field: &str, value: Option<String>, key: &str| {
            let value = value.unwrap_or_else(|| "-".into());
            match why(key) {
                Some(w) => {
                    let _ = writeln!(s, "  {field:<18} {value}\n  {:<18} because: {w}", "");
                }
                None => {
                    let _ = writeln!(s, "  {field:<18} {value}");
                }
            }
        };
        line("reported", Some(p.manifest.clone()), "project");
        line(
            "package manager",
            Some(p.package_manager.clone()),
            "package_manager",
        );
        line("lockfile", p.lockfile.clone(), "lockfile");
        line(
            "toolchain",
            p.toolchain_version
                .as_ref()
                .map(|v| match &p.toolchain_range {
                    Some(r) => format!("{v} ({r})"),
                    None => v.clone(),
                }),
            "toolchain_version",
        );
        if p.workspace.is_some() {
            line("workspace", p.workspace.clone(), "workspace");
        }
        if !p.members.is_empty() {
            line("members", Some(p.members.join(", ")), "members");
        }
        if p.decided_by.contains_key("preferred") {
            line("preferred", Some(p.preferred.to_string()), "preferred");
        }
        line("build", p.build.clone(), "");
        line("run", p.run.clone(), "run");
    }
    if !scan.ignored.is_empty() {
        s.push_str("\nnot projects:\n");
        for i in &scan.ignored {
            let _ = writeln!(s, "  {}: {}", i.path, i.reason);
        }
    }
    s
}
