//! Haskell: Stack projects (`stack.yaml`: resolver or snapshot, packages,
//! compiler), cabal projects (`cabal.project`: packages, with-compiler)
//! and lone packages (`*.cabal`: name, version, executables,
//! `tested-with`). A workspace's packages are its members; the one with
//! executables is what the package builds.

use serde_yaml_ng::Value as Yaml;

use super::stacks::{constraint, files_with_ext, pin};
use super::{Candidate, Ctx, Language};
use crate::scan::join;

/// The GHC series each Stackage LTS major ships (stackage.org).
const LTS_GHC: &[(u32, &str)] = &[
    (24, "9.10"),
    (23, "9.8"),
    (22, "9.6"),
    (21, "9.4"),
    (20, "9.2"),
    (19, "9.0"),
    (18, "8.10"),
    (16, "8.8"),
    (14, "8.6"),
];

/// What a `.cabal` file says.
#[derive(Debug, Default)]
struct Cabal {
    name: Option<String>,
    version: Option<String>,
    executables: Vec<String>,
    tested_with: Option<String>,
}

fn parse_cabal(text: &str) -> Cabal {
    let mut c = Cabal::default();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) || line.trim_start().starts_with("--") {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => c.name = Some(v),
                "version" => c.version = Some(v),
                "tested-with" => c.tested_with = Some(v),
                _ => {}
            }
        } else if let Some(exe) = line.trim().strip_prefix("executable ") {
            c.executables.push(exe.trim().to_string());
        }
    }
    c
}

/// `GHC ==9.4.8 || ==9.6.4` → the newest version tested.
fn tested_ghc(v: &str) -> Option<String> {
    v.split(['|', ',', ' ', '='])
        .rfind(|s| s.starts_with(|c: char| c.is_ascii_digit()))
        .map(String::from)
}

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    if ctx.has(dir, "stack.yaml") {
        return workspace(ctx, dir, "stack.yaml");
    }
    if ctx.has(dir, "cabal.project") {
        return workspace(ctx, dir, "cabal.project");
    }
    let file = files_with_ext(ctx, dir, &[".cabal"]).into_iter().next()?;
    let text = ctx.text(dir, &file)?.to_string();
    let c = parse_cabal(&text);
    let mut project = ctx.project(dir, Language::Haskell, "cabal", &file);
    let mut versions = Vec::new();
    if let Some(g) = c.tested_with.as_deref().and_then(tested_ghc) {
        versions.push(constraint(&g, dir, &file, "tested-with"));
    }
    if ctx.has(dir, "cabal.project.freeze") {
        project.lockfile = Some(join(dir, "cabal.project.freeze"));
    }
    project.name = c.name.clone().unwrap_or(project.name);
    project.version = c.version;
    project.binaries = c.executables;
    commands(&mut project);
    Some(Candidate::new(project, Vec::new(), versions))
}

fn workspace(ctx: &mut Ctx<'_>, dir: &str, file: &str) -> Option<Candidate> {
    let stack = file == "stack.yaml";
    let mut project = ctx.project(
        dir,
        Language::Haskell,
        if stack { "stack" } else { "cabal" },
        file,
    );
    let mut versions = Vec::new();
    let mut package_dirs: Vec<String> = Vec::new();
    if stack {
        let y = ctx.yaml(dir, file)?;
        let resolver = y
            .get("snapshot")
            .or_else(|| y.get("resolver"))
            .and_then(Yaml::as_str)
            .map(String::from);
        if let Some(c) = y.get("compiler").and_then(Yaml::as_str) {
            versions.push(pin(c.trim_start_matches("ghc-"), dir, file, "compiler"));
        } else if let Some(r) = &resolver {
            // lts-22.7 → GHC 9.6: the snapshot fixes the compiler.
            let major = r
                .strip_prefix("lts-")
                .and_then(|v| v.split('.').next())
                .and_then(|m| m.parse::<u32>().ok());
            if let Some(ghc) = major.and_then(|m| LTS_GHC.iter().find(|(l, _)| *l <= m)) {
                versions.push(pin(ghc.1, dir, file, &format!("resolver {r}")));
            }
        }
        package_dirs = match y.get("packages").and_then(Yaml::as_sequence) {
            Some(s) => s
                .iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect(),
            None => vec![".".into()],
        };
        if ctx.has(dir, "stack.yaml.lock") {
            project.lockfile = Some(join(dir, "stack.yaml.lock"));
        }
    } else {
        let text = ctx.text(dir, file)?.to_string();
        let mut in_packages = false;
        for line in text.lines() {
            let indented = line.starts_with([' ', '\t']);
            if !indented {
                in_packages = false;
            }
            let l = line.trim();
            if let Some(v) = l.strip_prefix("with-compiler:") {
                versions.push(pin(
                    v.trim().trim_start_matches("ghc-"),
                    dir,
                    file,
                    "with-compiler",
                ));
            } else if let Some(v) = l.strip_prefix("packages:") {
                in_packages = true;
                package_dirs.extend(v.split_whitespace().map(String::from));
            } else if in_packages && indented {
                package_dirs.extend(l.split_whitespace().map(String::from));
            }
        }
        if ctx.has(dir, "cabal.project.freeze") {
            project.lockfile = Some(join(dir, "cabal.project.freeze"));
        }
    }
    // Package entries are directories or globs of .cabal files.
    let mut members: Vec<(String, String, Cabal)> = Vec::new();
    for p in &package_dirs {
        let p = p.trim_end_matches('/');
        let pdir = if p.ends_with(".cabal") {
            super::stacks::parent_dir(p).to_string()
        } else {
            p.to_string()
        };
        let candidates: Vec<String> = if pdir.contains('*') {
            let pattern = crate::glob::under(dir, &pdir);
            ctx.tree
                .dirs
                .keys()
                .filter(|d| crate::glob::matches(&pattern, d))
                .cloned()
                .collect()
        } else {
            vec![crate::glob::under(dir, &pdir)]
        };
        for d in candidates {
            if members.iter().any(|(md, _, _)| *md == d) {
                continue;
            }
            match package_in(ctx, &d) {
                Some((f, c)) => members.push((d, f, c)),
                None if !pdir.contains('*') => ctx.warn(
                    &project.manifest,
                    format!("package {p} has no .cabal file or package.yaml"),
                ),
                None => {}
            }
        }
    }
    members.sort_by(|a, b| a.0.cmp(&b.0));
    for (d, f, c) in &members {
        project.binaries.extend(c.executables.iter().cloned());
        if let Some(g) = c.tested_with.as_deref().and_then(tested_ghc) {
            versions.push(constraint(&g, d, f, "tested-with"));
        }
    }
    let main = members.iter().find(|(_, _, c)| !c.executables.is_empty());
    if let Some((d, f, c)) = main {
        project.entry = Some(join(d, f));
        if d == dir {
            project.name = c.name.clone().unwrap_or(project.name);
            project.version = c.version.clone();
        }
    }
    // Local package names, one per member, as the Nix package set needs them.
    project.dependencies = members
        .iter()
        .map(|(d, f, c)| {
            c.name.clone().unwrap_or_else(|| {
                let stem = f.trim_end_matches(".cabal");
                if stem == "package.yaml" {
                    d.rsplit('/').next().unwrap_or(d).to_string()
                } else {
                    stem.to_string()
                }
            }) + "="
                + d
        })
        .collect();
    project.members = members.iter().map(|(d, _, _)| d.clone()).collect();
    let claims: Vec<String> = project
        .members
        .iter()
        .filter(|m| *m != dir)
        .cloned()
        .collect();
    commands(&mut project);
    Some(Candidate::new(project, claims, versions))
}

/// A package directory's description: its `.cabal` file, else hpack's
/// `package.yaml` (Stack projects often commit only that; cabal2nix runs
/// hpack itself).
fn package_in(ctx: &mut Ctx<'_>, dir: &str) -> Option<(String, Cabal)> {
    if let Some(f) = files_with_ext(ctx, dir, &[".cabal"]).into_iter().next() {
        let c = parse_cabal(ctx.text(dir, &f).unwrap_or(""));
        return Some((f, c));
    }
    if !ctx.has(dir, "package.yaml") {
        return None;
    }
    let y = ctx.yaml(dir, "package.yaml")?;
    let s = |k: &str| y.get(k).and_then(Yaml::as_str).map(String::from);
    let mut executables: Vec<String> = y
        .get("executables")
        .and_then(Yaml::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    executables.sort();
    let c = Cabal {
        name: s("name"),
        version: s("version"),
        executables,
        tested_with: s("tested-with"),
    };
    Some(("package.yaml".into(), c))
}

fn commands(project: &mut super::Project) {
    let stack = project.package_manager == "stack";
    project.build = Some(if stack {
        "stack build --copy-bins --local-bin-path bin".into()
    } else {
        "cabal build all && cabal install --installdir=bin --install-method=copy".into()
    });
    project.run = project.binaries.first().map(|b| format!("./bin/{b}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cabal_fields() {
        let c = parse_cabal(
            "cabal-version: 3.0\nname:    todo-api\nversion: 0.2.0\ntested-with: GHC ==9.4.8 || ==9.6.4\n\nexecutable todo-api\n  main-is: Main.hs\n",
        );
        assert_eq!(c.name.as_deref(), Some("todo-api"));
        assert_eq!(c.executables, vec!["todo-api"]);
        assert_eq!(
            tested_ghc(c.tested_with.as_deref().unwrap()).as_deref(),
            Some("9.6.4")
        );
    }
}
