//! The worker's run directory, in three parts by who may write there:
//! - the root (the worker's only): per VM `<id>.json` (the record written
//!   before the spawn, for adoption) and `<id>-ch.log` (CH's own
//!   stdout/stderr);
//! - `vm/` (mode 0700, owned by `--vm-user` when set: CH creates files
//!   here): `<id>.sock` (CH's API socket), `<id>.sock.lock` (CH's) and
//!   `<id>.qcow2` (the qcow2 overlay of the store image) or `<id>.disk` (a
//!   raw copy of it), made by the worker and given to the VM user;
//! - `console/` (the worker's; others may only pass through it):
//!   `<id>-serial.log` (CH's serial file, made by the worker and given to
//!   the VM user, truncated by CH at every boot), `<id>-console.log` and
//!   `<id>-console.log.1` (the bounded console history the worker keeps
//!   across boots) and `<id>-console.pos` (how far into the serial file it
//!   has copied). The console lives apart from the disks, and the VM user
//!   cannot create, rename or link anything next to the worker's files.
//!
//! The directory is the worker's only persistent state: a restarted worker
//! rebuilds its table from it.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::disk::DiskMode;
use crate::dto::{VmId, VmRecord};
use crate::vmm::config::VmPaths;
use crate::vmm::user::VmOwner;

/// The subdirectory of files the hypervisor creates (see the module doc).
const VM_DIR: &str = "vm";
/// The subdirectory of console files.
const CONSOLE_DIR: &str = "console";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot create run directory {}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the VM user (uid {uid}) cannot pass through {} (mode {mode:04o}, owner {owner}); \
         allow others to enter it (o+x) or move the run directory",
        path.display()
    )]
    Unreachable {
        path: PathBuf,
        mode: u32,
        owner: u32,
        uid: u32,
    },
    #[error("{} is not a VM record", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// How the files of new VMs are made and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmFileOptions {
    /// How each VM's disk is made from its store image.
    pub disk_mode: DiskMode,
    /// Bound on each console history file; one rotated file is kept, so a
    /// VM's history takes at most twice this.
    pub console_max_bytes: u64,
    /// Who CH runs as (`--vm-user`); `None`: root, as the worker.
    pub vm_owner: Option<VmOwner>,
}

impl Default for VmFileOptions {
    fn default() -> Self {
        VmFileOptions {
            disk_mode: DiskMode::Overlay,
            console_max_bytes: 1024 * 1024,
            vm_owner: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    options: VmFileOptions,
}

impl RunDir {
    /// Uses (and creates) `root`, with the default options.
    pub fn open(root: &Path) -> Result<Self, RunDirError> {
        Self::open_with(root, VmFileOptions::default())
    }

    /// Uses (and creates) `root` and its `vm/` and `console/` parts, and
    /// (re)sets their owners and modes.
    pub fn open_with(root: &Path, options: VmFileOptions) -> Result<Self, RunDirError> {
        use std::os::unix::fs::PermissionsExt;
        let create = |path: &Path, mode: u32, owner: Option<VmOwner>| {
            let err = |source| RunDirError::Create {
                path: path.to_owned(),
                source,
            };
            std::fs::create_dir_all(path).map_err(err)?;
            match owner {
                Some(o) => o.give(path, mode).map_err(err),
                None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(err),
            }
        };
        std::fs::create_dir_all(root).map_err(|source| RunDirError::Create {
            path: root.to_owned(),
            source,
        })?;
        if let Some(o) = options.vm_owner {
            reachable_by(root, o)?;
        }
        create(&root.join(VM_DIR), 0o700, options.vm_owner)?;
        // The VM user passes through to its serial file, nothing more.
        let console_mode = if options.vm_owner.is_some() {
            0o711
        } else {
            0o700
        };
        create(&root.join(CONSOLE_DIR), console_mode, None)?;
        Ok(RunDir {
            root: root.to_owned(),
            options,
        })
    }

    pub fn options(&self) -> VmFileOptions {
        self.options
    }

    /// The console history of one VM.
    pub fn console(&self, id: &VmId) -> Console {
        let f = |suffix: &str| self.root.join(CONSOLE_DIR).join(format!("{id}{suffix}"));
        Console {
            serial: f("-serial.log"),
            history: f("-console.log"),
            rotated: f("-console.log.1"),
            pos: f("-console.pos"),
            dropped: f("-console.dropped"),
            health: f("-health"),
            max_bytes: self.options.console_max_bytes.max(1),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn paths(&self, id: &VmId) -> VmPaths {
        let f = |suffix: &str| self.root.join(format!("{id}{suffix}"));
        let vm = |suffix: &str| self.root.join(VM_DIR).join(format!("{id}{suffix}"));
        VmPaths {
            socket: vm(".sock"),
            metadata: f(".json"),
            serial_log: self.console(id).serial,
            disk: vm(self.options.disk_mode.file_suffix()),
            disk_mode: self.options.disk_mode,
            ch_log: f("-ch.log"),
        }
    }

    /// Writes the record atomically (temp file, rename) so a crash never
    /// leaves half a record for the next start to trip on. No fsync: the
    /// record must survive a worker crash, which the page cache does; a host
    /// crash takes the VMs with it, and the next start cleans up whatever
    /// record is left (fsync cost ~5 ms per create here).
    pub fn write_record(&self, record: &VmRecord) -> Result<(), RunDirError> {
        let path = self.paths(&record.id).metadata;
        let tmp = path.with_extension("json.tmp");
        let werr = |source| RunDirError::Write {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(record)
            .map_err(io::Error::other)
            .map_err(werr)?;
        std::fs::write(&tmp, &body).map_err(werr)?;
        std::fs::rename(&tmp, &path).map_err(werr)
    }

    pub fn read_record(&self, id: &VmId) -> Result<VmRecord, RunDirError> {
        let path = self.paths(id).metadata;
        let body = std::fs::read(&path).map_err(|source| RunDirError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&body).map_err(|source| RunDirError::Parse { path, source })
    }

    /// Makes the VM's serial file, empty, for CH to write: owned by the VM
    /// user, in a directory that user cannot write, so CH can fill it but
    /// not swap it for a link the worker would then read and punch.
    pub fn make_serial_file(&self, id: &VmId) -> Result<(), RunDirError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.console(id).serial;
        let err = |source| RunDirError::Write {
            path: path.clone(),
            source,
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(err)?;
        if let Some(o) = self.options.vm_owner {
            std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid)).map_err(err)?;
        }
        Ok(())
    }

    /// Where the API socket was before `vm/` existed (flat layout).
    pub fn legacy_socket(&self, id: &VmId) -> PathBuf {
        self.root.join(format!("{id}.sock"))
    }

    /// Removes every file of one VM (missing files are fine).
    pub fn remove_vm_files(&self, id: &VmId) {
        let p = self.paths(id);
        let lock = PathBuf::from(format!("{}.lock", p.socket.display()));
        let tmp = p.metadata.with_extension("json.tmp");
        self.console(id).remove();
        let mut files = vec![p.socket.clone(), lock, p.metadata, tmp, p.ch_log];
        // Both disk names: the VM may predate a change of --disk-mode; and
        // the names of the flat layout before `vm/` and `console/`.
        for dir in [self.root.join(VM_DIR), self.root.clone()] {
            for m in [DiskMode::Overlay, DiskMode::Copy] {
                files.push(dir.join(format!("{id}{}", m.file_suffix())));
            }
        }
        for suffix in [
            ".sock",
            ".sock.lock",
            "-serial.log",
            "-console.log",
            "-console.log.1",
            "-console.pos",
        ] {
            files.push(self.root.join(format!("{id}{suffix}")));
        }
        for f in &files {
            remove_if_present(f);
        }
    }

    /// Ids of every VM with any file here, and the names of files that
    /// belong to no VM id (left alone, but logged).
    pub fn scan(&self) -> Result<BTreeSet<VmId>, RunDirError> {
        let rerr = |source| RunDirError::Read {
            path: self.root.clone(),
            source,
        };
        let mut ids = BTreeSet::new();
        for dir in [
            self.root.clone(),
            self.root.join(VM_DIR),
            self.root.join(CONSOLE_DIR),
        ] {
            for entry in std::fs::read_dir(&dir).map_err(rerr)? {
                let name = entry.map_err(rerr)?.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.len() >= 36
                    && let Ok(id) = name[..36].parse::<VmId>()
                {
                    ids.insert(id);
                }
            }
        }
        Ok(ids)
    }
}

/// Checks that `owner` may pass through `dir` and every directory above it
/// (CH, as that user, opens its socket and files beneath): a clear error at
/// start rather than every VM's hypervisor failing to make its socket.
fn reachable_by(dir: &Path, owner: VmOwner) -> Result<(), RunDirError> {
    use std::os::unix::fs::MetadataExt;
    let real = dir.canonicalize().map_err(|source| RunDirError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for d in real.ancestors() {
        let m = std::fs::metadata(d).map_err(|source| RunDirError::Read {
            path: d.to_owned(),
            source,
        })?;
        let mode = m.mode() & 0o7777;
        let may = if m.uid() == owner.uid {
            mode & 0o100 != 0
        } else if m.gid() == owner.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !may {
            return Err(RunDirError::Unreachable {
                path: d.to_owned(),
                mode,
                owner: m.uid(),
                uid: owner.uid,
            });
        }
    }
    Ok(())
}

pub fn remove_if_present(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
    }
}

/// One VM's serial console, kept across boots and bounded.
///
/// CH truncates its serial file at `vm.create` and at every boot or reboot,
/// including the reboots a guest starts itself, which the worker never
/// hears of. So the worker follows the file: `sync` appends what CH wrote
/// since the last sync to the history, then punches the copied range out of
/// the serial file (it reads as zeros and takes no disk space, so CH's file
/// stays small however long the guest runs; CH writes at its own offset,
/// past that range). A new boot shows as a file shorter than what was
/// copied, or as data that is not zeros inside the copied range: CH
/// truncated the file and the guest wrote from its start again, so copying
/// starts again at 0. (A boot's output that fits between two syncs and
/// consists of NUL bytes only would be missed; on a filesystem without
/// hole punching only the length tells, so a new boot that writes at least
/// as much as the old one before the next sync goes unnoticed.) The manager
/// syncs every `CONSOLE_SYNC_PERIOD` and before every read.
///
/// The history is bounded: when a chunk would take it past `max_bytes`,
/// the history becomes the rotated file (replacing the older one) and a new
/// history starts, so a VM keeps between `max_bytes` and twice that. A
/// chunk longer than `max_bytes` (a guest that prints faster than the
/// syncs copy) keeps only its end, after a line saying how much was cut
/// ([`TRUNCATED_MARK`]). So a VM's console takes on disk at most twice
/// `max_bytes`, plus what its guest writes between two syncs. A read that
/// reaches the oldest line kept starts with the same mark when older
/// output was dropped, cut or rotated away.
#[derive(Debug, Clone)]
pub struct Console {
    pub serial: PathBuf,
    pub history: PathBuf,
    pub rotated: PathBuf,
    /// How many bytes of the serial file's current boot are copied (text).
    pub pos: PathBuf,
    /// How many bytes of guest output are no longer kept (text).
    pub dropped: PathBuf,
    /// The worker's verdict on the VM's health check, kept so a restarted
    /// worker adopts it with the VM (see `health`).
    pub health: PathBuf,
    pub max_bytes: u64,
}

/// The start of the line the history gets where guest output was cut.
pub const TRUNCATED_MARK: &str = "[worker] console output truncated:";

/// How often the manager copies every VM's new serial output.
pub const CONSOLE_SYNC_PERIOD: std::time::Duration = std::time::Duration::from_millis(250);

/// Serializes syncs: the periodic one and a read's must not copy a chunk twice.
static SYNC: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Console {
    /// Copies what CH wrote since the last sync into the history.
    pub fn sync(&self) -> io::Result<()> {
        let _g = SYNC.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_locked()
    }

    /// Syncs, then runs `f` before any other sync can copy or rotate: a
    /// reader that follows the history across rotations sees the files as
    /// the sync left them.
    pub fn sync_then<R>(&self, f: impl FnOnce(&Console) -> R) -> io::Result<R> {
        let _g = SYNC.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_locked()?;
        Ok(f(self))
    }

    fn sync_locked(&self) -> io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a link: the worker reads and punches this file.
        let mut serial = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.serial)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let len = serial.metadata()?.len();
        // "N" or "N punched": how much is copied, and whether the copied
        // range was punched out (only then can data in it mean a new boot).
        let pos = std::fs::read_to_string(&self.pos).unwrap_or_default();
        let mut words = pos.split_whitespace();
        let copied = words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
        let punched = words.next() == Some("punched");
        let from = if len < copied || (punched && rewritten(&mut serial, copied)?) {
            0
        } else {
            copied
        };
        let mut now_punched = punched;
        if len > from {
            // Only the last max_bytes of a chunk can survive the rotation.
            let start = from.max(len.saturating_sub(self.max_bytes));
            let mut chunk = Vec::with_capacity((len - start) as usize + 80);
            if start > from {
                chunk.extend_from_slice(
                    format!("{TRUNCATED_MARK} {} bytes dropped\n", start - from).as_bytes(),
                );
                self.add_dropped(start - from)?;
            }
            serial.seek(SeekFrom::Start(start))?;
            Read::by_ref(&mut serial)
                .take(len - start)
                .read_to_end(&mut chunk)?;
            self.append(&chunk)?;
            use rustix::fs::FallocateFlags as F;
            // Best effort: without it, only a shorter file tells a new boot.
            now_punched =
                rustix::fs::fallocate(&serial, F::PUNCH_HOLE | F::KEEP_SIZE, 0, len).is_ok();
        }
        if len != copied || now_punched != punched {
            let flag = if now_punched { " punched" } else { "" };
            std::fs::write(&self.pos, format!("{len}{flag}"))?;
        }
        Ok(())
    }

    /// Removes the serial file and the history. Under the sync lock, so a
    /// sync that started before cannot recreate the history afterwards
    /// (and one that starts after finds no serial file).
    pub fn remove(&self) {
        let _g = SYNC.lock().unwrap_or_else(|p| p.into_inner());
        for f in [
            &self.serial,
            &self.history,
            &self.rotated,
            &self.pos,
            &self.dropped,
            &self.health,
        ] {
            remove_if_present(f);
        }
    }

    fn append(&self, chunk: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let current = match std::fs::metadata(&self.history) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if current > 0 && current + chunk.len() as u64 > self.max_bytes {
            match std::fs::metadata(&self.rotated) {
                Ok(m) => self.add_dropped(m.len())?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            std::fs::rename(&self.history, &self.rotated)?;
        }
        // A guest's console is nobody else's to read.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.history)?
            .write_all(chunk)
    }

    fn dropped_bytes(&self) -> u64 {
        std::fs::read_to_string(&self.dropped)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn add_dropped(&self, n: u64) -> io::Result<()> {
        std::fs::write(&self.dropped, (self.dropped_bytes() + n).to_string())
    }

    /// The last `lines` lines of the console across boots (rotated file,
    /// then history), after a sync; `true` when older lines exist or
    /// existed. Reaching the oldest line kept after output was dropped, the
    /// lines start with a [`TRUNCATED_MARK`] line.
    pub fn tail(&self, lines: usize) -> io::Result<(Vec<String>, bool)> {
        self.sync()?;
        let (newer, truncated) = tail_lines(&self.history, lines)?;
        if truncated || newer.len() >= lines {
            return Ok((newer, truncated || self.rotated.exists()));
        }
        let (mut older, truncated) = tail_lines(&self.rotated, lines - newer.len())?;
        older.extend(newer);
        let dropped = self.dropped_bytes();
        if !truncated && dropped > 0 {
            older.insert(
                0,
                format!("{TRUNCATED_MARK} {dropped} earlier bytes dropped"),
            );
            return Ok((older, true));
        }
        Ok((older, truncated))
    }
}

/// Whether the serial file holds data other than zeros before `copied`:
/// the copied range was punched out, so CH rewrote it after a truncation.
fn rewritten(f: &mut std::fs::File, copied: u64) -> io::Result<bool> {
    use std::io::Read;
    if copied == 0 {
        return Ok(false);
    }
    // Skips the holes; ENXIO: no data at all after offset 0.
    let at = match rustix::fs::seek(&*f, rustix::fs::SeekFrom::Data(0)) {
        Ok(at) => at,
        Err(rustix::io::Errno::NXIO) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if at >= copied {
        return Ok(false);
    }
    let mut buf = vec![0u8; (copied - at).min(4096) as usize];
    let n = Read::by_ref(f).take(buf.len() as u64).read(&mut buf)?;
    Ok(buf[..n].iter().any(|b| *b != 0))
}

/// The last `lines` lines of a text file, reading only its tail.
pub fn tail_lines(path: &Path, lines: usize) -> io::Result<(Vec<String>, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    // Lines of a serial console are short; read a window that grows until
    // it holds enough lines or the whole file.
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        Read::by_ref(&mut f)
            .take(len - start)
            .read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let mut all: Vec<&str> = text.split('\n').collect();
        if all.last() == Some(&"") {
            all.pop();
        }
        // The first line of a partial window may be cut: drop it.
        let complete = if start > 0 && !all.is_empty() {
            &all[1..]
        } else {
            &all[..]
        };
        if complete.len() >= lines || start == 0 {
            let skip = complete.len().saturating_sub(lines);
            let truncated = skip > 0 || start > 0;
            let out = complete[skip..]
                .iter()
                .map(|l| l.trim_end_matches('\r').to_owned())
                .collect();
            return Ok((out, truncated));
        }
        window *= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_scan_finds_ids() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::open(&dir.path().join("run")).unwrap();
        let id = VmId::new_v7();
        let rec = VmRecord {
            id: id.clone(),
            spec: testkit::fixtures::spec("a", "h"),
            created_at_ms: 5,
            worker_id: "w".parse().unwrap(),
        };
        rd.write_record(&rec).unwrap();
        assert_eq!(rd.read_record(&id).unwrap(), rec);
        std::fs::write(rd.paths(&id).serial_log, "x").unwrap();
        std::fs::write(rd.root().join("unrelated.txt"), "x").unwrap();
        assert_eq!(
            rd.scan().unwrap().into_iter().collect::<Vec<_>>(),
            vec![id.clone()]
        );
        rd.remove_vm_files(&id);
        assert!(rd.scan().unwrap().is_empty());
    }

    #[test]
    fn tail_returns_last_lines_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        assert_eq!(tail_lines(&p, 5).unwrap(), (vec![], false));
        let body: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, body).unwrap();
        let (lines, truncated) = tail_lines(&p, 3).unwrap();
        assert_eq!(lines, vec!["line 99997", "line 99998", "line 99999"]);
        assert!(truncated);
        let (lines, _) = tail_lines(&p, 20_000).unwrap();
        assert_eq!(lines.len(), 20_000);
        assert_eq!(lines[0], "line 80000");
        std::fs::write(&p, "a\nb").unwrap();
        assert_eq!(
            tail_lines(&p, 10).unwrap(),
            (vec!["a".to_owned(), "b".to_owned()], false)
        );
    }

    /// With a VM user, the run directory must be reachable by that user:
    /// a directory it cannot enter is named at start; otherwise `vm/` is
    /// that user's alone.
    #[test]
    fn a_vm_user_gets_vm_dir_and_must_reach_it() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: giving files to another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let options = VmFileOptions {
            vm_owner: Some(VmOwner {
                uid: 65534,
                gid: 65534,
            }),
            ..Default::default()
        };
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = RunDir::open_with(&closed.join("run"), options).unwrap_err();
        assert!(
            matches!(&err, RunDirError::Unreachable { path, mode: 0o700, .. } if *path == closed),
            "{err}"
        );
        assert!(err.to_string().contains("uid 65534"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        let rd = RunDir::open_with(&closed.join("run"), options).unwrap();
        let vm = std::fs::metadata(rd.root().join("vm")).unwrap();
        assert_eq!((vm.uid(), vm.mode() & 0o777), (65534, 0o700));
        let console = std::fs::metadata(rd.root().join("console")).unwrap();
        assert_eq!((console.uid(), console.mode() & 0o777), (0, 0o711));
    }

    /// A run directory in a temp dir whose console history is 64 bytes.
    fn small_console_run_dir() -> (tempfile::TempDir, RunDir) {
        let dir = tempfile::tempdir().unwrap();
        let options = VmFileOptions {
            console_max_bytes: 64,
            ..Default::default()
        };
        let rd = RunDir::open_with(dir.path(), options).unwrap();
        (dir, rd)
    }

    /// What CH writes survives its truncation at the next boot, the history
    /// rotates at its bound, and a read spans the rotated file.
    #[test]
    fn console_keeps_history_across_boots_and_rotates() {
        let (_dir, rd) = small_console_run_dir();
        let id = VmId::new_v7();
        let c = rd.console(&id);
        assert_eq!(c.tail(10).unwrap(), (vec![], false));
        let append = |text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&c.serial)
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        std::fs::write(&c.serial, "boot 1\n").unwrap();
        c.sync().unwrap();
        append("line a\n");
        // CH truncates at a reboot; the new boot writes fewer bytes.
        c.sync().unwrap();
        std::fs::write(&c.serial, "boot 2\n").unwrap();
        let (lines, truncated) = c.tail(10).unwrap();
        assert_eq!(lines, vec!["boot 1", "line a", "boot 2"]);
        assert!(!truncated);
        // A reboot whose output is as long as the last boot's is seen too.
        std::fs::write(&c.serial, "boot 3\n").unwrap();
        let (lines, _) = c.tail(10).unwrap();
        assert_eq!(lines, vec!["boot 1", "line a", "boot 2", "boot 3"]);
        // Past 64 bytes the history rotates; both files are read.
        let long: String = (0..8).map(|i| format!("tick {i}\n")).collect();
        append(&long);
        let (lines, truncated) = c.tail(100).unwrap();
        assert!(c.rotated.exists());
        assert_eq!(lines.first().map(String::as_str), Some("boot 1"));
        assert_eq!(lines.last().map(String::as_str), Some("tick 7"));
        assert_eq!(lines.len(), 12, "{lines:?}");
        assert!(!truncated);
        let (lines, truncated) = c.tail(2).unwrap();
        assert_eq!(lines, vec!["tick 6", "tick 7"]);
        assert!(truncated);
        // What was copied is punched out of CH's file: it reads as zeros.
        let serial = std::fs::read(&c.serial).unwrap();
        assert!(serial.iter().all(|b| *b == 0), "{serial:?}");
        // Nothing is copied twice.
        c.sync().unwrap();
        assert_eq!(c.tail(100).unwrap().0.len(), 12);
        rd.remove_vm_files(&id);
        assert!(rd.scan().unwrap().is_empty());
    }

    /// Output a guest prints faster than the syncs copy is cut to the bound
    /// with a mark where it was cut; output rotated away is counted, and a
    /// read that reaches the oldest line kept says so first.
    #[test]
    fn console_marks_what_it_dropped() {
        let (_dir, rd) = small_console_run_dir();
        let c = rd.console(&VmId::new_v7());
        // 20 lines of 8 bytes between two syncs: only the last 64 bytes
        // (8 lines) are kept, after the mark.
        let flood: String = (0..20).map(|i| format!("line {i:02}\n")).collect();
        std::fs::write(&c.serial, &flood).unwrap();
        let (lines, truncated) = c.tail(100).unwrap();
        assert!(truncated);
        assert_eq!(
            lines[0],
            format!("{TRUNCATED_MARK} 96 earlier bytes dropped"),
            "{lines:?}"
        );
        assert_eq!(lines[1], format!("{TRUNCATED_MARK} 96 bytes dropped"));
        assert_eq!(lines[2..].first().map(String::as_str), Some("line 12"));
        assert_eq!(lines.last().map(String::as_str), Some("line 19"));
        // Two more rotations drop the first history file whole.
        for round in 0..2 {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&c.serial)
                .unwrap();
            let more: String = (0..6).map(|i| format!("more {round}{i}\n")).collect();
            f.write_all(more.as_bytes()).unwrap();
            c.sync().unwrap();
        }
        let (lines, _) = c.tail(100).unwrap();
        let kept_first = std::fs::read_to_string(&c.rotated).unwrap();
        assert!(kept_first.starts_with("more 00"), "{kept_first:?}");
        assert!(
            lines[0].starts_with(TRUNCATED_MARK) && lines[0].ends_with("earlier bytes dropped"),
            "{lines:?}"
        );
        let dropped: u64 = std::fs::read_to_string(&c.dropped)
            .unwrap()
            .parse()
            .unwrap();
        assert!(dropped > 96, "rotation counts what it drops: {dropped}");
        assert_eq!(lines.last().map(String::as_str), Some("more 15"));
        // A short read shows only that older lines exist.
        let (lines, truncated) = c.tail(2).unwrap();
        assert_eq!(lines, vec!["more 14", "more 15"]);
        assert!(truncated);
    }

    /// Where hole punching is not available, copied data stays in CH's file
    /// and must not be taken for a new boot.
    #[test]
    fn console_without_hole_punching_copies_once() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::open(dir.path()).unwrap();
        let c = rd.console(&VmId::new_v7());
        std::fs::write(&c.serial, "boot 1\n").unwrap();
        c.sync().unwrap();
        assert_eq!(std::fs::read_to_string(&c.pos).unwrap(), "7 punched");
        // As if the punch had failed: the bytes are back, the flag is off.
        std::fs::write(&c.serial, "boot 1\n").unwrap();
        std::fs::write(&c.pos, "7").unwrap();
        c.sync().unwrap();
        assert_eq!(c.tail(10).unwrap().0, vec!["boot 1"]);
    }
}
