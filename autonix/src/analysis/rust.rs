//! Rust: Cargo packages and workspaces (member globs, `exclude`,
//! `default-members`), `rust-version` and the workspace's lockfile.

use super::versions::Candidate as Version;
use super::{Candidate, Ctx, Language, toml_get, toml_str, toml_strings};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    if !ctx.has(dir, "Cargo.toml") {
        return None;
    }
    let manifest = ctx.toml(dir, "Cargo.toml");
    let mut project = ctx.project(dir, Language::Rust, "cargo", "Cargo.toml");
    project.build = Some("cargo build --release".into());
    if ctx.has(dir, "Cargo.lock") {
        project.lockfile = Some(join(dir, "Cargo.lock"));
    }
    let Some(m) = manifest else {
        return Some(Candidate::new(project, Vec::new(), Vec::new()));
    };
    let mut versions = Vec::new();
    let mut claims = Vec::new();
    if let Some(name) = toml_str(&m, &["package", "name"]) {
        project.name = name.to_string();
    }
    project.version = toml_str(&m, &["package", "version"])
        .or_else(|| toml_str(&m, &["workspace", "package", "version"]))
        .map(String::from);
    if let Some(rv) = toml_str(&m, &["package", "rust-version"]) {
        versions.push(Version::constraint(
            rv,
            format!("{} (package.rust-version)", project.manifest),
        ));
    } else if let Some(rv) = toml_str(&m, &["workspace", "package", "rust-version"]) {
        versions.push(Version::constraint(
            rv,
            format!("{} (workspace.package.rust-version)", project.manifest),
        ));
    }
    let mut bins = binaries(ctx, dir, &m);
    if m.contains_key("workspace") {
        let members = toml_strings(&m, &["workspace", "members"]);
        let exclude = toml_strings(&m, &["workspace", "exclude"]);
        project.members = ctx.expand_members(dir, &members, &exclude, &["Cargo.toml"]);
        for member in &members {
            if !member.contains(['*', '?', '[']) {
                let d = crate::glob::under(dir, member);
                if !ctx.has(&d, "Cargo.toml") {
                    ctx.warn(
                        &project.manifest,
                        format!("workspace member {member} has no Cargo.toml"),
                    );
                }
            }
        }
        project.default_members = toml_strings(&m, &["workspace", "default-members"])
            .iter()
            .map(|p| crate::glob::under(dir, p))
            .collect();
        for member in project.members.clone() {
            if let Some(mm) = ctx.toml(&member, "Cargo.toml") {
                bins.extend(binaries(ctx, &member, &mm));
            }
        }
        claims = project.members.clone();
    }
    bins.sort();
    bins.dedup();
    if let Some(first) = bins.first() {
        project.run = Some(format!("./target/release/{first}"));
        project.decided_by.insert(
            "run".into(),
            format!(
                "the first of the binaries ({}) that [[bin]] or src/main.rs declare",
                bins.join(", ")
            ),
        );
    }
    project.binaries = bins;
    Some(Candidate::new(project, claims, versions))
}

/// Binaries a package declares: `[[bin]]` names, else the package name when
/// `src/main.rs` exists.
fn binaries(ctx: &Ctx<'_>, dir: &str, m: &toml::Table) -> Vec<String> {
    let Some(pkg) = toml_str(m, &["package", "name"]) else {
        return Vec::new();
    };
    let mut out: Vec<String> = toml_get(m, &["bin"])
        .and_then(|b| b.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() && ctx.has(&join(dir, "src"), "main.rs") {
        out.push(pkg.to_string());
    }
    out
}
