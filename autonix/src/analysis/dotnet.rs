//! .NET: solutions (`*.sln`, `*.slnx`) and the project files they list
//! (`*.csproj`, `*.fsproj`, `*.vbproj`), `global.json`'s SDK pin (searched
//! upward, as the dotnet host does), `TargetFramework` from the project or
//! a `Directory.Build.props` above it, NuGet's `packages.lock.json`.

use super::java::{strip_comments, tag};
use super::stacks::{
    constraint, files_with_ext, nearest, normalize_path, parent_dir, pin, string_after,
};
use super::{Candidate, Ctx, Language, Project};
use crate::scan::join;

const PROJECT_EXTS: &[&str] = &[".csproj", ".fsproj", ".vbproj"];

/// What one project file says.
#[derive(Debug, Default, Clone)]
struct ProjectFile {
    /// Root-relative path of the project file.
    path: String,
    assembly: String,
    sdk: String,
    target_framework: Option<String>,
    /// Where `target_framework` was read.
    tfm_source: Option<(String, String)>,
    executable: bool,
    test: bool,
    version: Option<String>,
}

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for sln in files_with_ext(ctx, dir, &[".sln", ".slnx"]) {
        out.extend(solution(ctx, dir, &sln));
    }
    for file in files_with_ext(ctx, dir, PROJECT_EXTS) {
        // A solution beside a project file builds it: one project, not two.
        if !out.is_empty() {
            continue;
        }
        let Some(p) = read_project(ctx, dir, &file) else {
            continue;
        };
        let mut project = ctx.project(dir, Language::Dotnet, "nuget", &file);
        project.name = p.assembly.clone();
        project.version = p.version.clone();
        finish(ctx, &mut project, dir, std::slice::from_ref(&p));
        let versions = versions(ctx, dir, &[p]);
        out.push(Candidate::new(project, Vec::new(), versions));
    }
    out
}

/// A solution: its projects are members; the runnable one (web SDK or
/// `OutputType Exe`, not a test project) is what the package publishes.
fn solution(ctx: &mut Ctx<'_>, dir: &str, file: &str) -> Option<Candidate> {
    let text = ctx.text(dir, file)?.to_string();
    let mut project = ctx.project(dir, Language::Dotnet, "nuget", file);
    project.name = file.rsplit_once('.').map_or(file, |(n, _)| n).to_string();
    let mut paths = Vec::new();
    if file.ends_with(".slnx") {
        // <Project Path="src/Web/Web.csproj" />
        let mut rest = text.as_str();
        while let Some(i) = rest.find("<Project Path=\"") {
            rest = &rest[i + 15..];
            if let Some(end) = rest.find('"') {
                paths.push(rest[..end].to_string());
            }
        }
    } else {
        // Project("{type}") = "Web", "src\Web\Web.csproj", "{guid}"
        for line in text.lines().filter(|l| l.starts_with("Project(")) {
            if let Some(p) = line.split(',').nth(1) {
                paths.push(p.trim().trim_matches('"').to_string());
            }
        }
    }
    let mut projects = Vec::new();
    for p in paths
        .iter()
        .filter(|p| PROJECT_EXTS.iter().any(|e| p.ends_with(e)))
    {
        let Some(rel) = normalize_path(&join(dir, p)) else {
            ctx.warn(
                &project.manifest,
                format!("project {p} is outside the repository"),
            );
            continue;
        };
        let pdir = parent_dir(&rel).to_string();
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        if !ctx.has(&pdir, name) {
            ctx.warn(&project.manifest, format!("project {p} does not exist"));
            continue;
        }
        if let Some(pf) = read_project(ctx, &pdir, name) {
            projects.push(pf);
        }
    }
    if projects.is_empty() {
        ctx.warn(&project.manifest, "solution lists no project file");
        return None;
    }
    projects.sort_by(|a, b| a.path.cmp(&b.path));
    let mut members: Vec<String> = projects
        .iter()
        .map(|p| parent_dir(&p.path).to_string())
        .collect();
    members.dedup();
    members.retain(|m| m != dir);
    project.members = members.clone();
    let main = projects
        .iter()
        .find(|p| p.executable && !p.test)
        .map(|p| p.path.clone());
    // The solution ships what its runnable project publishes.
    project.version = projects
        .iter()
        .find(|p| Some(&p.path) == main.as_ref())
        .and_then(|p| p.version.clone());
    project.entry = main;
    finish(ctx, &mut project, dir, &projects);
    let versions = versions(ctx, dir, &projects);
    Some(Candidate::new(project, members, versions))
}

/// Build, run, framework and lockfile from the project files.
fn finish(ctx: &Ctx<'_>, project: &mut Project, dir: &str, projects: &[ProjectFile]) {
    let runnable: Vec<&ProjectFile> = projects
        .iter()
        .filter(|p| p.executable && !p.test)
        .collect();
    project.binaries = runnable.iter().map(|p| p.assembly.clone()).collect();
    if projects.iter().any(|p| p.sdk == "Microsoft.NET.Sdk.Web") {
        project.framework = Some("aspnetcore".into());
    }
    let target = project
        .entry
        .clone()
        .unwrap_or_else(|| project.manifest.clone());
    let rel = target
        .strip_prefix(&format!("{dir}/"))
        .filter(|_| !dir.is_empty())
        .unwrap_or(&target)
        .to_string();
    project.build = Some(format!("dotnet publish {rel} -c Release -o out"));
    project.run = runnable
        .iter()
        .find(|p| p.path == target)
        .or(runnable.first())
        .map(|p| format!("dotnet out/{}.dll", p.assembly));
    let main_dir = parent_dir(&target).to_string();
    if ctx.has(&main_dir, "packages.lock.json") {
        project.lockfile = Some(join(&main_dir, "packages.lock.json"));
    }
}

/// global.json's SDK (pinned: the dotnet host refuses other SDKs), then
/// the main project's target framework (the runtime it needs).
fn versions(ctx: &Ctx<'_>, dir: &str, projects: &[ProjectFile]) -> Vec<super::versions::Candidate> {
    let mut out = Vec::new();
    if let Some(gdir) = nearest(ctx, dir, "global.json")
        && let Some(text) = ctx.text(&gdir, "global.json")
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&super::stacks::strip_jsonc(text))
        && let Some(sdk) = v.pointer("/sdk/version").and_then(|s| s.as_str())
    {
        out.push(pin(sdk, &gdir, "global.json", "sdk.version"));
    }
    let main = projects
        .iter()
        .find(|p| p.executable && !p.test)
        .or(projects.first());
    if let Some(p) = main
        && let (Some(tfm), Some((file, field))) = (&p.target_framework, &p.tfm_source)
    {
        out.push(constraint(
            tfm,
            parent_dir(file),
            file.rsplit('/').next().unwrap_or(file),
            field,
        ));
    }
    out
}

/// `net8.0` → `8.0`; `net8.0-windows` → `8.0`; `netcoreapp3.1` → `3.1`;
/// .NET Framework monikers (`net48`) stay as they are.
fn framework_version(tfm: &str) -> String {
    let v = tfm
        .strip_prefix("netcoreapp")
        .or_else(|| tfm.strip_prefix("net"))
        .unwrap_or(tfm);
    let v = v.split('-').next().unwrap_or(v);
    if v.contains('.') {
        v.to_string()
    } else {
        tfm.to_string()
    }
}

fn read_project(ctx: &mut Ctx<'_>, dir: &str, file: &str) -> Option<ProjectFile> {
    let path = join(dir, file);
    let Some(text) = ctx.text(dir, file).map(strip_comments) else {
        ctx.warn(&path, "project file not readable");
        return None;
    };
    if !text.contains("<Project") {
        ctx.warn(&path, "not an MSBuild project (no <Project> element)");
        return None;
    }
    let sdk = string_after(&text, "<Project Sdk=").unwrap_or_default();
    let stem = file.rsplit_once('.').map_or(file, |(n, _)| n).to_string();
    let field = |t: &str| {
        tag(&text, t)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut tfm = field("TargetFramework")
        .map(|t| (t, "TargetFramework"))
        .or_else(|| {
            field("TargetFrameworks")
                .and_then(|t| t.split(';').next_back().map(|s| s.trim().to_string()))
                .map(|t| (t, "TargetFrameworks"))
        })
        .map(|(t, f)| (t, path.clone(), f.to_string()));
    if tfm.is_none() {
        // Directory.Build.props applies to every project below it.
        if let Some(pdir) = nearest(ctx, dir, "Directory.Build.props")
            && let Some(props) = ctx.text(&pdir, "Directory.Build.props")
            && let Some(t) = tag(props, "TargetFramework")
        {
            tfm = Some((
                t.trim().to_string(),
                join(&pdir, "Directory.Build.props"),
                "TargetFramework".into(),
            ));
        }
    }
    let output = field("OutputType").unwrap_or_default();
    let test = field("IsTestProject").as_deref() == Some("true")
        || text.contains("Include=\"Microsoft.NET.Test.Sdk\"");
    let executable = matches!(
        sdk.as_str(),
        "Microsoft.NET.Sdk.Web" | "Microsoft.NET.Sdk.Worker"
    ) || output.eq_ignore_ascii_case("exe")
        || output.eq_ignore_ascii_case("winexe");
    Some(ProjectFile {
        assembly: field("AssemblyName").unwrap_or(stem),
        sdk,
        target_framework: tfm.as_ref().map(|(t, _, _)| framework_version(t)),
        tfm_source: tfm.map(|(_, p, f)| (p, f)),
        executable,
        test,
        version: field("Version"),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monikers() {
        assert_eq!(framework_version("net8.0"), "8.0");
        assert_eq!(framework_version("net9.0-windows"), "9.0");
        assert_eq!(framework_version("netcoreapp3.1"), "3.1");
        assert_eq!(framework_version("net48"), "net48");
    }
}
