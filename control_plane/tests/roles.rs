//! The control plane's login and role checks over real loopback TCP, with
//! a real token file: every role is allowed what the trust model says and
//! refused the rest with permissionDenied, a refused call changes nothing,
//! a worker token acts only for its own id and, while its registering
//! connection is open, only on that connection; and the per-input limits
//! (text length, long-polls in flight per connection) answer with clear
//! errors. `listEvents` gives each role what it may see: a reader and an
//! admin every project's events, a `ci:<project>` token its own project's
//! only (asking for another is refused), a worker token only the events
//! of its own worker id; paging with afterId walks the log once.

use std::time::Duration;

use commands::auth::{Authenticator, Role};
use commands::client::{ClientError, MasterClient};
use commands::convert::ErrorCode;
use commands::model::{EventView, Registration, WorkerMetricsView, event_kind};
use commands::rpc::RpcError;
use commands::service::worker::{WorkerApi, WorkerCap};
use commands::types::{ProjectName, VmSpec};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789";
const CI: &str = "ci-token-0123456789abcd";
const W1: &str = "worker-w1-token-0123456";
const READER: &str = "reader-token-0123456789";
const SHOP_CI: &str = "ci-shop-token-0123456789";

/// A Worker capability with no methods: registration only needs one.
struct NullWorker;
impl WorkerApi for NullWorker {}

fn spec(name: &str) -> VmSpec {
    testkit::fixtures::spec(name, "h1")
}

fn reg(id: &str) -> Registration {
    testkit::fixtures::registration(id, format!("10.0.0.1:{}", id.len()), 8, 4096)
}

fn denied(e: ClientError) -> String {
    match e {
        ClientError::Refused(f) => {
            assert_eq!(f.code, ErrorCode::PermissionDenied, "{f}");
            f.message
        }
        other => panic!("expected permissionDenied, got {other}"),
    }
}

async fn start() -> (String, CancellationToken) {
    let text =
        format!("admin {ADMIN}\nci {CI}\nworker:w1 {W1}\nreader {READER}\nci:shop {SHOP_CI}\n");
    let auth =
        Authenticator::parse(&text, std::path::Path::new("test"), control_plane::ROLES).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let config = control_plane::Config {
        long_poll_timeout: Duration::from_secs(5),
        heartbeat_timeout: Duration::from_secs(5),
        startup_grace: Duration::ZERO,
        quota_file: None,
        state_dir: None,
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

#[test]
fn logins_grant_roles_and_roles_bound_calls() {
    commands::rpc::block_on_local(async {
        let (addr, shutdown) = start().await;

        // No token and a wrong one: refused at login, with a clear line.
        for (token, why) in [
            ("", "no token was given"),
            ("not-the-token-0123456", "not valid"),
        ] {
            let e = MasterClient::connect_with_token(&addr, Duration::from_secs(5), token)
                .await
                .err()
                .unwrap();
            match &e {
                ClientError::Connect(RpcError::Refused { message, .. }) => {
                    assert!(message.contains(why), "{message}")
                }
                other => panic!("expected a refused login, got {other}"),
            }
            assert!(e.to_string().contains("refused the login"), "{e}");
        }

        let admin = login(&addr, ADMIN).await;
        let ci = login(&addr, CI).await;
        let w1 = login(&addr, W1).await;
        let reader = login(&addr, READER).await;
        assert_eq!(admin.session().role, Role::Admin);
        assert_eq!(ci.session().role, Role::Ci);
        assert_eq!(reader.session().role, Role::Reader);
        assert_eq!(w1.session().role, Role::Worker);
        assert_eq!(w1.session().worker_id.as_deref(), Some("w1"));

        // Reader: status and generations, nothing else; a refusal changes nothing.
        let m = denied(
            reader
                .publish("default", "c1", 1, "i1", &[spec("a")])
                .await
                .unwrap_err(),
        );
        assert_eq!(m, "a reader token may not publish a generation");
        assert_eq!(reader.status().await.unwrap().active("default"), None);
        assert!(reader.generations(None).await.unwrap().is_empty());
        let cap = WorkerCap::new(NullWorker);
        denied(reader.register(&reg("w1"), cap.clone()).await.unwrap_err());
        denied(reader.get_assignment("w1", 0, 0).await.unwrap_err());
        denied(
            reader
                .push_data("w1", 0, &[], &WorkerMetricsView::default())
                .await
                .unwrap_err(),
        );
        assert!(reader.status().await.unwrap().workers.is_empty());

        // CI publishes; it may not act as a worker or reach one.
        assert!(
            ci.publish("default", "c1", 1, "i1", &[spec("a")])
                .await
                .is_ok()
        );
        denied(ci.register(&reg("w9"), cap.clone()).await.unwrap_err());
        denied(
            ci.push_data("w1", 0, &[], &WorkerMetricsView::default())
                .await
                .unwrap_err(),
        );

        // A worker token registers, polls and reports only as its own id.
        let m = denied(w1.register(&reg("w2"), cap.clone()).await.unwrap_err());
        assert!(m.contains("belongs to worker w1, not w2"), "{m}");
        denied(
            w1.publish("default", "c2", 2, "i2", &[spec("b")])
                .await
                .unwrap_err(),
        );
        denied(w1.get_assignment("w2", 0, 0).await.unwrap_err());
        denied(w1.worker("w1").await.err().unwrap());
        w1.register(&reg("w1"), cap.clone()).await.unwrap();
        w1.push_data("w1", 0, &[], &WorkerMetricsView::default())
            .await
            .unwrap();
        let a = w1.get_assignment("w1", 0, 0).await.unwrap();
        assert_eq!(a.generation, 1);
        assert_eq!(a.vms.len(), 1);
        let s = admin.status().await.unwrap();
        let ids: Vec<String> = s.workers.iter().map(|w| w.worker_id.clone()).collect();
        assert_eq!(ids, vec!["w1".to_owned()], "w2 was never registered");

        // getWorker hands out control of a worker: admins only.
        let m = denied(reader.worker("w1").await.err().unwrap());
        assert_eq!(m, "a reader token may not control a worker");
        denied(ci.worker("w1").await.err().unwrap());
        assert!(admin.worker("w1").await.is_ok());
        shutdown.cancel();
    });
}

#[test]
fn oversized_text_and_too_many_long_polls_are_refused() {
    commands::rpc::block_on_local(async {
        let (addr, shutdown) = start().await;
        let admin = login(&addr, ADMIN).await;

        // A 100 KiB commit id: refused by length, before anything changes.
        let long = "c".repeat(100 * 1024);
        let e = admin
            .publish("default", &long, 1, "i", &[spec("a")])
            .await
            .unwrap_err();
        let ClientError::Refused(f) = e else {
            panic!("expected an error as data")
        };
        assert_eq!(f.code, ErrorCode::InvalidArgument);
        assert!(
            f.message
                .contains("text field has 102400 bytes, more than the 65536 allowed"),
            "{}",
            f.message
        );
        assert_eq!(admin.status().await.unwrap().active("default"), None);

        // Long-polls held by one connection are capped; the next one is
        // refused at once and the others keep waiting.
        let w1 = login(&addr, W1).await;
        let cap = WorkerCap::new(NullWorker);
        w1.register(&reg("w1"), cap).await.unwrap();
        let max = commands::service::master::MAX_IN_FLIGHT_PER_CONNECTION as usize;
        let w1 = std::rc::Rc::new(w1);
        let mut polls = Vec::new();
        for _ in 0..max {
            let w1 = std::rc::Rc::clone(&w1);
            polls.push(tokio::task::spawn_local(async move {
                w1.get_assignment("w1", 0, 0).await
            }));
        }
        // Let the polls go out first: calls on one connection arrive in order.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let one_more = tokio::time::timeout(Duration::from_secs(3), w1.get_assignment("w1", 0, 0))
            .await
            .expect("the call over the limit answers at once");
        match one_more {
            Err(e) if e.is_overloaded() => {
                let m = e.to_string();
                assert!(
                    m.contains("too many calls in flight on this connection (limit 16)"),
                    "{m}"
                );
            }
            other => panic!("expected an overloaded error, got {:?}", other.map(|_| ())),
        }
        // Another connection is not affected by this one's polls.
        let other = login(&addr, ADMIN).await;
        assert!(other.status().await.is_ok());
        // Publishing wakes the polls; then the slots are free again.
        admin
            .publish("default", "c1", 1, "i1", &[spec("a")])
            .await
            .unwrap();
        for p in polls {
            assert!(p.await.unwrap().is_ok());
        }
        let a = w1.get_assignment("w1", 0, 0).await.unwrap();
        assert_eq!(a.generation, 1);
        shutdown.cancel();
    });
}

/// A worker's token on a second connection (stolen, or a second process
/// with the same id) cannot take over the registration while the first
/// connection is open, even reporting the very same address; once that
/// connection closes, the worker registers again from a new one.
#[test]
fn a_worker_token_on_another_connection_cannot_take_over_the_registration() {
    commands::rpc::block_on_local(async {
        let (addr, shutdown) = start().await;
        let cap = WorkerCap::new(NullWorker);
        let first = login(&addr, W1).await;
        first.register(&reg("w1"), cap.clone()).await.unwrap();

        let thief = login(&addr, W1).await;
        let m = denied(thief.register(&reg("w1"), cap.clone()).await.unwrap_err());
        assert!(m.contains("registered on another open connection"), "{m}");
        let m = denied(
            thief
                .push_data("w1", 0, &[], &WorkerMetricsView::default())
                .await
                .unwrap_err(),
        );
        assert!(m.contains("another connection"), "{m}");
        // The first connection still reports for w1.
        first
            .push_data("w1", 0, &[], &WorkerMetricsView::default())
            .await
            .unwrap();

        first.close().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Err(e) = thief.register(&reg("w1"), cap.clone()).await {
            assert!(
                std::time::Instant::now() < deadline,
                "the id stayed bound to a closed connection: {e}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        thief
            .push_data("w1", 0, &[], &WorkerMetricsView::default())
            .await
            .unwrap();
        shutdown.cancel();
    });
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
