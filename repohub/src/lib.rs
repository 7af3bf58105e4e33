//! repohub: Procurator's web UI and git host. Users, projects and bare git
//! repositories in SQLite and on disk, smart HTTP clone/push, push
//! notifications to ci_service, and pages for code, CI jobs and the cluster.

pub mod admin;
pub mod auth;
pub mod ci;
pub mod cluster;
pub mod db;
pub mod flakegen;
pub mod git;
pub mod guard;
pub mod joblog;
pub mod markdown;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod smart_http;
pub mod web;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use web::app;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preparing data directory {0}")]
    DataDir(PathBuf, #[source] std::io::Error),
    #[error("opening the database")]
    Db(#[from] db::DbError),
    #[error("setting the receive checks of {0}")]
    Harden(PathBuf, #[source] git::GitError),
    #[error("ci_service client")]
    Ci(#[from] ci::CiError),
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// Everything `run` needs; `main` fills it from flags and the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `repohub.sqlite`, `repos/<project>/<repo>.git` and `spool/`.
    pub data_dir: PathBuf,
    /// ci_service base URL, e.g. `http://127.0.0.1:7100`.
    pub ci_url: Option<String>,
    /// Bearer secret for `POST /hooks/push`.
    pub ci_secret: Option<String>,
    /// A `reader` token of ci_service's `--api-token-file`, sent on the
    /// reads behind the CI panels (jobs, logs); empty when its read API is
    /// open.
    pub ci_token: commands::auth::Secret,
    /// The binary cache's public base URL, e.g. `http://127.0.0.1:7200`:
    /// job pages link each built derivation's log at `<url>/log/<drv>`.
    pub cache_url: Option<String>,
    /// Control plane `host:port` (Cap'n Proto `Master`).
    pub control_plane: Option<String>,
    /// Token for the control plane's login (a `reader` token is enough).
    pub control_plane_token: commands::auth::Secret,
    /// Token for the VM pages' spec and serial console, which reach the
    /// VM's worker through the control plane's `getWorker` (admin tokens
    /// only); empty: `control_plane_token`.
    pub control_plane_console_token: commands::auth::Secret,
    pub kdf: auth::KdfParams,
    pub backoff: notify::Backoff,
    /// How often the spool is drained and due notifications are sent.
    pub notify_tick: Duration,
    /// Adds `Secure` to cookies (set when served behind HTTPS).
    pub secure_cookies: bool,
    /// Anyone may create an account at `/signup` (closed by default:
    /// accounts come from `repohub admin create-user`).
    pub open_signup: bool,
    /// Accounts made through open signup may create projects (by default
    /// only admins and accounts an admin allowed may).
    pub signup_may_create_projects: bool,
    /// The account of this name is an admin (promoted at startup if it
    /// exists, at creation otherwise); signup may never take the name.
    pub admin: Option<String>,
    pub limits: Limits,
}

/// Bounds on what one request, push or client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub receive: git::ReceiveLimits,
    /// The largest `git-receive-pack` request body (413 above it).
    pub max_push_body: u64,
    /// The largest `git-upload-pack` request body (the client's wants and
    /// haves; 413 above it).
    pub max_fetch_body: u64,
    /// The tail of a job log the job page shows (older lines are cut with a
    /// "log truncated" line).
    pub job_log_tail: usize,
    /// The most bytes the log proxy passes before it ends the stream with a
    /// "log truncated" line.
    pub job_log_proxy: u64,
    pub login: guard::LoginLimits,
    pub argon2: guard::Argon2Limit,
    /// How long a cluster status fetched from the control plane is served
    /// to every page before it is fetched again.
    pub cluster_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            receive: git::ReceiveLimits {
                max_pack_bytes: 512 * 1024 * 1024,
            },
            max_push_body: 512 * 1024 * 1024 + 1024 * 1024,
            max_fetch_body: 16 * 1024 * 1024,
            job_log_tail: 256 * 1024,
            job_log_proxy: 64 * 1024 * 1024,
            login: guard::LoginLimits::default(),
            argon2: guard::Argon2Limit::default(),
            cluster_ttl: Duration::from_secs(3),
        }
    }
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ci_url: None,
            ci_secret: None,
            ci_token: commands::auth::Secret::default(),
            cache_url: None,
            control_plane: None,
            control_plane_token: commands::auth::Secret::default(),
            control_plane_console_token: commands::auth::Secret::default(),
            kdf: auth::KdfParams::default(),
            backoff: notify::Backoff::default(),
            notify_tick: Duration::from_millis(300),
            secure_cookies: false,
            open_signup: false,
            signup_may_create_projects: false,
            admin: None,
            limits: Limits::default(),
        }
    }
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: db::Db,
    /// Absolute: its paths are what ci_service is told to fetch from.
    pub repos_root: PathBuf,
    pub spool: PathBuf,
    pub ci: ci::CiClient,
    /// Each repository's newest jobs, shared by the CI badges.
    pub ci_jobs: ci::JobsCache,
    /// The cache's public URL, for build-log links (no trailing slash).
    pub cache_url: Option<Arc<str>>,
    pub control_plane: Option<String>,
    pub control_plane_token: commands::auth::Secret,
    pub kdf: auth::KdfParams,
    pub dummy_hash: Arc<String>,
    pub secure_cookies: bool,
    pub open_signup: bool,
    pub signup_may_create_projects: bool,
    pub admin: Option<Arc<str>>,
    pub limits: Limits,
    /// Login and signup attempts per client address and per account.
    pub login_limiter: Arc<guard::RateLimiter>,
    /// The argon2 runs allowed at once (each takes the KDF's memory).
    pub argon2_pool: guard::Argon2Pool,
    /// The one control-plane status every cluster panel is drawn from.
    pub cluster: cluster::SharedStatus,
    /// Requests and pushes, served on `/metrics`.
    pub metrics: metrics::HubMetrics,
}

/// By hand: the state holds the control-plane token and the CI client (with
/// its secret), so only the paths and switches are shown.
impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("repos_root", &self.repos_root)
            .field("spool", &self.spool)
            .field("control_plane", &self.control_plane)
            .field("secure_cookies", &self.secure_cookies)
            .field("open_signup", &self.open_signup)
            .field("admin", &self.admin)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(config: &Config) -> Result<Self, RunError> {
        let mk =
            |p: &Path| std::fs::create_dir_all(p).map_err(|e| RunError::DataDir(p.to_owned(), e));
        mk(&config.data_dir)?;
        let data = std::fs::canonicalize(&config.data_dir)
            .map_err(|e| RunError::DataDir(config.data_dir.clone(), e))?;
        let repos_root = data.join("repos");
        let spool = data.join("spool");
        mk(&repos_root)?;
        mk(&spool)?;
        let db = db::Db::open(&data.join("repohub.sqlite"))?;
        if let Some(admin) = &config.admin
            && db.set_rights(admin, Some(true), None)?
        {
            tracing::info!(user = %admin, "configured admin");
        }
        // Repositories made by an older repohub get the receive checks too.
        for (project, repo) in db.all_repos()? {
            let dir = git::repo_dir(&repos_root, &project, &repo);
            match git::harden(&dir, config.limits.receive) {
                // A row whose directory is gone (removed by hand, or still
                // being created) has nothing a push could reach: serving the
                // other repositories matters more than refusing to start.
                Err(git::GitError::NotFound) => {
                    tracing::warn!(dir = %dir.display(), "repository in the database has no directory; skipped");
                }
                r => r.map_err(|e| RunError::Harden(dir, e))?,
            }
        }
        Ok(Self {
            db,
            repos_root,
            spool,
            ci: ci::client(config.ci_url.clone(), config.ci_secret.clone())?
                .with_read_token(Some(config.ci_token.expose().to_owned())),
            ci_jobs: ci::JobsCache::default(),
            cache_url: config
                .cache_url
                .as_deref()
                .map(|u| Arc::from(u.trim_end_matches('/'))),
            control_plane: config.control_plane.clone(),
            control_plane_token: config.control_plane_token.clone(),
            kdf: config.kdf,
            dummy_hash: Arc::new(auth::dummy_hash(&config.kdf)),
            secure_cookies: config.secure_cookies,
            open_signup: config.open_signup,
            signup_may_create_projects: config.signup_may_create_projects,
            admin: config.admin.as_deref().map(Arc::from),
            limits: config.limits,
            login_limiter: Arc::new(guard::RateLimiter::new(config.limits.login)),
            argon2_pool: guard::Argon2Pool::new(config.limits.argon2),
            cluster: cluster::SharedStatus::new(
                config.control_plane.clone(),
                config.control_plane_token.clone(),
                config.control_plane_console_token.clone(),
                config.limits.cluster_ttl,
            ),
            metrics: metrics::HubMetrics::default(),
        })
    }

    pub fn repo_dir(&self, project: &str, repo: &str) -> PathBuf {
        git::repo_dir(&self.repos_root, project, repo)
    }
}

/// Serves on `listener` until `shutdown`, with the notifier running beside.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let state = AppState::new(&config)?;
    let notifier = tokio::spawn(notify::run(
        state.spool.clone(),
        state.repos_root.clone(),
        state.db.clone(),
        state.ci.clone(),
        config.backoff,
        config.notify_tick,
        shutdown.clone(),
    ));
    // The convergence timeline is sampled whether or not anyone looks.
    let sampler = tokio::spawn(state.cluster.clone().sample_forever(shutdown.clone()));
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "repohub listening");
    let token = shutdown.clone();
    let service = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
        .map_err(RunError::Serve)?;
    shutdown.cancel();
    let _ = notifier.await;
    let _ = sampler.await;
    Ok(())
}
