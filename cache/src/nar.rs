//! The NAR (Nix ARchive) format: dumping a filesystem tree exactly as
//! `nix-store --dump` does, and a streaming parser that validates a NAR and
//! lists its entries (used by `verify` and `ls`).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Errors dumping or parsing NARs.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    #[error("I/O on {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading NAR")]
    Read(#[source] io::Error),
    #[error("malformed NAR: {0}")]
    Malformed(String),
    #[error("unsupported file type at {0}")]
    Unsupported(String),
}

fn bad(msg: impl Into<String>) -> NarError {
    NarError::Malformed(msg.into())
}

fn write_str(out: &mut impl Write, s: &[u8]) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s)?;
    let pad = (8 - s.len() % 8) % 8;
    out.write_all(&[0u8; 8][..pad])
}

/// Writes the NAR serialisation of `path` to `out`.
pub fn dump(path: &Path, out: &mut impl Write) -> Result<(), NarError> {
    let io_err = |source| NarError::Io {
        path: path.display().to_string(),
        source,
    };
    write_str(out, b"nix-archive-1").map_err(io_err)?;
    dump_node(path, out)
}

fn dump_node(path: &Path, out: &mut impl Write) -> Result<(), NarError> {
    let io_err = |source| NarError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(io_err)?;
    let ft = meta.file_type();
    let mut w = |s: &[u8]| write_str(out, s).map_err(io_err);
    w(b"(")?;
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_err)?;
        w(b"type")?;
        w(b"symlink")?;
        w(b"target")?;
        w(target.as_os_str().as_encoded_bytes())?;
    } else if ft.is_file() {
        w(b"type")?;
        w(b"regular")?;
        if meta.permissions().mode() & 0o100 != 0 {
            w(b"executable")?;
            w(b"")?;
        }
        w(b"contents")?;
        out.write_all(&meta.len().to_le_bytes()).map_err(io_err)?;
        let mut f = fs::File::open(path).map_err(io_err)?;
        let copied = io::copy(&mut f, out).map_err(io_err)?;
        if copied != meta.len() {
            return Err(NarError::Io {
                path: path.display().to_string(),
                source: io::Error::other("file changed size while dumping"),
            });
        }
        let pad = (8 - copied % 8) % 8;
        out.write_all(&[0u8; 8][..pad as usize]).map_err(io_err)?;
    } else if ft.is_dir() {
        w(b"type")?;
        w(b"directory")?;
        let mut names: Vec<_> = fs::read_dir(path)
            .map_err(io_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        // NAR entries are sorted by raw byte order of their names.
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for name in names {
            write_str(out, b"entry").map_err(io_err)?;
            write_str(out, b"(").map_err(io_err)?;
            write_str(out, b"name").map_err(io_err)?;
            write_str(out, name.as_encoded_bytes()).map_err(io_err)?;
            write_str(out, b"node").map_err(io_err)?;
            dump_node(&path.join(&name), out)?;
            write_str(out, b")").map_err(io_err)?;
        }
    } else {
        return Err(NarError::Unsupported(path.display().to_string()));
    }
    write_str(out, b")").map_err(io_err)
}

/// What one NAR entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    Regular { executable: bool, size: u64 },
    Symlink { target: String },
}

/// One entry of a NAR; `path` is relative to the root ("" for the root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
}

struct Parser<R> {
    r: R,
    entries: Vec<Entry>,
}

/// Longest token, name or symlink target we accept (Nix limits names similarly).
const MAX_STR: u64 = 4096;
/// Longest entry path (Linux PATH_MAX): Nix restores a NAR through full
/// paths, so a longer one cannot be unpacked anyway; it keeps the listed
/// paths' memory proportional to the NAR.
const MAX_PATH: usize = 4096;
/// Deepest directory nesting: the parser recurses once per level and must
/// fit a 2 MiB thread stack (tokio's blocking threads) even in a debug
/// build, where one level takes several KiB. Real store paths nest far less.
const MAX_DEPTH: usize = 256;

impl<R: Read> Parser<R> {
    fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b).map_err(NarError::Read)?;
        Ok(u64::from_le_bytes(b))
    }

    fn skip_padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = ((8 - len % 8) % 8) as usize;
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b[..pad]).map_err(NarError::Read)?;
        if b[..pad].iter().any(|&x| x != 0) {
            return Err(bad("non-zero padding"));
        }
        Ok(())
    }

    fn read_str(&mut self) -> Result<Vec<u8>, NarError> {
        let len = self.read_u64()?;
        if len > MAX_STR {
            return Err(bad(format!("string of {len} bytes")));
        }
        let mut v = vec![0u8; len as usize];
        self.r.read_exact(&mut v).map_err(NarError::Read)?;
        self.skip_padding(len)?;
        Ok(v)
    }

    fn expect(&mut self, tok: &str) -> Result<(), NarError> {
        let got = self.read_str()?;
        if got != tok.as_bytes() {
            return Err(bad(format!(
                "expected {tok:?}, got {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        Ok(())
    }

    fn node(&mut self, path: String, depth: usize) -> Result<(), NarError> {
        self.expect("(")?;
        self.expect("type")?;
        let ty = self.read_str()?;
        match ty.as_slice() {
            b"regular" => {
                let mut tok = self.read_str()?;
                let mut executable = false;
                if tok == b"executable" {
                    self.expect("")?;
                    executable = true;
                    tok = self.read_str()?;
                }
                if tok != b"contents" {
                    return Err(bad("expected contents"));
                }
                let size = self.read_u64()?;
                let copied = io::copy(&mut (&mut self.r).take(size), &mut io::sink())
                    .map_err(NarError::Read)?;
                if copied != size {
                    return Err(bad("truncated file contents"));
                }
                self.skip_padding(size)?;
                self.expect(")")?;
                self.entries.push(Entry {
                    path,
                    kind: EntryKind::Regular { executable, size },
                });
            }
            b"symlink" => {
                self.expect("target")?;
                let target = String::from_utf8(self.read_str()?)
                    .map_err(|_| bad("non-UTF-8 symlink target"))?;
                self.expect(")")?;
                self.entries.push(Entry {
                    path,
                    kind: EntryKind::Symlink { target },
                });
            }
            b"directory" => {
                self.entries.push(Entry {
                    path: path.clone(),
                    kind: EntryKind::Directory,
                });
                let mut prev: Option<Vec<u8>> = None;
                loop {
                    let tok = self.read_str()?;
                    if tok == b")" {
                        break;
                    }
                    if tok != b"entry" {
                        return Err(bad("expected entry"));
                    }
                    self.expect("(")?;
                    self.expect("name")?;
                    let name = self.read_str()?;
                    if name.is_empty()
                        || name == b"."
                        || name == b".."
                        || name.contains(&b'/')
                        || name.contains(&0)
                    {
                        return Err(bad(format!(
                            "invalid entry name {:?}",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    if prev.as_ref().is_some_and(|p| *p >= name) {
                        return Err(bad("entries not sorted or duplicated"));
                    }
                    let name_s =
                        String::from_utf8(name.clone()).map_err(|_| bad("non-UTF-8 entry name"))?;
                    prev = Some(name);
                    self.expect("node")?;
                    let child = if path.is_empty() {
                        name_s
                    } else {
                        format!("{path}/{name_s}")
                    };
                    if child.len() > MAX_PATH {
                        return Err(bad(format!("entry path longer than {MAX_PATH} bytes")));
                    }
                    if depth >= MAX_DEPTH {
                        return Err(bad(format!("directories nested deeper than {MAX_DEPTH}")));
                    }
                    self.node(child, depth + 1)?;
                    self.expect(")")?;
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown type {:?}",
                    String::from_utf8_lossy(other)
                )));
            }
        }
        Ok(())
    }
}

/// Parses a whole NAR, checking its structure, and lists its entries.
/// Fails on trailing bytes after the root node.
pub fn list(r: impl Read) -> Result<Vec<Entry>, NarError> {
    let mut p = Parser {
        r,
        entries: Vec::new(),
    };
    p.expect("nix-archive-1")?;
    p.node(String::new(), 0)?;
    let mut extra = [0u8; 1];
    match p.r.read(&mut extra) {
        Ok(0) => Ok(p.entries),
        Ok(_) => Err(bad("trailing data after the root node")),
        Err(e) => Err(NarError::Read(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("bin")).unwrap();
        fs::write(d.path().join("bin/run"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(d.path().join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(d.path().join("a.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("bin/run", d.path().join("link")).unwrap();
        d
    }

    #[test]
    fn dump_then_list() {
        let d = tree();
        let mut nar = Vec::new();
        dump(d.path(), &mut nar).unwrap();
        assert_eq!(nar.len() % 8, 0);
        let entries = list(nar.as_slice()).unwrap();
        let paths: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["", "a.txt", "bin", "bin/run", "link"]);
        assert_eq!(
            entries[3].kind,
            EntryKind::Regular {
                executable: true,
                size: 18
            }
        );
        assert_eq!(
            entries[4].kind,
            EntryKind::Symlink {
                target: "bin/run".into()
            }
        );
    }

    #[test]
    fn single_file_layout_is_exact() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"abc").unwrap();
        let mut nar = Vec::new();
        dump(&f, &mut nar).unwrap();
        let mut want = Vec::new();
        tokens(&mut want, &[b"nix-archive-1", b"(", b"type", b"regular"]);
        tokens(&mut want, &[b"contents", b"abc", b")"]);
        assert_eq!(nar, want);
    }

    /// Writes each of `list` as a NAR string.
    fn tokens(out: &mut Vec<u8>, list: &[&[u8]]) {
        for s in list {
            write_str(out, s).unwrap();
        }
    }

    /// A NAR of directories nested `depth` deep, each entry named `name`.
    fn nested(depth: usize, name: &[u8]) -> Vec<u8> {
        let mut nar = Vec::new();
        write_str(&mut nar, b"nix-archive-1").unwrap();
        for _ in 0..depth {
            tokens(&mut nar, &[b"(", b"type", b"directory"]);
            tokens(&mut nar, &[b"entry", b"(", b"name", name, b"node"]);
        }
        tokens(&mut nar, &[b"(", b"type", b"directory", b")"]);
        for _ in 0..depth {
            write_str(&mut nar, b")").unwrap();
            write_str(&mut nar, b")").unwrap();
        }
        nar
    }

    // Found while writing fuzz/fuzz_targets/nar.rs (too deep for the
    // fuzzer's input sizes; confirmed with crafted NARs): the recursive
    // parser had no depth bound, so a 1.6 MiB NAR nested 10,000 deep
    // overflowed the stack of the thread verifying an upload and aborted
    // the cache, and the listed paths grew quadratically with the depth.
    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deepest_ok = MAX_DEPTH;
        let run = |depth| {
            let nar = nested(depth, b"a");
            // The stack size of tokio's blocking threads, where uploads are checked.
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || list(nar.as_slice()).map(|e| e.len()))
                .unwrap()
                .join()
                .expect("parser thread survived")
        };
        assert_eq!(run(deepest_ok).unwrap(), deepest_ok + 1);
        assert!(matches!(run(deepest_ok + 1), Err(NarError::Malformed(_))));
        assert!(matches!(run(100_000), Err(NarError::Malformed(_))));
    }

    #[test]
    fn overlong_paths_are_refused() {
        let nar = nested(2, &[b'n'; 3000]);
        let err = list(nar.as_slice()).unwrap_err().to_string();
        assert!(err.contains("longer than 4096"), "{err}");
    }

    #[test]
    fn rejects_truncated_and_trailing() {
        let d = tree();
        let mut nar = Vec::new();
        dump(d.path(), &mut nar).unwrap();
        assert!(list(&nar[..nar.len() - 8]).is_err());
        let mut longer = nar.clone();
        longer.extend_from_slice(&[0u8; 8]);
        assert!(matches!(
            list(longer.as_slice()),
            Err(NarError::Malformed(_))
        ));
        assert!(list(&b"not a nar"[..]).is_err());
    }
}
