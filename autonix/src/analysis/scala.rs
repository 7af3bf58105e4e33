//! Scala: sbt builds (`build.sbt`: name, version, `scalaVersion`, the
//! subprojects `project.in(file(…))`, sbt-native-packager's
//! `JavaAppPackaging`), `project/build.properties` (`sbt.version`) and
//! `project/plugins.sbt` (sbt-assembly).

use super::stacks::{pin, string_after};
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let text = ctx.text(dir, "build.sbt")?.to_string();
    let mut project = ctx.project(dir, Language::Scala, "sbt", "build.sbt");
    let project_dir = join(dir, "project");
    project.package_manager_version = ctx.text(&project_dir, "build.properties").and_then(|t| {
        t.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == "sbt.version")
            .map(|(_, v)| v.trim().to_string())
    });
    let plugins = ctx
        .text(&project_dir, "plugins.sbt")
        .unwrap_or("")
        .to_string();
    let mut versions = Vec::new();
    // sbt downloads exactly this compiler: a pin.
    if let Some(v) = string_after(&text, "scalaVersion :=") {
        versions.push(pin(&v, dir, "build.sbt", "scalaVersion"));
    }
    project.version = string_after(&text, "version :=");
    // Subprojects: `lazy val core = (project in file("core"))` or
    // `project.in(file("core"))`, each with its own settings block.
    let mut modules: Vec<(String, String, String)> = Vec::new();
    let defs: Vec<&str> = text.split("lazy val ").skip(1).collect();
    for def in defs {
        let ident: String = def
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if let Some(path) = string_after(&def.replace('\n', " "), "file(") {
            modules.push((ident, path, def.to_string()));
        }
    }
    let root_name = string_after(&text, "name :=");
    if let Some(n) = &root_name {
        project.name = n.clone();
    }
    let packaged = |block: &str| block.contains("JavaAppPackaging");
    let mut members = Vec::new();
    let mut app: Option<(String, String)> = None;
    for (ident, path, block) in &modules {
        let d = crate::glob::under(dir, path);
        if d != dir {
            members.push(d.clone());
        }
        if app.is_none() && packaged(block) {
            let name = string_after(block, "name :=").unwrap_or_else(|| ident.clone());
            app = Some((ident.clone(), name));
        }
    }
    members.sort();
    members.dedup();
    project.members = members.clone();
    let assembly = plugins.contains("sbt-assembly");
    let single = modules.is_empty() && packaged(&text);
    project.build = Some(match (&app, single, assembly) {
        (Some((ident, _)), _, _) => format!("sbt {ident}/stage"),
        (None, true, _) => "sbt stage".into(),
        (None, false, true) => "sbt assembly".into(),
        _ => "sbt compile".into(),
    });
    project.run = match (&app, single) {
        (Some((ident, name)), _) => {
            let path = modules
                .iter()
                .find(|(i, _, _)| i == ident)
                .map(|(_, p, _)| p.trim_start_matches("./").to_string())
                .unwrap_or_default();
            Some(format!("{path}/target/universal/stage/bin/{name}"))
        }
        (None, true) => Some(format!("target/universal/stage/bin/{}", project.name)),
        _ => None,
    };
    project.binaries = app.map(|(_, n)| n).into_iter().collect();
    Some(Candidate::new(project, members, versions))
}
