//! Ruby: Gemfile (its `ruby` line and gems), Gemfile.lock (`RUBY VERSION`,
//! `BUNDLED WITH`), Rails and Rack apps.

use super::versions::Candidate as Version;
use super::{Candidate, Ctx, Language};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    if !ctx.has(dir, "Gemfile") {
        return None;
    }
    let mut project = ctx.project(dir, Language::Ruby, "bundler", "Gemfile");
    let gemfile = ctx.text(dir, "Gemfile").unwrap_or("").to_string();
    let mut versions = Vec::new();
    let mut gems = Vec::new();
    for line in gemfile.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(rest) = line.strip_prefix("ruby ") {
            // `ruby "3.2.2"`; `ruby file: ".ruby-version"` defers to the file.
            if let Some(v) = first_quoted(rest) {
                versions.push(Version::pin(v, format!("{} (ruby)", project.manifest)));
            }
        } else if let Some(rest) = line.strip_prefix("gem ")
            && let Some(g) = first_quoted(rest)
        {
            gems.push(g.to_string());
        }
    }
    if ctx.has(dir, "Gemfile.lock") {
        project.lockfile = Some(join(dir, "Gemfile.lock"));
        let lock = ctx.text(dir, "Gemfile.lock").unwrap_or("").to_string();
        let mut section = "";
        for line in lock.lines() {
            if !line.starts_with(' ') {
                section = line.trim();
                continue;
            }
            let value = line.trim();
            match section {
                "RUBY VERSION" => {
                    // "ruby 3.2.2p53" → 3.2.2
                    let v = value.trim_start_matches("ruby ");
                    let v = v.split('p').next().unwrap_or(v);
                    versions.push(Version::constraint(
                        v,
                        format!("{} (RUBY VERSION)", join(dir, "Gemfile.lock")),
                    ));
                }
                "BUNDLED WITH" => project.package_manager_version = Some(value.to_string()),
                _ => {}
            }
        }
    }
    gems.sort();
    gems.dedup();
    let rails = gems.iter().any(|g| g == "rails") || ctx.has(&join(dir, "bin"), "rails");
    project.framework = if rails {
        Some("rails".into())
    } else if gems.iter().any(|g| g == "sinatra") {
        Some("sinatra".into())
    } else {
        None
    };
    project.dependencies = gems;
    project.build = Some(if rails {
        "bundle install && bundle exec rails assets:precompile".into()
    } else {
        "bundle install".into()
    });
    project.run = if rails {
        Some("bundle exec rails server -b 0.0.0.0".into())
    } else if ctx.has(dir, "config.ru") {
        Some("bundle exec rackup --host 0.0.0.0".into())
    } else {
        None
    };
    Some(Candidate::new(project, Vec::new(), versions))
}

fn first_quoted(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let q = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &s[1..];
    rest.find(q).map(|end| &rest[..end])
}
