//! Which flake inputs CI lets a pushed flake have, checked before nix
//! fetches anything. A flake input is fetched while the flake is locked,
//! before any evaluation setting applies: `path:/var/lib/…/cache.netrc` or
//! `git+file:///…/other-project.git` would be copied into the store (and
//! `throw`n into the job log) by the first `nix eval`. So the inputs are
//! read without fetching (`flake.lock` as JSON, and the `inputs` attribute
//! of `flake.nix` evaluated purely, see `Nix::declared_flake_inputs`) and
//! each must be of an allowed kind:
//!
//! - `github:`, `gitlab:`, `sourcehut:`, and registry names (`nixpkgs`,
//!   `flake:nixpkgs`; the host's registry is the administrator's);
//! - `git+https`, `git+http`, `git+ssh`, `git://`: repositories over the
//!   network;
//! - `https://`/`http://` tarballs and files (`tarball+…`, `file+…`);
//! - `path:` with a relative path that stays inside the pushed repository
//!   and passes through no symlink.
//!
//! Everything else is refused with an error naming the input: absolute
//! `path:`, `git+file:`, `file://`, `tarball+file:`, `hg+…`, and unknown
//! types. The locked-inputs policy: when `flake.nix` declares inputs,
//! `flake.lock` must be committed, every node of it passes the same check,
//! and nix runs with `--no-update-lock-file`, so CI never resolves an input
//! it did not read first.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// Why a pushed flake's inputs were refused.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("flake input {input:?} ({reference}) is refused: {why}")]
    Refused {
        input: String,
        reference: String,
        why: String,
    },
    #[error(
        "flake.nix declares inputs ({0}) but the repository has no flake.lock; run `nix flake \
         lock` and commit flake.lock (CI never locks inputs itself)"
    )]
    NoLockFile(String),
    #[error("flake.lock is not valid JSON of a lock file: {0}")]
    LockSyntax(String),
    #[error("the inputs of flake.nix are not an attribute set of input references")]
    Declared,
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The allowed kinds, for error messages.
const ALLOWED: &str = "allowed: github, gitlab, sourcehut, registry names, git over \
                       https/http/ssh, tarballs and files over https/http, and path: inside the \
                       repository";

/// Checks `flake.lock` in `root` (when present) and the `declared` inputs
/// (the JSON of `flake.nix`'s `inputs` attribute). Returns how many inputs
/// were checked.
pub fn check_inputs(root: &Path, declared: &Value) -> Result<usize, InputError> {
    let lock_path = root.join("flake.lock");
    let lock = match std::fs::symlink_metadata(&lock_path) {
        Ok(m) if m.is_file() => {
            Some(std::fs::read(&lock_path).map_err(|source| InputError::Io {
                path: lock_path.clone(),
                source,
            })?)
        }
        Ok(_) => {
            return Err(InputError::LockSyntax(
                "flake.lock is not a regular file".into(),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(InputError::Io {
                path: lock_path,
                source,
            });
        }
    };
    let mut checked = 0;
    let Value::Object(inputs) = declared else {
        return Err(InputError::Declared);
    };
    let mut fetched = Vec::new();
    for (name, spec) in inputs {
        if check_declared(root, name, spec)? {
            fetched.push(name.as_str());
        }
        checked += 1;
    }
    match lock {
        None if !fetched.is_empty() => return Err(InputError::NoLockFile(fetched.join(", "))),
        None => {}
        Some(bytes) => checked += check_lock(root, &bytes)?,
    }
    Ok(checked)
}

/// One declared input (`inputs.<name>`): a URL string, or an attribute set
/// with `url`, or `type` and its fields, or only `follows`; nested `inputs`
/// override the input's own inputs and are checked the same way. Returns
/// whether the input is fetched (not only a `follows`).
fn check_declared(root: &Path, name: &str, spec: &Value) -> Result<bool, InputError> {
    let refused = |reference: String, why: String| InputError::Refused {
        input: name.to_owned(),
        reference,
        why,
    };
    match spec {
        Value::String(url) => check_url(root, url).map_err(|why| refused(url.clone(), why))?,
        Value::Object(attrs) => {
            if let Some(Value::Object(nested)) = attrs.get("inputs") {
                for (sub, s) in nested {
                    check_declared(root, &format!("{name}/{sub}"), s)?;
                }
            }
            if attrs.contains_key("url") || attrs.contains_key("type") {
                // The URL names the input best; other forms show as JSON.
                let shown = attrs
                    .get("url")
                    .and_then(Value::as_str)
                    .map_or_else(|| Value::from(attrs.clone()).to_string(), str::to_owned);
                check_attrs(root, attrs).map_err(|why| refused(shown, why))?;
            } else if attrs.contains_key("follows") {
                return Ok(false);
            } else {
                // `inputs.nixpkgs = { }` is the registry entry of that name.
                return Ok(true);
            }
        }
        other => {
            return Err(refused(
                other.to_string(),
                "an input is a URL or an attribute set".into(),
            ));
        }
    }
    Ok(true)
}

/// Every node of `flake.lock` but the root: its `locked` and `original`
/// references. Returns how many nodes were checked.
fn check_lock(root: &Path, bytes: &[u8]) -> Result<usize, InputError> {
    let lock: Value =
        serde_json::from_slice(bytes).map_err(|e| InputError::LockSyntax(e.to_string()))?;
    let root_name = lock.get("root").and_then(Value::as_str).unwrap_or("root");
    let Some(Value::Object(nodes)) = lock.get("nodes") else {
        return Err(InputError::LockSyntax("no \"nodes\" object".into()));
    };
    let mut checked = 0;
    for (name, node) in nodes {
        if name == root_name {
            continue;
        }
        for key in ["locked", "original"] {
            match node.get(key) {
                Some(Value::Object(attrs)) => {
                    check_attrs(root, attrs).map_err(|why| InputError::Refused {
                        input: name.clone(),
                        reference: format!("flake.lock {key}: {}", Value::from(attrs.clone())),
                        why,
                    })?
                }
                None => {}
                Some(_) => {
                    return Err(InputError::LockSyntax(format!(
                        "node {name:?}: {key} is not an object"
                    )));
                }
            }
        }
        checked += 1;
    }
    Ok(checked)
}

/// An input in attribute form (`{ type = "github"; owner = …; }`, or
/// `{ url = …; flake = false; }`).
fn check_attrs(root: &Path, attrs: &serde_json::Map<String, Value>) -> Result<(), String> {
    let field = |k: &str| attrs.get(k).and_then(Value::as_str);
    if let Some(url) = field("url")
        && attrs.get("type").is_none()
    {
        return check_url(root, url);
    }
    match field("type") {
        Some("github" | "gitlab" | "sourcehut" | "indirect") => Ok(()),
        Some("git") => check_network_url(
            field("url").unwrap_or_default(),
            &["https", "http", "ssh", "git"],
        ),
        Some("tarball" | "file") => {
            check_network_url(field("url").unwrap_or_default(), &["https", "http"])
        }
        Some("path") => check_path(root, field("path").unwrap_or_default()),
        Some(other) => Err(format!("input type {other:?} is not allowed ({ALLOWED})")),
        None => Err(format!("the input has no type ({ALLOWED})")),
    }
}

/// An input in URL form.
fn check_url(root: &Path, url: &str) -> Result<(), String> {
    if url.starts_with('/') || url.starts_with('.') {
        return check_path(root, url);
    }
    let Some((scheme, rest)) = url.split_once(':') else {
        // `nixpkgs` or `nixpkgs/nixos-24.11`: a registry name.
        return Ok(());
    };
    match scheme {
        "github" | "gitlab" | "sourcehut" | "flake" => Ok(()),
        "path" => check_path(root, rest.split('?').next().unwrap_or_default()),
        "git+https" | "git+http" | "git+ssh" | "git" | "https" | "http" | "tarball+https"
        | "tarball+http" | "file+https" | "file+http" => Ok(()),
        "git+file" | "file" | "tarball+file" | "file+file" => {
            Err(format!("{scheme}: reads the CI host's files ({ALLOWED})"))
        }
        other => Err(format!("input scheme {other:?} is not allowed ({ALLOWED})")),
    }
}

fn check_network_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if schemes.contains(&scheme) {
        Ok(())
    } else {
        Err(format!(
            "the URL {url:?} is not fetched over {} ({ALLOWED})",
            schemes.join("/")
        ))
    }
}

/// A `path` input: relative, staying inside `root`, through no symlink
/// (a link in the repository could point anywhere on the host).
fn check_path(root: &Path, path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(
            "an absolute path reads the CI host's files; only paths inside the \
                    repository (./dir) are allowed"
                .to_owned(),
        );
    }
    let mut inside = root.to_owned();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => {
                inside.push(n);
                match std::fs::symlink_metadata(&inside) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(format!(
                            "{} is a symlink; a path input must stay inside the repository",
                            inside.strip_prefix(root).unwrap_or(&inside).display()
                        ));
                    }
                    _ => {}
                }
            }
            Component::ParentDir => {
                return Err(
                    "`..` leaves the repository; a path input must stay inside it".to_owned(),
                );
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path reads the CI host's files".to_owned());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("etc-link")).unwrap();
        d
    }

    fn refused(root: &Path, declared: Value) -> String {
        check_inputs(root, &declared).unwrap_err().to_string()
    }

    #[test]
    fn network_and_registry_inputs_pass_and_host_files_do_not() {
        let d = repo();
        let root = d.path();
        std::fs::write(
            root.join("flake.lock"),
            r#"{"nodes":{"root":{}},"root":"root","version":7}"#,
        )
        .unwrap();
        let ok = json!({
            "nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-24.11"},
            "reg": {"url": "nixpkgs"},
            "regattrs": {},
            "tar": {"url": "https://example.org/x.tar.gz", "flake": false},
            "g": {"url": "git+https://example.org/r.git"},
            "gs": {"type": "git", "url": "ssh://git@example.org/r.git"},
            "sub": {"url": "path:./sub"},
            "sub2": "./sub",
            "f": {"follows": "nixpkgs"},
            "x": {"url": "github:o/x", "inputs": {"nixpkgs": {"follows": "nixpkgs"}}},
        });
        assert_eq!(check_inputs(root, &ok).unwrap(), 10);
        for (input, spec, why) in [
            (
                "s",
                json!({"url": "path:/var/lib/procurator-ci/cache.netrc", "flake": false}),
                "absolute path",
            ),
            ("s", json!("/var/lib/secret"), "absolute path"),
            (
                "s",
                json!({"type": "path", "path": "/etc"}),
                "absolute path",
            ),
            (
                "o",
                json!({"url": "git+file:///srv/repos/other.git"}),
                "git+file",
            ),
            (
                "o",
                json!({"type": "git", "url": "file:///srv/repos/other.git"}),
                "not fetched over",
            ),
            (
                "t",
                json!({"url": "file:///etc/passwd", "flake": false}),
                "file:",
            ),
            ("t", json!({"url": "tarball+file:///x.tgz"}), "tarball+file"),
            (
                "u",
                json!({"url": "path:../outside"}),
                "leaves the repository",
            ),
            (
                "l",
                json!({"url": "path:./etc-link/shadow"}),
                "etc-link is a symlink",
            ),
            (
                "h",
                json!({"url": "hg+https://example.org/r"}),
                "not allowed",
            ),
            (
                "y",
                json!({"type": "mercurial", "url": "https://x"}),
                "not allowed",
            ),
        ] {
            let e = refused(root, json!({ input: spec }));
            assert!(
                e.contains(&format!("flake input {input:?}")) && e.contains(why),
                "{spec}: {e}"
            );
        }
        // Overrides of an input's own inputs are checked too.
        let e = refused(
            root,
            json!({"x": {"url": "github:o/x", "inputs": {"s": {"url": "path:/etc/shadow"}}}}),
        );
        assert!(e.contains("flake input \"x/s\""), "{e}");
    }

    #[test]
    fn declared_inputs_need_a_lock_file_and_every_lock_node_is_checked() {
        let d = repo();
        let root = d.path();
        assert_eq!(check_inputs(root, &json!({})).unwrap(), 0);
        assert_eq!(
            check_inputs(root, &json!({"a": {"follows": "b"}})).unwrap(),
            1,
            "a follows is no fetch"
        );
        let e = refused(root, json!({"nixpkgs": {"url": "github:NixOS/nixpkgs"}}));
        assert!(
            e.contains("declares inputs (nixpkgs)") && e.contains("no flake.lock"),
            "{e}"
        );

        // A lock file naming a host path (hand-written: nix would write it
        // only after fetching) is refused by node name.
        std::fs::write(
            root.join("flake.lock"),
            json!({"nodes": {
                "root": {"inputs": {"nixpkgs": "nixpkgs", "s": "s"}},
                "nixpkgs": {"locked": {"type": "github", "owner": "NixOS", "repo": "nixpkgs", "rev": "0"}, "original": {"type": "github", "owner": "NixOS", "repo": "nixpkgs"}},
                "s": {"locked": {"type": "path", "path": "/var/lib/secret", "narHash": "sha256-x"}, "original": {"type": "path", "path": "/var/lib/secret"}},
            }, "root": "root", "version": 7})
            .to_string(),
        )
        .unwrap();
        let e = refused(root, json!({"nixpkgs": {"url": "github:NixOS/nixpkgs"}}));
        assert!(e.contains("flake input \"s\" (flake.lock locked:"), "{e}");
        std::fs::write(root.join("flake.lock"), "{not json").unwrap();
        let e = refused(root, json!({}));
        assert!(e.starts_with("flake.lock is not valid JSON"), "{e}");
        assert!(matches!(
            check_inputs(root, &json!([1])),
            Err(InputError::Declared)
        ));
    }
}
