//! Shared by repohub's page benches: the app on a temporary data directory
//! with a public project `bench`, and the server time of one page through
//! the router in process (routing, SQLite, git2, templates; no TCP hop), as
//! p50/p99/max over many requests after a warm-up.

use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The configuration, the state on `dir` (cheap KDF) and the id of the
/// public project `bench`, owned by user `bench`.
pub(crate) fn bench_project(dir: &std::path::Path) -> (repohub::Config, repohub::AppState, i64) {
    let mut config = repohub::Config::new(dir.join("data"));
    config.kdf = repohub::auth::KdfParams::insecure_for_tests();
    let state = repohub::AppState::new(&config).unwrap();
    let user = state.db.create_user("bench", "x").unwrap();
    let pid = state.db.create_project("bench", "", true, user.id).unwrap();
    (config, state, pid)
}

/// Requests made and dropped before timing starts.
const WARM_UP: usize = 10;

/// (p50, p99, max) in milliseconds.
pub(crate) fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| ms(v[((v.len() as f64 * q).ceil() as usize).min(v.len()) - 1]);
    (p(0.5), p(0.99), ms(*v.last().unwrap()))
}

/// Times `iterations` GETs of `path` (each must succeed); returns
/// (p50, p99, max) in milliseconds and the last body.
pub(crate) async fn time_page(
    router: &axum::Router,
    path: &str,
    iterations: usize,
) -> (f64, f64, f64, bytes::Bytes) {
    let mut times = Vec::with_capacity(iterations);
    let mut body = bytes::Bytes::new();
    for i in 0..iterations + WARM_UP {
        let req = Request::get(path)
            .header("host", "bench")
            .body(Body::empty())
            .unwrap();
        let t = Instant::now();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        body = resp.into_body().collect().await.unwrap().to_bytes();
        let e = t.elapsed();
        if i >= WARM_UP {
            times.push(e);
        }
    }
    let (p50, p99, max) = stats(times);
    (p50, p99, max, body)
}
