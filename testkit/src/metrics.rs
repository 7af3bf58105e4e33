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
    parse(&body)
}

/// Parses Prometheus text (a registry rendered in-process, say); panics
/// with the text when it is not.
pub fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

/// The value of sample `name` whose labels include every pair of `labels`
/// (counters, gauges, a histogram's `_count` or `_sum`), summed over the
/// series that match; 0 when none does.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(scrape, name, labels)
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(_) | Value::Summary(_) => 0.0,
        })
        .sum()
}

/// The samples of `name` whose labels include every pair of `labels`.
fn matching<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
    scrape
        .samples
        .iter()
        .filter(move |s| s.metric == name)
        .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

/// Whether the scrape has a sample named `name` at all (HELP/TYPE alone
/// do not count).
pub fn has(scrape: &Scrape, name: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == name)
}

/// How many series of `name` have labels including every pair of `labels`.
pub fn series(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> usize {
    matching(scrape, name, labels).count()
}
