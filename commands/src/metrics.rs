//! Prometheus `/metrics` shared by every service: a registry of counter,
//! gauge and histogram families (the `prometheus-client` crate writes the
//! text exposition format, so no service formats it by hand) and a tiny
//! HTTP/1 server for services that have no HTTP listener of their own
//! (control plane and worker, on `--metrics-listen`). ci_service and
//! repohub mount [`Metrics::render`] on their existing routers.
//!
//! Gauges that describe state (VMs by state, workers by health) are set
//! from the state itself just before each scrape by the `refresh` closure
//! given to [`serve`], so they can never drift from what they describe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One scrape connection may take this long; a stuck client cannot hold
/// the (sequential) metrics server.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// Latency buckets in seconds: 1 ms to ~65 s, doubling.
const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384, 32.768, 65.536,
];

/// Label pairs of one series, e.g. `[("project", "shop".into())]`.
pub type Labels = Vec<(&'static str, String)>;
/// A counter per label set.
pub type Counters = Family<Labels, Counter>;
/// A gauge per label set.
pub type Gauges = Family<Labels, Gauge>;
/// A floating-point gauge per label set (seconds, ratios).
pub type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;
/// A latency histogram (seconds, [`LATENCY_BUCKETS`]) per label set.
pub type Latencies = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// What the metrics server could not do.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A registry under one prefix (`procurator_<service>_`). Families are
/// cheap handles (`Arc` inside): register them once, clone them to
/// wherever the counted thing happens.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// An empty registry whose metric names start with `procurator_<service>_`.
    pub fn new(service: &str) -> Self {
        Metrics {
            registry: Registry::with_prefix(format!("procurator_{service}")),
        }
    }

    /// Registers a counter family (`_total` is appended to `name`).
    pub fn counters(&mut self, name: &str, help: &str) -> Counters {
        let f = Counters::default();
        self.registry.register(name, help, f.clone());
        f
    }

    /// Registers one counter without labels (a family keyed by no labels
    /// would render `name{}`, which some parsers refuse).
    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.registry.register(name, help, c.clone());
        c
    }

    /// Registers one latency histogram without labels; observe seconds.
    pub fn latency(&mut self, name: &str, help: &str) -> Histogram {
        let h = latency_histogram();
        self.registry.register(name, help, h.clone());
        h
    }

    /// Registers a gauge family.
    pub fn gauges(&mut self, name: &str, help: &str) -> Gauges {
        let f = Gauges::default();
        self.registry.register(name, help, f.clone());
        f
    }

    /// Registers a floating-point gauge family.
    pub fn float_gauges(&mut self, name: &str, help: &str) -> FloatGauges {
        let f = FloatGauges::default();
        self.registry.register(name, help, f.clone());
        f
    }

    /// Registers a latency histogram family; observe seconds.
    pub fn latencies(&mut self, name: &str, help: &str) -> Latencies {
        let f = Latencies::new_with_constructor(latency_histogram as fn() -> Histogram);
        self.registry.register(name, help, f.clone());
        f
    }

    /// The text exposition of every registered family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Answers `GET /metrics` on `listener` until `shutdown`: `refresh` runs
/// before each render (set state gauges there), anything else is 404.
/// Connections are served one at a time, each within a deadline: a
/// scraper needs no more, and `refresh` may then borrow single-threaded
/// state (the control plane's), so this future is `Send` only when
/// `refresh` and its future are.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    refresh: F,
    shutdown: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let handler = service_fn(|req: Request<Incoming>| {
            let wanted = route(&req);
            let refreshed = wanted.is_ok().then(&refresh);
            let metrics = &metrics;
            async move {
                let (status, body) = match wanted {
                    Ok(()) => {
                        if let Some(r) = refreshed {
                            r.await;
                        }
                        (StatusCode::OK, metrics.render())
                    }
                    Err(refused) => refused,
                };
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(CONTENT_TYPE),
                );
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), handler);
        match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
            Err(_) => tracing::debug!("metrics connection timed out"),
        }
    }
}

/// `Ok` for `GET /metrics`; otherwise the status and text to answer.
fn route<B>(req: &Request<B>) -> Result<(), (StatusCode, String)> {
    if req.uri().path() != "/metrics" {
        Err((
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".into(),
        ))
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        Err((StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()))
    } else {
        Ok(())
    }
}

/// Labels from `(key, value)` pairs.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_as_text_exposition() {
        let mut m = Metrics::new("test");
        let c = m.counters("things", "Things counted.");
        let h = m.latencies("wait_seconds", "Waits.");
        c.get_or_create(&labels([("kind", "a")])).inc();
        h.get_or_create(&labels([("op", "x")])).observe(0.003);
        let text = m.render();
        assert!(
            text.contains("procurator_test_things_total{kind=\"a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("procurator_test_wait_seconds_bucket{le=\"0.004\",op=\"x\"} 1"),
            "{text}"
        );
    }
}
