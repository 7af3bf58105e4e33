//! Projects as tenants, end to end with every real binary: cache, a control
//! plane with a token file and per-project quotas, two workers on ch-sim,
//! ci_service with a `--projects` file, and three bare repositories pushed
//! with real git. Project A and project B push the same example (both have
//! `web-0`, at the same contentHash): both converge, side by side on the
//! same workers. A then changes its web VMs: only A's VMs are replaced, B's
//! CH processes keep their pids. A stranger's repository builds but ends
//! `built-not-deployed`. A `ci:team-a` token cannot publish for team-b, and
//! nobody can publish for a project the quota file does not know.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use commands::client::{ClientError, MasterClient};
use commands::model::ClusterStatusView;
use commands::types::VmState;
use common::cluster::*;
use common::*;
use testkit::services::ControlPlaneArgs;

const ADMIN: &str = "projects-admin-token-0123";
const CI: &str = "projects-ci-token-0123456";
const CI_TEAM_A: &str = "projects-ci-team-a-token-01";

/// Runs `f` with a Master session logged in with `token`.
fn with_master<T>(cp: &str, token: &str, f: impl AsyncFnOnce(&MasterClient) -> T) -> T {
    commands::rpc::block_on_local(async {
        let c = MasterClient::connect_with_token(cp, Duration::from_secs(5), token)
            .await
            .expect("login");
        let out = f(&c).await;
        c.close().await;
        out
    })
}

fn status(cp: &str) -> ClusterStatusView {
    with_master(cp, ADMIN, async |c| c.status().await.expect("status"))
}

/// Waits until `project` runs generation `generation`, every one of its
/// VMs converged and running; returns name → (vm id, worker).
fn wait_project(cp: &str, project: &str, generation: u64) -> BTreeMap<String, (String, String)> {
    wait_until(
        Duration::from_secs(180),
        &format!("project {project} to converge on generation {generation}"),
        || {
            let s = status(cp);
            let active = s.active(project).map(|g| g.number);
            let vms: Vec<_> = s.vms.iter().filter(|v| v.project == project).collect();
            let ok = active == Some(generation)
                && !vms.is_empty()
                && vms.iter().all(|v| {
                    v.drift == commands::model::Drift::Converged
                        && v.state == Some(VmState::Running)
                });
            ok.then(|| {
                vms.iter()
                    .map(|v| (v.name.clone(), (v.vm_id.clone(), v.worker_id.clone())))
                    .collect()
            })
        },
    )
}

/// (vm id, CH pid) of every VM of `project` on every worker, by name.
fn pids(cp: &str, project: &str) -> BTreeMap<String, (String, u32)> {
    with_master(cp, ADMIN, async |c| {
        let mut out = BTreeMap::new();
        for w in ["host-a", "host-b"] {
            let worker = c.worker(w).await.expect("worker");
            for v in worker.list_vms().await.expect("list") {
                if v.project.as_str() == project {
                    out.insert(v.name.to_string(), (v.id.to_string(), v.pid.unwrap_or(0)));
                }
            }
        }
        out
    })
}

/// A bare repository of the hermetic example under `dir/<name>`.
fn repo(c: &Cluster, name: &str) -> Repo {
    let root = c.dir().join(name);
    std::fs::create_dir_all(&root).unwrap();
    Repo::new(&root, &c.ci_url())
}

#[test]
fn two_projects_push_converge_and_never_touch_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tokens = d.join("cp-tokens");
    std::fs::write(
        &tokens,
        format!(
            "admin {ADMIN}\nci {CI}\nci:team-a {CI_TEAM_A}\n\
             worker:host-a host-a-token-0123456789\nworker:host-b host-b-token-0123456789\n"
        ),
    )
    .unwrap();
    let quotas = d.join("quotas.toml");
    std::fs::write(
        &quotas,
        "[projects.team-a]\ncpu = 4\nmemoryMb = 2048\nvms = 4\n\
         [projects.team-b]\ncpu = 4\nmemoryMb = 2048\nvms = 4\n",
    )
    .unwrap();
    let token_file = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ci_token = token_file("ci-token", CI);
    let worker = |id: &'static str| {
        let t = token_file(id, &format!("{id}-token-0123456789"));
        let mut o = WorkerOpts::new(id).args(["--cluster-token-file".to_owned(), t]);
        // Room for both projects and a replacement beside them.
        (o.cpu, o.memory_mb) = (8, 4096);
        o
    };
    // The projects file needs the repositories' paths, which live in the
    // cluster's temp dir: it is written before the first push (ci_service
    // reads it at start, so ci_service is restarted once it exists).
    let mut opts = ClusterOpts::new(vec![worker("host-a"), worker("host-b")]).with_ci();
    opts.control_plane = ControlPlaneArgs {
        heartbeat_timeout_ms: Some(3000),
        startup_grace_ms: 300,
        args: vec![
            "--token-file".into(),
            tokens.display().to_string(),
            "--quotas".into(),
            quotas.display().to_string(),
        ],
        ..ControlPlaneArgs::default()
    };
    let projects = d.join("projects.toml");
    opts.ci_args = vec![
        "--control-plane-token-file".into(),
        ci_token,
        "--projects".into(),
        projects.display().to_string(),
    ];
    std::fs::write(&projects, "").unwrap();
    let mut c = Cluster::start(opts, |_, cp| cp.to_owned());
    let cp = c.cp.addr.clone();
    let a = repo(&c, "a");
    let b = repo(&c, "b");
    let stranger = repo(&c, "stranger");
    std::fs::write(
        &projects,
        format!(
            "[[deploy]]\nrepo = \"{}\"\nproject = \"team-a\"\nref = \"refs/heads/main\"\n\n\
             [[deploy]]\nrepo = \"{}\"\nproject = \"team-b\"\nref = \"refs/heads/main\"\n",
            a.bare.canonicalize().unwrap().display(),
            b.bare.canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    c.restart_ci();
    let ci = c.ci_url();

    // A and B push the example; B's db differs (so the commits differ),
    // their web VMs are the same: same names, same contentHash. Both
    // converge, each with its own web-0.
    let (ca, _) = a.push();
    let (cb, _) = b.change_and_push("hello from db v1", "hello from b's db", "b's db");
    for (commit, project) in [(&ca, "team-a"), (&cb, "team-b")] {
        let id = job_for(&ci, commit);
        let job = wait_job(&ci, id, Duration::from_secs(240));
        assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
        assert_eq!(
            (job["project"].as_str(), job["generation"].as_i64()),
            (Some(project), Some(1))
        );
        assert!(log(&ci, id).contains(&format!("deploying project {project}")));
    }
    let a1 = wait_project(&cp, "team-a", 1);
    let b1 = wait_project(&cp, "team-b", 1);
    assert_eq!(a1.keys().collect::<Vec<_>>(), ["db-0", "web-0", "web-1"]);
    assert_eq!(a1.keys().collect::<Vec<_>>(), b1.keys().collect::<Vec<_>>());
    let hash_of = |project: &str, name: &str| {
        status(&cp)
            .vms
            .into_iter()
            .find(|v| v.project == project && v.name == name)
            .map(|v| v.desired_hash)
            .unwrap()
    };
    assert_eq!(
        hash_of("team-a", "web-0"),
        hash_of("team-b", "web-0"),
        "the same VM in two projects"
    );
    assert_ne!(hash_of("team-a", "db-0"), hash_of("team-b", "db-0"));
    let b_pids = pids(&cp, "team-b");
    assert_eq!(b_pids.len(), 3, "{b_pids:?}");
    assert!(b_pids.values().all(|(_, pid)| *pid != 0));

    // A changes its web VMs: A's generation 2 replaces A's web VMs; B's VMs
    // keep their ids and their CH processes.
    let (ca2, _) = a.change_and_push("hello from web v1", "hello from web v2", "web v2");
    let id = job_for(&ci, &ca2);
    let job = wait_job(&ci, id, Duration::from_secs(240));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&ci, id));
    let a2 = wait_project(&cp, "team-a", 2);
    assert_ne!(a2["web-0"].0, a1["web-0"].0, "A's web-0 was replaced");
    assert_eq!(a2["db-0"].0, a1["db-0"].0, "A's db-0 did not change");
    assert_eq!(
        wait_project(&cp, "team-b", 1),
        b1,
        "B's placements and VM ids"
    );
    assert_eq!(pids(&cp, "team-b"), b_pids, "B's CH processes");

    // A stranger's repository builds, but deploys nothing.
    let (cs, _) = stranger.push();
    let id = job_for(&ci, &cs);
    let job = wait_job(&ci, id, Duration::from_secs(240));
    assert_eq!(
        job["state"],
        "built-not-deployed",
        "{job}\n{}",
        log(&ci, id)
    );
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("is not a project's deploy repository"),
        "{job}"
    );
    assert_eq!(job["generation"], serde_json::Value::Null);
    let text = log(&ci, id);
    assert!(text.contains("built, not deployed: "), "{text}");
    assert!(!text.contains("publishing generation"), "{text}");

    // A ci:team-a token publishes for team-a only; nobody publishes for a
    // project the quota file does not list. Neither changes anything.
    let spec = testkit::fixtures::spec("web-0", "evil");
    let refused = |token: &str, project: &str| {
        with_master(&cp, token, async |m| {
            match m
                .publish(project, "c", 99, "evil", std::slice::from_ref(&spec))
                .await
            {
                Err(ClientError::Refused(f)) => f.message,
                other => panic!("publish for {project} was not refused: {other:?}"),
            }
        })
    };
    assert_eq!(
        refused(CI_TEAM_A, "team-b"),
        "this ci:team-a token may publish for project team-a only, not team-b"
    );
    assert!(
        refused(ADMIN, "team-c").starts_with("unknown project team-c"),
        "unknown project"
    );
    let s = status(&cp);
    assert_eq!(s.active("team-b").map(|g| g.number), Some(1));
    assert!(s.active("team-c").is_none());
    assert_eq!(pids(&cp, "team-b"), b_pids, "B's CH processes");

    // `pcr projects` shows both with their quota and usage.
    let cli = |tool: &str, token: &str, args: &[&str]| {
        let out = std::process::Command::new(bin(tool))
            .args(["--control-plane", &cp])
            .args(args)
            .env("PCR_TOKEN", token)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), text, err)
    };
    let (ok, text, err) = cli("pcr", ADMIN, &["projects"]);
    assert!(ok, "{text}{err}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "PROJECT",
            "CPU",
            "MEM",
            "(MiB)",
            "VMS",
            "GEN",
            "CONVERGED",
            "UNPLACED"
        ]
    );
    assert_eq!(
        rows[1],
        ["team-a", "3/4", "1024/2048", "3/4", "2", "100.0%", "0"]
    );
    assert_eq!(
        rows[2],
        ["team-b", "3/4", "1024/2048", "3/4", "1", "100.0%", "0"]
    );

    // `pcr vms` has a PROJECT column; --project shows one project only.
    let (ok, all, err) = cli("pcr", ADMIN, &["vms"]);
    assert!(ok, "{err}");
    assert!(all.starts_with("PROJECT  NAME"), "{all}");
    assert_eq!(
        all.lines().filter(|l| l.starts_with("team-a ")).count(),
        3,
        "{all}"
    );
    assert_eq!(
        all.lines().filter(|l| l.starts_with("team-b ")).count(),
        3,
        "{all}"
    );
    let (ok, only_b, err) = cli("pcr", ADMIN, &["vms", "--project", "team-b"]);
    assert!(ok, "{err}");
    assert!(only_b.starts_with("NAME"), "{only_b}");
    assert_eq!(
        only_b.lines().count(),
        4,
        "a header and b's three VMs: {only_b}"
    );
    let (ok, status_b, _) = cli("pcr", ADMIN, &["status", "--project", "team-b"]);
    assert!(
        ok && status_b.contains("generation:  team-b/1"),
        "{status_b}"
    );
    assert!(!status_b.contains("team-a"), "{status_b}");
    // pcr-test with the ci:team-a token: refused for team-b, by name.
    let specs = d.join("specs");
    testkit::fixtures::write_specs(&specs, &["web-0"], |n| format!("x-{n}"));
    let (ok, _, err) = cli(
        "pcr-test",
        CI_TEAM_A,
        &[
            "publish-state",
            "--project",
            "team-b",
            "--commit",
            "c",
            "--generation",
            "9",
            "--specs",
            specs.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("may publish for project team-a only, not team-b"),
        "{err}"
    );
    assert_eq!(status(&cp).active("team-b").map(|g| g.number), Some(1));
}
