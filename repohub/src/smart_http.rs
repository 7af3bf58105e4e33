//! git's smart HTTP protocol, served by running the system's
//! `git http-backend` (CGI) per request with bodies streamed both ways.
//!
//! Authorisation is decided here, before git runs: anonymous clone of public
//! projects, everything else needs a personal access token (HTTP basic
//! password) of a project member; pushes always need one. `REMOTE_USER` is
//! set only for an authenticated member, which is what enables
//! `git-receive-pack` in http-backend.

use std::path::Path;
use std::process::Stdio;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderValue, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::AppState;
use crate::auth;
use crate::names;

#[derive(Debug, thiserror::Error)]
pub enum SmartHttpError {
    #[error("starting git http-backend")]
    Spawn(#[source] std::io::Error),
    #[error("reading git http-backend's response")]
    Read(#[source] std::io::Error),
    #[error("git http-backend sent malformed CGI headers")]
    Headers,
    #[error("the request body is over its limit")]
    TooLarge,
}

/// 413 with a message git shows the user.
fn too_large(what: &str, limit: u64) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "{what} too large: this repohub accepts at most {} per request\n",
            commands::model::human_bytes(limit)
        ),
    )
        .into_response()
}

/// Output of http-backend held back while the request body is still being
/// fed, so a body that turns out too large can still be answered with 413;
/// past this, the response streams and an oversized body only cuts it.
const HELD_OUTPUT: usize = 1024 * 1024;

fn unauthorized(msg: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"repohub\"")],
        format!("{msg}\n"),
    )
        .into_response()
}

/// `/{project}/{repo}.git/info/refs`, `/git-upload-pack`, `/git-receive-pack`
/// (also without the `.git`).
pub async fn handle(
    State(st): State<AppState>,
    UrlPath((project, repo_git)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    // The routes end in one of the three service paths; the repository
    // may be named with or without `.git` (as GitHub and Gitea accept).
    // Repository names never end in `.git` themselves, so both spellings
    // name the same repository.
    let path = req.uri().path();
    let Some(tail) = ["info/refs", "git-upload-pack", "git-receive-pack"]
        .into_iter()
        .find(|t| path.ends_with(&format!("/{t}")))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let repo = repo_git.strip_suffix(".git").unwrap_or(&repo_git);
    if names::validate_project_name(&project).is_err() || names::validate_name(repo).is_err() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let query = query.unwrap_or_default();
    let push = tail == "git-receive-pack"
        || (tail == "info/refs" && query.contains("service=git-receive-pack"));

    // Who is asking: a personal access token as the basic-auth password.
    let user = match auth::basic_auth(req.headers()) {
        None => None,
        Some((_, token)) => {
            let found = if auth::looks_like_token(&token) {
                st.db.token_user(&auth::sha256_hex(&token)).ok().flatten()
            } else {
                None
            };
            match found {
                Some(u) => Some(u),
                None => return unauthorized("invalid access token"),
            }
        }
    };

    let proj = match st.db.project(&project) {
        Ok(p) => p,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let member = match (&proj, &user) {
        (Some(p), Some(u)) => st.db.role(p.id, u.id).ok().flatten().is_some(),
        _ => false,
    };
    let visible = proj.as_ref().is_some_and(|p| p.public) || member;
    let exists = match &proj {
        Some(p) if visible => st.db.repo(p.id, repo).ok().flatten().is_some(),
        _ => false,
    };
    if !exists {
        // Anonymous callers are asked for credentials so a private repo's
        // existence is not revealed and git prompts for a token.
        return if user.is_none() {
            unauthorized("authentication required")
        } else {
            StatusCode::NOT_FOUND.into_response()
        };
    }
    if push && !member {
        return if user.is_none() {
            unauthorized("pushing needs a personal access token")
        } else {
            (StatusCode::FORBIDDEN, "only project members may push\n").into_response()
        };
    }

    // Bound the request body: a push's pack, or a fetch's wants and haves.
    let (limit, what) = if tail == "git-receive-pack" {
        (st.limits.max_push_body, "push")
    } else {
        (st.limits.max_fetch_body, "fetch request")
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large(what, limit);
    }

    let path_info = format!("/{project}/{repo}.git/{tail}");
    let remote_user = if member { user.map(|u| u.name) } else { None };
    match run_backend(
        &st.repos_root,
        &path_info,
        &query,
        remote_user.as_deref(),
        req,
        limit,
    )
    .await
    {
        Ok(r) => r,
        Err(SmartHttpError::TooLarge) => too_large(what, limit),
        Err(e) => {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "git http-backend failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "git backend failed\n").into_response()
        }
    }
}

async fn run_backend(
    root: &Path,
    path_info: &str,
    query: &str,
    remote_user: Option<&str>,
    req: Request,
    limit: u64,
) -> Result<Response, SmartHttpError> {
    let (parts, body) = req.into_parts();
    let h = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        // Only the repository's own config applies: no system or user
        // config can re-enable something we turned off.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", root)
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", h(header::CONTENT_TYPE))
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(u) = remote_user {
        cmd.env("REMOTE_USER", u);
    }
    let cl = h(header::CONTENT_LENGTH);
    if !cl.is_empty() {
        cmd.env("CONTENT_LENGTH", cl);
    }
    let enc = h(header::CONTENT_ENCODING);
    if !enc.is_empty() {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(p) = parts
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
    {
        cmd.env("GIT_PROTOCOL", p);
    }
    let mut child = cmd.spawn().map_err(SmartHttpError::Spawn)?;
    let mut stdin = child.stdin.take().ok_or(SmartHttpError::Headers)?;
    let mut stdout = child.stdout.take().ok_or(SmartHttpError::Headers)?;
    let mut stderr = child.stderr.take().ok_or(SmartHttpError::Headers)?;

    // Request body → stdin, concurrently with reading stdout (a large push
    // would otherwise deadlock on full pipes). Past `limit` bytes the body
    // is cut: git then sees a truncated pack and stores nothing.
    let (fed_tx, mut fed_rx) = tokio::sync::oneshot::channel::<bool>();
    tokio::spawn(async move {
        let mut s = body.into_data_stream();
        let mut total = 0u64;
        let mut within = true;
        while let Some(chunk) = s.next().await {
            let Ok(chunk) = chunk else { break };
            total += chunk.len() as u64;
            if total > limit {
                within = false;
                break;
            }
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        drop(if within {
            stdin.shutdown().await
        } else {
            Ok(())
        });
        let _ = fed_tx.send(within);
    });
    let path_for_log = path_info.to_owned();
    tokio::spawn(async move {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        let status = child.wait().await;
        if !err.trim().is_empty() {
            tracing::debug!(path = %path_for_log, stderr = %err.trim(), ?status, "git http-backend stderr");
        }
    });

    // Both services read their whole request before they answer, so hold
    // the output back until the body is in (or refused).
    let mut head = Vec::with_capacity(512);
    let mut eof = false;
    while head.len() < HELD_OUTPUT {
        let mut buf = [0u8; 4096];
        tokio::select! {
            fed = &mut fed_rx => {
                if fed == Ok(false) {
                    return Err(SmartHttpError::TooLarge);
                }
                break;
            }
            n = stdout.read(&mut buf), if !eof => {
                let n = n.map_err(SmartHttpError::Read)?;
                eof = n == 0;
                head.extend_from_slice(&buf[..n]);
            }
        }
    }

    // CGI headers, then the body as it streams.
    let body_start;
    loop {
        if let Some(i) = find_header_end(&head) {
            body_start = i;
            break;
        }
        let mut buf = [0u8; 4096];
        let n = stdout.read(&mut buf).await.map_err(SmartHttpError::Read)?;
        if n == 0 {
            return Err(SmartHttpError::Headers);
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = find_header_end(&head) {
            body_start = i;
            break;
        }
        if head.len() > 64 * 1024 {
            return Err(SmartHttpError::Headers);
        }
    }
    let (hdr_len, sep_len) = body_start;
    let rest = head.split_off(hdr_len + sep_len);
    let text = String::from_utf8_lossy(&head[..hdr_len]).into_owned();
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            builder = builder
                .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        } else if let (Ok(name), Ok(val)) = (
            header::HeaderName::try_from(k.trim()),
            HeaderValue::from_str(v),
        ) {
            builder = builder.header(name, val);
        }
    }
    let first =
        futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(rest)) });
    let stream = first.chain(ReaderStream::new(stdout));
    builder
        .body(Body::from_stream(stream))
        .map_err(|_| SmartHttpError::Headers)
}

/// Index of the blank line ending CGI headers and the separator's length.
fn find_header_end(b: &[u8]) -> Option<(usize, usize)> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_end() {
        assert_eq!(find_header_end(b"A: b\r\n\r\nbody"), Some((4, 4)));
        assert_eq!(find_header_end(b"A: b\n\nbody"), Some((4, 2)));
        assert_eq!(find_header_end(b"A: b\r\n"), None);
    }
}
