//! Zig: `build.zig` projects, `build.zig.zon` (name, version,
//! `minimum_zig_version`, fetched dependencies) and the executables
//! `build.zig` adds.

use super::stacks::{constraint, identifier_after, string_after};
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    if !ctx.has(dir, "build.zig") {
        return None;
    }
    let build = ctx.text(dir, "build.zig").unwrap_or("").to_string();
    let mut project = ctx.project(dir, Language::Zig, "zig", "build.zig");
    let mut versions = Vec::new();
    if let Some(zon) = ctx.text(dir, "build.zig.zon").map(String::from) {
        // `.name = "x"` before 0.14, `.name = .x` since.
        if let Some(n) =
            string_after(&zon, ".name =").or_else(|| identifier_after(&zon, ".name =", '.'))
        {
            project.name = n;
        }
        project.version = string_after(&zon, ".version =");
        if let Some(v) = string_after(&zon, ".minimum_zig_version =") {
            versions.push(constraint(&v, dir, "build.zig.zon", "minimum_zig_version"));
        }
        // The dependencies' content hashes pin them: the .zon is the lock.
        if zon.contains(".hash =") {
            project.lockfile = Some(join(dir, "build.zig.zon"));
        }
    }
    project.binaries = names_in_exe_calls(&build);
    project.build = Some("zig build -Doptimize=ReleaseSafe".into());
    project.run = project
        .binaries
        .first()
        .map(|b| format!("./zig-out/bin/{b}"));
    Some(Candidate::new(project, Vec::new(), versions))
}

/// `b.addExecutable(.{ .name = "x", … })` written over several lines.
fn names_in_exe_calls(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("addExecutable(") {
        rest = &rest[i + 14..];
        let window: String = rest.chars().take(200).collect();
        if let Some(n) = string_after(&window.replace('\n', " "), ".name =")
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}
