//! Resolving the host files a VmSpec names. A spec comes from a push, so
//! every path in it is untrusted: a closure may hold `disk.img ->
//! /etc/shadow`, a chain of `..` links, or a link to another VM's disk in
//! the run directory, and the worker (root) would hand whatever it names to
//! cloud-hypervisor as the guest's kernel, initrd or block device.
//!
//! So each path is opened with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` beneath `--store-root`: absolute `/nix/store/…`
//! links resolve inside the store root as they would inside the store, and
//! `..` stops at the root. The opened file must be a regular file (checked
//! on the fd, so what is checked is what was opened), and its real path,
//! read back from `/proc/self/fd`, must lie inside `<root>/nix/store`. Only
//! that real path goes to CH, and the qcow2 overlay names it as its
//! backing file. Store paths are immutable once valid, so the path cannot
//! be swapped between this check and CH opening it.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use crate::dto::VmSpec;

/// Links resolve inside the root, and never through `/proc/…/fd`-style
/// magic links.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// The spec field a host path came from, named as in the spec's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecField {
    KernelPath,
    InitrdPath,
    DiskImagePath,
}

impl fmt::Display for SpecField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecField::KernelPath => "kernelPath",
            SpecField::InitrdPath => "initrdPath",
            SpecField::DiskImagePath => "diskImagePath",
        })
    }
}

/// Why a spec path was refused; each names the field and the spec's path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{field} {path} is not on this worker")]
    Missing { field: SpecField, path: String },
    #[error("{field} {path} is a link to nothing inside the store root")]
    Dangling { field: SpecField, path: String },
    #[error("{field} {path} is a {kind}, not a regular file")]
    NotRegular {
        field: SpecField,
        path: String,
        kind: &'static str,
    },
    #[error("{field} {path} resolves to {}, outside the store {}", resolved.display(), store.display())]
    OutsideStore {
        field: SpecField,
        path: String,
        resolved: PathBuf,
        store: PathBuf,
    },
    #[error(
        "{field} {path} is a qcow2 image with a backing file; only raw disk images are accepted"
    )]
    BackingFile { field: SpecField, path: String },
    #[error("cannot open the store root {}", root.display())]
    Root { root: PathBuf, source: io::Error },
    #[error("cannot resolve {field} {path} beneath the store root {}", root.display())]
    Resolve {
        field: SpecField,
        path: String,
        root: PathBuf,
        source: io::Error,
    },
}

impl StoreError {
    /// Whether the spec (not the host) is at fault.
    pub fn is_spec_error(&self) -> bool {
        !matches!(self, StoreError::Resolve { .. } | StoreError::Root { .. })
    }
}

/// The resolved host paths of a spec's files: real paths inside
/// `<store root>/nix/store`, free of symlinks, each a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub disk_image: Option<PathBuf>,
}

/// Resolves every file the spec names beneath `store_root`. Blocking (a
/// few syscalls per path).
pub fn resolve_spec(store_root: &Path, spec: &VmSpec) -> Result<HostFiles, StoreError> {
    let store = Store::open(store_root)?;
    let kernel = store.resolve(SpecField::KernelPath, spec.kernel_path().as_str())?;
    let initrd = spec
        .initrd_path()
        .map(|p| store.resolve(SpecField::InitrdPath, p.as_str()))
        .transpose()?;
    let disk_image = spec
        .disk_image_path()
        .map(|p| {
            let field = SpecField::DiskImagePath;
            let resolved = store.resolve(field, p.as_str())?;
            let path = p.as_str().to_owned();
            match has_backing_file(&resolved) {
                Ok(false) => Ok(resolved),
                Ok(true) => Err(StoreError::BackingFile { field, path }),
                Err(source) => Err(StoreError::Resolve {
                    field,
                    path,
                    root: store_root.to_owned(),
                    source,
                }),
            }
        })
        .transpose()?;
    Ok(HostFiles {
        kernel,
        initrd,
        disk_image,
    })
}

/// An open store root and the real path of its `nix/store`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    root_fd: OwnedFd,
    store: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Root {
            root: root.to_owned(),
            source,
        };
        let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root_fd = rustix::fs::open(root, dir, Mode::empty()).map_err(|e| err(e.into()))?;
        // The store's real path, as files in it will read back (it may be
        // a link, e.g. to another disk, on some hosts).
        let store_fd = rustix::fs::openat2(&root_fd, "nix/store", dir, Mode::empty(), IN_ROOT)
            .map_err(|e| err(e.into()))?;
        let store = fd_path(&store_fd).map_err(err)?;
        Ok(Store {
            root: root.to_owned(),
            root_fd,
            store,
        })
    }

    /// The real host path of `store_path` (a `/nix/store/…` path of the
    /// spec's `field`), or why it is refused.
    pub fn resolve(&self, field: SpecField, store_path: &str) -> Result<PathBuf, StoreError> {
        let path = store_path.to_owned();
        let resolve_err = |source: io::Error| StoreError::Resolve {
            field,
            path: path.clone(),
            root: self.root.clone(),
            source,
        };
        // O_PATH: nothing is read and a fifo does not block the open.
        let fd = match rustix::fs::openat2(
            &self.root_fd,
            store_path.trim_start_matches('/'),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                // The name itself may be there: a link whose target, read
                // inside the root, is not (a host file, a run-dir file).
                let link = rustix::fs::openat2(
                    &self.root_fd,
                    store_path.trim_start_matches('/'),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    IN_ROOT,
                );
                let path = path.clone();
                return Err(match link {
                    Ok(_) => StoreError::Dangling { field, path },
                    Err(_) => StoreError::Missing { field, path },
                });
            }
            Err(e) => return Err(resolve_err(e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| resolve_err(e.into()))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(StoreError::NotRegular {
                field,
                path,
                kind: kind_name(kind),
            });
        }
        let resolved = fd_path(&fd).map_err(resolve_err)?;
        if !resolved.starts_with(&self.store) || resolved == self.store {
            return Err(StoreError::OutsideStore {
                field,
                path,
                resolved,
                store: self.store.clone(),
            });
        }
        Ok(resolved)
    }
}

/// The real path of an open fd (what `/proc/self/fd/N` links to).
fn fd_path(fd: &impl AsFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Whether a disk image is a qcow2 that names a backing file: CH (with
/// `backing_files`, which overlays need) would open that file too, and its
/// name is whatever the image's author wrote, e.g. `/etc/shadow`.
fn has_backing_file(resolved: &Path) -> io::Result<bool> {
    let mut head = Vec::with_capacity(20);
    std::fs::File::open(resolved)?
        .take(20)
        .read_to_end(&mut head)?;
    Ok(head.len() == 20 && head[..4] == *b"QFI\xfb" && head[8..16].iter().any(|b| *b != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const IMG: &str = "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-img";
    const OTHER: &str = "/nix/store/2c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-other";

    /// A store root with one store path `IMG` and another `OTHER` holding
    /// a raw image; returns the root and the host directory of `IMG`.
    fn root(dir: &Path) -> (PathBuf, PathBuf) {
        let root = dir.join("root");
        let img = root.join(IMG.trim_start_matches('/'));
        let other = root.join(OTHER.trim_start_matches('/'));
        std::fs::create_dir_all(&img).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("disk.raw"), [0u8; 512]).unwrap();
        (root, img)
    }

    fn resolve(root: &Path, name: &str) -> Result<PathBuf, StoreError> {
        Store::open(root)
            .unwrap()
            .resolve(SpecField::DiskImagePath, &format!("{IMG}/{name}"))
    }

    #[test]
    fn links_inside_the_store_resolve_to_the_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let (root, img) = root(dir.path());
        let real = root
            .join(OTHER.trim_start_matches('/'))
            .join("disk.raw")
            .canonicalize()
            .unwrap();
        // Absolute: resolves inside the store root, not on the host's /nix.
        symlink(format!("{OTHER}/disk.raw"), img.join("abs.raw")).unwrap();
        assert_eq!(resolve(&root, "abs.raw").unwrap(), real);
        symlink(
            "../2c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-other/disk.raw",
            img.join("rel.raw"),
        )
        .unwrap();
        assert_eq!(resolve(&root, "rel.raw").unwrap(), real);
        // A chain of links, ending in the store.
        symlink("rel.raw", img.join("chain.raw")).unwrap();
        assert_eq!(resolve(&root, "chain.raw").unwrap(), real);
    }

    /// A store that is itself a link (to another disk, say) is where its
    /// files are; they are not taken for files outside it.
    #[test]
    fn a_linked_store_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let real = root
            .join("mnt/store")
            .join(OTHER.trim_start_matches("/nix/store/"));
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("disk.raw"), [0u8; 512]).unwrap();
        std::fs::create_dir_all(root.join("nix")).unwrap();
        symlink("/mnt/store", root.join("nix/store")).unwrap();
        let got = Store::open(&root)
            .unwrap()
            .resolve(SpecField::DiskImagePath, &format!("{OTHER}/disk.raw"))
            .unwrap();
        assert_eq!(got, real.join("disk.raw").canonicalize().unwrap());
    }

    #[test]
    fn links_out_of_the_store_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let (root, img) = root(dir.path());
        // A host file standing in for /etc/shadow.
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "root:secret").unwrap();
        symlink(&secret, img.join("host.raw")).unwrap();
        // Resolved in the root, the absolute link names a file that is not
        // there: the host file is never reached.
        let err = resolve(&root, "host.raw").unwrap_err();
        assert!(matches!(err, StoreError::Dangling { .. }), "{err}");
        assert!(
            err.to_string().starts_with("diskImagePath /nix/store/"),
            "{err}"
        );
        // `..` stops at the root; so does a chain through it.
        symlink("../../../../shadow", img.join("up.raw")).unwrap();
        assert!(matches!(
            resolve(&root, "up.raw"),
            Err(StoreError::Dangling { .. })
        ));
        assert!(matches!(
            resolve(&root, "absent.raw"),
            Err(StoreError::Missing { .. })
        ));
        // A file inside the root but outside its nix/store.
        std::fs::write(root.join("run.disk"), [0u8; 512]).unwrap();
        symlink("/run.disk", img.join("run.raw")).unwrap();
        let err = resolve(&root, "run.raw").unwrap_err();
        assert!(matches!(err, StoreError::OutsideStore { .. }), "{err}");
        assert!(err.to_string().contains("outside the store"), "{err}");
        // With `/` as the root (production), a link to a host file resolves
        // but lands outside /nix/store.
        let host = Store::open(Path::new("/")).unwrap();
        let err = host
            .resolve(SpecField::KernelPath, secret.to_str().unwrap())
            .unwrap_err();
        assert!(matches!(err, StoreError::OutsideStore { .. }), "{err}");
        assert!(err.to_string().starts_with("kernelPath "), "{err}");
    }

    #[test]
    fn only_regular_files_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (root, img) = root(dir.path());
        std::fs::create_dir(img.join("dir.raw")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            img.join("fifo.raw"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        symlink("/dev/null", img.join("null.raw")).unwrap();
        std::os::unix::net::UnixListener::bind(img.join("sock.raw")).unwrap();
        for (name, kind) in [
            ("dir.raw", "directory"),
            ("fifo.raw", "fifo"),
            ("sock.raw", "socket"),
        ] {
            let err = resolve(&root, name).unwrap_err();
            assert!(
                matches!(err, StoreError::NotRegular { kind: k, .. } if k == kind),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(&format!("is a {kind}")), "{err}");
        }
        // /dev/null inside the root does not exist; in the host's root it
        // is a character device.
        assert!(matches!(
            resolve(&root, "null.raw"),
            Err(StoreError::Dangling { .. })
        ));
        let host = Store::open(Path::new("/")).unwrap();
        let err = host
            .resolve(SpecField::InitrdPath, "/dev/null")
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_qcow2_naming_a_backing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (root, img) = root(dir.path());
        let mut head = b"QFI\xfb\0\0\0\x03".to_vec();
        head.extend_from_slice(&512u64.to_be_bytes());
        head.extend_from_slice(&11u32.to_be_bytes());
        head.resize(512, 0);
        head.extend_from_slice(b"/etc/shadow");
        std::fs::write(img.join("disk.qcow2"), &head).unwrap();
        let spec = crate::dto::VmSpec::new(crate::dto::VmSpecFields {
            name: "a".into(),
            toplevel: IMG.into(),
            kernel_path: format!("{OTHER}/disk.raw"),
            disk_image_path: format!("{IMG}/disk.qcow2"),
            cpu: 1,
            memory_mb: 128,
            content_hash: "h".into(),
            ..Default::default()
        })
        .unwrap();
        let err = resolve_spec(&root, &spec).unwrap_err();
        assert!(matches!(err, StoreError::BackingFile { .. }), "{err}");
        assert!(err.to_string().starts_with("diskImagePath "), "{err}");
        // Without a backing file (offset 0) the same image is accepted.
        head[8..16].fill(0);
        std::fs::write(img.join("disk.qcow2"), &head).unwrap();
        let files = resolve_spec(&root, &spec).unwrap();
        assert!(files.disk_image.unwrap().ends_with("disk.qcow2"));
        assert!(files.initrd.is_none());
    }
}
