//! The connection to the control plane: publishes generations (each for
//! its project) for the job runner and, every time the connection is
//! (re)established, re-publishes every project's latest good generation, so
//! a restarted control plane gets its desired state back from Git without
//! anyone pushing.
//!
//! RPC clients are `!Send`, so the connection lives on its own thread
//! with a current-thread runtime and a `LocalSet`; the rest of the service
//! talks to it through a channel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commands::client::{ClientError, MasterClient};
use commands::model::PublishMeta;
use commands::types::VmSpec;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::db::{Db, Generation};

/// How often a live connection is checked; bounds how long a restarted
/// control plane waits for its desired state.
const HEARTBEAT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not connected, or the call broke: the generation will be published
    /// when the connection comes back.
    #[error("control plane unreachable: {0}")]
    Unavailable(String),
    /// The control plane answered and said no.
    #[error("control plane refused generation: {0}")]
    Refused(String),
    #[error("stored specs of generation {number} are unreadable: {reason}")]
    BadSpecs { number: i64, reason: String },
}

/// What the control plane answered to a publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub noop: bool,
    pub placed: u32,
    pub unplaced: Vec<(String, String)>,
}

struct Request {
    generation: Generation,
    /// Author, message and job of the commit it was built from.
    meta: PublishMeta,
    reply: oneshot::Sender<Result<Published, PublishError>>,
}

/// Handle used by the job runner.
#[derive(Clone)]
pub struct Publisher {
    tx: Option<mpsc::Sender<Request>>,
    connected: Arc<AtomicBool>,
    /// Each project's active generation on the control plane when last seen.
    remote_active: Arc<Mutex<BTreeMap<String, u64>>>,
    republished: Arc<AtomicU64>,
}

// By hand: the request channel has nothing worth printing; the counters do.
impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("enabled", &self.tx.is_some())
            .field("connected", &self.connected)
            .field("remote_active", &self.remote_active)
            .field("republished", &self.republished)
            .finish()
    }
}

impl Publisher {
    /// No control plane configured: publishing always reports unavailable.
    pub fn disabled() -> Self {
        Publisher {
            tx: None,
            connected: Arc::new(AtomicBool::new(false)),
            remote_active: Arc::new(Mutex::new(BTreeMap::new())),
            republished: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts the connection thread for `addr`.
    pub fn start(
        addr: String,
        token: commands::auth::Secret,
        db: Arc<Db>,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let p = Publisher {
            tx: Some(tx),
            ..Self::disabled()
        };
        let state = p.clone();
        std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                commands::rpc::block_on_local(connection_loop(addr, token, db, rx, state, shutdown))
            })
            .expect("spawning the control-plane thread");
        p
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// `project`'s active generation on the control plane when last seen
    /// (0 = none).
    pub fn remote_active(&self, project: &str) -> u64 {
        self.active_map().get(project).copied().unwrap_or(0)
    }

    fn active_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        // A poisoned map holds numbers only: still right to read.
        self.remote_active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises `project`'s remembered active generation to at least `n`.
    fn saw(&self, project: &str, n: u64) {
        let mut m = self.active_map();
        let e = m.entry(project.to_owned()).or_default();
        *e = (*e).max(n);
    }

    /// How many times the latest generation was re-published on connect.
    pub fn republish_count(&self) -> u64 {
        self.republished.load(Ordering::SeqCst)
    }

    pub async fn publish(&self, generation: Generation) -> Result<Published, PublishError> {
        let meta = PublishMeta {
            job_id: u64::try_from(generation.job_id).unwrap_or(0),
            ..PublishMeta::default()
        };
        self.publish_with_meta(generation, meta).await
    }

    /// Like [`Self::publish`], with the commit's author and message (the
    /// control plane's history shows them).
    pub async fn publish_with_meta(
        &self,
        generation: Generation,
        meta: PublishMeta,
    ) -> Result<Published, PublishError> {
        let Some(tx) = &self.tx else {
            return Err(PublishError::Unavailable(
                "no --control-plane configured".into(),
            ));
        };
        let (reply, rx) = oneshot::channel();
        tx.send(Request {
            generation,
            meta,
            reply,
        })
        .await
        .map_err(|_| PublishError::Unavailable("publisher stopped".into()))?;
        match tokio::time::timeout(CALL_TIMEOUT + CONNECT_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PublishError::Unavailable("publisher stopped".into())),
            Err(_) => Err(PublishError::Unavailable("publish timed out".into())),
        }
    }
}

async fn connection_loop(
    addr: String,
    token: commands::auth::Secret,
    db: Arc<Db>,
    mut rx: mpsc::Receiver<Request>,
    state: Publisher,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let client = MasterClient::connect_with_token(&addr, CONNECT_TIMEOUT, token.expose()).await;
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "control plane not reachable");
                // Answer publishes at once while down: the job records the
                // generation and it goes out on the next connect.
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = &mut sleep => break,
                        req = rx.recv() => match req {
                            Some(r) => { let _ = r.reply.send(Err(PublishError::Unavailable(e.to_string()))); }
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // First call doubles as the connection check.
        match active_generations(&client).await {
            Ok(active) => *state.active_map() = active,
            Err(e) => {
                tracing::debug!(error = %e, "control plane connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        backoff = BACKOFF_MIN;
        state.connected.store(true, Ordering::SeqCst);
        tracing::info!(%addr, "connected to the control plane");

        match db.latest_generations() {
            Ok(latest) => {
                for g in latest {
                    let number = g.number;
                    // A re-publish of the same intent is a no-op: only the
                    // job travels, the commit's author and message were
                    // given with the first publish.
                    let meta = PublishMeta {
                        job_id: u64::try_from(g.job_id).unwrap_or(0),
                        ..PublishMeta::default()
                    };
                    match publish_once(&client, &g, &meta).await {
                        Ok(p) => {
                            state.republished.fetch_add(1, Ordering::SeqCst);
                            state.saw(&g.project, number as u64);
                            tracing::info!(
                                project = %g.project,
                                generation = number,
                                noop = p.noop,
                                "re-published the latest good generation"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(project = %g.project, generation = number, error = %e, "re-publishing the latest generation failed")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the latest generations"),
        }

        let broken = loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    client.close().await;
                    return;
                }
                req = rx.recv() => {
                    let Some(req) = req else { return };
                    let number = req.generation.number;
                    let r = publish_once(&client, &req.generation, &req.meta).await;
                    if r.is_ok() {
                        state.saw(&req.generation.project, number as u64);
                    }
                    let transport_failed = matches!(r, Err(PublishError::Unavailable(_)));
                    let _ = req.reply.send(r);
                    if transport_failed {
                        break "publish call failed";
                    }
                }
                () = tokio::time::sleep(HEARTBEAT) => {
                    match active_generations(&client).await {
                        Ok(active) => { *state.active_map() = active; }
                        Err(_) => break "heartbeat failed",
                    }
                }
            }
        };
        state.connected.store(false, Ordering::SeqCst);
        tracing::warn!(%addr, reason = broken, "lost the control plane; reconnecting");
        drop(client);
    }
}

/// Each project's highest generation number the control plane remembers.
async fn active_generations(client: &MasterClient) -> Result<BTreeMap<String, u64>, String> {
    let gens = tokio::time::timeout(CALL_TIMEOUT, client.generations(None))
        .await
        .map_err(|_| "listGenerations timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for g in gens {
        let e = out.entry(g.project).or_default();
        *e = (*e).max(g.number);
    }
    Ok(out)
}

async fn publish_once(
    client: &MasterClient,
    g: &Generation,
    meta: &PublishMeta,
) -> Result<Published, PublishError> {
    let specs: Vec<VmSpec> =
        serde_json::from_str(&g.specs_json).map_err(|e| PublishError::BadSpecs {
            number: g.number,
            reason: e.to_string(),
        })?;
    let call = client.publish_with_meta(
        &g.project,
        &g.commit,
        g.number as u64,
        g.intent_hash.as_str(),
        &specs,
        meta,
    );
    let outcome = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| PublishError::Unavailable("publishState timed out".into()))?
        .map_err(|e| match e {
            ClientError::Refused(failure) => PublishError::Refused(failure.to_string()),
            other => PublishError::Unavailable(other.to_string()),
        })?;
    Ok(Published {
        noop: outcome.noop,
        placed: outcome.placed,
        unplaced: outcome
            .unplaced
            .into_iter()
            .map(|u| (u.name, u.reason))
            .collect(),
    })
}
