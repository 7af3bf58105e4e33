//! The reconciler: the worker's second source of commands (beside the RPC
//! server), turned on by `--control-plane ADDR`. It registers with the
//! control plane, long-polls its assignment, converges the VMs the
//! `VmManager` runs to it through the same `CommandSender`, and pushes the
//! observed state and metrics on change and on a heartbeat.
//!
//! Invariants:
//! - VMs are identified by (name, contentHash): a new control plane handing
//!   out the same assignment changes nothing, and nothing is deleted before
//!   an assignment has been received (a control plane without a generation
//!   never tells a worker to stop its VMs).
//! - Replacement is make-before-break: the VM with the new hash is created
//!   beside the old one (the manager keys VMs by (name, contentHash)), and
//!   the old one is deleted only once the new one is Running or Paused. A
//!   new version that fails is retried with backoff while the old one keeps
//!   running; a bad version never takes down the good one.
//! - A name the assignment holds (a replica a rollout has not reached yet)
//!   keeps whatever live instances run under it, whatever their version;
//!   only when none is live is its spec created.
//! - A failed VM is deleted and recreated with exponential backoff per
//!   (name, hash), so a VM that cannot boot does not spin.
//! - Losing the control plane stops nothing: the reconciler reconnects with
//!   backoff and re-registers, and the VMs keep running meanwhile.
//!
//! Runs on the worker's `LocalSet` (the Master client is `!Send`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use commands::client::{ClientError, MasterClient};
use commands::model::{AssignmentView, ObservedVm, Registration, WorkerMetricsView};
use commands::report::error_chain;
use commands::service::worker::WorkerCap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dto::{VmId, VmKey, VmMetrics, VmSpec, VmState, VmStatus};
use crate::manager::WorkerError;
use crate::node::CommandSender;

/// Knobs of the reconciler (from the worker's command line).
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// The control plane's address, "host:port".
    pub control_plane: String,
    pub registration: Registration,
    /// How often observed state is pushed when nothing changes; keep it well
    /// under the control plane's heartbeat timeout.
    pub heartbeat_interval: Duration,
    /// First delay before recreating a failed VM; doubles per failure.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The token presented to the control plane's login ("" when it has
    /// no token file); never logged.
    pub token: commands::auth::Secret,
}

impl ReconcilerConfig {
    pub fn new(control_plane: String, registration: Registration) -> Self {
        ReconcilerConfig {
            control_plane,
            registration,
            heartbeat_interval: Duration::from_secs(1),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            token: commands::auth::Secret::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("control plane")]
    Master(#[from] ClientError),
    #[error("worker")]
    Worker(#[from] WorkerError),
    #[error("control plane did not answer within {0:?}")]
    Timeout(Duration),
}

// ---- planning (pure) --------------------------------------------------------

/// What one reconcile pass will do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// VMs to delete first: undesired, duplicates, failed, replaced.
    pub delete: Vec<(VmId, &'static str)>,
    /// VMs to create; an older version of the same name keeps running
    /// beside each until a later pass sees the new one running.
    pub create: Vec<VmSpec>,
    /// The earliest time a create held back by backoff may be tried.
    pub retry_at: Option<Instant>,
}

/// Per-(project, name, hash) failure count and the time the next create
/// is allowed.
#[derive(Debug, Default)]
pub struct Backoff {
    entries: BTreeMap<(VmKey, String), (u32, Instant)>,
    /// Failed instances already counted (a VM is seen failed on every pass
    /// until its delete completes).
    counted: BTreeSet<VmId>,
}

impl Backoff {
    fn allowed_at(&self, name: &VmKey, hash: &str) -> Option<Instant> {
        self.entries
            .get(&(name.clone(), hash.to_owned()))
            .map(|(_, at)| *at)
    }

    fn failed(&mut self, name: &VmKey, hash: &str, now: Instant, base: Duration, max: Duration) {
        let e = self
            .entries
            .entry((name.clone(), hash.to_owned()))
            .or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        let delay = base.saturating_mul(1u32 << (e.0 - 1).min(16)).min(max);
        e.1 = now + delay;
    }

    fn succeeded_long_enough(&mut self, name: &VmKey, hash: &str) {
        self.entries.remove(&(name.clone(), hash.to_owned()));
    }
}

fn is_live(s: VmState) -> bool {
    matches!(s, VmState::Creating | VmState::Running | VmState::Paused)
}

/// Diffs `desired` against `running` (the manager's list), VMs keyed by
/// (project, name): two projects' `web-0` never replace each other. Pure
/// apart from bookkeeping in `backoff`, so the rules are unit-tested.
pub fn plan(
    desired: &[VmSpec],
    running: &[VmStatus],
    backoff: &mut Backoff,
    now: Instant,
    now_ms: u64,
    cfg: (Duration, Duration),
) -> Plan {
    plan_held(
        desired,
        &BTreeSet::new(),
        running,
        backoff,
        now,
        now_ms,
        cfg,
    )
}

/// [`plan`] with the assignment's held names: a rollout has not reached
/// them, so whatever live instances run under a held name stay exactly as
/// they are (no replacement, no duplicate removal); only a failed instance
/// is removed, and a held name that runs nothing live is created from its
/// spec like any other.
pub fn plan_held(
    desired: &[VmSpec],
    hold: &BTreeSet<VmKey>,
    running: &[VmStatus],
    backoff: &mut Backoff,
    now: Instant,
    now_ms: u64,
    cfg: (Duration, Duration),
) -> Plan {
    let mut out = Plan::default();
    let wanted: BTreeMap<VmKey, &VmSpec> = desired.iter().map(|s| (s.key(), s)).collect();
    let mut by_name: BTreeMap<VmKey, Vec<&VmStatus>> = BTreeMap::new();
    for vm in running {
        by_name.entry(vm.key()).or_default().push(vm);
    }
    // Oldest first, so the survivor among duplicates is stable.
    for list in by_name.values_mut() {
        list.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    }
    backoff
        .counted
        .retain(|id| running.iter().any(|v| v.id == *id));

    for vm in running {
        if vm.state != VmState::Stopping && !wanted.contains_key(&vm.key()) {
            out.delete.push((vm.id.clone(), "not in the assignment"));
        }
    }

    for (name, spec) in &wanted {
        let hash = spec.content_hash();
        let instances = by_name.get(name).map(Vec::as_slice).unwrap_or_default();
        if hold.contains(name) && instances.iter().any(|v| is_live(v.state)) {
            for v in instances.iter().filter(|v| v.state == VmState::Failed) {
                out.delete.push((v.id.clone(), "failed"));
            }
            continue;
        }
        let mut good = instances
            .iter()
            .filter(|v| v.content_hash == hash && is_live(v.state));
        let stale: Vec<&VmStatus> = instances
            .iter()
            .copied()
            .filter(|v| v.content_hash != hash && v.state != VmState::Stopping)
            .collect();
        // An old version that died serves nothing: it need not wait for
        // its replacement.
        for v in stale.iter().filter(|v| v.state == VmState::Failed) {
            out.delete.push((v.id.clone(), "failed old version"));
        }
        for v in instances
            .iter()
            .filter(|v| v.content_hash == hash && v.state == VmState::Failed)
        {
            if backoff.counted.insert(v.id.clone()) {
                tracing::warn!(vm = %name, vm_id = %v.id, error = %v.error, "VM failed; recreating with backoff");
                backoff.failed(name, hash, now, cfg.0, cfg.1);
            }
            out.delete.push((v.id.clone(), "failed"));
        }
        match good.next() {
            Some(keep) => {
                for dup in good {
                    out.delete.push((dup.id.clone(), "duplicate"));
                }
                if matches!(keep.state, VmState::Running | VmState::Paused) {
                    // The replacement runs: now the old instances go. While
                    // it is still Creating they stay (a failed create
                    // removes the new one and leaves them serving).
                    for v in stale.iter().filter(|v| v.state != VmState::Failed) {
                        out.delete.push((v.id.clone(), "replaced"));
                    }
                    // Backoff ends once a VM has stayed up past the longest delay.
                    if now_ms.saturating_sub(keep.created_at_ms) > cfg.1.as_millis() as u64 {
                        backoff.succeeded_long_enough(name, hash);
                    }
                }
            }
            None => match backoff.allowed_at(name, hash).filter(|at| *at > now) {
                Some(at) => out.retry_at = Some(out.retry_at.map_or(at, |r| r.min(at))),
                None => out.create.push((*spec).clone()),
            },
        }
    }
    out
}

// ---- the running reconciler ---------------------------------------------

struct Shared {
    desired: RefCell<Option<AssignmentView>>,
    /// Generation of the last assignment a pass fully converged to.
    observed_generation: RefCell<u64>,
    wake_reconcile: Notify,
    wake_push: Notify,
}

/// Runs until `shutdown`: the connection loop (register, long-poll, push)
/// and the reconcile loop. Must run inside a `LocalSet`.
pub async fn run(
    config: ReconcilerConfig,
    sender: CommandSender,
    me: WorkerCap,
    shutdown: CancellationToken,
) {
    let shared = Rc::new(Shared {
        desired: RefCell::new(None),
        observed_generation: RefCell::new(0),
        wake_reconcile: Notify::new(),
        wake_push: Notify::new(),
    });
    let reconcile = reconcile_loop(&config, &shared, &sender, &shutdown);
    let connect = connection_loop(&config, &shared, &sender, &me, &shutdown);
    tokio::join!(reconcile, connect);
}

async fn reconcile_loop(
    cfg: &ReconcilerConfig,
    shared: &Shared,
    sender: &CommandSender,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let desired = shared.desired.borrow().clone();
        let mut wait = cfg.heartbeat_interval;
        if let Some(a) = desired {
            match pass(cfg, &a, sender, &mut backoff).await {
                Ok(outcome) => {
                    if outcome.converged {
                        *shared.observed_generation.borrow_mut() = a.generation;
                    }
                    if outcome.acted {
                        shared.wake_push.notify_one();
                        continue;
                    }
                    if let Some(at) = outcome.retry_at {
                        wait = wait.min(at.saturating_duration_since(Instant::now()));
                    }
                }
                Err(WorkerError::ShuttingDown) => return,
                Err(e) => tracing::warn!(error = %error_chain(&e), "reconcile pass failed"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = shared.wake_reconcile.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What one reconcile pass did, for the loop to decide what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PassOutcome {
    /// A delete or create succeeded: the observed state changed, so it is
    /// pushed and the next pass runs at once.
    acted: bool,
    /// When the earliest backed-off create may be retried.
    retry_at: Option<Instant>,
    /// Nothing was left to do: the assignment's generation is reached.
    converged: bool,
}

/// One pass: list, plan, delete, create.
async fn pass(
    cfg: &ReconcilerConfig,
    a: &AssignmentView,
    sender: &CommandSender,
    backoff: &mut Backoff,
) -> Result<PassOutcome, WorkerError> {
    let running = sender.list_vms().await?;
    let hold: BTreeSet<VmKey> = a.hold.iter().cloned().collect();
    let p = plan_held(
        &a.vms,
        &hold,
        &running,
        backoff,
        Instant::now(),
        commands::telemetry::now_ms(),
        (cfg.backoff_base, cfg.backoff_max),
    );
    let converged = p.delete.is_empty() && p.create.is_empty() && p.retry_at.is_none();
    let mut acted = false;

    let deletes = p.delete.iter().map(|(id, why)| async move {
        tracing::info!(vm_id = %id, reason = why, "reconcile: delete");
        (id, sender.delete_vm(id.clone()).await)
    });
    for (id, r) in futures::future::join_all(deletes).await {
        match r {
            Ok(()) => acted = true,
            Err(WorkerError::ShuttingDown) => return Err(WorkerError::ShuttingDown),
            Err(e) => {
                tracing::warn!(vm_id = %id, error = %error_chain(&e), "reconcile: delete failed")
            }
        }
    }

    // Creates never delete anything: an older version of the same name
    // keeps running beside the new one until a later pass sees the new one
    // running (plan's "replaced").
    let creates = p.create.iter().map(|spec| async move {
        tracing::info!(project = spec.project(), vm = %spec.name(), hash = spec.content_hash(), "reconcile: create");
        (spec, sender.create_vm(spec.clone()).await)
    });
    for (spec, r) in futures::future::join_all(creates).await {
        match r {
            Ok(_) => acted = true,
            Err(WorkerError::ShuttingDown) => return Err(WorkerError::ShuttingDown),
            Err(e) => {
                tracing::warn!(project = spec.project(), vm = %spec.name(), error = %error_chain(&e), "reconcile: create failed; backing off");
                backoff.failed(
                    &spec.key(),
                    spec.content_hash(),
                    Instant::now(),
                    cfg.backoff_base,
                    cfg.backoff_max,
                );
            }
        }
    }
    Ok(PassOutcome {
        acted,
        retry_at: p.retry_at,
        converged,
    })
}

async fn connection_loop(
    cfg: &ReconcilerConfig,
    shared: &Shared,
    sender: &CommandSender,
    me: &WorkerCap,
    shutdown: &CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    let mut last_seen = (0u64, 0u64);
    let mut sampler = Sampler::default();
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(cfg, shared, sender, me, &mut last_seen, &mut sampler) => r,
        };
        if let Err(e) = result {
            if matches!(e, ReconcileError::Worker(WorkerError::ShuttingDown)) {
                return;
            }
            tracing::warn!(control_plane = %cfg.control_plane, error = %error_chain(&e), retry_ms = delay.as_millis() as u64,
                "control plane session ended; reconnecting");
        }
        // A session that lasted resets the backoff.
        if started.elapsed() > Duration::from_secs(10) {
            delay = Duration::from_millis(100);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// How long a push may take before the control plane counts as gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ReconcileError> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ReconcileError::Timeout(d)),
    }
}

async fn session(
    cfg: &ReconcilerConfig,
    shared: &Shared,
    sender: &CommandSender,
    me: &WorkerCap,
    last_seen: &mut (u64, u64),
    sampler: &mut Sampler,
) -> Result<(), ReconcileError> {
    let client = with_timeout(
        CALL_TIMEOUT,
        MasterClient::connect_with_token(&cfg.control_plane, CALL_TIMEOUT, cfg.token.expose()),
    )
    .await?;
    with_timeout(CALL_TIMEOUT, client.register(&cfg.registration, me.clone())).await?;
    tracing::info!(control_plane = %cfg.control_plane, "registered with the control plane");
    let id = cfg.registration.worker_id.as_str();
    // Report what runs right away: a restarted control plane adopts VMs
    // where they are instead of placing them afresh.
    push(&client, id, shared, sender, sampler).await?;

    let poll = async {
        loop {
            // The server answers within its long-poll timeout; allow for a
            // long one, but not forever.
            let a = with_timeout(
                Duration::from_secs(120),
                client.get_assignment(id, last_seen.0, last_seen.1),
            )
            .await?;
            if a.changed {
                tracing::info!(
                    generation = a.generation,
                    revision = a.revision,
                    vms = a.vms.len(),
                    "new assignment"
                );
                *last_seen = (a.generation, a.revision);
                *shared.desired.borrow_mut() = Some(a);
                shared.wake_reconcile.notify_one();
            }
        }
    };
    let heartbeat = async {
        loop {
            tokio::select! {
                () = shared.wake_push.notified() => {}
                () = tokio::time::sleep(cfg.heartbeat_interval) => {}
            }
            push(&client, id, shared, sender, sampler).await?;
        }
    };
    let r: Result<(), ReconcileError> = tokio::select! {
        r = poll => r,
        r = heartbeat => r,
    };
    client.close().await;
    r
}

async fn push(
    client: &MasterClient,
    id: &str,
    shared: &Shared,
    sender: &CommandSender,
    sampler: &mut Sampler,
) -> Result<(), ReconcileError> {
    let vms = sender.list_vms().await?;
    let mut running = Vec::with_capacity(vms.len());
    for status in vms {
        let metrics = sampler.metrics(sender, &status).await;
        running.push(ObservedVm { status, metrics });
    }
    sampler.retain(&running);
    let metrics = host_metrics(u32::try_from(running.len()).unwrap_or(u32::MAX));
    let generation = *shared.observed_generation.borrow();
    with_timeout(
        CALL_TIMEOUT,
        client.push_data(id, generation, &running, &metrics),
    )
    .await
}

// ---- metrics ------------------------------------------------------------

/// Per-VM metrics: counters and RSS from the manager (`vm.counters`,
/// /proc/<pid>/status), CPU% from the CH process's /proc/<pid>/stat ticks
/// between two samples.
#[derive(Default)]
struct Sampler {
    last: BTreeMap<VmId, (u32, u64, Instant, VmMetrics)>,
}

/// USER_HZ: /proc reports CPU times in these ticks (100 on every Linux ABI).
/// Metrics are refreshed at most this often; pushes in between reuse them.
const METRICS_EVERY: Duration = Duration::from_millis(900);

impl Sampler {
    async fn metrics(&mut self, sender: &CommandSender, status: &VmStatus) -> VmMetrics {
        let Some(pid) = status.pid else {
            return VmMetrics::default();
        };
        let now = Instant::now();
        if let Some((p, _, at, m)) = self.last.get(&status.id)
            && *p == pid
            && now.duration_since(*at) < METRICS_EVERY
        {
            return *m;
        }
        let mut m = match sender.vm_info(status.id.clone()).await {
            Ok(d) => d.metrics,
            Err(_) => VmMetrics::default(),
        };
        let ticks = crate::procfs::cpu_ticks(pid).unwrap_or(0);
        if let Some((p, t0, at, _)) = self.last.get(&status.id)
            && *p == pid
        {
            let secs = now.duration_since(*at).as_secs_f64();
            if secs > 0.0 {
                m.cpu_percent =
                    ticks.saturating_sub(*t0) as f64 / crate::procfs::TICKS_PER_SEC / secs * 100.0;
            }
        }
        self.last.insert(status.id.clone(), (pid, ticks, now, m));
        m
    }

    fn retain(&mut self, running: &[ObservedVm]) {
        self.last
            .retain(|id, _| running.iter().any(|v| v.status.id == *id));
    }
}

fn host_metrics(vm_count: u32) -> WorkerMetricsView {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |key: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let used_kib = field("MemTotal:").saturating_sub(field("MemAvailable:"));
    WorkerMetricsView {
        load_average,
        memory_used_mb: used_kib / 1024,
        vm_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

    fn spec(name: &str, hash: &str) -> VmSpec {
        testkit::fixtures::spec_with(name, hash, |f| {
            f.cmdline = String::new();
            f.memory_mb = 64;
        })
    }

    /// `plan` with the test's backoff settings, at a fixed `now_ms`.
    fn plan_at(desired: &[VmSpec], running: &[VmStatus], b: &mut Backoff, now: Instant) -> Plan {
        plan(desired, running, b, now, 10, CFG)
    }

    /// One pass now, without a failure history (a fresh backoff).
    fn plan_now(desired: &[VmSpec], running: &[VmStatus]) -> Plan {
        plan_at(desired, running, &mut Backoff::default(), Instant::now())
    }

    fn vm(name: &str, hash: &str, state: VmState, created: u64) -> VmStatus {
        VmStatus {
            id: VmId::new_v7(),
            project: Default::default(),
            name: name.parse().unwrap(),
            content_hash: hash.into(),
            state,
            pid: Some(1),
            error: String::new(),
            created_at_ms: created,
            cpu: 1,
            memory_mb: 64,
            health: Default::default(),
            health_detail: String::new(),
            healthy_since_ms: None,
        }
    }

    /// One pass now, without a failure history, holding `names`.
    fn plan_holding(desired: &[VmSpec], names: &[&str], running: &[VmStatus]) -> Plan {
        let hold: BTreeSet<VmKey> = names
            .iter()
            .map(|n| VmKey::new(Default::default(), n.parse().unwrap()))
            .collect();
        plan_held(
            desired,
            &hold,
            running,
            &mut Backoff::default(),
            Instant::now(),
            10,
            CFG,
        )
    }

    #[test]
    fn a_held_name_keeps_what_it_runs_whatever_the_version() {
        // web-0 runs the old version, web-1 runs two (a replacement the
        // rollout stopped halfway): a hold touches neither.
        let running = [
            vm("web-0", "old", VmState::Running, 1),
            vm("web-1", "old", VmState::Running, 1),
            vm("web-1", "new", VmState::Running, 2),
        ];
        let desired = [spec("web-0", "new"), spec("web-1", "new")];
        let p = plan_holding(&desired, &["web-0", "web-1"], &running);
        assert_eq!(p, Plan::default());
        // Without the hold, the same state replaces web-0 and ends web-1's.
        let p = plan_now(&desired, &running);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.delete, vec![(running[1].id.clone(), "replaced")]);
    }

    #[test]
    fn a_held_name_running_nothing_live_is_created_and_its_failed_instance_removed() {
        let running = [
            vm("web-0", "old", VmState::Failed, 1),
            vm("web-1", "old", VmState::Failed, 1),
            vm("web-1", "old", VmState::Creating, 2),
        ];
        let desired = [spec("web-0", "new"), spec("web-1", "new")];
        let p = plan_holding(&desired, &["web-0", "web-1"], &running);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].name().as_str(), "web-0");
        assert_eq!(p.create[0].content_hash(), "new");
        let deleted: Vec<_> = p.delete.iter().map(|(id, _)| id.clone()).collect();
        assert!(deleted.contains(&running[0].id));
        assert!(deleted.contains(&running[1].id));
        assert!(!deleted.contains(&running[2].id), "the live instance stays");
    }

    #[test]
    fn matching_vms_need_nothing() {
        let running = [
            vm("a", "h1", VmState::Running, 1),
            vm("b", "h2", VmState::Paused, 1),
        ];
        let p = plan_now(&[spec("a", "h1"), spec("b", "h2")], &running);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn creates_missing_and_deletes_undesired() {
        let running = [
            vm("old", "h", VmState::Running, 1),
            vm("gone", "h", VmState::Stopping, 1),
        ];
        let p = plan_now(&[spec("new", "h")], &running);
        assert_eq!(
            p.delete,
            vec![(running[0].id.clone(), "not in the assignment")]
        );
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].name().as_str(), "new");
    }

    #[test]
    fn replacement_creates_first_then_deletes_old() {
        let old = vm("web", "h1", VmState::Running, 1);
        let p = plan_now(&[spec("web", "h2")], std::slice::from_ref(&old));
        assert!(p.delete.is_empty(), "old stays until the new one runs");
        assert_eq!(p.create, vec![spec("web", "h2")]);
        // The new one is booting: nothing to do, the old one stays.
        let booting = vm("web", "h2", VmState::Creating, 2);
        let p = plan_now(&[spec("web", "h2")], &[old.clone(), booting]);
        assert_eq!(p, Plan::default());
        let new = vm("web", "h2", VmState::Running, 2);
        let p = plan_now(&[spec("web", "h2")], &[old.clone(), new]);
        assert_eq!(p.delete, vec![(old.id, "replaced")]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn a_failing_new_version_leaves_the_old_one_running() {
        let mut b = Backoff::default();
        let t = Instant::now();
        let old = vm("web", "h1", VmState::Running, 1);
        let bad = vm("web", "h2", VmState::Failed, 2);
        let p = plan_at(&[spec("web", "h2")], &[old.clone(), bad.clone()], &mut b, t);
        assert_eq!(p.delete, vec![(bad.id, "failed")], "the old one is kept");
        assert!(p.create.is_empty());
        assert_eq!(p.retry_at, Some(t + CFG.0));
        // After the delay the new version is tried again, still beside the old.
        let p = plan_at(
            &[spec("web", "h2")],
            std::slice::from_ref(&old),
            &mut b,
            t + CFG.0,
        );
        assert!(p.delete.is_empty());
        assert_eq!(p.create, vec![spec("web", "h2")]);
    }

    #[test]
    fn a_dead_old_version_goes_at_once() {
        let old = vm("web", "h1", VmState::Failed, 1);
        let new = vm("web", "h2", VmState::Creating, 2);
        let p = plan_now(&[spec("web", "h2")], &[old.clone(), new]);
        assert_eq!(p.delete, vec![(old.id, "failed old version")]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn failed_vms_are_recreated_with_growing_backoff() {
        let mut b = Backoff::default();
        let t = Instant::now();
        let f1 = vm("web", "h", VmState::Failed, 1);
        let p = plan_at(&[spec("web", "h")], std::slice::from_ref(&f1), &mut b, t);
        assert_eq!(p.delete, vec![(f1.id.clone(), "failed")]);
        assert!(p.create.is_empty(), "first retry waits the base delay");
        assert_eq!(p.retry_at, Some(t + CFG.0));
        // Seen again on the next pass: not counted twice.
        let p = plan_at(&[spec("web", "h")], std::slice::from_ref(&f1), &mut b, t);
        assert_eq!(p.retry_at, Some(t + CFG.0));
        let later = t + CFG.0;
        let p = plan_at(&[spec("web", "h")], &[], &mut b, later);
        assert_eq!(p.create.len(), 1);
        // It fails again: the delay doubles.
        let f2 = vm("web", "h", VmState::Failed, 2);
        let p = plan_at(&[spec("web", "h")], &[f2], &mut b, later);
        assert_eq!(p.retry_at, Some(later + CFG.0 * 2));
    }

    /// Two projects' `web-0` at the same hash are two VMs: each is created
    /// once, neither replaces nor deletes the other, and a project's VM
    /// leaves only when its own project stops wanting it.
    #[test]
    fn same_names_of_two_projects_coexist() {
        let in_project = |p: &str, s: VmSpec| s.with_project(p.parse().unwrap());
        let a = in_project("team-a", spec("web-0", "h"));
        let b = in_project("team-b", spec("web-0", "h"));
        let p = plan_now(&[a.clone(), b.clone()], &[]);
        assert_eq!(p.create.len(), 2, "{p:?}");
        let mut running_a = vm("web-0", "h", VmState::Running, 1);
        running_a.project = "team-a".parse().unwrap();
        // b's VM is not a's: still created, and a's one is kept.
        let p = plan_now(&[a.clone(), b.clone()], std::slice::from_ref(&running_a));
        assert_eq!(p.create, vec![b.clone()]);
        assert!(p.delete.is_empty(), "{p:?}");
        // Only b wanted: a's VM goes, b's is created.
        let p = plan_now(std::slice::from_ref(&b), std::slice::from_ref(&running_a));
        assert_eq!(p.create, vec![b]);
        assert_eq!(
            p.delete,
            vec![(running_a.id.clone(), "not in the assignment")]
        );
    }

    #[test]
    fn duplicates_keep_the_oldest() {
        let a = vm("web", "h", VmState::Running, 1);
        let c = vm("web", "h", VmState::Running, 5);
        let p = plan_now(&[spec("web", "h")], &[c.clone(), a]);
        assert_eq!(p.delete, vec![(c.id, "duplicate")]);
    }

    /// Polls `f` every 20 ms for up to 10 s.
    async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
        what: &str,
        mut f: impl FnMut() -> F,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// name → (id, hash, state) of what the manager runs. A second
    /// instance of a name (a replacement in progress) is listed as
    /// `<name>+`, so `all_running` is false until the old one is gone.
    async fn running(tx: &CommandSender) -> BTreeMap<String, (VmId, String, VmState)> {
        let mut out = BTreeMap::new();
        for v in tx.list_vms().await.unwrap() {
            let mut key = v.name.to_string();
            while out.contains_key(&key) {
                key.push('+');
            }
            out.insert(key, (v.id, v.content_hash, v.state));
        }
        out
    }

    fn all_running(m: &BTreeMap<String, (VmId, String, VmState)>, want: &[(&str, &str)]) -> bool {
        m.len() == want.len()
            && want.iter().all(|(n, h)| {
                m.get(*n)
                    .is_some_and(|(_, mh, st)| mh == h && *st == VmState::Running)
            })
    }

    /// A real control plane on loopback, a real Node/VmManager over the
    /// in-memory backend, and the reconciler between them.
    struct Harness {
        backend: crate::vmm::memory::MemoryBackend,
        tx: CommandSender,
        master: MasterClient,
        shutdown: CancellationToken,
        reconciler: tokio::task::JoinHandle<()>,
        node_task: tokio::task::JoinHandle<()>,
        _control_plane: testkit::Proc,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        /// Starts everything; `before` runs on the manager before the
        /// reconciler starts. Call inside a `LocalSet`.
        async fn start<F: std::future::Future<Output = ()>>(
            before: impl FnOnce(CommandSender) -> F,
        ) -> Harness {
            use crate::manager::ManagerConfig;
            use crate::node::Node;
            use crate::vmm::memory::MemoryBackend;

            let dir = tempfile::tempdir().unwrap();
            let backend = MemoryBackend::default();
            testkit::fixtures::make_store(&dir.path().join("store"));
            let manager_config = ManagerConfig {
                stop_vms_on_exit: true,
                shutdown_timeout: Duration::from_millis(100),
                ..ManagerConfig::local("w1", dir.path())
            };
            let node = Node::new(backend.clone(), manager_config).unwrap();
            let tx = node.sender();
            let shutdown = CancellationToken::new();
            let node_task = tokio::spawn(node.run(shutdown.clone()));

            // The real control_plane binary (the worker does not link its
            // crate), through the test kit like every other test.
            let control_plane = testkit::services::start_control_plane(
                &testkit::services::ControlPlaneArgs {
                    heartbeat_timeout_ms: Some(2000),
                    long_poll_timeout_ms: Some(2000),
                    ..Default::default()
                },
                testkit::Log::Quiet,
            );
            let addr = control_plane.addr.clone();

            before(tx.clone()).await;
            let me = crate::server::worker_cap(tx.clone());
            let registration = Registration {
                worker_id: "w1".parse().unwrap(),
                address: "127.0.0.1:1".into(),
                capacity: crate::dto::Resources {
                    cpu: 8,
                    memory_mb: 8192,
                },
                labels: crate::dto::Labels::new(),
            };
            let mut rc = ReconcilerConfig::new(addr.clone(), registration);
            rc.heartbeat_interval = Duration::from_millis(50);
            rc.backoff_base = Duration::from_millis(50);
            rc.backoff_max = Duration::from_millis(400);
            let reconciler = tokio::task::spawn_local(run(rc, tx.clone(), me, shutdown.clone()));

            let master = MasterClient::connect(&addr, Duration::from_secs(5))
                .await
                .unwrap();
            Harness {
                backend,
                tx,
                master,
                shutdown,
                reconciler,
                node_task,
                _control_plane: control_plane,
                _dir: dir,
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.reconciler.await.unwrap();
            self.node_task.await.unwrap();
        }
    }

    #[test]
    fn converges_replaces_recreates_and_waits_for_an_assignment() {
        use crate::vmm::memory::{Fault, Step};

        commands::rpc::block_on_local(async {
            // A VM that exists before any generation does.
            let h = Harness::start(|tx| async move {
                tx.create_vm(spec("manual-0", "m")).await.unwrap();
            })
            .await;
            let (tx, backend, master) = (&h.tx, &h.backend, &h.master);
            eventually("the worker reports its VM", || async {
                let s = master.status().await.unwrap();
                s.workers.first().filter(|w| w.vm_count == 1).map(|_| ())
            })
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                running(tx).await.contains_key("manual-0"),
                "deleted before any assignment"
            );

            // Generation 1: converge, removing what is not assigned.
            master
                .publish(
                    "default",
                    "c1",
                    1,
                    "i1",
                    &[spec("web-0", "h1"), spec("web-1", "h1")],
                )
                .await
                .unwrap();
            let g1 = eventually("generation 1", || async {
                let m = running(tx).await;
                all_running(&m, &[("web-0", "h1"), ("web-1", "h1")]).then_some(m)
            })
            .await;

            // Generation 2: only web-0 changes.
            master
                .publish(
                    "default",
                    "c2",
                    2,
                    "i2",
                    &[spec("web-0", "h2"), spec("web-1", "h1")],
                )
                .await
                .unwrap();
            let g2 = eventually("generation 2", || async {
                let m = running(tx).await;
                all_running(&m, &[("web-0", "h2"), ("web-1", "h1")]).then_some(m)
            })
            .await;
            assert_eq!(g1["web-1"].0, g2["web-1"].0, "web-1 was restarted");
            assert_ne!(g1["web-0"].0, g2["web-0"].0);

            // A crashed hypervisor is recreated.
            backend.crash(&g2["web-1"].0);
            let g3 = eventually("web-1 recreated", || async {
                let m = running(tx).await;
                (all_running(&m, &[("web-0", "h2"), ("web-1", "h1")])
                    && m["web-1"].0 != g2["web-1"].0)
                    .then_some(m)
            })
            .await;
            assert_eq!(g3["web-0"].0, g2["web-0"].0);

            // Creates that fail are retried with backoff until they work.
            backend.fault(Step::Boot, Fault::Fail(500));
            master
                .publish(
                    "default",
                    "c3",
                    3,
                    "i3",
                    &[spec("web-0", "h2"), spec("web-1", "h1"), spec("db-0", "d")],
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!running(tx).await.contains_key("db-0"));
            backend.clear_faults();
            eventually("db-0 after the fault cleared", || async {
                let m = running(tx).await;
                all_running(&m, &[("web-0", "h2"), ("web-1", "h1"), ("db-0", "d")]).then_some(())
            })
            .await;
            eventually("100% converged", || async {
                let s = master.status().await.unwrap();
                (s.convergence_percent == 100.0 && s.workers[0].observed_generation == 3)
                    .then_some(())
            })
            .await;
            h.stop().await;
        });
    }

    /// Every instance of `name`: (id, hash, state), oldest first.
    async fn versions(tx: &CommandSender, name: &str) -> Vec<(VmId, String, VmState)> {
        let mut v: Vec<_> = tx
            .list_vms()
            .await
            .unwrap()
            .into_iter()
            .filter(|v| v.name.as_str() == name)
            .map(|v| (v.created_at_ms, v.id, v.content_hash, v.state))
            .collect();
        v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        v.into_iter().map(|(_, id, h, st)| (id, h, st)).collect()
    }

    /// Make-before-break through the real manager: while the new version
    /// boots the old one runs; the old one is stopped only once the new one
    /// runs; a new version that cannot boot is retried with backoff while
    /// the old one keeps running, untouched.
    #[test]
    fn replacement_keeps_the_old_vm_until_the_new_one_runs() {
        use crate::vmm::memory::{Fault, Step};

        commands::rpc::block_on_local(async {
            let h = Harness::start(|_| async {}).await;
            let (tx, backend, master) = (&h.tx, &h.backend, &h.master);
            master
                .publish("default", "c1", 1, "i1", &[spec("web-0", "h1")])
                .await
                .unwrap();
            let old = eventually("generation 1", || async {
                let v = versions(tx, "web-0").await;
                (v.len() == 1 && v[0].2 == VmState::Running).then(|| v[0].0.clone())
            })
            .await;
            let old_pid = backend.pid_of(&old).unwrap();

            // Generation 2 boots slowly: watch every step of the swap.
            backend.fault(Step::Boot, Fault::Delay(Duration::from_millis(600)));
            master
                .publish("default", "c2", 2, "i2", &[spec("web-0", "h2")])
                .await
                .unwrap();
            let mut saw_overlap = false;
            let start = Instant::now();
            let new = loop {
                assert!(start.elapsed() < Duration::from_secs(10), "no swap");
                let v = versions(tx, "web-0").await;
                let old_state = v.iter().find(|x| x.0 == old).map(|x| x.2);
                let new_vm = v.iter().find(|x| x.1 == "h2");
                let new_state = new_vm.map(|x| x.2);
                // The invariant: the old VM is Running until the new one is.
                if new_state != Some(VmState::Running) {
                    assert_eq!(old_state, Some(VmState::Running), "gap in service: {v:?}");
                    assert_eq!(backend.pid_of(&old), Some(old_pid));
                }
                if new_state == Some(VmState::Creating) {
                    saw_overlap = true;
                }
                if v.len() == 1 && new_state == Some(VmState::Running) {
                    break new_vm.unwrap().0.clone();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert!(saw_overlap, "never saw the new VM booting beside the old");
            assert_eq!(backend.pid_of(&old), None, "the old hypervisor is gone");
            backend.clear_faults();

            // Generation 3 cannot boot: the running version stays, however
            // often the new one is tried.
            backend.fault(Step::Boot, Fault::Fail(500));
            let spawned = backend.spawned();
            master
                .publish("default", "c3", 3, "i3", &[spec("web-0", "h3")])
                .await
                .unwrap();
            let start = Instant::now();
            while backend.spawned() < spawned + 3 {
                assert!(start.elapsed() < Duration::from_secs(10), "no retries");
                let v = versions(tx, "web-0").await;
                assert!(
                    v.iter().any(|x| x.0 == new && x.2 == VmState::Running),
                    "the running version was touched: {v:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let new_pid = backend.pid_of(&new);
            assert!(new_pid.is_some());
            // The control plane shows one row for web-0: the old version
            // drifted (or, for a moment, the new one booting), no orphan.
            let s = master.status().await.unwrap();
            assert_eq!(s.vms.len(), 1, "{:?}", s.vms);
            let row = &s.vms[0];
            assert!(
                (row.observed_hash == "h2" && row.drift == commands::model::Drift::Drifted)
                    || row.state == Some(VmState::Creating),
                "{row:?}"
            );
            assert_eq!(s.convergence_percent, 0.0);

            // Fixed: the new version comes up and only then replaces h2.
            backend.clear_faults();
            eventually("generation 3 after the fault cleared", || async {
                let v = versions(tx, "web-0").await;
                (v.len() == 1 && v[0].1 == "h3" && v[0].2 == VmState::Running).then_some(())
            })
            .await;
            assert_eq!(backend.pid_of(&new), None);
            eventually("100% converged", || async {
                let s = master.status().await.unwrap();
                (s.convergence_percent == 100.0 && s.workers[0].observed_generation == 3)
                    .then_some(())
            })
            .await;
            h.stop().await;
        });
    }

    #[test]
    fn proc_readers_work_on_this_process() {
        assert!(crate::procfs::cpu_ticks(std::process::id()).is_some());
        let m = host_metrics(3);
        assert_eq!(m.vm_count, 3);
        assert!(m.memory_used_mb > 0);
    }
}
