//! The HTTP API (axum): push hooks in, job list, job detail and job logs
//! out (streamed from the file, or followed live as a chunked text
//! stream). repohub and the CLI code against these shapes; see
//! context/architecture.md. Reading jobs, logs, specs and generations
//! needs a `reader` (or `admin`) token of `--api-token-file` as
//! `Authorization: Bearer`; the push hook has its own secret; `/healthz`
//! and `/metrics` (counts and durations only) are open. `DELETE
//! /jobs/{id}` cancels a job and needs an `admin` token (anyone on
//! loopback when there is no token file, as for reads); so does `POST
//! /jobs/{id}/rerun`, which queues an ended job's push again.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Notify;

use commands::auth::{Grant, Role};
use commands::ci_api::{CancelReply, ErrorBody, JobState, PushEvent, PushReply};

use crate::db::Db;
use crate::publisher::Publisher;
use crate::runner::Cancels;

#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub data_dir: std::path::PathBuf,
    pub hook_secret: Option<String>,
    /// The tokens that may read (`reader`, `admin`).
    pub readers: commands::auth::Authenticator,
    pub wake: Arc<Notify>,
    pub publisher: Publisher,
    /// Where `DELETE /jobs/{id}` reaches the running job.
    pub cancels: Cancels,
    /// Served on `/metrics`; the runner observes step durations into it.
    pub metrics: crate::metrics::CiMetrics,
}

// By hand: the hook secret must not be printed.
impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data_dir", &self.data_dir)
            .field(
                "hook_secret",
                &self.hook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

/// The largest push event body accepted.
pub const MAX_HOOK_BODY: usize = 64 * 1024;

/// The roles a `--api-token-file` may hold: `reader` reads, `admin`
/// reads and cancels jobs.
pub const API_ROLES: &[Role] = &[Role::Reader, Role::Admin];

/// How much of a log one chunk of a followed stream carries: a log is
/// never read whole into memory.
const LOG_CHUNK: u64 = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let reads = Router::new()
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/log", get(job_log))
        .route("/jobs/{id}", delete(cancel))
        .route("/jobs/{id}/rerun", post(rerun))
        .route("/generations", get(generations))
        .route_layer(middleware::from_fn_with_state(state.clone(), need_reader));
    Router::new()
        // A push event is a few hundred bytes; anything larger is refused
        // with 413 before it is buffered.
        .route(
            "/hooks/push",
            post(push).layer(axum::extract::DefaultBodyLimit::max(MAX_HOOK_BODY)),
        )
        .route("/healthz", get(health))
        // Open like /healthz: counts and durations, no names (see
        // crate::metrics).
        .route("/metrics", get(metrics))
        .merge(reads)
        .with_state(state)
}

/// Lets a request through when its bearer token is a reader's or an
/// admin's (any request, when ci_service has no API token file).
async fn need_reader(
    State(s): State<AppState>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    match s.readers.login(given) {
        Ok(grant) => {
            let mut req = req;
            req.extensions_mut().insert(grant);
            next.run(req).await
        }
        Err(e) => {
            let mut resp = error(StatusCode::UNAUTHORIZED, e.to_string());
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

/// What an HTTP client sees of a failure inside ci_service: the cause
/// (paths, SQL, the database's state) stays in ci_service's own log, next
/// to the job it concerns.
const INTERNAL_MESSAGE: &str = "internal error in ci_service; its log has the cause";

/// Logs `e` (its Debug form carries the whole cause) with the job it
/// concerns, when there is one, and answers 500 with a short message that
/// reveals nothing inside.
fn internal(job_id: Option<i64>, e: &(dyn std::error::Error + 'static)) -> Response {
    tracing::error!(job_id, error = %e, cause = ?e, "request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_MESSAGE)
}

async fn push(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(secret) = &s.hook_secret {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !commands::auth::ct_eq(given.trim().as_bytes(), secret.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong hook secret");
        }
    }
    let ev: PushEvent = match serde_json::from_slice(&body) {
        Ok(ev) => ev,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad push event: {e}")),
    };
    if let Err(e) = ev.check() {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    if ev.deletes_ref() {
        // A deleted ref builds nothing; the running generation stays.
        let reply = PushReply {
            job_id: None,
            reason: Some("ref deleted".into()),
        };
        return (StatusCode::OK, Json(reply)).into_response();
    }
    let new = ev.new.to_ascii_lowercase();
    match s.db.enqueue(
        &ev.repo,
        &ev.git_ref,
        &ev.old,
        &new,
        ev.project.as_deref(),
        ev.deploy_ref.as_deref(),
    ) {
        Ok((id, superseded)) => {
            tracing::info!(job_id = id, repo = %ev.repo, git_ref = %ev.git_ref, commit = %new, superseded, "push queued");
            s.wake.notify_one();
            let reply = PushReply {
                job_id: Some(id),
                reason: None,
            };
            (StatusCode::ACCEPTED, Json(reply)).into_response()
        }
        Err(e) => internal(None, &e),
    }
}

#[derive(Deserialize)]
struct JobsQuery {
    repo: Option<String>,
    limit: Option<u32>,
}

async fn jobs(State(s): State<AppState>, Query(q): Query<JobsQuery>) -> Response {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    match s
        .db
        .jobs(q.repo.as_deref().filter(|r| !r.is_empty()), limit)
    {
        Ok(jobs) => Json(jobs).into_response(),
        Err(e) => internal(None, &e),
    }
}

async fn job(State(s): State<AppState>, Path(id): Path<i64>) -> Response {
    let mut job = match s.db.job(id) {
        Ok(Some(j)) => j,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => return internal(Some(id), &e),
    };
    if job.state == JobState::Succeeded {
        match s.db.job_specs(id) {
            Ok(specs) => job.vm_specs = Some(specs.unwrap_or_default()),
            Err(e) => return internal(Some(id), &e),
        }
    }
    Json(job).into_response()
}

/// Job `id` for an action only an admin may take (`what`: the verb and
/// its -ing form, for the refusal); 404 before 403, as for reads.
fn admin_job(
    s: &AppState,
    grant: &Grant,
    id: i64,
    (verb, doing): (&str, &str),
) -> Result<commands::ci_api::Job, Box<Response>> {
    let job = match s.db.job(id) {
        Ok(Some(j)) => j,
        Ok(None) => {
            return Err(Box::new(error(
                StatusCode::NOT_FOUND,
                format!("no job {id}"),
            )));
        }
        Err(e) => return Err(Box::new(internal(Some(id), &e))),
    };
    if grant.role != Role::Admin {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            format!("a {grant} token may not {verb} job {id}: {doing} needs an admin token"),
        )));
    }
    Ok(job)
}

/// `DELETE /jobs/{id}`: a queued job ends `cancelled` now; a running one
/// is stopped by the runner (202, `running`) and ends `cancelled` once its
/// nix is gone, unless it already reached publish, which it finishes. A
/// finished job answers 409 with its state.
async fn cancel(
    State(s): State<AppState>,
    axum::Extension(grant): axum::Extension<Grant>,
    Path(id): Path<i64>,
) -> Response {
    let job = match admin_job(&s, &grant, id, ("cancel", "cancelling")) {
        Ok(j) => j,
        Err(resp) => return *resp,
    };
    if job.state.is_final() {
        return (
            StatusCode::CONFLICT,
            Json(ErrorBody {
                error: format!("job {id} already ended {}", job.state),
            }),
        )
            .into_response();
    }
    let job = match s.db.cancel_queued(id) {
        Ok(Some(j)) => j,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => return internal(Some(id), &e),
    };
    match job.state {
        JobState::Cancelled => {
            tracing::info!(job_id = id, by = %grant, "queued job cancelled");
            (
                StatusCode::OK,
                Json(CancelReply {
                    id,
                    state: job.state,
                }),
            )
                .into_response()
        }
        JobState::Running => {
            tracing::info!(job_id = id, by = %grant, "cancelling running job");
            s.cancels.cancel(id);
            (
                StatusCode::ACCEPTED,
                Json(CancelReply {
                    id,
                    state: job.state,
                }),
            )
                .into_response()
        }
        // It ended between the two reads.
        other => error(
            StatusCode::CONFLICT,
            format!("job {id} already ended {other}"),
        ),
    }
}

/// `POST /jobs/{id}/rerun` (admin): queues the job's push again, the same
/// commit of the same ref, as a new job (202 with its id, as a push
/// answers). Re-running is the push again rather than a reset of the old
/// job, so the old job's log and state stay as they ended. A job that has
/// not ended answers 409: it is still going to build that commit.
async fn rerun(
    State(s): State<AppState>,
    axum::Extension(grant): axum::Extension<Grant>,
    Path(id): Path<i64>,
) -> Response {
    let job = match admin_job(&s, &grant, id, ("re-run", "re-running")) {
        Ok(j) => j,
        Err(resp) => return *resp,
    };
    if !job.state.is_final() {
        return error(
            StatusCode::CONFLICT,
            format!("job {id} is still {}; it has not ended", job.state),
        );
    }
    match s.db.requeue(id) {
        Ok(Some(new)) => {
            tracing::info!(job_id = new, rerun_of = id, by = %grant, commit = %job.commit, "job re-run");
            s.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(PushReply {
                    job_id: Some(new),
                    reason: None,
                }),
            )
                .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => internal(Some(id), &e),
    }
}

async fn generations(State(s): State<AppState>) -> Response {
    match s.db.generations(100) {
        Ok(g) => Json(g).into_response(),
        Err(e) => internal(None, &e),
    }
}

async fn health(State(s): State<AppState>) -> Response {
    Json(serde_json::json!({
        "ok": true,
        "controlPlaneConnected": s.publisher.is_connected(),
        "republished": s.publisher.republish_count(),
    }))
    .into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    let db = st.db.clone();
    let metrics = st.metrics.clone();
    // SQLite is blocking: count off the async threads.
    match tokio::task::spawn_blocking(move || metrics.render(&db)).await {
        Ok(text) => (
            [(header::CONTENT_TYPE, commands::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    follow: Option<String>,
}

async fn job_log(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> Response {
    match s.db.job(id) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => return internal(Some(id), &e),
    }
    let path = crate::runner::log_path(&s.data_dir, id);
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    if !follow {
        // Streamed from the file as it is now, in chunks.
        let body = match tokio::fs::File::open(&path).await {
            Ok(f) => {
                let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                    f.take(len),
                    LOG_CHUNK as usize,
                ))
            }
            Err(_) => Body::empty(),
        };
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    }
    // Follow: stream what is there, then what is appended, until the job
    // is final and the file is drained.
    struct Follow {
        db: Arc<Db>,
        path: std::path::PathBuf,
        id: i64,
        offset: u64,
    }
    let st = Follow {
        db: s.db.clone(),
        path,
        id,
        offset: 0,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            // Read the state before the file: a final state seen first
            // guarantees every line was already written.
            let finished = st
                .db
                .job(st.id)
                .ok()
                .flatten()
                .is_none_or(|j| j.state.is_final());
            let mut chunk = Vec::new();
            if let Ok(mut f) = tokio::fs::File::open(&st.path).await
                && f.seek(SeekFrom::Start(st.offset)).await.is_ok()
            {
                let _ = f.take(LOG_CHUNK).read_to_end(&mut chunk).await;
            }
            if !chunk.is_empty() {
                st.offset += chunk.len() as u64;
                return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), st));
            }
            if finished {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_reach_clients_sanitised() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ci.sqlite");
        let (db, _) = Db::open(&path).unwrap();
        let (id, _) = db
            .enqueue("/r", "refs/heads/main", "0", "c1", None, None)
            .unwrap();
        // A state this build does not know: reading the job fails inside.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE jobs SET state = 'exploded'", [])
            .unwrap();
        let app = router(AppState {
            metrics: crate::metrics::CiMetrics::default(),
            db: Arc::new(db),
            data_dir: tmp.path().to_owned(),
            hook_secret: None,
            readers: commands::auth::Authenticator::Open,
            wake: Arc::new(Notify::new()),
            publisher: Publisher::disabled(),
            cancels: Cancels::default(),
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let client = commands::http::HttpClient::tcp();
        for path in [
            format!("/jobs/{id}"),
            "/jobs".into(),
            format!("/jobs/{id}/log"),
        ] {
            let req = http::Request::get(format!("{base}{path}"))
                .body(bytes::Bytes::new())
                .unwrap();
            let resp = client.send(req).await.unwrap();
            assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            let body: ErrorBody = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(body.error, INTERNAL_MESSAGE, "{path}");
        }
    }
}
