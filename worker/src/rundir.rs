//! The worker's run directory: per VM `<id>.sock` (CH's API socket, made by
//! CH), `<id>.sock.lock` (CH's), `<id>.json` (the record written before the
//! spawn, for adoption), `<id>-serial.log`, `<id>.disk` (writable copy of
//! the image) and `<id>-ch.log` (CH's own stdout/stderr).
//!
//! The directory is the worker's only persistent state: a restarted worker
//! rebuilds its table from it.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::dto::{VmId, VmRecord};
use crate::vmm::config::VmPaths;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot create run directory {}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a VM record", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Uses (and creates) `root`.
    pub fn open(root: &Path) -> Result<Self, RunDirError> {
        std::fs::create_dir_all(root).map_err(|source| RunDirError::Create {
            path: root.to_owned(),
            source,
        })?;
        Ok(RunDir {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn paths(&self, id: &VmId) -> VmPaths {
        let f = |suffix: &str| self.root.join(format!("{id}{suffix}"));
        VmPaths {
            socket: f(".sock"),
            metadata: f(".json"),
            serial_log: f("-serial.log"),
            disk: f(".disk"),
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

    /// Removes every file of one VM (missing files are fine).
    pub fn remove_vm_files(&self, id: &VmId) {
        let p = self.paths(id);
        let lock = PathBuf::from(format!("{}.lock", p.socket.display()));
        let tmp = p.metadata.with_extension("json.tmp");
        for f in [
            &p.socket,
            &lock,
            &p.metadata,
            &tmp,
            &p.serial_log,
            &p.disk,
            &p.ch_log,
        ] {
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
        for entry in std::fs::read_dir(&self.root).map_err(rerr)? {
            let name = entry.map_err(rerr)?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() >= 36
                && let Ok(id) = name[..36].parse::<VmId>()
            {
                ids.insert(id);
            }
        }
        Ok(ids)
    }
}

pub fn remove_if_present(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
    }
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
    use crate::dto::{VmSpec, VmSpecFields};

    #[test]
    fn record_round_trips_and_scan_finds_ids() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::open(&dir.path().join("run")).unwrap();
        let id = VmId::new_v7();
        let spec = VmSpec::new(VmSpecFields {
            name: "a".into(),
            toplevel: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys".into(),
            kernel_path: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel".into(),
            cpu: 1,
            memory_mb: 64,
            content_hash: "h".into(),
            ..Default::default()
        })
        .unwrap();
        let rec = VmRecord {
            id: id.clone(),
            spec,
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
}
