//! The worker's `/metrics` on `--metrics-listen`, scraped from the real
//! binary (VMs on ch-sim) with a real HTTP client and parsed as
//! Prometheus text: creating a VM moves VMs-by-state and the create
//! latency histogram and brings its per-VM series, a boot the hypervisor
//! refuses counts as a CH API error, and a delete moves the delete
//! histogram and takes the VM's series away.

mod common;

use common::{start_worker, test_dir, write_spec};
use testkit::fixtures::spec_json;
use testkit::metrics::{has, scrape, series, value};

#[test]
fn vm_lifecycle_moves_the_worker_metrics() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let metrics_addr = testkit::fs::free_port();
    let w = start_worker(d, &["--metrics-listen", &metrics_addr.to_string()], &[]);
    let url = format!("http://{metrics_addr}/metrics");

    let before = scrape(&url);
    assert_eq!(
        value(&before, "procurator_worker_vms", &[("state", "running")]),
        0.0
    );
    assert_eq!(
        value(&before, "procurator_worker_vm_create_seconds_count", &[]),
        0.0
    );

    let spec = write_spec(d, "a.json", &spec_json("vm-a", "console=ttyS0"));
    let a = w.json(&["create-vm", "--spec", &spec]);
    let id = a[0]["id"].as_str().unwrap().to_owned();

    let up = scrape(&url);
    assert_eq!(
        value(&up, "procurator_worker_vms", &[("state", "running")]),
        1.0
    );
    assert_eq!(
        value(
            &up,
            "procurator_worker_vm_create_seconds_count",
            &[("outcome", "ok")]
        ),
        1.0
    );
    // The VM's own series, labelled with its id: ch-sim is a real process
    // with a resident set.
    let vm = [("vm_id", id.as_str()), ("name", "vm-a")];
    assert!(value(&up, "procurator_worker_vm_rss_bytes", &vm) > 0.0);
    assert!(has(&up, "procurator_worker_vm_cpu_seconds"));
    assert!(has(&up, "procurator_worker_vm_egress_dropped_packets"));
    assert_eq!(
        value(&up, "procurator_worker_ch_api_errors_total", &[]),
        0.0
    );

    // A VM whose hypervisor refuses to boot it: a CH API error of that step.
    let bad = write_spec(
        d,
        "bad.json",
        &spec_json("vm-bad", "ch_sim.fail=vm.boot:500"),
    );
    assert!(w.cli(&["create-vm", "--spec", &bad]).is_err());
    let failed = scrape(&url);
    assert_eq!(
        value(
            &failed,
            "procurator_worker_ch_api_errors_total",
            &[("step", "booting the VM")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &failed,
            "procurator_worker_vm_create_seconds_count",
            &[("outcome", "failed")]
        ),
        1.0
    );

    w.cli(&["delete-vm", &id]).unwrap();
    let gone = scrape(&url);
    assert_eq!(
        value(&gone, "procurator_worker_vms", &[("state", "running")]),
        0.0
    );
    assert_eq!(
        value(&gone, "procurator_worker_vm_delete_seconds_count", &[]),
        1.0
    );
    assert_eq!(series(&up, "procurator_worker_vm_rss_bytes", &vm), 1);
    assert_eq!(
        series(&gone, "procurator_worker_vm_rss_bytes", &vm),
        0,
        "a deleted VM's series go with it"
    );
    w.stop();
}
