//! The control plane: serves `Master` (master.capnp) — holds the desired
//! state of the active generation in memory, registers workers and tracks
//! their health from heartbeats, places VMs with the deterministic
//! scheduler, long-polls assignments to workers and reports cluster status.
//!
//! `run` is what `main` and the tests call: it serves on an already bound
//! listener until `shutdown` fires. Everything runs on one thread inside a
//! `LocalSet` (the RPC objects are `!Send`); `server` implements
//! `commands::service::master::MasterApi` and that adapter owns the wire.

pub mod events;
pub mod metrics;
pub mod quota;
pub mod rollout;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod store;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use commands::auth::Authenticator;
use commands::rpc::ConnLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::EventLog;
use crate::quota::{QuotaConfig, QuotaError};
use crate::server::Shared;
use crate::state::{Settings, State};
use crate::store::{Store, StoreError};

/// Runtime settings (from the command line in `main`).
#[derive(Debug, Clone)]
pub struct Config {
    /// How long `getAssignment` holds when there is nothing new.
    pub long_poll_timeout: Duration,
    /// A worker silent for longer is unhealthy; its VMs move.
    pub heartbeat_timeout: Duration,
    /// Assignments are withheld this long after start so workers can
    /// re-register and report their VMs first.
    pub startup_grace: Duration,
    /// Per-project quotas (see `quota`), read at start and on every
    /// SIGHUP; `None`: every project known and unlimited.
    pub quota_file: Option<PathBuf>,
    /// Where generations and events persist (`state.sqlite`); `None`:
    /// in memory only, forgotten at exit.
    pub state_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            long_poll_timeout: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(5),
            startup_grace: Duration::from_secs(5),
            quota_file: None,
            state_dir: None,
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

/// Opens the state file `config` names (none without `--state-dir`).
pub fn open_store(config: &Config) -> Result<Option<Store>, StoreError> {
    config
        .state_dir
        .as_deref()
        .map(|dir| Store::open(dir, state::HISTORY, events::EVENTS_PER_PROJECT))
        .transpose()
}

/// Serves the Master interface on `listener` until `shutdown` is cancelled,
/// taking any token as admin (no token file: loopback use and tests).
/// Must be called inside a `tokio::task::LocalSet`.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) {
    run_with_auth(config, Authenticator::Open, listener, shutdown).await;
}

/// The quotas `config` names (unlimited without a file).
pub fn load_quotas(config: &Config) -> Result<QuotaConfig, QuotaError> {
    config
        .quota_file
        .as_deref()
        .map_or(Ok(QuotaConfig::unlimited()), QuotaConfig::load)
}

/// Like [`run`], with the tokens of `auth` deciding what each caller may
/// do. A quota file that cannot be read is an error here (the caller
/// checked it with [`load_quotas`] before binding); on SIGHUP it is read
/// again, and a bad file then keeps the quotas in force.
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
    run_with_metrics(config, auth, limits, listener, None, shutdown).await;
}

/// Like [`run_with_limits`], also answering `GET /metrics` on
/// `metrics_listener` when given (`--metrics-listen`).
pub async fn run_with_metrics(
    config: Config,
    auth: Authenticator,
    limits: ConnLimits,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) {
    let quotas = match load_quotas(&config) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(error = %commands::report::error_chain(&e), "quotas not loaded; refusing to serve");
            return;
        }
    };
    let mut state = State::new(
        Settings {
            heartbeat_timeout: config.heartbeat_timeout,
            startup_grace: config.startup_grace,
        },
        Instant::now(),
        // Revisions of this run never collide with a previous run's.
        commands::telemetry::now_ms().saturating_mul(1000),
    )
    .with_wall_clock(commands::telemetry::now_ms());
    let _ = state.set_quotas(quotas);
    let mut log = EventLog::default();
    let store = match open_store(&config)
        .and_then(|s| s.map(|s| s.load().map(|l| (s, l))).transpose())
    {
        Ok(Some((store, loaded))) => {
            tracing::info!(file = %store.path().display(), generations = loaded.generations.len(),
                events = loaded.events.len(), "state loaded");
            let _ = state.restore(loaded.generations);
            for e in loaded.events {
                log.restore(e);
            }
            Some(store)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %commands::report::error_chain(&e), "state not loaded; refusing to serve");
            return;
        }
    };
    let shared = Shared::with_store(state, log, store, config.long_poll_timeout);
    let reloader = config.quota_file.clone().map(|path| {
        tokio::task::spawn_local(reload_on_sighup(path, shared.clone(), shutdown.clone()))
    });

    let metrics_server = metrics_listener.map(|l| {
        let shared = Rc::clone(&shared);
        let registry = shared.metrics.registry();
        tokio::task::spawn_local(commands::metrics::serve(
            l,
            registry,
            move || {
                let status = shared.state.borrow().cluster_status(Instant::now());
                shared.metrics.refresh(&status);
                std::future::ready(())
            },
            shutdown.clone(),
        ))
    });

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
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    if let Some(r) = reloader {
        let _ = r.await;
    }
}

/// Reads the quota file again on every SIGHUP until `shutdown`.
async fn reload_on_sighup(path: PathBuf, shared: Rc<Shared>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGHUP; quotas will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        match QuotaConfig::load(&path) {
            Ok(q) => {
                tracing::info!(file = %path.display(), "quotas reloaded");
                let effects = shared.state.borrow_mut().set_quotas(q);
                shared.apply(effects);
            }
            Err(e) => {
                tracing::warn!(error = %commands::report::error_chain(&e), "quota reload refused; the previous quotas stay")
            }
        }
    }
}
