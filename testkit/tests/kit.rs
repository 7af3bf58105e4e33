//! The test kit's own promises: a dropped guard leaves no process, a
//! timeout names what was awaited, /proc is read for a live process.

use std::process::Command;
use std::time::Duration;

use testkit::process::usage;
use testkit::{Log, Proc, alive, poll, wait_until};

#[test]
fn a_dropped_guard_stops_its_process() {
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let p = Proc::start("sleep", cmd, Log::Quiet);
    let pid = p.pid();
    assert!(alive(pid));
    drop(p);
    assert!(!alive(pid), "sleep {pid} outlived its guard");
}

#[test]
fn terminate_reports_the_exit() {
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let mut p = Proc::start("sleep", cmd, Log::Quiet);
    let st = p
        .terminate(Duration::from_secs(5))
        .expect("sleep exits on SIGTERM");
    assert!(!st.success());
}

#[test]
fn poll_gives_up_with_none_and_wait_until_names_what_it_awaited() {
    assert_eq!(poll(Duration::from_millis(20), || None::<()>), None);
    assert_eq!(poll(Duration::from_millis(20), || Some(7)), Some(7));
    let e = std::panic::catch_unwind(|| {
        wait_until(Duration::from_millis(20), "the moon to rise", || None::<()>)
    })
    .unwrap_err();
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("waiting for the moon to rise"), "{msg}");
}

#[test]
fn usage_reads_a_live_process() {
    let u = usage(std::process::id());
    assert!(u.rss_bytes > 0 && u.peak_rss_bytes >= u.rss_bytes, "{u:?}");
}
