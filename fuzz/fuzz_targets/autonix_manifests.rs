//! Fuzzes autonix's manifest parsers (Cargo.toml, package.json, pyproject,
//! go.mod, Gemfile.lock, pom.xml, CI and container files, …) through the
//! whole pure pipeline: analyse → plan → generate, on an in-memory tree
//! built exactly as `scan::walk` would build it, so no filesystem is touched.
//!
//! Input: up to 8 files separated by NUL bytes; each file is
//! `[name byte][directory byte][content…]`, the two bytes picking from the
//! tables below (so one input can hold a workspace and its members).
//! Properties: nothing panics; the scan report survives a JSON round trip
//! (it is what `autonix scan --json` prints and `plan` reads back).
#![no_main]

use std::path::PathBuf;

use autonix::scan::{LOCKFILE_HEAD_BYTES, Tree, join};
use libfuzzer_sys::fuzz_target;

/// Files read whole (mirrors `scan::interest`).
const CONTENT: &[&str] = &[
    "Cargo.toml",
    "rust-toolchain",
    "rust-toolchain.toml",
    "go.mod",
    "go.work",
    "package.json",
    "pnpm-workspace.yaml",
    ".nvmrc",
    ".node-version",
    ".yarnrc.yml",
    "pyproject.toml",
    "setup.cfg",
    "requirements.txt",
    "Pipfile",
    ".python-version",
    "runtime.txt",
    "Gemfile",
    ".ruby-version",
    "pom.xml",
    "build.gradle",
    "build.gradle.kts",
    "settings.gradle",
    "settings.gradle.kts",
    "system.properties",
    ".java-version",
    ".tool-versions",
    "mise.toml",
    ".mise.toml",
    "Makefile",
    "justfile",
    "Taskfile.yml",
    "Procfile",
    "Dockerfile",
    "docker-compose.yml",
    "compose.yaml",
    "Gemfile.lock",
    "Jenkinsfile",
    ".gitlab-ci.yml",
    ".travis.yml",
    "azure-pipelines.yml",
    "bitbucket-pipelines.yml",
    ".drone.yml",
    ".woodpecker.yml",
    "flake.nix",
    "setup.py",
    // Only interesting in a CI directory, or as a Dockerfile variant.
    "ci.yml",
    "Dockerfile.dev",
    // The stacks beyond the first six.
    "App.sln",
    "App.slnx",
    "Web.csproj",
    "Lib.fsproj",
    "global.json",
    "Directory.Build.props",
    "composer.json",
    "CMakeLists.txt",
    "meson.build",
    "configure.ac",
    "Makefile.am",
    "build.zig",
    "build.zig.zon",
    "mix.exs",
    "stack.yaml",
    "cabal.project",
    "pkg.cabal",
    "package.yaml",
    "build.sbt",
    "build.properties",
    "pubspec.yaml",
    ".fvmrc",
    "Package.swift",
    "deno.json",
    "deno.jsonc",
    "environment.yml",
    "tool",
];
/// Lockfiles: only their head is read.
const HEAD: &[&str] = &[
    "Cargo.lock",
    "go.sum",
    "go.work.sum",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lock",
    "uv.lock",
    "poetry.lock",
    "pdm.lock",
    "Pipfile.lock",
    "packages.lock.json",
    "composer.lock",
    "mix.lock",
    "stack.yaml.lock",
    "pubspec.lock",
    "Package.resolved",
    "deno.lock",
    "conda-lock.yml",
];
/// Files whose presence alone matters.
const PRESENCE: &[&str] = &[
    "bun.lockb",
    "manage.py",
    "main.py",
    "main.go",
    "config.ru",
    "gradlew",
    "mvnw",
    "server.js",
    "main.rs",
    "modules.txt",
    "rails",
    "next.config.js",
    "vite.config.ts",
    "configure",
    "artisan",
    "index.php",
    "main.ts",
];
/// Directories (relative to the root, `""` is the root).
const DIRS: &[&str] = &[
    "",
    "app",
    "packages/web",
    "crates/core",
    "api",
    ".github/workflows",
    "src",
    "vendor/x",
    "examples/demo",
    "cmd/server",
    ".circleci",
    "services/api",
    "bin",
    "docs",
    "linux",
];

fn add_file(tree: &mut Tree, name_byte: u8, dir_byte: u8, content: &[u8]) {
    let names = CONTENT.len() + HEAD.len() + PRESENCE.len();
    let i = usize::from(name_byte) % names;
    let dir = DIRS[usize::from(dir_byte) % DIRS.len()];
    let (name, text) = if i < CONTENT.len() {
        let name = CONTENT[i];
        (name, std::str::from_utf8(content).ok().map(str::to_owned))
    } else if i < CONTENT.len() + HEAD.len() {
        let head = &content[..content.len().min(LOCKFILE_HEAD_BYTES)];
        // As `scan::read_text`: a head cut inside a character keeps the valid prefix.
        let valid = match std::str::from_utf8(head) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
        };
        (HEAD[i - CONTENT.len()], Some(valid.to_owned()))
    } else {
        (PRESENCE[i - CONTENT.len() - HEAD.len()], None)
    };
    // Every directory on the way down is recorded, as the walk does.
    let mut at = String::new();
    tree.dirs.entry(String::new()).or_default();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        at = join(&at, part);
        tree.dirs.entry(at.clone()).or_default();
    }
    tree.dirs
        .entry(dir.to_owned())
        .or_default()
        .insert(name.to_owned());
    tree.files.insert(join(dir, name), text);
}

fuzz_target!(|data: &[u8]| {
    let mut tree = Tree {
        root: PathBuf::from("/fuzz/repo"),
        ..Tree::default()
    };
    tree.dirs.entry(String::new()).or_default();
    for chunk in data.split(|&b| b == 0).take(8) {
        if let [name, dir, content @ ..] = chunk {
            add_file(&mut tree, *name, *dir, content);
        }
    }

    let scan = autonix::analysis::analyse(&tree);
    let json = serde_json::to_string(&scan).expect("a scan serialises");
    let back: autonix::Scan = serde_json::from_str(&json).expect("a serialised scan parses");
    assert_eq!(scan, back, "scan JSON round trip");
    let plan = autonix::plan(&scan);
    let _ = autonix::generate(&plan);
});
