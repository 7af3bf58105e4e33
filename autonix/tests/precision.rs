//! Precision and hostile manifests for the stacks beyond the first six:
//! what is not a project (vendored code, fixtures, examples and docs
//! tooling unless runnable on their own, dependency and build output
//! directories, Flutter's platform runners), shell tools only when nothing
//! else is, and manifests written to mislead (solutions pointing outside
//! the repository, build loops, malformed files) becoming warnings.

use std::fs;
use std::path::Path;

/// Writes `files` (path, text) under a fresh temp dir named `name`.
fn tree(name: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(name);
    for (path, text) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    fs::create_dir_all(&root).unwrap();
    (tmp, root)
}

fn scan(root: &Path) -> autonix::Scan {
    autonix::scan(root).expect("scan")
}

fn paths(scan: &autonix::Scan) -> Vec<(String, &'static str)> {
    scan.projects
        .iter()
        .map(|p| (p.path.clone(), p.language.as_str()))
        .collect()
}

fn ignored<'a>(scan: &'a autonix::Scan, path: &str) -> Option<&'a str> {
    scan.ignored
        .iter()
        .find(|i| i.path == path)
        .map(|i| i.reason.as_str())
}

#[track_caller]
fn assert_warned(scan: &autonix::Scan, path: &str, needle: &str) {
    assert!(
        scan.warnings
            .iter()
            .any(|w| w.path == path && w.message.contains(needle)),
        "no warning on {path} containing {needle:?}: {:?}",
        scan.warnings
    );
}

const START: &str = r#"{"name":"demo","scripts":{"start":"node server.js"}}"#;
const LOCK: &str = r#"{"name":"demo","lockfileVersion":3,"packages":{}}"#;

#[test]
fn examples_and_docs_are_projects_only_when_runnable_on_their_own() {
    let (_t, root) = tree(
        "mixed",
        &[
            (
                "mix.exs",
                "defmodule A.MixProject do\n  def project, do: [app: :a, version: \"0.1.0\"]\nend\n",
            ),
            // Own lockfile and a start script: deployable on its own.
            ("examples/demo/package.json", START),
            ("examples/demo/package-lock.json", LOCK),
            // A snippet without a lockfile: part of the docs, not a service.
            ("examples/snippet/package.json", START),
            // Docs tooling: a Sphinx requirements file, a docs site's package.json.
            ("docs/requirements.txt", "sphinx==7.3.7\n"),
            (
                "docs/site/package.json",
                r#"{"name":"site","scripts":{"build":"docusaurus build"}}"#,
            ),
            (
                "third_party/zlib/CMakeLists.txt",
                "project(zlib C)\nadd_library(z zlib.c)\n",
            ),
            ("test/fixtures/app/composer.json", r#"{"name":"acme/app"}"#),
        ],
    );
    let s = scan(&root);
    assert_eq!(
        paths(&s),
        vec![(".".into(), "elixir"), ("examples/demo".into(), "node")]
    );
    assert_eq!(
        ignored(&s, "examples/snippet/package.json"),
        Some("example")
    );
    assert_eq!(
        ignored(&s, "docs/requirements.txt"),
        Some("documentation tooling")
    );
    assert_eq!(
        ignored(&s, "docs/site/package.json"),
        Some("documentation tooling")
    );
    assert_eq!(
        ignored(&s, "third_party/zlib/CMakeLists.txt"),
        Some("vendored code")
    );
    assert_eq!(
        ignored(&s, "test/fixtures/app/composer.json"),
        Some("test code or fixture")
    );
}

#[test]
fn dependency_and_build_output_directories_are_not_walked() {
    let (_t, root) = tree(
        "outputs",
        &[
            (
                "mix.exs",
                "defmodule A.MixProject do\n  def project, do: [app: :a]\nend\n",
            ),
            ("deps/phoenix/mix.exs", "defmodule P do\nend\n"),
            ("_build/prod/lib/a/mix.exs", "defmodule B do\nend\n"),
            ("web/composer.json", r#"{"name":"acme/web"}"#),
            ("web/vendor/autoload.php", "<?php\n"),
            (
                "web/vendor/laravel/framework/composer.json",
                r#"{"name":"laravel/framework"}"#,
            ),
            (
                "api/Api.csproj",
                "<Project Sdk=\"Microsoft.NET.Sdk.Web\"></Project>\n",
            ),
            ("api/bin/Debug/net8.0/Api.csproj", "<Project></Project>\n"),
            ("api/obj/project.assets.json", "{}\n"),
            ("app/pubspec.yaml", "name: app\n"),
            ("app/build/web/pubspec.yaml", "name: copy\n"),
            ("hs/stack.yaml", "resolver: lts-22.7\n"),
            ("hs/hs.cabal", "name: hs\nversion: 1\n"),
            ("hs/.stack-work/dist/x/x.cabal", "name: x\n"),
            // `deps` without a mix.exs beside it is ordinary source.
            (
                "native/deps/lz4/CMakeLists.txt",
                "project(lz4 C)\nadd_executable(lz4 lz4.c)\n",
            ),
        ],
    );
    let s = scan(&root);
    let mut got = paths(&s);
    got.sort();
    assert_eq!(
        got,
        vec![
            (".".into(), "elixir"),
            ("api".into(), "dotnet"),
            ("app".into(), "dart"),
            ("hs".into(), "haskell"),
            ("native/deps/lz4".into(), "c"),
            ("web".into(), "php"),
        ]
    );
    for skipped in [
        "deps",
        "_build",
        "web/vendor",
        "api/bin",
        "api/obj",
        "app/build",
        "hs/.stack-work",
    ] {
        assert_eq!(
            ignored(&s, skipped),
            Some("dependency or build output directory, not scanned"),
            "{skipped}: {:?}",
            s.ignored
        );
    }
}

#[test]
fn a_solution_naming_files_outside_the_repository_is_warned_not_followed() {
    let (_t, root) = tree(
        "sln",
        &[
            (
                "App.sln",
                "Project(\"{FAE04EC0-301F-11D3-BF4B-00C04F79EFBC}\") = \"Evil\", \"..\\..\\..\\etc\\Evil.csproj\", \"{1}\"\nEndProject\nProject(\"{FAE04EC0-301F-11D3-BF4B-00C04F79EFBC}\") = \"Gone\", \"src\\Gone\\Gone.csproj\", \"{2}\"\nEndProject\nProject(\"{FAE04EC0-301F-11D3-BF4B-00C04F79EFBC}\") = \"Cli\", \"src\\Cli\\Cli.fsproj\", \"{3}\"\nEndProject\n",
            ),
            (
                "src/Cli/Cli.fsproj",
                "<Project Sdk=\"Microsoft.NET.Sdk\">\n  <PropertyGroup>\n    <OutputType>Exe</OutputType>\n    <TargetFramework>net9.0</TargetFramework>\n    <AssemblyName>acme</AssemblyName>\n  </PropertyGroup>\n</Project>\n",
            ),
            (
                "Other.slnx",
                "<Solution>\n  <Project Path=\"src/Cli/Cli.fsproj\" />\n</Solution>\n",
            ),
            ("lib/Lib.csproj", "this is not msbuild"),
            // Visual Studio saves it with a byte-order mark.
            (
                "global.json",
                "\u{feff}{ \"sdk\": { \"version\": \"9.0.100\" } }",
            ),
        ],
    );
    let s = scan(&root);
    assert_warned(&s, "App.sln", "is outside the repository");
    assert_warned(&s, "App.sln", "src\\Gone\\Gone.csproj does not exist");
    assert_warned(&s, "lib/Lib.csproj", "not an MSBuild project");
    let app = s.projects.iter().find(|p| p.manifest == "App.sln").unwrap();
    assert_eq!(app.binaries, vec!["acme"]);
    assert_eq!(app.run.as_deref(), Some("dotnet out/acme.dll"));
    assert_eq!(app.toolchain_version.as_deref(), Some("9.0.100"));
    assert_eq!(
        app.version_source.as_deref(),
        Some("global.json (sdk.version)")
    );
    // The .slnx lists the same project, in the new XML format.
    let slnx = s
        .projects
        .iter()
        .find(|p| p.manifest == "Other.slnx")
        .unwrap();
    assert_eq!(slnx.entry.as_deref(), Some("src/Cli/Cli.fsproj"));
}

#[test]
fn build_loops_and_unreadable_manifests_end_in_warnings_not_hangs() {
    let (_t, root) = tree(
        "loops",
        &[
            // add_subdirectory cycles and escapes.
            (
                "CMakeLists.txt",
                "project(loop CXX)\nadd_subdirectory(a)\nadd_subdirectory(../../..)\nadd_subdirectory(.)\n",
            ),
            (
                "a/CMakeLists.txt",
                "add_subdirectory(..)\nadd_subdirectory(b)\nadd_executable(a a.cpp)\n",
            ),
            (
                "a/b/CMakeLists.txt",
                "add_subdirectory(../..)\nadd_subdirectory(../../a)\n",
            ),
            (
                "meson/meson.build",
                "project('m', 'c')\nsubdir('meson')\nsubdir('..')\n",
            ),
            ("php/composer.json", "{ \"name\": "),
            (
                "deno/deno.jsonc",
                "{\n  // tasks\n  \"tasks\": { \"start\": \"deno run main.ts\", },\n}\n",
            ),
            ("dart/pubspec.yaml", "name: [unclosed\n"),
            ("conda/environment.yml", "name: not-conda\nchannels: [x]\n"),
            ("zig/build.zig", "pub fn build(b: *std.Build) void {}\n"),
            ("zig/build.zig.zon", ".{ .name = \n"),
            ("ex/mix.exs", "garbage ((( \"\n"),
            ("hs/broken.cabal", ":::\n\texecutable\n"),
            ("swift/Package.swift", "import PackageDescription\n"),
        ],
    );
    let s = scan(&root);
    let root_project = s.projects.iter().find(|p| p.path == ".").unwrap();
    assert_eq!(root_project.binaries, vec!["a"]);
    assert_warned(&s, "php/composer.json", "malformed JSON");
    assert_warned(&s, "dart/pubspec.yaml", "malformed YAML");
    assert_warned(&s, "swift/Package.swift", "no swift-tools-version line");
    // JSON with comments and trailing commas is what deno.jsonc allows.
    let deno = s.projects.iter().find(|p| p.path == "deno").unwrap();
    assert_eq!(deno.run.as_deref(), Some("deno task start"));
    // An environment.yml without dependencies is some other tool's file.
    assert!(
        s.projects.iter().all(|p| p.path != "conda"),
        "{:?}",
        paths(&s)
    );
    // Malformed Zig, Elixir and cabal manifests still name a project after
    // its directory: the tree says what it is, the text only refines it.
    for (dir, lang) in [("zig", "zig"), ("ex", "elixir"), ("hs", "haskell")] {
        let p = s.projects.iter().find(|p| p.path == dir).unwrap();
        assert_eq!((p.name.as_str(), p.language.as_str()), (dir, lang));
    }
}

#[test]
fn a_shell_tool_is_a_project_only_when_nothing_else_is() {
    let bash = "#!/usr/bin/env bash\nset -eu\ncurl -fsS \"$1\" | jq .\n";
    let (_t, root) = tree("tool", &[("bin/tool", bash), ("lib/common.sh", "x=1\n")]);
    let s = scan(&root);
    let p = &s.projects[0];
    assert_eq!(
        (p.language.as_str(), p.manifest.as_str(), p.run.as_deref()),
        ("shell", "bin/tool", Some("./bin/tool"))
    );
    assert_eq!(p.dependencies, vec!["curl", "jq"]);
    // Next to a real manifest the script is a helper of that project.
    let (_t, root) = tree(
        "tool",
        &[
            ("bin/tool", bash),
            ("go.mod", "module example.com/tool\n\ngo 1.22\n"),
        ],
    );
    assert_eq!(paths(&scan(&root)), vec![(".".into(), "go")]);
    // A dotfiles repository: installers are not a tool; neither is a
    // Python script.
    let (_t, root) = tree(
        "dotfiles",
        &[
            ("install.sh", "#!/bin/sh\nln -s \"$PWD/vimrc\" ~/.vimrc\n"),
            ("bootstrap", "#!/bin/bash\n./install.sh\n"),
            ("bin/report", "#!/usr/bin/env python3\nprint(1)\n"),
            ("vimrc", "set number\n"),
        ],
    );
    assert!(scan(&root).projects.is_empty());
}

#[test]
fn no_builder_means_a_dev_shell_and_a_note_never_a_package() {
    let (_t, root) = tree(
        "shells",
        &[
            (
                "build.sbt",
                "scalaVersion := \"2.13.14\"\nname := \"svc\"\n",
            ),
            (
                "web/deno.json",
                r#"{"tasks":{"start":"deno run -A main.ts"}}"#,
            ),
            (
                "env/environment.yml",
                "name: lab\ndependencies:\n  - python=3.12\n",
            ),
        ],
    );
    let plan = autonix::plan(&scan(&root));
    assert!(plan.packages.is_empty(), "{:?}", plan.packages);
    let shells: Vec<(&str, &str)> = plan
        .shells
        .iter()
        .map(|p| (p.attr.as_str(), p.toolchain.nix_attr.as_str()))
        .collect();
    assert_eq!(
        shells,
        vec![("svc", "scala_2_13"), ("lab", "python312"), ("web", "deno")]
    );
    for attr in ["svc", "web", "lab"] {
        assert!(
            plan.notes.iter().any(
                |n| n.starts_with(&format!("{attr}: nixpkgs ")) && n.contains("nix develop .#")
            ),
            "no note for {attr}: {:?}",
            plan.notes
        );
    }
    let flake = autonix::generate(&plan);
    assert!(flake.contains("svc = pkgs.mkShell { packages = [ pkgs.scala_2_13 pkgs.sbt ]; };"));
    assert!(!flake.contains("inherit svc"));
}

#[test]
fn stack_packages_described_by_hpack_alone_are_members() {
    let (_t, root) = tree(
        "hpack",
        &[
            (
                "stack.yaml",
                "snapshot: lts-21.25\npackages:\n  - server\n  - missing\n",
            ),
            (
                "server/package.yaml",
                "name: shortener\nversion: 0.1.0\nexecutables:\n  shortener-exe:\n    main: Main.hs\n",
            ),
        ],
    );
    let s = scan(&root);
    let p = &s.projects[0];
    assert_eq!(p.members, vec!["server"]);
    assert_eq!(p.binaries, vec!["shortener-exe"]);
    assert_eq!(p.dependencies, vec!["shortener=server"]);
    assert_eq!(p.entry.as_deref(), Some("server/package.yaml"));
    assert_eq!(p.toolchain_version.as_deref(), Some("9.4"));
    assert_warned(
        &s,
        "stack.yaml",
        "package missing has no .cabal file or package.yaml",
    );
    let plan = autonix::plan(&s);
    assert_eq!(
        plan.packages[0].options.stack.package_set.as_deref(),
        Some("haskell.packages.ghc94")
    );
}

/// Every manifest of the new stacks' fixtures, cut short at many points and
/// with its brackets and quotes swapped: scanning, planning and generating
/// never panic, whatever half a manifest says.
#[test]
fn truncated_and_garbled_manifests_never_panic() {
    const FIXTURES: &[&str] = &[
        "dotnet-solution",
        "php-laravel",
        "cmake-cpp",
        "meson-c",
        "autotools-c",
        "zig-app",
        "phoenix-app",
        "haskell-stack",
        "sbt-multi",
        "flutter-app",
        "swiftpm-package",
        "deno-app",
        "bash-tool",
        "conda-env",
    ];
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for f in FIXTURES {
        let mut stack = vec![fixtures.join(f)];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p
                        .strip_prefix(&fixtures)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    files.push((rel, fs::read(&p).unwrap()));
                }
            }
        }
    }
    const CUTS: usize = 8;
    for k in 0..CUTS * 2 {
        let tmp = tempfile::tempdir().unwrap();
        for (rel, bytes) in &files {
            let cut = bytes.len() * (k % CUTS) / CUTS;
            let mut text = bytes[..cut].to_vec();
            if k >= CUTS {
                // Swap the characters parsers key on.
                for b in &mut text {
                    *b = match *b {
                        b'(' => b')',
                        b'{' => b'}',
                        b'[' => b'"',
                        b'"' => b'[',
                        b'=' => b':',
                        b':' => b'=',
                        other => other,
                    };
                }
            }
            let p = tmp.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        for f in FIXTURES {
            let scan = autonix::scan(tmp.path().join(f)).expect("scan");
            let plan = autonix::plan(&scan);
            let flake = autonix::generate(&plan);
            assert!(flake.starts_with("# Generated by autonix"), "{f} cut {k}");
        }
    }
}
