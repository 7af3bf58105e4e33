//! Swift: SwiftPM packages (`Package.swift`: the `swift-tools-version`
//! line, the package name, executable products and targets, remote
//! dependencies), `Package.resolved` and `.swift-version`; Vapor servers.

use super::stacks::{constraint, string_after, strings_after};
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let text = ctx.text(dir, "Package.swift")?.to_string();
    let mut project = ctx.project(dir, Language::Swift, "swiftpm", "Package.swift");
    let mut versions = Vec::new();
    // `// swift-tools-version:5.9` or `// swift-tools-version: 5.9`, first line.
    if let Some(v) = text
        .lines()
        .next()
        .and_then(|l| l.split_once("swift-tools-version"))
        .map(|(_, v)| v.trim_start_matches(':').trim().to_string())
        .filter(|v| !v.is_empty())
    {
        versions.push(constraint(&v, dir, "Package.swift", "swift-tools-version"));
    } else {
        ctx.warn(
            &project.manifest,
            "no swift-tools-version line: SwiftPM refuses it",
        );
    }
    if let Some(n) = string_after(&text, "name:") {
        project.name = n;
    }
    // Without whitespace, `.executableTarget(\n  name: "App"` reads as one token.
    let one_line: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .collect();
    let mut exes = strings_after(&one_line, ".executable(name:");
    for t in strings_after(&one_line, ".executableTarget(name:") {
        if !exes.contains(&t) {
            exes.push(t);
        }
    }
    if ctx.has(dir, "Package.resolved") {
        project.lockfile = Some(join(dir, "Package.resolved"));
    }
    if text.contains("vapor/vapor") {
        project.framework = Some("vapor".into());
    }
    project.build = Some("swift build -c release".into());
    project.run = exes.first().map(|e| {
        if project.framework.is_some() {
            format!(".build/release/{e} serve --env production --hostname 0.0.0.0 --port 8080")
        } else {
            format!(".build/release/{e}")
        }
    });
    project.binaries = exes;
    // Remote dependencies need swiftpm2nix; the plan reads this.
    project.dependencies = strings_after(&one_line, ".package(url:");
    Some(Candidate::new(project, Vec::new(), versions))
}
