//! C and C++: CMake (`project()`, `cmake_minimum_required`, the language
//! standard, `add_subdirectory` trees, `add_executable`, `find_package`),
//! Meson (`project()`, `meson_version`, `subdir`, `executable`,
//! `dependency`), autotools (`configure.ac`, `AC_INIT`, `AC_PREREQ`,
//! `bin_PROGRAMS`) and plain Makefiles that compile C. One build system per
//! directory, in that order: a Makefile next to a CMakeLists.txt is a
//! wrapper, not a second build.

use super::extras::make_targets;
use super::stacks::{constraint, strings_after};
use super::{Candidate, Ctx, Language, Project};
use crate::scan::join;

pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    if ctx.has(dir, "CMakeLists.txt") {
        return cmake(ctx, dir);
    }
    if ctx.has(dir, "meson.build") {
        return meson(ctx, dir);
    }
    if let Some(ac) = ["configure.ac", "configure.in"]
        .into_iter()
        .find(|f| ctx.has(dir, f))
    {
        return autotools(ctx, dir, ac);
    }
    ["Makefile", "makefile", "GNUmakefile"]
        .into_iter()
        .find(|f| ctx.has(dir, f))
        .and_then(|f| make(ctx, dir, f))
}

/// Arguments of every `name(…)` call, whitespace-split, across lines.
fn calls(text: &str, name: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let lower = text.to_ascii_lowercase();
    let needle = format!("{}(", name.to_ascii_lowercase());
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle) {
        let start = from + i;
        from = start + needle.len();
        // `add_executable(` must not match `my_add_executable(`.
        if start > 0
            && lower[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let Some(end) = text[from..].find(')') else {
            break;
        };
        let args = text[from..from + end]
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ");
        out.push(
            args.split_whitespace()
                .map(|a| a.trim_matches('"').to_string())
                .collect(),
        );
    }
    out
}

fn language(is_cpp: bool) -> Language {
    if is_cpp { Language::Cpp } else { Language::C }
}

fn cmake(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let text = ctx.text(dir, "CMakeLists.txt")?.to_string();
    // A CMakeLists.txt without project() is a part of an enclosing build.
    let proj = calls(&text, "project").into_iter().next()?;
    // `project(name LANGUAGES C CXX)` or `project(name C CXX)`.
    let keywords = ["VERSION", "DESCRIPTION", "HOMEPAGE_URL", "LANGUAGES"];
    let langs: Vec<String> = match proj.iter().position(|a| a == "LANGUAGES") {
        Some(i) => proj[i + 1..]
            .iter()
            .take_while(|a| !keywords.contains(&a.as_str()))
            .cloned()
            .collect(),
        None => proj
            .iter()
            .skip(1)
            .take_while(|a| !keywords.contains(&a.as_str()))
            .cloned()
            .collect(),
    };
    // Without LANGUAGES, CMake enables C and C++.
    let cpp = langs.is_empty() || langs.iter().any(|l| l == "CXX");
    let mut project = ctx.project(dir, language(cpp), "cmake", "CMakeLists.txt");
    if let Some(n) = proj.first().filter(|n| !n.contains("${")) {
        project.name = n.clone();
    }
    project.version = proj.iter().skip_while(|a| *a != "VERSION").nth(1).cloned();
    project.package_manager_version = calls(&text, "cmake_minimum_required")
        .into_iter()
        .next()
        .and_then(|a| a.iter().skip_while(|x| *x != "VERSION").nth(1).cloned())
        .map(|v| v.split("...").next().unwrap_or(&v).to_string());
    let mut versions = Vec::new();
    let std_var = if cpp {
        "CMAKE_CXX_STANDARD"
    } else {
        "CMAKE_C_STANDARD"
    };
    if let Some(std) = calls(&text, "set")
        .into_iter()
        .find(|a| a.first().is_some_and(|v| v == std_var))
        .and_then(|a| a.get(1).cloned())
    {
        let prefix = if cpp { "c++" } else { "c" };
        versions.push(constraint(
            &format!("{prefix}{std}"),
            dir,
            "CMakeLists.txt",
            std_var,
        ));
    }
    // Follow add_subdirectory(): executables anywhere in the build, and
    // the subprojects it pulls in are part of this one.
    let mut bins: Vec<(String, String)> = Vec::new();
    let mut libs: Vec<String> = Vec::new();
    let mut install = false;
    let claims = walk_build(ctx, dir, "CMakeLists.txt", text, |rel, t, shipped| {
        if shipped {
            for a in calls(t, "add_executable") {
                if let Some(n) = a
                    .first()
                    .filter(|n| !n.contains("${") && !a.iter().any(|x| x == "IMPORTED"))
                {
                    bins.push((rel.to_string(), n.clone()));
                }
            }
        }
        for a in calls(t, "find_package") {
            if let Some(n) = a.first().filter(|n| !libs.contains(n)) {
                libs.push(n.clone());
            }
        }
        install |= !calls(t, "install").is_empty();
        calls(t, "add_subdirectory")
            .into_iter()
            .filter_map(|a| a.into_iter().next())
            .collect()
    });
    libs.retain(|l| l != "Threads");
    project.dependencies = libs;
    project.build = Some("cmake -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build".into());
    set_binaries(&mut project, bins, "build", install);
    Some(Candidate::new(project, claims, versions))
}

/// Visits a build's directories breadth first, in the order the build adds
/// them (so the first executable found is the main program). `visit` gets
/// each directory relative to the project, the text of its build `file`
/// and whether it ships (test and example programs are built, not
/// shipped), and returns the subdirectories it adds. Returns every
/// directory reached below the project: they are part of it.
fn walk_build(
    ctx: &Ctx<'_>,
    dir: &str,
    file: &str,
    text: String,
    mut visit: impl FnMut(&str, &str, bool) -> Vec<String>,
) -> Vec<String> {
    let mut reached: Vec<String> = Vec::new();
    let mut queue = std::collections::VecDeque::from([(dir.to_string(), text)]);
    while let Some((d, t)) = queue.pop_front() {
        let rel = d.strip_prefix(dir).unwrap_or(&d).trim_start_matches('/');
        let shipped = crate::scan::not_a_project(rel).is_none();
        for sub in visit(rel, &t, shipped) {
            let Some(sub) = super::stacks::normalize_path(&join(&d, &sub)) else {
                continue;
            };
            // Only directories below the project are part of it: `..`
            // and cycles back to the top are not followed.
            let below = if dir.is_empty() {
                !sub.is_empty()
            } else {
                sub.starts_with(&format!("{dir}/"))
            };
            if !below || reached.contains(&sub) {
                continue;
            }
            if let Some(st) = ctx.text(&sub, file) {
                reached.push(sub.clone());
                queue.push_back((sub, st.to_string()));
            }
        }
    }
    reached.sort();
    reached
}

/// Records the executables (`(subdirectory, name)`) and the run command
/// from the build directory `out`. Without install rules the package must
/// copy the program itself: `entry` then holds its path in the build tree.
fn set_binaries(project: &mut Project, bins: Vec<(String, String)>, out: &str, install: bool) {
    let path = |(d, n): &(String, String)| {
        if d.is_empty() {
            n.clone()
        } else {
            format!("{d}/{n}")
        }
    };
    project.run = bins.first().map(|b| format!("./{out}/{}", path(b)));
    if !install {
        project.entry = bins.first().map(path);
    }
    project.binaries = bins.into_iter().map(|(_, n)| n).collect();
}

fn meson(ctx: &mut Ctx<'_>, dir: &str) -> Option<Candidate> {
    let text = ctx.text(dir, "meson.build")?.to_string();
    let proj_args = meson_call(&text, "project")?;
    let positional: Vec<String> = super::java::quoted(&proj_args);
    let cpp = positional.iter().skip(1).any(|l| l == "cpp");
    let mut project = ctx.project(dir, language(cpp), "meson", "meson.build");
    if let Some(n) = positional.first() {
        project.name = n.clone();
    }
    project.version = keyword(&proj_args, "version");
    project.package_manager_version = keyword(&proj_args, "meson_version");
    let mut versions = Vec::new();
    let std_key = if cpp { "cpp_std=" } else { "c_std=" };
    if let Some(std) = positional.iter().find_map(|o| o.strip_prefix(std_key)) {
        versions.push(constraint(
            std,
            dir,
            "meson.build",
            &std_key[..std_key.len() - 1],
        ));
    }
    let mut bins = Vec::new();
    let mut libs = Vec::new();
    let mut install = false;
    let claims = walk_build(ctx, dir, "meson.build", text, |rel, t, shipped| {
        let t = t.replace('\'', "\"");
        if shipped {
            for n in strings_after(&t, "executable(") {
                bins.push((rel.to_string(), n));
            }
        }
        for n in strings_after(&t, "dependency(") {
            if !libs.contains(&n) && n != "threads" {
                libs.push(n);
            }
        }
        install |= t.contains("install: true") || t.contains("install : true");
        strings_after(&t, "subdir(")
    });
    project.dependencies = libs;
    project.build = Some("meson setup build --buildtype=release && meson compile -C build".into());
    set_binaries(&mut project, bins, "build", install);
    Some(Candidate::new(project, claims, versions))
}

/// The argument text of the first `name(…)` call, parentheses balanced.
fn meson_call(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("{name}("))? + name.len() + 1;
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// `key: 'value'` inside a Meson call.
fn keyword(args: &str, key: &str) -> Option<String> {
    let i = args
        .find(&format!("{key}:"))
        .or_else(|| args.find(&format!("{key} :")))?;
    super::java::quoted(&args[i..]).into_iter().next()
}

fn autotools(ctx: &mut Ctx<'_>, dir: &str, file: &str) -> Option<Candidate> {
    let text = ctx.text(dir, file)?.to_string();
    let cpp = text.contains("AC_PROG_CXX");
    let mut project = ctx.project(dir, language(cpp), "autotools", file);
    let bracketed = |call: &str| -> Vec<String> {
        calls(&text, call)
            .into_iter()
            .next()
            .map(|_| {
                let i = text.find(&format!("{call}(")).unwrap_or(0) + call.len() + 1;
                let end = text[i..].find(')').map_or(text.len(), |e| i + e);
                text[i..end]
                    .split(',')
                    .map(|a| {
                        a.trim()
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let init = bracketed("AC_INIT");
    if let Some(n) = init.first().filter(|n| !n.is_empty()) {
        project.name = n.clone();
    }
    project.version = init.get(1).cloned().filter(|v| !v.is_empty());
    project.package_manager_version = bracketed("AC_PREREQ").first().cloned();
    // PKG_CHECK_MODULES([ONIG], [oniguruma >= 6.9]): the pkg-config module.
    let mut from = 0;
    while let Some(i) = text[from..].find("PKG_CHECK_MODULES(") {
        let start = from + i + "PKG_CHECK_MODULES(".len();
        from = start;
        let end = text[start..].find(')').map_or(text.len(), |e| start + e);
        if let Some(module) = text[start..end]
            .split(',')
            .nth(1)
            .and_then(|m| m.trim().trim_start_matches('[').split_whitespace().next())
        {
            let module = module.trim_end_matches(']').to_string();
            if !project.dependencies.contains(&module) {
                project.dependencies.push(module);
            }
        }
    }
    let mut bins = Vec::new();
    let mut queue = vec![dir.to_string()];
    while let Some(d) = queue.pop() {
        let Some(am) = ctx.text(&d, "Makefile.am") else {
            continue;
        };
        let rel = d
            .strip_prefix(dir)
            .unwrap_or(&d)
            .trim_start_matches('/')
            .to_string();
        for line in am.lines() {
            if let Some((k, v)) = line.split_once('=') {
                let k = k.trim().trim_end_matches('+');
                if k.trim() == "bin_PROGRAMS" {
                    bins.extend(v.split_whitespace().map(|b| (rel.clone(), b.to_string())));
                } else if k.trim() == "SUBDIRS" {
                    queue.extend(
                        v.split_whitespace()
                            .filter(|s| *s != ".")
                            .map(|s| join(&d, s)),
                    );
                }
            }
        }
    }
    project.build = Some(if ctx.has(dir, "configure") {
        "./configure && make".into()
    } else {
        "autoreconf -fi && ./configure && make".into()
    });
    // `make install` installs bin_PROGRAMS: no copying needed.
    let mut p = project;
    set_binaries(&mut p, bins, ".", true);
    p.run = p.run.map(|r| r.replace("././", "./"));
    Some(Candidate::new(p, Vec::new(), Vec::new()))
}

/// A Makefile is a C/C++ build only when it compiles: it names a C
/// compiler or C sources. Task-runner Makefiles (Go, Node, Python
/// projects) are tasks, not projects.
fn make(ctx: &mut Ctx<'_>, dir: &str, file: &str) -> Option<Candidate> {
    let text = ctx.text(dir, file)?.to_string();
    let cpp = ["$(CXX)", "${CXX}", "g++", "clang++", ".cpp", ".cc", ".cxx"]
        .iter()
        .any(|m| mentions(&text, m));
    let c = ["$(CC)", "${CC}", "gcc", "clang", "cc", ".c"]
        .iter()
        .any(|m| mentions(&text, m));
    if !cpp && !c {
        return None;
    }
    let mut project = ctx.project(dir, language(cpp), "make", file);
    // The program a Makefile builds: TARGET/BIN/PROG = name.
    let bin = text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        let k = k.trim().trim_end_matches([':', '?', '+']).trim();
        matches!(k, "TARGET" | "BIN" | "PROG" | "PROGRAM" | "EXE" | "NAME")
            .then(|| v.trim().to_string())
            .filter(|v| !v.is_empty() && !v.contains('$') && !v.contains(' '))
    });
    let targets = make_targets(&text);
    project.build = Some("make".into());
    let install = targets.iter().any(|t| t == "install");
    set_binaries(
        &mut project,
        bin.into_iter().map(|b| (String::new(), b)).collect(),
        ".",
        install,
    );
    project.run = project.run.map(|r| r.replace("././", "./"));
    Some(Candidate::new(project, Vec::new(), Vec::new()))
}

/// `word` in `text` as a whole token: `.c` in `%.c` or `main.c` but not
/// in `%.css`, `gcc` but not `gccgo`.
fn mentions(text: &str, word: &str) -> bool {
    let boundary =
        |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '+'));
    text.match_indices(word).any(|(i, _)| {
        let after = text[i + word.len()..].chars().next();
        let before = text[..i].chars().next_back();
        boundary(after) && (word.starts_with(['.', '$']) || boundary(before))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmake_and_meson_calls() {
        let t = "cmake_minimum_required(VERSION 3.20...3.28)\nproject(\n  tiler VERSION 1.4.0\n  LANGUAGES CXX)\nmy_add_executable(x)\nadd_executable(tiler main.cpp) # main\n";
        assert_eq!(calls(t, "add_executable"), vec![vec!["tiler", "main.cpp"]]);
        assert_eq!(
            calls(t, "project")[0],
            vec!["tiler", "VERSION", "1.4.0", "LANGUAGES", "CXX"]
        );
        let m = "project('gsh', 'c', version : '0.3.1',\n  default_options : ['c_std=c11', 'warning_level=3'], meson_version : '>=0.60.0')\n";
        let args = meson_call(m, "project").unwrap();
        assert_eq!(keyword(&args, "version").as_deref(), Some("0.3.1"));
        assert_eq!(keyword(&args, "meson_version").as_deref(), Some(">=0.60.0"));
        assert!(mentions("%.o: %.c\n\t$(CC) -c $<", ".c"));
        assert!(!mentions("%.css: %.scss\n\tsass $< $@", ".c"));
        assert!(!mentions("go build -compiler gccgo", "gcc"));
    }
}
