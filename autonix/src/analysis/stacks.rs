//! What the version resolution needs to know about the stacks beyond the
//! first six (.NET, PHP, C/C++, Zig, Elixir, Haskell, Scala, Dart, Swift,
//! Deno, shell), and the small text readers their detectors share: Zig,
//! Elixir, Swift, sbt and CMake manifests are code, read line by line.

use super::versions::Candidate as Version;
use super::{Ctx, Language};
use crate::scan::join;

/// Version files a stack's own tools read, in precedence order.
pub(crate) fn version_files(lang: Language) -> &'static [&'static str] {
    match lang {
        Language::Php => &[".php-version"],
        Language::Swift => &[".swift-version"],
        Language::Deno => &[".dvmrc"],
        _ => &[],
    }
}

/// asdf `.tool-versions` / mise `[tools]` names of a stack's toolchain.
pub(crate) fn tool_names(lang: Language) -> &'static [&'static str] {
    match lang {
        Language::Dotnet => &["dotnet", "dotnet-core"],
        Language::Php => &["php"],
        Language::Zig => &["zig"],
        Language::Elixir => &["elixir"],
        Language::Haskell => &["ghc"],
        Language::Scala => &["scala"],
        Language::Dart => &["dart"],
        Language::Swift => &["swift"],
        Language::Deno => &["deno"],
        _ => &[],
    }
}

/// Strips tool prefixes and suffixes so versions compare: `1.16.2-otp-26`
/// → `1.16.2` (the OTP release is Erlang's), `ghc-9.6.4` → `9.6.4`,
/// `v1.40.0` → `1.40.0`.
pub(crate) fn normalize(lang: Language, v: &str) -> &str {
    match lang {
        Language::Elixir => v.split("-otp-").next().unwrap_or(v),
        Language::Haskell => v.strip_prefix("ghc-").unwrap_or(v),
        _ => v.strip_prefix('v').unwrap_or(v),
    }
}

/// The first `"…"` string after `key` on the same line: `.name = "x"`,
/// `app: :x, version: "0.1.0"`, `name := "x"`.
pub(crate) fn string_after(text: &str, key: &str) -> Option<String> {
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let code = code.split_once(" #").map_or(code, |(c, _)| c);
        let Some(i) = code.find(key) else { continue };
        let rest = &code[i + key.len()..];
        let start = rest.find('"')? + 1;
        let end = rest[start..].find('"')? + start;
        return Some(rest[start..end].to_string());
    }
    None
}

/// Every `"…"` string of `text` that follows `key` (`add_executable(`,
/// `.executableTarget(name:`), one per occurrence.
pub(crate) fn strings_after(text: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        rest = &rest[i + key.len()..];
        let value = rest
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.find('"').map(|e| r[..e].to_string()));
        if let Some(v) = value
            && !out.contains(&v)
        {
            out.push(v);
        }
    }
    out
}

/// The identifier after `key` and a sigil: Elixir atoms (`app: :my_app`
/// → `my_app`), Zig enum literals (`.name = .hello` → `hello`). With an
/// empty key, the text must start with the sigil.
pub(crate) fn identifier_after(text: &str, key: &str, sigil: char) -> Option<String> {
    let i = text.find(key)? + key.len();
    let rest = text[i..].trim_start().strip_prefix(sigil)?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// JSON with comments (deno.jsonc, VS Code style): strips `//` and `/* */`
/// comments outside strings and trailing commas, so serde_json reads it.
pub(crate) fn strip_jsonc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Visual Studio writes global.json and friends with a byte-order mark.
    let mut chars = text.trim_start_matches('\u{feff}').chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_str = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            (',', _) => {
                // A comma followed only by whitespace and a closing bracket
                // is a trailing comma.
                let ahead: String = chars.clone().take_while(|c| c.is_whitespace()).collect();
                let next = chars.clone().nth(ahead.chars().count());
                if !matches!(next, Some('}' | ']')) {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The nearest `name` from `dir` up to the root, as its directory.
pub(crate) fn nearest(ctx: &Ctx<'_>, dir: &str, name: &str) -> Option<String> {
    let mut d = dir.to_string();
    loop {
        if ctx.has(&d, name) {
            return Some(d);
        }
        if d.is_empty() {
            return None;
        }
        d = d.rfind('/').map_or(String::new(), |i| d[..i].to_string());
    }
}

/// A version pin with its source `file (field)`.
pub(crate) fn pin(value: &str, dir: &str, file: &str, field: &str) -> Version {
    Version::pin(value, format!("{} ({field})", join(dir, file)))
}

/// A version constraint with its source `file (field)`.
pub(crate) fn constraint(value: &str, dir: &str, file: &str, field: &str) -> Version {
    Version::constraint(value, format!("{} ({field})", join(dir, file)))
}

/// Files of `dir` whose name ends with one of `exts` (`.csproj`, `.cabal`).
pub(crate) fn files_with_ext(ctx: &Ctx<'_>, dir: &str, exts: &[&str]) -> Vec<String> {
    ctx.tree
        .dirs
        .get(dir)
        .map(|names| {
            names
                .iter()
                .filter(|n| exts.iter().any(|e| n.ends_with(e) && n.len() > e.len()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// `a/b/../c` → `a/c`; None when the path leaves the root.
pub(crate) fn normalize_path(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split(['/', '\\']) {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Directory part of a root-relative file path (`""` for the root).
pub(crate) fn parent_dir(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers() {
        assert_eq!(
            string_after("  .name = \"hello\", // x\n", ".name").as_deref(),
            Some("hello")
        );
        assert_eq!(
            strings_after(
                "add_executable(\"a\" x)\nadd_executable( \"b\")\n",
                "add_executable("
            ),
            vec!["a", "b"]
        );
        let v: serde_json::Value = serde_json::from_str(&strip_jsonc(
            "{\n // c\n \"a\": \"http://x\", /* b */ \"b\": [1, 2,],\n}\n",
        ))
        .unwrap();
        assert_eq!(v["a"], "http://x");
        assert_eq!(v["b"][1], 2);
        assert_eq!(
            normalize_path("src\\Web/../Api/Api.csproj").as_deref(),
            Some("src/Api/Api.csproj")
        );
        assert_eq!(normalize_path("../x"), None);
        assert_eq!(normalize(Language::Elixir, "1.16.2-otp-26"), "1.16.2");
        assert_eq!(normalize(Language::Haskell, "ghc-9.6.4"), "9.6.4");
    }
}
