//! repohub's `/metrics` on a real server, scraped with a real HTTP client
//! and parsed as Prometheus text: a page view moves the requests counter
//! of its route template, a git push over HTTP moves the pushes counter,
//! and made-up paths all land on one `unmatched` series (a scraper's
//! series cannot be multiplied by whoever sends requests).

mod support;

use support::{FakeCi, ann_with_p_r, app_and_server, git_async, push_main, work_repo};
use testkit::metrics::{scrape_async, series, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_views_and_pushes_move_the_repohub_metrics() {
    let ci = FakeCi::start().await;
    let (app, srv) = app_and_server(ci.configure()).await;
    let (_ann, token) = ann_with_p_r(&app).await;
    let metrics = srv.url("/metrics");
    let requests = "procurator_repohub_http_requests_total";
    let page = [
        ("route", "/:project/:repo"),
        ("method", "GET"),
        ("status", "200"),
    ];

    let before = scrape_async(&metrics).await;
    assert_eq!(value(&before, requests, &page), 0.0);

    let http = commands::http::HttpClient::tcp();
    let get = |path: &str| {
        let req = http::Request::get(srv.url(path))
            .body(bytes::Bytes::new())
            .unwrap();
        let http = http.clone();
        async move { http.send(req).await.unwrap().status.as_u16() }
    };
    assert_eq!(get("/p/r").await, 200);
    assert_eq!(get("/p/r").await, 200);
    for i in 0..5 {
        get(&format!("/x{i}/y/z/w/v")).await;
    }

    let work = work_repo(app.dir.path(), &[("README.md", b"# metrics\n")], "first");
    push_main(&work, &srv.auth_url("ann", &token, "/p/r.git")).await;
    // A push without credentials is refused before any pack is received.
    let (ok, _) = git_async(&work, &["push", &srv.url("/p/r.git"), "main"]).await;
    assert!(!ok);

    let after = scrape_async(&metrics).await;
    assert_eq!(value(&after, requests, &page), 2.0);
    assert_eq!(
        value(
            &after,
            "procurator_repohub_git_pushes_total",
            &[("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, requests, &[("route", "unmatched")]),
        5.0,
        "made-up paths are counted"
    );
    // ...on as few series as their statuses, never one per path.
    assert!(series(&after, requests, &[("route", "unmatched")]) <= 2);
    for s in &after.samples {
        if let Some(route) = s.labels.get("route") {
            assert!(
                !route.contains("x0") && !route.contains("/p/"),
                "raw path as a label: {route}"
            );
        }
    }
    // The scrape itself is counted on its own route.
    assert!(value(&after, requests, &[("route", "/metrics")]) >= 1.0);
    srv.stop().await;
}
