//! The `.narinfo` text format: parsing what `nix copy --to` uploads,
//! rendering what we serve, and the fingerprint that signatures cover.

use std::fmt::Write as _;

use crate::hash::{HashError, Sha256Hash, StorePathName};

/// Errors parsing a narinfo.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarInfoError {
    #[error("line {0} is not `Key: value`")]
    BadLine(usize),
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("field {0}: {1}")]
    BadField(&'static str, String),
    #[error("field {field}")]
    Path {
        field: &'static str,
        #[source]
        source: HashError,
    },
}

/// How a stored NAR file is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
    Br,
}

impl Compression {
    /// Parses the `Compression:` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "xz" => Self::Xz,
            "zstd" => Self::Zstd,
            "bzip2" => Self::Bzip2,
            "br" => Self::Br,
            _ => return None,
        })
    }

    /// The `Compression:` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Br => "br",
        }
    }

    /// The NAR file extension nix uses for this compression (`.nar` + this).
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Xz => ".xz",
            Self::Zstd => ".zst",
            Self::Bzip2 => ".bz2",
            Self::Br => ".br",
        }
    }

    /// The compression a NAR file name implies (`x.nar.zst` → zstd).
    pub fn from_file_name(name: &str) -> Option<Self> {
        let (_, ext) = name.split_once(".nar")?;
        [Self::None, Self::Xz, Self::Zstd, Self::Bzip2, Self::Br]
            .into_iter()
            .find(|c| c.extension() == ext)
    }
}

/// One narinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePathName,
    pub url: String,
    pub compression: Compression,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePathName>,
    pub deriver: Option<StorePathName>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

impl NarInfo {
    /// Parses narinfo text; store paths must lie in `store_dir`.
    pub fn parse(text: &str, store_dir: &str) -> Result<Self, NarInfoError> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut sigs = Vec::new();
        let mut ca = None;
        // Lines end at '\n' only, as in Nix's parser: `str::lines` would also
        // drop a '\r' before it, but keep one at the very end, so a value
        // ending in '\r' rendered back would parse differently.
        for (i, line) in text.split('\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(": ").ok_or(NarInfoError::BadLine(i + 1))?;
            match key {
                "StorePath" => {
                    store_path = Some(StorePathName::from_full(value, store_dir).map_err(
                        |source| NarInfoError::Path {
                            field: "StorePath",
                            source,
                        },
                    )?)
                }
                "URL" => url = Some(value.to_owned()),
                "Compression" => {
                    compression =
                        Some(Compression::parse(value).ok_or_else(|| {
                            NarInfoError::BadField("Compression", value.to_owned())
                        })?)
                }
                "FileHash" => file_hash = Some(parse_hash("FileHash", value)?),
                "FileSize" => file_size = Some(parse_u64("FileSize", value)?),
                "NarHash" => nar_hash = Some(parse_hash("NarHash", value)?),
                "NarSize" => nar_size = Some(parse_u64("NarSize", value)?),
                "References" => {
                    references = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(|r| {
                            StorePathName::parse(r).map_err(|source| NarInfoError::Path {
                                field: "References",
                                source,
                            })
                        })
                        .collect::<Result<_, _>>()?
                }
                "Deriver" if value != "unknown-deriver" => {
                    deriver =
                        Some(
                            StorePathName::parse(value).map_err(|source| NarInfoError::Path {
                                field: "Deriver",
                                source,
                            })?,
                        )
                }
                "Sig" => sigs.push(value.to_owned()),
                "CA" => ca = Some(value.to_owned()),
                // Nix ignores fields it does not know (System, …); so do we.
                _ => {}
            }
        }
        Ok(Self {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            // A narinfo without a Compression line means bzip2 to Nix.
            compression: compression.unwrap_or(Compression::Bzip2),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references,
            deriver,
            sigs,
            ca,
        })
    }

    /// The text Nix signs: `1;<path>;<narhash>;<narsize>;<refs,…>`.
    pub fn fingerprint(&self, store_dir: &str) -> String {
        let refs: Vec<String> = self.references.iter().map(|r| r.full(store_dir)).collect();
        format!(
            "1;{};{};{};{}",
            self.store_path.full(store_dir),
            self.nar_hash,
            self.nar_size,
            refs.join(",")
        )
    }

    /// Renders in Nix's field order.
    pub fn render(&self, store_dir: &str) -> String {
        let mut s = String::with_capacity(512);
        let _ = writeln!(s, "StorePath: {}", self.store_path.full(store_dir));
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression.as_str());
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {h}");
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash);
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<&str> = self.references.iter().map(StorePathName::as_str).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {d}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }
}

fn parse_hash(field: &'static str, v: &str) -> Result<Sha256Hash, NarInfoError> {
    Sha256Hash::parse(v).map_err(|e| NarInfoError::BadField(field, e.to_string()))
}

fn parse_u64(field: &'static str, v: &str) -> Result<u64, NarInfoError> {
    v.parse()
        .map_err(|_| NarInfoError::BadField(field, v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // As `nix copy --to http://…?compression=zstd` uploads it (nix 2.8).
    const UPLOADED: &str = "StorePath: /nix/store/2ic3dwh5ndmb1mn7svwjmkbxj6x0i1q4-b\n\
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.zst\n\
Compression: zstd\n\
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3\n\
FileSize: 172\n\
NarHash: sha256:0lb0i1gl1hdlq6zwkmyxsgb6xsk8x3drg0f2aqcb4y8nw8zapr3i\n\
NarSize: 248\n\
References: 2ic3dwh5ndmb1mn7svwjmkbxj6x0i1q4-b 8pq3nyhhb9brh8vwv3knfm6kx6yz0bhz-a\n\
Deriver: 5y2pl8mmx8wb5rwjpk2hb9vd4zrh5j0c-b.drv\n";

    #[test]
    fn parse_render_roundtrip() {
        let ni = NarInfo::parse(UPLOADED, "/nix/store").unwrap();
        assert_eq!(ni.compression, Compression::Zstd);
        assert_eq!(ni.references.len(), 2);
        assert_eq!(ni.render("/nix/store"), UPLOADED);
        assert_eq!(
            ni.fingerprint("/nix/store"),
            "1;/nix/store/2ic3dwh5ndmb1mn7svwjmkbxj6x0i1q4-b;sha256:0lb0i1gl1hdlq6zwkmyxsgb6xsk8x3drg0f2aqcb4y8nw8zapr3i;248;\
/nix/store/2ic3dwh5ndmb1mn7svwjmkbxj6x0i1q4-b,/nix/store/8pq3nyhhb9brh8vwv3knfm6kx6yz0bhz-a"
        );
    }

    // Found by fuzz/fuzz_targets/narinfo.rs (fuzz/regressions/narinfo/):
    // a '\r' ending the last line survived parsing, and the rendered text
    // then parsed to a different narinfo.
    #[test]
    fn carriage_returns_are_part_of_values_as_in_nix() {
        let text = format!("{UPLOADED}Sig: k:s\r");
        let ni = NarInfo::parse(&text, "/nix/store").unwrap();
        assert_eq!(ni.sigs, ["k:s\r"]);
        let crlf = format!("{UPLOADED}Sig: k:s\r\n");
        assert_eq!(NarInfo::parse(&crlf, "/nix/store").unwrap(), ni);
        let rendered = ni.render("/nix/store");
        assert_eq!(NarInfo::parse(&rendered, "/nix/store").unwrap(), ni);
    }

    #[test]
    fn leaf_fingerprint_ends_in_semicolon() {
        let text = UPLOADED.replace(
            "References: 2ic3dwh5ndmb1mn7svwjmkbxj6x0i1q4-b 8pq3nyhhb9brh8vwv3knfm6kx6yz0bhz-a",
            "References: ",
        );
        let ni = NarInfo::parse(&text, "/nix/store").unwrap();
        assert!(ni.references.is_empty());
        assert!(ni.fingerprint("/nix/store").ends_with(";248;"));
    }

    #[test]
    fn rejects_bad_narinfos() {
        let missing = UPLOADED.replace("NarSize: 248\n", "");
        assert_eq!(
            NarInfo::parse(&missing, "/nix/store"),
            Err(NarInfoError::Missing("NarSize"))
        );
        let dotdot = UPLOADED.replace("-b\nURL", "-..\nURL");
        assert!(matches!(
            NarInfo::parse(&dotdot, "/nix/store"),
            Err(NarInfoError::Path { .. })
        ));
        let slash = UPLOADED.replace(
            "References: 2ic3dwh5ndmb1mn7svwjmkbxj6x0i1q4-b",
            "References: 2ic3dwh5ndmb1mn7svwjmkbxj6x0i1q4-b/x",
        );
        assert!(matches!(
            NarInfo::parse(&slash, "/nix/store"),
            Err(NarInfoError::Path { .. })
        ));
        assert_eq!(
            NarInfo::parse("garbage", "/nix/store"),
            Err(NarInfoError::BadLine(1))
        );
        let no_compression = UPLOADED.replace("Compression: zstd\n", "");
        assert_eq!(
            NarInfo::parse(&no_compression, "/nix/store")
                .unwrap()
                .compression,
            Compression::Bzip2
        );
    }

    #[test]
    fn compression_from_file_name() {
        assert_eq!(
            Compression::from_file_name("abc.nar.zst"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_file_name("abc.nar"),
            Some(Compression::None)
        );
        assert_eq!(
            Compression::from_file_name("abc.nar.xz"),
            Some(Compression::Xz)
        );
        assert_eq!(Compression::from_file_name("abc.nar.gz"), None);
    }
}
