//! Plans for the stacks beyond the first six: which nixpkgs builder each
//! gets (`buildDotnetModule`, `php.buildComposerProject2`, stdenv with
//! cmake/meson/autoreconfHook, the zig hook, `mixRelease`,
//! `callCabal2nix`, `buildFlutterApplication`/`buildDartApplication`,
//! SwiftPM, `writeShellApplication`), its toolchain attributes, and, where
//! nixpkgs has no builder (sbt, Deno, conda), a dev shell with a note.

use serde::{Deserialize, Serialize};

use super::{Builder, Options, Package, Placeholder, Toolchain, nix_path};
use crate::analysis::{Language, Project, rel_dir};
use crate::scan::join;

/// Builder settings of the stacks this module plans.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StackOptions {
    /// .NET: the project `dotnet publish` builds, relative to `src`.
    pub project_file: Option<String>,
    /// .NET: the runtime the executables run on.
    pub runtime: Option<String>,
    /// Build tools the build runs (`cmake`, `meson ninja`, `autoreconfHook`).
    pub native_build_inputs: Vec<String>,
    /// Libraries the build looks for, as nixpkgs attributes.
    pub build_inputs: Vec<String>,
    /// Libraries the build looks for with no known nixpkgs attribute.
    pub unknown_libraries: Vec<String>,
    /// Executables to copy to `$out/bin` when the build has no install
    /// rules, relative to the build directory.
    pub install: Vec<String>,
    /// Haskell: the package set (`haskellPackages`, `haskell.packages.ghc96`).
    pub package_set: Option<String>,
    /// Haskell: the workspace's local packages as (name, Nix path).
    pub local_packages: Vec<(String, String)>,
    /// Haskell: the local package with the executables.
    pub main_package: Option<String>,
    /// Shell: the scripts as (command name, Nix path).
    pub scripts: Vec<(String, String)>,
    /// Shell: commands the scripts call, as nixpkgs attributes.
    pub runtime_inputs: Vec<String>,
    /// A file or directory a tool must generate before the build (NuGet's
    /// deps.json, zon2nix's build.zig.zon.nix, swiftpm2nix's nix/), as a
    /// Nix path.
    pub generated: Option<String>,
    /// Flutter: the platform it builds for (`web`; Linux when unset).
    pub target_platform: Option<String>,
    /// What the package (or the missing package) cannot do by itself.
    pub note: Option<String>,
}

impl StackOptions {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

pub(super) fn builder(p: &Project) -> Builder {
    match p.language {
        Language::Dotnet => Builder::Dotnet,
        Language::Php => Builder::Composer,
        Language::C | Language::Cpp => match p.package_manager.as_str() {
            "cmake" => Builder::CMake,
            "meson" => Builder::Meson,
            "autotools" => Builder::Autotools,
            _ => Builder::Make,
        },
        Language::Zig => Builder::Zig,
        Language::Elixir => Builder::MixRelease,
        Language::Haskell => Builder::Haskell,
        Language::Dart if p.framework.as_deref() == Some("flutter") => Builder::Flutter,
        // buildDartApplication installs executables; a library has none.
        Language::Dart if !p.binaries.is_empty() => Builder::Dart,
        Language::Swift => Builder::Swift,
        Language::Shell => Builder::ShellApplication,
        _ => Builder::DevShell,
    }
}

/// The unversioned attributes each stack falls back to.
pub(super) fn is_default_attr(attr: &str) -> bool {
    matches!(
        attr,
        "dotnet-sdk"
            | "php"
            | "gcc"
            | "zig"
            | "elixir"
            | "ghc"
            | "scala"
            | "flutter"
            | "dart"
            | "swift"
            | "deno"
            | "bash"
    )
}

/// The compiler/runtime attribute and the dev-shell tools.
pub(super) fn toolchain(
    p: &Project,
    mm: Option<(u32, Option<u32>)>,
) -> (String, Vec<&'static str>) {
    let v = |s: &[&'static str]| s.to_vec();
    match p.language {
        Language::Dotnet => (
            match mm {
                Some((maj, Some(min))) => format!("dotnetCorePackages.sdk_{maj}_{min}"),
                _ => "dotnet-sdk".into(),
            },
            vec![],
        ),
        Language::Php => (
            match mm {
                Some((8, Some(m))) => format!("php8{m}"),
                _ => "php".into(),
            },
            v(&["phpPackages.composer"]),
        ),
        Language::C | Language::Cpp => (
            "gcc".into(),
            match p.package_manager.as_str() {
                "cmake" => v(&["cmake"]),
                "meson" => v(&["meson", "ninja"]),
                "autotools" => v(&["autoconf", "automake", "libtool"]),
                _ => v(&["gnumake"]),
            },
        ),
        Language::Zig => (
            match mm {
                Some((0, Some(m))) => format!("zig_0_{m}"),
                _ => "zig".into(),
            },
            vec![],
        ),
        Language::Elixir => (
            match mm {
                Some((1, Some(m))) => format!("elixir_1_{m}"),
                _ => "elixir".into(),
            },
            vec![],
        ),
        Language::Haskell => (
            match mm {
                Some((maj, Some(min))) => format!("haskell.compiler.ghc{maj}{min}"),
                _ => "ghc".into(),
            },
            if p.package_manager == "stack" {
                v(&["stack"])
            } else {
                v(&["cabal-install"])
            },
        ),
        Language::Scala => (
            match mm {
                Some((3, _)) => "scala_3".into(),
                Some((2, Some(m))) => format!("scala_2_{m}"),
                _ => "scala".into(),
            },
            v(&["sbt"]),
        ),
        Language::Dart if p.framework.as_deref() == Some("flutter") => (
            match mm {
                Some((3, Some(m))) => format!("flutter3{m}"),
                _ => "flutter".into(),
            },
            vec![],
        ),
        Language::Dart => ("dart".into(), vec![]),
        Language::Swift => ("swift".into(), v(&["swiftpm"])),
        Language::Deno => ("deno".into(), vec![]),
        Language::Shell => ("bash".into(), v(&["shellcheck"])),
        // The first six are planned in plan.rs.
        _ => ("stdenv".into(), vec![]),
    }
}

/// nixpkgs attributes of the libraries CMake's `find_package` and Meson's
/// `dependency` name most often.
fn library_attr(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "fmt" => "fmt",
        "spdlog" => "spdlog",
        "boost" => "boost",
        "openssl" => "openssl",
        "zlib" => "zlib",
        "png" | "libpng" => "libpng",
        "curl" => "curl",
        "libcurl" => "curl",
        "sqlite3" => "sqlite",
        "nlohmann_json" => "nlohmann_json",
        "gtest" => "gtest",
        "catch2" => "catch2_3",
        "libuv" => "libuv",
        "oniguruma" => "oniguruma",
        "readline" => "readline",
        "ncurses" => "ncurses",
        "glib-2.0" => "glib",
        "gtk4" => "gtk4",
        "sdl2" => "SDL2",
        _ => return None,
    })
}

/// Fills the stack's options; returns the program `nix run` starts.
pub(super) fn options(
    p: &Project,
    builder: Builder,
    attr: &str,
    toolchain: &Toolchain,
    options: &mut Options,
    inputs: &mut Vec<String>,
) -> Option<String> {
    let dir = rel_dir(&p.path);
    let o = &mut options.stack;
    let in_src = |path: &str| -> String {
        path.strip_prefix(&format!("{dir}/"))
            .filter(|_| !dir.is_empty())
            .unwrap_or(path)
            .to_string()
    };
    let first = p.binaries.first().cloned();
    match builder {
        Builder::Dotnet => {
            o.project_file = Some(in_src(p.entry.as_deref().unwrap_or(&p.manifest)));
            let series = toolchain
                .nix_attr
                .strip_prefix("dotnetCorePackages.sdk_")
                .map(String::from);
            let web = p.framework.as_deref() == Some("aspnetcore");
            o.runtime = Some(match (series, web) {
                (Some(s), true) => format!("dotnetCorePackages.aspnetcore_{s}"),
                (Some(s), false) => format!("dotnetCorePackages.runtime_{s}"),
                (None, true) => "dotnet-aspnetcore".into(),
                (None, false) => "dotnet-runtime".into(),
            });
            let deps = join(&dir, "deps.json");
            inputs.push(deps.clone());
            o.generated = Some(nix_path(&deps));
            options.lockfile = None;
            first
        }
        Builder::Composer => {
            inputs.retain(|i| !i.ends_with("composer.lock"));
            if !p.dependencies.is_empty() {
                o.note = Some(format!(
                    "needs the PHP extensions {}: enable any the default PHP lacks with php.withExtensions",
                    p.dependencies.join(", ")
                ));
            }
            p.run.as_ref().map(|_| attr.to_string())
        }
        Builder::CMake | Builder::Meson | Builder::Autotools | Builder::Make => {
            o.native_build_inputs = match builder {
                Builder::CMake => vec!["cmake".into()],
                Builder::Meson => vec!["meson".into(), "ninja".into()],
                Builder::Autotools
                    if !p.build.as_deref().unwrap_or("").starts_with("./configure") =>
                {
                    vec!["autoreconfHook".into()]
                }
                _ => vec![],
            };
            // Meson's dependency() and autoconf's PKG_CHECK_MODULES ask pkg-config.
            if !p.dependencies.is_empty() && matches!(builder, Builder::Meson | Builder::Autotools)
            {
                o.native_build_inputs.push("pkg-config".into());
            }
            for lib in &p.dependencies {
                match library_attr(lib) {
                    Some(a) if !o.build_inputs.iter().any(|b| b == a) => {
                        o.build_inputs.push(a.into())
                    }
                    Some(_) => {}
                    None => o.unknown_libraries.push(lib.clone()),
                }
            }
            // Without install rules `entry` holds the first program's path
            // in the build tree; the others sit beside their sources.
            if let Some(e) = &p.entry {
                o.install = vec![e.clone()];
            }
            first
        }
        Builder::Zig => {
            if p.lockfile.is_some() {
                let zon = join(&dir, "build.zig.zon.nix");
                o.generated = Some(nix_path(&zon));
                inputs.push(zon);
            }
            options.lockfile = None;
            first
        }
        Builder::MixRelease => {
            if p.framework.as_deref() == Some("phoenix") {
                o.note = Some(
                    "Phoenix's esbuild and tailwind download binaries at build time: point their config at nixpkgs' esbuild and tailwindcss, or build assets before `nix build`"
                        .into(),
                );
            }
            Some(p.name.clone())
        }
        Builder::Haskell => {
            o.package_set = Some(
                toolchain
                    .nix_attr
                    .strip_prefix("haskell.compiler.")
                    .map_or("haskellPackages".into(), |g| {
                        format!("haskell.packages.{g}")
                    }),
            );
            o.local_packages = p
                .dependencies
                .iter()
                .filter_map(|d| d.split_once('='))
                .map(|(n, d)| (n.to_string(), nix_path(d)))
                .collect();
            if o.local_packages.is_empty() {
                o.local_packages = vec![(p.name.clone(), nix_path(&dir))];
            }
            let main_dir = p
                .entry
                .as_deref()
                .map(|e| e.rsplit_once('/').map_or("", |(d, _)| d));
            o.main_package = o
                .local_packages
                .iter()
                .find(|(_, path)| Some(path.as_str()) == main_dir.map(nix_path).as_deref())
                .or(o.local_packages.first())
                .map(|(n, _)| n.clone());
            first
        }
        Builder::Flutter | Builder::Dart => {
            if p.build.as_deref().is_some_and(|b| b.contains("build web")) {
                o.target_platform = Some("web".into());
                o.note = Some(
                    "a Flutter web build is static files: serve $out with any web server".into(),
                );
            }
            if p.lockfile.is_none() {
                o.note = Some(
                    "no pubspec.lock: run `dart pub get` and commit it, the builder reads it"
                        .into(),
                );
            }
            first
        }
        Builder::Swift => {
            if !p.dependencies.is_empty() {
                let nix_dir = join(&dir, "nix");
                o.generated = Some(nix_path(&nix_dir));
            }
            o.install = p.binaries.clone();
            first
        }
        Builder::ShellApplication => {
            let first = first.as_deref().map(crate::analysis::shell_command_name);
            o.scripts = script_paths(p)
                .into_iter()
                .map(|(n, path)| (n, nix_path(&path)))
                .collect();
            o.runtime_inputs = p.dependencies.clone();
            o.note = Some(
                "writeShellApplication runs shellcheck on every script and adds `set -euo pipefail`; scripts that source files beside them need stdenv.mkDerivation with makeWrapper instead"
                    .into(),
            );
            first.map(String::from)
        }
        // DevShell: plan.rs adds the note for every stack without a builder.
        _ => None,
    }
}

/// The scripts of a shell tool, as (command, root-relative path): they
/// sit in the entry's directory, `binaries` holds their file names.
fn script_paths(p: &Project) -> Vec<(String, String)> {
    let entry = p.entry.as_deref().unwrap_or("");
    let dir = entry.rsplit_once('/').map_or("", |(d, _)| d);
    p.binaries
        .iter()
        .map(|b| {
            let command = crate::analysis::shell_command_name(b).to_string();
            (command, join(dir, b))
        })
        .collect()
}

/// What to do for a project nixpkgs cannot build.
pub(super) fn no_builder_note(p: &Project) -> String {
    let shell = format!("`nix develop .#{}`", crate::plan::attr_name(&p.name));
    match (p.language, p.package_manager.as_str()) {
        (Language::Scala, _) => format!(
            "nixpkgs has no sbt builder: build in {shell} with `{}`, or package it with sbt-derivation (github:zaninime/sbt-derivation)",
            p.build.as_deref().unwrap_or("sbt compile")
        ),
        (Language::Deno, _) => format!(
            "nixpkgs has no Deno builder: run it in {shell}; for a binary, `deno compile` in a fixed-output derivation (it fetches dependencies from deno.lock)"
        ),
        (Language::Python, "conda") => format!(
            "nixpkgs cannot build conda environments: enter {shell}, then `conda-shell` and `{}`",
            p.build.as_deref().unwrap_or("conda env create")
        ),
        (Language::Dart, _) => {
            format!("a Dart library has no executable to package: work on it in {shell}")
        }
        _ => format!("no nixpkgs builder: use {shell}"),
    }
}

/// Placeholders for generated files the build reads.
pub(super) fn placeholders(pkg: &mut Package, dir: &str, cd: &str) {
    let attr = pkg.attr.clone();
    let builder = pkg.builder;
    let generated = pkg.options.stack.generated.is_some();
    let mut add = |a: &str, how: String| {
        pkg.placeholders.push(Placeholder {
            attr: a.into(),
            how,
        })
    };
    match builder {
        Builder::Dotnet => add(
            "deps.json",
            format!(
                "run `nix build .#{attr}.fetch-deps && ./result {}` to write the NuGet dependencies",
                join(dir, "deps.json")
            ),
        ),
        Builder::Composer => add(
            "vendorHash",
            format!(
                "run `nix build .#{attr}` and copy the hash printed after `got:` into flake.nix"
            ),
        ),
        Builder::MixRelease => add(
            "mixFodDeps.hash",
            format!(
                "run `nix build .#{attr}` and copy the hash printed after `got:` into flake.nix"
            ),
        ),
        Builder::Zig if generated => add(
            "build.zig.zon.nix",
            format!("run `{cd}nix run nixpkgs#zon2nix -- build.zig.zon > build.zig.zon.nix`"),
        ),
        Builder::Swift if generated => add(
            "nix/",
            format!("run `{cd}nix run nixpkgs#swiftpm2nix` to write nix/ from Package.resolved"),
        ),
        _ => {}
    }
}
