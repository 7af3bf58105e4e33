//! ci_service's control-plane publisher against a control plane with a
//! token file (in-process, real loopback TCP): the `ci` token publishes, a
//! `reader` token is refused by the control plane and a wrong token never
//! gets a session; the publish says why each time.

use std::time::Duration;

use ci_service::db::{Db, Generation};
use ci_service::publisher::{PublishError, Publisher};
use commands::auth::{Authenticator, Secret};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789";
const CI: &str = "ci-token-0123456789abcd";
const READER: &str = "reader-token-0123456789";

/// Serves a control plane with tokens on its own thread; returns its address.
fn start_control_plane(shutdown: CancellationToken) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        commands::rpc::block_on_local(async move {
            let text = format!("admin {ADMIN}\nci {CI}\nreader {READER}\n");
            let auth = Authenticator::parse(&text, std::path::Path::new("t"), control_plane::ROLES)
                .unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let config = control_plane::Config {
                startup_grace: Duration::ZERO,
                ..Default::default()
            };
            control_plane::run_with_auth(config, auth, listener, shutdown).await;
        })
    });
    addr
}

fn generation(number: i64) -> Generation {
    let spec = serde_json::json!({
        "name": "web", "toplevel": "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys",
        "kernelPath": "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-sys/kernel",
        "cmdline": "", "cpu": 1, "memoryMb": 128, "contentHash": "h",
    });
    Generation {
        number,
        job_id: 1,
        commit: "a".repeat(40),
        intent_hash: format!("intent-{number}").into(),
        closure: String::new(),
        created_at_ms: 0,
        specs_json: serde_json::json!([spec]).to_string(),
    }
}

#[tokio::test]
async fn publisher_logs_in_with_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let addr = start_control_plane(shutdown.clone());
    let (db, _) = Db::open(&dir.path().join("ci.sqlite")).unwrap();
    let db = std::sync::Arc::new(db);

    let start = |token: &str| {
        Publisher::start(
            addr.clone(),
            Secret::new(token),
            db.clone(),
            shutdown.clone(),
        )
    };
    let wait_connected = |p: &Publisher| {
        let p = p.clone();
        async move {
            for _ in 0..200 {
                if p.is_connected() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the publisher never connected");
        }
    };

    let ci = start(CI);
    wait_connected(&ci).await;
    let p = ci.publish(generation(1)).await.unwrap();
    assert!(!p.noop);

    // A reader gets a session (it may read) but the publish is refused.
    let reader = start(READER);
    wait_connected(&reader).await;
    match reader.publish(generation(2)).await {
        Err(PublishError::Refused(m)) => {
            assert!(
                m.contains("a reader token may not publish a generation"),
                "{m}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(ci.remote_active(), 1, "the refused publish changed nothing");

    // A wrong token never gets a session: the publish says why.
    let wrong = start("not-the-token-0123456");
    match wrong.publish(generation(2)).await {
        Err(PublishError::Unavailable(m)) => assert!(m.contains("refused the login"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(!wrong.is_connected());
}
