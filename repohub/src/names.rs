//! Validation of user, project and repository names and of paths and
//! revisions taken from URLs: what may appear in a URL segment and on disk.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name must be 1 to 64 characters")]
    Length,
    #[error(
        "name may only contain letters, digits, '.', '_' and '-', and must start with a letter or digit"
    )]
    Characters,
    #[error("name must not contain '..' or end with '.git' or '.lock'")]
    Dots,
    #[error("'{0}' is reserved")]
    Reserved(String),
    #[error(
        "project names are 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit (they name the project's tenant on the cluster)"
    )]
    ProjectName,
    #[error("path component '{0}' is not allowed")]
    Path(String),
    #[error("revision is not a branch, tag or commit id")]
    Revision,
}

/// Top-level URL segments the router owns; a project of that name would be
/// unreachable.
const RESERVED: &[&str] = &[
    "login",
    "logout",
    "signup",
    "new",
    "settings",
    "static",
    "api",
    "health",
    "metrics",
    "favicon.ico",
];

/// A name usable as a URL segment and a directory name: ASCII letters,
/// digits, `.`, `_`, `-`; no path separators, no `..`, no HTML.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(NameError::Length);
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(NameError::Characters);
    }
    let lower = name.to_ascii_lowercase();
    if name.contains("..") || lower.ends_with(".git") || lower.ends_with(".lock") {
        return Err(NameError::Dots);
    }
    Ok(())
}

pub fn validate_project_name(name: &str) -> Result<(), NameError> {
    validate_name(name)?;
    if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(NameError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// The name of a new project: also the cluster's tenant name
/// (`commands::types::ProjectName`), so stricter than [`validate_name`].
/// Projects made before this rule keep their pages but cannot deploy (see
/// `notify::push_event`).
pub fn validate_new_project_name(name: &str) -> Result<(), NameError> {
    validate_project_name(name)?;
    name.parse::<commands::types::ProjectName>()
        .map_err(|_| NameError::ProjectName)?;
    Ok(())
}

/// A path inside a repository's tree from a URL: relative, no `.`/`..`,
/// no empty components, no NUL or backslash. Returns the components.
pub fn tree_path(path: &str) -> Result<Vec<&str>, NameError> {
    let path = path.trim_matches('/');
    if path.is_empty() {
        return Ok(Vec::new());
    }
    path.split('/')
        .map(|c| {
            if c.is_empty() || c == "." || c == ".." || c.contains(['\0', '\\']) {
                Err(NameError::Path(c.to_owned()))
            } else {
                Ok(c)
            }
        })
        .collect()
}

/// A revision from a URL: a branch or tag name (git's ref-name rules, in
/// short) or a hex commit id. Refuses revision syntax (`~`, `^`, `@{`, `:`)
/// so a URL can only name an object, never an expression.
pub fn validate_rev(rev: &str) -> Result<(), NameError> {
    let bad = rev.is_empty()
        || rev.len() > 200
        || rev.starts_with(['-', '/', '.'])
        || rev.ends_with(['/', '.'])
        || rev.contains("..")
        || rev.contains("//")
        || rev.contains("@{")
        || rev.ends_with(".lock")
        || rev
            .bytes()
            .any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b));
    if bad {
        Err(NameError::Revision)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-app", "My_Proj.2"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "a/b", "..", "a..b", "../etc", "<script>", "x.git", "-x", ".hidden", "a b", "a'b",
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            validate_project_name("Login"),
            Err(NameError::Reserved(_))
        ));
        // `/metrics` is the scrape endpoint: a project there would be hidden.
        assert!(matches!(
            validate_project_name("metrics"),
            Err(NameError::Reserved(_))
        ));
        assert!(validate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(tree_path("src/main.rs").unwrap(), vec!["src", "main.rs"]);
        assert_eq!(tree_path("").unwrap(), Vec::<&str>::new());
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "a//b",
            "./x",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(tree_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn revs() {
        for ok in ["main", "feature/x", "v1.0", "0123abcd"] {
            assert_eq!(validate_rev(ok), Ok(()), "{ok}");
        }
        for bad in [
            "main~1", "HEAD^", "main@{1}", "a..b", "-x", "a:b", "", "x.lock",
        ] {
            assert!(validate_rev(bad).is_err(), "{bad}");
        }
    }
}
