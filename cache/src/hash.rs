//! SHA-256 hashes as Nix writes them (`sha256:<nix base32>`), store path
//! names as Nix validates them, and a writer that hashes and counts what
//! passes through it (so uploads are hashed while they are written).

use std::fmt;
use std::io::{self, Write};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::nixbase32;

/// Errors parsing hashes and store paths.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    #[error("hash {0:?} is not sha256 (expected `sha256:` followed by base32, base16 or base64)")]
    NotSha256(String),
    #[error("hash {0:?} has a bad encoding")]
    BadEncoding(String),
    #[error("store path {0:?} is not directly under {1}")]
    NotInStore(String, String),
    #[error("store path {0:?} has an invalid hash part")]
    BadHashPart(String),
    #[error(
        "store path {0:?} has an invalid name (allowed: a-z A-Z 0-9 + - . _ ? =, not starting with '.', at most 211 characters)"
    )]
    BadName(String),
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses `sha256:<base32|base16|base64>` or SRI `sha256-<base64>`, the
    /// forms Nix accepts in narinfo files.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let body = if let Some(b) = s.strip_prefix("sha256:") {
            b
        } else if let Some(b) = s.strip_prefix("sha256-") {
            return Self::from_base64(b).ok_or_else(|| HashError::BadEncoding(s.to_owned()));
        } else {
            return Err(HashError::NotSha256(s.to_owned()));
        };
        let parsed = match body.len() {
            52 => nixbase32::decode::<32>(body).ok(),
            64 => decode_hex(body),
            44 => Self::from_base64(body).map(|h| h.0),
            _ => None,
        };
        parsed
            .map(Self)
            .ok_or_else(|| HashError::BadEncoding(s.to_owned()))
    }

    fn from_base64(b: &str) -> Option<Self> {
        let v = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
        Some(Self(v.try_into().ok()?))
    }

    /// The bare Nix base32 digest (52 characters), as used in NAR file names.
    pub fn to_base32(&self) -> String {
        nixbase32::encode(&self.0)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl fmt::Display for Sha256Hash {
    /// `sha256:<base32>`, the form in narinfo files and signature fingerprints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_base32())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A store path's base name `<hash part>-<name>`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathName(String);

impl StorePathName {
    /// Validates a base name such as `0mdq…-hello-1.0`.
    pub fn parse(base: &str) -> Result<Self, HashError> {
        let (hash, name) = base
            .split_at_checked(32)
            .ok_or_else(|| HashError::BadHashPart(base.to_owned()))?;
        if !hash.bytes().all(nixbase32::is_digit) {
            return Err(HashError::BadHashPart(base.to_owned()));
        }
        let name = name
            .strip_prefix('-')
            .ok_or_else(|| HashError::BadHashPart(base.to_owned()))?;
        if !commands::types::is_store_name(name) {
            return Err(HashError::BadName(base.to_owned()));
        }
        Ok(Self(base.to_owned()))
    }

    /// Parses a full path `<store dir>/<base>`.
    pub fn from_full(path: &str, store_dir: &str) -> Result<Self, HashError> {
        let base = path
            .strip_prefix(store_dir)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| HashError::NotInStore(path.to_owned(), store_dir.to_owned()))?;
        Self::parse(base)
    }

    /// The 32-character hash part, which names the narinfo.
    pub fn hash_part(&self) -> &str {
        &self.0[..32]
    }

    /// `<hash>-<name>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<store dir>/<hash>-<name>`.
    pub fn full(&self, store_dir: &str) -> String {
        format!("{store_dir}/{}", self.0)
    }
}

impl fmt::Display for StorePathName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True for a valid narinfo hash part (32 Nix base32 digits).
pub fn is_hash_part(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(nixbase32::is_digit)
}

/// Passes writes through to `inner` while hashing and counting them.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

// By hand: the writer need not be `Debug`, and the hasher state says nothing.
impl<W> std::fmt::Debug for HashingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingWriter")
            .field("count", &self.count)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<W: Write> HashingWriter<W> {
    /// Hashes everything written; fails a write that would pass `limit` bytes.
    pub fn new(inner: W, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }

    /// Digest and byte count so far, and the inner writer.
    pub fn finish(self) -> (Sha256Hash, u64, W) {
        (
            Sha256Hash(self.hasher.finalize().into()),
            self.count,
            self.inner,
        )
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.count + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "size limit exceeded",
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_encoding_nix_accepts() {
        let h = Sha256Hash::of(b"");
        for s in [
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        ] {
            assert_eq!(Sha256Hash::parse(s).unwrap(), h, "{s}");
        }
        assert_eq!(
            h.to_string(),
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert!(matches!(
            Sha256Hash::parse("md5:abc"),
            Err(HashError::NotSha256(_))
        ));
        assert!(matches!(
            Sha256Hash::parse("sha256:xyz"),
            Err(HashError::BadEncoding(_))
        ));
    }

    #[test]
    fn store_path_names_are_validated() {
        let ok = StorePathName::from_full(
            "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-hello-1.0",
            "/nix/store",
        )
        .unwrap();
        assert_eq!(ok.hash_part(), "0mdqa9w1p6cmli6976v4wi0sw9r4p5pr");
        for bad in [
            "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-..",
            "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-a/b",
            "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-.hidden",
            "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-",
            "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pe-x",
            "/nix/store/short-x",
            "/nix/store/../etc/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-x",
            "/tmp/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-x",
        ] {
            assert!(
                StorePathName::from_full(bad, "/nix/store").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn hashing_writer_counts_and_limits() {
        let mut w = HashingWriter::new(Vec::new(), 5);
        w.write_all(b"hello").unwrap();
        assert!(w.write_all(b"!").is_err());
        let (h, n, v) = w.finish();
        assert_eq!((n, v.as_slice()), (5, &b"hello"[..]));
        assert_eq!(
            h.to_base32(),
            "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"
        );
    }
}
