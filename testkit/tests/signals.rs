//! A daemon stopped with SIGTERM right after it prints "listening on"
//! exits cleanly: signals are watched before the port is announced (a
//! SIGTERM in between used to kill the worker with the default action, and
//! a test that stopped it quickly saw "signal: 15"). The window was a few
//! microseconds, so this catches a regression only when a round hits it;
//! the guard is the order in each `main.rs`.

use std::time::Duration;

use testkit::services::{ControlPlaneArgs, WorkerArgs};
use testkit::{Log, Proc};

/// Starts `cmd` (waiting for its "listening on" line), stops it at once
/// with SIGTERM and expects a clean exit, `rounds` times.
fn stops_cleanly(name: &str, rounds: usize, cmd: impl Fn() -> std::process::Command) {
    for round in 0..rounds {
        let mut p = Proc::spawn(name, cmd(), Log::Quiet);
        let status = p
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{name} did not exit on SIGTERM (round {round})"));
        assert!(status.success(), "{name} round {round}: {status}");
    }
}

#[test]
fn a_sigterm_right_after_listening_is_a_clean_stop() {
    stops_cleanly("control_plane", 10, || {
        ControlPlaneArgs::default().command()
    });
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    stops_cleanly("worker", 10, || {
        WorkerArgs::new("host-a", &dir.path().join("run"), &store).command()
    });
}
