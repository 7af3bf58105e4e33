//! Filesystem walk: collects the files autonix cares about (manifests,
//! lockfiles, version pins, CI, container and task files) without ever
//! following a directory link, leaving the root, or writing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Manifests bigger than this are reported and skipped: no real manifest is
/// this large, and reading a multi-gigabyte file named `package.json` would
/// stall the scan.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Lockfiles can be many megabytes; only their head is needed (format
/// version, yarn berry marker), so only this much is read.
pub const LOCKFILE_HEAD_BYTES: usize = 8 * 1024;

/// Directories that hold dependencies or build output: never descended
/// into, recorded so the report can say they were skipped.
const DEPENDENCY_DIRS: &[&str] = &[
    "node_modules",
    "bower_components",
    ".venv",
    "venv",
    "__pypackages__",
    ".tox",
    ".nox",
    ".gradle",
    ".m2",
    ".bundle",
    ".yarn",
    ".pnpm-store",
    ".next",
    ".nuxt",
    ".svelte-kit",
    ".turbo",
    ".direnv",
    // Build output and dependency caches of the stacks beyond the first six.
    "_build",
    ".stack-work",
    "dist-newstyle",
    "zig-out",
    ".zig-cache",
    "zig-cache",
    ".dart_tool",
    ".pub-cache",
    ".build",
    ".swiftpm",
    "Pods",
    "Carthage",
    ".bsp",
    ".bloop",
    ".metals",
    ".elixir_ls",
];
/// Directories skipped silently: VCS metadata and caches that never hold a
/// project.
const SILENT_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".idea",
    ".cache",
];

/// Why a directory's manifests are not projects (see [`not_a_project`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAProject {
    pub reason: &'static str,
    /// Reported anyway when runnable on its own (own lockfile and a run
    /// command): examples and documentation sites can be real deployables.
    pub unless_runnable: bool,
}

/// The precision rule, in one place. A manifest is not a project when any
/// component of its directory says the code is not the repository's own
/// runnable software:
/// - vendored code (`vendor`, `third_party`, `external`, …): never;
/// - tests and their fixtures (`tests`, `fixtures`, `testdata`, `spec`, …):
///   never, a fixture is built by the test that uses it;
/// - examples and samples: not unless runnable on their own;
/// - documentation tooling (`docs`, `doc`, `documentation`: Sphinx
///   requirements, a docs site's package.json): not unless runnable on
///   their own.
///
/// Dependency and build-output directories (`node_modules`, `_build`,
/// `.stack-work`, `zig-out`, Composer's `vendor`, …) are not even walked:
/// see `DEPENDENCY_DIRS` and `is_build_output`. Generated directories are
/// recognised by those markers, never by a name like `gen` alone, which
/// often holds a generator's own sources.
pub fn not_a_project(dir: &str) -> Option<NotAProject> {
    let rule = |reason, unless_runnable| {
        Some(NotAProject {
            reason,
            unless_runnable,
        })
    };
    for comp in dir.split('/') {
        match comp {
            "vendor" | "third_party" | "third-party" | "thirdparty" | "external" | "extern" => {
                return rule("vendored code", false);
            }
            "fixtures" | "fixture" | "__fixtures__" | "testdata" | "test-data" | "test_data"
            | "tests" | "test" | "__tests__" | "spec" => {
                return rule("test code or fixture", false);
            }
            "examples" | "example" | "samples" | "sample" => return rule("example", true),
            "docs" | "doc" | "documentation" => return rule("documentation tooling", true),
            _ => {}
        }
    }
    None
}

/// Errors that stop a scan before it starts; everything inside the tree
/// becomes a warning instead.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot open scan root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scan root {0} is not a directory")]
    NotADirectory(PathBuf),
}

/// A problem found in the scanned tree, reported instead of failing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Warning {
    /// Path relative to the root (`.` for the root itself).
    pub path: String,
    pub message: String,
}

impl Warning {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// How much of a file the analysis needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interest {
    /// Only whether it exists (entrypoints, wrapper scripts).
    Presence,
    /// The whole text (manifests, version files, task files).
    Content,
    /// The first few KiB (lockfiles).
    Head,
}

/// What the walk found: every directory, the interesting files with their
/// text, and the problems met on the way.
#[derive(Debug, Default)]
pub struct Tree {
    pub root: PathBuf,
    /// Relative directory (`""` for the root) → names of interesting files in it.
    pub dirs: BTreeMap<String, BTreeSet<String>>,
    /// Relative file path → text (None when only presence matters or the
    /// file could not be read; a warning says which).
    pub files: BTreeMap<String, Option<String>>,
    /// Dependency/build directories that were not descended into.
    pub skipped_dirs: Vec<String>,
    pub warnings: Vec<Warning>,
    /// Total entries seen (files and directories), for the benchmark.
    pub entries_seen: usize,
}

impl Tree {
    /// True when `dir/name` exists (and was interesting enough to record).
    pub fn has(&self, dir: &str, name: &str) -> bool {
        self.dirs.get(dir).is_some_and(|s| s.contains(name))
    }

    /// Text of `dir/name`, if it was read.
    pub fn text(&self, dir: &str, name: &str) -> Option<&str> {
        self.files.get(&join(dir, name)).and_then(|t| t.as_deref())
    }
}

/// `dir` + `/` + `name`, where the root directory is `""`.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn interest(dir: &str, name: &str) -> Option<Interest> {
    use Interest::*;
    let by_name = match name {
        "Cargo.toml"
        | "rust-toolchain"
        | "rust-toolchain.toml"
        | "go.mod"
        | "go.work"
        | "package.json"
        | "pnpm-workspace.yaml"
        | ".nvmrc"
        | ".node-version"
        | ".yarnrc.yml"
        | "pyproject.toml"
        | "setup.cfg"
        | "requirements.txt"
        | "Pipfile"
        | ".python-version"
        | "runtime.txt"
        | "Gemfile"
        | ".ruby-version"
        | "pom.xml"
        | "build.gradle"
        | "build.gradle.kts"
        | "settings.gradle"
        | "settings.gradle.kts"
        | "system.properties"
        | ".java-version"
        | ".tool-versions"
        | "mise.toml"
        | ".mise.toml"
        | "Makefile"
        | "makefile"
        | "GNUmakefile"
        | "justfile"
        | "Justfile"
        | ".justfile"
        | "Taskfile.yml"
        | "Taskfile.yaml"
        | "Procfile"
        | "Dockerfile"
        | "Containerfile"
        | "docker-compose.yml"
        | "docker-compose.yaml"
        | "compose.yml"
        | "compose.yaml"
        | "docker-compose.override.yml"
        | "compose.override.yml"
        | "Gemfile.lock"
        | "Jenkinsfile"
        | ".gitlab-ci.yml"
        | ".travis.yml"
        | "azure-pipelines.yml"
        | "bitbucket-pipelines.yml"
        | ".drone.yml"
        | ".woodpecker.yml"
        | "flake.nix"
        | "setup.py"
        | "global.json"
        | "Directory.Build.props"
        | "composer.json"
        | ".php-version"
        | "CMakeLists.txt"
        | "meson.build"
        | "configure.ac"
        | "configure.in"
        | "Makefile.am"
        | "build.zig"
        | "build.zig.zon"
        | "mix.exs"
        | "cabal.project"
        | "stack.yaml"
        | "package.yaml"
        | "build.sbt"
        | "build.properties"
        | "plugins.sbt"
        | "pubspec.yaml"
        | ".fvmrc"
        | "Package.swift"
        | ".swift-version"
        | "deno.json"
        | "deno.jsonc"
        | ".dvmrc"
        | "environment.yml"
        | "environment.yaml"
        // READMEs say which of two build systems is the one in use.
        | "README.md"
        | "README"
        | "readme.md"
        | "README.rst" => Some(Content),
        "Cargo.lock"
        | "go.sum"
        | "go.work.sum"
        | "package-lock.json"
        | "npm-shrinkwrap.json"
        | "yarn.lock"
        | "pnpm-lock.yaml"
        | "bun.lock"
        | "uv.lock"
        | "poetry.lock"
        | "pdm.lock"
        | "Pipfile.lock"
        | "packages.lock.json"
        | "composer.lock"
        | "mix.lock"
        | "stack.yaml.lock"
        | "cabal.project.freeze"
        | "pubspec.lock"
        | "Package.resolved"
        | "deno.lock"
        | "conda-lock.yml" => Some(Head),
        "bun.lockb" | "manage.py" | "main.py" | "app.py" | "wsgi.py" | "main.go" | "config.ru"
        | "gradlew" | "mvnw" | "server.js" | "index.js" | "main.rs" | "modules.txt"
        | "default.nix" | "shell.nix" | "rails" | "next.config.js" | "next.config.mjs"
        | "next.config.ts" | "vite.config.ts" | "vite.config.js" | "deps.json" | "gemset.nix"
        | "configure" | "artisan" | "index.php" | "main.ts" | "main.tsx" | "mod.ts" => {
            Some(Presence)
        }
        _ => None,
    };
    if by_name.is_some() {
        return by_name;
    }
    // CI definitions that live in well-known directories.
    let ci_dir = matches!(
        dir.rsplit('/').next().unwrap_or(""),
        "workflows" | ".circleci" | ".buildkite" | ".woodpecker"
    );
    if ci_dir && (name.ends_with(".yml") || name.ends_with(".yaml")) {
        return Some(Content);
    }
    // Manifests named after their project: .NET project files and
    // solutions, cabal package descriptions.
    let ext = name.rsplit_once('.').map(|(_, e)| e);
    if matches!(
        ext,
        Some("csproj" | "fsproj" | "vbproj" | "sln" | "slnx" | "cabal")
    ) {
        return Some(Content);
    }
    let last = dir.rsplit('/').next().unwrap_or("");
    // Dart executables live in `bin/<name>.dart`.
    if last == "bin" && ext == Some("dart") {
        return Some(Presence);
    }
    // A shell tool's entry: a script at the root or in its `bin/`. Only
    // the head is read, for the shebang.
    if (dir.is_empty() || dir == "bin") && matches!(ext, None | Some("sh" | "bash")) {
        return Some(Head);
    }
    // Dockerfile variants: Dockerfile.dev, api.Dockerfile.
    if name.starts_with("Dockerfile.")
        || name.ends_with(".Dockerfile")
        || name.ends_with(".dockerfile")
    {
        return Some(Content);
    }
    None
}

/// Walks `root` and returns what it found. Never follows directory links,
/// never reads outside `root`, never writes.
pub fn walk(root: &Path) -> Result<Tree, ScanError> {
    let meta = fs::metadata(root).map_err(|source| ScanError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory(root.to_path_buf()));
    }
    let canon_root = fs::canonicalize(root).map_err(|source| ScanError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let mut tree = Tree {
        root: canon_root.clone(),
        ..Tree::default()
    };
    // Explicit stack instead of recursion: deep trees cannot overflow it.
    let mut stack: Vec<(PathBuf, String)> = vec![(canon_root.clone(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        tree.dirs.entry(rel.clone()).or_default();
        let read = match fs::read_dir(&abs) {
            Ok(r) => r,
            Err(e) => {
                tree.warnings.push(Warning::new(
                    display(&rel),
                    format!("directory not readable: {e}"),
                ));
                continue;
            }
        };
        let mut entries: Vec<(String, fs::DirEntry)> = Vec::new();
        for entry in read {
            match entry {
                Ok(e) => match e.file_name().into_string() {
                    Ok(name) => entries.push((name, e)),
                    Err(raw) => tree.warnings.push(Warning::new(
                        display(&rel),
                        format!(
                            "entry with a name that is not UTF-8 skipped: {}",
                            raw.to_string_lossy()
                        ),
                    )),
                },
                Err(e) => tree.warnings.push(Warning::new(
                    display(&rel),
                    format!("directory entry not readable: {e}"),
                )),
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, entry) in entries {
            tree.entries_seen += 1;
            let child_rel = join(&rel, &name);
            let Ok(ft) = entry.file_type() else {
                tree.warnings
                    .push(Warning::new(&child_rel, "file type not readable"));
                continue;
            };
            if ft.is_dir() {
                if SILENT_DIRS.contains(&name.as_str()) {
                    continue;
                }
                if DEPENDENCY_DIRS.contains(&name.as_str()) || is_build_output(&entry.path(), &name)
                {
                    tree.skipped_dirs.push(child_rel);
                    continue;
                }
                subdirs.push((entry.path(), child_rel));
            } else if ft.is_symlink() {
                handle_symlink(&mut tree, &canon_root, &rel, &name, &entry.path());
            } else if ft.is_file()
                && let Some(kind) = interest(&rel, &name)
            {
                record_file(&mut tree, &rel, &name, &entry.path(), kind);
            }
        }
        // Reverse so the stack pops in name order: warnings come out sorted.
        stack.extend(subdirs.into_iter().rev());
    }
    tree.warnings.sort();
    Ok(tree)
}

/// Cargo's `target/` and Python's virtualenvs mark themselves; a directory
/// merely named `target` or `build` that holds sources is still scanned.
fn is_build_output(path: &Path, name: &str) -> bool {
    match name {
        "target" => path.join("CACHEDIR.TAG").exists() || path.join(".rustc_info.json").exists(),
        "env" | ".env" => path.join("pyvenv.cfg").exists(),
        _ => is_stack_output(path, name),
    }
}

/// Output and dependency directories that only their build tool's
/// manifest next to them identifies: Mix's `deps`, .NET's `bin`/`obj`,
/// sbt's `target`, Composer's `vendor`, Flutter's `build`.
fn is_stack_output(path: &Path, name: &str) -> bool {
    let Some(parent) = path.parent() else {
        return false;
    };
    let sibling = |f: &str| parent.join(f).exists();
    let dotnet_project = || {
        fs::read_dir(parent).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".csproj") || n.ends_with(".fsproj") || n.ends_with(".vbproj")
            })
        })
    };
    match name {
        "deps" => sibling("mix.exs"),
        "obj" => path.join("project.assets.json").exists() || dotnet_project(),
        "bin" => (path.join("Debug").is_dir() || path.join("Release").is_dir()) && dotnet_project(),
        "target" => sibling("build.sbt") || parent.file_name().is_some_and(|n| n == "project"),
        "vendor" => sibling("composer.json") && path.join("autoload.php").exists(),
        "build" => sibling("pubspec.yaml"),
        _ => false,
    }
}

fn handle_symlink(tree: &mut Tree, root: &Path, rel: &str, name: &str, path: &Path) {
    let child_rel = join(rel, name);
    let target = match fs::canonicalize(path) {
        Ok(t) => t,
        Err(e) => {
            // ELOOP (symlink loop) and dangling links end up here.
            let msg = if e.raw_os_error() == Some(40) {
                "symbolic link loop, not followed".to_string()
            } else {
                format!("broken symbolic link, not followed: {e}")
            };
            tree.warnings.push(Warning::new(child_rel, msg));
            return;
        }
    };
    if !target.starts_with(root) {
        tree.warnings.push(Warning::new(
            child_rel,
            "symbolic link points outside the scanned root, not followed",
        ));
        return;
    }
    if !target.is_file() {
        // A directory target is inside the root and is scanned where it
        // lives (following directory links is how scanners loop forever);
        // FIFOs and devices would block a read.
        return;
    }
    if let Some(kind) = interest(rel, name) {
        record_file(tree, rel, name, &target, kind);
    }
}

fn record_file(tree: &mut Tree, rel: &str, name: &str, path: &Path, kind: Interest) {
    let child_rel = join(rel, name);
    tree.dirs
        .entry(rel.to_string())
        .or_default()
        .insert(name.to_string());
    let text = match kind {
        Interest::Presence => None,
        Interest::Content => read_text(tree, &child_rel, path, None),
        Interest::Head => read_text(tree, &child_rel, path, Some(LOCKFILE_HEAD_BYTES)),
    };
    tree.files.insert(child_rel, text);
}

fn read_text(tree: &mut Tree, rel: &str, path: &Path, head: Option<usize>) -> Option<String> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tree.warnings
                .push(Warning::new(rel, format!("not readable: {e}")));
            return None;
        }
    };
    let mut bytes = Vec::new();
    let result = match head {
        Some(n) => file.take(n as u64).read_to_end(&mut bytes),
        None => {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len > MAX_MANIFEST_BYTES {
                tree.warnings.push(Warning::new(
                    rel,
                    format!(
                        "{len} bytes, larger than the {MAX_MANIFEST_BYTES}-byte limit; skipped"
                    ),
                ));
                return None;
            }
            // `take` guards against files that grow while being read.
            file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes)
        }
    };
    if let Err(e) = result {
        tree.warnings
            .push(Warning::new(rel, format!("not readable: {e}")));
        return None;
    }
    if head.is_none() && bytes.len() as u64 > MAX_MANIFEST_BYTES {
        tree.warnings.push(Warning::new(
            rel,
            format!("larger than the {MAX_MANIFEST_BYTES}-byte limit; skipped"),
        ));
        return None;
    }
    match String::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(e) if head.is_some() => {
            // A lockfile head may end inside a multi-byte character.
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            Some(String::from_utf8(bytes).unwrap_or_default())
        }
        Err(_) => {
            tree.warnings
                .push(Warning::new(rel, "not valid UTF-8; skipped"));
            None
        }
    }
}

/// The root directory is shown as `.` in reports.
pub fn display(rel: &str) -> String {
    if rel.is_empty() {
        ".".to_string()
    } else {
        rel.to_string()
    }
}
