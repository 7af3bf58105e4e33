//! The control plane: serves `Master` (master.capnp) — holds the desired
//! state of the active generation in memory, registers workers and tracks
//! their health from heartbeats, places VMs with the deterministic
//! scheduler, long-polls assignments to workers and reports cluster status.
//!
//! `run` is what `main` and the tests call: it serves on an already bound
//! listener until `shutdown` fires. Everything runs on one thread inside a
//! `LocalSet` (the RPC objects are `!Send`); `server` implements
//! `commands::service::master::MasterApi` and that adapter owns the wire.

pub mod scheduler;
pub mod server;
pub mod state;

use std::rc::Rc;
use std::time::{Duration, Instant};

use commands::auth::Authenticator;
use commands::rpc::ConnLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::Shared;
use crate::state::{Settings, State};

/// Runtime settings (from the command line in `main`).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How long `getAssignment` holds when there is nothing new.
    pub long_poll_timeout: Duration,
    /// A worker silent for longer is unhealthy; its VMs move.
    pub heartbeat_timeout: Duration,
    /// Assignments are withheld this long after start so workers can
    /// re-register and report their VMs first.
    pub startup_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            long_poll_timeout: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(5),
            startup_grace: Duration::from_secs(5),
        }
    }
}

/// The roles a control plane's token file may grant.
pub const ROLES: &[commands::auth::Role] = &[
    commands::auth::Role::Admin,
    commands::auth::Role::Ci,
    commands::auth::Role::Worker,
    commands::auth::Role::Reader,
];

/// Serves the Master interface on `listener` until `shutdown` is cancelled,
/// taking any token as admin (no token file: loopback use and tests).
/// Must be called inside a `tokio::task::LocalSet`.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) {
    run_with_auth(config, Authenticator::Open, listener, shutdown).await;
}

/// Like [`run`], with the tokens of `auth` deciding what each caller may do.
pub async fn run_with_auth(
    config: Config,
    auth: Authenticator,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    run_with_limits(config, auth, ConnLimits::default(), listener, shutdown).await;
}

/// Like [`run_with_auth`] within `limits` (login deadline, connections
/// waiting to log in, connections in all).
pub async fn run_with_limits(
    config: Config,
    auth: Authenticator,
    limits: ConnLimits,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let state = State::new(
        Settings {
            heartbeat_timeout: config.heartbeat_timeout,
            startup_grace: config.startup_grace,
        },
        Instant::now(),
        // Revisions of this run never collide with a previous run's.
        commands::telemetry::now_ms().saturating_mul(1000),
    );
    let shared = Shared::new(state, config.long_poll_timeout);

    // Health checks a few times per threshold, so a silent worker is noticed
    // within ~1.25 × heartbeat_timeout.
    let tick_every = (config.heartbeat_timeout / 4).max(Duration::from_millis(10));
    let ticker = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::task::spawn_local(async move {
            let mut interval = tokio::time::interval(tick_every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = interval.tick() => shared.tick(),
                }
            }
        })
    };

    commands::service::master::serve_limited(Rc::clone(&shared), auth, listener, limits, shutdown)
        .await;
    let _ = ticker.await;
}
