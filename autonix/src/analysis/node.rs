//! Node: npm, yarn classic and berry, pnpm (with pnpm-workspace.yaml) and
//! bun; `packageManager`, `engines`, `volta`, workspaces and scripts.

use serde_json::Value;

use super::versions::Candidate as Version;
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    if !ctx.has(dir, "package.json") {
        return None;
    }
    let mut project = ctx.project(dir, Language::Node, "npm", "package.json");
    let pkg = ctx.json(dir, "package.json").unwrap_or(Value::Null);
    if !pkg.is_object() && !pkg.is_null() {
        ctx.warn(&project.manifest, "package.json is not an object");
    }
    if let Some(n) = pkg.get("name").and_then(Value::as_str) {
        project.name = n.rsplit('/').next().unwrap_or(n).to_string();
    }
    project.version = pkg.get("version").and_then(Value::as_str).map(String::from);

    let mut versions = Vec::new();
    if let Some(v) = pkg.pointer("/volta/node").and_then(Value::as_str) {
        versions.push(Version::pin(
            v,
            format!("{} (volta.node)", project.manifest),
        ));
    }
    if let Some(v) = pkg.pointer("/engines/node").and_then(Value::as_str) {
        versions.push(Version::constraint(
            v,
            format!("{} (engines.node)", project.manifest),
        ));
    }

    // Workspace members: package.json `workspaces` or pnpm-workspace.yaml.
    let mut patterns: Vec<String> = match pkg.get("workspaces") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(Value::Object(o)) => o
            .get("packages")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let pnpm_ws = ctx.has(dir, "pnpm-workspace.yaml");
    if pnpm_ws
        && let Some(y) = ctx.yaml(dir, "pnpm-workspace.yaml")
        && let Some(seq) = y.get("packages").and_then(|p| p.as_sequence())
    {
        patterns.extend(seq.iter().filter_map(|v| v.as_str().map(String::from)));
    }
    let is_workspace = !patterns.is_empty() || pnpm_ws;
    let mut excluded = Vec::new();
    if is_workspace {
        project.members = ctx.expand_members(dir, &patterns, &[], &["package.json"]);
        let negated: Vec<String> = patterns
            .iter()
            .filter_map(|p| p.trim().strip_prefix('!').map(String::from))
            .collect();
        if !negated.is_empty() {
            excluded = ctx.expand_members(dir, &negated, &[], &["package.json"]);
        }
    }

    // Package manager: the `packageManager` field (corepack enforces it),
    // else the lockfile, else npm.
    let lock = lockfile(ctx, dir);
    let declared = pkg
        .get("packageManager")
        .and_then(Value::as_str)
        .map(|s| s.split('+').next().unwrap_or(s))
        .and_then(|s| s.split_once('@'))
        .map(|(n, v)| (n.to_string(), v.to_string()));
    let from_lock = lock.as_ref().map(|(pm, _)| pm.clone());
    let pm_reason = match (&declared, &lock) {
        (Some((n, v)), _) => {
            format!("package.json packageManager says {n}@{v} (corepack enforces it)")
        }
        (None, Some((_, f))) => format!("lockfile {}", join(dir, f)),
        (None, None) if pnpm_ws => "pnpm-workspace.yaml, no lockfile".to_string(),
        (None, None) => "no lockfile and no packageManager field: npm by default".to_string(),
    };
    project
        .decided_by
        .insert("package_manager".into(), pm_reason);
    let pm = match &declared {
        Some((name, version)) => {
            project.package_manager_version = Some(version.clone());
            if name == "yarn" && !version.starts_with("1.") {
                "yarn-berry".to_string()
            } else {
                name.clone()
            }
        }
        None => from_lock
            .clone()
            .unwrap_or_else(|| if pnpm_ws { "pnpm".into() } else { "npm".into() }),
    };
    if let (Some((name, _)), Some(lpm)) = (&declared, &from_lock)
        && !lpm.starts_with(name.as_str())
    {
        ctx.warn(
            &project.manifest,
            format!("packageManager says {name} but the lockfile is {lpm}'s; using {name}"),
        );
    }
    if let Some((_, f)) = &lock
        && f.ends_with(".json")
    {
        project.lockfile_version = ctx.text(dir, f).and_then(npm_lockfile_version);
    }
    project.lockfile = lock.map(|(_, f)| join(dir, &f));
    project.package_manager = pm;

    let scripts = pkg.get("scripts").and_then(Value::as_object);
    let has_script = |s: &str| scripts.is_some_and(|m| m.contains_key(s));
    let runner = match project.package_manager.as_str() {
        "yarn" | "yarn-berry" => "yarn",
        "pnpm" => "pnpm",
        "bun" => "bun",
        _ => "npm",
    };
    let install = match project.package_manager.as_str() {
        "npm" if project.lockfile.is_some() => "npm ci",
        "npm" => "npm install",
        "yarn" => "yarn install --frozen-lockfile",
        "yarn-berry" => "yarn install --immutable",
        "pnpm" => "pnpm install --frozen-lockfile",
        "bun" => "bun install --frozen-lockfile",
        _ => "npm install",
    };
    project.build = Some(if has_script("build") {
        format!("{install} && {runner} run build")
    } else {
        install.to_string()
    });
    let run_reason = if has_script("start") {
        "package.json scripts.start"
    } else if pkg.get("main").is_some() {
        "package.json main (no start script)"
    } else if ctx.has(dir, "server.js") {
        "server.js (no start script)"
    } else {
        "index.js (no start script)"
    };
    project
        .decided_by
        .insert("run".into(), run_reason.to_string());
    project.run = if has_script("start") {
        Some(format!(
            "{runner} {}start",
            if runner == "bun" { "run " } else { "" }
        ))
    } else if let Some(main) = pkg.get("main").and_then(Value::as_str) {
        Some(format!("node {main}"))
    } else if ctx.has(dir, "server.js") {
        Some("node server.js".into())
    } else if ctx.has(dir, "index.js") && !is_workspace {
        Some("node index.js".into())
    } else {
        None
    };
    project.framework = framework(&pkg);
    let claims = project.members.clone();
    Some(Candidate {
        excluded,
        ..Candidate::new(project, claims, versions)
    })
}

/// The lockfile in `dir` and the package manager it implies.
fn lockfile(ctx: &Ctx<'_>, dir: &str) -> Option<(String, String)> {
    if ctx.has(dir, "pnpm-lock.yaml") {
        return Some(("pnpm".into(), "pnpm-lock.yaml".into()));
    }
    if ctx.has(dir, "yarn.lock") {
        // Berry lockfiles are YAML with a `__metadata` block; classic ones
        // start with "# yarn lockfile v1".
        let berry = ctx
            .text(dir, "yarn.lock")
            .is_some_and(|t| t.contains("__metadata:"))
            || ctx.has(dir, ".yarnrc.yml");
        let pm = if berry { "yarn-berry" } else { "yarn" };
        return Some((pm.into(), "yarn.lock".into()));
    }
    for f in ["bun.lock", "bun.lockb"] {
        if ctx.has(dir, f) {
            return Some(("bun".into(), f.into()));
        }
    }
    for f in ["package-lock.json", "npm-shrinkwrap.json"] {
        if ctx.has(dir, f) {
            return Some(("npm".into(), f.into()));
        }
    }
    None
}

/// package-lock.json `lockfileVersion` from the file's head (the field
/// comes right after name/version, well inside the first KiB).
pub(crate) fn npm_lockfile_version(head: &str) -> Option<u32> {
    let i = head.find("\"lockfileVersion\"")?;
    let rest = &head[i + "\"lockfileVersion\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn framework(pkg: &Value) -> Option<String> {
    let has = |name: &str| {
        ["dependencies", "devDependencies"]
            .iter()
            .any(|k| pkg.get(*k).and_then(|d| d.get(name)).is_some())
    };
    [
        ("next", "next"),
        ("nuxt", "nuxt"),
        ("@sveltejs/kit", "sveltekit"),
        ("astro", "astro"),
        ("@remix-run/node", "remix"),
        ("@nestjs/core", "nestjs"),
        ("express", "express"),
        ("fastify", "fastify"),
        ("react-scripts", "create-react-app"),
        ("vite", "vite"),
    ]
    .iter()
    .find(|(dep, _)| has(dep))
    .map(|(_, f)| f.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lockfile_version() {
        assert_eq!(
            super::npm_lockfile_version("{\n  \"name\": \"x\",\n  \"lockfileVersion\": 3,\n"),
            Some(3)
        );
        assert_eq!(super::npm_lockfile_version("{}"), None);
    }
}
