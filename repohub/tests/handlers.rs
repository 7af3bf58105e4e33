//! In-process handler tests (router + oneshot) for every page and form,
//! including the bad input the issue lists: hostile names, XSS in commits,
//! file names and READMEs, forged CSRF, path traversal, a 50 MB file, and
//! SQL metacharacters.

mod support;

use http::StatusCode;
use support::{Client, FakeCi, FakeMaster, TestApp, commit_at, git, work_repo};
use testkit::fs::free_port;

const PW: &str = "correct horse battery";

async fn signed_up(app: &TestApp, name: &str) -> Client {
    let mut c = app.client();
    let r = c.signup(name, PW).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    c
}

/// `ann`, owner of the public project `p` holding the empty repository `repo`.
async fn ann_with_repo(app: &TestApp, repo: &str) -> Client {
    let mut ann = signed_up(app, "ann").await;
    ann.create_project("p", true).await;
    ann.create_repo("p", repo).await;
    ann
}

#[tokio::test]
async fn signup_login_logout_and_session_cookie_flags() {
    let app = TestApp::new(|_| {});
    let mut c = app.client();
    let r = c.get("/signup").await;
    assert_eq!(r.status, StatusCode::OK);
    let set: Vec<_> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(set.iter().any(|s| s.starts_with("rh_csrf=")
        && s.contains("HttpOnly")
        && s.contains("SameSite=Strict")));
    assert!(r.body.contains("name=\"csrf\""));

    let r = c
        .post("/signup", &[("username", "ann"), ("password", PW)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let sc = r.header("set-cookie");
    assert!(
        sc.starts_with("rh_session=") && sc.contains("HttpOnly") && sc.contains("SameSite=Lax")
    );
    let home = c.get("/").await;
    home.assert_contains(&["ann", "Log out"]);

    // Password stored as argon2id, never in clear.
    let (_, hash) = app.state.db.user_password("ann").unwrap().unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(PW));

    // Duplicate name, short password, bad names.
    let mut d = app.client();
    d.get("/signup").await;
    let r = d
        .post("/signup", &[("username", "ann"), ("password", PW)])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("taken"));
    let r = d
        .post("/signup", &[("username", "bob"), ("password", "short")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for bad in ["a/b", "..", "<script>alert(1)</script>", "x' OR '1'='1"] {
        let r = d
            .post("/signup", &[("username", bad), ("password", PW)])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            !r.body.contains("<script>alert(1)"),
            "name echoed unescaped"
        );
        assert!(app.state.db.user_by_name(bad).unwrap().is_none());
    }

    // Logout, then log in: wrong password refused, right one accepted.
    let r = c.post("/logout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(!c.get("/").await.body.contains("Log out"));
    c.get("/login").await;
    let r = c
        .post(
            "/login",
            &[("username", "ann"), ("password", "wrong password")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c
        .post("/login", &[("username", "nobody' --"), ("password", PW)])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c
        .post("/login", &[("username", "ann"), ("password", PW)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(c.get("/").await.body.contains("Log out"));
}

#[tokio::test]
async fn forged_or_missing_csrf_is_refused_everywhere() {
    let app = TestApp::new(|_| {});
    let mut c = signed_up(&app, "ann").await;
    c.create_project("proj", true).await;
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/signup", vec![("username", "eve"), ("password", PW)]),
        ("/login", vec![("username", "ann"), ("password", PW)]),
        ("/logout", vec![]),
        ("/new", vec![("name", "forged"), ("public", "1")]),
        ("/settings/tokens", vec![("name", "forged")]),
        ("/proj/-/repos", vec![("name", "forged")]),
        ("/proj/-/members", vec![("username", "ann")]),
        ("/proj/-/delete", vec![("confirm", "proj")]),
    ];
    for (path, fields) in cases {
        let mut forged = fields.clone();
        forged.push(("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
        let r = c.post_raw(path, &forged).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "forged csrf on {path}");
        let r = c.post_raw(path, &fields).await;
        assert!(
            r.status == StatusCode::FORBIDDEN || r.status == StatusCode::UNPROCESSABLE_ENTITY,
            "missing csrf on {path}: {}",
            r.status
        );
    }
    // Nothing changed.
    assert!(app.state.db.project("forged").unwrap().is_none());
    assert!(app.state.db.project("proj").unwrap().is_some());
    assert!(app.state.db.user_by_name("eve").unwrap().is_none());
    // A cookie-less client (another site's form) is refused too.
    let mut stranger = app.client();
    let r = stranger
        .post_raw(
            "/signup",
            &[("username", "eve"), ("password", PW), ("csrf", "")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(app.state.db.user_by_name("eve").unwrap().is_none());
}

#[tokio::test]
async fn projects_create_list_view_private_and_delete_with_confirmation() {
    let app = TestApp::new(|_| {});
    let mut ann = signed_up(&app, "ann").await;
    let r = ann.create_project("web", true).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/web"));
    ann.create_project("secret", false).await;
    // Bad names: separators, dots, HTML, reserved, SQL.
    for bad in [
        "a/b",
        "../x",
        "..",
        "<b>x</b>",
        "login",
        "x'; DROP TABLE projects; --",
        "a b",
        "r.git",
        // Not tenant names on the cluster.
        "Shop",
        "my.proj",
        "under_score",
        &"a".repeat(64),
    ] {
        let r = ann.create_project(bad, true).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(!r.body.contains("<b>x</b>"));
    }
    assert_eq!(
        app.state
            .db
            .visible_projects(app.state.db.user_by_name("ann").unwrap().as_ref())
            .unwrap()
            .len(),
        2
    );
    assert!(!app.dir.path().join("data/x").exists());
    // Duplicate.
    assert_eq!(
        ann.create_project("web", true).await.status,
        StatusCode::BAD_REQUEST
    );

    let list = ann.get("/").await;
    list.assert_contains(&["/web", "/secret"]);
    let page = ann.get("/web").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Create repository"));

    // Another user and an anonymous visitor see the public one only.
    let mut bob = signed_up(&app, "bob").await;
    assert!(!bob.get("/").await.body.contains("/secret"));
    assert_eq!(bob.get("/secret").await.status, StatusCode::NOT_FOUND);
    let mut anon = app.client();
    assert_eq!(anon.get("/secret").await.status, StatusCode::NOT_FOUND);
    assert_eq!(anon.get("/web").await.status, StatusCode::OK);
    assert!(!anon.get("/web").await.body.contains("Create repository"));
    // Non-owners cannot delete or add members.
    bob.get("/web").await;
    assert_eq!(
        bob.post("/web/-/delete", &[("confirm", "web")])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(bob.get("/web/-/delete").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        bob.post("/web/-/repos", &[("name", "x")]).await.status,
        StatusCode::FORBIDDEN
    );
    // Owner adds bob; then bob may create repositories.
    assert_eq!(
        ann.post("/web/-/members", &[("username", "bob")])
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        bob.post("/web/-/repos", &[("name", "bobs")]).await.status,
        StatusCode::SEE_OTHER
    );

    // Delete: wrong confirmation keeps it; right one removes row and directory.
    ann.create_repo("web", "app").await;
    let repo_dir = app.state.repo_dir("web", "app");
    assert!(repo_dir.join("HEAD").exists());
    assert_eq!(ann.get("/web/-/delete").await.status, StatusCode::OK);
    let r = ann.post("/web/-/delete", &[("confirm", "wrong")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(app.state.db.project("web").unwrap().is_some());
    let r = ann.post("/web/-/delete", &[("confirm", "web")]).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"));
    assert!(app.state.db.project("web").unwrap().is_none());
    assert!(!repo_dir.exists());
    assert_eq!(ann.get("/web").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn repositories_create_view_delete_and_bad_names() {
    let app = TestApp::new(|_| {});
    let mut ann = signed_up(&app, "ann").await;
    ann.create_project("p", true).await;
    let r = ann.create_repo("p", "app").await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/p/app"));
    let dir = app.state.repo_dir("p", "app");
    let repo = git2::Repository::open_bare(&dir).unwrap();
    assert!(repo.is_bare());
    let hook = std::fs::read_to_string(dir.join("hooks/post-receive")).unwrap();
    assert!(hook.contains("exit 0"));
    let page = ann.get("/p/app").await;
    assert!(
        page.body.contains("id=\"empty-repo\"")
            && page.body.contains("http://repohub.test/p/app.git"),
        "{}",
        page.body
    );
    for bad in [
        "../../etc",
        "a/b",
        "<img src=x>",
        "x.git",
        "..",
        "'; DELETE FROM repositories; --",
    ] {
        let r = ann.create_repo("p", bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(app.state.db.repos(1).unwrap().len(), 1);
    assert_eq!(
        ann.create_repo("p", "app").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(ann.get("/p/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(ann.get("/p/..").await.status, StatusCode::NOT_FOUND);

    assert_eq!(ann.get("/p/app/delete").await.status, StatusCode::OK);
    assert_eq!(
        ann.post("/p/app/delete", &[("confirm", "nope")])
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert!(dir.exists());
    assert_eq!(
        ann.post("/p/app/delete", &[("confirm", "app")])
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    assert!(!dir.exists());
    assert_eq!(ann.get("/p/app").await.status, StatusCode::NOT_FOUND);
}

/// Whether the database still accepts the API token `t`.
fn token_known(app: &TestApp, t: &str) -> bool {
    let hash = repohub::auth::sha256_hex(t);
    app.state.db.token_user(&hash).unwrap().is_some()
}

#[tokio::test]
async fn tokens_create_list_revoke() {
    let app = TestApp::new(|_| {});
    let mut anon = app.client();
    let r = anon.get("/settings/tokens").await;
    assert_eq!(
        (r.status, r.location()),
        (StatusCode::SEE_OTHER, "/login?next=%2Fsettings%2Ftokens")
    );
    let mut ann = signed_up(&app, "ann").await;
    let t = ann.token().await;
    assert_eq!(t.len(), 43);
    assert!(token_known(&app, &t));
    let page = ann.get("/settings/tokens").await;
    assert!(
        page.body.contains("git") && !page.body.contains(&t),
        "token must be shown once only"
    );
    let r = ann
        .post(
            "/settings/tokens",
            &[("name", "<script>x</script>' OR 1=1 --")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("&#60;script&#62;x&#60;/script&#62;") && !r.body.contains("<script>x"));
    assert_eq!(
        ann.post("/settings/tokens", &[("name", "")]).await.status,
        StatusCode::BAD_REQUEST
    );
    // Another user cannot revoke ann's token.
    let mut bob = signed_up(&app, "bob").await;
    bob.get("/settings/tokens").await;
    assert_eq!(
        bob.post("/settings/tokens/1/delete", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ann.post("/settings/tokens/1/delete", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    assert!(!token_known(&app, &t));
}

/// Pushes a hostile history straight into the bare repository (file
/// transport) and checks every browsing page renders it inert.
#[tokio::test]
async fn browsing_renders_hostile_content_inert_and_refuses_traversal() {
    let app = TestApp::new(|_| {});
    let mut ann = ann_with_repo(&app, "r").await;
    let bare = app.state.repo_dir("p", "r");

    let big = vec![b'a'; 50 * 1024 * 1024];
    let readme = b"# Hello\n\n<script>alert('readme')</script>\n\n[click](javascript:alert(1))\n\n<img src=x onerror=alert(2)>\n\n**bold**\n";
    let files: Vec<(&str, &[u8])> = vec![
        ("README.md", readme),
        ("<img src=x onerror=alert(3)>.txt", b"hostile name"),
        (
            "src/main.rs",
            b"fn main() { println!(\"<script>alert(4)</script>\"); }\n",
        ),
        ("page.html", b"<html><script>alert(5)</script></html>"),
        ("bin.dat", b"\x00\x01\x02\xff\xfe binary"),
        ("big.txt", &big),
    ];
    let work = work_repo(
        app.dir.path(),
        &files,
        "first <script>alert('msg')</script>",
    );
    for i in 0..55 {
        commit_at(
            &work,
            &format!("commit {i} x' OR 1=1; --"),
            1_600_000_001 + i,
        );
    }
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);

    // Repo page: README rendered from Markdown and sanitised.
    let page = ann.get("/p/r").await;
    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&["<h1>Hello</h1>", "<strong>bold</strong>"]);
    assert!(!page.body.contains("<script>alert"));
    assert!(!page.body.contains("javascript:") && !page.body.contains("onerror"));
    assert!(
        page.body.contains("id=\"generate-flake\""),
        "no flake.nix so the button shows"
    );
    assert!(
        page.header("content-security-policy")
            .contains("script-src 'self'")
    );

    // Log: paginated, messages escaped, SQL-ish text is just text.
    let log = ann.get("/p/r/log/main").await;
    assert_eq!(log.status, StatusCode::OK);
    assert_eq!(
        log.body.matches("<tr><td><a href=\"/p/r/commit/").count(),
        50
    );
    assert!(log.body.contains("id=\"older\""));
    assert!(
        log.body.contains("commit 54 x&#39; OR 1=1; --")
            || log.body.contains("commit 54 x&#x27; OR 1=1; --")
    );
    // "Older" carries a cursor (the walk's frontier) so deep pages cost
    // the same as the first; the plain page number gives the same page.
    let start = log.body.find("id=\"older\"").unwrap();
    let href_at = log.body[..start].rfind("href=\"").unwrap() + 6;
    let href = log.body[href_at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    // Pages are numbered from 1 in the URL, as on the page.
    assert!(href.starts_with("?page=2&after="), "{href}");
    let by_cursor = ann.get(&format!("/p/r/log/main{href}")).await;
    let page2 = ann.get("/p/r/log/main?page=2").await;
    page2.assert_contains(&["page 2"]);
    let rows = |b: &str| b.matches("/p/r/commit/").count();
    assert_eq!(by_cursor.status, StatusCode::OK);
    assert_eq!(rows(&by_cursor.body), rows(&page2.body));
    assert!(by_cursor.body.contains("first &#60;script&#62;alert("));
    for bad in [
        "?after=zz",
        "?after=",
        "?after=..%2F..",
        "?after=0000000000000000000000000000000000000000",
    ] {
        let r = ann.get(&format!("/p/r/log/main{bad}")).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_FOUND,
            "{bad}: {}",
            r.status
        );
    }
    assert!(page2.body.contains("first &#60;script&#62;alert("));
    assert!(!page2.body.contains("<script>alert"));
    assert!(!page2.body.contains("id=\"older\"") && page2.body.contains("id=\"newer\""));
    for (path, want) in [
        ("/p/r/log/nope", StatusCode::NOT_FOUND),
        ("/p/r/log/main~1", StatusCode::BAD_REQUEST),
        ("/p/r/log/main?page=abc", StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(ann.get(path).await.status, want, "{path}");
    }

    // Tree: hostile file name escaped, link percent-encoded.
    let tree = ann.get("/p/r/tree/main").await;
    assert_eq!(tree.status, StatusCode::OK);
    assert!(
        tree.body
            .contains("&#60;img src=x onerror=alert(3)&#62;.txt")
    );
    assert!(!tree.body.contains("<img src=x"));
    assert!(
        tree.body
            .contains("%3Cimg%20src%3Dx%20onerror%3Dalert%283%29%3E.txt")
    );
    assert!(tree.body.contains("50.0 MiB"));
    let sub = ann.get("/p/r/tree/main/src").await;
    assert!(sub.body.contains("main.rs"));
    let file = ann.get("/p/r/tree/main/src/main.rs").await;
    assert!(
        file.body
            .contains("println!(&#34;&#60;script&#62;alert(4)&#60;/script&#62;&#34;)")
            || file.body.contains("&#60;script&#62;alert(4)")
    );
    assert!(!file.body.contains("<script>alert(4)"));
    let hostile = ann
        .get("/p/r/tree/main/%3Cimg%20src%3Dx%20onerror%3Dalert%283%29%3E.txt")
        .await;
    assert_eq!(hostile.status, StatusCode::OK);
    assert!(hostile.body.contains("hostile name"));

    // Binary and 50 MB files: notices, quickly, without the content.
    let bin = ann.get("/p/r/tree/main/bin.dat").await;
    assert!(bin.body.contains("id=\"binary-file\""));
    let t0 = std::time::Instant::now();
    let bigv = ann.get("/p/r/tree/main/big.txt").await;
    assert_eq!(bigv.status, StatusCode::OK);
    assert!(bigv.body.contains("id=\"large-file\""));
    assert!(bigv.body.len() < 20_000, "50 MB file must not be inlined");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));

    // Traversal and malformed paths are refused before git is asked.
    for bad in [
        "/p/r/tree/main/..%2F..%2F..%2Fetc%2Fpasswd",
        "/p/r/tree/main/src/%2e%2e/%2e%2e/Cargo.toml",
        "/p/r/tree/main/src/../../../etc/passwd",
        "/p/r/tree/main/a%5C..%5Cb",
        "/p/r/raw/main/..%2Fconfig",
    ] {
        let r = ann.get(bad).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_FOUND,
            "{bad}: {}",
            r.status
        );
        assert!(!r.body.contains("root:"), "{bad}");
        assert!(!r.body.contains("repositoryformatversion"), "{bad}");
    }
    assert_eq!(
        ann.get("/p/r/tree/main/missing.txt").await.status,
        StatusCode::NOT_FOUND
    );

    // Raw: HTML served as text with a sandbox CSP, never as HTML.
    let raw = ann.get("/p/r/raw/main/page.html").await;
    assert_eq!(raw.status, StatusCode::OK);
    assert!(raw.header("content-type").starts_with("text/plain"));
    assert!(raw.header("content-security-policy").contains("sandbox"));
    assert_eq!(raw.headers["x-content-type-options"], "nosniff");
    let rawbin = ann.get("/p/r/raw/main/bin.dat").await;
    assert_eq!(rawbin.headers["content-type"], "application/octet-stream");

    // Commit page.
    let head = git(&work, &["rev-parse", "HEAD~55"]).trim().to_owned();
    let c = ann.get(&format!("/p/r/commit/{head}")).await;
    assert_eq!(c.status, StatusCode::OK);
    c.assert_contains(&["first &#60;script&#62;", "README.md"]);
    assert!(!c.body.contains("<b>Author"));
    assert_eq!(
        ann.get("/p/r/commit/zzzz").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        ann.get(&format!("/p/r/commit/{}", "0".repeat(40)))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let at = ann.get(&format!("/p/r/tree/{head}")).await;
    assert_eq!(at.status, StatusCode::OK);

    // Branch list on the repo page.
    page.assert_contains(&["id=\"branches\"", ">main</a>"]);
}

#[tokio::test]
async fn panels_say_unavailable_when_services_are_down_and_the_rest_works() {
    let dead_ci = free_port();
    let dead_cp = free_port();
    let app = TestApp::new(|c| {
        c.ci_url = Some(format!("http://{dead_ci}"));
        c.control_plane = Some(dead_cp.to_string());
    });
    let mut ann = ann_with_repo(&app, "r").await;
    let page = ann.get("/p").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("ci_service unavailable:"),
        "{}",
        page.body
    );
    assert!(page.body.contains("control plane unavailable:"));
    let ci = ann.get("/p/-/panel/ci").await;
    assert!(ci.body.contains("id=\"ci-unavailable\""));
    let cl = ann.get("/p/-/panel/cluster").await;
    assert!(cl.body.contains("id=\"cluster-unavailable\""));
    assert_eq!(ann.get("/p/r").await.status, StatusCode::OK);

    // Not configured at all.
    let app2 = TestApp::new(|_| {});
    let mut c = signed_up(&app2, "ann").await;
    c.create_project("q", true).await;
    let page = c.get("/q").await;
    assert!(page.body.contains("ci_service unavailable: not configured"));
    assert!(
        page.body
            .contains("control plane unavailable: control plane is not configured")
    );
}

#[tokio::test]
async fn ci_panel_jobs_specs_job_page_and_log_proxy() {
    let ci = FakeCi::start().await;
    let app = TestApp::new(|c| c.ci_url = Some(ci.url()));
    let mut ann = ann_with_repo(&app, "r").await;
    let path = app.state.repo_dir("p", "r").to_string_lossy().into_owned();
    let ok = ci.add_job(&path, "succeeded");
    let failed = ci.add_job(&path, "failed");
    let foreign = ci.add_job("/elsewhere/other.git", "succeeded");

    let page = ann.get("/p").await;
    assert!(
        page.body.contains(&format!("/p/-/jobs/{ok}"))
            && page.body.contains(&format!("/p/-/jobs/{failed}"))
    );
    assert!(!page.body.contains(&format!("/p/-/jobs/{foreign}\"")));
    page.assert_contains(&["state-succeeded", "1.5 s"]);
    page.assert_contains(&["id=\"vm-specs\"", "web-1", "512 MiB"]);
    let panel = ann.get("/p/-/panel/ci").await;
    assert!(panel.body.contains("id=\"ci-jobs\"") && !panel.body.contains("<html"));

    let job = ann.get(&format!("/p/-/jobs/{failed}")).await;
    assert_eq!(job.status, StatusCode::OK);
    assert!(
        job.body
            .contains("nix build failed: &#60;b&#62;boom&#60;/b&#62;")
    );
    job.assert_contains(&["evaluating flake", "&#60;script&#62;alert(1)"]);
    assert!(
        job.body
            .contains(&format!("data-follow=\"/p/-/jobs/{failed}/log?follow=1\""))
    );
    let log = ann.get(&format!("/p/-/jobs/{failed}/log?follow=1")).await;
    assert_eq!(log.status, StatusCode::OK);
    assert!(log.header("content-type").starts_with("text/plain"));
    assert!(log.body.contains("published generation"));
    // A job of another repository is not shown through this project.
    assert_eq!(
        ann.get(&format!("/p/-/jobs/{foreign}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ann.get(&format!("/p/-/jobs/{foreign}/log")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(ann.get("/p/-/jobs/999").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cluster_panel_from_a_real_capnp_master() {
    let master = FakeMaster::start();
    let app = TestApp::new(|c| c.control_plane = Some(master.addr.to_string()));
    let mut anon = app.client();
    let mut ann = signed_up(&app, "ann").await;
    ann.create_project("shop", true).await;
    let page = anon.get("/shop").await;
    assert!(page.body.contains("id=\"cluster-vms\""), "{}", page.body);
    page.assert_contains(&["Generation <strong>7</strong>", "converged 50%"]);
    page.assert_contains(&["web-1", "db-&#60;1&#62;"]);
    page.assert_contains(&["state-drifted", "0123456789ab"]);
    // One capacity wording everywhere; the dead worker-b has none free.
    page.assert_contains(&["worker-a", "unhealthy", "0 used, 8 free of 8 vCPU"]);
    page.assert_contains(&["8 vCPU unavailable (worker unhealthy)"]);
    let frag = anon.get("/shop/-/panel/cluster").await;
    assert!(frag.body.contains("id=\"cluster-workers\""));
}

#[tokio::test]
async fn generate_flake_runs_autonix_on_the_head_and_shows_it_escaped() {
    let app = TestApp::new(|_| {});
    let mut ann = ann_with_repo(&app, "shop").await;
    let files: Vec<(&str, &[u8])> = vec![
        (
            "Cargo.toml",
            b"[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        ),
        ("src/main.rs", b"fn main() {}\n"),
        (
            "package.json",
            b"{\"name\": \"<script>alert(1)</script>\", \"version\": \"1.0.0\"}",
        ),
    ];
    let work = work_repo(app.dir.path(), &files, "init");
    app.push_direct(&work, "p", "shop");
    let page = ann.get("/p/shop").await;
    assert!(page.body.contains("id=\"generate-flake\""));
    let r = ann.post("/p/shop/autonix", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("id=\"generated-flake\""), "{}", r.body);
    r.assert_contains(&["buildRustPackage", "shop (generated by autonix)"]);
    // The cluster file `pcr init` would write: the runnable crate's VM group.
    assert!(r.body.contains("id=\"generated-cluster\""), "{}", r.body);
    r.assert_contains(&["entrypoint = &#34;exec ${packages.hello}/bin/hello&#34;;"]);
    assert!(!r.body.contains("<script>alert") && !r.body.contains("\"script>\""));
    // Nothing was committed: the repository still has no flake.nix.
    let again = ann.get("/p/shop").await;
    assert!(again.body.contains("id=\"generate-flake\""));
    // Anonymous visitors and forged forms cannot run it.
    let mut anon = app.client();
    anon.get("/p/shop").await;
    let r = anon.post("/p/shop/autonix", &[]).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"));
    let r = ann.post_raw("/p/shop/autonix", &[("csrf", "x")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn flake_panel_shows_flake_nix_escaped() {
    let app = TestApp::new(|_| {});
    let mut ann = ann_with_repo(&app, "infra").await;
    let flake = b"{ outputs = { self }: { cluster = \"<script>alert(1)</script>\"; }; }\n";
    let work = work_repo(app.dir.path(), &[("flake.nix", flake)], "flake");
    app.push_direct(&work, "p", "infra");
    let page = ann.get("/p").await;
    assert!(page.body.contains("id=\"flake\""));
    assert!(
        page.body
            .contains("cluster = &#34;&#60;script&#62;alert(1)&#60;/script&#62;&#34;")
    );
    let repo = ann.get("/p/infra").await;
    assert!(!repo.body.contains("generate-flake"));
}

#[tokio::test]
async fn static_assets_security_headers_and_unknown_pages() {
    let app = TestApp::new(|_| {});
    let mut c = app.client();
    let css = c.get("/static/style.css").await;
    assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");
    assert!(
        !css.body.contains("http://") && !css.body.contains("https://"),
        "no external resources"
    );
    let js = c.get("/static/live.js").await;
    assert!(js.body.contains("data-follow"));
    let home = c.get("/").await;
    assert_eq!(home.headers["x-frame-options"], "DENY");
    assert!(!home.body.contains("https://"), "no CDN");
    let nf = c.get("/does/not/exist/at/all").await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    let nf = c.get("/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    assert!(!nf.body.contains("<script>alert"));
}
