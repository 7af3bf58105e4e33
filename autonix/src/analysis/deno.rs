//! Deno: `deno.json` / `deno.jsonc` (name, version, tasks, imports that
//! name the framework), `deno.lock` and its format version.

use serde_json::Value;

use super::stacks::strip_jsonc;
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let file = ["deno.json", "deno.jsonc"]
        .into_iter()
        .find(|f| ctx.has(dir, f))?;
    let mut project = ctx.project(dir, Language::Deno, "deno", file);
    let text = ctx.text(dir, file).unwrap_or("").to_string();
    let v: Value = match serde_json::from_str(&strip_jsonc(&text)) {
        Ok(v) => v,
        Err(e) => {
            ctx.warn(&project.manifest, format!("malformed JSON: {e}"));
            return Some(Candidate::new(project, Vec::new(), Vec::new()));
        }
    };
    if let Some(n) = v.get("name").and_then(Value::as_str) {
        project.name = n
            .trim_start_matches('@')
            .rsplit('/')
            .next()
            .unwrap_or(n)
            .to_string();
    }
    project.version = v.get("version").and_then(Value::as_str).map(String::from);
    if ctx.has(dir, "deno.lock") {
        project.lockfile = Some(join(dir, "deno.lock"));
        project.lockfile_version = ctx.text(dir, "deno.lock").and_then(|t| {
            let i = t.find("\"version\"")?;
            let rest = &t[i + 9..];
            let digits: String = rest
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        });
    }
    let imports = v.get("imports").map(|i| i.to_string()).unwrap_or_default();
    project.framework = if imports.contains("$fresh/") || imports.contains("@fresh/core") {
        Some("fresh".into())
    } else if imports.contains("hono") {
        Some("hono".into())
    } else if imports.contains("@oak/oak") || imports.contains("/x/oak") {
        Some("oak".into())
    } else {
        None
    };
    let tasks = v.get("tasks").and_then(Value::as_object);
    let task = |n: &str| tasks.is_some_and(|t| t.contains_key(n));
    project.build = if task("build") {
        Some("deno task build".into())
    } else {
        Some("deno install".into())
    };
    let main = ["main.ts", "main.tsx", "mod.ts"]
        .into_iter()
        .find(|m| ctx.has(dir, m));
    project.run = if task("start") {
        Some("deno task start".into())
    } else {
        main.map(|m| format!("deno run -A {m}"))
    };
    Some(Candidate::new(project, Vec::new(), Vec::new()))
}
