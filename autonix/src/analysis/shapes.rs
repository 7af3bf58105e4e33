//! Repository shapes beyond one manifest per project: workspace members
//! that run on their own (reported as projects with the workspace's
//! package manager and lockfile and their own build and run), one tree
//! with two build systems (each reported, the one CI or the README uses
//! marked `preferred`), and services that only have a Dockerfile.

use std::collections::{BTreeMap, BTreeSet};

use super::versions::{self, Candidate as Version};
use super::{Candidate, Ctx, Language, Project, not_a_project, rel_dir};
use crate::scan::join;

/// What a member reported as a project takes from its workspace.
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    pub path: String,
    pub manifest: String,
    pub lockfile: Option<String>,
    pub lockfile_version: Option<u32>,
    pub package_manager: String,
    pub package_manager_version: Option<String>,
    pub versions: Vec<Version>,
}

/// Every claimed member directory → the workspace claiming it.
pub(crate) fn workspaces(candidates: &[Candidate]) -> BTreeMap<(Language, String), Workspace> {
    let mut out = BTreeMap::new();
    for c in candidates {
        let ws = Workspace {
            path: c.project.path.clone(),
            manifest: c.project.manifest.clone(),
            lockfile: c.project.lockfile.clone(),
            lockfile_version: c.project.lockfile_version,
            package_manager: c.project.package_manager.clone(),
            package_manager_version: c.project.package_manager_version.clone(),
            versions: c.versions.clone(),
        };
        for m in &c.claims {
            out.insert((c.project.language, m.clone()), ws.clone());
        }
    }
    out
}

/// True when a claimed member is reported as a project of its own: every Go
/// module of a go.work (each builds on its own), and members of the other
/// workspaces that run on their own (Cargo binaries, a Node start script or
/// server, Python scripts or entry files, a Spring Boot module).
pub(crate) fn member_is_project(p: &Project) -> bool {
    let Some(run) = &p.run else {
        return p.language == Language::Go;
    };
    match p.language {
        Language::Go => true,
        // `main` names a library's entry as often as a server's: only a
        // start script or a server file says the package runs.
        Language::Node => run.ends_with("start") || run.contains("server"),
        // Every jar has a `java -jar` guess; a framework says it runs.
        Language::Java => p.framework.is_some(),
        Language::Rust | Language::Python | Language::Ruby => true,
        // A .NET solution publishes its runnable project, a Haskell
        // workspace builds its executable package against the others, an
        // sbt build stages its app module, an umbrella's release holds
        // every app, a CMake/Meson build compiles its subdirectories: a
        // member built alone would miss its siblings.
        _ => false,
    }
}

/// Turns a member candidate into a project of the workspace: its lockfile,
/// package manager and versions are the workspace's, and its commands run
/// from the workspace root.
pub(crate) fn adopt(c: &mut Candidate, ws: &Workspace) {
    let p = &mut c.project;
    let dir = rel_dir(&p.path);
    let base = rel_dir(&ws.path);
    let rel = dir
        .strip_prefix(&format!("{base}/"))
        .filter(|_| !base.is_empty())
        .unwrap_or(&dir)
        .to_string();
    p.workspace = Some(ws.path.clone());
    // A Go module's go.sum is its own; another module's says nothing of it.
    if p.lockfile.is_none() && p.language != Language::Go {
        p.lockfile = ws.lockfile.clone();
        p.lockfile_version = ws.lockfile_version;
    }
    let inherited = p.package_manager != ws.package_manager;
    if inherited {
        p.package_manager = ws.package_manager.clone();
        p.package_manager_version = ws.package_manager_version.clone();
    }
    p.decided_by.insert(
        "workspace".into(),
        format!("a member of the workspace in {}", ws.manifest),
    );
    let cd = |cmd: &str| format!("cd {rel} && {cmd}");
    match p.language {
        Language::Rust => {
            p.build = Some(format!("cargo build --release -p {}", p.name));
        }
        Language::Node => {
            let (install, runner) = match p.package_manager.as_str() {
                "pnpm" => ("pnpm install --frozen-lockfile", "pnpm"),
                "yarn" => ("yarn install --frozen-lockfile", "yarn"),
                "yarn-berry" => ("yarn install --immutable", "yarn"),
                "bun" => ("bun install --frozen-lockfile", "bun run"),
                _ if p.lockfile.is_some() => ("npm ci", "npm run"),
                _ => ("npm install", "npm run"),
            };
            let has_build = p.build.as_deref().is_some_and(|b| b.contains("run build"));
            p.build = Some(if has_build {
                format!("{install} && {}", cd(&format!("{runner} build")))
            } else {
                install.to_string()
            });
            if let Some(run) = &p.run {
                // The member's own start script, run by the workspace's manager.
                let run = if run.ends_with("start") {
                    format!("{runner} start")
                } else {
                    run.clone()
                };
                p.run = Some(cd(&run));
            }
        }
        Language::Python if p.package_manager == "uv" => {
            p.build = Some(format!("uv sync --frozen --package {}", p.name));
            if let Some(run) = &p.run {
                let bare = ["uv run ", "poetry run ", "pdm run ", "pipenv run "]
                    .iter()
                    .find_map(|pre| run.strip_prefix(pre))
                    .unwrap_or(run);
                p.run = Some(format!("uv run --package {} {bare}", p.name));
            }
        }
        _ => {
            p.build = p.build.as_deref().map(cd);
            p.run = p.run.as_deref().map(cd);
        }
    }
    // go.work's `go` and `toolchain` govern its modules; elsewhere the
    // member's own manifest speaks first and the workspace's fills gaps.
    if p.language == Language::Go {
        let mut v = ws.versions.clone();
        v.append(&mut c.versions);
        c.versions = v;
    } else {
        c.versions.extend(ws.versions.iter().cloned());
    }
}

/// The words that show a build tool in use, in CI scripts or a README.
fn tool_words(package_manager: &str) -> &'static [&'static str] {
    match package_manager {
        "maven" => &["mvn", "maven"],
        "gradle" => &["gradle"],
        _ => &[],
    }
}

/// Where a project's tree has two build systems (same language, same
/// directory), marks the one CI uses as preferred, else the one the README
/// names; says so in `decided_by`, or that neither decides.
pub(crate) fn mark_preferred(ctx: &Ctx<'_>, projects: &mut [Project]) {
    let mut groups: BTreeMap<(Language, String), Vec<usize>> = BTreeMap::new();
    for (i, p) in projects.iter().enumerate() {
        groups
            .entry((p.language, p.path.clone()))
            .or_default()
            .push(i);
    }
    let ci: Vec<(String, String)> = ctx
        .tree
        .files
        .iter()
        .filter(|(path, _)| {
            path.starts_with(".github/workflows/")
                || path.starts_with(".circleci/")
                || matches!(
                    path.as_str(),
                    ".gitlab-ci.yml" | "Jenkinsfile" | "azure-pipelines.yml" | ".travis.yml"
                )
        })
        .filter_map(|(p, t)| t.as_ref().map(|t| (p.clone(), t.to_lowercase())))
        .collect();
    for ((_, path), idx) in groups {
        if idx.len() < 2 {
            continue;
        }
        let dir = rel_dir(&path);
        let readmes: Vec<(String, String)> = ["README.md", "README", "readme.md", "README.rst"]
            .iter()
            .flat_map(|r| [join(&dir, r), r.to_string()])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|f| {
                ctx.tree
                    .files
                    .get(&f)
                    .and_then(|t| t.as_ref())
                    .map(|t| (f, t.to_lowercase()))
            })
            .collect();
        let mentions = |texts: &[(String, String)], pm: &str| -> Option<String> {
            texts
                .iter()
                .find(|(_, t)| tool_words(pm).iter().any(|w| t.contains(w)))
                .map(|(f, _)| f.clone())
        };
        let mut decided = None;
        for (texts, what) in [(&ci, "CI"), (&readmes, "the README")] {
            let hits: Vec<(usize, String)> = idx
                .iter()
                .filter_map(|&i| mentions(texts, &projects[i].package_manager).map(|f| (i, f)))
                .collect();
            if hits.len() == 1 {
                decided = Some((hits[0].0, format!("{what} ({}) builds with it", hits[0].1)));
                break;
            }
        }
        for &i in &idx {
            let others: Vec<String> = idx
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| projects[j].package_manager.clone())
                .collect();
            let note = match &decided {
                Some((w, why)) if *w == i => {
                    projects[i].preferred = true;
                    format!("preferred over {}: {why}", others.join(", "))
                }
                Some((w, _)) => format!("{} is preferred", projects[*w].package_manager),
                None => format!(
                    "also built by {}; neither CI nor the README decides which is preferred",
                    others.join(", ")
                ),
            };
            projects[i].decided_by.insert("preferred".into(), note);
        }
    }
}

/// A package.json beside a Rails app that cannot run on its own is the
/// app's asset bundling (jsbundling-rails, cssbundling-rails: `rails
/// assets:precompile` runs its build script), not a project of its own.
pub(crate) fn fold_rails_assets(projects: &mut Vec<Project>, ignored: &mut Vec<super::Ignored>) {
    // Laravel and Symfony bundle their assets with Vite or Encore the same way.
    let rails: BTreeMap<String, &'static str> = projects
        .iter()
        .filter_map(|p| {
            let app = match (p.language, p.framework.as_deref()) {
                (Language::Ruby, Some("rails")) => "Rails",
                (Language::Php, Some("laravel")) => "Laravel",
                (Language::Php, Some("symfony")) => "Symfony",
                _ => return None,
            };
            Some((p.path.clone(), app))
        })
        .collect();
    projects.retain(|p| {
        let fold = p.language == Language::Node
            && p.run.is_none()
            && p.members.is_empty()
            && rails.contains_key(&p.path);
        if fold {
            ignored.push(super::Ignored {
                path: p.manifest.clone(),
                reason: format!(
                    "asset bundling of the {} app beside it (no run command of its own)",
                    rails[&p.path]
                ),
            });
        }
        !fold
    });
}

/// Language of a base image's tool (`python`, `node`, …), for services
/// that only have a Dockerfile.
fn image_language(tool: &str) -> Option<Language> {
    match tool {
        "python" => Some(Language::Python),
        "node" | "bun" => Some(Language::Node),
        "ruby" => Some(Language::Ruby),
        _ => None,
    }
}

/// The command a Dockerfile starts: ENTRYPOINT then CMD (the last of
/// each), exec form (`["python", "app.py"]`) or shell form.
pub(crate) fn container_command(text: &str) -> Option<String> {
    let mut entrypoint = None;
    let mut cmd = None;
    for line in text.lines() {
        let line = line.trim();
        let Some((kw, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim();
        let words = match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => v.join(" "),
            Err(_) => rest.to_string(),
        };
        if kw.eq_ignore_ascii_case("ENTRYPOINT") {
            entrypoint = Some(words);
        } else if kw.eq_ignore_ascii_case("CMD") {
            cmd = Some(words);
        }
    }
    let joined = [entrypoint, cmd]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!joined.is_empty()).then_some(joined)
}

/// Services with a Dockerfile and no manifest: the language and version
/// come from the base image, the run command from ENTRYPOINT/CMD. Only
/// interpreted languages qualify (a compiled service without a manifest
/// cannot be built outside its image); other images are left to the
/// report's container list.
pub(crate) fn dockerfile_services(
    ctx: &Ctx<'_>,
    taken: &BTreeSet<String>,
    ignored: &mut Vec<super::Ignored>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (dir, names) in &ctx.tree.dirs {
        if taken.contains(dir) || not_a_project(dir).is_some() {
            continue;
        }
        let Some(file) = names
            .iter()
            .find(|n| *n == "Dockerfile" || *n == "Containerfile")
        else {
            continue;
        };
        let Some(text) = ctx.text(dir, file) else {
            continue;
        };
        let images = versions::from_images(text);
        // The last stage is what runs.
        let Some((image, language)) = images.iter().rev().find_map(|i| {
            versions::image_version(i)
                .and_then(|(t, _)| image_language(t))
                .or_else(|| {
                    // `FROM python` without a tag still names the language.
                    let name = i.rsplit('/').next().unwrap_or(i);
                    let name = name.split([':', '@']).next().unwrap_or(name);
                    image_language(match name {
                        "python" => "python",
                        "node" => "node",
                        "ruby" => "ruby",
                        _ => "",
                    })
                })
                .map(|l| (i.clone(), l))
        }) else {
            ignored.push(super::Ignored {
                path: join(dir, file),
                reason: format!(
                    "no manifest, and its base image ({}) names no language autonix builds",
                    images.last().map(String::as_str).unwrap_or("none")
                ),
            });
            continue;
        };
        let mut project = ctx.project(dir, language, "none", file);
        project.run = container_command(text);
        project.decided_by.insert(
            "project".into(),
            format!(
                "{} has no manifest beside it; its base image {image} names the language",
                join(dir, file)
            ),
        );
        if let Some(run) = &project.run {
            project.decided_by.insert(
                "run".into(),
                format!("{} (ENTRYPOINT/CMD): {run}", join(dir, file)),
            );
        }
        out.push(Candidate::new(project, Vec::new(), Vec::new()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_commands() {
        assert_eq!(
            container_command("FROM python:3.12\nCMD [\"python\", \"worker.py\"]\n").as_deref(),
            Some("python worker.py")
        );
        assert_eq!(
            container_command("ENTRYPOINT [\"node\"]\nCMD server.js --port 8080\n").as_deref(),
            Some("node server.js --port 8080")
        );
        assert_eq!(container_command("FROM ruby:3.3\n"), None);
    }
}
