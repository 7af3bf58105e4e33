//! ch-sim's disks: what CH v53 does with each `disks` entry at `vm.boot`,
//! as recorded in `tests/data/ch-v53-disks.jsonl` and design §10.
//!
//! Modelled: opening the file (read-write unless `readonly`); `image_type`
//! autodetection when it is left out (qcow2 magic, else raw; a file shorter
//! than a sector fails as recorded); a qcow2 with a backing file is refused
//! unless `backing_files: true`; with it, the backing file must open
//! (read-only); each disk file is locked for as long as the VM holds its
//! devices, and only the file named in `disks`, so overlays sharing one
//! backing file run side by side while two VMs on one file do not.
//!
//! Not modelled: a qcow2 chain deeper than one backing file, the backing
//! format extension, corrupt or truncated qcow2 metadata, an `image_type`
//! that contradicts the file's contents, VHD/VHDx, and guest writes (the
//! overlay never grows). The error chains of a lock conflict and of a
//! missing backing file were not recorded; ch-sim's are marked below.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

const SECTOR: usize = 512;
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// The disks of a booted VM: their open, locked files. Dropping them
/// releases the locks, as CH does when it tears its devices down.
#[derive(Debug, Default)]
pub(super) struct OpenDisks(#[allow(dead_code)] Vec<File>);

/// What `vm.info` reports as a disk's `image_type`: the configured one, or
/// once booted the detected one ("Unknown" before, as recorded).
pub(super) fn reported_image_type(disk: &Value, booted: bool) -> String {
    match disk["image_type"].as_str() {
        Some(t) => t.to_owned(),
        None if booted => detect(Path::new(disk["path"].as_str().unwrap_or("")))
            .unwrap_or("Raw")
            .to_owned(),
        None => "Unknown".to_owned(),
    }
}

/// The detected type, `None` for a file shorter than a sector.
fn detect(path: &Path) -> Option<&'static str> {
    let mut head = [0u8; SECTOR];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .ok()?;
    Some(if &head[..4] == QCOW2_MAGIC {
        "Qcow2"
    } else {
        "Raw"
    })
}

/// The backing file named by a qcow2 header, if any.
fn backing_file(f: &mut File) -> std::io::Result<Option<String>> {
    use std::io::{Seek, SeekFrom};
    let mut h = [0u8; 20];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut h)?;
    let offset = u64::from_be_bytes(h[8..16].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap_or_default()) as usize;
    if offset == 0 || len == 0 {
        return Ok(None);
    }
    let mut name = vec![0u8; len.min(1023)];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut name)?;
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

/// Opens every disk of `config` as CH v53 does at `vm.boot`. On failure,
/// the error chain after "The VM could not boot".
pub(super) fn open_disks(config: &Value) -> Result<OpenDisks, Vec<String>> {
    let mut open = Vec::new();
    for d in config["disks"].as_array().into_iter().flatten() {
        let Some(path) = d["path"].as_str() else {
            continue;
        };
        open.push(open_disk(d, path)?);
    }
    Ok(OpenDisks(open))
}

fn fail(items: &[&str]) -> Vec<String> {
    ["Error from device manager", "Cannot open disk path"]
        .iter()
        .chain(items)
        .map(|s| (*s).to_owned())
        .collect()
}

fn open_disk(d: &Value, path: &str) -> Result<File, Vec<String>> {
    let readonly = d["readonly"].as_bool().unwrap_or(false);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(|e| fail(&[&format!("I/O error (path={path} op=open)"), &os_error(&e)]))?;
    let image_type = match d["image_type"].as_str() {
        Some(t) => t.to_owned(),
        None => detect(Path::new(path))
            .ok_or_else(|| {
                fail(&[
                    "I/O error (op=detect_image_type)",
                    "failed to fill whole buffer",
                ])
            })?
            .to_owned(),
    };
    if image_type == "Qcow2" {
        let backing = backing_file(&mut f).unwrap_or(None);
        if let Some(backing) = backing {
            if d["backing_files"].as_bool() != Some(true) {
                return Err(fail(&[
                    &format!("Unsupported feature (path={path} op=open)"),
                    "Maximum disk nesting depth exceeded",
                ]));
            }
            // Not recorded: ch-sim's guess at CH's chain for a missing
            // backing file. The backing file is opened read-only and not
            // locked, which is what lets overlays share it.
            File::open(&backing).map_err(|e| {
                fail(&[
                    &format!("I/O error (path={backing} op=open)"),
                    &os_error(&e),
                ])
            })?;
        }
    }
    // CH locks each disk file it opens (lock_granularity ByteRange), so two
    // VMs never write one file. Not recorded: ch-sim's chain for a conflict.
    // Exclusive even when read-only: design §10 saw two VMs refused one
    // image file whatever their `readonly`.
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        fail(&[
            &format!("Failed to lock disk image (path={path})"),
            &os_error(&std::io::Error::from(e)),
        ])
    })?;
    Ok(f)
}

/// Rust's own rendering of an OS error, which CH's chains end with.
fn os_error(e: &std::io::Error) -> String {
    e.to_string()
}
