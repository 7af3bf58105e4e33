//! The whole GitOps loop with every real binary: cache, control_plane, two
//! workers running ch-sim with their own nix store roots, ci_service, and
//! a real `git push` through the post-receive hook. Covers: push → job
//! succeeds → closures in the cache → generation 1 active → each host's
//! store holds its VMs' closures → every VM running; a one-VM change
//! replaces only that VM; evaluation and build failures change nothing;
//! a restarted control plane gets its generation back from ci_service with
//! zero VM restarts; ci_service killed mid-build resumes the job after a
//! restart and the generation converges.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::cluster::*;
use common::*;

fn narinfo_status(cache: &str, store_path: &str) -> u16 {
    let hash = &store_path["/nix/store/".len().."/nix/store/".len() + 32];
    get(&format!("{cache}/{hash}.narinfo")).0.as_u16()
}

fn spec_roots(job: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    job["vmSpecs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let spec: commands::types::VmSpec = serde_json::from_value(s.clone()).unwrap();
            (
                spec.name().to_string(),
                spec.store_roots().into_iter().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// The paths among `paths` that are not valid (registered in nix's
/// database, not merely present as files) in the store rooted at `root`.
fn invalid_in_store(
    h: &repo_outils::testing::HermeticNix,
    root: &Path,
    paths: &[String],
) -> Vec<String> {
    let nix = h.nix().with_store_root(root);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(nix.missing_paths(paths)).unwrap()
}

#[test]
fn push_to_running_vms_and_back() {
    // The VMs' CH processes outlive their workers by design: the cluster
    // kills them when the test ends.
    let c = start();
    let ci = c.ci_url();
    let cp = c.cp.addr.clone();
    let repo = Repo::new(c.h.dir(), &ci);
    assert!(!c.public_key.is_empty());

    // 1. Push the hermetic example: job succeeds, generation 1.
    let (c1, hook_out) = repo.push();
    assert!(hook_out.contains("queued"), "{hook_out}");
    let id = job_for(&ci, &c1);
    let job = wait_job(&ci, id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
    assert_eq!(job["generation"], 1);
    let text = log(&ci, id);
    assert!(
        text.contains("control plane accepted generation 1"),
        "{text}"
    );

    // 2. Every path the VMs boot is in our cache (signed narinfo served).
    let roots = spec_roots(&job);
    for paths in roots.values() {
        for p in paths {
            assert_eq!(
                narinfo_status(&c.cache().url(), p),
                200,
                "{p} not in the cache"
            );
        }
    }

    // 2b. Pinned per project, and the build logs of what CI built are in
    // the cache: served at /log/<deriver> and read by the real `nix log`.
    let cache_url = c.cache().url();
    let pins = request(
        http::Method::GET,
        &format!("{cache_url}/_pcr/pins"),
        &[(
            http::header::AUTHORIZATION,
            commands::http::basic_auth("t", TOKEN),
        )],
        None,
    );
    let pins = String::from_utf8_lossy(&pins.1).into_owned();
    assert!(pins.contains("\"default/generation-1\""), "{pins}");
    assert!(text.contains("pinned as default/generation-1"), "{text}");
    let uploaded = text
        .lines()
        .find_map(|l| l.split("uploaded ").nth(1)?.strip_suffix(" build logs"))
        .and_then(|n| n.parse::<usize>().ok());
    assert!(uploaded.is_some_and(|n| n > 0), "{text}");
    let top = &roots["web-0"][0];
    let hash = &top["/nix/store/".len().."/nix/store/".len() + 32];
    let narinfo =
        String::from_utf8_lossy(&get(&format!("{cache_url}/{hash}.narinfo")).1).into_owned();
    let deriver = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("Deriver: "))
        .unwrap_or_else(|| panic!("no deriver: {narinfo}"));
    let (log_status, body) = get(&format!("{cache_url}/log/{deriver}"));
    assert_eq!(log_status.as_u16(), 200, "no log of {deriver}");
    let out = std::process::Command::new("nix")
        .envs(c.h.env())
        .args(["log", "--store", &cache_url, top])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nix log: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, body.to_vec(), "nix log shows the stored log");

    // 3. Generation 1 active, 100 % converged, every VM running.
    let placed = wait_converged(&cp, 1, Duration::from_secs(60));
    assert_eq!(
        placed.keys().cloned().collect::<Vec<_>>(),
        ["db-0", "web-0", "web-1"]
    );

    // 4. Each simulated host's nix store (its own root) holds, valid, the
    // closures of the VMs it runs: pulled from the cache, signature checked.
    for (name, (_, worker)) in &placed {
        let missing = invalid_in_store(&c.h, &c.host_root(worker), &roots[name]);
        assert!(
            missing.is_empty(),
            "{missing:?} (for {name}) not valid on {worker}"
        );
    }

    // 5. Change one VM: only it is replaced.
    let (c2, _) = repo.change_and_push("hello from db v1", "hello from db v2", "db says v2");
    let id2 = job_for(&ci, &c2);
    let job2 = wait_job(&ci, id2, Duration::from_secs(120));
    assert_eq!(job2["state"], "succeeded", "{job2}\n{}", log(&ci, id2));
    assert_eq!(job2["generation"], 2);
    let placed2 = wait_converged(&cp, 2, Duration::from_secs(60));
    assert_ne!(placed2["db-0"].0, placed["db-0"].0, "db-0 was replaced");
    assert_eq!(placed2["web-0"], placed["web-0"], "web-0 untouched");
    assert_eq!(placed2["web-1"], placed["web-1"], "web-1 untouched");
    // The control plane's history says who pushed it, why, and which job.
    let history = commands::rpc::block_on_local(async {
        let m = commands::client::MasterClient::connect(&cp, Duration::from_secs(5))
            .await
            .unwrap();
        let g = m.generations(None).await.unwrap();
        m.close().await;
        g
    });
    let g2 = history.iter().find(|g| g.number == 2).unwrap();
    assert_eq!(
        (g2.author.as_str(), g2.message.as_str(), g2.job_id),
        ("Test", "db says v2", u64::try_from(id2).unwrap()),
        "{g2:?}"
    );

    // 6. An evaluation error, then a build failure: jobs fail with useful
    // logs; the active generation and every VM stay.
    let (c3, _) = repo.change_and_push("replicas = 2;", "replicas = \"two\";", "bad replicas");
    let job3 = wait_job(&ci, job_for(&ci, &c3), Duration::from_secs(60));
    assert_eq!(job3["state"], "failed");
    assert!(
        job3["error"].as_str().unwrap().contains("replicas"),
        "{job3}"
    );
    git(&repo.work, &["revert", "--no-edit", "HEAD"]);
    let (c4, _) = repo.change_and_push("failBuild = false;", "failBuild = true;", "break web");
    let id4 = job_for(&ci, &c4);
    let job4 = wait_job(&ci, id4, Duration::from_secs(60));
    assert_eq!(job4["state"], "failed");
    assert!(log(&ci, id4).contains("build failed on purpose"));
    let s = status(&cp).unwrap();
    assert_eq!(s.active("default").unwrap().number, 2);
    assert_eq!(
        wait_converged(&cp, 2, Duration::from_secs(5)),
        placed2,
        "no VM touched by failed pushes"
    );

    // 7. Restart the control plane on the same address: ci_service
    // re-publishes generation 2 and nothing restarts.
    // ci_service and the workers race to the new control plane: the
    // generation may arrive before the workers report where their VMs run.
    let mut cluster = c;
    let addr = cluster.cp.addr.clone();
    let republished = get_json(&format!("{ci}/healthz"))["republished"]
        .as_u64()
        .unwrap();
    let restarted = std::time::Instant::now();
    cluster.restart_cp(1000);
    let placed3 = wait_converged(&addr, 2, Duration::from_secs(60));
    assert_eq!(placed3, placed2, "a control-plane restart restarts no VM");
    // Converged is reported from observations even while assignments are
    // withheld; look again well after the 1 s grace, when the workers have
    // their assignments back (absence of churn cannot be polled for).
    std::thread::sleep(Duration::from_secs(3).saturating_sub(restarted.elapsed()));
    let placed4 = wait_converged(&addr, 2, Duration::from_secs(10));
    assert_eq!(
        placed4, placed2,
        "no VM restarted once assignments were handed out again"
    );
    let health = get_json(&format!("{ci}/healthz"));
    assert!(
        health["republished"].as_u64().unwrap() > republished,
        "{health}"
    );

    // 8. Kill ci_service (SIGKILL) in the middle of a build and restart it
    // on the same address (the hook's URL): the job is re-queued, completes
    // and its generation converges.
    git(&repo.work, &["revert", "--no-edit", "HEAD"]); // undo failBuild
    let gate = gate_the_build(&cluster.h, &repo);
    let (c5, _) = repo.push();
    let id5 = job_for(&ci, &c5);
    wait_until(Duration::from_secs(30), "the gated build to start", || {
        log(&ci, id5)
            .contains("building procurator.closure")
            .then_some(())
    });
    cluster.restart_ci();
    std::fs::write(&gate, "go").unwrap();
    let job5 = wait_job(&ci, id5, Duration::from_secs(120));
    assert_eq!(job5["state"], "succeeded", "{job5}\n{}", log(&ci, id5));
    assert_eq!(job5["generation"], 3);
    assert_eq!(
        log(&ci, id5).matches(&format!("job {id5} for")).count(),
        2,
        "the job ran again after the crash"
    );
    let placed5 = wait_converged(&addr, 3, Duration::from_secs(60));
    // The gate changes the disk builder every group shares: all replaced.
    for name in ["db-0", "web-0", "web-1"] {
        assert_ne!(placed5[name].0, placed2[name].0, "{name} runs generation 3");
    }
    drop(cluster);
}
