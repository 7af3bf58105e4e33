//! conda environments: `environment.yml` / `environment.yaml` (name,
//! channels, the pinned `python`, conda and pip dependencies) and
//! conda-lock's `conda-lock.yml`. Reported as Python projects whose
//! package manager is conda.

use serde_yaml_ng::Value as Yaml;

use super::stacks::constraint;
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let file = ["environment.yml", "environment.yaml"]
        .into_iter()
        .find(|f| ctx.has(dir, f))?;
    let mut project = ctx.project(dir, Language::Python, "conda", file);
    let y = ctx.yaml(dir, file)?;
    // Without dependencies it is some other tool's environment.yml
    // (Ansible, CI matrices).
    y.get("dependencies")?;
    if let Some(n) = y.get("name").and_then(Yaml::as_str) {
        project.name = n.to_string();
    }
    let mut versions = Vec::new();
    let mut deps = Vec::new();
    for d in y
        .get("dependencies")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        match d {
            Yaml::String(spec) => {
                // `python=3.11`, `numpy>=1.26`, `conda-forge::pandas`.
                let spec = spec.rsplit("::").next().unwrap_or(spec).trim();
                let end = spec
                    .find(|c: char| "=<>!~ ".contains(c))
                    .unwrap_or(spec.len());
                let (name, rest) = spec.split_at(end);
                if name == "python" {
                    let v = rest.trim().strip_prefix('=').unwrap_or(rest.trim());
                    if !v.is_empty() {
                        versions.push(constraint(v, dir, file, "dependencies python"));
                    }
                } else if name != "pip" && !name.is_empty() {
                    deps.push(name.to_string());
                }
            }
            Yaml::Mapping(m) => {
                if let Some(pip) = m.get("pip").and_then(Yaml::as_sequence) {
                    deps.extend(
                        pip.iter()
                            .filter_map(Yaml::as_str)
                            .filter(|p| !p.starts_with('-'))
                            .filter_map(super::python::req_name),
                    );
                }
            }
            _ => {}
        }
    }
    deps.sort();
    deps.dedup();
    project.dependencies = deps;
    if ctx.has(dir, "conda-lock.yml") {
        project.lockfile = Some(join(dir, "conda-lock.yml"));
        project.build = Some(format!(
            "conda-lock install --name {} conda-lock.yml",
            project.name
        ));
    } else {
        project.build = Some(format!("conda env create --file {file}"));
    }
    Some(Candidate::new(project, Vec::new(), versions))
}
