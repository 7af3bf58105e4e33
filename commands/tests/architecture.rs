//! The architecture test (after rust-analyzer's `tidy`): reads the
//! workspace's sources and manifests as text and fails, listing every
//! offender as `file:line`, when a layering rule of context/architecture.md
//! is broken:
//! - only `commands` (and the fuzz crate, which fuzzes its conversions)
//!   names a generated Cap'n Proto module (`*_capnp::`);
//! - `worker` does not depend on `control_plane`;
//! - every `.rs` file starts with a `//!` line saying what it is for;
//! - `testkit` is a dev-dependency only.
//!
//! It reads text rather than `cargo metadata` so it needs no network, no
//! lockfile resolution and no build of the crates it checks.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root: this crate lives one level below it.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("commands has a parent directory")
        .to_path_buf()
}

/// `path` relative to the workspace root, for messages.
fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The member directories listed in the root manifest's `members = [...]`.
fn members() -> Vec<String> {
    let manifest = read(&root().join("Cargo.toml"));
    // The code of the manifest from the `members = [` line on, comments
    // dropped, so neither a comment nor a later array can be misread.
    let code: Vec<&str> = manifest
        .lines()
        .map(strip_toml_comment)
        .skip_while(|l| !l.trim_start().starts_with("members"))
        .collect();
    let text = code.join("\n");
    let open = text.find('[').expect("members is an array");
    let close = text.find(']').expect("the members array is closed");
    let members: Vec<String> = text[open + 1..close]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(
        members.iter().any(|m| m == "commands"),
        "could not read the members of the root Cargo.toml: {members:?}"
    );
    members
}

/// Every `.rs` file below `dir`, skipping build output, hidden directories
/// and test fixtures (sample repositories that are data, not our code).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "fixtures") {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The part of a Rust line that is code: a line comment (`//`, `///`,
/// `//!`) is prose, and prose may name anything.
fn rust_code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    match line.find(" // ") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// A TOML line without its `#` comment (a `#` inside a string stays).
fn strip_toml_comment(line: &str) -> &str {
    let mut in_string = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The generated module names, one per schema file (`master.capnp` →
/// `master_capnp`).
fn capnp_modules() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root().join("commands/schema"))
        .expect("commands/schema exists")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".capnp").map(|s| format!("{s}_capnp"))
        })
        .collect();
    names.sort();
    names
}

/// Whether `line` names `module` as a whole identifier.
fn names_identifier(line: &str, module: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    line.match_indices(module).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + module.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

fn report(rule: &str, offenders: &[String]) {
    assert!(
        offenders.is_empty(),
        "{rule}: {} offender(s)\n{}",
        offenders.len(),
        offenders.join("\n")
    );
}

#[test]
fn only_commands_names_the_capnp_modules() {
    let modules = capnp_modules();
    let mut offenders = Vec::new();
    // Workspace members only: the fuzz crate (outside the workspace) fuzzes
    // commands' conversions and so may build capnp messages.
    for member in members() {
        // The protocol crate owns the wire.
        if member == "commands" {
            continue;
        }
        for file in rust_files(&root().join(&member)) {
            for (n, line) in read(&file).lines().enumerate() {
                let code = rust_code(line);
                if code.contains("_capnp::") || modules.iter().any(|m| names_identifier(code, m)) {
                    offenders.push(format!("{}:{}: {}", rel(&file), n + 1, line.trim()));
                }
            }
        }
    }
    report(
        "only `commands` may name a generated Cap'n Proto module (use its typed clients, service adapters and model instead)",
        &offenders,
    );
}

#[test]
fn worker_does_not_depend_on_control_plane() {
    let manifest = root().join("worker/Cargo.toml");
    let offenders: Vec<String> = read(&manifest)
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let text = strip_toml_comment(line);
            text.contains("control_plane") || text.contains("control-plane")
        })
        .map(|(n, line)| format!("{}:{}: {}", rel(&manifest), n + 1, line.trim()))
        .collect();
    report(
        "worker must not depend on control_plane (its shared types and MasterClient live in commands)",
        &offenders,
    );
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let mut dirs: Vec<PathBuf> = members().iter().map(|m| root().join(m)).collect();
    // The fuzz crate is outside the workspace but holds our code too.
    dirs.push(root().join("fuzz"));
    let mut offenders = Vec::new();
    for dir in dirs {
        for file in rust_files(&dir) {
            let text = read(&file);
            let first = text.lines().find(|l| !l.trim().is_empty());
            if !first.is_some_and(|l| l.trim_start().starts_with("//!")) {
                let n = text.lines().position(|l| !l.trim().is_empty()).unwrap_or(0) + 1;
                offenders.push(format!("{}:{n}: no `//!` line first", rel(&file)));
            }
        }
    }
    report(
        "every .rs file starts with a `//!` line saying what it is for",
        &offenders,
    );
}

/// The kind of dependency table a manifest header opens, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DepTable {
    Normal,
    Dev,
    Build,
}

/// For a header like `dependencies`, `target.'cfg(unix)'.dev-dependencies`
/// or `dependencies.testkit`: the kind of table and, for the last form, the
/// dependency the whole table is about.
fn dep_table(header: &str) -> Option<(DepTable, Option<String>)> {
    let segments: Vec<&str> = header.split('.').map(str::trim).collect();
    for (i, s) in segments.iter().enumerate() {
        let kind = match *s {
            "dependencies" => DepTable::Normal,
            "dev-dependencies" => DepTable::Dev,
            "build-dependencies" => DepTable::Build,
            _ => continue,
        };
        let name = segments.get(i + 1).map(|n| n.trim_matches('"').to_owned());
        return Some((kind, name));
    }
    None
}

/// The dependency a `key = value` line inside a dependency table pulls in:
/// its `package = "…"` when renamed, else its key.
fn dependency_of(line: &str) -> Option<String> {
    let (key, value) = line.split_once('=')?;
    // `testkit.workspace = true` is a dotted key for `testkit = { … }`.
    let key = key.trim().split('.').next().unwrap_or("").trim_matches('"');
    if let Some(i) = value.find("package") {
        let rest = value[i + "package".len()..].trim_start();
        if let Some(rest) = rest.strip_prefix('=') {
            let name: String = rest
                .trim_start()
                .trim_start_matches('"')
                .chars()
                .take_while(|c| *c != '"')
                .collect();
            return Some(name);
        }
    }
    Some(key.to_owned())
}

#[test]
fn testkit_is_only_a_dev_dependency() {
    let mut offenders = Vec::new();
    for member in members() {
        if member == "testkit" {
            continue;
        }
        let manifest = root().join(&member).join("Cargo.toml");
        let mut table: Option<(DepTable, Option<String>)> = None;
        for (n, raw) in read(&manifest).lines().enumerate() {
            let line = strip_toml_comment(raw).trim();
            if line.starts_with('[') {
                table = dep_table(line.trim_matches(|c| c == '[' || c == ']'));
                continue;
            }
            let Some((kind, whole)) = &table else {
                continue;
            };
            if *kind == DepTable::Dev || line.is_empty() {
                continue;
            }
            // In `[dependencies.testkit]` every line is about testkit;
            // report the first.
            let dep = match whole {
                Some(name) => Some(name.clone()),
                None => dependency_of(line),
            };
            if dep.as_deref() == Some("testkit") {
                offenders.push(format!("{}:{}: {}", rel(&manifest), n + 1, raw.trim()));
                if whole.is_some() {
                    table = None;
                }
            }
        }
    }
    report(
        "testkit is a dev-dependency only (put it under [dev-dependencies])",
        &offenders,
    );
}

#[test]
fn the_rules_read_what_they_mean() {
    // The helpers on small samples, so a rule that silently matches
    // nothing is caught here rather than passing forever.
    assert!(names_identifier(
        "use commands::{master_capnp, x};",
        "master_capnp"
    ));
    assert!(!names_identifier(
        "convert::vm_spec_to_capnp(s)",
        "to_capnp"
    ));
    assert!(!names_identifier("fn worker_capnp_x()", "worker_capnp"));
    assert_eq!(rust_code("//! names worker_capnp::x"), "");
    assert_eq!(rust_code("let a = 1; // worker_capnp::x"), "let a = 1;");
    assert_eq!(dep_table("dependencies"), Some((DepTable::Normal, None)));
    assert_eq!(
        dep_table("target.'cfg(unix)'.dev-dependencies"),
        Some((DepTable::Dev, None))
    );
    assert_eq!(
        dep_table("dependencies.testkit"),
        Some((DepTable::Normal, Some("testkit".into())))
    );
    assert_eq!(dep_table("package"), None);
    assert_eq!(
        dependency_of("testkit.workspace = true").as_deref(),
        Some("testkit")
    );
    assert_eq!(
        dependency_of("kit = { package = \"testkit\", path = \"../testkit\" }").as_deref(),
        Some("testkit")
    );
    assert_eq!(strip_toml_comment("a = \"#x\" # c"), "a = \"#x\" ");
    assert!(capnp_modules().contains(&"master_capnp".to_owned()));
}
