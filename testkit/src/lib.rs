//! The test kit every crate's integration tests and benches share (a
//! dev-dependency only): the workspace's binaries by path, a process guard
//! that stops what it started, polling with a deadline, the VM spec
//! fixtures, one way to start each service, and one cluster harness
//! (control plane + N workers on ch-sim + optional cache and ci_service).
//!
//! It runs the services as processes from the target directory and never
//! links them, so that every crate, the services' own included, can use it.

pub mod bench;
pub mod bins;
pub mod cluster;
pub mod fixtures;
pub mod fs;
pub mod metrics;
pub mod process;
pub mod services;
pub mod wait;

pub use bins::{bin, bin_dir};
pub use process::{Log, Proc, Reaper, alive, kill9, run_ok};
pub use wait::{poll, wait_until};
