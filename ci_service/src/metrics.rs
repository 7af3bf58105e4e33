//! ci_service's Prometheus metrics on `GET /metrics` of its HTTP API:
//! jobs by state (counted in SQLite at each scrape, so they match `GET
//! /jobs`) and the duration of each pipeline step (fetch, eval, build,
//! upload, publish; and the time queued) as histograms, observed when a
//! job ends. Open like `/healthz`: it names no project, repository or
//! commit, only counts and durations (see context/decisions.md).

use std::sync::Arc;
use std::time::Duration;

use commands::ci_api::Timings;
use commands::metrics::{Gauges, Latencies, Metrics, labels};

use crate::db::Db;

/// Handles on every family; cheap to clone.
#[derive(Debug, Clone)]
pub struct CiMetrics {
    registry: Arc<Metrics>,
    jobs: Gauges,
    step_seconds: Latencies,
}

impl Default for CiMetrics {
    fn default() -> Self {
        let mut m = Metrics::new("ci");
        let jobs = m.gauges("jobs", "Jobs in the database, by state.");
        let step_seconds = m.latencies(
            "step_seconds",
            "Duration of each pipeline step of a job (queue, fetch, eval, build, upload, publish).",
        );
        CiMetrics {
            registry: Arc::new(m),
            jobs,
            step_seconds,
        }
    }
}

impl CiMetrics {
    /// Observes the steps a finished job went through.
    pub fn job_finished(&self, t: &Timings) {
        for (step, ms) in [
            ("queue", t.queue_ms),
            ("fetch", t.fetch_ms),
            ("eval", t.eval_ms),
            ("build", t.build_ms),
            ("upload", t.upload_ms),
            ("publish", t.publish_ms),
        ] {
            if let Some(ms) = ms {
                self.step_seconds
                    .get_or_create(&labels([("step", step)]))
                    .observe(Duration::from_millis(ms).as_secs_f64());
            }
        }
    }

    /// The text exposition, with the job gauges read from `db` now.
    pub fn render(&self, db: &Db) -> String {
        match db.count_by_state() {
            Ok(counts) => {
                self.jobs.clear();
                for (state, n) in counts {
                    self.jobs
                        .get_or_create(&labels([("state", &state)]))
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            // The last counts stay; the scrape still answers.
            Err(e) => {
                tracing::warn!(error = %commands::report::error_chain(&e), "cannot count jobs for /metrics")
            }
        }
        self.registry.render()
    }
}
