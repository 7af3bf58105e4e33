//! Everything around the projects: tasks (Makefile, justfile, Taskfile,
//! package.json scripts, Procfile), CI definitions and container files.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value as Yaml;

use super::{
    CiFile, ComposeService, ContainerFile, Ctx, Language, Project, Task, not_a_project, rel_dir,
};
use crate::scan::join;

/// Gives every project a distinct name so the flake's attribute names do
/// not collide: of the projects sharing a name, the one nearest the root
/// keeps it, the others are named after their path (`mise/py` → `mise-py`),
/// then suffixed with their language or a number if still taken.
pub(crate) fn unique_names(projects: &mut [Project]) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for p in projects.iter() {
        *count.entry(p.name.clone()).or_default() += 1;
    }
    let mut order: Vec<usize> = (0..projects.len()).collect();
    order.sort_by_key(|&i| {
        (
            projects[i].path.matches('/').count(),
            projects[i].path != ".",
            projects[i].path.clone(),
        )
    });
    let mut seen = BTreeSet::new();
    for i in order {
        let p = &mut projects[i];
        let mut name = p.name.clone();
        if seen.contains(&name) && count[&p.name] > 1 && p.path != "." {
            name = p.path.replace('/', "-");
        }
        if seen.contains(&name) {
            name = format!("{name}-{}", p.language.as_str());
        }
        let base = name.clone();
        let mut n = 2;
        while seen.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        seen.insert(name.clone());
        p.name = name;
    }
}

fn split_file(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Maps every file of the tree through `f` (its path, directory and name),
/// keeping what it returns. The paths are copied first so `f` may read and
/// parse files through `ctx`, which records warnings.
fn each_file<'t, T>(
    ctx: &mut Ctx<'t>,
    mut f: impl FnMut(&mut Ctx<'t>, &str, &str, &str) -> Option<T>,
) -> Vec<T> {
    let paths: Vec<String> = ctx.tree.files.keys().cloned().collect();
    paths
        .iter()
        .filter_map(|path| {
            let (dir, name) = split_file(path);
            f(ctx, path, dir, name)
        })
        .collect()
}

/// Files the analysis should report on: not under vendored code, fixtures
/// or examples.
fn reported_files<'a>(
    ctx: &'a Ctx<'_>,
    names: &'a [&str],
) -> impl Iterator<Item = (String, String)> + 'a {
    ctx.tree.files.keys().filter_map(move |path| {
        let (dir, name) = split_file(path);
        (names.contains(&name) && not_a_project(dir).is_none())
            .then(|| (dir.to_string(), name.to_string()))
    })
}

fn task(file: &str, kind: &str, name: impl Into<String>, command: Option<String>) -> Task {
    Task {
        file: file.to_string(),
        kind: kind.into(),
        name: name.into(),
        command,
    }
}

pub(crate) fn tasks(ctx: &mut Ctx<'_>, projects: &mut [Project]) -> Vec<Task> {
    let mut out = Vec::new();
    let files: Vec<(String, String)> = reported_files(
        ctx,
        &[
            "Makefile",
            "makefile",
            "GNUmakefile",
            "justfile",
            "Justfile",
            ".justfile",
            "Taskfile.yml",
            "Taskfile.yaml",
            "Procfile",
        ],
    )
    .collect();
    for (dir, name) in files {
        let file = join(&dir, &name);
        let Some(text) = ctx.text(&dir, &name).map(String::from) else {
            continue;
        };
        match name.as_str() {
            "Makefile" | "makefile" | "GNUmakefile" => {
                out.extend(
                    make_targets(&text)
                        .into_iter()
                        .map(|t| task(&file, "make", t, None)),
                );
            }
            "justfile" | "Justfile" | ".justfile" => {
                out.extend(
                    just_recipes(&text)
                        .into_iter()
                        .map(|t| task(&file, "just", t, None)),
                );
            }
            "Procfile" => {
                for line in text.lines() {
                    let Some((n, cmd)) = line.split_once(':') else {
                        continue;
                    };
                    let n = n.trim();
                    if n.is_empty() || n.starts_with('#') || n.contains(' ') {
                        continue;
                    }
                    let cmd = cmd.trim().to_string();
                    if n == "web" {
                        set_web(projects, &dir, &cmd);
                    }
                    out.push(task(&file, "procfile", n, Some(cmd)));
                }
            }
            _ => {
                let Some(y) = ctx.yaml(&dir, &name) else {
                    continue;
                };
                if let Some(m) = y.get("tasks").and_then(Yaml::as_mapping) {
                    for (k, v) in m {
                        let Some(k) = k.as_str() else { continue };
                        let cmd = v
                            .get("cmds")
                            .and_then(Yaml::as_sequence)
                            .and_then(|s| s.first())
                            .and_then(|c| {
                                c.as_str().map(String::from).or_else(|| {
                                    c.get("cmd").and_then(Yaml::as_str).map(String::from)
                                })
                            });
                        out.push(task(&file, "task", k, cmd));
                    }
                }
            }
        }
    }
    // package.json scripts of every node project and workspace member.
    let mut pkg_dirs: BTreeSet<String> = BTreeSet::new();
    for p in projects.iter().filter(|p| p.language == Language::Node) {
        pkg_dirs.insert(rel_dir(&p.path));
        pkg_dirs.extend(p.members.iter().cloned());
    }
    for dir in pkg_dirs {
        let Some(text) = ctx.text(&dir, "package.json") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            continue;
        };
        if let Some(scripts) = v.get("scripts").and_then(|s| s.as_object()) {
            for (k, cmd) in scripts {
                let file = join(&dir, "package.json");
                out.push(task(&file, "npm", k, cmd.as_str().map(String::from)));
            }
        }
    }
    out.sort_by(|a, b| (&a.file, &a.kind).cmp(&(&b.file, &b.kind)));
    out
}

/// A Procfile's `web` process is how the project in that directory runs;
/// a non-Node project wins when a directory has several (Rails + assets).
fn set_web(projects: &mut [Project], dir: &str, cmd: &str) {
    let mut here: Vec<&mut Project> = projects
        .iter_mut()
        .filter(|p| rel_dir(&p.path) == dir)
        .collect();
    here.sort_by_key(|p| p.language == Language::Node);
    if let Some(p) = here.into_iter().next() {
        p.run = Some(cmd.to_string());
        p.decided_by.insert(
            "run".into(),
            format!("the Procfile's web process ({})", join(dir, "Procfile")),
        );
    }
}

/// Makefile targets: `name:` at column 0, not variables (`:=`), pattern
/// rules (`%`) or special targets (`.PHONY`).
pub(crate) fn make_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with(['\t', ' ', '#', '.']) {
            continue;
        }
        let Some((head, rest)) = line.split_once(':') else {
            continue;
        };
        if rest.starts_with('=') || head.contains(['=', '%', '$', '?', '+']) {
            continue;
        }
        for t in head.split_whitespace() {
            if !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
    }
    out
}

/// justfile recipes: `name args*:` at column 0, skipping settings,
/// aliases, assignments and imports.
pub(crate) fn just_recipes(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t', '#', '[']) || line.trim().is_empty() {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "set" | "alias" | "export" | "import" | "mod") {
            continue;
        }
        let Some((head, rest)) = line.split_once(':') else {
            continue;
        };
        if rest.starts_with('=') || head.contains(":=") {
            continue;
        }
        let name = head
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_start_matches('@');
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            out.push(name.to_string());
        }
    }
    out
}

pub(crate) fn ci_files(ctx: &mut Ctx<'_>) -> Vec<CiFile> {
    each_file(ctx, |ctx, path, dir, name| {
        let yml = name.ends_with(".yml") || name.ends_with(".yaml");
        let system = match (dir, name) {
            (".github/workflows", _) if yml => "github-actions",
            ("", ".gitlab-ci.yml") => "gitlab-ci",
            (".circleci", "config.yml") => "circleci",
            ("", "Jenkinsfile") => "jenkins",
            ("", ".travis.yml") => "travis",
            ("", "azure-pipelines.yml") => "azure-pipelines",
            ("", "bitbucket-pipelines.yml") => "bitbucket-pipelines",
            ("", ".drone.yml") => "drone",
            (".buildkite", _) if yml => "buildkite",
            ("", ".woodpecker.yml") | (".woodpecker", _) if yml || name == ".woodpecker.yml" => {
                "woodpecker"
            }
            _ => return None,
        };
        let mut jobs = Vec::new();
        if yml && let Some(y) = ctx.yaml(dir, name) {
            match system {
                "github-actions" | "circleci" => {
                    if let Some(m) = y.get("jobs").and_then(Yaml::as_mapping) {
                        jobs = m
                            .keys()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect();
                    }
                }
                "gitlab-ci" => {
                    const RESERVED: &[&str] = &[
                        "stages",
                        "variables",
                        "default",
                        "include",
                        "workflow",
                        "image",
                        "services",
                        "cache",
                        "before_script",
                        "after_script",
                    ];
                    if let Some(m) = y.as_mapping() {
                        jobs = m
                            .keys()
                            .filter_map(|k| k.as_str())
                            .filter(|k| !k.starts_with('.') && !RESERVED.contains(k))
                            .map(String::from)
                            .collect();
                    }
                }
                _ => {}
            }
        }
        Some(CiFile {
            path: path.to_string(),
            system: system.into(),
            jobs,
        })
    })
}

pub(crate) fn container_files(ctx: &mut Ctx<'_>) -> Vec<ContainerFile> {
    each_file(ctx, |ctx, path, dir, name| {
        if not_a_project(dir).is_some() {
            return None;
        }
        let dockerfile = super::versions::is_dockerfile(name);
        let compose = matches!(
            name,
            "docker-compose.yml"
                | "docker-compose.yaml"
                | "compose.yml"
                | "compose.yaml"
                | "docker-compose.override.yml"
                | "compose.override.yml"
        );
        if dockerfile {
            let text = ctx.text(dir, name).unwrap_or("");
            let base_images = super::versions::from_images(text);
            let exposed_ports: Vec<String> = text
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    w.next()
                        .is_some_and(|k| k.eq_ignore_ascii_case("EXPOSE"))
                        .then(|| w.map(String::from).collect::<Vec<_>>())
                })
                .flatten()
                .collect();
            Some(ContainerFile {
                path: path.to_string(),
                kind: "dockerfile".into(),
                base_images,
                exposed_ports,
                services: vec![],
            })
        } else if compose {
            let mut services = Vec::new();
            if let Some(y) = ctx.yaml(dir, name)
                && let Some(m) = y.get("services").and_then(Yaml::as_mapping)
            {
                for (k, v) in m {
                    let Some(k) = k.as_str() else { continue };
                    let build = match v.get("build") {
                        Some(Yaml::String(s)) => Some(s.clone()),
                        Some(b) => b.get("context").and_then(Yaml::as_str).map(String::from),
                        None => None,
                    }
                    .map(|b| {
                        let j = crate::glob::under(dir, &b);
                        if j.is_empty() { ".".to_string() } else { j }
                    });
                    let ports = v
                        .get("ports")
                        .and_then(Yaml::as_sequence)
                        .map(|s| {
                            s.iter()
                                .filter_map(|p| match p {
                                    Yaml::String(s) => Some(s.clone()),
                                    Yaml::Number(n) => Some(n.to_string()),
                                    m => m.get("target").map(|t| match t {
                                        Yaml::Number(n) => n.to_string(),
                                        other => other.as_str().unwrap_or("").to_string(),
                                    }),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    services.push(ComposeService {
                        name: k.into(),
                        image: v.get("image").and_then(Yaml::as_str).map(String::from),
                        build,
                        ports,
                    });
                }
            }
            Some(ContainerFile {
                path: path.to_string(),
                kind: "compose".into(),
                base_images: vec![],
                exposed_ports: vec![],
                services,
            })
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_and_just() {
        let mk = ".PHONY: build test\nCC := gcc\nbuild: deps\n\tcargo build\ntest:\n\tcargo test\n%.o: %.c\n\tcc\nall build2: x\n";
        assert_eq!(make_targets(mk), vec!["build", "test", "all", "build2"]);
        let just = "set shell := [\"bash\", \"-c\"]\nversion := \"1\"\n# build it\nbuild target='debug':\n  cargo build\n@test: build\n  cargo test\nalias b := build\n";
        assert_eq!(just_recipes(just), vec!["build", "test"]);
    }
}
