//! Cap'n Proto conversions of the `Master` interface's structs (the views
//! of `crate::model`), in both directions: the server adapter encodes
//! replies and decodes requests with these, the typed client the reverse.

use crate::convert::{
    ConvertError, MAX_LIST, check_len, health_from_capnp, health_to_capnp, labels_from_capnp,
    labels_to_capnp, project_from_text, resources_from_capnp, resources_to_capnp, text,
    vm_metrics_from_capnp, vm_metrics_to_capnp, vm_spec_to_capnp, vm_specs_from_capnp,
    vm_state_from_capnp, vm_state_to_capnp, vm_status_from_capnp, vm_status_to_capnp,
};
use crate::model::{
    AssignmentView, ClusterStatusView, Drift, EventView, GenerationDetailView, GenerationView,
    Limits, ObservedVm, ProjectStatusView, PublishMeta, PublishOutcomeView, Registration,
    RolloutStatusView, UnplacedView, VmPlacementView, WorkerHealthView, WorkerMetricsView,
};
use crate::types::{VmKey, VmState};
use crate::{common_capnp, master_capnp};

// ---- to capnp -------------------------------------------------------------

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub fn generation_to_capnp(g: &GenerationView, mut b: common_capnp::generation::Builder<'_>) {
    b.set_project(&g.project);
    b.set_number(g.number);
    b.set_commit(&g.commit);
    b.set_intent_hash(&g.intent_hash);
    b.set_vm_count(g.vm_count);
    b.set_published_at_ms(g.published_at_ms);
    b.set_author(&g.author);
    b.set_message(&g.message);
    b.set_job_id(g.job_id);
    b.set_converged_at_ms(g.converged_at_ms);
    b.set_rollout(&g.rollout);
}

pub fn publish_meta_to_capnp(m: &PublishMeta, mut b: master_capnp::publish_meta::Builder<'_>) {
    b.set_author(&m.author);
    b.set_message(&m.message);
    b.set_job_id(m.job_id);
}

pub fn events_to_capnp(
    events: &[EventView],
    mut b: capnp::struct_list::Builder<'_, master_capnp::event::Owned>,
) {
    for (i, e) in events.iter().enumerate() {
        let mut x = b.reborrow().get(len32(i));
        x.set_id(e.id);
        x.set_at_ms(e.at_ms);
        x.set_project(&e.project);
        x.set_kind(&e.kind);
        x.set_vm(&e.vm);
        x.set_worker_id(&e.worker_id);
        x.set_generation(e.generation);
        x.set_message(&e.message);
    }
}

pub fn generation_detail_to_capnp(
    d: &GenerationDetailView,
    mut b: master_capnp::generation_detail::Builder<'_>,
) {
    generation_to_capnp(&d.generation, b.reborrow().init_generation());
    let mut l = b.init_vm_specs(len32(d.specs.len()));
    for (i, s) in d.specs.iter().enumerate() {
        vm_spec_to_capnp(s, l.reborrow().get(len32(i)));
    }
}

fn drift_to_capnp(d: Drift) -> master_capnp::Drift {
    match d {
        Drift::Converged => master_capnp::Drift::Converged,
        Drift::Pending => master_capnp::Drift::Pending,
        Drift::Drifted => master_capnp::Drift::Drifted,
        Drift::Orphaned => master_capnp::Drift::Orphaned,
        Drift::Failed => master_capnp::Drift::Failed,
    }
}

fn drift_from_capnp(d: master_capnp::Drift) -> Drift {
    match d {
        master_capnp::Drift::Converged => Drift::Converged,
        master_capnp::Drift::Pending => Drift::Pending,
        master_capnp::Drift::Drifted => Drift::Drifted,
        master_capnp::Drift::Orphaned => Drift::Orphaned,
        master_capnp::Drift::Failed => Drift::Failed,
    }
}

pub fn worker_metrics_to_capnp(
    m: &WorkerMetricsView,
    mut b: common_capnp::worker_metrics::Builder<'_>,
) {
    b.set_load_average(m.load_average);
    b.set_memory_used_mb(m.memory_used_mb);
    b.set_vm_count(m.vm_count);
}

pub fn worker_metrics_from_capnp(r: common_capnp::worker_metrics::Reader<'_>) -> WorkerMetricsView {
    WorkerMetricsView {
        load_average: r.get_load_average(),
        memory_used_mb: r.get_memory_used_mb(),
        vm_count: r.get_vm_count(),
    }
}

pub fn unplaced_to_capnp(
    u: &[UnplacedView],
    mut b: capnp::struct_list::Builder<'_, master_capnp::unplaced::Owned>,
) {
    for (i, x) in u.iter().enumerate() {
        let mut e = b.reborrow().get(len32(i));
        e.set_project(&x.project);
        e.set_name(&x.name);
        e.set_reason(&x.reason);
    }
}

fn unplaced_from_capnp(
    r: capnp::struct_list::Reader<'_, master_capnp::unplaced::Owned>,
) -> Result<Vec<UnplacedView>, ConvertError> {
    check_len(r.len(), MAX_LIST)?;
    r.iter()
        .map(|u| {
            Ok(UnplacedView {
                project: project_text(u.get_project())?,
                name: text(u.get_name())?,
                reason: text(u.get_reason())?,
            })
        })
        .collect()
}

pub fn status_to_capnp(s: &ClusterStatusView, mut b: master_capnp::cluster_status::Builder<'_>) {
    let mut gens = b.reborrow().init_generations(len32(s.generations.len()));
    for (i, g) in s.generations.iter().enumerate() {
        generation_to_capnp(g, gens.reborrow().get(len32(i)));
    }
    b.set_convergence_percent(s.convergence_percent);
    let mut vms = b.reborrow().init_vms(len32(s.vms.len()));
    for (i, v) in s.vms.iter().enumerate() {
        let mut e = vms.reborrow().get(len32(i));
        e.set_project(&v.project);
        e.set_name(&v.name);
        e.set_worker_id(&v.worker_id);
        e.set_desired_hash(&v.desired_hash);
        e.set_observed_hash(&v.observed_hash);
        e.set_state(vm_state_to_capnp(v.state.unwrap_or(VmState::Stopped)));
        e.set_drift(drift_to_capnp(v.drift));
        vm_metrics_to_capnp(&v.metrics, e.reborrow().init_metrics());
        e.set_vm_id(&v.vm_id);
        e.set_health(health_to_capnp(v.health));
        e.set_health_detail(&v.health_detail);
    }
    let mut ws = b.reborrow().init_workers(len32(s.workers.len()));
    for (i, w) in s.workers.iter().enumerate() {
        let mut e = ws.reborrow().get(len32(i));
        e.set_worker_id(&w.worker_id);
        e.set_address(&w.address);
        e.set_healthy(w.healthy);
        e.set_last_seen_ms_ago(w.last_seen_ms_ago);
        resources_to_capnp(w.capacity, e.reborrow().init_capacity());
        resources_to_capnp(w.allocated, e.reborrow().init_allocated());
        e.set_observed_generation(w.observed_generation);
        e.set_vm_count(w.vm_count);
        labels_to_capnp(&w.labels, e.reborrow().init_labels(len32(w.labels.len())));
        worker_metrics_to_capnp(&w.metrics, e.init_metrics());
    }
    unplaced_to_capnp(
        &s.unplaced,
        b.reborrow().init_unplaced(len32(s.unplaced.len())),
    );
    let mut rs = b.init_rollouts(len32(s.rollouts.len()));
    for (i, r) in s.rollouts.iter().enumerate() {
        let mut e = rs.reborrow().get(len32(i));
        e.set_project(&r.project);
        e.set_group(&r.group);
        e.set_generation(r.generation);
        e.set_batch(r.batch);
        e.set_batches(r.batches);
        e.set_healthy(r.healthy);
        e.set_total(r.total);
        e.set_state(&r.state);
        e.set_reason(&r.reason);
    }
}

fn rollouts_from_capnp(
    r: capnp::struct_list::Reader<'_, master_capnp::rollout_status::Owned>,
) -> Result<Vec<RolloutStatusView>, ConvertError> {
    check_len(r.len(), MAX_LIST)?;
    r.iter()
        .map(|e| {
            Ok(RolloutStatusView {
                project: project_text(e.get_project())?,
                group: text(e.get_group())?,
                generation: e.get_generation(),
                batch: e.get_batch(),
                batches: e.get_batches(),
                healthy: e.get_healthy(),
                total: e.get_total(),
                state: text(e.get_state())?,
                reason: text(e.get_reason())?,
            })
        })
        .collect()
}

pub fn assignment_to_capnp(a: &AssignmentView, mut b: master_capnp::assignment_reply::Builder<'_>) {
    b.set_changed(a.changed);
    b.set_revision(a.revision);
    let mut asg = b.init_assignment();
    asg.set_worker_id(&a.worker_id);
    asg.set_generation(a.generation);
    asg.set_commit(&a.commit);
    let mut vms = asg.reborrow().init_vms(len32(a.vms.len()));
    for (i, s) in a.vms.iter().enumerate() {
        vm_spec_to_capnp(s, vms.reborrow().get(len32(i)));
    }
    let mut hold = asg.init_hold(len32(a.hold.len()));
    for (i, k) in a.hold.iter().enumerate() {
        let mut e = hold.reborrow().get(len32(i));
        e.set_project(k.project.as_str());
        e.set_name(k.name.as_str());
    }
}

pub fn publish_outcome_to_capnp(
    o: &PublishOutcomeView,
    mut b: master_capnp::publish_outcome::Builder<'_>,
) {
    b.set_project(&o.project);
    b.set_generation(o.generation);
    b.set_noop(o.noop);
    b.set_placed(o.placed);
    unplaced_to_capnp(&o.unplaced, b.init_unplaced(len32(o.unplaced.len())));
}

pub fn limits_to_capnp(l: &Limits, mut b: master_capnp::limits::Builder<'_>) {
    b.set_cpu(l.cpu);
    b.set_memory_mb(l.memory_mb);
    b.set_vms(l.vms);
}

pub fn projects_to_capnp(
    ps: &[ProjectStatusView],
    mut b: capnp::struct_list::Builder<'_, master_capnp::project_status::Owned>,
) {
    for (i, p) in ps.iter().enumerate() {
        let mut e = b.reborrow().get(len32(i));
        e.set_project(&p.project);
        limits_to_capnp(&p.quota, e.reborrow().init_quota());
        limits_to_capnp(&p.usage, e.reborrow().init_usage());
        if let Some(g) = &p.generation {
            generation_to_capnp(g, e.reborrow().init_generation());
        }
        e.set_convergence_percent(p.convergence_percent);
        e.set_placed(p.placed);
        e.set_unplaced(p.unplaced);
        let mut live = e.init_live_generations(len32(p.live_generations.len()));
        for (j, n) in p.live_generations.iter().enumerate() {
            live.set(len32(j), *n);
        }
    }
}

// ---- from capnp -----------------------------------------------------------

/// A project name as text: checked, with "" (a peer or field from before
/// projects) read as the default project.
fn project_text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, ConvertError> {
    Ok(project_from_text(text(r)?)?.to_string())
}

fn limits_from_capnp(r: master_capnp::limits::Reader<'_>) -> Limits {
    Limits {
        cpu: r.get_cpu(),
        memory_mb: r.get_memory_mb(),
        vms: r.get_vms(),
    }
}

pub fn projects_from_capnp(
    r: capnp::struct_list::Reader<'_, master_capnp::project_status::Owned>,
) -> Result<Vec<ProjectStatusView>, ConvertError> {
    check_len(r.len(), MAX_LIST)?;
    r.iter()
        .map(|p| {
            let generation = if p.has_generation() {
                Some(generation_from_capnp(p.get_generation()?)?).filter(|g| g.number != 0)
            } else {
                None
            };
            Ok(ProjectStatusView {
                project: project_text(p.get_project())?,
                quota: limits_from_capnp(p.get_quota()?),
                usage: limits_from_capnp(p.get_usage()?),
                generation,
                convergence_percent: p.get_convergence_percent(),
                placed: p.get_placed(),
                unplaced: p.get_unplaced(),
                live_generations: {
                    let l = p.get_live_generations()?;
                    check_len(l.len(), MAX_LIST)?;
                    l.iter().collect()
                },
            })
        })
        .collect()
}

fn generation_from_capnp(
    r: common_capnp::generation::Reader<'_>,
) -> Result<GenerationView, ConvertError> {
    Ok(GenerationView {
        project: project_text(r.get_project())?,
        number: r.get_number(),
        commit: text(r.get_commit())?,
        intent_hash: text(r.get_intent_hash())?,
        vm_count: r.get_vm_count(),
        published_at_ms: r.get_published_at_ms(),
        author: text(r.get_author())?,
        message: text(r.get_message())?,
        job_id: r.get_job_id(),
        converged_at_ms: r.get_converged_at_ms(),
        rollout: text(r.get_rollout())?,
    })
}

pub fn publish_meta_from_capnp(
    r: master_capnp::publish_meta::Reader<'_>,
) -> Result<PublishMeta, ConvertError> {
    Ok(PublishMeta {
        author: text(r.get_author())?,
        message: text(r.get_message())?,
        job_id: r.get_job_id(),
    })
}

pub fn events_from_capnp(
    r: capnp::struct_list::Reader<'_, master_capnp::event::Owned>,
) -> Result<Vec<EventView>, ConvertError> {
    check_len(r.len(), MAX_LIST)?;
    r.iter()
        .map(|e| {
            Ok(EventView {
                id: e.get_id(),
                at_ms: e.get_at_ms(),
                project: text(e.get_project())?,
                kind: text(e.get_kind())?,
                vm: text(e.get_vm())?,
                worker_id: text(e.get_worker_id())?,
                generation: e.get_generation(),
                message: text(e.get_message())?,
            })
        })
        .collect()
}

pub fn generation_detail_from_capnp(
    r: master_capnp::generation_detail::Reader<'_>,
) -> Result<GenerationDetailView, ConvertError> {
    Ok(GenerationDetailView {
        generation: generation_from_capnp(r.get_generation()?)?,
        specs: vm_specs_from_capnp(r.get_vm_specs()?)?,
    })
}

pub fn generations_from_capnp(
    r: capnp::struct_list::Reader<'_, common_capnp::generation::Owned>,
) -> Result<Vec<GenerationView>, ConvertError> {
    check_len(r.len(), MAX_LIST)?;
    r.iter().map(generation_from_capnp).collect()
}

pub fn status_from_capnp(
    r: master_capnp::cluster_status::Reader<'_>,
) -> Result<ClusterStatusView, ConvertError> {
    let generations = generations_from_capnp(r.get_generations()?)?;
    let vms_r = r.get_vms()?;
    check_len(vms_r.len(), MAX_LIST)?;
    let mut vms = Vec::with_capacity(vms_r.len() as usize);
    for v in vms_r.iter() {
        let observed_hash = text(v.get_observed_hash())?;
        let state = if observed_hash.is_empty() {
            None
        } else {
            Some(vm_state_from_capnp(
                v.get_state().map_err(|e| ConvertError::UnknownEnum(e.0))?,
            ))
        };
        vms.push(VmPlacementView {
            project: project_text(v.get_project())?,
            name: text(v.get_name())?,
            worker_id: text(v.get_worker_id())?,
            desired_hash: text(v.get_desired_hash())?,
            observed_hash,
            state,
            drift: drift_from_capnp(v.get_drift().map_err(|e| ConvertError::UnknownEnum(e.0))?),
            metrics: vm_metrics_from_capnp(v.get_metrics()?),
            vm_id: text(v.get_vm_id())?,
            health: health_from_capnp(v.get_health().map_err(|e| ConvertError::UnknownEnum(e.0))?),
            health_detail: text(v.get_health_detail())?,
        });
    }
    let ws_r = r.get_workers()?;
    check_len(ws_r.len(), MAX_LIST)?;
    let mut workers = Vec::with_capacity(ws_r.len() as usize);
    for w in ws_r.iter() {
        workers.push(WorkerHealthView {
            worker_id: text(w.get_worker_id())?,
            address: text(w.get_address())?,
            healthy: w.get_healthy(),
            last_seen_ms_ago: w.get_last_seen_ms_ago(),
            capacity: resources_from_capnp(w.get_capacity()?),
            allocated: resources_from_capnp(w.get_allocated()?),
            observed_generation: w.get_observed_generation(),
            vm_count: w.get_vm_count(),
            labels: labels_from_capnp(w.get_labels()?)?,
            metrics: worker_metrics_from_capnp(w.get_metrics()?),
        });
    }
    Ok(ClusterStatusView {
        generations,
        convergence_percent: r.get_convergence_percent(),
        vms,
        workers,
        unplaced: unplaced_from_capnp(r.get_unplaced()?)?,
        rollouts: rollouts_from_capnp(r.get_rollouts()?)?,
    })
}

pub fn assignment_from_capnp(
    r: master_capnp::assignment_reply::Reader<'_>,
) -> Result<AssignmentView, ConvertError> {
    let a = r.get_assignment()?;
    Ok(AssignmentView {
        changed: r.get_changed(),
        revision: r.get_revision(),
        worker_id: text(a.get_worker_id())?,
        generation: a.get_generation(),
        commit: text(a.get_commit())?,
        vms: vm_specs_from_capnp(a.get_vms()?)?,
        hold: {
            let h = a.get_hold()?;
            check_len(h.len(), MAX_LIST)?;
            h.iter()
                .map(|e| {
                    Ok(VmKey::new(
                        project_text(e.get_project())?.parse()?,
                        text(e.get_name())?.parse()?,
                    ))
                })
                .collect::<Result<_, ConvertError>>()?
        },
    })
}

pub fn publish_outcome_from_capnp(
    r: master_capnp::publish_outcome::Reader<'_>,
) -> Result<PublishOutcomeView, ConvertError> {
    Ok(PublishOutcomeView {
        project: project_text(r.get_project())?,
        generation: r.get_generation(),
        noop: r.get_noop(),
        placed: r.get_placed(),
        unplaced: unplaced_from_capnp(r.get_unplaced()?)?,
    })
}

// ---- registration and reports ---------------------------------------------

pub fn registration_to_capnp(
    reg: &Registration,
    mut b: master_capnp::worker_registration::Builder<'_>,
) {
    b.set_worker_id(reg.worker_id.as_str());
    b.set_address(&reg.address);
    resources_to_capnp(reg.capacity, b.reborrow().init_capacity());
    labels_to_capnp(&reg.labels, b.init_labels(len32(reg.labels.len())));
}

pub fn running_vms_to_capnp(
    running: &[ObservedVm],
    mut b: capnp::struct_list::Builder<'_, common_capnp::running_vm::Owned>,
) {
    for (i, vm) in running.iter().enumerate() {
        let mut e = b.reborrow().get(len32(i));
        vm_status_to_capnp(&vm.status, e.reborrow().init_status());
        vm_metrics_to_capnp(&vm.metrics, e.init_metrics());
    }
}

/// Reads a worker's report, refusing more than `max` VMs before walking it.
pub fn running_vms_from_capnp(
    r: capnp::struct_list::Reader<'_, common_capnp::running_vm::Owned>,
    max: u32,
) -> Result<Vec<ObservedVm>, ConvertError> {
    check_len(r.len(), max)?;
    r.iter()
        .map(|vm| {
            Ok(ObservedVm {
                status: vm_status_from_capnp(vm.get_status()?)?,
                metrics: vm_metrics_from_capnp(vm.get_metrics()?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Health, VmId, VmMetrics, VmStatus};

    #[test]
    fn health_crosses_push_data_and_cluster_status() {
        let status = VmStatus {
            id: VmId::new_v7(),
            project: "shop".parse().unwrap(),
            name: "web-0".parse().unwrap(),
            content_hash: "h".into(),
            state: VmState::Running,
            pid: Some(9),
            error: String::new(),
            created_at_ms: 5,
            cpu: 1,
            memory_mb: 64,
            health: Health::Healthy,
            health_detail: String::new(),
            healthy_since_ms: Some(1_700_000_000_000),
        };
        let running = vec![ObservedVm {
            status: status.clone(),
            metrics: VmMetrics::default(),
        }];
        let mut msg = capnp::message::Builder::new_default();
        let list = msg
            .initn_root::<capnp::struct_list::Builder<'_, common_capnp::running_vm::Owned>>(len32(
                running.len(),
            ));
        running_vms_to_capnp(&running, list);
        let r = msg
            .get_root_as_reader::<capnp::struct_list::Reader<'_, common_capnp::running_vm::Owned>>()
            .unwrap();
        assert_eq!(running_vms_from_capnp(r, 10).unwrap(), running);

        let row = |health, detail: &str| VmPlacementView {
            project: "shop".into(),
            name: "web-0".into(),
            worker_id: "w-1".into(),
            desired_hash: "h".into(),
            observed_hash: "h".into(),
            state: Some(VmState::Running),
            drift: Drift::Converged,
            metrics: VmMetrics::default(),
            vm_id: status.id.to_string(),
            health,
            health_detail: detail.into(),
        };
        // From JSON, so that fields other views gain with a serde default
        // need no edit here.
        let mut s: ClusterStatusView = serde_json::from_value(serde_json::json!({
            "generations": [], "convergencePercent": 100.0, "vms": [], "workers": [],
            "unplaced": [],
        }))
        .unwrap();
        s.vms = vec![
            row(
                Health::Unhealthy,
                r#"no "READY" on the console within 500 ms"#,
            ),
            row(Health::Pending, ""),
        ];
        let mut msg = capnp::message::Builder::new_default();
        status_to_capnp(&s, msg.init_root());
        let r = msg
            .get_root_as_reader::<master_capnp::cluster_status::Reader<'_>>()
            .unwrap();
        assert_eq!(status_from_capnp(r).unwrap(), s);
    }
}
