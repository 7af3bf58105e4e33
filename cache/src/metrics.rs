//! Prometheus counters for `/metrics`: requests by route, method and status,
//! bytes served and received, uploads accepted and refused by reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Counter families, keyed by their label set already rendered.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
}

const HELP: &[(&str, &str)] = &[
    (
        "cache_http_requests_total",
        "HTTP requests by route, method and status.",
    ),
    (
        "cache_http_response_bytes_total",
        "Response body bytes announced (Content-Length), by route.",
    ),
    ("cache_upload_bytes_total", "Bytes of accepted NAR uploads."),
    (
        "cache_uploads_total",
        "Accepted uploads by kind (nar, narinfo, log).",
    ),
    ("cache_upload_failures_total", "Refused uploads by reason."),
    ("cache_gc_runs_total", "Completed scheduled gc runs."),
    ("cache_gc_failures_total", "Scheduled gc runs that failed."),
    (
        "cache_gc_freed_bytes_total",
        "Bytes of NAR files and build logs scheduled gc deleted.",
    ),
    (
        "cache_gc_deleted_paths_total",
        "Store paths scheduled gc deleted.",
    ),
    (
        "cache_gc_unpinned_total",
        "Generation pins scheduled gc dropped past --keep-generations.",
    ),
    (
        "cache_gc_live_unknown_total",
        "Scheduled gc runs that could not ask --control-plane which generations still run (no generation pin dropped).",
    ),
];

impl Metrics {
    /// Adds `n` to counter `name{labels}`; `labels` is `k="v",…` (values are ours, no escaping needed).
    pub fn add(&self, name: &'static str, labels: String, n: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((name, labels)).or_insert(0) += n;
    }

    /// Counts one request.
    pub fn request(&self, route: &'static str, method: &str, status: u16, body_bytes: u64) {
        self.add(
            "cache_http_requests_total",
            format!("route=\"{route}\",method=\"{method}\",status=\"{status}\""),
            1,
        );
        if body_bytes > 0 {
            self.add(
                "cache_http_response_bytes_total",
                format!("route=\"{route}\""),
                body_bytes,
            );
        }
    }

    /// Counts a refused upload.
    pub fn upload_failure(&self, reason: &str) {
        self.add(
            "cache_upload_failures_total",
            format!("reason=\"{reason}\""),
            1,
        );
    }

    /// Counts one finished scheduled gc.
    pub fn gc_done(&self, r: &crate::store::GcReport) {
        self.add("cache_gc_runs_total", String::new(), 1);
        self.add("cache_gc_freed_bytes_total", String::new(), r.freed_bytes);
        self.add(
            "cache_gc_deleted_paths_total",
            String::new(),
            r.deleted.len() as u64,
        );
        self.add(
            "cache_gc_unpinned_total",
            String::new(),
            r.unpinned.len() as u64,
        );
    }

    /// Renders the text exposition format, with `paths` and `bytes` (NAR
    /// bytes held) as gauges.
    pub fn render(&self, paths: Option<u64>, bytes: Option<u64>) -> String {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((n, labels), v) in c.iter() {
                if n == name {
                    if labels.is_empty() {
                        let _ = writeln!(out, "{name} {v}");
                    } else {
                        let _ = writeln!(out, "{name}{{{labels}}} {v}");
                    }
                }
            }
        }
        if let Some(p) = paths {
            let _ = writeln!(
                out,
                "# HELP cache_paths Store paths in the index.\n# TYPE cache_paths gauge\ncache_paths {p}"
            );
        }
        if let Some(b) = bytes {
            let _ = writeln!(
                out,
                "# HELP cache_bytes Bytes of NAR files the cache holds.\n# TYPE cache_bytes gauge\ncache_bytes {b}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("narinfo", "GET", 200, 300);
        m.request("narinfo", "GET", 200, 300);
        m.upload_failure("nar_hash_mismatch");
        m.gc_done(&crate::store::GcReport {
            freed_bytes: 4096,
            deleted: vec!["a".into(), "b".into()],
            ..Default::default()
        });
        let text = m.render(Some(3), Some(12345));
        assert!(text.contains("cache_gc_runs_total 1\n"), "{text}");
        assert!(text.contains("cache_gc_freed_bytes_total 4096\n"), "{text}");
        assert!(text.contains("cache_gc_deleted_paths_total 2\n"), "{text}");
        assert!(text.contains("cache_bytes 12345\n"), "{text}");
        assert!(text.contains(
            "cache_http_requests_total{route=\"narinfo\",method=\"GET\",status=\"200\"} 2\n"
        ));
        assert!(text.contains("cache_http_response_bytes_total{route=\"narinfo\"} 600\n"));
        assert!(text.contains("cache_upload_failures_total{reason=\"nar_hash_mismatch\"} 1\n"));
        assert!(text.contains("cache_paths 3\n"));
    }
}
