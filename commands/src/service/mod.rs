//! Server-side adapters: each service implements a domain trait (plain
//! Rust types in, `Result<_, RpcFailure>` out) and these modules turn it
//! into the Cap'n Proto server, login bootstrap included. The services
//! never see a capnp reader or builder.

pub mod master;
pub mod worker;

/// The token of a login request as text; a missing or non-UTF-8 token is
/// the empty one (which only an open server accepts).
pub(crate) fn token_text(r: capnp::Result<capnp::text::Reader<'_>>) -> String {
    r.ok()
        .and_then(|t| t.to_str().ok().map(str::to_owned))
        .unwrap_or_default()
}
