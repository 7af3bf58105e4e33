//! Tenancy and trust on repohub, each test playing the attack: signup is
//! closed unless opened, only admins and allowed accounts create projects,
//! a project's deploy repository and ref travel in the push event, the
//! cluster panel shows a viewer only its projects from one shared status,
//! CSRF tokens are bound to their session, logins are rate-limited, and
//! job logs are shown bounded.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use http::StatusCode;
use support::{
    Client, FakeCi, FakeMaster, TestApp, app_and_server, eventually, git, push_main, work_repo,
};

const PW: &str = "correct horse battery";

/// An app with signup and project creation closed, as repohub starts by
/// default.
fn closed_app(edit: impl FnOnce(&mut repohub::Config)) -> TestApp {
    TestApp::new(|c| {
        c.open_signup = false;
        c.signup_may_create_projects = false;
        edit(c);
    })
}

/// Logs `name` in through the login form.
async fn login(app: &TestApp, name: &str) -> Client {
    let mut c = app.client();
    c.get("/login").await;
    let r = try_login(&mut c, name, PW).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    c
}

/// An account made as `repohub admin create-user` does.
fn make_user(app: &TestApp, name: &str, rights: repohub::admin::Rights) {
    let kdf = repohub::auth::KdfParams::insecure_for_tests();
    repohub::admin::create_user(&app.state.db, &kdf, name, PW, rights).unwrap();
}

/// Posts the deploy form of project `shop`.
async fn set_deploy(c: &mut Client, repo: &str, git_ref: &str) -> support::Resp {
    c.post("/shop/-/deploy", &[("repo", repo), ("git_ref", git_ref)])
        .await
}

/// Posts the login form as `name` with `password`.
async fn try_login(c: &mut Client, name: &str, password: &str) -> support::Resp {
    c.post("/login", &[("username", name), ("password", password)])
        .await
}

const ADMIN: repohub::admin::Rights = repohub::admin::Rights {
    admin: true,
    may_create_projects: false,
};
const PLAIN: repohub::admin::Rights = repohub::admin::Rights {
    admin: false,
    may_create_projects: false,
};

#[tokio::test]
async fn signup_is_closed_by_default_and_opened_by_the_flag() {
    let closed = closed_app(|_| {});
    let mut eve = closed.client();
    let form = eve.get("/signup").await;
    assert_eq!(form.status, StatusCode::FORBIDDEN);
    form.assert_contains(&["Sign-up is closed", "repohub admin create-user"]);
    let home = eve.get("/").await;
    assert!(!home.body.contains("href=\"/signup\""), "no Sign up link");
    let r = eve
        .post("/signup", &[("username", "eve"), ("password", PW)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(closed.state.db.user_by_name("eve").unwrap().is_none());

    let open = TestApp::new(|c| {
        c.open_signup = true;
        c.signup_may_create_projects = false;
    });
    let mut ann = open.client();
    assert!(ann.get("/").await.body.contains("href=\"/signup\""));
    let r = ann.signup("ann", PW).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let ann = open.state.db.user_by_name("ann").unwrap().unwrap();
    assert!(!ann.admin && !ann.may_create_projects);
}

#[tokio::test]
async fn only_admins_and_allowed_accounts_create_projects() {
    let app = closed_app(|_| {});
    make_user(&app, "root", ADMIN);
    make_user(&app, "bob", PLAIN);
    let mut bob = login(&app, "bob").await;
    let r = bob.get("/new").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    r.assert_contains(&["only admins and accounts an admin allowed may create projects"]);
    // The failed page keeps bob's header.
    r.assert_contains(&["bob", "Log out"]);
    assert!(!r.body.contains("href=\"/login\""));
    let r = bob.create_project("bobs", true).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(app.state.db.project("bobs").unwrap().is_none());

    let mut root = login(&app, "root").await;
    assert_eq!(
        root.create_project("ops", false).await.status,
        StatusCode::SEE_OTHER
    );

    // bob cannot grant himself the right; the admin grants it on the web.
    assert!(!bob.get("/").await.body.contains("href=\"/new\""));
    assert_eq!(bob.get("/-/admin").await.status, StatusCode::FORBIDDEN);
    let r = bob
        .post("/-/admin/users/bob", &[("may_create_projects", "1")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        !app.state
            .db
            .user_by_name("bob")
            .unwrap()
            .unwrap()
            .may_create_projects
    );
    let page = root.get("/-/admin").await;
    page.assert_contains(&["id=\"users\"", "id=\"allow-bob\""]);
    let r = root
        .post("/-/admin/users/bob", &[("may_create_projects", "1")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = root
        .post("/-/admin/users/ghost", &[("may_create_projects", "1")])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(bob.get("/").await.body.contains("href=\"/new\""));
    assert_eq!(
        bob.create_project("bobs", false).await.status,
        StatusCode::SEE_OTHER
    );
    // The admin sees and manages bob's private project; bob does not see ops.
    assert_eq!(root.get("/bobs").await.status, StatusCode::OK);
    assert_eq!(bob.get("/ops").await.status, StatusCode::NOT_FOUND);
    assert!(matches!(
        repohub::admin::set_rights(&app.state.db, "nobody", Some(true), None),
        Err(repohub::admin::AdminError::NoSuchUser(_))
    ));
}

#[tokio::test]
async fn a_configured_admin_is_promoted_and_its_name_cannot_be_signed_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = support::config(dir.path());
    c.admin = Some("root".into());
    {
        // An account "root" made before the flag was given.
        let app = repohub::AppState::new(&support::config(dir.path())).unwrap();
        let kdf = repohub::auth::KdfParams::insecure_for_tests();
        repohub::admin::create_user(&app.db, &kdf, "root", PW, PLAIN).unwrap();
    }
    let st = repohub::AppState::new(&c).unwrap();
    assert!(st.db.user_by_name("root").unwrap().unwrap().admin);

    // With open signup, nobody may take the configured admin's name.
    let other = TestApp::new(|c| c.admin = Some("boss".into()));
    let mut eve = other.client();
    let r = eve.signup("boss", PW).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(other.state.db.user_by_name("boss").unwrap().is_none());
}

#[tokio::test]
async fn admin_create_user_reads_the_password_from_stdin_never_argv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_repohub"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--kdf-memory-kib", "1024"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(
        &["admin", "create-user", "root", "--admin"],
        &format!("{PW}\n"),
    );
    assert!(ok, "{out}");
    assert!(out.contains("created user root (admin)"), "{out}");
    let (ok, out) = run(&["admin", "create-user", "weak"], "short\n");
    assert!(
        !ok && out.contains("password must be 8 to 1024 characters"),
        "{out}"
    );
    let (ok, out) = run(&["admin", "create-user", "a/b"], &format!("{PW}\n"));
    assert!(!ok && out.contains("user name \"a/b\""), "{out}");
    let (ok, out) = run(&["admin", "set-rights", "ghost", "--admin", "true"], "");
    assert!(!ok && out.contains("no user named \"ghost\""), "{out}");

    // The account logs in through the web.
    let app = TestApp::new(|c| c.data_dir = data.clone());
    let mut root = login(&app, "root").await;
    assert!(root.get("/").await.body.contains("root"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_event_carries_the_project_and_only_the_deploy_repository_its_ref() {
    let ci = FakeCi::start().await;
    let (app, srv) = app_and_server(ci.configure()).await;
    let mut ann = app.client();
    ann.signup("ann", PW).await;
    ann.create_project("shop", true).await;
    ann.create_repo("shop", "infra").await;
    ann.create_repo("shop", "docs").await;
    let token = ann.token().await;
    let mut bob = app.client();
    bob.signup("bob", PW).await;
    ann.post("/shop/-/members", &[("username", "bob")]).await;

    // The first repository is the deploy repository, on main.
    let page = ann.get("/shop").await;
    page.assert_contains(&["id=\"deploy-target\"", "refs/heads/main", ">infra</a>"]);
    let work = work_repo(app.dir.path(), &[("flake.nix", b"{}\n")], "one");
    push_main(&work, &srv.auth_url("ann", &token, "/shop/infra.git")).await;
    push_main(&work, &srv.auth_url("ann", &token, "/shop/docs.git")).await;
    assert!(eventually(10, || ci.pushes().len() == 2).await);
    let pushes = ci.pushes();
    let by_repo = |r: &str| {
        pushes
            .iter()
            .find(|p| p["repo"].as_str().unwrap().ends_with(r))
            .unwrap()
            .clone()
    };
    let infra = by_repo("/shop/infra.git");
    assert_eq!(infra["project"], "shop");
    assert_eq!(infra["deploy_ref"], "refs/heads/main");
    let docs = by_repo("/shop/docs.git");
    assert_eq!(docs["project"], "shop");
    assert!(docs.get("deploy_ref").is_none(), "{docs}");

    // A member who is not the owner cannot move the deploy target.
    bob.get("/shop").await;
    let r = set_deploy(&mut bob, "docs", "refs/heads/main").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Bad targets are refused with the reason.
    let r = set_deploy(&mut ann, "nope", "refs/heads/main").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.assert_contains(&["no repository named"]);
    for bad in ["main", "refs/heads/a..b", "refs/heads/x y"] {
        let r = set_deploy(&mut ann, "docs", bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // The owner moves it to docs on prod: now docs carries the ref.
    let r = set_deploy(&mut ann, "docs", "refs/heads/prod").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    ann.get("/shop")
        .await
        .assert_contains(&["refs/heads/prod", ">docs</a>"]);
    git(&work, &["commit", "-q", "--allow-empty", "-m", "two"]);
    push_main(&work, &srv.auth_url("ann", &token, "/shop/infra.git")).await;
    push_main(&work, &srv.auth_url("ann", &token, "/shop/docs.git")).await;
    assert!(eventually(10, || ci.pushes().len() == 4).await);
    let pushes = ci.pushes();
    let infra2 = &pushes[2..]
        .iter()
        .find(|p| p["repo"].as_str().unwrap().ends_with("/infra.git"))
        .unwrap();
    assert!(infra2.get("deploy_ref").is_none(), "{infra2}");
    let docs2 = &pushes[2..]
        .iter()
        .find(|p| p["repo"].as_str().unwrap().ends_with("/docs.git"))
        .unwrap();
    assert_eq!(docs2["deploy_ref"], "refs/heads/prod");

    // Clearing it: nothing deploys.
    set_deploy(&mut ann, "", "").await;
    ann.get("/shop")
        .await
        .assert_contains(&["No deploy repository"]);
    srv.stop().await;
}

#[tokio::test]
async fn the_cluster_panel_shows_a_viewer_only_its_projects_from_one_shared_status() {
    let master = FakeMaster::start();
    let app = TestApp::new(|c| {
        c.control_plane = Some(master.addr.to_string());
        c.limits.cluster_ttl = std::time::Duration::from_secs(60);
        c.admin = Some("root".into());
    });
    make_user(&app, "root", ADMIN);
    let mut ann = app.client();
    ann.signup("ann", PW).await;
    let mut bob = app.client();
    bob.signup("bob", PW).await;
    // The control plane runs VMs of "shop" (ann's, public) and of "other"
    // (bob's, private); "empty" has none.
    ann.create_project("shop", true).await;
    ann.create_project("empty", true).await;
    bob.create_project("other", false).await;
    let mut anon = app.client();
    let others = [
        "intruder-0",
        "worker-c",
        "10.9.9.9",
        "other-big",
        "0ther0commit",
        "Generation <strong>3",
    ];
    let shows_nothing_of_other = |body: &str| {
        for o in others {
            assert!(!body.contains(o), "{o:?} leaked into:\n{body}");
        }
    };

    // Anyone may see the public shop's VMs, its generation and quota, but
    // nothing of other, and no worker address.
    for c in [&mut anon, &mut ann] {
        let shop = c.get("/shop/-/panel/cluster").await;
        shop.assert_contains(&[
            "web-1",
            "db-&#60;1&#62;",
            "worker-a",
            "Generation <strong>7",
        ]);
        shop.assert_contains(&["id=\"cluster-quota\"", "4/8 vCPU", "2/10 VMs"]);
        // Its own rollout, paused and why; never the other project's.
        shop.assert_contains(&[
            "shop-web (generation 7): paused, batch 1/2, 0/2 healthy: shop-web-0 unhealthy",
        ]);
        assert!(!shop.body.contains("other-web"), "{}", shop.body);
        shows_nothing_of_other(&shop.body);
        assert!(!shop.body.contains("127.0.0.1:600"), "{}", shop.body);
        shows_nothing_of_other(&c.get("/shop").await.body);
    }
    let empty = ann.get("/empty/-/panel/cluster").await;
    assert!(!empty.body.contains("web-1") && !empty.body.contains("worker-a"));
    shows_nothing_of_other(&empty.body);
    // other is private: a stranger gets 404, its member sees its VMs.
    assert_eq!(
        anon.get("/other/-/panel/cluster").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ann.get("/other/-/panel/cluster").await.status,
        StatusCode::NOT_FOUND
    );
    let other = bob.get("/other/-/panel/cluster").await;
    other.assert_contains(&[
        "intruder-0",
        "worker-c",
        "other-big",
        "no worker has 64 vCPU free",
    ]);
    assert!(!other.body.contains("web-1") && !other.body.contains("10.9.9.9"));
    // An admin sees the addresses.
    let mut root = login(&app, "root").await;
    root.get("/shop/-/panel/cluster")
        .await
        .assert_contains(&["127.0.0.1:6000", "127.0.0.1:6001"]);

    // Many page views, sequential and concurrent: one RPC in all.
    let before = master
        .status_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(before, 1, "every view so far shared one fetch");
    let views = (0..30).map(|i| {
        let mut c = app.client();
        async move {
            let path = if i % 2 == 0 {
                "/shop"
            } else {
                "/shop/-/panel/cluster"
            };
            c.get(path).await.status
        }
    });
    for s in futures::future::join_all(views).await {
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(
        master
            .status_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn a_stale_status_is_fetched_once_by_concurrent_views() {
    let master = FakeMaster::start();
    let app = TestApp::new(|c| {
        c.control_plane = Some(master.addr.to_string());
        c.limits.cluster_ttl = std::time::Duration::from_millis(200);
    });
    let mut ann = app.client();
    ann.signup("ann", PW).await;
    ann.create_project("shop", true).await;
    for round in 1..=3 {
        let views = (0..20).map(|_| {
            let mut c = app.client();
            async move { c.get("/shop/-/panel/cluster").await.body }
        });
        for b in futures::future::join_all(views).await {
            assert!(b.contains("web-1"));
        }
        assert_eq!(
            master
                .status_calls
                .load(std::sync::atomic::Ordering::SeqCst),
            round
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_csrf_token_from_another_session_is_refused() {
    let app = TestApp::new(|_| {});
    let mut ann = app.client();
    ann.signup("ann", PW).await;
    ann.create_project("p", true).await;
    let mut bob = app.client();
    bob.signup("bob", PW).await;
    // The page embeds a token that is neither cookie.
    let page = ann.get("/p").await;
    let token = ann.csrf();
    assert!(page.body.contains(&format!("value=\"{token}\"")));
    assert!(!ann.cookies.values().any(|c| *c == token));
    // Bob's own token, used against ann's session (the attacker knows only
    // its own): refused.
    let forged = bob.csrf();
    let r = ann
        .post_raw(
            "/p/-/repos",
            &[("csrf", forged.as_str()), ("name", "forged")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The anonymous token from before ann logged in is no longer hers.
    let mut c = app.client();
    c.get("/login").await;
    let anon_token = c.csrf();
    try_login(&mut c, "ann", PW).await;
    let r = c
        .post_raw(
            "/p/-/repos",
            &[("csrf", anon_token.as_str()), ("name", "forged2")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let p = app.state.db.project("p").unwrap().unwrap();
    assert!(app.state.db.repos(p.id).unwrap().is_empty());
    // With her own session's token it works.
    let r = c.create_repo("p", "mine").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_login_flood_gets_429_per_address_and_per_account() {
    let app = TestApp::new(|c| {
        c.limits.login.per_ip.burst = 5;
        c.limits.login.per_account.burst = 3;
        c.limits.login.per_ip.refill = std::time::Duration::from_secs(60);
        c.limits.login.per_account.refill = std::time::Duration::from_secs(60);
    });
    make_user(&app, "ann", PLAIN);
    // One address guessing many names: the sixth attempt is refused.
    let mut eve = app.client();
    eve.ip = "10.0.0.66".parse().unwrap();
    eve.get("/login").await;
    for i in 0..5 {
        let name = format!("user{i}");
        let r = eve
            .post(
                "/login",
                &[("username", name.as_str()), ("password", "guess-guess")],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = try_login(&mut eve, "ann", PW).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    r.assert_contains(&["too many attempts"]);
    // Signup from that address too.
    let r = eve
        .post("/signup", &[("username", "eve"), ("password", PW)])
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);

    // Guesses at one account from many addresses: after three failures the
    // account is refused, even with the right password, from a fresh address.
    for i in 0..3u8 {
        let mut c = app.client();
        c.ip = std::net::IpAddr::from([10, 1, 0, i]);
        c.get("/login").await;
        let r = try_login(&mut c, "ann", "wrong-wrong").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let mut c = app.client();
    c.ip = "10.2.0.1".parse().unwrap();
    c.get("/login").await;
    let r = try_login(&mut c, "ann", PW).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another account from the same address is not affected.
    make_user(&app, "bob", PLAIN);
    let r = try_login(&mut c, "bob", PW).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn login_returns_to_the_page_that_asked_for_it() {
    let app = TestApp::new(|_| {});
    make_user(&app, "ann", PLAIN);
    let mut c = app.client();
    let r = c.get("/settings/tokens").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/login?next=%2Fsettings%2Ftokens");
    let form = c.get(r.location()).await;
    form.assert_contains(&["name=\"next\" value=\"/settings/tokens\""]);
    let r = c
        .post(
            "/login",
            &[
                ("username", "ann"),
                ("password", PW),
                ("next", "/settings/tokens"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/settings/tokens");
    // Another origin is never a place to return to.
    let mut d = app.client();
    d.get("/login").await;
    for evil in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let r = d
            .post(
                "/login",
                &[("username", "ann"), ("password", PW), ("next", evil)],
            )
            .await;
        assert_eq!(r.location(), "/", "{evil}");
        d.post("/logout", &[]).await;
        d.get("/login").await;
    }
}

#[tokio::test]
async fn a_huge_job_log_is_shown_as_its_tail_with_a_truncation_line() {
    let ci = FakeCi::start().await;
    ci.state
        .log_bytes
        .store(32 * 1024 * 1024, std::sync::atomic::Ordering::SeqCst);
    let app = TestApp::new(|c| {
        c.ci_url = Some(ci.url());
        c.limits.job_log_tail = 16 * 1024;
        c.limits.job_log_proxy = 1024 * 1024;
    });
    let mut ann = app.client();
    ann.signup("ann", PW).await;
    ann.create_project("p", true).await;
    ann.create_repo("p", "r").await;
    let path = app.state.repo_dir("p", "r").to_string_lossy().into_owned();
    let id = ci.add_job(&path, "failed");
    let page = ann.get(&format!("/p/-/jobs/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[
        "[log truncated: earlier lines are not shown]",
        "line 524287",
    ]);
    assert!(!page.body.contains("line 0 "), "the head was cut");
    assert!(page.body.len() < 64 * 1024, "{} bytes", page.body.len());
    let log = ann.get(&format!("/p/-/jobs/{id}/log")).await;
    assert!(log.body.len() < 1024 * 1024 + 200, "{}", log.body.len());
    assert!(log.body.starts_with("line 0 "));
    assert!(
        log.body
            .trim_end()
            .ends_with(repohub::joblog::REST_TRUNCATED.trim_end())
    );
}
