//! Reading a service's `/metrics` the way Prometheus does: a real HTTP
//! GET, the body parsed by a Prometheus text parser (`prometheus-parse`),
//! and sample lookups by name and labels, so a scrape test checks both the
//! format and that a counter moved.

use std::time::Duration;

use commands::http::HttpClient;
use prometheus_parse::{Scrape, Value};

/// GETs `url` (e.g. `http://127.0.0.1:9100/metrics`) and parses the body;
/// panics with the body when it is not Prometheus text or not a 200. For
/// tests outside a runtime; inside one, use [`scrape_async`].
pub fn scrape(url: &str) -> Scrape {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(scrape_async(url))
}

/// [`scrape`] for tests already inside a runtime.
pub async fn scrape_async(url: &str) -> Scrape {
    let client = HttpClient::tcp().with_timeout(Duration::from_secs(10));
    let req = http::Request::get(url)
        .body(bytes::Bytes::new())
        .expect("request");
    let resp = client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {}", commands::report::error_chain(&e)));
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert_eq!(resp.status.as_u16(), 200, "GET {url}: {body}");
    let ctype = resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ctype.starts_with("text/plain"),
        "GET {url}: content-type {ctype:?}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("{url} is not Prometheus text ({e}):\n{body}"))
}

/// The value of sample `name` whose labels include every pair of `labels`
/// (counters and gauges; a histogram's `_count`), summed over the series
/// that match; 0 when none does.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Whether the scrape has a sample named `name` at all (HELP/TYPE alone
/// do not count).
pub fn has(scrape: &Scrape, name: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == name)
}
