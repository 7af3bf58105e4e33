//! git over smart HTTP against a real repohub server (in-process `run` on a
//! loopback port) with the real git client: anonymous clone of public
//! repositories, pushes only for members with a token, private projects,
//! and the post-receive notification to ci_service, including while
//! ci_service is down.

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use support::{
    FakeCi, Server, TestApp, ann_with_p_r, app_and_server, config, eventually, git_async,
    push_main, work_repo,
};

const PW: &str = "correct horse battery";

/// `ann` with a public project `p` holding repository `r`, and her push
/// token.
/// `git clone -q url dest` from the test's directory; (success, output).
async fn clone(app: &TestApp, url: &str, dest: &std::path::Path) -> (bool, String) {
    let dest = dest.to_str().unwrap();
    git_async(app.dir.path(), &["clone", "-q", url, dest]).await
}

/// Where `p/r` lives on disk: the repository path ci_service is told about.
fn p_r_path(app: &TestApp) -> String {
    app.state.repo_dir("p", "r").to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_and_push_need_the_right_credentials_and_notify_ci() {
    let ci = FakeCi::start().await;
    let (app, srv) = app_and_server(ci.configure()).await;
    let mut ann = app.client();
    ann.signup("ann", PW).await;
    ann.create_project("p", true).await;
    ann.create_repo("p", "r").await;
    ann.create_project("s", false).await;
    ann.create_repo("s", "hidden").await;
    let ann_token = ann.token().await;
    let mut bob = app.client();
    bob.signup("bob", PW).await;
    let bob_token = bob.token().await;

    let work = work_repo(
        app.dir.path(),
        &[
            ("README.md", b"# pushed over http\n"),
            ("flake.nix", b"{ outputs = _: {}; }\n"),
        ],
        "pushed over http",
    );
    let head = git_async(&work, &["rev-parse", "HEAD"])
        .await
        .1
        .trim()
        .to_owned();

    // Anonymous, wrong-token and non-member pushes fail and change nothing.
    let (ok, out) = git_async(&work, &["push", &srv.url("/p/r.git"), "main"]).await;
    assert!(!ok, "anonymous push must fail: {out}");
    let bad = "A".repeat(43);
    let (ok, out) = git_async(
        &work,
        &["push", &srv.auth_url("ann", &bad, "/p/r.git"), "main"],
    )
    .await;
    assert!(
        !ok && (out.contains("401") || out.contains("Authentication failed")),
        "{out}"
    );
    let (ok, out) = git_async(
        &work,
        &["push", &srv.auth_url("bob", &bob_token, "/p/r.git"), "main"],
    )
    .await;
    assert!(
        !ok && out.contains("403"),
        "non-member push must be refused: {out}"
    );
    assert!(repohub::git::is_empty(
        &repohub::git::open(&app.state.repo_dir("p", "r")).unwrap()
    ));

    // A member with a token pushes; the hook is fast and the push succeeds.
    let t0 = Instant::now();
    push_main(&work, &srv.auth_url("ann", &ann_token, "/p/r.git")).await;
    assert!(t0.elapsed() < Duration::from_secs(10));

    // The commit shows in the log.
    let log = ann.get("/p/r/log/main").await;
    assert!(log.body.contains(&head[..10]) && log.body.contains("pushed over http"));

    // ci_service got (repo, ref, old, new) with the bearer secret.
    assert!(
        eventually(10, || !ci.pushes().is_empty()).await,
        "no notification reached ci_service"
    );
    let p = &ci.pushes()[0];
    assert_eq!(
        p["repo"],
        app.state.repo_dir("p", "r").to_string_lossy().as_ref()
    );
    assert_eq!(p["ref"], "refs/heads/main");
    assert_eq!(p["old"], "0".repeat(40));
    assert_eq!(p["new"], head.as_str());
    // ... and the project page lists the job it created.
    let page = ann.get("/p").await;
    assert!(page.body.contains("/p/-/jobs/"), "{}", page.body);

    // Anonymous clone of the public repository works.
    let dest = app.dir.path().join("anon-clone");
    let (ok, out) = clone(&app, &srv.url("/p/r.git"), &dest).await;
    assert!(ok, "anonymous clone: {out}");
    assert!(dest.join("README.md").exists());

    // Private project: anonymous and non-member clones fail; the member's works.
    let work2 = work_repo(app.dir.path(), &[("a.txt", b"secret")], "secret");
    push_main(&work2, &srv.auth_url("ann", &ann_token, "/s/hidden.git")).await;
    let d2 = app.dir.path().join("c2");
    let (ok, _) = clone(&app, &srv.url("/s/hidden.git"), &d2).await;
    assert!(!ok, "anonymous clone of a private repo must fail");
    let (ok, out) = clone(&app, &srv.auth_url("bob", &bob_token, "/s/hidden.git"), &d2).await;
    assert!(
        !ok && (out.contains("404") || out.contains("not found")),
        "{out}"
    );
    let (ok, out) = clone(&app, &srv.auth_url("ann", &ann_token, "/s/hidden.git"), &d2).await;
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_to_string(d2.join("a.txt")).unwrap(), "secret");

    // Unknown repositories and hostile names.
    let d3 = app.dir.path().join("c3");
    for path in ["/p/nope.git", "/p/..%2F..%2Fs%2Fhidden.git", "/nope/r.git"] {
        let (ok, _) = clone(&app, &srv.auth_url("ann", &ann_token, path), &d3).await;
        assert!(!ok, "{path}");
    }
    assert_eq!(
        ci.state
            .unauthorized
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_succeeds_while_ci_is_down_and_is_delivered_when_it_returns() {
    let ci = FakeCi::start().await;
    ci.set_up(false);
    let (app, srv) = app_and_server(ci.configure()).await;
    let (mut ann, token) = ann_with_p_r(&app).await;
    let work = work_repo(app.dir.path(), &[("x", b"1")], "one");
    let t0 = Instant::now();
    // The push must not fail while ci_service is down.
    push_main(&work, &srv.auth_url("ann", &token, "/p/r.git")).await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    let path = p_r_path(&app);
    // Queued, retried, not lost.
    assert!(
        eventually(10, || app.state.db.due_pushes(10).map(|_| ()).is_ok()
            && pending_attempts(&app, &path) >= 2)
        .await,
        "the event should be retried while ci_service is down"
    );
    let page = ann.get("/p").await;
    assert!(page.body.contains("waiting for CI"));
    ci.set_up(true);
    assert!(
        eventually(10, || ci.pushes().len() == 1).await,
        "delivered after ci_service came back"
    );
    assert_eq!(app.state.db.push_counts(&path).unwrap(), (0, 1));
}

fn pending_attempts(app: &TestApp, path: &str) -> i64 {
    let c = rusqlite::Connection::open(app.dir.path().join("data/repohub.sqlite")).unwrap();
    c.query_row(
        "SELECT COALESCE(MAX(attempts), 0) FROM push_events WHERE repo_path = ?1 AND delivered_at_ms IS NULL",
        [path],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_succeeds_when_ci_refuses_connections() {
    let dead = testkit::fs::free_port();
    let (app, srv) = app_and_server(|c| c.ci_url = Some(format!("http://{dead}"))).await;
    let (_ann, token) = ann_with_p_r(&app).await;
    let work = work_repo(app.dir.path(), &[("x", b"1")], "one");
    push_main(&work, &srv.auth_url("ann", &token, "/p/r.git")).await;
    let path = p_r_path(&app);
    assert!(eventually(10, || pending_attempts(&app, &path) >= 1).await);
    assert_eq!(app.state.db.push_counts(&path).unwrap().0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_survive_a_restart_and_a_broken_spool_never_fails_a_push() {
    let ci = FakeCi::start().await;
    ci.set_up(false);
    let edit = ci.configure();
    let (app, srv) = app_and_server(&edit).await;
    let (_ann, token) = ann_with_p_r(&app).await;
    let work = work_repo(app.dir.path(), &[("x", b"1")], "one");
    push_main(&work, &srv.auth_url("ann", &token, "/p/r.git")).await;
    let path = p_r_path(&app);
    assert!(eventually(10, || pending_attempts(&app, &path) >= 1).await);

    // repohub stops with the event undelivered; a new instance on the same
    // data directory delivers it once ci_service is back.
    srv.stop().await;
    ci.set_up(true);
    let mut c2 = config(app.dir.path());
    edit(&mut c2);
    let srv2 = Server::start(c2).await;
    assert!(
        eventually(10, || ci.pushes().len() == 1).await,
        "the queued push was lost across a restart"
    );

    // The hook cannot write its spool file (directory replaced by a file):
    // the push still succeeds.
    let spool = app.dir.path().join("data/spool");
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::write(&spool, b"not a directory").unwrap();
    std::fs::write(work.join("x"), b"2").unwrap();
    git_async(&work, &["commit", "-qam", "two"]).await;
    let (ok, out) = git_async(
        &work,
        &["push", &srv2.auth_url("ann", &token, "/p/r.git"), "main"],
    )
    .await;
    assert!(ok, "a broken spool must not fail the push: {out}");
    std::fs::remove_file(&spool).unwrap();
}

/// `git config --get key` of a bare repository.
fn config_of(dir: &std::path::Path, key: &str) -> String {
    support::git(dir, &["config", "--get", key])
        .trim()
        .to_owned()
}

/// Bytes no compressor shrinks (xorshift), so a pack is as big as its data.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_check_what_they_receive_and_refuse_oversized_pushes() {
    let (app, srv) = app_and_server(|c| {
        c.limits.receive.max_pack_bytes = 256 * 1024;
        c.limits.max_push_body = 2 * 1024 * 1024;
    })
    .await;
    let (_ann, token) = ann_with_p_r(&app).await;
    let bare = app.state.repo_dir("p", "r");
    assert_eq!(config_of(&bare, "receive.fsckObjects"), "true");
    assert_eq!(config_of(&bare, "receive.maxInputSize"), "262144");
    let url = srv.auth_url("ann", &token, "/p/r.git");

    // A commit object without an author line: fsck refuses it and no ref moves.
    let work = work_repo(app.dir.path(), &[("a", b"1")], "good");
    let tree = support::git(&work, &["rev-parse", "HEAD^{tree}"]);
    let bad = format!("tree {}\n\nno author\n", tree.trim());
    let f = work.join("bad-commit");
    std::fs::write(&f, bad).unwrap();
    let id = support::git(
        &work,
        &[
            "hash-object",
            "-t",
            "commit",
            "--literally",
            "-w",
            f.to_str().unwrap(),
        ],
    );
    support::git(&work, &["update-ref", "refs/heads/bad", id.trim()]);
    let (ok, out) = git_async(&work, &["push", &url, "bad"]).await;
    assert!(!ok, "a corrupt object was accepted: {out}");
    assert!(
        out.contains("missingAuthor") || out.contains("fsck"),
        "{out}"
    );
    let heads = support::git(&bare, &["for-each-ref", "--format=%(refname)"]);
    assert!(!heads.contains("refs/heads/bad"), "{heads}");

    // A pack over receive.maxInputSize: git refuses it.
    std::fs::write(work.join("big.bin"), noise(600 * 1024, 7)).unwrap();
    support::git(&work, &["add", "big.bin"]);
    support::git(&work, &["commit", "-qm", "big"]);
    let (ok, out) = git_async(&work, &["push", &url, "main"]).await;
    assert!(!ok, "an oversized pack was accepted: {out}");
    assert!(out.contains("pack exceeds maximum allowed size"), "{out}");

    // A request body over repohub's own bound: 413 (git's own limit raised
    // so that only repohub's bound is in the way).
    support::git(&bare, &["config", "receive.maxInputSize", "100000000"]);
    std::fs::write(work.join("huge.bin"), noise(3 * 1024 * 1024, 11)).unwrap();
    support::git(&work, &["add", "huge.bin"]);
    support::git(&work, &["commit", "-qm", "huge"]);
    let (ok, out) = git_async(&work, &["push", &url, "main"]).await;
    assert!(!ok, "an oversized body was accepted: {out}");
    assert!(out.contains("413"), "{out}");
    let heads = support::git(&bare, &["for-each-ref", "--format=%(refname)"]);
    assert!(!heads.contains("refs/heads/main"), "{heads}");
    srv.stop().await;

    // A repository made before these settings gets them at the next start.
    support::git(&bare, &["config", "--unset", "receive.fsckObjects"]);
    support::git(&bare, &["config", "--unset", "receive.maxInputSize"]);
    let st = repohub::AppState::new(&config(app.dir.path())).unwrap();
    assert_eq!(config_of(&bare, "receive.fsckObjects"), "true");
    assert_eq!(
        config_of(&bare, "receive.maxInputSize"),
        st.limits.receive.max_pack_bytes.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_requests_over_their_bound_get_413_whether_declared_or_streamed() {
    let app = TestApp::new(|c| c.limits.max_fetch_body = 1024);
    let (mut ann, _token) = ann_with_p_r(&app).await;
    let post = |body: Body, len: Option<usize>| {
        let mut r = http::Request::post("/p/r.git/git-upload-pack").header(
            http::header::CONTENT_TYPE,
            "application/x-git-upload-pack-request",
        );
        if let Some(n) = len {
            r = r.header(http::header::CONTENT_LENGTH, n);
        }
        r.body(body).unwrap()
    };
    // Declared too large: refused before git runs.
    let r = ann.send(post(Body::empty(), Some(10 * 1024 * 1024))).await;
    assert_eq!(r.status, http::StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body.contains("fetch request too large"), "{}", r.body);
    // Streamed without a length: cut at the bound, still a 413.
    let chunks = futures::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'0'; 4096]))),
    );
    let r = ann.send(post(Body::from_stream(chunks), None)).await;
    assert_eq!(r.status, http::StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
}

/// `git clone http://host/P/R` (no `.git`) works like `/P/R.git`, for fetch
/// and push, behind the same checks: anonymous pushes, non-members and
/// private projects are refused the same way under both spellings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_urls_work_without_dot_git_with_the_same_auth() {
    let (app, srv) = app_and_server(|_| {}).await;
    let (mut ann, ann_token) = ann_with_p_r(&app).await;
    ann.create_project("s", false).await;
    ann.create_repo("s", "hidden").await;
    let mut bob = app.client();
    bob.signup("bob", PW).await;
    let bob_token = bob.token().await;
    let work = work_repo(
        app.dir.path(),
        &[("README.md", b"# no dot git\n")],
        "pushed without .git",
    );

    // Anonymous and non-member pushes to the .git-less URL fail.
    let (ok, out) = git_async(&work, &["push", &srv.url("/p/r"), "main"]).await;
    assert!(!ok, "anonymous push must fail: {out}");
    let (ok, out) = git_async(
        &work,
        &["push", &srv.auth_url("bob", &bob_token, "/p/r"), "main"],
    )
    .await;
    assert!(!ok && out.contains("403"), "{out}");
    assert!(
        support::git(&work, &["ls-remote", &srv.url("/p/r")])
            .trim()
            .is_empty(),
        "refused pushes stored nothing"
    );

    // The member pushes without .git; anyone clones without .git.
    push_main(&work, &srv.auth_url("ann", &ann_token, "/p/r")).await;
    let dest = app.dir.path().join("clone-no-dot-git");
    let (ok, out) = clone(&app, &srv.url("/p/r"), &dest).await;
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(dest.join("README.md")).unwrap(),
        "# no dot git\n"
    );
    // Both spellings see the same refs.
    let with = support::git(&work, &["ls-remote", &srv.url("/p/r.git")]);
    let without = support::git(&work, &["ls-remote", &srv.url("/p/r")]);
    assert!(
        with.contains("refs/heads/main") && with == without,
        "{with} / {without}"
    );

    // A private repository stays hidden without .git too.
    let (ok, out) = clone(
        &app,
        &srv.url("/s/hidden"),
        &app.dir.path().join("anon-hidden"),
    )
    .await;
    // Asked for credentials (git cannot prompt here), as with .git.
    assert!(!ok && out.contains("could not read Username"), "{out}");
    let (ok, out) = clone(
        &app,
        &srv.auth_url("bob", &bob_token, "/s/hidden"),
        &app.dir.path().join("bob-hidden"),
    )
    .await;
    assert!(!ok && out.contains("not found"), "{out}");
    let (ok, out) = clone(
        &app,
        &srv.auth_url("ann", &ann_token, "/s/hidden"),
        &app.dir.path().join("ann-hidden"),
    )
    .await;
    assert!(ok, "{out}");

    // The clone URL pasted into a browser goes to the repository's page.
    let r = ann.get("/p/r.git").await;
    assert_eq!(
        (r.status, r.location()),
        (http::StatusCode::SEE_OTHER, "/p/r")
    );
}
