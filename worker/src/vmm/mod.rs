//! Hypervisor seam: the traits (`interface`), CH's API types (`config`),
//! the resolution of a spec's host files beneath the store root (`store`),
//! the production cloud-hypervisor backend (`ch`) and, for unit tests, an
//! in-memory backend (`memory`).

pub mod ch;
pub mod config;
pub mod interface;
#[cfg(test)]
pub mod memory;
pub mod store;
pub mod user;

pub use ch::{ChBackendConfig, CloudHypervisorBackend};
pub use interface::{Adopted, ExitInfo, Vmm, VmmBackend, VmmError, VmmProcess};
