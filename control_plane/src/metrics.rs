//! The control plane's Prometheus metrics: counters bumped where the
//! counted thing happens (publishes, placements, RPC calls and errors by
//! method) and gauges set from the cluster status before each scrape
//! (active generation per project, VMs by project and drift state,
//! workers by health, rollouts not yet done by state), so a gauge never
//! disagrees with `pcr status`.

use std::sync::Arc;
use std::time::Duration;

use commands::convert::RpcFailure;
use commands::metrics::{Counter, Counters, Gauges, Latencies, Metrics, labels};
use commands::model::ClusterStatusView;

/// Handles on every family; cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlPlaneMetrics {
    registry: Arc<Metrics>,
    generations: Counters,
    placements: Counters,
    publish_seconds: Latencies,
    rpc_calls: Counters,
    rpc_errors: Counters,
    active_generation: Gauges,
    vms: Gauges,
    workers: Gauges,
    events: Counters,
    store_errors: Counter,
    rollouts: Gauges,
    rollout_healthy: Gauges,
}

impl Default for ControlPlaneMetrics {
    fn default() -> Self {
        let mut m = Metrics::new("control_plane");
        let generations = m.counters(
            "generations_published",
            "Generations published (no-op publishes excluded), by project.",
        );
        let placements = m.counters(
            "placements",
            "VMs placed on a worker by the scheduler at publish, by project.",
        );
        let publish_seconds = m.latencies(
            "publish_seconds",
            "Time to validate, schedule and record a publish, by project.",
        );
        let rpc_calls = m.counters("rpc_calls", "Master RPC calls served, by method.");
        let rpc_errors = m.counters(
            "rpc_errors",
            "Master RPC calls answered with an error, by method and error code.",
        );
        let active_generation = m.gauges(
            "active_generation",
            "Number of the active generation, by project.",
        );
        let vms = m.gauges(
            "vms",
            "Desired or orphaned VMs, by project and drift state.",
        );
        let workers = m.gauges(
            "workers",
            "Registered workers, by health (healthy, unhealthy).",
        );
        let events = m.counters("events", "Events recorded in the event log, by kind.");
        let store_errors = m.counter(
            "store_errors",
            "Writes to the state file (--state-dir) that failed; the change stayed in memory.",
        );
        let rollouts = m.gauges(
            "rollouts",
            "Rollouts not yet done (1 each), by project, group and state (rolling, paused, reverted).",
        );
        let rollout_healthy = m.gauges(
            "rollout_healthy_replicas",
            "Replicas of a rollout not yet done that run the new version healthy for minHealthyMs, by project and group.",
        );
        ControlPlaneMetrics {
            registry: Arc::new(m),
            events,
            store_errors,
            generations,
            placements,
            publish_seconds,
            rpc_calls,
            rpc_errors,
            active_generation,
            vms,
            workers,
            rollouts,
            rollout_healthy,
        }
    }
}

impl ControlPlaneMetrics {
    /// The registry to serve.
    pub fn registry(&self) -> Arc<Metrics> {
        Arc::clone(&self.registry)
    }

    /// Counts one RPC call of `method` and, when it failed, its error.
    pub fn call<T>(&self, method: &str, result: &Result<T, RpcFailure>) {
        self.rpc_calls
            .get_or_create(&labels([("method", method)]))
            .inc();
        if let Err(e) = result {
            self.rpc_errors
                .get_or_create(&labels([
                    ("method", method),
                    ("code", &format!("{:?}", e.code)),
                ]))
                .inc();
        }
    }

    /// Records a publish of `project` that took `took` and placed `placed` VMs.
    pub fn published(&self, project: &str, noop: bool, placed: u32, took: Duration) {
        let l = labels([("project", project)]);
        self.publish_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        // A no-op publish reports the placements already made: not new ones.
        if !noop {
            self.generations.get_or_create(&l).inc();
            self.placements.get_or_create(&l).inc_by(u64::from(placed));
        }
    }

    /// Counts one recorded event of `kind`.
    pub fn event(&self, kind: &str) {
        self.events.get_or_create(&labels([("kind", kind)])).inc();
    }

    /// Counts one failed write to the state file.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Sets the state gauges from `status` (called before each scrape).
    pub fn refresh(&self, status: &ClusterStatusView) {
        // Cleared first, so a project or drift state that is gone stops
        // being reported instead of keeping its last value.
        self.vms.clear();
        self.workers.clear();
        self.active_generation.clear();
        self.rollouts.clear();
        self.rollout_healthy.clear();
        for r in &status.rollouts {
            self.rollouts
                .get_or_create(&labels([
                    ("project", &r.project),
                    ("group", &r.group),
                    ("state", &r.state),
                ]))
                .set(1);
            self.rollout_healthy
                .get_or_create(&labels([("project", &r.project), ("group", &r.group)]))
                .set(i64::from(r.healthy));
        }
        for g in &status.generations {
            self.active_generation
                .get_or_create(&labels([("project", &g.project)]))
                .set(i64::try_from(g.number).unwrap_or(i64::MAX));
        }
        for vm in &status.vms {
            self.vms
                .get_or_create(&labels([
                    ("project", &vm.project),
                    ("drift", &vm.drift.to_string()),
                ]))
                .inc();
        }
        for health in ["healthy", "unhealthy"] {
            self.workers
                .get_or_create(&labels([("health", health)]))
                .set(0);
        }
        for w in &status.workers {
            let health = if w.healthy { "healthy" } else { "unhealthy" };
            self.workers
                .get_or_create(&labels([("health", health)]))
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::model::RolloutStatusView;

    #[test]
    fn rollouts_not_done_are_gauges_and_vanish_when_done() {
        let m = ControlPlaneMetrics::default();
        let mut status = ClusterStatusView {
            generations: Vec::new(),
            convergence_percent: 100.0,
            vms: Vec::new(),
            workers: Vec::new(),
            unplaced: Vec::new(),
            rollouts: vec![RolloutStatusView {
                project: "shop".into(),
                group: "web".into(),
                generation: 3,
                batch: 2,
                batches: 5,
                healthy: 4,
                total: 10,
                state: "paused".into(),
                reason: "web-4 failed".into(),
            }],
        };
        m.refresh(&status);
        let text = m.registry().render();
        assert!(
            text.contains(
                r#"procurator_control_plane_rollouts{project="shop",group="web",state="paused"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"procurator_control_plane_rollout_healthy_replicas{project="shop",group="web"} 4"#
            ),
            "{text}"
        );
        status.rollouts.clear();
        m.refresh(&status);
        let text = m.registry().render();
        assert!(!text.contains(r#"state="paused""#), "{text}");
    }
}
