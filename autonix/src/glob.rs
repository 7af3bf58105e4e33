//! Minimal path globs (`*`, `?`, `**`, `[abc]`) for workspace member lists
//! (Cargo, npm/yarn/pnpm, uv), matched against directories the walk found.

/// Normalises a member pattern: drops `./`, trailing `/` and repeated `/`.
pub(crate) fn normalize(pattern: &str) -> String {
    let p = pattern.trim();
    let p = p.strip_prefix("./").unwrap_or(p);
    p.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// True when `path` (relative, `/`-separated) matches `pattern`.
pub(crate) fn matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match_segments(&pat, &segs)
}

fn match_segments(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|i| match_segments(rest, &segs[i..])),
        Some((p, rest)) => match segs.split_first() {
            Some((s, srest)) => {
                match_segment(p.as_bytes(), s.as_bytes()) && match_segments(rest, srest)
            }
            None => false,
        },
    }
}

fn match_segment(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| match_segment(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && match_segment(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(end) = p.iter().position(|&c| c == b']') else {
                return s.first() == Some(&b'[') && match_segment(&p[1..], &s[1..]);
            };
            let set = &p[1..end];
            let (negate, set) = match set.first() {
                Some(b'!') | Some(b'^') => (true, &set[1..]),
                _ => (false, set),
            };
            match s.first() {
                Some(c) => (set.contains(c) != negate) && match_segment(&p[end + 1..], &s[1..]),
                None => false,
            }
        }
        Some(c) => s.first() == Some(c) && match_segment(&p[1..], &s[1..]),
    }
}

/// Joins a workspace root and a member pattern into a root-relative pattern.
pub(crate) fn under(base: &str, pattern: &str) -> String {
    let p = normalize(pattern);
    match (base.is_empty(), p.is_empty()) {
        (true, _) => p,
        (false, true) => base.to_string(),
        (false, false) => format!("{base}/{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(matches("crates/*", "crates/a"));
        assert!(!matches("crates/*", "crates/a/b"));
        assert!(matches("packages/**", "packages/a/b"));
        assert!(matches("packages/**", "packages"));
        assert!(matches("a/**/z", "a/z"));
        assert!(matches("a/**/z", "a/b/c/z"));
        assert!(matches("svc-?", "svc-1"));
        assert!(matches("lib[ab]", "liba"));
        assert!(!matches("lib[!ab]", "liba"));
        assert_eq!(normalize("./crates/*/"), "crates/*");
        assert_eq!(under("ws", "./a"), "ws/a");
        assert_eq!(under("ws", "."), "ws");
    }
}
