//! Python: requirements.txt, PEP 621 pyproject, poetry, uv (and its
//! workspaces), pdm, pipenv and setup.py; dependencies by name so the plan
//! can map them to nixpkgs' python packages.

use super::versions::Candidate as Version;
use super::{Candidate, Ctx, Language, toml_get, toml_str, toml_strings};
use crate::scan::join;

const MANIFESTS: &[&str] = &[
    "pyproject.toml",
    "Pipfile",
    "setup.py",
    "setup.cfg",
    "requirements.txt",
];

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let manifest = *MANIFESTS.iter().find(|m| ctx.has(dir, m))?;
    let mut project = ctx.project(dir, Language::Python, "pip", manifest);
    let mut versions = Vec::new();
    let mut deps: Vec<String> = Vec::new();
    let mut claims = Vec::new();
    let pyproject = if ctx.has(dir, "pyproject.toml") {
        ctx.toml(dir, "pyproject.toml")
    } else {
        None
    };
    let py_manifest = join(dir, "pyproject.toml");
    if let Some(t) = &pyproject {
        if let Some(n) =
            toml_str(t, &["project", "name"]).or_else(|| toml_str(t, &["tool", "poetry", "name"]))
        {
            project.name = n.to_string();
        }
        project.version = toml_str(t, &["project", "version"])
            .or_else(|| toml_str(t, &["tool", "poetry", "version"]))
            .map(String::from);
        if let Some(rp) = toml_str(t, &["project", "requires-python"]) {
            versions.push(Version::constraint(
                rp,
                format!("{py_manifest} (project.requires-python)"),
            ));
        }
        if let Some(rp) = toml_str(t, &["tool", "poetry", "dependencies", "python"]) {
            versions.push(Version::constraint(
                rp,
                format!("{py_manifest} (tool.poetry.dependencies.python)"),
            ));
        }
        // Workspace siblings (`[tool.uv.sources] x = { workspace = true }`)
        // are built from the tree, not taken from nixpkgs.
        let local: Vec<String> = toml_get(t, &["tool", "uv", "sources"])
            .and_then(|v| v.as_table())
            .map(|s| {
                s.iter()
                    .filter(|(_, v)| v.get("workspace").and_then(|w| w.as_bool()) == Some(true))
                    .map(|(k, _)| normalize_name(k))
                    .collect()
            })
            .unwrap_or_default();
        deps.extend(
            toml_strings(t, &["project", "dependencies"])
                .iter()
                .filter_map(|d| req_name(d))
                .filter(|d| !local.contains(d)),
        );
        if let Some(pd) =
            toml_get(t, &["tool", "poetry", "dependencies"]).and_then(|v| v.as_table())
        {
            deps.extend(
                pd.keys()
                    .filter(|k| *k != "python")
                    .map(|k| normalize_name(k)),
            );
        }
        project.build_system = toml_strings(t, &["build-system", "requires"])
            .iter()
            .filter_map(|d| req_name(d))
            .collect();
        let mut scripts: Vec<String> = Vec::new();
        for path in [
            &["project", "scripts"][..],
            &["tool", "poetry", "scripts"][..],
        ] {
            if let Some(s) = toml_get(t, path).and_then(|v| v.as_table()) {
                scripts.extend(s.keys().cloned());
            }
        }
        scripts.sort();
        scripts.dedup();
        project.binaries = scripts;
        let members = toml_strings(t, &["tool", "uv", "workspace", "members"]);
        if !members.is_empty() {
            let exclude = toml_strings(t, &["tool", "uv", "workspace", "exclude"]);
            project.members = ctx.expand_members(dir, &members, &exclude, &["pyproject.toml"]);
            claims = project.members.clone();
        }
    }
    if ctx.has(dir, "Pipfile")
        && let Some(p) = ctx.toml(dir, "Pipfile")
    {
        let src = join(dir, "Pipfile");
        if let Some(v) = toml_str(&p, &["requires", "python_full_version"]) {
            versions.push(Version::pin(
                v,
                format!("{src} (requires.python_full_version)"),
            ));
        } else if let Some(v) = toml_str(&p, &["requires", "python_version"]) {
            versions.push(Version::pin(v, format!("{src} (requires.python_version)")));
        }
        if let Some(pk) = p.get("packages").and_then(|v| v.as_table()) {
            deps.extend(pk.keys().map(|k| normalize_name(k)));
        }
    }
    if pyproject.is_none()
        && let Some(setup) = ctx.text(dir, "setup.py")
    {
        // Literal keyword arguments only; computed ones stay unknown.
        if let Some(n) = setup_kwarg(setup, "name") {
            project.name = n;
        }
        if let Some(v) = setup_kwarg(setup, "version") {
            project.version = Some(v);
        }
        if let Some(i) = setup.find("install_requires") {
            let rest = &setup[i..];
            if let (Some(a), Some(b)) = (rest.find('['), rest.find(']'))
                && a < b
            {
                deps.extend(
                    rest[a + 1..b]
                        .split(',')
                        .map(|s| s.trim().trim_matches(|c| c == '"' || c == '\''))
                        .filter_map(req_name),
                );
            }
        }
    }
    if let Some(req) = ctx.text(dir, "requirements.txt") {
        deps.extend(req.lines().filter_map(req_name));
    }
    deps.sort();
    deps.dedup();
    project.dependencies = deps;

    let tool = |k: &str| {
        pyproject
            .as_ref()
            .is_some_and(|t| toml_get(t, &["tool", k]).is_some())
    };
    let (pm, lock) = if ctx.has(dir, "uv.lock") {
        ("uv", Some("uv.lock"))
    } else if ctx.has(dir, "poetry.lock") || tool("poetry") {
        (
            "poetry",
            ctx.has(dir, "poetry.lock").then_some("poetry.lock"),
        )
    } else if ctx.has(dir, "pdm.lock") || tool("pdm") {
        ("pdm", ctx.has(dir, "pdm.lock").then_some("pdm.lock"))
    } else if ctx.has(dir, "Pipfile") {
        (
            "pipenv",
            ctx.has(dir, "Pipfile.lock").then_some("Pipfile.lock"),
        )
    } else if tool("uv") {
        ("uv", None)
    } else {
        ("pip", None)
    };
    project.package_manager = pm.into();
    project.lockfile = lock.map(|l| join(dir, l));
    if project.build_system.is_empty() && (ctx.has(dir, "setup.py") || ctx.has(dir, "setup.cfg")) {
        project.build_system = vec!["setuptools".into()];
    }

    let framework = if ctx.has(dir, "manage.py") || has_dep(&project.dependencies, "django") {
        Some("django")
    } else if has_dep(&project.dependencies, "fastapi") {
        Some("fastapi")
    } else if has_dep(&project.dependencies, "flask") {
        Some("flask")
    } else {
        None
    };
    project.framework = framework.map(String::from);
    let prefix = match pm {
        "poetry" => "poetry run ",
        "uv" => "uv run ",
        "pdm" => "pdm run ",
        "pipenv" => "pipenv run ",
        _ => "",
    };
    project.build = Some(
        match pm {
            "uv" => "uv sync --frozen",
            "poetry" => "poetry install --only main",
            "pdm" => "pdm install --prod",
            "pipenv" => "pipenv install --deploy",
            _ if ctx.has(dir, "requirements.txt") => "pip install -r requirements.txt",
            _ => "pip install .",
        }
        .to_string(),
    );
    let entry = |f: &str| ctx.has(dir, f);
    let run_reason = if entry("manage.py") {
        Some("manage.py (Django)".to_string())
    } else if let Some(s) = project.binaries.first() {
        Some(format!("the first [project.scripts] entry, {s}"))
    } else {
        ["main.py", "app.py"]
            .into_iter()
            .find(|f| entry(f))
            .map(|f| format!("{f} (no scripts declared)"))
    };
    if let Some(r) = run_reason {
        project.decided_by.insert("run".into(), r);
    }
    project.run = if entry("manage.py") {
        Some(format!("{prefix}python manage.py runserver 0.0.0.0:8000"))
    } else if let Some(s) = project.binaries.first() {
        Some(format!("{prefix}{s}"))
    } else if framework == Some("fastapi") && entry("main.py") {
        Some(format!("{prefix}uvicorn main:app --host 0.0.0.0"))
    } else if entry("main.py") {
        Some(format!("{prefix}python main.py"))
    } else if entry("app.py") {
        Some(format!("{prefix}python app.py"))
    } else {
        None
    };
    Some(Candidate::new(project, claims, versions))
}

/// `key="value"` (or single quotes) in a setup.py call.
fn setup_kwarg(text: &str, key: &str) -> Option<String> {
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        let before_ok = i == 0
            || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let after = rest[i + key.len()..].trim_start();
        if before_ok && let Some(v) = after.strip_prefix('=') {
            let v = v.trim_start();
            if let Some(q) = v.chars().next().filter(|c| *c == '"' || *c == '\'')
                && let Some(end) = v[1..].find(q)
            {
                return Some(v[1..1 + end].to_string());
            }
        }
        rest = &rest[i + key.len()..];
    }
    None
}

fn has_dep(deps: &[String], name: &str) -> bool {
    deps.iter().any(|d| d == name)
}

/// PEP 503 normalised name: lowercase, runs of `-_.` become `-`.
pub(crate) fn normalize_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Name of a PEP 508 requirement or requirements.txt line; None for
/// comments, options (`-r`, `-e`, `--hash`) and URLs.
pub(crate) fn req_name(line: &str) -> Option<String> {
    let line = line.split('#').next()?.trim();
    if line.is_empty() || line.starts_with('-') || line.contains("://") {
        return None;
    }
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(line.len());
    let name = &line[..end];
    (!name.is_empty()).then(|| normalize_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_names() {
        for (line, want) in [
            ("Django>=4.2,<5 # web", Some("django")),
            ("uvicorn[standard]==0.29", Some("uvicorn")),
            (
                "zope.interface ; python_version > '3'",
                Some("zope-interface"),
            ),
            ("-r base.txt", None),
            ("# just a comment", None),
        ] {
            assert_eq!(req_name(line).as_deref(), want, "{line}");
        }
        assert_eq!(normalize_name("Typing_Extensions"), "typing-extensions");
    }
}
