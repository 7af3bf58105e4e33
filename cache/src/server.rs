//! The HTTP side: routes of the Nix binary cache protocol (reads streamed
//! from disk, uploads streamed to the store), the pin API for CI, metrics,
//! and the accept loop with graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::TryStreamExt as _;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::hash::is_hash_part;
use crate::metrics::Metrics;
use crate::signing::SecretKey;
use crate::store::{
    Chunk, PutOutcome, Store, StoreError, UploadError, parse_log_name, parse_nar_file_name,
};
use crate::{Config, Error};

type Body = BoxBody<Bytes, io::Error>;

/// Shared state of one serving cache.
struct State {
    store: Arc<Store>,
    metrics: Metrics,
    tokens: crate::UploadTokens,
    max_upload: u64,
    /// See `Config::upload_stall_timeout`.
    stall: std::time::Duration,
    cache_info: String,
    gc_interval: Option<Duration>,
    gc_policy: crate::store::GcPolicy,
    live_from: Option<crate::LiveSource>,
}

// By hand: only the token holders' projects are shown.
impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("store", &self.store)
            .field("metrics", &self.metrics)
            .field("tokens", &self.tokens)
            .field("max_upload", &self.max_upload)
            .field("stall", &self.stall)
            .field("cache_info", &self.cache_info)
            .field("gc_interval", &self.gc_interval)
            .field("gc_policy", &self.gc_policy)
            .field("live_from", &self.live_from)
            .finish()
    }
}

/// A cache whose key is loaded, store opened and leftovers of interrupted
/// uploads removed: ready to serve.
#[derive(Debug)]
pub struct Prepared {
    state: Arc<State>,
    data_dir: PathBuf,
}

/// Loads the key, opens the store and cleans `tmp/`. Blocking.
pub fn prepare(config: Config) -> Result<Prepared, Error> {
    let key = SecretKey::load(&config.key_file)?;
    let store = Store::open(&config.data_dir, &config.store_dir, Some(key))?;
    let cleaned = store.clean_tmp()?;
    if cleaned > 0 {
        tracing::info!(cleaned, "removed temp files of interrupted uploads");
    }
    let dropped = store.drop_uncommitted_narinfos()?;
    if dropped > 0 {
        tracing::warn!(dropped, "removed narinfo files a crash left uncommitted");
    }
    let state = Arc::new(State {
        cache_info: format!(
            "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
            config.store_dir, config.priority
        ),
        store: Arc::new(store),
        metrics: Metrics::default(),
        tokens: config.upload_tokens.clone(),
        max_upload: config.max_upload_bytes,
        stall: config.upload_stall_timeout,
        gc_interval: config.gc_interval,
        gc_policy: config.gc_policy,
        live_from: config.live_generations_from,
    });
    Ok(Prepared {
        state,
        data_dir: config.data_dir,
    })
}

/// Serves the cache on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish (up to 10 s).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let prepared = tokio::task::spawn_blocking(move || prepare(config))
        .await
        .map_err(|e| Error::Io {
            context: "opening store".into(),
            source: io::Error::other(e),
        })??;
    serve(prepared, listener, shutdown).await
}

/// Serves a prepared cache (see [`run`]).
pub async fn serve(
    prepared: Prepared,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Prepared { state, data_dir } = prepared;
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, data_dir = %data_dir.display(), uploads = !state.tokens.is_empty(), "cache serving");
    if let Some(every) = state.gc_interval {
        // Zeros from the start, so a scrape before the first run sees the series.
        for name in [
            "cache_gc_runs_total",
            "cache_gc_failures_total",
            "cache_gc_freed_bytes_total",
            "cache_gc_deleted_paths_total",
            "cache_gc_unpinned_total",
            "cache_gc_live_unknown_total",
        ] {
            state.metrics.add(name, String::new(), 0);
        }
        tokio::spawn(gc_loop(state.clone(), every, shutdown.clone()));
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| handle(state.clone(), req)),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("shutdown: gave up waiting for connections"),
    }
    tracing::info!("cache stopped");
    Ok(())
}

/// Scheduled gc: one collection every `every` (the first one after the
/// first interval, so a restart loop does not collect in a loop), each in
/// a blocking task holding the index's write lock as the CLI's does.
async fn gc_loop(state: Arc<State>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let store = state.store.clone();
        let mut policy = state.gc_policy;
        let mut live = crate::store::LiveGenerations::new();
        if let Some(src) = &state.live_from {
            match live_generations(src.clone()).await {
                Ok(l) => live = l,
                Err(why) => {
                    // Not knowing what runs, drop no generation pin this round.
                    policy.keep_generations = None;
                    state
                        .metrics
                        .add("cache_gc_live_unknown_total", String::new(), 1);
                    tracing::warn!(control_plane = %src.control_plane, error = %why,
                        "live generations unknown: every generation pin is kept this round");
                }
            }
        }
        let started = Instant::now();
        let result =
            tokio::task::spawn_blocking(move || store.gc_keeping(&policy, &live, true)).await;
        match result {
            Ok(Ok(r)) => {
                state.metrics.gc_done(&r);
                tracing::info!(
                    unpinned = r.unpinned.len(),
                    paths = r.deleted.len(),
                    nar_files = r.nar_files.len(),
                    logs = r.logs.len(),
                    freed_bytes = r.freed_bytes,
                    kept = r.kept,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "scheduled gc"
                );
            }
            Ok(Err(e)) => {
                state
                    .metrics
                    .add("cache_gc_failures_total", String::new(), 1);
                tracing::error!(error = %commands::report::error_chain(&e), "scheduled gc failed");
            }
            Err(e) => {
                state
                    .metrics
                    .add("cache_gc_failures_total", String::new(), 1);
                tracing::error!(error = %e, "scheduled gc task failed");
            }
        }
    }
}

/// How long asking the control plane for live generations may take.
const LIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The generations workers still run, by project, from `src`'s
/// `projects()` (on a blocking thread with its own local runtime: Cap'n
/// Proto objects are not `Send`); the error is the chain, printed once.
pub async fn live_generations(
    src: crate::LiveSource,
) -> Result<crate::store::LiveGenerations, String> {
    let chain = |e: commands::client::ClientError| commands::report::error_chain(&e);
    let projects = tokio::task::spawn_blocking(move || {
        commands::rpc::block_on_local(async move {
            let client = commands::client::MasterClient::connect_with_token(
                &src.control_plane,
                LIVE_TIMEOUT,
                src.token.expose(),
            )
            .await
            .map_err(chain)?;
            let projects = tokio::time::timeout(LIVE_TIMEOUT, client.projects()).await;
            client.close().await;
            match projects {
                Ok(r) => r.map_err(chain),
                Err(_) => Err(format!("no answer within {} s", LIVE_TIMEOUT.as_secs())),
            }
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(projects
        .into_iter()
        .map(|p| (p.project, p.live_generations.into_iter().collect()))
        .collect())
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A complete response: `body` with its type and length.
fn complete(status: u16, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_LENGTH, body.len())
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn text(status: u16, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    complete(status, "text/plain; charset=utf-8", msg)
}

fn json(status: u16, v: &serde_json::Value) -> Response<Body> {
    complete(status, "application/json", v.to_string())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (route, resp) = route(&state, req).await;
    let status = resp.status().as_u16();
    let len = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    state.metrics.request(
        route,
        method.as_str(),
        status,
        if method == Method::HEAD { 0 } else { len },
    );
    let elapsed_us = start.elapsed().as_micros() as u64;
    if method == Method::PUT || method == Method::DELETE || status >= 500 {
        tracing::info!(%method, %path, status, elapsed_us, "request");
    } else {
        tracing::debug!(%method, %path, status, elapsed_us, "request");
    }
    Ok(resp)
}

async fn route(state: &State, req: Request<Incoming>) -> (&'static str, Response<Body>) {
    let path = req.uri().path().to_owned();
    let m = req.method().clone();
    let head = m == Method::HEAD;
    let get = m == Method::GET || head;
    if path == "/nix-cache-info" {
        return (
            "cache_info",
            match m {
                _ if get => file_like(
                    state.cache_info.clone().into(),
                    "text/x-nix-cache-info",
                    head,
                ),
                Method::PUT => put_cache_info(state, req).await,
                _ => text(405, "method not allowed"),
            },
        );
    }
    if path == "/metrics" && get {
        let store = state.store.clone();
        let (paths, bytes) =
            tokio::task::spawn_blocking(move || (store.count_paths().ok(), store.nar_bytes().ok()))
                .await
                .unwrap_or((None, None));
        return (
            "metrics",
            file_like(
                state.metrics.render(paths, bytes).into(),
                "text/plain; version=0.0.4",
                head,
            ),
        );
    }
    if path == "/" && get {
        return (
            "root",
            file_like(
                Bytes::from_static(b"Procurator Nix binary cache\n"),
                "text/plain",
                head,
            ),
        );
    }
    if let Some(rest) = path.strip_prefix("/_pcr/pins") {
        return ("pins", pins(state, req, rest).await);
    }
    // NARs and logs honour a single Range (curl resumes with one).
    let range = req
        .headers()
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(drv) = path.strip_prefix("/log/") {
        let valid = parse_log_name(drv).is_some();
        let file = state.store.log_path(drv);
        return (
            "log",
            match m {
                _ if get && valid => {
                    serve_file(file, "text/plain; charset=utf-8", head, range.as_deref()).await
                }
                _ if get => text(404, "no such build log"),
                Method::PUT => put_log(state, drv.to_owned(), req).await,
                _ => text(405, "method not allowed"),
            },
        );
    }
    if let Some(file) = path.strip_prefix("/nar/") {
        let valid = parse_nar_file_name(file).is_some();
        return (
            "nar",
            match m {
                _ if get && valid => {
                    let path = state.store.nar_path(file);
                    serve_file(path, "application/x-nix-nar", head, range.as_deref()).await
                }
                _ if get => text(404, "no such NAR"),
                Method::PUT if valid => put_nar(state, file.to_owned(), req).await,
                Method::PUT => upload_refused(state, &UploadError::BadNarName(file.to_owned())),
                _ => text(405, "method not allowed"),
            },
        );
    }
    if let Some(hash) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix(".narinfo"))
        && is_hash_part(hash)
    {
        return (
            "narinfo",
            match m {
                _ if get => {
                    serve_small(state.store.narinfo_path(hash), "text/x-nix-narinfo", head).await
                }
                Method::PUT => put_narinfo(state, hash.to_owned(), req).await,
                _ => text(405, "method not allowed"),
            },
        );
    }
    (
        "other",
        match m {
            _ if get => text(404, "not found"),
            Method::PUT => {
                state.metrics.upload_failure("bad_path");
                text(
                    400,
                    format!(
                        "{path} is not an upload target (only nar/<file>, <hash>.narinfo and log/<drv>)"
                    ),
                )
            }
            _ => text(405, "method not allowed"),
        },
    )
}

fn file_like(body: Bytes, content_type: &str, head: bool) -> Response<Body> {
    let len = body.len();
    Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_LENGTH, len)
        .body(if head { full(Bytes::new()) } else { full(body) })
        .unwrap_or_else(|_| Response::new(full("")))
}

/// Small files (narinfo) are read whole: one blocking call instead of a stream.
async fn serve_small(path: PathBuf, content_type: &str, head: bool) -> Response<Body> {
    match std::fs::read(&path) {
        Ok(data) => file_like(data.into(), content_type, head),
        Err(e) if e.kind() == io::ErrorKind::NotFound => text(404, "not found"),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "read failed");
            text(500, "read failed")
        }
    }
}

/// Bytes per read when streaming a NAR.
const CHUNK: usize = 1 << 20;

/// NARs are streamed from disk as stored, with their exact length. Reads
/// happen in the connection's task (see ADR-cache-3). A single `Range`
/// (which curl uses to resume an interrupted download) is honoured.
async fn serve_file(
    path: PathBuf,
    content_type: &str,
    head: bool,
    range: Option<&str>,
) -> Response<Body> {
    use std::io::{Read as _, Seek as _};
    let opened = std::fs::File::open(&path).and_then(|f| {
        let len = f.metadata()?.len();
        Ok((f, len))
    });
    let (mut file, len) = match opened {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return text(404, "not found"),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "open failed");
            return text(500, "open failed");
        }
    };
    let mut builder = Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header("accept-ranges", "bytes");
    let (start, count) = match range.map(|r| parse_range(r, len)) {
        None | Some(RangeSpec::Ignore) => (0, len),
        Some(RangeSpec::Unsatisfiable) => {
            let mut r = text(416, "range not satisfiable");
            if let Ok(v) = http::HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert("content-range", v);
            }
            return r;
        }
        Some(RangeSpec::Range(start, end)) => {
            builder = builder
                .status(206)
                .header("content-range", format!("bytes {start}-{end}/{len}"));
            (start, end - start + 1)
        }
    };
    if start > 0
        && let Err(e) = file.seek(io::SeekFrom::Start(start))
    {
        tracing::error!(path = %path.display(), error = %e, "seek failed");
        return text(500, "seek failed");
    }
    let body = if head {
        full(Bytes::new())
    } else {
        file_body(file.take(count))
    };
    builder
        .header(CONTENT_LENGTH, count)
        .body(body)
        .unwrap_or_else(|_| Response::new(full("")))
}

enum RangeSpec {
    /// Not a single byte range we serve partially: send the whole file.
    Ignore,
    Unsatisfiable,
    /// Inclusive byte positions.
    Range(u64, u64),
}

fn parse_range(h: &str, len: u64) -> RangeSpec {
    let Some(spec) = h.trim().strip_prefix("bytes=").filter(|s| !s.contains(',')) else {
        return RangeSpec::Ignore;
    };
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (start, end) = if a.is_empty() {
        match b.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) => (len.saturating_sub(n), len.saturating_sub(1)),
            Err(_) => return RangeSpec::Ignore,
        }
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return RangeSpec::Ignore;
        };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return RangeSpec::Ignore,
            }
        };
        (start, end)
    };
    if len == 0 || start >= len {
        RangeSpec::Unsatisfiable
    } else {
        RangeSpec::Range(start, end)
    }
}

fn file_body(file: std::io::Take<std::fs::File>) -> Body {
    use std::io::Read as _;
    let stream = futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    StreamBody::new(stream.map_ok(Frame::data)).boxed()
}

/// Checks HTTP basic auth; the password must be an upload token. Returns
/// whose it is.
#[allow(clippy::result_large_err)] // the Err is the response itself, returned at once
fn authorize(state: &State, headers: &HeaderMap) -> Result<crate::Uploader, Response<Body>> {
    if state.tokens.is_empty() {
        state.metrics.upload_failure("uploads_disabled");
        return Err(text(
            403,
            "uploads are disabled on this cache (no upload token configured)",
        ));
    };
    let password = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|s| s.split_once(':').map(|(_, p)| p.to_owned()));
    let (reason, msg) = match password.map(|p| state.tokens.check(&p)) {
        Some(Some(uploader)) => return Ok(uploader),
        Some(None) => ("wrong_token", "wrong upload token"),
        None => (
            "no_token",
            "upload token required (HTTP basic auth; password = token)",
        ),
    };
    state.metrics.upload_failure(reason);
    let mut resp = text(401, msg);
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Basic realm=\"cache\""),
    );
    Err(resp)
}

fn upload_refused(state: &State, e: &UploadError) -> Response<Body> {
    state.metrics.upload_failure(e.reason());
    let status = e.status();
    if e.is_disk_full() {
        tracing::error!(error = %e, source = ?std::error::Error::source(e), "upload refused: disk full");
        return text(status, format!("the cache's disk is full ({e})"));
    }
    if status >= 500 {
        tracing::error!(error = %e, source = ?std::error::Error::source(e), "upload failed");
        // Our own failures stay with us: the uploader gets the message,
        // not the I/O or index error behind it.
        return text(status, e.to_string());
    }
    tracing::warn!(reason = e.reason(), error = %e, "upload refused");
    // A refusal's causes are about the upload itself (a narinfo field, ...):
    // the whole chain tells the uploader what to fix.
    text(status, commands::report::error_chain(e))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn read_small_body(
    state: &State,
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, Response<Body>> {
    if declared_length(req.headers()).is_some_and(|n| n > limit as u64) {
        return Err(upload_refused(state, &UploadError::TooLarge(limit as u64)));
    }
    let collected =
        tokio::time::timeout(state.stall, Limited::new(req.into_body(), limit).collect());
    match collected.await {
        Err(_) => Err(upload_refused(state, &UploadError::Stalled(state.stall))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(upload_refused(state, &UploadError::TooLarge(limit as u64)))
        }
        Ok(Err(_)) => Err(upload_refused(state, &UploadError::Truncated)),
    }
}

async fn put_cache_info(state: &State, req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = authorize(state, req.headers()) {
        return r;
    }
    let body = match read_small_body(state, req, 64 * 1024).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // We always serve our own nix-cache-info; accept a matching one so a
    // client that PUTs it (after a 404 elsewhere) does not fail.
    let want = format!("StoreDir: {}", state.store.store_dir());
    if String::from_utf8_lossy(&body)
        .lines()
        .any(|l| l.trim() == want)
    {
        text(200, "ok")
    } else {
        state.metrics.upload_failure("bad_cache_info");
        text(400, format!("this cache serves {want}"))
    }
}

async fn put_nar(state: &State, file: String, req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = authorize(state, req.headers()) {
        return r;
    }
    // Refuse an oversized upload from its header alone: the body is never
    // polled, so hyper never sends `100 Continue` and the client sends nothing.
    if declared_length(req.headers()).is_some_and(|n| n > state.max_upload) {
        return upload_refused(state, &UploadError::TooLarge(state.max_upload));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(16);
    let store = state.store.clone();
    let limit = state.max_upload;
    let name = file.clone();
    let writer = tokio::task::spawn_blocking(move || store.receive_nar(&name, rx, limit));
    let mut body = req.into_body();
    let mut received: u64 = 0;
    let mut failure = None;
    loop {
        let Ok(next) = tokio::time::timeout(state.stall, body.frame()).await else {
            failure = Some(UploadError::Stalled(state.stall));
            break;
        };
        match next {
            None => {
                let _ = tx.send(Chunk::End).await;
                break;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received += data.len() as u64;
                    if received > limit {
                        failure = Some(UploadError::TooLarge(limit));
                        break;
                    }
                    // The writer stopped early (it refused the data): its error wins.
                    if tx.send(Chunk::Data(data)).await.is_err() {
                        break;
                    }
                }
            }
            Some(Err(_)) => {
                failure = Some(UploadError::Truncated);
                break;
            }
        }
    }
    drop(tx);
    let result = match writer.await {
        Ok(r) => r,
        Err(e) => Err(UploadError::Io {
            context: "upload writer".into(),
            source: io::Error::other(e),
        }),
    };
    match (failure, result) {
        (Some(e), _) | (None, Err(e)) => upload_refused(state, &e),
        (None, Ok(row)) => {
            state
                .metrics
                .add("cache_uploads_total", "kind=\"nar\"".into(), 1);
            state
                .metrics
                .add("cache_upload_bytes_total", String::new(), row.file_size);
            tracing::info!(
                file,
                file_size = row.file_size,
                nar_size = row.nar_size,
                "NAR stored"
            );
            text(200, "stored")
        }
    }
}

async fn put_narinfo(state: &State, hash: String, req: Request<Incoming>) -> Response<Body> {
    let uploader = match authorize(state, req.headers()) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let body = match read_small_body(state, req, 1 << 20).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let store = state.store.clone();
    let h = hash.clone();
    let project = uploader.project.clone();
    let result =
        tokio::task::spawn_blocking(move || store.put_narinfo(&h, &body, project.as_deref()))
            .await
            .unwrap_or_else(|e| {
                Err(UploadError::Io {
                    context: "narinfo writer".into(),
                    source: io::Error::other(e),
                })
            });
    match result {
        Ok(outcome) => {
            tracing::info!(
                hash,
                ?outcome,
                project = uploader.project.as_deref().unwrap_or("*"),
                "narinfo stored"
            );
            stored(state, "narinfo", outcome)
        }
        Err(e) => upload_refused(state, &e),
    }
}

/// Counts an accepted upload of `kind` and answers it.
fn stored(state: &State, kind: &str, outcome: PutOutcome) -> Response<Body> {
    state
        .metrics
        .add("cache_uploads_total", format!("kind=\"{kind}\""), 1);
    text(
        200,
        if outcome == PutOutcome::Created {
            "stored"
        } else {
            "already present"
        },
    )
}

/// `PUT /log/<drv base name>`: a build log, as `nix store copy-log --to`
/// sends it (uncompressed text), bounded by [`crate::MAX_LOG_BYTES`].
async fn put_log(state: &State, drv: String, req: Request<Incoming>) -> Response<Body> {
    let uploader = match authorize(state, req.headers()) {
        Ok(u) => u,
        Err(r) => return r,
    };
    // Checked before the body is read: a bad name costs the client nothing.
    if parse_log_name(&drv).is_none() {
        return upload_refused(state, &UploadError::BadLogName(drv));
    }
    let body = match read_small_body(state, req, crate::MAX_LOG_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let store = state.store.clone();
    let name = drv.clone();
    let len = body.len() as u64;
    let result = tokio::task::spawn_blocking(move || store.put_log(&name, &body))
        .await
        .unwrap_or_else(|e| {
            Err(UploadError::Io {
                context: "log writer".into(),
                source: io::Error::other(e),
            })
        });
    match result {
        Ok(outcome) => {
            tracing::info!(
                drv,
                bytes = len,
                ?outcome,
                project = uploader.project.as_deref().unwrap_or("*"),
                "build log stored"
            );
            stored(state, "log", outcome)
        }
        Err(e) => upload_refused(state, &e),
    }
}

#[derive(serde::Deserialize)]
struct PinBody {
    paths: Vec<String>,
}

async fn pins(state: &State, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let project = match authorize(state, req.headers()) {
        Ok(u) => u.project,
        Err(r) => return r,
    };
    let store = state.store.clone();
    let name = rest.strip_prefix('/').unwrap_or("").to_owned();
    let store_err = |e: StoreError| match e {
        StoreError::BadPinName(_) | StoreError::BadPath(_) => text(400, e.to_string()),
        StoreError::NotFound(_) => text(400, e.to_string()),
        StoreError::PinOwned { .. } | StoreError::PinPrefix { .. } => text(403, e.to_string()),
        other => {
            tracing::error!(error = %other, source = ?std::error::Error::source(&other), "pin operation failed");
            text(500, "pin operation failed")
        }
    };
    let join_err = |e: tokio::task::JoinError| StoreError::Io {
        context: "pin task".into(),
        source: io::Error::other(e),
    };
    match (req.method().clone(), name.is_empty()) {
        (Method::GET, true) => match tokio::task::spawn_blocking(move || store.pins())
            .await
            .map_err(join_err)
            .and_then(|r| r)
        {
            Ok(pins) => {
                let mut map = serde_json::Map::new();
                for (n, p) in pins {
                    if let Some(a) = map
                        .entry(n)
                        .or_insert_with(|| serde_json::Value::Array(Vec::new()))
                        .as_array_mut()
                    {
                        a.push(p.into());
                    }
                }
                json(200, &serde_json::json!({ "pins": map }))
            }
            Err(e) => store_err(e),
        },
        (Method::PUT, false) => {
            let body = match read_small_body(state, req, 16 << 20).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let parsed: PinBody = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return text(
                        400,
                        format!("body must be {{\"paths\": [\"/nix/store/...\"]}}: {e}"),
                    );
                }
            };
            let n = parsed.paths.len();
            let nm = name.clone();
            match tokio::task::spawn_blocking(move || {
                store.set_pin(&nm, &parsed.paths, project.as_deref())
            })
            .await
            .map_err(join_err)
            .and_then(|r| r)
            {
                Ok(()) => {
                    tracing::info!(pin = name, paths = n, "pinned");
                    json(200, &serde_json::json!({ "name": name, "paths": n }))
                }
                Err(e) => store_err(e),
            }
        }
        (Method::DELETE, false) => {
            let nm = name.clone();
            match tokio::task::spawn_blocking(move || store.delete_pin(&nm, project.as_deref()))
                .await
                .map_err(join_err)
                .and_then(|r| r)
            {
                Ok(true) => {
                    tracing::info!(pin = name, "unpinned");
                    json(200, &serde_json::json!({ "name": name, "deleted": true }))
                }
                Ok(false) => text(404, format!("no pin named {name}")),
                Err(e) => store_err(e),
            }
        }
        _ => text(
            405,
            "use PUT or DELETE /_pcr/pins/<name>, or GET /_pcr/pins",
        ),
    }
}
