//! Each VM's writable root disk. Store paths are read-only and CH locks the
//! images it opens, so a VM never boots from the store image itself:
//! - `Overlay` (the default): a qcow2 v3 overlay in the run directory whose
//!   backing file is the read-only store image. Creating it writes a few
//!   KiB whatever the image's size (O(1)), and every VM on the host shares
//!   the image's blocks; CH locks the overlay only, so many overlays of one
//!   image run side by side (design §10).
//! - `Copy`: a full raw copy, for images that must not be shared. It is a
//!   reflink where the filesystem can (instant, shares blocks), otherwise a
//!   sparse copy that skips zero blocks, and costs the image's size.
//!
//! The overlay is written here rather than by `qemu-img create`: the format
//! of an empty overlay is small and documented (QEMU's `docs/interop/
//! qcow2.txt`), and writing it avoids a runtime dependency and a process
//! spawn per create. Tests check the result with `qemu-img check`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::vmm::user::VmOwner;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot copy disk image {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot write the qcow2 overlay {} of {}", to.display(), base.display())]
    Overlay {
        base: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

/// How a VM's writable disk is made from its store image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskMode {
    /// A qcow2 overlay backed by the store image: O(1) to create.
    #[default]
    Overlay,
    /// A full raw copy: costs the image's size, shares nothing.
    Copy,
}

impl DiskMode {
    /// The suffix of the disk file in the run directory (`<id><suffix>`).
    pub fn file_suffix(self) -> &'static str {
        match self {
            DiskMode::Overlay => ".qcow2",
            DiskMode::Copy => ".disk",
        }
    }

    /// CH's `image_type`: always set, since autodetection disables writes
    /// to sector 0 of raw images and fails on files shorter than a sector.
    pub fn image_type(self) -> &'static str {
        match self {
            DiskMode::Overlay => "Qcow2",
            DiskMode::Copy => "Raw",
        }
    }
}

impl std::str::FromStr for DiskMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "overlay" => Ok(DiskMode::Overlay),
            "copy" => Ok(DiskMode::Copy),
            other => Err(format!("{other:?} is not overlay or copy")),
        }
    }
}

impl std::fmt::Display for DiskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskMode::Overlay => "overlay",
            DiskMode::Copy => "copy",
        })
    }
}

/// Makes the VM's writable disk `to` from the store image `base`, a path
/// `vmm::store` resolved (real, inside the store, a regular file): the
/// overlay names it as its backing file, so CH opens that file and nothing
/// a link in the closure points at. On error `to` does not exist.
/// The disk is mode 0600 and belongs to `owner` (the VM user) when given.
pub fn make_disk(
    mode: DiskMode,
    base: &Path,
    to: &Path,
    owner: Option<VmOwner>,
) -> Result<(), DiskError> {
    match mode {
        DiskMode::Overlay => create_overlay(base, to, owner),
        DiskMode::Copy => writable_copy(base, to, owner),
    }
}

const BLOCK: usize = 64 * 1024;

/// Copies `from` to a new writable file `to` (mode 0600, of `owner`),
/// keeping holes. On error `to` is removed.
pub fn writable_copy(from: &Path, to: &Path, owner: Option<VmOwner>) -> Result<(), DiskError> {
    let err = |source| DiskError::Copy {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    let src = File::open(from).map_err(err)?;
    let dst = create_new(to, owner).map_err(err)?;
    copy_inner(src, dst).map_err(|source| {
        crate::rundir::remove_if_present(to);
        err(source)
    })
}

/// A new file of mode 0600 (a guest's disk is nobody else's to read),
/// handed to `owner` through its fd. `create_new` (`O_EXCL`, which also
/// refuses a link in its place) so that we never clobber or follow a file
/// we did not make: the VM user may write the directory.
fn create_new(to: &Path, owner: Option<VmOwner>) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    if let Some(o) = owner
        && let Err(e) = std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid))
    {
        crate::rundir::remove_if_present(to);
        return Err(e);
    }
    Ok(f)
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

/// Writes an empty qcow2 v3 overlay `to` whose backing file is the raw image
/// `base` (an absolute path) and whose virtual size is `base`'s size. On
/// error `to` is removed.
pub fn create_overlay(base: &Path, to: &Path, owner: Option<VmOwner>) -> Result<(), DiskError> {
    let err = |source| DiskError::Overlay {
        base: base.to_owned(),
        to: to.to_owned(),
        source,
    };
    let size = std::fs::metadata(base).map_err(err)?.len();
    let image = qcow2_overlay(base.as_os_str().as_encoded_bytes(), size).map_err(err)?;
    let f = create_new(to, owner).map_err(err)?;
    // No fsync, as for the VM record: a host crash takes the VM with it.
    image.write_to(&f).map_err(|source| {
        crate::rundir::remove_if_present(to);
        err(source)
    })
}

/// An empty overlay: its non-zero parts at their offsets, and its length.
/// Everything else is zeros, left as holes, so the file takes ~12 KiB.
struct Overlay {
    parts: Vec<(u64, Vec<u8>)>,
    len: u64,
}

impl Overlay {
    fn write_to(&self, f: &File) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        for (at, bytes) in &self.parts {
            f.write_all_at(bytes, *at)?;
        }
        f.set_len(self.len)
    }
}

/// qcow2 geometry: 64 KiB clusters (QEMU's default), 16-bit refcounts.
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// L2 tables hold `CLUSTER / 8` entries, each mapping one cluster.
const L2_COVERS: u64 = (CLUSTER / 8) * CLUSTER;
/// Version 3 header with the compression-type byte, as `qemu-img` writes it.
const HEADER_LEN: u32 = 112;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;

/// An empty overlay. Layout, one cluster each unless said:
/// 0 header, extensions and backing file name; 1 refcount table; 2 the one
/// refcount block; 3.. the L1 table (all zero: nothing allocated, every
/// read goes to the backing file). The file ends with the L1 table, whose
/// zeros stay as written; a 2 GiB image's overlay is 192 KiB + 8 bytes long
/// and a few KiB on disk.
fn qcow2_overlay(backing: &[u8], size: u64) -> io::Result<Overlay> {
    let l1_entries = size.div_ceil(L2_COVERS);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);
    let metadata_clusters = 3 + l1_clusters;
    // One refcount block (CLUSTER / 2 entries of 16 bits) counts the
    // metadata; a 256 TiB image would need more, which nothing here has.
    if metadata_clusters > CLUSTER / 2 {
        return Err(io::Error::other(format!(
            "a {size}-byte image needs more than one refcount block"
        )));
    }
    // The backing name lives in cluster 0 after the header and extensions.
    let ext_len = 8 + 8 /* "raw" padded */ + 8 /* end marker */;
    let name_at = u64::from(HEADER_LEN) + ext_len;
    if name_at + backing.len() as u64 > CLUSTER || backing.len() > 1023 {
        return Err(io::Error::other("the backing file name is too long"));
    }
    let l1_at = 3 * CLUSTER;
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&name_at.to_be_bytes()); // backing_file_offset
    h.extend_from_slice(&(backing.len() as u32).to_be_bytes()); // backing_file_size
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method: none
    h.extend_from_slice(&(l1_entries as u32).to_be_bytes()); // l1_size
    h.extend_from_slice(&l1_at.to_be_bytes()); // l1_table_offset
    h.extend_from_slice(&CLUSTER.to_be_bytes()); // refcount_table_offset
    h.extend_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
    h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount_order: 16-bit
    h.extend_from_slice(&HEADER_LEN.to_be_bytes()); // header_length
    h.push(0); // compression_type: zlib
    h.resize(HEADER_LEN as usize, 0); // padding to a multiple of 8
    // Backing file format "raw": without it a reader would probe the store
    // image's contents, which a guest could make look like qcow2.
    h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(b"raw\0\0\0\0\0");
    h.extend_from_slice(&[0u8; 8]); // end of the header extensions
    debug_assert_eq!(h.len() as u64, name_at);
    h.extend_from_slice(backing);
    // Refcount table: its one entry points at the refcount block.
    let table = (2 * CLUSTER).to_be_bytes().to_vec();
    // Refcount block: every metadata cluster is used once.
    let block: Vec<u8> = (0..metadata_clusters)
        .flat_map(|_| 1u16.to_be_bytes())
        .collect();
    Ok(Overlay {
        parts: vec![(0, h), (CLUSTER, table), (2 * CLUSTER, block)],
        len: l1_at + l1_entries.max(1) * 8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;
    use testkit::run_ok;

    /// A read-only 4 MiB image at `dir/img`, zero but for two bytes (a
    /// store file as a copy finds it); its path and contents.
    fn read_only_image(dir: &Path) -> (PathBuf, Vec<u8>) {
        let src = dir.join("img");
        let mut data = vec![0u8; 4 * 1024 * 1024];
        data[10] = 1;
        data[3 * 1024 * 1024 + 5] = 7;
        std::fs::write(&src, &data).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o444)).unwrap();
        (src, data)
    }

    #[test]
    fn copy_is_writable_identical_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let (src, data) = read_only_image(dir.path());
        let dst = dir.path().join("copy");
        writable_copy(&src, &dst, None).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(
            meta.blocks() * 512 < data.len() as u64,
            "copy should be sparse ({} blocks)",
            meta.blocks()
        );
        // A second copy to the same place is refused, not overwritten.
        assert!(matches!(
            writable_copy(&src, &dst, None),
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
        let err = writable_copy(&dir.path().join("nope"), &dir.path().join("x"), None).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn overlay_header_names_its_backing_file() {
        let o = qcow2_overlay(b"/nix/store/x-img/disk.raw", 2 << 30).unwrap();
        let mut img = vec![0u8; o.len as usize];
        for (at, bytes) in &o.parts {
            img[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
        }
        let be32 = |at: usize| u32::from_be_bytes(img[at..at + 4].try_into().unwrap());
        let be64 = |at: usize| u64::from_be_bytes(img[at..at + 8].try_into().unwrap());
        assert_eq!(&img[..4], b"QFI\xfb");
        assert_eq!(be32(4), 3);
        assert_eq!(be64(24), 2 << 30);
        assert_eq!(be32(36), 4, "2 GiB takes four 512 MiB L2 tables");
        let (at, len) = (be64(8) as usize, be32(16) as usize);
        assert_eq!(&img[at..at + len], b"/nix/store/x-img/disk.raw");
        assert_eq!(img.len(), 3 * 65536 + 32);
    }

    /// `qemu-img check` and `info` accept the overlay and see its backing
    /// file and format (skipped with a reason when qemu-img is absent;
    /// scripts/install-deps.sh installs it).
    #[test]
    fn qemu_img_accepts_the_overlay() {
        let Ok(out) = Command::new("qemu-img").arg("--version").output() else {
            eprintln!("SKIP: qemu-img is not installed (Debian package qemu-utils)");
            return;
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let f = File::create(&base).unwrap();
        f.set_len(3 << 30).unwrap();
        let overlay = dir.path().join("vm.qcow2");
        create_overlay(&base, &overlay, None).unwrap();
        let qemu_img = |args: &[&str]| {
            let what = format!("qemu-img {}", args[0]);
            run_ok(&what, Command::new("qemu-img").args(args).arg(&overlay))
        };
        qemu_img(&["check", "-f", "qcow2"]);
        let info = qemu_img(&["info", "--output=json", "-f", "qcow2"]);
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["virtual-size"], 3u64 << 30);
        assert_eq!(v["backing-filename"], base.to_str().unwrap());
        assert_eq!(v["backing-filename-format"], "raw");
        assert_eq!(v["format-specific"]["data"]["compat"], "1.1");
        // A write through the overlay lands in the overlay, not the base.
        let io = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 64k"])
            .arg(&overlay)
            .output();
        if let Ok(io) = io {
            assert!(
                io.status.success(),
                "{}",
                String::from_utf8_lossy(&io.stderr)
            );
            qemu_img(&["check", "-f", "qcow2"]);
            assert_eq!(std::fs::metadata(&base).unwrap().blocks(), 0);
        }
    }
}
