//! Toolchain version resolution. Every source that names a version is
//! collected, then one precedence picks the winner (ADR-autonix-2):
//!
//! 1. a pin in the manifest that the build tool itself enforces
//!    (go.mod `toolchain`, Gemfile `ruby`, Pipfile `python_version`,
//!    package.json `volta.node`, Gradle `languageVersion`, Maven `release`);
//! 2. version files, nearest directory first (project dir up to the root);
//!    within one directory the language's own file (rust-toolchain.toml,
//!    rust-toolchain, .nvmrc, .node-version, .python-version, runtime.txt,
//!    .ruby-version, .java-version, system.properties) before mise.toml /
//!    .mise.toml, before .tool-versions;
//! 3. constraints in the manifest (Cargo `rust-version`, go.mod `go`,
//!    `engines.node`, `requires-python`, Gemfile.lock `RUBY VERSION`,
//!    Maven/Gradle source levels).
//!
//! Disagreeing exact pins produce a warning naming the loser.

use super::{Ctx, Language, Project, rel_dir};
use crate::scan::join;

/// How strongly a source binds the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    ManifestPin,
    File,
    Constraint,
}

#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub value: String,
    /// `path` or `path (field)`, relative to the root.
    pub source: String,
    pub rank: Rank,
}

impl Candidate {
    pub(crate) fn pin(value: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            source: source.into(),
            rank: Rank::ManifestPin,
        }
    }
    pub(crate) fn constraint(value: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            source: source.into(),
            rank: Rank::Constraint,
        }
    }
}

/// Language-specific version files, in precedence order.
fn language_files(lang: Language) -> &'static [&'static str] {
    match lang {
        Language::Rust => &["rust-toolchain.toml", "rust-toolchain"],
        Language::Go => &[],
        Language::Node => &[".nvmrc", ".node-version"],
        Language::Python => &[".python-version", "runtime.txt"],
        Language::Ruby => &[".ruby-version"],
        Language::Java => &[".java-version", "system.properties"],
        other => super::stacks::version_files(other),
    }
}

/// Tool names used by asdf's `.tool-versions` and mise's `[tools]`.
fn tool_names(lang: Language) -> &'static [&'static str] {
    match lang {
        Language::Rust => &["rust"],
        Language::Go => &["golang", "go"],
        Language::Node => &["nodejs", "node"],
        Language::Python => &["python"],
        Language::Ruby => &["ruby"],
        Language::Java => &["java"],
        other => super::stacks::tool_names(other),
    }
}

/// Picks the toolchain version for `project` and records its source.
pub(crate) fn resolve(ctx: &mut Ctx<'_>, project: &mut Project, manifest: Vec<Candidate>) {
    let lang = project.language;
    let mut all: Vec<Candidate> = manifest
        .iter()
        .filter(|c| c.rank == Rank::ManifestPin)
        .cloned()
        .collect();
    // Walk from the project directory up to the root.
    let mut dir = rel_dir(&project.path);
    loop {
        for f in language_files(lang) {
            if let Some(c) = read_language_file(ctx, lang, &dir, f) {
                all.push(c);
            }
        }
        for f in ["mise.toml", ".mise.toml"] {
            if let Some(c) = read_mise(ctx, lang, &dir, f) {
                all.push(c);
            }
        }
        if let Some(c) = read_tool_versions(ctx, lang, &dir) {
            all.push(c);
        }
        if dir.is_empty() {
            break;
        }
        dir = match dir.rfind('/') {
            Some(i) => dir[..i].to_string(),
            None => String::new(),
        };
    }
    all.extend(manifest.into_iter().filter(|c| c.rank == Rank::Constraint));
    let Some(winner) = all.first().cloned() else {
        return;
    };
    for other in &all[1..] {
        if other.rank != Rank::Constraint && !same_version(&winner.value, &other.value) {
            ctx.warn(
                project.path.clone(),
                format!(
                    "{} version {} from {} overrides {} from {}",
                    lang.as_str(),
                    winner.value,
                    winner.source,
                    other.value,
                    other.source
                ),
            );
        }
    }
    project.toolchain_version = Some(winner.value);
    project.version_source = Some(winner.source);
}

/// `20` and `20.11.0` agree; `20` and `18` do not.
fn same_version(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
}

/// First meaningful line of a version file: comments and blank lines are
/// skipped (pyenv and nvm both allow `#` comments).
pub(crate) fn first_line(text: &str) -> Option<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .and_then(|l| l.split_whitespace().next())
}

/// Strips a tool prefix so versions compare: `v20` → `20`, `go1.22` →
/// `1.22`, `python-3.11.4` → `3.11.4`, `ruby-3.2.2` → `3.2.2`,
/// `temurin-17.0.2+8` → `17.0.2+8`.
pub(crate) fn normalize(lang: Language, raw: &str) -> String {
    let v = raw.trim().trim_matches(|c| c == '"' || c == '\'');
    let v = match lang {
        Language::Node => v.strip_prefix('v').unwrap_or(v),
        Language::Go => v.strip_prefix("go").unwrap_or(v),
        Language::Python => v.strip_prefix("python-").unwrap_or(v),
        Language::Ruby => v.strip_prefix("ruby-").unwrap_or(v),
        Language::Java => match v.rfind('-') {
            // Distribution prefix (temurin-, zulu-, openjdk-, corretto-).
            Some(i) if !v[..i].chars().next().is_some_and(|c| c.is_ascii_digit()) => &v[i + 1..],
            _ => v,
        },
        Language::Rust => v,
        other => super::stacks::normalize(other, v),
    };
    v.to_string()
}

fn read_language_file(
    ctx: &mut Ctx<'_>,
    lang: Language,
    dir: &str,
    name: &str,
) -> Option<Candidate> {
    if !ctx.has(dir, name) {
        return None;
    }
    let path = join(dir, name);
    let text = ctx.text(dir, name)?.to_string();
    let value = match name {
        "rust-toolchain.toml" => {
            let table = ctx.toml(dir, name)?;
            let channel = super::toml_str(&table, &["toolchain", "channel"]).map(String::from);
            if channel.is_none() {
                ctx.warn(&path, "no [toolchain] channel");
            }
            channel
        }
        "system.properties" => text
            .lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == "java.runtime.version")
            .map(|(_, v)| v.trim().to_string()),
        _ => first_line(&text).map(String::from),
    };
    match value {
        Some(v) => Some(Candidate {
            value: normalize(lang, &v),
            source: path,
            rank: Rank::File,
        }),
        None => {
            if name != "rust-toolchain.toml" && name != "system.properties" {
                ctx.warn(path, "version file names no version");
            }
            None
        }
    }
}

fn read_tool_versions(ctx: &mut Ctx<'_>, lang: Language, dir: &str) -> Option<Candidate> {
    let text = ctx.text(dir, ".tool-versions")?;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(tool), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        if tool_names(lang).contains(&tool) {
            return Some(Candidate {
                value: normalize(lang, version),
                source: join(dir, ".tool-versions"),
                rank: Rank::File,
            });
        }
    }
    None
}

fn read_mise(ctx: &mut Ctx<'_>, lang: Language, dir: &str, name: &str) -> Option<Candidate> {
    if !ctx.has(dir, name) {
        return None;
    }
    let table = ctx.toml(dir, name)?;
    let tools = table.get("tools")?.as_table()?;
    for tool in tool_names(lang) {
        let Some(v) = tools.get(*tool) else { continue };
        // mise accepts "20", ["20", "18"] or { version = "20" }.
        let version = match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Array(a) => a.first().and_then(|x| x.as_str()).map(String::from),
            toml::Value::Table(t) => t.get("version").and_then(|x| x.as_str()).map(String::from),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            _ => None,
        };
        if let Some(version) = version {
            return Some(Candidate {
                value: normalize(lang, &version),
                source: format!("{} (tools.{tool})", join(dir, name)),
                rank: Rank::File,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_files() {
        assert_eq!(first_line("# pinned\n\n3.12.1 # latest\n"), Some("3.12.1"));
        assert_eq!(first_line("  \n"), None);
        assert_eq!(normalize(Language::Node, "v20.11.0"), "20.11.0");
        assert_eq!(normalize(Language::Go, "go1.22.3"), "1.22.3");
        assert_eq!(normalize(Language::Python, "python-3.11.4"), "3.11.4");
        assert_eq!(normalize(Language::Java, "temurin-17.0.2+8"), "17.0.2+8");
        assert_eq!(normalize(Language::Java, "17"), "17");
        assert!(same_version("20", "20.11.0"));
        assert!(!same_version("20", "18.1"));
        assert!(!same_version("1.2", "1.20"));
    }
}

#[cfg(test)]
mod precedence {
    use crate::scan::Tree;

    /// Builds an in-memory tree from (path, text) pairs.
    fn tree(files: &[(&str, &str)]) -> Tree {
        let mut t = Tree {
            root: "/repo".into(),
            ..Tree::default()
        };
        t.dirs.entry(String::new()).or_default();
        for (path, text) in files {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            t.dirs
                .entry(dir.to_string())
                .or_default()
                .insert(name.to_string());
            t.files.insert(path.to_string(), Some(text.to_string()));
        }
        t
    }

    fn node_version(files: &[(&str, &str)]) -> (Option<String>, Option<String>) {
        let scan = crate::analysis::analyse(&tree(files));
        let p = scan
            .projects
            .iter()
            .find(|p| p.path == "web")
            .expect("web project");
        (p.toolchain_version.clone(), p.version_source.clone())
    }

    #[test]
    fn manifest_pin_then_nearest_file_then_constraint() {
        let pkg_volta = r#"{"name":"web","engines":{"node":">=16"},"volta":{"node":"21.1.0"}}"#;
        let pkg = r#"{"name":"web","engines":{"node":">=16"}}"#;
        let all = [
            ("web/package.json", pkg_volta),
            ("web/.nvmrc", "20\n"),
            (".tool-versions", "nodejs 18.0.0\n"),
            ("web/mise.toml", "[tools]\nnode = \"19\"\n"),
        ];
        assert_eq!(
            node_version(&all),
            (
                Some("21.1.0".into()),
                Some("web/package.json (volta.node)".into())
            )
        );
        let mut files = all.to_vec();
        files[0] = ("web/package.json", pkg);
        // The language's own file beats mise in the same directory.
        assert_eq!(
            node_version(&files),
            (Some("20".into()), Some("web/.nvmrc".into()))
        );
        files.remove(1);
        // mise in the project dir beats .tool-versions at the root.
        assert_eq!(
            node_version(&files),
            (Some("19".into()), Some("web/mise.toml (tools.node)".into()))
        );
        files.pop();
        assert_eq!(
            node_version(&files),
            (Some("18.0.0".into()), Some(".tool-versions".into()))
        );
        files.pop();
        assert_eq!(
            node_version(&files),
            (
                Some(">=16".into()),
                Some("web/package.json (engines.node)".into())
            )
        );
    }

    #[test]
    fn nearer_version_file_wins_and_conflicts_are_warned() {
        let files = [
            ("web/package.json", r#"{"name":"web"}"#),
            (".nvmrc", "18\n"),
            ("web/.node-version", "v20.1.0\n"),
        ];
        let scan = crate::analysis::analyse(&tree(&files));
        let p = &scan.projects[0];
        assert_eq!(p.toolchain_version.as_deref(), Some("20.1.0"));
        assert_eq!(p.version_source.as_deref(), Some("web/.node-version"));
        assert!(
            scan.warnings.iter().any(|w| w.message
                == "node version 20.1.0 from web/.node-version overrides 18 from .nvmrc"),
            "{:?}",
            scan.warnings
        );
    }
}
