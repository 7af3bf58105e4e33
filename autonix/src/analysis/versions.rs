//! Toolchain version resolution. Every source that names a version is
//! collected, then one precedence picks the winner (ADR-autonix-2, revised
//! by ADR-autonix-6):
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
//!    Maven/Gradle source levels);
//! 4. CI: GitHub Actions `actions/setup-*` inputs (matrix values resolve to
//!    their lowest entry), `ruby/setup-ruby`, Rust toolchain actions, job
//!    container images and GitLab CI `image:`;
//! 5. Docker base images (`FROM python:3.11-slim`) in the project's
//!    directory.
//!
//! Over that order, an exact version beats a range, and a range beats a
//! channel name (`stable`, `lts/*`): the first exact candidate wins, else
//! the first range, normalised to the lowest version it allows (`>=24` →
//! `24`, kept beside it as `toolchain_range`), else the first name.
//! Disagreeing exact pins (ranks 1 and 2) produce a warning naming the loser.

use serde_yaml_ng::Value as Yaml;

use super::{Ctx, Language, Project, rel_dir};
use crate::scan::join;

/// How strongly a source binds the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    ManifestPin,
    File,
    Constraint,
    Ci,
    Docker,
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

/// A version the repository's CI states for a tool (`node`, `python`, `go`,
/// `java`, `ruby`, `rust`, `bun`), collected once per scan.
#[derive(Debug, Clone)]
pub(crate) struct ToolPin {
    pub tool: String,
    pub value: String,
    pub source: String,
}

/// What a version string is, for the exact-over-range rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One version: `20`, `3.11.4`, `1.75.0`, `nightly-2024-05-01`.
    Exact,
    /// A range, with the lowest concrete version it allows, if it has one.
    Range(Option<String>),
    /// A channel or alias: `stable`, `lts/*`, `latest`.
    Named,
}

/// Classifies a (normalised) version string.
pub(crate) fn classify(v: &str) -> Kind {
    let v = v.trim();
    let operators =
        |c: char| matches!(c, '<' | '>' | '=' | '^' | '~' | '*' | ',' | '|' | ' ' | '!');
    let wildcard = v
        .split('.')
        .skip(1)
        .any(|part| part == "x" || part == "X" || part == "*");
    if v.is_empty() {
        return Kind::Named;
    }
    if v.contains(operators) || wildcard || v.contains(" - ") {
        return Kind::Range(lowest(v));
    }
    if v.starts_with(|c: char| c.is_ascii_digit()) || v.starts_with("nightly-") {
        Kind::Exact
    } else {
        Kind::Named
    }
}

/// Numeric components of a version for ordering (`3.11.4` → [3, 11, 4]).
fn components(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+'])
        .map_while(|p| p.parse().ok())
        .collect()
}

/// The lowest concrete version a range allows: the largest lower bound of
/// its comparators, the smallest over `||` alternatives. `>18` → `19`,
/// `^3.11` → `3.11`, `>=3.9,<4` → `3.9`, `18.x` → `18`, `16 - 20` → `16`;
/// None when only upper bounds or wildcards remain (`<4`, `*`).
pub(crate) fn lowest(range: &str) -> Option<String> {
    let mut best: Option<String> = None;
    for alt in range.split("||") {
        let alt = alt.split(" - ").next().unwrap_or(alt);
        // Comparators are separated by commas or spaces; an operator may
        // stand apart from its version (`>= 18`).
        let mut comparators: Vec<String> = Vec::new();
        let mut pending = String::new();
        for tok in alt.split([',', ' ']).filter(|t| !t.is_empty()) {
            if tok.chars().all(|c| "<>=!~^".contains(c)) {
                pending.push_str(tok);
            } else {
                comparators.push(format!("{pending}{tok}"));
                pending.clear();
            }
        }
        let mut lower: Option<String> = None;
        for c in &comparators {
            let op_len = c.find(|ch: char| !"<>=!~^".contains(ch)).unwrap_or(c.len());
            let (op, ver) = c.split_at(op_len);
            let ver = ver.trim_start_matches('v');
            let ver: Vec<&str> = ver
                .split('.')
                .take_while(|p| !matches!(*p, "x" | "X" | "*" | ""))
                .collect();
            if ver.is_empty() {
                continue;
            }
            let ver = ver.join(".");
            if components(&ver).is_empty() {
                continue;
            }
            let bound = match op {
                "<" | "<=" | "!=" => continue,
                ">" => bump(&ver),
                _ => ver,
            };
            if lower
                .as_ref()
                .is_none_or(|l| components(&bound) > components(l))
            {
                lower = Some(bound);
            }
        }
        if let Some(l) = lower
            && best.as_ref().is_none_or(|b| components(&l) < components(b))
        {
            best = Some(l);
        }
    }
    best
}

/// The next version after `v` at its own precision: `18` → `19`, `3.8` → `3.9`.
fn bump(v: &str) -> String {
    let mut parts = components(v);
    if let Some(last) = parts.last_mut() {
        *last += 1;
    }
    parts
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
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
    let tool = lang.as_str();
    all.extend(
        ctx.tool_pins
            .iter()
            .filter(|p| p.tool == tool)
            .map(|p| Candidate {
                value: normalize(lang, &p.value),
                source: p.source.clone(),
                rank: Rank::Ci,
            }),
    );
    all.extend(docker_candidates(ctx, &rel_dir(&project.path), tool, lang));
    if project.package_manager == "bun"
        && project.package_manager_version.is_none()
        && let Some(p) = ctx.tool_pins.iter().find(|p| p.tool == "bun")
    {
        project.package_manager_version = Some(p.value.clone());
    }
    // Exact over range over name; within each, the precedence order above.
    let kinds: Vec<Kind> = all.iter().map(|c| classify(&c.value)).collect();
    // An exact version wins only if it satisfies every range stated by a
    // stronger source: CI testing Node 22 does not override `engines >=24`.
    let satisfies = |i: usize| {
        kinds[..i].iter().all(|k| match k {
            Kind::Range(Some(low)) => components(&all[i].value) >= components(low),
            _ => true,
        })
    };
    let pick = (0..all.len())
        .find(|&i| kinds[i] == Kind::Exact && satisfies(i))
        .or_else(|| kinds.iter().position(|k| matches!(k, Kind::Range(Some(_)))))
        .or_else(|| (!all.is_empty()).then_some(0));
    let Some(i) = pick else {
        return;
    };
    let winner = all[i].clone();
    for (other, kind) in all.iter().zip(&kinds) {
        if matches!(other.rank, Rank::ManifestPin | Rank::File)
            && *kind == Kind::Exact
            && kinds[i] == Kind::Exact
            && !same_version(&winner.value, &other.value)
        {
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
    let rule = match &kinds[i] {
        Kind::Exact if i > 0 => {
            "the first exact version by precedence, one that satisfies the ranges before it"
        }
        Kind::Exact => "the first source by precedence",
        Kind::Range(Some(_)) => {
            "no exact version satisfies it: the lowest version the range allows"
        }
        _ => "no source names a version, only a channel",
    };
    let others: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, c)| format!("{} ({})", c.value, c.source))
        .collect();
    let mut why = format!("{} says {}: {rule}", winner.source, winner.value);
    if !others.is_empty() {
        why.push_str(&format!("; also stated: {}", others.join(", ")));
    }
    project.decided_by.insert("toolchain_version".into(), why);
    match &kinds[i] {
        Kind::Range(Some(low)) => {
            project.toolchain_version = Some(low.clone());
            project.toolchain_range = Some(winner.value);
        }
        _ => project.toolchain_version = Some(winner.value),
    }
    project.version_source = Some(winner.source);
}

/// Docker base images in the project's directory that name `tool`.
fn docker_candidates(ctx: &Ctx<'_>, dir: &str, tool: &str, lang: Language) -> Vec<Candidate> {
    let mut out = Vec::new();
    let Some(names) = ctx.tree.dirs.get(dir) else {
        return out;
    };
    for name in names.iter().filter(|n| is_dockerfile(n)) {
        let Some(text) = ctx.text(dir, name) else {
            continue;
        };
        for image in from_images(text) {
            if let Some((t, v)) = image_version(&image)
                && t == tool
            {
                out.push(Candidate {
                    value: normalize(lang, &v),
                    source: format!("{} (FROM {image})", join(dir, name)),
                    rank: Rank::Docker,
                });
            }
        }
    }
    out
}

/// Dockerfile names: `Dockerfile`, `Containerfile`, `Dockerfile.dev`, `api.Dockerfile`.
pub(crate) fn is_dockerfile(name: &str) -> bool {
    name == "Dockerfile"
        || name == "Containerfile"
        || name.starts_with("Dockerfile.")
        || name.ends_with(".Dockerfile")
        || name.ends_with(".dockerfile")
}

/// Base images of a Dockerfile's `FROM` lines, in order, without stage
/// references (`FROM build` after `FROM x AS build`) or duplicates.
pub(crate) fn from_images(text: &str) -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if !w.next().is_some_and(|k| k.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let rest: Vec<&str> = w.filter(|t| !t.starts_with("--")).collect();
        let img = rest.first().copied().unwrap_or("");
        if !img.is_empty()
            && !stages.iter().any(|s| s.eq_ignore_ascii_case(img))
            && !images.iter().any(|b| b == img)
        {
            images.push(img.to_string());
        }
        if rest.len() >= 3 && rest[1].eq_ignore_ascii_case("as") {
            stages.push(rest[2].to_string());
        }
    }
    images
}

/// The tool and version a container image names: `python:3.11-slim` →
/// (python, 3.11), `node:18` → (node, 18), `golang:1.22-alpine` → (go,
/// 1.22), `eclipse-temurin:21-jre` → (java, 21), `maven:3.9-eclipse-temurin-21`
/// → (java, 21), `oven/bun:1.1` → (bun, 1.1). None for untagged images,
/// `latest`-style tags, variables and images that name no language.
pub(crate) fn image_version(image: &str) -> Option<(&'static str, String)> {
    let image = image.split('@').next().unwrap_or(image);
    if image.contains('$') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    let (name, tag) = last.split_once(':')?;
    let lead = |t: &str| -> Option<String> {
        let v: String = t
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let v = v.trim_end_matches('.').to_string();
        (!v.is_empty()).then_some(v)
    };
    // The JDK inside a build tool's image: `-eclipse-temurin-21`, `-jdk21`.
    let jdk_in = |t: &str| -> Option<String> {
        ["temurin-", "openjdk-", "corretto-", "jdk-", "jdk", "zulu-"]
            .iter()
            .find_map(|m| t.rfind(m).and_then(|i| lead(&t[i + m.len()..])))
    };
    let tool = match name {
        "python" | "pypy" => "python",
        "node" => "node",
        "golang" | "go" => "go",
        "ruby" => "ruby",
        "rust" => "rust",
        "bun" => "bun",
        "eclipse-temurin"
        | "openjdk"
        | "amazoncorretto"
        | "zulu-openjdk"
        | "sapmachine"
        | "ibm-semeru-runtimes"
        | "ibmjava" => "java",
        "maven" | "gradle" => return jdk_in(tag).map(|v| ("java", v)),
        _ => return None,
    };
    lead(tag).map(|v| (tool, v))
}

/// Every version the CI files state, tool by tool: GitHub Actions setup
/// steps (a `${{ matrix.x }}` input resolves to the lowest value of that
/// matrix entry) and job containers, GitLab CI `image:`.
pub(crate) fn ci_tool_pins(ctx: &mut Ctx<'_>) -> Vec<ToolPin> {
    let mut out = Vec::new();
    let files: Vec<String> = ctx
        .tree
        .files
        .keys()
        .filter(|p| {
            (p.starts_with(".github/workflows/") && (p.ends_with(".yml") || p.ends_with(".yaml")))
                || *p == ".gitlab-ci.yml"
        })
        .cloned()
        .collect();
    for path in files {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        let Some(y) = ctx.yaml(dir, name) else {
            continue;
        };
        if name == ".gitlab-ci.yml" {
            gitlab_pins(&y, &path, &mut out);
        } else {
            github_pins(&y, &path, &mut out);
        }
    }
    out
}

fn yaml_scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.trim().to_string()),
        Yaml::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn image_pin(image: &str, source: String, out: &mut Vec<ToolPin>) {
    if let Some((tool, value)) = image_version(image) {
        out.push(ToolPin {
            tool: tool.into(),
            value,
            source: format!("{source} (image {image})"),
        });
    }
}

fn gitlab_pins(y: &Yaml, path: &str, out: &mut Vec<ToolPin>) {
    let Some(m) = y.as_mapping() else { return };
    if let Some(img) = m.get("image").and_then(image_name) {
        image_pin(&img, path.to_string(), out);
    }
    for (k, job) in m {
        if let (Some(k), Some(img)) = (k.as_str(), job.get("image").and_then(image_name)) {
            image_pin(&img, format!("{path} ({k})"), out);
        }
    }
}

/// `image: node:20` or `image: { name: node:20 }`.
fn image_name(v: &Yaml) -> Option<String> {
    v.as_str()
        .map(String::from)
        .or_else(|| v.get("name").and_then(Yaml::as_str).map(String::from))
}

fn github_pins(y: &Yaml, path: &str, out: &mut Vec<ToolPin>) {
    const SETUP: &[(&str, &str, &str)] = &[
        ("actions/setup-node", "node-version", "node"),
        ("actions/setup-python", "python-version", "python"),
        ("actions/setup-go", "go-version", "go"),
        ("actions/setup-java", "java-version", "java"),
        ("ruby/setup-ruby", "ruby-version", "ruby"),
        ("oven-sh/setup-bun", "bun-version", "bun"),
        ("dtolnay/rust-toolchain", "toolchain", "rust"),
        ("actions-rs/toolchain", "toolchain", "rust"),
    ];
    let Some(jobs) = y.get("jobs").and_then(Yaml::as_mapping) else {
        return;
    };
    for job in jobs.values() {
        let matrix = job.get("strategy").and_then(|s| s.get("matrix"));
        if let Some(img) = job.get("container").and_then(image_name) {
            image_pin(&img, path.to_string(), out);
        }
        let Some(steps) = job.get("steps").and_then(Yaml::as_sequence) else {
            continue;
        };
        for step in steps {
            let Some(uses) = step.get("uses").and_then(Yaml::as_str) else {
                continue;
            };
            let (action, at) = uses.split_once('@').unwrap_or((uses, ""));
            let Some((_, input, tool)) = SETUP.iter().find(|(a, _, _)| *a == action) else {
                continue;
            };
            let given = step.get("with").and_then(|w| w.get(*input));
            // dtolnay/rust-toolchain@1.75 names the version in the ref.
            let value = match given.and_then(yaml_scalar) {
                Some(v) => matrix_value(matrix, &v),
                None if *tool == "rust" && at.starts_with(|c: char| c.is_ascii_digit()) => {
                    Some(at.to_string())
                }
                None => None,
            };
            if let Some(value) = value {
                out.push(ToolPin {
                    tool: (*tool).into(),
                    value,
                    source: format!("{path} ({action} {input})"),
                });
            }
        }
    }
}

/// A literal input as is; `${{ matrix.key }}` as the lowest version listed
/// under the job's matrix; any other expression is unknown.
fn matrix_value(matrix: Option<&Yaml>, v: &str) -> Option<String> {
    let Some(expr) = v.strip_prefix("${{").and_then(|r| r.strip_suffix("}}")) else {
        return Some(v.to_string());
    };
    let key = expr.trim().strip_prefix("matrix.")?;
    let values = matrix?.get(key)?.as_sequence()?;
    values
        .iter()
        .filter_map(yaml_scalar)
        .min_by(|a, b| components(a).cmp(&components(b)))
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

    #[test]
    fn ranges_normalise_to_their_lowest_version() {
        for (range, want) in [
            (">=24", Some("24")),
            (">= 18.17.0", Some("18.17.0")),
            (">18", Some("19")),
            (">3.8,<4", Some("3.9")),
            ("^3.11", Some("3.11")),
            ("~> 3.2", Some("3.2")),
            ("~=3.10.2", Some("3.10.2")),
            ("18.x", Some("18")),
            ("16 - 20", Some("16")),
            ("^18 || >=20", Some("18")),
            (">=3.9, !=3.9.1, <4", Some("3.9")),
            ("<4", None),
            ("*", None),
        ] {
            assert_eq!(lowest(range).as_deref(), want, "{range}");
            assert!(matches!(classify(range), Kind::Range(_)), "{range}");
        }
        assert_eq!(classify("20.11.1"), Kind::Exact);
        assert_eq!(classify("nightly-2024-05-01"), Kind::Exact);
        assert_eq!(classify("stable"), Kind::Named);
        assert_eq!(classify("lts/*"), Kind::Range(None));
    }

    #[test]
    fn container_images_name_a_language_and_version() {
        for (image, want) in [
            ("python:3.11-slim", Some(("python", "3.11"))),
            ("node:18", Some(("node", "18"))),
            ("golang:1.22-alpine", Some(("go", "1.22"))),
            ("docker.io/library/ruby:3.3", Some(("ruby", "3.3"))),
            ("eclipse-temurin:21-jre", Some(("java", "21"))),
            ("maven:3.9.6-eclipse-temurin-21", Some(("java", "21"))),
            ("gradle:8.5-jdk17", Some(("java", "17"))),
            ("oven/bun:1.1.38-alpine", Some(("bun", "1.1.38"))),
            ("rust:1.79@sha256:abc", Some(("rust", "1.79"))),
            ("python:latest", None),
            ("python", None),
            ("alpine:3.20", None),
            ("node:${NODE_VERSION}", None),
        ] {
            let got = image_version(image);
            assert_eq!(got.as_ref().map(|(t, v)| (*t, v.as_str())), want, "{image}");
        }
        assert_eq!(
            from_images(
                "FROM --platform=$BUILDPLATFORM golang:1.22 AS build\nFROM build AS test\nFROM gcr.io/distroless/static\n"
            ),
            vec!["golang:1.22", "gcr.io/distroless/static"]
        );
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
                Some("16".into()),
                Some("web/package.json (engines.node)".into())
            )
        );
    }

    #[test]
    fn ci_and_docker_come_after_the_repositorys_own_files() {
        let ci = "jobs:\n  t:\n    strategy:\n      matrix:\n        node: [22, 20]\n    steps:\n      - uses: actions/setup-node@v4\n        with:\n          node-version: ${{ matrix.node }}\n";
        let mut files = vec![
            (
                "web/package.json",
                r#"{"name":"web","engines":{"node":">=18"}}"#,
            ),
            (".github/workflows/ci.yml", ci),
            ("web/Dockerfile", "FROM node:21-alpine\n"),
            ("web/.nvmrc", "23\n"),
        ];
        assert_eq!(
            node_version(&files),
            (Some("23".into()), Some("web/.nvmrc".into()))
        );
        files.pop();
        // The matrix's lowest entry, exact, beats the engines range it satisfies.
        assert_eq!(
            node_version(&files),
            (
                Some("20".into()),
                Some(".github/workflows/ci.yml (actions/setup-node node-version)".into())
            )
        );
        files.remove(1);
        assert_eq!(
            node_version(&files),
            (
                Some("21".into()),
                Some("web/Dockerfile (FROM node:21-alpine)".into())
            )
        );
        // An image older than the range allows loses to the range.
        files[0] = (
            "web/package.json",
            r#"{"name":"web","engines":{"node":">=22"}}"#,
        );
        assert_eq!(
            node_version(&files),
            (
                Some("22".into()),
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
