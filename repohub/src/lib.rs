//! repohub: Procurator's web UI and git host. Users, projects and bare git
//! repositories in SQLite and on disk, smart HTTP clone/push, push
//! notifications to ci_service, and pages for code, CI jobs and the cluster.

pub mod auth;
pub mod ci;
pub mod cluster;
pub mod db;
pub mod flakegen;
pub mod git;
pub mod markdown;
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
    /// Control plane `host:port` (Cap'n Proto `Master`).
    pub control_plane: Option<String>,
    /// Token for the control plane's login (a `reader` token is enough).
    pub control_plane_token: commands::auth::Secret,
    pub kdf: auth::KdfParams,
    pub backoff: notify::Backoff,
    /// How often the spool is drained and due notifications are sent.
    pub notify_tick: Duration,
    /// Adds `Secure` to cookies (set when served behind HTTPS).
    pub secure_cookies: bool,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ci_url: None,
            ci_secret: None,
            control_plane: None,
            control_plane_token: commands::auth::Secret::default(),
            kdf: auth::KdfParams::default(),
            backoff: notify::Backoff::default(),
            notify_tick: Duration::from_millis(300),
            secure_cookies: false,
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
    pub control_plane: Option<String>,
    pub control_plane_token: commands::auth::Secret,
    pub kdf: auth::KdfParams,
    pub dummy_hash: Arc<String>,
    pub secure_cookies: bool,
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
        Ok(Self {
            db,
            repos_root,
            spool,
            ci: ci::client(config.ci_url.clone(), config.ci_secret.clone())?,
            control_plane: config.control_plane.clone(),
            control_plane_token: config.control_plane_token.clone(),
            kdf: config.kdf,
            dummy_hash: Arc::new(auth::dummy_hash(&config.kdf)),
            secure_cookies: config.secure_cookies,
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
        state.db.clone(),
        state.ci.clone(),
        config.backoff,
        config.notify_tick,
        shutdown.clone(),
    ));
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "repohub listening");
    let token = shutdown.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
        .map_err(RunError::Serve)?;
    shutdown.cancel();
    let _ = notifier.await;
    Ok(())
}
