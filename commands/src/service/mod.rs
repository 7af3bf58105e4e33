//! Server-side adapters: each service implements a domain trait (plain
//! Rust types in, `Result<_, RpcFailure>` out) and these modules turn it
//! into the Cap'n Proto server, login bootstrap included. The services
//! never see a capnp reader or builder.

pub mod master;
pub mod worker;

use std::time::Duration;

use crate::auth::LoginError;
use crate::common_capnp;
use crate::convert::{self, ErrorCode, RpcFailure};

/// How long a refused login takes to answer (slows token guessing).
pub(crate) const LOGIN_FAILURE_DELAY: Duration = Duration::from_millis(200);

/// The token a login call carries: a missing or non-UTF-8 token reads as
/// none, which the authenticator refuses like any wrong one.
pub(crate) fn login_token(token: capnp::Result<capnp::text::Reader<'_>>) -> String {
    token
        .ok()
        .and_then(|t| t.to_str().ok().map(str::to_owned))
        .unwrap_or_default()
}

/// Answers a refused login with permissionDenied and the reason, after
/// [`LOGIN_FAILURE_DELAY`]. The caller logs the refusal with what it knows
/// of the peer.
pub(crate) async fn refuse_login(e: &LoginError, b: common_capnp::error::Builder<'_>) {
    tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
    convert::error_to_capnp(
        &RpcFailure::new(ErrorCode::PermissionDenied, e.to_string()),
        b,
    );
}
