//! Go: modules (go.mod, wherever its `go` and `toolchain` directives sit)
//! and workspaces (go.work and the modules it `use`s).

use super::versions::Candidate as Version;
use super::{Candidate, Ctx, Language};
use crate::scan::join;

/// What a go.mod or go.work says.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct GoFile {
    pub module: Option<String>,
    pub go: Option<String>,
    pub toolchain: Option<String>,
    pub uses: Vec<String>,
}

/// Parses go.mod / go.work directives, including `( … )` blocks and
/// comments, in any order.
pub(crate) fn parse(text: &str) -> GoFile {
    let mut out = GoFile::default();
    let mut block: Option<String> = None;
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(b) = &block {
            if line == ")" {
                block = None;
            } else if b == "use" {
                out.uses
                    .push(unquote(line.split_whitespace().next().unwrap_or("")));
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(directive) = words.next() else {
            continue;
        };
        let arg = words.next().unwrap_or("");
        if arg == "(" {
            block = Some(directive.to_string());
            continue;
        }
        match directive {
            "module" => out.module = Some(unquote(arg)),
            "go" => out.go = Some(arg.to_string()),
            "toolchain" => out.toolchain = Some(arg.to_string()),
            "use" => out.uses.push(unquote(arg)),
            _ => {}
        }
    }
    out
}

fn unquote(s: &str) -> String {
    s.trim_matches(|c| c == '"' || c == '`').to_string()
}

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Vec<Candidate> {
    let work = if ctx.has(dir, "go.work") {
        detect_work(ctx, dir)
    } else {
        None
    };
    let module = if ctx.has(dir, "go.mod") {
        detect_mod(ctx, dir)
    } else {
        None
    };
    match (work, module) {
        // A go.work beside a go.mod: one project, the module, listing the
        // workspace's other modules (whether or not it `use`s `.`, two
        // projects in one directory would be one too many); go.work's
        // versions first.
        (Some(w), Some(mut m)) => {
            m.project.members = w
                .project
                .members
                .iter()
                .filter(|d| *d != dir)
                .cloned()
                .collect();
            m.claims = m.project.members.clone();
            m.project.decided_by.insert(
                "members".into(),
                format!(
                    "go.work uses this module and {} other(s)",
                    m.project.members.len()
                ),
            );
            let mut versions = w.versions;
            versions.append(&mut m.versions);
            m.versions = versions;
            vec![m]
        }
        // A workspace of no module builds nothing and is not a project.
        (Some(w), None) if w.project.members.is_empty() => {
            ctx.warn(&w.project.manifest, "uses no module with a go.mod");
            Vec::new()
        }
        (w, m) => w.into_iter().chain(m).collect(),
    }
}

fn directive_versions(f: &GoFile, manifest: &str) -> Vec<Version> {
    let mut v = Vec::new();
    if let Some(t) = &f.toolchain {
        v.push(Version::pin(
            t.trim_start_matches("go"),
            format!("{manifest} (toolchain)"),
        ));
    }
    if let Some(g) = &f.go {
        v.push(Version::constraint(g, format!("{manifest} (go)")));
    }
    v
}

fn detect_mod(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let text = ctx.text(dir, "go.mod")?.to_string();
    let f = parse(&text);
    let mut project = ctx.project(dir, Language::Go, "go", "go.mod");
    match &f.module {
        Some(m) => project.name = m.rsplit('/').next().unwrap_or(m).to_string(),
        None => ctx.warn(&project.manifest, "no module directive"),
    }
    if ctx.has(dir, "go.sum") {
        project.lockfile = Some(join(dir, "go.sum"));
    }
    project.vendored = ctx.has(&join(dir, "vendor"), "modules.txt");
    project.binaries = mains(ctx, dir, &project.name);
    set_commands(&mut project);
    let versions = directive_versions(&f, &project.manifest);
    Some(Candidate::new(project, Vec::new(), versions))
}

fn detect_work(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let text = ctx.text(dir, "go.work")?.to_string();
    let f = parse(&text);
    let mut project = ctx.project(dir, Language::Go, "go", "go.work");
    let mut members = Vec::new();
    for u in &f.uses {
        let m = crate::glob::under(dir, u);
        if ctx.has(&m, "go.mod") {
            members.push(m);
        } else {
            ctx.warn(&project.manifest, format!("use {u}: no go.mod there"));
        }
    }
    members.sort();
    members.dedup();
    // The workspace builds nothing itself: each module is a project of its
    // own (see shapes::adopt), built with GOWORK=off from the workspace root.
    project.members = members.clone();
    if ctx.has(dir, "go.work.sum") {
        project.lockfile = Some(join(dir, "go.work.sum"));
    }
    let versions = directive_versions(&f, &project.manifest);
    Some(Candidate::new(project, members, versions))
}

/// Main packages: the module root (`main.go`) and `cmd/<name>/main.go`.
fn mains(ctx: &Ctx<'_>, dir: &str, module_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    if ctx.has(dir, "main.go") {
        out.push(module_name.to_string());
    }
    let prefix = join(dir, "cmd/");
    for (d, files) in ctx.tree.dirs.range(prefix.clone()..) {
        if !d.starts_with(&prefix) {
            break;
        }
        let rest = &d[prefix.len()..];
        if !rest.contains('/') && files.contains("main.go") {
            out.push(rest.to_string());
        }
    }
    out
}

fn set_commands(project: &mut Project) {
    project.build = Some(if project.binaries.len() > 1 {
        "go build -o bin/ ./...".into()
    } else {
        format!("go build -o bin/{} .", project.name)
    });
    project.run = project.binaries.first().map(|b| format!("./bin/{b}"));
    if !project.binaries.is_empty() {
        project.decided_by.insert(
            "run".into(),
            format!(
                "main packages (main.go, cmd/*/main.go): {}",
                project.binaries.join(", ")
            ),
        );
    }
}

use super::Project;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_anywhere() {
        let f = parse(
            "// comment\nmodule \"example.com/x/api\"\n\nrequire (\n\tgithub.com/a/b v1.0.0 // indirect\n)\n\ntoolchain go1.22.3\n\ngo 1.22 // min\n",
        );
        assert_eq!(f.module.as_deref(), Some("example.com/x/api"));
        assert_eq!(f.go.as_deref(), Some("1.22"));
        assert_eq!(f.toolchain.as_deref(), Some("go1.22.3"));
        let w = parse("go 1.21\n\nuse (\n\t./api\n\t\"./worker\" // w\n)\nuse ./tools\n");
        assert_eq!(w.uses, vec!["./api", "./worker", "./tools"]);
    }
}
