//! Cap'n Proto schemas (generated code) and the domain types they carry.

// Generated code: lints are the generator's business, not ours.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unimplemented,
    unused,
    missing_debug_implementations
)]
pub mod common_capnp {
    include!(concat!(env!("OUT_DIR"), "/common_capnp.rs"));
}
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unimplemented,
    unused,
    missing_debug_implementations
)]
pub mod worker_capnp {
    include!(concat!(env!("OUT_DIR"), "/worker_capnp.rs"));
}
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unimplemented,
    unused,
    missing_debug_implementations
)]
pub mod master_capnp {
    include!(concat!(env!("OUT_DIR"), "/master_capnp.rs"));
}

pub mod auth;
pub mod ci_api;
pub mod client;
pub mod convert;
pub mod daemon;
pub mod http;
pub mod model;
pub mod report;
pub mod rpc;
pub mod service;
pub mod telemetry;
pub mod types;
