//! Cap'n Proto schemas (generated code) and the domain types they carry.

/// Declares a module holding one generated schema file.
macro_rules! generated {
    ($name:ident, $file:literal) => {
        // Generated code: lints are the generator's business, not ours.
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::unimplemented,
            unused,
            missing_debug_implementations
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), $file));
        }
    };
}

generated!(common_capnp, "/common_capnp.rs");
generated!(worker_capnp, "/worker_capnp.rs");
generated!(master_capnp, "/master_capnp.rs");

pub mod auth;
pub mod ci_api;
pub mod client;
pub mod convert;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod model;
pub mod report;
pub mod rpc;
pub mod service;
pub mod telemetry;
pub mod types;
