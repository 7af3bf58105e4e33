//! Test support shared by every crate whose tests run the real nix client
//! (repo_outils, ci_service, worker, end-to-end tests): a temp directory
//! holding the hermetic `nix.conf` of design §9 and its own
//! `XDG_CACHE_HOME`, so a test never reads /etc/nix, never tries
//! cache.nixos.org and never shares narinfo answers with another test.
//!
//! ```no_run
//! let h = repo_outils::testing::HermeticNix::new().unwrap();
//! // For a child process (ci_service, worker): set these variables.
//! let env = h.env(); // [("NIX_CONF_DIR", …), ("XDG_CACHE_HOME", …)]
//! // For in-process calls:
//! let nix = h.nix();
//! // A simulated host with its own store root under the temp dir:
//! let host_a = h.nix().with_store_root(h.dir().join("host-a"));
//! ```
//!
//! The store itself is the machine's `/nix/store` (nix 2.8 without a daemon
//! needs root; tests keep their paths apart by putting a unique marker in
//! derivation names when it matters).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::nix::Nix;

/// The `nix.conf` that works here (design §9), with the flake registry
/// pointed at `registry`. `extra` lines are appended verbatim.
pub fn nix_conf(registry: &Path, extra: &str) -> String {
    format!(
        "build-users-group =\n\
         sandbox = false\n\
         extra-sandbox-paths = /bin /usr /lib /lib64\n\
         substituters =\n\
         experimental-features = nix-command flakes\n\
         flake-registry = {}\n\
         narinfo-cache-negative-ttl = 0\n\
         narinfo-cache-positive-ttl = 0\n\
         {extra}",
        registry.display()
    )
}

/// Writes `nix.conf` and an empty flake registry into `conf_dir` (created
/// if missing). Services use this too when asked to run hermetically.
pub fn write_nix_conf(conf_dir: &Path, extra: &str) -> io::Result<()> {
    std::fs::create_dir_all(conf_dir)?;
    let registry = conf_dir.join("registry.json");
    std::fs::write(&registry, r#"{"flakes":[],"version":2}"#)?;
    std::fs::write(conf_dir.join("nix.conf"), nix_conf(&registry, extra))
}

pub use crate::nix::write_netrc;

/// A temp directory with `conf/nix.conf` and `cache/` (XDG_CACHE_HOME);
/// removed when dropped.
#[derive(Debug)]
pub struct HermeticNix {
    dir: tempfile::TempDir,
}

impl HermeticNix {
    pub fn new() -> io::Result<Self> {
        Self::with_extra_conf("")
    }

    /// Same, with extra `nix.conf` lines (e.g. `netrc-file = …`).
    pub fn with_extra_conf(extra: &str) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("pcr-nix-").tempdir()?;
        write_nix_conf(&dir.path().join("conf"), extra)?;
        std::fs::create_dir_all(dir.path().join("cache"))?;
        Ok(HermeticNix { dir })
    }

    /// The temp directory; put store roots, work dirs etc. under it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `NIX_CONF_DIR`.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    /// `XDG_CACHE_HOME`.
    pub fn cache_home(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The environment a child process needs to use this configuration.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("NIX_CONF_DIR", self.conf_dir().into()),
            ("XDG_CACHE_HOME", self.cache_home().into()),
        ]
    }

    /// A `Nix` using this configuration and the system store.
    pub fn nix(&self) -> Nix {
        Nix::new()
            .with_conf_dir(self.conf_dir())
            .with_cache_home(self.cache_home())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_has_the_settings_that_keep_nix_offline() {
        let h = HermeticNix::with_extra_conf("netrc-file = /x\n").unwrap();
        let conf = std::fs::read_to_string(h.conf_dir().join("nix.conf")).unwrap();
        for line in [
            "substituters =\n",
            "sandbox = false\n",
            "experimental-features = nix-command flakes\n",
            "netrc-file = /x\n",
        ] {
            assert!(conf.contains(line), "{line:?} missing from {conf}");
        }
        assert!(h.conf_dir().join("registry.json").exists());
        assert!(h.cache_home().is_dir());
    }
}
