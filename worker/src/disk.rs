//! Each VM's writable root disk: store paths are read-only and CH locks its
//! images, so a VM boots from its own copy in the run directory. The copy is
//! a reflink where the filesystem can (instant, shares blocks), otherwise a
//! sparse copy that skips zero blocks (`cp --reflink=auto --sparse=always`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk image {} is not on this worker", path.display())]
    Missing { path: PathBuf },
    #[error("cannot copy disk image {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

const BLOCK: usize = 64 * 1024;

/// Copies `from` to a new writable file `to` (mode 0644), keeping holes.
/// On error `to` is removed.
pub fn writable_copy(from: &Path, to: &Path) -> Result<(), DiskError> {
    if !from.is_file() {
        return Err(DiskError::Missing {
            path: from.to_owned(),
        });
    }
    let err = |source| DiskError::Copy {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    let src = File::open(from).map_err(err)?;
    // create_new: never clobber a file we did not make.
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(to)
        .map_err(err)?;
    copy_inner(src, dst).map_err(|source| {
        crate::rundir::remove_if_present(to);
        err(source)
    })
}

fn copy_inner(mut src: File, mut dst: File) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(&dst, &src).is_ok() {
        return Ok(());
    }
    let len = src.metadata()?.len();
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let want = BLOCK.min((len - pos) as usize);
        src.read_exact(&mut buf[..want])?;
        if buf[..want].iter().all(|b| *b == 0) {
            // Leave a hole: the final set_len makes trailing holes real.
            dst.seek(SeekFrom::Current(want as i64))?;
        } else {
            dst.write_all(&buf[..want])?;
        }
        pos += want as u64;
    }
    dst.set_len(len)?;
    dst.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn copy_is_writable_identical_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("img");
        let mut data = vec![0u8; 4 * 1024 * 1024];
        data[10] = 1;
        data[3 * 1024 * 1024 + 5] = 7;
        std::fs::write(&src, &data).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o444)).unwrap();
        let dst = dir.path().join("copy");
        writable_copy(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert!(
            meta.blocks() * 512 < data.len() as u64,
            "copy should be sparse ({} blocks)",
            meta.blocks()
        );
        // A second copy to the same place is refused, not overwritten.
        assert!(matches!(
            writable_copy(&src, &dst),
            Err(DiskError::Copy { .. })
        ));
        assert!(
            dst.exists(),
            "a refused copy must not remove the existing file"
        );
    }

    #[test]
    fn missing_source_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = writable_copy(&dir.path().join("nope"), &dir.path().join("x")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
