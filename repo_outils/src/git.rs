//! git helpers over git2 (libgit2): fetch a repository into a local bare
//! mirror, write one commit's tree into a plain directory, read a file at a
//! commit, and list history. No `git` binary is needed.

use std::fs;
use std::path::{Path, PathBuf};

use git2::{FetchOptions, ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

/// What went wrong with a git operation; each variant names the repository,
/// revision or path involved.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open repository {path}")]
    Open { path: PathBuf, source: git2::Error },
    #[error("cannot create mirror {path}")]
    Init { path: PathBuf, source: git2::Error },
    #[error("cannot fetch from {url}")]
    Fetch { url: String, source: git2::Error },
    #[error("revision {rev:?} not found in {repo}")]
    RevNotFound {
        repo: PathBuf,
        rev: String,
        source: git2::Error,
    },
    #[error("{path:?} not found at {rev}")]
    PathNotFound { rev: String, path: String },
    #[error("{path:?} at {rev} is not a file")]
    NotAFile { rev: String, path: String },
    #[error("cannot read git objects of {rev}")]
    Object { rev: String, source: git2::Error },
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tree entry {0:?} has an unsafe name")]
    UnsafeName(String),
}

/// One commit of `log`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommitInfo {
    /// 40-hex commit id.
    pub id: String,
    /// First line of the message.
    pub summary: String,
    pub author: String,
    pub email: String,
    /// Author time, seconds since the epoch.
    pub time: i64,
}

/// Opens an existing repository (bare or not).
pub fn open(path: &Path) -> Result<Repository, GitError> {
    Repository::open(path).map_err(|source| GitError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Fetches every branch and tag of `url` (a URL or a local path) into the
/// bare repository `mirror`, creating it on first use. Branches are mirrored
/// as `refs/heads/*` with force, so a force-push upstream is followed.
pub fn fetch_mirror(url: &str, mirror: &Path) -> Result<Repository, GitError> {
    let repo = if mirror.join("HEAD").exists() {
        open(mirror)?
    } else {
        fs::create_dir_all(mirror).map_err(|source| GitError::Io {
            path: mirror.to_owned(),
            source,
        })?;
        Repository::init_bare(mirror).map_err(|source| GitError::Init {
            path: mirror.to_owned(),
            source,
        })?
    };
    {
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(|source| GitError::Fetch {
                url: url.to_owned(),
                source,
            })?;
        let mut opts = FetchOptions::new();
        opts.download_tags(git2::AutotagOption::None);
        remote
            .fetch(
                &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                Some(&mut opts),
                None,
            )
            .map_err(|source| GitError::Fetch {
                url: url.to_owned(),
                source,
            })?;
    }
    Ok(repo)
}

/// Resolves a revision (commit id, branch, tag, `HEAD~1`, …) to a 40-hex
/// commit id.
pub fn resolve(repo: &Repository, rev: &str) -> Result<String, GitError> {
    Ok(find_commit(repo, rev)?.id().to_string())
}

fn find_commit<'r>(repo: &'r Repository, rev: &str) -> Result<git2::Commit<'r>, GitError> {
    let not_found = |source| GitError::RevNotFound {
        repo: repo.path().to_owned(),
        rev: rev.to_owned(),
        source,
    };
    let obj = match Oid::from_str(rev) {
        Ok(oid) if rev.len() == 40 => repo.find_object(oid, None).map_err(not_found)?,
        _ => repo.revparse_single(rev).map_err(not_found)?,
    };
    obj.peel_to_commit().map_err(not_found)
}

/// Writes the tree of commit `rev` into `dest` (created if missing; must be
/// empty or absent) as plain files: no `.git`, so nothing but the commit's
/// content is there (what a `path:` flake reference evaluates). Executable
/// bits and symlinks are kept; submodules are skipped.
pub fn checkout_commit(repo: &Repository, rev: &str, dest: &Path) -> Result<String, GitError> {
    let commit = find_commit(repo, rev)?;
    let id = commit.id().to_string();
    let tree = commit.tree().map_err(|source| GitError::Object {
        rev: id.clone(),
        source,
    })?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| GitError::Io { path, source }
    };
    fs::create_dir_all(dest).map_err(io(dest))?;
    let mut failure: Option<GitError> = None;
    let walk = tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let name = match entry.name() {
            Some(n) if !n.is_empty() && n != "." && n != ".." && !n.contains('/') => n,
            other => {
                failure = Some(GitError::UnsafeName(
                    other.unwrap_or("<non-utf8>").to_owned(),
                ));
                return TreeWalkResult::Abort;
            }
        };
        let path = dest.join(dir).join(name);
        let result = (|| -> Result<(), GitError> {
            match entry.kind() {
                Some(ObjectType::Tree) => fs::create_dir_all(&path).map_err(io(&path)),
                Some(ObjectType::Blob) => {
                    let blob = repo
                        .find_blob(entry.id())
                        .map_err(|source| GitError::Object {
                            rev: id.clone(),
                            source,
                        })?;
                    if entry.filemode() == 0o120000 {
                        let target = String::from_utf8_lossy(blob.content()).into_owned();
                        std::os::unix::fs::symlink(target, &path).map_err(io(&path))
                    } else {
                        fs::write(&path, blob.content()).map_err(io(&path))?;
                        if entry.filemode() == 0o100755 {
                            use std::os::unix::fs::PermissionsExt;
                            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                                .map_err(io(&path))?;
                        }
                        Ok(())
                    }
                }
                // Submodule commits: their content is not in this repository.
                _ => Ok(()),
            }
        })();
        match result {
            Ok(()) => TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(e);
                TreeWalkResult::Abort
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    walk.map_err(|source| GitError::Object {
        rev: id.clone(),
        source,
    })?;
    Ok(id)
}

/// The content of `path` (slash-separated, relative to the root) at `rev`.
pub fn read_file_at(repo: &Repository, rev: &str, path: &str) -> Result<Vec<u8>, GitError> {
    let commit = find_commit(repo, rev)?;
    let id = commit.id().to_string();
    let tree = commit.tree().map_err(|source| GitError::Object {
        rev: id.clone(),
        source,
    })?;
    let entry = tree
        .get_path(Path::new(path))
        .map_err(|_| GitError::PathNotFound {
            rev: id.clone(),
            path: path.to_owned(),
        })?;
    let obj = entry.to_object(repo).map_err(|source| GitError::Object {
        rev: id.clone(),
        source,
    })?;
    let blob = obj.as_blob().ok_or_else(|| GitError::NotAFile {
        rev: id.clone(),
        path: path.to_owned(),
    })?;
    Ok(blob.content().to_vec())
}

/// Up to `limit` commits reachable from `rev`, newest first.
pub fn log(repo: &Repository, rev: &str, limit: usize) -> Result<Vec<CommitInfo>, GitError> {
    let start = find_commit(repo, rev)?;
    let obj_err = |source| GitError::Object {
        rev: rev.to_owned(),
        source,
    };
    let mut walk = repo.revwalk().map_err(obj_err)?;
    walk.set_sorting(git2::Sort::TIME).map_err(obj_err)?;
    walk.push(start.id()).map_err(obj_err)?;
    let mut out = Vec::new();
    for oid in walk.take(limit) {
        let oid = oid.map_err(obj_err)?;
        let c = repo.find_commit(oid).map_err(obj_err)?;
        let author = c.author();
        out.push(CommitInfo {
            id: oid.to_string(),
            summary: c.summary().unwrap_or_default().to_owned(),
            author: author.name().unwrap_or_default().to_owned(),
            email: author.email().unwrap_or_default().to_owned(),
            time: author.when().seconds(),
        });
    }
    Ok(out)
}

/// Quotes `s` for a POSIX shell: single quotes, with embedded ones closed,
/// escaped and reopened. Every value a hook script embeds goes through it.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes `script` as the executable (0755) hook `name` (e.g.
/// `post-receive`) of `repo` (the git dir: a bare repository's own
/// directory), creating `hooks/` when missing. Returns the hook's path.
/// The caller decides what the hook runs; this is only the one place that
/// knows where hooks live and how they must be written.
pub fn install_hook(repo: &Path, name: &str, script: &str) -> Result<PathBuf, GitError> {
    use std::os::unix::fs::PermissionsExt;
    let hooks = repo.join("hooks");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| GitError::Io { path, source }
    };
    fs::create_dir_all(&hooks).map_err(io(&hooks))?;
    let path = hooks.join(name);
    fs::write(&path, script).map_err(io(&path))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes a repository with two commits through git2 (no git binary).
    fn repo_with_history(dir: &Path) -> (Repository, String, String) {
        let repo = Repository::init(dir).unwrap();
        let sig = git2::Signature::now("Test", "t@example.com").unwrap();
        let commit = |repo: &Repository, files: &[(&str, &str, i32)], msg: &str| -> String {
            let mut idx = repo.index().unwrap();
            for (p, content, mode) in files {
                let full = dir.join(p);
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(&full, content).unwrap();
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode as u32)).unwrap();
                idx.add_path(Path::new(p)).unwrap();
            }
            idx.write().unwrap();
            let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
            let parents: Vec<git2::Commit<'_>> = repo
                .head()
                .ok()
                .and_then(|h| h.peel_to_commit().ok())
                .into_iter()
                .collect();
            let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
            repo.commit(Some("HEAD"), &sig, &sig, msg, &tree, &parents)
                .unwrap()
                .to_string()
        };
        let c1 = commit(
            &repo,
            &[
                ("flake.nix", "v1", 0o644),
                ("bin/run.sh", "#!/bin/sh", 0o755),
            ],
            "first\n\nbody",
        );
        let c2 = commit(&repo, &[("flake.nix", "v2", 0o644)], "second");
        (repo, c1, c2)
    }

    #[test]
    fn mirror_checkout_read_and_log() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let (_repo, c1, c2) = repo_with_history(&src);
        let mirror = fetch_mirror(src.to_str().unwrap(), &tmp.path().join("mirror.git")).unwrap();
        // A second fetch into the existing mirror works too.
        let mirror2 = fetch_mirror(src.to_str().unwrap(), &tmp.path().join("mirror.git")).unwrap();
        assert_eq!(resolve(&mirror2, "refs/heads/master").unwrap(), c2);

        let wd = tmp.path().join("wd");
        assert_eq!(checkout_commit(&mirror, &c1, &wd).unwrap(), c1);
        assert_eq!(fs::read_to_string(wd.join("flake.nix")).unwrap(), "v1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(wd.join("bin/run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o111,
            0o111
        );
        assert!(!wd.join(".git").exists());

        assert_eq!(read_file_at(&mirror, &c2, "flake.nix").unwrap(), b"v2");
        assert_eq!(read_file_at(&mirror, &c1, "flake.nix").unwrap(), b"v1");
        assert!(matches!(
            read_file_at(&mirror, &c1, "nope"),
            Err(GitError::PathNotFound { .. })
        ));
        assert!(matches!(
            read_file_at(&mirror, &c1, "bin"),
            Err(GitError::NotAFile { .. })
        ));

        let history = log(&mirror, &c2, 10).unwrap();
        assert_eq!(
            history.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
            vec![c2.clone(), c1.clone()]
        );
        assert_eq!(history[1].summary, "first");
        assert_eq!(history[0].author, "Test");
    }

    #[test]
    fn unknown_revision_and_url_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let (repo, _, _) = repo_with_history(&src);
        let err = resolve(&repo, &"a".repeat(40)).unwrap_err().to_string();
        assert!(err.contains(&"a".repeat(40)), "{err}");
        let missing = tmp.path().join("missing");
        let Err(err) = fetch_mirror(missing.to_str().unwrap(), &tmp.path().join("m.git")) else {
            panic!("fetching a missing repository succeeded")
        };
        assert!(matches!(err, GitError::Fetch { .. }), "{err}");
    }

    #[test]
    fn hooks_are_quoted_and_executable() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_quote(""), "''");
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("r.git");
        let path = install_hook(&repo, "post-receive", "#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(path, repo.join("hooks/post-receive"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexit 0\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // Installing again replaces the script.
        install_hook(&repo, "post-receive", "#!/bin/sh\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\n");
    }
}
