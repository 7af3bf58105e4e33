//! `listEvents` over real loopback TCP with a real token file: each role
//! sees what the trust model lets it see. A reader and an admin see every
//! project's events; a `ci:<project>` token its own project's only, and
//! asking for another project is refused; a worker token only the events
//! of its own worker id. Paging with afterId walks the log once.

use std::time::Duration;

use commands::auth::Authenticator;
use commands::client::MasterClient;
use commands::model::{EventView, event_kind};
use commands::service::worker::{WorkerApi, WorkerCap};
use commands::types::ProjectName;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789";
const SHOP_CI: &str = "ci-shop-token-0123456789";
const W1: &str = "worker-w1-token-0123456";
const READER: &str = "reader-token-0123456789";

/// A Worker capability with no methods: registration only needs one.
struct NullWorker;
impl WorkerApi for NullWorker {}

async fn start() -> (String, CancellationToken) {
    let text = format!("admin {ADMIN}\nci:shop {SHOP_CI}\nworker:w1 {W1}\nreader {READER}\n");
    let auth =
        Authenticator::parse(&text, std::path::Path::new("test"), control_plane::ROLES).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let config = control_plane::Config {
        startup_grace: Duration::ZERO,
        ..control_plane::Config::default()
    };
    tokio::task::spawn_local(control_plane::run_with_auth(
        config,
        auth,
        listener,
        shutdown.clone(),
    ));
    (addr, shutdown)
}

async fn login(addr: &str, token: &str) -> MasterClient {
    MasterClient::connect_with_token(addr, Duration::from_secs(5), token)
        .await
        .unwrap()
}

fn projects(events: &[EventView]) -> Vec<&str> {
    let mut p: Vec<&str> = events.iter().map(|e| e.project.as_str()).collect();
    p.sort_unstable();
    p.dedup();
    p
}

#[test]
fn each_role_sees_only_its_events() {
    commands::rpc::block_on_local(async {
        let (addr, shutdown) = start().await;
        let admin = login(&addr, ADMIN).await;
        let w1 = login(&addr, W1).await;
        w1.register(
            &testkit::fixtures::registration("w1", "127.0.0.1:1".into(), 8, 8192),
            WorkerCap::new(NullWorker),
        )
        .await
        .unwrap();
        for p in ["shop", "other"] {
            let specs = [testkit::fixtures::project_spec(p, "web-0", "h1")];
            admin.publish(p, "c1", 1, "i1", &specs).await.unwrap();
        }

        let all = admin.list_events(None, 0, 0).await.unwrap();
        assert_eq!(projects(&all), ["", "other", "shop"], "{all:?}");
        let reader = login(&addr, READER).await;
        assert_eq!(reader.list_events(None, 0, 0).await.unwrap(), all);

        // ci:shop: its project, whether it names it or not.
        let ci = login(&addr, SHOP_CI).await;
        let mine = ci.list_events(None, 0, 0).await.unwrap();
        assert_eq!(projects(&mine), ["shop"]);
        assert!(
            mine.iter()
                .any(|e| e.kind == event_kind::GENERATION_PUBLISHED)
        );
        let other: ProjectName = "other".parse().unwrap();
        let e = ci.list_events(Some(&other), 0, 0).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("may read the events of project shop only, not other"),
            "{e}"
        );

        // The worker: the events naming it, of any project, nothing else.
        let its = w1.list_events(None, 0, 0).await.unwrap();
        assert!(!its.is_empty());
        assert!(its.iter().all(|e| e.worker_id == "w1"), "{its:?}");
        assert!(its.iter().any(|e| e.kind == event_kind::WORKER_JOINED));
        assert!(its.iter().any(|e| e.kind == event_kind::VM_PLACED));

        // Pages of two walk every event once, in order.
        let mut after = 0;
        let mut paged = Vec::new();
        loop {
            let page = admin.list_events(None, after, 2).await.unwrap();
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = last.id;
            paged.extend(page);
        }
        assert_eq!(paged, all);
        for c in [admin, w1, reader, ci] {
            c.close().await;
        }
        shutdown.cancel();
    });
}
