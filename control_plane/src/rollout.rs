//! Rollouts: how a new generation replaces the replicas of a VM group that
//! has an update policy (`VmSpec.update`), batch by batch.
//!
//! The driver is one pure function, [`step`], that `State` calls whenever
//! something it depends on may have moved (a publish, a worker's report, a
//! tick), with `now` as unix ms. It decides, per replica, what the worker
//! is told ([`Action`]): the new spec, "hold" (keep whatever you run, see
//! `Assignment.hold`), or the previous generation's spec (a revert).
//!
//! Progress is read from what the workers report, never from counters
//! alone: a replica is *done* when its worker runs the new version, running
//! and healthy (`Health::is_ok`) for `minHealthyMs` by the worker's own
//! timestamps; it is *in flight* when the worker runs the new version but
//! it is not done yet. So a control plane that restarts mid-rollout (and
//! loses its [`Record`]) finds the same done and in-flight replicas again
//! and carries on without restarting a VM. What the record adds is memory
//! that observation cannot give: which batch was handed out but not started
//! yet, when it was handed out (the deadline), and that the rollout paused
//! or reverted (after a restart a paused rollout pauses again as soon as
//! its failed replica is seen; a reverted one, whose replicas are back on
//! the old version, starts over; see context/architecture.md, "Rollouts").
//!
//! The states and their transitions (one unit test each below):
//! - Rolling, no batch → the next `maxParallel` replicas still on an old
//!   version become the batch (`rollout-batch`); none left → Rolled
//!   (`rollout-done`).
//! - Rolling, batch → each member done leaves the batch; a member whose
//!   new version failed or is unhealthy, or that is not done within the
//!   deadline, fails the batch: Paused (`rollout-paused`), or Reverted with
//!   `autoRevert` when every member's previous spec is known
//!   (`rollout-reverted`).
//! - Paused, Reverted, Rolled → stay until the next generation; a new
//!   generation starts a new record in Rolling.
//!
//! Replicas that run nothing live (new in this generation, or whose worker
//! lost them) have no old version to protect: they get the new spec at
//! once and join the batch once their worker starts them.

use std::collections::{BTreeMap, BTreeSet};

use commands::model::RolloutStatusView;
use commands::types::{Health, UpdatePolicy, VmName, VmState};

/// How long a new replica without a health check may take to come up
/// before its batch fails (plus `minHealthyMs`): long enough for a closure
/// pull, short enough that a VM that never starts does not park a rollout.
pub const DEFAULT_START_DEADLINE_MS: u64 = 60_000;

/// One instance a worker reports under a replica's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub hash: String,
    pub state: VmState,
    pub health: Health,
    /// Why it failed or is unhealthy ("" otherwise).
    pub detail: String,
    pub created_at_ms: u64,
    /// When its health check passed (`None` without a check or before).
    pub healthy_since_ms: Option<u64>,
}

/// One replica of the group: its new version and what its worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub name: VmName,
    pub new_hash: String,
    /// Whether the previous generation's spec for it is known (a revert
    /// needs it; a restarted control plane does not have it).
    pub can_revert: bool,
    pub instances: Vec<Instance>,
}

/// A group's rollout to one generation.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    pub policy: &'a UpdatePolicy,
    /// The replicas' health-check deadline (`None`: no check).
    pub check_deadline_ms: Option<u64>,
    pub generation: u64,
    pub replicas: &'a [Replica],
}

/// What a replica's worker is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run the new generation's spec.
    New,
    /// Keep whatever runs under the name (create the new spec only if
    /// nothing live does).
    Hold,
    /// Go back to the previous generation's spec.
    Revert,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Rolling,
    Paused(String),
    Reverted(String),
    Rolled,
}

/// The driver's memory of one group's rollout (in memory only: see the
/// module doc for what a restart loses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub generation: u64,
    pub phase: Phase,
    /// The replicas being replaced now.
    pub batch: BTreeSet<VmName>,
    pub batch_started_ms: u64,
}

impl Record {
    pub fn new(generation: u64, now_ms: u64) -> Self {
        Record {
            generation,
            phase: Phase::Rolling,
            batch: BTreeSet::new(),
            batch_started_ms: now_ms,
        }
    }
}

/// A transition worth an event (h2's event log; logged with `tracing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// rollout-batch, rollout-paused, rollout-reverted or rollout-done.
    pub kind: &'static str,
    pub message: String,
}

/// What one step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub actions: BTreeMap<VmName, Action>,
    pub status: RolloutStatusView,
    pub transitions: Vec<Transition>,
}

/// What the worker reports for one replica, as the rollout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Nothing live under the name: nothing to protect.
    Nothing,
    /// Live, but no instance of the new version.
    Old,
    /// The new version runs but has not been healthy for long enough.
    Started,
    /// The new version failed or is unhealthy (why).
    Failing(String),
    /// The new version has been running and healthy for `minHealthyMs`.
    Done,
}

fn is_live(s: VmState) -> bool {
    matches!(s, VmState::Creating | VmState::Running | VmState::Paused)
}

fn classify(r: &Replica, min_healthy_ms: u64, now_ms: u64) -> Seen {
    let new: Vec<&Instance> = r
        .instances
        .iter()
        .filter(|i| i.hash == r.new_hash)
        .collect();
    let done = new.iter().any(|i| {
        let since = i.healthy_since_ms.unwrap_or(i.created_at_ms);
        i.health.is_ok(i.state) && now_ms.saturating_sub(since) >= min_healthy_ms
    });
    if done {
        return Seen::Done;
    }
    if let Some(bad) = new
        .iter()
        .find(|i| i.state == VmState::Failed || i.health == Health::Unhealthy)
    {
        let what = if bad.state == VmState::Failed {
            "failed"
        } else {
            "unhealthy"
        };
        return Seen::Failing(if bad.detail.is_empty() {
            format!("{} {what}", r.name)
        } else {
            format!("{} {what}: {}", r.name, bad.detail)
        });
    }
    if new.iter().any(|i| is_live(i.state)) {
        Seen::Started
    } else if r.instances.iter().any(|i| is_live(i.state)) {
        Seen::Old
    } else {
        Seen::Nothing
    }
}

/// One step of a group's rollout at `now_ms`. `record` is the group's
/// memory: `None` (or another generation's) starts this generation's
/// rollout from what the workers report.
pub fn step(record: &mut Option<Record>, g: Group<'_>, now_ms: u64) -> Step {
    let rec = match record {
        Some(r) if r.generation == g.generation => r,
        _ => record.insert(Record::new(g.generation, now_ms)),
    };
    let policy = g.policy;
    let seen: BTreeMap<&VmName, Seen> = g
        .replicas
        .iter()
        .map(|r| (&r.name, classify(r, policy.min_healthy_ms, now_ms)))
        .collect();
    let mut transitions = Vec::new();
    let group = &policy.group;

    if rec.phase == Phase::Rolling {
        // Replicas the workers already run the new version of belong to
        // the batch (a restart forgot it, or they had nothing to protect).
        for (name, s) in &seen {
            if matches!(s, Seen::Started | Seen::Failing(_)) {
                rec.batch.insert((*name).clone());
            }
        }
        rec.batch
            .retain(|n| seen.get(n).is_some_and(|s| *s != Seen::Done));
        let deadline =
            g.check_deadline_ms.unwrap_or(DEFAULT_START_DEADLINE_MS) + policy.min_healthy_ms;
        let late = now_ms.saturating_sub(rec.batch_started_ms) > deadline;
        let failure = rec.batch.iter().find_map(|n| match &seen[n] {
            Seen::Failing(why) => Some(why.clone()),
            _ if late => Some(format!("{n} not healthy within {deadline} ms")),
            _ => None,
        });
        if let Some(why) = failure {
            let revertible = g
                .replicas
                .iter()
                .filter(|r| rec.batch.contains(&r.name))
                .all(|r| r.can_revert);
            if policy.auto_revert && revertible {
                tracing::warn!(group = %group, generation = g.generation, reason = %why, "rollout reverted");
                transitions.push(Transition {
                    kind: "rollout-reverted",
                    message: format!("{group}: {why}; the batch goes back to the previous version"),
                });
                rec.phase = Phase::Reverted(why);
            } else {
                let why = if policy.auto_revert {
                    format!(
                        "{why}; cannot revert: the previous generation's spec is not known (the control plane restarted)"
                    )
                } else {
                    why
                };
                tracing::warn!(group = %group, generation = g.generation, reason = %why, "rollout paused");
                transitions.push(Transition {
                    kind: "rollout-paused",
                    message: format!("{group}: {why}"),
                });
                rec.phase = Phase::Paused(why);
            }
        } else if rec.batch.is_empty() {
            let next: BTreeSet<VmName> = seen
                .iter()
                .filter(|(_, s)| **s == Seen::Old)
                .take(policy.max_parallel as usize)
                .map(|(n, _)| (*n).clone())
                .collect();
            if next.is_empty() {
                tracing::info!(group = %group, generation = g.generation, "rollout done");
                transitions.push(Transition {
                    kind: "rollout-done",
                    message: format!("{group}: every replica runs generation {}", g.generation),
                });
                rec.phase = Phase::Rolled;
            } else {
                let names: Vec<&str> = next.iter().map(VmName::as_str).collect();
                tracing::info!(group = %group, generation = g.generation, replicas = %names.join(","), "rollout batch");
                transitions.push(Transition {
                    kind: "rollout-batch",
                    message: format!("{group}: replacing {}", names.join(", ")),
                });
                rec.batch = next;
                rec.batch_started_ms = now_ms;
            }
        }
    }

    let reverting = matches!(rec.phase, Phase::Reverted(_));
    let actions = g
        .replicas
        .iter()
        .map(|r| {
            let a = if rec.batch.contains(&r.name) && rec.phase != Phase::Rolled {
                if reverting {
                    Action::Revert
                } else {
                    Action::New
                }
            } else if seen[&r.name] == Seen::Old && rec.phase != Phase::Rolled {
                Action::Hold
            } else {
                Action::New
            };
            (r.name.clone(), a)
        })
        .collect();

    let total = u32::try_from(g.replicas.len()).unwrap_or(u32::MAX);
    let healthy =
        u32::try_from(seen.values().filter(|s| **s == Seen::Done).count()).unwrap_or(u32::MAX);
    let per = policy.max_parallel.max(1);
    let batches = total.div_ceil(per).max(1);
    let in_flight = u32::try_from(rec.batch.len()).unwrap_or(u32::MAX);
    let batch = healthy
        .saturating_add(in_flight)
        .div_ceil(per)
        .clamp(1, batches);
    let (state, reason) = match &rec.phase {
        Phase::Rolling => ("rolling", String::new()),
        Phase::Paused(why) => ("paused", why.clone()),
        Phase::Reverted(why) => ("reverted", why.clone()),
        Phase::Rolled => ("rolled", String::new()),
    };
    Step {
        actions,
        status: RolloutStatusView {
            project: String::new(),
            group: group.clone(),
            generation: g.generation,
            batch,
            batches,
            healthy,
            total,
            state: state.to_owned(),
            reason,
        },
        transitions,
    }
}

/// One line for `Generation.rollout` from its groups' statuses: "" when
/// no group has a policy, "rolled" once every group is, else each group
/// not rolled ("rolling web 2/5", "paused: …", "reverted: …").
pub fn summary<'a>(statuses: impl IntoIterator<Item = &'a RolloutStatusView>) -> String {
    let mut any = false;
    let mut parts = Vec::new();
    for s in statuses {
        any = true;
        match s.state.as_str() {
            "rolled" => {}
            "rolling" => parts.push(format!("rolling {} {}/{}", s.group, s.batch, s.batches)),
            other => parts.push(format!("{other}: {}", s.reason)),
        }
    }
    if !any {
        String::new()
    } else if parts.is_empty() {
        "rolled".to_owned()
    } else {
        parts.join("; ")
    }
}
