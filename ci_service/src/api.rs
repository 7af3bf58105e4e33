//! The HTTP API (axum): push hooks in, job list, job detail and job logs
//! out (followed live as a chunked text stream). repohub and the CLI code
//! against these shapes; see context/architecture.md.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Notify;

use crate::db::{Db, JobState};
use crate::publisher::Publisher;

#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub data_dir: std::path::PathBuf,
    pub hook_secret: Option<String>,
    pub wake: Arc<Notify>,
    pub publisher: Publisher,
}

/// The largest push event body accepted.
pub const MAX_HOOK_BODY: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        // A push event is a few hundred bytes; anything larger is refused
        // with 413 before it is buffered.
        .route(
            "/hooks/push",
            post(push).layer(axum::extract::DefaultBodyLimit::max(MAX_HOOK_BODY)),
        )
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/log", get(job_log))
        .route("/generations", get(generations))
        .route("/healthz", get(health))
        .with_state(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// What the post-receive hook sends for each updated ref.
#[derive(Debug, Deserialize)]
pub struct PushEvent {
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub old: String,
    pub new: String,
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|c| c.is_ascii_hexdigit())
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
    if ev.repo.trim().is_empty() || !ev.git_ref.starts_with("refs/") {
        return error(
            StatusCode::BAD_REQUEST,
            "repo must be set and ref must start with refs/",
        );
    }
    if !is_sha(&ev.old) || !is_sha(&ev.new) {
        return error(
            StatusCode::BAD_REQUEST,
            "old and new must be 40-hex commit ids",
        );
    }
    if ev.new.bytes().all(|c| c == b'0') {
        // A deleted ref builds nothing; the running generation stays.
        return (
            StatusCode::OK,
            Json(serde_json::json!({ "job_id": null, "reason": "ref deleted" })),
        )
            .into_response();
    }
    let new = ev.new.to_ascii_lowercase();
    match s.db.enqueue(&ev.repo, &ev.git_ref, &ev.old, &new) {
        Ok((id, superseded)) => {
            tracing::info!(job_id = id, repo = %ev.repo, git_ref = %ev.git_ref, commit = %new, superseded, "push queued");
            s.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "job_id": id })),
            )
                .into_response()
        }
        Err(e) => internal(e),
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
        Err(e) => internal(e),
    }
}

async fn job(State(s): State<AppState>, Path(id): Path<i64>) -> Response {
    let job = match s.db.job(id) {
        Ok(Some(j)) => j,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => return internal(e),
    };
    let mut v = serde_json::to_value(&job).expect("job serializes");
    if job.state == JobState::Succeeded {
        match s.db.job_specs(id) {
            Ok(specs) => v["vm_specs"] = specs.unwrap_or(serde_json::Value::Array(vec![])),
            Err(e) => return internal(e),
        }
    }
    Json(v).into_response()
}

async fn generations(State(s): State<AppState>) -> Response {
    match s.db.generations(100) {
        Ok(g) => Json(g).into_response(),
        Err(e) => internal(e),
    }
}

async fn health(State(s): State<AppState>) -> Response {
    Json(serde_json::json!({
        "ok": true,
        "control_plane_connected": s.publisher.is_connected(),
        "republished": s.publisher.republish_count(),
    }))
    .into_response()
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
        Err(e) => return internal(e),
    }
    let path = crate::runner::log_path(&s.data_dir, id);
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    if !follow {
        let text = tokio::fs::read(&path).await.unwrap_or_default();
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
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
                let _ = f.read_to_end(&mut chunk).await;
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
