//! Property tests on generated trees: whatever manifests, junk, links in
//! and out of the tree a repository holds, the scan never panics, never
//! reports anything from outside the root, never follows a directory link
//! (so nothing is reported twice), is deterministic, and its report
//! survives a JSON round trip. Trees are real directories in a temp dir.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use proptest::prelude::*;

/// Names the scan reads, plus one it ignores.
const NAMES: &[&str] = &[
    "Cargo.toml",
    "package.json",
    "pyproject.toml",
    "go.mod",
    "go.work",
    "Gemfile",
    "pom.xml",
    "build.gradle",
    "Dockerfile",
    ".nvmrc",
    "rust-toolchain.toml",
    "pnpm-workspace.yaml",
    "requirements.txt",
    "notes.txt",
];
const DIRS: &[&str] = &["a", "b", "vendor", "examples", "node_modules", "apps"];

/// File contents: plausible manifests, broken ones and binary noise.
fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"[package]\nname = \"x\"\nversion = \"1.0.0\"\n".to_vec()),
        Just(b"[workspace]\nmembers = [\"*\", \"../..\", \"/etc\"]\n".to_vec()),
        Just(b"{\"name\":\"y\",\"workspaces\":[\"**\",\"../*\"],\"scripts\":{\"start\":\"node .\"}}".to_vec()),
        Just(b"module example.com/z\n\ngo 1.22\n".to_vec()),
        Just(b"go 1.23\nuse (\n .\n ./a\n ../outside\n)\n".to_vec()),
        Just(b"FROM python:3.12-slim\nCMD [\"python\", \"app.py\"]\n".to_vec()),
        Just(b"[project]\nname = \"p\"\nrequires-python = \">=3.11\"\n[project.scripts]\np = \"p:main\"\n".to_vec()),
        Just(b">=18 || <4\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..200),
        "[ -~\n]{0,200}".prop_map(String::into_bytes),
    ]
}

#[derive(Debug, Clone)]
enum Entry {
    File(Vec<usize>, usize, Vec<u8>),
    /// A link at dirs/name to: 0 the outside dir, 1 the outside manifest,
    /// 2 the root, 3 `..`, 4 a manifest inside the tree.
    Link(Vec<usize>, usize, u8),
}

fn entry() -> impl Strategy<Value = Entry> {
    let dirs = proptest::collection::vec(0..DIRS.len(), 0..4);
    prop_oneof![
        4 => (dirs.clone(), 0..NAMES.len(), content()).prop_map(|(d, n, c)| Entry::File(d, n, c)),
        1 => (dirs, 0..NAMES.len() + DIRS.len(), 0u8..5).prop_map(|(d, n, k)| Entry::Link(d, n, k)),
    ]
}

fn build(root: &Path, outside: &Path, entries: &[Entry]) {
    for e in entries {
        let (dirs, name_idx) = match e {
            Entry::File(d, n, _) | Entry::Link(d, n, _) => (d, *n),
        };
        let mut dir = root.to_path_buf();
        for d in dirs {
            dir = dir.join(DIRS[*d]);
        }
        // A path component may already be a file or a link: skip the entry.
        if fs::create_dir_all(&dir).is_err() {
            continue;
        }
        let name = NAMES
            .get(name_idx)
            .copied()
            .unwrap_or_else(|| DIRS[name_idx - NAMES.len()]);
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match e {
            Entry::File(_, _, c) => {
                let _ = fs::write(&path, c);
            }
            Entry::Link(_, _, k) => {
                let target = match k {
                    0 => outside.to_path_buf(),
                    1 => outside.join("package.json"),
                    2 => root.to_path_buf(),
                    3 => "..".into(),
                    _ => root.join("a/Cargo.toml"),
                };
                let _ = symlink(target, &path);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn scanning_any_tree_stays_inside_it_and_is_deterministic(
        entries in proptest::collection::vec(entry(), 0..40)
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("package.json"), r#"{"name":"outside-secret","scripts":{"start":"x"}}"#).unwrap();
        fs::write(outside.join("Cargo.toml"), "[package]\nname = \"outside-secret\"\n").unwrap();
        let root = tmp.path().join("repo");
        fs::create_dir_all(&root).unwrap();
        build(&root, &outside, &entries);

        let scan = autonix::scan(&root).expect("the root is a readable directory");
        for p in &scan.projects {
            prop_assert!(p.name != "outside-secret", "read a manifest outside the root: {p:?}");
            prop_assert!(!p.path.starts_with('/') && !p.path.split('/').any(|c| c == ".."), "{p:?}");
            for m in &p.members {
                prop_assert!(!m.starts_with('/') && !m.split('/').any(|c| c == ".."), "member {m} of {}", p.path);
            }
        }
        // Directory links are never followed, so no project is reported
        // twice under two paths, and the same tree scans the same way.
        let mut keys: Vec<(String, String, String)> = scan
            .projects
            .iter()
            .map(|p| (p.path.clone(), p.language.as_str().to_string(), p.package_manager.clone()))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        prop_assert_eq!(keys.len(), n);
        let again = autonix::scan(&root).unwrap();
        prop_assert_eq!(&again, &scan);
        let back: autonix::Scan = serde_json::from_str(&serde_json::to_string(&scan).unwrap()).unwrap();
        prop_assert_eq!(&back, &scan);
        // Planning, rendering and `pcr init`'s files never panic either.
        let plan = autonix::plan(&scan);
        let _ = autonix::generate(&plan);
        let init = autonix::init::init(&scan, &plan, autonix::init::DEFAULT_PROCURATOR_URL);
        for g in &init.groups {
            prop_assert!(!g.name.is_empty() && g.name.len() <= 56, "{g:?}");
            prop_assert!(g.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{g:?}");
        }
    }
}
