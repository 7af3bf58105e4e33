//! A guest that prints without end cannot fill the host's disk (issue 14
//! point 6, serial part): the real worker on ch-sim, whose guest is told
//! on its kernel command line to flood its serial console. The VM's
//! console files (CH's serial file and the worker's history) live apart
//! from its disk and stay within their bound on disk while the guest
//! writes many times that; `logs` shows the latest lines, reads across
//! the rotated file, and says where output was cut.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{start_worker, test_dir, write_spec};
use testkit::fixtures::spec_json;
use worker::rundir::TRUNCATED_MARK;

const HISTORY: u64 = 64 * 1024;

/// Bytes on disk and apparent length of the VM's console files.
fn console_use(console: &Path, id: &str) -> (u64, u64) {
    let mut blocks = 0;
    let mut serial_len = 0;
    for suffix in [
        "-serial.log",
        "-console.log",
        "-console.log.1",
        "-console.pos",
    ] {
        if let Ok(m) = std::fs::metadata(console.join(format!("{id}{suffix}"))) {
            blocks += m.blocks() * 512;
            if suffix == "-serial.log" {
                serial_len = m.len();
            }
        }
    }
    (blocks, serial_len)
}

fn tick_of(line: &str) -> u64 {
    line.strip_prefix("[sim] tick ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tick line: {line:?}"))
}

#[test]
fn a_flooding_guest_stays_within_its_console_bound() {
    let (dir, _reaper) = test_dir();
    let d = dir.path();
    let w = start_worker(d, &["--console-history-bytes", &HISTORY.to_string()], &[]);
    // 1000 lines every 5 ms: some 3 MB/s.
    let spec = spec_json(
        "flood",
        "console=ttyS0 ch_sim.tick_ms=5 ch_sim.tick_lines=1000",
    );
    let st = w.json(&["create-vm", "--spec", &write_spec(d, "flood.json", &spec)]);
    assert_eq!(st[0]["state"], "running", "{st}");
    let id = st[0]["id"].as_str().unwrap().to_owned();
    let console = d.join("run/console");
    assert!(console.join(format!("{id}-serial.log")).exists());
    assert!(
        !d.join("run/vm").join(format!("{id}-serial.log")).exists(),
        "the console is not where the disks are"
    );

    // Watch the disk use while the guest writes several MB.
    let start = Instant::now();
    let mut peak = 0;
    let mut written = 0;
    while start.elapsed() < Duration::from_secs(4) {
        let (on_disk, serial_len) = console_use(&console, &id);
        peak = peak.max(on_disk);
        written = written.max(serial_len);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Twice the history, plus what the guest writes between two of the
    // worker's syncs (250 ms at ~3 MB/s), with room for a loaded machine.
    let bound = 2 * HISTORY + 2 * 1024 * 1024;
    eprintln!("console: at most {peak} bytes on disk while the guest wrote {written}");
    assert!(
        peak <= bound,
        "console took {peak} bytes on disk (bound {bound})"
    );
    assert!(
        written > 2 * bound,
        "the guest wrote only {written} bytes: the test shows nothing"
    );

    // The latest lines, in order, and a flag that older ones exist.
    let tail = w.json(&["logs", &id, "-n", "5"]);
    let lines: Vec<&str> = tail["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{tail}");
    let first = tick_of(lines[0]);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(tick_of(l), first + i as u64, "{lines:?}");
    }
    assert!(first > 10_000, "the newest lines, not old ones: {lines:?}");
    assert_eq!(tail["truncated"], true);
    // Everything kept: both history files, no more than the bound, after a
    // line saying older output was dropped.
    let all = w.cli(&["logs", &id, "-n", "1000000"]).unwrap();
    assert!(
        all.starts_with(TRUNCATED_MARK),
        "no truncation marker: {}",
        &all[..all.len().min(200)]
    );
    assert!(
        all.len() as u64 <= 2 * HISTORY + 1024,
        "logs returned {} bytes",
        all.len()
    );
    let last = all.lines().last().unwrap();
    assert!(tick_of(last) >= first + 4, "{last}");

    assert_eq!(
        w.cli(&["delete-vm", &id]).unwrap(),
        format!("deleted VM {id}\n")
    );
    let left: Vec<_> = std::fs::read_dir(&console).unwrap().collect();
    assert!(left.is_empty(), "console files left: {left:?}");
    w.stop();
}
