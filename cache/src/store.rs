//! The cache's storage: files under the data dir in the `file://` binary
//! cache layout plus the SQLite index, and the rules that keep them
//! consistent (a NAR is renamed into place before any narinfo names it; a
//! narinfo file is written inside the same SQLite transaction that records
//! it, after its references were checked).
//!
//! Layout of `<data dir>`:
//! - `index.sqlite` — the index (see `index.rs`)
//! - `store/<hash>.narinfo` — signed narinfo, served as is
//! - `store/nar/<filehash>.nar[.zst|.xz]` — NAR files, served as uploaded
//! - `store/log/<drv base name>` — build logs, served as uploaded
//! - `tmp/` — uploads in progress (same filesystem, so rename is atomic)
//! - `quarantine/` — what `verify --quarantine` moved aside

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, TransactionBehavior};

use crate::hash::{HashingWriter, Sha256Hash, StorePathName, is_hash_part};
use crate::index::{self, IndexError, NarRow, PathRow};
use crate::nar::{self, NarError};
use crate::narinfo::{Compression, NarInfo, NarInfoError};
use crate::nixbase32;
use crate::signing::SecretKey;

/// Errors of store operations other than uploads.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("index")]
    Index(#[from] IndexError),
    #[error(
        "pin name {0:?} is invalid (use 1-128 of A-Z a-z 0-9 . _ -, optionally after `<project>/`)"
    )]
    BadPinName(String),
    #[error(
        "pin {name:?} is under another project's prefix; a token of project {project} may only pin under {project}/"
    )]
    PinPrefix { name: String, project: String },
    #[error("{0}")]
    BadPath(String),
    #[error("not in the cache: {0}")]
    NotFound(String),
    #[error("reading NAR")]
    Nar(#[from] NarError),
    #[error(
        "pin {name:?} belongs to {owner}; a token of project {project} may only change its own pins"
    )]
    PinOwned {
        name: String,
        owner: String,
        project: String,
    },
}

/// Refuses a project token touching a pin that is not its project's: one
/// another owner made, or one named under another project's prefix.
fn check_pin_owner(
    name: &str,
    existing: Option<Option<String>>,
    project: Option<&str>,
) -> Result<(), StoreError> {
    if let (Some(p), Some((prefix, _))) = (project, name.split_once('/'))
        && prefix != p
    {
        return Err(StoreError::PinPrefix {
            name: name.to_owned(),
            project: p.to_owned(),
        });
    }
    match (project, existing) {
        (Some(p), Some(owner)) if owner.as_deref() != Some(p) => Err(StoreError::PinOwned {
            name: name.to_owned(),
            owner: owner.map_or_else(
                || "the all-projects token".to_owned(),
                |o| format!("project {o}"),
            ),
            project: p.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Why an upload was refused. Client mistakes map to 4xx; only our own
/// I/O or index failures are 5xx (nix 2.8 hangs retrying a PUT after a 5xx).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("invalid NAR file name {0:?} (expected nar/<52 base32 chars>.nar[.zst|.xz])")]
    BadNarName(String),
    #[error("compression {0} is not accepted (use none, zstd or xz)")]
    UnsupportedCompression(&'static str),
    #[error("upload exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("upload body ended early or was aborted")]
    Truncated,
    #[error("no upload data for {0:?} (a PUT retried without its body?)")]
    Stalled(Duration),
    #[error("NAR content hashes to {actual}, but its name says {named}")]
    FileHashMismatch { named: String, actual: String },
    #[error("NAR does not decompress as {0}: {1}")]
    Corrupt(&'static str, String),
    #[error("narinfo is not UTF-8")]
    NotUtf8,
    #[error("bad narinfo")]
    BadNarInfo(#[from] NarInfoError),
    #[error("narinfo for {store_path} uploaded as {url_hash}.narinfo")]
    HashPartMismatch {
        store_path: String,
        url_hash: String,
    },
    #[error("narinfo URL {0:?} must be nar/<filehash>.nar[.zst|.xz] matching its Compression")]
    BadUrl(String),
    #[error("NAR {0} has not been uploaded")]
    MissingNar(String),
    #[error("{field} mismatch: narinfo says {claimed}, uploaded NAR has {actual}")]
    Mismatch {
        field: &'static str,
        claimed: String,
        actual: String,
    },
    #[error("references not in the cache (upload them first): {0}")]
    MissingReferences(String),
    #[error("{0} is already stored with a different NarHash")]
    Conflict(String),
    #[error("storage failure: {context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("index failure")]
    Index(#[from] IndexError),
    #[error("the cache has no signing key loaded")]
    NoKey,
    #[error("invalid build log name {0:?} (expected log/<32 base32 chars>-<name>.drv)")]
    BadLogName(String),
    #[error("a different build log of {0} is already stored")]
    LogConflict(String),
}

impl UploadError {
    /// HTTP status for this refusal.
    pub fn status(&self) -> u16 {
        if self.is_disk_full() {
            // Still a 4xx: nix 2.8 hangs retrying a PUT that got a 5xx.
            return 413;
        }
        match self {
            Self::TooLarge(_) => 413,
            Self::Conflict(_) | Self::LogConflict(_) => 409,
            Self::Io { .. } | Self::Index(_) | Self::NoKey => 500,
            _ => 400,
        }
    }

    /// Our disk (or quota) is full: ENOSPC/EDQUOT from a write, or SQLite's
    /// SQLITE_FULL from the index.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            Self::Index(IndexError::Sqlite(e)) => {
                e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            _ => false,
        }
    }

    /// Short label for the `upload failures by reason` metric.
    pub fn reason(&self) -> &'static str {
        if self.is_disk_full() {
            return "disk_full";
        }
        match self {
            Self::BadNarName(_)
            | Self::HashPartMismatch { .. }
            | Self::BadUrl(_)
            | Self::BadLogName(_) => "bad_path",
            Self::UnsupportedCompression(_) => "unsupported_compression",
            Self::TooLarge(_) => "too_large",
            Self::Truncated => "truncated",
            Self::Stalled(_) => "stalled",
            Self::FileHashMismatch { .. } => "file_hash_mismatch",
            Self::Corrupt(..) => "corrupt_nar",
            Self::NotUtf8 | Self::BadNarInfo(_) => "bad_narinfo",
            Self::MissingNar(_) => "missing_nar",
            Self::Mismatch {
                field: "NarHash", ..
            } => "nar_hash_mismatch",
            Self::Mismatch {
                field: "NarSize", ..
            } => "nar_size_mismatch",
            Self::Mismatch {
                field: "FileSize", ..
            } => "file_size_mismatch",
            Self::Mismatch { .. } => "file_hash_mismatch",
            Self::MissingReferences(_) => "missing_reference",
            Self::Conflict(_) | Self::LogConflict(_) => "conflict",
            Self::Io { .. } | Self::Index(_) | Self::NoKey => "internal",
        }
    }
}

/// An I/O error with what we were doing; converts into either error enum by `?`.
struct IoCtx(String, io::Error);

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> IoCtx {
    let context = context.into();
    move |source| IoCtx(context, source)
}

impl From<IoCtx> for UploadError {
    fn from(IoCtx(context, source): IoCtx) -> Self {
        Self::Io { context, source }
    }
}

impl From<IoCtx> for StoreError {
    fn from(IoCtx(context, source): IoCtx) -> Self {
        Self::Io { context, source }
    }
}

/// A piece of an upload body handed from the HTTP task to the writer thread.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    /// The body ended normally; without it the upload is discarded.
    End,
}

/// Result of a narinfo upload.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// An identical narinfo was already stored (concurrent or repeated push).
    AlreadyPresent,
}

/// Checks a NAR file name (`<52 base32>.nar[.ext]`) and returns the hash it
/// names and its compression.
pub fn parse_nar_file_name(name: &str) -> Option<(Sha256Hash, Compression)> {
    let (hash, _) = name.split_once(".nar")?;
    let digest = nixbase32::decode::<32>(hash).ok()?;
    let comp = Compression::from_file_name(name)?;
    Some((Sha256Hash(digest), comp))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes `data` to `dest` atomically: temp file in `tmp_dir`, fsync, rename, fsync dir.
fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    sync_parent(dest)
}

fn sync_parent(p: &Path) -> io::Result<()> {
    match p.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Decompresses into a hashing sink, so NarHash/NarSize are known when the
/// upload ends.
enum NarSink {
    /// Uncompressed: the NAR is the file; its hash is the file hash.
    Plain,
    Zstd(zstd::stream::write::Decoder<'static, HashingWriter<io::Sink>>),
    Xz(xz2::write::XzDecoder<HashingWriter<io::Sink>>),
}

/// Files, index and signing key of one cache.
pub struct Store {
    data_dir: PathBuf,
    store_dir: String,
    /// Needed to accept uploads and to check signatures; maintenance
    /// commands (gc, pin, ls) run without it.
    key: Option<SecretKey>,
    conn: Mutex<Connection>,
}

// By hand: whether a key is loaded is printed, never the key itself.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.data_dir)
            .field("store_dir", &self.store_dir)
            .field("has_key", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// What `gc` keeps besides pins.
#[derive(Debug, Clone, Copy)]
pub struct GcPolicy {
    /// Paths uploaded within this period are kept, with their closures.
    pub grace: Duration,
    /// Of the generation pins (`[<project>/]generation-<N>`), only the K
    /// highest numbers of each group are kept; the others are unpinned.
    /// `None` keeps every pin.
    pub keep_generations: Option<usize>,
}

/// Generation numbers some worker still runs, by project (the control
/// plane's `ProjectStatus.liveGenerations`): their pins are kept beside the
/// newest `keep_generations`.
pub type LiveGenerations = BTreeMap<String, BTreeSet<u64>>;

/// Default for [`GcPolicy::keep_generations`] (`--keep-generations`).
pub const DEFAULT_KEEP_GENERATIONS: usize = 10;

/// The generation number of a generation pin: `<project>/generation-<N>`,
/// or `generation-<N>` as CI named them before pins were per project.
pub fn generation_of_pin(name: &str) -> Option<u64> {
    let base = name.rsplit_once('/').map_or(name, |(_, b)| b);
    let n = base.strip_prefix("generation-")?;
    if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Which generation pins retention drops: per group, all but the `keep`
/// highest numbers, and never a generation in `live` (an unprefixed pin
/// counts as project "default"'s). A group is the project prefix of the
/// name, or, for unprefixed (older) names, the pin's owner, so no token's
/// pins can push another owner's generations out.
fn excess_generation_pins(
    pins: &[(String, Option<String>)],
    keep: usize,
    live: &LiveGenerations,
) -> Vec<String> {
    /// Whose generations compete for the `keep` places.
    #[derive(PartialEq, Eq, Hash)]
    enum Group<'a> {
        Prefix(&'a str),
        Owner(Option<&'a str>),
    }
    let mut groups: HashMap<Group<'_>, Vec<(u64, &str)>> = HashMap::new();
    for (name, owner) in pins {
        let Some(n) = generation_of_pin(name) else {
            continue;
        };
        let key = match name.split_once('/') {
            Some((project, _)) => Group::Prefix(project),
            None => Group::Owner(owner.as_deref()),
        };
        groups.entry(key).or_default().push((n, name));
    }
    let is_live = |name: &str, n: u64| {
        let project = name.split_once('/').map_or("default", |(p, _)| p);
        live.get(project).is_some_and(|l| l.contains(&n))
    };
    let mut out = Vec::new();
    for mut list in groups.into_values() {
        list.sort_unstable_by(|a, b| b.cmp(a));
        out.extend(
            list.into_iter()
                .skip(keep)
                .filter(|(n, name)| !is_live(name, *n))
                .map(|(_, n)| n.to_owned()),
        );
    }
    out.sort();
    out
}

/// Everything reachable from `roots` through references, within `by_name`.
fn closure_of<'a>(
    roots: impl IntoIterator<Item = &'a str>,
    by_name: &HashMap<&'a str, &'a PathRow>,
) -> HashSet<&'a str> {
    let mut keep: HashSet<&str> = HashSet::new();
    let mut queue: VecDeque<&str> = roots.into_iter().collect();
    while let Some(p) = queue.pop_front() {
        if keep.insert(p)
            && let Some(row) = by_name.get(p)
        {
            queue.extend(row.references().filter(|r| by_name.contains_key(r)));
        }
    }
    keep
}

/// Bytes of the distinct NAR files of `paths` (two paths never share one in
/// practice, but a NAR is counted once if they do).
fn nar_bytes_of<'a>(
    paths: impl IntoIterator<Item = &'a str>,
    by_name: &HashMap<&'a str, &'a PathRow>,
) -> u64 {
    let mut seen = HashSet::new();
    paths
        .into_iter()
        .filter_map(|p| by_name.get(p))
        .filter(|r| seen.insert(r.url.as_str()))
        .map(|r| r.file_size)
        .sum()
}

/// The size of one pin's closure (`cache du`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinUsage {
    pub name: String,
    /// The prefix of `<project>/...`, else the owning project, else `None`.
    pub project: Option<String>,
    pub paths: usize,
    /// NAR bytes of the closure.
    pub bytes: u64,
    /// NAR bytes no other pin's closure holds: what unpinning frees (after
    /// the grace period).
    pub unique_bytes: u64,
}

/// What `cache du` reports: per project and per pin.
#[derive(Debug, Default)]
pub struct DuReport {
    pub pins: Vec<PinUsage>,
    /// (project or `None`, paths, NAR bytes of the union of its pins' closures).
    pub projects: Vec<(Option<String>, usize, u64)>,
    /// NAR bytes of every stored path.
    pub total_bytes: u64,
    /// NAR bytes outside every pin's closure (kept only by the grace period).
    pub unpinned_bytes: u64,
}

/// What `gc` found or did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Generation pins beyond the kept number, removed (or that would be).
    pub unpinned: Vec<String>,
    /// Build logs removed: of derivations no kept path was built by.
    pub logs: Vec<String>,
    pub roots: usize,
    pub kept: usize,
    /// Store path base names deleted (or that would be).
    pub deleted: Vec<String>,
    /// NAR files deleted (or that would be), including orphans of aborted pushes.
    pub nar_files: Vec<String>,
    pub freed_bytes: u64,
    /// narinfo files on disk with no index row.
    pub orphan_narinfos: Vec<String>,
}

/// One problem `verify` found.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Store path base name, or a file name for files outside the index.
    pub subject: String,
    pub what: String,
}

/// What `verify` found or did.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub problems: Vec<Problem>,
    /// Store paths moved aside (bad ones and the paths that reference them).
    pub quarantined: Vec<String>,
    /// NAR files no narinfo uses (left by interrupted pushes; `gc` removes them).
    pub orphan_nars: usize,
}

impl Store {
    /// Opens the cache in `data_dir`, creating its layout.
    pub fn open(
        data_dir: &Path,
        store_dir: &str,
        key: Option<SecretKey>,
    ) -> Result<Self, StoreError> {
        for sub in ["store/nar", "store/log", "tmp", "quarantine"] {
            let d = data_dir.join(sub);
            fs::create_dir_all(&d).map_err(io_ctx(format!("creating {}", d.display())))?;
        }
        let conn = index::open(&data_dir.join("index.sqlite"))?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            store_dir: store_dir.to_owned(),
            key,
            conn: Mutex::new(conn),
        })
    }

    /// The Nix store directory paths must lie in (normally `/nix/store`).
    pub fn store_dir(&self) -> &str {
        &self.store_dir
    }

    /// The signing key, when the store was opened with one.
    pub fn key(&self) -> Option<&SecretKey> {
        self.key.as_ref()
    }

    /// `<data dir>/store`, the `file://`-layout root that is served.
    pub fn root(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// File of a narinfo.
    pub fn narinfo_path(&self, hash_part: &str) -> PathBuf {
        self.data_dir
            .join("store")
            .join(format!("{hash_part}.narinfo"))
    }

    /// File of a NAR.
    pub fn nar_path(&self, file: &str) -> PathBuf {
        self.data_dir.join("store/nar").join(file)
    }

    /// File of a build log, by the derivation's base name (validate it
    /// with [`parse_log_name`] first).
    pub fn log_path(&self, drv: &str) -> PathBuf {
        self.data_dir.join("store/log").join(drv)
    }

    /// Stores the build log of derivation `drv` (a base name, checked
    /// here). A stored log is never replaced by a different one, so one
    /// project's token cannot rewrite what another's build printed; the
    /// same log again (nix re-uploads) is accepted.
    pub fn put_log(&self, drv: &str, data: &[u8]) -> Result<PutOutcome, UploadError> {
        if parse_log_name(drv).is_none() {
            return Err(UploadError::BadLogName(drv.to_owned()));
        }
        let dest = self.log_path(drv);
        match fs::read(&dest) {
            Ok(old) if old == data => return Ok(PutOutcome::AlreadyPresent),
            Ok(_) => return Err(UploadError::LogConflict(drv.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_ctx(format!("reading {}", dest.display()))(e).into()),
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(io_ctx("creating a temp file"))?;
        tmp.write_all(data).map_err(io_ctx("writing a build log"))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_ctx("syncing a build log"))?;
        // No-clobber rename: of two racing uploads of the same log, the
        // first one stays.
        match tmp.persist_noclobber(&dest) {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                if fs::read(&dest).is_ok_and(|old| old == data) {
                    Ok(PutOutcome::AlreadyPresent)
                } else {
                    Err(UploadError::LogConflict(drv.to_owned()))
                }
            }
            Err(e) => Err(io_ctx("storing a build log")(e.error).into()),
        }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes leftovers of uploads interrupted by a previous crash. Called
    /// when the server starts; one server per data dir.
    pub fn clean_tmp(&self) -> Result<usize, StoreError> {
        let dir = self.tmp_dir();
        let mut n = 0;
        for e in fs::read_dir(&dir).map_err(io_ctx(format!("listing {}", dir.display())))? {
            let e = e.map_err(io_ctx("listing tmp"))?;
            if fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Removes narinfo files the index lacks: left by a crash between the
    /// narinfo's rename and its transaction's commit, so never committed
    /// (the uploader got no answer and uploads it again). Run at start,
    /// before serving; returns how many were removed.
    pub fn drop_uncommitted_narinfos(&self) -> Result<usize, StoreError> {
        let known: HashSet<String> = index::all_paths(&self.conn())?
            .into_iter()
            .map(|r| r.hash_part)
            .collect();
        let mut n = 0;
        for e in fs::read_dir(self.root()).map_err(io_ctx("listing store dir"))? {
            let e = e.map_err(io_ctx("listing store dir"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(h) = name.strip_suffix(".narinfo")
                && !known.contains(h)
                && fs::remove_file(e.path()).is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Number of stored paths.
    pub fn count_paths(&self) -> Result<u64, StoreError> {
        Ok(index::count_paths(&self.conn())?)
    }

    /// Receives a NAR upload: writes it to a temp file while hashing it and,
    /// decompressed, hashing the NAR; renames it into place only when its
    /// content hash equals the hash in its name. Blocking; run off the runtime.
    pub fn receive_nar(
        &self,
        file: &str,
        mut rx: tokio::sync::mpsc::Receiver<Chunk>,
        limit: u64,
    ) -> Result<NarRow, UploadError> {
        let (named, comp) =
            parse_nar_file_name(file).ok_or_else(|| UploadError::BadNarName(file.to_owned()))?;
        check_accepted(comp)?;
        let tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(io_ctx("creating temp file"))?;
        let out = BufWriter::with_capacity(
            1 << 20,
            tmp.as_file().try_clone().map_err(io_ctx("temp file"))?,
        );
        let mut file_w = HashingWriter::new(out, limit);
        // Decompressed NARs may be much larger than the upload limit, but not unboundedly.
        let nar_limit = limit.saturating_mul(16);
        let mut sink = match comp {
            Compression::None => NarSink::Plain,
            Compression::Zstd => NarSink::Zstd(
                zstd::stream::write::Decoder::new(HashingWriter::new(io::sink(), nar_limit))
                    .map_err(io_ctx("zstd decoder"))?,
            ),
            _ => NarSink::Xz(xz2::write::XzDecoder::new_multi_decoder(
                HashingWriter::new(io::sink(), nar_limit),
            )),
        };
        let corrupt = |e: io::Error| {
            if e.kind() == io::ErrorKind::FileTooLarge {
                UploadError::TooLarge(nar_limit)
            } else {
                UploadError::Corrupt(comp.as_str(), e.to_string())
            }
        };
        let mut ended = false;
        while let Some(chunk) = rx.blocking_recv() {
            match chunk {
                Chunk::Data(b) => {
                    file_w.write_all(&b).map_err(|e| {
                        if e.kind() == io::ErrorKind::FileTooLarge {
                            UploadError::TooLarge(limit)
                        } else {
                            UploadError::Io {
                                context: "writing temp file".into(),
                                source: e,
                            }
                        }
                    })?;
                    match &mut sink {
                        NarSink::Plain => {}
                        NarSink::Zstd(d) => d.write_all(&b).map_err(corrupt)?,
                        NarSink::Xz(d) => d.write_all(&b).map_err(corrupt)?,
                    }
                }
                Chunk::End => {
                    ended = true;
                    break;
                }
            }
        }
        if !ended {
            return Err(UploadError::Truncated);
        }
        let (file_hash, file_size, out) = file_w.finish();
        let (nar_hash, nar_size) = match sink {
            NarSink::Plain => (file_hash, file_size),
            NarSink::Zstd(mut d) => {
                d.flush().map_err(corrupt)?;
                let (h, n, _) = d.into_inner().finish();
                (h, n)
            }
            NarSink::Xz(mut d) => {
                let (h, n, _) = d.finish().map_err(corrupt)?.finish();
                (h, n)
            }
        };
        if file_hash != named {
            return Err(UploadError::FileHashMismatch {
                named: named.to_base32(),
                actual: file_hash.to_base32(),
            });
        }
        out.into_inner().map_err(|e| UploadError::Io {
            context: "flushing temp file".into(),
            source: e.into_error(),
        })?;
        tmp.as_file()
            .sync_all()
            .map_err(io_ctx("syncing temp file"))?;
        let dest = self.nar_path(file);
        // Identical concurrent uploads rename identical content onto the
        // same name: the last rename wins and one copy remains.
        tmp.persist(&dest).map_err(|e| UploadError::Io {
            context: "renaming NAR".into(),
            source: e.error,
        })?;
        sync_parent(&dest).map_err(io_ctx("syncing nar dir"))?;
        let row = NarRow {
            file: file.to_owned(),
            file_hash: file_hash.to_string(),
            file_size,
            nar_hash: nar_hash.to_string(),
            nar_size,
            uploaded_at: now(),
        };
        index::upsert_nar(&self.conn(), &row)?;
        Ok(row)
    }

    /// Measures a NAR file already on disk (one renamed into place just
    /// before a crash, before its hashes were recorded).
    fn measure_nar(&self, file: &str) -> Result<NarRow, UploadError> {
        let (_, comp) =
            parse_nar_file_name(file).ok_or_else(|| UploadError::BadNarName(file.to_owned()))?;
        let m = measure_file(&self.nar_path(file), comp).map_err(|e| match e {
            MeasureError::Io(source) => UploadError::Io {
                context: format!("reading nar/{file}"),
                source,
            },
            MeasureError::Nar(e) => UploadError::Corrupt(comp.as_str(), e.to_string()),
        })?;
        let row = NarRow {
            file: file.to_owned(),
            file_hash: m.file_hash.to_string(),
            file_size: m.file_size,
            nar_hash: m.nar_hash.to_string(),
            nar_size: m.nar_size,
            uploaded_at: now(),
        };
        index::upsert_nar(&self.conn(), &row)?;
        Ok(row)
    }

    /// Accepts a narinfo upload for `hash_part` after checking it against
    /// its uploaded NAR and the presence of its references, signs it with
    /// the cache key and makes it visible, recording `project` (whose
    /// token uploaded it; `None`: the all-projects token). A path already
    /// stored is never replaced: the same content is a no-op, other
    /// content a conflict.
    pub fn put_narinfo(
        &self,
        hash_part: &str,
        body: &[u8],
        project: Option<&str>,
    ) -> Result<PutOutcome, UploadError> {
        let text = std::str::from_utf8(body).map_err(|_| UploadError::NotUtf8)?;
        let ni = NarInfo::parse(text, &self.store_dir)?;
        if ni.store_path.hash_part() != hash_part {
            return Err(UploadError::HashPartMismatch {
                store_path: ni.store_path.to_string(),
                url_hash: hash_part.to_owned(),
            });
        }
        let file = ni
            .url
            .strip_prefix("nar/")
            .filter(|f| parse_nar_file_name(f).is_some_and(|(_, c)| c == ni.compression))
            .ok_or_else(|| UploadError::BadUrl(ni.url.clone()))?
            .to_owned();
        check_accepted(ni.compression)?;
        let nar_file = self.nar_path(&file);
        let recorded = index::get_nar(&self.conn(), &file)?;
        let nar = match recorded {
            Some(r) if nar_file.exists() => r,
            _ if nar_file.exists() => self.measure_nar(&file)?,
            _ => return Err(UploadError::MissingNar(ni.url.clone())),
        };
        let mismatch = |field, claimed: String, actual: &str| {
            if claimed == actual {
                Ok(())
            } else {
                Err(UploadError::Mismatch {
                    field,
                    claimed,
                    actual: actual.to_owned(),
                })
            }
        };
        if let Some(h) = ni.file_hash {
            mismatch("FileHash", h.to_string(), &nar.file_hash)?;
        }
        if let Some(n) = ni.file_size {
            mismatch("FileSize", n.to_string(), &nar.file_size.to_string())?;
        }
        mismatch("NarHash", ni.nar_hash.to_string(), &nar.nar_hash)?;
        mismatch(
            "NarSize",
            ni.nar_size.to_string(),
            &nar.nar_size.to_string(),
        )?;

        let served = NarInfo {
            file_hash: Some(
                Sha256Hash::parse(&nar.file_hash).map_err(|e| UploadError::Io {
                    context: "index holds a bad FileHash".into(),
                    source: io::Error::other(e),
                })?,
            ),
            file_size: Some(nar.file_size),
            // Only the cache's own signature: pushers hold no signing key.
            sigs: Vec::new(),
            ..ni
        };
        let key = self.key.as_ref().ok_or(UploadError::NoKey)?;
        let sig = key.sign(&served.fingerprint(&self.store_dir));
        let served = NarInfo {
            sigs: vec![sig],
            ..served
        };
        let rendered = served.render(&self.store_dir);

        let mut conn = self.conn();
        // IMMEDIATE: take the write lock before checking references, so a
        // concurrent `gc` (another process) cannot delete one in between.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(IndexError::from)?;
        let dest = self.narinfo_path(hash_part);
        if let Some(existing) = index::get_path(&tx, hash_part)? {
            if existing.store_path == served.store_path.as_str()
                && existing.nar_hash == served.nar_hash.to_string()
            {
                // Repair a narinfo file lost to a crash between commit and rename.
                if !dest.exists() {
                    write_atomic(&self.tmp_dir(), &dest, existing.narinfo.as_bytes())
                        .map_err(io_ctx("writing narinfo"))?;
                }
                return Ok(PutOutcome::AlreadyPresent);
            }
            return Err(UploadError::Conflict(
                served.store_path.full(&self.store_dir),
            ));
        }
        let mut missing = Vec::new();
        for r in &served.references {
            if r != &served.store_path
                && index::get_path(&tx, r.hash_part())?.is_none_or(|p| p.store_path != r.as_str())
            {
                missing.push(r.full(&self.store_dir));
            }
        }
        if !missing.is_empty() {
            return Err(UploadError::MissingReferences(missing.join(" ")));
        }
        // gc removes NAR files under the same lock; check again now that we hold it.
        if !nar_file.exists() {
            return Err(UploadError::MissingNar(served.url.clone()));
        }
        let refs: Vec<&str> = served
            .references
            .iter()
            .map(StorePathName::as_str)
            .collect();
        index::insert_path(
            &tx,
            &PathRow {
                hash_part: hash_part.to_owned(),
                store_path: served.store_path.to_string(),
                url: served.url.clone(),
                compression: served.compression.as_str().to_owned(),
                file_hash: nar.file_hash.clone(),
                file_size: nar.file_size,
                nar_hash: nar.nar_hash.clone(),
                nar_size: nar.nar_size,
                refs: refs.join(" "),
                narinfo: rendered.clone(),
                uploaded_at: now(),
            },
        )?;
        index::set_uploader(&tx, hash_part, project)?;
        // The narinfo file is the commit marker clients see. It is written
        // while the transaction holds the lock; a crash between rename and
        // commit leaves a narinfo whose NAR exists but that the index lacks
        // (the next start removes it: drop_uncommitted_narinfos) — never a
        // narinfo without its NAR.
        write_atomic(&self.tmp_dir(), &dest, rendered.as_bytes())
            .map_err(io_ctx("writing narinfo"))?;
        if let Err(e) = tx.commit() {
            let _ = fs::remove_file(&dest);
            return Err(IndexError::from(e).into());
        }
        Ok(PutOutcome::Created)
    }

    /// Resolves `/nix/store/h-n`, `h-n` or `h` to the stored row.
    pub fn lookup(&self, arg: &str) -> Result<PathRow, StoreError> {
        let base = arg
            .strip_prefix(&self.store_dir)
            .map(|s| s.trim_start_matches('/'))
            .unwrap_or(arg);
        // Say what a store path looks like: the bare argument alone
        // ("error: /nix/store/zzzz") left the user guessing.
        let hash = base.get(..32).filter(|h| is_hash_part(h)).ok_or_else(|| {
            StoreError::BadPath(format!(
                "{arg} is not a store path: expected {}/HASH-NAME, HASH-NAME or HASH, \
                     where HASH is 32 characters of Nix base32 (0-9 and a-z without e, o, u, t)",
                self.store_dir
            ))
        })?;
        let row = index::get_path(&self.conn(), hash)?
            .ok_or_else(|| StoreError::NotFound(arg.to_owned()))?;
        if base.len() > 32 && row.store_path != base {
            return Err(StoreError::NotFound(arg.to_owned()));
        }
        Ok(row)
    }

    /// Pins (replacing) `name` to the given full store paths, which must be
    /// in the cache; their closures survive gc. The pin belongs to
    /// `project` (`None`: the all-projects token, which may replace any
    /// pin); a project may not replace another's.
    pub fn set_pin(
        &self,
        name: &str,
        paths: &[String],
        project: Option<&str>,
    ) -> Result<(), StoreError> {
        check_pin_name(name)?;
        let mut bases = Vec::new();
        for p in paths {
            let sp = StorePathName::from_full(p, &self.store_dir)
                .map_err(|e| StoreError::BadPath(e.to_string()))?;
            bases.push(sp);
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(IndexError::from)?;
        let mut missing = Vec::new();
        for b in &bases {
            if index::get_path(&tx, b.hash_part())?.is_none_or(|r| r.store_path != b.as_str()) {
                missing.push(b.full(&self.store_dir));
            }
        }
        if !missing.is_empty() {
            return Err(StoreError::NotFound(missing.join(" ")));
        }
        check_pin_owner(name, index::pin_owner(&tx, name)?, project)?;
        let names: Vec<String> = bases.iter().map(ToString::to_string).collect();
        index::set_pin(&tx, name, &names, project, now())?;
        tx.commit().map_err(IndexError::from)?;
        Ok(())
    }

    /// Removes pin `name`; false when there was none. A project may only
    /// remove its own pins.
    pub fn delete_pin(&self, name: &str, project: Option<&str>) -> Result<bool, StoreError> {
        check_pin_name(name)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(IndexError::from)?;
        check_pin_owner(name, index::pin_owner(&tx, name)?, project)?;
        let deleted = index::delete_pin(&tx, name)?;
        tx.commit().map_err(IndexError::from)?;
        Ok(deleted)
    }

    /// Which project's token uploaded a stored path (`/nix/store/h-n`,
    /// `h-n` or `h`): `None` for the all-projects token.
    pub fn uploader(&self, arg: &str) -> Result<Option<String>, StoreError> {
        let row = self.lookup(arg)?;
        Ok(index::uploader(&self.conn(), &row.hash_part)?.flatten())
    }

    /// All pins as (name, full store path).
    pub fn pins(&self) -> Result<Vec<(String, String)>, StoreError> {
        let pins = index::all_pins(&self.conn())?;
        Ok(pins
            .into_iter()
            .map(|(n, p)| (n, format!("{}/{p}", self.store_dir)))
            .collect())
    }

    /// Deletes what is neither in the closure of a pinned path nor in the
    /// closure of a path uploaded within the grace period, after dropping
    /// the generation pins past `keep_generations`; also NAR files no kept
    /// narinfo uses and build logs no kept path names as its deriver (both
    /// older than the grace period) and narinfo files the index lacks.
    /// With `delete == false` only reports.
    pub fn gc(&self, policy: &GcPolicy, delete: bool) -> Result<GcReport, StoreError> {
        self.gc_keeping(policy, &LiveGenerations::new(), delete)
    }

    /// [`Self::gc`], keeping the pins of the generations in `live` however
    /// old they are.
    pub fn gc_keeping(
        &self,
        policy: &GcPolicy,
        live: &LiveGenerations,
        delete: bool,
    ) -> Result<GcReport, StoreError> {
        let mut conn = self.conn();
        // The write lock is held for the whole collection, so no upload can
        // add a reference to a victim or name a NAR file being removed.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(IndexError::from)?;
        let rows = index::all_paths(&tx)?;
        let by_name: HashMap<&str, &PathRow> =
            rows.iter().map(|r| (r.store_path.as_str(), r)).collect();
        let cutoff = now() - policy.grace.as_secs() as i64;
        let unpinned = match policy.keep_generations {
            Some(k) => excess_generation_pins(&index::pin_names(&tx)?, k, live),
            None => Vec::new(),
        };
        let dropped: HashSet<&str> = unpinned.iter().map(String::as_str).collect();
        let pins = index::all_pins(&tx)?;
        let mut roots: BTreeSet<&str> = pins
            .iter()
            .filter(|(n, _)| !dropped.contains(n.as_str()))
            .map(|(_, p)| p.as_str())
            .filter(|p| by_name.contains_key(p))
            .collect();
        roots.extend(
            rows.iter()
                .filter(|r| r.uploaded_at > cutoff)
                .map(|r| r.store_path.as_str()),
        );
        let mut report = GcReport {
            roots: roots.len(),
            ..GcReport::default()
        };
        let keep = closure_of(roots, &by_name);
        report.kept = keep.len();
        let victims: Vec<&PathRow> = rows
            .iter()
            .filter(|r| !keep.contains(r.store_path.as_str()))
            .collect();
        report.deleted = victims.iter().map(|r| r.store_path.clone()).collect();
        let kept_urls: HashSet<&str> = rows
            .iter()
            .filter(|r| keep.contains(r.store_path.as_str()))
            .map(|r| r.url.as_str())
            .collect();
        let known: HashSet<&str> = rows.iter().map(|r| r.hash_part.as_str()).collect();

        let store = self.root();
        let nar_dir = store.join("nar");
        let (doomed_nars, nar_bytes) = stale_files(&nar_dir, cutoff, |name| {
            kept_urls.contains(format!("nar/{name}").as_str())
        })?;
        report.freed_bytes += nar_bytes;
        for e in fs::read_dir(&store).map_err(io_ctx("listing store dir"))? {
            let e = e.map_err(io_ctx("listing store dir"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(h) = name.strip_suffix(".narinfo")
                && !known.contains(h)
            {
                report.orphan_narinfos.push(name);
            }
        }
        report.nar_files = doomed_nars.clone();
        // A log stays while a kept path names its derivation as deriver,
        // and through the grace period (CI uploads logs before pinning).
        let derivers: HashSet<&str> = rows
            .iter()
            .filter(|r| keep.contains(r.store_path.as_str()))
            .filter_map(|r| r.narinfo.lines().find_map(|l| l.strip_prefix("Deriver: ")))
            .map(str::trim)
            .collect();
        let log_dir = store.join("log");
        let (logs, log_bytes) = stale_files(&log_dir, cutoff, |name| derivers.contains(name))?;
        report.freed_bytes += log_bytes;
        report.logs = logs;
        report.unpinned = unpinned;
        if !delete {
            return Ok(report);
        }
        for name in &report.unpinned {
            index::delete_pin(&tx, name)?;
        }
        for l in &report.logs {
            remove_if_exists(&log_dir.join(l))?;
        }
        // Order: narinfo files first (stop serving), then rows, then NARs.
        for v in &victims {
            remove_if_exists(&self.narinfo_path(&v.hash_part))?;
        }
        for o in &report.orphan_narinfos {
            remove_if_exists(&store.join(o))?;
        }
        for v in &victims {
            index::delete_path(&tx, &v.hash_part)?;
        }
        for n in &doomed_nars {
            remove_if_exists(&nar_dir.join(n))?;
            index::delete_nar(&tx, n)?;
        }
        tx.commit().map_err(IndexError::from)?;
        Ok(report)
    }

    /// NAR bytes the cache holds (the `cache_bytes` gauge).
    pub fn nar_bytes(&self) -> Result<u64, StoreError> {
        Ok(index::nar_bytes(&self.conn())?)
    }

    /// Sizes per pin and per project (`cache du`).
    pub fn du(&self) -> Result<DuReport, StoreError> {
        let conn = self.conn();
        let rows = index::all_paths(&conn)?;
        let by_name: HashMap<&str, &PathRow> =
            rows.iter().map(|r| (r.store_path.as_str(), r)).collect();
        let owners: HashMap<String, Option<String>> =
            index::pin_names(&conn)?.into_iter().collect();
        let mut pin_roots: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, path) in index::all_pins(&conn)? {
            pin_roots.entry(name).or_default().push(path);
        }
        drop(conn);
        let closures: Vec<(&String, HashSet<&str>)> = pin_roots
            .iter()
            .map(|(n, roots)| {
                let c = closure_of(
                    roots
                        .iter()
                        .map(String::as_str)
                        .filter(|p| by_name.contains_key(p)),
                    &by_name,
                );
                (n, c)
            })
            .collect();
        let mut holders: HashMap<&str, usize> = HashMap::new();
        for (_, c) in &closures {
            for p in c {
                *holders.entry(p).or_insert(0) += 1;
            }
        }
        let mut report = DuReport {
            total_bytes: nar_bytes_of(by_name.keys().copied(), &by_name),
            ..DuReport::default()
        };
        let mut per_project: BTreeMap<Option<String>, HashSet<&str>> = BTreeMap::new();
        for (name, c) in &closures {
            let project = name
                .split_once('/')
                .map(|(p, _)| p.to_owned())
                .or_else(|| owners.get(*name).cloned().flatten());
            report.pins.push(PinUsage {
                name: (*name).clone(),
                project: project.clone(),
                paths: c.len(),
                bytes: nar_bytes_of(c.iter().copied(), &by_name),
                unique_bytes: nar_bytes_of(
                    c.iter().copied().filter(|p| holders.get(p) == Some(&1)),
                    &by_name,
                ),
            });
            per_project
                .entry(project)
                .or_default()
                .extend(c.iter().copied());
        }
        report.projects = per_project
            .into_iter()
            .map(|(p, c)| {
                let bytes = nar_bytes_of(c.iter().copied(), &by_name);
                (p, c.len(), bytes)
            })
            .collect();
        report.unpinned_bytes = nar_bytes_of(
            by_name.keys().copied().filter(|p| !holders.contains_key(p)),
            &by_name,
        );
        Ok(report)
    }

    /// Re-checks every stored path: narinfo file equals the index and
    /// carries a valid signature by our key; the NAR file exists and its
    /// FileHash/FileSize and, decompressed and parsed, NarHash/NarSize
    /// match. With `quarantine`, bad paths and the paths whose closure
    /// includes them are moved to `quarantine/` and dropped from the index.
    pub fn verify(&self, quarantine: bool) -> Result<VerifyReport, StoreError> {
        let rows = index::all_paths(&self.conn())?;
        let public = self.key.as_ref().map(SecretKey::public);
        let mut report = VerifyReport {
            checked: rows.len(),
            ..VerifyReport::default()
        };
        let mut bad: BTreeSet<String> = BTreeSet::new();
        let mut problem = |report: &mut VerifyReport, subject: &str, what: String| {
            report.problems.push(Problem {
                subject: subject.to_owned(),
                what,
            });
            bad.insert(subject.to_owned());
        };
        for row in &rows {
            let subject = row.store_path.as_str();
            match fs::read_to_string(self.narinfo_path(&row.hash_part)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    problem(&mut report, subject, "narinfo file missing".into())
                }
                Err(e) => problem(
                    &mut report,
                    subject,
                    format!("narinfo file unreadable: {e}"),
                ),
                Ok(text) if text != row.narinfo => problem(
                    &mut report,
                    subject,
                    "narinfo file differs from the index (tampered?)".into(),
                ),
                Ok(text) => match NarInfo::parse(&text, &self.store_dir) {
                    Ok(ni) => {
                        let fp = ni.fingerprint(&self.store_dir);
                        if public
                            .as_ref()
                            .is_some_and(|k| !ni.sigs.iter().any(|s| k.verify(&fp, s)))
                        {
                            problem(
                                &mut report,
                                subject,
                                "narinfo lacks a valid signature by the cache key".into(),
                            );
                        }
                    }
                    Err(e) => problem(&mut report, subject, format!("narinfo does not parse: {e}")),
                },
            }
            let file = row.url.strip_prefix("nar/").unwrap_or(&row.url);
            let Some((_, comp)) = parse_nar_file_name(file) else {
                problem(&mut report, subject, format!("bad URL {}", row.url));
                continue;
            };
            match measure_file(&self.nar_path(file), comp) {
                Err(MeasureError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    problem(&mut report, subject, format!("NAR {} missing", row.url))
                }
                Err(e) => problem(&mut report, subject, format!("NAR {}: {e}", row.url)),
                Ok(m) => {
                    let checks = [
                        ("FileHash", m.file_hash.to_string(), row.file_hash.clone()),
                        (
                            "FileSize",
                            m.file_size.to_string(),
                            row.file_size.to_string(),
                        ),
                        ("NarHash", m.nar_hash.to_string(), row.nar_hash.clone()),
                        ("NarSize", m.nar_size.to_string(), row.nar_size.to_string()),
                    ];
                    for (field, actual, want) in checks {
                        if actual != want {
                            problem(
                                &mut report,
                                subject,
                                format!("{field} is {actual}, index says {want}"),
                            );
                        }
                    }
                }
            }
        }
        let known: HashSet<&str> = rows.iter().map(|r| r.hash_part.as_str()).collect();
        let urls: HashSet<&str> = rows.iter().map(|r| r.url.as_str()).collect();
        for e in fs::read_dir(self.root()).map_err(io_ctx("listing store dir"))? {
            let name = e
                .map_err(io_ctx("listing store dir"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if let Some(h) = name.strip_suffix(".narinfo")
                && !known.contains(h)
            {
                report.problems.push(Problem {
                    subject: name.clone(),
                    what: "narinfo file not in the index".into(),
                });
            }
        }
        for e in fs::read_dir(self.root().join("nar")).map_err(io_ctx("listing nar dir"))? {
            let name = e
                .map_err(io_ctx("listing nar dir"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !urls.contains(format!("nar/{name}").as_str()) {
                report.orphan_nars += 1;
            }
        }
        if quarantine && !bad.is_empty() {
            report.quarantined = self.quarantine(&rows, &bad)?;
        }
        Ok(report)
    }

    fn quarantine(
        &self,
        rows: &[PathRow],
        bad: &BTreeSet<String>,
    ) -> Result<Vec<String>, StoreError> {
        // Everything whose closure contains a bad path goes too: nix cannot
        // copy a closure with a hole.
        let mut doomed: BTreeSet<&str> = bad.iter().map(String::as_str).collect();
        loop {
            let before = doomed.len();
            for r in rows {
                if r.references()
                    .any(|x| doomed.contains(x) && x != r.store_path)
                {
                    doomed.insert(r.store_path.as_str());
                }
            }
            if doomed.len() == before {
                break;
            }
        }
        let dir = self.data_dir.join("quarantine").join(now().to_string());
        fs::create_dir_all(dir.join("nar")).map_err(io_ctx("creating quarantine dir"))?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(IndexError::from)?;
        let mut moved = Vec::new();
        for r in rows
            .iter()
            .filter(|r| doomed.contains(r.store_path.as_str()))
        {
            let src = self.narinfo_path(&r.hash_part);
            if src.exists() {
                fs::rename(&src, dir.join(format!("{}.narinfo", r.hash_part)))
                    .map_err(io_ctx("moving narinfo"))?;
            }
            index::delete_path(&tx, &r.hash_part)?;
            if bad.contains(&r.store_path) && !index::url_in_use(&tx, &r.url)? {
                let file = r.url.strip_prefix("nar/").unwrap_or(&r.url);
                let nar = self.nar_path(file);
                if nar.exists() {
                    fs::rename(&nar, dir.join("nar").join(file)).map_err(io_ctx("moving NAR"))?;
                }
                index::delete_nar(&tx, file)?;
            }
            moved.push(r.store_path.clone());
        }
        tx.commit().map_err(IndexError::from)?;
        Ok(moved)
    }

    /// Lists the files inside a stored path's NAR.
    pub fn ls(&self, arg: &str) -> Result<Vec<nar::Entry>, StoreError> {
        let row = self.lookup(arg)?;
        let file = row.url.strip_prefix("nar/").unwrap_or(&row.url);
        let comp = parse_nar_file_name(file)
            .map(|(_, c)| c)
            .ok_or_else(|| StoreError::BadPath(row.url.clone()))?;
        let f =
            fs::File::open(self.nar_path(file)).map_err(io_ctx(format!("opening {}", row.url)))?;
        let r = decompressor(io::BufReader::new(f), comp).map_err(io_ctx("decompressing"))?;
        Ok(nar::list(r)?)
    }
}

fn check_accepted(c: Compression) -> Result<(), UploadError> {
    match c {
        Compression::None | Compression::Zstd | Compression::Xz => Ok(()),
        other => Err(UploadError::UnsupportedCompression(other.as_str())),
    }
}

/// A build log's name: the base name of a store derivation
/// (`<hash>-<name>.drv`), which is what nix puts after `log/`.
pub fn parse_log_name(name: &str) -> Option<StorePathName> {
    StorePathName::parse(name)
        .ok()
        .filter(|n| n.as_str().ends_with(".drv"))
}

/// A pin name: `<name>` or `<project>/<name>` (one project prefix, as
/// CI's `<project>/generation-<N>`), each name of A-Z a-z 0-9 . _ -.
fn check_pin_name(name: &str) -> Result<(), StoreError> {
    let (prefix_ok, rest) = match name.split_once('/') {
        Some((p, rest)) => (crate::is_project_name(p), rest),
        None => (true, name),
    };
    let ok = prefix_ok
        && !rest.is_empty()
        && name.len() <= 128
        && rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        && rest != "."
        && rest != "..";
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadPinName(name.to_owned()))
    }
}

/// Files of `dir` that `kept` does not claim and that were last written
/// at or before `cutoff` (seconds): their names and total size.
fn stale_files(
    dir: &Path,
    cutoff: i64,
    kept: impl Fn(&str) -> bool,
) -> Result<(Vec<String>, u64), StoreError> {
    let listing = || io_ctx(format!("listing {}", dir.display()));
    let mut names = Vec::new();
    let mut bytes = 0;
    for e in fs::read_dir(dir).map_err(listing())? {
        let e = e.map_err(listing())?;
        let name = e.file_name().to_string_lossy().into_owned();
        if kept(&name) {
            continue;
        }
        let meta = e.metadata().map_err(io_ctx(format!("stat {name}")))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        if mtime.is_none_or(|m| m <= cutoff) {
            bytes += meta.len();
            names.push(name);
        }
    }
    Ok((names, bytes))
}

fn remove_if_exists(p: &Path) -> Result<(), StoreError> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
            context: format!("removing {}", p.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn decompressor<'a, R: io::BufRead + 'a>(
    r: R,
    comp: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match comp {
        Compression::None => Box::new(r),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(r)),
        other => {
            return Err(io::Error::other(format!(
                "cannot decompress {}",
                other.as_str()
            )));
        }
    })
}

/// Hashes read through it.
struct HashingReader<R> {
    inner: R,
    w: HashingWriter<io::Sink>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl<R: io::BufRead> io::BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            let _ = self.w.write_all(&buf[..amt]);
        }
        self.inner.consume(amt)
    }
}

/// Hashes and sizes of a NAR file on disk.
struct Measured {
    file_hash: Sha256Hash,
    file_size: u64,
    nar_hash: Sha256Hash,
    nar_size: u64,
}

#[derive(Debug, thiserror::Error)]
enum MeasureError {
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Nar(NarError),
}

/// Reads a NAR file, decompresses it, parses the NAR (structure check) and
/// returns both hashes.
fn measure_file(path: &Path, comp: Compression) -> Result<Measured, MeasureError> {
    let f = fs::File::open(path).map_err(MeasureError::Io)?;
    let mut outer = HashingReader {
        inner: io::BufReader::with_capacity(1 << 20, f),
        w: HashingWriter::new(io::sink(), u64::MAX),
    };
    let (nar_hash, nar_size) = {
        let dec = decompressor(&mut outer, comp).map_err(MeasureError::Io)?;
        let mut inner = HashingReader {
            inner: dec,
            w: HashingWriter::new(io::sink(), u64::MAX),
        };
        nar::list(&mut inner).map_err(MeasureError::Nar)?;
        let (h, n, _) = inner.w.finish();
        (h, n)
    };
    // Trailing bytes after the compressed stream still count for FileHash.
    io::copy(&mut outer, &mut io::sink()).map_err(MeasureError::Io)?;
    let (file_hash, file_size, _) = outer.w.finish();
    Ok(Measured {
        file_hash,
        file_size,
        nar_hash,
        nar_size,
    })
}

#[cfg(test)]
mod upload_error_tests {
    use super::*;

    /// Regression (fault suite, full disk): a full disk answered 500 and
    /// nix 2.8 hung retrying the PUT; it must be a 4xx saying why.
    #[test]
    fn a_full_disk_is_a_4xx_with_its_own_reason() {
        let full = UploadError::Io {
            context: "writing tmp".into(),
            source: io::Error::from(io::ErrorKind::StorageFull),
        };
        assert!(full.is_disk_full());
        assert_eq!(full.status(), 413);
        assert_eq!(full.reason(), "disk_full");
        let sqlite_full = UploadError::Index(IndexError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        )));
        assert_eq!(sqlite_full.status(), 413);
        let other = UploadError::Io {
            context: "x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(!other.is_disk_full());
        assert_eq!(other.status(), 500);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_take_one_project_prefix() {
        for ok in ["gen-1", "shop/generation-3", "a.b_c-d", "shop-2/live"] {
            assert!(check_pin_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "..", "shop/..", "shop/", "/x", "Shop/x", "a/b/c", "shop/a b", "x/y\n",
        ] {
            assert!(check_pin_name(bad).is_err(), "{bad:?}");
        }
        // A project token stays under its own prefix.
        assert!(check_pin_owner("shop/generation-1", None, Some("shop")).is_ok());
        let e = check_pin_owner("blog/generation-1", None, Some("shop")).unwrap_err();
        assert!(e.to_string().contains("may only pin under shop/"), "{e}");
        assert!(check_pin_owner("blog/generation-1", None, None).is_ok());
    }

    #[test]
    fn retention_drops_all_but_the_highest_generations_of_each_group() {
        assert_eq!(generation_of_pin("shop/generation-12"), Some(12));
        assert_eq!(generation_of_pin("generation-3"), Some(3));
        for not in [
            "shop/generation-",
            "generation-x",
            "gen-1",
            "shop/live",
            "generation-+1",
        ] {
            assert_eq!(generation_of_pin(not), None, "{not}");
        }
        let shop = Some("shop".to_owned());
        let pins: Vec<(String, Option<String>)> = vec![
            ("shop/generation-1".into(), shop.clone()),
            ("shop/generation-2".into(), shop.clone()),
            ("shop/generation-10".into(), shop.clone()),
            ("shop/generation-9".into(), None),
            ("shop/live".into(), shop.clone()),
            ("blog/generation-1".into(), None),
            // Unprefixed pins group by owner: shop's token cannot push the
            // all-projects token's old generations out.
            ("generation-1".into(), None),
            ("generation-2".into(), None),
            ("generation-50".into(), shop.clone()),
            ("generation-51".into(), shop.clone()),
            ("generation-52".into(), shop.clone()),
        ];
        let none = LiveGenerations::new();
        assert_eq!(
            excess_generation_pins(&pins, 2, &none),
            vec![
                "generation-50".to_owned(),
                "shop/generation-1".to_owned(),
                "shop/generation-2".to_owned(),
            ]
        );
        assert!(excess_generation_pins(&pins, 3, &none).contains(&"shop/generation-1".to_owned()));
        assert_eq!(excess_generation_pins(&pins, 3, &none).len(), 1);
        // A generation some worker still runs keeps its pin however old;
        // another project's live numbers protect nothing of shop's.
        let live: LiveGenerations = [
            ("shop".to_owned(), [1].into()),
            ("blog".to_owned(), [2].into()),
            ("default".to_owned(), [50].into()),
        ]
        .into();
        assert_eq!(
            excess_generation_pins(&pins, 2, &live),
            vec!["shop/generation-2".to_owned()]
        );
    }
}
