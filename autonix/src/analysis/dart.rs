//! Dart and Flutter: `pubspec.yaml` (name, version, the `environment`
//! SDK constraints, the flutter SDK dependency, executables),
//! `pubspec.lock`, FVM's `.fvmrc` pin and pub workspaces.

use serde_yaml_ng::Value as Yaml;

use super::stacks::{constraint, pin};
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    if !ctx.has(dir, "pubspec.yaml") {
        return None;
    }
    let mut project = ctx.project(dir, Language::Dart, "pub", "pubspec.yaml");
    let Some(y) = ctx.yaml(dir, "pubspec.yaml") else {
        return Some(Candidate::new(project, Vec::new(), Vec::new()));
    };
    let s = |v: Option<&Yaml>| v.and_then(Yaml::as_str).map(String::from);
    if let Some(n) = s(y.get("name")) {
        project.name = n;
    }
    project.version = s(y.get("version"));
    let flutter = y
        .get("dependencies")
        .and_then(|d| d.get("flutter"))
        .and_then(|f| f.get("sdk"))
        .and_then(Yaml::as_str)
        == Some("flutter");
    if ctx.has(dir, "pubspec.lock") {
        project.lockfile = Some(join(dir, "pubspec.lock"));
    }
    let env = y.get("environment");
    let mut versions = Vec::new();
    if flutter {
        project.framework = Some("flutter".into());
        if let Some(v) = super::stacks::nearest(ctx, dir, ".fvmrc").and_then(|d| {
            let v: serde_json::Value = serde_json::from_str(ctx.text(&d, ".fvmrc")?).ok()?;
            Some((d, v.get("flutter")?.as_str()?.to_string()))
        }) {
            versions.push(pin(&v.1, &v.0, ".fvmrc", "flutter"));
        }
        if let Some(v) = s(env.and_then(|e| e.get("flutter"))) {
            versions.push(constraint(&v, dir, "pubspec.yaml", "environment.flutter"));
        }
    } else if let Some(v) = s(env.and_then(|e| e.get("sdk"))) {
        versions.push(constraint(&v, dir, "pubspec.yaml", "environment.sdk"));
    }
    // Pub workspaces (Dart 3.6): the root lists its packages.
    let mut claims = Vec::new();
    if let Some(ws) = y.get("workspace").and_then(Yaml::as_sequence) {
        for m in ws.iter().filter_map(Yaml::as_str) {
            let d = crate::glob::under(dir, m);
            if ctx.has(&d, "pubspec.yaml") {
                claims.push(d);
            }
        }
        project.members = claims.clone();
    }
    let bin = join(dir, "bin");
    if flutter {
        let web_only = ctx.tree.dirs.contains_key(&join(dir, "web"))
            && !ctx.tree.dirs.contains_key(&join(dir, "linux"));
        if web_only {
            project.build = Some("flutter build web --release".into());
            project.run = None;
        } else {
            project.build = Some("flutter build linux --release".into());
            project.run = Some(format!("build/linux/x64/release/bundle/{}", project.name));
            project.binaries = vec![project.name.clone()];
        }
    } else {
        let mut exes: Vec<String> = match y.get("executables").and_then(Yaml::as_mapping) {
            Some(m) => m
                .keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect(),
            None => ctx
                .tree
                .dirs
                .get(&bin)
                .map(|f| {
                    f.iter()
                        .filter_map(|n| n.strip_suffix(".dart").map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        };
        exes.sort();
        project.build = exes
            .first()
            .map(|e| format!("dart pub get && dart compile exe bin/{e}.dart -o bin/{e}"))
            .or(Some("dart pub get".into()));
        project.run = exes.first().map(|e| format!("./bin/{e}"));
        project.binaries = exes;
    }
    Some(Candidate::new(project, claims, versions))
}

/// The platform directories `flutter create` generates next to a Flutter
/// app's pubspec.yaml (`android/`, `linux/`, …) hold runners for the app,
/// with their own Gradle and CMake files: not projects of their own.
pub(crate) fn platform_runner(ctx: &Ctx<'_>, dir: &str) -> bool {
    const PLATFORMS: &[&str] = &["android", "ios", "linux", "macos", "windows", "web"];
    let comps: Vec<&str> = dir.split('/').collect();
    (0..comps.len()).any(|i| {
        PLATFORMS.contains(&comps[i])
            && ctx
                .text(&comps[..i].join("/"), "pubspec.yaml")
                .is_some_and(|t| t.contains("sdk: flutter"))
    })
}
