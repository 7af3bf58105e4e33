//! Build plan: for each scanned project, the nixpkgs builder, the files it
//! reads (inputs), its commands, its toolchain (as nixpkgs attributes) and
//! the hashes that cannot be known offline. Plain data, so it can be saved,
//! reviewed and rendered by [`crate::flake`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::analysis::{Language, Project, Scan, rel_dir};

mod stacks;
pub use stacks::StackOptions;

/// The nixpkgs builder a package uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Builder {
    #[serde(rename = "rustPlatform.buildRustPackage")]
    RustPackage,
    #[serde(rename = "buildGoModule")]
    GoModule,
    /// buildNpmPackage with `importNpmLock`: no hash, read from the lockfile.
    #[serde(rename = "buildNpmPackage+importNpmLock")]
    NpmImportLock,
    /// buildNpmPackage with `npmDepsHash` (no v2+ lockfile to import).
    #[serde(rename = "buildNpmPackage")]
    NpmDepsHash,
    #[serde(rename = "stdenv.mkDerivation+fetchYarnDeps")]
    YarnClassic,
    #[serde(rename = "stdenv.mkDerivation+yarn-berry.fetchYarnBerryDeps")]
    YarnBerry,
    #[serde(rename = "stdenv.mkDerivation+fetchPnpmDeps")]
    Pnpm,
    /// Bun has no nixpkgs fetcher: a fixed-output derivation runs `bun install`.
    #[serde(rename = "stdenv.mkDerivation+bun")]
    Bun,
    #[serde(rename = "buildPythonApplication")]
    PythonApplication,
    #[serde(rename = "bundlerEnv")]
    BundlerEnv,
    #[serde(rename = "maven.buildMavenPackage")]
    Maven,
    #[serde(rename = "stdenv.mkDerivation+gradle.fetchDeps")]
    Gradle,
    #[serde(rename = "buildDotnetModule")]
    Dotnet,
    #[serde(rename = "php.buildComposerProject2")]
    Composer,
    #[serde(rename = "stdenv.mkDerivation+cmake")]
    CMake,
    #[serde(rename = "stdenv.mkDerivation+meson")]
    Meson,
    #[serde(rename = "stdenv.mkDerivation+autoreconfHook")]
    Autotools,
    #[serde(rename = "stdenv.mkDerivation+make")]
    Make,
    #[serde(rename = "stdenv.mkDerivation+zig.hook")]
    Zig,
    #[serde(rename = "beamPackages.mixRelease")]
    MixRelease,
    #[serde(rename = "haskellPackages.callCabal2nix")]
    Haskell,
    #[serde(rename = "flutter.buildFlutterApplication")]
    Flutter,
    #[serde(rename = "buildDartApplication")]
    Dart,
    #[serde(rename = "swiftPackages.stdenv.mkDerivation+swiftpm")]
    Swift,
    #[serde(rename = "writeShellApplication")]
    ShellApplication,
    /// nixpkgs has no builder (sbt, Deno, conda): a dev shell and a note,
    /// no package.
    #[serde(rename = "mkShell")]
    DevShell,
    /// No manifest (a Dockerfile-only service): the tree is installed as
    /// is, with a launcher that has the runtime on its PATH.
    #[serde(rename = "stdenv.mkDerivation+script")]
    Script,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub packages: Vec<Package>,
    /// Projects nixpkgs has no builder for: each gets a dev shell
    /// (`nix develop .#<attr>`) and a note saying how to build it, never a
    /// package that cannot build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shells: Vec<Package>,
    /// nixpkgs attributes for the default dev shell (every toolchain).
    pub dev_shell: Vec<String>,
    /// Other versions of a language already in the default shell, as
    /// `attr (project path)`: their projects' own shells provide them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dev_shell_omitted: Vec<String>,
    /// What the user must do before the flake builds (hashes, generated files).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    /// Attribute name under `packages.<system>`.
    pub attr: String,
    /// The project's path relative to the root.
    pub project: String,
    pub language: Language,
    pub package_manager: String,
    pub builder: Builder,
    pub pname: String,
    pub version: String,
    /// Nix path of the source (`./.`, `./web`).
    pub src: String,
    /// Files the build reads by path (lockfiles, gemset.nix, deps.json),
    /// relative to the root.
    pub inputs: Vec<String>,
    pub commands: Commands,
    pub toolchain: Toolchain,
    /// Executable under `bin/` that `nix run .#attr` starts.
    pub program: Option<String>,
    /// Hash attributes that hold `lib.fakeHash` until the user fills them.
    pub placeholders: Vec<Placeholder>,
    /// Builder-specific settings.
    #[serde(default)]
    pub options: Options,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Commands {
    pub build: Option<String>,
    pub run: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Toolchain {
    pub language: Language,
    pub version: Option<String>,
    pub version_source: Option<String>,
    /// nixpkgs attribute of the compiler/runtime (`nodejs_20`, `go_1_22`).
    pub nix_attr: String,
    /// Package manager and tooling attributes for the dev shell.
    pub tools: Vec<String>,
    /// Why the requested version is not what nixpkgs gives, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placeholder {
    pub attr: String,
    pub how: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// Nix path of the lockfile the builder reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockfile: Option<String>,
    /// Go: module directory inside `src` (go.work members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_root: Option<String>,
    /// Go: main packages to build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_packages: Vec<String>,
    /// Go: dependencies are vendored (`vendorHash = null`).
    #[serde(default)]
    pub vendored: bool,
    /// Go: no go.sum, so no dependencies to fetch.
    #[serde(default)]
    pub no_dependencies: bool,
    /// Python/Ruby: dependency attribute names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// Python: build backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_system: Vec<String>,
    /// Python: PEP 517 project (pyproject/setup.py) or a plain source tree.
    #[serde(default)]
    pub pyproject: bool,
    /// Node: the package.json has a `build` script.
    #[serde(default)]
    pub build_script: bool,
    /// Java: the jar the build produces, relative to the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jar: Option<String>,
    /// Rust: a pinned toolchain file exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rust_toolchain_file: Option<String>,
    /// The stacks beyond the first six (.NET, PHP, C/C++, Zig, Elixir,
    /// Haskell, Scala, Dart, Swift, Deno, shell, conda).
    #[serde(default, skip_serializing_if = "StackOptions::is_empty")]
    pub stack: StackOptions,
    /// Rust: the workspace member package this package builds (`-p`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo_package: Option<String>,
    /// Node: the workspace member directory, relative to `src` (the
    /// workspace root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_dir: Option<String>,
}

/// Nix path literal for a root-relative path.
pub fn nix_path(rel: &str) -> String {
    let rel = rel_dir(rel);
    if rel.is_empty() {
        "./.".into()
    } else {
        format!("./{rel}")
    }
}

/// A valid, readable Nix attribute name.
pub fn attr_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert_str(0, "pkg-");
    }
    s
}

pub fn plan(scan: &Scan) -> Plan {
    let mut packages = Vec::new();
    let mut shells = Vec::new();
    let mut shell: Vec<String> = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut shadowed: Vec<String> = Vec::new();
    let mut runtimes: Vec<String> = Vec::new();
    let mut uses: BTreeMap<(Language, String), usize> = BTreeMap::new();
    for p in &scan.projects {
        *uses.entry((p.language, toolchain(p).nix_attr)).or_default() += 1;
    }
    let mut runtime: BTreeMap<Language, String> = BTreeMap::new();
    for ((lang, attr), n) in &uses {
        let better = match runtime.get(lang) {
            None => true,
            Some(cur) => {
                let key = |a: &str| (uses[&(*lang, a.to_string())], !is_default_attr(a));
                key(attr) > key(cur)
            }
        };
        let _ = n;
        if better {
            runtime.insert(*lang, attr.clone());
        }
    }
    for p in &scan.projects {
        let tc = toolchain(p);
        // One compiler/runtime per language: two `go` or `node` binaries on
        // one PATH shadow each other. The version most projects ask for wins
        // (a pinned one over the unversioned default); the others are
        // reachable through their project's own `nix develop .#<attr>` shell.
        let winner = &runtime[&p.language];
        if *winner == tc.nix_attr {
            if !runtimes.contains(winner) {
                runtimes.push(winner.clone());
            }
        } else {
            shadowed.push(format!("{} ({})", tc.nix_attr, p.path));
        }
        for a in &tc.tools {
            if !shell.contains(a) {
                shell.push(a.clone());
            }
        }
        if p.language == Language::Go && p.manifest.ends_with("go.work") {
            // buildGoModule does not understand go.work: its modules are
            // projects of their own, each a package built with modRoot.
            continue;
        }
        let mut pkg = package(p, tc, &p.name, &mut taken);
        placeholders(&mut pkg);
        if pkg.builder == Builder::DevShell {
            shells.push(pkg);
        } else {
            packages.push(pkg);
        }
    }
    let mut notes = Vec::new();
    for pkg in packages.iter().chain(&shells) {
        if let Some(n) = &pkg.options.stack.note {
            notes.push(format!("{}: {n}", pkg.attr));
        }
        for ph in &pkg.placeholders {
            notes.push(format!(
                "{}: {} is a placeholder; {}",
                pkg.attr, ph.attr, ph.how
            ));
        }
        if let Some(n) = &pkg.toolchain.note {
            notes.push(format!("{}: {n}", pkg.attr));
        }
    }
    Plan {
        name: scan.name.clone(),
        packages,
        shells,
        dev_shell: runtimes.into_iter().chain(shell).collect(),
        dev_shell_omitted: shadowed,
        notes,
    }
}

fn package(p: &Project, toolchain: Toolchain, name: &str, taken: &mut BTreeSet<String>) -> Package {
    let mut attr = attr_name(name);
    // `default` is the flake's own; the others are bindings of the
    // packages' `let` that a package of that name would shadow.
    if matches!(
        attr.as_str(),
        "default" | "lib" | "pkgs" | "system" | "self" | "nixpkgs"
    ) {
        attr.push_str("-pkg");
    }
    while taken.contains(&attr) {
        attr.push_str("-2");
    }
    taken.insert(attr.clone());
    let dir = rel_dir(&p.path);
    // A workspace member builds from the workspace root (its lockfile and
    // sibling packages live there), except Python, whose member has its
    // own pyproject.
    let ws = p
        .workspace
        .as_deref()
        .filter(|_| p.language != Language::Python)
        .map(rel_dir);
    let member_rel = ws.as_ref().map(|w| {
        dir.strip_prefix(&format!("{w}/"))
            .filter(|_| !w.is_empty())
            .unwrap_or(&dir)
            .to_string()
    });
    let builder = match (p.language, p.package_manager.as_str()) {
        // A shell tool has no package manager either, but its scripts are
        // the program: writeShellApplication, not an installed tree.
        (Language::Shell, _) => Builder::ShellApplication,
        (_, "none") => Builder::Script,
        (Language::Rust, _) => Builder::RustPackage,
        (Language::Go, _) => Builder::GoModule,
        (Language::Node, "yarn") => Builder::YarnClassic,
        (Language::Node, "yarn-berry") => Builder::YarnBerry,
        (Language::Node, "pnpm") => Builder::Pnpm,
        (Language::Node, "bun") => Builder::Bun,
        (Language::Node, _) if p.lockfile_version.unwrap_or(0) >= 2 => Builder::NpmImportLock,
        (Language::Node, _) => Builder::NpmDepsHash,
        (Language::Python, "conda") => Builder::DevShell,
        (Language::Python, _) => Builder::PythonApplication,
        (Language::Ruby, _) => Builder::BundlerEnv,
        (Language::Java, "maven") => Builder::Maven,
        (Language::Java, _) => Builder::Gradle,
        _ => stacks::builder(p),
    };
    let mut inputs: Vec<String> = p.lockfile.iter().cloned().collect();
    let mut options = Options {
        lockfile: p.lockfile.as_deref().map(nix_path),
        ..Options::default()
    };
    let mut program = None;
    match p.language {
        _ if builder == Builder::Script => {
            program = p.run.as_ref().map(|_| attr.clone());
        }
        Language::Rust => {
            program = p.binaries.first().cloned();
            if ws.is_some() {
                options.cargo_package = Some(p.name.clone());
            }
            if p.version_source
                .as_deref()
                .is_some_and(|s| s.contains("rust-toolchain"))
            {
                options.rust_toolchain_file = p.version_source.clone();
            }
        }
        Language::Go => {
            // The main package named after the module is the service; the
            // other `cmd/*` are its tools.
            program = p
                .binaries
                .iter()
                .find(|b| **b == p.name)
                .or(p.binaries.first())
                .cloned();
            options.mod_root = member_rel.clone();
            options.vendored = p.vendored;
            options.no_dependencies = p.lockfile.is_none();
            let cmds: Vec<String> = p
                .binaries
                .iter()
                .filter(|b| **b != p.name)
                .map(|b| format!("cmd/{b}"))
                .collect();
            if !cmds.is_empty() {
                options.sub_packages = cmds;
                if p.binaries.contains(&p.name) {
                    options.sub_packages.insert(0, ".".into());
                }
            }
        }
        Language::Node => {
            options.member_dir = member_rel.clone();
            options.build_script = p.build.as_deref().is_some_and(|b| b.contains(" build"));
            if p.run.is_some() {
                program = Some(attr.clone());
            }
        }
        Language::Python => {
            options.pyproject = !p.build_system.is_empty();
            options.build_system = p.build_system.iter().map(|d| python_attr(d)).collect();
            options.dependencies = p.dependencies.iter().map(|d| python_attr(d)).collect();
            options.dependencies.dedup();
            program = p
                .binaries
                .first()
                .cloned()
                .or_else(|| p.run.as_ref().map(|_| attr.clone()));
            if let Some(l) = &p.lockfile {
                // The lockfile pins versions nixpkgs does not follow; it is
                // reported, not read.
                inputs.retain(|i| i != l);
                options.lockfile = None;
            }
        }
        Language::Ruby => {
            inputs.push(crate::scan::join(&dir, "gemset.nix"));
            program = p.run.as_ref().map(|_| attr.clone());
        }
        Language::Java => {
            options.jar = p
                .run
                .as_deref()
                .and_then(|r| r.strip_prefix("java -jar "))
                .map(String::from);
            program = options.jar.as_ref().map(|_| attr.clone());
            if builder == Builder::Gradle {
                inputs.push(crate::scan::join(&dir, "deps.json"));
            }
        }
        _ => program = stacks::options(p, builder, &attr, &toolchain, &mut options, &mut inputs),
    }
    if builder == Builder::DevShell {
        options.stack.note = Some(stacks::no_builder_note(p));
    }
    Package {
        attr,
        project: p.path.clone(),
        language: p.language,
        package_manager: p.package_manager.clone(),
        builder,
        pname: name.to_string(),
        version: p.version.clone().unwrap_or_else(|| "0-unstable".into()),
        src: nix_path(ws.as_deref().unwrap_or(&dir)),
        inputs,
        commands: Commands {
            build: p.build.clone(),
            run: p.run.clone(),
        },
        toolchain,
        program,
        placeholders: Vec::new(),
        options,
    }
}

/// Records the hashes that stay `lib.fakeHash` and how to get real ones.
fn placeholders(pkg: &mut Package) {
    let build = format!(
        "run `nix build .#{}` and copy the hash printed after `got:` into flake.nix",
        pkg.attr
    );
    let attr = match pkg.builder {
        Builder::RustPackage if pkg.options.lockfile.is_none() => Some("cargoHash"),
        Builder::GoModule if !pkg.options.vendored && !pkg.options.no_dependencies => {
            Some("vendorHash")
        }
        Builder::NpmDepsHash => Some("npmDepsHash"),
        Builder::YarnClassic | Builder::YarnBerry => Some("yarnOfflineCache.hash"),
        Builder::Pnpm => Some("pnpmDeps.hash"),
        Builder::Bun => Some("node_modules outputHash"),
        Builder::Maven => Some("mvnHash"),
        _ => None,
    };
    if let Some(a) = attr {
        pkg.placeholders.push(Placeholder {
            attr: a.into(),
            how: build,
        });
    }
    let dir = rel_dir(&pkg.project);
    let cd = if dir.is_empty() {
        String::new()
    } else {
        format!("cd {dir} && ")
    };
    match pkg.builder {
        Builder::BundlerEnv => pkg.placeholders.push(Placeholder {
            attr: "gemset.nix".into(),
            how: format!(
                "run `{cd}nix run nixpkgs#bundix -- -l` to write gemset.nix from Gemfile.lock"
            ),
        }),
        Builder::Gradle => pkg.placeholders.push(Placeholder {
            attr: "deps.json".into(),
            how: format!(
                "run `nix build .#{}.mitmCache.updateScript && ./result` to write {}",
                pkg.attr,
                crate::scan::join(&dir, "deps.json")
            ),
        }),
        _ => stacks::placeholders(pkg, &dir, &cd),
    }
}

/// nixpkgs' python package attribute for a PEP 503 name; the few that
/// differ are mapped, the rest are the name itself.
pub fn python_attr(name: &str) -> String {
    match name {
        "psycopg2-binary" => "psycopg2",
        "psycopg-binary" => "psycopg",
        "opencv-python" | "opencv-python-headless" => "opencv4",
        "tensorflow-cpu" => "tensorflow",
        "msgpack-python" => "msgpack",
        "pyyaml" => "pyyaml",
        "poetry-core" | "poetry-core-masonry" => "poetry-core",
        other => other,
    }
    .to_string()
}

/// The unversioned nixpkgs attribute a language falls back to.
fn is_default_attr(attr: &str) -> bool {
    matches!(attr, "rustc" | "go" | "nodejs" | "python3" | "ruby" | "jdk")
        || stacks::is_default_attr(attr)
}

/// Major and minor numbers of a version string that names one version
/// (`3.11.4`, `20`, `=1.22`), None for ranges (`>=18`, `^3.11`, `lts/*`).
fn major_minor(v: &str) -> Option<(u32, Option<u32>)> {
    let v = v.trim().trim_start_matches(['=', 'v', '~']).trim();
    if !v.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok());
    Some((major, minor))
}

fn toolchain(p: &Project) -> Toolchain {
    let version = p.toolchain_version.clone();
    let mm = version.as_deref().and_then(major_minor);
    let mut note = None;
    let (nix_attr, tools): (String, Vec<&str>) = match p.language {
        Language::Rust => {
            if let Some(v) = &version
                && p.version_source
                    .as_deref()
                    .is_some_and(|s| s.contains("rust-toolchain"))
            {
                note = Some(format!(
                    "{} pins Rust {v}; nixpkgs ships one Rust, so the build uses nixpkgs' rustc (add rust-overlay or fenix to pin it)",
                    p.version_source.as_deref().unwrap_or("")
                ));
            }
            (
                "rustc".into(),
                vec!["cargo", "clippy", "rustfmt", "rust-analyzer"],
            )
        }
        Language::Go => (
            match mm {
                Some((1, Some(m))) => format!("go_1_{m}"),
                _ => "go".into(),
            },
            vec!["gopls"],
        ),
        Language::Node => (
            match mm {
                Some((m, _)) => format!("nodejs_{m}"),
                None => "nodejs".into(),
            },
            match p.package_manager.as_str() {
                "yarn" => vec!["yarn"],
                "yarn-berry" => vec!["yarn-berry"],
                "pnpm" => vec!["pnpm"],
                "bun" => vec!["bun"],
                _ => vec![],
            },
        ),
        Language::Python => (
            match mm {
                Some((3, Some(m))) => format!("python3{m}"),
                _ => "python3".into(),
            },
            match p.package_manager.as_str() {
                "uv" => vec!["uv"],
                "poetry" => vec!["poetry"],
                "pdm" => vec!["pdm"],
                "pipenv" => vec!["pipenv"],
                "conda" => vec!["conda"],
                _ => vec![],
            },
        ),
        Language::Ruby => (
            match mm {
                Some((maj, Some(m))) => format!("ruby_{maj}_{m}"),
                _ => "ruby".into(),
            },
            vec!["bundix"],
        ),
        Language::Java => (
            match mm {
                Some((1, Some(m))) => format!("jdk{m}"),
                Some((m, _)) => format!("jdk{m}"),
                None => "jdk".into(),
            },
            if p.package_manager == "maven" {
                vec!["maven"]
            } else {
                vec!["gradle"]
            },
        ),
        _ => stacks::toolchain(p, mm),
    };
    let mut tools: Vec<String> = tools.into_iter().map(String::from).collect();
    // pnpm's lockfile and yarn berry's cache formats change between
    // majors: use the declared one.
    if let Some((m, _)) = p.package_manager_version.as_deref().and_then(major_minor) {
        match p.package_manager.as_str() {
            "pnpm" => tools = vec![format!("pnpm_{m}")],
            "yarn-berry" if (3..=4).contains(&m) => tools = vec![format!("yarn-berry_{m}")],
            _ => {}
        }
    }
    Toolchain {
        language: p.language,
        version,
        version_source: p.version_source.clone(),
        nix_attr,
        tools,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_to_attrs() {
        assert_eq!(major_minor("3.11.4"), Some((3, Some(11))));
        assert_eq!(major_minor("v20"), Some((20, None)));
        assert_eq!(major_minor(">=18"), None);
        assert_eq!(major_minor("^3.11"), None);
        assert_eq!(attr_name("web app"), "web-app");
        assert_eq!(attr_name("1password"), "pkg-1password");
        assert_eq!(nix_path("."), "./.");
        assert_eq!(nix_path("apps/web"), "./apps/web");
    }
}
