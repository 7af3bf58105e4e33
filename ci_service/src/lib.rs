//! ci_service: receives push events, queues jobs in SQLite, evaluates and
//! builds the pushed flake with nix, copies the closures to the project's
//! binary cache and publishes the generation to the control plane.

pub mod api;
pub mod build_logs;
pub mod db;
pub mod deploy;
pub mod hook;
pub mod metrics;
pub mod pin;
pub mod publisher;
pub mod runner;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use repo_outils::git::TreeLimits;
use repo_outils::nix::{Nix, NixError, RunAs};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::deploy::DeployRights;
use crate::publisher::Publisher;
use crate::runner::{CacheTarget, Cancels, RetryPolicy, Runner};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot create {path}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the job database")]
    Db(#[from] db::DbError),
    #[error("invalid cache URL {0:?} (want http://host:port)")]
    CacheUrl(String),
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot evaluate as --eval-user")]
    EvalUser(#[source] NixError),
    #[error(
        "bwrap (bubblewrap) is not on PATH: pushed flakes are evaluated in its jail; install it, \
         or pass --no-eval-jail to evaluate without one"
    )]
    NoJail,
    #[error("cannot give {path} to the evaluation user")]
    EvalHome {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The default bound of a job's log: room for any real build's output
/// (nixpkgs builds print a few hundred KiB), small next to a disk.
pub const DEFAULT_MAX_JOB_LOG_BYTES: u64 = 4 << 20;

/// Everything `run` needs; `main` fills it from flags and environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Base URL of the binary cache (`http://127.0.0.1:PORT`).
    pub cache_url: Option<String>,
    /// Upload token of the cache (read from a file or the environment).
    pub cache_token: Option<String>,
    /// `host:port` of the control plane's Cap'n Proto endpoint.
    pub control_plane: Option<String>,
    /// The `ci` token presented to the control plane's login ("" when it
    /// has no token file).
    pub control_plane_token: commands::auth::Secret,
    /// `NIX_CONF_DIR` for every nix call (hermetic runs and tests).
    pub nix_conf_dir: Option<PathBuf>,
    /// Shared secret the push hook must present (`Authorization: Bearer`).
    pub hook_secret: Option<String>,
    /// Which push may publish for which project (`deploy`): a `--projects`
    /// file, or the single-project setup with its `--deploy-ref`.
    pub deploy: DeployRights,
    /// Who may read jobs, logs, specs and generations (`reader` and
    /// `admin` tokens); `Open` lets anyone on loopback read.
    pub api_auth: commands::auth::Authenticator,
    /// The unprivileged user nix evaluates and builds pushed flakes as
    /// (needs ci_service to run as root and a nix daemon); none: nix runs
    /// as ci_service's own user, bounded by the restricted settings and
    /// the build sandbox only.
    pub eval_user: Option<String>,
    /// The nix daemon the evaluation user's nix talks to (`NIX_REMOTE`):
    /// `daemon` (the system's) or `unix:///path/to/socket`.
    pub eval_nix_remote: String,
    /// Bytes a job's log may hold (and a build may print).
    pub max_job_log_bytes: u64,
    /// Bounds on a pushed commit's checked-out tree.
    pub tree_limits: TreeLimits,
    /// Evaluate in a bubblewrap jail that sees only the checkouts, the
    /// store and nix's own files (`Nix::jailed`); off only where the host
    /// has no bubblewrap or no namespaces.
    pub eval_jail: bool,
    /// How transient failures inside a job are retried.
    pub retry: RetryPolicy,
    /// How long finished jobs and their logs are kept.
    pub job_retention: Duration,
}

/// The default of `--job-retention-days`.
pub const DEFAULT_JOB_RETENTION_DAYS: u64 = 30;

/// How often old jobs are pruned (and once at start).
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

impl Config {
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            cache_url: None,
            cache_token: None,
            control_plane: None,
            control_plane_token: commands::auth::Secret::default(),
            nix_conf_dir: None,
            hook_secret: None,
            deploy: DeployRights::single_project("refs/heads/main"),
            api_auth: commands::auth::Authenticator::Open,
            eval_user: None,
            eval_nix_remote: "daemon".into(),
            max_job_log_bytes: DEFAULT_MAX_JOB_LOG_BYTES,
            tree_limits: TreeLimits::default(),
            eval_jail: true,
            retry: RetryPolicy::default(),
            job_retention: Duration::from_secs(DEFAULT_JOB_RETENTION_DAYS * 86_400),
        }
    }
}

/// The host part nix matches against `machine` in a netrc file.
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_owned())
}

/// The nix that evaluates and builds pushed flakes (see
/// `Nix::untrusted`). With `--eval-user` it runs as that user, whose home
/// and cache are its own directory under the data dir; the data dir and
/// the work dir become traversable (0711, not listable) so it can read the
/// checkout by its path, while the logs, mirrors, database and netrc stay
/// ci_service's alone.
fn untrusted_nix(nix: &Nix, config: &Config) -> Result<Nix, ServiceError> {
    let eval = untrusted_user_nix(nix, config)?;
    if !config.eval_jail {
        tracing::warn!(
            "--no-eval-jail: pushed flakes are evaluated without the jail; a fetcher pointed at a \
             host path (builtins.getFlake with a commit id) can read what ci_service's user can"
        );
        return Ok(eval);
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|d| d.join("bwrap").is_file());
    if !on_path {
        return Err(ServiceError::NoJail);
    }
    Ok(eval.jailed(vec![config.data_dir.join("work")]))
}

/// The untrusted nix, as the evaluation user when there is one.
fn untrusted_user_nix(nix: &Nix, config: &Config) -> Result<Nix, ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    let dd = &config.data_dir;
    let Some(name) = &config.eval_user else {
        if rustix::process::geteuid().is_root() {
            tracing::warn!(
                "ci_service runs as root without --eval-user: pushed flakes are evaluated as root, \
                 bounded only by restricted evaluation and the build sandbox; give CI an \
                 unprivileged evaluation user"
            );
        }
        return Ok(nix.clone().untrusted(None, config.max_job_log_bytes));
    };
    let user = RunAs {
        remote: config.eval_nix_remote.clone(),
        ..RunAs::lookup(name).map_err(ServiceError::EvalUser)?
    };
    let home = dd.join("eval-home");
    let fail = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source: std::io::Error| ServiceError::EvalHome { path, source }
    };
    std::fs::create_dir_all(&home).map_err(fail(&home))?;
    rustix::fs::chown(
        &home,
        Some(rustix::fs::Uid::from_raw(user.uid)),
        Some(rustix::fs::Gid::from_raw(user.gid)),
    )
    .map_err(|e| fail(&home)(e.into()))?;
    for d in [dd.clone(), dd.join("work")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).map_err(fail(&d))?;
    }
    tracing::info!(user = %user.name, uid = user.uid, "pushed flakes are evaluated and built as the evaluation user");
    Ok(nix
        .clone()
        .with_cache_home(home)
        .untrusted(Some(user), config.max_job_log_bytes))
}

/// Serves the API on `listener` and runs jobs until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let dd = &config.data_dir;
    for sub in ["", "logs", "work", "mirrors", "nix-cache"] {
        let p = dd.join(sub);
        std::fs::create_dir_all(&p).map_err(|source| ServiceError::DataDir { path: p, source })?;
    }
    let (db, requeued) = Db::open(&dd.join("ci.sqlite"))?;
    if requeued > 0 {
        tracing::warn!(requeued, "re-queued jobs a previous run left running");
    }
    let db = Arc::new(db);
    // A previous run killed with `kill -9` left its nix children running
    // (they have process groups of their own); the jobs it ran are re-queued
    // above, so its `nix copy` would race theirs to the cache.
    let groups = dd.join("nix-groups");
    let registry = groups.clone();
    let stopped =
        tokio::task::spawn_blocking(move || repo_outils::nix::stop_leftover_groups(&registry))
            .await
            .unwrap_or(0);
    if stopped > 0 {
        tracing::warn!(stopped, "stopped nix processes a previous run left running");
    }

    let mut nix = Nix::new()
        .with_cache_home(dd.join("nix-cache"))
        .with_group_registry(groups);
    if let Some(c) = &config.nix_conf_dir {
        nix = nix.with_conf_dir(c);
    }
    let eval_nix = untrusted_nix(&nix, &config)?;
    let cache = match &config.cache_url {
        None => None,
        Some(url) => {
            let url = url.trim_end_matches('/').to_owned();
            let host = url_host(&url).ok_or_else(|| ServiceError::CacheUrl(url.clone()))?;
            let netrc = match &config.cache_token {
                Some(token) => {
                    let p = dd.join("cache.netrc");
                    repo_outils::nix::write_netrc(&p, &host, token).map_err(|source| {
                        ServiceError::DataDir {
                            path: p.clone(),
                            source,
                        }
                    })?;
                    Some(p)
                }
                None => None,
            };
            Some(CacheTarget {
                url,
                token: config.cache_token.clone(),
                netrc,
            })
        }
    };

    let publisher = match &config.control_plane {
        Some(addr) => Publisher::start(
            addr.clone(),
            config.control_plane_token.clone(),
            db.clone(),
            shutdown.clone(),
        ),
        None => Publisher::disabled(),
    };
    let wake = Arc::new(Notify::new());
    let cancels = Cancels::default();
    let metrics = metrics::CiMetrics::default();
    let runner = Arc::new(Runner {
        metrics: metrics.clone(),
        db: db.clone(),
        nix,
        eval_nix,
        tree_limits: config.tree_limits,
        max_log_bytes: config.max_job_log_bytes,
        data_dir: dd.clone(),
        cache,
        publisher: publisher.clone(),
        deploy: config.deploy.clone(),
        wake: wake.clone(),
        retry: config.retry,
        cancels: cancels.clone(),
    });
    let runner_task = tokio::spawn(runner.run(shutdown.clone()));
    tokio::spawn(prune_jobs(
        db.clone(),
        dd.clone(),
        config.job_retention,
        shutdown.clone(),
    ));

    let app = api::router(api::AppState {
        db,
        data_dir: dd.clone(),
        hook_secret: config.hook_secret.clone(),
        readers: config.api_auth.clone(),
        wake,
        publisher,
        cancels,
        metrics,
    });
    let token = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
    shutdown.cancel();
    let _ = runner_task.await;
    served.map_err(ServiceError::Serve)
}

/// Prunes the finished jobs older than `retention`, with their logs, now
/// and every `PRUNE_INTERVAL` until `shutdown`.
async fn prune_jobs(
    db: Arc<Db>,
    data_dir: PathBuf,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match runner::prune(&db, &data_dir, retention) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                pruned = n,
                days = retention.as_secs() / 86_400,
                "pruned finished jobs past the retention period"
            ),
            Err(e) => {
                tracing::warn!(error = %commands::report::error_chain(&e), "cannot prune old jobs")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn netrc_host_is_the_url_host() {
        assert_eq!(
            super::url_host("http://127.0.0.1:5000").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            super::url_host("http://cache.local/x").as_deref(),
            Some("cache.local")
        );
        assert_eq!(super::url_host("ftp://x"), None);
    }
}
