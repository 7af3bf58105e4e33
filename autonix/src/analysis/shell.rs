//! Shell tools: a repository with no manifest whose runnable entries are
//! scripts with a `sh`-family shebang in `bin/` or at the root. Installer
//! and helper scripts (`install.sh`, `setup.sh`, `build.sh`, …) are not
//! entries: a dotfiles repository is not a tool. Only consulted when no
//! other detector found a project.

use super::{Candidate, Ctx, Language, root_name};
use crate::scan::join;

/// Scripts that set a repository up rather than being what it ships.
const HELPERS: &[&str] = &[
    "install",
    "uninstall",
    "setup",
    "bootstrap",
    "build",
    "test",
    "tests",
    "configure",
    "autogen",
    "release",
    "deploy",
    "lint",
    "format",
    "ci",
    "update",
];

/// Commands scripts commonly need that are not in coreutils, by the
/// nixpkgs attribute that provides them.
const TOOLS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("jq", "jq"),
    ("git", "git"),
    ("rsync", "rsync"),
    ("wget", "wget"),
    ("fzf", "fzf"),
    ("ssh", "openssh"),
    ("awk", "gawk"),
];

/// The interpreter a shebang names, if it is a POSIX-family shell.
fn shell_of(text: &str) -> Option<&str> {
    let line = text.lines().next()?.strip_prefix("#!")?.trim();
    let mut words = line.split_whitespace();
    let prog = words.next()?;
    let prog = if prog.ends_with("/env") {
        words.find(|w| !w.starts_with('-'))?
    } else {
        prog.rsplit('/').next()?
    };
    matches!(prog, "bash" | "sh" | "dash" | "zsh" | "ksh").then_some(prog)
}

pub(crate) fn detect(ctx: &mut Ctx<'_>) -> Option<Candidate> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for dir in ["bin", ""] {
        let Some(names) = ctx.tree.dirs.get(dir) else {
            continue;
        };
        for name in names {
            let stem = name
                .strip_suffix(".sh")
                .or(name.strip_suffix(".bash"))
                .unwrap_or(name);
            if HELPERS.contains(&stem) {
                continue;
            }
            let path = join(dir, name);
            if ctx
                .tree
                .files
                .get(&path)
                .and_then(|t| t.as_deref())
                .and_then(shell_of)
                .is_some()
            {
                entries.push((path, name.clone()));
            }
        }
        // Scripts in bin/ are the entries; root scripts only count when
        // there is no bin/.
        if !entries.is_empty() {
            break;
        }
    }
    let (main_path, _) = entries.first()?.clone();
    // The script file names: the plan installs each as a command.
    let root = root_name(ctx.tree);
    // The script named after the repository is the main one.
    let main = entries
        .iter()
        .find(|(_, n)| command_name(n) == root)
        .map(|(p, _)| p.clone())
        .unwrap_or(main_path);
    let mut project = ctx.project("", Language::Shell, "none", &main);
    project.entry = Some(main.clone());
    project.binaries = entries.iter().map(|(_, s)| s.clone()).collect();
    project.run = Some(format!("./{main}"));
    let mut needs: Vec<String> = Vec::new();
    for (p, _) in &entries {
        let text = ctx
            .tree
            .files
            .get(p)
            .and_then(|t| t.as_deref())
            .unwrap_or("");
        for (cmd, attr) in TOOLS {
            if uses(text, cmd) && !needs.iter().any(|n| n == attr) {
                needs.push(attr.to_string());
            }
        }
    }
    project.dependencies = needs;
    Some(Candidate::new(project, Vec::new(), Vec::new()))
}

/// The command a script installs as: its name without `.sh` / `.bash`.
pub(crate) fn command_name(file: &str) -> &str {
    file.strip_suffix(".sh")
        .or(file.strip_suffix(".bash"))
        .unwrap_or(file)
}

/// `cmd` used as a command: at the start of a line or after a pipe,
/// `$(`, `&&`, `;` — not inside a word.
fn uses(text: &str, cmd: &str) -> bool {
    text.lines().skip(1).any(|line| {
        let code = line.split(" #").next().unwrap_or(line);
        if code.trim_start().starts_with('#') {
            return false;
        }
        code.match_indices(cmd).any(|(i, _)| {
            let before = code[..i].trim_end();
            let after = code[i + cmd.len()..].chars().next();
            let starts = before.is_empty()
                || before.ends_with(['|', '(', ';', '&', '`', '{'])
                || before.ends_with(" then")
                || before.ends_with(" do")
                || before.ends_with("command -v");
            starts && after.is_none_or(|c| c == ' ' || c == '\t' || c == ')')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebangs_and_commands() {
        assert_eq!(shell_of("#!/usr/bin/env bash\n"), Some("bash"));
        assert_eq!(shell_of("#!/bin/sh -e\n"), Some("sh"));
        assert_eq!(shell_of("#!/usr/bin/env python3\n"), None);
        assert_eq!(shell_of("echo hi\n"), None);
        let s = "#!/bin/bash\nout=$(curl -fsSL \"$url\" | jq -r .tag)\n# git is optional\nmygit status\n";
        assert!(uses(s, "curl"));
        assert!(uses(s, "jq"));
        assert!(!uses(s, "git"));
    }
}
