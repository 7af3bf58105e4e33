//! Elixir: Mix projects (`mix.exs`: app, version, the `elixir:`
//! requirement, dependencies), `mix.lock`, umbrella projects
//! (`apps_path`) and Phoenix, whose release is started with `PHX_SERVER`.

use super::stacks::{constraint, identifier_after, string_after};
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let text = ctx.text(dir, "mix.exs")?.to_string();
    let mut project = ctx.project(dir, Language::Elixir, "mix", "mix.exs");
    if let Some(app) = atom_after(&text, "app:") {
        project.name = app;
    }
    project.version = string_after(&text, "version:");
    let mut versions = Vec::new();
    if let Some(v) = string_after(&text, "elixir:") {
        versions.push(constraint(&v, dir, "mix.exs", "elixir"));
    }
    if ctx.has(dir, "mix.lock") {
        project.lockfile = Some(join(dir, "mix.lock"));
    }
    let mut deps: Vec<String> = text
        .lines()
        .filter_map(|l| atom_after(l.trim_start().strip_prefix('{')?, ""))
        .collect();
    deps.sort();
    deps.dedup();
    let mut claims = Vec::new();
    if let Some(apps) = string_after(&text, "apps_path:") {
        let prefix = join(dir, &apps);
        claims = ctx
            .tree
            .dirs
            .iter()
            .filter(|(d, f)| {
                f.contains("mix.exs")
                    && d.strip_prefix(&format!("{prefix}/"))
                        .is_some_and(|rest| !rest.contains('/'))
            })
            .map(|(d, _)| d.clone())
            .collect();
        project.members = claims.clone();
        for m in &claims {
            if let Some(t) = ctx.text(m, "mix.exs") {
                deps.extend(
                    t.lines()
                        .filter_map(|l| atom_after(l.trim_start().strip_prefix('{')?, "")),
                );
            }
        }
        deps.sort();
        deps.dedup();
    }
    let phoenix = deps.iter().any(|d| d == "phoenix");
    if phoenix {
        project.framework = Some("phoenix".into());
    }
    let assets = phoenix && text.contains("\"assets.deploy\"");
    project.build = Some(format!(
        "mix deps.get --only prod && MIX_ENV=prod mix compile{} && MIX_ENV=prod mix release",
        if assets {
            " && MIX_ENV=prod mix assets.deploy"
        } else {
            ""
        }
    ));
    let release = format!("_build/prod/rel/{0}/bin/{0}", project.name);
    project.run = Some(if phoenix {
        format!("PHX_SERVER=true {release} start")
    } else {
        format!("{release} start")
    });
    project.binaries = vec![project.name.clone()];
    Some(Candidate::new(project, claims, versions))
}

/// The atom after `key` (`app: :my_app` → `my_app`; with an empty key, a
/// dependency tuple's first element `:phoenix, "~> 1.7"` → `phoenix`).
fn atom_after(text: &str, key: &str) -> Option<String> {
    identifier_after(text, key, ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoms() {
        assert_eq!(
            atom_after("      app: :hello_web,", "app:").as_deref(),
            Some("hello_web")
        );
        assert_eq!(
            atom_after(":phoenix, \"~> 1.7.10\"},", "").as_deref(),
            Some("phoenix")
        );
        assert_eq!(atom_after("app: \"x\"", "app:"), None);
    }
}
