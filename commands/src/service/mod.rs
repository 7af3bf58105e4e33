//! Server-side adapters: each service implements a domain trait (plain
//! Rust types in, `Result<_, RpcFailure>` out) and these modules turn it
//! into the Cap'n Proto server, login bootstrap included. The services
//! never see a capnp reader or builder.
//!
//! Every login of both services goes through [`LoginGate`]: logins on one
//! connection take turns, a refused one holds its turn for
//! [`LOGIN_FAILURE_DELAY`] (so pipelined guesses cost N × the delay), and
//! refusals are counted per peer address (a /64 for IPv6): an address with
//! too many recent refusals is refused without its token being compared.

pub mod master;
pub mod worker;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::auth::{Authenticator, Grant, LoginError};
use crate::common_capnp;
use crate::convert::{self, ErrorCode, RpcFailure};
use crate::rpc::Conn;

/// How long a refused login takes to answer (slows token guessing).
pub(crate) const LOGIN_FAILURE_DELAY: Duration = Duration::from_millis(200);

/// Refused logins one peer address may have in a burst.
pub const LOGIN_FAILURE_BURST: f64 = 20.0;
/// How fast a peer address earns back refused logins, per second.
pub const LOGIN_FAILURE_REFILL_PER_SEC: f64 = 1.0;
/// Peer addresses remembered at once (bounds memory under a spoofed-source
/// flood); past it, addresses whose allowance is full again are forgotten.
const MAX_TRACKED_PEERS: usize = 65_536;

/// Per peer address: how many refused logins it may still have right now.
#[derive(Debug, Default)]
pub(crate) struct PeerLimiter {
    peers: RefCell<HashMap<IpAddr, (f64, Instant)>>,
}

/// The key a peer is counted under: its address, or its /64 for IPv6 (one
/// host usually has a whole /64 to pick from).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

impl PeerLimiter {
    fn allowance(&self, ip: IpAddr, now: Instant) -> f64 {
        self.peers
            .borrow()
            .get(&peer_key(ip))
            .map_or(LOGIN_FAILURE_BURST, |&(left, at)| {
                (left
                    + now.saturating_duration_since(at).as_secs_f64()
                        * LOGIN_FAILURE_REFILL_PER_SEC)
                    .min(LOGIN_FAILURE_BURST)
            })
    }

    /// `Err(seconds until the next attempt counts)` when `ip` has used up
    /// its refused logins.
    fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let left = self.allowance(ip, now);
        if left >= 1.0 {
            Ok(())
        } else {
            Err(((1.0 - left) / LOGIN_FAILURE_REFILL_PER_SEC)
                .ceil()
                .max(1.0) as u64)
        }
    }

    /// Counts one refused login of `ip`.
    fn charge(&self, ip: IpAddr, now: Instant) {
        let left = self.allowance(ip, now) - 1.0;
        let mut peers = self.peers.borrow_mut();
        if peers.len() >= MAX_TRACKED_PEERS {
            peers.retain(|_, &mut (l, at)| {
                l + now.saturating_duration_since(at).as_secs_f64() * LOGIN_FAILURE_REFILL_PER_SEC
                    < LOGIN_FAILURE_BURST
            });
            if peers.len() >= MAX_TRACKED_PEERS {
                // Every one is still limited: forget the lot rather than grow.
                peers.clear();
            }
        }
        peers.insert(peer_key(ip), (left.max(0.0), now));
    }
}

/// The tokens of a server and the refusal counts of its peers: what every
/// login of every connection is checked against.
#[derive(Debug)]
pub(crate) struct LoginGate {
    auth: Authenticator,
    limiter: PeerLimiter,
}

impl LoginGate {
    pub(crate) fn new(auth: Authenticator) -> Self {
        LoginGate {
            auth,
            limiter: PeerLimiter::default(),
        }
    }

    /// Checks one login on `conn`: waits for the connection's earlier
    /// logins, refuses a peer over its refusal allowance without comparing
    /// the token, and holds a refusal for [`LOGIN_FAILURE_DELAY`] before
    /// answering. A success marks the connection logged in.
    pub(crate) async fn login(&self, conn: &Conn, token: String) -> Result<Grant, LoginError> {
        let _turn = conn.login_turn().await;
        let ip = conn.peer().ip();
        let now = Instant::now();
        let r = match self.limiter.check(ip, now) {
            Err(retry_secs) => Err(LoginError::TooManyRefused { retry_secs }),
            Ok(()) => {
                let r = self.auth.login(&token);
                if r.is_err() {
                    self.limiter.charge(ip, now);
                }
                r
            }
        };
        drop(token);
        match r {
            Ok(g) => {
                conn.mark_logged_in();
                Ok(g)
            }
            Err(e) => {
                tracing::warn!(peer = %conn.peer(), conn = conn.id(), error = %e, "login refused");
                tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
                Err(e)
            }
        }
    }
}

/// The token a login call carries: a missing or non-UTF-8 token reads as
/// none, which the authenticator refuses like any wrong one.
pub(crate) fn login_token(token: capnp::Result<capnp::text::Reader<'_>>) -> String {
    token
        .ok()
        .and_then(|t| t.to_str().ok().map(str::to_owned))
        .unwrap_or_default()
}

/// Answers a refused login with permissionDenied and the reason (the
/// delay and the log line are [`LoginGate::login`]'s).
pub(crate) fn refuse_login(e: &LoginError, b: common_capnp::error::Builder<'_>) {
    convert::error_to_capnp(
        &RpcFailure::new(ErrorCode::PermissionDenied, e.to_string()),
        b,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_address_and_earned_back() {
        let l = PeerLimiter::default();
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..LOGIN_FAILURE_BURST as usize {
            assert!(l.check(a, t).is_ok());
            l.charge(a, t);
        }
        let retry = l.check(a, t).unwrap_err();
        assert_eq!(retry, 1);
        // Another address is not held back by a's refusals.
        assert!(l.check(b, t).is_ok());
        // One refusal is earned back per second.
        let later = t + Duration::from_secs(1);
        assert!(l.check(a, later).is_ok());
        l.charge(a, later);
        assert!(l.check(a, later).is_err());
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_slash_64() {
        let l = PeerLimiter::default();
        let t = Instant::now();
        for i in 0..LOGIN_FAILURE_BURST as u16 {
            // A different address of the same /64 each time.
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i + 1));
            l.charge(ip, t);
        }
        let same64: IpAddr = "2001:db8:0:1::ffff".parse().unwrap();
        let other64: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        assert!(l.check(same64, t).is_err());
        assert!(l.check(other64, t).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(peer_key(mapped), "192.0.2.9".parse::<IpAddr>().unwrap());
    }
}
