//! The repohub binary as a service sees it: it prints `listening on ADDR`
//! on stdout (how scripts and testkit learn a port-0 address, as with the
//! other services) and its log, written to a file, carries no ANSI colour
//! codes even when `NO_COLOR` is not set (colour is for terminals only;
//! this is commands::telemetry, shared by every binary).

use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Log, Proc};

#[test]
fn repohub_says_where_it_listens_and_logs_plain_text_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("repohub.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_repohub"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        // Set (so testkit does not add NO_COLOR=1) but empty: colours
        // allowed, and still none, because stderr is a file.
        .env("NO_COLOR", "")
        .env("RUST_LOG", "info");
    let hub = Proc::spawn("repohub", cmd, Log::File(log.clone()));
    let addr: std::net::SocketAddr = hub.addr.parse().expect("an address after 'listening on'");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    // The address it printed answers.
    std::net::TcpStream::connect(addr).expect("repohub answers where it said");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("repohub listening") || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        text.contains("repohub listening"),
        "no startup line in:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in the log file:\n{text:?}"
    );
}
