//! `pcr init` and repohub's "Generate flake": a repository's flake.nix plus
//! its Procurator cluster file, with one VM group per runnable package, and
//! a report of what was found and what could not be decided. Pure: it turns
//! a scan and a plan into texts; the callers write them (or show them).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::analysis::{Language, Scan};
use crate::flake::{ClusterRef, nix_str};
use crate::plan::{Package, Plan};

/// The cluster file's name, next to flake.nix.
pub const CLUSTER_FILE: &str = "procurator.nix";
/// Where the Procurator library comes from unless the caller says otherwise.
pub const DEFAULT_PROCURATOR_URL: &str = "github:procurator/procurator?dir=nix";
/// The system the generated cluster's VMs are built for.
pub const SYSTEM: &str = "x86_64-linux";
/// Default VM size: one vCPU and 512 MiB, 1 GiB for the JVM, which does
/// not start comfortably in less.
const CPU: u32 = 1;
const MEMORY_MB: u32 = 512;
const JVM_MEMORY_MB: u32 = 1024;

/// What `init` produces: the two files and the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Init {
    /// flake.nix: the packages, dev shells and apps, plus the `procurator` output.
    pub flake: String,
    /// procurator.nix: the VM groups.
    pub cluster: String,
    pub groups: Vec<VmGroup>,
    /// One line per project found.
    pub found: Vec<String>,
    /// What the user has to decide or fill in.
    pub undecided: Vec<String>,
}

/// One VM group of the generated cluster: a runnable package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmGroup {
    /// Group name: a DNS label, so its replicas are `<name>-0`, ….
    pub name: String,
    /// The package (`packages.<system>.<attr>`) the VM runs.
    pub package: String,
    /// The executable under the package's `bin/` the VM starts.
    pub program: String,
    pub project: String,
    pub cpu: u32,
    pub memory_mb: u32,
}

/// Turns a package attribute into a VM group name: lowercase letters,
/// digits and dashes, no leading or trailing dash, short enough that
/// `<name>-<index>` stays a DNS label.
pub fn group_name(attr: &str) -> String {
    let mut s = String::new();
    for c in attr.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let mut s: String = s.trim_matches('-').chars().take(56).collect();
    while s.ends_with('-') {
        s.pop();
    }
    if s.is_empty() { "app".into() } else { s }
}

fn groups(plan: &Plan) -> Vec<VmGroup> {
    let mut taken = BTreeSet::new();
    let mut out = Vec::new();
    for pkg in &plan.packages {
        let Some(program) = &pkg.program else {
            continue;
        };
        let base = group_name(&pkg.attr);
        let mut name = base.clone();
        let mut n = 2;
        while !taken.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        out.push(VmGroup {
            name,
            package: pkg.attr.clone(),
            program: program.clone(),
            project: pkg.project.clone(),
            cpu: CPU,
            memory_mb: if pkg.language == Language::Java {
                JVM_MEMORY_MB
            } else {
                MEMORY_MB
            },
        });
    }
    out
}

/// Renders procurator.nix: a function of nixpkgs and the flake's packages
/// returning evalCluster's `vms` (and no `system`: the flake sets it).
fn cluster_file(name: &str, groups: &[VmGroup]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Procurator cluster for {name}, written by `pcr init`: one VM group per\n\
         # runnable package of flake.nix. Each group's replicas are named\n\
         # <group>-0, <group>-1, …; change sizes, replicas, labels and the\n\
         # domains a VM may reach (egress is closed unless listed) here.\n\
         # Settings: nix/lib/profile.nix of Procurator (mkVmProfile)."
    );
    s.push_str("{ pkgs, packages }:\n{\n  vms = {\n");
    for g in groups {
        let pkg = format!("packages.{}", attr_ref(&g.package));
        let _ = writeln!(s, "    # {}", g.project);
        let _ = writeln!(s, "    {} = {{", attr_ref(&g.name));
        s.push_str("      replicas = 1;\n");
        let _ = writeln!(s, "      labels = {{ project = {}; }};", nix_str(&g.name));
        s.push_str("      profile = {\n");
        let _ = writeln!(s, "        cpu = {};", g.cpu);
        let _ = writeln!(s, "        memoryMb = {};", g.memory_mb);
        let _ = writeln!(s, "        packages = [ {pkg} ];");
        let _ = writeln!(
            s,
            "        entrypoint = \"exec ${{{pkg}}}/bin/{}\";",
            g.program.replace('"', "\\\"").replace("${", "\\${")
        );
        s.push_str("        allowedDomains = [ ];\n");
        s.push_str("      };\n    };\n");
    }
    s.push_str("  };\n}\n");
    s
}

/// An attribute name as written after a dot: quoted unless it is a plain
/// identifier.
fn attr_ref(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '\''));
    if plain {
        name.to_string()
    } else {
        nix_str(name)
    }
}

fn found_line(p: &crate::Project, pkg: Option<&Package>) -> String {
    let mut line = format!(
        "{}: {} ({}{})",
        p.path,
        p.language.as_str(),
        p.package_manager,
        p.lockfile
            .as_deref()
            .map(|l| format!(", {l}"))
            .unwrap_or_default()
    );
    if let (Some(v), Some(src)) = (&p.toolchain_version, &p.version_source) {
        let _ = write!(line, ", {} {v} from {src}", p.language.as_str());
    }
    if let Some(pkg) = pkg {
        let _ = write!(line, ", package {}", pkg.attr);
    }
    line
}

/// Builds the flake, the cluster file and the report for a scanned
/// repository. `procurator_url` is the flake URL of Procurator's `nix/`.
pub fn init(scan: &Scan, plan: &Plan, procurator_url: &str) -> Init {
    let groups = groups(plan);
    let flake = crate::flake::generate_with_cluster(
        plan,
        &ClusterRef {
            procurator_url: procurator_url.to_string(),
            file: CLUSTER_FILE.to_string(),
            system: SYSTEM.to_string(),
        },
    );
    let cluster = cluster_file(&scan.name, &groups);
    let mut found = Vec::new();
    let mut undecided = Vec::new();
    for p in &scan.projects {
        let pkg = plan.packages.iter().find(|k| k.project == p.path);
        found.push(found_line(p, pkg));
        if p.toolchain_version.is_none() {
            undecided.push(format!(
                "{}: no {} version stated anywhere; nixpkgs' default is used",
                p.path,
                p.language.as_str()
            ));
        }
        if pkg.is_some_and(|k| k.program.is_none()) || (pkg.is_none() && p.run.is_none()) {
            undecided.push(format!(
                "{}: no run command found, so no VM group; add one to {CLUSTER_FILE} if it is a service",
                p.path
            ));
        }
    }
    if scan.projects.is_empty() {
        undecided.push("no project found: the cluster has no VM group".into());
    }
    undecided.extend(plan.notes.iter().cloned());
    undecided.extend(
        scan.warnings
            .iter()
            .map(|w| format!("warning: {}: {}", w.path, w.message)),
    );
    Init {
        flake,
        cluster,
        groups,
        found,
        undecided,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_dns_labels() {
        assert_eq!(group_name("orders-api"), "orders-api");
        assert_eq!(group_name("Legacy_Tool"), "legacy-tool");
        assert_eq!(group_name("--x--"), "x");
        assert_eq!(group_name("__"), "app");
        assert_eq!(group_name(&"a".repeat(80)).len(), 56);
        assert_eq!(attr_ref("web"), "web");
        assert_eq!(attr_ref("pkg-1"), "pkg-1");
        assert_eq!(attr_ref("1x"), "\"1x\"");
    }
}
