//! Procurator's Nix binary cache: serves narinfo/NAR files over HTTP exactly
//! as Nix's `http://` binary cache store expects, accepts the uploads that
//! `nix copy --to` sends from holders of an upload token, checks them,
//! signs narinfos with the cache's own key, and keeps an SQLite index for
//! gc, pinning and `verify`.
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

use std::path::PathBuf;

pub use server::run;

/// Default limit for one uploaded (compressed) NAR file: 8 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 8 << 30;

/// Default for [`Config::upload_stall_timeout`].
pub const DEFAULT_UPLOAD_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Settings of a serving cache.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the index, NARs and narinfos live (created if missing).
    pub data_dir: PathBuf,
    /// Secret key file in Nix's format (`cache keygen` or `nix-store --generate-binary-cache-key`).
    pub key_file: PathBuf,
    /// Password expected in HTTP basic auth on writes; `None` disables uploads.
    pub upload_token: Option<String>,
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
}

impl Config {
    /// A config with defaults: no uploads, 8 GiB limit, priority 40, `/nix/store`.
    pub fn new(data_dir: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            key_file: key_file.into(),
            upload_token: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            priority: 40,
            store_dir: "/nix/store".into(),
            upload_stall_timeout: DEFAULT_UPLOAD_STALL_TIMEOUT,
        }
    }

    /// Enables uploads for holders of `token`.
    pub fn with_upload_token(mut self, token: impl Into<String>) -> Self {
        self.upload_token = Some(token.into());
        self
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
}
