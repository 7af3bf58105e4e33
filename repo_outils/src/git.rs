//! git helpers over git2 (libgit2): fetch a repository into a local bare
//! mirror and write one commit's tree into a plain directory (what
//! ci_service's runner needs). No `git` binary is needed.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use git2::{FetchOptions, Oid, Repository};

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
    #[error("cannot read git objects of {rev}")]
    Object { rev: String, source: git2::Error },
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tree entry {0:?} has an unsafe name")]
    UnsafeName(String),
    #[error("tree entry {0:?} appears twice in its directory")]
    Collision(String),
    #[error("tree entry {path:?} has mode {mode}, which git never writes")]
    UnsafeMode { path: String, mode: String },
    #[error("the tree is nested deeper than {limit} directories at {path:?}")]
    TooDeep { path: String, limit: usize },
    #[error("the tree exceeds the checkout limit of {limit} {what}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("{0} is not empty")]
    NotEmpty(PathBuf),
}

/// Opens an existing repository (bare or not).
fn open(path: &Path) -> Result<Repository, GitError> {
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

/// How much one exported tree may write. Every entry counts, and a blob
/// counts its size each time the tree names it (a push can reference one
/// large blob thousands of times for free; the checkout would pay for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    /// Files, directories and symlinks together.
    pub max_entries: u64,
    /// Sum of the sizes of every file and symlink written.
    pub max_bytes: u64,
    /// Directories nested deeper than this are refused.
    pub max_depth: usize,
}

impl Default for TreeLimits {
    /// Room for any real flake repository (the Linux kernel has ~90,000
    /// entries and ~1.5 GiB), small enough that a crafted tree cannot fill
    /// the CI host's disk.
    fn default() -> Self {
        TreeLimits {
            max_entries: 200_000,
            max_bytes: 2 << 30,
            max_depth: 128,
        }
    }
}

/// What one tree entry becomes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File { executable: bool },
    Symlink,
}

/// One entry to write, in pre-order (a directory before what it holds).
#[derive(Debug)]
struct Planned {
    /// Components from the export root; the last one is the entry's name.
    path: Vec<OsString>,
    kind: Kind,
    oid: Oid,
}

fn display(path: &[OsString]) -> String {
    path.iter()
        .map(|c| c.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Reads the whole tree first and refuses it before anything is written:
/// unsafe names (`.`, `..`, `.git` in any case, `/` or NUL inside), two
/// entries with one name in a directory (a symlink `a` next to a directory
/// `a` would let `a/x` be written through the link), modes git never makes,
/// and trees over `limits`.
fn plan(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    prefix: &mut Vec<OsString>,
    limits: &TreeLimits,
    totals: &mut (u64, u64),
    out: &mut Vec<Planned>,
) -> Result<(), GitError> {
    if prefix.len() >= limits.max_depth {
        return Err(GitError::TooDeep {
            path: display(prefix),
            limit: limits.max_depth,
        });
    }
    let odb = repo.odb().map_err(|source| GitError::Object {
        rev: tree.id().to_string(),
        source,
    })?;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for entry in tree.iter() {
        let name = entry.name_bytes();
        let shown = || {
            let mut p = prefix.clone();
            p.push(std::ffi::OsStr::from_bytes(name).to_owned());
            display(&p)
        };
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.eq_ignore_ascii_case(b".git")
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(GitError::UnsafeName(shown()));
        }
        if !seen.insert(name.to_vec()) {
            return Err(GitError::Collision(shown()));
        }
        let kind = match entry.filemode() {
            0o040000 => Kind::Dir,
            0o100644 | 0o100664 => Kind::File { executable: false },
            0o100755 => Kind::File { executable: true },
            0o120000 => Kind::Symlink,
            // A submodule's commit: its content is not in this repository.
            0o160000 => continue,
            mode => {
                return Err(GitError::UnsafeMode {
                    path: shown(),
                    mode: format!("{mode:o}"),
                });
            }
        };
        totals.0 += 1;
        if totals.0 > limits.max_entries {
            return Err(GitError::TooLarge {
                what: "entries",
                limit: limits.max_entries,
            });
        }
        if kind != Kind::Dir {
            let (size, _) = odb
                .read_header(entry.id())
                .map_err(|source| GitError::Object {
                    rev: entry.id().to_string(),
                    source,
                })?;
            totals.1 = totals.1.saturating_add(size as u64);
            if totals.1 > limits.max_bytes {
                return Err(GitError::TooLarge {
                    what: "bytes",
                    limit: limits.max_bytes,
                });
            }
        }
        prefix.push(std::ffi::OsStr::from_bytes(name).to_owned());
        out.push(Planned {
            path: prefix.clone(),
            kind,
            oid: entry.id(),
        });
        if kind == Kind::Dir {
            let sub = repo
                .find_tree(entry.id())
                .map_err(|source| GitError::Object {
                    rev: entry.id().to_string(),
                    source,
                })?;
            plan(repo, &sub, prefix, limits, totals, out)?;
        }
        prefix.pop();
    }
    Ok(())
}

/// Writes `tree` into `dest` (created if missing; must be empty) without
/// ever following a link: every directory is opened relative to its
/// parent's descriptor with `O_NOFOLLOW`, and every file and link is
/// created with `O_EXCL`/`symlinkat`, so nothing the tree holds can make a
/// write land outside `dest`. Symlinks are written as links (their targets
/// are only text here). The tree is checked against `limits` and for
/// colliding or unsafe entries before the first byte is written.
pub fn write_tree(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    dest: &Path,
    limits: &TreeLimits,
) -> Result<(), GitError> {
    use rustix::fs::{Mode, OFlags};
    let mut planned = Vec::new();
    plan(
        repo,
        tree,
        &mut Vec::new(),
        limits,
        &mut (0, 0),
        &mut planned,
    )?;

    let io = |path: PathBuf| move |source: std::io::Error| GitError::Io { path, source };
    fs::create_dir_all(dest).map_err(io(dest.to_owned()))?;
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rustix::fs::open(dest, dir_flags, Mode::empty())
        .map_err(|e| io(dest.to_owned())(e.into()))?;
    if fs::read_dir(dest)
        .map_err(io(dest.to_owned()))?
        .next()
        .is_some()
    {
        return Err(GitError::NotEmpty(dest.to_owned()));
    }
    // The open directories from the root down to the current entry's
    // parent: pre-order means a parent is always on this stack, and its
    // depth is bounded by `max_depth`.
    let mut stack: Vec<OwnedFd> = vec![root];
    for p in &planned {
        let depth = p.path.len() - 1;
        stack.truncate(depth + 1);
        let parent = stack.last().expect("the root stays on the stack");
        let name = p.path.last().expect("entries have a name");
        let at = || dest.join(display(&p.path));
        match p.kind {
            Kind::Dir => {
                rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755))
                    .map_err(|e| io(at())(e.into()))?;
                let fd = rustix::fs::openat(parent, name, dir_flags, Mode::empty())
                    .map_err(|e| io(at())(e.into()))?;
                stack.push(fd);
            }
            Kind::Symlink => {
                let blob = repo.find_blob(p.oid).map_err(|source| GitError::Object {
                    rev: p.oid.to_string(),
                    source,
                })?;
                let target = std::ffi::OsStr::from_bytes(blob.content());
                rustix::fs::symlinkat(target, parent, name).map_err(|e| io(at())(e.into()))?;
            }
            Kind::File { executable } => {
                let blob = repo.find_blob(p.oid).map_err(|source| GitError::Object {
                    rev: p.oid.to_string(),
                    source,
                })?;
                let mode = if executable { 0o755 } else { 0o644 };
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(mode),
                )
                .map_err(|e| io(at())(e.into()))?;
                let mut f = fs::File::from(fd);
                f.write_all(blob.content()).map_err(io(at()))?;
                // The umask may have narrowed the mode; git's is the one kept.
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
                    .map_err(|e| io(at())(e.into()))?;
            }
        }
    }
    Ok(())
}

/// Writes the tree of commit `rev` into `dest` (created if missing; must be
/// empty or absent) as plain files: no `.git`, so nothing but the commit's
/// content is there (what a `path:` flake reference evaluates). Executable
/// bits and symlinks are kept; submodules are skipped. See [`write_tree`]
/// for what is refused.
pub fn checkout_commit(
    repo: &Repository,
    rev: &str,
    dest: &Path,
    limits: &TreeLimits,
) -> Result<String, GitError> {
    let commit = find_commit(repo, rev)?;
    let id = commit.id().to_string();
    let tree = commit.tree().map_err(|source| GitError::Object {
        rev: id.clone(),
        source,
    })?;
    write_tree(repo, &tree, dest, limits)?;
    Ok(id)
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
    fn mirror_and_checkout() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let (_repo, c1, c2) = repo_with_history(&src);
        let mirror = fetch_mirror(src.to_str().unwrap(), &tmp.path().join("mirror.git")).unwrap();
        // A second fetch into the existing mirror works too.
        let mirror2 = fetch_mirror(src.to_str().unwrap(), &tmp.path().join("mirror.git")).unwrap();
        let head = tmp.path().join("head");
        assert_eq!(
            checkout_commit(&mirror2, "refs/heads/master", &head, &TreeLimits::default()).unwrap(),
            c2
        );
        assert_eq!(fs::read_to_string(head.join("flake.nix")).unwrap(), "v2");

        let wd = tmp.path().join("wd");
        assert_eq!(
            checkout_commit(&mirror, &c1, &wd, &TreeLimits::default()).unwrap(),
            c1
        );
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
    }

    #[test]
    fn unknown_revision_and_url_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let (repo, _, _) = repo_with_history(&src);
        let err = checkout_commit(
            &repo,
            &"a".repeat(40),
            &tmp.path().join("wd"),
            &TreeLimits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&"a".repeat(40)), "{err}");
        let missing = tmp.path().join("missing");
        let Err(err) = fetch_mirror(missing.to_str().unwrap(), &tmp.path().join("m.git")) else {
            panic!("fetching a missing repository succeeded")
        };
        assert!(matches!(err, GitError::Fetch { .. }), "{err}");
    }

    /// One raw tree entry: mode, name, object.
    type RawEntry<'a> = (&'a str, &'a [u8], Oid);

    /// A raw tree object: git2's TreeBuilder keeps names unique and sane,
    /// an attacker's `git push` does not have to.
    fn raw_tree(repo: &Repository, entries: &[RawEntry<'_>]) -> Oid {
        let mut data = Vec::new();
        for (mode, name, oid) in entries {
            data.extend_from_slice(mode.as_bytes());
            data.push(b' ');
            data.extend_from_slice(name);
            data.push(0);
            data.extend_from_slice(oid.as_bytes());
        }
        repo.odb()
            .unwrap()
            .write(git2::ObjectType::Tree, &data)
            .unwrap()
    }

    fn commit_tree(repo: &Repository, tree: Oid) -> String {
        let sig = git2::Signature::now("Attacker", "a@example.com").unwrap();
        let tree = repo.find_tree(tree).unwrap();
        repo.commit(None, &sig, &sig, "crafted", &tree, &[])
            .unwrap()
            .to_string()
    }

    /// Everything under `dir`, relative, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo: Vec<PathBuf> = vec![dir.to_owned()];
        todo.retain(|d| d.exists());
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    /// The attack of issue 14 point 4: a symlink `a -> <outside>` and a
    /// directory `a` holding `x` in one tree. Writing `a/x` would follow the
    /// link; the checkout refuses the tree and writes nothing, outside or in.
    #[test]
    fn a_symlink_with_a_colliding_directory_is_refused_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("target");
        fs::create_dir(&outside).unwrap();
        let repo = Repository::init_bare(tmp.path().join("r.git")).unwrap();
        let link = repo.blob(outside.to_str().unwrap().as_bytes()).unwrap();
        let x = repo.blob(b"written through the link").unwrap();
        let sub = raw_tree(&repo, &[("100644", b"x", x)]);
        let flake = repo.blob(b"{ }").unwrap();
        for (order, entries) in [
            (
                "link first",
                vec![
                    ("120000", &b"a"[..], link),
                    ("40000", &b"a"[..], sub),
                    ("100644", &b"flake.nix"[..], flake),
                ],
            ),
            (
                "directory first",
                vec![
                    ("40000", &b"a"[..], sub),
                    ("120000", &b"a"[..], link),
                    ("100644", &b"flake.nix"[..], flake),
                ],
            ),
        ] {
            let rev = commit_tree(&repo, raw_tree(&repo, &entries));
            let wd = tmp.path().join(format!("wd-{}", order.replace(' ', "-")));
            let err = checkout_commit(&repo, &rev, &wd, &TreeLimits::default()).unwrap_err();
            assert!(
                matches!(err, GitError::Collision(ref p) if p == "a"),
                "{order}: {err}"
            );
            assert!(err.to_string().contains("\"a\" appears twice"), "{err}");
            assert!(listing(&outside).is_empty(), "{order}: wrote outside");
            assert!(listing(&wd).is_empty(), "{order}: wrote {:?}", listing(&wd));
        }

        // A link alone is written as a link, never followed, and a later
        // write cannot go through it either.
        let rev = commit_tree(
            &repo,
            raw_tree(
                &repo,
                &[("120000", b"a", link), ("100644", b"flake.nix", flake)],
            ),
        );
        let wd = tmp.path().join("wd-link");
        checkout_commit(&repo, &rev, &wd, &TreeLimits::default()).unwrap();
        assert_eq!(fs::read_link(wd.join("a")).unwrap(), outside);
        assert!(listing(&outside).is_empty());
    }

    #[test]
    fn unsafe_names_are_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path().join("r.git")).unwrap();
        let blob = repo.blob(b"x").unwrap();
        let hooks = raw_tree(&repo, &[("100755", b"post-checkout", blob)]);
        let cases: Vec<(Vec<RawEntry<'_>>, &str)> = vec![
            (vec![("100644", b"..", blob)], ".."),
            (vec![("100644", b".", blob)], "."),
            (vec![("40000", b".git", hooks)], ".git"),
            (vec![("40000", b".GiT", hooks)], ".GiT"),
            (vec![("100644", b"a/b", blob)], "a/b"),
            (
                vec![("40000", b"sub", raw_tree(&repo, &[("100644", b"..", blob)]))],
                "sub/..",
            ),
        ];
        for (entries, shown) in cases {
            let mut all = vec![("100644", &b"ok"[..], blob)];
            all.extend(entries);
            let rev = commit_tree(&repo, raw_tree(&repo, &all));
            let wd = tmp.path().join("wd");
            let err = checkout_commit(&repo, &rev, &wd, &TreeLimits::default()).unwrap_err();
            assert!(
                matches!(err, GitError::UnsafeName(ref p) if p == shown),
                "{shown}: {err}"
            );
            assert!(listing(&wd).is_empty(), "{shown}: wrote {:?}", listing(&wd));
        }
    }

    /// One blob named a thousand times costs a thousand times its size:
    /// the bound counts what would be written, not what was pushed.
    #[test]
    fn a_tree_over_its_bounds_is_refused_with_the_bound_named() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path().join("r.git")).unwrap();
        let blob = repo.blob(&[7u8; 4096]).unwrap();
        let names: Vec<String> = (0..1000).map(|i| format!("f{i:04}")).collect();
        let entries: Vec<(&str, &[u8], Oid)> = names
            .iter()
            .map(|n| ("100644", n.as_bytes(), blob))
            .collect();
        let rev = commit_tree(&repo, raw_tree(&repo, &entries));
        let small = TreeLimits {
            max_bytes: 1 << 20,
            ..TreeLimits::default()
        };
        let wd = tmp.path().join("wd");
        let err = checkout_commit(&repo, &rev, &wd, &small).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the tree exceeds the checkout limit of 1048576 bytes"
        );
        assert!(listing(&wd).is_empty());
        let few = TreeLimits {
            max_entries: 999,
            ..TreeLimits::default()
        };
        let err = checkout_commit(&repo, &rev, &wd, &few).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the tree exceeds the checkout limit of 999 entries"
        );
        // Within both bounds it is written whole.
        checkout_commit(&repo, &rev, &wd, &TreeLimits::default()).unwrap();
        assert_eq!(listing(&wd).len(), 1000);

        let mut deep = raw_tree(&repo, &[("100644", b"leaf", blob)]);
        for _ in 0..10 {
            deep = raw_tree(&repo, &[("40000", b"d", deep)]);
        }
        let rev = commit_tree(&repo, deep);
        let shallow = TreeLimits {
            max_depth: 5,
            ..TreeLimits::default()
        };
        let err = checkout_commit(&repo, &rev, &tmp.path().join("deep"), &shallow)
            .unwrap_err()
            .to_string();
        assert!(err.contains("deeper than 5"), "{err}");
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
