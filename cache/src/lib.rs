//! Procurator's Nix binary cache: serves narinfo/NAR files over HTTP exactly
//! as Nix's `http://` binary cache store expects, accepts the uploads that
//! `nix copy --to` sends from holders of an upload token (one for all
//! projects, or one per project: [`UploadTokens`]), checks them, signs
//! narinfos with the cache's own key, and keeps an SQLite index for gc,
//! pinning and `verify`.
//!
//! Other crates start one in-process with [`run`] on a bound listener.

pub mod hash;
pub mod index;
pub mod metrics;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod server;
pub mod signing;
pub mod store;

use std::path::{Path, PathBuf};

pub use server::run;

/// Default limit for one uploaded (compressed) NAR file: 8 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 8 << 30;

/// Largest accepted build log (`PUT /log/<drv>`): 64 MiB. CI keeps its
/// own job log bounded too; a log past this is refused whole (413) rather
/// than stored cut.
pub const MAX_LOG_BYTES: usize = 64 << 20;

/// Default grace period of gc: paths uploaded within it are kept unpinned.
pub const DEFAULT_GC_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Default for [`Config::upload_stall_timeout`].
pub const DEFAULT_UPLOAD_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Settings of a serving cache.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the index, NARs and narinfos live (created if missing).
    pub data_dir: PathBuf,
    /// Secret key file in Nix's format (`cache keygen` or `nix-store --generate-binary-cache-key`).
    pub key_file: PathBuf,
    /// Passwords accepted in HTTP basic auth on writes; none disables uploads.
    pub upload_tokens: UploadTokens,
    /// Largest accepted NAR file; larger uploads get 413 before their body is read.
    pub max_upload_bytes: u64,
    /// `Priority:` in `nix-cache-info` (lower wins among substituters).
    pub priority: u32,
    /// The Nix store directory served paths live in.
    pub store_dir: String,
    /// An upload whose body sends nothing for this long is refused (400).
    /// nix 2.8 retries a failed PUT (connection reset, 5xx) without
    /// re-sending its body, and would otherwise wait on us for minutes.
    pub upload_stall_timeout: std::time::Duration,
    /// Run gc this often while serving; `None` (the default) never does.
    pub gc_interval: Option<std::time::Duration>,
    /// What a scheduled gc keeps besides pins.
    pub gc_policy: store::GcPolicy,
    /// Where a scheduled gc learns which generations workers still run
    /// (their pins are kept however old); `None` keeps only the newest.
    pub live_generations_from: Option<LiveSource>,
}

/// A control plane to ask for `ProjectStatus.liveGenerations`, with a
/// token that may read (reader).
#[derive(Debug, Clone)]
pub struct LiveSource {
    pub control_plane: String,
    pub token: commands::auth::Secret,
}

impl Config {
    /// A config with defaults: no uploads, 8 GiB limit, priority 40,
    /// `/nix/store`, no scheduled gc.
    pub fn new(data_dir: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            key_file: key_file.into(),
            upload_tokens: UploadTokens::default(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            priority: 40,
            store_dir: "/nix/store".into(),
            upload_stall_timeout: DEFAULT_UPLOAD_STALL_TIMEOUT,
            gc_interval: None,
            gc_policy: store::GcPolicy {
                grace: DEFAULT_GC_GRACE,
                keep_generations: Some(store::DEFAULT_KEEP_GENERATIONS),
            },
            live_generations_from: None,
        }
    }

    /// Enables uploads for holders of `token`, for every project.
    pub fn with_upload_token(mut self, token: impl Into<String>) -> Self {
        self.upload_tokens.entries.push((None, token.into()));
        self
    }
}

/// Who uploaded: the project of a per-project token, or `None` for the
/// all-projects token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploader {
    pub project: Option<String>,
}

/// The upload tokens of a cache. Each line of `--upload-token-file` is
/// either `<token>` (uploads and pins for every project; a file holding
/// only the token is this) or `<project> <token>`: uploads recorded as
/// that project's, and pins only its own (it cannot replace or delete a
/// pin another project or the all-projects token made, so it cannot make
/// gc collect another project's closures).
#[derive(Clone, Default)]
pub struct UploadTokens {
    entries: Vec<(Option<String>, String)>,
}

/// Shows which projects have tokens, never the tokens.
impl std::fmt::Debug for UploadTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who: Vec<&str> = self
            .entries
            .iter()
            .map(|(p, _)| p.as_deref().unwrap_or("*"))
            .collect();
        f.debug_struct("UploadTokens")
            .field("projects", &who)
            .finish()
    }
}

/// A project name as repohub makes them: `^[a-z0-9][a-z0-9-]{0,62}$`.
pub(crate) fn is_project_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl UploadTokens {
    /// Parses a token file's text; errors name the line, never a token.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let bad = |line: usize, why: &str| Error::TokenFile {
            path: path.to_owned(),
            line,
            why: why.to_owned(),
        };
        let mut entries: Vec<(Option<String>, String)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (project, token) = match words.as_slice() {
                [t] => (None, *t),
                [p, t] if is_project_name(p) => (Some((*p).to_owned()), *t),
                [_, _] => {
                    return Err(bad(
                        i + 1,
                        "a project name is 1-63 of a-z 0-9 -, starting with a letter or digit",
                    ));
                }
                _ => return Err(bad(i + 1, "expected `<token>` or `<project> <token>`")),
            };
            if token.len() < commands::auth::MIN_TOKEN_LEN {
                return Err(bad(i + 1, "a token must be at least 16 characters long"));
            }
            if entries.iter().any(|(_, t)| t == token) {
                return Err(bad(i + 1, "the same token appears twice"));
            }
            entries.push((project, token.to_owned()));
        }
        Ok(UploadTokens { entries })
    }

    /// Reads and parses a token file (warning when others can read it).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = commands::auth::read_secret_file(path).map_err(Error::Tokens)?;
        let tokens = Self::parse(&text, path)?;
        if tokens.is_empty() {
            return Err(Error::TokenFile {
                path: path.to_owned(),
                line: 0,
                why: "no token".into(),
            });
        }
        Ok(tokens)
    }

    /// No tokens: nobody may upload.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Who `password` belongs to. Every token is compared (no early exit).
    pub fn check(&self, password: &str) -> Option<Uploader> {
        let mut found = None;
        for (project, token) in &self.entries {
            if commands::auth::ct_eq(token.as_bytes(), password.as_bytes()) && found.is_none() {
                found = Some(Uploader {
                    project: project.clone(),
                });
            }
        }
        found
    }
}

/// Errors starting or running the cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the signing key")]
    Key(#[from] signing::KeyError),
    #[error("opening the store")]
    Store(#[from] store::StoreError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upload token file {}, line {line}: {why}", path.display())]
    TokenFile {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("reading the upload token file")]
    Tokens(#[source] commands::auth::AuthError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_give_all_or_one_project() {
        let p = Path::new("tokens");
        let t = UploadTokens::parse(
            "# upload tokens\nall-projects-token-0001\nshop shop-token-00000001\nblog blog-token-00000001\n",
            p,
        )
        .unwrap();
        assert_eq!(
            t.check("all-projects-token-0001"),
            Some(Uploader { project: None })
        );
        assert_eq!(
            t.check("shop-token-00000001"),
            Some(Uploader {
                project: Some("shop".into())
            })
        );
        assert_eq!(t.check("shop-token-00000002"), None);
        assert_eq!(t.check(""), None);
        assert!(!format!("{t:?}").contains("token-0"), "{t:?}");
        for (text, why) in [
            ("Shop shop-token-00000001\n", "a project name"),
            ("a b c\n", "expected"),
            ("shop short\n", "at least 16"),
            ("x-token-0000000001\nshop x-token-0000000001\n", "twice"),
        ] {
            let e = UploadTokens::parse(text, p).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("line"), "{text:?}: {e}");
            assert!(!e.contains("0000001"), "token leaked: {e}");
        }
    }
}
