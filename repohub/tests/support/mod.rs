//! Shared test harness: an in-process app with a cookie-keeping client, a
//! test ci_service (HTTP, the contract repohub codes against), a test
//! control plane (a real `Master` on loopback), and git helpers.
#![allow(dead_code)]

pub(crate) mod webdriver;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt;

use commands::convert::{ErrorCode, RpcFailure};
use commands::model::{
    AssignmentView, ClusterStatusView, Drift, EventView, GenerationDetailView, GenerationView,
    Limits, ProjectStatusView, PublishOutcomeView, Registration, VmPlacementView, WorkerHealthView,
    WorkerMetricsView,
};
use commands::service::master::{Caller, EventFilter, MasterApi, Poll, Publish, Report};
use commands::service::worker::WorkerCap;
use commands::types::{ProjectName, Resources, VmMetrics, VmState, WorkerId};
use repohub::{AppState, Config};

pub(crate) const CI_SECRET: &str = "test-ci-secret";

/// A repohub app on a temp data dir, with cheap argon2 parameters.
pub(crate) struct TestApp {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub router: Router,
}

pub(crate) fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir.join("data"));
    c.kdf = repohub::auth::KdfParams::insecure_for_tests();
    c.backoff = repohub::notify::Backoff {
        initial: std::time::Duration::from_millis(100),
        max: std::time::Duration::from_millis(400),
    };
    c.notify_tick = std::time::Duration::from_millis(50);
    // Most tests sign up their users and let them create projects; the
    // tenancy tests close both again. Rate limits stay out of their way
    // unless a test sets them.
    c.open_signup = true;
    c.signup_may_create_projects = true;
    c.limits.login.per_ip.burst = 10_000;
    c.limits.login.per_account.burst = 10_000;
    c
}

impl TestApp {
    pub(crate) fn new(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        edit(&mut c);
        let state = AppState::new(&c).unwrap();
        let router = repohub::app(state.clone());
        Self { dir, state, router }
    }

    pub(crate) fn client(&self) -> Client {
        Client {
            router: self.router.clone(),
            cookies: BTreeMap::new(),
            ip: std::net::IpAddr::from([127, 0, 0, 1]),
        }
    }
}

pub(crate) struct Resp {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    /// The header `name` as text; panics when it is missing or not text.
    pub(crate) fn header(&self, name: &str) -> &str {
        let v = self.headers.get(name);
        v.unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    /// Panics, showing the body, unless it contains every one of `needles`.
    pub(crate) fn assert_contains(&self, needles: &[&str]) {
        for n in needles {
            assert!(self.body.contains(n), "{n:?} missing from:\n{}", self.body);
        }
    }

    pub(crate) fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A browser-like client over `Router::oneshot`: keeps cookies, fills the
/// CSRF field of forms from its cookie.
#[derive(Clone)]
pub(crate) struct Client {
    router: Router,
    pub cookies: BTreeMap<String, String>,
    /// The address requests come from (as the TCP peer would be).
    pub ip: std::net::IpAddr,
}

impl Client {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) async fn send(&mut self, mut req: Request<Body>) -> Resp {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(SocketAddr::new(self.ip, 40000)));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        for sc in resp.headers().get_all(header::SET_COOKIE) {
            let s = sc.to_str().unwrap();
            let (kv, attrs) = s.split_once(';').unwrap_or((s, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Resp {
        let req = Request::get(path)
            .header(header::COOKIE, self.cookie_header())
            .header(header::HOST, "repohub.test")
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    /// The CSRF token pages embed for this browser: bound to its session,
    /// or to its pre-session cookie before it logs in.
    pub(crate) fn csrf(&self) -> String {
        self.cookies
            .get("rh_session")
            .or_else(|| self.cookies.get("rh_csrf"))
            .map(|c| repohub::auth::csrf_token(c))
            .unwrap_or_default()
    }

    /// POSTs a form; the CSRF field is added from the cookie (visit a page first).
    pub(crate) async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let csrf = self.csrf();
        let mut all: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    /// POSTs exactly these fields (for forged-CSRF tests).
    pub(crate) async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body = serde_urlencoded(fields);
        let req = Request::post(path)
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    pub(crate) async fn signup(&mut self, name: &str, password: &str) -> Resp {
        self.get("/signup").await;
        self.post("/signup", &[("username", name), ("password", password)])
            .await
    }

    pub(crate) async fn create_project(&mut self, name: &str, public: bool) -> Resp {
        self.get("/new").await;
        let mut f = vec![("name", name), ("description", "test project")];
        if public {
            f.push(("public", "1"));
        }
        self.post("/new", &f).await
    }

    pub(crate) async fn create_repo(&mut self, project: &str, name: &str) -> Resp {
        self.post(&format!("/{project}/-/repos"), &[("name", name)])
            .await
    }

    /// Creates a token on the tokens page and returns it.
    pub(crate) async fn token(&mut self) -> String {
        self.get("/settings/tokens").await;
        let r = self.post("/settings/tokens", &[("name", "git")]).await;
        let start =
            r.body.find("id=\"new-token\">").expect("token shown") + "id=\"new-token\">".len();
        r.body[start..start + 43].to_owned()
    }
}

fn serde_urlencoded(fields: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

// ---------------------------------------------------------------- git

/// Runs git with an isolated config and identity; panics with its output on failure.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = testkit::process::output_ok(&mut git_cmd(dir, args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn git_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .args(args)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("GIT_AUTHOR_NAME", "Test <b>Author</b>")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "t@example.com");
    c
}

/// A fresh working repository with one commit of `files`, on `main`.
pub(crate) fn work_repo(parent: &Path, files: &[(&str, &[u8])], message: &str) -> PathBuf {
    let dir = parent.join(format!("work-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    for (name, content) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git(&dir, &["add", "-A"]);
    commit_at(&dir, message, 1_600_000_000);
    dir
}

/// Commits the index (or nothing) with author and committer time `secs`, so
/// history order does not depend on how fast the test runs.
pub(crate) fn commit_at(dir: &Path, message: &str, secs: i64) {
    let date = format!("@{secs} +0000");
    let mut commit = git_cmd(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    commit
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date);
    testkit::process::output_ok(&mut commit);
}

pub(crate) fn rand_suffix() -> String {
    static N: AtomicI64 = AtomicI64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------- ci_service

/// The real ci_service in process, on loopback, with `nix`'s hermetic
/// configuration, the hook secret [`CI_SECRET`] and `api_tokens` (lines
/// of its `--api-token-file`); returns its URL and a guard that stops it.
pub(crate) async fn real_ci_service(
    nix: &repo_outils::testing::HermeticNix,
    api_tokens: &str,
) -> (String, DropGuard) {
    let mut ci_config = ci_service::Config::new(nix.dir().join("ci"));
    ci_config.nix_conf_dir = Some(nix.conf_dir());
    ci_config.hook_secret = Some(CI_SECRET.into());
    ci_config.api_auth = commands::auth::Authenticator::parse(
        api_tokens,
        Path::new("ci-api-tokens"),
        ci_service::api::API_ROLES,
    )
    .unwrap();
    let ci_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ci_url = format!("http://{}", ci_listener.local_addr().unwrap());
    let ci_stop = CancellationToken::new();
    tokio::spawn(ci_service::run(ci_config, ci_listener, ci_stop.clone()));
    (ci_url, ci_stop.drop_guard())
}

/// Points repohub at the ci_service at `url` with the hook secret and
/// `token` for its API.
pub(crate) fn ci_at(url: &str, token: &str) -> impl Fn(&mut Config) + use<> {
    let (url, token) = (url.to_owned(), token.to_owned());
    move |c| {
        c.ci_url = Some(url.clone());
        c.ci_secret = Some(CI_SECRET.into());
        c.ci_token = commands::auth::Secret::new(token.clone());
    }
}

pub(crate) struct FakeCiState {
    pub up: AtomicBool,
    pub pushes: Mutex<Vec<Value>>,
    pub jobs: Mutex<Vec<Value>>,
    pub unauthorized: AtomicI64,
    /// When non-zero, every job log is this many bytes of numbered lines
    /// (a job that prints without end).
    pub log_bytes: std::sync::atomic::AtomicUsize,
    /// Cancels and re-runs asked of it ("cancel 3", "rerun 3"), in order.
    pub actions: Mutex<Vec<String>>,
    /// How many job lists (`GET /jobs`) it answered.
    pub list_calls: AtomicI64,
    next_id: AtomicI64,
}

/// A test ci_service implementing the HTTP contract: push hook (bearer
/// secret), job list, job detail with vm_specs, and a streamed log.
pub(crate) struct FakeCi {
    pub addr: SocketAddr,
    pub state: Arc<FakeCiState>,
    /// Stops the server on drop.
    _shutdown: DropGuard,
}

impl FakeCi {
    /// Makes the fake ci_service answer (true) or refuse with 503 (false).
    pub(crate) fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// Points repohub at this ci_service, with the shared hook secret.
    pub(crate) fn configure(&self) -> impl Fn(&mut Config) + use<> {
        let url = self.url();
        move |c| {
            c.ci_url = Some(url.clone());
            c.ci_secret = Some(CI_SECRET.into());
        }
    }
}

impl FakeCi {
    pub(crate) async fn start() -> Self {
        let state = Arc::new(FakeCiState {
            up: AtomicBool::new(true),
            pushes: Mutex::new(Vec::new()),
            jobs: Mutex::new(Vec::new()),
            unauthorized: AtomicI64::new(0),
            log_bytes: std::sync::atomic::AtomicUsize::new(0),
            actions: Mutex::new(Vec::new()),
            list_calls: AtomicI64::new(0),
            next_id: AtomicI64::new(1),
        });
        let app = Router::new()
            .route("/hooks/push", post(ci_push))
            .route("/jobs", get(ci_jobs))
            .route("/jobs/{id}", get(ci_job).delete(ci_cancel))
            .route("/jobs/{id}/rerun", post(ci_rerun))
            .route("/jobs/{id}/log", get(ci_log))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let t = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { t.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            addr,
            state,
            _shutdown: shutdown.drop_guard(),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn add_job(&self, repo: &str, state: &str) -> i64 {
        let id = self.state.next_id.fetch_add(1, Ordering::SeqCst);
        self.state.jobs.lock().unwrap().push(job_json(
            id,
            repo,
            "refs/heads/main",
            &"c".repeat(40),
            state,
        ));
        id
    }

    /// A job of `repo` that built `commit`, ending (or not) in `state`.
    pub(crate) fn add_commit_job(&self, repo: &str, commit: &str, state: &str) -> i64 {
        let id = self.state.next_id.fetch_add(1, Ordering::SeqCst);
        self.state
            .jobs
            .lock()
            .unwrap()
            .push(job_json(id, repo, "refs/heads/main", commit, state));
        id
    }

    pub(crate) fn actions(&self) -> Vec<String> {
        self.state.actions.lock().unwrap().clone()
    }

    pub(crate) fn pushes(&self) -> Vec<Value> {
        self.state.pushes.lock().unwrap().clone()
    }
}

fn job_json(id: i64, repo: &str, r: &str, commit: &str, state: &str) -> Value {
    let now = commands::telemetry::now_ms() as i64;
    json!({
        "id": id, "repo": repo, "ref": r, "commit": commit, "state": state,
        "created_at_ms": now, "started_at_ms": now, "finished_at_ms": if state == "running" { Value::Null } else { json!(now + 1500) },
        "generation": if state == "succeeded" { json!(id) } else { Value::Null },
        "error": if state == "failed" { json!("nix build failed: <b>boom</b>") } else { Value::Null },
    })
}

async fn ci_push(
    State(s): State<Arc<FakeCiState>>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !s.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {CI_SECRET}") {
        s.unauthorized.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, "bad secret").into_response();
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    let id = s.next_id.fetch_add(1, Ordering::SeqCst);
    let job = job_json(
        id,
        v["repo"].as_str().unwrap(),
        v["ref"].as_str().unwrap(),
        v["new"].as_str().unwrap(),
        "succeeded",
    );
    s.jobs.lock().unwrap().push(job);
    s.pushes.lock().unwrap().push(v);
    (StatusCode::ACCEPTED, axum::Json(json!({ "job_id": id }))).into_response()
}

impl FakeCiState {
    fn job(&self, id: i64) -> Option<Value> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
    }
}

/// `DELETE /jobs/{id}`: a running job is being cancelled (202), as
/// ci_service answers.
async fn ci_cancel(State(s): State<Arc<FakeCiState>>, UrlPath(id): UrlPath<i64>) -> Response {
    s.actions.lock().unwrap().push(format!("cancel {id}"));
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": id, "state": "running" })),
    )
        .into_response()
}

/// `POST /jobs/{id}/rerun`: the same push again as a new, queued job.
async fn ci_rerun(State(s): State<Arc<FakeCiState>>, UrlPath(id): UrlPath<i64>) -> Response {
    s.actions.lock().unwrap().push(format!("rerun {id}"));
    let Some(old) = s.job(id) else {
        return (StatusCode::NOT_FOUND, "no such job").into_response();
    };
    let new = s.next_id.fetch_add(1, Ordering::SeqCst);
    let mut j = old;
    j["id"] = json!(new);
    j["state"] = json!("queued");
    s.jobs.lock().unwrap().push(j);
    (StatusCode::ACCEPTED, axum::Json(json!({ "jobId": new }))).into_response()
}

async fn ci_jobs(
    State(s): State<Arc<FakeCiState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if !s.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    s.list_calls.fetch_add(1, Ordering::SeqCst);
    let repo = q.get("repo").cloned().unwrap_or_default();
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
    let jobs: Vec<Value> = s
        .jobs
        .lock()
        .unwrap()
        .iter()
        .rev()
        .filter(|j| j["repo"] == repo.as_str())
        .take(limit)
        .cloned()
        .collect();
    axum::Json(jobs).into_response()
}

async fn ci_job(State(s): State<Arc<FakeCiState>>, UrlPath(id): UrlPath<i64>) -> Response {
    if !s.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    match s.job(id) {
        None => (StatusCode::NOT_FOUND, "no such job").into_response(),
        Some(mut j) => {
            if j["state"] == "succeeded" {
                j["vm_specs"] = json!([{
                    "name": "web-1", "toplevel": "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system",
                    "kernelPath": "/nix/store/bbbb-kernel", "initrdPath": "", "diskImagePath": "",
                    "cmdline": "console=ttyS0", "cpu": 2, "memoryMb": 512, "networkAllowedDomains": [],
                    "contentHash": "0123456789abcdef0123", "labels": []
                }]);
            }
            axum::Json(j).into_response()
        }
    }
}

async fn ci_log(
    State(s): State<Arc<FakeCiState>>,
    UrlPath(id): UrlPath<i64>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let big = s.log_bytes.load(Ordering::SeqCst);
    if big > 0 {
        // 64-byte numbered lines, 1,024 to a chunk, up to `big` bytes.
        let chunks = big.div_ceil(64 * 1024);
        let stream = futures::stream::iter(0..chunks).map(|c| {
            let mut chunk = String::with_capacity(64 * 1024);
            for l in 0..1024 {
                chunk.push_str(&format!("{:<62}\n", format!("line {}", c * 1024 + l)));
            }
            Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk))
        });
        return Body::from_stream(stream).into_response();
    }
    let follow = q.get("follow").is_some_and(|f| f == "1");
    let lines = vec![
        format!("job {id}: evaluating flake\n"),
        "building 1 derivation <script>alert(1)</script>\n".to_owned(),
        "building '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-web-disk.img.drv'...\n".to_owned(),
        "published generation\n".to_owned(),
    ];
    let stream = futures::stream::iter(lines).then(move |l| async move {
        if follow {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok::<_, std::io::Error>(axum::body::Bytes::from(l))
    });
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

use futures::StreamExt;

// ---------------------------------------------------------------- control plane

/// A real `Master` on loopback (served by `commands::service::master`)
/// answering getClusterStatus with two VMs and two workers (one drifted VM,
/// one unhealthy worker).
pub(crate) struct FakeMaster {
    pub addr: SocketAddr,
    /// getClusterStatus calls answered so far.
    pub status_calls: Arc<std::sync::atomic::AtomicUsize>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fake's answers: a fixed cluster status (counted); every other call
/// is refused.
struct FakeMasterApi {
    status_calls: Arc<std::sync::atomic::AtomicUsize>,
    status: ClusterStatusView,
    projects: Vec<ProjectStatusView>,
}

fn not_faked() -> RpcFailure {
    RpcFailure::new(ErrorCode::Internal, "not implemented by the fake master")
}

impl MasterApi for FakeMasterApi {
    fn publish(&self, _: &Caller, _: Publish) -> Result<PublishOutcomeView, RpcFailure> {
        Err(not_faked())
    }
    fn register(&self, _: &Caller, _: Registration, _: WorkerCap) -> Result<(), RpcFailure> {
        Err(not_faked())
    }
    async fn get_assignment(&self, _: &Caller, _: Poll) -> Result<AssignmentView, RpcFailure> {
        Err(not_faked())
    }
    fn push_data(&self, _: &Caller, _: Report) -> Result<(), RpcFailure> {
        Err(not_faked())
    }
    fn cluster_status(&self, _: &Caller) -> ClusterStatusView {
        self.status_calls.fetch_add(1, Ordering::SeqCst);
        self.status.clone()
    }
    fn get_worker(&self, _: &Caller, _: &WorkerId) -> Result<WorkerCap, RpcFailure> {
        Err(not_faked())
    }
    fn generations(&self, _: &Caller, _: Option<&ProjectName>) -> Vec<GenerationView> {
        Vec::new()
    }
    fn projects(&self, _: &Caller) -> Vec<ProjectStatusView> {
        self.projects.clone()
    }
    fn events(&self, _: &Caller, _: &EventFilter, _: u64, _: u32) -> Vec<EventView> {
        Vec::new()
    }
    fn generation(
        &self,
        _: &Caller,
        _: &ProjectName,
        _: u64,
    ) -> Result<GenerationDetailView, RpcFailure> {
        Err(not_faked())
    }
}

/// `shop` and `other` with the same quota and their usage.
fn fake_projects() -> Vec<ProjectStatusView> {
    let p = |project: &str, cpu, vms, percent| ProjectStatusView {
        project: project.into(),
        quota: Limits {
            cpu: 8,
            memory_mb: 16384,
            vms: 10,
        },
        usage: Limits {
            cpu,
            memory_mb: 1024,
            vms,
        },
        generation: None,
        convergence_percent: percent,
        placed: vms,
        unplaced: 0,
        live_generations: Vec::new(),
    };
    vec![p("shop", 4, 2, 50.0), p("other", 1, 1, 100.0)]
}

/// Two VMs of project `shop` (one drifted, on an unhealthy worker) and one
/// VM and one unplaced VM of project `other` on a worker of its own: what
/// one tenant's pages must never show of another's.
fn fake_status() -> ClusterStatusView {
    let vm = |project: &str, name: &str, worker: &str, observed: &str, drift| VmPlacementView {
        project: project.into(),
        name: name.into(),
        worker_id: worker.into(),
        desired_hash: "0123456789abcdef0123".into(),
        observed_hash: observed.into(),
        state: Some(VmState::Running),
        drift,
        metrics: VmMetrics {
            cpu_percent: 12.5,
            rss_bytes: 64 * 1024 * 1024,
            ..Default::default()
        },
        vm_id: String::new(),
        health: Default::default(),
        health_detail: String::new(),
    };
    let worker = |id: &str, address: &str, healthy: bool| WorkerHealthView {
        worker_id: id.into(),
        address: address.into(),
        healthy,
        last_seen_ms_ago: if healthy { 120 } else { 45_000 },
        capacity: Resources {
            cpu: 8,
            memory_mb: 16384,
        },
        allocated: Resources::default(),
        observed_generation: 0,
        vm_count: 1,
        labels: Default::default(),
        metrics: WorkerMetricsView::default(),
    };
    ClusterStatusView {
        generations: vec![
            GenerationView {
                project: "shop".into(),
                number: 7,
                commit: "abcdef1234567890".into(),
                intent_hash: String::new(),
                vm_count: 2,
                published_at_ms: 0,
                ..Default::default()
            },
            GenerationView {
                project: "other".into(),
                number: 3,
                commit: "0ther0commit".into(),
                intent_hash: String::new(),
                vm_count: 1,
                published_at_ms: 0,
                ..Default::default()
            },
        ],
        convergence_percent: 66.0,
        vms: vec![
            vm(
                "shop",
                "web-1",
                "worker-a",
                "0123456789abcdef0123",
                Drift::Converged,
            ),
            vm("shop", "db-<1>", "worker-b", "ffff", Drift::Drifted),
            vm(
                "other",
                "intruder-0",
                "worker-c",
                "0123456789abcdef0123",
                Drift::Converged,
            ),
        ],
        workers: vec![
            worker("worker-a", "127.0.0.1:6000", true),
            worker("worker-b", "127.0.0.1:6001", false),
            worker("worker-c", "10.9.9.9:6000", true),
        ],
        unplaced: vec![commands::model::UnplacedView {
            project: "other".into(),
            name: "other-big".into(),
            reason: "no worker has 64 vCPU free".into(),
        }],
        rollouts: ["shop", "other"]
            .into_iter()
            .map(|p| commands::model::RolloutStatusView {
                project: p.into(),
                group: format!("{p}-web"),
                generation: 7,
                batch: 1,
                batches: 2,
                healthy: 0,
                total: 2,
                state: "paused".into(),
                reason: format!("{p}-web-0 unhealthy: no READY within 30000 ms"),
            })
            .collect(),
    }
}

impl FakeMaster {
    /// The master of [`fake_status`] and [`fake_projects`].
    pub(crate) fn start() -> Self {
        Self::start_with(fake_status(), fake_projects())
    }

    /// A master answering `status` and `projects` (and refusing the rest).
    pub(crate) fn start_with(status: ClusterStatusView, projects: Vec<ProjectStatusView>) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let status_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = status_calls.clone();
        let thread = std::thread::spawn(move || {
            commands::rpc::block_on_local(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                // Like the real control plane without a token file: any
                // token logs in as admin.
                commands::service::master::serve(
                    std::rc::Rc::new(FakeMasterApi {
                        status_calls: calls,
                        status,
                        projects,
                    }),
                    commands::auth::Authenticator::Open,
                    listener,
                    token,
                )
                .await;
            });
        });
        Self {
            addr,
            status_calls,
            shutdown,
            thread: Some(thread),
        }
    }
}

// ---------------------------------------------------------------- browser tests

/// `repohub admin create-user NAME --admin` on `data` (the real binary, as
/// an operator runs it), the password on stdin.
pub(crate) fn create_admin(data: &Path, name: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_repohub"))
        .arg("--data-dir")
        .arg(data)
        .args([
            "--kdf-memory-kib",
            "1024",
            "admin",
            "create-user",
            name,
            "--admin",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{password}").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success(), "admin create-user failed");
}

/// Where the browser tests keep their screenshots:
/// `<target>/test-artifacts/repohub/`.
pub(crate) fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join("test-artifacts").join("repohub")
}

// ---------------------------------------------------------------- real server

/// `repohub::run` on a loopback port, stopped on drop (the guard cancels its
/// token).
pub(crate) struct Server {
    pub addr: SocketAddr,
    shutdown: DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub(crate) async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = repohub::run(config, listener, token).await {
                panic!("repohub::run failed: {e:?}");
            }
        });
        Self {
            addr,
            shutdown: shutdown.drop_guard(),
            task,
        }
    }

    /// Stops the server and waits until it (and its notifier) have ended.
    pub(crate) async fn stop(self) {
        drop(self.shutdown);
        self.task.await.unwrap();
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A clone URL carrying `user:token` as basic-auth credentials.
    pub(crate) fn auth_url(&self, user: &str, token: &str, path: &str) -> String {
        auth_url(&self.url(""), user, token, path)
    }
}

/// `path` on the server at `base` (`http://host:port`), carrying
/// `user:token` as basic-auth credentials.
pub(crate) fn auth_url(base: &str, user: &str, token: &str, path: &str) -> String {
    let host = base.trim_start_matches("http://");
    format!("http://{user}:{token}@{host}{path}")
}

/// An app plus a real server on the same data directory, both configured by
/// `edit` (the app's router shares the SQLite file, as two processes would).
pub(crate) async fn app_and_server(edit: impl Fn(&mut Config)) -> (TestApp, Server) {
    let app = TestApp::new(&edit);
    let mut c = config(app.dir.path());
    edit(&mut c);
    let server = Server::start(c).await;
    (app, server)
}

/// Pushes `main` of `work` to `url` over HTTP; panics with git's output when
/// the push fails.
pub(crate) async fn push_main(work: &Path, url: &str) {
    let (ok, out) = git_async(work, &["push", url, "main"]).await;
    assert!(ok, "git push {url}: {out}");
}

impl TestApp {
    /// Pushes `main` of `work` straight into the bare repository of
    /// `project/repo` on disk (no HTTP, no credentials).
    pub(crate) fn push_direct(&self, work: &Path, project: &str, repo: &str) {
        let bare = self.state.repo_dir(project, repo);
        git(work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    }
}

/// Runs git off the async threads; returns (success, stdout+stderr).
pub(crate) async fn git_async(dir: &Path, args: &[&str]) -> (bool, String) {
    let dir = dir.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = git_cmd(&dir, &a).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

/// Polls `f` every 50 ms until it is true or `secs` pass.
pub(crate) async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    f()
}

/// ann signed up (password `correct horse battery`) with public project
/// `p` holding repository `r`, and an access token of hers.
pub(crate) async fn ann_with_p_r(app: &TestApp) -> (Client, String) {
    let mut ann = app.client();
    ann.signup("ann", "correct horse battery").await;
    ann.create_project("p", true).await;
    ann.create_repo("p", "r").await;
    let token = ann.token().await;
    (ann, token)
}
