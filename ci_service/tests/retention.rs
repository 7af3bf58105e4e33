//! Cache retention through the whole loop (real cache, control plane, two
//! workers on ch-sim, ci_service, git pushes): six generations published
//! by CI, a scheduled gc with `--keep-generations 2` asking the control
//! plane what still runs. A worker cut off after generation 1 keeps its
//! VMs running, so generation 1 stays live; generations 2–4 go, and the
//! real nix client pulls exactly the kept ones.

mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use common::cluster::status;
use support::*;
use testkit::wait::wait_until;

/// `cache pins` on the cluster's cache: (name, path) of every pin.
fn pins(c: &Cluster) -> Vec<(String, String)> {
    let out = Command::new(testkit::bin("cache"))
        .args(["pins", "--data-dir"])
        .arg(c.cache_data())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, p)| (n.to_owned(), p.to_owned()))
        .collect()
}

fn metric(cache: &str, name: &str) -> Option<u64> {
    let (_, body) = common::get(&format!("{cache}/metrics"));
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn retention_keeps_the_newest_generations_and_what_a_cut_off_worker_still_runs() {
    let mut c = start(vec![worker("host-a"), worker("host-b")], |_, cp| {
        cp.to_owned()
    });
    // db-0 changes in every generation: where generation 1's runs is cut
    // off (kill -9; its VMs keep running and its last report stands).
    let s = status(&c.cp.addr).unwrap();
    let host = s
        .vms
        .iter()
        .find(|v| v.name == "db-0")
        .map(|v| v.worker_id.clone())
        .unwrap();
    c.kill_worker(&host);
    for n in 2..=6 {
        let (generation, _) = c.push_and_converge(&format!("retention-{n}"));
        assert_eq!(generation, n);
    }
    let before = pins(&c);
    assert_eq!(before.len(), 6, "{before:?}");

    let cp = c.cp.addr.clone();
    c.restart_cache_with(&[
        "--gc-interval",
        "1s",
        "--gc-grace",
        "0s",
        "--keep-generations",
        "2",
        "--control-plane",
        &cp,
    ]);
    let cache = c.cache().url();
    wait_until(Duration::from_secs(30), "a scheduled gc", || {
        metric(&cache, "cache_gc_runs_total").filter(|n| *n >= 1)
    });
    assert_eq!(metric(&cache, "cache_gc_live_unknown_total"), Some(0));
    let kept: Vec<String> = pins(&c).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        kept,
        [
            "default/generation-1",
            "default/generation-5",
            "default/generation-6"
        ],
        "the newest two and the one the cut-off worker runs"
    );
    // The real nix client still pulls every kept closure from the cache;
    // a dropped generation's unique top is gone.
    let dst = tempfile::tempdir().unwrap();
    let pull = |path: &str| {
        Command::new("nix")
            .args([
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--from",
            ])
            .arg(&cache)
            .arg("--to")
            .arg(dst.path())
            .args(["--option", "trusted-public-keys", &c.public_key])
            .arg(path)
            .output()
            .unwrap()
    };
    for (name, path) in &before {
        let out = pull(path);
        assert_eq!(
            out.status.success(),
            kept.contains(name),
            "{name} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
