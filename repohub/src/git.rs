//! Bare repositories on disk (git2): creation with the post-receive hook,
//! and the read-only views the pages show (branches and tags, log, tree,
//! blobs, commit diffs with renames).
//!
//! Every lookup starts from a validated revision and validated path
//! components (see `names`), and reads objects from the object database
//! only, so a URL can never reach a file outside the repository. Blob sizes
//! come from the object header before the content is loaded, so a 50 MB
//! file costs a header read, not 50 MB of memory.

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, RepositoryInitOptions};

use crate::names;

/// Blobs above this are not shown inline (the page links to the raw file).
pub const MAX_INLINE_BLOB: usize = 512 * 1024;
/// README files above this are not rendered.
pub const MAX_README: usize = 256 * 1024;
pub const PAGE_SIZE: usize = 50;
/// Directories with more entries are listed without blob sizes.
pub const MAX_SIZED_ENTRIES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git")]
    Git(#[from] git2::Error),
    #[error("writing the hook")]
    Hook(#[from] repo_outils::git::GitError),
    #[error("not found")]
    NotFound,
    /// The tree cannot be written out safely or within its bounds (an
    /// entry colliding with a symlink, an unsafe name, too many bytes).
    #[error("the repository's tree cannot be exported")]
    Export(#[source] repo_outils::git::GitError),
    #[error(transparent)]
    BadInput(#[from] names::NameError),
}

impl GitError {
    fn from_lookup(e: git2::Error) -> Self {
        if e.code() == git2::ErrorCode::NotFound {
            GitError::NotFound
        } else {
            GitError::Git(e)
        }
    }
}

/// `<repos>/<project>/<repo>.git`
pub fn repo_dir(repos_root: &Path, project: &str, repo: &str) -> PathBuf {
    repos_root.join(project).join(format!("{repo}.git"))
}

/// What repohub's repositories accept from a push.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveLimits {
    /// `receive.maxInputSize`: the largest pack `git receive-pack` takes.
    pub max_pack_bytes: u64,
}

/// Makes `git receive-pack` check every object it receives (a corrupt or
/// malformed object, e.g. a tree entry named `..` or `.git`, is refused
/// before it lands) and refuse packs above the limit. Set on every
/// repository at creation and again at each startup, so repositories made
/// by an older repohub get it too.
pub fn harden(dir: &Path, limits: ReceiveLimits) -> Result<(), GitError> {
    let repo = open(dir)?;
    let mut cfg = repo.config()?.open_level(git2::ConfigLevel::Local)?;
    cfg.set_bool("receive.fsckObjects", true)?;
    cfg.set_i64(
        "receive.maxInputSize",
        i64::try_from(limits.max_pack_bytes).unwrap_or(i64::MAX),
    )?;
    Ok(())
}

/// Creates a bare repository with `main` as its default branch, the
/// receive checks of [`harden`], and the post-receive hook that spools
/// push events into `spool`.
pub fn create_bare(dir: &Path, spool: &Path, limits: ReceiveLimits) -> Result<(), GitError> {
    let mut opts = RepositoryInitOptions::new();
    opts.bare(true)
        .initial_head("main")
        .mkpath(true)
        .no_reinit(true);
    // `http.receivepack` stays unset on purpose: http-backend then accepts
    // pushes only when REMOTE_USER is set, which repohub does for
    // authenticated members only (a second lock behind the Rust check).
    Repository::init_opts(dir, &opts)?;
    harden(dir, limits)?;
    install_hook(dir, spool)?;
    Ok(())
}

/// The hook only writes one file and exits 0: it never waits on the network
/// and never fails the push. repohub's notifier picks the file up.
pub fn install_hook(dir: &Path, spool: &Path) -> Result<(), GitError> {
    use repo_outils::git::sh_quote;
    let script = format!(
        "#!/bin/sh\n\
         # Installed by repohub: records pushed refs for delivery to ci_service.\n\
         # Must never block or fail the push: write one spool file, exit 0.\n\
         spool={spool}\n\
         repo={repo}\n\
         tmp=\"$spool/.tmp-$$-$(date +%s%N)\"\n\
         {{ printf 'repo %s\\n' \"$repo\"; cat; }} > \"$tmp\" 2>/dev/null && mv \"$tmp\" \"$tmp.evt\" 2>/dev/null\n\
         exit 0\n",
        spool = sh_quote(&spool.to_string_lossy()),
        repo = sh_quote(&dir.to_string_lossy()),
    );
    repo_outils::git::install_hook(dir, "post-receive", &script)?;
    Ok(())
}

pub fn open(dir: &Path) -> Result<Repository, GitError> {
    Repository::open_bare(dir).map_err(GitError::from_lookup)
}

#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub id: String,
    pub short: String,
    pub summary: String,
    pub message: String,
    pub author: String,
    pub time: String,
    pub parents: Vec<String>,
}

fn commit_info(c: &git2::Commit<'_>) -> CommitInfo {
    let id = c.id().to_string();
    CommitInfo {
        short: id[..10.min(id.len())].to_owned(),
        id,
        summary: String::from_utf8_lossy(c.summary_bytes().unwrap_or_default()).into_owned(),
        message: String::from_utf8_lossy(c.message_bytes()).into_owned(),
        author: String::from_utf8_lossy(c.author().name_bytes()).into_owned(),
        time: format_time(c.time().seconds()),
        parents: c.parent_ids().map(|p| p.to_string()).collect(),
    }
}

/// UTC `YYYY-MM-DD HH:MM` without a date library (civil-from-days).
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[derive(Debug, Clone)]
pub struct Branch {
    pub name: String,
    pub commit: CommitInfo,
}

pub fn default_branch(repo: &Repository) -> Option<String> {
    let head = repo.find_reference("HEAD").ok()?;
    let target = head.symbolic_target()?;
    target.strip_prefix("refs/heads/").map(str::to_owned)
}

/// No branch yet. (libgit2's `is_empty` only recognises an unborn
/// `master`/init.defaultBranch, not our `main`.)
pub fn is_empty(repo: &Repository) -> bool {
    match repo.references_glob("refs/heads/*") {
        Ok(mut refs) => refs.next().is_none(),
        Err(_) => true,
    }
}

pub fn branches(repo: &Repository) -> Result<Vec<Branch>, GitError> {
    let mut out = Vec::new();
    for b in repo.branches(Some(git2::BranchType::Local))? {
        let (b, _) = b?;
        let Some(name) = b.name()?.map(str::to_owned) else {
            continue;
        };
        if let Ok(c) = b.get().peel_to_commit() {
            out.push(Branch {
                name,
                commit: commit_info(&c),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The most branches, and tags, the switcher lists.
pub const MAX_SWITCHER_REFS: usize = 100;

/// Branch and tag names for the switcher, sorted, each list cut at
/// `max`; the counts say how many there are in all.
#[derive(Debug, Clone, Default)]
pub struct RefNames {
    pub branches: Vec<String>,
    pub tags: Vec<String>,
    pub branch_count: usize,
    pub tag_count: usize,
}

pub fn ref_names(repo: &Repository, max: usize) -> Result<RefNames, GitError> {
    let names = |glob: &str, prefix: &str| -> Result<(Vec<String>, usize), GitError> {
        let mut all: Vec<String> = repo
            .references_glob(glob)?
            .names()
            .filter_map(|n| {
                n.ok()
                    .and_then(|n| n.strip_prefix(prefix))
                    .map(str::to_owned)
            })
            .collect();
        all.sort();
        let count = all.len();
        all.truncate(max);
        Ok((all, count))
    };
    let (branches, branch_count) = names("refs/heads/*", "refs/heads/")?;
    let (tags, tag_count) = names("refs/tags/*", "refs/tags/")?;
    Ok(RefNames {
        branches,
        tags,
        branch_count,
        tag_count,
    })
}

/// A branch, tag or hex commit id to a commit.
pub fn resolve(repo: &Repository, rev: &str) -> Result<Oid, GitError> {
    names::validate_rev(rev)?;
    for prefix in ["refs/heads/", "refs/tags/"] {
        if let Ok(r) = repo.find_reference(&format!("{prefix}{rev}")) {
            return Ok(r.peel_to_commit().map_err(GitError::from_lookup)?.id());
        }
    }
    if rev.len() >= 4 && rev.len() <= 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        let obj = repo.revparse_single(rev).map_err(GitError::from_lookup)?;
        return Ok(obj.peel_to_commit().map_err(GitError::from_lookup)?.id());
    }
    Err(GitError::NotFound)
}

/// The most commits a "next page" cursor carries; a wider frontier (many
/// parallel branches) falls back to counting pages.
pub const MAX_CURSOR: usize = 32;

/// One page of history.
#[derive(Debug)]
pub struct LogPage {
    pub commits: Vec<CommitInfo>,
    /// Where the next page starts (the walk's frontier), when there is one
    /// and it is small enough to put in a URL.
    pub next: Option<Vec<Oid>>,
    pub more: bool,
    /// Commits walked, skipped pages included: when the walk ran out before
    /// the page, the whole history's length.
    pub walked: usize,
}

/// One page of history, newest first by committer time (git log's default
/// order), from `starts`: the branch head for the first page, or the
/// frontier the previous page ended on (`next`), so page N costs the same
/// as page 1. Without a cursor, `skip` pages are walked and dropped.
pub fn log(repo: &Repository, starts: &[Oid], skip: usize) -> Result<LogPage, GitError> {
    use std::collections::{BinaryHeap, HashSet};
    // (commit time, insertion order reversed for stable ties, id)
    let mut heap: BinaryHeap<(i64, std::cmp::Reverse<u64>, Oid)> = BinaryHeap::new();
    let mut seen: HashSet<Oid> = HashSet::new();
    let mut seq = 0u64;
    for &s in starts {
        if seen.insert(s) {
            let c = repo.find_commit(s).map_err(GitError::from_lookup)?;
            heap.push((c.time().seconds(), std::cmp::Reverse(seq), s));
            seq += 1;
        }
    }
    let mut commits = Vec::with_capacity(PAGE_SIZE);
    let mut emitted = 0usize;
    let wanted = skip * PAGE_SIZE + PAGE_SIZE;
    while emitted < wanted {
        let Some((_, _, id)) = heap.pop() else { break };
        let c = repo.find_commit(id)?;
        for p in c.parents() {
            if seen.insert(p.id()) {
                heap.push((p.time().seconds(), std::cmp::Reverse(seq), p.id()));
                seq += 1;
            }
        }
        if emitted >= skip * PAGE_SIZE {
            commits.push(commit_info(&c));
        }
        emitted += 1;
    }
    let more = !heap.is_empty();
    let next = (more && heap.len() <= MAX_CURSOR).then(|| {
        let mut v = heap.into_sorted_vec();
        v.reverse();
        v.into_iter().map(|(_, _, id)| id).collect()
    });
    Ok(LogPage {
        commits,
        next,
        more,
        walked: emitted,
    })
}

/// What a commit page shows at most: past these the page says how much it
/// left out, so a commit that rewrites a whole tree costs a bounded page.
#[derive(Debug, Clone, Copy)]
pub struct DiffLimits {
    /// Files listed with their counts.
    pub files: usize,
    /// Diff lines (context, added, removed) drawn, over all files.
    pub lines: usize,
    /// Characters kept of one line.
    pub line_chars: usize,
    /// Blobs above this many bytes are named, not diffed.
    pub blob_bytes: u64,
}

impl Default for DiffLimits {
    fn default() -> Self {
        DiffLimits {
            files: 300,
            lines: 5000,
            line_chars: 1000,
            blob_bytes: 1024 * 1024,
        }
    }
}

/// How a file changed in a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    Added,
    Modified,
    Deleted,
    Renamed,
    Copied,
    /// Only the mode changed (e.g. made executable), or the type.
    ModeChanged,
}

impl FileStatus {
    pub fn label(self) -> &'static str {
        match self {
            FileStatus::Added => "added",
            FileStatus::Modified => "modified",
            FileStatus::Deleted => "deleted",
            FileStatus::Renamed => "renamed",
            FileStatus::Copied => "copied",
            FileStatus::ModeChanged => "mode changed",
        }
    }

    /// The label as a CSS class suffix.
    pub fn css(self) -> &'static str {
        match self {
            FileStatus::ModeChanged => "mode",
            s => s.label(),
        }
    }
}

/// One line of a hunk: `kind` is ' ' (context), '+' or '-', or '\\' for
/// git's "no newline at end of file".
#[derive(Debug, Clone)]
pub struct DiffLine {
    pub kind: char,
    pub old_no: Option<u32>,
    pub new_no: Option<u32>,
    pub text: String,
}

impl DiffLine {
    /// The CSS class of the line's row.
    pub fn css(&self) -> &'static str {
        match self.kind {
            '+' => "ladd",
            '-' => "ldel",
            '\\' => "leof",
            _ => "lctx",
        }
    }

    /// What precedes the text, as in `git diff`.
    pub fn prefix(&self) -> &'static str {
        match self.kind {
            '+' => "+",
            '-' => "-",
            '\\' => "\\ ",
            _ => " ",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Hunk {
    /// `@@ -a,b +c,d @@ context`
    pub header: String,
    pub lines: Vec<DiffLine>,
}

#[derive(Debug, Clone)]
pub struct FileDiff {
    pub status: FileStatus,
    /// The path before the change (differs from `path` for renames and copies).
    pub old_path: String,
    pub path: String,
    pub additions: usize,
    pub deletions: usize,
    pub binary: bool,
    pub hunks: Vec<Hunk>,
    /// Lines of this file's diff left out by the page's line bound.
    pub lines_not_shown: usize,
}

#[derive(Debug, Clone)]
pub struct CommitDiff {
    pub files: Vec<FileDiff>,
    /// Changed files past the file bound (not listed at all).
    pub files_not_shown: usize,
    /// Diff lines left out over all listed files.
    pub lines_not_shown: usize,
    pub additions: usize,
    pub deletions: usize,
    pub limits: DiffLimits,
}

/// The commit and its diff against its first parent (the empty tree for a
/// root commit), with renames detected (`git diff -M`) and within `limits`.
pub fn commit(
    repo: &Repository,
    id: Oid,
    limits: DiffLimits,
) -> Result<(CommitInfo, CommitDiff), GitError> {
    let c = repo.find_commit(id).map_err(GitError::from_lookup)?;
    let tree = c.tree()?;
    let parent = c.parents().next().map(|p| p.tree()).transpose()?;
    let mut opts = git2::DiffOptions::new();
    // Larger blobs count as binary: named, never loaded for a line diff.
    opts.max_size(i64::try_from(limits.blob_bytes).unwrap_or(i64::MAX));
    let mut diff = repo.diff_tree_to_tree(parent.as_ref(), Some(&tree), Some(&mut opts))?;
    let mut find = git2::DiffFindOptions::new();
    find.renames(true).copies(false);
    diff.find_similar(Some(&mut find))?;
    Ok((commit_info(&c), commit_diff(&diff, limits)?))
}

fn commit_diff(diff: &git2::Diff<'_>, limits: DiffLimits) -> Result<CommitDiff, GitError> {
    let total = diff.deltas().len();
    let mut out = CommitDiff {
        files: Vec::new(),
        files_not_shown: total.saturating_sub(limits.files),
        lines_not_shown: 0,
        additions: 0,
        deletions: 0,
        limits,
    };
    let mut budget = limits.lines;
    for idx in 0..total.min(limits.files) {
        let Some(delta) = diff.get_delta(idx) else {
            continue;
        };
        let status = match delta.status() {
            git2::Delta::Added => FileStatus::Added,
            git2::Delta::Deleted => FileStatus::Deleted,
            git2::Delta::Renamed => FileStatus::Renamed,
            git2::Delta::Copied => FileStatus::Copied,
            git2::Delta::Typechange => FileStatus::ModeChanged,
            _ if delta.old_file().mode() != delta.new_file().mode()
                && delta.old_file().id() == delta.new_file().id() =>
            {
                FileStatus::ModeChanged
            }
            _ => FileStatus::Modified,
        };
        let path_of = |f: git2::DiffFile<'_>| {
            f.path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let old_path = path_of(delta.old_file());
        let new_path = path_of(delta.new_file());
        let path = if status == FileStatus::Deleted {
            old_path.clone()
        } else {
            new_path
        };
        let mut file = FileDiff {
            status,
            old_path,
            path,
            additions: 0,
            deletions: 0,
            binary: delta.flags().is_binary(),
            hunks: Vec::new(),
            lines_not_shown: 0,
        };
        if let Some(patch) = git2::Patch::from_diff(diff, idx)? {
            let pd = patch.delta();
            file.binary |= pd.flags().is_binary();
            let (_, adds, dels) = patch.line_stats()?;
            file.additions = adds;
            file.deletions = dels;
            if !file.binary {
                file_hunks(&patch, &mut file, &mut budget, limits.line_chars)?;
            }
        }
        out.additions += file.additions;
        out.deletions += file.deletions;
        out.lines_not_shown += file.lines_not_shown;
        out.files.push(file);
    }
    Ok(out)
}

/// Copies the patch's hunks into `file` while `budget` lasts; what is left
/// is counted in `file.lines_not_shown`.
fn file_hunks(
    patch: &git2::Patch<'_>,
    file: &mut FileDiff,
    budget: &mut usize,
    line_chars: usize,
) -> Result<(), GitError> {
    for h in 0..patch.num_hunks() {
        let (hunk, n) = patch.hunk(h)?;
        if *budget == 0 {
            file.lines_not_shown += n;
            continue;
        }
        let mut out = Hunk {
            header: String::from_utf8_lossy(hunk.header()).trim_end().to_owned(),
            lines: Vec::with_capacity(n.min(*budget)),
        };
        for l in 0..n {
            if *budget == 0 {
                file.lines_not_shown += n - l;
                break;
            }
            let line = patch.line_in_hunk(h, l)?;
            let kind = match line.origin() {
                '+' | '-' | ' ' => line.origin(),
                // '=', '>', '<': the end-of-file newline markers.
                _ => '\\',
            };
            let text = if kind == '\\' {
                "No newline at end of file".to_owned()
            } else {
                let t = String::from_utf8_lossy(line.content());
                let t = t.strip_suffix('\n').unwrap_or(&t);
                let t = t.strip_suffix('\r').unwrap_or(t);
                bounded(t, line_chars)
            };
            out.lines.push(DiffLine {
                kind,
                old_no: line.old_lineno(),
                new_no: line.new_lineno(),
                text,
            });
            *budget -= 1;
        }
        file.hunks.push(out);
    }
    Ok(())
}

/// At most `max` characters of `s`, with "…" when cut.
fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub is_link: bool,
    pub size: Option<usize>,
}

#[derive(Debug)]
pub enum Node {
    Tree(Vec<Entry>),
    Blob(Blob),
}

#[derive(Debug)]
pub struct Blob {
    pub size: usize,
    /// `None` when too large to show inline or binary.
    pub text: Option<String>,
    pub binary: bool,
}

fn tree_at<'r>(
    repo: &'r Repository,
    commit: Oid,
    path: &[&str],
) -> Result<git2::Object<'r>, GitError> {
    let root = repo.find_commit(commit)?.tree()?;
    if path.is_empty() {
        return Ok(root.into_object());
    }
    let entry = root
        .get_path(Path::new(&path.join("/")))
        .map_err(GitError::from_lookup)?;
    Ok(entry.to_object(repo)?)
}

/// What sits at `path` (validated components) in `commit`'s tree.
pub fn node(repo: &Repository, commit: Oid, path: &str) -> Result<Node, GitError> {
    let comps = names::tree_path(path)?;
    let obj = tree_at(repo, commit, &comps)?;
    match obj.kind() {
        Some(ObjectType::Tree) => {
            let tree = obj.peel_to_tree()?;
            let odb = repo.odb()?;
            // A blob's size costs an object-header read (a delta chain in a
            // pack); in very large directories the listing skips them.
            let with_sizes = tree.len() <= MAX_SIZED_ENTRIES;
            let mut entries: Vec<Entry> = tree
                .iter()
                .map(|e| {
                    let is_dir = e.kind() == Some(ObjectType::Tree);
                    let size = if with_sizes && e.kind() == Some(ObjectType::Blob) {
                        odb.read_header(e.id()).ok().map(|(s, _)| s)
                    } else {
                        None
                    };
                    Entry {
                        name: String::from_utf8_lossy(e.name_bytes()).into_owned(),
                        is_dir,
                        is_link: e.filemode() == 0o120000,
                        size,
                    }
                })
                .collect();
            entries.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
            Ok(Node::Tree(entries))
        }
        Some(ObjectType::Blob) => Ok(Node::Blob(blob(repo, obj.id(), MAX_INLINE_BLOB)?)),
        _ => Err(GitError::NotFound),
    }
}

/// Reads a blob's text only when it is at most `limit` bytes and not binary.
pub fn blob(repo: &Repository, id: Oid, limit: usize) -> Result<Blob, GitError> {
    let (size, _) = repo.odb()?.read_header(id)?;
    if size > limit {
        return Ok(Blob {
            size,
            text: None,
            binary: false,
        });
    }
    let b = repo.find_blob(id)?;
    if b.is_binary() {
        return Ok(Blob {
            size,
            text: None,
            binary: true,
        });
    }
    Ok(Blob {
        size,
        text: Some(String::from_utf8_lossy(b.content()).into_owned()),
        binary: false,
    })
}

/// The raw bytes of the blob at `path`, refusing above `limit`.
pub fn raw(
    repo: &Repository,
    commit: Oid,
    path: &str,
    limit: usize,
) -> Result<Option<Vec<u8>>, GitError> {
    let comps = names::tree_path(path)?;
    let obj = tree_at(repo, commit, &comps)?;
    if obj.kind() != Some(ObjectType::Blob) {
        return Err(GitError::NotFound);
    }
    let (size, _) = repo.odb()?.read_header(obj.id())?;
    if size > limit {
        return Ok(None);
    }
    Ok(Some(repo.find_blob(obj.id())?.content().to_vec()))
}

/// The text of a small file at the root of `commit`, if present.
pub fn root_file(
    repo: &Repository,
    commit: Oid,
    names: &[&str],
    limit: usize,
) -> Option<(String, String)> {
    let tree = repo.find_commit(commit).ok()?.tree().ok()?;
    for n in names {
        let Some(e) = tree.get_name(n) else { continue };
        if e.kind() != Some(ObjectType::Blob) {
            continue;
        }
        if let Ok(Blob { text: Some(t), .. }) = blob(repo, e.id(), limit) {
            return Some(((*n).to_owned(), t));
        }
    }
    None
}

/// Whether `commit`'s root tree has an entry called `name`.
pub fn has_root_entry(repo: &Repository, commit: Oid, name: &str) -> Result<bool, GitError> {
    Ok(repo.find_commit(commit)?.tree()?.get_name(name).is_some())
}

/// Writes `commit`'s tree into `dest` (for autonix to scan).
/// Writes the tree of `commit` into `dest` (empty or missing) with the
/// same checks as CI's checkout: never through a symlink, no colliding or
/// unsafe entries, and within `TreeLimits` (a blob counts each time the
/// tree names it), so a small push cannot make repohub write gigabytes or
/// outside `dest`.
pub fn export_tree(repo: &Repository, commit: Oid, dest: &Path) -> Result<(), GitError> {
    let tree = repo.find_commit(commit)?.tree()?;
    repo_outils::git::write_tree(repo, &tree, dest, &repo_outils::git::TreeLimits::default())
        .map_err(GitError::Export)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree "Generate flake" exports comes from a push: a symlink `a`
    /// to a host directory plus an entry `a/x` is refused before anything
    /// is written, inside or outside the export (libgit2's checkout used to
    /// write `x` through the link).
    #[test]
    fn export_refuses_a_symlink_with_a_colliding_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("target");
        std::fs::create_dir(&outside).unwrap();
        let repo = Repository::init_bare(tmp.path().join("r.git")).unwrap();
        let raw_tree = |entries: &[(&str, &[u8], Oid)]| {
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
        };
        let link = repo.blob(outside.to_str().unwrap().as_bytes()).unwrap();
        let x = repo.blob(b"written through the link").unwrap();
        let sub = raw_tree(&[("100644", b"x", x)]);
        let root = raw_tree(&[("120000", b"a", link), ("40000", b"a", sub)]);
        let sig = git2::Signature::now("Attacker", "a@example.com").unwrap();
        let tree = repo.find_tree(root).unwrap();
        let commit = repo
            .commit(None, &sig, &sig, "crafted", &tree, &[])
            .unwrap();
        let dest = tmp.path().join("export");
        let err = export_tree(&repo, commit, &dest).unwrap_err();
        assert!(matches!(err, GitError::Export(_)), "{err}");
        assert!(
            commands::report::error_chain(&err).contains("appears twice"),
            "{}",
            commands::report::error_chain(&err)
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "wrote outside"
        );
        let written = std::fs::read_dir(&dest).map_or(0, |d| d.count());
        assert_eq!(written, 0, "wrote into the export");
    }

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13");
    }

    /// A history with branches and merges, 130 commits: walking page by
    /// page with the cursor gives exactly the single long walk.
    #[test]
    fn cursor_pages_equal_the_full_walk_with_merges() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let tree = {
            let tb = repo.treebuilder(None).unwrap();
            tb.write().unwrap()
        };
        let tree = repo.find_tree(tree).unwrap();
        let mut t = 1_600_000_000i64;
        let mut commit = |parents: &[Oid], msg: &str| -> Oid {
            t += 1;
            let sig = git2::Signature::new("a", "a@x", &git2::Time::new(t, 0)).unwrap();
            let ps: Vec<git2::Commit<'_>> = parents
                .iter()
                .map(|p| repo.find_commit(*p).unwrap())
                .collect();
            let refs: Vec<&git2::Commit<'_>> = ps.iter().collect();
            repo.commit(None, &sig, &sig, msg, &tree, &refs).unwrap()
        };
        let mut main = commit(&[], "root");
        for i in 0..10 {
            let mut side = main;
            for j in 0..5 {
                main = commit(&[main], &format!("main {i}.{j}"));
                side = commit(&[side], &format!("side {i}.{j}"));
            }
            main = commit(&[main, side], &format!("merge {i}"));
            main = commit(&[main], &format!("after {i}"));
        }
        let all = log(&repo, &[main], 0).unwrap();
        let mut full: Vec<String> = Vec::new();
        let mut skip = 0;
        loop {
            let p = log(&repo, &[main], skip).unwrap();
            full.extend(p.commits.iter().map(|c| c.id.clone()));
            if !p.more {
                break;
            }
            skip += 1;
        }
        assert_eq!(full.len(), 121);
        assert_eq!(
            &full[..PAGE_SIZE],
            all.commits
                .iter()
                .map(|c| c.id.clone())
                .collect::<Vec<_>>()
                .as_slice()
        );
        let mut by_cursor: Vec<String> = Vec::new();
        let mut starts = vec![main];
        loop {
            let p = log(&repo, &starts, 0).unwrap();
            by_cursor.extend(p.commits.iter().map(|c| c.id.clone()));
            match p.next {
                Some(n) => starts = n,
                None => break,
            }
        }
        assert_eq!(by_cursor, full);
        let mut dedup = full.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), full.len(), "no commit twice");
    }
}
