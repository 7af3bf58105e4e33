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
//!   version become the batch (`rollout-batch`); none left and every
//!   replica done → Rolled (`rollout-done`); else (replicas not started
//!   yet) it waits.
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

    /// The record of `group`'s rollout to `generation` as a restarted
    /// control plane can rebuild it from the generation's recorded outcome
    /// (`Generation.rollout`, once generations are persisted): a rollout
    /// that paused or reverted stays so, instead of trying the bad version
    /// again on its first batch. Every reason names its replica first
    /// ("web-1 unhealthy: …"), which tells the group. `None` when the line
    /// says nothing about this group.
    pub fn resume(generation: u64, group: &str, line: &str, now_ms: u64) -> Option<Self> {
        let (phase, reason): (fn(String) -> Phase, &str) =
            if let Some(r) = line.strip_prefix("paused: ") {
                (Phase::Paused, r)
            } else if let Some(r) = line.strip_prefix("reverted: ") {
                (Phase::Reverted, r)
            } else {
                return None;
            };
        let replica = reason.split_whitespace().next()?;
        let (of, index) = replica.rsplit_once('-')?;
        if of != group || index.parse::<u32>().is_err() {
            return None;
        }
        Some(Record {
            phase: phase(reason.to_owned()),
            ..Record::new(generation, now_ms)
        })
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
        // Running, whatever the check says: a guest that passed its check
        // and then crashed is not healthy.
        i.state == VmState::Running
            && i.health.is_ok(i.state)
            && now_ms.saturating_sub(since) >= min_healthy_ms
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
            if next.is_empty() && seen.values().all(|s| *s == Seen::Done) {
                tracing::info!(group = %group, generation = g.generation, "rollout done");
                transitions.push(Transition {
                    kind: "rollout-done",
                    message: format!("{group}: every replica runs generation {}", g.generation),
                });
                rec.phase = Phase::Rolled;
            } else if !next.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old";
    const NEW: &str = "new";

    fn policy(max_parallel: u32, min_healthy_ms: u64, auto_revert: bool) -> UpdatePolicy {
        UpdatePolicy {
            group: "web".into(),
            max_parallel,
            min_healthy_ms,
            auto_revert,
        }
    }

    fn running(hash: &str, created_at_ms: u64) -> Instance {
        Instance {
            hash: hash.into(),
            state: VmState::Running,
            health: Health::None,
            detail: String::new(),
            created_at_ms,
            healthy_since_ms: None,
        }
    }

    fn replica(i: usize, instances: Vec<Instance>) -> Replica {
        Replica {
            name: format!("web-{i}").parse().unwrap(),
            new_hash: NEW.into(),
            can_revert: true,
            instances,
        }
    }

    /// `n` replicas, all running the old version since time 0.
    fn all_old(n: usize) -> Vec<Replica> {
        (0..n).map(|i| replica(i, vec![running(OLD, 0)])).collect()
    }

    fn run(
        rec: &mut Option<Record>,
        p: &UpdatePolicy,
        deadline: Option<u64>,
        replicas: &[Replica],
        now_ms: u64,
    ) -> Step {
        step(
            rec,
            Group {
                policy: p,
                check_deadline_ms: deadline,
                generation: 2,
                replicas,
            },
            now_ms,
        )
    }

    fn actions(s: &Step) -> Vec<(String, Action)> {
        s.actions.iter().map(|(n, a)| (n.to_string(), *a)).collect()
    }

    fn act(s: &Step, name: &str) -> Action {
        s.actions[&name.parse::<VmName>().unwrap()]
    }

    fn of(list: &[(&str, Action)]) -> Vec<(String, Action)> {
        list.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect()
    }

    fn batch(rec: &Option<Record>) -> Vec<String> {
        rec.as_ref()
            .unwrap()
            .batch
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_new_generation_starts_rolling_with_the_first_max_parallel_replicas_by_name() {
        let mut rec = None;
        let p = policy(2, 1000, false);
        let s = run(&mut rec, &p, None, &all_old(5), 100);
        assert_eq!(rec.as_ref().unwrap().phase, Phase::Rolling);
        assert_eq!(batch(&rec), ["web-0", "web-1"]);
        assert_eq!(
            actions(&s),
            of(&[
                ("web-0", Action::New),
                ("web-1", Action::New),
                ("web-2", Action::Hold),
                ("web-3", Action::Hold),
                ("web-4", Action::Hold),
            ])
        );
        assert_eq!(s.transitions[0].kind, "rollout-batch");
        assert_eq!(
            (
                s.status.batch,
                s.status.batches,
                s.status.healthy,
                s.status.total
            ),
            (1, 3, 0, 5)
        );
        assert_eq!(s.status.state, "rolling");
    }

    #[test]
    fn a_batch_waits_while_its_replicas_have_not_been_healthy_for_min_healthy_ms() {
        let mut rec = None;
        let p = policy(2, 1000, false);
        let mut r = all_old(3);
        run(&mut rec, &p, None, &r, 0);
        // web-0 runs the new version (the old one is gone), web-1 runs both.
        r[0].instances = vec![running(NEW, 100)];
        r[1].instances.push(running(NEW, 100));
        let s = run(&mut rec, &p, None, &r, 1099);
        assert_eq!(batch(&rec), ["web-0", "web-1"]);
        assert!(s.transitions.is_empty());
        assert_eq!(act(&s, "web-2"), Action::Hold);
        assert_eq!(s.status.healthy, 0);
    }

    #[test]
    fn done_replicas_leave_the_batch_and_the_next_batch_starts() {
        let mut rec = None;
        let p = policy(2, 1000, false);
        let mut r = all_old(3);
        run(&mut rec, &p, None, &r, 0);
        r[0].instances = vec![running(NEW, 100)];
        r[1].instances = vec![running(NEW, 100)];
        let s = run(&mut rec, &p, None, &r, 1100);
        assert_eq!(batch(&rec), ["web-2"]);
        assert_eq!(rec.as_ref().unwrap().batch_started_ms, 1100);
        assert_eq!(act(&s, "web-2"), Action::New);
        assert_eq!(
            (s.status.batch, s.status.batches, s.status.healthy),
            (2, 2, 2)
        );
    }

    #[test]
    fn with_a_health_check_only_healthy_counts_and_the_wait_starts_when_it_passed() {
        let mut rec = None;
        let p = policy(1, 1000, false);
        let mut r = all_old(2);
        run(&mut rec, &p, Some(5000), &r, 0);
        r[0].instances = vec![Instance {
            health: Health::Pending,
            ..running(NEW, 100)
        }];
        run(&mut rec, &p, Some(5000), &r, 3000);
        assert_eq!(batch(&rec), ["web-0"], "pending is not healthy");
        r[0].instances = vec![Instance {
            health: Health::Healthy,
            healthy_since_ms: Some(2500),
            ..running(NEW, 100)
        }];
        run(&mut rec, &p, Some(5000), &r, 3400);
        assert_eq!(batch(&rec), ["web-0"], "healthy for 900 ms only");
        run(&mut rec, &p, Some(5000), &r, 3500);
        assert_eq!(batch(&rec), ["web-1"]);
    }

    #[test]
    fn a_replica_that_passed_its_check_counts_only_while_running() {
        let mut rec = None;
        let p = policy(1, 0, false);
        let mut r = all_old(2);
        run(&mut rec, &p, Some(5000), &r, 0);
        r[0].instances = vec![Instance {
            state: VmState::Stopped,
            health: Health::Healthy,
            healthy_since_ms: Some(50),
            ..running(NEW, 10)
        }];
        let s = run(&mut rec, &p, Some(5000), &r, 100);
        assert_eq!(batch(&rec), ["web-0"], "a stopped VM is not done");
        assert_eq!(s.status.healthy, 0);
    }

    #[test]
    fn an_unhealthy_replica_pauses_and_the_untouched_stay_held() {
        let mut rec = None;
        let p = policy(1, 1000, false);
        let mut r = all_old(3);
        run(&mut rec, &p, Some(5000), &r, 0);
        r[0].instances = vec![Instance {
            health: Health::Unhealthy,
            detail: "no READY within 5000 ms".into(),
            ..running(NEW, 100)
        }];
        let s = run(&mut rec, &p, Some(5000), &r, 5200);
        assert_eq!(
            rec.as_ref().unwrap().phase,
            Phase::Paused("web-0 unhealthy: no READY within 5000 ms".into())
        );
        assert_eq!(s.transitions[0].kind, "rollout-paused");
        assert_eq!(
            actions(&s),
            of(&[
                ("web-0", Action::New),
                ("web-1", Action::Hold),
                ("web-2", Action::Hold),
            ])
        );
        assert_eq!(s.status.state, "paused");
        assert_eq!(s.status.reason, "web-0 unhealthy: no READY within 5000 ms");
    }

    #[test]
    fn a_failed_replica_with_auto_revert_reverts_the_batch() {
        let mut rec = None;
        let p = policy(2, 0, true);
        let mut r = all_old(3);
        run(&mut rec, &p, None, &r, 0);
        r[1].instances.push(Instance {
            state: VmState::Failed,
            detail: "kernel panic".into(),
            ..running(NEW, 100)
        });
        let s = run(&mut rec, &p, None, &r, 200);
        assert_eq!(
            rec.as_ref().unwrap().phase,
            Phase::Reverted("web-1 failed: kernel panic".into())
        );
        assert_eq!(s.transitions[0].kind, "rollout-reverted");
        assert_eq!(
            actions(&s),
            of(&[
                ("web-0", Action::Revert),
                ("web-1", Action::Revert),
                ("web-2", Action::Hold),
            ])
        );
        assert_eq!(s.status.state, "reverted");
    }

    #[test]
    fn auto_revert_without_the_previous_spec_pauses_and_says_why() {
        let mut rec = None;
        let p = policy(1, 0, true);
        let mut r = all_old(2);
        r[0].can_revert = false;
        run(&mut rec, &p, None, &r, 0);
        r[0].instances = vec![Instance {
            state: VmState::Failed,
            ..running(NEW, 100)
        }];
        let s = run(&mut rec, &p, None, &r, 200);
        assert_eq!(s.status.state, "paused");
        assert!(
            s.status.reason.starts_with("web-0 failed; cannot revert"),
            "{}",
            s.status.reason
        );
        assert_eq!(act(&s, "web-0"), Action::New);
    }

    #[test]
    fn a_batch_not_healthy_within_the_deadline_pauses() {
        let mut rec = None;
        let p = policy(1, 1000, false);
        let mut r = all_old(2);
        run(&mut rec, &p, Some(5000), &r, 0);
        r[0].instances.push(Instance {
            health: Health::Pending,
            ..running(NEW, 100)
        });
        run(&mut rec, &p, Some(5000), &r, 6000);
        assert_eq!(
            rec.as_ref().unwrap().phase,
            Phase::Rolling,
            "6000 ms is the deadline"
        );
        let s = run(&mut rec, &p, Some(5000), &r, 6001);
        assert_eq!(s.status.reason, "web-0 not healthy within 6000 ms");
        // Without a check the deadline is the default start time.
        let mut rec = None;
        let r = all_old(1);
        run(&mut rec, &p, None, &r, 0);
        let s = run(&mut rec, &p, None, &r, DEFAULT_START_DEADLINE_MS + 1001);
        assert_eq!(s.status.state, "paused");
    }

    #[test]
    fn nothing_left_on_an_old_version_is_rolled_and_every_replica_runs_new() {
        let mut rec = None;
        let p = policy(2, 0, false);
        let r: Vec<Replica> = (0..2).map(|i| replica(i, vec![running(NEW, 0)])).collect();
        let s = run(&mut rec, &p, None, &r, 10);
        assert_eq!(rec.as_ref().unwrap().phase, Phase::Rolled);
        assert_eq!(s.transitions[0].kind, "rollout-done");
        assert!(s.actions.values().all(|a| *a == Action::New));
        assert_eq!((s.status.healthy, s.status.total), (2, 2));
        // Rolled stays rolled: a replica that later runs an old version
        // (its worker lost it and another brought it back) is not held.
        let r = all_old(2);
        let s = run(&mut rec, &p, None, &r, 20);
        assert_eq!(s.status.state, "rolled");
        assert!(s.actions.values().all(|a| *a == Action::New));
    }

    #[test]
    fn paused_and_reverted_stay_until_the_next_generation() {
        let mut rec = Some(Record {
            phase: Phase::Paused("web-0 failed".into()),
            batch: ["web-0".parse().unwrap()].into(),
            ..Record::new(2, 0)
        });
        let p = policy(1, 0, false);
        let mut r = all_old(2);
        r[0].instances = vec![running(NEW, 0)];
        let s = run(&mut rec, &p, None, &r, 10_000);
        assert_eq!(
            s.status.state, "paused",
            "a healthy replica does not resume it"
        );
        assert_eq!(act(&s, "web-1"), Action::Hold);
        rec.as_mut().unwrap().phase = Phase::Reverted("web-0 failed".into());
        let s = run(&mut rec, &p, None, &r, 20_000);
        assert_eq!(s.status.state, "reverted");
        assert_eq!(act(&s, "web-0"), Action::Revert);
        // Generation 3: a new rollout.
        let s = step(
            &mut rec,
            Group {
                policy: &p,
                check_deadline_ms: None,
                generation: 3,
                replicas: &all_old(2),
            },
            30_000,
        );
        assert_eq!(s.status.state, "rolling");
        assert_eq!(batch(&rec), ["web-0"]);
    }

    #[test]
    fn a_restart_adopts_what_the_workers_run_and_starts_nothing_new_meanwhile() {
        // Two of five done, web-2 and web-3 half-way: the batch the lost
        // record had. No new batch until they are done.
        let p = policy(2, 1000, false);
        let mut r = all_old(5);
        r[0].instances = vec![running(NEW, 0)];
        r[1].instances = vec![running(NEW, 0)];
        r[2].instances = vec![running(OLD, 0), running(NEW, 9_500)];
        r[3].instances = vec![running(NEW, 9_600)];
        let mut rec = None;
        let s = run(&mut rec, &p, None, &r, 10_000);
        assert_eq!(batch(&rec), ["web-2", "web-3"]);
        assert!(s.transitions.is_empty());
        assert_eq!(
            actions(&s),
            of(&[
                ("web-0", Action::New),
                ("web-1", Action::New),
                ("web-2", Action::New),
                ("web-3", Action::New),
                ("web-4", Action::Hold),
            ])
        );
        assert_eq!((s.status.batch, s.status.healthy), (2, 2));
    }

    #[test]
    fn replicas_not_started_yet_keep_it_rolling() {
        let mut rec = None;
        let p = policy(10, 0, false);
        let mut r = all_old(2);
        for x in &mut r {
            x.instances.clear();
        }
        let s = run(&mut rec, &p, None, &r, 0);
        assert_eq!(s.status.state, "rolling", "nothing runs yet");
        assert!(s.transitions.is_empty());
        r[0].instances = vec![running(NEW, 0)];
        let s = run(&mut rec, &p, None, &r, 10);
        assert_eq!(s.status.state, "rolling", "web-1 is not up");
        r[1].instances = vec![running(NEW, 0)];
        let s = run(&mut rec, &p, None, &r, 20);
        assert_eq!(s.status.state, "rolled");
    }

    #[test]
    fn replicas_running_nothing_get_the_new_version_at_once() {
        let mut rec = None;
        let p = policy(1, 0, false);
        let mut r = all_old(3);
        r[2].instances.clear();
        let s = run(&mut rec, &p, None, &r, 0);
        assert_eq!(batch(&rec), ["web-0"]);
        assert_eq!(act(&s, "web-2"), Action::New);
        assert_eq!(act(&s, "web-1"), Action::Hold);
    }

    #[test]
    fn a_recorded_pause_or_revert_resumes_as_it_was() {
        let r = Record::resume(
            4,
            "web",
            "reverted: web-1 unhealthy: no READY within 3000 ms",
            9,
        )
        .unwrap();
        assert_eq!(
            r.phase,
            Phase::Reverted("web-1 unhealthy: no READY within 3000 ms".into())
        );
        assert_eq!((r.generation, r.batch.len()), (4, 0));
        let r = Record::resume(4, "web", "paused: web-0 failed", 9).unwrap();
        assert_eq!(r.phase, Phase::Paused("web-0 failed".into()));
        for other in [
            "rolled",
            "rolling web 2/3",
            "",
            "paused: db-0 failed",
            "paused: web-x failed",
        ] {
            assert_eq!(Record::resume(4, "web", other, 9), None, "{other}");
        }
        // Resumed reverted: the replicas back on the old version stay held.
        let mut rec = Record::resume(2, "web", "reverted: web-0 failed", 0);
        let s = run(&mut rec, &policy(2, 0, true), None, &all_old(3), 10);
        assert!(s.actions.values().all(|a| *a == Action::Hold), "{s:?}");
        assert_eq!(s.status.state, "reverted");
    }

    #[test]
    fn the_summary_line_names_what_is_not_rolled() {
        let st = |group: &str, state: &str, reason: &str| RolloutStatusView {
            group: group.into(),
            batch: 2,
            batches: 5,
            state: state.into(),
            reason: reason.into(),
            ..Default::default()
        };
        assert_eq!(summary([]), "");
        assert_eq!(summary([&st("web", "rolled", "")]), "rolled");
        assert_eq!(
            summary([&st("db", "rolled", ""), &st("web", "rolling", "")]),
            "rolling web 2/5"
        );
        assert_eq!(
            summary([&st(
                "web",
                "paused",
                "web-1 unhealthy: no READY within 30000 ms"
            )]),
            "paused: web-1 unhealthy: no READY within 30000 ms"
        );
        assert_eq!(
            summary([&st("a", "reverted", "a-0 failed"), &st("b", "rolling", "")]),
            "reverted: a-0 failed; rolling b 2/5"
        );
    }
}
