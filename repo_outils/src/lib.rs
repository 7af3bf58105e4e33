//! git (git2) and nix command helpers shared by ci_service, the worker and
//! repohub, each with its own typed error that carries what went wrong
//! (for nix: the useful tail of its stderr).

pub mod flake;
pub mod git;
pub mod nix;
pub mod nixlog;
pub mod testing;
