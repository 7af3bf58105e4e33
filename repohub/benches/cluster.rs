//! Benchmark (prints figures): the cluster panel of a project page with a
//! cluster of 1,000 VMs in 100 projects on 100 workers, served by a real
//! Cap'n Proto master on loopback. Shows page latency (p50/p99/max) and how
//! many getClusterStatus RPCs the views cost, with the shared cached status
//! (the default, a 3 s TTL) and with no cache (TTL 0: one fetch per view,
//! what repohub did before), sequentially and with 32 viewers at once.
//!
//! Then the cluster pages drawn from the cached status: `/-/cluster` as an
//! admin (every worker and VM: the biggest page) and as nobody (the public
//! projects' VMs and their hosts), and one project's `/p000/-/cluster`,
//! with their sizes (goal: p99 < 50 ms).
//!
//! Run: `cargo bench -p repohub --bench cluster`. Server time is measured in
//! process (router + oneshot), without the browser's TCP hop. Left out: the
//! fetch itself (one per TTL, measured above as RPCs), the browser's
//! rendering, and the VM page's console, which is a worker RPC per view.

// The figures printed on stdout are what this benchmark is for.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use commands::model::{
    ClusterStatusView, Drift, GenerationView, Limits, ProjectStatusView, VmPlacementView,
    WorkerHealthView, WorkerMetricsView,
};
use commands::types::{Resources, VmMetrics, VmState};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

const PROJECTS: usize = 100;
const VMS_PER_PROJECT: usize = 10;
const WORKERS: usize = 100;
const VIEWS: usize = 2_000;
const VIEWERS: usize = 32;

fn cluster() -> (ClusterStatusView, Vec<ProjectStatusView>) {
    let project = |p: usize| format!("p{p:03}");
    let mut vms = Vec::new();
    let mut generations = Vec::new();
    let mut projects = Vec::new();
    for p in 0..PROJECTS {
        for v in 0..VMS_PER_PROJECT {
            vms.push(VmPlacementView {
                project: project(p),
                name: format!("web-{v}"),
                worker_id: format!("worker-{:03}", (p * VMS_PER_PROJECT + v) % WORKERS),
                desired_hash: "0123456789abcdef0123".into(),
                observed_hash: "0123456789abcdef0123".into(),
                state: Some(VmState::Running),
                drift: Drift::Converged,
                metrics: VmMetrics::default(),
                vm_id: format!("vm-{p}-{v}"),
                health: Default::default(),
                health_detail: String::new(),
            });
        }
        generations.push(GenerationView {
            project: project(p),
            number: 3,
            commit: "abcdef1234567890".into(),
            intent_hash: String::new(),
            vm_count: VMS_PER_PROJECT as u32,
            published_at_ms: 0,
            ..Default::default()
        });
        projects.push(ProjectStatusView {
            project: project(p),
            quota: Limits {
                cpu: 64,
                memory_mb: 65536,
                vms: 50,
            },
            usage: Limits {
                cpu: 20,
                memory_mb: 5120,
                vms: VMS_PER_PROJECT as u32,
            },
            generation: None,
            convergence_percent: 100.0,
            placed: VMS_PER_PROJECT as u32,
            unplaced: 0,
            live_generations: Vec::new(),
        });
    }
    let workers = (0..WORKERS)
        .map(|w| WorkerHealthView {
            worker_id: format!("worker-{w:03}"),
            address: format!("10.0.{}.{}:6000", w / 250, w % 250),
            healthy: true,
            last_seen_ms_ago: 100,
            capacity: Resources {
                cpu: 64,
                memory_mb: 262_144,
            },
            allocated: Resources {
                cpu: 20,
                memory_mb: 5120,
            },
            observed_generation: 3,
            vm_count: 10,
            labels: Default::default(),
            metrics: WorkerMetricsView::default(),
        })
        .collect();
    let status = ClusterStatusView {
        generations,
        convergence_percent: 100.0,
        vms,
        workers,
        unplaced: Vec::new(),
        rollouts: Vec::new(),
    };
    (status, projects)
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| ms(v[((v.len() as f64 * q).ceil() as usize).min(v.len()) - 1]);
    (p(0.5), p(0.99), ms(*v.last().unwrap()))
}

/// Serves `path` with `cookie`: the server time and the body.
async fn serve(router: &axum::Router, path: &str, cookie: &str) -> (Duration, String) {
    let req = Request::get(path)
        .header("host", "bench")
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    let t = Instant::now();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let e = t.elapsed();
    (e, String::from_utf8(body.to_vec()).unwrap())
}

/// One view of project `i`'s cluster panel; its server time.
async fn view(router: &axum::Router, i: usize) -> Duration {
    let path = format!("/p{:03}/-/panel/cluster", i % PROJECTS);
    let (t, body) = serve(router, &path, "").await;
    assert!(body.contains("web-9"));
    t
}

/// A repohub on `master` with status TTL `ttl`, an admin `bench` with a
/// session, and the cluster's projects (public, owned by bench); the
/// session's cookie.
fn hub(
    master: &support::FakeMaster,
    dir: &std::path::Path,
    ttl: Duration,
) -> (axum::Router, String) {
    let mut config = repohub::Config::new(dir.join("data"));
    config.kdf = repohub::auth::KdfParams::insecure_for_tests();
    config.control_plane = Some(master.addr.to_string());
    config.limits.cluster_ttl = ttl;
    config.admin = Some("bench".into());
    let state = repohub::AppState::new(&config).unwrap();
    let user = state.db.create_user("bench", "x").unwrap();
    state.db.set_rights("bench", Some(true), None).unwrap();
    let session = "bench-session-token-00000000000000000000000";
    state
        .db
        .create_session(&repohub::auth::sha256_hex(session), user.id, 3_600_000)
        .unwrap();
    for p in 0..PROJECTS {
        state
            .db
            .create_project(&format!("p{p:03}"), "", true, user.id)
            .unwrap();
    }
    (repohub::app(state), format!("rh_session={session}"))
}

async fn run(label: &str, ttl: Duration) {
    let (status, projects) = cluster();
    let master = support::FakeMaster::start_with(status, projects);
    let dir = tempfile::tempdir().unwrap();
    let (router, _) = hub(&master, dir.path(), ttl);
    // Warm up (and the first fetch).
    for i in 0..20 {
        view(&router, i).await;
    }
    let calls0 = master.status_calls.load(Ordering::SeqCst);
    let t = Instant::now();
    let mut times = Vec::with_capacity(VIEWS);
    for i in 0..VIEWS {
        times.push(view(&router, i).await);
    }
    let seq_wall = t.elapsed();
    let seq_calls = master.status_calls.load(Ordering::SeqCst) - calls0;
    let (p50, p99, max) = stats(times);
    println!(
        "{label:<22} sequential  {p50:>7.2} {p99:>7.2} {max:>8.2}   {:>7.0}/s   {seq_calls:>5} RPCs",
        VIEWS as f64 / seq_wall.as_secs_f64()
    );

    let calls0 = master.status_calls.load(Ordering::SeqCst);
    let t = Instant::now();
    let tasks = (0..VIEWERS).map(|v| {
        let router = router.clone();
        tokio::spawn(async move {
            let mut times = Vec::new();
            for i in 0..VIEWS / VIEWERS {
                times.push(view(&router, v * 31 + i).await);
            }
            times
        })
    });
    let mut times = Vec::new();
    for t in futures::future::join_all(tasks).await {
        times.extend(t.unwrap());
    }
    let par_wall = t.elapsed();
    let par_calls = master.status_calls.load(Ordering::SeqCst) - calls0;
    let (p50, p99, max) = stats(times);
    println!(
        "{label:<22} {VIEWERS} at once  {p50:>7.2} {p99:>7.2} {max:>8.2}   {:>7.0}/s   {par_calls:>5} RPCs",
        (VIEWS / VIEWERS * VIEWERS) as f64 / par_wall.as_secs_f64()
    );
}

const PAGE_VIEWS: usize = 500;

/// Server time of `PAGE_VIEWS` views of `path` with `cookie`; and its size.
async fn time_page(router: &axum::Router, path: &str, cookie: &str) -> (Vec<Duration>, usize) {
    let mut times = Vec::with_capacity(PAGE_VIEWS);
    let mut size = 0;
    for i in 0..PAGE_VIEWS + 10 {
        let (t, text) = serve(router, path, cookie).await;
        assert!(text.contains("worker-"));
        // An admin's view shows addresses: the session was honoured.
        assert_eq!(text.contains("10.0.0."), !cookie.is_empty(), "{path}");
        size = text.len();
        if i >= 10 {
            times.push(t);
        }
    }
    (times, size)
}

/// The cluster pages from the shared, cached status.
async fn pages() {
    let (status, projects) = cluster();
    let master = support::FakeMaster::start_with(status, projects);
    let dir = tempfile::tempdir().unwrap();
    let (router, admin) = hub(&master, dir.path(), Duration::from_secs(3));
    println!(
        "\ncluster pages, {PAGE_VIEWS} views each, cached status ({} VMs on {WORKERS} workers)",
        PROJECTS * VMS_PER_PROJECT
    );
    println!(
        "{:<32} {:>7} {:>7} {:>8} {:>9}",
        "page", "p50 ms", "p99 ms", "max ms", "bytes"
    );
    for (label, path, cookie) in [
        (
            "/-/cluster (admin: everything)",
            "/-/cluster",
            admin.as_str(),
        ),
        ("/-/cluster (anonymous)", "/-/cluster", ""),
        ("/p000/-/cluster (admin)", "/p000/-/cluster", admin.as_str()),
    ] {
        let (times, size) = time_page(&router, path, cookie).await;
        let (p50, p99, max) = stats(times);
        println!("{label:<32} {p50:>7.2} {p99:>7.2} {max:>8.2} {size:>9}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "cluster panel of one project; cluster of {} VMs in {PROJECTS} projects on {WORKERS} workers; {VIEWS} views",
        PROJECTS * VMS_PER_PROJECT
    );
    println!(
        "{:<22} {:<11} {:>7} {:>7} {:>8}   {:>9}   {:>10}",
        "status", "views", "p50 ms", "p99 ms", "max ms", "pages", "to master"
    );
    run("shared, 3 s TTL", Duration::from_secs(3)).await;
    run("no cache (TTL 0)", Duration::ZERO).await;
    pages().await;
}
