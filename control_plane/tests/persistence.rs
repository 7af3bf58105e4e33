//! History and events survive a control-plane restart (`--state-dir`),
//! with the real binaries: a control plane, two workers on ch-sim, real
//! tokens. After kill -9 and a start on the same state, without any
//! re-publish: `listGenerations` has the whole history with author,
//! message, job and converged time; the events recorded before are there
//! with their ids; the active generation is known, and after the startup
//! grace the cluster is converged with the same VM ids (nothing was
//! restarted). A state file that is not ours is refused and kept; a full
//! disk costs the unwritten change's persistence only, counted in /metrics.

use std::process::Command;
use std::time::Duration;

use commands::client::MasterClient;
use commands::model::{ClusterStatusView, EventView, PublishMeta, event_kind};
use commands::types::{ProjectName, VmSpec};
use testkit::cluster::{Cluster, ClusterOpts};
use testkit::fixtures::spec;
use testkit::process::Log;
use testkit::services::{ControlPlaneArgs, start_control_plane};
use testkit::{bin, wait_until};

const STEP: Duration = Duration::from_secs(30);

fn start(state_dir: &std::path::Path) -> Cluster {
    let dir = state_dir.display().to_string();
    Cluster::start(
        ClusterOpts::quick(&["w1", "w2"], &["--state-dir", &dir]),
        |_, real| real.to_owned(),
    )
}

fn with_admin<T>(c: &Cluster, f: impl AsyncFnOnce(&MasterClient) -> T) -> T {
    c.with_admin(f)
}

fn status(c: &Cluster) -> ClusterStatusView {
    with_admin(c, async |m| m.status().await.unwrap())
}

fn events(c: &Cluster) -> Vec<EventView> {
    with_admin(c, async |m| m.list_events(None, 0, 0).await.unwrap())
}

/// name → VM id once generation `n` runs everywhere.
fn converged(c: &Cluster, n: u64) -> Vec<(String, String)> {
    wait_until(STEP, &format!("generation {n} converged"), || {
        let s = status(c);
        let ok = s.active("default").is_some_and(|g| g.number == n)
            && s.convergence_percent == 100.0
            && s.vms.iter().all(|v| !v.vm_id.is_empty());
        ok.then(|| {
            s.vms
                .iter()
                .map(|v| (v.name.clone(), v.vm_id.clone()))
                .collect()
        })
    })
}

fn publish(c: &Cluster, n: u64, specs: &[VmSpec], author: &str) {
    let meta = PublishMeta {
        author: author.to_owned(),
        message: format!("change {n}"),
        job_id: 100 + n,
    };
    let intent = commands::types::intent_hash(specs);
    with_admin(c, async |m| {
        m.publish_with_meta(
            "default",
            &format!("{n:040x}"),
            n,
            &intent.hash.to_string(),
            specs,
            &meta,
        )
        .await
        .unwrap()
    });
}

/// Create and delete actions the workers' reconcilers logged so far.
fn count_actions(c: &Cluster) -> usize {
    ["w1", "w2"]
        .iter()
        .map(|id| {
            std::fs::read_to_string(c.log(id))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("reconcile: create") || l.contains("reconcile: delete"))
                .count()
        })
        .sum()
}

#[test]
fn history_events_and_the_active_generation_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let mut c = start(state.path());
    publish(&c, 1, &[spec("web-0", "a1"), spec("web-1", "a1")], "Ada");
    converged(&c, 1);
    publish(&c, 2, &[spec("web-0", "a2"), spec("web-1", "a1")], "Grace");
    let before = converged(&c, 2);
    // The convergence is recorded once the reports come in.
    let seen = wait_until(STEP, "generation 2 converged event", || {
        let ev = events(&c);
        ev.iter()
            .any(|e| e.kind == event_kind::GENERATION_CONVERGED && e.generation == 2)
            .then_some(ev)
    });
    for kind in [
        event_kind::WORKER_JOINED,
        event_kind::GENERATION_PUBLISHED,
        event_kind::VM_PLACED,
        event_kind::VM_REPLACED,
    ] {
        assert!(seen.iter().any(|e| e.kind == kind), "no {kind}: {seen:?}");
    }
    let replaced = seen
        .iter()
        .find(|e| e.kind == event_kind::VM_REPLACED)
        .unwrap();
    assert_eq!(replaced.vm, "web-0");
    assert_eq!(replaced.generation, 2);

    c.restart_cp(3000);
    // Before any worker reports, and without CI re-publishing: the history
    // (converged times included), the events and the active generation.
    let gens = with_admin(&c, async |m| m.generations(None).await.unwrap());
    let summary: Vec<(u64, &str, &str, u64)> = gens
        .iter()
        .map(|g| (g.number, g.author.as_str(), g.message.as_str(), g.job_id))
        .collect();
    assert_eq!(
        summary,
        [(1, "Ada", "change 1", 101), (2, "Grace", "change 2", 102)]
    );
    assert!(
        gens.iter()
            .all(|g| g.converged_at_ms >= g.published_at_ms && g.converged_at_ms > 0)
    );
    let after = events(&c);
    assert_eq!(
        &after[..seen.len()],
        &seen[..],
        "events before the restart changed"
    );
    assert_eq!(status(&c).active("default").map(|g| g.number), Some(2));
    let detail = with_admin(&c, async |m| {
        m.generation(&ProjectName::default(), 1).await.unwrap()
    });
    assert_eq!(
        detail
            .specs
            .iter()
            .map(|s| s.content_hash())
            .collect::<Vec<_>>(),
        ["a1", "a1"]
    );

    // After the grace (assignments handed out again and applied): still
    // converged on the same VMs, and no worker created or deleted one.
    let actions = count_actions(&c);
    assert!(actions >= 4, "the workers' logs show {actions} actions");
    wait_until(STEP, "the startup grace to end", || {
        std::fs::read_to_string(c.log("control_plane"))
            .unwrap_or_default()
            .contains("startup grace over")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        count_actions(&c),
        actions,
        "a worker acted after the restart"
    );
    let mut again = converged(&c, 2);
    let mut before = before;
    again.sort();
    before.sort();
    assert_eq!(again, before, "a VM was restarted");
    // CI's re-publish of the same intent is a no-op.
    let noop = with_admin(&c, async |m| {
        let specs = [spec("web-0", "a2"), spec("web-1", "a1")];
        let intent = commands::types::intent_hash(&specs);
        m.publish(
            "default",
            &format!("{:040x}", 2),
            2,
            &intent.hash.to_string(),
            &specs,
        )
        .await
        .unwrap()
    });
    assert!(noop.noop);
    let ids: Vec<u64> = events(&c).iter().map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
}

/// Another program's file in the state directory stops the start with the
/// file named, and is left byte for byte as it was.
#[test]
fn a_foreign_state_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.sqlite");
    let garbage = b"SQLite format 2? no: somebody's notes, not a database\n".repeat(100);
    std::fs::write(&file, &garbage).unwrap();
    let out = Command::new(bin("control_plane"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-auth",
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started on a foreign state file");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("not a database"), "{err}");
    assert!(err.contains("move it away"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), garbage);
}

/// A state file that cannot be written (its file system is full) costs
/// the persistence of that change only: the publish is accepted and
/// served from memory, the failure is logged and counted in /metrics, and
/// writes resume once there is room again.
#[test]
fn a_full_disk_is_counted_and_loses_nothing_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fs = testkit::fs::Tmpfs::mount(&dir.path().join("state"), "2m");
    let metrics = testkit::fs::free_port();
    let log = dir.path().join("cp.log");
    let args = ControlPlaneArgs {
        args: vec![
            "--state-dir".into(),
            fs.0.display().to_string(),
            "--metrics-listen".into(),
            metrics.to_string(),
        ],
        ..ControlPlaneArgs::default()
    };
    let mut cp = start_control_plane(&args, Log::File(log.clone()));
    let url = format!("http://{metrics}/metrics");
    let publish = |n: u64| {
        let addr = cp.addr.clone();
        commands::rpc::block_on_local(async move {
            let m = MasterClient::connect(&addr, Duration::from_secs(5))
                .await
                .unwrap();
            let specs: Vec<VmSpec> = (0..50)
                .map(|i| spec(&format!("web-{i}"), &format!("h{n}")))
                .collect();
            m.publish("default", &format!("c{n}"), n, &format!("i{n}"), &specs)
                .await
                .unwrap();
            let gens = m.generations(None).await.unwrap();
            m.close().await;
            gens.iter().map(|g| g.number).collect::<Vec<u64>>()
        })
    };
    let errors = || {
        testkit::metrics::value(
            &testkit::metrics::scrape(&url),
            "procurator_control_plane_store_errors_total",
            &[],
        )
    };
    assert_eq!(publish(1), [1]);
    assert_eq!(errors(), 0.0);
    let filler = fs.fill();
    // Accepted and served from memory, though not written.
    assert_eq!(publish(2), [1, 2]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        errors() >= 1.0,
        "the failed write was not counted: {text}\n{:?}",
        testkit::metrics::scrape(&url)
    );
    assert!(text.contains("state not persisted"), "{text}");
    std::fs::remove_file(filler).unwrap();
    let before = errors();
    assert_eq!(publish(3), [1, 2, 3]);
    assert_eq!(errors(), before, "writes did not resume");

    // After a restart only the unwritten generation is missing.
    cp.kill();
    let mut args = args;
    args.listen = cp.addr.clone();
    let cp = testkit::cluster::respawn("the control plane to restart", || {
        start_control_plane(&args, Log::File(log.clone()))
    });
    let gens = commands::rpc::block_on_local(async move {
        let m = MasterClient::connect(&cp.addr, Duration::from_secs(5))
            .await
            .unwrap();
        let g = m.generations(None).await.unwrap();
        m.close().await;
        g
    });
    assert_eq!(gens.iter().map(|g| g.number).collect::<Vec<_>>(), [1, 3]);
    drop(fs);
}
