//! Repository shapes that fixtures cannot show at size: a monorepo of more
//! than fifty projects (teams' services in six languages, a pnpm workspace
//! of apps and libraries, Go tools, plus vendored code, examples and test
//! fixtures that must not count), built in a temp dir; and the
//! `scan --explain` output on a fixture.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use common::*;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// Writes one service of `lang` (0..6) at `dir` and returns its language.
fn service(root: &Path, dir: &str, name: &str, lang: usize) -> &'static str {
    let w = |f: &str, t: &str| write(root, &format!("{dir}/{f}"), t);
    match lang {
        0 => {
            w(
                "Cargo.toml",
                &format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\nrust-version = \"1.80\"\n"
                ),
            );
            w("Cargo.lock", "version = 3\n");
            w("src/main.rs", "fn main() {}\n");
            "rust"
        }
        1 => {
            w("go.mod", &format!("module example.com/{name}\n\ngo 1.22\n"));
            w("main.go", "package main\n\nfunc main() {}\n");
            "go"
        }
        2 => {
            w(
                "pyproject.toml",
                &format!(
                    "[project]\nname = \"{name}\"\nversion = \"1.0\"\nrequires-python = \">=3.12\"\ndependencies = [\"flask\"]\n"
                ),
            );
            w("uv.lock", "version = 1\n");
            w("app.py", "print('hi')\n");
            "python"
        }
        3 => {
            w(
                "Gemfile",
                "source \"https://rubygems.org\"\nruby \"3.3.0\"\ngem \"sinatra\"\n",
            );
            w(
                "Gemfile.lock",
                "GEM\n  specs:\n\nRUBY VERSION\n   ruby 3.3.0p0\n",
            );
            w("config.ru", "run Sinatra::Application\n");
            "ruby"
        }
        4 => {
            w(
                "pom.xml",
                &format!(
                    "<project><artifactId>{name}</artifactId><version>1.0.0</version><properties><maven.compiler.release>21</maven.compiler.release></properties></project>\n"
                ),
            );
            "java"
        }
        _ => {
            w(
                "package.json",
                &format!(
                    "{{\"name\":\"{name}\",\"version\":\"1.0.0\",\"scripts\":{{\"start\":\"node server.js\"}},\"engines\":{{\"node\":\">=20\"}}}}"
                ),
            );
            w("package-lock.json", "{\"lockfileVersion\": 3}\n");
            "node"
        }
    }
}

#[test]
fn a_monorepo_of_fifty_seven_projects_is_found_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mono");
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    // 8 teams × 5 services, every language.
    for team in 0..8 {
        for s in 0..5 {
            let dir = format!("services/team{team}/svc{s}");
            let lang = service(&root, &dir, &format!("t{team}-svc{s}"), (team + s) % 6);
            expected.insert((dir, lang.into()));
        }
    }
    // A pnpm workspace at the root: 10 apps with start scripts (projects)
    // and 8 libraries (folded into the workspace).
    write(
        &root,
        "package.json",
        r#"{"name":"mono","private":true,"packageManager":"pnpm@9.12.0"}"#,
    );
    write(
        &root,
        "pnpm-workspace.yaml",
        "packages:\n  - apps/*\n  - libs/*\n",
    );
    write(&root, "pnpm-lock.yaml", "lockfileVersion: '9.0'\n");
    expected.insert((".".into(), "node".into()));
    for a in 0..10 {
        write(
            &root,
            &format!("apps/app{a}/package.json"),
            &format!(
                r#"{{"name":"@mono/app{a}","scripts":{{"build":"vite build","start":"vite preview"}}}}"#
            ),
        );
        expected.insert((format!("apps/app{a}"), "node".into()));
    }
    for l in 0..8 {
        write(
            &root,
            &format!("libs/lib{l}/package.json"),
            &format!(r#"{{"name":"@mono/lib{l}","main":"index.js"}}"#),
        );
    }
    // Go tools, each a module.
    for t in 0..6 {
        write(
            &root,
            &format!("tools/tool{t}/go.mod"),
            &format!("module example.com/tool{t}\n\ngo 1.23\n"),
        );
        write(&root, &format!("tools/tool{t}/main.go"), "package main\n");
        expected.insert((format!("tools/tool{t}"), "go".into()));
    }
    // Not projects: vendored code, examples, fixtures, dependencies.
    write(
        &root,
        "services/team0/svc0/vendor/dep/Cargo.toml",
        "[package]\nname = \"dep\"\n",
    );
    write(
        &root,
        "examples/demo/package.json",
        r#"{"name":"demo","scripts":{"start":"x"}}"#,
    );
    write(&root, "tests/fixtures/broken/go.mod", "module broken\n");
    write(
        &root,
        "node_modules/left-pad/package.json",
        r#"{"name":"left-pad"}"#,
    );
    write(
        &root,
        "services/team1/svc0/third_party/lib/pyproject.toml",
        "[project]\nname = \"tp\"\n",
    );

    let scan = autonix::scan(&root).unwrap();
    let found: BTreeSet<(String, String)> = scan
        .projects
        .iter()
        .map(|p| (p.path.clone(), p.language.as_str().to_string()))
        .collect();
    let missing: Vec<_> = expected.difference(&found).collect();
    let spurious: Vec<_> = found.difference(&expected).collect();
    assert!(
        missing.is_empty() && spurious.is_empty(),
        "missing {missing:?}, spurious {spurious:?}"
    );
    assert_eq!(scan.projects.len(), 57);
    let names: BTreeSet<&str> = scan.projects.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 57, "project names must be unique");
    for p in &scan.projects {
        assert!(
            p.toolchain_version.is_some() || p.language == autonix::Language::Node,
            "{p:?}"
        );
        if p.path.starts_with("apps/") {
            assert_eq!(p.package_manager, "pnpm", "{p:?}");
            assert_eq!(p.workspace.as_deref(), Some("."), "{p:?}");
            assert_eq!(p.lockfile.as_deref(), Some("pnpm-lock.yaml"), "{p:?}");
        }
    }
    let root_pkg = scan.projects.iter().find(|p| p.path == ".").unwrap();
    assert_eq!(root_pkg.members.len(), 18, "{:?}", root_pkg.members);
    let ignored: Vec<&str> = scan.ignored.iter().map(|i| i.path.as_str()).collect();
    for i in [
        "services/team0/svc0/vendor/dep/Cargo.toml",
        "examples/demo/package.json",
        "tests/fixtures/broken/go.mod",
        "node_modules",
        "services/team1/svc0/third_party/lib/pyproject.toml",
    ] {
        assert!(ignored.contains(&i), "{i} not ignored: {ignored:?}");
    }
    // Every runnable project becomes a package and a VM group.
    let plan = autonix::plan(&scan);
    assert_eq!(plan.packages.len(), 57);
    let init = autonix::init::init(&scan, &plan, autonix::init::DEFAULT_PROCURATOR_URL);
    // The workspace root has no run command of its own.
    assert_eq!(init.groups.len(), 56);
}

#[test]
fn explain_names_the_file_behind_each_field() {
    let (_tmp, dir) = fixture_copy("version-sources");
    let out = autonix(&["scan", "--explain", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "acmectl (rust, cargo) at cli",
        "because: cli/Cargo.toml (package.rust-version) says 1.74: the first exact version by precedence, one that satisfies the ranges before it; also stated: stable (cli/rust-toolchain.toml)",
        "toolchain          24 (>=24)",
        "because: web/package.json (engines.node) says >=24: no exact version satisfies it: the lowest version the range allows; also stated: 22 (web/Dockerfile (FROM node:22-alpine))",
        "because: worker/Dockerfile (FROM python:3.11-slim) says 3.11",
        "because: package.json main (no start script)",
        "because: lockfile store/Gemfile.lock",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let (_tmp, dir) = fixture_copy("dual-build");
    let out = autonix(&["scan", "--explain", dir.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("preferred          true\n                     because: preferred over maven: CI (.github/workflows/build.yml) builds with it"),
        "{text}"
    );
    let (_tmp, dir) = fixture_copy("docker-services");
    let out = autonix(&["scan", "--explain", dir.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("proxy/Dockerfile: no manifest, and its base image (nginx:1.27-alpine) names no language autonix builds"),
        "{text}"
    );
}
