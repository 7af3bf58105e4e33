//! Analysis: turns the walked tree into what the repository holds —
//! projects (language, package manager, lockfile, toolchain version and where
//! it came from, workspace members, build/run commands), CI files, container
//! files and tasks. Never fails: malformed input becomes a warning.

mod cfamily;
mod conda;
mod dart;
mod deno;
mod dotnet;
mod elixir;
mod extras;
mod go;
mod haskell;
mod java;
mod node;
mod php;
mod python;
mod ruby;
mod rust;
mod scala;
mod shapes;
mod shell;
pub(crate) mod stacks;
mod swift;
pub(crate) mod versions;
mod zig;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::scan::{Tree, Warning, display, join};

/// The languages autonix builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Rust,
    Go,
    Node,
    Python,
    Ruby,
    Java,
    /// C# / F# / VB on .NET (solutions and project files).
    Dotnet,
    Php,
    C,
    Cpp,
    Zig,
    Elixir,
    Haskell,
    Scala,
    /// Dart, with Flutter as its framework.
    Dart,
    Swift,
    Deno,
    /// Shell-script tools (bash, sh) with no other manifest.
    Shell,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Go => "go",
            Language::Node => "node",
            Language::Python => "python",
            Language::Ruby => "ruby",
            Language::Java => "java",
            Language::Dotnet => "dotnet",
            Language::Php => "php",
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Zig => "zig",
            Language::Elixir => "elixir",
            Language::Haskell => "haskell",
            Language::Scala => "scala",
            Language::Dart => "dart",
            Language::Swift => "swift",
            Language::Deno => "deno",
            Language::Shell => "shell",
        }
    }
}

/// Everything `autonix scan` reports; the input of [`crate::plan()`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// Base name of the scanned directory (used to name the flake).
    pub name: String,
    pub projects: Vec<Project>,
    /// Manifests and directories that are not projects, with the reason.
    pub ignored: Vec<Ignored>,
    pub ci_files: Vec<CiFile>,
    pub container_files: Vec<ContainerFile>,
    pub tasks: Vec<Task>,
    pub warnings: Vec<Warning>,
}

/// One buildable project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// Directory relative to the scanned root (`.` for the root).
    pub path: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub language: Language,
    pub package_manager: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_manager_version: Option<String>,
    /// Manifest path relative to the root.
    pub manifest: String,
    /// Lockfile path relative to the root (a workspace member's lockfile is
    /// the workspace's).
    pub lockfile: Option<String>,
    /// Lockfile format version where the builder depends on it (npm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockfile_version: Option<u32>,
    pub toolchain_version: Option<String>,
    /// The range `toolchain_version` is the lowest version of, when the
    /// deciding source gave a range (`>=24` → version `24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain_range: Option<String>,
    /// Where `toolchain_version` came from: `file` or `file (field)`.
    pub version_source: Option<String>,
    /// Workspace member directories relative to the root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    pub build: Option<String>,
    pub run: Option<String>,
    /// Executables the build produces (cargo bins, go mains, python scripts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binaries: Vec<String>,
    /// The file the build starts from when it is not the manifest: the
    /// runnable project a .NET solution publishes, the script a shell tool
    /// runs, the package with the executables in a Haskell workspace; for
    /// a C/C++ build without install rules, its program's path in the
    /// build tree (the package copies it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Declared runtime dependencies, where the builder needs them by name
    /// (Python and Ruby; the libraries a C/C++ build looks for; PHP
    /// extensions; for a Haskell workspace, its local packages as
    /// `name=dir`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// PEP 517 build backends (Python).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_system: Vec<String>,
    /// Vendored dependencies are in the tree (Go `vendor/`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub vendored: bool,
    /// The enclosing project's path when this one sits inside another's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_in: Option<String>,
    /// The workspace root's path when this project is a workspace member
    /// reported on its own (it runs on its own, or it is a Go module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Of several build systems for one tree, the one CI or the README uses.
    #[serde(default, skip_serializing_if = "is_false")]
    pub preferred: bool,
    /// Field → why it has its value and which file decided it
    /// (`autonix scan --explain`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub decided_by: BTreeMap<String, String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ignored {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CiFile {
    pub path: String,
    pub system: String,
    /// Job names, where the format has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerFile {
    pub path: String,
    /// `dockerfile` or `compose`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_images: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ComposeService>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComposeService {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Build context relative to the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// File that defines the task, relative to the root.
    pub file: String,
    /// `make`, `just`, `task`, `npm` (package.json scripts) or `procfile`.
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// Shared state while analysing: the tree and the warnings being collected.
pub(crate) struct Ctx<'a> {
    pub tree: &'a Tree,
    pub warnings: Vec<Warning>,
    /// Versions the CI files state, read once per scan.
    pub tool_pins: Vec<versions::ToolPin>,
}

impl Ctx<'_> {
    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning::new(path, message));
    }

    /// Text of `dir/name` if present and readable.
    pub(crate) fn text(&self, dir: &str, name: &str) -> Option<&str> {
        self.tree.text(dir, name)
    }

    pub(crate) fn has(&self, dir: &str, name: &str) -> bool {
        self.tree.has(dir, name)
    }

    /// A project skeleton for `dir`, named after its directory (or the scan
    /// root) until its manifest declares a name.
    pub(crate) fn project(
        &self,
        dir: &str,
        language: Language,
        package_manager: &str,
        manifest: &str,
    ) -> Project {
        let name = base_name(dir, &root_name(self.tree));
        new_project(dir, name, language, package_manager, manifest)
    }

    /// Parses a TOML file, turning syntax errors into a warning.
    pub(crate) fn toml(&mut self, dir: &str, name: &str) -> Option<toml::Table> {
        let text = self.text(dir, name)?;
        match text.parse::<toml::Table>() {
            Ok(t) => Some(t),
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                let msg = match line {
                    Some(l) => format!("malformed TOML at line {l}: {}", e.message().trim()),
                    None => format!("malformed TOML: {}", e.message().trim()),
                };
                self.warn(join(dir, name), msg);
                None
            }
        }
    }

    pub(crate) fn json(&mut self, dir: &str, name: &str) -> Option<serde_json::Value> {
        let text = self.text(dir, name)?;
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.warn(join(dir, name), format!("malformed JSON: {e}"));
                None
            }
        }
    }

    pub(crate) fn yaml(&mut self, dir: &str, name: &str) -> Option<serde_yaml_ng::Value> {
        let text = self.text(dir, name)?;
        match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.warn(join(dir, name), format!("malformed YAML: {e}"));
                None
            }
        }
    }

    /// Directories below `base` (exclusive) that contain `file`, matching
    /// the member `patterns` (relative to `base`; `!` negates, as pnpm and
    /// npm allow) and not under any `exclude` prefix.
    pub(crate) fn expand_members(
        &self,
        base: &str,
        patterns: &[String],
        exclude: &[String],
        file: &[&str],
    ) -> Vec<String> {
        let (neg, pos): (Vec<&String>, Vec<&String>) = patterns
            .iter()
            .partition(|p| p.trim_start().starts_with('!'));
        let pos: Vec<String> = pos.iter().map(|p| crate::glob::under(base, p)).collect();
        let neg: Vec<String> = neg
            .iter()
            .map(|p| crate::glob::under(base, p.trim_start().trim_start_matches('!')))
            .collect();
        let exclude: Vec<String> = exclude
            .iter()
            .map(|p| crate::glob::under(base, p))
            .collect();
        let mut out = Vec::new();
        for (dir, files) in &self.tree.dirs {
            if dir == base || !file.iter().any(|f| files.contains(*f)) {
                continue;
            }
            if !pos.iter().any(|p| crate::glob::matches(p, dir)) {
                continue;
            }
            if neg.iter().any(|p| crate::glob::matches(p, dir)) {
                continue;
            }
            if exclude
                .iter()
                .any(|e| dir == e || dir.starts_with(&format!("{e}/")))
            {
                continue;
            }
            out.push(dir.clone());
        }
        out
    }
}

pub(crate) use crate::scan::not_a_project;
pub(crate) use shell::command_name as shell_command_name;

/// A language detector's view of one directory.
pub(crate) struct Candidate {
    pub project: Project,
    /// Member directories this project claims (they are not projects).
    pub claims: Vec<String>,
    /// Version candidates from the manifest itself.
    pub versions: Vec<versions::Candidate>,
    /// Directories a workspace pattern explicitly leaves out (`!dir`).
    pub excluded: Vec<String>,
    /// Warnings that only matter if this turns out to be a project (not a
    /// member, fixture or vendored copy).
    pub warnings: Vec<Warning>,
}

impl Candidate {
    /// A project with the member directories it claims and the versions
    /// its manifest names; nothing excluded, no warnings.
    pub(crate) fn new(
        project: Project,
        claims: Vec<String>,
        versions: Vec<versions::Candidate>,
    ) -> Self {
        Candidate {
            project,
            claims,
            versions,
            excluded: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Analyses a walked tree.
pub fn analyse(tree: &Tree) -> Scan {
    let mut ctx = Ctx {
        tree,
        warnings: tree.warnings.clone(),
        tool_pins: Vec::new(),
    };
    ctx.tool_pins = versions::ci_tool_pins(&mut ctx);
    let mut candidates: Vec<Candidate> = Vec::new();
    for dir in tree.dirs.keys() {
        candidates.extend(rust::detect(&mut ctx, dir));
        candidates.extend(go::detect(&mut ctx, dir));
        candidates.extend(node::detect(&mut ctx, dir));
        candidates.extend(python::detect(&mut ctx, dir));
        candidates.extend(ruby::detect(&mut ctx, dir));
        candidates.extend(java::detect(&mut ctx, dir));
        candidates.extend(dotnet::detect(&mut ctx, dir));
        candidates.extend(php::detect(&mut ctx, dir));
        candidates.extend(cfamily::detect(&mut ctx, dir));
        candidates.extend(zig::detect(&mut ctx, dir));
        candidates.extend(elixir::detect(&mut ctx, dir));
        candidates.extend(haskell::detect(&mut ctx, dir));
        candidates.extend(scala::detect(&mut ctx, dir));
        candidates.extend(dart::detect(&mut ctx, dir));
        candidates.extend(swift::detect(&mut ctx, dir));
        candidates.extend(deno::detect(&mut ctx, dir));
        candidates.extend(conda::detect(&mut ctx, dir));
    }
    // A repository of shell scripts has no manifest: it is a project only
    // when nothing else is.
    if candidates
        .iter()
        .all(|c| not_a_project(&rel_dir(&c.project.path)).is_some())
    {
        candidates.extend(shell::detect(&mut ctx));
    }

    // A Dockerfile where no manifest is may be a service of its own.
    let taken: BTreeSet<String> = candidates
        .iter()
        .map(|c| rel_dir(&c.project.path))
        .chain(candidates.iter().flat_map(|c| c.claims.iter().cloned()))
        .collect();
    let mut docker_ignored = Vec::new();
    candidates.extend(shapes::dockerfile_services(
        &ctx,
        &taken,
        &mut docker_ignored,
    ));

    // Members claimed by a workspace of the same language are part of it;
    // those that run on their own are also projects of their own.
    let workspaces = shapes::workspaces(&candidates);
    let mut claimed: BTreeSet<(Language, String)> = BTreeSet::new();
    let mut excluded: BTreeMap<(Language, String), String> = BTreeMap::new();
    for c in &candidates {
        for m in &c.claims {
            claimed.insert((c.project.language, m.clone()));
        }
        for m in &c.excluded {
            excluded.insert((c.project.language, m.clone()), c.project.manifest.clone());
        }
    }
    let mut ignored: Vec<Ignored> = tree
        .skipped_dirs
        .iter()
        .map(|d| Ignored {
            path: d.clone(),
            reason: "dependency or build output directory, not scanned".into(),
        })
        .chain(docker_ignored)
        .collect();
    let mut projects = Vec::new();
    for mut c in candidates {
        let key = (c.project.language, rel_dir(&c.project.path));
        if claimed.contains(&key) {
            match workspaces.get(&key) {
                Some(ws) if shapes::member_is_project(&c.project) && ws.path != c.project.path => {
                    shapes::adopt(&mut c, ws)
                }
                _ => continue,
            }
        }
        // A workspace claimed by another workspace stays claimed, but a
        // project that only sits below another is a project of its own.
        if let Some(ws) = excluded.get(&key) {
            ignored.push(Ignored {
                path: c.project.manifest.clone(),
                reason: format!("excluded from the workspace in {ws}"),
            });
            continue;
        }
        if dart::platform_runner(&ctx, &key.1) {
            ignored.push(Ignored {
                path: c.project.manifest.clone(),
                reason: "Flutter platform runner, generated by flutter create".into(),
            });
            continue;
        }
        if let Some(rule) = not_a_project(&key.1)
            && !(rule.unless_runnable && runnable_on_its_own(&c.project))
        {
            ignored.push(Ignored {
                path: c.project.manifest.clone(),
                reason: rule.reason.into(),
            });
            continue;
        }
        ctx.warnings.extend(c.warnings);
        let mut project = c.project;
        if project.lockfile.is_none()
            && project.package_manager != "none"
            && matches!(
                project.language,
                Language::Rust | Language::Node | Language::Ruby
            )
        {
            ctx.warn(
                project.manifest.clone(),
                "no lockfile: dependency versions are not pinned, the build is not reproducible",
            );
        }
        versions::resolve(&mut ctx, &mut project, c.versions);
        explain(&mut project);
        projects.push(project);
    }
    shapes::mark_preferred(&ctx, &mut projects);
    shapes::fold_rails_assets(&mut projects, &mut ignored);

    // Nesting: the closest enclosing project directory.
    let dirs: Vec<String> = projects.iter().map(|p| rel_dir(&p.path)).collect();
    for p in &mut projects {
        let me = rel_dir(&p.path);
        p.nested_in = dirs
            .iter()
            .filter(|d| **d != me && (d.is_empty() || me.starts_with(&format!("{d}/"))))
            .max_by_key(|d| d.len())
            .map(|d| display(d));
    }
    extras::unique_names(&mut projects);

    let tasks = extras::tasks(&mut ctx, &mut projects);
    let ci_files = extras::ci_files(&mut ctx);
    let container_files = extras::container_files(&mut ctx);

    ignored.sort();
    ignored.dedup();
    let mut warnings = ctx.warnings;
    // Problems inside vendored code, fixtures and examples are theirs, not
    // the repository's: a broken fixture is often broken on purpose.
    warnings.retain(|w| not_a_project(&w.path).is_none());
    warnings.sort();
    warnings.dedup();
    Scan {
        name: root_name(tree),
        projects,
        ignored,
        ci_files,
        container_files,
        tasks,
        warnings,
    }
}

/// An example or documentation site is a project after all when it is
/// installed and started on its own: it pins its own dependencies (a
/// lockfile of its own, not the enclosing workspace's) and has a run command.
fn runnable_on_its_own(p: &Project) -> bool {
    p.run.is_some()
        && p.lockfile
            .as_deref()
            .is_some_and(|l| l.starts_with(&format!("{}/", rel_dir(&p.path))))
}

/// Fills `decided_by` for what every project has, where its detector did
/// not say more: why it is a project, and which file decided its package
/// manager, lockfile, toolchain version, members and commands.
fn explain(p: &mut Project) {
    let mut set = |k: &str, v: String| {
        p.decided_by.entry(k.to_string()).or_insert(v);
    };
    set(
        "project",
        format!(
            "{} is a {} manifest outside vendored code, fixtures and examples",
            p.manifest,
            p.language.as_str()
        ),
    );
    let pm = match (&p.lockfile, &p.workspace) {
        (Some(l), Some(ws)) => format!("the workspace's ({ws}) lockfile {l}"),
        (Some(l), None) => format!("lockfile {l}"),
        (None, _) => format!("no lockfile; the default for {}", p.manifest),
    };
    set("package_manager", pm);
    if !p.members.is_empty() {
        set(
            "members",
            format!("{} member(s) listed by {}", p.members.len(), p.manifest),
        );
    }
    if let Some(b) = p.build.clone() {
        set("build", format!("{b}: from {}", p.manifest));
    }
    if let Some(r) = p.run.clone() {
        set("run", format!("{r}: from {}", p.manifest));
    }
}

/// `.` → `""`, others unchanged: the tree's directory keys.
pub fn rel_dir(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        path.to_string()
    }
}

/// Last path component of `dir`, or the fallback for the root.
pub(crate) fn base_name(dir: &str, root_name: &str) -> String {
    if dir.is_empty() {
        root_name.to_string()
    } else {
        dir.rsplit('/').next().unwrap_or(dir).to_string()
    }
}

/// A project skeleton with every optional field empty.
fn new_project(
    dir: &str,
    name: String,
    language: Language,
    package_manager: &str,
    manifest: &str,
) -> Project {
    Project {
        path: display(dir),
        name,
        version: None,
        language,
        package_manager: package_manager.into(),
        package_manager_version: None,
        manifest: join(dir, manifest),
        lockfile: None,
        lockfile_version: None,
        toolchain_version: None,
        toolchain_range: None,
        version_source: None,
        members: Vec::new(),
        default_members: Vec::new(),
        framework: None,
        build: None,
        run: None,
        binaries: Vec::new(),
        entry: None,
        dependencies: Vec::new(),
        build_system: Vec::new(),
        vendored: false,
        nested_in: None,
        workspace: None,
        preferred: false,
        decided_by: BTreeMap::new(),
    }
}

/// Name of the scan root, for projects without a declared name.
pub(crate) fn root_name(tree: &Tree) -> String {
    tree.root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
}

/// String field from a TOML table by dotted path.
pub(crate) fn toml_str<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a str> {
    toml_get(t, path)?.as_str()
}

pub(crate) fn toml_get<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, init) = path.split_last()?;
    let mut cur = t;
    for k in init {
        cur = cur.get(*k)?.as_table()?;
    }
    cur.get(*last)
}

pub(crate) fn toml_strings(t: &toml::Table, path: &[&str]) -> Vec<String> {
    toml_get(t, path)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
