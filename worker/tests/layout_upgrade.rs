//! A worker upgraded across the run directory's split into `vm/` and
//! `console/` finds hypervisors of the old flat layout (socket at
//! `<run>/<id>.sock`). It cannot adopt them (their disk and serial file are
//! not where it looks), so it stops them and removes their files rather
//! than leave an orphan running beside the VM the reconciler recreates.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ch_sim, run_files, start_worker, test_dir};
use testkit::{Proc, alive, poll};
use worker::dto::{VmId, VmRecord};
use worker::rundir::RunDir;

#[test]
fn a_hypervisor_of_the_flat_layout_is_stopped_not_orphaned() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let rd = RunDir::open(&d.join("run")).unwrap();
    let id = VmId::new_v7();
    rd.write_record(&VmRecord {
        id: id.clone(),
        spec: testkit::fixtures::spec("old", "h"),
        created_at_ms: 1,
        worker_id: "e2e".parse().unwrap(),
    })
    .unwrap();
    let legacy = rd.legacy_socket(&id);
    let child = Command::new(ch_sim())
        .arg("--api-socket")
        .arg(format!("path={}", legacy.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let old = Proc::adopt("ch-sim", child);
    poll(Duration::from_secs(5), || legacy.exists().then_some(())).expect("old CH's socket");

    let w = start_worker(d, &[], &[]);
    poll(Duration::from_secs(10), || {
        (!alive(old.pid())).then_some(())
    })
    .expect("the old-layout hypervisor is stopped");
    assert!(w.list().is_empty(), "nothing adopted");
    let left = run_files(d);
    assert!(
        !left.iter().any(|f| f.starts_with(id.as_str())),
        "files of the old VM left: {left:?}"
    );
    w.stop();
}
