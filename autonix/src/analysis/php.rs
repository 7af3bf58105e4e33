//! PHP: Composer projects (composer.json, composer.lock), the PHP version
//! they require (`require.php`) or pin (`config.platform.php`), the
//! extensions they need, their `bin` scripts and the framework (Laravel,
//! Symfony, Slim) that decides how they are served.

use serde_json::Value;

use super::stacks::{constraint, pin};
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    if !ctx.has(dir, "composer.json") {
        return None;
    }
    let mut project = ctx.project(dir, Language::Php, "composer", "composer.json");
    let Some(c) = ctx.json(dir, "composer.json") else {
        return Some(Candidate::new(project, Vec::new(), Vec::new()));
    };
    if let Some(name) = c.get("name").and_then(Value::as_str) {
        // vendor/package: the package part names the project.
        project.name = name.rsplit('/').next().unwrap_or(name).to_string();
    }
    project.version = c.get("version").and_then(Value::as_str).map(String::from);
    if ctx.has(dir, "composer.lock") {
        project.lockfile = Some(join(dir, "composer.lock"));
    }
    let mut versions = Vec::new();
    if let Some(v) = c.pointer("/config/platform/php").and_then(Value::as_str) {
        // Composer resolves as if this were the PHP version: a pin.
        versions.push(pin(v, dir, "composer.json", "config.platform.php"));
    }
    let require = c.get("require").and_then(Value::as_object);
    if let Some(v) = require.and_then(|r| r.get("php")).and_then(Value::as_str) {
        versions.push(constraint(v, dir, "composer.json", "require.php"));
    }
    let has = |pkg: &str| require.is_some_and(|r| r.contains_key(pkg));
    project.dependencies = require
        .map(|r| {
            r.keys()
                .filter_map(|k| k.strip_prefix("ext-"))
                .map(|e| format!("ext-{e}"))
                .collect()
        })
        .unwrap_or_default();
    project.framework = if has("laravel/framework") {
        Some("laravel".into())
    } else if has("symfony/framework-bundle") {
        Some("symfony".into())
    } else if has("slim/slim") {
        Some("slim".into())
    } else {
        None
    };
    project.binaries = match c.get("bin") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|b| b.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
    .iter()
    .map(|b| b.rsplit('/').next().unwrap_or(b).to_string())
    .collect();
    let scripts = c.get("scripts").and_then(Value::as_object);
    let script = |n: &str| scripts.is_some_and(|s| s.contains_key(n));
    let mut build = "composer install --no-dev --optimize-autoloader".to_string();
    if script("build") {
        build.push_str(" && composer run-script build");
    }
    project.build = Some(build);
    let public = ctx.has(&join(dir, "public"), "index.php");
    project.run = if script("start") {
        Some("composer run-script start".into())
    } else if project.framework.as_deref() == Some("laravel") || ctx.has(dir, "artisan") {
        Some("php artisan serve --host=0.0.0.0 --port=8000".into())
    } else if public {
        Some("php -S 0.0.0.0:8000 -t public".into())
    } else {
        c.get("bin")
            .and_then(|b| b.as_str().or_else(|| b.get(0).and_then(Value::as_str)))
            .map(|b| format!("php {b}"))
    };
    Some(Candidate::new(project, Vec::new(), versions))
}
