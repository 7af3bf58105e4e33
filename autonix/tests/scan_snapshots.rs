//! Snapshot tests: `autonix scan --json` of every fixture repository must
//! equal its reviewed snapshot in tests/snapshots/<fixture>.scan.json.
//! AUTONIX_UPDATE_SNAPSHOTS=1 rewrites them (review the diff before committing).

mod common;

use common::*;

#[test]
fn scan_json_matches_snapshots() {
    let mut failures = Vec::new();
    let fixtures = fixtures();
    assert!(fixtures.len() >= 8, "fixtures missing: {fixtures:?}");
    for name in fixtures {
        let (_tmp, dir) = fixture_copy(&name);
        let out = autonix(&["scan", "--json", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = String::from_utf8(out.stdout).unwrap();
        // The library entry point reports the same as the CLI.
        let lib = serde_json::to_string_pretty(&autonix::scan(&dir).unwrap()).unwrap() + "\n";
        assert_eq!(lib, json, "{name}: library and CLI disagree");
        if let Err(e) = check_snapshot(&format!("{name}.scan.json"), &json) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn scan_output_round_trips_through_serde() {
    let (_tmp, dir) = fixture_copy("rails-monorepo");
    let scan = autonix::scan(&dir).unwrap();
    let json = serde_json::to_string(&scan).unwrap();
    let back: autonix::Scan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, scan);
    let plan = autonix::plan(&scan);
    let back: autonix::Plan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
    assert_eq!(back, plan);
}
