//! Cap'n Proto schemas (generated code) and the domain types they carry.

pub mod common_capnp {
    include!(concat!(env!("OUT_DIR"), "/common_capnp.rs"));
}
pub mod worker_capnp {
    include!(concat!(env!("OUT_DIR"), "/worker_capnp.rs"));
}
pub mod master_capnp {
    include!(concat!(env!("OUT_DIR"), "/master_capnp.rs"));
}

pub mod convert;
pub mod rpc;
pub mod telemetry;
pub mod types;
