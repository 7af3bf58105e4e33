//! The deterministic scheduler: a pure function of (desired specs of every
//! project, live workers with capacity and labels, previous placement,
//! project quotas) → placement plus the VMs that could not be placed, each
//! with a reason. VMs are keyed by (project, name): two projects' `web-0`
//! are two VMs.
//!
//! Determinism: the inputs are sorted before use (workers by id, VMs by
//! project, group, then name), every tie is broken by worker id, and
//! nothing reads a clock, a random source or a `HashMap`'s iteration order.
//! The same input gives the same output on any machine, whatever order the
//! slices come in.
//!
//! Tenancy: every project's kept VMs are placed before any project's new
//! ones, so a project never takes capacity another project's running VMs
//! hold; and a project's placed VMs never exceed its quota (VMs past it, in
//! name order, are unplaced with the numbers), even when capacity is free.
//!
//! Rules, in priority order:
//! 1. Stability: a VM that was placed on a worker that is still live, still
//!    satisfies the VM's label constraints and still has room keeps that
//!    worker (even if its content hash changed: the worker replaces it in
//!    place, and nothing else moves).
//! 2. Label constraints: a spec label `placement.<key>=<value>` requires the
//!    worker label `<key>=<value>`.
//! 3. Capacity: the cpu and memory of the VMs placed on a worker never exceed
//!    its capacity.
//! 4. Spread: among the workers that qualify, a VM goes to the one holding
//!    the fewest VMs of its group (its project's label `group`, default: the
//!    name without a trailing `-<digits>`), then the least loaded (highest
//!    of its cpu and memory fractions), then the lowest worker id.
//!
//! Cost: each VM is placed by walking the workers in (load, id) order kept
//! in a `BTreeSet`, stopping at the first one that qualifies with the
//! lowest group count any worker can have; in the usual case that is the
//! first or second worker, so placing N VMs is O(N log W).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use commands::model::Limits;
use commands::types::{Labels, ProjectName, Resources, VmKey, VmSpec, WorkerId};

/// Per-project limits; a project absent from the map has none.
pub type Quotas = BTreeMap<ProjectName, Limits>;

/// Spec label prefix for placement constraints: `placement.zone=a` means
/// "only on workers labelled `zone=a`".
pub const PLACEMENT_PREFIX: &str = "placement.";
/// Spec label naming the spread group explicitly.
pub const GROUP_LABEL: &str = "group";

/// A live worker as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot {
    pub id: WorkerId,
    pub capacity: Resources,
    pub labels: Labels,
}

/// The scheduler's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Where each placed VM goes.
    pub assigned: BTreeMap<VmKey, WorkerId>,
    /// VMs that could not be placed, with a one-line reason.
    pub unplaced: BTreeMap<VmKey, String>,
}

impl Placement {
    /// The VMs placed on `worker`, in (project, name) order.
    pub fn on_worker<'a>(&'a self, worker: &'a WorkerId) -> impl Iterator<Item = &'a VmKey> + 'a {
        self.assigned
            .iter()
            .filter(move |(_, w)| *w == worker)
            .map(|(n, _)| n)
    }
}

/// The spread group of a spec: its `group` label, or its name without a
/// trailing `-<digits>` (`web-0`, `web-1` → `web`).
pub fn group_of(spec: &VmSpec) -> &str {
    if let Some(g) = spec.labels().get(GROUP_LABEL) {
        return g;
    }
    let name = spec.name().as_str();
    match name.rsplit_once('-') {
        Some((base, digits))
            if !base.is_empty()
                && !digits.is_empty()
                && digits.bytes().all(|c| c.is_ascii_digit()) =>
        {
            base
        }
        _ => name,
    }
}

/// The (key, value) worker labels a spec requires, in key order.
pub fn constraints_of(spec: &VmSpec) -> impl Iterator<Item = (&str, &str)> {
    spec.labels().iter().filter_map(|(k, v)| {
        k.strip_prefix(PLACEMENT_PREFIX)
            .map(|key| (key, v.as_str()))
    })
}

fn satisfies(worker_labels: &Labels, spec: &VmSpec) -> bool {
    constraints_of(spec).all(|(k, v)| worker_labels.get(k).is_some_and(|wv| wv == v))
}

/// A spread group: the project and its group name.
type Group<'s> = (&'s str, &'s str);

fn group_key(spec: &VmSpec) -> Group<'_> {
    (spec.project(), group_of(spec))
}

/// Per-worker bookkeeping during one scheduling run.
struct Slot<'a> {
    worker: &'a WorkerSlot,
    used_cpu: u64,
    used_mem: u64,
}

impl Slot<'_> {
    fn fits(&self, spec: &VmSpec) -> bool {
        self.used_cpu + u64::from(spec.cpu()) <= u64::from(self.worker.capacity.cpu)
            && self.used_mem + spec.memory_mb() <= self.worker.capacity.memory_mb
    }

    fn take(&mut self, spec: &VmSpec) {
        self.used_cpu += u64::from(spec.cpu());
        self.used_mem += spec.memory_mb();
    }

    /// Load in millionths: the higher of the cpu and memory fractions used.
    /// Integer arithmetic so the ordering is exact on every machine.
    fn load(&self) -> u64 {
        let cap_cpu = u64::from(self.worker.capacity.cpu);
        let cap_mem = self.worker.capacity.memory_mb;
        if cap_cpu == 0 || cap_mem == 0 {
            return u64::MAX;
        }
        let cpu = self.used_cpu.saturating_mul(1_000_000) / cap_cpu;
        let mem = u64::try_from(u128::from(self.used_mem) * 1_000_000 / u128::from(cap_mem))
            .unwrap_or(u64::MAX);
        cpu.max(mem)
    }
}

/// Places `specs` on `workers`, keeping `previous` placements that still
/// qualify. `workers` must hold only live (healthy) workers; duplicate
/// worker ids or VM names are resolved by keeping the smallest by a full
/// sort key (callers validate uniqueness; this only keeps the function total).
///
/// The steps: sort both inputs, keep the stable placements (rule 1), then
/// place the rest one spread group at a time (rules 2 to 4), explaining
/// each VM no worker can take.
pub fn schedule(
    specs: &[VmSpec],
    workers: &[WorkerSlot],
    previous: &BTreeMap<VmKey, WorkerId>,
    quotas: &Quotas,
) -> Placement {
    schedule_with_held(specs, workers, previous, &BTreeMap::new(), quotas)
}

/// [`schedule`], knowing what each previously placed VM `held` (its cpu
/// and memory when it was placed): VMs that did not grow keep their worker
/// first, and a VM that grew in place only gets what is left. So a project
/// that enlarges its VMs can never push another project's unchanged VM off
/// its worker. Without `held` every kept VM competes in (project, name)
/// order.
pub fn schedule_with_held(
    specs: &[VmSpec],
    workers: &[WorkerSlot],
    previous: &BTreeMap<VmKey, WorkerId>,
    held: &BTreeMap<VmKey, Resources>,
    quotas: &Quotas,
) -> Placement {
    schedule_beside(specs, workers, &HashMap::new(), previous, held, quotas)
}

/// [`schedule_with_held`] for some VMs only, beside VMs that stay where
/// they are: `taken` is the cpu and memory those already use on each
/// worker. One project's republish places only its own VMs this way: the
/// others' placements are inputs, never outputs, so they cannot change.
/// Gives the same placement as a full run when every other VM would be kept
/// (unchanged specs on the same live workers) and none is unplaced.
pub fn schedule_beside(
    specs: &[VmSpec],
    workers: &[WorkerSlot],
    taken: &HashMap<WorkerId, Resources>,
    previous: &BTreeMap<VmKey, WorkerId>,
    held: &BTreeMap<VmKey, Resources>,
    quotas: &Quotas,
) -> Placement {
    let specs = sorted_specs(specs);
    let mut run = Run::new(sorted_workers(workers), quotas);
    for slot in &mut run.slots {
        if let Some(t) = taken.get(&slot.worker.id) {
            slot.used_cpu = u64::from(t.cpu);
            slot.used_mem = t.memory_mb;
        }
    }
    let kept = run.keep_stable(&specs, previous, held);
    run.place_pending(kept);
    run.out
}

/// The workers by id, one per id. Full-key sort, so even duplicates (which
/// callers never pass) come out the same whatever the input order.
fn sorted_workers(workers: &[WorkerSlot]) -> Vec<&WorkerSlot> {
    let mut sorted: Vec<&WorkerSlot> = workers.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.id, a.capacity.cpu, a.capacity.memory_mb, &a.labels).cmp(&(
            &b.id,
            b.capacity.cpu,
            b.capacity.memory_mb,
            &b.labels,
        ))
    });
    sorted.dedup_by(|a, b| a.id == b.id);
    sorted
}

/// The specs by (project, name), one per key, with the same full-key rule.
fn sorted_specs(specs: &[VmSpec]) -> Vec<&VmSpec> {
    let mut sorted: Vec<&VmSpec> = specs.iter().collect();
    sorted.sort_by(|a, b| {
        (
            a.project(),
            a.name(),
            a.cpu(),
            a.memory_mb(),
            a.labels(),
            a.content_hash(),
        )
            .cmp(&(
                b.project(),
                b.name(),
                b.cpu(),
                b.memory_mb(),
                b.labels(),
                b.content_hash(),
            ))
    });
    sorted.dedup_by(|a, b| a.project() == b.project() && a.name() == b.name());
    sorted
}

/// What the stability step leaves for the placement step.
struct Kept<'s> {
    /// The workers (slot indices) already holding each group, once per VM.
    by_group: BTreeMap<Group<'s>, Vec<usize>>,
    /// The VMs still to place, in name order.
    pending: Vec<&'s VmSpec>,
}

/// One scheduling run: the live workers with what they hold so far, and
/// the placement being built.
struct Run<'w> {
    slots: Vec<Slot<'w>>,
    out: Placement,
    quotas: &'w Quotas,
    /// What each limited project's placed VMs use so far.
    used: HashMap<&'w str, Limits>,
}

impl<'w> Run<'w> {
    fn new(workers: Vec<&'w WorkerSlot>, quotas: &'w Quotas) -> Self {
        let slots = workers
            .into_iter()
            .map(|worker| Slot {
                worker,
                used_cpu: 0,
                used_mem: 0,
            })
            .collect();
        Run {
            slots,
            out: Placement::default(),
            quotas,
            used: HashMap::new(),
        }
    }

    /// Puts `spec` on slot `i`.
    fn assign(&mut self, spec: &VmSpec, i: usize) {
        self.slots[i].take(spec);
        if let Some((p, _)) = self.quotas.get_key_value(spec.project()) {
            let u = self.used.entry(p.as_str()).or_default();
            *u = Limits::of([spec]).plus(u);
        }
        self.out
            .assigned
            .insert(spec.key(), self.slots[i].worker.id.clone());
    }

    /// Why `spec` would take its project past its quota, if it would.
    fn over_quota(&self, spec: &VmSpec) -> Option<String> {
        let quota = self.quotas.get(spec.project())?;
        let used = self.used.get(spec.project()).copied().unwrap_or_default();
        let with = Limits::of([spec]).plus(&used);
        (!with.within(quota)).then(|| {
            format!(
                "over the quota of project {}: placing it would use {with} of {quota}",
                spec.project()
            )
        })
    }

    /// Rule 1, stability: each VM whose previous worker is still live,
    /// still matches its labels and still has room stays there. Name order,
    /// so which of two kept VMs wins a worker that shrank is deterministic.
    fn keep_stable<'s>(
        &mut self,
        specs: &[&'s VmSpec],
        previous: &BTreeMap<VmKey, WorkerId>,
        held: &BTreeMap<VmKey, Resources>,
    ) -> Kept<'s> {
        let index_of: HashMap<&WorkerId, usize> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (&s.worker.id, i))
            .collect();
        let mut kept = Kept {
            by_group: BTreeMap::new(),
            pending: Vec::new(),
        };
        // Two passes: what did not grow first (it fits where it held room
        // before), then what grew or is of unknown size.
        // (An empty map is not searched: a fresh placement allocates no key.)
        let grew = |spec: &VmSpec| {
            held.is_empty()
                || held
                    .get(&spec.key())
                    .is_none_or(|h| spec.cpu() > h.cpu || spec.memory_mb() > h.memory_mb)
        };
        let (first, second): (Vec<&'s VmSpec>, Vec<&'s VmSpec>) =
            specs.iter().partition(|s| !grew(s));
        for spec in first.into_iter().chain(second) {
            if let Some(why) = self.over_quota(spec) {
                self.out.unplaced.insert(spec.key(), why);
                continue;
            }
            let keep = (!previous.is_empty())
                .then(|| previous.get(&spec.key()))
                .flatten()
                .and_then(|w| index_of.get(w).copied())
                .filter(|&i| {
                    satisfies(&self.slots[i].worker.labels, spec) && self.slots[i].fits(spec)
                });
            match keep {
                Some(i) => {
                    self.assign(spec, i);
                    kept.by_group.entry(group_key(spec)).or_default().push(i);
                }
                None => kept.pending.push(spec),
            }
        }
        kept
    }

    /// Rules 2 to 4 for everything not kept, one spread group at a time;
    /// a VM no worker can take is reported with the reason.
    fn place_pending(&mut self, kept: Kept<'_>) {
        let Kept {
            by_group,
            mut pending,
        } = kept;
        pending.sort_by(|a, b| {
            group_key(a)
                .cmp(&group_key(b))
                .then_with(|| a.name().cmp(b.name()))
        });
        let mut by_load: BTreeSet<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.load(), i))
            .collect();
        for group in pending.chunk_by(|a, b| group_key(a) == group_key(b)) {
            let kept_here = by_group
                .get(&group_key(group[0]))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut spread = Spread::new(kept_here, self.slots.len());
            for spec in group {
                if let Some(why) = self.over_quota(spec) {
                    self.out.unplaced.insert(spec.key(), why);
                    continue;
                }
                match self.best_worker(spec, &by_load, &spread) {
                    Some(Choice { count, load, slot }) => {
                        by_load.remove(&(load, slot));
                        self.assign(spec, slot);
                        by_load.insert((self.slots[slot].load(), slot));
                        spread.add(slot, count);
                    }
                    None => {
                        self.out
                            .unplaced
                            .insert(spec.key(), unplaced_reason(spec, &self.slots));
                    }
                }
            }
        }
    }

    /// The qualifying worker with the fewest VMs of the group, then the
    /// least load, then the lowest id. Walks the workers in (load, id)
    /// order and stops at the first qualifying one holding the group's
    /// `floor`: no worker can beat it.
    fn best_worker(
        &self,
        spec: &VmSpec,
        by_load: &BTreeSet<(u64, usize)>,
        spread: &Spread,
    ) -> Option<Choice> {
        let floor = spread.floor();
        let mut best: Option<Choice> = None;
        for &(load, i) in by_load {
            let count = spread.count(i);
            if best.is_some_and(|b| b.count <= count) {
                continue;
            }
            if !self.slots[i].fits(spec) || !satisfies(&self.slots[i].worker.labels, spec) {
                continue;
            }
            best = Some(Choice {
                count,
                load,
                slot: i,
            });
            if count == floor {
                break;
            }
        }
        best
    }
}

/// The worker picked for one VM, with the keys it was picked by.
#[derive(Debug, Clone, Copy)]
struct Choice {
    /// VMs of the group it held before this one.
    count: u32,
    /// Its load before this one, as kept in the (load, slot) order.
    load: u64,
    slot: usize,
}

/// How many VMs of one group each worker holds, and how many workers hold
/// each count (`hist[c]`); a worker absent from `count` holds none. The
/// lowest count any worker has is the `floor`: a qualifying worker with
/// that count cannot be beaten.
struct Spread {
    count: HashMap<usize, u32>,
    hist: BTreeMap<u32, usize>,
}

impl Spread {
    /// The group's spread after the stability step: `kept` holds a slot
    /// once per kept VM, out of `workers` slots.
    fn new(kept: &[usize], workers: usize) -> Self {
        let mut count: HashMap<usize, u32> = HashMap::new();
        for &i in kept {
            *count.entry(i).or_default() += 1;
        }
        let mut hist: BTreeMap<u32, usize> = BTreeMap::new();
        for &c in count.values() {
            *hist.entry(c).or_default() += 1;
        }
        let zero = workers - count.len();
        if zero > 0 {
            hist.insert(0, zero);
        }
        Spread { count, hist }
    }

    fn floor(&self) -> u32 {
        self.hist.keys().next().copied().unwrap_or(0)
    }

    fn count(&self, slot: usize) -> u32 {
        self.count.get(&slot).copied().unwrap_or(0)
    }

    /// One more VM of the group on `slot`, which held `was`.
    fn add(&mut self, slot: usize, was: u32) {
        self.count.insert(slot, was + 1);
        if let Some(n) = self.hist.get_mut(&was) {
            *n -= 1;
            if *n == 0 {
                self.hist.remove(&was);
            }
        }
        *self.hist.entry(was + 1).or_default() += 1;
    }
}

/// Why no worker qualified, naming the constraint or the shortfall.
fn unplaced_reason(spec: &VmSpec, slots: &[Slot<'_>]) -> String {
    if slots.is_empty() {
        return "no healthy workers".to_owned();
    }
    let matching: Vec<&Slot<'_>> = slots
        .iter()
        .filter(|s| satisfies(&s.worker.labels, spec))
        .collect();
    if matching.is_empty() {
        let wanted: Vec<String> = constraints_of(spec)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return format!("no healthy worker has labels {}", wanted.join(","));
    }
    // The most free cpu and memory on any single qualifying worker.
    let free_cpu = matching
        .iter()
        .map(|s| u64::from(s.worker.capacity.cpu).saturating_sub(s.used_cpu))
        .max()
        .unwrap_or(0);
    let free_mem = matching
        .iter()
        .map(|s| s.worker.capacity.memory_mb.saturating_sub(s.used_mem))
        .max()
        .unwrap_or(0);
    format!(
        "insufficient capacity: needs {} cpu and {} MiB; the most free on a matching worker is {free_cpu} cpu and {free_mem} MiB ({} matching workers)",
        spec.cpu(),
        spec.memory_mb(),
        matching.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::types::VmSpecFields;
    use proptest::prelude::*;

    fn spec(name: &str, cpu: u32, mem: u64, labels: &[(&str, &str)]) -> VmSpec {
        VmSpec::new(VmSpecFields {
            name: name.into(),
            toplevel: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys".into(),
            kernel_path: "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel".into(),
            cpu,
            memory_mb: mem,
            content_hash: format!("h-{name}"),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        })
        .unwrap()
    }

    /// `n` one-core 128 MiB VMs `group-0` … `group-(n-1)`.
    fn small_vms(group: &str, n: usize) -> Vec<VmSpec> {
        (0..n)
            .map(|i| spec(&format!("{group}-{i}"), 1, 128, &[]))
            .collect()
    }

    /// Unlabelled workers `a`, `b` and `c` of 8 cores and 8 GiB each.
    fn workers_abc() -> [WorkerSlot; 3] {
        ["a", "b", "c"].map(|id| worker(id, 8, 8192, &[]))
    }

    fn worker(id: &str, cpu: u32, mem: u64, labels: &[(&str, &str)]) -> WorkerSlot {
        WorkerSlot {
            id: id.parse().unwrap(),
            capacity: Resources {
                cpu,
                memory_mb: mem,
            },
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// The key of VM `s` of the default project.
    fn name(s: &str) -> VmKey {
        VmKey::new(ProjectName::default(), s.parse().unwrap())
    }

    #[test]
    fn groups_come_from_label_or_name_suffix() {
        assert_eq!(group_of(&spec("web-12", 1, 1, &[])), "web");
        assert_eq!(group_of(&spec("web-a", 1, 1, &[])), "web-a");
        assert_eq!(group_of(&spec("db", 1, 1, &[])), "db");
        assert_eq!(group_of(&spec("x-1", 1, 1, &[("group", "g")])), "g");
    }

    #[test]
    fn replicas_spread_across_workers() {
        let specs = small_vms("web", 3);
        let workers = workers_abc();
        let p = schedule(&specs, &workers, &BTreeMap::new(), &Quotas::new());
        let used: BTreeSet<&WorkerId> = p.assigned.values().collect();
        assert_eq!(used.len(), 3, "{p:?}");
        assert!(p.unplaced.is_empty());
    }

    #[test]
    fn label_constraints_are_honoured_and_explained() {
        let specs = [
            spec("db-0", 1, 128, &[("placement.disk", "ssd")]),
            spec("gpu-0", 1, 128, &[("placement.gpu", "yes")]),
        ];
        let workers = [
            worker("a", 8, 8192, &[]),
            worker("b", 8, 8192, &[("disk", "ssd")]),
        ];
        let p = schedule(&specs, &workers, &BTreeMap::new(), &Quotas::new());
        assert_eq!(
            p.assigned.get(&name("db-0")).map(WorkerId::as_str),
            Some("b")
        );
        assert_eq!(
            p.unplaced.get(&name("gpu-0")).map(String::as_str),
            Some("no healthy worker has labels gpu=yes")
        );
    }

    #[test]
    fn capacity_shortfall_is_explained() {
        let specs = [spec("big", 16, 128, &[])];
        let p = schedule(
            &specs,
            &[worker("a", 4, 8192, &[])],
            &BTreeMap::new(),
            &Quotas::new(),
        );
        let why = p.unplaced.get(&name("big")).unwrap();
        assert!(
            why.starts_with("insufficient capacity: needs 16 cpu"),
            "{why}"
        );
        let p = schedule(&specs, &[], &BTreeMap::new(), &Quotas::new());
        assert_eq!(p.unplaced.get(&name("big")).unwrap(), "no healthy workers");
    }

    #[test]
    fn vms_of_a_dead_worker_move_and_others_stay() {
        let specs = small_vms("app", 6);
        let all = workers_abc();
        let first = schedule(&specs, &all, &BTreeMap::new(), &Quotas::new());
        let second = schedule(&specs, &all[..2], &first.assigned, &Quotas::new());
        for (vm, w) in &first.assigned {
            if w.as_str() != "c" {
                assert_eq!(second.assigned.get(vm), Some(w), "{vm} moved");
            } else {
                assert_ne!(second.assigned.get(vm).map(WorkerId::as_str), Some("c"));
            }
        }
        assert_eq!(second.assigned.len(), 6);
    }

    fn arb_case() -> impl Strategy<Value = (Vec<VmSpec>, Vec<WorkerSlot>)> {
        let specs = prop::collection::vec(
            (0u8..6, 0u16..40, 1u32..5, 1u64..2048, prop::bool::ANY),
            0..60,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(g, n, cpu, mem, zoned)| {
                    let labels: &[(&str, &str)] = if zoned {
                        &[("placement.zone", "a")]
                    } else {
                        &[]
                    };
                    spec(&format!("g{g}-{n}"), cpu, mem, labels)
                })
                .collect::<Vec<_>>()
        });
        let workers =
            prop::collection::vec((0u8..30, 0u32..16, 0u64..8192, prop::bool::ANY), 0..12)
                .prop_map(|v| {
                    v.into_iter()
                        .map(|(id, cpu, mem, zone_a)| {
                            let labels: &[(&str, &str)] = if zone_a {
                                &[("zone", "a")]
                            } else {
                                &[("zone", "b")]
                            };
                            worker(&format!("w{id}"), cpu, mem, labels)
                        })
                        // Unique ids, as the control plane guarantees.
                        .fold(Vec::<WorkerSlot>::new(), |mut acc, w| {
                            if !acc.iter().any(|x| x.id == w.id) {
                                acc.push(w);
                            }
                            acc
                        })
                });
        (specs, workers)
    }

    fn dedup_specs(mut specs: Vec<VmSpec>) -> Vec<VmSpec> {
        specs.sort_by(|a, b| a.name().cmp(b.name()));
        specs.dedup_by(|a, b| a.name() == b.name());
        specs
    }

    proptest! {
        #[test]
        fn deterministic_whatever_the_input_order((specs, workers) in arb_case(), seed in 0usize..1000) {
            let a = schedule(&specs, &workers, &BTreeMap::new(), &Quotas::new());
            let mut specs2 = specs.clone();
            let mut workers2 = workers.clone();
            let n = specs2.len().max(1);
            specs2.rotate_left(seed % n);
            specs2.reverse();
            workers2.reverse();
            let b = schedule(&specs2, &workers2, &BTreeMap::new(), &Quotas::new());
            prop_assert_eq!(&a, &b);
            // And with a previous placement as input.
            prop_assert_eq!(schedule(&specs, &workers, &a.assigned, &Quotas::new()), schedule(&specs2, &workers2, &a.assigned, &Quotas::new()));
        }

        #[test]
        fn capacity_and_constraints_never_violated((specs, workers) in arb_case(), prev_seed in 0u8..30) {
            // A hostile previous placement: everything on one worker.
            let w = format!("w{prev_seed}").parse::<WorkerId>().unwrap();
            let previous: BTreeMap<VmKey, WorkerId> = specs.iter().map(|s| (s.key(), w.clone())).collect();
            let specs = dedup_specs(specs);
            let p = schedule(&specs, &workers, &previous, &Quotas::new());
            let mut first: BTreeMap<&WorkerId, &WorkerSlot> = BTreeMap::new();
            for w in &workers { first.entry(&w.id).or_insert(w); }
            let mut used: BTreeMap<&WorkerId, (u64, u64)> = BTreeMap::new();
            for s in &specs {
                let placed = p.assigned.get(&s.key());
                prop_assert!(placed.is_some() != p.unplaced.contains_key(&s.key()), "{} both or neither", s.name());
                if let Some(wid) = placed {
                    let slot = first[wid];
                    prop_assert!(satisfies(&slot.labels, s));
                    let u = used.entry(wid).or_default();
                    u.0 += u64::from(s.cpu());
                    u.1 += s.memory_mb();
                }
            }
            for (wid, (cpu, mem)) in used {
                let cap = first[wid].capacity;
                prop_assert!(cpu <= u64::from(cap.cpu) && mem <= cap.memory_mb, "{wid} over capacity");
            }
        }

        #[test]
        fn stable_under_unrelated_changes((specs, workers) in arb_case(), extra_mem in 1u64..512) {
            let specs = dedup_specs(specs);
            let first = schedule(&specs, &workers, &BTreeMap::new(), &Quotas::new());
            // An unrelated VM is added and another one's spec changes.
            let mut changed = specs.clone();
            changed.push(spec("unrelated-new", 1, extra_mem, &[]));
            if let Some(s) = changed.first_mut() {
                let mut f = s.to_fields();
                f.content_hash = "changed".into();
                *s = VmSpec::new(f).unwrap();
            }
            let second = schedule(&changed, &workers, &first.assigned, &Quotas::new());
            for (vm, w) in &first.assigned {
                prop_assert_eq!(second.assigned.get(vm), Some(w), "{} moved", vm);
            }
        }

        #[test]
        fn projects_and_quotas_hold((specs, workers) in arb_projects_case(), quota_seed in prop::collection::vec((1u32..12, 1u64..8192, 1u32..8), 3), seed in 0usize..1000) {
            let quotas: Quotas = quota_seed
                .iter()
                .enumerate()
                .take(2) // p2 stays unlimited
                .map(|(i, (cpu, mem, vms))| {
                    (format!("p{i}").parse().unwrap(), Limits { cpu: *cpu, memory_mb: *mem, vms: *vms })
                })
                .collect();
            let p = schedule(&specs, &workers, &BTreeMap::new(), &quotas);
            // Deterministic whatever the order.
            let mut shuffled = specs.clone();
            let n = shuffled.len().max(1);
            shuffled.rotate_left(seed % n);
            shuffled.reverse();
            let mut ws = workers.clone();
            ws.reverse();
            prop_assert_eq!(&p, &schedule(&shuffled, &ws, &BTreeMap::new(), &quotas));
            // Every key once, placed or not; quotas and capacity hold.
            let mut used: BTreeMap<&str, Limits> = BTreeMap::new();
            let mut on: BTreeMap<&WorkerId, (u64, u64)> = BTreeMap::new();
            // The spec the scheduler keeps of a duplicated key: the first in its order.
            let unique: BTreeMap<VmKey, &VmSpec> =
                sorted_specs(&specs).into_iter().map(|s| (s.key(), s)).collect();
            for (k, s) in &unique {
                let placed = p.assigned.get(k);
                prop_assert!(placed.is_some() != p.unplaced.contains_key(k), "{} both or neither", k);
                if let Some(w) = placed {
                    let u = used.entry(s.project()).or_default();
                    *u = Limits::of([*s]).plus(u);
                    let c = on.entry(w).or_default();
                    c.0 += u64::from(s.cpu());
                    c.1 += s.memory_mb();
                }
            }
            for (proj, u) in &used {
                if let Some(q) = quotas.get(*proj) {
                    prop_assert!(u.within(q), "{proj} uses {u}, over {q}");
                }
            }
            for (w, (cpu, mem)) in on {
                let cap = workers.iter().find(|x| &x.id == w).unwrap().capacity;
                prop_assert!(cpu <= u64::from(cap.cpu) && mem <= cap.memory_mb, "{w} over capacity");
            }
        }

        /// Whatever one project publishes (changes, additions, removals),
        /// no VM of another project moves.
        #[test]
        fn a_project_never_moves_another_projects_vms((specs, workers) in arb_projects_case(), extra in prop::collection::vec((0u16..20, 1u32..4, 1u64..2048), 0..20), drop_every in 1usize..5) {
            let first = schedule(&specs, &workers, &BTreeMap::new(), &Quotas::new());
            let mut changed: Vec<VmSpec> = specs
                .iter()
                .enumerate()
                .filter(|(i, s)| s.project() != "p0" || i % drop_every != 0)
                .map(|(_, s)| s.clone())
                .collect();
            for (n, cpu, mem) in extra {
                changed.push(spec(&format!("new-{n}"), cpu, mem, &[]).with_project("p0".parse().unwrap()));
            }
            // What each VM held: its size in the first run (the scheduler
            // keeps the smallest spec of a duplicated key).
            let mut held: BTreeMap<VmKey, Resources> = BTreeMap::new();
            for s in sorted_specs(&specs) {
                held.entry(s.key()).or_insert(Resources { cpu: s.cpu(), memory_mb: s.memory_mb() });
            }
            let second = schedule_with_held(&changed, &workers, &first.assigned, &held, &Quotas::new());
            for (vm, w) in first.assigned.iter().filter(|(k, _)| k.project.as_str() != "p0") {
                prop_assert_eq!(second.assigned.get(vm), Some(w), "{} moved", vm);
            }
        }
    }

    /// Specs of projects p0, p1 and p2 whose names collide across projects.
    fn arb_projects_case() -> impl Strategy<Value = (Vec<VmSpec>, Vec<WorkerSlot>)> {
        let specs = prop::collection::vec((0u8..3, 0u8..4, 0u16..10, 1u32..5, 1u64..2048), 0..60)
            .prop_map(|v| {
                v.into_iter()
                    .map(|(p, g, n, cpu, mem)| {
                        spec(&format!("g{g}-{n}"), cpu, mem, &[])
                            .with_project(format!("p{p}").parse().unwrap())
                    })
                    .collect::<Vec<_>>()
            });
        let workers = prop::collection::btree_set(0u8..30, 0..10)
            .prop_flat_map(|ids| {
                let n = ids.len();
                (Just(ids), prop::collection::vec((0u32..16, 0u64..8192), n))
            })
            .prop_map(|(ids, caps)| {
                ids.into_iter()
                    .zip(caps)
                    .map(|(id, (cpu, mem))| worker(&format!("w{id}"), cpu, mem, &[]))
                    .collect::<Vec<_>>()
            });
        (specs, workers)
    }

    #[test]
    fn ties_break_by_project_then_name() {
        // One slot of room: the first of (project, name) order wins it.
        let specs = [
            spec("web-0", 1, 128, &[]).with_project("b".parse().unwrap()),
            spec("web-0", 1, 128, &[]).with_project("a".parse().unwrap()),
            spec("app-0", 1, 128, &[]).with_project("b".parse().unwrap()),
        ];
        let p = schedule(
            &specs,
            &[worker("w", 1, 8192, &[])],
            &BTreeMap::new(),
            &Quotas::new(),
        );
        let placed: Vec<String> = p.assigned.keys().map(ToString::to_string).collect();
        assert_eq!(placed, ["a/web-0"]);
        let unplaced: Vec<String> = p.unplaced.keys().map(ToString::to_string).collect();
        assert_eq!(unplaced, ["b/app-0", "b/web-0"]);
    }
}
