//! repohub's Prometheus metrics on `GET /metrics`: requests by route,
//! method and status, and git pushes received by outcome. A route is the
//! router's template (`/{project}/{repo}`), never the path asked for, so
//! neither project names nor an attacker's made-up paths become label
//! values: the series stay as few as the routes (written `/:project/:repo`). Open like a health
//! check; it names nothing (see context/decisions.md).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use commands::metrics::{Counters, Metrics, labels};
use http::header;

use crate::AppState;

/// The route a receive-pack (a push's pack upload) arrives on.
const RECEIVE_PACK: &str = "/:project/:repo/git-receive-pack";

/// Handles on every family; cheap to clone.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    registry: Arc<Metrics>,
    requests: Counters,
    pushes: Counters,
}

impl Default for HubMetrics {
    fn default() -> Self {
        let mut m = Metrics::new("repohub");
        let requests = m.counters(
            "http_requests",
            "HTTP requests by route template, method and status.",
        );
        let pushes = m.counters(
            "git_pushes",
            "git pushes received (receive-pack uploads), by outcome (ok, refused).",
        );
        HubMetrics {
            registry: Arc::new(m),
            requests,
            pushes,
        }
    }
}

impl HubMetrics {
    fn count(&self, route: &str, method: &str, status: u16) {
        self.requests
            .get_or_create(&labels([
                ("route", route),
                ("method", method),
                ("status", &status.to_string()),
            ]))
            .inc();
        if route == RECEIVE_PACK && method == "POST" {
            let outcome = if status == 200 { "ok" } else { "refused" };
            self.pushes
                .get_or_create(&labels([("outcome", outcome)]))
                .inc();
        }
    }
}

/// Middleware (outside the router's routing, so the matched route is
/// known): counts every request once its answer is ready.
pub async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // Written `/:project/:repo`: braces in a label value are valid
    // Prometheus text, but some parsers (and eyes) trip over them.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_owned(), |m| {
            m.as_str().replace('{', ":").replace('}', "")
        });
    // Methods are few and known; anything else is one label value.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "other",
    };
    let resp = next.run(req).await;
    st.metrics.count(&route, method, resp.status().as_u16());
    resp
}

/// `GET /metrics`.
pub async fn serve(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, commands::metrics::CONTENT_TYPE)],
        st.metrics.registry.render(),
    )
        .into_response()
}
