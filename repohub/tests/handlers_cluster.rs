//! The cluster pages and the VM page against a real Cap'n Proto master on
//! loopback (this file's fake: a fixed status, an event log and one worker
//! capability whose console is known), played by every kind of viewer: an
//! admin, a member, a member of another project, a stranger and nobody.
//! Each access rule is tested by trying to break it.

mod support;

use std::sync::{Arc, Mutex};

use commands::convert::{ErrorCode, RpcFailure};
use commands::model::{
    AssignmentView, ClusterStatusView, Drift, EventView, GenerationDetailView, GenerationView,
    ProjectStatusView, PublishOutcomeView, Registration, UnplacedView, VmPlacementView,
    WorkerHealthView, WorkerMetricsView,
};
use commands::service::master::{Caller, EventFilter, MasterApi, Poll, Publish, Report};
use commands::service::worker::{WorkerApi, WorkerCap};
use commands::types::{
    LogTail, ProjectName, Resources, VmDetails, VmId, VmMetrics, VmState, VmStatus, WorkerId,
};
use http::StatusCode;
use support::{Client, TestApp};
use tokio_util::sync::CancellationToken;

const PW: &str = "correct horse battery";
const WEB0_ID: &str = "0190f0a0-0000-7000-8000-000000000001";
const WEB1_ID: &str = "0190f0a0-0000-7000-8000-000000000002";
const DB0_ID: &str = "0190f0a0-0000-7000-8000-000000000003";

/// What the fake worker was asked: (vm id, lines).
type Asked = Arc<Mutex<Vec<(String, u32)>>>;

struct FakeWorker {
    asked: Asked,
}

impl WorkerApi for FakeWorker {
    async fn vm_info(&self, id: VmId) -> Result<VmDetails, RpcFailure> {
        self.asked.lock().unwrap().push((id.to_string(), 0));
        if id.as_str() != WEB0_ID {
            return Err(RpcFailure::new(ErrorCode::NotFound, "no such VM"));
        }
        let spec = testkit::fixtures::spec_with("web-0", "sha256-web0", |f| {
            f.project = "shop".into();
            f.disk_image_path = testkit::fixtures::DISK.into();
            f.cmdline = "console=ttyS0 role=<web>".into();
            f.network_allowed_domains = vec!["api.example.com".into()];
        });
        Ok(VmDetails {
            status: VmStatus {
                id: id.clone(),
                project: "shop".parse().unwrap(),
                name: "web-0".parse().unwrap(),
                content_hash: "sha256-web0".into(),
                state: VmState::Running,
                pid: Some(4242),
                error: String::new(),
                created_at_ms: 0,
                cpu: 1,
                memory_mb: 128,
                health: Default::default(),
                health_detail: String::new(),
                healthy_since_ms: None,
            },
            spec,
            metrics: VmMetrics::default(),
            ch_state: "Running".into(),
            socket_path: String::new(),
            serial_log_path: String::new(),
        })
    }

    async fn logs(&self, id: VmId, lines: u32) -> Result<LogTail, RpcFailure> {
        self.asked.lock().unwrap().push((id.to_string(), lines));
        if id.as_str() != WEB0_ID {
            return Err(RpcFailure::new(ErrorCode::NotFound, "no such VM"));
        }
        Ok(LogTail {
            lines: vec![
                "[    0.000000] Linux version 6.1".into(),
                "web-0 READY <script>alert(1)</script>".into(),
            ],
            truncated: true,
        })
    }
}

struct Master {
    status: ClusterStatusView,
    events: Vec<EventView>,
    asked: Asked,
}

fn refused() -> RpcFailure {
    RpcFailure::new(ErrorCode::Internal, "not part of this fake")
}

impl MasterApi for Master {
    fn publish(&self, _: &Caller, _: Publish) -> Result<PublishOutcomeView, RpcFailure> {
        Err(refused())
    }
    fn register(&self, _: &Caller, _: Registration, _: WorkerCap) -> Result<(), RpcFailure> {
        Err(refused())
    }
    async fn get_assignment(&self, _: &Caller, _: Poll) -> Result<AssignmentView, RpcFailure> {
        Err(refused())
    }
    fn push_data(&self, _: &Caller, _: Report) -> Result<(), RpcFailure> {
        Err(refused())
    }
    fn cluster_status(&self, _: &Caller) -> ClusterStatusView {
        self.status.clone()
    }
    /// Only w-a's worker answers; w-b is dead.
    fn get_worker(&self, _: &Caller, worker: &WorkerId) -> Result<WorkerCap, RpcFailure> {
        if worker.as_str() == "w-a" {
            Ok(WorkerCap::new(FakeWorker {
                asked: self.asked.clone(),
            }))
        } else {
            Err(RpcFailure::new(
                ErrorCode::Unavailable,
                format!("worker {worker} is not connected"),
            ))
        }
    }
    fn generations(&self, _: &Caller, _: Option<&ProjectName>) -> Vec<GenerationView> {
        self.status.generations.clone()
    }
    fn projects(&self, _: &Caller) -> Vec<ProjectStatusView> {
        Vec::new()
    }
    fn events(&self, _: &Caller, f: &EventFilter, after: u64, limit: u32) -> Vec<EventView> {
        self.events
            .iter()
            .filter(|e| e.id > after && f.admits(e))
            .take(limit.max(1) as usize)
            .cloned()
            .collect()
    }
    fn generation(
        &self,
        _: &Caller,
        _: &ProjectName,
        _: u64,
    ) -> Result<GenerationDetailView, RpcFailure> {
        Err(refused())
    }
}

fn vm(
    project: &str,
    name: &str,
    worker: &str,
    id: &str,
    state: Option<VmState>,
    drift: Drift,
) -> VmPlacementView {
    VmPlacementView {
        project: project.into(),
        name: name.into(),
        worker_id: worker.into(),
        desired_hash: "sha256-desired".into(),
        observed_hash: String::new(),
        state,
        drift,
        metrics: VmMetrics::default(),
        vm_id: id.into(),
        health: Default::default(),
        health_detail: String::new(),
    }
}

fn worker(id: &str, address: &str, healthy: bool, cpu_used: u32) -> WorkerHealthView {
    WorkerHealthView {
        worker_id: id.into(),
        address: address.into(),
        healthy,
        last_seen_ms_ago: if healthy { 300 } else { 45_000 },
        capacity: Resources {
            cpu: 8,
            memory_mb: 4096,
        },
        allocated: Resources {
            cpu: cpu_used,
            memory_mb: 256,
        },
        observed_generation: 4,
        vm_count: 1,
        labels: Default::default(),
        metrics: WorkerMetricsView::default(),
    }
}

fn event(id: u64, project: &str, kind: &str, vm: &str, worker: &str, message: &str) -> EventView {
    EventView {
        id,
        at_ms: commands::telemetry::now_ms() - 5_000,
        project: project.into(),
        kind: kind.into(),
        vm: vm.into(),
        worker_id: worker.into(),
        generation: 4,
        message: message.into(),
    }
}

/// `shop` (public) runs web-0 on w-a, web-1 on the dead w-b and has big
/// unplaced; `secret` (private) runs db-0 on w-c; w-idle runs nothing.
fn start_master() -> (std::net::SocketAddr, Asked, CancellationToken) {
    let asked: Asked = Arc::default();
    let status = ClusterStatusView {
        generations: vec![GenerationView {
            project: "shop".into(),
            number: 4,
            commit: "c0ffee0000000000000000000000000000000001".into(),
            vm_count: 3,
            job_id: 17,
            message: "bump web".into(),
            ..Default::default()
        }],
        convergence_percent: 50.0,
        vms: vec![
            vm(
                "shop",
                "web-0",
                "w-a",
                WEB0_ID,
                Some(VmState::Running),
                Drift::Converged,
            ),
            vm("shop", "web-1", "w-b", WEB1_ID, None, Drift::Pending),
            vm("shop", "big", "", "", None, Drift::Pending),
            vm(
                "secret",
                "db-0",
                "w-c",
                DB0_ID,
                Some(VmState::Running),
                Drift::Converged,
            ),
        ],
        workers: vec![
            worker("w-a", "10.0.0.1:6000", true, 3),
            worker("w-b", "10.0.0.2:6000", false, 2),
            worker("w-c", "10.0.0.3:6000", true, 1),
            worker("w-idle", "10.0.0.4:6000", true, 0),
        ],
        unplaced: vec![UnplacedView {
            project: "shop".into(),
            name: "big".into(),
            reason: "no healthy worker has 64 vCPU free".into(),
        }],
        rollouts: Vec::new(),
    };
    let events = vec![
        event(1, "", "worker-joined", "", "w-c", "w-c joined"),
        event(
            2,
            "shop",
            "generation-published",
            "",
            "",
            "generation 4 published",
        ),
        event(
            3,
            "shop",
            "vm-placed",
            "web-0",
            "w-a",
            "web-0 placed on w-a",
        ),
        event(
            4,
            "secret",
            "vm-placed",
            "db-0",
            "w-c",
            "SECRET-EVENT db-0 placed",
        ),
        event(
            5,
            "",
            "worker-unhealthy",
            "",
            "w-b",
            "w-b unhealthy: no heartbeat for 15 s",
        ),
    ];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let (token, a) = (shutdown.clone(), asked.clone());
    std::thread::spawn(move || {
        commands::rpc::block_on_local(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            commands::service::master::serve(
                std::rc::Rc::new(Master {
                    status,
                    events,
                    asked: a,
                }),
                commands::auth::Authenticator::Open,
                listener,
                token,
            )
            .await;
        });
    });
    (addr, asked, shutdown)
}

struct World {
    app: TestApp,
    asked: Asked,
    _stop: tokio_util::sync::DropGuard,
    admin: Client,
    ann: Client,
    bob: Client,
    eve: Client,
    anon: Client,
}

async fn login(app: &TestApp, name: &str) -> Client {
    let mut c = app.client();
    c.get("/login").await;
    let r = c
        .post("/login", &[("username", name), ("password", PW)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{name} logs in");
    c
}

/// ann is a member of shop, bob of secret, eve of nothing; root is admin.
async fn world() -> World {
    let (addr, asked, stop) = start_master();
    let app = TestApp::new(|c| {
        c.control_plane = Some(addr.to_string());
        c.limits.cluster_ttl = std::time::Duration::from_secs(60);
    });
    let kdf = repohub::auth::KdfParams::insecure_for_tests();
    let plain = repohub::admin::Rights {
        admin: false,
        may_create_projects: false,
    };
    for n in ["ann", "bob", "eve"] {
        repohub::admin::create_user(&app.state.db, &kdf, n, PW, plain).unwrap();
    }
    repohub::admin::create_user(
        &app.state.db,
        &kdf,
        "root",
        PW,
        repohub::admin::Rights {
            admin: true,
            may_create_projects: true,
        },
    )
    .unwrap();
    let db = &app.state.db;
    let ann = db.user_by_name("ann").unwrap().unwrap();
    let bob = db.user_by_name("bob").unwrap().unwrap();
    let shop = db.create_project("shop", "", true, ann.id).unwrap();
    db.create_project("secret", "", false, bob.id).unwrap();
    db.create_repo(shop, "infra").unwrap();
    db.set_deploy(shop, Some(("infra", "refs/heads/main")))
        .unwrap();
    World {
        admin: login(&app, "root").await,
        ann: login(&app, "ann").await,
        bob: login(&app, "bob").await,
        eve: login(&app, "eve").await,
        anon: app.client(),
        asked,
        _stop: stop.drop_guard(),
        app,
    }
}

const SECRETS: [&str; 5] = ["db-0", "w-c", "SECRET-EVENT", "10.0.0.", "w-idle"];

fn shows_nothing_of_secret(body: &str) {
    for s in SECRETS {
        assert!(!body.contains(s), "{s:?} leaked into:\n{body}");
    }
}

#[tokio::test]
async fn the_cluster_page_shows_each_viewer_only_what_it_may_see() {
    let mut w = world().await;

    // Nobody and a stranger: shop is public, so its VMs, the workers that
    // run them and their events; nothing of secret, no addresses, no idle
    // worker, no VM links.
    for c in [&mut w.anon, &mut w.eve] {
        let r = c.get("/-/cluster").await;
        assert_eq!(r.status, StatusCode::OK);
        r.assert_contains(&[
            "id=\"worker-w-a\"",
            "web-0",
            "id=\"worker-w-b\"",
            "unhealthy",
            "last seen 45 s ago",
            "generation 4 published",
            "w-b unhealthy: no heartbeat",
        ]);
        shows_nothing_of_secret(&r.body);
        assert!(!r.body.contains("/shop/-/vms/"), "links only for members");
    }

    // The member gets links to the VM pages.
    let r = w.ann.get("/-/cluster").await;
    r.assert_contains(&["href=\"/shop/-/vms/web-0\"", "href=\"/shop/-/vms/big\""]);
    shows_nothing_of_secret(&r.body);

    // One definition of capacity, said on the page; a dead worker's is
    // unavailable, not free.
    r.assert_contains(&[
        "id=\"capacity-definition\"",
        "3 used, 5 free of 8 vCPU",
        "8 vCPU unavailable (worker unhealthy)",
    ]);
    assert!(
        !r.body.contains("2 used, 6 free of 8"),
        "dead worker counted as free"
    );

    // An unplaced VM is "unplaced" with its reason, never "stopped"; a VM
    // its worker does not report is "unknown".
    r.assert_contains(&[
        "id=\"cluster-unplaced\"",
        "no healthy worker has 64 vCPU free",
        "unplaced",
        "unknown",
    ]);
    assert!(!r.body.contains("stopped"));

    // The timeline has its first sample (the fetch this page made).
    r.assert_contains(&["id=\"timeline-percent\"", "1 samples"]);

    // The admin sees every worker (the idle one too), addresses, every
    // project and every event.
    let r = w.admin.get("/-/cluster").await;
    r.assert_contains(&[
        "id=\"worker-w-idle\"",
        "10.0.0.1:6000",
        "db-0",
        "SECRET-EVENT",
        "w-c joined",
        "href=\"/secret/-/vms/db-0\"",
    ]);
    drop(w.app);
}

#[tokio::test]
async fn a_projects_cluster_page_follows_the_projects_visibility() {
    let mut w = world().await;
    let r = w.anon.get("/shop/-/cluster").await;
    assert_eq!(r.status, StatusCode::OK);
    r.assert_contains(&["web-0", "id=\"worker-w-a\"", "generation 4 published"]);
    shows_nothing_of_secret(&r.body);
    // Generation → commit page of the deploy repository, and → its CI job.
    r.assert_contains(&[
        "href=\"/shop/infra/commit/c0ffee0000000000000000000000000000000001\"",
        "href=\"/shop/-/jobs/17\"",
        "bump web",
    ]);

    // secret is private: 404 for nobody, a stranger and another project's
    // member; its member sees it, but not shop's VMs on it.
    for c in [&mut w.anon, &mut w.eve, &mut w.ann] {
        assert_eq!(
            c.get("/secret/-/cluster").await.status,
            StatusCode::NOT_FOUND
        );
    }
    let r = w.bob.get("/secret/-/cluster").await;
    r.assert_contains(&["db-0", "id=\"worker-w-c\"", "SECRET-EVENT"]);
    assert!(!r.body.contains("web-0") && !r.body.contains("w-idle"));
    assert!(!r.body.contains("10.0.0.3"), "addresses are for admins");
    // The project page's panel links to it.
    w.ann
        .get("/shop/-/panel/cluster")
        .await
        .assert_contains(&["href=\"/shop/-/cluster\"", "href=\"/shop/-/vms/web-0\""]);
}

#[tokio::test]
async fn the_vm_page_is_for_members_and_reads_the_console_of_that_vm_only() {
    let mut w = world().await;

    // Nobody is sent to log in; a stranger and another project's member are
    // refused shop's VM; secret's VM does not exist for ann.
    let r = w.anon.get("/shop/-/vms/web-0").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.location().starts_with("/login"), "{}", r.location());
    for c in [&mut w.eve, &mut w.bob] {
        let r = c.get("/shop/-/vms/web-0").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(!r.body.contains("READY"));
        assert_eq!(
            c.get("/shop/-/vms/web-0/console").await.status,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        w.ann.get("/secret/-/vms/db-0").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        w.anon.get("/secret/-/vms/db-0/console").await.status,
        StatusCode::NOT_FOUND
    );
    // Another project's VM by name through shop, names that are not VM
    // names, a VM that does not exist: 404, and no worker is asked.
    for path in [
        "/shop/-/vms/db-0",
        "/shop/-/vms/db-0/console",
        "/shop/-/vms/..",
        "/shop/-/vms/WEB-0",
        "/shop/-/vms/%3Cscript%3E",
        "/shop/-/vms/nope",
    ] {
        assert_eq!(
            w.ann.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert!(w.asked.lock().unwrap().is_empty(), "a worker was asked");

    // The member sees placement, spec and console, escaped.
    let r = w.ann.get("/shop/-/vms/web-0").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.assert_contains(&[
        "id=\"vm-placement\"",
        WEB0_ID,
        "w-a",
        "id=\"vm-spec\"",
        testkit::fixtures::KERNEL,
        testkit::fixtures::DISK,
        "console=ttyS0 role=&#60;web&#62;",
        "api.example.com",
        "sha256-web0",
        "pid 4242",
        "Linux version 6.1",
        "web-0 READY &#60;script&#62;alert(1)&#60;/script&#62;",
        "older lines are cut",
        "web-0 placed on w-a",
        "href=\"/shop/-/jobs/17\"",
        "data-console=\"/shop/-/vms/web-0/console?lines=200\"",
    ]);
    assert!(!r.body.contains("<script>alert(1)"));
    assert!(!r.body.contains("SECRET-EVENT") && !r.body.contains("generation 4 published"));

    // The console tail: plain text, nosniff, the asked number of lines of
    // the VM the snapshot names, never another.
    let r = w.ann.get("/shop/-/vms/web-0/console?lines=5").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").starts_with("text/plain"));
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert!(r.body.contains("web-0 READY <script>"), "{}", r.body);
    let asked = w.asked.lock().unwrap().clone();
    assert!(asked.iter().all(|(id, _)| id == WEB0_ID), "{asked:?}");
    assert_eq!(asked.last().unwrap(), &(WEB0_ID.to_owned(), 5));
    for bad in ["0", "2001", "-1", "x"] {
        let r = w
            .ann
            .get(&format!("/shop/-/vms/web-0/console?lines={bad}"))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "lines={bad}");
    }

    // A VM on a dead worker: the page says where it was and why there is
    // no console; the tail is a 503 the follower retries.
    let r = w.ann.get("/shop/-/vms/web-1").await;
    assert_eq!(r.status, StatusCode::OK);
    r.assert_contains(&[
        "unhealthy",
        "last seen 45 s ago",
        "id=\"console-unavailable\"",
        "w-b is not connected",
    ]);
    let r = w.ann.get("/shop/-/vms/web-1/console").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("console unavailable"), "{}", r.body);

    // An unplaced VM: unplaced, with the reason.
    let r = w.ann.get("/shop/-/vms/big").await;
    assert_eq!(r.status, StatusCode::OK);
    r.assert_contains(&[
        "id=\"vm-unplaced\"",
        "no healthy worker has 64 vCPU free",
        "not running on a worker",
    ]);

    // The admin may open any VM page.
    assert_eq!(
        w.admin.get("/secret/-/vms/db-0").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_a_control_plane_the_pages_say_so() {
    let app = TestApp::new(|_| {});
    let mut c = app.client();
    let r = c.get("/-/cluster").await;
    assert_eq!(r.status, StatusCode::OK);
    r.assert_contains(&[
        "id=\"cluster-unavailable\"",
        "control plane is not configured",
    ]);
}
