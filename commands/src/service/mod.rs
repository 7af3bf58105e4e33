//! Server-side adapters: each service implements a domain trait (plain
//! Rust types in, `Result<_, RpcFailure>` out) and these modules turn it
//! into the Cap'n Proto server, login bootstrap included. The services
//! never see a capnp reader or builder.

pub mod master;
pub mod worker;
